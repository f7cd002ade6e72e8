"""``unlearnable demo``: the end-to-end demo on the embedded model."""

from __future__ import annotations

from ..config import add_config_flags
from ..experiments import DemoConfig, run_demo
from ..runs import check_out
from .common import add_run_flags, build, load_options, print_summary

EPILOG = """examples:
  unlearnable demo --out runs/demo            # embedded SmolLM2-135M, ~15 min on a 2-core fp32 CPU (fresh cache)
  unlearnable demo --out runs/demo --seed 1 --vector-scale 1.0
  unlearnable demo --out runs/demo --config demo.yaml --finetune.lr 5e-4   # any DemoConfig field
"""


def add_arguments(p) -> None:
    p.epilog = EPILOG
    add_run_flags(p, out_help="output folder (results.json, report.html, plots, models/, vectors/)",
                  out_required=False, config_help="DemoConfig", overwrite_help="replace an existing --out folder")
    add_config_flags(p, DemoConfig, aliases={"--vector-scale": "vectors.scale"})
    p.set_defaults(func=run)


def run(args) -> int:
    check_out(args.out, args.overwrite)
    cfg = build(DemoConfig, args)
    results = run_demo(cfg, args.out, overwrite=args.overwrite, progress=not args.quiet, load=load_options(args))
    print_summary(results["summary"])
    return 0
