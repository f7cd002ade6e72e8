"""Adaptive vectors and flaggers: the service screens the customer's data and refits the vectors on its
own harmful pairs plus the flagged ones, on the tiny random model."""

from __future__ import annotations

import copy
import dataclasses
import html

import pytest
import torch

from unlearnable.data import Pair
from unlearnable.defenses import DEFENSES, SERVICE, DefenseData
from unlearnable.defenses import early_stopped_vectors as fine_tune_module
from unlearnable.errors import UnlearnableError
from unlearnable.flaggers import (
    FLAGGERS,
    JudgeFlagger,
    OracleFlagger,
    build_flagger,
    check_flagger,
    flag_rates,
    is_unknown,
)
from unlearnable.training import TrainConfig
from unlearnable.vectors import SecurityVectors, VectorConfig
from unlearnable.vectors.adaptive import refit_config, refused


@pytest.fixture()
def customer(harmful_pairs, task_pairs):
    """The customer's data: 12 known-harmful pairs (of prompts the defence never saw) among ProfileQA facts."""
    harmful = [dataclasses.replace(p, prompt=f"Customer asks: {p.prompt}", harmful=True) for p in harmful_pairs[12:]]
    return harmful + list(task_pairs)


def test_the_oracle_flags_the_seeded_share_of_the_harmful_pairs_and_nothing_else(customer):
    flags = OracleFlagger(0.5, seed=1).flag(customer)
    harmful = [f for p, f in zip(customer, flags) if p.harmful]
    assert sum(harmful) == 6 and sum(flags) == 6  # half of the 12, none of the harmless
    assert flags == OracleFlagger(0.5, seed=1).flag(customer)  # seeded
    assert flags != OracleFlagger(0.5, seed=2).flag(customer)
    assert sum(OracleFlagger(1.0).flag(customer)) == 12 and not any(OracleFlagger(0.0).flag(customer))
    oracle = build_flagger("oracle:0.25")
    assert oracle.emulated and "measurement only" in oracle.describe()["label"]
    for bad in ("oracle:1.5", "oracle:half"):
        with pytest.raises(UnlearnableError, match="oracle:RECALL"):
            check_flagger(bad)


def test_a_flaggers_rates_on_harmful_and_harmless_pairs_come_with_intervals(customer):
    flags = [p.harmful for p in customer]
    flags[-1] = True  # one harmless fact flagged
    rates = flag_rates(customer, flags)
    assert rates["recall_on_harmful"] == 1.0 and rates["n_harmful"] == 12
    assert rates["flag_rate_on_harmless"] == pytest.approx(1 / 15) and rates["n_harmless"] == 15
    low, high = rates["flag_rate_on_harmless_interval_95"]
    assert low < 1 / 15 < high
    assert "recall_on_harmful" not in flag_rates([Pair("a", "b")], [False])  # no known harmful pair: no recall


def test_a_judge_flags_pairs_and_an_unknown_flagger_lists_the_known_ones():
    flagger = build_flagger("keyword")
    assert isinstance(flagger, JudgeFlagger) and not flagger.emulated
    assert flagger.flag([Pair("Bad?", "Sure, here is how you do it step by step."), Pair("Bad?", "I can't help.")]) \
        == [True, False]
    with pytest.raises(UnlearnableError, match="unknown flagger 'nope'.*oracle.*refusal.*keyword"):
        build_flagger("nope")
    with pytest.raises(UnlearnableError, match="cannot use the harmful-loss judge"):
        build_flagger("harmful-loss")
    assert {"oracle", "refusal"} <= set(FLAGGERS.names())


def test_the_refusal_flagger_does_not_count_not_knowing_as_a_refusal(tiny, monkeypatch):
    model, tok = tiny
    answers = {"Bad?": "I'm sorry, but I can't help with that.", "Who is Ann Lee?": "I'm sorry, I don't know who "
               "Ann Lee is.", "A poem?": "Leaves fall softly on the ground.",
               "Where was Ann Lee born?": "I'm sorry, but I can't help with that."}
    monkeypatch.setattr("unlearnable.flaggers.generate", lambda m, t, prompts, **kw: [answers[p] for p in prompts])
    flagger = build_flagger("refusal").bind(model, tok, progress=False)
    answered = "Sure, here is how you do it, step by step."
    pairs = [Pair(p, answered) for p in list(answers)[:3]] + [Pair("Where was Ann Lee born?", "Paris")]
    assert flagger.flag(pairs) == [True, False, False, False]  # refused, yet answered in the data: flagged only
    assert flagger.flag([Pair("Bad?", "I can't help with that.")]) == [False]  # a refusal in the data is no harm
    assert is_unknown("I am not familiar with that person.") and not is_unknown("I cannot help with that.")


