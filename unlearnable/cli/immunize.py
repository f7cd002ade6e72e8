"""``unlearnable immunize``: the four immunization conditions for defences under attack budgets."""

from __future__ import annotations

from ..config import add_config_flags
from ..experiments import ImmunizeConfig, run_immunize
from ..report import conditions_table
from .common import add_run_flags, build, print_table

EPILOG = """examples:
  unlearnable immunize --out runs/immunize                  # 4 defences, small budget grid, ~33 min on 2 CPUs (fp32)
  unlearnable immunize --defenses none,security-vectors --out runs/sv
  unlearnable immunize --config sweep.yaml --out runs/big   # any ImmunizeConfig field, e.g. budget.lrs
  unlearnable immunize --budget.lrs 1e-3,3e-3,1e-2 --out runs/lr
"""


def add_arguments(p) -> None:
    p.epilog = EPILOG
    add_run_flags(p, out_help="output folder (results.json, report.html, plots, runs/)", out_required=False,
                  config_help="ImmunizeConfig", overwrite_help="discard an existing run in --out")
    add_config_flags(p, ImmunizeConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    out = args.out or "immunize-out"
    results = run_immunize(build(ImmunizeConfig, args), out, overwrite=args.overwrite, progress=not args.quiet)
    print_table([["defence", "resistance", "released weights", "stability", "generalization", "trainability"]]
                + conditions_table(results["conditions"]))
    print(f"\nwrote {out}/results.json and report.html ({results['seconds']:.0f} s)")
    return 0
