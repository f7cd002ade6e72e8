"""Defences against harmful fine-tuning, one module each, registered by name in :data:`DEFENSES`."""

from . import adversarial_loss, buffer_reinforce, none, safety_data_mix, security_vectors  # noqa: F401 - registers
from .adversarial_loss import AdversarialLossConfig, AdversarialLossDefense
from .base import DEFENSES, SERVICE, WEIGHTS, Defense, DefenseData
from .buffer_reinforce import BufferReinforceConfig, BufferReinforceDefense
from .none import NoDefense
from .safety_data_mix import SafetyDataMixConfig, SafetyDataMixDefense
from .security_vectors import SecurityVectorsConfig, SecurityVectorsDefense

__all__ = ["DEFENSES", "SERVICE", "WEIGHTS", "AdversarialLossConfig", "AdversarialLossDefense",
           "BufferReinforceConfig", "BufferReinforceDefense", "Defense", "DefenseData", "NoDefense",
           "SafetyDataMixConfig", "SafetyDataMixDefense", "SecurityVectorsConfig", "SecurityVectorsDefense"]
