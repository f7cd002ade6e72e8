"""``unlearnable vectors train``: train security vectors on harmful pairs."""

from __future__ import annotations

import argparse
import json

from ..config import add_config_flags
from ..experiments import VectorsTrainJob, run_vectors_train
from ..utils import is_main_process
from .common import add_checkpointing, add_run_flags, build, load_options

EPILOG = """examples:
  unlearnable vectors train --out vectors/                        # embedded model + embedded harmful pairs
  unlearnable vectors train --model my-model/ --data harmful.jsonl --out vectors/
  unlearnable vectors train --data harmful.jsonl --out vectors/ --checkpoint-every 20   # rerun to resume
"""
ALIASES = {"--epochs": "vectors.epochs", "--lr": "vectors.lr", "--rank": "vectors.lora.r",
           "--alpha": "vectors.lora.alpha", "--target-loss": "vectors.target_loss", "--vector-scale": "vectors.scale"}


def add_arguments(p) -> None:
    actions = p.add_subparsers(dest="vectors_command", metavar="ACTION")
    t = actions.add_parser("train", help="train security vectors on harmful pairs", epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_flags(t, out_help="vectors folder to write", config_help="VectorsTrainJob",
                  overwrite_help="replace an existing --out (and discard its checkpoints)")
    add_checkpointing(t)
    add_config_flags(t, VectorsTrainJob, aliases=ALIASES)
    t.set_defaults(func=run)


def run(args) -> int:
    job = build(VectorsTrainJob, args)
    vectors = run_vectors_train(job, args.out, overwrite=args.overwrite, checkpoint_every=args.checkpoint_every,
                                progress=not args.quiet, load=load_options(args))
    if is_main_process():
        print(json.dumps({"out": args.out, "n_pairs": vectors.metadata["n_pairs"],
                          "train_loss_last": vectors.metadata["train_loss_last"],
                          "base_fingerprint": vectors.metadata["base_fingerprint"]}))
    return 0