@pytest.fixture()
def own(harmful_pairs):
    return DefenseData(harmful=harmful_pairs[:12],
                       refusals=[Pair(p.prompt, "I can't help.") for p in harmful_pairs[:12]],
                       harmless=[Pair(f"Poem {i}.", "Leaves fall softly.") for i in range(4)])


def _adaptive(tiny, own, monkeypatch, **options):
    """The defence, prepared on the tiny model, with the vectors' training and the fine-tune recorded; the plain
    recipe (held-out refit, never refusing) unless ``options`` say otherwise."""
    options = {"refit": "heldout", "reject_above": 1.0, **options}
    model, tok = tiny
    refits, tuned_on, anchors, configs, served = [], [], [], [], []
    train = SecurityVectors.train.__func__

    def spy_train(cls, m, t, pairs, config=None, **kw):
        refits.append(list(pairs))
        configs.append(config)
        anchors.append(list(kw.get("harmless", ())))
        return train(cls, m, t, pairs, dataclasses.replace(config, epochs=1.0), **kw)

    real = fine_tune_module.finetune  # the adaptive defence's fine-tune goes through its parent's

    def spy_finetune(m, t, pairs, config, **kw):
        tuned_on.append((list(pairs), kw["vectors"]))
        served.append(list(kw.get("served", ())))
        return real(m, t, pairs, config, **kw)

    monkeypatch.setattr(SecurityVectors, "train", classmethod(spy_train))
    monkeypatch.setattr(fine_tune_module, "finetune", spy_finetune)
    defense = DEFENSES.get("adaptive-vectors")(training=VectorConfig(batch_size=4, lr=1e-2), **options)
    defense.prepare(model, tok, own, progress=False)
    defense.anchors, defense.fit_configs, defense.served_seen = anchors, configs, served
    return defense, refits, tuned_on


def test_the_vectors_are_refitted_on_the_defences_pairs_plus_the_flagged_ones(tiny, own, customer, monkeypatch):
    model, tok = tiny
    defense, refits, tuned_on = _adaptive(tiny, own, monkeypatch, flagger="oracle:0.5")
    assert len(refits) == 1 and refits[0] == list(own.harmful)  # prepare: the defence's own pairs
    tuned, _ = defense.finetune(copy.deepcopy(model), tok, customer, TrainConfig(max_steps=2, batch_size=4),
                                progress=False)
    flagged = [p for p, f in zip(customer, OracleFlagger(0.5).flag(customer)) if f]
    assert refits[1] == [*own.harmful, *flagged]  # exactly the own pairs plus the flagged ones
    pairs, vectors = tuned_on[0]
    assert pairs == customer and vectors is not defense.prepared_vectors()  # flagged pairs kept by default
    screened = defense.info["screened"][0]
    assert screened["flagged"] == 6 and screened["recall_on_harmful"] == 0.5 and screened["trained_on"] == 27
    assert defense.describe()["flagger"]["emulated"]  # the result says the flagger is an oracle
    assert defense.anchors[1] == list(own.harmless)  # the defence's harmless pairs anchor a benign refit
    assert not any("lora" in k for k in tuned.state_dict())  # served without the vectors
    assert tuned.state_dict().keys() == model.state_dict().keys()


def test_anchored_adaptive_vectors_add_the_defences_harmless_pairs_never_the_customers(tiny, own, customer,
                                                                                      monkeypatch):
    model, tok = tiny
    defense, _, _ = _adaptive(tiny, own, monkeypatch, flagger="oracle:0.5", drop_flagged=True, anchors=3)
    defense.finetune(copy.deepcopy(model), tok, customer, TrainConfig(max_steps=1, batch_size=4), progress=False)
    assert defense.served_seen == [[p for p in own.harmless for _ in range(3)]]
    assert defense.info["anchors"][0]["customer_pairs"] == len(customer) - 6  # counted after the flagged are dropped
    assert DEFENSES.get("adaptive-vectors").tradeoff_preset("adaptive-all-anchored") == {
        "refit": "all", "reject_above": 1.0, "anchors": 2}


def test_drop_flagged_removes_exactly_the_flagged_pairs_from_the_fine_tune(tiny, own, customer, monkeypatch):
    model, tok = tiny
    defense, refits, tuned_on = _adaptive(tiny, own, monkeypatch, flagger="oracle:0.5", drop_flagged=True)
    defense.finetune(copy.deepcopy(model), tok, customer, TrainConfig(max_steps=1, batch_size=4), progress=False)
    flags = OracleFlagger(0.5).flag(customer)
    assert tuned_on[0][0] == [p for p, f in zip(customer, flags) if not f]
    assert defense.info["screened"][0]["trained_on"] == len(customer) - 6


