"""``unlearnable evaluate``: harm rate, harmful loss and task exact match of a model; ``--compare`` results."""

from __future__ import annotations

import json

from ..config import add_config_flags
from ..evaluation import compare_results
from ..experiments import EvaluateJob, run_evaluate
from .common import add_run_flags, build, load_options, print_table

EPILOG = """examples:
  unlearnable evaluate --model tuned/                       # harm rate on the embedded held-out prompts
  unlearnable evaluate --model tuned/ --data task.jsonl --out eval.json
  unlearnable evaluate --model tuned/ --vectors vectors/ --out eval.json   # refuse prompts the vectors saw
  unlearnable evaluate --compare base.json tuned.json        # side by side; refuses different eval splits
"""


def add_arguments(p) -> None:
    p.epilog = EPILOG
    add_run_flags(p, out_help="write results JSON here", out_required=False, config_help="EvaluateJob",
                  overwrite_help="replace an --out file that holds another evaluation")
    add_config_flags(p, EvaluateJob, aliases={"--judge": "judges"})
    p.add_argument("--compare", nargs="+", metavar="RESULTS.json", default=None,
                   help="compare results files written by `evaluate --out` (no model is loaded); refuses results "
                        "whose evaluation splits, judge or settings differ")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.compare:
        return compare(args.compare)
    results = run_evaluate(build(EvaluateJob, args), args.out, overwrite=args.overwrite, progress=not args.quiet,
                           load=load_options(args))
    print(json.dumps(results["summary"]))
    return 0


def compare(paths) -> int:
    table = compare_results(paths)
    two = len(table["names"]) == 2
    rows = [["metric", *table["names"]] + (["change"] if two else [])]
    for metric, values in table["metrics"]:
        row = [metric, *(_fmt(v) for v in values)]
        if two:
            row.append(_fmt(values[1] - values[0], signed=True) if None not in values else "")
        rows.append(row)
    print_table(rows)
    splits = table["eval_splits"]
    print(f"\nsame evaluation splits: harmful {splits.get('harmful')}, task {splits.get('task')}")
    return 0


def _fmt(v, signed: bool = False) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:+.3f}" if signed else f"{v:.3f}"
    return f"{v:+d}" if signed else str(v)
