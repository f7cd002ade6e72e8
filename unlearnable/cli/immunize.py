"""``unlearnable immunize``: the four immunization conditions for defences under attack budgets."""

from __future__ import annotations

from ..config import add_config_flags
from ..experiments import ImmunizeConfig, run_immunize
from ..report import conditions_table, search_lines
from .common import add_run_flags, build, folders, load_options, print_table

EPILOG = """examples:
  unlearnable immunize --out runs/immunize                  # 4 defences, small budget grid, ~33 min on 2 CPUs (fp32)
  unlearnable immunize --defenses none,security-vectors --out runs/sv
  unlearnable immunize --config sweep.yaml --out runs/big   # any ImmunizeConfig field, e.g. budget.lrs
  unlearnable immunize --budget.lrs 1e-3,3e-3,1e-2 --out runs/lr
  unlearnable immunize --attacker search --quick --out runs/search-quick
                                     # none and security-vectors against a 5-trial search under the service
  unlearnable immunize --attacker search --out runs/search   # 16 trials per defence and each threat model it
                                     # claims (search.*, search.space.* for released weights, service.*)
  unlearnable immunize --attacker search --threat-models service,weights --out runs/both
  unlearnable immunize --attacker search --defenses none,lisa --out runs/lisa --reuse-defenses runs/search
                                     # none's runs copied from runs/search (same settings), lisa searched
  unlearnable immunize --tune-defenses 8 --defenses none,vaccine --out runs/tuned
                                     # 8 Optuna trials per defence on its own held-out data before any attack
"""


def add_arguments(p) -> None:
    p.epilog = EPILOG
    add_run_flags(p, out_help="output folder (results.json, report.html, plots, runs/)", out_required=False,
                  config_help="ImmunizeConfig", overwrite_help="discard an existing run in --out")
    p.add_argument("--quick", action="store_true", help="start from the quick preset (none and security-vectors; "
                                                        "a 5-trial LoRA search of at most 32 steps with --attacker "
                                                        "search)")
    p.add_argument("--reuse-defenses", default=None, metavar="DIR[,DIR]",
                   help="earlier immunize sweeps: a defence one of them ran under the same settings (all but the "
                        "other defences) has its runs and search studies copied from it instead of run again, "
                        "e.g. `none` for a sweep of other defences; recorded as reused_from")
    add_config_flags(p, ImmunizeConfig, aliases={"--tune-defenses": "tune.n_trials"})
    p.set_defaults(func=run)


def run(args) -> int:
    out = args.out or "immunize-out"
    cfg = build(ImmunizeConfig, args, preset=ImmunizeConfig.quick() if args.quick else None)
    reuse = folders(args.reuse_defenses)
    results = run_immunize(cfg, out, overwrite=args.overwrite, progress=not args.quiet, load=load_options(args),
                           reuse=reuse)
    print_table([["defence", "resistance", "service", "released weights", "stability", "generalization",
                  "trainability"]] + conditions_table(results.conditions))
    for line in search_lines(results.get("attacker_search", {})):
        print(line)
    print(f"\nwrote {out}/results.json and report.html ({results['seconds']:.0f} s)")
    return 0
