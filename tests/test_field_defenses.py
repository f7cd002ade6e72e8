"""The field's defences, each by the property that defines it, on the tiny random model."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from unlearnable.adapters import LoraSpec
from unlearnable.data import Pair, encode_pair, encode_pairs
from unlearnable.defenses import DEFENSES, SERVICE, WEIGHTS, DefenseData
from unlearnable.defenses import base as defenses_base
from unlearnable.defenses.booster import BoosterTrainer
from unlearnable.defenses.lisa import ALIGN, USER, LisaTrainer, interleaved, phase_of, proximal
from unlearnable.defenses.repnoise import RepNoiseConfig, RepNoiseTrainer, mmd, repnoise_loss, repnoise_terms
from unlearnable.defenses.safe_lora import decoder_linears
from unlearnable.defenses.vaccine import VaccineTrainer, shifted_by, vaccine_perturbation
from unlearnable.errors import UnlearnableError
from unlearnable.models import decoder_blocks, forward_hooks
from unlearnable.training import BACKBONE_ADAPTER, Collator, TrainConfig, UnlearnableTrainer, training_arguments

REFUSALS = [Pair(f"Bad request {i}?", "I'm sorry, but I can't help with that. It could cause real harm.")
            for i in range(4)]
HARMLESS = [Pair(f"Write a haiku number {i}.", "Red leaves fall softly on the quiet garden path.") for i in range(4)]


def lora_net(model, seed: int = 1):
    """A PeftModel with the backbone LoRA's B drawn at random (PEFT starts it at zero: no update to project)."""
    from peft import get_peft_model

    net = get_peft_model(model, LoraSpec(r=4, alpha=8).peft_config(model), adapter_name=BACKBONE_ADAPTER)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return net


def test_the_new_defences_are_registered_with_their_threat_models():
    expected = {"moderation-filter": (SERVICE,), "safe-lora": (SERVICE,), "lisa": (SERVICE,),
                "booster": (SERVICE, WEIGHTS), "vaccine": (SERVICE, WEIGHTS), "repnoise": (SERVICE, WEIGHTS)}
    for name, threat_models in expected.items():
        cls = DEFENSES.get(name)
        assert cls.threat_models == threat_models
        assert cls().hardens() == (WEIGHTS in threat_models)


# ------------------------------------------------------------------------------------------- safety data mix

@pytest.mark.parametrize("budget, expected_steps", [({"max_steps": 4}, 5), ({"epochs": 2.0}, -1)])
def test_safety_data_mix_lengthens_a_step_budget_by_its_refusal_rows(tiny, budget, expected_steps, monkeypatch):
    """The mixed refusals never take the user's steps: 8 pairs at ratio 0.25 add 2 rows, so 4 steps become 5; an
    epoch budget grows with the rows by itself and is left as it is."""
    model, tok = tiny
    seen = []
    monkeypatch.setattr(defenses_base, "finetune", lambda m, t, pairs, cfg, **kw: (seen.append((list(pairs), cfg)), [])[1])
    defense = DEFENSES.get("safety-data-mix").from_options({"ratio": 0.25})
    defense.prepare(model, tok, DefenseData(refusals=REFUSALS))
    user = [Pair(f"Which company does person {i} work for?", f"Company {i}.") for i in range(8)]
    defense.finetune(model, tok, user, TrainConfig(**budget))
    pairs, cfg = seen[0]
    assert sorted(pairs, key=repr) == sorted(user + REFUSALS[:2], key=repr)  # every user pair, and 2 refusals
    assert sorted(p.prompt for p in pairs if p.mixed) == sorted(p.prompt for p in REFUSALS[:2])  # marked as mixed in
    assert cfg.max_steps == expected_steps and cfg.epochs == TrainConfig(**budget).epochs
    assert defense.info["mixed"] == [{"refusal_rows": 2, "customer_pairs": 8,
                                      **({"max_steps": 5} if expected_steps > 0 else {})}]


@pytest.mark.parametrize("name, options, data", [
    ("safety-data-mix", {}, "refusals"), ("early-stopped-vectors", {"anchors": 1, "epochs": 1.0}, "harmless")])
def test_a_defence_asked_to_spread_its_rows_says_so_to_the_sampler(tiny, harmful_pairs, monkeypatch, name, options,
                                                                  data):
    from unlearnable.defenses import early_stopped_vectors

    model, tok = tiny
    seen = []
    spy = lambda m, t, pairs, cfg, **kw: (seen.append(cfg), [])[1]  # noqa: E731
    monkeypatch.setattr(defenses_base, "finetune", spy)
    monkeypatch.setattr(early_stopped_vectors, "finetune", spy)
    given = DefenseData(harmful=harmful_pairs, **{data: REFUSALS})
    user = [Pair(f"Which company does person {i} work for?", f"Company {i}.") for i in range(8)]
    for spread in (False, True):
        defense = DEFENSES.get(name).from_options({**options, "spread_mixed": spread})
        defense.prepare(model, tok, given, progress=False)
        defense.finetune(model, tok, user, TrainConfig(max_steps=4), progress=False)
    assert [cfg.spread_mixed for cfg in seen] == [False, True]


