"""Peak resident memory of a fine-tuning step on the default model, with and without gradient checkpointing.

Each setting runs in a fresh process (peak RSS only grows): the embedded SmolLM2-135M-Instruct loaded, a second
copy made (the experiments keep at most two), then a few LoRA steps at the demo's batch size and length, with
large blocks kept out of the C heap as the experiments keep them (``--heap`` leaves glibc's default). The loss's
slice of logits is ``unlearnable.losses.CHUNK_ELEMENTS`` unless ``--chunk-elements`` sets it; ``--logits`` computes
them for the whole batch from the model's own forward, as before slices.

    python benchmarks/training_memory.py --out benchmarks/results-cpu-smollm2-memory.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

STEP = r"""
import copy, json, resource, sys, time
import torch
from unlearnable import load_model
from unlearnable.data import Pair
from unlearnable import losses
from unlearnable.training import TrainConfig, finetune
from unlearnable.utils import keep_large_blocks_out_of_the_heap

def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux -> GB

on, steps, batch, length = sys.argv[1] == "1", int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
chunk, heap, logits = int(sys.argv[5]), sys.argv[6] == "1", sys.argv[7] == "1"
if chunk > 0:
    losses.CHUNK_ELEMENTS = chunk
if not heap:
    keep_large_blocks_out_of_the_heap()
if logits:
    losses.checked_split = lambda *a, **k: None
    import unlearnable.training
    unlearnable.training.checked_split = losses.checked_split
out = {"gradient_checkpointing": on, "chunk_elements": losses.CHUNK_ELEMENTS, "heap_default": heap,
       "whole_batch_logits": logits, "imports_gb": rss()}
model, tok = load_model()
out["model_gb"] = rss()
work = copy.deepcopy(model)
out["two_copies_gb"] = rss()
pairs = [Pair(f"Tell me about person number {i} and their life in detail.",
              "They were born in a small town, studied engineering, moved to the city and worked there. " * 2)
         for i in range(steps * batch)]
t0 = time.perf_counter()
finetune(work, tok, pairs, TrainConfig(max_steps=steps, batch_size=batch, max_length=length,
                                       gradient_checkpointing=on), progress=False)
out.update(training_gb=rss(), seconds=round(time.perf_counter() - t0, 2),
           weights_gb=sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9)
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16, help="the demo's fine-tuning batch")
    parser.add_argument("--max-length", type=int, default=64, help="the demo's fine-tuning length")
    parser.add_argument("--chunk-elements", type=int, default=0, help="logits per slice (0: the library's)")
    parser.add_argument("--heap", action="store_true", help="leave large blocks in glibc's heap (its default)")
    parser.add_argument("--logits", action="store_true", help="whole-batch logits from the model's forward")
    parser.add_argument("--out", help="write the rows here (JSON)")
    args = parser.parse_args()
    rows = []
    for on in (0, 1):
        res = subprocess.run([sys.executable, "-c", STEP, str(on), str(args.steps), str(args.batch_size),
                              str(args.max_length), str(args.chunk_elements), str(int(args.heap)),
                              str(int(args.logits))], capture_output=True, text=True, check=True)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"gradient checkpointing {'on ' if on else 'off'}: peak {row['training_gb']:.2f} GB (model loaded "
              f"{row['model_gb']:.2f}, two copies {row['two_copies_gb']:.2f}); {row['seconds']:.1f} s for "
              f"{args.steps} steps", flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"rows": rows, **vars(args), "platform": platform.platform(),
                       "processor": platform.processor()}, f, indent=1)


if __name__ == "__main__":
    main()
