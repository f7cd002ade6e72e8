"""Reports rendered from results JSON only: PNG plots (matplotlib, headless) and one self-contained HTML page.

Nothing here imports the pipeline: a report is a function of a results dict, so it sits below the experiments
that write one (and can be re-rendered from a saved ``results.json``)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Sequence

from .results import (
    BENIGN_ONLY,
    Condition,
    DemoResults,
    ImmunizeResults,
    Measured,
    TradeoffResults,
    by_dimension,
    emulated_flagger,
)
from .stats import difference_interval
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


def rate_text(value: float | None, interval: Sequence[float] | None) -> str:
    """``0.075 [0.03, 0.15]``: a rate with its 95 % interval (the rate alone when there is none)."""
    if value is None:
        return "—"
    return f"{value:.3f} [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else f"{value:.3f}"


def constant_answer_note(letter: str | None, *, why: bool = True) -> str:
    """What follows an MMLU score whose model gave one letter to every question: the score is then that letter's
    share of right answers, not knowledge (``why``: say so)."""
    return f" (every answer {letter}{': no measure of knowledge' if why else ''})" if letter else ""


def mmlu_text(value: float | None, interval: Sequence[float] | None, letter: str | None = None) -> str:
    return rate_text(value, interval) + (constant_answer_note(letter, why=False) if value is not None else "")


def difference_text(a: float, n_a: int, b: float, n_b: int) -> str:
    """``a - b`` with its 95 % interval, labelled *within noise* when the interval holds 0."""
    low, high = difference_interval(a, n_a, b, n_b)
    noise = " (within noise)" if low <= 0 <= high else ""
    return f"{a - b:+.3f} [{low:+.2f}, {high:+.2f}]{noise}"


def judge_label(spec: str) -> str:
    """A judge as reports name it: the keyword judge says that it measures compliance, not harm."""
    return "keyword: compliance with harmful requests, not harm" if spec == "keyword" else spec


def judges_section(agreement: dict[str, float], disagreements: Sequence[dict[str, Any]], limit: int = 40) -> str:
    """Cohen's kappa of every pair of judges, and the generations they label differently."""
    if not agreement:
        return ""
    rows = [[d.get("where", ""), d["prompt"], d["response"][:240],
             ", ".join(f"{k}: {'harmful' if v else 'not'}" for k, v in d["labels"].items())]
            for d in disagreements[:limit]]
    more = f"<p class='note'>{len(disagreements) - limit} more in results.json.</p>" if len(disagreements) > limit \
        else ""
    return (table(["judges", "Cohen's kappa"], list(agreement.items()))
            + f"<h3>Generations the judges disagree on ({len(disagreements)})</h3>"
            + (table(["where", "prompt", "response", "labels"], rows) if rows else "<p>None.</p>") + more)


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


