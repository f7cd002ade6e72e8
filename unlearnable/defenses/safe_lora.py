"""Safe LoRA (Hsu et al., NeurIPS 2024): project the user's update onto the alignment subspace, layer by layer."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import random
from pathlib import Path
from typing import Iterator

import torch

from ..errors import UnlearnableError
from ..models import decoder_block_list, load_model
from ..training import BACKBONE_ADAPTER, TrainConfig, finetune, release
from .base import DEFENSES, SERVICE, Defense, DefenseData, Tunable, tunable

SELECTIONS = ("fraction", "threshold")
DIRECTIONS_FILE = "alignment_directions.safetensors"
#: set on a model that :meth:`SafeLoraDefense.finetune` returned: already projected, served as it is
PROJECTED_ATTR = "_unlearnable_safe_lora_projected"


@dataclasses.dataclass
class SafeLoraConfig:
    base: str | None = dataclasses.field(default=None, metadata={
        "help": "the unaligned model (hub id or local folder) the alignment directions are measured from: "
                "V = W_aligned - W_base per layer; None: estimated from the defence's alignment data"})
    select: str = dataclasses.field(default="fraction", metadata={
        "help": "which layers are projected: fraction (the least similar share) or threshold (similarity below it)"})
    fraction: float = tunable(0.15, 0.05, 0.6, log=False, help="select=fraction: share of adapted layers "
                                                              "projected, least similar first")
    threshold: float = tunable(0.5, 0.1, 0.9, log=False, help="select=threshold: layers whose update's cosine "
                                                             "similarity to its projection is below it")
    estimate: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(lr=1e-3, epochs=1.0), metadata={
        "help": "base=None: the alignment LoRA whose update stands in for W_aligned - W_base"})

    def __post_init__(self):
        if self.select not in SELECTIONS:
            raise UnlearnableError(f"safe-lora select must be one of {', '.join(SELECTIONS)}, not {self.select!r}")
        if not 0 < self.fraction <= 1:
            raise UnlearnableError("safe-lora fraction must be in (0, 1]")
        if self.estimate.backbone != "lora":
            raise UnlearnableError("safe-lora estimate must train a LoRA (estimate.backbone=lora)")


def decoder_linears(model) -> dict[str, torch.nn.Module]:
    """The linear layers inside the decoder blocks (``nn.Linear``, and GPT-2's ``Conv1D``, whose weight is stored
    transposed), by name in the plain model (what a backbone LoRA adapts; in a model wrapped by PEFT, the layer a
    LoRA wraps)."""
    from transformers.pytorch_utils import Conv1D

    prefix = decoder_block_list(model)[0] + "."
    return {name.removesuffix(".base_layer"): mod for name, mod in model.named_modules()
            if isinstance(mod, (torch.nn.Linear, Conv1D)) and name.startswith(prefix) and "lora_" not in name}


def out_by_in(module: torch.nn.Module, weight_like: torch.Tensor) -> torch.Tensor:
    """A tensor in ``module``'s weight layout as (out, in), the layout the alignment matrix acts on (and back:
    the transpose is its own inverse)."""
    from transformers.pytorch_utils import Conv1D

    return weight_like.T if isinstance(module, Conv1D) else weight_like


def plain_name(peft_name: str) -> str:
    """A module's name inside a PeftModel -> its name in the plain model."""
    return peft_name.removeprefix("base_model.model.")


