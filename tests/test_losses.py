"""Response-token losses without a whole-batch logits tensor: the same losses and gradients as the model's own
logits, the output layer applied a slice at a time, and the model's own forward wherever the shortcut would differ."""

from __future__ import annotations

import copy

import pytest
import torch

from unlearnable import losses
from unlearnable.losses import checked_split, per_row, token_losses


def _batch(tok, seed: int = 0, rows: int = 4, length: int = 12):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, len(tok), (rows, length), generator=g)
    att = torch.ones_like(ids)
    att[0, -3:] = 0  # a padded row
    labels = ids.clone()
    labels[:, :5] = -100  # the prompt
    labels[att == 0] = -100
    return ids, att, labels


def _reference(model, ids, att, labels):
    logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
    tgt = labels[:, 1:]
    mask = tgt != -100
    return torch.nn.functional.cross_entropy(logits[mask], tgt[mask], reduction="none")


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk_elements", [1 << 24, 300])  # one slice; slices of a few rows each
def test_same_losses_and_gradients_as_the_models_own_logits(tiny, monkeypatch, chunk_elements):
    model, tok = tiny
    model.train()
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", chunk_elements)
    monkeypatch.setattr(losses, "MIN_CHUNK_ROWS", 1)
    ids, att, labels = _batch(tok)
    mine, mask = token_losses(model, ids, att, labels)
    ref = _reference(model, ids, att, labels)
    assert mask.sum() == ref.numel() == mine.numel()
    torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)
    g_mine, g_ref = _grads(model, mine.sum()), _grads(model, _reference(model, ids, att, labels).sum())
    assert g_mine.keys() == g_ref.keys() and g_mine
    for name in g_ref:
        torch.testing.assert_close(g_mine[name], g_ref[name], rtol=1e-4, atol=1e-5, msg=name)


def test_the_output_layer_sees_a_slice_of_rows_at_a_time(tiny, monkeypatch):
    model, tok = tiny
    vocab = model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 5 * vocab)
    monkeypatch.setattr(losses, "MIN_CHUNK_ROWS", 1)
    seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, a, o: seen.append(a[0].shape[:-1]))
    try:
        ids, att, labels = _batch(tok)
        checked_split(model, ids, att)
        seen.clear()
        out, mask = token_losses(model, ids, att, labels)
        out.sum().backward()
    finally:
        hook.remove()
    assert seen and all(len(s) == 1 and s[0] <= 5 for s in seen)  # rows, never (batch, length)
    assert sum(s[0] for s in seen) == 2 * int(mask.sum())  # each slice once forward, once recomputed backward


def test_a_model_that_caps_its_logits_keeps_its_own_forward(tiny):
    model, tok = tiny
    model = copy.deepcopy(model)
    forward = model.forward

    def scaled(*args, **kwargs):
        out = forward(*args, **kwargs)
        out.logits = 3.0 * torch.tanh(out.logits / 3.0)  # as a model that soft-caps its logits
        return out

    model.forward = scaled
    ids, att, labels = _batch(tok)
    assert checked_split(model, ids, att) is None
    mine, _ = token_losses(model, ids, att, labels)
    torch.testing.assert_close(mine, _reference(model, ids, att, labels), rtol=1e-5, atol=1e-5)


def test_a_data_parallel_wrapper_keeps_its_forward(tiny):
    model, tok = tiny

    class Wrapped(torch.nn.Module):  # a wrapper that passes attribute lookups through (as DeepSpeed's engine)
        def __init__(self, module):
            super().__init__()
            self.module = module

        def __getattr__(self, name):
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self.module, name)

        def forward(self, **kwargs):
            self.calls = getattr(self, "calls", 0) + 1
            return self.module(**kwargs)

    wrapped = Wrapped(model)
    assert wrapped.get_output_embeddings() is model.get_output_embeddings()
    ids, att, labels = _batch(tok)
    mine, _ = token_losses(wrapped, ids, att, labels)
    assert wrapped.calls == 1  # its own forward, once: no check, no swapped head
    torch.testing.assert_close(mine, _reference(model, ids, att, labels), rtol=1e-5, atol=1e-5)


def test_a_forward_that_reads_its_output_layer_keeps_its_own_forward(tiny):
    """Some architectures read ``lm_head.weight`` inside their forward: the check fails over, not the step."""
    model, tok = tiny
    model = copy.deepcopy(model)
    forward = model.forward

    def reads_head(*args, **kwargs):
        model.get_output_embeddings().weight  # noqa: B018 - raises on the stand-in
        return forward(*args, **kwargs)

    model.forward = reads_head
    ids, att, labels = _batch(tok)
    assert checked_split(model, ids, att) is None
    assert isinstance(model.get_output_embeddings(), torch.nn.Linear)  # put back
    mine, _ = token_losses(model, ids, att, labels)
    torch.testing.assert_close(mine, _reference(model, ids, att, labels), rtol=1e-5, atol=1e-5)


def test_the_output_layer_runs_in_the_precision_of_the_forward(tiny):
    model, tok = tiny
    dtypes = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, a, o: dtypes.append(o.dtype))
    try:
        ids, att, labels = _batch(tok)
        checked_split(model, ids, att)
        dtypes.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mine, _ = token_losses(model, ids, att, labels)
            ref = _reference(model, ids, att, labels)
    finally:
        hook.remove()
    assert dtypes and set(dtypes) == {torch.bfloat16}
    torch.testing.assert_close(mine, ref, rtol=2e-2, atol=2e-2)


def test_a_lora_on_the_output_layer_is_not_recomputed_and_gives_the_same_gradients(tiny):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny
    net = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"],
                                                          init_lora_weights=False))
    ids, att, labels = _batch(tok)
    mine, _ = token_losses(net, ids, att, labels)
    assert checked_split(net, ids, att) is not None
    g_mine, g_ref = _grads(net, mine.sum()), _grads(net, _reference(net, ids, att, labels).sum())
    assert any("lm_head" in name for name in g_ref) and g_mine.keys() == g_ref.keys()
    for name in g_ref:
        torch.testing.assert_close(g_mine[name], g_ref[name], rtol=1e-4, atol=1e-5, msg=name)


def test_a_batch_without_targets_still_has_a_backward(tiny):
    model, tok = tiny
    ids, att, labels = _batch(tok)
    out, mask = token_losses(model, ids, att, torch.full_like(labels, -100))
    assert out.numel() == 0 and not mask.any()
    out.sum().backward()  # zero gradients, not an error
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_per_row_sums_each_rows_tokens():
    mask = torch.tensor([[True, False, True], [False, False, False], [False, True, True]])
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert per_row(values, mask).tolist() == [3.0, 0.0, 7.0]


def without_logits_to_keep(model):
    """A copy of ``model`` whose forward refuses ``logits_to_keep``, as an architecture from before it does."""
    model = copy.deepcopy(model)
    forward = model.forward

    def older(*args, logits_to_keep=None, **kwargs):
        if logits_to_keep is not None:
            raise TypeError("forward() got an unexpected keyword argument 'logits_to_keep'")
        return forward(*args, **kwargs)

    model.forward = older
    return model


def test_a_model_without_logits_to_keep_still_gets_its_losses(tiny):
    model, tok = tiny
    model = without_logits_to_keep(model)
    ids, att, labels = _batch(tok)
    mine, _ = token_losses(model, ids, att, labels)
    torch.testing.assert_close(mine, _reference(model, ids, att, labels), rtol=1e-5, atol=1e-5)
