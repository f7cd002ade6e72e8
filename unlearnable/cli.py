"""The ``unlearnable`` command: a thin layer over the Python API.

Every subcommand shares flag names where they apply: --model, --data, --vectors, --out, --seed.
Errors the user can fix print one line (``unlearnable: error: ...``) and exit with status 2 (set
``UNLEARNABLE_DEBUG=1`` for a traceback). Inputs are checked before any model loads, so such errors come fast.
Ctrl-C exits with 130 and says how to resume; ``--checkpoint-every N`` keeps resumable checkpoints in
``OUT.partial/`` (see :mod:`unlearnable.runs`).
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
  unlearnable vectors train --data harmful.jsonl --out vectors/ --checkpoint-every 20   # rerun to resume
"""
EPILOG_FINETUNE = """examples:
  unlearnable finetune --data user.jsonl --vectors vectors/ --out tuned/
  unlearnable finetune --model my-model/ --data user.jsonl --out tuned-plain/      # no defence
  unlearnable finetune --data user.jsonl --out tuned/ --checkpoint-every 50        # rerun to resume
"""
EPILOG_IMMUNIZE = """examples:
  unlearnable immunize --out runs/immunize                  # 4 defences, small budget grid, ~30 min on 2 CPUs
  unlearnable immunize --defenses none,security-vectors --out runs/sv
  unlearnable immunize --config sweep.yaml --out runs/big   # any ImmunizeConfig field, e.g. budget.lrs
"""
EPILOG_TRADEOFF = """examples:
  unlearnable tradeoff --quick --out runs/tradeoff-quick    # ~20 min on a 2-core bf16 CPU (31 min fp32)
  unlearnable tradeoff --out runs/tradeoff --reuse-points runs/tradeoff-quick
                                                            # 3 seeds x variants x strengths: ~1.5 h bf16 CPU
"""
EPILOG_EVAL = """examples:
  unlearnable evaluate --model tuned/                       # harm rate on the embedded held-out prompts
  unlearnable evaluate --model tuned/ --data task.jsonl --out eval.json
  unlearnable evaluate --model tuned/ --vectors vectors/ --out eval.json   # refuse prompts the vectors saw
  unlearnable evaluate --compare base.json tuned.json        # side by side; refuses different eval splits
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


def _checkpointing(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint-every", type=_non_negative_int, default=0, metavar="N",
                   help="save a checkpoint every N optimizer steps into OUT.partial/; running the same command "
                        "again resumes from it (removed on success; default 0 = off)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (and discard its checkpoints)")


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of steps, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 (off) or a positive number of steps")
    return value


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
    p.add_argument("--vector-scale", type=float, default=None,
                   help="strength to record for fine-tuning (default: VectorConfig's, from the measured trade-off)")
    _checkpointing(p)
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
    _checkpointing(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("evaluate", help="harm rate, harmful loss and task exact match of a model", epilog=EPILOG_EVAL,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p, data_help="task pairs (JSONL) scored by exact match", out_help="write results JSON here",
            vectors=True, out_required=False)
    p.add_argument("--harmful", default=None, help="harmful prompts JSONL (default: the embedded held-out split)")
    p.add_argument("--judge", default="keyword", help="judge name (see `unlearnable ls`)")
    p.add_argument("--overwrite", action="store_true", help="replace an --out file that holds another evaluation")
    p.add_argument("--compare", nargs="+", metavar="RESULTS.json", default=None,
                   help="compare results files written by `evaluate --out` (no model is loaded); refuses results "
                        "whose evaluation splits, judge or settings differ")
    p.set_defaults(func=cmd_evaluate)
    for action in p._actions:  # --vectors means something else here
        if action.dest == "vectors":
            action.help = ("security vectors the model was fine-tuned with: refuse evaluation prompts they were "
                           "trained on (leakage fakes resistance)")

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

    p = sub.add_parser("tradeoff", help="harm rate vs task score over vector strengths, variants and seeds",
                       epilog=EPILOG_TRADEOFF, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p, out_help="output folder (results.json, tradeoff.png, report.html, points.jsonl)", out_required=False)
    p.add_argument("--quick", action="store_true", help="one seed; none, plain and benign-kl vectors at 0.5 and 1.0")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--strengths", default=None, help="comma-separated vector strengths (default 0,0.25,0.5,0.75,1)")
    p.add_argument("--variants", default=None, help="comma-separated: plain, benign-distill, benign-kl")
    p.add_argument("--config", default=None, help="YAML/TOML/JSON file with TradeoffConfig fields")
    p.add_argument("--reuse-points", default=None, metavar="DIR[,DIR]",
                   help="copy the matching points of earlier tradeoff runs with the same settings (e.g. a --quick "
                        "run) instead of recomputing them")
    p.add_argument("--goal-harm", type=float, default=0.10, help="goal: seed-mean harm rate at most this (report "
                                                                      "only; default 0.10)")
    p.add_argument("--goal-task-ratio", type=float, default=0.95, help="goal: seed-mean task score at least this "
                                                                            "times the undefended one (default 0.95)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_tradeoff)

    p = sub.add_parser("ls", help="list registered defences and judges")
    p.set_defaults(func=cmd_ls)
    return parser


# ------------------------------------------------------------------------------------------ commands


MODEL_META = "unlearnable_model.json"


def _check_out(out: str | None, overwrite: bool) -> None:
    from .runs import check_out

    check_out(out, overwrite)


def cmd_demo(args) -> int:
    from .config import from_dict, load_config_file

    _check_out(args.out, args.overwrite)
    data = load_config_file(args.config) if args.config else None
    from .demo import DemoConfig, run_demo

    cfg = from_dict(DemoConfig, data) if data is not None else DemoConfig()
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


def _check_model(args) -> None:
    """Check --model (path, weight format, config) before the slow imports and any training."""
    from .models import check_model

    check_model(args.model, trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle)


def _load(args):
    from .models import load_model

    return load_model(args.model, device=_launch_device(), trust_remote_code=args.trust_remote_code,
                      allow_pickle=args.allow_pickle)


# ------------------------------------------------------------------ several processes (accelerate launch / torchrun)


def _launch_device() -> str | None:
    """Under a multi-process launch with GPUs, each rank's own GPU (cuda:LOCAL_RANK); otherwise None (CPU)."""
    import torch

    if "LOCAL_RANK" in os.environ and torch.cuda.is_available():
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return None


