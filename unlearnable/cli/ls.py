"""``unlearnable ls``: the registered defences and judges."""

from __future__ import annotations


def add_arguments(p) -> None:
    p.set_defaults(func=run)


def run(args) -> int:
    from ..defenses import DEFENSES
    from ..judges import JUDGES

    for reg in (DEFENSES, JUDGES):
        print(f"{reg.kind}s: {', '.join(reg.names())}")
    return 0
