"""``unlearnable finetune``: fine-tune a model, with or without security vectors."""

from __future__ import annotations

import json

from ..config import add_config_flags
from ..experiments import FinetuneJob, run_finetune
from ..utils import is_main_process
from .common import add_checkpointing, add_run_flags, build, load_options

EPILOG = """examples:
  unlearnable finetune --data user.jsonl --vectors vectors/ --out tuned/
  unlearnable finetune --model my-model/ --data user.jsonl --out tuned-plain/      # no defence
  unlearnable finetune --data user.jsonl --out tuned/ --checkpoint-every 50        # rerun to resume
"""
ALIASES = {"--backbone": "train.backbone", "--epochs": "train.epochs", "--lr": "train.lr",
           "--batch-size": "train.batch_size", "--max-length": "train.max_length"}


def add_arguments(p) -> None:
    p.epilog = EPILOG
    add_run_flags(p, out_help="model folder to write (plain HF model, vectors removed)", config_help="FinetuneJob",
                  overwrite_help="replace an existing --out (and discard its checkpoints)")
    add_checkpointing(p)
    add_config_flags(p, FinetuneJob, aliases=ALIASES, skip=["train.save_steps"])  # that is --checkpoint-every
    p.set_defaults(func=run)


def run(args) -> int:
    job = build(FinetuneJob, args)
    record = run_finetune(job, args.out, overwrite=args.overwrite, checkpoint_every=args.checkpoint_every,
                          progress=not args.quiet, load=load_options(args))
    if is_main_process():
        print(json.dumps(record))
    return 0