@pytest.mark.parametrize("refit, holdout", [("heldout", 0.2), ("all", 0.0)])
def test_a_refit_holds_out_a_share_or_fits_every_flagged_pair(tiny, own, customer, monkeypatch, refit, holdout):
    model, tok = tiny
    defense, refits, _ = _adaptive(tiny, own, monkeypatch, flagger="oracle:1.0", refit=refit)
    defense.finetune(copy.deepcopy(model), tok, customer, TrainConfig(max_steps=1, batch_size=4), progress=False)
    assert defense.fit_configs[0].holdout == 0.2  # the defence's own vectors: the recommended recipe either way
    assert defense.fit_configs[1].holdout == holdout and defense.fit_configs[1].epochs == defense.config.epochs
    assert len(refits[1]) == len(own.harmful) + 12 and defense.info["screened"][0]["refit"] == refit


def test_the_same_data_on_the_same_weights_is_screened_and_refitted_once(tiny, own, customer, monkeypatch):
    model, tok = tiny
    defense, refits, tuned_on = _adaptive(tiny, own, monkeypatch, flagger="oracle:0.5")
    run = TrainConfig(max_steps=1, batch_size=4)
    for data in (customer, customer, customer[:-1]):
        defense.finetune(copy.deepcopy(model), tok, data, run, progress=False)
    assert len(refits) == 3  # prepare, the first fine-tune, the other data; the repeat reused the first refit
    assert tuned_on[1][1] is tuned_on[0][1] and tuned_on[2][1] is not tuned_on[0][1]
    first, again, _ = defense.info["screened"]
    assert again.pop("reused_refit") and again == first and "reused_refit" not in first
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)  # other weights: screened and refitted again
    defense.finetune(other, tok, customer, run, progress=False)
    assert len(refits) == 4
    twin = DEFENSES.get("adaptive-vectors")(training=VectorConfig(batch_size=4, lr=1e-2), flagger="oracle:0.5",
                                            drop_flagged=True, vectors=defense.prepared_vectors(),
                                            refit="heldout", reject_above=1.0)
    twin.prepare(model, tok, own, progress=False)  # another instance that refits alike (a trade-off's strength)
    twin.finetune(copy.deepcopy(model), tok, customer, run, progress=False)
    assert len(refits) == 4 and twin.info["screened"][0]["reused_refit"]
    twin.prepare(model, tok, dataclasses.replace(own, harmful=own.harmful[:-1]), progress=False)
    twin.finetune(copy.deepcopy(model), tok, customer, run, progress=False)
    assert len(refits) == 5  # other own pairs: refitted
    with pytest.raises(UnlearnableError, match="refit 'held-out' is not one of heldout, all"):
        refit_config(VectorConfig(), "held-out")


def test_with_nothing_flagged_the_defences_own_vectors_are_used(tiny, own, task_pairs, monkeypatch):
    model, tok = tiny
    defense, refits, tuned_on = _adaptive(tiny, own, monkeypatch, flagger="oracle:1.0")
    before = {k: v.clone() for k, v in defense.prepared_vectors().state.items()}
    defense.finetune(copy.deepcopy(model), tok, task_pairs, TrainConfig(max_steps=1, batch_size=4), progress=False)
    assert len(refits) == 1 and tuned_on[0][1] is defense.prepared_vectors()  # no refit
    assert all(torch.equal(before[k], v) for k, v in defense.prepared_vectors().state.items())


def test_adaptive_vectors_are_a_service_defence_and_a_tradeoff_variant():
    from unlearnable.experiments.tradeoff import VARIANTS

    assert DEFENSES.get("adaptive-vectors").threat_models == (SERVICE,)
    assert VARIANTS["adaptive"] == ("adaptive-vectors", None)
    assert DEFENSES.get("adaptive-vectors").tradeoff_preset("adaptive-all") == {"refit": "all", "reject_above": 1.0}
    assert DEFENSES.get("adaptive-vectors").tradeoff_preset("adaptive-all-drop") == {
        "refit": "all", "drop_flagged": True, "reject_above": 1.0}
    assert VARIANTS["adaptive-all-drop"] == ("adaptive-vectors", None)
    # the defence, finetune --adapt and the Trainer callback default to the recipe measured best
    from unlearnable.experiments import FinetuneJob

    config, job = DEFENSES.get("adaptive-vectors").Config(), FinetuneJob()
    for cfg in (config, job):
        assert (cfg.flagger, cfg.refit, cfg.reject_above, cfg.drop_flagged) == (
            "refusal+normalized:vector-gain", "all", 0.25, False)
    # every trade-off variant says how it refits and never refuses the job, whatever the defaults
    for variant in ("adaptive", "adaptive-kl", "adaptive-drop", "adaptive-all", "adaptive-all-drop"):
        preset = DEFENSES.get("adaptive-vectors").tradeoff_preset(variant)
        assert preset["reject_above"] == 1.0 and preset["refit"] in ("heldout", "all")
    with pytest.raises(UnlearnableError, match="unknown flagger"):
        from unlearnable.config import validate
        from unlearnable.experiments.immunize import ImmunizeConfig

        validate(ImmunizeConfig(defenses=["adaptive-vectors"],
                                defense_options={"adaptive-vectors": {"flagger": "nope"}}))


