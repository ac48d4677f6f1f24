"""Shared trainer: plain supervised training (more modes join here)."""

from distill_data.train.fit import fit

__all__ = ["fit"]
