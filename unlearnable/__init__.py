"""unlearnable: fine-tune LLMs on data that may hold harmful examples without learning the harm.

Security vectors (Zhou et al., ACL Findings 2024) and the immunization conditions (Rosati et al., EMNLP
Findings 2024) as one toolkit. The CLI (``unlearnable``) is a thin layer over this API.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "UnlearnableError": "errors",
    "load_model": "models", "model_fingerprint": "models", "save_model": "models", "cache_dir": "models",
    "Pair": "data", "load_pairs": "data", "harmful_prompts": "data", "profileqa": "data", "split": "data",
    "check_disjoint": "data", "exact_match": "data",
    "TrainConfig": "training", "finetune": "training",
    "VectorConfig": "vectors", "SecurityVectors": "vectors",
    "EvalConfig": "evaluation", "evaluate": "evaluation", "generate": "evaluation",
    "JUDGES": "judges", "Judge": "judges",
    "DemoConfig": "demo", "run_demo": "demo", "DEFENSES": "defenses", "Defense": "defenses",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):  # heavy imports (torch, transformers) only when used
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'unlearnable' has no attribute {name!r}")