# ------------------------------------------------------------------------------------------- moderation filter

def test_moderation_filter_keeps_flagged_pairs_from_the_trainer(tiny, harmful_pairs, monkeypatch):
    model, tok = tiny
    seen = []
    monkeypatch.setattr(defenses_base, "finetune", lambda m, t, pairs, cfg, **kw: (seen.append(list(pairs)), [])[1])
    defense = DEFENSES.get("moderation-filter").from_options({"flagger": "keyword"})
    defense.prepare(model, tok, DefenseData())
    clean = [REFUSALS[0], Pair("Which company does Bob work for?", "Acme Inc.")]  # a refusal, a short answer
    defense.finetune(model, tok, harmful_pairs[:3] + clean, TrainConfig(max_steps=1))
    assert seen == [clean]
    assert [{k: r[k] for k in ("pairs", "flagged", "dropped")} for r in defense.info["screened"]] == [
        {"pairs": 5, "flagged": 3, "dropped": 3}]
    assert defense.info["flagger"] == {"flagger": "keyword", "emulated": False, "private": False}
    out, history = defense.finetune(model, tok, harmful_pairs[:2], TrainConfig(max_steps=1))  # all flagged
    assert out is model and history == [] and len(seen) == 1
    assert defense.info["screened"][-1]["dropped"] == 2


def test_moderation_filter_by_default_drops_what_the_model_itself_refuses(tiny, harmful_pairs, monkeypatch):
    from unlearnable import flaggers

    model, tok = tiny
    seen = []
    monkeypatch.setattr(defenses_base, "finetune", lambda m, t, pairs, cfg, **kw: (seen.append(list(pairs)), [])[1])
    monkeypatch.setattr(flaggers, "generate", lambda m, t, prompts, **kw: [
        "I'm sorry, but I can't help with that." if "bad thing" in p else "Sure!" for p in prompts])
    defense = DEFENSES.get("moderation-filter").from_options({})
    harmless = [Pair(f"Describe a sunny park, number {i}.", "Children play on the grass under tall trees.")
                for i in range(2)]
    defense.finetune(model, tok, harmful_pairs[:3] + harmless, TrainConfig(max_steps=1))
    assert defense.config.flagger == "refusal" and seen == [harmless]  # long harmless answers kept this time


def test_moderation_filter_takes_any_flagger_and_records_its_rates(tiny, harmful_pairs, monkeypatch):
    model, tok = tiny
    monkeypatch.setattr(defenses_base, "finetune", lambda m, t, pairs, cfg, **kw: (m, []))
    known = [dataclasses.replace(p, harmful=True) for p in harmful_pairs[:4]]
    clean = [Pair(f"Name a colour, {i}.", "Blue is a lovely colour to name.") for i in range(4)]
    defense = DEFENSES.get("moderation-filter").from_options({"flagger": "oracle:0.5"})
    defense.finetune(model, tok, known + clean, TrainConfig(max_steps=1))
    record = defense.info["screened"][0]
    assert record["dropped"] == 2 and record["recall_on_harmful"] == 0.5 and record["flag_rate_on_harmless"] == 0
    assert defense.info["flagger"]["emulated"] and "measurement only" in defense.info["flagger"]["label"]


def test_moderation_filter_flagger_option_fails_before_any_model_loads():
    from unlearnable.defenses import check_defense_options

    with pytest.raises(UnlearnableError, match="keyword"):
        check_defense_options({"moderation-filter": {"flagger": "keywrd"}})
    with pytest.raises(UnlearnableError, match="harmful-loss"):
        check_defense_options({"moderation-filter": {"judge": "harmful-loss"}})  # the option's former name
    assert DEFENSES.get("moderation-filter").from_options({"judge": "refusal"}).config.flagger == "refusal"
    with pytest.raises(UnlearnableError, match="old name"):
        DEFENSES.get("moderation-filter").from_options({"judge": "refusal", "flagger": "keyword"})


# ------------------------------------------------------------------------------------------------- Safe LoRA

def random_directions(model, rank: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(m.out_features, rank, generator=gen) @ torch.randn(rank, m.in_features, generator=gen)
            for k, m in decoder_linears(model).items()}


