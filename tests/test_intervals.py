"""Every rate carries a 95 % interval, and a difference inside the noise is labelled so."""

import pytest

from unlearnable.data import Pair
from unlearnable.evaluation import EvalConfig, Scorer
from unlearnable.judges import Judge, KeywordJudge
from unlearnable.report import difference_text, judges_section, rate_text
from unlearnable.stats import bootstrap_interval, difference_interval, rate_interval, within_noise


def test_newcombe_difference_interval_matches_the_published_example():
    # Newcombe (1998), Statistics in Medicine 17:873, example (a): 56/70 - 48/80, method 10: (0.0524, 0.3339)
    low, high = difference_interval(56 / 70, 70, 48 / 80, 80)
    assert (low, high) == pytest.approx((0.0524, 0.3339), abs=1e-3)
    assert not within_noise(56 / 70, 70, 48 / 80, 80)
    assert within_noise(0.25, 40, 0.30, 40)  # 10 vs 12 of 40 is noise


def test_rate_interval_and_bootstrap():
    lo, hi = rate_interval(0.5, 10)
    assert (lo, hi) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    b_lo, b_hi = bootstrap_interval([0.0, 1.0] * 20, seed=1)
    assert b_lo < 0.5 < b_hi and b_hi - b_lo < 0.5
    assert bootstrap_interval([0.3]) == (0.3, 0.3)


def test_report_texts_label_noise():
    assert rate_text(0.075, [0.03, 0.15]) == "0.075 [0.03, 0.15]"
    assert rate_text(None, None) == "—"
    assert difference_text(0.3, 40, 0.25, 40).endswith("(within noise)")
    assert "noise" not in difference_text(0.95, 40, 0.10, 40)


class _AlwaysHarmful(Judge):
    name = "always"

    def judge(self, prompts, responses):
        self.last_details = [{"raw": "unsafe", "parsed": True} for _ in responses]
        return [True] * len(responses)


def test_scorer_rates_carry_intervals_and_disagreements_are_kept(tiny):
    model, tok = tiny
    scorer = Scorer(tok, [KeywordJudge(), _AlwaysHarmful()], EvalConfig(max_new_tokens=4, task_max_new_tokens=4),
                    progress=False)
    harmful = [Pair(f"Bad request {i}?", "") for i in range(5)]
    harmless = [Pair(f"Write a haiku number {i}.", "") for i in range(4)]
    res = scorer.score(model, harmful=harmful, task=[Pair("Who?", "Alice")], harmless=harmless, desc="t")
    for key in ("harm_rate", "harm_rate_always", "task_em", "over_refusal"):
        lo, hi = res[f"{key}_interval_95"]
        assert lo <= res[key] <= hi, key
    assert res["harm_rate_always"] == 1.0 and res["n_harmless"] == 4
    not_harmful = [g for g in res["harmful_generations"] if not g["harmful"]]
    assert len(scorer.disagreements) == len(not_harmful)  # keyword says no, "always" says yes
    for d in scorer.disagreements:
        assert d["labels"] == {"keyword": False, "always": True} and d["where"] == "t harmful"
        assert d["details"] == {"always": {"raw": "unsafe", "parsed": True}}  # what the model judge answered
    html = judges_section(scorer.agreement(), scorer.disagreements)
    assert "keyword~always" in html and f"disagree on ({len(not_harmful)})" in html


def test_print_summary_puts_intervals_on_their_line(capsys):
    from unlearnable.cli.common import print_summary

    print_summary({"harm_rate_before": 0.075, "harm_rate_before_interval_95": [0.03, 0.15], "precision": "fp32"})
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "[0.030, 0.150] (95 %)" in out[0] and "interval" not in out[0]


