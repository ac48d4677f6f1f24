"""Evaluation: the train-from-scratch protocol, baselines, DD-Ranking scores, reports."""

from distill_data.evaluation.evaluate import (
    BASELINES,
    EvalRequest,
    evaluate,
    format_report,
    plan,
    random_subset,
)
from distill_data.evaluation.protocol import EvalConfig, evaluate_set, train_and_test
from distill_data.evaluation.report import machine_info
from distill_data.evaluation.scores import augmentation_robust_score, label_robust_score

__all__ = [
    "BASELINES",
    "EvalConfig",
    "EvalRequest",
    "augmentation_robust_score",
    "evaluate",
    "evaluate_set",
    "format_report",
    "label_robust_score",
    "machine_info",
    "plan",
    "random_subset",
    "train_and_test",
]