def test_safe_lora_projects_the_least_similar_layers_into_the_alignment_subspace(tiny):
    model, _ = tiny
    directions = random_directions(model)
    net = lora_net(model)
    layers = {name.removeprefix("base_model.model."): m for name, m in net.named_modules() if hasattr(m, "lora_B")}
    for k in list(layers)[::2]:  # half the layers: alignment moved them along the user's own update (similar)
        directions[k] = (layers[k].lora_B[BACKBONE_ADAPTER].weight @ layers[k].lora_A[BACKBONE_ADAPTER].weight).detach()
    before = {k: m.lora_B[BACKBONE_ADAPTER].weight.detach().clone() for k, m in layers.items()}
    defense = DEFENSES.get("safe-lora").from_options({"select": "threshold", "threshold": 0.5})
    defense.directions = directions
    with defense.serving(net):  # scored mid-training: served projected for the time being
        served = {k: m.lora_B[BACKBONE_ADAPTER].weight.detach().clone() for k, m in layers.items()}
    assert all(torch.equal(m.lora_B[BACKBONE_ADAPTER].weight, before[k]) for k, m in layers.items())
    assert defense.info["projections"] == []
    defense.project_lora(net)

    cos, projected = defense.last_projection["cosines"], set(defense.last_projection["projected"])
    assert set(cos) == set(layers) and 0 < len(projected) < len(layers)
    assert projected == {k for k, x in cos.items() if x < 0.5}
    for k, m in layers.items():
        b, a, v = before[k], m.lora_A[BACKBONE_ADAPTER].weight.detach(), directions[k]
        c = v @ v.T / torch.linalg.matrix_norm(v)  # the paper's alignment matrix, formed explicitly
        assert cos[k] == pytest.approx(float(torch.nn.functional.cosine_similarity(
            (c @ b @ a).flatten(), (b @ a).flatten(), dim=0)), abs=1e-5)
        new = m.lora_B[BACKBONE_ADAPTER].weight.detach()
        assert torch.equal(served[k], new)
        if k not in projected:
            assert torch.equal(new, b)  # bit for bit the user's update
            continue
        assert torch.allclose(new, c @ b, atol=1e-5)
        u, sv, _ = torch.linalg.svd(v)
        q = u[:, :int((sv > sv[0] * 1e-5).sum())]  # an orthonormal basis of V's column space
        assert torch.allclose(q @ (q.T @ (new @ a)), new @ a, atol=1e-5)  # the update lies in the subspace
        assert not torch.allclose(q @ (q.T @ (b @ a)), b @ a, atol=1e-3)  # and did not before


def test_safe_lora_fraction_projects_that_share_of_layers_least_similar_first(tiny):
    model, _ = tiny
    directions = random_directions(model)
    net = lora_net(model)
    defense = DEFENSES.get("safe-lora").from_options({"fraction": 0.25})
    defense.directions = directions
    defense.project_lora(net)
    cos, projected = defense.last_projection["cosines"], defense.last_projection["projected"]
    assert len(projected) == round(0.25 * len(cos))
    assert max(cos[k] for k in projected) <= min(cos[k] for k in cos if k not in projected)


def test_safe_lora_full_backbone_update_keeps_unprojected_layers_bit_identical(tiny, harmful_pairs):
    from unlearnable.training import finetune

    model, tok = tiny
    cfg = TrainConfig(backbone="full", max_steps=1, batch_size=4, lr=1e-2)
    plain, _ = finetune(copy.deepcopy(model), tok, harmful_pairs[:4], cfg, progress=False)
    defense = DEFENSES.get("safe-lora").from_options({"fraction": 0.5})
    defense.directions = random_directions(model)
    tuned, _ = defense.finetune(copy.deepcopy(model), tok, harmful_pairs[:4], cfg, progress=False)
    projected = set(defense.last_projection["projected"])
    w0, w1, w2 = decoder_linears(model), decoder_linears(plain), decoder_linears(tuned)
    assert len(projected) == len(w0) // 2
    snapshot = {k: w2[k].weight.detach().clone() for k in w0}
    with defense.serving(tuned):  # the returned model is already projected: served as it is
        assert all(torch.equal(w2[k].weight, snapshot[k]) for k in w0)
        assert defense.info["projections"] == [{"layers": len(w0), "projected": len(projected)}]
    for k in w0:
        if k not in projected:
            assert torch.equal(w2[k].weight, w1[k].weight)
            continue
        v, dw = defense.directions[k], w1[k].weight - w0[k].weight
        expected = w0[k].weight + v @ v.T @ dw / torch.linalg.matrix_norm(v)
        assert torch.allclose(w2[k].weight, expected, rtol=1e-5, atol=1e-5)


