import pytest
import torch

from unlearnable.data import Pair, encode_pair
from unlearnable.evaluation import response_loss


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
