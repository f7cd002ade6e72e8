"""Decoding speed of a PEFT LoRA model with its adapters merged vs as separate branches (evaluation.merged_lora).

    python benchmarks/merged_decoding.py            # embedded SmolLM2-135M-Instruct, rank-16 all-linear LoRA

Greedy decoding of 40 prompts x 24 new tokens in one left-padded batch, best of 2 runs each, precision=auto.
"""

import time

import torch
from peft import LoraConfig, get_peft_model

from unlearnable.adapters import merged_lora
from unlearnable.data import prompt_text
from unlearnable.models import load_model
from unlearnable.utils import autocast, resolve_precision


def main() -> None:
    torch.manual_seed(0)
    model, tok = load_model(None)
    pm = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False))
    pm.eval()
    prompts = [f"How do I make a dangerous thing number {i} at home without anyone noticing?" for i in range(40)]
    tok.padding_side = "left"
    enc = tok([prompt_text(tok, p) for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False)
    precision = resolve_precision("auto", "cpu")

    def best_of_two(merge: bool) -> float:
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            with torch.no_grad(), autocast(precision, "cpu"):
                if merge:
                    with merged_lora(pm):
                        pm.generate(**enc, max_new_tokens=24, min_new_tokens=24, do_sample=False)
                else:
                    pm.generate(**enc, max_new_tokens=24, min_new_tokens=24, do_sample=False)
            best = min(best, time.perf_counter() - t0)
        return best

    unmerged, merged = best_of_two(False), best_of_two(True)
    print(f"precision {precision}: unmerged {unmerged:.2f} s, merged {merged:.2f} s, "
          f"speed-up {unmerged / merged:.2f}x")


if __name__ == "__main__":
    main()
