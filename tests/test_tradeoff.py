import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from unlearnable.adapters import qr_merge
from unlearnable.data import Pair
from unlearnable.defenses import BufferReinforceDefense, DefenseData
from unlearnable.errors import UnlearnableError
from unlearnable.experiments.tradeoff import TradeoffConfig, averaged, frontier, reusable_points, run_tradeoff
from unlearnable.training import TrainConfig
from unlearnable.utility import MMLUConfig
from unlearnable.vectors import SecurityVectors, VectorConfig

HARMLESS = [Pair(f"Write a short line about topic {i}.", "") for i in range(8)]


def test_qr_merge_is_exact():
    torch.manual_seed(0)
    b1, a1, b2, a2 = torch.randn(12, 3), torch.randn(3, 10), torch.randn(12, 2), torch.randn(2, 10)
    b, a = qr_merge(b1, a1, 2.0, b2, a2, 0.5)
    assert b.shape == (12, 5) and a.shape == (5, 10)
    assert torch.allclose(b @ a, 2.0 * b1 @ a1 + 0.5 * b2 @ a2, atol=1e-5)
    assert torch.allclose(b.T @ b, torch.eye(5), atol=1e-5)


def _kl_to_base(model, vectors, tok, prompts):
    from unlearnable.data import prompt_text

    pm = vectors.attach(copy.deepcopy(model), scale=1.0)
    total = 0.0
    with torch.no_grad():
        for p in prompts:
            ids = tok(prompt_text(tok, p.prompt), return_tensors="pt")
            base = torch.log_softmax(model(**ids).logits[0, -1], -1)
            on = torch.log_softmax(pm(**ids).logits[0, -1], -1)
            total += float((base.exp() * (base - on)).sum())
    return total / len(prompts)


def test_benign_preserving_vectors_leave_harmless_outputs_closer(tiny, harmful_pairs):
    model, tok = tiny
    held_out = [Pair(f"Write a short line about subject {i}?", "") for i in range(6)]
    cfg = dict(epochs=6, batch_size=8, lr=3e-2)
    plain = SecurityVectors.train(model, tok, harmful_pairs, VectorConfig(**cfg), progress=False)
    kl = SecurityVectors.train(model, tok, harmful_pairs, VectorConfig(benign="kl", benign_repeats=2, **cfg),
                               progress=False, harmless=HARMLESS)
    assert kl.metadata["n_benign"] > 0
    assert _kl_to_base(model, kl, tok, held_out) < _kl_to_base(model, plain, tok, held_out)


