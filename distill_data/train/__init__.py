"""Shared trainer: plain supervised training and teachers (more modes join here)."""

from distill_data.train.fit import fit
from distill_data.train.teacher import TeacherConfig, load_teacher, train_teacher

__all__ = ["TeacherConfig", "fit", "load_teacher", "train_teacher"]