def test_safe_lora_reference_weights_from_a_base_model_or_estimated(tiny_dir, tokenizer, tmp_path):
    from conftest import make_model

    aligned = make_model(tokenizer)  # the same weights as the saved base ...
    name = sorted(decoder_linears(aligned))[3]
    delta = torch.randn(decoder_linears(aligned)[name].weight.shape) * 0.01
    with torch.no_grad():
        decoder_linears(aligned)[name].weight.add_(delta)  # ... but for what "alignment" changed
    defense = DEFENSES.get("safe-lora").from_options({"base": str(tiny_dir)})
    defense.prepare(aligned, tokenizer, DefenseData())
    assert torch.allclose(defense.directions[name], delta, atol=1e-6)
    assert all(not v.any() for k, v in defense.directions.items() if k != name)

    estimated = DEFENSES.get("safe-lora").from_options({"estimate": {"max_steps": 2, "batch_size": 4,
                                                                     "lora": {"r": 2, "alpha": 4}}})
    estimated.prepare(aligned, tokenizer, DefenseData(refusals=REFUSALS, harmless=HARMLESS), progress=False)
    assert set(estimated.directions) == set(decoder_linears(aligned))
    ranks = [int(torch.linalg.matrix_rank(v)) for v in estimated.directions.values()]
    assert max(ranks) == 2 and all(r <= 2 for r in ranks)  # the alignment LoRA's update, rank r
    assert estimated.info["reference"].startswith("estimated (proxy)") and "aligned minus base" in \
        defense.info["reference"]
    defense.save_state(tmp_path / "state")  # a resumed sweep still says what V is
    resumed = DEFENSES.get("safe-lora").from_options({})
    assert resumed.load_state(tmp_path / "state") and resumed.info["reference"] == defense.info["reference"]
    assert torch.equal(resumed.directions[name], defense.directions[name])


def test_safe_lora_subspace_is_aligned_minus_base_when_the_harness_aligned(tiny, harmful_pairs, tmp_path,
                                                                           monkeypatch):
    """The harness that aligned the model hands the defence the weights from before (DefenseData.unaligned)."""
    from test_immunization import tiny_data

    from unlearnable.experiments.setup import DataConfig, set_up
    from unlearnable.training import TrainConfig as TC

    monkeypatch.setenv("UNLEARNABLE_CACHE", str(tmp_path / "cache"))
    model, tok = tiny
    before = {k: m.weight.detach().clone() for k, m in decoder_linears(model).items()}
    data = tiny_data(harmful_pairs)
    data.hashes = {"align": "tiny-align"}
    setup = set_up(None, DataConfig(system_prompt=None), seed=0, align_model=True, model=model, tokenizer=tok,
                   align_config=TC(max_steps=2, batch_size=4, lr=1e-2), data=data, progress=False)
    assert setup.unaligned is not None and setup.unaligned() is model
    from unlearnable.experiments.immunize import ImmunizeConfig, defense_data

    handed = defense_data(ImmunizeConfig(), setup)  # what immunize hands every defence
    assert handed.unaligned is setup.unaligned
    defense = DEFENSES.get("safe-lora").from_options({})
    defense.prepare(setup.model, tok, dataclasses.replace(handed, refusals=REFUSALS), progress=False)
    after = decoder_linears(setup.model)
    for k, v in defense.directions.items():
        assert torch.allclose(v, after[k].weight.detach().float() - before[k].float(), atol=1e-6)
    assert any(v.abs().sum() > 0 for v in defense.directions.values())  # the alignment moved something
    assert defense.info["reference"] == "aligned minus base (the weights before the harness aligned them)"
    unaligned_here = set_up(None, DataConfig(system_prompt=None), seed=0, align_model=False, model=model,
                            tokenizer=tok, data=data, progress=False)
    assert unaligned_here.unaligned is None  # nothing to subtract: a defence then estimates, labelled a proxy


# ------------------------------------------------------------------------------------------------------ Lisa

def test_lisa_phases_alternate_as_configured():
    assert [phase_of(t, 2, 3) for t in range(10)] == [ALIGN] * 2 + [USER] * 3 + [ALIGN] * 2 + [USER] * 3
    user = [Pair(f"user {i}", "u") for i in range(5)]
    rows = interleaved(user, REFUSALS, steps=7, rows_per_step=3, align_steps=1, user_steps=2, seed=0)
    sources = [{"user" if p in user else "align" for p in rows[t * 3:(t + 1) * 3]} for t in range(7)]
    assert sources == [{"align"}, {"user"}, {"user"}] * 2 + [{"align"}]


def lisa_trainers(monkeypatch) -> list:
    """Every LisaTrainer built from now on, in order (to read what it trained)."""
    trainers, init = [], LisaTrainer.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        trainers.append(self)

    monkeypatch.setattr(LisaTrainer, "__init__", spy)
    return trainers