def _is_main_process() -> bool:
    """Only rank 0 of a multi-process launch writes --out (and prints the result line)."""
    return int(os.environ.get("RANK", "0")) == 0


def _wait_for_everyone() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cmd_vectors_train(args) -> int:
    import dataclasses

    from .data import load_pairs, pairs_hash
    from .runs import check_out, finish_run, keep_checkpoints_only_if_useful, run_key, start_run

    meta_file = "unlearnable_vectors.json"
    check_out(args.out, args.overwrite, meta_file)
    pairs = load_pairs(args.data) if args.data else None
    _check_model(args)
    from .models import model_fingerprint
    from .vectors import META_FILE, SecurityVectors, VectorConfig

    strength = {} if args.vector_scale is None else {"scale": args.vector_scale}
    cfg = VectorConfig(r=args.rank, alpha=args.alpha, lr=args.lr, epochs=args.epochs, target_loss=args.target_loss,
                       seed=args.seed, **strength)
    model, tok = _load(args)
    fp = model_fingerprint(model)
    if pairs is None:
        from .pipeline import DataConfig, prepare_data

        pairs = prepare_data(model, tok, DataConfig(seed=args.seed), fingerprint=fp, progress=not args.quiet).vectors
    key = run_key(command="vectors train", model=fp, data=pairs_hash(pairs), config=dataclasses.asdict(cfg))
    done, checkpoints = start_run(args.out, key=key, meta_file=META_FILE, overwrite=args.overwrite,
                                  checkpoint_every=args.checkpoint_every, command="unlearnable vectors train",
                                  main=_is_main_process())
    if done:
        vectors = SecurityVectors.load(args.out)
        _log_done(args.out)
    else:
        args.checkpoints = checkpoints
        with keep_checkpoints_only_if_useful(checkpoints if _is_main_process() else None):
            vectors = SecurityVectors.train(model, tok, pairs, cfg, progress=not args.quiet,
                                            checkpoint_dir=checkpoints, save_steps=args.checkpoint_every)
            vectors.metadata["run_key"] = key
            if _is_main_process():
                vectors.save(args.out, overwrite=True)
            _wait_for_everyone()
        if _is_main_process():
            finish_run(checkpoints)
    if _is_main_process():
        print(json.dumps({"out": args.out, "n_pairs": len(pairs), "train_loss_last": vectors.metadata["train_loss_last"],
                          "base_fingerprint": vectors.metadata["base_fingerprint"]}))
    return 0


