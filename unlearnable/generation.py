"""Batched greedy generation and teacher-forced response loss: the two leaves every score is built on."""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .adapters import merged_lora
from .data import Pair, encode_pair, end_of_answer, left_padded, pad_batch, prompt_text, text_ids
from .losses import kept_logits, per_row, token_losses
from .utils import autocast, resolve_precision


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 32, batch_size: int = 40,
             precision: str = "auto", desc: str = "generating", progress: bool = True,
             sample_seed: int | None = None) -> list[str]:
    """Greedy, batched, KV-cached generation; prompts are length-sorted to cut padding, output in input order.
    With ``sample_seed``, sampled instead (temperature 1, nucleus 0.95), each prompt from a generator of its own
    (seeded by the seed and the prompt): a prompt's answer does not depend on which prompts share its batch (as
    far as its logits do not: batched low-precision kernels can still move a near tie)."""
    if not prompts:
        return []
    device = next(model.parameters()).device
    precision = resolve_precision(precision, device)
    texts = [prompt_text(tokenizer, p) for p in prompts]
    ids = [text_ids(tokenizer, t) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[str] = [""] * len(texts)
    was_training = model.training
    model.eval()
    eos = [tokenizer.eos_token_id] + ([tokenizer.convert_tokens_to_ids("<|im_end|>")]
                                      if "<|im_end|>" in tokenizer.get_vocab() else [])
    greedy = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    try:
        with merged_lora(model):
            bar = tqdm(total=len(texts), desc=desc, disable=not progress, leave=False)
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                enc = {k: v.to(device) for k, v in left_padded([ids[i] for i in idx], pad).items()}
                sampled = (None if sample_seed is None else
                           seeded_sampling([prompt_seed(sample_seed, texts[i]) for i in idx], device))
                with autocast(precision, device):
                    gen = model.generate(**enc, max_new_tokens=max_new_tokens, use_cache=True,
                                         eos_token_id=sorted(set(eos)), pad_token_id=pad, **greedy,
                                         logits_processor=sampled)
                new = gen[:, enc["input_ids"].shape[1]:]
                for i, row in zip(idx, new):
                    out[i] = end_of_answer(tokenizer, tokenizer.decode(row, skip_special_tokens=True)).strip()
                bar.update(len(idx))
            bar.close()
    finally:
        model.train(was_training)
    return out


def prompt_seed(seed: int, text: str) -> int:
    """A sampling seed of its own for one prompt (stable across processes, unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(f"{seed}\t{text}".encode()).digest()[:8], "little")


def seeded_sampling(seeds: Sequence[int], device, top_p: float = 0.95):
    """A logits processor that makes greedy decoding sample (temperature 1, nucleus ``top_p``), row ``r`` from its
    own generator seeded ``seeds[r]``: the nucleus's logits plus Gumbel noise, whose argmax is a sample of their
    softmax (the Gumbel-max trick). One draw per row and step, so a row's answer is its seed's alone."""
    from transformers import LogitsProcessor, LogitsProcessorList, TopPLogitsWarper

    nucleus = TopPLogitsWarper(top_p)
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    class SeededGumbel(LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores = nucleus(input_ids, scores.float())
            u = torch.stack([torch.rand(scores.shape[-1], generator=g, device=scores.device) for g in generators])
            return scores - torch.log(-torch.log(u.clamp(1e-20, 1 - 1e-7)))

    return LogitsProcessorList([SeededGumbel()])


@torch.no_grad()
def response_loss(model, tokenizer, pairs: Sequence[Pair], *, first_tokens: int = 8, batch_size: int = 32,
                  precision: str = "auto", max_length: int = 128) -> float:
    """Mean next-token loss on the first ``first_tokens`` response tokens (where alignment lives).

    Only what the score needs is computed: each row is cut right after its last scored token (a causal model's
    logits there do not depend on what follows), rows are left-padded so the scored tokens of every row line
    up at the end, and the LM head runs on those last positions only (``logits_to_keep``)."""
    if not pairs:
        return float("nan")
    device = next(model.parameters()).device
    precision = resolve_precision(precision, device)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    try:
        for start in range(0, len(pairs), batch_size):
            rows = []
            for p in pairs[start:start + batch_size]:
                r = encode_pair(tokenizer, p, max_length)
                scored = [j for j, lab in enumerate(r["labels"]) if lab != -100][:first_tokens]
                scored = [j for j in scored if j > 0]  # a target at position 0 has no logit predicting it
                if scored:
                    cut = scored[-1] + 1
                    rows.append((r["input_ids"][:cut], r["labels"][:cut], len(scored)))
            if not rows:
                continue
            width = max(len(ids) for ids, _, _ in rows)
            keep = max(k for _, _, k in rows)  # scored tokens sit in the last `keep` positions of every row
            ids = torch.tensor([[pad] * (width - len(i)) + i for i, _, _ in rows], device=device)
            att = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i, _, _ in rows], device=device)
            lab = torch.tensor([[-100] * (width - len(la)) + la for _, la, _ in rows], device=device)
            pos = (att.cumsum(-1) - 1).clamp(min=0)  # positions as without padding
            with autocast(precision, device):
                logits = kept_logits(model, ids, att, keep + 1, position_ids=pos).float()
            targets = lab[:, -keep:]
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)),
                                                     targets.reshape(-1), ignore_index=-100, reduction="sum")
            total += float(loss)
            count += int((targets != -100).sum())
    finally:
        model.train(was_training)
    return total / count if count else float("nan")


@torch.no_grad()
def example_losses(model, tokenizer, pairs: Sequence[Pair], *, batch_size: int = 16, precision: str = "auto",
                   max_length: int = 128) -> list[float]:
    """Each pair's mean next-token loss over its whole response (teacher-forced, one value per pair, in order)."""
    device = next(model.parameters()).device
    precision = resolve_precision(precision, device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    out: list[float] = []
    try:
        for start in range(0, len(pairs), batch_size):
            rows = [encode_pair(tokenizer, p, max_length) for p in pairs[start:start + batch_size]]
            batch = {k: v.to(device) for k, v in pad_batch(rows, pad).items()}
            ids, att, lab = batch["input_ids"], batch["attention_mask"], batch["labels"]
            with autocast(precision, device):
                losses, mask = token_losses(model, ids, att, lab)
            out.extend((per_row(losses, mask) / mask.sum(-1).clamp(min=1)).tolist())
    finally:
        model.train(was_training)
    return out
