"""Security vectors: a PEFT LoRA adapter trained on harmful pairs with the model frozen.

Lifecycle (Zhou et al., 2024):

1. :meth:`SecurityVectors.train` - the model is frozen; only the adapter learns the harmful responses.
2. :meth:`SecurityVectors.attach` - during the user's fine-tuning the adapter is on, scaled by ``scale`` and
   frozen (no gradient), so harmful examples already have a low loss and barely move the backbone.
3. Serving: the adapter is dropped; :func:`unlearnable.training.finetune` returns the model without it.

On disk the vectors are a standard PEFT adapter folder (``adapter_config.json`` +
``adapter_model.safetensors``) plus ``unlearnable_vectors.json`` recording the base-model fingerprint, the
data hash, the config and package versions. Attaching them to another model is an error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from transformers import TrainerCallback

from .data import Pair, normalize, pairs_hash
from .errors import UnlearnableError
from .models import model_fingerprint
from .training import TrainConfig, train
from .utils import atomic_dir, atomic_write_json, log, run_metadata, sha256_text

VECTORS_ADAPTER = "security_vectors"
META_FILE = "unlearnable_vectors.json"
FORMAT = "unlearnable-vectors/1"
#: the vectors' default strength during fine-tuning, picked from the measured trade-off frontier on the default
#: model (docs/tradeoff.md: `unlearnable tradeoff`, 3 seeds), not 1.0 by habit
DEFAULT_SCALE = 0.75


@dataclasses.dataclass
class VectorConfig:
    """How the security vectors are built and how strongly they act during fine-tuning."""

    r: int = dataclasses.field(default=16, metadata={"help": "LoRA rank of the vectors"})
    alpha: int = dataclasses.field(default=32, metadata={"help": "LoRA alpha of the vectors"})
    target_modules: str = dataclasses.field(default="all-linear", metadata={"help": "modules the vectors adapt"})
    top_layers: float = dataclasses.field(default=1.0, metadata={"help": "fraction of decoder layers (from the "
                                                                          "top) that carry vectors"})
    lr: float = dataclasses.field(default=1e-3, metadata={"help": "learning rate for training the vectors"})
    epochs: float = dataclasses.field(default=5.0, metadata={"help": "passes over the harmful pairs"})
    target_loss: float = dataclasses.field(default=0.0, metadata={"help": "stop early once the logged training loss "
                                                                         "falls below this (0 = train all epochs)"})
    batch_size: int = 16
    max_length: int = 64
    seed: int = 0
    precision: str = "auto"
    scale: float = dataclasses.field(default=DEFAULT_SCALE, metadata={
        "help": "strength during fine-tuning: multiplies the vectors' LoRA scaling (0 = off; default picked from "
                "the measured trade-off, docs/tradeoff.md)"})
    benign: str = dataclasses.field(default="none", metadata={
        "help": "benign-preserving training: none | distill (harmless prompts with the model's own answers as "
                "targets) | kl (KL to the vectors-off distribution on those answers)"})
    benign_weight: float = dataclasses.field(default=1.0, metadata={"help": "weight of the KL term (benign=kl)"})
    benign_repeats: int = dataclasses.field(default=1, metadata={"help": "copies of each harmless example"})

    def __post_init__(self):
        if self.r < 1 or self.alpha <= 0:
            raise UnlearnableError("vectors need r >= 1 and alpha > 0")
        if self.scale < 0:
            raise UnlearnableError("vector scale must be >= 0")
        if self.benign not in ("none", "distill", "kl"):
            raise UnlearnableError(f"benign must be none, distill or kl, not {self.benign!r}")

    def lora_config(self, model=None):
        from .training import lora_config_for

        targets = self.target_modules if self.target_modules == "all-linear" else [
            s.strip() for s in self.target_modules.split(",") if s.strip()]
        return lora_config_for(model, r=self.r, alpha=self.alpha, dropout=0.0, targets=targets,
                               top_fraction=self.top_layers)

    def train_config(self) -> TrainConfig:
        return TrainConfig(backbone="lora", lr=self.lr, epochs=self.epochs, batch_size=self.batch_size,
                           max_length=self.max_length, seed=self.seed, precision=self.precision,
                           kl_weight=self.benign_weight)


class _StopBelowLoss(TrainerCallback):
    def __init__(self, target: float):
        self.target = target

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs and logs["loss"] < self.target:
            control.should_training_stop = True
        return control


def vector_params(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if f".{VECTORS_ADAPTER}." in n or n.endswith(f".{VECTORS_ADAPTER}")}


def freeze_vectors(model) -> None:
    """Turn off gradients of the vectors (PEFT's ``set_adapter([...])`` turns them back on: call after it)."""
    for p in vector_params(model).values():
        p.requires_grad_(False)
        p.grad = None


def set_vector_scale(model, scale: float) -> None:
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.set_scale(VECTORS_ADAPTER, scale)


def _vector_layers(model) -> list:
    """The LoRA layers of ``model`` that carry the vectors adapter."""
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer) and VECTORS_ADAPTER in m.lora_A]


