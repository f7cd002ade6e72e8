"""The length-bucketed sampler: every example once per epoch, little padding, repeated examples spread out."""

import pytest
import torch
from transformers.trainer_pt_utils import get_length_grouped_indices

from unlearnable.training import bucketed_length_grouped_indices, spread_evenly


def _gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _dataset():
    # 40 "facts" of 20-27 tokens, each repeated 8 times, plus 200 "harmful" rows of 50-64 tokens
    lengths, fact = [], []
    for f in range(40):
        lengths += [20 + f % 8] * 8
        fact += [f] * 8
    lengths += [50 + i % 15 for i in range(200)]
    fact += [None] * 200
    return lengths, fact


def _batches(order, size=16):
    return [order[i:i + size] for i in range(0, len(order), size)]


def test_every_example_once_and_deterministic_per_seed():
    lengths, _ = _dataset()
    a = bucketed_length_grouped_indices(lengths, 16, _gen(3))
    assert sorted(a) == list(range(len(lengths)))
    assert a == bucketed_length_grouped_indices(lengths, 16, _gen(3))
    assert a != bucketed_length_grouped_indices(lengths, 16, _gen(4))


def test_padding_stays_low():
    lengths, _ = _dataset()

    def pad(order):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in _batches(order))

    ours = pad(bucketed_length_grouped_indices(lengths, 16, _gen(0)))
    shuffled = pad(torch.randperm(len(lengths), generator=_gen(0)).tolist())
    assert ours < 0.35 * shuffled


def test_copies_of_a_repeated_example_are_spread_over_batches():
    """Trainer's exact-length sort puts the copies of a fact in one batch; buckets spread them out."""
    lengths, fact = _dataset()

    def batches_per_fact(order):
        seen = {}
        for k, b in enumerate(_batches(order)):
            for i in b:
                if fact[i] is not None:
                    seen.setdefault(fact[i], set()).add(k)
        return sum(len(v) for v in seen.values()) / len(seen)

    ours = sum(batches_per_fact(bucketed_length_grouped_indices(lengths, 16, _gen(s))) for s in range(5)) / 5
    trainer = sum(batches_per_fact(get_length_grouped_indices(lengths, 16, generator=_gen(s))) for s in range(5)) / 5
    assert ours > 5.0 and ours > trainer + 1.5


def test_spread_rows_are_left_out_of_the_grouping_and_placed_evenly():
    """60 short mixed-in rows (refusals, anchors) among 240 longer ones: grouped by length they fill batches of
    their own (or nearly); spread, every batch of 16 holds its share (3 or 4), and each row still comes once."""
    lengths = [50 + i % 15 for i in range(240)] + [8] * 60
    spread = [False] * 240 + [True] * 60
    grouped = bucketed_length_grouped_indices(lengths, 16, _gen(0))
    assert max(sum(i >= 240 for i in b) for b in _batches(grouped)) >= 10  # batches mostly of refusals
    order = bucketed_length_grouped_indices(lengths, 16, _gen(0), spread=spread)
    assert sorted(order) == list(range(300))
    assert {sum(i >= 240 for i in b) for b in _batches(order) if len(b) == 16} <= {3, 4}
    assert order == bucketed_length_grouped_indices(lengths, 16, _gen(0), spread=spread)
    assert order != bucketed_length_grouped_indices(lengths, 16, _gen(1), spread=spread)
    assert bucketed_length_grouped_indices(lengths, 16, _gen(0), spread=[False] * 300) == grouped
    with pytest.raises(ValueError, match="one spread flag per row"):
        bucketed_length_grouped_indices(lengths, 16, _gen(0), spread=[True] * 299)


def test_spread_evenly_keeps_the_order_of_the_rest():
    assert spread_evenly([0, 1, 2, 3, 4, 5], [9, 8]) == [0, 1, 9, 2, 3, 4, 8, 5]
    assert spread_evenly([0, 1], []) == [0, 1] and spread_evenly([], [7, 6]) == [7, 6]


@pytest.mark.parametrize("spread", [False, True])
def test_training_spreads_the_mixed_in_rows_only_when_asked(tiny, monkeypatch, spread):
    from unlearnable import training
    from unlearnable.data import Pair

    model, tok = tiny
    seen, real = [], training.bucketed_length_grouped_indices
    monkeypatch.setattr(training, "bucketed_length_grouped_indices",
                        lambda *a, **kw: (seen.append(kw.get("spread")), real(*a, **kw))[1])
    pairs = [Pair(f"Question {i}?", "A long answer. " * 6) for i in range(6)] + [Pair("Bad?", "No.", mixed=True)] * 2
    training.finetune(model, tok, pairs, training.TrainConfig(max_steps=1, batch_size=4, spread_mixed=spread),
                      progress=False)
    assert seen[0] == ([False] * 6 + [True] * 2 if spread else None)


def test_runs_from_before_spread_mixed_keep_their_key():
    import dataclasses

    from unlearnable.training import TrainConfig, keyed

    before = {k: v for k, v in dataclasses.asdict(TrainConfig()).items() if k != "spread_mixed"}
    assert keyed(dataclasses.asdict(TrainConfig())) == keyed(before)
    assert keyed(dataclasses.asdict(TrainConfig(spread_mixed=True))) != keyed(before)