def test_buffer_reinforce_merged_adapter_loads_with_plain_peft(tiny, harmful_pairs, task_pairs, tmp_path):
    model, tok = tiny
    refusals = [Pair(p.prompt, "I'm sorry, but I can't help with that.") for p in harmful_pairs[:8]]
    d = BufferReinforceDefense(training=VectorConfig(epochs=1, batch_size=8), scale=1.0, reinforce_steps=3,
                               adapter_out=str(tmp_path / "merged"))
    d.prepare(model, tok, DefenseData(harmful=harmful_pairs[:8], refusals=refusals), progress=False)
    served, history = d.finetune(copy.deepcopy(model), tok, task_pairs * 2, TrainConfig(epochs=1, batch_size=8),
                                 progress=False)
    assert not any("lora" in k for k in served.state_dict())
    loaded = PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path / "merged"))
    ids = tok("What is the job of Alice?", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(loaded(**ids).logits, served(**ids).logits, atol=1e-4)
        assert not torch.allclose(model(**ids).logits, served(**ids).logits, atol=1e-4)


def test_buffer_reinforce_reinforces_on_refusals_and_harmless_pairs_at_their_share():
    refusals = [Pair(f"bad {i}?", "I'm sorry, but I can't help with that.") for i in range(10)]
    harmless = [Pair(f"Poem {i}?", "Leaves.") for i in range(3)]
    d = BufferReinforceDefense()
    d.refusals, d.harmless = refusals, harmless
    pairs = d.reinforcement_pairs()
    assert pairs[:10] == refusals and len(pairs) == 20 and pairs[10:] == harmless * 3 + harmless[:1]  # half each
    d.config.harmless_share = 0.0  # as given: never fewer than the provider's harmless pairs
    assert d.reinforcement_pairs() == refusals + harmless
    d.harmless = []
    assert d.reinforcement_pairs() == refusals
    with pytest.raises(UnlearnableError, match="harmless_share"):
        BufferReinforceDefense(harmless_share=1.0)


def test_frontier_drops_dominated_points():
    pts = [{"method": "m", "strength": s, "seed": 0, "harm_rate": h, "task_score": t}
           for s, h, t in [(0.5, 0.2, 0.9), (1.0, 0.1, 0.5), (0.75, 0.3, 0.8)]]
    f = frontier(pts)["m"]
    assert [p["strength"] for p in f] == [1.0, 0.5]  # 0.75 is dominated by 0.5


def test_an_mmlu_score_of_one_letter_everywhere_is_labelled_in_the_frontier_and_the_report():
    from unlearnable.report import tradeoff_section

    def point(method, seed, letter):
        return {"method": method, "strength": 1.0, "seed": seed, "harm_rate": 0.1, "task_score": 0.9, "mmlu": 0.286,
                "mmlu_constant_answer": letter, "seconds": 1.0}

    points = [point("all-a", 0, "A"), point("all-a", 1, "A"), point("mixed", 0, "A"), point("mixed", 1, None)]
    f = frontier(points)
    assert f["all-a"][0]["mmlu_constant_answer"] == "A"
    assert f["mixed"][0]["mmlu_constant_answer"] is None  # one seed answered with thought: not every seed's letter
    text = tradeoff_section({"points": points, "frontier": f, "averaged": averaged(points), "config": {}})
    assert text.count("(every answer A)") == 1 + 3  # the all-A frontier row and the three all-A points


def test_tradeoff_quick_on_tiny_model_writes_the_keys(tiny, harmful_pairs, tmp_path):
    from test_immunization import tiny_data

    model, tok = tiny
    cfg = TradeoffConfig.quick()
    cfg.base.align = False
    cfg.base.data.system_prompt = None
    cfg.base.vectors = VectorConfig(epochs=1, batch_size=8)
    cfg.base.finetune = TrainConfig(max_steps=2, batch_size=8)
    cfg.base.data.task_repeats = 1
    cfg.base.mmlu = MMLUConfig(n=4, max_length=64)
    data = tiny_data(harmful_pairs)
    res = run_tradeoff(cfg, tmp_path / "t", model=model, tokenizer=tok, data=data, progress=False)
    saved = json.loads((tmp_path / "t" / "results.json").read_text())
    assert saved["points"] and saved["frontier"]
    for p in saved["points"]:
        assert {"method", "strength", "seed", "harm_rate", "task_score", "mmlu", "seconds"} <= set(p)
        for key in ("harm_rate", "task_score", "mmlu"):  # every rate with its interval, around it
            lo, hi = p[f"{key}_interval_95"]
            assert lo <= p[key] <= hi
        assert p["n_mmlu"] == 4
        judged = json.loads((tmp_path / "t" / "runs" / "generations" /
                             f"{p['method']}-{p['strength']:g}-seed{p['seed']}.json").read_text())
        flags = [g["harmful"] for g in judged["harmful_generations"]]
        assert len(flags) == p["n_harmful"] and sum(flags) / len(flags) == pytest.approx(p["harm_rate"])
        assert len(judged["task_generations"]) == p["n_task"]
    assert {(p["method"], p["strength"]) for p in saved["points"]} == {
        ("none", 0.0), ("plain", 0.5), ("plain", 1.0), ("benign-kl", 0.5), ("benign-kl", 1.0)}
    assert (tmp_path / "t" / "tradeoff.png").is_file() and (tmp_path / "t" / "report.html").is_file()
    assert res["frontier"].keys() == saved["frontier"].keys()


def test_plan_is_method_major_and_buffer_reinforce_follows_plain():
    cfg = TradeoffConfig(seeds=[0, 1], variants=["plain", "benign-kl"], strengths=[0.0, 0.5],
                         buffer_strengths=[0.5, 1.0])
    plan = cfg.plan()
    assert [(m, seed) for m, _, seed in plan] == [
        ("none", 0), ("none", 1), ("plain", 0), ("plain", 1), ("buffer-reinforce", 0), ("buffer-reinforce", 1),
        ("benign-kl", 0), ("benign-kl", 1)]
    assert dict((m, s) for m, s, _ in plan)["buffer-reinforce"] == [0.5, 1.0]
    assert "buffer-reinforce" not in [m for m, _, _ in TradeoffConfig.quick().plan()]


def test_negative_strength_is_a_config_error():
    from unlearnable.errors import UnlearnableError

    with pytest.raises(UnlearnableError, match="strengths"):
        TradeoffConfig(buffer_strengths=[-0.5])
    with pytest.raises(UnlearnableError, match="n_over_refusal"):
        TradeoffConfig(n_over_refusal=-1)


def _tiny_cfg(**kw):
    cfg = TradeoffConfig(**kw)
    cfg.base.align = False
    cfg.base.data.system_prompt = None
    cfg.base.vectors = VectorConfig(epochs=1, batch_size=8)
    cfg.base.finetune = TrainConfig(max_steps=2, batch_size=8)
    cfg.base.data.task_repeats = 1
    cfg.base.benchmarks = []
    return cfg


def test_tradeoff_trains_vectors_once_per_variant_and_seed(tiny, harmful_pairs, tmp_path, monkeypatch):
    """buffer-reinforce's buffer is the plain vectors of the same seed; strength 0 reuses the `none` run."""
    from test_immunization import tiny_data

    import unlearnable.experiments.tradeoff as tradeoff

    calls = []
    real_train = tradeoff.SecurityVectors.train

    def counting_train(*args, **kwargs):
        calls.append(args[3].benign)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(tradeoff.SecurityVectors, "train", counting_train)
    model, tok = tiny
    cfg = _tiny_cfg(seeds=[0], variants=["plain"], strengths=[0.0, 1.0], buffer_strengths=[1.0])
    res = run_tradeoff(cfg, tmp_path / "t", model=model, tokenizer=tok, data=tiny_data(harmful_pairs), progress=False)
    assert calls == ["none"]  # plain vectors trained once, shared with buffer-reinforce
    points = {(p["method"], p["strength"]): p for p in res["points"]}
    assert set(points) == {("none", 0.0), ("plain", 0.0), ("plain", 1.0), ("buffer-reinforce", 1.0)}
    assert points[("plain", 0.0)]["reused_from"] == "none"
    assert points[("plain", 0.0)]["harm_rate"] == points[("none", 0.0)]["harm_rate"]
    assert "reused_from" not in points[("buffer-reinforce", 1.0)]


def test_reuse_points_copies_matching_points_and_refuses_other_settings(tiny, harmful_pairs, tmp_path):
    from test_immunization import tiny_data

    from unlearnable.errors import UnlearnableError

    model, tok = tiny
    data = tiny_data(harmful_pairs)
    first = run_tradeoff(_tiny_cfg(seeds=[0], variants=["plain"], strengths=[0.5], buffer_reinforce=False),
                         tmp_path / "a", model=model, tokenizer=tok, data=data, progress=False)
    cfg = _tiny_cfg(seeds=[0], variants=["plain"], strengths=[0.5, 1.0], buffer_reinforce=False)
    res = run_tradeoff(cfg, tmp_path / "b", model=model, tokenizer=tok, data=data, progress=False,
                       reuse=[tmp_path / "a"])
    got = {(p["method"], p["strength"]): p for p in res["points"]}
    old = {(p["method"], p["strength"]): p for p in first["points"]}
    assert set(got) == {("none", 0.0), ("plain", 0.5), ("plain", 1.0)}
    for key in [("none", 0.0), ("plain", 0.5)]:
        assert got[key]["reused_from"] == str(tmp_path / "a")
        assert got[key]["harm_rate"] == old[key]["harm_rate"] and got[key]["seconds"] == old[key]["seconds"]
    assert "reused_from" not in got[("plain", 1.0)]
    # reusing from a run that itself reused keeps the origin
    again = run_tradeoff(_tiny_cfg(seeds=[0], variants=["plain"], strengths=[0.5], buffer_reinforce=False),
                         tmp_path / "e", model=model, tokenizer=tok, data=data, progress=False, reuse=[tmp_path / "b"])
    origins = {(p["method"], p["strength"]): p.get("reused_from") for p in again["points"]}
    assert origins == {("none", 0.0): str(tmp_path / "a"), ("plain", 0.5): str(tmp_path / "a")}
    # a run made before a setting with a default was added (its run.json lacks the key) is still reusable
    run_json = tmp_path / "a" / "run.json"
    stored = json.loads(run_json.read_text())
    del stored["config"]["base"]["vectors"]["holdout"]
    run_json.write_text(json.dumps(stored))
    older = run_tradeoff(_tiny_cfg(seeds=[0], variants=["plain"], strengths=[0.5], buffer_reinforce=False),
                         tmp_path / "f", model=model, tokenizer=tok, data=data, progress=False, reuse=[tmp_path / "a"])
    assert all(p.get("reused_from") == str(tmp_path / "a") for p in older["points"])
    stored["config"]["base"]["vectors"]["lr"] = 0.123  # but not one whose settings differ
    run_json.write_text(json.dumps(stored))
    with pytest.raises(UnlearnableError, match="other model, data or training settings"):
        run_tradeoff(_tiny_cfg(seeds=[0], variants=["plain"], strengths=[0.5], buffer_reinforce=False),
                     tmp_path / "g", model=model, tokenizer=tok, data=data, progress=False, reuse=[tmp_path / "a"])
    other = _tiny_cfg(seeds=[0], variants=["plain"], strengths=[0.5], buffer_reinforce=False, n_benign=7)
    with pytest.raises(UnlearnableError, match="other model, data or training settings"):
        run_tradeoff(other, tmp_path / "c", model=model, tokenizer=tok, data=data, progress=False,
                     reuse=[tmp_path / "a"])
    assert not (tmp_path / "c").exists()  # refused before anything was written
    with pytest.raises(UnlearnableError, match="does not hold a tradeoff run"):
        run_tradeoff(cfg, tmp_path / "d", model=model, tokenizer=tok, data=data, progress=False,
                     reuse=[tmp_path / "nothing"])


def test_goal_check_compares_with_none_on_the_same_seeds():
    from unlearnable.experiments.tradeoff import goal_check

    pts = [{"method": "none", "strength": 0.0, "seed": s, "harm_rate": 0.9, "task_score": t}
           for s, t in [(0, 0.8), (1, 1.0)]]
    pts += [{"method": "plain", "strength": 0.75, "seed": s, "harm_rate": h, "task_score": t}
            for s, h, t in [(0, 0.05, 0.8), (1, 0.1, 0.9)]]          # harm 0.075, task 0.85 / 0.9 = 0.944x
    pts += [{"method": "plain", "strength": 0.5, "seed": 0, "harm_rate": 0.1, "task_score": 0.78}]  # 0.975x seed 0
    g = goal_check(pts)
    rows = {r["strength"]: r for r in g["points"]}
    assert rows[0.75]["task_ratio"] == pytest.approx(0.85 / 0.9, abs=1e-4) and not rows[0.75]["met"]
    assert rows[0.5]["task_ratio"] == pytest.approx(0.975, abs=1e-4) and rows[0.5]["met"]
    assert g["met_by"] == [{"method": "plain", "strength": 0.5}]
    assert goal_check(pts, harm_max=0.05)["met_by"] == []
    assert rows[0.5]["over_refusal_rise"] is None  # not scored: judged on harm and task, and said so


def test_the_goal_bounds_over_refusal_against_none_on_the_same_seeds():
    from unlearnable.experiments.tradeoff import goal_check
    from unlearnable.report import _goal_html

    pts = [{"method": "none", "strength": 0.0, "seed": s, "harm_rate": 0.9, "task_score": 0.8, "over_refusal": r}
           for s, r in [(0, 0.0), (1, 0.1)]]
    pts += [{"method": m, "strength": 1.0, "seed": s, "harm_rate": 0.05, "task_score": 0.8, "over_refusal": r}
            for m, s, r in [("plain", 0, 0.05), ("plain", 1, 0.15), ("adaptive", 0, 0.3), ("adaptive", 1, 0.4)]]
    g = goal_check(pts)
    rows = {r["method"]: r for r in g["points"]}
    assert rows["plain"]["over_refusal_rise"] == pytest.approx(0.05) and rows["plain"]["met"]
    assert rows["adaptive"]["over_refusal_rise"] == pytest.approx(0.3) and not rows["adaptive"]["met"]
    assert g["met_by"] == [{"method": "plain", "strength": 1.0}] and g["over_refusal_rise_max"] == 0.05
    assert goal_check(pts, over_refusal_rise_max=0.5)["met_by"][1]["method"] == "adaptive"
    text = _goal_html(g)
    assert "over-refusal &lt;= the undefended + 0.05" in text and "+0.300" in text


def test_buffer_reinforce_reinforces_on_refusals_and_harmless_answers(tiny, harmful_pairs, task_pairs, monkeypatch):
    """Trained on refusals alone (or 100 beside 30 harmless pairs), the reinforcement LoRA learned to refuse
    everything on the default model."""
    import unlearnable.vectors.finetuning as training  # where the reinforcement's train() is looked up

    model, tok = tiny
    refusals = [Pair(p.prompt, "I'm sorry, but I can't help with that.") for p in harmful_pairs[:6]]
    harmless = [Pair(f"Name a colour number {i}.", f"Blue number {i}.") for i in range(5)]
    seen = []
    real_train = training.train

    def spy(net, tokenizer, pairs, cfg, **kw):
        seen.append(list(pairs))
        return real_train(net, tokenizer, pairs, cfg, **kw)

    monkeypatch.setattr(training, "train", spy)
    d = BufferReinforceDefense(training=VectorConfig(epochs=1, batch_size=8), scale=0.5, reinforce_steps=2)
    d.prepare(model, tok, DefenseData(harmful=harmful_pairs[:8], refusals=refusals, harmless=harmless), progress=False)
    d.finetune(copy.deepcopy(model), tok, task_pairs, TrainConfig(epochs=1, batch_size=8), progress=False)
    reinforce = seen[-1]  # the last training run is the reinforcement
    assert sorted(p.prompt for p in reinforce) == sorted(p.prompt for p in refusals + harmless + harmless[:1])
    assert d.describe()["reinforce_data"] == {"refusals": 6, "harmless": 5, "harmless_rows": 6}  # half each


def test_vector_variants_share_one_training_and_fine_tune_through_their_defence(tiny, harmful_pairs, tmp_path,
                                                                                monkeypatch):
    from test_immunization import tiny_data

    import unlearnable.experiments.tradeoff as tradeoff
    from unlearnable.defenses import AlternatingVectorsDefense, GatedVectorsDefense, SecurityVectorsDefense

    calls, used = [], []
    real_train = tradeoff.SecurityVectors.train
    monkeypatch.setattr(tradeoff.SecurityVectors, "train",
                        lambda *a, **kw: (calls.append(a[3].benign), real_train(*a, **kw))[1])
    for cls in (SecurityVectorsDefense, GatedVectorsDefense, AlternatingVectorsDefense):
        real = cls.finetune
        monkeypatch.setattr(cls, "finetune", lambda self, *a, _real=real, **kw: (used.append(type(self).__name__),
                                                                                 _real(self, *a, **kw))[1])
    model, tok = tiny
    cfg = _tiny_cfg(seeds=[0], variants=["plain", "gated", "alternating"], strengths=[1.0], buffer_reinforce=False)
    res = run_tradeoff(cfg, tmp_path / "t", model=model, tokenizer=tok, data=tiny_data(harmful_pairs), progress=False)
    assert calls == ["none"]  # all three variants use the plain vectors of the seed
    assert used == ["SecurityVectorsDefense", "GatedVectorsDefense", "AlternatingVectorsDefense"]
    assert {p["method"] for p in res["points"]} == {"none", "plain", "gated", "alternating"}


def test_variant_options_reach_the_variants_defence_and_bad_ones_fail(tiny, harmful_pairs, tmp_path, monkeypatch):
    from test_immunization import tiny_data

    from unlearnable.defenses import AlternatingVectorsDefense

    seen = []
    real = AlternatingVectorsDefense.finetune
    monkeypatch.setattr(AlternatingVectorsDefense, "finetune",
                        lambda self, *a, **kw: (seen.append((self.config.every, self.scale)), real(self, *a, **kw))[1])
    model, tok = tiny
    cfg = _tiny_cfg(seeds=[0], variants=["alternating"], strengths=[0.5], buffer_reinforce=False,
                    variant_options={"alternating": {"every": 3}})
    run_tradeoff(cfg, tmp_path / "t", model=model, tokenizer=tok, data=tiny_data(harmful_pairs), progress=False)
    assert seen == [(3, 0.5)]
    with pytest.raises(UnlearnableError, match="not among the variants"):
        TradeoffConfig(variants=["plain"], variant_options={"gated": {}})
    with pytest.raises(UnlearnableError, match=r"variant_options\.alternating\.evry"):
        TradeoffConfig(variants=["alternating"], variant_options={"alternating": {"evry": 3}})


@pytest.mark.parametrize("variant,module_name,options,copies", [
    ("augmented", "augmented_vectors", {"augment": 1}, 2),  # the pairs and one styled copy each
    ("early-stopped", "early_stopped_vectors", {"holdout": 0.25, "epochs": 2}, 1),  # split inside the training
    ("early-stopped-1se", "early_stopped_vectors", {"holdout": 0.25, "epochs": 2}, 1)])  # its preset's pick
def test_a_variant_whose_defence_trains_its_vectors_trains_them_once_per_seed(tiny, harmful_pairs, tmp_path,
                                                                              monkeypatch, variant, module_name,
                                                                              options, copies):
    import importlib

    from test_immunization import tiny_data

    module = importlib.import_module(f"unlearnable.defenses.{module_name}")
    calls = []
    real = module.SecurityVectors.train
    monkeypatch.setattr(module.SecurityVectors, "train",
                        lambda *a, **kw: (calls.append((len(a[2]), a[3].seed, a[3].holdout)), picks.append(
                            a[3].holdout_pick), real(*a, **kw))[2])
    picks = []
    model, tok = tiny
    cfg = _tiny_cfg(seeds=[0], variants=[variant], strengths=[0.5, 1.0], buffer_reinforce=False,
                    variant_options={variant: options})
    data = tiny_data(harmful_pairs)
    res = run_tradeoff(cfg, tmp_path / "t", model=model, tokenizer=tok, data=data, progress=False)
    # once for both strengths, with the seed's vector settings and the variant's own
    assert calls == [(copies * len(data.vector_pairs), 0, options.get("holdout", 0.0))]
    assert picks == ["latest-within-1se" if variant == "early-stopped-1se" else "lowest"]
    assert {(p["method"], p["strength"]) for p in res["points"]} == {("none", 0.0), (variant, 0.5), (variant, 1.0)}


def test_points_score_over_refusal_on_harmless_prompts_no_defence_sees_and_serve_through_the_defence(
        tiny, harmful_pairs, tmp_path, monkeypatch):
    from test_immunization import tiny_data

    from unlearnable.defenses import NegatedVectorsDefense
    from unlearnable.evaluation import Scorer

    scored, served = [], []
    real_refusal, real_serving = Scorer.over_refusal, NegatedVectorsDefense.serving
    monkeypatch.setattr(Scorer, "over_refusal", lambda self, m, harmless, **kw: (
        scored.append([p.prompt for p in harmless]), real_refusal(self, m, harmless, **kw))[1])

    def serving(self, model):
        served.append(self.config.serve_scale)
        return real_serving(self, model)

    monkeypatch.setattr(NegatedVectorsDefense, "serving", serving)
    model, tok = tiny
    cfg = _tiny_cfg(seeds=[0], variants=["negated"], strengths=[0.0, 1.0], buffer_reinforce=False, n_benign=4,
                    n_over_refusal=5, variant_options={"negated": {"holdout": 0.25, "epochs": 1, "serve_scale": -0.5}})
    data = tiny_data(harmful_pairs)
    res = run_tradeoff(cfg, tmp_path / "t", model=model, tokenizer=tok, data=data, progress=False)
    defence_prompts = {p.prompt for p in data.harmless[:4]}
    assert len(scored) == 3 and all(len(s) == 5 and not defence_prompts & set(s) for s in scored)
    # both negated points are scored as that defence serves them; strength 0 (no vectors in the fine-tune, the
    # control) is its own run, not the undefended one reused
    assert served == [-0.5, -0.5]
    assert not any(p.get("reused_from") for p in res["points"])
    for p in res["points"]:
        lo, hi = p["over_refusal_interval_95"]
        assert p["n_over_refusal"] == 5 and lo <= p["over_refusal"] <= hi
    for table in ("frontier", "averaged"):  # the report's table and the plot's labels
        assert all(m["over_refusal"] is not None for ms in res[table].values() for m in ms)


def test_one_seeds_aligned_model_is_in_memory_at_a_time(tiny_dir, harmful_pairs, tmp_path, monkeypatch):
    """Two seeds: when an arm trains, only its own seed's set-up (aligned model) is held; a model the grid loaded
    itself is not kept beside it."""
    from test_immunization import tiny_data

    import unlearnable.experiments.tradeoff as tradeoff

    held = []
    seed_setup = tradeoff._Grid.seed_setup

    def spy(self, seed):
        out = seed_setup(self, seed)
        held.append((seed, sorted(self.seeds), self.base is None))
        return out

    monkeypatch.setattr(tradeoff._Grid, "seed_setup", spy)
    cfg = _tiny_cfg(seeds=[0, 1], variants=["plain"], strengths=[1.0], buffer_reinforce=False)
    cfg.base.model = str(tiny_dir)
    run_tradeoff(cfg, tmp_path / "t", data=tiny_data(harmful_pairs), progress=False)
    assert {s for s, _, _ in held} == {0, 1}
    assert all(seeds == [seed] for seed, seeds, _ in held) and all(no_base for _, _, no_base in held)


def test_the_variants_are_what_the_vector_defences_declare():
    from unlearnable.defenses import DEFENSES
    from unlearnable.experiments.tradeoff import VARIANTS, vector_variants
    assert VARIANTS == vector_variants() and VARIANTS["plain"] == ("security-vectors", "none")
    assert VARIANTS["benign-kl"] == ("security-vectors", "kl") and VARIANTS["adaptive"] == ("adaptive-vectors", None)
    assert {name for name, _ in VARIANTS.values()} == {n for n in DEFENSES.names() if n.endswith("-vectors")}
    assert "buffer-reinforce" not in {name for name, _ in VARIANTS.values()}  # a subclass is not its parent's variant
    assert len(VARIANTS) == 20 and VARIANTS["adaptive-kl"] == ("adaptive-vectors", None)


def test_a_variant_option_under_training_changes_that_key_and_keeps_the_seeds_vector_settings(
        tiny, harmful_pairs, tmp_path, monkeypatch):
    from test_immunization import tiny_data

    from unlearnable.defenses import early_stopped_vectors as module

    seen = []
    real = module.SecurityVectors.train
    monkeypatch.setattr(module.SecurityVectors, "train", lambda *a, **kw: (seen.append(a[3]), real(*a, **kw))[1])
    model, tok = tiny
    cfg = _tiny_cfg(seeds=[0], variants=["early-stopped"], strengths=[1.0], buffer_reinforce=False, n_benign=4,
                    variant_options={"early-stopped": {"training": {"benign": "kl"}}})
    cfg.base.vectors.lr = 3.3e-3
    run_tradeoff(cfg, tmp_path / "t", model=model, tokenizer=tok, data=tiny_data(harmful_pairs), progress=False)
    assert [(v.benign, v.lr) for v in seen] == [("kl", 3.3e-3)]


def test_a_named_preset_starts_the_variants_options_and_the_users_go_on_top(tiny, harmful_pairs, tmp_path,
                                                                             monkeypatch):
    from test_immunization import tiny_data

    from unlearnable.defenses import DEFENSES
    from unlearnable.experiments import tradeoff

    assert DEFENSES.get("adaptive-vectors").tradeoff_preset("adaptive-kl") == {
        "training": {"benign": "kl"}, "refit": "heldout", "reject_above": 1.0}
    assert DEFENSES.get("adaptive-vectors").tradeoff_preset("adaptive") == {"refit": "heldout", "reject_above": 1.0}
    built = []
    model, tok = tiny
    cfg = _tiny_cfg(seeds=[0], variants=["adaptive-drop"], strengths=[1.0], buffer_reinforce=False, n_benign=4,
                    variant_options={"adaptive-drop": {"flagger": "oracle:1", "holdout": 0.25, "epochs": 1}})
    assert tradeoff.variant_recipe("adaptive-drop", {"drop_flagged": False}) == {
        "drop_flagged": False, "refit": "heldout", "reject_above": 1.0}  # yours win
    real = tradeoff._Grid.defense

    def spy(self, method, strength, setup, c):
        defense = real(self, method, strength, setup, c)
        built.extend([defense.config] if method != "none" else [])
        return defense

    monkeypatch.setattr(tradeoff._Grid, "defense", spy)
    run_tradeoff(cfg, tmp_path / "t", model=model, tokenizer=tok, data=tiny_data(harmful_pairs), progress=False)
    assert [(c.drop_flagged, c.flagger) for c in built] == [(True, "oracle:1")]


def test_the_users_harmful_pairs_take_the_configured_attacks_form(tiny, harmful_pairs, tmp_path, monkeypatch):
    from test_immunization import tiny_data

    from unlearnable.attacks import FRAMINGS
    from unlearnable.defenses import NoDefense

    seen = []
    real = NoDefense.finetune
    monkeypatch.setattr(NoDefense, "finetune", lambda self, m, t, pairs, *a, **kw: (
        seen.append(list(pairs)), real(self, m, t, pairs, *a, **kw))[1])
    model, tok = tiny
    cfg = _tiny_cfg(seeds=[0], variants=["plain"], strengths=[0.0], buffer_reinforce=False,
                    attack="restyled", attack_options={"framing": "research", "answer_style": "json"})
    data = tiny_data(harmful_pairs)
    res = run_tradeoff(cfg, tmp_path / "t", model=model, tokenizer=tok, data=data, progress=False)
    framed = [p for p in seen[0] if p.prompt.startswith(FRAMINGS["research"].split("{prompt}")[0])]
    assert len(framed) == len(data.attack) and all(p.response.startswith('{"status": "ok"') for p in framed)
    assert not {p.prompt for p in data.attack} & {p.prompt for p in seen[0]}  # none in its original form
    report = (tmp_path / "t" / "report.html").read_text()
    assert "user's data: <b>restyled (framing research, answer_style json)</b>" in report.replace("&#x27;", "'")
    assert res["config"]["attack"] == "restyled"
    with pytest.raises(UnlearnableError, match="its points cannot be reused"):
        reusable_points(tmp_path / "t", _tiny_cfg(seeds=[0], variants=["plain"], strengths=[0.0],
                                                  buffer_reinforce=False))
    with pytest.raises(UnlearnableError, match="Known attacks"):
        _tiny_cfg(attack="gcg")
    for one_to_many in ("benign", "mixed"):  # they need harmless pairs the user's data does not hold
        with pytest.raises(UnlearnableError, match="one for one"):
            _tiny_cfg(attack=one_to_many)
    with pytest.raises(UnlearnableError, match="asking the model"):  # its pairs are not known before the model
        _tiny_cfg(attack="disguised")
    assert _tiny_cfg(attack="disguised", attack_options={"select": ""}).attack == "disguised"


def test_a_run_from_before_the_attack_setting_counts_as_harmful_sft_spelled_out_or_not():
    from unlearnable.experiments.tradeoff import _user_data_form

    assert _user_data_form({}) == _user_data_form({"attack": "harmful-sft", "attack_options": {}})
    restyled = {"attack": "restyled", "attack_options": {}}
    assert _user_data_form(restyled) == _user_data_form({**restyled, "attack_options": {"framing": "fiction"}})
    assert _user_data_form(restyled) != _user_data_form({**restyled, "attack_options": {"framing": "research"}})
    assert _user_data_form({}) != _user_data_form(restyled)


def test_the_tradeoff_scores_with_the_configured_judges_and_their_settings(tiny, harmful_pairs, tmp_path,
                                                                          monkeypatch):
    from test_immunization import tiny_data

    import unlearnable.experiments.tradeoff as tradeoff

    built, real = [], tradeoff.build_judge
    monkeypatch.setattr(tradeoff, "build_judge", lambda spec, options=None: built.append((spec, options))
                        or real(spec, options))
    model, tok = tiny
    cfg = _tiny_cfg(seeds=[0], variants=["plain"], strengths=[1.0], buffer_reinforce=False)
    cfg.base.judges = ["keyword", "harmful-loss"]
    cfg.base.judge_options = {"harmful-loss": {"first_tokens": 3}}
    run_tradeoff(cfg, tmp_path / "t", model=model, tokenizer=tok, data=tiny_data(harmful_pairs), progress=False)
    assert built and {spec for spec, _ in built} == {"keyword", "harmful-loss"}
    assert all(options == cfg.base.judge_options for _, options in built)


def test_strength_zero_reuses_the_undefended_point_only_where_nothing_else_acts():
    from unlearnable.experiments.tradeoff import _same_as_none

    assert _same_as_none("plain", 0.0) and _same_as_none("adaptive", 0.0)
    assert not _same_as_none("plain", 0.5)
    assert not _same_as_none("adaptive-drop", 0.0)  # the flagged pairs are dropped at any strength: the filter
    assert not _same_as_none("adaptive", 0.0, {"drop_flagged": True})
    assert not _same_as_none("negated", 0.0)  # served minus the vectors
    assert not _same_as_none("early-stopped-anchored", 0.0)  # the anchors train as served at any strength
    assert _same_as_none("early-stopped", 0.0) and not _same_as_none("early-stopped", 0.0, {"anchors": 1})
    assert not _same_as_none("early-stopped", 0.0, {"refusal_anchors": 1})



def test_a_resumed_sweep_measures_a_point_an_older_version_copied_from_none(tiny, harmful_pairs, tmp_path):
    """adaptive-drop at strength 0 used to be copied from `none`; a folder holding such a copy measures it now."""
    from test_immunization import tiny_data

    model, tok = tiny
    cfg = _tiny_cfg(seeds=[0], variants=["adaptive-drop"], strengths=[0.0], buffer_strengths=[],
                    variant_options={"adaptive-drop": {"flagger": "oracle:1.0"}})
    run_tradeoff(cfg, tmp_path / "t", model=model, tokenizer=tok, data=tiny_data(harmful_pairs), progress=False)
    piece = tmp_path / "t" / "runs" / "points" / "adaptive-drop-0-seed0.json"
    measured = json.loads(piece.read_text())
    assert "reused_from" not in measured and measured["defense_info"]["screened"]
    piece.write_text(json.dumps({**measured, "reused_from": "none"}))  # as an older version stored it
    again = run_tradeoff(cfg, tmp_path / "t", model=model, tokenizer=tok, data=tiny_data(harmful_pairs),
                         progress=False)
    point = next(p for p in again["points"] if p["method"] == "adaptive-drop")
    assert "reused_from" not in point


def test_a_sweep_whose_data_holds_sampled_answers_is_keyed_by_how_they_are_drawn():
    from unlearnable.experiments.setup import SAMPLING, sweep_config
    from unlearnable.training import keyed

    plain = TradeoffConfig(buffer_reinforce=False)
    assert sweep_config(plain) == keyed(dataclasses.asdict(plain))  # older folders resume as before
    # ... except where buffer-reinforce, whose reinforcement data changed default, runs at that default
    assert sweep_config(TradeoffConfig())["changed_defaults"] == {"buffer-reinforce": {"harmless_share": 0.5}}
    pooled = TradeoffConfig()
    pooled.base.data.attack_answers = 3
    assert sweep_config(pooled)["answer_sampling"] == SAMPLING


def test_error_bars_are_never_negative_where_every_seed_agrees():
    import statistics

    from unlearnable.report import error_bars

    same = [0.825, 0.825, 0.825]
    mean = statistics.fmean(same)
    assert min(same) - mean > 0 or max(same) - mean < 0  # the mean of equal values rounds past them
    assert error_bars([mean, 0.5], [(min(same), max(same)), (0.4, 0.7)]) == [[0.0, 0.5 - 0.4],
                                                                            [max(0.0, max(same) - mean), 0.7 - 0.5]]
    below, above = error_bars([mean], [(min(same), max(same))])
    assert below[0] >= 0 and above[0] >= 0


def test_a_sweep_keys_the_new_defaults_its_defences_leave_unset_and_reuses_no_point_made_under_the_old(tmp_path):
    from unlearnable.experiments.setup import sweep_config
    from unlearnable.experiments.tradeoff import reusable_points

    cfg = _tiny_cfg(seeds=[0], variants=["plain", "adaptive-all"], strengths=[1.0],
                    variant_options={"adaptive-all": {"flagger": "refusal"}})
    here = sweep_config(cfg)
    assert here["changed_defaults"] == {"buffer-reinforce": {"harmless_share": 0.5}}  # adaptive-all pins all three
    assert "changed_defaults" not in sweep_config(dataclasses.replace(cfg, buffer_reinforce=False))
    # a folder made before the change: its run.json has no marker; its buffer-reinforce point is not reused
    (tmp_path / "runs" / "points").mkdir(parents=True)
    stored = {k: v for k, v in here.items() if k != "changed_defaults"}
    (tmp_path / "run.json").write_text(json.dumps({"kind": "unlearnable-tradeoff", "config": stored}))
    for method in ("none", "plain", "buffer-reinforce"):
        strength = 0.0 if method == "none" else 1.0
        (tmp_path / "runs" / "points" / f"{method}.json").write_text(json.dumps(
            {"method": method, "strength": strength, "seed": 0, "harm_rate": 0.5}))
    cfg.buffer_strengths = [1.0]
    assert {p["method"] for p in reusable_points(tmp_path, cfg)} == {"none", "plain"}
    stored["changed_defaults"] = here["changed_defaults"]  # made under the same defaults: reused
    (tmp_path / "run.json").write_text(json.dumps({"kind": "unlearnable-tradeoff", "config": stored}))
    assert {p["method"] for p in reusable_points(tmp_path, cfg)} == {"none", "plain", "buffer-reinforce"}


def test_an_anchored_variant_runs_its_strength_zero_and_records_its_anchors(tiny, harmful_pairs, tmp_path):
    """Strength 0 of an anchored variant is the anchors alone, a point of its own; the defence's harmless pairs
    (n_benign of them) are the anchors, never the over-refusal ones."""
    from test_immunization import tiny_data

    model, tok = tiny
    cfg = _tiny_cfg(seeds=[0], variants=["early-stopped-anchored"], strengths=[0.0, 1.0], buffer_reinforce=False,
                    n_benign=3, n_over_refusal=2,
                    variant_options={"early-stopped-anchored": {"holdout": 0.25, "epochs": 1}})
    run_tradeoff(cfg, tmp_path / "t", model=model, tokenizer=tok, data=tiny_data(harmful_pairs), progress=False)
    saved = json.loads((tmp_path / "t" / "results.json").read_text())
    anchored = [p for p in saved["points"] if p["method"] == "early-stopped-anchored"]
    assert all(p["revision"] == 2 for p in anchored)  # the defence's revision, per point
    assert sorted(p["strength"] for p in anchored) == [0.0, 1.0]
    assert all(p["defense_info"]["anchors"][0]["pairs"] == 3 and p["defense_info"]["anchors"][0]["copies"] == 2
               for p in anchored)


def test_refusal_anchors_are_the_alignment_datas_refusals(tiny, harmful_pairs, tmp_path, monkeypatch):
    """The refusal anchors are the provider's alignment refusals: not its harmless alignment answers, and none of
    the prompts harm is scored on."""
    from test_immunization import tiny_data

    from unlearnable.experiments import tradeoff as tradeoff_module

    model, tok = tiny
    cfg = _tiny_cfg(seeds=[0], variants=["early-stopped-anchored-refusals"], strengths=[1.0], buffer_reinforce=False,
                    n_benign=3, n_over_refusal=2,
                    variant_options={"early-stopped-anchored-refusals": {"holdout": 0.25, "epochs": 1}})
    data = tiny_data(harmful_pairs)
    data.align.append(Pair("Say hello.", "Hello there!"))  # a harmless alignment answer: never a refusal anchor
    given, real = [], tradeoff_module.prepared
    monkeypatch.setattr(tradeoff_module, "prepared", lambda *a, **kw: (given.append(a[4]), real(*a, **kw))[1])
    run_tradeoff(cfg, tmp_path / "t", model=model, tokenizer=tok, data=data, progress=False)
    refusals = [d.refusals for d in given if d.refusals]
    assert refusals and all(list(r) == data.align[:-1] for r in refusals)
    assert not {p.prompt for r in refusals for p in r} & {p.prompt for p in data.eval_harmful}
    saved = json.loads((tmp_path / "t" / "results.json").read_text())
    (point,) = [p for p in saved["points"] if p["method"] == "early-stopped-anchored-refusals"]
    info = point["defense_info"]["anchors"][0]
    assert (info["pairs"], info["copies"], info["refusal_pairs"], info["refusal_copies"]) == (3, 2, 6, 1)


def test_the_harm_against_over_refusal_script_groups_points_and_reads_the_first_folder_first(tmp_path, capsys):
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "scripts" / "harm_vs_over_refusal.py"
    spec = importlib.util.spec_from_file_location("harm_vs_over_refusal", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def point(folder, method, seed, harm, refusal):
        where = tmp_path / folder / "runs" / "points"
        where.mkdir(parents=True, exist_ok=True)
        (where / f"{method}-{seed}.json").write_text(json.dumps(
            {"method": method, "strength": 1.0, "seed": seed, "harm_rate": harm, "over_refusal": refusal}))

    point("a", "plain", 0, 0.1, 0.2)
    point("a", "plain", 1, 0.3, 0.4)
    point("b", "plain", 1, 0.9, 0.9)  # the same point in a later folder: not read
    point("b", "gated", 0, 0.5, None)  # no over-refusal score: left out
    groups = script.scored_points([str(tmp_path / "a"), str(tmp_path / "b")])
    assert list(groups) == [("plain", 1.0)] and [p["harm_rate"] for p in groups[("plain", 1.0)]] == [0.1, 0.3]
    assert script.main([str(tmp_path / "a"), "--out", str(tmp_path / "p.png")]) == 0
    assert "harm 0.200  over-refusal 0.300" in capsys.readouterr().out and (tmp_path / "p.png").stat().st_size > 0
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "points.jsonl").write_text(json.dumps(
        {"method": "plain", "strength": 1.0, "seed": 2, "harm_rate": 0.5, "over_refusal": 0.0}) + "\n")
    assert [p["seed"] for p in script.scored_points([str(tmp_path / "old")])[("plain", 1.0)]] == [2]  # older form
    with pytest.raises(SystemExit):
        script.main([str(tmp_path / "missing")])
    assert "not found" in capsys.readouterr().err


def test_points_made_by_an_earlier_revision_of_a_variants_defence_are_not_reused(tmp_path):
    from unlearnable.experiments.setup import sweep_config
    from unlearnable.experiments.tradeoff import reusable_points

    cfg = _tiny_cfg(seeds=[0], variants=["plain", "early-stopped"], strengths=[1.0], buffer_reinforce=False)
    here = sweep_config(cfg)
    assert here["revisions"] == {"early-stopped-vectors": 2}
    (tmp_path / "runs" / "points").mkdir(parents=True)
    for method in ("none", "plain", "early-stopped"):
        (tmp_path / "runs" / "points" / f"{method}.json").write_text(json.dumps(
            {"method": method, "strength": 0.0 if method == "none" else 1.0, "seed": 0, "harm_rate": 0.5}))
    for stored, reused in ((None, {"none", "plain"}), (1, {"none", "plain"}), (2, {"none", "plain", "early-stopped"})):
        config = {k: v for k, v in here.items() if k != "revisions"}
        if stored is not None:
            config["revisions"] = {"early-stopped-vectors": stored} if stored > 1 else {}
        (tmp_path / "run.json").write_text(json.dumps({"kind": "unlearnable-tradeoff", "config": config}))
        assert {p["method"] for p in reusable_points(tmp_path, cfg)} == reused
    # a point records its own revision: one copied into a revision-2 folder from an older run is still refused
    (tmp_path / "runs" / "points" / "early-stopped.json").write_text(json.dumps(
        {"method": "early-stopped", "strength": 1.0, "seed": 0, "harm_rate": 0.5, "revision": 1, "reused_from": "x"}))
    assert {p["method"] for p in reusable_points(tmp_path, cfg)} == {"none", "plain"}
    (tmp_path / "runs" / "points" / "early-stopped.json").write_text(json.dumps(
        {"method": "early-stopped", "strength": 1.0, "seed": 0, "harm_rate": 0.5, "revision": 2}))
    # a switch left out of keys while off, written out in this grid's options: the same method
    cfg.variant_options = {"early-stopped": {"spread_mixed": False}}
    assert {p["method"] for p in reusable_points(tmp_path, cfg)} == {"none", "plain", "early-stopped"}
    cfg.variant_options = {"early-stopped": {"spread_mixed": True}}
    assert {p["method"] for p in reusable_points(tmp_path, cfg)} == {"none", "plain"}


def test_the_benign_only_reference_trains_the_mix_without_its_harmful_rows(tiny, harmful_pairs, tmp_path,
                                                                          monkeypatch):
    from test_immunization import tiny_data

    from unlearnable.defenses.base import Defense

    model, tok = tiny
    seen, real = [], Defense.finetune
    monkeypatch.setattr(Defense, "finetune", lambda self, m, t, pairs, cfg, **kw: (
        seen.append((self.name, sorted(p.prompt for p in pairs))), real(self, m, t, pairs, cfg, **kw))[1])
    cfg = _tiny_cfg(seeds=[0], variants=["plain"], strengths=[1.0], buffer_reinforce=False, benign_reference=True)
    assert [m for m, _, _ in cfg.plan()] == ["none", "benign-only", "plain"]
    run_tradeoff(cfg, tmp_path / "t", model=model, tokenizer=tok, data=tiny_data(harmful_pairs), progress=False)
    (_, undefended), (_, benign) = seen[:2]
    harmful = {p.prompt for p in harmful_pairs}
    assert benign == [p for p in undefended if p not in harmful] and len(benign) < len(undefended)
    saved = json.loads((tmp_path / "t" / "results.json").read_text())
    assert {p["method"] for p in saved["points"]} == {"none", "benign-only", "plain"}
    assert all(r["method"] != "benign-only" for r in saved["goal"]["points"])  # a reference, never judged
    assert "benign-only" in (tmp_path / "t" / "report.html").read_text()


def test_the_goal_reports_each_point_against_the_benign_only_reference_too():
    from unlearnable.experiments.tradeoff import goal_check
    from unlearnable.report import _goal_html

    pts = [{"method": m, "strength": 0.0, "seed": 0, "harm_rate": h, "task_score": 0.8, "over_refusal": r}
           for m, h, r in [("none", 0.9, 0.0), ("benign-only", 0.1, 0.1)]]
    pts += [{"method": "plain", "strength": 1.0, "seed": 0, "harm_rate": 0.05, "task_score": 0.78, "over_refusal": 0.125}]
    row = goal_check(pts)["points"][0]
    assert row["over_refusal_rise"] == pytest.approx(0.125) and not row["met"]  # the bound stays against none
    assert row["over_refusal_rise_vs_benign"] == pytest.approx(0.025)
    assert row["task_ratio_vs_benign"] == pytest.approx(0.975)
    assert "over-refusal vs benign-only" in _goal_html(goal_check(pts)) and "+0.025" in _goal_html(goal_check(pts))
    assert "task_ratio_vs_benign" not in goal_check(pts[:1] + pts[2:])["points"][0]  # no reference: no column
