"""Vector variants, each by its defining property, on the tiny random model."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import TrainerCallback

from unlearnable.data import encode_pair
from unlearnable.defenses import DEFENSES, SERVICE, DefenseData
from unlearnable.defenses import gated_vectors as gated_module
from unlearnable.defenses.alternating_vectors import AlternatingTrainer
from unlearnable.defenses.gated_vectors import GATE, GatedTrainer, loss_gaps
from unlearnable.errors import UnlearnableError
from unlearnable.training import BACKBONE_ADAPTER, Collator, TrainConfig, UnlearnableTrainer, training_arguments
from unlearnable.vectors import SecurityVectors, VectorConfig, vector_params
from unlearnable.vectors.finetuning import trainable_with_vectors


@pytest.fixture()
def trained(tiny, harmful_pairs):
    model, tok = tiny
    vectors = SecurityVectors.train(model, tok, harmful_pairs, VectorConfig(epochs=4, batch_size=8, lr=1e-2),
                                    progress=False)
    return model, tok, vectors


def with_vectors(model, vectors, scale=1.0):
    """The training network: vectors on and frozen, a backbone LoRA whose B is drawn at random (not zero)."""
    net, _ = trainable_with_vectors(copy.deepcopy(model), vectors, scale, TrainConfig(), foldable=False)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if f"lora_B.{BACKBONE_ADAPTER}" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return net


def without_vectors(model, net):
    """The same backbone LoRA (same weights) on the plain model: what training with no defence sees."""
    from peft import get_peft_model

    plain = get_peft_model(copy.deepcopy(model), TrainConfig().lora.peft_config(model), adapter_name=BACKBONE_ADAPTER)
    source = dict(net.named_parameters())
    with torch.no_grad():
        for name, p in plain.named_parameters():
            if BACKBONE_ADAPTER in name:
                p.copy_(source[name])
    return plain


def trainer(cls, net, tok, tmp_path, **kw):
    cfg = TrainConfig(batch_size=4, max_steps=1)
    t = cls(model=net, args=training_arguments(cfg, tmp_path, torch.device("cpu"), progress=False),
            train_dataset=[], data_collator=Collator(tok.pad_token_id), **kw)
    t.current_gradient_accumulation_steps = 1
    return t


def backbone_grads(cls, net, batch, tok, tmp_path):
    net.eval()  # no dropout: the two runs compared must be deterministic
    net.zero_grad(set_to_none=True)
    trainer(cls, net, tok, tmp_path).compute_loss(net, batch).backward()
    return {n: p.grad.clone() for n, p in net.named_parameters() if BACKBONE_ADAPTER in n and p.grad is not None}


def batch_of(tok, pairs, gates=None):
    rows = [encode_pair(tok, p, 256) for p in pairs]
    if gates is not None:
        assert len(gates) == len(rows)
        rows = [{**r, GATE: g} for r, g in zip(rows, gates)]
    return Collator(tok.pad_token_id)(rows)


def test_variants_are_registered_service_only():
    for name in ("gated-vectors", "alternating-vectors", "augmented-vectors", "early-stopped-vectors",
                 "varied-vectors", "negated-vectors"):
        assert DEFENSES.get(name).threat_models == (SERVICE,)


# ------------------------------------------------------------------------------------------------- gated

def test_a_closed_gate_trains_exactly_as_without_vectors(trained, task_pairs, tmp_path):
    model, tok, vectors = trained
    net = with_vectors(model, vectors)
    plain = without_vectors(model, net)
    closed = backbone_grads(GatedTrainer, net, batch_of(tok, task_pairs, gates=[0] * len(task_pairs)), tok, tmp_path / "g")
    reference = backbone_grads(UnlearnableTrainer, plain, batch_of(tok, task_pairs), tok, tmp_path / "p")
    assert closed.keys() == reference.keys() and closed
    assert all(torch.allclose(closed[k], reference[k], rtol=1e-6, atol=1e-8) for k in closed)
    opened = backbone_grads(GatedTrainer, net, batch_of(tok, task_pairs, gates=[1] * len(task_pairs)), tok, tmp_path / "o")
    on = backbone_grads(UnlearnableTrainer, net, batch_of(tok, task_pairs), tok, tmp_path / "n")
    assert all(torch.allclose(opened[k], on[k], rtol=1e-6, atol=1e-8) for k in opened)  # open: the vectors act
    assert not all(torch.allclose(opened[k], closed[k], atol=1e-6) for k in opened)


def test_a_mixed_batch_is_the_token_weighted_whole(trained, task_pairs, tmp_path):
    model, tok, vectors = trained
    net = with_vectors(model, vectors)
    t = trainer(GatedTrainer, net, tok, tmp_path)
    task_pairs = task_pairs[:3]
    mixed = batch_of(tok, task_pairs, gates=[1, 0, 1])
    with torch.no_grad():
        whole = t.compute_loss(net, mixed)
        opened = t.compute_loss(net, batch_of(tok, [task_pairs[0], task_pairs[2]], gates=[1, 1]))
        closed = t.compute_loss(net, batch_of(tok, [task_pairs[1]], gates=[0]))
    n = [int((batch_of(tok, pairs)["labels"][:, 1:] != -100).sum()) for pairs in
         ([task_pairs[0], task_pairs[2]], [task_pairs[1]])]
    assert whole.item() == pytest.approx((opened.item() * n[0] + closed.item() * n[1]) / sum(n), rel=1e-5)


def test_gated_defence_opens_the_gate_where_the_vectors_lower_the_loss(trained, harmful_pairs, task_pairs,
                                                                       monkeypatch):
    model, tok, vectors = trained
    pairs = harmful_pairs[:4] + task_pairs[:3]
    before = {k: (v.clone(), v.requires_grad) for k, v in model.named_parameters()}
    for p in model.parameters():  # one weight that trains, the others frozen: each stays as it is
        p.requires_grad_(False)
    model.model.embed_tokens.weight.requires_grad_(True)
    gaps = loss_gaps(model, tok, vectors, pairs, 1.0)
    assert min(gaps[:4]) > 0.5  # the vectors explain the harmful data they were trained on
    after = dict(model.named_parameters())  # the vectors measured on the model itself, and removed after
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, (v, _) in before.items())
    assert model.model.embed_tokens.weight.requires_grad and sum(p.requires_grad for p in after.values()) == 1
    for k, p in model.named_parameters():
        p.requires_grad_(before[k][1])
    seen = {}
    monkeypatch.setattr(gated_module, "finetune", lambda *a, **kw: (seen.update(kw), (a[0], []))[1])
    threshold = sorted(gaps)[3]  # exactly three pairs above it
    defense = DEFENSES.get("gated-vectors")(vectors=vectors, scale=1.0, threshold=threshold)
    defense.finetune(model, tok, pairs, TrainConfig(), progress=False)
    assert seen["columns"][GATE] == [int(g > threshold) for g in gaps] and sum(seen["columns"][GATE]) == 3
    assert seen["fold"] is False and defense.info["gates"] == [{"pairs": 7, "open": 3,
                                                                "threshold": round(threshold, 4)}]


def test_a_calibrated_gate_takes_its_threshold_from_the_defences_harmless_pairs(trained, harmful_pairs,
                                                                               task_pairs):
    from unlearnable.errors import UnlearnableError

    model, tok, vectors = trained
    harmless = task_pairs[:8]
    defense = DEFENSES.get("gated-vectors")(vectors=vectors, scale=1.0, threshold=None, harmless_quantile=0.75)
    defense.prepare(model, tok, DefenseData(harmful=harmful_pairs, harmless=harmless))
    gaps = sorted(loss_gaps(model, tok, vectors, harmless, 1.0))
    assert gaps[5] <= defense.threshold <= gaps[6]  # the 0.75 quantile of 8 gaps lies between the 6th and 7th
    calib = defense.info["calibration"]
    assert calib["harmful_gaps"]["median"] > calib["harmless_gaps"]["median"] and calib["harmful_open"] > 0.5
    with pytest.raises(UnlearnableError, match="set a threshold"):
        DEFENSES.get("gated-vectors")(vectors=vectors, threshold=None).prepare(model, tok,
                                                                             DefenseData(harmful=harmful_pairs))
    with pytest.raises(UnlearnableError, match="harmless_quantile"):
        DEFENSES.get("gated-vectors")(vectors=vectors, harmless_quantile=1.0)


@pytest.mark.parametrize("name", ["gated-vectors", "alternating-vectors", "augmented-vectors",
                                  "early-stopped-vectors", "varied-vectors", "negated-vectors"])
def test_the_served_model_has_no_vectors(trained, harmful_pairs, task_pairs, name):
    model, tok, vectors = trained
    snapshot = {k: v.clone() for k, v in vectors.state.items()}
    defense = DEFENSES.get(name)(vectors=vectors, scale=1.0)
    defense.prepare(model, tok, DefenseData(harmful=harmful_pairs))
    tuned, _ = defense.finetune(copy.deepcopy(model), tok, task_pairs * 4 + harmful_pairs[:4],
                                TrainConfig(epochs=1, batch_size=4, lr=5e-3), progress=False)
    assert not any("lora" in k for k in tuned.state_dict())
    assert tuned.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(snapshot[k], vectors.state[k]) for k in snapshot)  # the defence's vectors: untouched


# ------------------------------------------------------------------------------------------------- alternating

def test_a_refit_changes_only_the_vectors(trained, harmful_pairs, tmp_path):
    model, tok, vectors = trained
    net = with_vectors(model, vectors)
    rows = [encode_pair(tok, p, 256) for p in harmful_pairs]
    t = trainer(AlternatingTrainer, net, tok, tmp_path, harmful=rows, every=1, steps=3, lr=1e-2, target_loss=0.0)
    vec = {k: v.detach().clone() for k, v in vector_params(net).items()}
    rest = {n: p.detach().clone() for n, p in net.named_parameters() if "security_vectors" not in n}
    record = t.refit(net)
    assert record["steps"] == 3
    assert any(not torch.equal(v, vector_params(net)[k]) for k, v in vec.items())
    assert all(torch.equal(p, rest[n]) for n, p in net.named_parameters() if n in rest)
    assert all(p.grad is None for p in net.parameters())
    assert not any(p.requires_grad for p in vector_params(net).values())  # frozen again for the backbone


def test_alternating_vectors_change_only_at_refits(trained, harmful_pairs, task_pairs, monkeypatch):
    from unlearnable.vectors import finetuning

    model, tok, vectors = trained
    changed_at: list[int] = []

    class Watch(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            now = {k: v.detach().clone() for k, v in vector_params(model).items()}
            if getattr(self, "last", None) is not None and any(not torch.equal(now[k], self.last[k]) for k in now):
                changed_at.append(state.global_step)
            self.last = now

        def on_train_begin(self, args, state, control, model=None, **kw):
            self.last = {k: v.detach().clone() for k, v in vector_params(model).items()}

    real = finetuning.train
    monkeypatch.setattr(finetuning, "train", lambda *a, callbacks=(), **kw: real(*a, callbacks=[*callbacks, Watch()],
                                                                                **kw))
    defense = DEFENSES.get("alternating-vectors")(vectors=vectors, scale=1.0, every=3, refit_steps=2,
                                                  refit_target_loss=0.0)
    defense.prepare(model, tok, DefenseData(harmful=harmful_pairs))
    defense.finetune(copy.deepcopy(model), tok, task_pairs * 8, TrainConfig(max_steps=10, batch_size=2, lr=5e-3),
                     progress=False)
    # a refit runs at the start of steps 3, 6 and 9 (counted from 0), so the vectors differ after steps 4, 7, 10
    assert changed_at == [4, 7, 10]
    assert defense.info["refits"] == [{"refits": 3, "steps": 6}]


# ------------------------------------------------------------------------------------------------- augmented

def test_augmented_pairs_are_styled_copies_never_in_the_restyled_attacks_style(harmful_pairs):
    from unlearnable.attacks import AttackData, build_attack
    from unlearnable.vectors.augment import augmented

    pairs = harmful_pairs[:5]
    out = augmented(pairs, 3, seed=0)
    assert out[:5] == pairs and len(out) == 5 * 4 and out == augmented(pairs, 3, seed=0)
    assert augmented(pairs, 3, seed=1) != out
    for i, pair in enumerate(pairs):
        copies = out[5 + 3 * i:5 + 3 * (i + 1)]
        assert len({(c.prompt, c.response) for c in copies}) == 3 and pair not in copies
        assert all(pair.prompt in c.prompt and pair.response in c.response for c in copies)
    attack = build_attack("restyled").training_pairs(AttackData(harmful=pairs), 5, 0)
    framing = attack[0].prompt.split(pairs[0].prompt)[0]
    assert not any(framing in c.prompt or "step by step" in c.response for c in out)


def test_augmented_vectors_train_on_the_pairs_and_their_styled_copies(tiny, harmful_pairs, monkeypatch):
    import unlearnable.defenses.augmented_vectors as module

    seen = []
    real = module.SecurityVectors.train
    monkeypatch.setattr(module.SecurityVectors, "train", lambda m, t, pairs, cfg, **kw: (seen.append(len(pairs)),
                                                                                         real(m, t, pairs, cfg, **kw))[1])
    model, tok = tiny
    defense = DEFENSES.get("augmented-vectors").from_options(
        {"augment": 2, "training": {"epochs": 1, "batch_size": 8}})
    defense.prepare(model, tok, DefenseData(harmful=harmful_pairs[:6]), progress=False)
    assert seen == [18] and defense.info["vectors"]["n_pairs"] == 18


# ------------------------------------------------------------------------------------------------- early-stopped

def test_keep_best_restores_the_vectors_of_the_lowest_held_out_loss_and_stops_after_patience(trained, harmful_pairs,
                                                                                               monkeypatch):
    from transformers import TrainerControl, TrainerState

    from unlearnable.vectors import holdout

    model, tok, vectors = trained
    net = vectors.attach(copy.deepcopy(model), scale=1.0)
    losses = iter([3.0, 2.0, 2.5, 2.6, 2.7])
    monkeypatch.setattr(holdout, "example_losses", lambda *a, **kw: [next(losses)])
    keep = holdout.KeepBestOnHeldOut(tok, harmful_pairs[:1], every=2, patience=2)
    params, kept = vector_params(net), None
    state, control = TrainerState(), TrainerControl()
    for step in range(1, 9):
        with torch.no_grad():  # a training step: every vector moves
            for p in params.values():
                p.add_(0.01 * step)
        state.global_step = step
        keep.on_step_end(None, state, control, model=net)
        if step == 4:  # the second check, the lowest loss
            kept = {k: v.detach().clone() for k, v in params.items()}
        if control.should_training_stop:
            break
    assert step == 8 and keep.curve == [(2, 3.0), (4, 2.0), (6, 2.5), (8, 2.6)]  # two checks without a new lowest
    keep.restore(net)
    assert all(torch.equal(params[k], v) for k, v in kept.items())
    assert keep.record()["best_step"] == 4 and keep.record()["best_loss"] == 2.0


def _run_checks(keep, net, steps):
    """Steps 1..steps of a fake training (every vector moves each step); the vectors at each check, by step."""
    from transformers import TrainerControl, TrainerState

    params, seen = vector_params(net), {}
    state, control = TrainerState(), TrainerControl()
    for step in range(1, steps + 1):
        with torch.no_grad():
            for p in params.values():
                p.add_(0.01 * step)
        state.global_step = step
        keep.on_step_end(None, state, control, model=net)
        if step % keep.every == 0:
            seen[step] = {k: v.detach().clone() for k, v in params.items()}
        if control.should_training_stop:
            break
    return step, seen


@pytest.mark.parametrize("pick, kept", [("lowest", 4), ("latest-within-1se", 6)])
def test_the_pick_keeps_the_lowest_check_or_the_latest_the_held_out_pairs_cannot_tell_from_it(
        trained, harmful_pairs, monkeypatch, pick, kept):
    from unlearnable.vectors import holdout

    model, tok, vectors = trained
    net = vectors.attach(copy.deepcopy(model), scale=1.0)
    per_pair = iter([[3.0, 3.0, 3.0, 3.0],
                     [2.0, 1.0, 2.0, 1.0],   # step 4: the lowest (1.5)
                     [2.3, 0.8, 2.2, 1.0],   # step 6: 1.575, above it by less than the noise of its difference
                     [2.3, 1.3, 2.4, 1.4]])  # step 8: 1.85, above it on every pair
    monkeypatch.setattr(holdout, "example_losses", lambda *a, **kw: next(per_pair))
    keep = holdout.KeepBestOnHeldOut(tok, harmful_pairs[:4], every=2, patience=2, pick=pick)
    stopped, seen = _run_checks(keep, net, 12)
    assert stopped == 8 and keep.record()["best_step"] == 4  # patience counts from the lowest either way
    keep.restore(net)
    params = vector_params(net)
    assert all(torch.equal(params[k], v) for k, v in seen[kept].items())
    record = keep.record()
    assert record["kept_step"] == kept and record["pick"] == pick and record["pair_losses"]["6"] == [2.3, 0.8, 2.2, 1.0]
    assert record["kept_loss"] == pytest.approx(dict(keep.curve)[kept])


def test_within_one_se_is_paired_over_the_held_out_pairs():
    from unlearnable.vectors.holdout import within_one_se

    lowest = [1.0, 5.0, 2.0, 8.0]
    assert within_one_se(lowest, lowest)
    assert within_one_se([1.3, 4.8, 2.2, 7.9], lowest)  # mean +0.05, differences spread by ~0.2
    assert not within_one_se([1.1, 5.1, 2.1, 8.1], lowest)  # +0.1 on every pair: no noise to hide in
    assert not within_one_se([1.1], [1.0]) and within_one_se([1.0], [1.0])  # one pair: no standard error


def test_a_pick_past_a_nan_lowest_keeps_that_check(trained, harmful_pairs, monkeypatch):
    from unlearnable.vectors import holdout

    model, tok, vectors = trained
    net = vectors.attach(copy.deepcopy(model), scale=1.0)
    per_pair = iter([[float("nan"), 1.0], [2.0, 2.0], [2.0, 2.0]])  # a diverged first check is never beaten
    monkeypatch.setattr(holdout, "example_losses", lambda *a, **kw: next(per_pair))
    keep = holdout.KeepBestOnHeldOut(tok, harmful_pairs[:2], every=1, patience=2, pick="latest-within-1se")
    _run_checks(keep, net, 5)
    assert keep.kept_step() == 1 and keep.record()["kept_step"] == 1


def test_a_pick_outside_the_choices_is_one_line(tiny):
    from unlearnable.vectors import holdout

    with pytest.raises(UnlearnableError, match="holdout_pick must be one of"):
        VectorConfig(holdout=0.2, holdout_pick="median")
    with pytest.raises(UnlearnableError, match="pick must be one of"):
        DEFENSES.get("early-stopped-vectors").from_options({"pick": "median"})
    with pytest.raises(UnlearnableError, match="pick must be one of"):
        holdout.KeepBestOnHeldOut(tiny[1], [], every=1, patience=1, pick="median")


def test_early_stopped_vectors_never_train_on_their_held_out_pairs(tiny, harmful_pairs, monkeypatch):
    import unlearnable.vectors.model as vm

    model, tok = tiny
    seen = []
    real = vm.train
    monkeypatch.setattr(vm, "train", lambda m, t, pairs, *a, **kw: (seen.append(list(pairs)),
                                                                      real(m, t, pairs, *a, **kw))[1])
    defense = DEFENSES.get("early-stopped-vectors").from_options(
        {"holdout": 0.25, "epochs": 3, "training": {"batch_size": 4, "lr": 1e-2, "holdout_every": 1}})
    defense.prepare(model, tok, DefenseData(harmful=harmful_pairs), progress=False)
    record = defense.info["vectors"]["holdout"]
    assert record["n_heldout"] == 6 and len(seen[0]) == 18 and all(p in harmful_pairs for p in seen[0])
    meta = defense.vectors.metadata
    assert meta["n_pairs"] == 24  # the metadata names every pair the defence used, the held-out ones too
    assert meta["config"]["holdout"] == 0.25 and meta["config"]["target_loss"] == 0.0
    assert record["best_loss"] == min(loss for _, loss in record["curve"])
    assert meta["steps"] <= record["best_step"] + meta["config"]["patience"] * meta["config"]["holdout_every"]
    held = [p for p in harmful_pairs if p not in seen[0]]
    from unlearnable.generation import example_losses

    net = defense.vectors.attach(copy.deepcopy(model), scale=1.0)  # the kept vectors, at the strength they trained at
    again = example_losses(net, tok, held)
    assert sum(again) / len(again) == pytest.approx(record["best_loss"], rel=1e-3)


def test_holdout_settings_are_checked(harmful_pairs):
    from unlearnable.vectors.holdout import split_holdout

    with pytest.raises(UnlearnableError, match="holdout"):
        VectorConfig(holdout=1.0)
    with pytest.raises(UnlearnableError, match="no held-out or no training pair"):
        split_holdout(harmful_pairs[:2], 0.1, seed=0)
    with pytest.raises(UnlearnableError, match="early-stopped-vectors holdout"):
        DEFENSES.get("early-stopped-vectors")(holdout=0.0)
    train, held = split_holdout(harmful_pairs, 0.25, seed=0)
    assert len(held) == 6 and sorted(train + held, key=harmful_pairs.index) == harmful_pairs
    assert split_holdout(harmful_pairs, 0.25, seed=1)[1] != held


def test_every_answer_to_a_held_out_prompt_is_held_out_with_it(harmful_pairs):
    import random

    from unlearnable.data import Pair
    from unlearnable.vectors.holdout import split_holdout

    pool = [Pair(p.prompt, f"{p.response} (answer {k})") for p in harmful_pairs[:8] for k in range(3)]
    train, held = split_holdout(pool, 0.25, seed=0)
    assert len(held) == 6 and not {p.prompt for p in train} & {p.prompt for p in held}
    # on distinct prompts, the same split as holding out a seeded share of indices
    order = list(range(len(harmful_pairs)))
    random.Random(0).shuffle(order)
    assert split_holdout(harmful_pairs, 0.25, seed=0)[1] == [harmful_pairs[i] for i in sorted(order[:6])]


# ------------------------------------------------------------------------------------------------- varied

def test_varied_copies_keep_the_answer_and_their_two_style_families_share_nothing(harmful_pairs):
    from unlearnable.attacks import AttackData, build_attack
    from unlearnable.vectors.augment import VARIED, varied

    pairs = harmful_pairs[:5]
    out = varied(pairs, 3, seed=0)
    assert out[:5] == pairs and len(out) == 5 * 4 and out == varied(pairs, 3, seed=0) != varied(pairs, 3, seed=1)
    for k, copy_ in enumerate(out[5:]):
        pair = pairs[k % 5]
        assert pair.prompt in copy_.prompt and copy_.prompt != pair.prompt
        words = pair.response.lower().replace(".", " ").split()
        assert all(w in copy_.response.lower() for w in words)  # the content, in another layout
    train, held = VARIED["train"], VARIED["heldout"]
    assert not set(train["framings"]) & set(held["framings"]) and not set(train["openers"]) & set(held["openers"])
    attack = build_attack("restyled").training_pairs(AttackData(harmful=pairs), 5, 0)
    framing = attack[0].prompt.split(pairs[0].prompt)[0]
    styled = out[5:] + varied(pairs, 3, seed=0, family="heldout")[5:]
    opener = attack[0].response.splitlines()[0]
    assert not any(framing in c.prompt or opener in c.response for c in styled)
    words = " ".join(" ".join(f["framings"] + f["openers"]) for f in VARIED.values()).lower()
    assert not any(w in words for w in ("step", "novel", "story", "fiction", "character", "1."))
    with pytest.raises(UnlearnableError, match="style family"):
        varied(pairs, 1, seed=0, family="fiction")


def test_varied_vectors_hold_out_by_pair_and_check_it_in_unseen_styles(tiny, harmful_pairs, monkeypatch):
    import unlearnable.vectors.model as vm
    from unlearnable.vectors import holdout
    from unlearnable.vectors.augment import VARIED

    model, tok = tiny
    seen, checked = [], []
    real_train, real_keep = vm.train, holdout.KeepBestOnHeldOut.__init__
    monkeypatch.setattr(vm, "train", lambda m, t, pairs, *a, **kw: (seen.append(list(pairs)),
                                                                      real_train(m, t, pairs, *a, **kw))[1])
    monkeypatch.setattr(holdout.KeepBestOnHeldOut, "__init__",
                        lambda self, t, held, **kw: (checked.extend(held), real_keep(self, t, held, **kw))[1])
    defense = DEFENSES.get("varied-vectors").from_options(
        {"holdout": 0.25, "styles": 2, "epochs": 1, "training": {"batch_size": 8, "lr": 1e-2}})
    defense.prepare(model, tok, DefenseData(harmful=harmful_pairs), progress=False)
    held = [p for p in harmful_pairs if p not in seen[0]]
    assert len(held) == 6 and len(seen[0]) == 18 * 3  # 18 training pairs and 2 styled copies of each
    assert not any(h.prompt in p.prompt for h in held for p in seen[0])  # no held-out pair, in any style
    assert checked[:6] == held and len(checked) == 12  # the held-out pairs, and each in a held-out style
    assert all(any(c.prompt == f.format(prompt=h.prompt) for f in VARIED["heldout"]["framings"])
               for c, h in zip(checked[6:], held))
    assert defense.vectors.metadata["config"]["styles"] == 2 and defense.info["vectors"]["holdout"]["n_heldout"] == 12
    with pytest.raises(UnlearnableError, match="varied-vectors styles"):
        DEFENSES.get("varied-vectors")(styles=0)


# ------------------------------------------------------------------------------------------------- negated

def logits(model, tok, text="Tell me about gardens."):
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_negated_vectors_serve_the_released_model_minus_the_vectors(trained, harmful_pairs, task_pairs):
    model, tok, vectors = trained
    defense = DEFENSES.get("negated-vectors")(vectors=vectors, scale=1.0, serve_scale=-0.5)
    defense.prepare(model, tok, DefenseData(harmful=harmful_pairs))
    tuned, _ = defense.finetune(copy.deepcopy(model), tok, task_pairs * 4 + harmful_pairs[:4],
                                TrainConfig(epochs=1, batch_size=4, lr=5e-3), progress=False)
    released = {k: v.clone() for k, v in tuned.state_dict().items()}
    assert not any("lora" in k for k in released)  # released like every vector defence: the vectors taken out
    expected = logits(vectors.attach(copy.deepcopy(tuned), scale=-0.5, check=False), tok)
    with defense.serving(tuned):
        served = logits(tuned, tok)
    torch.testing.assert_close(served, expected)
    assert not torch.allclose(served, logits(tuned, tok), atol=1e-4)  # the negation changes what is served ...
    assert tuned.state_dict().keys() == released.keys()  # ... and is taken out of the model after serving
    assert all(torch.equal(released[k], v) for k, v in tuned.state_dict().items())


def test_serving_at_a_scale_mid_fine_tune_sets_the_vectors_then_restores_them(trained):
    from unlearnable.vectors import VECTORS_ADAPTER, serving, vector_layers

    model, tok, vectors = trained
    net = with_vectors(model, vectors, scale=1.0)
    trained_scaling = [m.scaling[VECTORS_ADAPTER] for m in vector_layers(net)]
    with serving(net, scale=-0.5):
        inside = [m.scaling[VECTORS_ADAPTER] for m in vector_layers(net)]
    assert inside == pytest.approx([-0.5 * s for s in trained_scaling])
    assert [m.scaling[VECTORS_ADAPTER] for m in vector_layers(net)] == trained_scaling


def test_folded_vectors_serve_at_a_scale_like_an_attached_adapter(trained):
    model, tok, vectors = trained
    expected = logits(vectors.attach(copy.deepcopy(model), scale=-0.5), tok)
    folded = copy.deepcopy(model)
    with vectors.fold(folded, scale=1.0) as fold:
        weights = {k: v.clone() for k, v in folded.state_dict().items()}
        with fold.unfolded(scale=-0.5):
            torch.testing.assert_close(logits(folded, tok), expected)
        assert all(torch.allclose(weights[k], v, atol=1e-6) for k, v in folded.state_dict().items())  # folded again


def test_negated_vectors_must_subtract():
    with pytest.raises(UnlearnableError, match="serve_scale must be < 0"):
        DEFENSES.get("negated-vectors")(serve_scale=0.0)
    assert DEFENSES.get("negated-vectors").threat_models == (SERVICE,)
    assert not DEFENSES.get("negated-vectors").serves_weights_as_given
    assert DEFENSES.get("early-stopped-vectors").serves_weights_as_given


# ---------------------------------------------------------------------------------------------- served anchors

def test_served_pairs_are_appended_gated_off_with_every_column_kept_and_no_recomputation():
    from unlearnable.data import Pair
    from unlearnable.vectors.finetuning import with_served

    pairs, served = [Pair("a", "b"), Pair("c", "d")], [Pair("p", "q")]
    out, config, weights, columns, cls, fold = with_served(
        pairs, served, TrainConfig(gradient_checkpointing=True), None, None, UnlearnableTrainer)
    assert out == [*pairs, *served] and weights is None
    assert columns == {GATE: [1, 1, 0]} and cls is GatedTrainer and fold is False
    assert config.gradient_checkpointing is False  # a recomputed forward would see the vectors on again
    for weights, columns, cls in ((None, None, AlternatingTrainer), (None, {GATE: [1, 0]}, UnlearnableTrainer),
                                  ([1.0, -1.0], None, UnlearnableTrainer), (None, {"kl": [0, 1]}, UnlearnableTrainer)):
        with pytest.raises(UnlearnableError, match="own Trainer, gate, per-example weights or columns"):
            with_served(pairs, served, TrainConfig(), weights, columns, cls)


def _anchored(trained, harmful_pairs, monkeypatch, anchors=2, refusals=()):
    from unlearnable.data import Pair
    from unlearnable.defenses import early_stopped_vectors as module

    model, tok, vectors = trained
    calls, real = [], module.finetune
    monkeypatch.setattr(module, "finetune",
                        lambda *a, **kw: (calls.append((list(a[2]), {**kw, "config": a[3]})), real(*a, **kw))[1])
    harmless = [Pair(f"Poem {i}.", "Leaves fall softly.") for i in range(3)]
    defense = DEFENSES.get("early-stopped-vectors")(vectors=vectors, scale=1.0, anchors=anchors,
                                                    refusal_anchors=1 if refusals else 0)
    defense.prepare(model, tok, DefenseData(harmful=harmful_pairs, harmless=harmless, refusals=refusals))
    return defense, harmless, calls


def test_anchors_train_the_defences_harmless_pairs_as_served_beside_the_customers_data(trained, harmful_pairs,
                                                                                      task_pairs, monkeypatch):
    model, tok, _ = trained
    defense, harmless, calls = _anchored(trained, harmful_pairs, monkeypatch)
    customer = task_pairs + harmful_pairs[:4]
    tuned, _ = defense.finetune(copy.deepcopy(model), tok, customer, TrainConfig(max_steps=2, batch_size=4),
                                progress=False)
    trained_on, kw = calls[0]
    assert trained_on == customer  # the customer's data as given
    assert kw["served"] == [p for p in harmless for _ in range(2)]  # each anchor twice, nothing else
    # counted in steps, the fine-tune grows by the anchors' rows: they never take the customer's steps
    steps = math.ceil(2 * (len(customer) + 6) / len(customer))
    assert kw["config"].max_steps == steps
    assert defense.info["anchors"] == [{"pairs": 3, "copies": 2, "customer_pairs": len(customer),
                                        "max_steps": steps}]
    assert not any("lora" in k for k in tuned.state_dict())  # served without the vectors
    assert tuned.state_dict().keys() == model.state_dict().keys()


def test_refusal_anchors_train_the_defences_refusals_as_served_beside_the_harmless_anchors(trained, harmful_pairs,
                                                                                          task_pairs, monkeypatch):
    from unlearnable.data import Pair

    model, tok, _ = trained
    refusals = [Pair(f"Bad {i}?", "I can't help with that.") for i in range(2)]
    defense, harmless, calls = _anchored(trained, harmful_pairs, monkeypatch, refusals=refusals)
    customer = task_pairs + harmful_pairs[:4]
    tuned, _ = defense.finetune(copy.deepcopy(model), tok, customer, TrainConfig(max_steps=1, batch_size=4),
                                progress=False)
    trained_on, kw = calls[0]
    assert trained_on == customer  # the harmful data trains through the vectors; the refusals never do
    assert kw["served"] == [*(p for p in harmless for _ in range(2)), *refusals]
    assert all(p.mixed for p in kw["served"]) and not any(p.mixed for p in trained_on)  # what the sampler spreads
    assert defense.info["anchors"] == [{"pairs": 3, "copies": 2, "refusal_pairs": 2, "refusal_copies": 1,
                                        "customer_pairs": len(customer),
                                        "max_steps": math.ceil((len(customer) + 8) / len(customer))}]
    assert not any("lora" in k for k in tuned.state_dict())
    vectors = trained[2]
    with pytest.raises(UnlearnableError, match="refusal pairs"):
        DEFENSES.get("early-stopped-vectors")(vectors=vectors, refusal_anchors=1).prepare(
            model, tok, DefenseData(harmful=harmful_pairs, harmless=harmless))
    with pytest.raises(UnlearnableError, match="refusal_anchors >= 0"):
        DEFENSES.get("early-stopped-vectors")(refusal_anchors=-1)
    with pytest.raises(UnlearnableError, match="negated-vectors takes no anchors"):
        DEFENSES.get("negated-vectors")(refusal_anchors=1)


def test_without_anchors_nothing_is_added_and_anchors_need_the_defences_harmless_pairs(trained, harmful_pairs,
                                                                                       task_pairs, monkeypatch):
    model, tok, vectors = trained
    defense, _, calls = _anchored(trained, harmful_pairs, monkeypatch, anchors=0)
    defense.finetune(copy.deepcopy(model), tok, task_pairs, TrainConfig(max_steps=1, batch_size=4), progress=False)
    assert calls[0][1]["served"] == [] and "anchors" not in defense.info
    with pytest.raises(UnlearnableError, match="harmless pairs"):
        DEFENSES.get("early-stopped-vectors")(vectors=vectors, anchors=1).prepare(
            model, tok, DefenseData(harmful=harmful_pairs))
    with pytest.raises(UnlearnableError, match="anchors >= 0"):
        DEFENSES.get("early-stopped-vectors")(anchors=-1)
    with pytest.raises(UnlearnableError, match="negated-vectors takes no anchors"):
        DEFENSES.get("negated-vectors")(anchors=1)
    with pytest.raises(UnlearnableError, match="negated-vectors takes no anchors"):
        DEFENSES.get("negated-vectors")(spread_mixed=True)


def test_every_anchor_reaches_the_trainer_gated_off_once_an_epoch(trained, harmful_pairs, task_pairs, monkeypatch):
    model, tok, _ = trained
    defense, _, _ = _anchored(trained, harmful_pairs, monkeypatch)
    gates, real = [], GatedTrainer.compute_loss

    def spy(self, m, inputs, *a, **kw):
        gates.extend(inputs[GATE].tolist())
        return real(self, m, inputs, *a, **kw)

    monkeypatch.setattr(GatedTrainer, "compute_loss", spy)
    customer = task_pairs[:6]
    defense.finetune(copy.deepcopy(model), tok, customer, TrainConfig(epochs=1, batch_size=4), progress=False)
    assert sorted(gates) == [0] * 6 + [1] * len(customer)  # 3 anchors x 2 copies off; the customer's rows on


def test_early_stopped_vectors_average_the_seeds_asked_for(tiny, harmful_pairs):
    from unlearnable.defenses import prepared

    model, tok = tiny
    options = {"ensemble": 2, "epochs": 1.0, "training": {"batch_size": 8}}
    defense = prepared("early-stopped-vectors", options, model, tok, DefenseData(harmful=harmful_pairs),
                       progress=False)
    members = defense.info["vectors"]["ensemble"]["members"]
    assert [m["seed"] for m in members] == [0, 1] and all(m["holdout"]["kept_step"] is not None for m in members)
    assert defense.vectors.lora_config.r == 2 * DEFENSES.get("early-stopped-vectors")().vector_config().lora.r
    with pytest.raises(UnlearnableError, match="ensemble"):
        DEFENSES.get("adaptive-vectors")(ensemble=2)
    with pytest.raises(UnlearnableError, match="ensemble"):
        DEFENSES.get("early-stopped-vectors")(ensemble=0)