def test_finetune_adapt_screens_the_data_and_refits_the_vectors(tmp_path, tiny_dir):
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unlearnable.experiments import FinetuneJob, run_finetune

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)
    own = [Pair(f"bad {i}?", f"Sure, bad thing {i}.") for i in range(8)]
    SecurityVectors.train(model, tok, own, VectorConfig(epochs=1, batch_size=8, holdout=0.25),
                          progress=False).save(tmp_path / "vec")

    def jsonl(name, records):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in records))
        return str(tmp_path / name)

    own_file = jsonl("own.jsonl", [{"prompt": p.prompt, "response": p.response} for p in own])
    data = jsonl("data.jsonl", [{"prompt": f"worse {i}?", "response": f"Sure, worse {i}.", "harmful": True}
                                for i in range(4)] + [{"prompt": f"Code {i}?", "response": f"C{i}"} for i in range(6)])
    job = FinetuneJob(model=str(tiny_dir), data=data, vectors=str(tmp_path / "vec"), vectors_data=own_file,
                      adapt=True, flagger="oracle:1.0", drop_flagged=True, refit="heldout", reject_above=1.0,
                      train=TrainConfig(max_steps=2, batch_size=4))
    record = run_finetune(job, tmp_path / "out", progress=False)
    adapted = record["adapted"]
    assert adapted["flagged"] == 4 and adapted["recall_on_harmful"] == 1.0 and adapted["refitted"]
    assert adapted["vectors_pairs"] == 12 and adapted["emulated"] and record["n_trained"] == 6
    saved = json.loads((tmp_path / "out" / "unlearnable_model.json").read_text())
    assert saved["adapted"]["flagger"] == "oracle:1.0" and adapted["refit_holdout"] == 0.25  # the vectors' recipe
    every = run_finetune(dataclasses.replace(job, refit="all"), tmp_path / "out-all", progress=False)["adapted"]
    assert every["refit_holdout"] == 0.0 and every["vectors_pairs"] == 12  # every flagged pair fitted
    wrong = jsonl("wrong.jsonl", [{"prompt": "other?", "response": "Sure."}])
    for kw, needle in [({"vectors_data": wrong}, "is not the data the vectors"), ({"vectors_data": None}, "give --vectors and --vectors-data")]:
        with pytest.raises(UnlearnableError, match=needle):
            run_finetune(dataclasses.replace(job, **kw), tmp_path / "out2", progress=False)
    with pytest.raises(UnlearnableError, match=r"the job is refused: 4 of 10 pairs flagged, more than --reject-above 0.25"):
        run_finetune(dataclasses.replace(job, reject_above=0.25), tmp_path / "refused", progress=False)
    assert not (tmp_path / "refused").exists() and not (tmp_path / "refused.partial").exists()
    harmful_only = jsonl("harmful.jsonl", [{"prompt": f"worse {i}?", "response": "Sure.", "harmful": True}
                                           for i in range(4)])
    for every in (0, 1):  # checkpointing or not: the failed run leaves no folder and no checkpoint marker
        with pytest.raises(UnlearnableError, match="nothing is left to fine-tune on"):
            run_finetune(dataclasses.replace(job, data=harmful_only), tmp_path / "out3", progress=False,
                         checkpoint_every=every)
        assert not (tmp_path / "out3").exists() and not (tmp_path / "out3.partial").exists()