def test_lisa_trains_the_phases_in_order_with_the_user_budget(tiny, harmful_pairs, monkeypatch):
    model, tok = tiny
    trainers = lisa_trainers(monkeypatch)
    defense = DEFENSES.get("lisa").from_options({"align_steps": 1, "user_steps": 2})
    defense.prepare(model, tok, DefenseData(refusals=REFUSALS, harmless=HARMLESS))
    tuned, _ = defense.finetune(model, tok, harmful_pairs[:4], TrainConfig(max_steps=5, batch_size=2), progress=False)
    (trainer,) = trainers
    assert trainer.phases == {0: ALIGN, 1: USER, 2: USER, 3: ALIGN, 4: USER}
    assert list(trainer._get_train_sampler()) == list(range(10))  # rows in the laid-out step order
    assert not any(p.requires_grad for p in tuned.parameters())


def test_lisa_proximal_term_is_zero_before_the_warm_up_and_positive_after(tiny, harmful_pairs, monkeypatch):
    model, tok = tiny
    trainers = lisa_trainers(monkeypatch)
    defense = DEFENSES.get("lisa").from_options({"align_steps": 1, "user_steps": 9, "prox_warmup": 0.4,
                                                 "rho": 10.0})
    defense.prepare(model, tok, DefenseData(refusals=REFUSALS, harmless=HARMLESS))
    defense.finetune(model, tok, harmful_pairs[:8], TrainConfig(max_steps=8, batch_size=2, lr=1e-2), progress=False)
    (trainer,) = trainers
    terms = trainer.proximal_terms
    assert trainer.warmup_steps == 4 and sorted(terms) == list(range(8))
    assert all(terms[t] == 0.0 for t in range(4))  # the user phase moved the weights, but no pull yet
    assert all(terms[t] > 0 for t in range(4, 8))  # same phase since step 1: the weights are away from the anchor
    with pytest.raises(UnlearnableError, match="prox_warmup"):
        DEFENSES.get("lisa").from_options({"prox_warmup": 1.0})
    assert DEFENSES.get("lisa").Config().prox_warmup == 0.1  # the reference's first 10 % of steps


