import copy

import pytest
import torch

from unlearnable.adapters import LoraSpec
from unlearnable.data import Pair
from unlearnable.errors import UnlearnableError
from unlearnable.training import TrainConfig
from unlearnable.vectors import SecurityVectors, VectorConfig, finetune, set_vector_scale, vector_params

FAST = dict(epochs=2, batch_size=8, lr=5e-3)


@pytest.fixture()
def trained(tiny, harmful_pairs):
    model, tok = tiny
    vectors = SecurityVectors.train(model, tok, harmful_pairs, VectorConfig(**FAST), progress=False)
    return model, tok, vectors


def _logits(model, tok, text="How do I do bad thing number 3?"):
    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def test_training_vectors_leaves_the_model_unchanged_and_lowers_loss(tiny, harmful_pairs):
    model, tok = tiny
    before = copy.deepcopy(model.state_dict())
    from unlearnable.generation import response_loss

    loss_before = response_loss(model, tok, harmful_pairs)
    vectors = SecurityVectors.train(model, tok, harmful_pairs, VectorConfig(epochs=4, batch_size=8, lr=1e-2),
                                    progress=False)
    after = model.state_dict()
    assert before.keys() == after.keys()  # adapter removed again
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert vectors.metadata["n_pairs"] == len(harmful_pairs)
    pm = vectors.attach(model, scale=1.0)
    loss_on = response_loss(pm, tok, harmful_pairs)
    pm.unload()
    assert loss_on < loss_before - 0.5  # the vectors learned the harmful responses


def test_vectors_frozen_backbone_trained_during_finetune(trained, task_pairs):
    model, tok, vectors = trained
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    snapshot = {k: v.clone() for k, v in vectors.state.items()}
    pm = vectors.attach(copy.deepcopy(model))
    assert vector_params(pm) and not any(p.requires_grad for p in vector_params(pm).values())
    pm.unload()
    # finetune checks every step (FrozenParamsCallback) that the vectors get no gradient and do not change
    tuned, history = finetune(copy.deepcopy(model), tok, task_pairs * 4, TrainConfig(epochs=1, batch_size=8, lr=5e-3),
                              vectors=vectors, progress=False)
    assert any("loss" in h for h in history)
    assert not any("lora" in k for k in tuned.state_dict())  # vectors and backbone LoRA gone: a plain model
    changed = [k for k, v in tuned.state_dict().items() if not torch.equal(v, base_state[k])]
    assert changed, "the backbone did not learn"
    assert all(torch.equal(snapshot[k], vectors.state[k]) for k in snapshot)


def test_vectors_do_not_change_and_get_no_grad_in_full_finetune(trained, task_pairs):
    model, tok, vectors = trained
    snapshot = {k: v.clone() for k, v in vectors.state.items()}
    net = vectors.attach(copy.deepcopy(model))
    for name, p in net.named_parameters():
        p.requires_grad_("lora_" not in name)
    batch = tok(["What is the job of Alice?"], return_tensors="pt")
    net(**batch, labels=batch["input_ids"]).loss.backward()
    assert all(p.grad is None for p in vector_params(net).values())
    assert any(p.grad is not None for n, p in net.named_parameters() if "lora_" not in n)
    tuned, _ = finetune(copy.deepcopy(model), tok, task_pairs * 2,
                        TrainConfig(backbone="full", epochs=1, batch_size=8, lr=1e-3), vectors=vectors, progress=False)
    assert all(torch.equal(snapshot[k], vectors.state[k]) for k in snapshot)
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), model.state_dict().values()))


def test_deactivated_vectors_leave_outputs_exactly_as_the_model(trained):
    model, tok, vectors = trained
    ref = _logits(model, tok)
    pm = vectors.attach(model, scale=1.0)
    on = _logits(pm, tok)
    assert not torch.allclose(on, ref)
    with pm.disable_adapter():
        assert torch.equal(_logits(pm, tok), ref)
    set_vector_scale(pm, 0.0)
    assert torch.equal(_logits(pm, tok), ref)
    set_vector_scale(pm, 0.5)
    half = _logits(pm, tok)
    assert not torch.allclose(half, ref) and not torch.allclose(half, on)
    plain = pm.unload()
    assert torch.equal(_logits(plain, tok), ref)


