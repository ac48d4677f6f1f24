"""Process-level settings for fast CPU runs, and host-to-device transfers without
per-tensor synchronisation.

PyTorch allocates CPU tensors with the C library's ``malloc``. glibc serves every block
above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and returns it with
``munmap`` on free, so an activation tensor of a few hundred MiB costs page faults on
every iteration: in a DM iteration at IPC 10 this was ~40 % of the time. Keeping large
blocks in the heap (``M_MMAP_MAX = 0``) and not trimming it back to the OS
(``M_TRIM_THRESHOLD``) lets the next iteration reuse the same pages.

The CLI applies this at start-up; Python users opt in with
:func:`distill_data.tune_allocator` (it changes the whole process). Set
``DISTILL_DATA_MALLOC=0`` to leave the allocator alone. The price is that the heap keeps
its high-water mark until the process ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform
from collections.abc import Sequence

import torch

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30  # keep up to 1 GiB of free heap for reuse

_applied = False

#: the ``precision`` settings of the training loop and the matching generators
PRECISIONS = ("fp32", "bf16")


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` for ``precision="bf16"``, else a no-op: the
    network passes (convolutions, matrix products) run in bfloat16 while the weights,
    gradients, optimiser state and losses stay float32. Fast where the hardware has
    bfloat16 arithmetic (GPUs since Ampere; CPUs with AVX512-BF16 or AMX: 1.5-1.75x a
    training step on an AVX512-BF16 EPYC core, ``bench/bf16_train.py``); where it is
    emulated it may be slower (not measured)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def tune_allocator() -> bool:
    """Make glibc keep freed large blocks for reuse; True if applied (glibc only).

    Idempotent; a no-op returning False on non-glibc systems or when the environment
    variable ``DISTILL_DATA_MALLOC`` is ``0``.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get("DISTILL_DATA_MALLOC", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = (
            libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        )
    except (OSError, AttributeError):
        return False
    _applied = ok
    return ok


def allocator_tuned() -> bool:
    """Whether :func:`tune_allocator` has been applied in this process."""
    return _applied


_ALIGN = 64


def to_device(tensors: Sequence[torch.Tensor], device: torch.device | str) -> list[torch.Tensor]:
    """Move CPU ``tensors`` to ``device`` with one copy per dtype instead of one per tensor.

    A plain ``.to("cuda")`` of a pageable CPU tensor waits for the GPU's queue to drain
    (PyTorch synchronises the stream after the copy), so a loop that moves a few small
    tensors per class serialises the host and the GPU: the matching loop moved ~100 per
    iteration. Here the tensors of one dtype are packed into one pinned buffer and sent
    with ``non_blocking=True``; the results are views of that one device buffer. On CPU
    (or for tensors already on ``device``) the tensors come back as they are.
    """
    device = torch.device(device)
    out: list[torch.Tensor | None] = [None] * len(tensors)
    groups: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        if device.type == "cpu" or t.device.type != "cpu":  # nothing to pack
            out[i] = t.to(device)
        else:
            groups.setdefault(t.dtype, []).append(i)
    for idx in groups.values():
        # each tensor starts on a 64-element boundary of the buffer (aligned for
        # vectorised kernels and cuDNN, as a tensor of its own would be)
        sizes = [tensors[i].numel() for i in idx]
        starts = [0]
        for n in sizes[:-1]:
            starts.append(starts[-1] + -(-n // _ALIGN) * _ALIGN)
        total = starts[-1] + sizes[-1]
        flat = torch.empty(total, dtype=tensors[idx[0]].dtype, pin_memory=device.type == "cuda")
        for i, start, n in zip(idx, starts, sizes):
            flat[start : start + n].copy_(tensors[i].reshape(-1))
        moved = flat.to(device, non_blocking=True)
        for i, start, n in zip(idx, starts, sizes):
            out[i] = moved[start : start + n].view(tensors[i].shape)
    return out  # type: ignore[return-value]