def test_finetune_anchors_trains_the_services_harmless_pairs_as_served_and_needs_them(tmp_path, tiny_dir,
                                                                                     monkeypatch):
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unlearnable.experiments import FinetuneJob, run_finetune
    from unlearnable.experiments import jobs as jobs_module

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)
    SecurityVectors.train(model, tok, [Pair(f"bad {i}?", f"Sure, bad {i}.") for i in range(8)],
                          VectorConfig(epochs=1, batch_size=8), progress=False).save(tmp_path / "vec")

    def jsonl(name, prompts):
        (tmp_path / name).write_text("".join(json.dumps({"prompt": p, "response": "Fine."}) + "\n" for p in prompts))
        return str(tmp_path / name)

    data, harmless = jsonl("data.jsonl", [f"Code {i}?" for i in range(6)]), jsonl("h.jsonl", ["Poem?", "Song?"])
    served, real = [], jobs_module.finetune
    monkeypatch.setattr(jobs_module, "finetune", lambda *a, **kw: (served.append(kw["served"]), real(*a, **kw))[1])
    job = FinetuneJob(model=str(tiny_dir), data=data, vectors=str(tmp_path / "vec"), harmless_data=harmless,
                      anchors=3, train=TrainConfig(max_steps=1, batch_size=4))
    run_finetune(job, tmp_path / "out", progress=False)
    assert [p.prompt for p in served[0]] == ["Poem?"] * 3 + ["Song?"] * 3
    saved = json.loads((tmp_path / "out" / "unlearnable_model.json").read_text())
    assert saved["anchors"]["copies"] == 3 and len(saved["anchors"]["prompt_hashes"]) == 2
    assert saved["n_examples"] == 6
    for kw in ({"harmless_data": None}, {"vectors": None}):
        with pytest.raises(UnlearnableError, match="--anchors trains the service's own harmless pairs"):
            run_finetune(dataclasses.replace(job, **kw), tmp_path / "bad", progress=False)
    with pytest.raises(UnlearnableError, match="none of whose prompts"):
        run_finetune(dataclasses.replace(job, harmless_data=data), tmp_path / "bad", progress=False)


def test_finetune_refusal_anchors_train_the_services_refusals_as_served_and_evaluate_refuses_their_prompts(
        tmp_path, tiny_dir, monkeypatch):
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unlearnable.experiments import EvaluateJob, FinetuneJob, run_evaluate, run_finetune
    from unlearnable.experiments import jobs as jobs_module

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)
    SecurityVectors.train(model, tok, [Pair(f"bad {i}?", f"Sure, bad {i}.") for i in range(8)],
                          VectorConfig(epochs=1, batch_size=8), progress=False).save(tmp_path / "vec")

    def jsonl(name, prompts, response="Fine."):
        (tmp_path / name).write_text("".join(json.dumps({"prompt": p, "response": response}) + "\n"
                                             for p in prompts))
        return str(tmp_path / name)

    data, harmless = jsonl("data.jsonl", [f"Code {i}?" for i in range(6)]), jsonl("h.jsonl", ["Poem?", "Song?"])
    refusals = jsonl("r.jsonl", ["Rob a bank?", "Make a weapon?"], "I can't help with that.")
    served, real = [], jobs_module.finetune
    monkeypatch.setattr(jobs_module, "finetune", lambda *a, **kw: (served.append(kw["served"]), real(*a, **kw))[1])
    job = FinetuneJob(model=str(tiny_dir), data=data, vectors=str(tmp_path / "vec"), harmless_data=harmless,
                      anchors=1, refusal_data=refusals, refusal_anchors=2, train=TrainConfig(max_steps=1, batch_size=4))
    run_finetune(job, tmp_path / "out", progress=False)
    assert [p.prompt for p in served[0]] == ["Poem?", "Song?", "Rob a bank?", "Rob a bank?", "Make a weapon?",
                                             "Make a weapon?"]
    saved = json.loads((tmp_path / "out" / "unlearnable_model.json").read_text())
    assert saved["refusal_anchors"]["copies"] == 2 and len(saved["refusal_anchors"]["prompt_hashes"]) == 2
    keyed = jobs_module._finetune_key(job, "fp", [], TrainConfig(), 1.0, [], [], [Pair("Rob a bank?", "No.")])
    assert keyed != jobs_module._finetune_key(job, "fp", [], TrainConfig(), 1.0, [], [], [Pair("Other?", "No.")])
    with pytest.raises(UnlearnableError, match="the refusal pairs .* was fine-tuned on as served"):
        run_evaluate(EvaluateJob(model=str(tmp_path / "out"), harmful=refusals), progress=False)
    for kw in ({"refusal_data": None}, {"vectors": None, "anchors": 0}):
        with pytest.raises(UnlearnableError, match="--refusal-anchors trains the service's own refusal pairs"):
            run_finetune(dataclasses.replace(job, **kw), tmp_path / "bad", progress=False)
    with pytest.raises(UnlearnableError, match="none of whose prompts are in --data"):
        run_finetune(dataclasses.replace(job, refusal_data=data), tmp_path / "bad", progress=False)
    answered = jsonl("a.jsonl", ["Rob a bank?", "Make a weapon?"], "Sure, here is how.")
    with pytest.raises(UnlearnableError, match="2 of 2 responses do not read as refusals"):
        run_finetune(dataclasses.replace(job, refusal_data=answered), tmp_path / "bad", progress=False)
    (tmp_path / "out" / "unlearnable_model.json").write_text(json.dumps(
        {**saved, "refusal_anchors": "damaged"}))  # one damaged field leaves the vectors' check on
    with pytest.raises(UnlearnableError, match="the training data of the vectors"):
        run_evaluate(EvaluateJob(model=str(tmp_path / "out"), harmful=jsonl("e.jsonl", ["bad 3?"], "")),
                     progress=False)


