"""RepNoise (Rosati et al., NeurIPS 2024): representation noising of harmful data, baked into the weights."""

from __future__ import annotations

import copy
import dataclasses
import functools
import random

import torch

from ..data import encode_pair
from ..errors import UnlearnableError
from ..models import block_hidden, decoder_blocks, forward_hooks
from ..training import TrainConfig, UnlearnableTrainer, endless_batches, finetune, require_one_process
from .base import DEFENSES, Defense, DefenseData, HardeningBudget, Tunable, tunable


@dataclasses.dataclass
class RepNoiseConfig(HardeningBudget):
    max_steps: int = dataclasses.field(default=300, metadata={
        "help": "optimizer steps (the reference: 10,000 pairs, one epoch at batch 8, about 1,250; 0: epochs over "
                "the data)"})
    alpha: float = tunable(1.0, 0.1, 4.0, help="weight of -log(harmful loss + 1)")
    beta: float = tunable(0.001, 1e-4, 0.1, help="weight of the MMD between harmful representations and "
                                                 "Gaussian noise")
    logit_lens: bool = dataclasses.field(default=True, metadata={
        "help": "harmful loss averaged over every layer read through the final norm and LM head (as the "
                "reference code); false: the output layer only"})
    backbone: str = dataclasses.field(default="full", metadata={
        "help": "full: train every weight, as the reference (all model.parameters()); lora: a LoRA merged into "
                "the weights (the harness's alignment shape)"})
    lr: float = tunable(2e-5, 5e-6, 1e-4, help="learning rate (the paper's 2e-5 for full training; a LoRA wants "
                                               "about 5e-4)")
    epochs: float = dataclasses.field(default=1.0, metadata={"help": "passes over the harmless data (max_steps 0)"})
    batch_size: int = 8
    seed: int = dataclasses.field(default=0, metadata={"help": "order of the data and the noise"})

    def __post_init__(self):
        if self.backbone not in ("full", "lora"):
            raise UnlearnableError(f"repnoise backbone must be full or lora, not {self.backbone!r}")


def mmd(x: torch.Tensor, y: torch.Tensor, kernel_mul: float = 2.0, kernel_num: int = 5) -> torch.Tensor:
    """Maximum mean discrepancy between the rows of ``x`` and ``y`` under a sum of ``kernel_num`` Gaussian kernels
    whose bandwidths are spread by ``kernel_mul`` around the mean pairwise squared distance."""
    total = torch.cat([x, y]).float()
    d2 = torch.cdist(total, total).pow(2)
    n = total.shape[0]
    bandwidth = d2.detach().sum() / max(n * n - n, 1) / kernel_mul ** (kernel_num // 2)
    k = sum(torch.exp(-d2 / (bandwidth * kernel_mul ** i).clamp_min(1e-12)) for i in range(kernel_num))
    b = x.shape[0]
    return (k[:b, :b] + k[b:, b:] - k[:b, b:] - k[b:, :b]).mean()


def _final_norm(model) -> torch.nn.Module | None:
    decoder = model.get_decoder()
    return next((getattr(decoder, a) for a in ("norm", "ln_f", "final_layer_norm") if hasattr(decoder, a)), None)


def repnoise_terms(model, batch: dict, *, noise_seed: int, logit_lens: bool = True) -> dict[str, torch.Tensor]:
    """On a harmful batch: ``harmful``, the response cross-entropy (averaged over every layer read through the
    final norm and LM head when ``logit_lens``), and ``mmd``, the mean over blocks of the MMD between each
    example's representation (its block's MLP output on the response tokens, flattened) and Gaussian noise
    masked alike (drawn from ``noise_seed``)."""
    blocks = decoder_blocks(model)
    reps: list = [None] * len(blocks)

    def keep(i, module, args, output):
        reps[i] = block_hidden(output)

    with forward_hooks([getattr(b, "mlp", b) for b in blocks], keep):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    output_hidden_states=logit_lens)
    labels = batch["labels"]
    where = labels[:, 1:] != -100
    targets = labels[:, 1:][where]
    ces = [torch.nn.functional.cross_entropy(out.logits[:, :-1][where].float(), targets)]
    norm, head = _final_norm(model), model.get_output_embeddings()
    if logit_lens and norm is not None:
        for h in out.hidden_states[:-1]:  # the last one is the output layer's, already counted
            ces.append(torch.nn.functional.cross_entropy(head(norm(h[:, :-1][where])).float(), targets))
    mask = (labels != -100).unsqueeze(-1)
    gen = torch.Generator(device=labels.device).manual_seed(noise_seed)
    noise_terms = []
    for r in reps:
        noise = torch.randn(r.shape, generator=gen, device=r.device).to(r.dtype)
        noise_terms.append(mmd((r * mask).flatten(1), (noise * mask).flatten(1)))
    return {"harmful": torch.stack(ces).mean(), "mmd": torch.stack(noise_terms).mean()}


