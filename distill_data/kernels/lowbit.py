"""Low-bit weight-only matrix products that read the student file's packed codes.

``y = x · Wᵀ + b`` with the weight given by its ``bits``-bit codes packed as
:mod:`distill_data.quant.pack` lays them out (the tensor flattened row-major, an
LSB-first bitstream: code ``i`` in bits ``b·i … b·i+b−1``) and one of four layouts:

- ``per_channel`` (``qat``): ``W[n, k] = s[n] · q`` (signed codes);
- ``per_tensor`` (``lsq``): ``W[n, k] = s · q``;
- ``bucket`` (``qd``, Polino): ``W = (u / (2^b − 1)) · α[j] + β[j]`` with unsigned codes
  ``u`` and ``j = i // bucket_size`` the bucket of the flattened index ``i``;
- ``points`` (``dq``): ``W = p[u] · α[j] + β[j]``, ``p`` the sorted learned points.

The Triton kernel unpacks and dequantizes each weight tile inside the matrix-product
loop, so the float weight never exists in memory; the reference unpacks the rows it
needs and calls ``torch.nn.functional.linear``. The dequantization is the same float32
arithmetic as :func:`distill_data.quant.student.dequantize_weight`, so both compute
with the deployed weight's exact values. ``offset`` (in codes) starts the product at a
row block of a larger tensor: a grouped convolution is one product per group over its
block of output channels, which need not start on a byte. Convolutions go through
``unfold`` (im2col): a conv weight ``(O, C/g, kh, kw)`` flattened row-major is the
linear weight ``(O, C/g·kh·kw)``, code for code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill_data.errors import ConfigError
from distill_data.quant.pack import unpack

PACKED_BITS = (2, 4, 8)  # codes that never straddle a byte
KINDS = ("per_channel", "per_tensor", "bucket", "points")


def _check(bits: int, kind: str) -> None:
    if bits not in PACKED_BITS:
        raise ConfigError(f"packed products take {PACKED_BITS} bits, got {bits}")
    if kind not in KINDS:
        raise ConfigError(f"packed products take {', '.join(KINDS)} weights, got {kind}")


def _affine(kind: str, alpha: Tensor | None, beta: Tensor | None, points: Tensor | None,
            bucket_size: int | None) -> None:  # fmt: skip
    if kind in ("bucket", "points") and (alpha is None or beta is None or not bucket_size):
        raise ConfigError(f"{kind} weights need alpha, beta and the bucket size")
    if kind == "points" and points is None:
        raise ConfigError("points weights need the points")


def dequantize_rows(
    codes: Tensor, kind: str, bits: int, offset: int = 0, scale: Tensor | None = None,
    alpha: Tensor | None = None, beta: Tensor | None = None, points: Tensor | None = None,
    bucket_size: int | None = None,
) -> Tensor:  # fmt: skip
    """Float32 weight rows ``(n, k)`` from their codes (``n`` rows starting at flattened
    index ``offset``); ``scale`` is that block's (one per row, or one)."""
    if kind in ("per_channel", "per_tensor"):
        s = scale.reshape(-1, 1) if kind == "per_channel" else scale.reshape(1, 1)
        return codes.float() * s.float()
    n, k = codes.shape
    j = (offset + torch.arange(n * k, device=codes.device)) // bucket_size
    a, b = alpha.float()[j].view(n, k), beta.float()[j].view(n, k)
    if kind == "bucket":
        return codes.float() / (2**bits - 1) * a + b
    p = points.detach().float().sort().values
    return p[codes.long()] * a + b


def packed_linear_reference(
    x: Tensor, packed: Tensor, bits: int, n: int, k: int, scale: Tensor | None, kind: str,
    bias: Tensor | None = None, *, offset: int = 0, alpha: Tensor | None = None,
    beta: Tensor | None = None, points: Tensor | None = None, bucket_size: int | None = None,
) -> Tensor:  # fmt: skip
    """The reference: unpack the block's rows, dequantize, ``F.linear``."""
    _check(bits, kind)
    signed = kind in ("per_channel", "per_tensor")
    end = offset + n * k  # this block's codes, from the byte that holds its first one
    first = offset * bits // 8 * 8 // bits  # the first code of that byte
    blob = packed[offset * bits // 8 : -(-end * bits // 8)]
    q = unpack(blob, bits, signed, end - first, dtype=torch.int64)
    q = q[offset - first :].reshape(n, k)
    w = dequantize_rows(q, kind, bits, offset, scale, alpha, beta, points, bucket_size)
    return F.linear(x, w.to(x.dtype), bias)


def packed_linear(
    x: Tensor, packed: Tensor, bits: int, n: int, k: int, scale: Tensor | None, kind: str,
    bias: Tensor | None = None, backend: str = "auto", *, offset: int = 0,
    alpha: Tensor | None = None, beta: Tensor | None = None, points: Tensor | None = None,
    bucket_size: int | None = None,
) -> Tensor:  # fmt: skip
    """``x (M, K) → (M, N)`` through the packed weight (rows ``offset / K`` on, for a
    block of a larger tensor); ``backend`` as in :func:`distill_data.kernels.fake_quant`.
    ``bucket`` / ``points`` weights take ``alpha``, ``beta`` (per bucket of the whole
    tensor), ``bucket_size`` and, for points, ``points``."""
    from distill_data.kernels import use_triton

    _check(bits, kind)
    _affine(kind, alpha, beta, points, bucket_size)
    extra = {"offset": offset, "alpha": alpha, "beta": beta, "points": points,
             "bucket_size": bucket_size}  # fmt: skip
    if x.shape[-1] != k:
        raise ConfigError(f"input has {x.shape[-1]} features, the packed weight takes {k}")
    if not use_triton(x, backend):
        return packed_linear_reference(x, packed, bits, n, k, scale, kind, bias, **extra)
    from distill_data.kernels.lowbit_triton import packed_matmul

    lead = x.shape[:-1]
    dev = x.device

    def f32(t: Tensor | None) -> Tensor:  # an unused pointer still needs a tensor
        return (t if t is not None else torch.zeros(1)).detach().float().to(dev).contiguous()

    table = None if points is None else points.detach().float().sort().values
    out = packed_matmul(x.reshape(-1, k).float().contiguous(), packed.contiguous(), bits, n,
                        k, f32(scale), KINDS.index(kind), offset, f32(alpha), f32(beta),
                        f32(table), bucket_size or 1)  # fmt: skip
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype).reshape(*lead, n)


