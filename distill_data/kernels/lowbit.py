"""Low-bit weight-only matrix products that read the student file's packed codes.

``y = x · Wᵀ + b`` with ``W[n, k] = s · q[n, k]``: ``q`` the signed ``bits``-bit codes
packed as :mod:`distill_data.quant.pack` lays them out (the tensor flattened row-major,
an LSB-first bitstream: code ``i`` in bits ``b·i … b·i+b−1``), ``s`` one scale per output
row (``per_channel``, ``qat``) or per tensor (``per_tensor``, ``lsq``). The Triton kernel
unpacks and dequantizes each weight tile inside the matrix-product loop, so the float
weight never exists in memory; :func:`packed_linear_reference` unpacks the whole tensor
and calls ``torch.nn.functional.linear``. Convolutions go through ``unfold`` (im2col) and
the same product: a conv weight ``(O, C, kh, kw)`` flattened row-major is the linear
weight ``(O, C·kh·kw)``, code for code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill_data.errors import ConfigError
from distill_data.quant.pack import unpack

PACKED_BITS = (2, 4, 8)  # codes that never straddle a byte


def _check(bits: int, kind: str) -> None:
    if bits not in PACKED_BITS:
        raise ConfigError(f"packed products take {PACKED_BITS} bits, got {bits}")
    if kind not in ("per_channel", "per_tensor"):
        raise ConfigError(f"packed products take per_channel or per_tensor scales, got {kind}")


def packed_linear_reference(
    x: Tensor, packed: Tensor, bits: int, n: int, k: int, scale: Tensor, kind: str,
    bias: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """The reference: unpack, dequantize, ``F.linear``."""
    _check(bits, kind)
    q = unpack(packed, bits, True, n * k, dtype=torch.int64).reshape(n, k).to(x.dtype)
    s = scale.reshape(-1, 1) if kind == "per_channel" else scale.reshape(1, 1)
    return F.linear(x, q * s.to(x.dtype), bias)


def packed_linear(
    x: Tensor, packed: Tensor, bits: int, n: int, k: int, scale: Tensor, kind: str,
    bias: Tensor | None = None, backend: str = "auto",
) -> Tensor:  # fmt: skip
    """``x (M, K) → (M, N)`` through the packed weight; ``backend`` as in
    :func:`distill_data.kernels.fake_quant`."""
    from distill_data.kernels import use_triton

    _check(bits, kind)
    if x.shape[-1] != k:
        raise ConfigError(f"input has {x.shape[-1]} features, the packed weight takes {k}")
    if not use_triton(x, backend):
        return packed_linear_reference(x, packed, bits, n, k, scale, kind, bias)
    from distill_data.kernels.lowbit_triton import packed_matmul

    lead = x.shape[:-1]
    out = packed_matmul(x.reshape(-1, k).float().contiguous(), packed.contiguous(), bits, n, k,
                        scale.float().contiguous(), kind == "per_channel")  # fmt: skip
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype).reshape(*lead, n)


def packed_conv2d(x: Tensor, packed: Tensor, bits: int, weight_shape: tuple[int, ...],
                  scale: Tensor, kind: str, bias: Tensor | None = None, stride=1, padding=0,
                  dilation=1, backend: str = "auto") -> Tensor:  # fmt: skip
    """A (groups = 1) convolution through the packed weight: im2col, then
    :func:`packed_linear`."""
    o, c, kh, kw = weight_shape
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    size = [
        (n + 2 * p - d * (k - 1) - 1) // st + 1  # the output size of a convolution
        for n, k, p, d, st in zip(
            x.shape[2:], (kh, kw), _pair(padding), _pair(dilation), _pair(stride)
        )  # fmt: skip
    ]
    y = packed_linear(cols.transpose(1, 2), packed, bits, o, c * kh * kw, scale, kind, bias,
                      backend)  # fmt: skip
    return y.transpose(1, 2).reshape(x.shape[0], o, *size)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def int8_linear_reference(xq: Tensor, wq: Tensor, x_scale: Tensor, w_scale: Tensor) -> Tensor:
    """``(xq · wqᵀ) ⊙ (x_scale ⊗ w_scale)``: int8 codes (``xq (M, K)``, ``wq (N, K)``), an
    exact integer product (int64 on the CPU), then one scale per row of ``x`` (or one)
    and per output channel (or one)."""
    _check_int8(xq, wq)
    acc = xq.to(torch.int64) @ wq.to(torch.int64).T
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
