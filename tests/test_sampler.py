"""The length-bucketed sampler: every example once per epoch, little padding, repeated examples spread out."""

import torch
from transformers.trainer_pt_utils import get_length_grouped_indices

from unlearnable.training import bucketed_length_grouped_indices


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