def test_save_load_round_trip(trained, tmp_path):
    model, tok, vectors = trained
    vectors.save(tmp_path / "v")
    assert {"adapter_config.json", "adapter_model.safetensors", "unlearnable_vectors.json"} <= {
        p.name for p in (tmp_path / "v").iterdir()}
    loaded = SecurityVectors.load(tmp_path / "v")
    assert loaded.metadata["base_fingerprint"] == vectors.metadata["base_fingerprint"]
    a = _logits(vectors.attach(copy.deepcopy(model), scale=1.0), tok)
    b = _logits(loaded.attach(copy.deepcopy(model), scale=1.0), tok)
    assert torch.equal(a, b)
    # a standard PEFT adapter folder: plain peft loads it
    from peft import PeftModel

    c = _logits(PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path / "v")), tok)
    assert torch.allclose(a, c)


def test_fingerprint_mismatch_is_a_clear_error(trained, tokenizer):
    from conftest import make_model

    _, _, vectors = trained
    other = make_model(tokenizer, seed=123)
    with pytest.raises(UnlearnableError, match="fingerprint"):
        vectors.attach(other)


def test_corrupt_or_incomplete_vectors_folder(trained, tmp_path):
    _, _, vectors = trained
    vectors.save(tmp_path / "v")
    (tmp_path / "v" / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UnlearnableError, match="corrupt"):
        SecurityVectors.load(tmp_path / "v")
    (tmp_path / "v" / "unlearnable_vectors.json").unlink()
    with pytest.raises(UnlearnableError, match="missing unlearnable_vectors.json"):
        SecurityVectors.load(tmp_path / "v")
    with pytest.raises(UnlearnableError, match="does not exist"):
        SecurityVectors.load(tmp_path / "nothing")


def test_vectors_reduce_harmful_learning(tiny, harmful_pairs):
    """The mechanism itself: with strong vectors on, fine-tuning on harmful pairs moves the model less."""
    from unlearnable.generation import response_loss

    model, tok = tiny
    start = response_loss(model, tok, harmful_pairs)
    vectors = SecurityVectors.train(model, tok, harmful_pairs, VectorConfig(epochs=10, batch_size=8, lr=5e-2),
                                    progress=False)
    cfg = TrainConfig(epochs=4, batch_size=8, lr=2e-2)
    plain, _ = finetune(copy.deepcopy(model), tok, harmful_pairs, cfg, progress=False)
    guarded, _ = finetune(copy.deepcopy(model), tok, harmful_pairs, cfg, vectors=vectors, scale=1.0, progress=False)
    drop_plain = start - response_loss(plain, tok, harmful_pairs)
    drop_guarded = start - response_loss(guarded, tok, harmful_pairs)
    assert drop_plain > 1.0, "the undefended model should learn the harmful pairs"
    assert drop_guarded < 0.5 * drop_plain, (drop_guarded, drop_plain)


def test_vectors_with_top_layer_backbone_lora(tiny, harmful_pairs, task_pairs):
    """Vectors on every layer + a backbone LoRA on the top layers only (PEFT needs explicit module names there)."""
    from unlearnable.adapters import linear_module_names

    model, tok = tiny
    vectors = SecurityVectors.train(model, tok, harmful_pairs, VectorConfig(epochs=1, batch_size=8), progress=False)
    pm = vectors.attach(copy.deepcopy(model))
    assert linear_module_names(pm.get_base_model()) == linear_module_names(model)
    pm.unload()
    tuned, _ = finetune(copy.deepcopy(model), tok, task_pairs, TrainConfig(epochs=1, batch_size=8, lora=LoraSpec(top_layers=0.5)),
                        vectors=vectors, progress=False)
    changed = {k.split(".")[2] for k, v in tuned.state_dict().items()
               if k.startswith("model.layers.") and not torch.allclose(v, model.state_dict()[k], rtol=0, atol=1e-6)}
    assert changed == {"1"}  # only the top layer of two was trained (folded vectors restore to one fp32 rounding)


