"""Security vectors dropped into an existing TRL ``SFTTrainer`` script: the README's example, on the tiny model."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("trl", reason="the Trainer/TRL drop-in test needs trl (pip install -e '.[dev]')")


def _rows(pairs):
    return [{"messages": [{"role": "user", "content": p.prompt}, {"role": "assistant", "content": p.response}]}
            for p in pairs]


def _sft(model, tok, pairs, out, callbacks=()):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(out), max_steps=3, per_device_train_batch_size=8, learning_rate=1e-2,
                     logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, max_length=64, seed=0,
                     disable_tqdm=True)
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(_rows(pairs)), processing_class=tok,
                      peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
                      callbacks=list(callbacks))


def test_trl_sft_trainer_with_security_vectors(tiny, harmful_pairs, tmp_path):
    from transformers import TrainerCallback

    from unlearnable.vectors import SecurityVectors, VectorConfig

    model, tok = tiny
    plain_model = copy.deepcopy(model)
    vectors = SecurityVectors.train(model, tok, harmful_pairs, VectorConfig(epochs=10, batch_size=8, lr=5e-2),
                                    progress=False)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    folded_during, trainable = [], []

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            folded_during.append(callback.fold.folded)
            trainable.append([n for n, p in model.named_parameters() if p.requires_grad])

    # --- the README's example: one line added to a TRL script -------------------------------------------
    callback = vectors.callback(model)
    trainer = _sft(model, tok, harmful_pairs, tmp_path / "run", callbacks=[callback, Probe()])
    trainer.train()
    trainer.save_model(str(tmp_path / "tuned"))
    # -----------------------------------------------------------------------------------------------------
    assert folded_during and all(folded_during)  # the vectors acted in every step ...
    assert all(names and all("lora_" in n and "security" not in n for n in names) for names in trainable)
    assert not callback.fold.folded  # ... and are out of the weights now
    base = trainer.model.get_base_model().state_dict()
    for key, value in original.items():  # the frozen weights are back, to one float rounding
        got = base.get(key, base.get(key.replace(".weight", ".base_layer.weight")))
        assert torch.allclose(got, value, atol=1e-6), key
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "tuned" / "adapter_model.safetensors"))
    assert saved and not any("security" in k for k in saved)  # the saved adapter is the user's LoRA alone
    merged = trainer.model.merge_and_unload()
    assert set(merged.state_dict()) == set(original)  # a plain model: nothing of the vectors left

    # the vectors really changed the training: without them the harmful data is learned from a higher loss
    plain = _sft(plain_model, tok, harmful_pairs, tmp_path / "plain")
    plain.train()
    first = {name: next(h["loss"] for h in t.state.log_history if "loss" in h)
             for name, t in (("with", trainer), ("without", plain))}
    assert first["with"] < first["without"] - 0.5, first


def test_half_precision_weights_are_refused_with_a_fix(tiny, harmful_pairs):
    from unlearnable.errors import UnlearnableError
    from unlearnable.vectors import SecurityVectors, VectorConfig

    model, tok = tiny
    vectors = SecurityVectors.train(model, tok, harmful_pairs, VectorConfig(epochs=1, batch_size=8), progress=False)
    half = copy.deepcopy(model).to(torch.bfloat16)
    with pytest.raises(UnlearnableError, match="float32"):
        vectors.callback(half)
    assert not any("lora" in k for k in half.state_dict())  # refused without leaving an adapter behind
