"""Defences against harmful fine-tuning, one module each, registered by name in :data:`DEFENSES`."""

from . import (  # noqa: F401 - registers
    adversarial_loss,
    booster,
    buffer_reinforce,
    lisa,
    moderation_filter,
    none,
    safe_lora,
    safety_data_mix,
    security_vectors,
)
from .adversarial_loss import AdversarialLossConfig, AdversarialLossDefense
from .base import DEFENSES, SERVICE, WEIGHTS, Defense, DefenseData
from .booster import BoosterConfig, BoosterDefense
from .buffer_reinforce import BufferReinforceConfig, BufferReinforceDefense
from .lisa import LisaConfig, LisaDefense
from .moderation_filter import ModerationFilterConfig, ModerationFilterDefense
from .none import NoDefense
from .safe_lora import SafeLoraConfig, SafeLoraDefense
from .safety_data_mix import SafetyDataMixConfig, SafetyDataMixDefense
from .security_vectors import SecurityVectorsConfig, SecurityVectorsDefense

__all__ = ["DEFENSES", "SERVICE", "WEIGHTS", "AdversarialLossConfig", "AdversarialLossDefense", "BoosterConfig",
           "BoosterDefense", "BufferReinforceConfig", "BufferReinforceDefense", "Defense", "DefenseData",
           "LisaConfig", "LisaDefense", "ModerationFilterConfig", "ModerationFilterDefense", "NoDefense",
           "SafeLoraConfig", "SafeLoraDefense", "SafetyDataMixConfig", "SafetyDataMixDefense",
           "SecurityVectorsConfig", "SecurityVectorsDefense"]
