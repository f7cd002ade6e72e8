"""Buffer-and-Reinforce ("Jailbreak to Protect", arXiv 2605.24550): vectors as a buffer, then a refusal LoRA."""

from __future__ import annotations

import dataclasses

from ..adapters import merge_adapters_qr
from ..data import Pair
from ..errors import UnlearnableError
from ..training import BACKBONE_ADAPTER
from ..vectors import finetune, train_beside_vectors
from .base import DEFENSES, DefenseData
from .security_vectors import SecurityVectorsConfig, SecurityVectorsDefense


@dataclasses.dataclass
class BufferReinforceConfig(SecurityVectorsConfig):
    reinforce_steps: int = dataclasses.field(default=20, metadata={"help": "steps of the reinforcement LoRA"})
    reinforce_lr: float = 1e-3
    reinforce_rank: int = dataclasses.field(default=8, metadata={"help": "rank of the reinforcement LoRA "
                                                                          "(alpha = 2 x rank)"})
    harmless_share: float = dataclasses.field(default=0.5, metadata={
        "help": "the harmless pairs' share of the reinforcement data (cycled to reach it): the reinforcement learns "
                "to refuse harmful prompts, not every prompt; 0: the refusal pairs plus the harmless ones as given"})
    adapter_out: str | None = dataclasses.field(default=None, metadata={
        "help": "where to write the merged (user + reinforce) adapter in plain PEFT format"})

    def __post_init__(self):
        if not 0 <= self.harmless_share < 1:
            raise UnlearnableError("buffer-reinforce harmless_share is a share of the reinforcement data, in [0, 1)")


@DEFENSES.register("buffer-reinforce")
class BufferReinforceDefense(SecurityVectorsDefense):
    """The security vectors act as a buffer during the user's fine-tuning; then a second LoRA is trained to
    refuse harmful prompts *while the buffer is on* (the user's adapter frozen) and merged with the user's
    adapter into one LoRA by QR decomposition (:func:`unlearnable.adapters.merge_adapters_qr`).

    The reinforcement data is the provider's, not the user's: its refusal pairs plus its harmless pairs
    (``DefenseData.harmless``: harmless prompts with the model's own answers), cycled to ``harmless_share`` of
    it, so the second LoRA learns to refuse harmful prompts rather than everything (trained on refusals alone, or
    on 100 refusals beside 30 harmless pairs, it refused everything on the default model: docs/results/).
    """

    Config = BufferReinforceConfig
    changed_defaults = ("harmless_share",)  # from the harmless pairs as given (0.0)
    REINFORCE = "reinforce"
    #: the served model only exists after the reinforcement that follows the user's fine-tuning
    post_training = True

    def __init__(self, config: BufferReinforceConfig | None = None, **kwargs):
        super().__init__(config, **kwargs)
        self.refusals: list[Pair] = []
        self.harmless: list[Pair] = []

    def prepare(self, model, tokenizer, data: DefenseData, *, progress: bool = True) -> None:
        self.refusals, self.harmless = list(data.refusals), list(data.harmless)
        if not self.refusals:  # before the vectors train, not after
            raise UnlearnableError("buffer-reinforce needs the provider's refusal pairs: give "
                                   "DefenseData(refusals=...)")
        super().prepare(model, tokenizer, data, progress=progress)
        pairs = self.reinforcement_pairs()
        self.info["reinforce_data"] = {"refusals": len(self.refusals), "harmless": len(self.harmless),
                                       "harmless_rows": len(pairs) - len(self.refusals)}

    def reinforcement_pairs(self) -> list[Pair]:
        """The refusal pairs and the harmless ones, these repeated in order until they make up ``harmless_share``
        of the data (never fewer than given)."""
        share, harmless = self.config.harmless_share, self.harmless
        if not harmless:
            return list(self.refusals)
        n = max(len(harmless), round(len(self.refusals) * share / (1 - share)))
        return list(self.refusals) + [harmless[i % len(harmless)] for i in range(n)]

    def finetune(self, model, tokenizer, pairs, config, *, progress: bool = True, **kw):
        c = self.config
        if config.backbone != "lora":
            raise UnlearnableError("buffer-reinforce merges LoRA adapters: use backbone=lora")
        net, history = finetune(model, tokenizer, pairs, config, vectors=self.vectors, scale=self.scale,
                                progress=progress, return_peft=True, **kw)
        spec = dataclasses.replace(config.lora, r=c.reinforce_rank, alpha=2 * c.reinforce_rank)
        rcfg = dataclasses.replace(config, lora=spec, lr=c.reinforce_lr, max_steps=c.reinforce_steps, epochs=1.0)
        history += train_beside_vectors(net, tokenizer, self.reinforcement_pairs(), self.REINFORCE,
                                        spec.peft_config(net.get_base_model()), rcfg, progress=progress)
        if c.adapter_out:
            merge_adapters_qr(net, BACKBONE_ADAPTER, self.REINFORCE, c.adapter_out)
        plain = net.merge_and_unload(adapter_names=[BACKBONE_ADAPTER, self.REINFORCE])
        for p in plain.parameters():
            p.requires_grad_(False)
        return plain.eval(), history
