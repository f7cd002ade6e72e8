"""LoRA helpers every layer above shares: one LoRA spec, PEFT configs built from it, merged decoding, QR merge.

Nothing here knows what an adapter is *for* (a backbone LoRA, security vectors, a reinforcement LoRA): owners
of adapters that must not be merged for decoding say so through :data:`NO_MERGE_ATTR`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .config import normalize_numbers
from .errors import UnlearnableError
from .utils import atomic_dir

#: attribute a model may carry: a callable returning True while its weights must stay bit for bit as they are,
#: so :func:`merged_lora` leaves them alone (set by the owner of those weights, e.g. folded security vectors)
NO_MERGE_ATTR = "_unlearnable_no_merge"


@dataclasses.dataclass
class LoraSpec:
    """One LoRA adapter's shape: shared by the backbone's fine-tuning LoRA and the security vectors."""

    r: int = dataclasses.field(default=16, metadata={"help": "LoRA rank"})
    alpha: int = dataclasses.field(default=32, metadata={"help": "LoRA alpha (scaling = alpha / r)"})
    dropout: float = dataclasses.field(default=0.0, metadata={"help": "LoRA dropout"})
    target_modules: str = dataclasses.field(default="all-linear", metadata={
        "help": "modules LoRA adapts: all-linear or comma-separated names"})
    top_layers: float = dataclasses.field(default=1.0, metadata={
        "help": "fraction of decoder layers (from the top) that get a LoRA; below them no backward pass is needed"})

    def __post_init__(self):
        normalize_numbers(self)
        if self.r < 1 or self.alpha <= 0:
            raise UnlearnableError("a LoRA needs r >= 1 and alpha > 0")
        if not 0 < self.top_layers <= 1:
            raise UnlearnableError("lora top_layers must be in (0, 1]")

    def targets(self) -> str | list[str]:
        t = self.target_modules
        return t if t == "all-linear" else [s.strip() for s in t.split(",") if s.strip()]

    def peft_config(self, model=None, *, dropout: float | None = None):
        """A ``peft.LoraConfig``; with ``top_layers`` < 1 only the top decoder layers of ``model`` are adapted."""
        from peft import LoraConfig

        targets = self.targets()
        layers = top_layers(model, self.top_layers) if model is not None else None
        if layers and targets == "all-linear":  # PEFT needs explicit names to restrict layers
            targets = linear_module_names(model)
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout if dropout is None else dropout,
                          target_modules=targets, bias="none", task_type="CAUSAL_LM", layers_to_transform=layers,
                          layers_pattern="layers" if layers else None)


def top_layers(model, fraction: float) -> list[int] | None:
    """Indices of the top ``fraction`` of decoder layers (None = all)."""
    if fraction >= 1.0:
        return None
    n = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    if n == 0:
        return None
    k = max(1, round(n * fraction))
    return list(range(n - k, n))


def linear_module_names(model) -> list[str]:
    """Names of the linear layers inside the decoder (what PEFT's "all-linear" targets), e.g. q_proj ... down_proj."""
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = set()
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear) or mod is out_emb or ".layers." not in f".{name}":
            continue
        parts = name.split(".")
        if any(p.startswith("lora_") for p in parts):  # an adapter's own A/B matrices
            continue
        names.add(parts[-2] if parts[-1] == "base_layer" else parts[-1])  # a PEFT-wrapped layer: its own name
    return sorted(names)


def lora_layers(model) -> list:
    """Every PEFT LoRA layer inside ``model``."""
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


@contextlib.contextmanager
def trainability_kept(model) -> Iterator[None]:
    """Whatever is done within the block, ``model``'s parameters train afterwards exactly as before it (PEFT marks
    every base weight frozen when it injects an adapter, and ``unload()`` does not give that back)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        yield
    finally:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in trainable:
            p.requires_grad_(True)


def attach_frozen(model, lora_config, state: dict[str, torch.Tensor], name: str, scale: float, *,
                  what: str, refit: str):
    """``model`` wrapped in a PeftModel carrying adapter ``name`` with the weights ``state``, frozen, at ``scale``
    (its LoRA scaling ``scale * alpha / r``). Weights that do not fit ``lora_config`` or the model: a one-line error
    about ``what`` (e.g. "the vectors") ending in ``refit`` (what to do); on any failure the model is left as it
    was."""
    from peft import get_peft_model, set_peft_model_state_dict

    pm = get_peft_model(model, lora_config, adapter_name=name)
    try:
        try:
            result = set_peft_model_state_dict(pm, state, adapter_name=name)
        except RuntimeError as exc:  # shapes differ from the adapter config: a damaged or mixed-up folder
            raise UnlearnableError(f"the weights of {what} do not fit their own adapter config or this model "
                                   f"({str(exc).splitlines()[0][:120]}); {refit}") from None
        bad = [k for k in getattr(result, "unexpected_keys", []) if name in k or "lora" in k]
        if bad:
            raise UnlearnableError(f"{what} do not fit this model's layers (e.g. {bad[0]}); {refit}")
        for layer in lora_layers(pm):
            if name in layer.lora_A:
                layer.set_scale(name, scale)
                for p in (*layer.lora_A[name].parameters(), *layer.lora_B[name].parameters()):
                    p.requires_grad_(False)
                    p.grad = None
    except BaseException:
        pm.unload()
        raise
    return pm


@contextlib.contextmanager
def adapter_applied(model, attach: Callable[[Any], Any]) -> Iterator[Any]:
    """Within the block ``model`` itself runs wrapped as ``attach(model)`` (a PeftModel with an adapter on, e.g.
    :func:`attach_frozen`); the adapter is taken out after, and ``model``'s weights train as they did before."""
    with trainability_kept(model):
        pm = attach(model)
        try:
            yield pm
        finally:
            pm.unload()


