"""Generators: one file per method, all registered in :data:`GENERATORS`."""

from distill_data.synth import coreset, datadam, dm, fyi, ncfm  # noqa: F401  (registration)
from distill_data.synth.base import GENERATORS, Generator, GeneratorConfig, run_generator

__all__ = ["GENERATORS", "Generator", "GeneratorConfig", "run_generator"]
