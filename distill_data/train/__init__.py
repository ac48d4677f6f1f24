"""Shared trainer: one training loop (:func:`fit`) driven by a :class:`TrainRecipe`, the
distillation losses, and teachers."""

from distill_data.train.fit import TrainData, fit
from distill_data.train.recipe import RECIPES, TrainRecipe, get_recipe
from distill_data.train.teacher import TeacherConfig, load_teacher, train_teacher

__all__ = [
    "RECIPES",
    "TeacherConfig",
    "TrainData",
    "TrainRecipe",
    "fit",
    "get_recipe",
    "load_teacher",
    "train_teacher",
]