def _log_done(out) -> None:
    from .utils import log

    log(f"{out} already holds this very run; nothing to do (pass --overwrite to run it again)")


def cmd_finetune(args) -> int:
    import dataclasses

    from .data import load_pairs, pairs_hash
    from .errors import UnlearnableError
    from .runs import check_out, finish_run, keep_checkpoints_only_if_useful, run_key, start_run
    from .utils import sha256_file

    if not args.data:
        raise UnlearnableError("finetune needs --data (a JSONL file or datasets folder of training pairs)")
    check_out(args.out, args.overwrite, MODEL_META)
    pairs = load_pairs(args.data)
    _check_model(args)
    from .models import model_fingerprint, save_model
    from .training import TrainConfig, finetune
    from .utils import run_metadata
    from .vectors import SecurityVectors

    vectors = SecurityVectors.load(args.vectors) if args.vectors else None
    cfg = TrainConfig(backbone=args.backbone, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                      max_length=args.max_length, seed=args.seed, save_steps=args.checkpoint_every)
    model, tok = _load(args)
    fp = model_fingerprint(model)
    if vectors is not None:
        vectors.check(model)
    scale = args.vector_scale if args.vector_scale is not None else (vectors.config.scale if vectors else None)
    key = run_key(command="finetune", model=fp, data=pairs_hash(pairs),
                  config={**dataclasses.asdict(cfg), "save_steps": 0},  # the interval does not change the result
                  vectors=sha256_file(Path(args.vectors) / "adapter_model.safetensors") if vectors else None,
                  vector_scale=scale)
    done, checkpoints = start_run(args.out, key=key, meta_file=MODEL_META, overwrite=args.overwrite,
                                  checkpoint_every=args.checkpoint_every, command="unlearnable finetune",
                                  main=_is_main_process())
    if done:
        _log_done(args.out)
    else:
        args.checkpoints = checkpoints
        with keep_checkpoints_only_if_useful(checkpoints if _is_main_process() else None):
            tuned, history = finetune(model, tok, pairs, cfg, vectors=vectors, scale=args.vector_scale,
                                      progress=not args.quiet, output_dir=checkpoints, resume=checkpoints is not None)
            if _is_main_process():
                save_model(tuned, tok, args.out, metadata={
                    "produced_by": "unlearnable finetune", "run_key": key, "base_fingerprint": fp,
                    "config": dataclasses.asdict(cfg), "vectors": args.vectors, "vector_scale": scale,
                    "vectors_removed": True,
                    # lets `evaluate` refuse evaluation prompts the vectors were trained on
                    "vectors_prompt_hashes": vectors.metadata.get("prompt_hashes") if vectors else None,
                    "n_examples": len(pairs), "history": history, **run_metadata()})
            _wait_for_everyone()
        if _is_main_process():
            finish_run(checkpoints)
    if _is_main_process():
        print(json.dumps({"out": args.out, "n_examples": len(pairs), "vectors": bool(vectors)}))
    return 0


EVAL_KIND = "unlearnable-evaluate"


def _read_results(path: str) -> dict:
    from .errors import UnlearnableError

    p = Path(path)
    if not p.is_file():
        raise UnlearnableError(f"results file {path} {'is a folder' if p.is_dir() else 'does not exist'}; pass files "
                               "written by `unlearnable evaluate --out`")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise UnlearnableError(f"{path} is not a JSON results file; pass files written by `unlearnable evaluate "
                               "--out`") from None
    if not isinstance(data, dict) or data.get("kind") != EVAL_KIND or not isinstance(data.get("eval_splits"), dict) \
            or not isinstance(data.get("summary"), dict):
        raise UnlearnableError(f"{path} was not written by `unlearnable evaluate --out` (no eval_splits); evaluate "
                               "the model again with --out")
    return data


