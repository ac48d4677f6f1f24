"""Generators: one file per method, all registered in :data:`GENERATORS`."""

from distill_data.synth import coreset  # noqa: F401  (registers random, herding, kcenter)
from distill_data.synth.base import GENERATORS, Generator, GeneratorConfig, run_generator

__all__ = ["GENERATORS", "Generator", "GeneratorConfig", "run_generator"]
