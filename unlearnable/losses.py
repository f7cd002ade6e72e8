"""Next-token losses at the response positions only, without holding a logits tensor for the whole batch.

A causal LM's output layer turns every position into a vocabulary-wide row of logits: for a small model with a
large vocabulary that tensor, its float32 copy, its log-softmax and their gradients are the largest share of a
step's memory. Only the response positions have targets, so :func:`token_losses` runs the model's forward with
its output layer set aside (the forward returns the last hidden states), keeps the hidden states of those
positions, and applies the output layer and the cross-entropy to a few hundred of them at a time, in the precision
the forward ran in; with gradients on, each slice is recomputed in the backward pass (the logits are never kept).
The result is the same per-token loss as ``cross_entropy(model(...).logits)``, up to float rounding.

The shortcut is taken where the model's logits are its output layer applied to its last hidden states: checked
once per model against the model's own forward (a model that caps its logits after the output layer fails the
check), and skipped for a model wrapped for data parallelism. Otherwise the losses come from the model's own
logits, at the target positions.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Iterator

import torch
from torch.utils.checkpoint import checkpoint

#: logits computed at once (rows x vocabulary): 4M floats, 16 MB in float32; smaller slices cost step time on the
#: default model, larger ones memory (benchmarks/RESULTS.md)
CHUNK_ELEMENTS = 1 << 22
#: rows per slice at least, whatever the vocabulary: fewer would leave the matrix product too thin to run fast
MIN_CHUNK_ROWS = 64
#: the result of :func:`checked_split`'s check, by output layer
_CHECKED: "weakref.WeakKeyDictionary[torch.nn.Module, bool]" = weakref.WeakKeyDictionary()


def token_losses(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(losses, mask)``: the next-token loss (float32) at every position whose shifted label is not -100,
    flattened in row-major order, and that ``(batch, length - 1)`` mask."""
    targets = labels[:, 1:]
    mask = targets != -100
    if not bool(mask.any()):  # no loss, but a forward all the same: the step's backward (and its peers') needs one
        return kept_logits(model, input_ids, attention_mask, 1).float().reshape(-1)[:0], mask
    first = int(mask.any(dim=0).nonzero()[0])
    keep = torch.arange(first, input_ids.shape[1] - 1, device=input_ids.device)
    kept, tgt = mask[:, first:], targets[:, first:][mask[:, first:]]
    lm = checked_split(model, input_ids, attention_mask)
    if lm is None:
        logits = kept_logits(model, input_ids, attention_mask, keep)
        return torch.nn.functional.cross_entropy(logits[kept].float(), tgt, reduction="none"), mask
    with _deferred_head(lm) as (head, stand_in):
        hidden = kept_logits(model, input_ids, attention_mask, keep)
    with torch.autocast(*stand_in.autocast):  # the precision the model's forward ran in
        return chunked_nll(head, hidden[kept], tgt), mask


def kept_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: int | torch.Tensor,
                **forward) -> torch.Tensor:
    """The model's output at the ``keep`` positions only (``logits_to_keep``: the last ``keep`` positions, or those
    indices); ``forward``: further arguments of the model's forward (e.g. ``position_ids``)."""
    try:
        return model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, **forward).logits
    except TypeError:  # an architecture without logits_to_keep: every position, then the kept ones
        logits = model(input_ids=input_ids, attention_mask=attention_mask, **forward).logits
        return logits[:, -keep:] if isinstance(keep, int) else logits[:, keep]


