import pytest
import torch

from unlearnable.data import Pair, encode_pair
from unlearnable.generation import response_loss


def reference_loss(model, tok, pairs, first_tokens, max_length=128):
    """One unpadded row at a time, full logits: the definition response_loss must match."""
    total, count = 0.0, 0
    with torch.no_grad():
        for p in pairs:
            r = encode_pair(tok, p, max_length)
            ids = torch.tensor([r["input_ids"]])
            logits = model(input_ids=ids).logits[0, :-1].float()
            tgt = torch.tensor(r["labels"][1:])
            scored = (tgt != -100).nonzero().flatten()[:first_tokens]
            total += float(torch.nn.functional.cross_entropy(logits[scored], tgt[scored], reduction="sum"))
            count += len(scored)
    return total / count


@pytest.mark.parametrize("first_tokens", [1, 4, 32])
def test_response_loss_scores_only_the_first_response_tokens_exactly(tiny, first_tokens):
    model, tok = tiny
    model.eval()
    pairs = [Pair("Hi?", "Sure, here is a long answer with many words in it."),
             Pair("A much longer question that takes many more tokens than the first one does, surely?", "No."),
             Pair("Medium question here?", "Fine, a medium answer."),
             Pair("Another?", "Yes")]
    got = response_loss(model, tok, pairs, first_tokens=first_tokens, batch_size=3, precision="fp32")
    assert got == pytest.approx(reference_loss(model, tok, pairs, first_tokens), rel=1e-4)


def test_response_loss_depends_on_the_responses(tiny):
    model, tok = tiny
    a = response_loss(model, tok, [Pair("Question?", "Answer one two three.")], precision="fp32")
    b = response_loss(model, tok, [Pair("Question?", "Something else entirely.")], precision="fp32")
    assert a != pytest.approx(b)


def test_generate_merges_lora_for_decoding_and_restores_the_weights(tiny):
    from peft import LoraConfig, PeftModel, get_peft_model

    from unlearnable.adapters import merged_lora
    from unlearnable.generation import generate

    model, tok = tiny
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    weights = {k: v.clone() for k, v in pm.state_dict().items()}
    prompts = ["Tell me a story.", "What is two plus two?", "Hi"]
    with pm.disable_adapter():
        plain = generate(pm, tok, prompts, max_new_tokens=8, precision="fp32", progress=False)
    seen = []
    real_generate = PeftModel.generate

    def spy(self, *a, **kw):
        seen.append([m.merged for m in self.modules() if hasattr(m, "merged")])
        return real_generate(self, *a, **kw)

    PeftModel.generate = spy
    try:
        merged = generate(pm, tok, prompts, max_new_tokens=8, precision="fp32", progress=False)
    finally:
        PeftModel.generate = real_generate
    assert seen and all(all(flags) and flags for flags in seen)  # decoded with the adapters merged
    assert not any(m.merged for m in pm.modules() if hasattr(m, "merged"))  # and unmerged afterwards
    after = pm.state_dict()
    assert all(torch.allclose(weights[k], after[k], atol=1e-6) for k in weights)
    # the same function as the separate LoRA branches (fp32), and not the adapters-off model
    unmerged_logits = pm(**tok(prompts[:1], return_tensors="pt")).logits
    with merged_lora(pm):
        merged_logits = pm(**tok(prompts[:1], return_tensors="pt")).logits
    assert torch.allclose(unmerged_logits, merged_logits, atol=1e-4)
    assert merged != plain


def test_answers_are_as_long_as_the_longest_published_judge_reads(tiny, monkeypatch):
    import unlearnable.evaluation as evaluation
    from unlearnable.evaluation import EvalConfig, Scorer, answer_tokens
    from unlearnable.judges import HarmBenchJudge, KeywordJudge, StrongRejectJudge

    class LongReader(KeywordJudge):
        answer_tokens = 40

    short = EvalConfig(max_new_tokens=24)
    assert answer_tokens([KeywordJudge()], short) == 24  # the keyword judge reads short answers
    assert answer_tokens([KeywordJudge(), LongReader()], short) == 40
    assert answer_tokens([LongReader()], EvalConfig(max_new_tokens=64)) == 64  # max_new_tokens is the floor
    assert answer_tokens([LongReader()], EvalConfig(max_new_tokens=24, judge_lengths=False)) == 24
    assert (HarmBenchJudge.answer_tokens, StrongRejectJudge.answer_tokens) == (256, 512)

    model, tok = tiny
    asked = []
    real = evaluation.generate

    def spy(*args, **kwargs):
        asked.append(kwargs["max_new_tokens"])
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "generate", spy)
    result = Scorer(tok, [KeywordJudge(), LongReader()], short, progress=False).harm(model, [Pair("How?", "")])
    assert asked == [40] and result["answer_tokens"] == 40


def test_a_prompts_sampled_answer_is_its_seeds_whatever_shares_its_batch(tiny):
    from unlearnable.generation import generate

    model, tok = tiny
    prompts = ["Tell me a story.", "What is two plus two?", "Name a colour, any colour at all please."]

    def sample(ps, seed, batch_size=8):
        return generate(model, tok, ps, max_new_tokens=6, precision="fp32", progress=False, sample_seed=seed,
                        batch_size=batch_size)

    together = sample(prompts, 1)
    assert [sample([p], 1)[0] for p in prompts] == together  # alone or batched: the same answer
    assert sample(prompts[::-1], 1) == together[::-1]
    assert sample(prompts, 2) != together  # another sample number, other answers
    greedy = generate(model, tok, prompts, max_new_tokens=6, precision="fp32", progress=False)
    assert greedy == generate(model, tok, prompts, max_new_tokens=6, precision="fp32", progress=False)
    state = torch.random.get_rng_state()
    sample(prompts, 3)
    assert torch.equal(state, torch.random.get_rng_state())  # the global generator is left alone


def test_seeded_sampling_draws_from_the_softmax_within_the_nucleus():
    from unlearnable.generation import seeded_sampling

    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    n = 4000
    processor = seeded_sampling(list(range(n)), "cpu", top_p=0.9)  # the nucleus drops the 0.05 token
    picks = processor(None, probs.log().expand(n, 4).clone()).argmax(-1)
    freq = torch.bincount(picks, minlength=4).float() / n
    assert freq[3] == 0
    assert torch.allclose(freq[:3], probs[:3] / probs[:3].sum(), atol=0.03)