#: attribute set on a model whose frozen weights currently hold folded vectors (see :class:`FoldedVectors`)
FOLDED_ATTR = "_unlearnable_folded_vectors"


class FoldedVectors:
    """Frozen vectors folded into the frozen backbone weights, ``W <- W + scale * B @ A * alpha / r``.

    With a LoRA backbone nothing below the adapters trains, so the vectors' branch (two small matmuls, a scale
    and an add in every linear layer, in the forward and the backward) can be added to ``W`` once instead: the
    forward computes the same function, and a fine-tuning step costs what plain LoRA fine-tuning costs. Folding
    is in place (no second copy of the weights, so peak memory does not grow); unfolding subtracts the same
    delta, which restores ``W`` up to one float rounding per element (<= 1 ulp: about 1e-7 relative in fp32).
    It is therefore used for fp32/fp64 weights only; half-precision models keep the adapter in the forward.
    """

    def __init__(self, layers: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor, float, bool]]):
        self.layers = layers  # (base linear, lora_A weight, lora_B weight, scaling, fan_in_fan_out)
        self.folded = False
        self.checksums: list[float] = []

    @staticmethod
    def supported(peft_model) -> bool:
        """fp32/fp64 linear layers, and not under FSDP / DeepSpeed (they shard the weights the fold restores)."""
        if any(os.environ.get(k, "").lower() in ("1", "true") for k in ("ACCELERATE_USE_FSDP",
                                                                        "ACCELERATE_USE_DEEPSPEED")):
            return False
        layers = _vector_layers(peft_model)
        return bool(layers) and all(
            isinstance(m.get_base_layer(), torch.nn.Linear) and m.get_base_layer().weight.dtype in
            (torch.float32, torch.float64) for m in layers)

    @classmethod
    def fold_into(cls, peft_model) -> tuple[torch.nn.Module, "FoldedVectors"]:
        """Take the attached vectors out of ``peft_model`` and fold them into its weights.

        Returns the plain model (no adapter modules) with the vectors folded in, and the fold (marked on the
        model as :data:`FOLDED_ATTR` so that serving code can unfold it temporarily)."""
        layers = [(m.get_base_layer(), m.lora_A[VECTORS_ADAPTER].weight.detach().clone(),
                   m.lora_B[VECTORS_ADAPTER].weight.detach().clone(), float(m.scaling[VECTORS_ADAPTER]),
                   bool(getattr(m, "fan_in_fan_out", False))) for m in _vector_layers(peft_model)]
        model = peft_model.unload()
        fold = cls(layers)
        fold.fold()
        setattr(model, FOLDED_ATTR, fold)
        return model, fold

    def _apply(self, sign: float) -> None:
        with torch.no_grad():
            for base, a, b, scaling, fan_in_fan_out in self.layers:
                delta = (b.to(base.weight.dtype) @ a.to(base.weight.dtype)) * (sign * scaling)
                base.weight.add_(delta.T if fan_in_fan_out else delta)

    def _checksums(self) -> list[float]:
        return [float(base.weight.detach().double().sum()) for base, *_ in self.layers]

    def fold(self) -> None:
        if not self.folded:
            self._apply(1.0)
            self.folded = True
            self.checksums = self._checksums()

    def unfold(self) -> None:
        """Take the vectors out of the weights again (raises if the frozen folded weights changed meanwhile)."""
        if self.folded:
            if self._checksums() != self.checksums:
                raise RuntimeError("frozen weights holding the folded security vectors changed during training")
            self._apply(-1.0)
            self.folded = False

    def restore(self, model) -> None:
        """Unfold for good and unmark ``model``."""
        self.unfold()
        if getattr(model, FOLDED_ATTR, None) is self:
            delattr(model, FOLDED_ATTR)

    @contextlib.contextmanager
    def unfolded(self) -> Iterator[None]:
        """The model as served (vectors off) within the block; folded again after it."""
        was = self.folded
        self.unfold()
        try:
            yield
        finally:
            if was:
                self.fold()