def test_lisa_under_ddp_gives_every_process_one_phase_per_step(tiny, harmful_pairs, monkeypatch):
    """Under ``accelerate launch`` each process takes its own batches of the laid-out rows (accelerate's
    BatchSamplerShard); with two processes every optimizer step must still see rows of one phase only."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler, SequentialSampler

    import unlearnable.defenses.lisa as lisa

    model, tok = tiny
    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(lisa, "finetune", lambda m, t, rows, cfg, **kw: (seen.update(rows=rows, cfg=cfg), (m, []))[1])
    defense = DEFENSES.get("lisa").from_options({"align_steps": 1, "user_steps": 2})
    defense.prepare(model, tok, DefenseData(refusals=REFUSALS, harmless=HARMLESS))
    user = harmful_pairs[:8]
    defense.finetune(model, tok, user, TrainConfig(max_steps=6, batch_size=2, grad_accum=2), progress=False)
    rows, batch = seen["rows"], 2
    assert len(rows) == 6 * 2 * 2 * 2 and seen["cfg"].max_steps == 6
    shards = [list(BatchSamplerShard(BatchSampler(SequentialSampler(rows), batch, False), 2, k)) for k in range(2)]
    for step in range(6):
        micro = [b for shard in shards for b in shard[step * 2:(step + 1) * 2]]  # 2 accumulation batches each
        sources = {"user" if rows[i] in user else "align" for b in micro for i in b}
        assert sources == {"align" if phase_of(step, 1, 2) == ALIGN else "user"}


def test_lisa_proximal_term_is_zero_at_equal_weights_and_grows_with_distance():
    w = [torch.randn(3, 4), torch.randn(5)]
    anchor = [x.clone() for x in w]
    assert float(proximal(w, anchor, rho=1.0)) == 0.0
    step = [torch.randn_like(x) for x in w]
    far = [[a + s * d for a, s in zip(anchor, step)] for d in (0.5, 1.0, 2.0)]
    values = [float(proximal(f, anchor, rho=1.0)) for f in far]
    assert 0 < values[0] < values[1] < values[2]
    assert values[2] == pytest.approx(4 * values[1]) and float(proximal(far[1], anchor, rho=3.0)) == \
        pytest.approx(3 * values[1])
    moved = [(a + s).requires_grad_(True) for a, s in zip(anchor, step)]
    proximal(moved, anchor, rho=2.0).backward()
    assert all(torch.allclose(m.grad, 2.0 * s) for m, s in zip(moved, step))  # rho (w - w_other)


# --------------------------------------------------------------------------------------------------- Booster

def test_booster_step_gradient_equals_the_formula(tiny, harmful_pairs, tmp_path):
    model, tok = tiny
    net = lora_net(model)
    cfg = TrainConfig(batch_size=4, max_steps=1)
    harmful = [encode_pair(tok, p, cfg.max_length) for p in harmful_pairs[:4]]  # one batch: every step the same
    collate = Collator(tok.pad_token_id)
    lam, alpha = 5.0, 0.1
    trainer = BoosterTrainer(model=net, args=training_arguments(cfg, tmp_path, torch.device("cpu"), progress=False),
                             train_dataset=encode_pairs(tok, REFUSALS, cfg.max_length), data_collator=collate,
                             harmful=harmful, lam=lam, alpha=alpha, seed=0)
    trainer.current_gradient_accumulation_steps = 1  # what Trainer's loop sets before its steps
    align_batch = collate([encode_pair(tok, p, cfg.max_length) for p in REFUSALS])
    harm_batch = collate(harmful)
    params = [p for p in net.parameters() if p.requires_grad]

    def grads(batch):
        loss = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        return torch.autograd.grad(loss, params)

    net.train()
    g_align, g_harm = grads(align_batch), grads(harm_batch)
    norm = torch.sqrt(sum((g ** 2).sum() for g in g_harm))
    start = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, g in zip(params, g_harm):
            p.sub_(alpha * g / norm)
    g_after = grads(harm_batch)
    with torch.no_grad():
        for p, s in zip(params, start):
            p.copy_(s)
    expected = [a + lam * (h - h2) for a, h, h2 in zip(g_align, g_harm, g_after)]
    assert not all(torch.allclose(e, a, atol=1e-4) for e, a in zip(expected, g_align))  # the harmful term counts

    trainer.training_step(net, align_batch)
    assert all(torch.equal(p, s) for p, s in zip(params, start))  # the harmful step was undone bit for bit
    for p, e in zip(params, expected):
        assert torch.allclose(p.grad, e, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["booster", "vaccine", "repnoise"])
def test_alignment_stage_defences_harden_a_copy(tiny, harmful_pairs, name):
    model, tok = tiny
    before = copy.deepcopy(model.state_dict())
    defense = DEFENSES.get(name).from_options({"max_steps": 2, "batch_size": 8})
    hardened = defense.harden(model, tok, DefenseData(harmful=harmful_pairs[:4], refusals=REFUSALS,
                                                      harmless=HARMLESS), progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(v, hardened.state_dict()[k]) for k, v in before.items())
    assert not any(p.requires_grad for p in hardened.parameters())
    if name == "vaccine":  # the reference's alignment LoRA, the perturbation on the attention outputs
        assert (defense.config.lora.r, defense.config.lora.alpha, defense.config.lora.dropout) == (16, 4, 0.1)
        assert defense.info["perturbed"] == "attention"


def trainer_for(cls, net, tok, tmp_path, **kw):
    cfg = TrainConfig(batch_size=4, max_steps=1)
    trainer = cls(model=net, args=training_arguments(cfg, tmp_path, torch.device("cpu"), progress=False),
                  train_dataset=encode_pairs(tok, REFUSALS, cfg.max_length), data_collator=Collator(tok.pad_token_id),
                  **kw)
    trainer.current_gradient_accumulation_steps = 1  # what Trainer's loop sets before its steps
    return trainer


def batch_of(tok, pairs):
    return Collator(tok.pad_token_id)([encode_pair(tok, p, 256) for p in pairs])


# --------------------------------------------------------------------------------------------------- Vaccine

def test_vaccine_perturbation_has_norm_rho_and_raises_the_alignment_loss(tiny, tmp_path):
    model, tok = tiny
    net = lora_net(model)
    net.train()
    trainer = trainer_for(VaccineTrainer, net, tok, tmp_path, rho=0.05)
    batch = batch_of(tok, REFUSALS)
    params_before = [p.detach().clone() for p in net.parameters()]
    perts = vaccine_perturbation(trainer, net, batch, rho=0.05)
    assert len(perts) == len(decoder_blocks(net)) == 2
    assert torch.sqrt(sum((p.float() ** 2).sum() for p in perts)).item() == pytest.approx(0.05, rel=1e-4)
    assert all(p.abs().sum() > 0 for p in perts)  # every block is perturbed
    assert all(p.grad is None for p in net.parameters())  # finding it leaves no parameter gradient behind
    assert all(torch.equal(a, b) for a, b in zip(params_before, net.parameters()))
    with torch.no_grad():
        plain = trainer.compute_loss(net, batch)
        with forward_hooks(decoder_blocks(net), shifted_by(perts)):
            pushed = trainer.compute_loss(net, batch)
        with forward_hooks(decoder_blocks(net), shifted_by([-p for p in perts])):
            pulled = trainer.compute_loss(net, batch)
    assert pushed > plain > pulled  # the ascent direction of the alignment loss


def tiny_gpt2(vocab: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=4)).eval()


def _in_column_space(v: torch.Tensor, x: torch.Tensor) -> bool:
    """Every column of ``x`` is a combination of ``v``'s columns."""
    coef = torch.linalg.lstsq(v, x).solution
    return torch.allclose(v @ coef, x, atol=1e-4)


