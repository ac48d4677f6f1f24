"""Errors a user can cause.

Every error that bad input can trigger is a :class:`DistillDataError`. The CLI turns
them into one line on stderr and exit code 2; library users can catch the base class.
Messages name the offending input and, where there is one, the fix.
"""

from __future__ import annotations


class DistillDataError(Exception):
    """Base class for user-caused errors (bad names, paths, data, files, settings)."""


class UnknownNameError(DistillDataError, KeyError):
    """A dataset, method, model or option name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class DataError(DistillDataError):
    """Real data that is missing, malformed, of the wrong shape, or contains NaN."""


class StoreError(DistillDataError):
    """An HDF5 store that is missing, corrupt, foreign, truncated or of a newer version."""


class ConfigError(DistillDataError):
    """A setting that is unknown, of the wrong type, or impossible for the data (e.g. IPC)."""
