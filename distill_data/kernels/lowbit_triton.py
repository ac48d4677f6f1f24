"""The Triton kernel of :func:`distill_data.kernels.lowbit.packed_linear`: a tiled
matrix product whose weight tiles are unpacked (LSB-first bitstream, two's complement)
and scaled inside the loop."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _packed_mm(x_ptr, p_ptr, s_ptr, a_ptr, b_ptr, t_ptr, y_ptr, M, N, K, OFFSET, BUCKET,
               BITS: tl.constexpr, MODE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
               BK: tl.constexpr):  # fmt: skip
    # MODE: 0 per-channel scale, 1 per-tensor scale, 2 bucket affine, 3 points codebook
    pm = tl.program_id(0)
    pn = tl.program_id(1)
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    per_byte = 8 // BITS
    levels = (1 << BITS) - 1
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        x = tl.load(x_ptr + rm[:, None] * K + rk[None, :],
                    mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)  # fmt: skip
        idx = OFFSET + rn[None, :] * K + rk[:, None]  # (BK, BN): code of W[n, k]
        wmask = (rn[None, :] < N) & (rk[:, None] < K)
        byte = tl.load(p_ptr + idx // per_byte, mask=wmask, other=0).to(tl.int32)
        u = (byte >> ((idx % per_byte) * BITS)) & levels
        if MODE < 2:  # signed codes; the scale multiplies the integer-valued sum below
            w = tl.where(u >= (1 << (BITS - 1)), u - (1 << BITS), u).to(tl.float32)
        else:
            j = idx // BUCKET
            a = tl.load(a_ptr + j, mask=wmask, other=0.0)
            b = tl.load(b_ptr + j, mask=wmask, other=0.0)
            if MODE == 2:  # (u / (2^b − 1)) · α + β, IEEE division as torch's
                w = tl.math.div_rn(u.to(tl.float32), tl.zeros_like(a) + levels)
                w = w * a + b
            else:
                w = tl.load(t_ptr + u, mask=wmask, other=0.0) * a + b
            w = tl.where(wmask, w, 0.0)
        acc += tl.dot(x, w, input_precision="ieee")  # not TF32: the reference's fp32
    if MODE == 0:
        s = tl.load(s_ptr + rn, mask=rn < N, other=0.0)
        acc = acc * s[None, :]
    elif MODE == 1:
        acc = acc * tl.load(s_ptr)
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


def packed_matmul(x: Tensor, packed: Tensor, bits: int, n: int, k: int, scale: Tensor,
                  mode: int, offset: int, alpha: Tensor, beta: Tensor, table: Tensor,
                  bucket: int) -> Tensor:  # fmt: skip
    """``x (M, K) @ dequant(W)ᵀ → (M, N)`` in float32 for the block of rows starting at
    code ``offset``; ``mode`` indexes ``lowbit.KINDS``. Scales are applied per output
    column after the integer-valued accumulation (exact for per-channel and per-tensor
    scales); bucket and points weights are dequantized in the tile before the product."""
    m = x.shape[0]
    y = torch.empty((m, n), dtype=torch.float32, device=x.device)
    bm, bn, bk = 16, 32, 32
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    _packed_mm[grid](x, packed, scale, alpha, beta, table, y, m, n, k, offset, bucket,
                     BITS=bits, MODE=mode, BM=bm, BN=bn, BK=bk)  # fmt: skip
    return y


@triton.jit
def _int8_mm(x_ptr, w_ptr, xs_ptr, ws_ptr, y_ptr, M, N, K, BM: tl.constexpr,
             BN: tl.constexpr, BK: tl.constexpr):  # fmt: skip
    pm = tl.program_id(0)
    pn = tl.program_id(1)
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.int32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        x = tl.load(x_ptr + rm[:, None] * K + rk[None, :],
                    mask=(rm[:, None] < M) & (rk[None, :] < K), other=0)  # fmt: skip
        w = tl.load(w_ptr + rn[None, :] * K + rk[:, None],
                    mask=(rn[None, :] < N) & (rk[:, None] < K), other=0)  # fmt: skip
        acc += tl.dot(x, w, out_dtype=tl.int32)
    xs = tl.load(xs_ptr + rm, mask=rm < M, other=0.0)
    ws = tl.load(ws_ptr + rn, mask=rn < N, other=0.0)
    y = acc.to(tl.float32) * xs[:, None] * ws[None, :]
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], y, mask=(rm[:, None] < M) & (rn[None, :] < N))


def int8_matmul(xq: Tensor, wq: Tensor, x_scale: Tensor, w_scale: Tensor) -> Tensor:
    """int8 ``xq (M, K)`` times int8 ``wq (N, K)``ᵀ, int32 accumulation, then the scales."""
    m, k = xq.shape
    n = wq.shape[0]
    y = torch.empty((m, n), dtype=torch.float32, device=xq.device)
    bm, bn, bk = 16, 32, 32
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    _int8_mm[grid](xq, wq, x_scale, w_scale, y, m, n, k, BM=bm, BN=bn, BK=bk)
    return y
