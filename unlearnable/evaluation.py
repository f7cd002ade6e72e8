"""Batched greedy generation and the scores built on it: harm rate, harmful first-token loss, task exact match."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from .data import Pair, encode_pair, exact_match, prompt_text
from .judges import Judge
from .utils import autocast, resolve_precision


@dataclasses.dataclass
class EvalConfig:
    max_new_tokens: int = dataclasses.field(default=32, metadata={"help": "tokens generated per harmful prompt "
                                                                           "(refusals show in the first ~32)"})
    task_max_new_tokens: int = dataclasses.field(default=16, metadata={"help": "tokens generated per task question"})
    batch_size: int = dataclasses.field(default=40, metadata={"help": "prompts per generation batch"})
    loss_tokens: int = dataclasses.field(default=8, metadata={"help": "response tokens scored by the harmful loss"})
    precision: str = dataclasses.field(default="auto", metadata={"help": "auto | fp32 | bf16"})


@contextlib.contextmanager
def merged_lora(model) -> Iterator[None]:
    """Within this context a PEFT model's LoRA adapters are merged into its weights, as they are when served
    (``merge_and_unload``), and unmerged afterwards. Scoring a model mid-training (the harness's curve points)
    then runs plain linear layers: decoding on the default model is ~1.17x as fast as with the separate
    LoRA branches (``benchmarks/merged_decoding.py``). Models without LoRA adapters, with adapters already merged or disabled, or carrying the
    security vectors (as an adapter, or folded into the weights: the serving context takes them out first)
    are left as they are."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    from .vectors import FOLDED_ATTR, VECTORS_ADAPTER

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)] if isinstance(model, PeftModel) else []
    fold = getattr(model, FOLDED_ATTR, None)  # a PeftModel finds it on the model it wraps
    if (not layers or VECTORS_ADAPTER in model.peft_config or any(m.merged for m in layers)
            or any(getattr(m, "disable_adapters", False) for m in layers)
            or (fold is not None and fold.folded)):  # folded vectors check their weights bit for bit
        yield
        return
    model.base_model.merge_adapter()
    try:
        yield
    finally:
        model.base_model.unmerge_adapter()


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 32, batch_size: int = 40,
             precision: str = "auto", desc: str = "generating", progress: bool = True) -> list[str]:
    """Greedy, batched, KV-cached generation; prompts are length-sorted to cut padding, output in input order."""
    if not prompts:
        return []
    device = next(model.parameters()).device
    precision = resolve_precision(precision, device)
    texts = [prompt_text(tokenizer, p) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[str] = [""] * len(texts)
    was_training = model.training
    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    eos = [tokenizer.eos_token_id] + ([tokenizer.convert_tokens_to_ids("<|im_end|>")]
                                      if "<|im_end|>" in tokenizer.get_vocab() else [])
    try:
        with merged_lora(model):
            bar = tqdm(total=len(texts), desc=desc, disable=not progress, leave=False)
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                                add_special_tokens=False)
                enc = {k: v.to(device) for k, v in enc.items()}
                with autocast(precision, device):
                    gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                         eos_token_id=sorted(set(eos)), pad_token_id=tokenizer.pad_token_id,
                                         temperature=None, top_p=None, top_k=None)
                new = gen[:, enc["input_ids"].shape[1]:]
                for i, row in zip(idx, new):
                    out[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
                bar.update(len(idx))
            bar.close()
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return out


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
                try:
                    logits = model(input_ids=ids, attention_mask=att, position_ids=pos,
                                   logits_to_keep=keep + 1).logits.float()
                except TypeError:  # an architecture without logits_to_keep: full logits, then the tail
                    logits = model(input_ids=ids, attention_mask=att,
                                   position_ids=pos).logits[:, -(keep + 1):].float()
            targets = lab[:, -keep:]
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)),
                                                     targets.reshape(-1), ignore_index=-100, reduction="sum")
            total += float(loss)
            count += int((targets != -100).sum())
    finally:
        model.train(was_training)
    return total / count if count else float("nan")


def evaluate(model, tokenizer, *, harmful: Sequence[Pair] = (), task: Sequence[Pair] = (), judge: Judge | None = None,
             config: EvalConfig | None = None, desc: str = "") -> dict:
    """Score one model: harm rate on harmful prompts (with a judge), harmful first-token loss on harmful pairs
    that carry responses, and exact match on task pairs. Returns plain numbers plus the generations."""
    from .judges import KeywordJudge

    config = config or EvalConfig()
    judge = judge or KeywordJudge()
    result: dict = {}
    if harmful:
        prompts = [p.prompt for p in harmful]
        gens = generate(model, tokenizer, prompts, max_new_tokens=config.max_new_tokens,
                        batch_size=config.batch_size, precision=config.precision, desc=f"{desc} harmful".strip())
        flags = judge.judge(prompts, gens)
        result["harm_rate"] = sum(flags) / len(flags)
        result["n_harmful"] = len(flags)
        with_resp = [p for p in harmful if p.response]
        if with_resp:
            result["harmful_loss"] = response_loss(model, tokenizer, with_resp, first_tokens=config.loss_tokens,
                                                   precision=config.precision)
        result["harmful_generations"] = [{"prompt": p, "response": g, "harmful": f}
                                         for p, g, f in zip(prompts, gens, flags)]
    if task:
        gens = generate(model, tokenizer, [p.prompt for p in task], max_new_tokens=config.task_max_new_tokens,
                        batch_size=config.batch_size, precision=config.precision, desc=f"{desc} task".strip())
        result["task_em"] = exact_match(gens, [p.response for p in task])
        result["n_task"] = len(task)
        result["task_generations"] = [{"prompt": p.prompt, "answer": p.response, "response": g}
                                      for p, g in zip(task, gens)]
    return result


def finite(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x
