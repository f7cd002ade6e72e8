"""The attacker's own imitation of a service's security vectors.

A service's vectors are private, but its method is not (the paper is public): an attacker can train a LoRA of its
own on harmful pairs it holds back, on the public model with the model frozen, and screen its data with the
``vector-gain`` flagger against that proxy, hoping that what gains little under its proxy gains little under the
service's vectors too. :class:`ProxyVectors` offers what the flagger reads of vectors: ``applied(model, scale)`` and
``config.scale``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
from typing import Any, Sequence

from ..adapters import adapter_applied, attach_frozen
from ..data import Pair
from ..models import model_fingerprint
from ..training import BACKBONE_ADAPTER, TrainConfig, finetune
from ..utils import sha256_json

PROXY_ADAPTER = "attacker_proxy"
#: proxies kept in memory, shared by every attack of the process
KEEP = 2
_TRAINED: OrderedDict[str, "ProxyVectors"] = OrderedDict()


@dataclasses.dataclass(frozen=True)
class ProxyRecipe:
    """How the attacker trains its proxy: the paper's recipe as a reader would run it (a LoRA, a few epochs)."""

    lr: float = 2e-3
    epochs: float = 8.0
    batch_size: int = 8
    max_length: int = 128
    scale: float = 1.0
    seed: int = 0


class ProxyVectors:
    """A LoRA trained on the attacker's own harmful pairs, kept outside the model and put in only for a block."""

    def __init__(self, state: dict[str, Any], lora_config, config: ProxyRecipe):
        self.state, self.lora_config, self.config = state, lora_config, config

    @classmethod
    def train(cls, model, tokenizer, pairs: Sequence[Pair], config: ProxyRecipe = ProxyRecipe(), *,
              progress: bool = False) -> "ProxyVectors":
        """Fit the proxy on ``pairs`` (a copy of ``model`` trains; ``model`` is left as it is), once per process
        for the same weights, pairs and recipe (:data:`KEEP`: a search's trials and defences repeat them)."""
        key = sha256_json([model_fingerprint(model), [dataclasses.astuple(p) for p in pairs],
                           dataclasses.asdict(config)])
        if key not in _TRAINED:
            _TRAINED[key] = cls._fit(model, tokenizer, pairs, config, progress)
            while len(_TRAINED) > KEEP:
                _TRAINED.popitem(last=False)
        _TRAINED.move_to_end(key)
        return _TRAINED[key]

    @classmethod
    def _fit(cls, model, tokenizer, pairs: Sequence[Pair], config: ProxyRecipe, progress: bool) -> "ProxyVectors":
        from peft import get_peft_model_state_dict

        recipe = TrainConfig(lr=config.lr, epochs=config.epochs, batch_size=config.batch_size,
                             max_length=config.max_length, seed=config.seed)
        net, _ = finetune(copy.deepcopy(model), tokenizer, pairs, recipe, return_peft=True, progress=progress)
        state = get_peft_model_state_dict(net, adapter_name=BACKBONE_ADAPTER)
        return cls({k: v.detach().clone() for k, v in state.items()}, net.peft_config[BACKBONE_ADAPTER], config)

    def applied(self, model, scale: float):
        """A block within which ``model`` runs with the proxy on at ``scale``; it is taken out after (the model's
        weights train as they did before)."""
        return adapter_applied(model, lambda m: attach_frozen(m, self.lora_config, self.state, PROXY_ADAPTER, scale,
                                                              what="the attacker's proxy vectors",
                                                              refit="train the proxy again"))