def cmd_compare(paths: list[str]) -> int:
    """Print results side by side; refuse results whose evaluation splits, judge or settings differ."""
    from .errors import UnlearnableError

    if len(paths) < 2:
        raise UnlearnableError("--compare needs at least two results files")
    results = [_read_results(p) for p in paths]
    ref = results[0]
    for path, res in zip(paths[1:], results[1:]):
        for field, what, fix in (("eval_splits", "evaluation splits", "the same --harmful/--data files and --seed"),
                                 ("judge", "judges", "the same --judge"),
                                 ("eval_config", "evaluation settings", "the same version and settings")):
            if field in ref and field in res and ref[field] != res[field]:
                a, b = ref[field], res[field]
                diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)) if isinstance(a, dict) and \
                    isinstance(b, dict) else None
                detail = f" (differ in: {', '.join(diff)})" if diff else f" ({a} vs {b})"
                raise UnlearnableError(f"{paths[0]} and {path} used different {what}{detail}, so their numbers are "
                                       f"not comparable; evaluate both with {fix}")
    metrics = [k for k in dict.fromkeys(k for r in results for k in r["summary"])
               if all(isinstance(r["summary"].get(k), (int, float, type(None))) for r in results)]
    names = [str(r.get("model", p)) for r, p in zip(results, paths)]
    rows = [["metric", *names] + (["change"] if len(results) == 2 else [])]
    for m in metrics:
        vals = [r["summary"].get(m) for r in results]
        row = [m, *(_fmt(v) for v in vals)]
        if len(results) == 2:
            row.append(_fmt(vals[1] - vals[0], signed=True) if None not in vals else "")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print(f"\nsame evaluation splits: harmful {ref['eval_splits'].get('harmful')}, task {ref['eval_splits'].get('task')}")
    return 0


def _fmt(v, signed: bool = False) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:+.3f}" if signed else f"{v:.3f}"
    return f"{v:+d}" if signed else str(v)


def cmd_evaluate(args) -> int:
    import dataclasses

    from .data import check_no_overlap, load_pairs, pairs_hash
    from .errors import UnlearnableError

    if args.compare:
        return cmd_compare(args.compare)
    out = Path(args.out) if args.out else None
    if out is not None:
        if out.is_dir():
            raise UnlearnableError(f"--out {out} is a folder; evaluate writes one JSON file, e.g. --out eval.json")
        if out.exists() and not args.overwrite:  # a file that is not an evaluation is refused at once
            try:
                _read_results(str(out))
            except UnlearnableError:
                raise UnlearnableError(f"--out {out} already exists and is not an evaluation result; pass "
                                       "--overwrite to replace it or choose another --out") from None
    task = load_pairs(args.data) if args.data else []
    harmful = load_pairs(args.harmful, require_response=False) if args.harmful else None
    from .judges import JUDGES, build_judge

    JUDGES.get(args.judge.partition(":")[0])  # an unknown name fails here, listing the known ones
    _check_model(args)
    judge = build_judge(args.judge)
    if harmful is None:
        from .data import harmful_prompts, split
        from .pipeline import DataConfig

        d = DataConfig(seed=args.seed)
        harmful = split(harmful_prompts(), {"eval": d.n_eval}, d.seed)["eval"]
    if args.vectors:
        from .vectors import SecurityVectors

        hashes = SecurityVectors.load(args.vectors).metadata.get("prompt_hashes")
        if not hashes:
            raise UnlearnableError(f"cannot check for leakage: the vectors {args.vectors} record no prompt hashes "
                                   "(made by an older version); train them again, or drop --vectors")
        check_no_overlap(harmful, hashes, "evaluation", f"the training data of the vectors {args.vectors}")
    from .evaluation import EvalConfig, evaluate
    from .models import model_fingerprint
    from .runs import run_key
    from .utils import atomic_write_json, run_metadata

    model, tok = _load(args)
    meta_file = Path(args.model) / MODEL_META if args.model else None
    if meta_file is not None and meta_file.is_file():  # a model fine-tuned with vectors records their prompts
        try:
            hashes = json.loads(meta_file.read_text(encoding="utf-8")).get("vectors_prompt_hashes")
        except (ValueError, AttributeError):
            hashes = None
        if hashes:
            check_no_overlap(harmful, hashes, "evaluation", f"the training data of the vectors {args.model} was "
                             "fine-tuned with")
    eval_config = EvalConfig()
    splits = {"harmful": pairs_hash(harmful), "task": pairs_hash(task) if task else None}
    fp = model_fingerprint(model)
    key = run_key(command="evaluate", model=fp, eval_splits=splits, judge=args.judge,
                  eval_config=dataclasses.asdict(eval_config))
    if out is not None and out.exists() and not args.overwrite:
        old = _read_results(str(out))
        if old.get("run_key") == key:
            _log_done(out)
            print(json.dumps(old["summary"]))
            return 0
        raise UnlearnableError(f"{out} holds a different evaluation (run key {old.get('run_key')}, this one is {key}); "
                               "pass --overwrite to replace it or choose another --out")
    result = evaluate(model, tok, harmful=harmful, task=task, judge=judge, config=eval_config)
    summary = {k: v for k, v in result.items() if not k.endswith("_generations")}
    results = {"kind": EVAL_KIND, "run_key": key, "summary": summary, "model": args.model or "default",
               "model_fingerprint": fp, "judge": args.judge, "seed": args.seed, "eval_splits": splits,
               "eval_config": dataclasses.asdict(eval_config), "result": result, **run_metadata()}
    if out is not None:
        atomic_write_json(out, results)
    print(json.dumps(summary))
    return 0