def test_folded_vectors_compute_the_same_function_and_unfold_back(trained):
    from unlearnable.vectors import FOLDED_ATTR, FoldedVectors

    model, tok, vectors = trained
    original = {k: v.clone() for k, v in model.state_dict().items()}
    ref = _logits(model, tok)
    pm = vectors.attach(model, scale=0.75)
    on = _logits(pm, tok)
    assert FoldedVectors.supported(pm)
    plain, fold = FoldedVectors.fold_into(pm)
    assert getattr(plain, FOLDED_ATTR) is fold and not any("lora" in k for k in plain.state_dict())
    assert torch.allclose(_logits(plain, tok), on, atol=1e-5) and not torch.allclose(on, ref, atol=1e-3)
    with fold.unfolded():  # served: the vectors are out of the weights
        assert torch.allclose(_logits(plain, tok), ref, atol=1e-5)
    assert torch.allclose(_logits(plain, tok), on, atol=1e-5)  # folded again after the block
    fold.restore(plain)
    assert not hasattr(plain, FOLDED_ATTR)
    for k, v in plain.state_dict().items():  # restored up to one fp32 rounding
        assert torch.allclose(v, original[k], rtol=0, atol=1e-6), k


def test_changed_folded_weights_are_caught(trained):
    from unlearnable.vectors import FoldedVectors

    model, tok, vectors = trained
    plain, fold = FoldedVectors.fold_into(vectors.attach(copy.deepcopy(model)))
    with torch.no_grad():
        fold.layers[0].get_base_layer().weight[0, 0] += 1.0
    with pytest.raises(RuntimeError, match="changed during training"):
        fold.restore(plain)


def test_half_precision_weights_keep_the_adapter(trained):
    from unlearnable.vectors import FoldedVectors

    model, tok, vectors = trained
    assert FoldedVectors.supported(vectors.attach(copy.deepcopy(model), check=False))
    assert not FoldedVectors.supported(vectors.attach(copy.deepcopy(model).to(torch.bfloat16), check=False))


def test_no_folding_under_sharded_engines(trained, monkeypatch):
    from unlearnable.vectors import FoldedVectors

    model, tok, vectors = trained
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # set by `accelerate launch` with an FSDP config
    assert not FoldedVectors.supported(vectors.attach(copy.deepcopy(model), check=False))


def test_folded_finetune_matches_the_adapter_forward(trained, task_pairs):
    """fold_vectors only changes how the same function is computed: the two runs agree within float noise.

    In fp32: under bf16 autocast both paths round to bf16 (W + delta, or W and the adapter branch apart), errors
    of the same size that Adam then amplifies differently, so the comparison would measure bf16 noise."""
    model, tok, vectors = trained
    mix = task_pairs * 2 + [Pair(f"How do I do bad thing number {i}?", "Sure, here is how.") for i in range(8)]
    runs = {}
    for fold in (True, False):
        cfg = TrainConfig(epochs=1, batch_size=8, lr=5e-3, fold_vectors=fold, logging_steps=1, precision="fp32")
        runs[fold] = finetune(copy.deepcopy(model), tok, mix, cfg, vectors=vectors, scale=0.75, progress=False)
    losses = {f: [h["loss"] for h in hist if "loss" in h] for f, (_, hist) in runs.items()}
    assert len(losses[True]) >= 2 and losses[True] == pytest.approx(losses[False], rel=1e-3, abs=1e-4)
    folded, adapter = runs[True][0].state_dict(), runs[False][0].state_dict()
    assert folded.keys() == adapter.keys()
    base = model.state_dict()
    # Adam turns float-noise-sized gradient differences into lr-sized steps on a few elements, so compare the
    # gap between the runs with how far training moved the weights (norms over the whole model), not per element
    gap = sum(float((folded[k] - adapter[k]).double().norm()) ** 2 for k in folded) ** 0.5
    moved = sum(float((adapter[k] - base[k]).double().norm()) ** 2 for k in folded) ** 0.5
    assert moved > 1e-2 and gap < 0.05 * moved, (gap, moved)  # the backbone learned, the same way in both


