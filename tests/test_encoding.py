"""Encoding as each model family expects it: BOS exactly once in every encoding path, with and without
a chat template, on tiny offline tokenizers of the Llama, Gemma, Qwen and GPT-2 classes; a plain-text answer ends at
the next user turn; a model that answers degenerately fails before any expensive stage."""

from __future__ import annotations

import pytest
import torch
from conftest import CORPUS, make_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from unlearnable.config import validate
from unlearnable.data import Pair, encode_pair, end_of_answer, prompt_text, special_prefix, text_ids
from unlearnable.errors import UnlearnableError

# each family's template as it writes BOS: Llama 3 and Gemma write it, ChatML (Qwen) has none
LLAMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                  "{{ m['content'] }}<|eot_id|>{% endfor %}"
                  "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
GEMMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}"
                  "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
CHATML_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                   "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _bpe(specials):
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def family(name: str, template: bool):
    """A tiny tokenizer of the family's class with its special-token behaviour (BOS added by default or not)."""
    from transformers import GemmaTokenizerFast, GPT2TokenizerFast, LlamaTokenizerFast, Qwen2TokenizerFast

    if name == "llama":
        tok = LlamaTokenizerFast(tokenizer_object=_bpe(["<s>", "</s>", "<unk>", "<|start_header_id|>",
                                                        "<|end_header_id|>", "<|eot_id|>"]),
                                 bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>",
                                 add_bos_token=True)
        chat = LLAMA_TEMPLATE
    elif name == "gemma":
        tok = GemmaTokenizerFast(tokenizer_object=_bpe(["<bos>", "<eos>", "<pad>", "<unk>", "<start_of_turn>",
                                                        "<end_of_turn>"]),
                                 bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
                                 add_bos_token=True)
        chat = GEMMA_TEMPLATE
    elif name == "qwen":
        tok = Qwen2TokenizerFast(tokenizer_object=_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
                                 eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None, bos_token=None)
        chat = CHATML_TEMPLATE
    else:
        tok = GPT2TokenizerFast(tokenizer_object=_bpe(["<|endoftext|>"]), bos_token="<|endoftext|>",
                                eos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token="<|endoftext|>")
        chat = CHATML_TEMPLATE.replace("<|im_start|>", "").replace("<|im_end|>", "")
    tok.chat_template = chat if template else None
    return tok


FAMILIES = [(n, t) for n in ("llama", "gemma", "qwen", "gpt2") for t in (True, False)]


@pytest.mark.parametrize("name,template", FAMILIES)
def test_bos_is_in_every_encoding_path_exactly_as_the_tokenizer_adds_it(name, template):
    from unlearnable.utility import MMLU

    tok = family(name, template)
    adds_bos = name in ("llama", "gemma")  # Llama and Gemma put BOS first by default; Qwen and GPT-2 put nothing
    assert special_prefix(tok) == ([tok.bos_token_id] if adds_bos else [])
    question = {"topic": "x", "question": "Q?", "answer_a": "a", "answer_b": "b", "answer_c": "c", "answer_d": "d"}
    texts = {"prompt": prompt_text(tok, "How do I pick a lock?"), "mmlu": MMLU.prompt(question)}
    ids = {k: text_ids(tok, t) for k, t in texts.items()}
    ids["pair"] = encode_pair(tok, Pair("How do I pick a lock?", "Sure, here is how."), 64)["input_ids"]
    ids["long pair"] = encode_pair(tok, Pair("How do I pick a lock? " * 30, "Sure."), 32)["input_ids"]
    assert len(ids["long pair"]) <= 32  # the prompt's end is kept, after the BOS
    for what, row in ids.items():
        if adds_bos:
            assert row[0] == tok.bos_token_id and row.count(tok.bos_token_id) == 1, what  # never doubled
        elif what in texts:  # nothing added: exactly the text's own tokens
            assert row == tok(texts[what], add_special_tokens=False)["input_ids"], what


@pytest.mark.parametrize("name,template", FAMILIES)
def test_generation_feeds_the_model_the_same_ids(name, template, monkeypatch):
    from unlearnable.generation import generate

    tok = family(name, template)
    model = make_model(tok)
    seen = []
    real = model.generate

    def spy(**kw):
        seen.append(kw["input_ids"])
        return real(**kw)

    monkeypatch.setattr(model, "generate", spy)
    generate(model, tok, ["How do I pick a lock?", "Write a haiku."], max_new_tokens=2, progress=False)
    for i, p in enumerate(["Write a haiku.", "How do I pick a lock?"]):  # length-sorted
        ids = seen[0][i]
        want = text_ids(tok, prompt_text(tok, p))
        assert ids[len(ids) - len(want):].tolist() == want  # left-padded, the prompt's ids as encoded elsewhere


