"""The held-out loss of each early-stopped point's vectors, check by check, with the lowest check and the one kept,
next to the harm rate the point measured: does harm follow where early stopping stopped?

    python scripts/holdout_curves.py runs/tradeoff-1000-1se runs/tradeoff-1000-1se-seed3 --out holdout.png

Reads the tradeoff point files (``runs/points/*.json``) of every folder given; prints one line per point and, with
``--out``, draws one panel per seed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def early_stopped_points(folders: list[str]) -> list[dict]:
    """Every stored point whose vectors were kept by a held-out check, by (seed, method), first folder first."""
    seen: dict[tuple[int, str], dict] = {}
    for folder in folders:
        for path in sorted(Path(folder, "runs", "points").glob("*.json")):
            point = json.loads(path.read_text(encoding="utf-8"))
            holdout = ((point.get("defense_info") or {}).get("vectors") or {}).get("holdout")
            if holdout and (point["seed"], point["method"]) not in seen:
                seen[(point["seed"], point["method"])] = {**point, "holdout": holdout}
    return [seen[k] for k in sorted(seen)]


def line(point: dict) -> str:
    h = point["holdout"]
    kept = h.get("kept_step", h["best_step"])
    return (f"seed {point['seed']}  {point['method']:<22} lowest step {h['best_step']:>3}  kept {kept:>3}  "
            f"harm {point['harm_rate']:.3f}  over-refusal {point.get('over_refusal', float('nan')):.3f}")


def draw(points: list[dict], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted({p["seed"] for p in points})
    fig, axes = plt.subplots(1, len(seeds), figsize=(4 * len(seeds), 3.2), squeeze=False, sharey=True)
    for ax, seed in zip(axes[0], seeds):
        mine = [p for p in points if p["seed"] == seed]
        steps, losses = zip(*mine[0]["holdout"]["curve"])
        ax.plot(steps, losses, "o-", color="0.4")
        for p, marker in zip(mine, "vsD^"):
            kept = p["holdout"].get("kept_step", p["holdout"]["best_step"])
            ax.plot([kept], [dict(p["holdout"]["curve"])[kept]], marker, markersize=10, fillstyle="none",
                    label=f"{p['method']}: step {kept}, harm {p['harm_rate']:.2f}")
        ax.set_title(f"seed {seed}")
        ax.set_xlabel("vector training step")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(f"held-out loss ({mine[0]['holdout']['n_heldout']} pairs)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="tradeoff output folders")
    parser.add_argument("--out", help="PNG to draw the curves into")
    args = parser.parse_args()
    points = early_stopped_points(args.folders)
    if not points:
        raise SystemExit("no early-stopped points found; give tradeoff folders with runs/points/*.json")
    for point in points:
        print(line(point))
    if args.out:
        draw(points, args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
