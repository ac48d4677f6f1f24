"""Generators: one file per method, all registered in :data:`GENERATORS`."""

from distill_data.synth import coreset, dm  # noqa: F401  (registers the generators)
from distill_data.synth.base import GENERATORS, Generator, GeneratorConfig, run_generator

__all__ = ["GENERATORS", "Generator", "GeneratorConfig", "run_generator"]
