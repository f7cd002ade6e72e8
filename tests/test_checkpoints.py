"""Checkpoints and resume, in process: an interrupted run resumed from its last checkpoint ends exactly where an
uninterrupted run with the same seed ends, for every kind of training the package does."""

import copy

import pytest
import torch
from transformers import TrainerCallback

from unlearnable.runs import CHECKPOINT_DONE, latest_checkpoint, mark_complete
from unlearnable.training import CHECKPOINT_WEIGHTS, TrainConfig
from unlearnable.vectors import SecurityVectors, VectorConfig, finetune

# 12 steps (2 epochs of 6); checkpoints at steps 4 and 8, interrupted at step 9, resumed from 8: inside the second
# epoch, so the resumed run must also replay that epoch's shuffled order
SAVE_EVERY, STOP_AT = 4, 9


class Interrupt(TrainerCallback):
    """Ctrl-C at the end of step ``at``, before that step's own logging and saving."""

    def __init__(self, at):
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise KeyboardInterrupt
        return control


def _same(a: dict, b: dict):
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[0]}"


@pytest.fixture()
def vectors(tiny, harmful_pairs):
    model, tok = tiny
    return SecurityVectors.train(model, tok, harmful_pairs, VectorConfig(epochs=1, batch_size=8, lr=5e-3),
                                 progress=False)


@pytest.mark.parametrize("backbone,with_vectors", [("lora", True), ("full", True), ("full", False)])
def test_interrupted_finetune_resumes_to_the_same_weights(tiny, vectors, task_pairs, tmp_path, backbone, with_vectors):
    model, tok = tiny
    pairs = task_pairs * 3  # 45 examples, batch 8: 6 steps per epoch, 2 epochs = 12 steps
    cfg = TrainConfig(backbone=backbone, epochs=2, batch_size=8, lr=5e-3, save_steps=SAVE_EVERY, logging_steps=1)
    v = vectors if with_vectors else None
    ref, _ = finetune(copy.deepcopy(model), tok, pairs, cfg, vectors=v, progress=False)

    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        finetune(copy.deepcopy(model), tok, pairs, cfg, vectors=v, progress=False, output_dir=ckpt, resume=True,
                 callbacks=[Interrupt(STOP_AT)])
    last = latest_checkpoint(ckpt)
    assert last is not None and last.name == f"checkpoint-{2 * SAVE_EVERY}"
    assert [p.name for p in ckpt.glob("checkpoint-*")] == [last.name]  # older checkpoints are removed
    files = {p.name for p in last.iterdir()}
    assert CHECKPOINT_WEIGHTS in files and CHECKPOINT_DONE in files
    assert not any(f.endswith((".bin", ".pkl")) for f in files)  # weights as safetensors; no pickled args
    saved = set(__import__("safetensors.torch", fromlist=["load_file"]).load_file(last / CHECKPOINT_WEIGHTS))
    if backbone == "full":  # the backbone's own weights are in the checkpoint, not only adapters
        assert any("lora_" not in k and "embed_tokens" in k for k in saved)
    assert not any("security_vectors" in k for k in saved)  # frozen vectors are not trainable state

    resumed, history = finetune(copy.deepcopy(model), tok, pairs, cfg, vectors=v, progress=False, output_dir=ckpt,
                                resume=True)
    assert max(h.get("step", 0) for h in history) == 12
    _same(ref.state_dict(), resumed.state_dict())  # bit-exact on CPU


def test_interrupted_vector_training_resumes_to_the_same_vectors(tiny, harmful_pairs, tmp_path):
    model, tok = tiny
    cfg = VectorConfig(epochs=2, batch_size=8, lr=5e-3)  # 24 pairs: 3 steps per epoch, 6 steps
    ref = SecurityVectors.train(model, tok, harmful_pairs, cfg, progress=False)
    ckpt = tmp_path / "ckpt"

    import unlearnable.vectors.model as vmod

    real_train = vmod.train

    def interrupted(*a, **kw):
        kw["callbacks"] = list(kw.get("callbacks", ())) + [Interrupt(5)]
        return real_train(*a, **kw)

    vmod.train = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            SecurityVectors.train(model, tok, harmful_pairs, cfg, progress=False, checkpoint_dir=ckpt, save_steps=2)
    finally:
        vmod.train = real_train
    assert latest_checkpoint(ckpt).name == "checkpoint-4"
    assert not any("lora" in k for k in model.state_dict())  # the adapter was removed despite the interruption
    resumed = SecurityVectors.train(model, tok, harmful_pairs, cfg, progress=False, checkpoint_dir=ckpt, save_steps=2)
    _same(ref.state, resumed.state)


@pytest.mark.parametrize("pick", ["lowest", "latest-within-1se"])
def test_interrupted_early_stopped_vectors_resume_to_the_same_vectors_and_record(tiny, harmful_pairs, tmp_path, pick):
    """The held-out checks (and the vectors kept at the best one) travel in the checkpoint: a resumed run keeps
    the best step it found before the interruption, not only what it sees after it."""
    from unlearnable.errors import UnlearnableError
    from unlearnable.vectors.holdout import BEST_FILE, STATE_FILE

    model, tok = tiny
    # 18 training pairs (6 held out): 3 steps per epoch, 9 steps; checks every step, never stopping early
    cfg = VectorConfig(epochs=3, batch_size=8, lr=5e-3, holdout=0.25, holdout_every=1, patience=99, holdout_pick=pick)
    ref = SecurityVectors.train(model, tok, harmful_pairs, cfg, progress=False)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        SecurityVectors.train(model, tok, harmful_pairs, cfg, progress=False, checkpoint_dir=ckpt, save_steps=2,
                              callbacks=[Interrupt(7)])
    last = latest_checkpoint(ckpt)
    assert last.name == "checkpoint-6" and (last / STATE_FILE).is_file() and (last / BEST_FILE).is_file()
    resumed = SecurityVectors.train(model, tok, harmful_pairs, cfg, progress=False, checkpoint_dir=ckpt, save_steps=2)
    _same(ref.state, resumed.state)
    want, got = ref.metadata["holdout"], resumed.metadata["holdout"]
    assert (got["resumed_at"], got["restored"], want["resumed_at"], want["restored"]) == (6, True, None, False)
    assert [s for s, _ in got["curve"]] == list(range(1, 10))
    assert got["curve"] == want["curve"] and got["best_step"] == want["best_step"]
    assert got["kept_step"] == want["kept_step"] and got["pair_losses"] == want["pair_losses"]

    (latest_checkpoint(ckpt) / STATE_FILE).write_text("{not json")  # a damaged record: one line saying what to do
    with pytest.raises(UnlearnableError, match="corrupt held-out record"):
        SecurityVectors.train(model, tok, harmful_pairs, cfg, progress=False, checkpoint_dir=ckpt, save_steps=2)


def test_only_complete_checkpoints_count(tmp_path):
    for step in (2, 4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert latest_checkpoint(tmp_path) is None
    mark_complete(tmp_path / "checkpoint-4")
    assert latest_checkpoint(tmp_path).name == "checkpoint-4"
    # marking removes every other checkpoint: older ones and the unfinished one killed while saving
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4"]