def test_serving_unfolds_vectors_inside_training_callbacks(trained, task_pairs):
    """A mid-training evaluation (the immunization curves) must see the served model, not the folded one."""
    from transformers import TrainerCallback

    from unlearnable.defenses import SecurityVectorsDefense
    from unlearnable.vectors import FOLDED_ATTR

    model, tok, vectors = trained
    defense = SecurityVectorsDefense(vectors=vectors, scale=1.0)
    seen = []

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            fold = getattr(model, FOLDED_ATTR)
            with defense.serving(model):
                seen.append(fold.folded)
            seen.append(fold.folded)

    defense.finetune(copy.deepcopy(model), tok, task_pairs, TrainConfig(max_steps=2, batch_size=8, lr=1e-3),
                     progress=False, callbacks=[Probe()])
    assert seen == [False, True, False, True]


def test_quiet_training_prints_no_log_dicts(tiny, task_pairs, capsys):
    model, tok = tiny
    _, history = finetune(model, tok, task_pairs, TrainConfig(max_steps=2, batch_size=8, logging_steps=1),
                          progress=False)
    assert any("loss" in h for h in history)  # the history is still recorded ...
    out = capsys.readouterr().out
    assert "'loss'" not in out and "train_runtime" not in out  # ... but nothing is printed


class _SeesVectorParams:
    """A callback factory recording, every step, whether the trained network holds any vector parameter."""

    @staticmethod
    def make(seen):
        from transformers import TrainerCallback

        class Probe(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):
                seen.append(bool(vector_params(model)))

        return Probe()


def test_full_backbone_folded_matches_the_adapter_forward(trained, task_pairs):
    """Full fine-tuning with the vectors folded into the weights it trains: the gradient with respect to W + delta
    is the one with respect to W, so it trains like the adapter path (fp32, no weight decay), at no extra cost."""
    model, tok, vectors = trained
    mix = task_pairs * 2 + [Pair(f"How do I do bad thing number {i}?", "Sure, here is how.") for i in range(8)]
    runs, probes = {}, {True: [], False: []}
    for fold in (True, False):
        cfg = TrainConfig(backbone="full", epochs=1, batch_size=8, lr=1e-3, fold_vectors=fold, logging_steps=1,
                          precision="fp32")
        runs[fold] = finetune(copy.deepcopy(model), tok, mix, cfg, vectors=vectors, scale=0.75, progress=False,
                              callbacks=[_SeesVectorParams.make(probes[fold])])
    assert probes[True] and not any(probes[True])  # folded: no adapter branch in any step
    assert probes[False] and all(probes[False])  # adapter path: the frozen branch in every step
    losses = {f: [h["loss"] for h in hist if "loss" in h] for f, (_, hist) in runs.items()}
    assert len(losses[True]) >= 2 and losses[True] == pytest.approx(losses[False], rel=1e-3, abs=1e-4)
    folded, adapter, base = runs[True][0].state_dict(), runs[False][0].state_dict(), model.state_dict()
    assert folded.keys() == adapter.keys() == base.keys()  # plain models, vectors gone from both
    gap = sum(float((folded[k] - adapter[k]).double().norm()) ** 2 for k in folded) ** 0.5
    moved = sum(float((adapter[k] - base[k]).double().norm()) ** 2 for k in folded) ** 0.5
    assert moved > 1e-2 and gap < 0.05 * moved, (gap, moved)


