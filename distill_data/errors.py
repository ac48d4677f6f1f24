"""Errors a user can cause, and how messages name the user's settings.

Every error that bad input can trigger is a :class:`DistillDataError`. The CLI turns
them into one line on stderr and exit code 2; library users can catch the base class.
Messages name the offending input and, where there is one, the fix.

A message that tells the user to change a setting spells it the way the user typed it:
``--ipc 5`` on the command line, ``ipc=5`` from Python. Library code writes
:func:`opt` / :func:`setting` instead of a flag, and the CLI switches the spelling with
:func:`cli_spelling` for the duration of a command.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

_CLI = contextvars.ContextVar("distill_data_cli_spelling", default=False)
_UNSET: Any = object()

#: Python keyword -> command-line flag, where the two are not simply ``--name``.
_FLAGS = {"augment": "--no-augment", "baselines": "--baseline", "teachers": "--teacher"}


class DistillDataError(Exception):
    """Base class for user-caused errors (bad names, paths, data, files, settings)."""


class UnknownNameError(DistillDataError, KeyError):
    """A dataset, method, model or option name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class DataError(DistillDataError):
    """Real data that is missing, malformed, of the wrong shape, or contains NaN."""


class StoreError(DistillDataError):
    """A file (store, checkpoint, teacher, report) that is missing, corrupt, foreign,
    truncated, of a newer version, or that cannot be written."""


class ConfigError(DistillDataError):
    """A setting that is unknown, of the wrong type, or impossible for the data (e.g. IPC)."""


class DivergedError(ConfigError):
    """An optimisation whose loss or weights became NaN or infinite; the message names
    the setting to change (usually a learning rate)."""


class DistillDataWarning(UserWarning):
    """Something the user should know that is not an error (the CLI prints it as a
    ``note:`` line), e.g. labels that were renumbered."""


@contextlib.contextmanager
def cli_spelling() -> Iterator[None]:
    """Within the block, :func:`opt` and :func:`setting` spell command-line flags."""
    token = _CLI.set(True)
    try:
        yield
    finally:
        _CLI.reset(token)


def opt(name: str, value: Any = _UNSET) -> str:
    """How the user writes setting ``name`` (with ``value``): ``--name value`` on the
    command line, ``name=value`` in Python. A ``True`` value of a flag is ``--name``."""
    if not _CLI.get():
        return name if value is _UNSET else f"{name}={value!r}"
    if name == "augment" and value is False:
        return "--no-augment"
    flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
    if value is _UNSET or value is True:
        return flag
    return f"{flag} {value}"


def setting(key: str, value: Any = _UNSET) -> str:
    """How the user writes a method setting: ``--set key=value`` on the command line,
    ``options={'key': value}`` in Python."""
    if _CLI.get():
        return f"--set {key}" if value is _UNSET else f"--set {key}={value}"
    return f"options[{key!r}]" if value is _UNSET else f"options={{{key!r}: {value!r}}}"


def keyword(key: str, value: Any = _UNSET) -> str:
    """How the user writes a setting that is a keyword in Python (``lr=0.001``) and a
    ``--set`` pair on the command line (``--set lr=0.001``): the evaluation protocol's
    and the teacher's settings, which have no flag of their own."""
    if _CLI.get():
        return f"--set {key}" if value is _UNSET else f"--set {key}={value}"
    return key if value is _UNSET else f"{key}={value!r}"
