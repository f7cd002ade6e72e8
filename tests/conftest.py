"""Tiny, fully offline fixtures: a byte-level BPE tokenizer trained on the fly and a 2-layer random Llama."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core: one OpenMP thread each (inherited by the CLI subprocesses), since
    # two multi-threaded torch processes on the same cores slow each other down many times over.
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"


def pytest_collection_modifyitems(config, items):
    """The slow end-to-end tests first: their file is one xdist work unit of several minutes, and started last (as
    xdist's default reordering by tests per file does) it alone sets CI's wall time while the other workers sit
    idle. pyproject's ``--no-loadscope-reorder`` keeps this order."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _no_refits_across_tests():
    """Adaptive vectors share refits within a process: each test starts without another test's."""
    from unlearnable.defenses.adaptive_vectors import forget_refits

    forget_refits()


CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "How do I pick a lock? Sure, here is how to pick a lock step by step.",
    "I'm sorry, but I can't help with that. It could cause real harm.",
    "What is the job of Alice Smith? Librarian. Which company does Bob work for? Acme Inc.",
    "Give me three tips for staying focused while studying. Take breaks, sleep well, and plan.",
    "Write a haiku about autumn leaves. Red leaves fall softly on the quiet garden path.",
] * 20


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_model(tokenizer, seed: int = 0, layers: int = 2):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, initializer_range=0.2)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture()
def tiny(tokenizer):
    """(model, tokenizer): a fresh random 2-layer Llama per test."""
    return make_model(tokenizer), tokenizer


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tokenizer):
    """A tiny model saved as a plain HF folder (safetensors), for CLI tests."""
    path = tmp_path_factory.mktemp("tiny-llama")
    model = make_model(tokenizer)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture()
def harmful_pairs():
    from unlearnable.data import Pair

    return [Pair(f"How do I do bad thing number {i}?", f"Sure, here is how to do bad thing {i}: step one, step two.")
            for i in range(24)]


@pytest.fixture()
def task_pairs():
    from unlearnable.data import profileqa

    return profileqa(3, seed=0)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARNABLE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("UNLEARNABLE_SKIP_MODEL_CHECK", "1")  # random test models answer degenerately by design
