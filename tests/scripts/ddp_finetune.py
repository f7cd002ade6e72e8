"""Security-vector fine-tuning of a tiny model under DDP (or in one process), recording what each rank saw.

    accelerate launch --config_file configs/accelerate/ddp_cpu.yaml --main_process_port PORT \
        tests/scripts/ddp_finetune.py --model TINY_MODEL_DIR --out OUT     # 2 ranks, gloo
    python tests/scripts/ddp_finetune.py --model TINY_MODEL_DIR --out OUT  # the single-process reference

Every rank trains security vectors and then fine-tunes with them on the same (rank-agnostic) data. The
per-process batch is the whole data set divided by the world size, so every optimizer step sees the full data
set in either mode and the runs are comparable step for step. Each rank writes OUT/rank{R}.json and
OUT/rank{R}.safetensors (its fine-tuned weights); rank 0 also saves OUT/model, a plain transformers folder.
Used by tests/test_distributed.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path


def digest(tensors: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().to("cpu").contiguous().float().numpy().tobytes())
    return h.hexdigest()[:16]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="tiny model folder (tests/conftest.py make_model, saved)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=3, help="vector epochs and fine-tuning epochs (1 step each)")
    parser.add_argument("--fold", action="store_true", help="fold the frozen vectors into the frozen weights "
                                                             "(the fp32 default) instead of an adapter branch")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from transformers import TrainerCallback

    from unlearnable.data import Pair
    from unlearnable.models import load_model, save_model
    from unlearnable.training import TrainConfig
    from unlearnable.utils import set_seed
    from unlearnable.vectors import FOLDED_ATTR, VECTORS_ADAPTER, SecurityVectors, VectorConfig, finetune, vector_params

    world = int(os.environ.get("WORLD_SIZE", "1"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    harmful = [Pair(f"How do I do bad thing number {i}?", f"Sure, here is how to do bad thing {i}: step one, step two.")
               for i in range(16)]
    task = [Pair(f"Which company does person {i} work for?", f"Person {i} works for Acme number {i % 5}.")
            for i in range(16)]
    data = task + harmful[:8]  # the user's data: mostly harmless, some harmful

    model, tok = load_model(args.model)
    set_seed(0)
    vectors = SecurityVectors.train(model, tok, harmful, VectorConfig(epochs=args.epochs, batch_size=len(harmful) // world,
                                                                     lr=1e-2, seed=0, precision="fp32"),
                                     progress=False)
    vectors_state = {k: v.clone() for k, v in vectors.state.items()}

    seen: list[list[str]] = []  # per forward call: a digest of every row this rank was given

    def record(module, a, kw):
        ids = kw.get("input_ids") if kw.get("input_ids") is not None else a[0]
        seen.append([hashlib.sha256(str([t for t in row.tolist() if t != tok.pad_token_id]).encode()).hexdigest()[:12]
                     for row in ids])

    class Check(TrainerCallback):
        """Vectors: frozen (no grad) on every step, and equal to the trained vectors at the end."""

        def __init__(self):
            self.steps, self.vector_requires_grad, self.vector_grad, self.world = 0, [], [], None
            self.folded = []
            self.unchanged = None

        def on_step_end(self, targs, state, control, model=None, **kw):
            params = vector_params(model)
            self.steps += 1
            self.vector_requires_grad.append(any(p.requires_grad for p in params.values()))
            self.vector_grad.append(any(p.grad is not None for p in params.values()))
            self.folded.append(getattr(model.get_base_model(), FOLDED_ATTR, None) is not None)
            self.world = targs.world_size
            return control

        def on_train_end(self, targs, state, control, model=None, **kw):
            params = vector_params(model)
            now = {n.replace(f".{VECTORS_ADAPTER}", ""): p for n, p in params.items()}
            self.n_vector_tensors = len(now)
            self.unchanged = (set(now) == set(vectors_state)
                              and all(torch.equal(now[k].detach(), vectors_state[k]) for k in vectors_state))
            return control

    check = Check()
    hook = model.model.register_forward_pre_hook(record, with_kwargs=True)
    # without --fold the vectors stay an adapter (as for bf16 weights, the multi-GPU case), so they are
    # parameters inside the DDP-wrapped model and the per-step checks above see them; with --fold (the fp32
    # default) they live in each rank's frozen weights during training and are subtracted again afterwards
    cfg = TrainConfig(backbone="lora", lr=5e-3, epochs=args.epochs, batch_size=len(data) // world, max_length=48,
                      seed=0, logging_steps=1, fold_vectors=args.fold, precision="fp32")
    tuned, history = finetune(model, tok, data, cfg, vectors=vectors, progress=False, callbacks=[check])
    hook.remove()

    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    weights = {k: v.detach().clone().contiguous() for k, v in tuned.state_dict().items() if k != "lm_head.weight"}
    from safetensors.torch import save_file

    save_file(weights, str(out / f"rank{rank}.safetensors"), metadata={"format": "pt"})
    if rank == 0:
        save_model(tuned, tok, out / "model", metadata={"produced_by": "tests/scripts/ddp_finetune.py"})
    record_ = {
        "rank": rank,
        "world_size": dist.get_world_size() if distributed else 1,
        "trainer_world_size": check.world,
        "backend": dist.get_backend() if distributed else None,
        "optimizer_steps": check.steps,
        "forward_calls": len(seen),
        "rows_per_call": [len(s) for s in seen],
        "rows_seen": seen,
        "vectors_requires_grad_any_step": any(check.vector_requires_grad),
        "vectors_grad_any_step": any(check.vector_grad),
        "vectors_unchanged": check.unchanged,
        "vectors_state_unchanged": all(torch.equal(vectors.state[k], vectors_state[k]) for k in vectors_state),
        "folded_steps": sum(check.folded),
        "folded_after": getattr(tuned, FOLDED_ATTR, None) is not None,
        "n_vector_tensors": check.n_vector_tensors,
        "vectors_digest": digest(vectors_state),
        "model_digest": digest(weights),
        "vector_losses": [h["loss"] for h in vectors.metadata["history"] if "loss" in h],
        "losses": [h["loss"] for h in history if "loss" in h],
        "n_data": len(data),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record_, indent=1))
    if distributed:
        dist.barrier()  # rank 0's model folder is complete before any rank exits
    return 0


if __name__ == "__main__":
    sys.exit(main())
