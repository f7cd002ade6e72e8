"""Security vectors (Zhou et al., ACL Findings 2024) as a defence of the harness."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Iterator

from ..vectors import META_FILE, SecurityVectors, VectorConfig, finetune, serving
from .base import DEFENSES, SERVICE, Defense, DefenseData, tunable


@dataclasses.dataclass
class SecurityVectorsConfig:
    scale: float | None = tunable(None, 0.5, 2.0, help="strength during fine-tuning (None: the strength recorded "
                                                       "with the vectors)")
    training: VectorConfig = dataclasses.field(default_factory=VectorConfig, metadata={
        "help": "how the vectors are trained when none are given"})


@DEFENSES.register("security-vectors")
class SecurityVectorsDefense(Defense):
    """Frozen vectors on during fine-tuning, off when serving. Service threat model only."""

    tradeoff_variants = {"plain": "none", "benign-distill": "distill", "benign-kl": "kl"}

    threat_models = (SERVICE,)
    Config = SecurityVectorsConfig

    def __init__(self, config: SecurityVectorsConfig | None = None, *, vectors: SecurityVectors | None = None,
                 **options):
        super().__init__(config, **options)
        self.vectors = vectors

    @property
    def scale(self) -> float | None:
        return self.config.scale

    def prepare(self, model, tokenizer, data: DefenseData, *, progress: bool = True) -> None:
        if self.vectors is None:
            self.vectors = SecurityVectors.train(model, tokenizer, list(data.harmful), self.config.training,
                                                 progress=progress, harmless=list(data.harmless))
        self.info["vectors"] = {k: self.vectors.metadata.get(k) for k in
                                ("base_fingerprint", "data_hash", "n_pairs", "train_loss_first", "train_loss_last",
                                 "steps", "config", "holdout", "ensemble")}

    def save_state(self, folder: Path) -> None:
        if self.vectors is not None and not (folder / "vectors").exists():
            self.vectors.save(folder / "vectors")

    def load_state(self, folder: Path) -> bool:
        if (folder / "vectors" / META_FILE).is_file():
            self.vectors = SecurityVectors.load(folder / "vectors")
            return True
        return False

    def prepared_vectors(self) -> SecurityVectors:
        """The vectors :meth:`prepare` trained or was given (every variant's fine-tune starts here)."""
        if self.vectors is None:
            raise RuntimeError(f"{self.name} defence used before prepare()")
        return self.vectors

    def finetune(self, model, tokenizer, pairs, config, *, progress: bool = True, **kw):
        return finetune(model, tokenizer, pairs, config, vectors=self.prepared_vectors(), scale=self.scale,
                        progress=progress, **kw)

    @contextlib.contextmanager
    def serving(self, model) -> Iterator[None]:
        with serving(model):
            yield
