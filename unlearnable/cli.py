"""The ``unlearnable`` command: a thin layer over the Python API.

Every subcommand shares flag names where they apply: --model, --data, --vectors, --out, --seed.
Errors the user can fix print one line (``unlearnable: error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EPILOG_DEMO = """examples:
  unlearnable demo --out runs/demo            # embedded SmolLM2-135M, ~10 min on a 2-core CPU
  unlearnable demo --out runs/demo --seed 1 --vector-scale 1.0
"""
EPILOG_VECTORS = """examples:
  unlearnable vectors train --out vectors/                        # embedded model + embedded harmful pairs
  unlearnable vectors train --model my-model/ --data harmful.jsonl --out vectors/
"""
EPILOG_FINETUNE = """examples:
  unlearnable finetune --data user.jsonl --vectors vectors/ --out tuned/
  unlearnable finetune --model my-model/ --data user.jsonl --out tuned-plain/      # no defence
"""
EPILOG_IMMUNIZE = """examples:
  unlearnable immunize --out runs/immunize                  # 4 defences, small budget grid, ~30 min on 2 CPUs
  unlearnable immunize --defenses none,security-vectors --out runs/sv
  unlearnable immunize --config sweep.yaml --out runs/big   # any ImmunizeConfig field, e.g. budget.lrs
"""
EPILOG_EVAL = """examples:
  unlearnable evaluate --model tuned/                       # harm rate on the embedded held-out prompts
  unlearnable evaluate --model tuned/ --data task.jsonl --out eval.json