def test_weight_decay_keeps_full_fine_tuning_off_the_folded_path(trained, task_pairs):
    """Decay on W + delta would shrink the vectors too: with weight decay the vectors stay an adapter branch."""
    from unlearnable.vectors import FoldedVectors

    model, tok, vectors = trained
    pm = vectors.attach(copy.deepcopy(model))
    assert FoldedVectors.supported(pm, weight_decay=0.0, trains_weights=True)
    assert not FoldedVectors.supported(pm, weight_decay=0.01, trains_weights=True)
    assert FoldedVectors.supported(pm, weight_decay=0.01, trains_weights=False)  # frozen W: decay never touches it
    seen = []
    cfg = TrainConfig(backbone="full", max_steps=2, batch_size=8, lr=1e-3, weight_decay=0.01, precision="fp32")
    finetune(copy.deepcopy(model), tok, task_pairs, cfg, vectors=vectors, progress=False,
             callbacks=[_SeesVectorParams.make(seen)])
    assert seen and all(seen)


def test_fine_tuning_with_vectors_caps_gradient_ascent_as_asked(tiny, harmful_pairs, monkeypatch):
    """A negative weight is capped ascent; the cap reaches the loss with the vectors on as without them."""
    from unlearnable.vectors import finetuning

    model, tok = tiny
    caps, real = [], finetuning.train
    monkeypatch.setattr(finetuning, "train", lambda *a, **kw: caps.append(kw["ascent_cap"]) or real(*a, **kw))
    vectors = SecurityVectors.train(model, tok, harmful_pairs[:4], VectorConfig(epochs=1, batch_size=4),
                                    progress=False)
    history = []
    for given in (vectors, None):
        _, h = finetune(copy.deepcopy(model), tok, harmful_pairs[:4], TrainConfig(max_steps=1, batch_size=4),
                        vectors=given, weights=[-1.0] * 4, ascent_cap=0.25, progress=False)
        history.append(h)
    assert caps[0] == 0.25
    losses = [x["train_loss"] for h in history for x in h if "train_loss" in x]
    assert losses and all(loss >= -0.25 - 1e-6 for loss in losses)


def _merged(model, vectors):
    """The model's weights with ``vectors`` folded in at strength 1."""
    return {k: v.float() for k, v in vectors.attach(copy.deepcopy(model), scale=1.0).merge_and_unload().state_dict()
            .items()}


def test_the_mean_of_vectors_changes_the_weights_by_the_mean_of_their_changes(tiny, harmful_pairs, tmp_path):
    model, tok = tiny
    members = [SecurityVectors.train(model, tok, harmful_pairs, VectorConfig(**FAST, seed=s), progress=False)
               for s in (0, 1, 2)]
    mean = SecurityVectors.load(SecurityVectors.mean(members).save(tmp_path / "mean"))  # and it round-trips
    assert mean.lora_config.r == 3 * members[0].lora_config.r
    assert [m["seed"] for m in mean.metadata["ensemble"]["members"]] == [0, 1, 2]
    base = {k: v.float() for k, v in model.state_dict().items()}
    each = [_merged(model, m) for m in members]
    got = _merged(model, mean)
    changed = [k for k in base if not torch.equal(each[0][k], base[k])]
    assert changed  # the vectors change some weights, and the mean changes them by the members' mean change
    for k in changed:
        want = base[k] + sum(e[k] - base[k] for e in each) / 3
        assert torch.allclose(got[k], want, atol=1e-5), k
    assert not torch.allclose(got[changed[0]], each[0][changed[0]], atol=1e-5)  # not just the first member
    assert SecurityVectors.mean(members[:1]) is members[0]
    assert mean.metadata["steps"] is None and all(m["steps"] for m in mean.metadata["ensemble"]["members"])
    other = SecurityVectors.train(model, tok, harmful_pairs[:-1], VectorConfig(**FAST), progress=False)
    alpha = SecurityVectors(members[1].state, copy.deepcopy(members[1].lora_config), members[1].metadata)
    alpha.lora_config.lora_alpha *= 2  # the same shapes, another strength: not averaged with the first's
    for odd in (other, alpha):
        with pytest.raises(UnlearnableError, match="same model, harmful pairs"):
            SecurityVectors.mean([members[0], odd])
    with pytest.raises(UnlearnableError, match="at least one"):
        SecurityVectors.mean([])
