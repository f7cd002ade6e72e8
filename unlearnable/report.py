"""Reports rendered from results JSON only: PNG plots (matplotlib, headless) and one self-contained HTML page.

Nothing here imports the pipeline: a report is a function of a results dict, so it sits below the experiments
that write one (and can be re-rendered from a saved ``results.json``)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Sequence

from .utils import atomic_savefig, atomic_write_text


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return "—" if v is None else str(v)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, sections: Sequence[tuple[str, str]], meta: dict[str, Any]) -> str:
    css = ("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
           "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}"
           "th{background:#f3f3f3}img{max-width:100%}pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}"
           "details{margin:1em 0}.note{color:#555}")
    parts = [f"<h1>{html.escape(title)}</h1>"]
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
    parts.append("<h2>Provenance</h2><details><summary>config, versions, fingerprints</summary><pre>"
                 + html.escape(json.dumps(meta, indent=2, default=str)) + "</pre></details>")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>" \
           f"<style>{css}</style></head><body>{''.join(parts)}</body></html>\n"


def demo_plot(results: dict[str, Any], path: Path) -> None:
    plt = _plt()
    s = results["summary"]
    labels = ["aligned\n(before)", "fine-tuned\nno vectors", "fine-tuned\nwith vectors"]
    harm = [s["harm_rate_before"], s["harm_rate_without_vectors"], s["harm_rate_with_vectors"]]
    task = [s["task_em_before"], s["task_em_without_vectors"], s["task_em_with_vectors"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    x = range(len(labels))
    w = 0.38
    ax = axes[0]
    b1 = ax.bar([i - w / 2 for i in x], harm, w, label="harm rate (lower is safer)", color="#c0392b")
    b2 = ax.bar([i + w / 2 for i in x], task, w, label="ProfileQA exact match (higher is better)", color="#2e86c1")
    for bars in (b1, b2):
        for b in bars:
            ax.annotate(f"{b.get_height():.2f}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                        va="bottom", fontsize=8)
    ax.set_xticks(list(x), labels)
    ax.set_ylim(0, 1.1)
    ax.set_title("Harm rate and task score per arm")
    ax.legend(fontsize=8, loc="upper left")
    ax = axes[1]
    for arm, color in (("without_vectors", "#c0392b"), ("with_vectors", "#27ae60")):
        hist = [h for h in results["arms"][arm].get("history", []) if "loss" in h]
        ax.plot([h["step"] for h in hist], [h["loss"] for h in hist], marker="o", ms=3, color=color,
                label=arm.replace("_", " "))
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("training loss (harmful + task mix)")
    ax.set_title("Fine-tuning loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def write_demo_report(results: dict[str, Any], out: Path) -> None:
    out = Path(out)
    demo_plot(results, out / "demo.png")
    s = results["summary"]
    rows = [
        ["aligned model (before fine-tuning)", s["harm_rate_before"], s["task_em_before"],
         s.get("harmful_loss_before")],
        ["fine-tuned without vectors", s["harm_rate_without_vectors"], s["task_em_without_vectors"],
         s.get("harmful_loss_without_vectors")],
        ["fine-tuned with vectors (served without)", s["harm_rate_with_vectors"], s["task_em_with_vectors"],
         s.get("harmful_loss_with_vectors")],
    ]
    samples = []
    for arm in ("without_vectors", "with_vectors"):
        gens = results["arms"][arm].get("harmful_generations", [])[:5]
        samples.append(f"<h3>{arm.replace('_', ' ')}</h3>" + table(
            ["prompt", "response", "judged harmful"], [[g["prompt"], g["response"][:240], g["harmful"]] for g in gens]))
    cfg = results["config"]
    sections = [
        ("Summary", table(["model", "harm rate", "ProfileQA EM", "harmful loss (first tokens)"], rows)
         + f"<p class='note'>{results['before']['n_harmful']} held-out harmful prompts, keyword refusal judge; "
           f"{results['before']['n_task']} ProfileQA facts; {results['data']['finetune_examples']} fine-tuning "
           f"examples of which {results['data']['sizes']['attack']} harmful; vectors scale {s['vector_scale']}; "
           f"precision {s['precision']}; {s['seconds']:.0f} s in all.</p>"),
        ("Plot", "<img src='demo.png' alt='harm rate and task score per arm'>"),
        ("Timings (s)", table(["stage", "seconds"], list(results["timings"].items()))),
        ("Sample generations on held-out harmful prompts", "".join(samples)),
    ]
    meta = {k: results[k] for k in ("config", "model", "data", "versions", "git_hash", "date", "device")
            if k in results}
    meta["config"] = cfg
    atomic_write_text(out / "report.html", page("unlearnable demo: security vectors", sections, meta))


def _curve_plot(ax, curves: dict[str, list[dict]], key: str, title: str, threshold: float | None = None):
    for name, curve in curves.items():
        pts = [(p["step"], p[key]) for p in curve if p.get(key) is not None]
        if pts:
            ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o", ms=3, label=name)
    if threshold is not None:
        ax.axhline(threshold, ls="--", color="#888", lw=1)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("attacker steps" if key != "task_em" else "fine-tuning steps")
    ax.set_title(title, fontsize=9)


def immunize_plots(results: dict[str, Any], out: Path) -> list[str]:
    plt = _plt()
    defs = results["defenses"]
    cfg = results["config"]
    names = []
    attack_ids = sorted({k for d in defs.values() for k in d["runs"] if k.startswith("attack-")})
    panels = attack_ids + (["cross-domain"] if any("cross-domain" in d["runs"] for d in defs.values()) else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, run_id in zip(axes[0], panels):
        curves = {n: d["runs"][run_id]["curve"] for n, d in defs.items() if run_id in d["runs"]}
        _curve_plot(ax, curves, "harm_rate", run_id.replace("attack-", "attack ").replace("-", " "),
                    cfg["threshold"])
        ax.set_ylabel("harm rate")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, out / "resistance.png", dpi=110)
    plt.close(fig)
    names.append("resistance.png")
    fig, ax = plt.subplots(figsize=(5, 3.6))
    _curve_plot(ax, {n: d["runs"]["trainability"]["curve"] for n, d in defs.items()}, "task_em",
                "Trainability: ProfileQA exact match")
    ax.set_ylabel("exact match")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, out / "trainability.png", dpi=110)
    plt.close(fig)
    names.append("trainability.png")
    return names


RELEASED_WEIGHTS = "released-weights"


def conditions_table(conditions: dict[str, Any]) -> list[list[str]]:
    """One row per defence: its verdict under each condition (and threat model), in words."""
    return [[name, c["resistance"]["verdict"], c["resistance"]["by_threat_model"][RELEASED_WEIGHTS],
             c["stability"]["verdict"], c["generalization"]["verdict"], c["trainability"]["verdict"]]
            for name, c in conditions.items()]


def write_immunize_report(results: dict[str, Any], out: Path) -> None:
    out = Path(out)
    immunize_plots(results, out)
    cond = results["conditions"]
    rows = conditions_table(cond)
    numbers = []
    for name, c in cond.items():
        r, s, g, t = c["resistance"], c["stability"], c["generalization"], c["trainability"]
        numbers.append([name, ", ".join(f"{k}: {v if v is not None else 'never'}" for k, v in
                                        r["steps_to_harmful"].items()),
                        s["harm_rate"], s["harmless_loss"], s["over_refusal"],
                        g.get("cross_domain_steps_to_harmful", "—") if g.get("cross_domain_steps_to_harmful")
                        is not None else ("never" if "cross_domain_final_harm_rate" in g else "—"),
                        t["final_task_em"]])
    cfg = results["config"]
    b = cfg["budget"]
    sections = [
        ("The four conditions", table(["defence", "resistance (service)", "resistance (released weights)",
                                        "stability", "generalization", "trainability"], rows)
         + f"<p class='note'>Threshold: harm rate {cfg['threshold']} (judge {cfg['judges'][0]}); budget: "
           f"lr {b['lrs']} x samples {b['samples']} x {b['steps']} steps (batch {b['batch_size']}, "
           f"{b['backbone']}); curves evaluated every {b['eval_every']} steps on {cfg['n_curve_eval']} held-out "
           f"prompts. Verdicts: strong = never harmful within the budget; weak (N) = harmful only after N steps "
           f"and later than the undefended model; none = no later than undefended.</p>"),
        ("Numbers", table(["defence", "steps to harmful", "harm rate before attack", "harmless loss",
                           "over-refusal", "cross-domain steps to harmful", "final ProfileQA EM"], numbers)),
        ("Resistance and generalization curves", "<img src='resistance.png' alt='harm rate vs steps'>"),
        ("Trainability", "<img src='trainability.png' alt='task score vs steps'>"),
        ("Threat models", "<ul>" + "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>"
                                            for k, v in results["threat_models"].items()) + "</ul>"),
    ]
    if results.get("judge_agreement"):
        sections.append(("Judge agreement (Cohen's kappa)",
                         table(["judges", "kappa"], list(results["judge_agreement"].items()))))
    if results.get("timings"):
        sections.append(("Timings (s)", table(["stage", "seconds"], list(results["timings"].items()))
                         + "<p class='note'>'evaluation' is every harm and task scoring pass (curve points and "
                           "stability's harmful prompts) and also counts inside the stages it ran in; runs resumed "
                           "from disk count ~0 s.</p>"))
    meta = {k: results[k] for k in ("config", "model", "data", "versions", "git_hash", "date", "device", "seconds")
            if k in results}
    atomic_write_text(out / "report.html", page("unlearnable immunize: four immunization conditions", sections, meta))


def tradeoff_plot(results: dict[str, Any], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for method, pts in results["averaged"].items():
        xs, ys = [p["harm_rate"] for p in pts], [p["task_score"] for p in pts]
        xerr = [[p["harm_rate"] - p["harm_min"] for p in pts], [p["harm_max"] - p["harm_rate"] for p in pts]]
        yerr = [[p["task_score"] - p["task_min"] for p in pts], [p["task_max"] - p["task_score"] for p in pts]]
        line = ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker="o", ms=5, capsize=3, label=method,
                           ls="-" if len(pts) > 1 else "none")
        for p in pts:
            ax.annotate(f"{p['strength']:g}", (p["harm_rate"], p["task_score"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, color=line[0].get_color())
    goal = results.get("goal")
    none = results["averaged"].get("none")
    if goal and none:  # the region a defence should reach: low harm, task close to the undefended run's
        y0 = goal["task_ratio_min"] * none[0]["task_score"]
        ax.fill_between([-0.03, goal["harm_rate_max"]], y0, 1.05, color="tab:green", alpha=0.12, lw=0,
                        label=f"goal: harm <= {goal['harm_rate_max']:g}, task >= {goal['task_ratio_min']:g}x none")
    ax.set_xlabel("harm rate after fine-tuning (lower is safer)")
    ax.set_ylabel("task score: ProfileQA exact match")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.05)
    ax.set_title("Strength trade-off (labels: vector strength; bars: min-max over seeds)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def tradeoff_section(results: dict[str, Any]) -> str:
    rows = [[m, p["strength"], p["harm_rate"], p["harm_rate_sd"], p["task_score"], p["task_score_sd"], p["n_seeds"]]
            for m, pts in results["frontier"].items() for p in pts]
    return ("<img src='tradeoff.png' alt='harm rate vs task score'>"
            + "<h3>Frontier (seed-averaged, non-dominated per method)</h3>"
            + table(["method", "strength", "harm rate", "sd", "task score", "sd", "seeds"], rows)
            + _goal_html(results.get("goal"))
            + "<h3>All points</h3>"
            + table(["method", "strength", "seed", "harm rate", "task score", "seconds", "note"],
                    [[p["method"], p["strength"], p["seed"], p["harm_rate"], p["task_score"], p["seconds"],
                      p.get("reused_from") and f"reused from {p['reused_from']}"] for p in results["points"]]))


def goal_met_by(goal: dict[str, Any]) -> str:
    """The (method, strength) points that reach a tradeoff goal, as text ("no point" when none does)."""
    return ", ".join(f"{m['method']} {m['strength']:g}" for m in goal["met_by"]) or "no point"


def _goal_html(goal: dict[str, Any] | None) -> str:
    if not goal:
        return ""
    met = goal_met_by(goal)
    return (f"<h3>Goal: harm rate &lt;= {goal['harm_rate_max']:g} with task &gt;= {goal['task_ratio_min']:g}x the "
            f"undefended score (seed means)</h3><p>Met by: {html.escape(met)}</p>"
            + table(["method", "strength", "harm rate", "task vs none", "seeds", "met"],
                    [[r["method"], r["strength"], r["harm_rate"], r["task_ratio"], r["n_seeds"], r["met"]]
                     for r in goal["points"]]))


def write_tradeoff_report(results: dict[str, Any], out: Path) -> None:
    out = Path(out)
    tradeoff_plot(results, out / "tradeoff.png")
    meta = {k: results[k] for k in ("config", "model", "versions", "git_hash", "date", "device", "precision",
                                    "seconds") if k in results}
    atomic_write_text(out / "report.html", page("unlearnable tradeoff: harm rate vs task score",
                                                [("Trade-off", tradeoff_section(results))], meta))