"""


def _common(p: argparse.ArgumentParser, *, data_help: str | None = None, out_help: str = "output folder",
            vectors: bool = False, out_required: bool = True) -> None:
    p.add_argument("--model", default=None, help="hub id, local folder or .gguf file (default: the embedded "
                                                 "SmolLM2-135M-Instruct)")
    if data_help:
        p.add_argument("--data", default=None, help=data_help)
    if vectors:
        p.add_argument("--vectors", default=None, help="a security vectors folder (from `unlearnable vectors train`)")
    p.add_argument("--out", required=out_required, default=None, help=out_help)
    p.add_argument("--seed", type=int, default=0, help="random seed (splits, data order, init)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the model folder/hub")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pickle (.bin/.pt) weights")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def make_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="unlearnable", description="Fine-tune LLMs without learning harmful data "
                                     "(security vectors) and measure defences under attack.")
    parser.add_argument("--version", action="version", version=f"unlearnable {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="the end-to-end demo on the embedded model", epilog=EPILOG_DEMO,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p, out_help="output folder (results.json, report.html, plots, models/, vectors/)", out_required=False)
    p.add_argument("--config", default=None, help="YAML/TOML/JSON file with DemoConfig fields")
    p.add_argument("--vector-scale", type=float, default=None, help="vectors' strength during fine-tuning")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.set_defaults(func=cmd_demo)

    pv = sub.add_parser("vectors", help="security vectors").add_subparsers(dest="vectors_command", metavar="ACTION")
    p = pv.add_parser("train", help="train security vectors on harmful pairs", epilog=EPILOG_VECTORS,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p, data_help="harmful pairs, JSONL ({prompt,response} or {messages}) or a datasets folder "
                         "(default: the model's own answers to the embedded harmful prompts)",
            out_help="vectors folder to write")
    p.add_argument("--epochs", type=float, default=5.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=int, default=32)
    p.add_argument("--target-loss", type=float, default=0.0, help="stop once training loss falls below this")
    p.add_argument("--vector-scale", type=float, default=0.75, help="strength to record for fine-tuning")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_vectors_train)

    p = sub.add_parser("finetune", help="fine-tune a model, with or without security vectors", epilog=EPILOG_FINETUNE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p, data_help="training pairs, JSONL or a datasets folder (required)", vectors=True,
            out_help="model folder to write (plain HF model, vectors removed)")
    p.add_argument("--backbone", choices=["lora", "full"], default="lora", help="train a merged LoRA or all weights")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--vector-scale", type=float, default=None, help="override the vectors' recorded strength")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("evaluate", help="harm rate, harmful loss and task exact match of a model", epilog=EPILOG_EVAL,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p, data_help="task pairs (JSONL) scored by exact match", out_help="write results JSON here",
            out_required=False)
    p.add_argument("--harmful", default=None, help="harmful prompts JSONL (default: the embedded held-out split)")
    p.add_argument("--judge", default="keyword", help="judge name (see `unlearnable ls`)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("immunize", help="four immunization conditions for defences under attack budgets",
                       epilog=EPILOG_IMMUNIZE, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p, out_help="output folder (results.json, report.html, plots, runs/)", out_required=False)
    p.add_argument("--config", default=None, help="YAML/TOML/JSON file with ImmunizeConfig fields")
    p.add_argument("--defenses", default=None, help="comma-separated defence names (see `unlearnable ls`)")
    p.add_argument("--judges", default=None, help="comma-separated judges; the first decides, e.g. "
                                                  "keyword,classifier:/path/to/model")
    p.add_argument("--threshold", type=float, default=None, help="harm rate that counts as harmful (default 0.5)")
    p.add_argument("--overwrite", action="store_true", help="discard an existing run in --out")
    p.set_defaults(func=cmd_immunize)

    p = sub.add_parser("ls", help="list registered defences and judges")
    p.set_defaults(func=cmd_ls)
    return parser


# ------------------------------------------------------------------------------------------ commands


def _check_out(out: str | None, overwrite: bool) -> None:
    from .errors import UnlearnableError

    if out and Path(out).exists() and not overwrite and any(Path(out).iterdir()):
        raise UnlearnableError(f"output folder {out} already holds files; pass --overwrite or choose another --out")


def cmd_demo(args) -> int:
    from .config import from_dict, load_config_file
    from .demo import DemoConfig, run_demo

    _check_out(args.out, args.overwrite)
    cfg = from_dict(DemoConfig, load_config_file(args.config)) if args.config else DemoConfig()
    cfg.model = args.model if args.model is not None else cfg.model
    cfg.seed = args.seed if args.seed else cfg.seed
    if args.vector_scale is not None:
        cfg.vectors.scale = args.vector_scale
    results = run_demo(cfg, args.out, overwrite=args.overwrite, progress=not args.quiet)
    _print_summary(results["summary"])
    return 0


def _print_summary(summary: dict) -> None:
    width = max(len(k) for k in summary)
    print("\n".join(f"{k:<{width}}  {v:.3f}" if isinstance(v, float) else f"{k:<{width}}  {v}"
                    for k, v in summary.items()))


def _load(args):
    from .models import load_model

    return load_model(args.model, trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle)


def cmd_vectors_train(args) -> int:
    from .data import load_pairs
    from .models import model_fingerprint
    from .pipeline import DataConfig, prepare_data
    from .vectors import SecurityVectors, VectorConfig

    _check_out(args.out, args.overwrite)
    pairs = load_pairs(args.data) if args.data else None
    cfg = VectorConfig(r=args.rank, alpha=args.alpha, lr=args.lr, epochs=args.epochs, target_loss=args.target_loss,
                       seed=args.seed, scale=args.vector_scale)
    model, tok = _load(args)
    if pairs is None:
        pairs = prepare_data(model, tok, DataConfig(seed=args.seed), fingerprint=model_fingerprint(model),
                             progress=not args.quiet).vectors
    vectors = SecurityVectors.train(model, tok, pairs, cfg, progress=not args.quiet)
    vectors.save(args.out, overwrite=True)
    print(json.dumps({"out": args.out, "n_pairs": len(pairs), "train_loss_last": vectors.metadata["train_loss_last"],
                      "base_fingerprint": vectors.metadata["base_fingerprint"]}))
    return 0


def cmd_finetune(args) -> int:
    from .data import load_pairs
    from .errors import UnlearnableError
    from .models import model_fingerprint, save_model
    from .training import TrainConfig, finetune
    from .utils import run_metadata
    from .vectors import SecurityVectors

    _check_out(args.out, args.overwrite)
    if not args.data:
        raise UnlearnableError("finetune needs --data (a JSONL file or datasets folder of training pairs)")
    pairs = load_pairs(args.data)
    vectors = SecurityVectors.load(args.vectors) if args.vectors else None
    cfg = TrainConfig(backbone=args.backbone, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                      max_length=args.max_length, seed=args.seed)
    model, tok = _load(args)
    fp = model_fingerprint(model)
    if vectors is not None:
        vectors.check(model)
    tuned, history = finetune(model, tok, pairs, cfg, vectors=vectors, scale=args.vector_scale,
                              progress=not args.quiet)
    import dataclasses

    save_model(tuned, tok, args.out, metadata={
        "produced_by": "unlearnable finetune", "base_fingerprint": fp, "config": dataclasses.asdict(cfg),
        "vectors": args.vectors, "vector_scale": args.vector_scale if args.vector_scale is not None else (
            vectors.config.scale if vectors else None), "vectors_removed": True, "n_examples": len(pairs),
        "history": history, **run_metadata()})
    print(json.dumps({"out": args.out, "n_examples": len(pairs), "vectors": bool(vectors)}))
    return 0


def cmd_evaluate(args) -> int:
    import dataclasses

    from .data import load_pairs, pairs_hash
    from .evaluation import evaluate
    from .judges import build_judge
    from .models import model_fingerprint
    from .utils import atomic_write_json, run_metadata

    task = load_pairs(args.data) if args.data else []
    judge = build_judge(args.judge)
    if args.harmful:
        harmful = load_pairs(args.harmful, require_response=False)
    else:
        from .data import harmful_prompts, split
        from .pipeline import DataConfig

        d = DataConfig(seed=args.seed)
        harmful = split(harmful_prompts(), {"eval": d.n_eval}, d.seed)["eval"]
    model, tok = _load(args)
    result = evaluate(model, tok, harmful=harmful, task=task, judge=judge)
    summary = {k: v for k, v in result.items() if not k.endswith("_generations")}
    out = {"kind": "unlearnable-evaluate", "summary": summary, "model": args.model or "default",
           "model_fingerprint": model_fingerprint(model), "judge": args.judge,
           "eval_splits": {"harmful": pairs_hash(harmful), "task": pairs_hash(task) if task else None},
           "result": result, **run_metadata()}
    if args.out:
        atomic_write_json(args.out, out)
    print(json.dumps(summary))
    return 0


def cmd_immunize(args) -> int:
    from .config import from_dict, load_config_file
    from .immunization import ImmunizeConfig, conditions_table, run_immunize

    data = load_config_file(args.config) if args.config else {}
    for key, value in (("model", args.model), ("threshold", args.threshold)):
        if value is not None:
            data[key] = value
    if args.seed:
        data["seed"] = args.seed
    if args.defenses:
        data["defenses"] = [s.strip() for s in args.defenses.split(",") if s.strip()]
    if args.judges:
        data["judges"] = [s.strip() for s in args.judges.split(",") if s.strip()]
    cfg = from_dict(ImmunizeConfig, data)
    results = run_immunize(cfg, args.out or "immunize-out", overwrite=args.overwrite, progress=not args.quiet)
    rows = [["defence", "resistance", "released weights", "stability", "generalization", "trainability"]]
    rows += conditions_table(results["conditions"])
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    print(f"\nwrote {args.out or 'immunize-out'}/results.json and report.html ({results['seconds']:.0f} s)")
    return 0


def cmd_ls(args) -> int:
    from .defenses import DEFENSES
    from .judges import JUDGES

    for reg in (DEFENSES, JUDGES):
        print(f"{reg.kind}s: {', '.join(reg.names())}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .errors import UnlearnableError

    parser = make_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.func(args)
    except UnlearnableError as exc:
        print(f"unlearnable: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\nunlearnable: interrupted; nothing half-written was kept. Run the same command again to redo it "
              "(cached data and models are reused).", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