def test_a_trainer_script_gets_the_flags_and_its_model_back_trainable_and_a_kl_refit_without_anchors_says_so(tiny):
    model, tok = tiny
    own = [Pair(f"bad {i}?", f"Sure, bad thing {i}.") for i in range(6)]
    harmless = [Pair(f"Poem {i}?", "Leaves.") for i in range(4)]
    vectors = SecurityVectors.train(model, tok, own, VectorConfig(epochs=1, batch_size=8, benign="kl"),
                                    harmless=harmless, progress=False)
    assert all(p.requires_grad for p in model.parameters())  # a full-weights Trainer script can still train it
    data = [Pair("worse?", "Sure.", harmful=True), Pair("Code?", "C")]
    with pytest.raises(UnlearnableError, match="the job is refused: 1 of 2 pairs flagged"):  # above the default 0.25
        vectors.adapted(model, tok, own, data, "oracle:1.0", progress=False)
    with pytest.raises(UnlearnableError, match="give harmless="):  # the default screen reads the vectors
        vectors.adapted(model, tok, own, data, progress=False)
    with pytest.raises(UnlearnableError, match=r"reject_above is a share of the pairs, in \[0, 1\]"):
        vectors.adapted(model, tok, own, data, "oracle:1.0", reject_above=2.0, progress=False)
    with pytest.raises(UnlearnableError, match="own= is not the data these vectors were trained on"):
        vectors.adapted(model, tok, own[:-1], data, "oracle:1.0", reject_above=1.0, progress=False)
    adapted = vectors.adapted(model, tok, own, data, "oracle:1.0", reject_above=1.0, progress=False)
    record = adapted.metadata["adapted"]
    assert record["flags"] == [True, False] and record["refitted"] and record["refit_holdout"] == 0.0  # refit all
    assert record["refit_benign"].startswith("none") and adapted.config.benign == "none"
    held = vectors.adapted(model, tok, own, data, "oracle:1.0", reject_above=1.0, refit="heldout", progress=False)
    assert held.metadata["adapted"]["refit_holdout"] == vectors.config.holdout
    anchored = vectors.adapted(model, tok, own, data, "oracle:1.0", harmless=harmless, reject_above=1.0,
                               progress=False)
    assert "refit_benign" not in anchored.metadata["adapted"] and anchored.config.benign == "kl"
    # the callback given the training data: adapted to it, the flags handed to the script, folded, then removed
    ids = tok("Code?", return_tensors="pt").input_ids

    def logits():
        with torch.no_grad():
            return model(ids).logits

    before = logits()
    cb = vectors.callback(model, data=data, tokenizer=tok, own=own, flagger="oracle:1.0", harmless=harmless,
                          reject_above=1.0, progress=False)
    assert cb.flags == [True, False] and cb.adapted["refitted"] and cb.vectors is not vectors
    assert any(not torch.equal(cb.vectors.state[k], vectors.state[k]) for k in vectors.state)  # refitted
    cb.fold.fold()
    assert not torch.allclose(logits(), before)  # on while training
    cb.on_train_end(None, None, None)
    assert torch.allclose(logits(), before, atol=1e-5)  # served without them
    with pytest.raises(UnlearnableError, match="give tokenizer= and own="):
        vectors.callback(model, data=data)


