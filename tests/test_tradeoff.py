import copy
import json

import torch
from peft import PeftModel

from unlearnable.adapters import qr_merge
from unlearnable.data import Pair
from unlearnable.defenses import BufferReinforceDefense, DefenseData
from unlearnable.training import TrainConfig
from unlearnable.tradeoff import TradeoffConfig, frontier, run_tradeoff
from unlearnable.vectors import SecurityVectors, VectorConfig

HARMLESS = [Pair(f"Write a short line about topic {i}.", "") for i in range(8)]


def test_qr_merge_is_exact():
    torch.manual_seed(0)
    b1, a1, b2, a2 = torch.randn(12, 3), torch.randn(3, 10), torch.randn(12, 2), torch.randn(2, 10)
    b, a = qr_merge(b1, a1, 2.0, b2, a2, 0.5)
    assert b.shape == (12, 5) and a.shape == (5, 10)
    assert torch.allclose(b @ a, 2.0 * b1 @ a1 + 0.5 * b2 @ a2, atol=1e-5)
    assert torch.allclose(b.T @ b, torch.eye(5), atol=1e-5)


def _kl_to_base(model, vectors, tok, prompts):
    from unlearnable.data import prompt_text

    pm = vectors.attach(copy.deepcopy(model), scale=1.0)
    total = 0.0
    with torch.no_grad():
        for p in prompts:
            ids = tok(prompt_text(tok, p.prompt), return_tensors="pt")
            base = torch.log_softmax(model(**ids).logits[0, -1], -1)
            on = torch.log_softmax(pm(**ids).logits[0, -1], -1)
            total += float((base.exp() * (base - on)).sum())
    return total / len(prompts)


def test_benign_preserving_vectors_leave_harmless_outputs_closer(tiny, harmful_pairs):
    model, tok = tiny
    held_out = [Pair(f"Write a short line about subject {i}?", "") for i in range(6)]
    cfg = dict(epochs=6, batch_size=8, lr=3e-2)
    plain = SecurityVectors.train(model, tok, harmful_pairs, VectorConfig(**cfg), progress=False)
    kl = SecurityVectors.train(model, tok, harmful_pairs, VectorConfig(benign="kl", benign_repeats=2, **cfg),
                               progress=False, harmless=HARMLESS)
    assert kl.metadata["n_benign"] > 0
    assert _kl_to_base(model, kl, tok, held_out) < _kl_to_base(model, plain, tok, held_out)


def test_buffer_reinforce_merged_adapter_loads_with_plain_peft(tiny, harmful_pairs, task_pairs, tmp_path):
    model, tok = tiny
    refusals = [Pair(p.prompt, "I'm sorry, but I can't help with that.") for p in harmful_pairs[:8]]
    d = BufferReinforceDefense(config=VectorConfig(epochs=1, batch_size=8), scale=1.0, reinforce_steps=3,
                               adapter_out=str(tmp_path / "merged"))
    d.prepare(model, tok, DefenseData(harmful=harmful_pairs[:8], refusals=refusals), progress=False)
    served, history = d.finetune(copy.deepcopy(model), tok, task_pairs * 2, TrainConfig(epochs=1, batch_size=8),
                                 progress=False)
    assert not any("lora" in k for k in served.state_dict())
    loaded = PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path / "merged"))
    ids = tok("What is the job of Alice?", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(loaded(**ids).logits, served(**ids).logits, atol=1e-4)
        assert not torch.allclose(model(**ids).logits, served(**ids).logits, atol=1e-4)


def test_frontier_drops_dominated_points():
    pts = [{"method": "m", "strength": s, "seed": 0, "harm_rate": h, "task_score": t}
           for s, h, t in [(0.5, 0.2, 0.9), (1.0, 0.1, 0.5), (0.75, 0.3, 0.8)]]
    f = frontier(pts)["m"]
    assert [p["strength"] for p in f] == [1.0, 0.5]  # 0.75 is dominated by 0.5


def test_tradeoff_quick_on_tiny_model_writes_the_keys(tiny, harmful_pairs, tmp_path):
    from test_immunization import tiny_data

    model, tok = tiny
    cfg = TradeoffConfig.quick()
    cfg.base.align = False
    cfg.base.data.system_prompt = None
    cfg.base.vectors = VectorConfig(epochs=1, batch_size=8)
    cfg.base.finetune = TrainConfig(max_steps=2, batch_size=8)
    cfg.base.data.task_repeats = 1
    data = tiny_data(harmful_pairs)
    res = run_tradeoff(cfg, tmp_path / "t", model=model, tokenizer=tok, data=data, progress=False)
    saved = json.loads((tmp_path / "t" / "results.json").read_text())
    assert saved["points"] and saved["frontier"]
    for p in saved["points"]:
        assert {"method", "strength", "seed", "harm_rate", "task_score", "seconds"} <= set(p)
    assert {(p["method"], p["strength"]) for p in saved["points"]} == {
        ("none", 0.0), ("plain", 0.5), ("plain", 1.0), ("benign-kl", 0.5), ("benign-kl", 1.0)}
    assert (tmp_path / "t" / "tradeoff.png").is_file() and (tmp_path / "t" / "report.html").is_file()
    assert res["frontier"].keys() == saved["frontier"].keys()