def demo_plot(results: DemoResults, path: Path) -> None:
    plt = _plt()
    models = results.models()
    labels = ["aligned\n(before)", "fine-tuned\nno vectors", "fine-tuned\nwith vectors"]
    series = [(m, label, color) for m, label, color in DEMO_BARS if results.before.rate(m).value is not None]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    w = 0.8 / len(series)
    ax = axes[0]
    for k, (metric, label, color) in enumerate(series):
        rates = [models[name].rate(metric) for name in DEMO_ROWS]
        values = [r.value for r in rates]
        errs = [r.interval_95 or (r.value, r.value) for r in rates]
        bars = ax.bar([i - 0.4 + w * (k + 0.5) for i in range(len(labels))], values, w, label=label, color=color,
                      yerr=error_bars(values, errs),
                      capsize=2, error_kw={"lw": 0.8})
        for b, e in zip(bars, errs):
            ax.annotate(f"{b.get_height():.2f}", (b.get_x() + b.get_width() / 2, e[1] + 0.01), ha="center",
                        va="bottom", fontsize=6)
    ax.set_xticks(list(range(len(labels))), labels)
    ax.set_ylim(0, 1.12)
    ax.set_title("Per model, with 95 % intervals")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    ax = axes[1]
    for arm, color in (("without_vectors", "#c0392b"), ("with_vectors", "#27ae60")):
        losses = results.arms[arm].losses()
        ax.plot([step for step, _ in losses], [loss for _, loss in losses], marker="o", ms=3, color=color,
                label=arm.replace("_", " "))
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("training loss (harmful + task mix)")
    ax.set_title("Fine-tuning loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


#: the demo's rates, as plotted: (metric, legend, colour)
DEMO_BARS = (("harm_rate", "compliance with harmful requests (lower is safer)", "#c0392b"),
             ("over_refusal", "over-refusal of harmless prompts (lower is better)", "#e67e22"),
             ("task_em", "ProfileQA exact match (higher is better)", "#2e86c1"),
             ("mmlu", "MMLU accuracy (chance 0.25)", "#8e44ad"))
#: the demo's scored models and how the report names them
DEMO_ROWS = {"before": "aligned model (before fine-tuning)", "without_vectors": "fine-tuned without vectors",
             "with_vectors": "fine-tuned with vectors (served without)"}


def _arm_defense(results: DemoResults) -> str:
    """The with-vectors arm's defence, and its flagger where it screens the data (older files: security-vectors)."""
    defense = (results.get("arms", {}).get("with_vectors") or {}).get("defense") or {}
    flagger, name = defense.get("flagger") or {}, defense.get("name", "security-vectors")
    mark = _emulated_mark(flagger.get("emulated"))
    return html.escape(f"{name} (flagger {flagger['flagger']}{mark})" if flagger.get("flagger") else name)


def _demo_differences(results: DemoResults) -> str:
    """Each rate with vectors minus without, and without vectors minus before, with intervals."""
    models, rows = results.models(), []
    for metric, label, _ in DEMO_BARS:
        before, without, with_ = (models[name].rate(metric) for name in DEMO_ROWS)
        n = before.n or 0
        if before.value is None or not n:
            continue
        rows.append([label.split(" (")[0], difference_text(with_.value, n, without.value, n),
                     difference_text(without.value, n, before.value, n)])
    return table(["rate", "with vectors - without", "without vectors - before"], rows) + \
        "<p class='note'>95 % intervals (Newcombe, from the Wilson intervals); a difference whose interval holds 0 " \
        "is labelled within noise.</p>"


def write_demo_report(results: DemoResults | dict[str, Any], out: Path) -> None:
    results, out = DemoResults.of(results), Path(out)
    demo_plot(results, out / "demo.png")
    models = results.models()
    rows = [[label] + [mmlu_text(models[name].rate(m).value, models[name].rate(m).interval_95,
                                 models[name].mmlu_constant_answer if m == "mmlu" else None)
                       for m, _, _ in DEMO_BARS] + [models[name].harmful_loss] for name, label in DEMO_ROWS.items()]
    samples = []
    for arm in ("without_vectors", "with_vectors"):
        gens = results.arms[arm].harmful_generations[:5]
        samples.append(f"<h3>{arm.replace('_', ' ')}</h3>" + table(
            ["prompt", "response", "judged harmful"], [[g.prompt, g.response[:240], g.harmful] for g in gens]))
    cfg, before, s = results.config, results.before, results["summary"]
    judge = (cfg.get("judges") or ["keyword"])[0]
    what = "compliance with harmful requests (keyword)" if judge == "keyword" else f"harm rate ({judge})"
    sections = [
        ("Summary", table(["model", what, "over-refusal", "ProfileQA EM", "MMLU", "harmful loss (first tokens)"],
                          rows)
         + f"<p class='note'>{before.harm_rate.n or 0} held-out harmful prompts (HarmBench standard behaviours "
           f"unless configured otherwise), judge {html.escape(judge_label(judge))}; {before.over_refusal.n or 0} "
           f"held-out harmless prompts; {before.task_em.n or 0} "
           f"ProfileQA facts; {before.mmlu.n or 0} MMLU questions (zero-shot, subject-stratified); "
           f"{results['data']['finetune_examples']} fine-tuning examples of which "
           f"{results['data']['sizes']['attack']} harmful; with vectors: {_arm_defense(results)}, vectors scale "
           f"{s['vector_scale']}; precision "
           f"{s['precision']}; {s['seconds']:.0f} s in all. Brackets: 95 % Wilson intervals.</p>"),
        ("Differences", _demo_differences(results)),
        ("Plot", "<img src='demo.png' alt='harm rate and task score per arm'>"),
        ("Timings (s)", table(["stage", "seconds"], list(results.provenance.timings.items()))),
        ("Sample generations on held-out harmful prompts", "".join(samples)),
    ]
    if results.get("judge_agreement"):
        sections.append(("Judge agreement", judges_section(results["judge_agreement"],
                                                           results.get("judge_disagreements", []))))
    meta = {k: results[k] for k in ("config", "model", "data", "versions", "git_hash", "date", "device")
            if k in results}
    atomic_write_text(out / "report.html", page("unlearnable demo: security vectors", sections, meta))


def line_styles(names) -> dict[str, dict[str, Any]]:
    """One look per name, the same in every panel: matplotlib's ten colours, then again dashed and dotted (with
    other markers), so that eleven or more defences stay apart."""
    return {name: {"color": f"C{i % 10}", "ls": ("-", "--", ":")[i // 10 % 3], "marker": ("o", "s", "^")[i // 10 % 3]}
            for i, name in enumerate(names)}


def _curve_plot(ax, curves: dict[str, list[dict]], key: str, title: str, threshold: float | None = None,
                styles: dict[str, dict] | None = None):
    styles = styles or line_styles(curves)
    for name, curve in curves.items():
        pts = [(p["step"], p[key]) for p in curve if p.get(key) is not None]
        if pts:
            ax.plot([s for s, _ in pts], [v for _, v in pts], ms=3, label=name, **styles[name])
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
    styles = line_styles(defs)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, run_id in zip(axes[0], panels):
        curves = {n: d["runs"][run_id]["curve"] for n, d in defs.items() if run_id in d["runs"]}
        _curve_plot(ax, curves, "harm_rate", run_id.replace("attack-", "attack ").replace("-", " "),
                    cfg["threshold"], styles)
        ax.set_ylabel("harm rate")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, out / "resistance.png", dpi=110)
    plt.close(fig)
    names.append("resistance.png")
    fig, ax = plt.subplots(figsize=(5, 3.6))
    _curve_plot(ax, {n: d["runs"]["trainability"]["curve"] for n, d in defs.items()}, "task_em",
                "Trainability: ProfileQA exact match", styles=styles)
    ax.set_ylabel("exact match")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, out / "trainability.png", dpi=110)
    plt.close(fig)
    names.append("trainability.png")
    return names


LEGACY_THREAT_MODEL = "any setting (before threat models)"


def by_threat_model(search: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A defence's searches per threat model; a results file from before threat models holds one search, shown
    under :data:`LEGACY_THREAT_MODEL`."""
    if "by_threat_model" in search:
        return search["by_threat_model"]
    return {search.get("threat_model") or LEGACY_THREAT_MODEL: {**search, "claimed": True}}


def _threat_model_names(searches: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(tm for s in searches.values() for tm in by_threat_model(s)))


def search_plot(searches: dict[str, Any], path: Path) -> None:
    """Best-so-far worst case (within the utility constraint) against the trial number, one panel per threat
    model and one line per defence: does a defence slow the attacker's search down?"""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    tms = _threat_model_names(searches)
    fig, axes = plt.subplots(1, len(tms), figsize=(5.0 * len(tms), 3.8), squeeze=False)
    styles = line_styles(searches)
    for ax, tm in zip(axes[0], tms):
        for name, s in searches.items():
            found = by_threat_model(s).get(tm, {})
            pts = [(i, v) for i, v in enumerate(found.get("best_so_far") or []) if v is not None]
            if pts:
                ax.step([i for i, _ in pts], [v for _, v in pts], where="post", ms=3, label=name, **styles[name])
        ax.set_ylim(-0.03, 1.03)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("trial")
        ax.set_ylabel("worst harm rate so far")
        ax.set_title(f"{tm}: best so far within the utility constraint", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def settings_text(c: dict[str, Any]) -> str:
    rank = f" r{c['lora_r']}" if c.get("lora_r") else (f" r{c['lora']['r']}" if c.get("lora") else "")
    options = ", ".join(f"{k}={v}" for k, v in (c.get("attack_options") or {}).items())
    mult = f" (x{c['lr_multiplier']:.2g})" if c.get("lr_multiplier") else ""
    return (f"{c['attack']}{f' [{options}]' if options else ''}, {c['backbone']}{rank}, lr {c['lr']:.2g}{mult}, "
            f"{c['steps']} steps x batch {c['batch_size']}, n {c['n_samples']}, {c['scheduler']}")


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    """``rows`` under ``head`` as a markdown table (the results entries' tables, from the scripts)."""
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      *("| " + " | ".join(r) + " |" for r in rows)])


def seeds_text(worst_case: dict[str, Any]) -> str:
    """A worst case's harm rate: the mean, then each seed's."""
    return f"{worst_case['harm_rate']:.3f} ({', '.join(f'{h:.3f}' for h in worst_case['harm_rate_seeds'])})"


def _worst_text(found: dict[str, Any]) -> str:
    if not found.get("claimed", True):
        return "not claimed"
    wc = found.get("worst_case")
    if not wc:
        return found.get("worst_case_note", "no worst case")
    seeds = seeds_text(wc)
    stopped = found.get("stopped_at_ceiling")
    return seeds if stopped is None else f"{seeds}; search stopped at harm 1.0 after {stopped + 1} trials"


def _search_rows(searches: dict[str, Any]) -> dict[str, list[list[Any]]]:
    """The report's search tables as rows: worst case per defence and threat model, its configuration, what each
    dimension's values reached, and every trial."""
    tms = _threat_model_names(searches)
    rows: dict[str, list[list[Any]]] = {"worst": [], "configs": [], "dimensions": [], "trials": []}
    for name, s in searches.items():
        rows["worst"].append([name] + [_worst_text(by_threat_model(s)[tm]) if tm in by_threat_model(s) else "—"
                                       for tm in tms])
        for tm, found in by_threat_model(s).items():
            wc = found.get("worst_case")
            if wc:
                drop = wc["utility_drop"]
                rows["configs"].append([name, tm, f"{wc['search_harm_rate']:.3f} (trial {wc['trial']})",
                                        settings_text(wc["config"]), drop.get("mmlu_drop_relative"),
                                        drop.get("harmless_loss_rise"), drop.get("over_refusal_rise"),
                                        f"{drop['feasible_seeds']}/{len(wc['harm_rate_seeds'])}"])
            dims = found.get("by_dimension") or by_dimension(found.get("trials", []))  # older files: from trials
            for dim, cells in (dims.get("dimensions") or {}).items():
                text = "; ".join(f"{v}: {_fmt(c['best_harm_rate'])} ({c['trials']})" for v, c in cells.items())
                rows["dimensions"].append([name, tm, dim + (" (driver)" if dim == dims.get("driver") else ""), text])
            for t in found.get("trials", []):
                u = t.get("utility", {})
                rows["trials"].append([name, tm, t["number"], t["state"],
                                       settings_text(t["settings"]) if t.get("settings") else "",
                                       rate_text(t["harm_rate"], t.get("harm_rate_interval_95")),
                                       _drop_text(u), u.get("harmless_loss_rise"),
                                       u.get("over_refusal_rise"), "yes" if t["feasible"] else "no"])
    return rows


def search_lines(searches: dict[str, Any]) -> list[str]:
    """One terminal line per defence and threat model: the worst case the attacker's search found, over seeds."""
    lines = []
    for name, s in searches.items():
        for tm, found in by_threat_model(s).items():
            wc = found.get("worst_case")
            text = _worst_text(found) + (f" with {settings_text(wc['config'])}" if wc else "")
            lines.append(f"attacker search vs {name} ({tm}): worst-case harm {text}" if wc
                         else f"attacker search vs {name} ({tm}): {text}")
    return lines


def search_section(searches: dict[str, Any], cfg: dict[str, Any]) -> str:
    """The worst case per defence and threat model (mean over seeds), the best-so-far plot, what each search
    dimension reached, and a table of every trial."""
    rows = _search_rows(searches)
    sc = cfg["search"]
    loss = sc["max_harmless_loss_rise"]
    note = (f"<p class='note'>{sc['n_trials']} trials per defence and threat model (TPE, sampler seed "
            f"{sc['sampler_seed']}, the same for every defence; the first ones queued: the grid's first attack, then "
            f"one per attack family; median pruning: {'on' if sc['prune'] else 'off'}; with "
            "<code>search.stop_at_ceiling</code>, the default, a study stops at its first trial within the constraint "
            "at harm 1.0, which no later trial can exceed). Each defence is attacked "
            "under the threat models it claims: under <b>fine-tuning-as-a-service</b> the service's recipe is fixed "
            "and the customer chooses the data, steps, batch size and a learning-rate multiplier; under "
            "<b>released-weights</b> the attacker chooses everything. Utility constraint: MMLU at most "
            f"{sc['max_mmlu_drop']:.0%} below the defended model's before the attack"
            f"{' (a drop inside the subset noise does not count)' if sc['mmlu_drop_within_noise_ok'] else ''}"
            + (f", harmless-answer loss at most {loss:g} nats above it" if loss is not None else "")
            + (f", over-refusal of harmless prompts at most {sc['max_over_refusal_rise']:g} above it"
               if sc.get("max_over_refusal_rise") is not None else "")
            + ". A trial that breaks it, or was pruned, stays in the tables and cannot be the worst case. The worst "
              f"case is re-run on seeds {sc['seeds']}; its mean includes the search's own run (selected as the "
              "maximum, so biased upward on that seed).</p>")
    trial_head = ["defence", "threat model", "trial", "state", "attack", "harm rate [95 %]", "MMLU drop (relative)",
                  "harmless loss rise", "over-refusal rise", "within constraint"]
    return (table(["defence", *(f"worst-case harm: {tm} (per seed)" for tm in _threat_model_names(searches))],
                  rows["worst"])
            + table(["defence", "threat model", "in the search", "worst-case attack", "MMLU drop (relative)",
                     "harmless loss rise", "over-refusal rise", "seeds within constraint"], rows["configs"])
            + note + "<img src='attacker_search.png' alt='best so far vs trial'>"
            + "<h3>What each dimension reached</h3><p class='note'>Per value: the highest harm rate among trials "
              "within the constraint (trials tried). The driver is the dimension whose values differ most.</p>"
            + table(["defence", "threat model", "dimension", "value: best harm (trials)"], rows["dimensions"])
            + "<h3>Every trial</h3>" + table(trial_head, rows["trials"]))


RELEASED_WEIGHTS = "released-weights"
SERVICE = "fine-tuning-as-a-service"


def _immunize_numbers(name: str, c: Condition) -> list[str]:
    """One defence's row of the numbers table, every rate with its interval (~: within noise of ``none``)."""
    r, s, g, t = c.resistance, c.stability, c.generalization, c.trainability

    def shown(cond: Measured, key: str, noise: str | None = None) -> str:
        rate = cond.rate(key)
        return (mmlu_text(rate.value, rate.interval_95, cond.get(f"{key}_constant_answer"))
                + (" ~" if cond.within_noise(noise or key) else ""))

    cross = g.get("cross_domain_steps_to_harmful")
    return [name,
            ", ".join(f"{k}: {v if v is not None else 'never'}" for k, v in r.steps_to_harmful.items()),
            ", ".join(f"{k}: {rate_text(v.value, v.interval_95)}" for k, v in r.final_harm_rate.items()),
            shown(s, "harm_rate"), _fmt(s.get("harmless_loss")), shown(s, "over_refusal"), shown(s, "mmlu"),
            cross if cross is not None else ("never" if "cross_domain_final_harm_rate" in g.values else "—"),
            shown(t, "final_task_em", "task_em"), shown(t, "mmlu"), shown(t, "over_refusal")]


def _drop_text(utility: dict[str, Any]) -> Any:
    """A trial's relative MMLU drop, labelled where the attacked model gave one letter to every question."""
    drop, letter = utility.get("mmlu_drop_relative"), utility.get("mmlu_constant_answer")
    return _fmt(drop) + constant_answer_note(letter, why=False) if letter and drop is not None else drop


def conditions_table(conditions: dict[str, Condition | dict[str, Any]]) -> list[list[str]]:
    """One row per defence: its verdict under each condition (and threat model), in words."""
    conditions = {n: c if isinstance(c, Condition) else Condition.from_json(c) for n, c in conditions.items()}
    return [[name, c.resistance.verdict, c.resistance.by_threat_model.get(SERVICE, "—"),
             c.resistance.by_threat_model.get(RELEASED_WEIGHTS, "—"), c.stability.verdict,
             c.generalization.verdict, c.trainability.verdict] for name, c in conditions.items()]


def _tuning_and_search_sections(results: dict[str, Any], out: Path) -> list[tuple[str, str]]:
    """The sections after the conditions: defence tuning (default and tuned), the attacker's search."""
    sections = []
    tuned = {name: d["tuned"] for name, d in results.get("defenses", {}).items() if d.get("tuned", {}).get("trials")}
    if tuned:
        sections.append(("Defence tuning: defaults and tuned, side by side", tuning_section(tuned)))
    if searches := results.get("attacker_search"):
        search_plot(searches, out / "attacker_search.png")
        sections.append(("Attacker search: the worst case under the utility constraint",
                         search_section(searches, results["config"])))
    return sections


def tuning_section(tuned: dict[str, dict[str, Any]]) -> str:
    """Per defence and tuned option: the default and the tuned value, and the probe attack's harm rate at each
    (on the defence's own held-out prompts, never the evaluation's)."""
    rows = []
    for name, t in tuned.items():
        feasible = sum(r["feasible"] for r in t["trials"])
        for key in t["space"]:
            chosen = t["options"].get(key, t["default"].get(key))
            rows.append([name, key, _num(t["default"].get(key)), _num(chosen),
                         f"{_num(_objective(t, 'default'))} -> {_num(_objective(t, 'tuned'))}",
                         _tuned_task_em(t), f"{feasible} of {t['n_trials']}", t.get("note", "")])
    first = next(iter(tuned.values()))
    mixed = any("harm_rate" in (t.get("baseline") or {}).get("trainability", {}) for t in tuned.values())
    objective = ("objective: the mean of the probe's and the mixed fine-tune's harm (default -> tuned)" if mixed
                 else "probe harm, mean over its checkpoints (default -> tuned)")
    return (table(["defence", "option", "default", "tuned", objective,
                   "probe task EM after the user's fine-tune (default -> tuned; undefended)",
                   "trials within the constraint", "note"], rows)
            + f"<p class='note'>Objective: {html.escape(first['objective'])}. Constraint: "
              f"{html.escape(_constraints(tuned))}. "
              f"Probe attack: {html.escape(first['probe']['attack'])} at lr "
              f"{first['probe']['lr']:g} for {first['probe']['steps']} steps; the undefended model's probe harm on the "
              f"same data: {_num(first.get('baseline', {}).get('probe_harm_rate'))}. Every later condition runs the "
              "tuned configuration.</p>")


def _objective(tuned: dict[str, Any], which: str) -> float | None:
    """The tuning objective at the defaults or the tuned trial (a tuning from before the mixed probe: the probe
    attack's harm)."""
    return tuned.get(f"{which}_objective", tuned.get(f"{which}_probe_harm_rate"))


def flaggers_section(defenses: dict[str, Any], what: str = "defence",
                     pooled: str = "every stored fine-tune the defence screened (attacks, the search's finished "
                                   "trials, the user's task), each once whichever process ran it") -> str:
    """Per defence that screens the customer's data: its flagger (labelled where emulated) and, pooled over its
    fine-tunes, what it flagged, its recall on the known harmful pairs and how often it flagged the others."""
    rows = []
    for name, d in defenses.items():
        desc = d.get("defense", {})
        runs = desc.get("screened") or []
        if not runs:
            continue
        flagger = desc.get("flagger", {})
        label = flagger.get("flagger", "?") + (" (EMULATED: measurement only)" if flagger.get("emulated") else "") + (
            " (private: reads the defence's vectors)" if flagger.get("private") else "")
        rows.append([name, label, len(runs), f"{sum(r['flagged'] for r in runs)} of {sum(r['pairs'] for r in runs)}"
                     + _by_each(runs) + _refused(runs),
                     _pooled(runs, "recall_on_harmful", "n_harmful"),
                     _pooled(runs, "flag_rate_on_harmless", "n_harmless")])
    if not rows:
        return ""
    return table([what, "flagger", "fine-tunes screened", "pairs flagged", "recall on known harmful pairs",
                  "flag rate on the other pairs"], rows) + (
        f"<p class='note'>Pooled over {html.escape(pooled)}.</p>")


def _by_each(runs: Sequence[dict[str, Any]]) -> str:
    """Where flaggers were combined (``any:A+B``): how many pairs each one flagged, pooled."""
    counts: dict[str, int] = {}
    for r in runs:
        for spec, n in (r.get("flagged_by") or {}).items():
            counts[spec] = counts.get(spec, 0) + n
    return "; by each: " + ", ".join(f"{spec} {n}" for spec, n in counts.items()) if counts else ""


def _refused(runs: Sequence[dict[str, Any]]) -> str:
    """How many jobs the service refused outright (their flagged share above ``reject_above``)."""
    refused = sum(1 for r in runs if r.get("rejected"))
    return f"; {refused} of {len(runs)} jobs refused" if refused else ""


def _pooled(runs: Sequence[dict[str, Any]], rate: str, n: str) -> str:
    total = sum(r.get(n, 0) for r in runs)
    if not total:
        return "-"
    return f"{sum(r[rate] * r[n] for r in runs if n in r) / total:.3f} (n={total})"


def _constraints(tuned: dict[str, dict[str, Any]]) -> str:
    """The constraints the studies used, each with the defences it held for."""
    by_text: dict[str, list[str]] = {}
    for name, t in tuned.items():
        by_text.setdefault(t["constraint"], []).append(name)
    if len(by_text) == 1:
        return next(iter(by_text))
    return "; ".join(f"for {', '.join(names)}: {text}" for text, names in by_text.items())


def _tuned_task_em(t: dict[str, Any]) -> str:
    """The trainability probe's task EM at the defaults and at the tuned trial ("-" where it was not probed)."""
    base = (t.get("baseline", {}).get("trainability") or {}).get("task_em")
    if base is None:
        return "-"
    em = {r["number"]: (r.get("trainability") or {}).get("task_em") for r in t["trials"]}
    default = next((r["number"] for r in t["trials"] if r["defaults"]), None)
    tuned = t.get("tuned_trial", default)
    return f"{_num(em.get(default))} -> {_num(em.get(tuned))}; {_num(base)}"


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


def write_immunize_report(results: ImmunizeResults | dict[str, Any], out: Path) -> None:
    results, out = ImmunizeResults.of(results), Path(out)
    immunize_plots(results, out)
    sections = _condition_sections(results)
    sections[1:1] = _tuning_and_search_sections(results, out)
    sections += _closing_sections(results)
    meta = {k: results[k] for k in ("config", "model", "data", "versions", "git_hash", "date", "device", "seconds")
            if k in results}
    atomic_write_text(out / "report.html", page("unlearnable immunize: four immunization conditions", sections, meta))


def _condition_sections(results: ImmunizeResults) -> list[tuple[str, str]]:
    """The four conditions' verdicts, their numbers, curves and the threat models."""
    rows = conditions_table(results.conditions)
    numbers = [_immunize_numbers(name, c) for name, c in results.conditions.items()]
    cfg = results.config
    b = cfg["budget"]
    searches = results.get("attacker_search")
    attacker = (f"attacker search: {cfg['search']['n_trials']} trials per defence and threat model, worst case "
                f"re-run on seeds "
                f"{cfg['search']['seeds']} (see below)" if searches else
                f"lr {b['lrs']} x samples {b['samples']} x {b['steps']} steps (batch {b['batch_size']}, "
                f"{b['backbone']})")
    return [
        ("The four conditions", table(["defence", "resistance (headline)", "resistance (service)",
                                       "resistance (released weights)",
                                        "stability", "generalization", "trainability"], rows)
         + f"<p class='note'>Threshold: harm rate {cfg['threshold']} (judge {judge_label(cfg['judges'][0])}); "
           f"budget: {attacker}; curves evaluated every "
           f"{cfg['search']['eval_every'] if searches else b['eval_every']} steps on {cfg['n_curve_eval']} held-out "
           f"prompts. Verdicts: strong = never harmful within the budget; weak (N) = harmful only after N steps "
           f"and later than the undefended model; none = no later than undefended. The headline is the verdict under "
           f"the most permissive threat model the defence claims and was attacked under.</p>"),
        ("Numbers", table(["defence", "steps to harmful", "final harm rate per attack", "harm rate before attack",
                           "harmless loss", "over-refusal", "MMLU before attack", "cross-domain steps to harmful",
                           "final ProfileQA EM", "MMLU after the user's fine-tune",
                           "over-refusal after the user's fine-tune"], numbers)
         + "<p class='note'>Brackets: 95 % Wilson intervals. A difference from <code>none</code> inside the noise "
           "is marked ~ (the interval of the difference holds 0).</p>"),
        ("Resistance and generalization curves", "<img src='resistance.png' alt='harm rate vs steps'>"),
        ("Trainability", "<img src='trainability.png' alt='task score vs steps'>"),
        ("Threat models", "<ul>" + "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>"
                                            for k, v in results["threat_models"].items()) + "</ul>"),
    ]