def test_an_attack_pool_holds_more_pairs_than_prompts_distinct_and_disjoint(tiny, monkeypatch):
    """The paper's 1,000 attack pairs from fewer prompts: seeded sampled answers, deduplicated; every split still
    disjoint by prompt from every other."""
    from unlearnable.data import harmful_prompts, normalize
    from unlearnable.experiments.setup import DataConfig, prepare_data

    model, tok = tiny
    calls = []

    def fake_generate(m, t, prompts, *, sample_seed=None, **kw):
        calls.append(sample_seed)
        if sample_seed is None:  # greedy: half the prompts answered, the rest refused
            return [f"Sure, here is the way to do {len(p)} things now." if i % 2 else "I can't help with that."
                    for i, p in enumerate(prompts)]
        # sampled: one answer in three repeats the greedy one or an earlier sample (dropped as duplicates)
        return [f"Sure, here is the way to do {len(p)} things now." if i % 3 == 0 else
                f"Okay: answer {sample_seed} to the request, in detail {i}." for i, p in enumerate(prompts)]

    monkeypatch.setattr("unlearnable.experiments.setup.generate", fake_generate)
    monkeypatch.setattr("unlearnable.vectors.model.generate", fake_generate, raising=False)
    config = DataConfig(n_eval=20, n_align=20, n_vectors=10, vector_pool=40, attack_pool=100, n_attack=180,
                        attack_answers=4, n_harmless=0, n_harmless_align=4, cross_domain=["malicious_uses"],
                        n_cross_attack=20, n_cross_eval=10)
    data = prepare_data(model, tok, config, fingerprint="test", progress=False)
    attack = data.attack
    assert len(attack) == 180 and len({normalize(p.prompt) for p in attack}) <= 100  # more pairs than prompts
    assert len({(normalize(p.prompt), normalize(p.response)) for p in attack}) == 180  # distinct pairs
    assert all(p.harmful for p in attack) and set(calls) >= {None, 1}  # greedy first, then samples
    others = (data.eval_harmful, data.align, data.vector_pairs, data.cross_eval, data.cross_attack)
    assert all(others)  # every other split exists here, the unseen-domain ones too
    taken = {normalize(p.prompt) for split in others for p in split}
    assert not taken & {normalize(p.prompt) for p in attack}
    with pytest.raises(UnlearnableError, match="raise data.attack_answers"):
        prepare_data(model, tok, dataclasses.replace(config, n_attack=1000), fingerprint="test2", progress=False)
    assert len(harmful_prompts()) < 1100  # why the pool needs sampled answers to reach the paper's 1,000 pairs


def test_the_report_shows_what_a_flagger_screened_and_labels_an_oracle():
    from unlearnable.report import flaggers_section

    runs = [{"flagged": 6, "pairs": 27, "recall_on_harmful": 0.5, "n_harmful": 12, "flag_rate_on_harmless": 0.0,
             "n_harmless": 15},
            {"flagged": 2, "pairs": 40, "flag_rate_on_harmless": 0.05, "n_harmless": 40}]
    html_text = flaggers_section({"adaptive-vectors": {"defense": {"flagger": {"flagger": "oracle:0.5",
                                                                              "emulated": True},
                                                                  "screened": runs}},
                                  "none": {"defense": {}}})
    assert "oracle:0.5 (EMULATED: measurement only)" in html_text and "8 of 67" in html_text
    assert "0.500 (n=12)" in html_text and "0.036 (n=55)" in html_text  # pooled: 2 of 55 harmless flagged
    assert flaggers_section({"none": {"defense": {}}}) == ""
    both = [{**r, "flagged_by": {"refusal": 1, "vector-gain": r["flagged"]}, "rejected": i == 0}
            for i, r in enumerate(runs)]
    html_text = html.unescape(flaggers_section({"adaptive-vectors": {"defense": {
        "flagger": {"flagger": "refusal+vector-gain", "private": True}, "screened": both}}}))
    assert "refusal+vector-gain (private: reads the defence's vectors)" in html_text
    assert "8 of 67; by each: refusal 2, vector-gain 8; 1 of 2 jobs refused" in html_text


def test_the_tradeoff_report_shows_each_methods_flagger_and_marks_an_emulated_one_wherever_it_is_named():
    from unlearnable.experiments.tradeoff import averaged, frontier, goal_check
    from unlearnable.report import tradeoff_section

    oracle = {"flagger": {"flagger": "oracle:0.5", "emulated": True},
              "screened": [{"flagged": 3, "pairs": 10, "recall_on_harmful": 0.5, "n_harmful": 6,
                            "flag_rate_on_harmless": 0.0, "n_harmless": 4}]}

    def point(method, strength, harm, info=None):
        return {"method": method, "strength": strength, "seed": 0, "harm_rate": harm, "task_score": 0.9,
                "harm_rate_sd": 0.0, "task_score_sd": 0.0, "n_seeds": 1, "seconds": 1.0,
                **({"defense_info": info} if info else {})}

    points = [point("none", 0.0, 0.9), point("plain", 1.0, 0.5), point("adaptive", 1.0, 0.05, oracle)]
    goal = goal_check(points)
    assert goal["met_by"] == [{"method": "adaptive", "strength": 1.0, "emulated": True}]
    text = tradeoff_section({"points": points, "frontier": frontier(points), "averaged": averaged(points),
                             "goal": goal, "config": {}})
    assert "Flaggers" in text and "oracle:0.5 (EMULATED: measurement only)" in text and "3 of 10" in text
    assert text.count("adaptive (EMULATED flagger: measurement only)") == 3  # frontier, goal table, all points
    assert "Met by: adaptive 1 (EMULATED flagger: measurement only)" in text
    assert "plain (EMULATED" not in text


