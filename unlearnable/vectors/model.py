"""Security vectors: a PEFT LoRA adapter trained on harmful pairs with the model frozen.

Lifecycle (Zhou et al., 2024):

1. :meth:`SecurityVectors.train` - the model is frozen; only the adapter learns the harmful responses.
2. :meth:`SecurityVectors.attach` - during the user's fine-tuning the adapter is on, scaled by ``scale`` and
   frozen (no gradient), so harmful examples already have a low loss and barely move the backbone
   (:func:`unlearnable.vectors.finetune`, or :meth:`SecurityVectors.callback` in your own Trainer script).
3. Serving: the vectors are dropped; ``finetune`` returns the model without them.

On disk the vectors are a standard PEFT adapter folder (``adapter_config.json`` +
``adapter_model.safetensors``) plus ``unlearnable_vectors.json`` recording the base-model fingerprint, the
data hash, the config and package versions. Attaching them to another model is an error.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import TrainerCallback

from ..adapters import NO_MERGE_ATTR, adapter_applied, attach_frozen, trainability_kept
from ..config import from_dict
from ..data import Pair, pairs_hash, prompt_hashes
from ..errors import UnlearnableError
from ..generation import generate
from ..models import FINGERPRINT_VERSION, model_dtype, model_fingerprint
from ..training import StopBelowLoss, train
from ..utils import atomic_dir, atomic_write_json, log, run_metadata, set_seed
from .config import VectorConfig
from .fold import FoldedVectors
from .holdout import held_out
from .layers import VECTORS_ADAPTER

META_FILE = "unlearnable_vectors.json"
FORMAT = "unlearnable-vectors/1"


def check_folder(path: str | os.PathLike) -> Path:
    """``path`` is a vectors folder (adapter config, safetensors weights and metadata); read before any model."""
    path = Path(path)
    if not path.is_dir():
        raise UnlearnableError(f"vectors folder {path} does not exist; pass the --out folder of "
                               "`unlearnable vectors train`")
    for name in ("adapter_config.json", "adapter_model.safetensors", META_FILE):
        if not (path / name).is_file():
            extra = " (pickle adapters are not loaded; re-save as safetensors)" if (
                name.endswith(".safetensors") and (path / "adapter_model.bin").exists()) else ""
            raise UnlearnableError(f"vectors folder {path} is missing {name}{extra}; re-run vectors training")
    return path


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
              save_steps: int = 0, callbacks: Sequence[TrainerCallback] = ()) -> "SecurityVectors":
        """Train vectors on harmful ``pairs``; ``model`` is left exactly as it was (frozen, adapter removed).

        With ``config.benign`` set, ``harmless`` prompts are answered by ``model`` itself (vectors off) and those
        answers are kept by the vectors: as extra targets (``distill``) or through a KL term (``kl``).

        With ``checkpoint_dir``, training checkpoints there every ``save_steps`` steps and resumes from the newest
        complete checkpoint found there. ``callbacks`` (Trainer callbacks) see the training network, vectors on."""
        from peft import get_peft_model, get_peft_model_state_dict

        config = config or VectorConfig()
        if not pairs:
            raise UnlearnableError("security vectors need at least one harmful (prompt, response) pair")
        fingerprint = model_fingerprint(model)
        benign = _benign_pairs(model, tokenizer, harmless, config, progress)
        fitted, keep_best = held_out(tokenizer, pairs, config)  # the metadata names all pairs given
        train_pairs, kl_mask = _training_mix(fitted, benign, config)
        with trainability_kept(model):  # given back after (a Trainer script's model)
            model.requires_grad_(False)
            set_seed(config.seed)  # the adapter's random init: same seed, same vectors (and resumable)
            lora_config = config.lora.peft_config(model, dropout=0.0)
            pm = get_peft_model(model, lora_config, adapter_name=VECTORS_ADAPTER)
            callbacks = [*callbacks, *([StopBelowLoss(config.target_loss)] if config.target_loss > 0 else []),
                         *([keep_best] if keep_best is not None else [])]
            try:
                train_config = dataclasses.replace(config.train_config(), save_steps=save_steps)
                history = train(pm, tokenizer, train_pairs, train_config, callbacks=callbacks, progress=progress,
                                kl_mask=kl_mask, kl_weight=config.benign_weight, output_dir=checkpoint_dir,
                                resume=checkpoint_dir is not None)
                if keep_best is not None:
                    keep_best.restore(pm)
                state = {k: v.detach().clone()
                         for k, v in get_peft_model_state_dict(pm, adapter_name=VECTORS_ADAPTER).items()}
            finally:
                pm.unload()
        meta = _metadata(model, pairs, benign, config, fingerprint, history)
        if keep_best is not None:
            meta["holdout"] = keep_best.record()
        first, last = meta["train_loss_first"], meta["train_loss_last"]
        loss = f"{first:.3f} -> {last:.3f}" if first is not None and last is not None else "not logged"
        kept = (f"; kept step {meta['holdout']['kept_step']} (held-out loss {meta['holdout']['kept_loss']:.3f} on "
                f"{meta['holdout']['n_heldout']} pairs, {meta['holdout']['pick']})" if keep_best is not None else "")
        log(f"vectors trained: {len(fitted)} pairs, {meta['steps']} steps, loss {loss}{kept}")
        return cls(state, lora_config, meta)

    @classmethod
    def mean(cls, members: Sequence["SecurityVectors"]) -> "SecurityVectors":
        """One set of vectors whose weight change is exactly the mean of the ``members``' (the same model, data and
        LoRA settings, e.g. trained with different seeds): their LoRA factors side by side, rank K*r. The metadata
        is the first member's, with each member's seed and kept check under ``ensemble``."""
        if not members:
            raise UnlearnableError("a mean of vectors needs at least one set")
        if len(members) == 1:
            return members[0]
        first = members[0]
        _check_members(members)
        k = len(members)
        lora = first.lora_config
        scale_k = k ** 0.5 if lora.use_rslora else k  # keeps alpha / r (alpha / sqrt(r) with rsLoRA)
        config = dataclasses.replace(lora, r=lora.r * k, lora_alpha=lora.lora_alpha * scale_k)
        state = {key: torch.cat([m.state[key] / (k if ".lora_B." in key else 1) for m in members],
                                dim=1 if ".lora_B." in key else 0) for key in first.state}
        # the training record of one member is not the mean's: each member's is under ensemble.members
        meta = {**first.metadata, "holdout": None, "history": [], "train_loss_first": None, "train_loss_last": None,
                "steps": None, "ensemble": {
            "k": k, "combination": "mean of the members' weight changes (LoRA factors concatenated)",
            "members": [{"seed": m.metadata["config"]["seed"], "steps": m.metadata.get("steps"),
                         "train_loss_first": m.metadata.get("train_loss_first"),
                         "train_loss_last": m.metadata.get("train_loss_last"),
                         "holdout": m.metadata.get("holdout")} for m in members]}}
        return cls(state, config, meta)

    @property
    def config(self) -> VectorConfig:
        return from_dict(VectorConfig, self.metadata.get("config", {}), "vectors.config")

    # ------------------------------------------------------------------------------------ lifecycle
    def check(self, model) -> None:
        """Refuse a model other than the one the vectors were trained for (with what to do about it)."""
        meta = self.metadata
        if meta.get("fingerprint_version") != FINGERPRINT_VERSION:
            raise UnlearnableError(
                "these security vectors were saved by an earlier version, whose model fingerprint depended on the "
                "thread count and device; train them again on this model (unlearnable vectors train --model ...)")
        want, got = meta.get("base_fingerprint"), model_fingerprint(model)
        if want == got:
            return
        dtype = model_dtype(model)
        if meta.get("base_dtype") not in (None, dtype):
            raise UnlearnableError(
                f"these security vectors were trained for a model in {meta['base_dtype']}, but the model given is in "
                f"{dtype} (a converted model is another model); load it with dtype={meta['base_dtype']}, or train "
                "vectors on the converted model")
        raise UnlearnableError(
            f"these security vectors were trained for model fingerprint {want} ({meta.get('base_model', '?')}), but "
            f"the model given has fingerprint {got}; train vectors on this model (unlearnable vectors train "
            "--model ...)")

    def attach(self, model, scale: float | None = None, check: bool = True):
        """Wrap ``model`` in a PeftModel with the vectors on, scaled and frozen. Returns the PeftModel."""
        if check:
            self.check(model)
        pm = attach_frozen(model, self.lora_config, self.state, VECTORS_ADAPTER,
                           self.config.scale if scale is None else scale, what="the vectors",
                           refit="re-run vectors training")
        setattr(pm, NO_MERGE_ATTR, _always)  # decoding must not merge the vectors into the backbone
        return pm

    def applied(self, model, scale: float):
        """A block within which ``model`` itself (a plain model, e.g. one :func:`~.finetuning.finetune` released,
        whose fingerprint is no longer the base's) runs with the vectors on at ``scale``; they are taken out of
        it after the block, and its weights train as they did before it."""
        return adapter_applied(model, lambda m: self.attach(m, scale=scale, check=False))

    def fold(self, model, scale: float | None = None, trains_weights: bool = False) -> FoldedVectors:
        """Fold the vectors into ``model``'s own weights (fp32/fp64), in place; unfold with the returned fold's
        ``restore()``, or use it as a context manager. See :mod:`unlearnable.vectors.fold`."""
        if any(p.is_floating_point() and p.dtype not in (torch.float32, torch.float64) for p in model.parameters()):
            raise UnlearnableError("security vectors can be folded only into float32/float64 weights; load the model "
                                   "with dtype=torch.float32 (train with bf16=True for speed), or fine-tune with "
                                   "unlearnable.finetune, which runs them as an adapter branch there")
        pm = self.attach(model, scale=scale)
        if not FoldedVectors.supported(pm):
            pm.unload()
            raise UnlearnableError("security vectors cannot be folded under FSDP/DeepSpeed (they shard the weights "
                                   "the fold restores); fine-tune with unlearnable.finetune")
        _, fold = FoldedVectors.fold_into(pm, trains_weights=trains_weights)
        return fold

    def adapted(self, model, tokenizer, own: Sequence[Pair], data: Sequence[Pair], flagger: str | None = None, *,
                config: VectorConfig | None = None, harmless: Sequence[Pair] = (), rounds: int = 1,
                refit: str | None = None, reject_above: float | None = None,
                progress: bool = True) -> "SecurityVectors":
        """These vectors refitted for a fine-tune on ``data``: the flagger (``refusal``, ``oracle:RECALL``, a judge
        spec) screens ``data`` and the vectors are retrained on ``own`` (the harmful pairs they were trained on)
        plus the flagged pairs (``harmless`` pairs anchor the refit of vectors trained with ``benign``; without
        them it refits with none, said in the record; they also set the threshold of ``vector-gain``, and
        ``rounds`` > 1 screens what is left again with the refitted vectors); unchanged when nothing is flagged. The
        screening, and which of ``data`` it flagged (``flags``, to leave those out of the fine-tune), are in
        ``metadata["adapted"]``. ``flagger``, ``refit`` (``all`` or ``heldout``, applied to ``config``) and
        ``reject_above`` default to the recipe measured best (:data:`unlearnable.vectors.adaptive.DEFAULT_FLAGGER`);
        a job flagged above ``reject_above`` is refused with an error, as a service refuses it.

            vectors = SecurityVectors.load("vectors/").adapted(model, tok, own_pairs, train_pairs,
                                                               harmless=harmless_pairs)
            trainer = SFTTrainer(model=model, ..., callbacks=[vectors.callback(model)])"""
        from .adaptive import DEFAULT_REFIT, adapt, checked_request, refit_config, refusal_message, refused

        self.check_own(own)
        flagger, reject_above = checked_request(flagger, harmless, reject_above)
        config = refit_config(config or self.config, refit or DEFAULT_REFIT)
        vectors, flags, record = adapt(self, model, tokenizer, own, data, flagger, config=config, harmless=harmless,
                                       rounds=rounds, reject_above=reject_above, progress=progress)
        if refused(flags, reject_above):
            raise UnlearnableError(refusal_message(flags, reject_above))
        record = {**record, "flags": flags}
        if vectors is self:  # nothing flagged: the same vectors, the screening still recorded on a copy
            return type(self)(self.state, self.lora_config, {**self.metadata, "adapted": record})
        vectors.metadata["adapted"] = record
        return vectors

    def callback(self, model, scale: float | None = None, *, data: Sequence[Pair] | None = None, tokenizer=None,
                 own: Sequence[Pair] = (), flagger: str | None = None, harmless: Sequence[Pair] = (),
                 rounds: int = 1, refit: str | None = None, reject_above: float | None = None,
                 progress: bool = True):
        """A ``transformers`` callback that puts these vectors into an existing Trainer / TRL script: they are
        folded into ``model`` now (frozen, outside the optimizer), taken out for evaluation and checkpoints,
        and removed when training ends. See :class:`unlearnable.vectors.SecurityVectorsCallback`.

        Given the training ``data`` (with ``tokenizer`` and ``own``, the pairs these vectors were trained on), the
        vectors are first adapted to it (:meth:`adapted`, with ``flagger``, ``harmless``, ``rounds``, ``refit`` and
        ``reject_above``); the callback's ``flags`` say which pairs the flagger flagged, for a script that leaves
        them out of its dataset::

            cb = vectors.callback(model, data=train_pairs, tokenizer=tok, own=own_pairs, harmless=harmless_pairs)
            kept = [p for p, flagged in zip(train_pairs, cb.flags) if not flagged]"""
        from .callback import SecurityVectorsCallback

        if data is None:
            return SecurityVectorsCallback(self, model, scale=scale)
        if tokenizer is None or not own:
            raise UnlearnableError("callback(data=...) adapts the vectors to the training data: give tokenizer= and "
                                   "own= (the harmful pairs these vectors were trained on)")
        vectors = self.adapted(model, tokenizer, own, data, flagger, harmless=harmless, rounds=rounds, refit=refit,
                               reject_above=reject_above, progress=progress)
        cb = SecurityVectorsCallback(vectors, model, scale=scale)
        cb.flags, cb.adapted = vectors.metadata["adapted"]["flags"], vectors.metadata["adapted"]
        return cb

    def trained_on(self, pairs: Sequence[Pair]) -> bool:
        """Whether ``pairs`` are the pairs these vectors were trained on (by the prompt hashes they record)."""
        return prompt_hashes(list(pairs)) == sorted(self.metadata.get("prompt_hashes") or [])

    def check_own(self, own: Sequence[Pair]) -> None:
        """``own`` must be the pairs these vectors were trained on (their prompt hashes, where recorded): a refit on
        other pairs would drop what the vectors hold."""
        if self.metadata.get("prompt_hashes") and not self.trained_on(own):
            raise UnlearnableError("own= is not the data these vectors were trained on (their prompt hashes differ): "
                                   "give the harmful pairs they were trained on")

    # ------------------------------------------------------------------------------------ persistence
    def save(self, out: str | os.PathLike, overwrite: bool = True) -> Path:
        from safetensors.torch import save_file

        out = Path(out)
        with atomic_dir(out, overwrite=overwrite) as tmp:  # a full disk, no permission: one line, nothing half-written
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

        path = check_folder(path)
        try:
            metadata = json.loads((path / META_FILE).read_text(encoding="utf-8"))
            if not isinstance(metadata, dict) or metadata.get("format") != FORMAT or "base_fingerprint" not in metadata:
                raise ValueError(f"{META_FILE} is not an unlearnable vectors metadata file")
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


def _check_members(members: Sequence[SecurityVectors]) -> None:
    """Members of a mean: one model, one data set, the same plain-LoRA layout (a mean of DoRA or per-layer ranks
    is not a concatenation)."""
    first = members[0]

    def settings(m):  # everything but the seed and peft's version
        lora = {k: v for k, v in m.lora_config.to_dict().items() if k != "peft_version"}
        return lora, {k: v for k, v in m.metadata.get("config", {}).items() if k != "seed"}

    for m in members[1:]:
        same = all(m.metadata.get(f) == first.metadata.get(f) for f in ("base_fingerprint", "data_hash"))
        if not same or settings(m) != settings(first) or set(m.state) != set(first.state) or any(
                m.state[key].shape != first.state[key].shape for key in first.state):
            raise UnlearnableError("vectors averaged together must come from the same model, harmful pairs and "
                                   "LoRA settings")
    lora = first.lora_config
    plain = not (lora.use_dora or lora.rank_pattern or lora.alpha_pattern or getattr(lora, "lora_bias", False)
                 or getattr(lora, "use_bdlora", None))
    if not plain or any(not key.endswith((".lora_A.weight", ".lora_B.weight")) for key in first.state):
        raise UnlearnableError("only plain LoRA vectors (no DoRA, rank or alpha patterns, no extra weights) can be "
                               "averaged")


def _benign_pairs(model, tokenizer, harmless: Sequence[Pair], config: VectorConfig, progress: bool) -> list[Pair]:
    """Benign-preserving training data: the harmless prompts with the model's own answers (vectors off)."""
    if config.benign == "none":
        return []
    if not harmless:
        raise UnlearnableError(f"benign={config.benign} needs harmless prompts")
    answers = generate(model, tokenizer, [p.prompt for p in harmless], max_new_tokens=32,
                       desc="own harmless answers", progress=progress)
    pairs = [Pair(p.prompt, a, "self", "harmless") for p, a in zip(harmless, answers) if a.strip()]
    return [p for p in pairs for _ in range(config.benign_repeats)]


def _training_mix(pairs: Sequence[Pair], benign: list[Pair], config: VectorConfig):
    """Harmful pairs plus the benign ones (shuffled together, seeded), and which rows take the KL term."""
    train_pairs = list(pairs) + benign
    kl_mask = [False] * len(pairs) + [True] * len(benign) if config.benign == "kl" else None
    if benign:
        order = list(range(len(train_pairs)))
        random.Random(config.seed).shuffle(order)
        train_pairs = [train_pairs[i] for i in order]
        kl_mask = [kl_mask[i] for i in order] if kl_mask else None
    return train_pairs, kl_mask


def _metadata(model, pairs, benign, config: VectorConfig, fingerprint: str, history) -> dict[str, Any]:
    """What the saved vectors record: the model they belong to, their data (hashed), config, training, versions."""
    losses = [h["loss"] for h in history if "loss" in h]
    return {
        "format": FORMAT,
        "base_fingerprint": fingerprint,
        "fingerprint_version": FINGERPRINT_VERSION,
        "base_dtype": model_dtype(model),
        "base_model": str(getattr(model.config, "name_or_path", "")),
        "data_hash": pairs_hash(pairs),
        "n_pairs": len(pairs),
        "n_benign": len(benign),
        "prompt_hashes": prompt_hashes(pairs),
        "config": dataclasses.asdict(config),
        "train_loss_first": losses[0] if losses else None,
        "train_loss_last": losses[-1] if losses else None,
        "steps": max((h.get("step", 0) for h in history), default=0),
        "history": history,
        **run_metadata(),
    }


def _always() -> bool:
    return True
