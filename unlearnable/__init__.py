"""unlearnable: fine-tune LLMs on data that may hold harmful examples without learning the harm.

Security vectors (Zhou et al., ACL Findings 2024) and the immunization conditions (Rosati et al., EMNLP
Findings 2024) as one toolkit. The CLI (``unlearnable``) is a thin layer over this API.

The names below are imported on first use: ``import unlearnable`` (and ``unlearnable --help``) must not pay
for torch and transformers. Type checkers and IDEs see them through the ``TYPE_CHECKING`` imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "UnlearnableError": "errors",
    "load_model": "models", "model_fingerprint": "models", "save_model": "models", "cache_dir": "models",
    "Pair": "data", "load_pairs": "data", "harmful_prompts": "data", "profileqa": "data", "split": "data",
    "check_disjoint": "data", "exact_match": "data",
    "LoraSpec": "adapters", "TrainConfig": "training",
    "VectorConfig": "vectors", "SecurityVectors": "vectors", "SecurityVectorsCallback": "vectors",
    "finetune": "vectors",
    "generate": "generation", "EvalConfig": "evaluation", "evaluate": "evaluation", "Scorer": "evaluation",
    "JUDGES": "judges", "Judge": "judges",
    "DEFENSES": "defenses", "Defense": "defenses", "ATTACKS": "attacks", "Attack": "attacks",
    "DemoConfig": "experiments", "run_demo": "experiments", "ImmunizeConfig": "experiments",
    "run_immunize": "experiments", "TradeoffConfig": "experiments", "run_tradeoff": "experiments",
    "load_results": "results", "DemoResults": "results", "ImmunizeResults": "results", "TradeoffResults": "results",
}

__all__ = ["ATTACKS", "Attack", "DEFENSES", "Defense", "DemoConfig", "DemoResults", "EvalConfig", "ImmunizeConfig",
           "ImmunizeResults", "JUDGES", "Judge", "TradeoffResults", "load_results",
           "LoraSpec", "Pair", "Scorer", "SecurityVectors", "SecurityVectorsCallback", "TradeoffConfig", "TrainConfig",
           "UnlearnableError", "VectorConfig", "cache_dir", "check_disjoint", "evaluate", "exact_match", "finetune",
           "generate", "harmful_prompts", "load_model", "load_pairs", "model_fingerprint", "profileqa", "run_demo",
           "run_immunize", "run_tradeoff", "save_model", "split", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .adapters import LoraSpec
    from .attacks import ATTACKS, Attack
    from .data import Pair, check_disjoint, exact_match, harmful_prompts, load_pairs, profileqa, split
    from .defenses import DEFENSES, Defense
    from .errors import UnlearnableError
    from .evaluation import EvalConfig, Scorer, evaluate
    from .experiments import DemoConfig, ImmunizeConfig, TradeoffConfig, run_demo, run_immunize, run_tradeoff
    from .generation import generate
    from .judges import JUDGES, Judge
    from .models import cache_dir, load_model, model_fingerprint, save_model
    from .results import DemoResults, ImmunizeResults, TradeoffResults, load_results
    from .training import TrainConfig
    from .vectors import SecurityVectors, SecurityVectorsCallback, VectorConfig, finetune


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'unlearnable' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