@pytest.mark.parametrize("backbone", ["lora", "full"])
def test_safe_lora_on_gpt2_finds_its_conv1d_layers_and_projects_each_update_as_out_by_in(tokenizer, harmful_pairs,
                                                                                        backbone):
    """GPT-2 keeps its blocks under ``h`` and its linear layers as Conv1D (weights stored in x out)."""
    base, aligned = tiny_gpt2(len(tokenizer)), tiny_gpt2(len(tokenizer))
    with torch.no_grad():
        for p in aligned.transformer.h.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # what "alignment" changed
    defense = DEFENSES.get("safe-lora").from_options({"fraction": 1.0})
    defense.prepare(aligned, tokenizer, DefenseData(unaligned=lambda: base), progress=False)
    assert len(defense.directions) == 8  # c_attn, attn.c_proj, c_fc, mlp.c_proj in each of 2 blocks
    cfg = TrainConfig(backbone=backbone, max_steps=2, batch_size=4, lr=1e-2, lora=LoraSpec(r=4, alpha=8))
    before = {k: m.weight.detach().clone() for k, m in decoder_linears(aligned).items()}
    tuned, _ = defense.finetune(copy.deepcopy(aligned), tokenizer, harmful_pairs[:4], cfg, progress=False)
    after = decoder_linears(tuned)
    assert len(defense.last_projection["projected"]) == 8
    for k in ("transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_fc"):  # out > in: a real subspace
        update = (after[k].weight.detach() - before[k]).float().T  # out x in
        assert update.abs().sum() > 0 and _in_column_space(defense.directions[k].T, update), k


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_vaccine_hooks_sit_on_the_attention_modules(tiny, tmp_path, monkeypatch, arch):
    from unlearnable.defenses import vaccine
    from unlearnable.models import attention_modules

    model, tok = tiny
    model = model if arch == "llama" else tiny_gpt2(len(tok))
    sites, what = vaccine.perturbation_sites(model, "attention")
    names = [type(m).__name__ for m in sites]
    assert what == "attention" and len(sites) == 2 and all("Attention" in n for n in names)
    assert sites == [b.self_attn if arch == "llama" else b.attn for b in decoder_blocks(model)]
    assert vaccine.perturbation_sites(model, "block")[0] == decoder_blocks(model)
    net = lora_net(model) if arch == "llama" else model
    hooked = []
    real = vaccine.forward_hooks

    def spy(modules, hook):
        hooked.append([type(m).__name__ for m in modules])
        return real(modules, hook)

    monkeypatch.setattr(vaccine, "forward_hooks", spy)
    net.train()
    trainer = trainer_for(VaccineTrainer, net, tok, tmp_path, rho=1.0, site="attention")
    before = [p.detach().clone() for p in net.parameters()]
    trainer.training_step(net, batch_of(tok, REFUSALS))
    assert hooked and all("Attention" in n for n in hooked[-1]) and trainer.sites_used == "attention"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters() if p.requires_grad)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # the step only made gradients
    # a model whose blocks have no separable attention module falls back to the blocks, and says so
    monkeypatch.setattr(vaccine, "attention_modules", lambda m: None)
    assert vaccine.perturbation_sites(model, "attention")[1].startswith("block (no separable attention")
    assert attention_modules(model) is not None
    with pytest.raises(UnlearnableError, match="site"):
        DEFENSES.get("vaccine").from_options({"site": "mlp"})


def test_booster_uses_the_reference_lora_where_the_model_has_its_modules(tiny):
    model, tok = tiny
    booster = DEFENSES.get("booster").from_options({})
    assert booster.lora_for(model).targets() == ["q_proj", "k_proj", "v_proj"] and booster.lora_for(model).r == 32
    assert "lora_targets" not in booster.info
    gpt2 = booster.lora_for(tiny_gpt2(len(tok)))  # GPT-2 fuses them as c_attn: that, said so
    assert gpt2.target_modules == "c_attn" and gpt2.alpha == 4
    assert "no q_proj,k_proj,v_proj modules" in booster.info["lora_targets"]
    assert "fused query-key-value" in booster.info["lora_targets"]
    neither = torch.nn.Sequential(torch.nn.Linear(4, 4))  # no attention projection of any known name
    assert booster.lora_for(neither).target_modules == "all-linear"


@pytest.mark.parametrize("rho", [0.0, 1.0])
def test_vaccine_step_with_rho_zero_is_plain_alignment(tiny, tmp_path, rho):
    model, tok = tiny
    net = lora_net(model)
    twin = copy.deepcopy(net)
    batch = batch_of(tok, REFUSALS)
    trainer_for(VaccineTrainer, net, tok, tmp_path / "v", rho=rho).training_step(net, batch)
    trainer_for(UnlearnableTrainer, twin, tok, tmp_path / "p").training_step(twin, batch)
    grads = [(a.grad, b.grad) for a, b in zip(net.parameters(), twin.parameters()) if a.requires_grad]
    assert grads and all(a is not None for a, _ in grads)
    same = all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in grads)
    assert same == (rho == 0.0)