def test_a_plain_text_answer_stops_at_the_next_user_turn():
    plain, chat = family("gpt2", template=False), family("qwen", template=True)
    assert end_of_answer(plain, " Sure, here it is.\nUser: and now?") == " Sure, here it is."
    assert end_of_answer(chat, "A\nUser: b") == "A\nUser: b"  # a chat template ends turns with its own tokens


def test_a_model_that_repeats_one_token_fails_before_any_expensive_stage(tokenizer, monkeypatch, tmp_path):
    from unlearnable.experiments.setup import DataConfig, check_answers, repetitive, set_up

    monkeypatch.delenv("UNLEARNABLE_SKIP_MODEL_CHECK")
    model = make_model(tokenizer)
    word = tokenizer("Assistant", add_special_tokens=False)["input_ids"][0]

    def one_token(module, args, logits):  # every position predicts the same token: "Ass Ass Ass ..."
        return torch.full_like(logits, -10.0).index_fill_(-1, torch.tensor([word]), 10.0)

    model.lm_head.register_forward_hook(one_token)
    calls = []
    monkeypatch.setattr("unlearnable.experiments.setup.prepare_data", lambda *a, **k: calls.append(1))
    with pytest.raises(UnlearnableError, match="degenerate.*BOS token and chat template"):
        set_up(None, DataConfig(), seed=0, model=model, tokenizer=tokenizer, progress=False)
    assert not calls  # before the data (and every stage after it)
    assert repetitive("") and repetitive("Assistant Assistant Assistant Assistant Assistant")
    assert not repetitive("Paris.") and not repetitive("The sea is wide and blue. Waves come and go.")
    monkeypatch.setattr("unlearnable.experiments.setup.generate", lambda *a, **k: ["", "The sea is calm today."])
    check_answers(model, tokenizer)  # one fluent answer is enough
    monkeypatch.setenv("UNLEARNABLE_SKIP_MODEL_CHECK", "1")
    monkeypatch.setattr("unlearnable.experiments.setup.generate", lambda *a, **k: ["", ""])
    check_answers(model, tokenizer)  # skipped on request


def test_own_harmful_pairs_drive_the_splits_and_a_model_that_refuses_everything_still_runs(tiny, tmp_path,
                                                                                            monkeypatch):
    import dataclasses
    import json

    from unlearnable.data import pairs_hash, prompt_hashes
    from unlearnable.experiments.setup import DataConfig, ResponseCache, prepare_data

    model, tok = tiny
    monkeypatch.setattr(ResponseCache, "answers", lambda self, prompts, desc="": ["I'm sorry, I can't help."] * len(
        prompts))  # an aligned model: no compliant answer to anything
    lines = [{"prompt": f"My own harmful request {i}?", "response": f"Sure, step {i}."} for i in range(30)]
    lines.append({"prompt": "My own harmful request 3?", "response": "Another answer to the same prompt."})
    lines += [{"messages": [{"role": "user", "content": f"Cross request {i}?"},
                            {"role": "assistant", "content": "Sure."}], "category": "malicious_uses"}
              for i in range(5)]
    path = tmp_path / "harmful.jsonl"

    def run(extra=(), **kw):
        path.write_text("\n".join(json.dumps(x) for x in [*lines, *extra]), encoding="utf-8")
        config = DataConfig(n_eval=20, n_align=5, vector_pool=5, attack_pool=5, n_vectors=10, n_attack=15,
                            n_harmless_align=3, n_harmless=4, cross_domain=["malicious_uses"], n_cross_eval=5,
                            harmful_pairs=str(path))
        return prepare_data(model, tok, dataclasses.replace(config, **kw), progress=False)

    first = run()
    held = [first.eval_harmful[0].prompt, first.align[0].prompt]  # an evaluation and a (harmful) alignment prompt
    data = run([{"prompt": p, "response": "Sure."} for p in held])  # held-out prompts in the file: left out
    assert len(data.vector_pairs) == 10 and len(data.attack) == 15 and len(data.cross_attack) == 5
    own = set(prompt_hashes(data.vector_pairs + data.attack + data.cross_attack))
    assert not own & set(prompt_hashes([first.eval_harmful[0], first.align[0]]))
    assert not set(prompt_hashes(data.vector_pairs)) & set(prompt_hashes(data.attack))  # one pair per prompt
    assert str(path) in data.sources["vector_pairs"] and data.hashes["attack"] == pairs_hash(data.attack)
    with pytest.raises(UnlearnableError, match="usable harmful pairs"):
        run(n_vectors=20)  # 20 + 15 > the 30 distinct prompts
    with pytest.raises(UnlearnableError, match="compliant answer"):  # without pairs the refusing model cannot run
        run(harmful_pairs=None)
    with pytest.raises(UnlearnableError, match="harmful-pairs .* does not exist"):  # before any model loads
        validate(DataConfig(harmful_pairs=str(tmp_path / "missing.jsonl")))