def packed_conv2d(x: Tensor, packed: Tensor, bits: int, weight_shape: tuple[int, ...],
                  scale: Tensor | None, kind: str, bias: Tensor | None = None, stride=1,
                  padding=0, dilation=1, backend: str = "auto", groups: int = 1,
                  **affine: Tensor | int | None) -> Tensor:  # fmt: skip
    """A convolution through the packed weight: per group, im2col of its input channels
    and :func:`packed_linear` over its block of output channels (``affine``: ``alpha``,
    ``beta``, ``points``, ``bucket_size`` of bucket / points weights)."""
    o, cg, kh, kw = weight_shape
    if x.shape[1] != cg * groups or o % groups:
        raise ConfigError(
            f"input has {x.shape[1]} channels; the packed weight {tuple(weight_shape)} in "
            f"{groups} groups takes {cg * groups}"
        )
    og, k = o // groups, cg * kh * kw
    size = [
        (n + 2 * p - d * (kk - 1) - 1) // st + 1  # the output size of a convolution
        for n, kk, p, d, st in zip(
            x.shape[2:], (kh, kw), _pair(padding), _pair(dilation), _pair(stride)
        )  # fmt: skip
    ]
    outs = []
    for g in range(groups):
        xg = x[:, g * cg : (g + 1) * cg] if groups > 1 else x
        cols = F.unfold(xg, (kh, kw), dilation=dilation, padding=padding, stride=stride)
        rows = slice(g * og, (g + 1) * og)
        sg = scale[rows] if kind == "per_channel" else scale
        bg = None if bias is None else bias[rows]
        y = packed_linear(cols.transpose(1, 2), packed, bits, og, k, sg, kind, bg, backend,
                          offset=g * og * k, **affine)  # fmt: skip
        outs.append(y.transpose(1, 2).reshape(x.shape[0], og, *size))
    return outs[0] if groups == 1 else torch.cat(outs, 1)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def int8_linear_reference(xq: Tensor, wq: Tensor, x_scale: Tensor, w_scale: Tensor) -> Tensor:
    """``(xq · wqᵀ) ⊙ (x_scale ⊗ w_scale)``: int8 codes (``xq (M, K)``, ``wq (N, K)``), an
    exact integer product (int64 on the CPU), then one scale per row of ``x`` (or one)
    and per output channel (or one)."""
    _check_int8(xq, wq)
    if xq.device.type == "cpu":
        acc = xq.to(torch.int64) @ wq.to(torch.int64).T
    else:  # CUDA has no int64 matmul; float64 holds these sums exactly (127²·K < 2⁵³)
        acc = xq.to(torch.float64) @ wq.to(torch.float64).T
    return acc.to(torch.float32) * x_scale.reshape(-1, 1).float() * w_scale.reshape(1, -1).float()


def int8_linear(xq: Tensor, wq: Tensor, x_scale: Tensor, w_scale: Tensor,
                backend: str = "auto") -> Tensor:  # fmt: skip
    """The W8A8 product of :func:`int8_linear_reference`; the Triton kernel accumulates
    in int32 (exact for K < 133,000: 127² · K < 2³¹)."""
    from distill_data.kernels import use_triton

    _check_int8(xq, wq)
    if not use_triton(xq, backend):
        return int8_linear_reference(xq, wq, x_scale, w_scale)
    from distill_data.kernels.lowbit_triton import int8_matmul

    m, n = xq.shape[0], wq.shape[0]
    xs = x_scale.float().reshape(-1).expand(m).contiguous()
    ws = w_scale.float().reshape(-1).expand(n).contiguous()
    return int8_matmul(xq.contiguous(), wq.contiguous(), xs, ws)


def _check_int8(xq: Tensor, wq: Tensor) -> None:
    if xq.dtype != torch.int8 or wq.dtype != torch.int8:
        raise ConfigError(f"int8 products take int8 codes, got {xq.dtype} and {wq.dtype}")
    if xq.dim() != 2 or wq.dim() != 2 or xq.shape[1] != wq.shape[1]:
        raise ConfigError(f"shapes {tuple(xq.shape)} and {tuple(wq.shape)} do not multiply")
    if xq.shape[1] >= 133_000:
        raise ConfigError("int32 accumulation is exact only for K < 133,000")