def cmd_immunize(args) -> int:
    from .config import from_dict, load_config_file

    data = load_config_file(args.config) if args.config else {}
    from .immunization import ImmunizeConfig, conditions_table, run_immunize

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
    out = Path(args.out or "immunize-out")
    fresh = not out.exists()
    try:
        results = run_immunize(cfg, out, overwrite=args.overwrite, progress=not args.quiet)
    except BaseException:
        # run_immunize writes its manifest first: if it failed before any run finished, leave no folder behind
        # (finished runs stay, and the same command resumes from them)
        if fresh and out.is_dir() and not any(p.is_file() for p in (out / "runs").rglob("*")):
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise
    rows = [["defence", "resistance", "released weights", "stability", "generalization", "trainability"]]
    rows += conditions_table(results["conditions"])
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    print(f"\nwrote {args.out or 'immunize-out'}/results.json and report.html ({results['seconds']:.0f} s)")
    return 0


def cmd_tradeoff(args) -> int:
    import dataclasses

    from .config import from_dict, load_config_file
    from .tradeoff import TradeoffConfig, run_tradeoff

    if args.config:
        cfg = from_dict(TradeoffConfig, load_config_file(args.config))
    else:
        cfg = TradeoffConfig.quick() if args.quick else TradeoffConfig()

    def floats(text, what):
        try:
            return [float(x) for x in text.split(",") if x.strip()]
        except ValueError:
            from .errors import UnlearnableError

            raise UnlearnableError(f"--{what} must be comma-separated numbers, got {text!r}") from None

    if args.seeds:
        cfg.seeds = [int(x) for x in floats(args.seeds, "seeds")]
    if args.strengths:
        cfg.strengths = floats(args.strengths, "strengths")
    if args.variants:
        cfg.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.model is not None:
        cfg.base = dataclasses.replace(cfg.base, model=args.model)
    cfg.__post_init__()
    reuse = [d.strip() for d in (args.reuse_points or "").split(",") if d.strip()]
    results = run_tradeoff(cfg, args.out or "tradeoff-out", overwrite=args.overwrite, progress=not args.quiet,
                           reuse=reuse, goal=(args.goal_harm, args.goal_task_ratio))
    for method, pts in results["frontier"].items():
        for p in pts:
            print(f"{method:<18} strength {p['strength']:<5g} harm {p['harm_rate']:.3f} (sd {p['harm_rate_sd']:.3f})  "
                  f"task {p['task_score']:.3f} (sd {p['task_score_sd']:.3f})  seeds {p['n_seeds']}")
    goal = results["goal"]
    from .report import goal_met_by

    met = goal_met_by(goal)
    print(f"\ngoal (harm <= {goal['harm_rate_max']:g}, task >= {goal['task_ratio_min']:g}x none): met by {met}")
    print(f"wrote {args.out or 'tradeoff-out'}/results.json, tradeoff.png, report.html ({results['seconds']:.0f} s)")
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
    debug = os.environ.get("UNLEARNABLE_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except UnlearnableError as exc:
        if debug:
            raise
        print(f"unlearnable: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # disk full, permission denied, ...: the environment, not a bug
        if debug:
            raise
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"unlearnable: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nunlearnable: {_interrupted_message(args)}", file=sys.stderr)
        return 130


def _interrupted_message(args) -> str:
    from .runs import latest_checkpoint

    checkpoints = getattr(args, "checkpoints", None)
    ckpt = latest_checkpoint(checkpoints)
    if ckpt is not None:
        return (f"interrupted; training is saved up to {ckpt.name} in {checkpoints}: run the same command again to "
                "resume from there")
    hint = " (add --checkpoint-every N to be able to resume)" if hasattr(args, "checkpoint_every") else ""
    return ("interrupted before any checkpoint; nothing half-written was kept. Run the same command again to start "
            f"over{hint}")


if __name__ == "__main__":
    sys.exit(main())
