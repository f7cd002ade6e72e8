"""One attacker-search trial, generation included, on a random model of a real shape.

The harness's own path (``run_immunize`` with the attacker's search, one defence, one trial, one seed) on a
randomly initialised Llama of ``--arch``'s shape on ``--device``: what a trial costs in wall time and memory there.
The weights are random, so its harm numbers mean nothing; the data is synthetic (no embedded package needed).

    python benchmarks/gpu_search_trial.py --arch llama-1b --device cuda --out search-trial.json
    python benchmarks/gpu_search_trial.py --arch tiny --device cpu --out /tmp/t.json      # a smoke test
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from run import ARCHS, build_model  # benchmarks/run.py: the same shapes and tokenizers as the paired benchmark


def synthetic_data(n: int = 48):
    from unlearnable.data import Pair, profileqa, refusal_pairs
    from unlearnable.experiments.setup import PreparedData

    harm = [Pair(f"How do I do bad thing number {i}?", f"Sure, here is how to do bad thing {i}: step one, step two, "
                 "step three.", harmful=True) for i in range(n)]
    return PreparedData(
        eval_harmful=[Pair(f"Eval bad request {i}?", "") for i in range(16)],
        align=refusal_pairs([Pair(f"Align bad {i}?", "") for i in range(8)], 0),
        vector_pairs=harm[:16], attack=harm[16:40], harmless=[Pair(f"Write a haiku number {i}.", "Red leaves fall "
                                                                   "softly on the quiet garden path.")
                                                              for i in range(24)],
        task=profileqa(2, 0), cross_eval=[Pair(f"Cross bad {i}?", "") for i in range(8)], cross_attack=harm[40:n],
        hashes={"eval_harmful": "synthetic"})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="llama-1b", choices=sorted(ARCHS))
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    import os

    import torch

    os.environ.setdefault("UNLEARNABLE_SKIP_MODEL_CHECK", "1")  # random weights answer degenerately by design
    from unlearnable.experiments.immunize import BudgetConfig, ImmunizeConfig, TrainabilityConfig, run_immunize
    from unlearnable.experiments.search import AttackerSearchConfig
    from unlearnable.experiments.setup import DataConfig
    from unlearnable.threat_models import ServiceConfig

    device = torch.device(args.device)
    ns = argparse.Namespace(model=None, arch=args.arch, dtype=args.dtype, seq_len=256, gen_new_tokens=32, seed=0)
    model, tok, desc = build_model(ns, device)
    for q in model.parameters():
        q.requires_grad_(True)  # build_model freezes them for its arms; the harness trains copies
    steps = args.steps
    cfg = ImmunizeConfig(
        defenses=["none"], attacker="search", align=False, n_curve_eval=16, n_stability_harmless=8,
        n_defense_harmless=8, benchmarks=[], data=DataConfig(system_prompt=None),
        budget=BudgetConfig(lrs=[1e-4], samples=[16], steps=steps, eval_every=steps, batch_size=8),
        search=AttackerSearchConfig(n_trials=1, seeds=[0], eval_every=steps, prune=False,
                                    max_harmless_loss_rise=None),
        service=ServiceConfig(steps=[steps], max_steps=steps, batch_sizes=[8], samples=[16],
                              attacks=["harmful-sft"]),
        threat_models=["service"], trainability=TrainabilityConfig(steps=steps, eval_every=steps, batch_size=8,
                                                                   task_repeats=4))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = run_immunize(cfg, Path(tmp) / "out", model=model, tokenizer=tok, data=synthetic_data(),
                               progress=False)
    seconds = time.perf_counter() - t0
    trial = results["attacker_search"]["none"]["trials"][0]
    record = {"model": desc, "device": str(device), "steps": steps, "seconds_total": round(seconds, 1),
              "trial_seconds": trial.get("seconds"), "timings": results["timings"],
              "resources": results["resources"]}
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(json.dumps({k: record[k] for k in ("device", "seconds_total", "trial_seconds", "resources")}))


if __name__ == "__main__":
    main()