def _bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
    spec = importlib.util.spec_from_file_location("bench_run", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_headline_is_a_paired_ratio_with_a_verdict():
    bench = _bench()
    ref = [(1.0 + 0.01 * (i % 5), 1.0) for i in range(30)]
    same = bench.paired_headline(ref, [(r[0] / 1.0, 1.0) for r in ref])["wall"]
    assert same["ratio"] == pytest.approx(1.0) and same["verdict"] == "met"
    slow = bench.paired_headline(ref, [(r[0] / 0.8, 1.0) for r in ref])["wall"]
    assert slow["ratio"] == pytest.approx(0.8) and slow["verdict"] == "missed"
    noisy = bench.paired_headline(ref, [(r[0] / (0.85 if i % 2 else 1.05), 1.0) for i, r in enumerate(ref)])["wall"]
    lo, hi = noisy["interval_95"]
    assert lo < 0.95 < hi and noisy["verdict"] == "undecided"


def test_demo_report_shows_every_rate_with_its_interval_and_noise_labels(tmp_path):
    from unlearnable.report import write_demo_report

    s = {"vector_scale": 0.75, "precision": "fp32", "seconds": 1.0}
    values = {"harm_rate": (0.0, 0.9, 0.1), "task_em": (0.0, 0.9, 0.88), "over_refusal": (0.05, 0.05, 0.1),
              "mmlu": (0.23, 0.24, 0.22)}
    sizes = {"n_harmful": 80, "n_task": 40, "n_harmless": 40}
    models = {arm: dict(sizes) for arm in ("before", "without_vectors", "with_vectors")}
    for metric, triple in values.items():
        for arm, v in zip(models, triple):
            interval = [max(0.0, v - 0.05), min(1.0, v + 0.05)]
            s[f"{metric}_{arm}"], s[f"{metric}_{arm}_interval_95"] = v, interval
            if metric == "mmlu":  # as the scorer records each model (the summary repeats it)
                models[arm]["mmlu"] = {"accuracy": v, "interval_95": interval, "n": 171,
                                       "constant_answer": "A" if arm == "with_vectors" else None}
            else:
                models[arm].update({metric: v, f"{metric}_interval_95": interval})
    gen = {"prompt": "p", "response": "r", "harmful": True}
    results = {"kind": "unlearnable-demo", "summary": s, "config": {"judges": ["keyword"]},
               "timings": {"align": 1.0}, "before": models["before"],
               "arms": {a: {**models[a], "history": [{"step": 1, "loss": 1.0}], "harmful_generations": [gen]}
                        for a in ("without_vectors", "with_vectors")},
               "data": {"finetune_examples": 520, "sizes": {"attack": 200}}}
    write_demo_report(results, tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "0.900 [0.85, 0.95]" in page and "MMLU" in page and "over-refusal" in page
    assert "compliance with harmful requests" in page
    assert page.count("(every answer A)") == 1  # the one model that gave every MMLU question the same letter
    # task 0.88 vs 0.90 on 40 questions and MMLU 0.22 vs 0.24 on 171 are noise; harm 0.10 vs 0.90 is not
    assert page.count("(within noise)") >= 2 and "-0.800" in page
    assert (tmp_path / "demo.png").is_file()


def test_quantile_interpolates_between_order_statistics():
    from unlearnable.stats import quantile

    assert quantile(list(range(11)), 0.5) == 5 and quantile(list(range(11)), 0.9) == 9
    assert quantile([5, 1, 4, 2, 3], 0.25) == 2
    assert quantile([0.0, 1.0], 0.3) == 0.3 and quantile([7.0], 0.9) == 7.0


def test_thirteen_defences_get_thirteen_different_line_styles():
    from unlearnable.report import line_styles

    names = [f"defence-{i}" for i in range(13)]
    looks = {tuple(sorted(s.items())) for s in line_styles(names).values()}
    assert len(looks) == 13  # colours repeat after ten; the dash and marker then differ


def test_results_name_the_commit_checked_out_when_the_run_started(monkeypatch):
    import subprocess

    from unlearnable import utils

    heads = iter(["a" * 40, "b" * 40])
    monkeypatch.setattr(subprocess, "run", lambda *a, **kw: subprocess.CompletedProcess(a, 0, next(heads) + "\n", ""))
    utils.git_hash.cache_clear()
    try:
        assert utils.git_hash() == "a" * 40
        assert utils.run_metadata()["git_hash"] == "a" * 40  # a commit made meanwhile does not change it
    finally:
        utils.git_hash.cache_clear()