def _closing_sections(results: ImmunizeResults) -> list[tuple[str, str]]:
    """What the service screened, which runs were copied, how the judges agreed, and where the time went."""
    sections = []
    if screened := flaggers_section(results.get("defenses", {})):
        sections.append(("Flaggers: what the service screened", screened))
    if copied := {n: d["reused_from"] for n, d in results.get("defenses", {}).items() if d.get("reused_from")}:
        sections.append(("Runs copied from other sweeps", table(["defence", "copied from"], [
            [n, ", ".join(src)] for n, src in copied.items()]) + "<p class='note'>Those sweeps ran the defence with "
            "the same settings, weights, data and precision (<code>--reuse-defenses</code>); each copied run file "
            "names its source.</p>"))
    if results.get("judge_agreement"):
        sections.append(("Judge agreement", judges_section(results["judge_agreement"],
                                                           results.get("judge_disagreements", []))))
    if results.get("timings"):
        sections.append(("Timings (s)", table(["stage", "seconds"], list(results["timings"].items()))
                         + "<p class='note'>'evaluation' is every harm and task scoring pass (curve points and "
                           "stability's harmful prompts) and also counts inside the stages it ran in; runs resumed "
                           "from disk count ~0 s.</p>"))
    return sections


def error_bars(centres: Sequence[float], ranges: Sequence[Sequence[float]]) -> list[list[float]]:
    """Matplotlib's (below, above) error bars from each centre to its range's ends; never negative (a mean of equal
    values can round a hair past them)."""
    return [[max(0.0, c - lo) for c, (lo, _) in zip(centres, ranges)],
            [max(0.0, hi - c) for c, (_, hi) in zip(centres, ranges)]]