def apply_alignment_matrix(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``C x`` with the paper's alignment matrix ``C = V V^T / ||V||_F``, without forming ``C`` (out x out).

    ``C x`` lies in the column space of ``V``; a layer that alignment left unchanged (``V = 0``) maps to zero."""
    return v @ (v.T @ x) / v.norm().clamp_min(torch.finfo(v.dtype).tiny)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


@DEFENSES.register("safe-lora")
class SafeLoraDefense(Defense):
    """Training-free: after the user's fine-tune, each adapted linear layer's update ``dW`` is compared with its
    projection ``C dW`` onto the alignment directions ``V`` of that layer (``C = V V^T / ||V||_F``); the layers
    where they are least similar (cosine below ``threshold``, or the ``fraction`` least similar) get ``C dW``
    instead, the others keep their update bit for bit. A LoRA update ``s B A`` is projected as ``s (C B) A``;
    under ``backbone=full`` the update is the change of each linear layer's weights. A model scored mid-training
    is served projected (:meth:`serving`). Service threat model only.

    **The reference weights.** The paper takes ``V = W_aligned - W_base`` from a chat model and its base model.
    The harness hands a defence only the aligned model and its data, so:

    * with ``base`` set (a hub id or local folder, loaded like any model), ``V`` is exactly that difference;
    * without it, when the harness aligned the model itself, ``V`` is the difference from the weights before that
      alignment (``DefenseData.unaligned``): the paper's subspace, for the alignment the harness applied;
    * otherwise (a user who brings an aligned model without its base), ``V`` is estimated, and labelled so in
      ``info["reference"]``: a LoRA (``estimate``, rank and targets of its ``lora``) is
      trained on the aligned model with the defence's alignment data (its refusal pairs and harmless pairs, the
      harness's own alignment recipe), and its update ``s B A`` per layer is ``V``. It spans the directions in
      which alignment data moves these weights, of the same rank as the harness's alignment LoRA, but it is
      measured at the aligned point rather than from the unaligned one.
    """

    threat_models = (SERVICE,)
    Config = SafeLoraConfig

    def __init__(self, config: SafeLoraConfig | None = None, **options):
        super().__init__(config, **options)
        self.directions: dict[str, torch.Tensor] | None = None  # V per decoder linear layer (fp32, on CPU)
        self.before: dict[str, torch.Tensor] | None = None  # backbone=full: the weights before this fine-tune
        self.last_projection: dict = {}
        self.info["projections"] = []  # one {"layers", "projected"} per fine-tuning run

    def tuning_space(self) -> dict[str, Tunable]:
        """Only the selection rule in use (``fraction`` or ``threshold``) is tuned."""
        unused = "threshold" if self.config.select == "fraction" else "fraction"
        return {k: v for k, v in super().tuning_space().items() if k != unused}

    def prepare(self, model, tokenizer, data: DefenseData, *, progress: bool = True) -> None:
        if self.directions is None:
            if self.config.base:
                self.directions = self.difference(model, load_model(self.config.base)[0], self.config.base)
                self.info["reference"] = f"aligned minus base ({self.config.base})"
            elif data.unaligned is not None:
                self.directions = self.difference(model, data.unaligned(), "the unaligned model")
                self.info["reference"] = "aligned minus base (the weights before the harness aligned them)"
            else:
                self.directions = self.estimated(model, tokenizer, data, progress)
                self.info["reference"] = ("estimated (proxy): a LoRA trained on the defence's alignment data, no "
                                          "unaligned weights given")
        if not self.directions:
            raise UnlearnableError("safe-lora found no linear layers inside the decoder blocks of this model")

    @staticmethod
    def difference(model, base, what: str) -> dict[str, torch.Tensor]:
        """``V = W_aligned - W_base`` per decoder linear layer."""
        mine, theirs = decoder_linears(model), decoder_linears(base)
        if set(mine) != set(theirs) or any(mine[k].weight.shape != theirs[k].weight.shape for k in mine):
            raise UnlearnableError(f"safe-lora base {what} does not have this model's architecture")
        return {k: (mine[k].weight.detach().float() - theirs[k].weight.detach().float().to(mine[k].weight.device))
                .cpu() for k in mine}

    def estimated(self, model, tokenizer, data: DefenseData, progress: bool) -> dict[str, torch.Tensor]:
        if not data.refusals:
            raise UnlearnableError("safe-lora without the unaligned weights needs refusal pairs to estimate its "
                                    "subspace: give DefenseData(unaligned=...) or refusals=...")
        pairs = list(data.refusals) + list(data.harmless)
        random.Random(self.config.estimate.seed).shuffle(pairs)
        net, _ = finetune(copy.deepcopy(model), tokenizer, pairs, self.config.estimate, progress=progress,
                          return_peft=True)
        return {plain_name(n): m.get_delta_weight(BACKBONE_ADAPTER).detach().float().cpu()
                for n, m in net.named_modules() if BACKBONE_ADAPTER in getattr(m, "lora_A", {})}

    def save_state(self, folder: Path) -> None:
        from safetensors.torch import save_file

        if self.directions and not (folder / DIRECTIONS_FILE).exists():
            folder.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in self.directions.items()}, str(folder / DIRECTIONS_FILE),
                      metadata={"reference": str(self.info.get("reference", ""))})

    def load_state(self, folder: Path) -> bool:
        from safetensors import safe_open

        if (folder / DIRECTIONS_FILE).is_file():
            with safe_open(str(folder / DIRECTIONS_FILE), framework="pt") as f:  # V, and what it is
                self.directions = {k: f.get_tensor(k) for k in f.keys()}
                self.info["reference"] = (f.metadata() or {}).get("reference") or "unknown (saved before it was kept)"
            return True
        return False

    def finetune(self, model, tokenizer, pairs, config, *, progress: bool = True, **kw):
        if self.directions is None:
            raise RuntimeError(f"{self.name} defence used before prepare()")
        if config.backbone == "lora":
            net, history = finetune(model, tokenizer, pairs, config, progress=progress, return_peft=True, **kw)
            self.project_lora(net)
            tuned = release(net, config)
        else:
            self.before = {k: m.weight.detach().clone() for k, m in decoder_linears(model).items()
                           if k in self.directions}
            try:
                tuned, history = finetune(model, tokenizer, pairs, config, progress=progress, **kw)
                self.project_full(tuned, self.before)
            finally:
                self.before = None
        setattr(tuned, PROJECTED_ATTR, True)
        return tuned, history

    @contextlib.contextmanager
    def serving(self, model) -> Iterator[None]:
        """A model scored mid-training is served as if training stopped there: projected for the time being."""
        saved = [] if getattr(model, PROJECTED_ATTR, False) or self.directions is None else self.projected(model)
        try:
            yield
        finally:
            with torch.no_grad():
                for tensor, original in saved:
                    tensor.copy_(original)

    def projected(self, model) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if any(BACKBONE_ADAPTER in getattr(m, "lora_B", {}) for m in model.modules()):
            return self.project_lora(model, record=False)
        return self.project_full(model, self.before, record=False) if self.before is not None else []

    def project_lora(self, net, *, record: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Replace ``B`` by ``C B`` in the backbone LoRA of the selected layers of ``net`` (a PeftModel); returns
        ``(B, its value before)`` of each."""
        cos, targets = {}, {}
        for name, layer in net.named_modules():
            key = plain_name(name)
            if key not in self.directions or BACKBONE_ADAPTER not in getattr(layer, "lora_B", {}):
                continue
            b, a = layer.lora_B[BACKBONE_ADAPTER].weight, layer.lora_A[BACKBONE_ADAPTER].weight
            v = self.directions[key].to(b.device)
            v = v.T if layer.fan_in_fan_out else v  # V in the layout of B @ A
            cb = apply_alignment_matrix(v, b.detach().float())
            cos[key] = cosine(cb @ a.detach().float(), b.detach().float() @ a.detach().float())
            targets[key] = (b, cb.to(b.dtype))
        return _replace([targets[k] for k in self.selected(cos, record)])

    def project_full(self, model, before: dict[str, torch.Tensor], *, record: bool = True):
        """Replace each selected layer's weights ``W0 + dW`` by ``W0 + C dW`` (``before`` holds ``W0``)."""
        linears, cos, targets = decoder_linears(model), {}, {}
        for key, w0 in before.items():
            w, layer = linears[key].weight, linears[key]
            dw = (w.detach() - w0).float()
            v = out_by_in(layer, self.directions[key].to(w.device))
            cdw = out_by_in(layer, apply_alignment_matrix(v, out_by_in(layer, dw)))
            cos[key], targets[key] = cosine(cdw, dw), (w, (w0.float() + cdw).to(w.dtype))
        return _replace([targets[k] for k in self.selected(cos, record)])

    def selected(self, cos: dict[str, float], record: bool = True) -> list[str]:
        """The layers to project: cosine below the threshold, or the least similar ``fraction`` of them."""
        c = self.config
        if c.select == "threshold":
            chosen = [k for k, x in cos.items() if x < c.threshold]
        else:
            chosen = sorted(cos, key=lambda k: (cos[k], k))[:max(1, round(len(cos) * c.fraction))] if cos else []
        if record:
            self.last_projection = {"cosines": cos, "projected": sorted(chosen)}
            self.info["projections"].append({"layers": len(cos), "projected": len(chosen)})
        return chosen


def _replace(targets) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Copy each new value into its tensor; returns ``(tensor, old value)`` pairs."""
    saved = []
    with torch.no_grad():
        for tensor, value in targets:
            saved.append((tensor, tensor.detach().clone()))
            tensor.copy_(value)
    return saved
