"""Checkpoints for resuming a generator run: atomic to write, safe to load.

A checkpoint is one ``torch.save`` file of plain data: tensors, numbers, strings,
bytes, None, and lists / tuples / dicts of them (an optimizer ``state_dict``, a
``torch.Generator`` state as a uint8 tensor, the config as a JSON string, the dataset
fingerprint, the iteration). It is loaded with ``torch.load(weights_only=True)`` only,
so opening a checkpoint someone sent you cannot run code: anything else pickled in it
is refused.

The checkpoint of ``out.h5`` is ``out.h5.ckpt.pt`` beside it
(:func:`checkpoint_path_for`).
"""

from __future__ import annotations

import collections
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from distill_data.errors import DivergedError, StoreError
from distill_data.store.io import PathLike, atomic_write, check_readable

__all__ = ["atomic_write", "checkpoint_path_for", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_SUFFIX = ".ckpt.pt"

#: Leaf types ``torch.load(weights_only=True)`` accepts (exact types: a numpy scalar
#: subclasses float but is refused on load, so subclasses are not allowed here).
_LEAVES = (
    int,
    float,
    bool,
    complex,
    str,
    bytes,
    type(None),
    torch.Size,
    torch.dtype,
    torch.device,
    torch.Tensor,
    torch.nn.Parameter,
)
_CONTAINERS = (dict, collections.OrderedDict, list, tuple, set)


def checkpoint_path_for(out_path: PathLike) -> Path:
    """The checkpoint file of a store: ``out_path`` + ``".ckpt.pt"``, same folder."""
    return Path(os.fspath(out_path) + CHECKPOINT_SUFFIX)


def save_checkpoint(path: PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` with ``torch.save``, atomically (temp file, fsync, rename).

    The payload is checked first so that a checkpoint that :func:`load_checkpoint`
    would refuse is never written; a crash mid-save leaves the previous checkpoint.

    Args:
        path: the checkpoint file (see :func:`checkpoint_path_for`).
        payload: plain data only (see the module docstring).

    Raises:
        DivergedError: a floating-point tensor in ``payload`` holds NaN or infinity
            (nothing NaN is ever saved).
        TypeError: ``payload`` holds something other than plain data (a programming
            error in the caller; the message gives the key path, e.g. ``['opt']['x']``).
        StoreError: the folder is missing or the file cannot be written.
    """
    if type(payload) not in (dict, collections.OrderedDict):
        raise TypeError(f"checkpoint payload must be a dict, got {type(payload).__name__}")
    _check_plain(payload, "payload", depth=0)
    bad = _nonfinite(payload, "payload")
    if bad:
        raise DivergedError(
            f"refusing to write checkpoint {path}: {bad} holds NaN or infinite values"
        )
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: PathLike) -> dict[str, Any]:
    """Load a checkpoint onto the CPU without unpickling anything but plain data.

    Raises:
        StoreError: the file is missing, corrupt or truncated, holds objects other
            than plain data (refused: unpickling them could run arbitrary code), or
            is not a dict.
    """
    p = check_readable(path)
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # The weights-only unpickler says "Unsupported global: GLOBAL <name> ..." when
        # the file asks for a class or function; anything else is damaged bytes.
        found = re.search(r"GLOBAL (\S+) was not an allowed global", str(exc))
        if found or "unsupported global" in str(exc).lower():
            what = f" ({found.group(1)})" if found else ""
            raise StoreError(
                f"{p} contains objects other than tensors, numbers, strings, lists and "
                f"dicts{what}; refusing to unpickle it (that could run arbitrary code). Load "
                "only checkpoints written by distill-data, or delete it to start afresh"
            ) from exc
        raise _corrupt(p, exc) from exc
    except Exception as exc:  # torch raises RuntimeError, EOFError, ValueError, ... on bad bytes
        raise _corrupt(p, exc) from exc
    if not isinstance(payload, dict):
        raise StoreError(f"{p} is not a distill-data checkpoint (holds a {type(payload).__name__})")
    return payload


def _corrupt(p: Path, exc: BaseException) -> StoreError:
    text = str(exc).strip()
    if "WeightsUnpickler error:" in text:  # skip torch's long preamble
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    return StoreError(
        f"{p} is not a readable checkpoint (corrupt or truncated): {reason}; delete it to "
        "start the run afresh"
    )


def _nonfinite(value: Any, where: str) -> str | None:
    """Where in a (plain) payload a floating-point tensor holds NaN or infinity."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return where
        return None
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, (list, tuple, set))
        else ()
    )
    for key, item in items:
        found = _nonfinite(item, f"{where}[{key!r}]")
        if found:
            return found
    return None


def _check_plain(value: Any, where: str, depth: int) -> None:
    if depth > 100:
        raise TypeError(f"checkpoint {where} is nested too deeply (a reference cycle?)")
    kind = type(value)
    if kind in _LEAVES:
        return
    if kind not in _CONTAINERS:
        raise TypeError(
            f"checkpoint {where} is a {kind.__module__}.{kind.__qualname__}; checkpoints hold "
            "only tensors, numbers, str, bytes, None, lists, tuples, sets and dicts "
            "(convert numpy values with .item() or torch.from_numpy)"
        )
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, f"{where} key {key!r}", depth + 1)
            _check_plain(item, f"{where}[{key!r}]", depth + 1)
    else:
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]", depth + 1)
