"""Experiments and jobs: one scaffold (:mod:`.setup`) that ``demo``, ``immunize`` and ``tradeoff`` share, and
the single-artifact jobs behind ``vectors train``, ``finetune`` and ``evaluate`` (:mod:`.jobs`)."""

from ..attacks import AttackSettings
from ..threat_models import SearchSpace, ServiceConfig
from .demo import DemoConfig, run_demo
from .immunize import BudgetConfig, ImmunizeConfig, TrainabilityConfig, VerdictConfig, conditions, run_immunize
from .jobs import EvaluateJob, FinetuneJob, LoadOptions, VectorsTrainJob, run_evaluate, run_finetune, run_vectors_train
from .search import AttackerSearchConfig, DefenseSearch, Target
from .setup import DataConfig, PreparedData, Setup, align, envelope, prepare_data, set_up
from .tradeoff import TradeoffConfig, run_tradeoff

__all__ = ["AttackSettings", "AttackerSearchConfig", "BudgetConfig", "DataConfig", "DefenseSearch", "DemoConfig",
           "EvaluateJob", "FinetuneJob", "ImmunizeConfig", "LoadOptions", "PreparedData", "SearchSpace",
           "ServiceConfig", "Setup", "Target",
           "TradeoffConfig", "TrainabilityConfig", "VectorsTrainJob", "VerdictConfig", "align", "conditions",
           "envelope", "prepare_data", "run_demo", "run_evaluate", "run_finetune", "run_immunize", "run_tradeoff",
           "run_vectors_train", "set_up"]