def per_row(losses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of each row's token losses (``losses`` as :func:`token_losses` returns them)."""
    rows = torch.arange(mask.shape[0], device=mask.device).unsqueeze(1).expand_as(mask)[mask]
    return torch.zeros(mask.shape[0], dtype=losses.dtype, device=losses.device).index_add(0, rows, losses)


def chunked_nll(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``head(hidden)`` against ``targets``, a slice of rows at a time (recomputed for the
    backward pass when gradients are on)."""
    rows = max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // max(1, _vocab(head)))
    # an adapter on the output layer may be switched by a context (gated vectors serve some rows without theirs)
    # that a recomputation in the backward pass would not see: then the slices' logits are kept instead
    recompute = (torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
                 and not any(type(m).__module__.startswith("peft.") for m in head.modules()))
    out = []
    for start in range(0, hidden.shape[0], rows):
        h, t = hidden[start:start + rows], targets[start:start + rows]
        out.append(checkpoint(_nll, head, h, t, use_reentrant=False, preserve_rng_state=False) if recompute
                   else _nll(head, h, t))
    return torch.cat(out)


def _nll(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(head(hidden).float(), targets, reduction="none")


class _StandIn(torch.nn.Module):
    """In the output layer's place during the forward: passes the hidden states through and notes the autocast
    state the forward ran in (a wrapper such as accelerate's mixed precision may have set it)."""

    autocast: tuple[str, torch.dtype, bool] = ("cpu", torch.bfloat16, False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        kind = hidden.device.type
        self.autocast = (kind, torch.get_autocast_dtype(kind), torch.is_autocast_enabled(kind))
        return hidden


@contextlib.contextmanager
def _deferred_head(lm) -> Iterator[tuple[torch.nn.Module, _StandIn]]:
    """The model's forward returns its last hidden states instead of logits while inside."""
    head, stand_in = lm.get_output_embeddings(), _StandIn()
    lm.set_output_embeddings(stand_in)
    try:
        yield head, stand_in
    finally:
        lm.set_output_embeddings(head)


def _causal_lm(model):
    """The model whose output layer can be swapped (through a PEFT wrapper); None where there is none or the
    model is wrapped for data parallelism (its forward syncs the gradients: left as it is)."""
    if hasattr(model, "module"):
        return None
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    get_head = getattr(lm, "get_output_embeddings", None)
    try:
        head = get_head() if get_head is not None else None
    except (AttributeError, NotImplementedError):
        return None
    if not isinstance(head, torch.nn.Module) or not hasattr(lm, "set_output_embeddings") or _sharded(head):
        return None
    return lm


def _sharded(head: torch.nn.Module) -> bool:
    """Whether the output layer's weight is sharded across processes (FSDP2 DTensor, DeepSpeed ZeRO-3): gathered
    only inside the model's forward, so it cannot be applied after it."""
    weight = getattr(head, "weight", None)
    return weight is not None and (type(weight).__name__ == "DTensor" or hasattr(weight, "ds_id"))


def checked_split(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
    """The causal LM inside ``model`` if its logits are its output layer applied to what comes before it (no
    scaling or capping after), else None.

    Checked once per model on the first row of ``input_ids`` (16 tokens, eval mode so that dropout draws no
    random numbers); :func:`unlearnable.training.train` checks before its first step, so that no forward hook a
    defence sets during a step sees the check's forward."""
    lm = _causal_lm(model)
    if lm is None:
        return None
    head = lm.get_output_embeddings()
    known = _CHECKED.get(head)
    if known is None:
        known = _CHECKED[head] = _same_logits(model, lm, input_ids, attention_mask)
    return lm if known else None


def _same_logits(model, lm, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> bool:
    """The same computation both ways, so the same numbers up to rounding; a forward that fails with the output
    layer set aside (one that reads its weight, or casts the logits) is not the same either."""
    ids = input_ids[:1, :16]
    att = attention_mask[:1, :16] if attention_mask is not None else torch.ones_like(ids)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            own = model(input_ids=ids, attention_mask=att).logits.float()
            with _deferred_head(lm) as (head, _):
                hidden = model(input_ids=ids, attention_mask=att).logits
            split = head(hidden).float()
    except Exception:  # noqa: BLE001 - any failure means: use the model's own forward
        return False
    finally:
        model.train(was_training)
    scale = max(1.0, own.abs().max().item())
    return own.shape == split.shape and bool(torch.allclose(own, split, rtol=1e-4, atol=1e-5 * scale))


def _vocab(head: torch.nn.Module) -> int:
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if weight is not None else 1 << 16