@contextlib.contextmanager
def merged_lora(model) -> Iterator[None]:
    """Within this context a PEFT model's LoRA adapters are merged into its weights, as they are when served
    (``merge_and_unload``), and unmerged afterwards, so decoding runs plain linear layers (measured by
    ``benchmarks/merged_decoding.py``). Models without LoRA adapters, with adapters already merged or disabled,
    or whose weights are pinned (:data:`NO_MERGE_ATTR`) are left as they are."""
    from peft import PeftModel

    layers = lora_layers(model) if isinstance(model, PeftModel) else []
    pinned = getattr(model, NO_MERGE_ATTR, None)  # a PeftModel finds it on the model it wraps
    if (not layers or any(m.merged for m in layers) or any(getattr(m, "disable_adapters", False) for m in layers)
            or (pinned is not None and pinned())):
        yield
        return
    model.base_model.merge_adapter()
    try:
        yield
    finally:
        model.base_model.unmerge_adapter()


def qr_merge(b1: torch.Tensor, a1: torch.Tensor, s1: float, b2: torch.Tensor, a2: torch.Tensor, s2: float):
    """Return ``(B, A)`` with ``B @ A == s1 * b1 @ a1 + s2 * b2 @ a2`` (rank r1 + r2), ``B`` orthonormal.

    ``[b1 b2] [s1 a1; s2 a2]`` is the sum; ``[b1 b2] = Q R`` (reduced QR), so ``B = Q`` and
    ``A = R [s1 a1; s2 a2]``. Computed in float64, returned in the inputs' dtype.
    """
    dtype = b1.dtype
    b = torch.cat([b1, b2], dim=1).double()
    a = torch.cat([s1 * a1.double(), s2 * a2.double()], dim=0)
    q, r = torch.linalg.qr(b, mode="reduced")
    return q.to(dtype), (r @ a).to(dtype)


def merge_adapters_qr(peft_model, first: str, second: str, out: str | os.PathLike) -> Path:
    """Merge adapters ``first`` and ``second`` of ``peft_model`` into one LoRA saved at ``out`` (plain PEFT format).

    The merged adapter has rank ``r1 + r2`` and ``lora_alpha = r`` (scaling 1), so loading it with
    ``PeftModel.from_pretrained`` reproduces ``W + s1 B1 A1 + s2 B2 A2`` exactly (up to float rounding).
    Both adapters must target the same modules.
    """
    from peft import LoraConfig
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import save_file

    cfg1 = peft_model.peft_config[first]
    state: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer) or first not in module.lora_A:
            continue
        if second not in module.lora_A:
            raise ValueError(f"adapters {first} and {second} target different modules ({name})")
        b, a = qr_merge(module.lora_B[first].weight.data, module.lora_A[first].weight.data, module.scaling[first],
                        module.lora_B[second].weight.data, module.lora_A[second].weight.data, module.scaling[second])
        ranks[name.removeprefix("base_model.model.")] = a.shape[0]  # min(out_features, r1 + r2)
        state[f"{name}.lora_A.weight"] = a.contiguous()
        state[f"{name}.lora_B.weight"] = b.contiguous()
    if not ranks:
        raise ValueError(f"no LoRA layers carry adapter {first}")
    rank = max(ranks.values())
    # modules whose output is narrower than r1 + r2 get that smaller rank; alpha = rank keeps scaling 1
    pattern = {k: r for k, r in ranks.items() if r != rank}
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=sorted(
        {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in state}), bias="none", task_type="CAUSAL_LM",
        layers_to_transform=cfg1.layers_to_transform, layers_pattern=cfg1.layers_pattern,
        rank_pattern=pattern, alpha_pattern=dict(pattern))
    config.base_model_name_or_path = getattr(cfg1, "base_model_name_or_path", None)
    with atomic_dir(out) as tmp:
        config.save_pretrained(str(tmp))
        save_file(state, str(Path(tmp) / "adapter_model.safetensors"), metadata={"format": "pt"})
        (Path(tmp) / "README.md").write_text(
            f"LoRA adapter merged by QR from '{first}' and '{second}' (rank {rank}); plain PEFT format.\n")
    return Path(out)