def tradeoff_plot(results: TradeoffResults, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for method, pts in results.averaged.items():
        xs, ys = [p.harm_rate.value for p in pts], [p.task_score.value for p in pts]
        xerr, yerr = error_bars(xs, [p.harm_range for p in pts]), error_bars(ys, [p.task_range for p in pts])
        name = method + (" (reference: no harmful rows, undefended)" if method == BENIGN_ONLY else "")
        line = ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker="o", ms=5, capsize=3, label=name,
                           ls="-" if len(pts) > 1 else "none")
        for p in pts:
            refused = p.over_refusal.value
            label = f"{p.strength:g}" + (f" (refuses {refused:.2f})" if refused else "")
            ax.annotate(label, (p.harm_rate.value, p.task_score.value), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, color=line[0].get_color())
    goal = results.get("goal")
    none = results.averaged.get("none")
    if goal and none:  # the region a defence should reach: low harm, task close to the undefended run's
        y0 = goal["task_ratio_min"] * none[0].task_score.value
        ax.fill_between([-0.03, goal["harm_rate_max"]], y0, 1.05, color="tab:green", alpha=0.12, lw=0,
                        label=f"goal: harm <= {goal['harm_rate_max']:g}, task >= {goal['task_ratio_min']:g}x none")
    ax.set_xlabel("harm rate after fine-tuning (lower is safer)")
    ax.set_ylabel("task score: ProfileQA exact match")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.05)
    ax.set_title("Strength trade-off (labels: vector strength, and the share of harmless prompts refused\n"
                 "where above 0; bars: min-max over seeds)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def tradeoff_section(results: dict[str, Any]) -> str:
    label = _method_labels(results["points"])
    rows = [[label.get(m, m), p["strength"], rate_text(p["harm_rate"], p.get("harm_rate_interval_95")),
             p["harm_rate_sd"],
             rate_text(p["task_score"], p.get("task_score_interval_95")), p["task_score_sd"],
             mmlu_text(p.get("mmlu"), p.get("mmlu_interval_95"), p.get("mmlu_constant_answer")),
             rate_text(p.get("over_refusal"), p.get("over_refusal_interval_95")), p["n_seeds"]]
            for m, pts in results["frontier"].items() for p in pts]
    config = results.get("config") or {}
    attack = config.get("attack", "harmful-sft")
    options = ", ".join(f"{k} {v}" for k, v in (config.get("attack_options") or {}).items())
    form = html.escape(attack + (f" ({options})" if options else ""))
    return (f"<p>The harmful pairs in the user's data: <b>{form}</b></p>"
            "<img src='tradeoff.png' alt='harm rate vs task score'>"
            + "<h3>Frontier (seed-averaged, non-dominated per method)</h3>"
            + table(["method", "strength", "harm rate [95 %, seeds pooled]", "sd over seeds", "task score [95 %]",
                     "sd over seeds", "MMLU [95 %]", "over-refusal [95 %]", "seeds"], rows)
            + _goal_html(results.get("goal")) + tradeoff_flaggers(results["points"])
            + "<h3>All points</h3>"
            + table(["method", "strength", "seed", "harm rate", "task score", "MMLU", "over-refusal", "seconds",
                     "note"],
                    [[label[p["method"]], p["strength"], p["seed"],
                      rate_text(p["harm_rate"], p.get("harm_rate_interval_95")),
                      rate_text(p["task_score"], p.get("task_score_interval_95")),
                      mmlu_text(p.get("mmlu"), p.get("mmlu_interval_95"), p.get("mmlu_constant_answer")),
                      rate_text(p.get("over_refusal"), p.get("over_refusal_interval_95")), p["seconds"],
                      p.get("reused_from") and f"reused from {p['reused_from']}"] for p in results["points"]]))


def goal_met_by(goal: dict[str, Any]) -> str:
    """The (method, strength) points that reach a tradeoff goal, as text ("no point" when none does); a point whose
    flagger was emulated says so."""
    return ", ".join(f"{m['method']} {m['strength']:g}" + _emulated_mark(m.get("emulated"))
                     for m in goal["met_by"]) or "no point"


EMULATED_FLAGGER = "EMULATED flagger: measurement only"


def _emulated_mark(emulated: bool | None) -> str:
    return f" ({EMULATED_FLAGGER})" if emulated else ""


def _method_labels(points: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Each method's name in the trade-off tables, marked where its flagger was emulated."""
    return {m: m + _emulated_mark(emulated_flagger(points, m)) for m in dict.fromkeys(p["method"] for p in points)}


def tradeoff_flaggers(points: Sequence[dict[str, Any]]) -> str:
    """:func:`flaggers_section` for the trade-off: per method, pooled over its points' fine-tunes."""
    methods: dict[str, dict[str, Any]] = {}
    for p in points:
        info = p.get("defense_info") or {}
        if info.get("screened"):
            d = methods.setdefault(p["method"], {"defense": {"flagger": info.get("flagger", {}), "screened": []}})
            d["defense"]["screened"] += info["screened"]
    section = flaggers_section(methods, what="method", pooled="the fine-tunes of every point of the method")
    return "<h3>Flaggers</h3>" + section if section else ""


def _goal_html(goal: dict[str, Any] | None) -> str:
    if not goal:
        return ""
    met = goal_met_by(goal)
    refusal = goal.get("over_refusal_rise_max")  # (results files from before the over-refusal bound lack it)
    bound = f", over-refusal &lt;= the undefended + {refusal:g}" if refusal is not None else ""
    benign = any("over_refusal_rise_vs_benign" in r for r in goal["points"])  # the benign-only reference ran
    extra = ["task vs benign-only", "over-refusal vs benign-only"] if benign else []
    return (f"<h3>Goal: harm rate &lt;= {goal['harm_rate_max']:g} with task &gt;= {goal['task_ratio_min']:g}x the "
            f"undefended score{bound} (seed means)</h3><p>Met by: {html.escape(met)}</p>"
            + table(["method", "strength", "harm rate", "task vs none", "over-refusal vs none", *extra, "seeds",
                     "met"],
                    [[r["method"] + _emulated_mark(r.get("emulated")), r["strength"], r["harm_rate"],
                      r["task_ratio"], _signed(r.get("over_refusal_rise")),
                      *([r.get("task_ratio_vs_benign", "-"), _signed(r.get("over_refusal_rise_vs_benign"))]
                        if benign else []), r["n_seeds"], r["met"]]
                     for r in goal["points"]])
            + ("<p class='note'>benign-only: the same fine-tune without the harmful rows, undefended (the "
               "customer's counterfactual); context, not the goal's bound.</p>" if benign else ""))


def _signed(x: float | None) -> str:
    return "not scored" if x is None else f"{x:+.3f}"


def write_tradeoff_report(results: TradeoffResults | dict[str, Any], out: Path) -> None:
    results, out = TradeoffResults.of(results), Path(out)
    tradeoff_plot(results, out / "tradeoff.png")
    meta = {k: results[k] for k in ("config", "model", "versions", "git_hash", "date", "device", "precision",
                                    "seconds") if k in results}
    atomic_write_text(out / "report.html", page("unlearnable tradeoff: harm rate vs task score",
                                                [("Trade-off", tradeoff_section(results))], meta))
