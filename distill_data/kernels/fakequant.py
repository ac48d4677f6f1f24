"""Fused fake quantization in Triton: forward and backward one kernel each.

A tensor is viewed as ``(R, C)`` rows with one step per row. Forward: ``y = r·s`` with
``r = round_half_even(clamp(x/s, −Q_N, Q_P))``. Backward: ``∂x = g·1[−Q_N < x/s < Q_P]``
and each tile's partial sum of ``g·(r − x/s)`` (inside) or ``g·(−Q_N | Q_P)`` (clipped)
for the step, summed over tiles by torch and multiplied by the gradient scale. Rounding
is written in plain arithmetic (``floor`` and a parity test: the interpreter and the
GPU agree on it, and it is ``torch.round``'s half to even).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK = 1024
#: largest bucket one program reduces (Triton's block limit is 2^20 elements; larger
#: buckets, e.g. qd's one bucket per tensor, take the torch reference)
MAX_FUSED_BUCKET = 1 << 16
#: compile without fused multiply-adds where torch rounds a product and a sum apart
#: (``q·α + β``): on a GPU ptxas fuses them by default (the interpreter never does)
NO_FMA = {} if os.environ.get("TRITON_INTERPRET") == "1" else {"enable_fp_fusion": False}


@triton.jit
def _round_half_even(v):
    f = tl.floor(v)
    d = v - f
    odd = (f - 2.0 * tl.floor(f * 0.5)) != 0.0
    up = (d > 0.5) | ((d == 0.5) & odd)
    return tl.where(up, f + 1.0, f)


@triton.jit
def _fq_forward(x_ptr, s_ptr, y_ptr, n_cols, n, qn, qp, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(s_ptr + offs // n_cols, mask=mask, other=1.0).to(tl.float32)
    v = tl.minimum(tl.maximum(tl.math.div_rn(x, s), -qn), qp)
    y = _round_half_even(v) * s
    tl.store(y_ptr + offs, y, mask=mask)


@triton.jit
def _fq_backward(x_ptr, s_ptr, g_ptr, gx_ptr, part_ptr, n_cols, n_tiles, qn, qp,
                 BLOCK: tl.constexpr):  # fmt: skip
    row = tl.program_id(0)
    tile = tl.program_id(1)
    cols = tile * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    offs = row * n_cols + cols
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(s_ptr + row).to(tl.float32)
    v = tl.math.div_rn(x, tl.zeros_like(x) + s)
    inside = (v > -qn) & (v < qp)
    tl.store(gx_ptr + offs, tl.where(inside, g, 0.0), mask=mask)
    clipped = tl.where(v <= -qn, -qn, qp)
    ds = tl.where(inside, _round_half_even(v) - v, clipped)
    tl.store(part_ptr + row * n_tiles + tile, tl.sum(tl.where(mask, g * ds, 0.0), axis=0))


class FusedFakeQuant(torch.autograd.Function):
    """The Triton pair behind :func:`distill_data.kernels.fake_quant` (rows × steps)."""

    @staticmethod
    def forward(ctx, x: Tensor, step: Tensor, qn: int, qp: int, grad_scale: float):
        x_c, s_c = x.contiguous().float(), step.contiguous().float()
        y = torch.empty_like(x_c)
        n = x_c.numel()
        grid = (triton.cdiv(n, BLOCK),)
        _fq_forward[grid](x_c, s_c, y, x_c.shape[1], n, float(qn), float(qp), BLOCK=BLOCK)
        ctx.save_for_backward(x_c, s_c)
        ctx.qn, ctx.qp, ctx.grad_scale = qn, qp, grad_scale
        ctx.dtypes = (x.dtype, step.dtype)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, s = ctx.saved_tensors
        rows, cols = x.shape
        tiles = triton.cdiv(cols, BLOCK)
        gx = torch.empty_like(x)
        part = torch.empty((rows, tiles), dtype=torch.float32, device=x.device)
        _fq_backward[(rows, tiles)](x, s, grad.contiguous().float(), gx, part, cols, tiles,
                                    float(ctx.qn), float(ctx.qp), BLOCK=BLOCK)  # fmt: skip
        gs = (part.sum(1) * ctx.grad_scale).to(ctx.dtypes[1])
        return gx.to(ctx.dtypes[0]), gs, None, None, None


@triton.jit
def _fp_forward(x_ptr, s_ptr, y_ptr, n_cols, n, min_exp, man_bits, max_value,
                BLOCK: tl.constexpr):  # fmt: skip
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(s_ptr + offs // n_cols, mask=mask, other=1.0).to(tl.float32)
    v = tl.math.div_rn(x, s)
    mag = tl.abs(v)
    e = tl.floor(tl.log2(tl.maximum(mag, 1.1754943508222875e-38)))
    e = tl.maximum(e, min_exp)
    quantum = tl.exp2(e - man_bits)
    r = tl.minimum(_round_half_even(tl.math.div_rn(mag, quantum)) * quantum, max_value)
    y = tl.where(v < 0, -r, r) * s
    tl.store(y_ptr + offs, y, mask=mask)


class FusedFPFakeQuant(torch.autograd.Function):
    """``s · fp_round(x / s)`` on an ExMy grid, straight-through gradient for ``x`` (as
    :func:`distill_data.quant.fp.fp_fake_quant`)."""

    @staticmethod
    def forward(ctx, x: Tensor, step: Tensor, fmt) -> Tensor:
        x_c, s_c = x.contiguous().float(), step.contiguous().float()
        y = torch.empty_like(x_c)
        n = x_c.numel()
        _fp_forward[(triton.cdiv(n, BLOCK),)](
            x_c, s_c, y, x_c.shape[1], n, float(fmt.min_exp), float(fmt.man_bits),
            float(fmt.max_value), BLOCK=BLOCK,
        )  # fmt: skip
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None, None


@triton.jit
def _bucket_fq(w_ptr, y_ptr, numel, bucket, levels, seed, STOCHASTIC: tl.constexpr,
               BLOCK: tl.constexpr):  # fmt: skip
    # one program per bucket of ``bucket`` consecutive elements (BLOCK ≥ bucket)
    b = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    offs = b * bucket + cols
    mask = (cols < bucket) & (offs < numel)
    x = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    lo = tl.min(tl.where(mask, x, float("inf")), axis=0)
    hi = tl.max(tl.where(mask, x, float("-inf")), axis=0)
    alpha = hi - lo
    alpha = tl.where(alpha < 1e-10, 1.0, alpha)
    v = tl.math.div_rn(x - lo, tl.zeros_like(x) + alpha) * levels  # IEEE, as torch's
    if STOCHASTIC:  # ⌊v⌋ + [u < frac(v)], u = tl.rand(seed, flat index)
        f = tl.floor(v)
        u = tl.rand(seed, offs)
        code = tl.where(u < v - f, f + 1.0, f)
    else:
        code = _round_half_even(v)
    y = tl.math.div_rn(code, tl.zeros_like(code) + levels) * alpha + lo
    tl.store(y_ptr + offs, y, mask=mask)


class FusedBucketFakeQuant(torch.autograd.Function):
    """Polino's bucket fake quantization in one kernel (min/max per bucket, codes,
    dequantized values); straight-through gradient, as
    :func:`distill_data.quant.fakequant.bucket_fake_quant`."""

    @staticmethod
    def forward(ctx, w: Tensor, bits: int, bucket_size: int | None, seed: int | None):
        flat = w.detach().contiguous().float().reshape(-1)
        numel = flat.numel()
        bucket = numel if bucket_size is None or numel <= bucket_size else bucket_size
        y = torch.empty_like(flat)
        block = triton.next_power_of_2(bucket)
        _bucket_fq[(triton.cdiv(numel, bucket),)](
            flat, y, numel, bucket, float(2**bits - 1), 0 if seed is None else seed,
            STOCHASTIC=seed is not None, BLOCK=block, **NO_FMA,
        )  # fmt: skip
        return y.view(w.shape).to(w.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None, None, None