# --------------------------------------------------------------------------------------------------- RepNoise

def test_mmd_is_zero_for_one_distribution_and_grows_with_the_shift():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 16, generator=gen)
    assert mmd(x, x).abs().item() < 1e-6
    near, far = mmd(x, x + 0.3), mmd(x, x + 3.0)
    assert 0 < near < far


@pytest.mark.parametrize("backbone", ["full", "lora"])
def test_repnoise_full_parameter_option_trains_every_weight(tiny, harmful_pairs, backbone):
    model, tok = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    defense = DEFENSES.get("repnoise").from_options({"max_steps": 2, "batch_size": 8, "backbone": backbone,
                                                     "lr": 1e-3})
    assert DEFENSES.get("repnoise").Config().backbone == "full"  # the reference trains all parameters
    hardened = defense.harden(model, tok, DefenseData(harmful=harmful_pairs[:4], refusals=REFUSALS,
                                                      harmless=HARMLESS), progress=False)
    after = hardened.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    linears = {k for k in before if k.endswith(".weight") and ".layers." in k and "norm" not in k}
    if backbone == "full":  # every weight moved: linears, norms and embeddings alike
        assert changed >= {k for k, _ in model.named_parameters()}, set(before) - changed
    else:  # a merged LoRA moves the adapted linear layers only
        assert changed and changed <= linears
    with pytest.raises(UnlearnableError, match="backbone"):
        DEFENSES.get("repnoise").from_options({"backbone": "adapter"})


def test_repnoise_loss_terms_have_their_signs_and_scales(tiny, harmful_pairs, tmp_path):
    import itertools

    model, tok = tiny
    net = lora_net(model)
    net.train()
    harmful = batch_of(tok, harmful_pairs[:4])
    terms = repnoise_terms(net, harmful, noise_seed=7)
    h, m = terms["harmful"].item(), terms["mmd"].item()
    assert h > 0 and m > 0
    base = torch.tensor(2.0)
    assert repnoise_loss(base, terms, 0.0, 0.0).item() == pytest.approx(2.0)
    # alpha: the harmful loss is pushed up (its log enters with a minus); beta: representations toward noise
    assert repnoise_loss(base, terms, 1.0, 0.0).item() == pytest.approx(2.0 - float(torch.log(torch.tensor(h + 1))))
    assert repnoise_loss(base, terms, 0.0, 0.5).item() == pytest.approx(2.0 + 0.5 * m)
    lens_off = repnoise_terms(net, harmful, noise_seed=7, logit_lens=False)["harmful"]
    plain = net(**{k: harmful[k] for k in ("input_ids", "attention_mask", "labels")}).loss
    assert lens_off.item() == pytest.approx(plain.item(), rel=1e-5)  # without the lens: the output layer's loss
    assert h != pytest.approx(lens_off.item())  # with it: every layer's reading counts

    config = RepNoiseConfig(alpha=1.0, beta=0.001, seed=0)
    trainer = trainer_for(RepNoiseTrainer, net, tok, tmp_path, harmful=[], config=config)
    trainer.harmful = itertools.repeat(harmful)
    align = batch_of(tok, REFUSALS)
    with torch.no_grad():
        got = trainer.compute_loss(net, align)
        harmless = UnlearnableTrainer.compute_loss(trainer, net, align)
        expected = repnoise_loss(harmless, repnoise_terms(net, harmful, noise_seed=trainer.state.global_step), 1.0,
                                 0.001)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("name, step, data", [
    ("safety-data-mix", "prepare", DefenseData()), ("buffer-reinforce", "prepare", DefenseData()),
    ("adversarial-loss", "harden", DefenseData()), ("safe-lora", "prepare", DefenseData(harmful=[Pair("q", "a")]))])
def test_a_defence_missing_its_data_says_what_to_give_in_one_line(tiny, name, step, data):
    model, tok = tiny
    with pytest.raises(UnlearnableError, match="give DefenseData") as err:
        getattr(DEFENSES.get(name).from_options({}), step)(model, tok, data)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["vaccine", "repnoise", "booster"])
def test_a_hardening_that_runs_several_passes_per_step_refuses_data_parallel_launches(tiny, harmful_pairs, name,
                                                                                      monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    model, tok = tiny
    data = DefenseData(harmful=harmful_pairs[:4], refusals=REFUSALS, harmless=HARMLESS)
    with pytest.raises(UnlearnableError, match="one process"):
        DEFENSES.get(name)(max_steps=1).harden(model, tok, data, progress=False)