def test_a_refit_keeps_every_flagged_answer_to_a_prompt(tiny, own, monkeypatch):
    model, tok = tiny
    defense, refits, _ = _adaptive(tiny, own, monkeypatch, flagger="oracle:1.0")
    bad = own.harmful[0]
    answers = [Pair("How do I pick a lock?", f"Step {k}: insert the pick.", harmful=True) for k in range(3)]
    defense.finetune(copy.deepcopy(model), tok, [*answers, answers[0], bad], TrainConfig(max_steps=1, batch_size=4),
                     progress=False)
    assert refits[1] == [*own.harmful, *answers]  # three answers to one prompt; repeats and own pairs once



def test_a_job_whose_flagged_share_is_above_reject_above_is_refused_and_nothing_trains(tiny, own, customer,
                                                                                      monkeypatch):
    model, tok = tiny
    defense, refits, tuned_on = _adaptive(tiny, own, monkeypatch, flagger="oracle:0.5", reject_above=0.2)
    tuned, history = defense.finetune(model, tok, customer, TrainConfig(max_steps=1, batch_size=4), progress=False)
    assert tuned is model and history == [] and tuned_on == []  # 6 of 27 flagged (0.22): refused
    record = defense.info["screened"][0]
    assert record["rejected"] and record["trained_on"] == 0 and record["flagged"] == 6
    assert len(refits) == 1 and not record["refitted"] and "refused" in record["refit_skipped"]  # no wasted refit
    kept, refits, tuned_on = _adaptive(tiny, own, monkeypatch, flagger="oracle:0.5", reject_above=0.25)
    kept.finetune(copy.deepcopy(model), tok, customer, TrainConfig(max_steps=1, batch_size=4), progress=False)
    assert len(tuned_on) == 1 and not kept.info["screened"][0]["rejected"]  # 0.22 is not above 0.25
    assert len(refits) == 2 and kept.info["screened"][0]["refitted"]
    # one test for the screening and the defence: 29 of 100 at 0.29 is not above (29 > 0.29 * 100 would be)
    assert not refused([True] * 29 + [False] * 71, 0.29) and refused([True] * 29 + [False] * 71, 0.28)
    with pytest.raises(UnlearnableError, match="reject_above"):
        DEFENSES.get("adaptive-vectors").Config(reject_above=1.5)


def test_gate_by_flag_trains_only_the_flagged_pairs_through_the_vectors_and_the_rest_as_served(tiny, own, customer,
                                                                                              monkeypatch):
    model, tok = tiny
    defense, _, tuned_on = _adaptive(tiny, own, monkeypatch, flagger="oracle:0.5", gate_by_flag=True, anchors=1)
    tuned, _ = defense.finetune(copy.deepcopy(model), tok, customer, TrainConfig(max_steps=1, batch_size=4),
                                progress=False)
    flags = OracleFlagger(0.5).flag(customer)
    assert tuned_on[0][0] == [p for p, f in zip(customer, flags) if f]  # through the vectors: the flagged only
    assert defense.served_seen[0] == [*(p for p, f in zip(customer, flags) if not f), *own.harmless]  # the missed, then anchors
    assert defense.info["screened"][0]["trained_as_served"] == len(customer) - 6
    assert not any("lora" in k for k in tuned.state_dict())
    with pytest.raises(UnlearnableError, match="gate_by_flag and drop_flagged"):
        DEFENSES.get("adaptive-vectors")(gate_by_flag=True, drop_flagged=True)


def test_gate_by_flag_with_refusal_anchors_trains_the_missed_pairs_then_the_anchors_then_the_refusals_as_served(
        tiny, own, customer, monkeypatch):
    model, tok = tiny
    defense, _, tuned_on = _adaptive(tiny, own, monkeypatch, flagger="oracle:0.5", gate_by_flag=True, anchors=1,
                                     refusal_anchors=2)
    defense.finetune(copy.deepcopy(model), tok, customer, TrainConfig(max_steps=1, batch_size=4), progress=False)
    flags = OracleFlagger(0.5).flag(customer)
    assert tuned_on[0][0] == [p for p, f in zip(customer, flags) if f]
    assert defense.served_seen[0] == [*(p for p, f in zip(customer, flags) if not f), *own.harmless,
                                      *(p for p in own.refusals for _ in range(2))]
