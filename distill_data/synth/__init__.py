"""Generators: one file per method, all registered in :data:`GENERATORS`."""

from distill_data.synth import coreset, datadam, dm, fyi, genie, infer, ncfm, sre2l, zeroq  # noqa: F401
from distill_data.synth.base import GENERATORS, Generator, GeneratorConfig, run_generator

__all__ = ["GENERATORS", "Generator", "GeneratorConfig", "run_generator"]
