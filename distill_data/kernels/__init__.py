"""Kernels for the student's quantized operations: a Triton kernel on CUDA, its pure-torch
reference everywhere else, picked by :func:`fake_quant`'s ``backend``.

Built so far (issue 17): fused LSQ / STE fake quantization of a tensor viewed as rows
with one step each (per tensor: one row; per output channel: a row per channel; per
bucket: a row per bucket), forward and backward one kernel each, its reference
:func:`distill_data.quant.fakequant.lsq_fake_quant` (the trainer's own function); the
same on FP8/FP4 grids (:func:`fp_fake_quant`); packed int2/int4/int8 weight-only and
int8 × int8 products (:mod:`distill_data.kernels.lowbit`).

``TRITON_INTERPRET=1`` runs the Triton kernels on the CPU (about 100× slower than
torch): the tests do that on small shapes.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from distill_data.errors import ConfigError

BACKENDS = ("auto", "torch", "triton")


def triton_available() -> bool:
    """Whether Triton can run here: installed, and a CUDA device or the interpreter."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def use_triton(x: Tensor, backend: str) -> bool:
    """Whether a kernel call on ``x`` runs Triton: ``triton`` always (refused where it
    cannot run), ``auto`` for CUDA tensors when Triton is installed, ``torch`` never."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown kernel backend {backend!r}; choose from: {', '.join(BACKENDS)}")
    if backend == "triton" and not triton_available():
        raise ConfigError(
            "kernels=triton needs the triton package and a CUDA device (or TRITON_INTERPRET=1)"
        )
    return backend == "triton" or (backend == "auto" and x.is_cuda and triton_available())


def _rows(x: Tensor, step: Tensor) -> tuple[Tensor, Tensor]:
    """``x`` as (rows, columns) with one step per row, from a step that broadcasts as a
    per-tensor (one element) or per-first-dimension (``(C, 1, ...)``) step."""
    if step.numel() == 1:
        return x.reshape(1, -1), step.reshape(1)
    if step.numel() == x.shape[0] and all(d == 1 for d in step.shape[1:]):
        return x.reshape(x.shape[0], -1), step.reshape(-1)
    raise ConfigError(
        f"fused fake quantization takes one step per tensor or per first-dimension slice; "
        f"got a step of shape {tuple(step.shape)} for a tensor of shape {tuple(x.shape)}"
    )


def fake_quant(
    x: Tensor, step: Tensor, qn: int, qp: int, grad_scale: float = 1.0, backend: str = "auto"
) -> Tensor:
    """``round(clamp(x/s, −Q_N, Q_P))·s`` with LSQ's gradients (Esser et al. 2020, eq. 3;
    straight-through for ``x`` strictly inside the range), the step per tensor or per
    first-dimension slice. ``backend``: ``torch`` (the reference), ``triton`` (the fused
    kernels; CUDA or ``TRITON_INTERPRET=1``) or ``auto`` (Triton on CUDA when installed).
    """
    if not use_triton(x, backend):
        from distill_data.quant.fakequant import lsq_fake_quant

        return lsq_fake_quant(x, step, qn, qp, grad_scale)
    from distill_data.kernels.fakequant import FusedFakeQuant

    rows, steps = _rows(x, step)
    out = FusedFakeQuant.apply(rows, steps, qn, qp, grad_scale)
    return out.reshape(x.shape)


def bucket_fake_quant(
    w: Tensor,
    bits: int,
    bucket_size: int | None,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
    backend: str = "auto",
) -> Tensor:
    """Polino's bucket fake quantization (``qd``; straight-through gradient) by the
    reference or the fused kernel. Stochastic rounding on the kernel draws one seed from
    ``generator`` per call and the uniforms from Triton's Philox stream at that seed (the
    reference reproduces them: ``bucket_fake_quant(..., seed=s)`` in
    :mod:`distill_data.quant.fakequant`); on ``torch`` it draws them from ``generator``."""
    from distill_data.quant.fakequant import bucket_fake_quant as reference

    if not use_triton(w, backend):
        return reference(w, bits, bucket_size, stochastic, generator)
    from distill_data.kernels.fakequant import MAX_FUSED_BUCKET, FusedBucketFakeQuant

    seed = None
    if stochastic:
        if generator is None:
            raise ConfigError("stochastic rounding needs an explicit torch.Generator")
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator, device=generator.device))
    bucket = w.numel() if bucket_size is None else min(bucket_size, w.numel())
    if bucket > MAX_FUSED_BUCKET:  # one program cannot hold it: the reference, same stream
        return reference(w, bits, bucket_size, stochastic, seed=seed)
    return FusedBucketFakeQuant.apply(w, bits, bucket_size, seed)


def fp_fake_quant(x: Tensor, scale: Tensor, fmt: str, backend: str = "auto") -> Tensor:
    """``s · fp_round(x / s)`` on the FP8/FP4 grid ``fmt`` (:mod:`distill_data.quant.fp`),
    the scale per tensor or per first-dimension slice, straight-through gradient for
    ``x``; ``backend`` as in :func:`fake_quant` (the reference:
    :func:`distill_data.quant.fp.fp_fake_quant`)."""
    from distill_data.quant.fp import fp_fake_quant as reference
    from distill_data.quant.fp import get_format

    spec = get_format(fmt)
    rows, steps = _rows(x, scale)
    if not use_triton(x, backend):
        shape = (-1,) + (1,) * (x.dim() - 1) if steps.numel() > 1 else ()
        return reference(x, steps.reshape(shape) if shape else steps.reshape(()), spec)
    from distill_data.kernels.fakequant import FusedFPFakeQuant

    return FusedFPFakeQuant.apply(rows, steps, spec).reshape(x.shape)


__all__ = ["BACKENDS", "fake_quant", "fp_fake_quant", "triton_available", "use_triton"]
