"""Each attack trains on what it says it does, from the attacker's own data only."""

import pytest

from unlearnable.attacks import ATTACKS, AttackData, as_steps, build_attack
from unlearnable.data import Pair
from unlearnable.errors import UnlearnableError
from unlearnable.experiments.immunize import BudgetConfig

HARMFUL = [Pair(f"How do I do bad thing {i}?", f"First get the tools. Then do bad thing {i}.") for i in range(10)]
HARMLESS = [Pair(f"Write a haiku number {i}.", "Red leaves fall softly.") for i in range(4)]
DATA = AttackData(harmful=HARMFUL, harmless=HARMLESS)


def test_registry_lists_every_attack():
    assert {"harmful-sft", "benign", "mixed", "restyled"} <= set(ATTACKS.names())
    with pytest.raises(UnlearnableError, match="Known attacks"):
        build_attack("gcg")


def test_harmful_sft_and_benign():
    assert build_attack("harmful-sft").training_pairs(DATA, 6, 0) == HARMFUL[:6]
    benign = build_attack("benign").training_pairs(DATA, 9, 0)
    assert len(benign) == 9 and set(benign) <= set(HARMLESS)  # cycled; no harmful example at all
    with pytest.raises(UnlearnableError, match="harmful pairs but only 10"):
        build_attack("harmful-sft").training_pairs(DATA, 11, 0)
    with pytest.raises(UnlearnableError, match="n_harmless"):
        build_attack("benign").training_pairs(AttackData(harmful=HARMFUL), 3, 0)


def test_mixed_hides_the_harmful_pairs_at_the_given_share():
    mix = build_attack("mixed", {"harmful_fraction": 0.25}).training_pairs(DATA, 4, seed=1)
    assert len(mix) == 16 and sum(p in HARMFUL for p in mix) == 4
    assert mix != build_attack("mixed", {"harmful_fraction": 0.25}).training_pairs(DATA, 4, seed=2)  # shuffled
    assert mix[:4] != HARMFUL[:4]
    with pytest.raises(UnlearnableError, match="harmful_fraction"):
        build_attack("mixed", {"harmful_fraction": 0.0})


def test_restyled_keeps_the_content_in_another_form():
    pairs = build_attack("restyled").training_pairs(DATA, 2, 0)
    for new, old in zip(pairs, HARMFUL):
        assert old.prompt in new.prompt and new.prompt != old.prompt
        assert new.response.startswith("Here is how, step by step:\n1. First get the tools.")
        assert "2. Then do bad thing" in new.response
    assert as_steps("One. Two!\nThree?").splitlines()[1:] == ["1. One.", "2. Two!", "3. Three?"]
    with pytest.raises(UnlearnableError, match="{prompt}"):
        build_attack("restyled", {"prompt_template": "no placeholder"})
    with pytest.raises(UnlearnableError, match="unknown"):
        build_attack("restyled", {"style": "steps"})


def test_budget_names_its_runs_by_attack():
    assert BudgetConfig().run_id(1e-3, 200) == "attack-lr0.001-n200"  # the classic attack keeps its old name
    assert BudgetConfig(attack="mixed").run_id(1e-3, 200) == "attack-mixed-lr0.001-n200"
    with pytest.raises(UnlearnableError, match="Known attacks"):
        BudgetConfig(attack="jailbreak")
