"""Each trade-off point's harm rate against its over-refusal, one marker per (method, strength), one point per
seed, with the seed-averaged point and the goal's box: does a variant move off the trade or along it?

    python scripts/harm_vs_over_refusal.py runs/tradeoff-demo-anchored-refusals \
        runs/tradeoff-demo-anchored-refusals-s0 --out harm-vs-over-refusal.png

Reads the points of every folder given as the trade-off itself does (``stored_points``: its point files, or an
older folder's points.jsonl; a (method, strength, seed) found twice is read from the first folder); prints one
line per seed-averaged point and, with ``--out``, draws them.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from unlearnable.experiments.tradeoff import stored_points


def scored_points(folders: list[str]) -> dict[tuple[str, float], list[dict]]:
    """The points with an over-refusal score, grouped by (method, strength), first folder first."""
    seen: dict[tuple[str, float, int], dict] = {}
    for folder in folders:
        for point in stored_points(Path(folder)):
            key = (point["method"], float(point["strength"]), point["seed"])
            if point.get("over_refusal") is not None and key not in seen:
                seen[key] = point
    groups: dict[tuple[str, float], list[dict]] = {}
    for (method, strength, _), point in sorted(seen.items()):
        groups.setdefault((method, strength), []).append(point)
    return groups


def label(method: str, strength: float) -> str:
    return method if method == "none" else f"{method} {strength:g}"


def line(method: str, strength: float, points: list[dict]) -> str:
    harm = statistics.fmean(p["harm_rate"] for p in points)
    refusal = statistics.fmean(p["over_refusal"] for p in points)
    return f"{label(method, strength):<40} seeds {len(points)}  harm {harm:.3f}  over-refusal {refusal:.3f}"


def draw(groups: dict[tuple[str, float], list[dict]], out: str, goal_harm: float, goal_rise: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    base = groups.get(("none", 0.0))
    floor = statistics.fmean(p["over_refusal"] for p in base) if base else 0.0
    ax.add_patch(plt.Rectangle((0, 0), goal_harm, floor + goal_rise, color="tab:green", alpha=0.12,
                               label="goal (harm, over-refusal)"))
    for (method, strength), points in groups.items():
        x, y = [p["harm_rate"] for p in points], [p["over_refusal"] for p in points]
        dots = ax.scatter(x, y, alpha=0.45, s=22)
        ax.scatter([statistics.fmean(x)], [statistics.fmean(y)], s=110, marker="D",
                   color=dots.get_facecolor()[0][:3],
                   edgecolor="black", label=f"{label(method, strength)} ({len(points)} seeds)")
    ax.set_xlabel("harm rate (held-out harmful prompts)")
    ax.set_ylabel("over-refusal (harmless prompts)")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="tradeoff --out folders")
    parser.add_argument("--out", help="PNG to draw")
    parser.add_argument("--goal-harm", type=float, default=0.1)
    parser.add_argument("--goal-over-refusal", type=float, default=0.05, help="rise over none's")
    args = parser.parse_args(argv)
    try:
        groups = scored_points(args.folders)
    except OSError as e:  # neither point files nor points.jsonl
        parser.error(f"{e.filename}: not found; give tradeoff --out folders")
    if not groups:
        parser.error(f"no point with an over-refusal score under {', '.join(args.folders)}")
    for (method, strength), points in groups.items():
        print(line(method, strength, points))
    if args.out:
        draw(groups, args.out, args.goal_harm, args.goal_over_refusal)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