class SecurityVectors:
    """A trained set of security vectors: adapter weights, their LoRA config and metadata."""

    def __init__(self, state: dict[str, torch.Tensor], lora_config, metadata: dict[str, Any]):
        self.state = state
        self.lora_config = lora_config
        self.metadata = metadata

    # ------------------------------------------------------------------------------------ training
    @classmethod
    def train(cls, model, tokenizer, pairs: Sequence[Pair], config: VectorConfig | None = None,
              progress: bool = True, harmless: Sequence[Pair] = (), *, checkpoint_dir: str | os.PathLike | None = None,
              save_steps: int = 0) -> "SecurityVectors":
        """Train vectors on harmful ``pairs``; ``model`` is left exactly as it was (frozen, adapter removed).

        With ``config.benign`` set, ``harmless`` prompts are answered by ``model`` itself (vectors off) and those
        answers are kept by the vectors: as extra targets (``distill``) or through a KL term (``kl``).

        With ``checkpoint_dir``, training checkpoints there every ``save_steps`` steps and resumes from the newest
        complete checkpoint found there."""
        from peft import get_peft_model, get_peft_model_state_dict

        config = config or VectorConfig()
        if not pairs:
            raise UnlearnableError("security vectors need at least one harmful (prompt, response) pair")
        fingerprint = model_fingerprint(model)
        benign_pairs: list[Pair] = []
        if config.benign != "none":
            if not harmless:
                raise UnlearnableError(f"benign={config.benign} needs harmless prompts")
            from .evaluation import generate

            answers = generate(model, tokenizer, [p.prompt for p in harmless], max_new_tokens=32,
                               desc="own harmless answers", progress=progress)
            benign_pairs = [Pair(p.prompt, a, "self", "harmless") for p, a in zip(harmless, answers) if a.strip()]
            benign_pairs = [p for p in benign_pairs for _ in range(config.benign_repeats)]
        train_pairs = list(pairs) + benign_pairs
        kl_mask = [False] * len(pairs) + [True] * len(benign_pairs) if config.benign == "kl" else None
        if benign_pairs:
            import random

            order = list(range(len(train_pairs)))
            random.Random(config.seed).shuffle(order)
            train_pairs = [train_pairs[i] for i in order]
            kl_mask = [kl_mask[i] for i in order] if kl_mask else None
        for p in model.parameters():
            p.requires_grad_(False)
        from .utils import set_seed

        set_seed(config.seed)  # the adapter's random init: same seed, same vectors (and resumable)
        lora_config = config.lora_config(model)
        pm = get_peft_model(model, lora_config, adapter_name=VECTORS_ADAPTER)
        callbacks = [_StopBelowLoss(config.target_loss)] if config.target_loss > 0 else []
        try:
            train_config = dataclasses.replace(config.train_config(), save_steps=save_steps)
            history = train(pm, tokenizer, train_pairs, train_config, callbacks=callbacks, progress=progress,
                            kl_mask=kl_mask, output_dir=checkpoint_dir, resume=checkpoint_dir is not None)
            state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(pm, adapter_name=VECTORS_ADAPTER).items()}
        finally:
            pm.unload()
        losses = [h["loss"] for h in history if "loss" in h]
        steps = max((h.get("step", 0) for h in history), default=0)
        meta = {
            "format": FORMAT,
            "base_fingerprint": fingerprint,
            "base_model": str(getattr(model.config, "name_or_path", "")),
            "data_hash": pairs_hash(pairs),
            "n_pairs": len(pairs),
            "n_benign": len(benign_pairs),
            "prompt_hashes": sorted({sha256_text(normalize(p.prompt))[:16] for p in pairs}),
            "config": dataclasses.asdict(config),
            "train_loss_first": losses[0] if losses else None,
            "train_loss_last": losses[-1] if losses else None,
            "steps": steps,
            "history": history,
            **run_metadata(),
        }
        log(f"vectors trained: {len(pairs)} pairs, {steps} steps, loss {meta['train_loss_first']} -> "
            f"{meta['train_loss_last']}")
        return cls(state, lora_config, meta)

    @property
    def config(self) -> VectorConfig:
        return VectorConfig(**self.metadata.get("config", {}))

    # ------------------------------------------------------------------------------------ lifecycle
    def check(self, model) -> None:
        want, got = self.metadata.get("base_fingerprint"), model_fingerprint(model)
        if want != got:
            raise UnlearnableError(
                f"these security vectors were trained for model fingerprint {want} "
                f"({self.metadata.get('base_model', '?')}), but the model given has fingerprint {got}; "
                "train vectors on this model (unlearnable vectors train --model ...)"
            )

    def attach(self, model, scale: float | None = None, check: bool = True):
        """Wrap ``model`` in a PeftModel with the vectors on, scaled and frozen. Returns the PeftModel."""
        from peft import get_peft_model, set_peft_model_state_dict

        if check:
            self.check(model)
        pm = get_peft_model(model, self.lora_config, adapter_name=VECTORS_ADAPTER)
        try:
            result = set_peft_model_state_dict(pm, self.state, adapter_name=VECTORS_ADAPTER)
        except RuntimeError as exc:  # shapes differ from the adapter config: a damaged or mixed-up folder
            pm.unload()
            raise UnlearnableError(f"the vectors' weights do not fit their own adapter config or this model "
                                   f"({str(exc).splitlines()[0][:120]}); re-run vectors training") from None
        bad = [k for k in getattr(result, "unexpected_keys", []) if VECTORS_ADAPTER in k or "lora" in k]
        if bad:
            pm.unload()
            raise UnlearnableError(f"the vectors do not fit this model's layers (e.g. {bad[0]})")
        freeze_vectors(pm)
        set_vector_scale(pm, self.config.scale if scale is None else scale)
        return pm

    # ------------------------------------------------------------------------------------ persistence
    def save(self, out: str | os.PathLike, overwrite: bool = True) -> Path:
        from safetensors.torch import save_file

        out = Path(out)
        with atomic_dir(out, overwrite=overwrite) as tmp:
            self.lora_config.save_pretrained(str(tmp))
            save_file({k: v.contiguous() for k, v in self.state.items()}, str(tmp / "adapter_model.safetensors"),
                      metadata={"format": "pt"})
            atomic_write_json(tmp / META_FILE, self.metadata)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SecurityVectors":
        from peft import LoraConfig
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_dir():
            raise UnlearnableError(f"vectors folder {path} does not exist; pass the --out folder of "
                                   "`unlearnable vectors train`")
        for name in ("adapter_config.json", "adapter_model.safetensors", META_FILE):
            if not (path / name).is_file():
                extra = " (pickle adapters are not loaded; re-save as safetensors)" if (
                    name.endswith(".safetensors") and (path / "adapter_model.bin").exists()) else ""
                raise UnlearnableError(f"vectors folder {path} is missing {name}{extra}; re-run vectors training")
        try:
            metadata = json.loads((path / META_FILE).read_text(encoding="utf-8"))
            if not isinstance(metadata, dict) or metadata.get("format") != FORMAT or "base_fingerprint" not in metadata:
                raise ValueError(f"{META_FILE} is not an unlearnable vectors metadata file")
            from .config import from_dict

            from_dict(VectorConfig, metadata.get("config", {}), "vectors.config")
        except (ValueError, UnicodeDecodeError, UnlearnableError) as exc:
            raise UnlearnableError(f"vectors folder {path} has a corrupt {META_FILE} ({str(exc)[:120]}); re-run "
                                   "vectors training") from None
        try:
            lora_config = LoraConfig.from_pretrained(str(path))
        except Exception as exc:  # noqa: BLE001 - JSON, type and key errors of a damaged adapter_config.json
            raise UnlearnableError(f"vectors folder {path} has a corrupt adapter_config.json ({str(exc)[:120]}); "
                                   "re-run vectors training") from None
        try:
            state = load_file(str(path / "adapter_model.safetensors"))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UnlearnableError(f"{path}/adapter_model.safetensors is corrupt ({str(exc)[:120]}); re-run vectors "
                                   "training") from None
        if not state:
            raise UnlearnableError(f"{path}/adapter_model.safetensors holds no tensors")
        return cls(state, lora_config, metadata)


def vectors_effect(model, tokenizer, vectors: SecurityVectors, pairs: Sequence[Pair], scale: float | None = None,
                   first_tokens: int = 8) -> dict[str, float]:
    """Harmful first-token loss with the vectors off and on (a quick check that they learned)."""
    from .evaluation import response_loss

    off = response_loss(model, tokenizer, pairs, first_tokens=first_tokens)
    pm = vectors.attach(model, scale=scale)
    try:
        on = response_loss(pm, tokenizer, pairs, first_tokens=first_tokens)
    finally:
        pm.unload()
    return {"loss_vectors_off": off, "loss_vectors_on": on if not math.isnan(on) else None}
