"""``unlearnable ls``: the registered defences, attacks, threat models, judges and utility benchmarks."""

from __future__ import annotations


def add_arguments(p) -> None:
    p.set_defaults(func=run)


def run(args) -> int:
    from ..attacks import ATTACKS
    from ..defenses import DEFENSES
    from ..judges import JUDGES
    from ..threat_models import THREAT_MODELS
    from ..utility import BENCHMARKS

    for reg in (DEFENSES, ATTACKS, THREAT_MODELS, JUDGES, BENCHMARKS):
        print(f"{reg.kind}s: {', '.join(reg.names())}")
    claims = {name: ", ".join(DEFENSES.get(name).threat_models) for name in DEFENSES.names()}
    print("threat models each defence claims:")
    for name, tms in claims.items():
        print(f"  {name}: {tms}")
    return 0
