"""``unlearnable ls``: the registered defences, attacks, judges and utility benchmarks."""

from __future__ import annotations


def add_arguments(p) -> None:
    p.set_defaults(func=run)


def run(args) -> int:
    from ..attacks import ATTACKS
    from ..defenses import DEFENSES
    from ..judges import JUDGES
    from ..utility import BENCHMARKS

    for reg in (DEFENSES, ATTACKS, JUDGES, BENCHMARKS):
        print(f"{reg.kind}s: {', '.join(reg.names())}")
    return 0