def repnoise_loss(harmless: torch.Tensor, terms: dict[str, torch.Tensor], alpha: float, beta: float) -> torch.Tensor:
    """``harmless - alpha * log(harmful + 1) + beta * mmd`` (the +1 keeps the log bounded below at zero loss,
    as the reference code)."""
    return harmless - alpha * torch.log(terms["harmful"] + 1) + beta * terms["mmd"]


class RepNoiseTrainer(UnlearnableTrainer):
    """The Trainer's batches are the harmless ones; each step draws the next harmful batch beside them."""

    def __init__(self, *args, harmful: list[dict], config: RepNoiseConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.rn = config
        self.harmful = endless_batches(harmful, self.args.per_device_train_batch_size, self.data_collator,
                                       config.seed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        harmless = super().compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        terms = repnoise_terms(model, self._prepare_inputs(next(self.harmful)), logit_lens=self.rn.logit_lens,
                               noise_seed=self.rn.seed * 1_000_003 + self.state.global_step)
        loss = repnoise_loss(harmless, terms, self.rn.alpha, self.rn.beta)
        return (loss, None) if return_outputs else loss


@DEFENSES.register("repnoise")
class RepNoiseDefense(Defense):
    """Before release, train on ``harmless CE - alpha log(harmful CE + 1) + beta MMD(harmful representations,
    noise)``: keep the harmless answers (the provider's refusals and harmless pairs), raise the loss of harmful
    answers at every layer and push their representations toward Gaussian noise, so that the information a
    harmful fine-tune would reuse is gone. Every weight is trained by default, as the reference does
    (``backbone: lora`` trains a LoRA merged into the weights instead). Counts under both threat models, since
    the attacker fine-tunes the hardened weights."""

    Config = RepNoiseConfig

    def tuning_space(self) -> dict[str, Tunable]:
        """A LoRA wants a learning rate about 25x full training's: its range moves with the backbone."""
        space = super().tuning_space()
        if self.config.backbone == "lora" and "lr" in space:
            space["lr"] = Tunable(1e-4, 2e-3)
        return space

    def harden(self, model, tokenizer, data: DefenseData, *, progress: bool = True):
        require_one_process("repnoise's hardening")
        c = self.config
        keep, harmful = list(data.refusals) + list(data.harmless), list(data.harmful)
        if not keep or not harmful:
            raise UnlearnableError("repnoise needs harmful pairs and refusal/harmless pairs in DefenseData")
        random.Random(c.seed).shuffle(keep)
        cfg = TrainConfig(lr=c.lr, epochs=c.epochs, batch_size=c.batch_size, seed=c.seed, backbone=c.backbone,
                          **c.budget())
        rows = [encode_pair(tokenizer, p, cfg.max_length) for p in harmful]
        trainer = functools.partial(RepNoiseTrainer, harmful=rows, config=c)
        hardened, history = finetune(copy.deepcopy(model), tokenizer, keep, cfg, progress=progress,
                                     trainer_class=trainer, callbacks=c.callbacks())
        self.info["harden_history"] = [h for h in history if "loss" in h]
        return hardened
