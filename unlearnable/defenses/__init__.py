"""Defences against harmful fine-tuning, one module each, registered by name in :data:`DEFENSES`."""

from . import (  # noqa: F401 - registers
    adaptive_vectors,
    adversarial_loss,
    alternating_vectors,
    augmented_vectors,
    booster,
    buffer_reinforce,
    early_stopped_vectors,
    gated_vectors,
    lisa,
    moderation_filter,
    negated_vectors,
    none,
    repnoise,
    safe_lora,
    safety_data_mix,
    security_vectors,
    vaccine,
    varied_vectors,
)
from .adaptive_vectors import AdaptiveVectorsConfig, AdaptiveVectorsDefense
from .adversarial_loss import AdversarialLossConfig, AdversarialLossDefense
from .alternating_vectors import AlternatingVectorsConfig, AlternatingVectorsDefense
from .augmented_vectors import AugmentedVectorsConfig, AugmentedVectorsDefense
from .base import (
    DEFENSES,
    SERVICE,
    WEIGHTS,
    Defense,
    DefenseData,
    changed_defaults,
    check_defense_options,
    prepared,
    revisions,
)
from .booster import BoosterConfig, BoosterDefense
from .buffer_reinforce import BufferReinforceConfig, BufferReinforceDefense
from .early_stopped_vectors import EarlyStoppedVectorsConfig, EarlyStoppedVectorsDefense
from .gated_vectors import GatedVectorsConfig, GatedVectorsDefense
from .lisa import LisaConfig, LisaDefense
from .moderation_filter import ModerationFilterConfig, ModerationFilterDefense
from .negated_vectors import NegatedVectorsConfig, NegatedVectorsDefense
from .none import NoDefense
from .repnoise import RepNoiseConfig, RepNoiseDefense
from .safe_lora import SafeLoraConfig, SafeLoraDefense
from .safety_data_mix import SafetyDataMixConfig, SafetyDataMixDefense
from .security_vectors import SecurityVectorsConfig, SecurityVectorsDefense
from .vaccine import VaccineConfig, VaccineDefense
from .varied_vectors import VariedVectorsConfig, VariedVectorsDefense

__all__ = ["DEFENSES", "SERVICE", "WEIGHTS", "AdaptiveVectorsConfig", "AdaptiveVectorsDefense",
           "AdversarialLossConfig", "AdversarialLossDefense", "changed_defaults", "check_defense_options", "revisions",
           "AlternatingVectorsConfig", "AlternatingVectorsDefense", "AugmentedVectorsConfig",
           "AugmentedVectorsDefense", "BoosterConfig", "BoosterDefense", "BufferReinforceConfig",
           "BufferReinforceDefense", "Defense", "DefenseData", "EarlyStoppedVectorsConfig",
           "EarlyStoppedVectorsDefense", "GatedVectorsConfig", "GatedVectorsDefense", "LisaConfig", "LisaDefense",
           "ModerationFilterConfig", "ModerationFilterDefense", "NegatedVectorsConfig", "NegatedVectorsDefense",
           "NoDefense", "RepNoiseConfig", "prepared", "RepNoiseDefense",
           "SafeLoraConfig", "SafeLoraDefense", "SafetyDataMixConfig", "SafetyDataMixDefense", "SecurityVectorsConfig",
           "SecurityVectorsDefense", "VaccineConfig", "VaccineDefense", "VariedVectorsConfig", "VariedVectorsDefense"]
