"""Triton's counter-based random numbers, in torch: ``tl.rand(seed, offsets)``.

Triton draws uniforms with Philox 4×32-10 (Salmon et al., SC 2011): the counter is
``(offset, 0, 0, 0)``, the key is the seed's low and high 32 bits, ten rounds of the
Philox S-box and key bump, then the first word is mapped to [0, 1) as
``uint_to_uniform_float`` does (reinterpreted as int32, ``~x`` for negatives, times
4.6566127342e-10). Here the same arithmetic runs on int64 tensors (32×32-bit products in
16-bit limbs, so nothing overflows), so a kernel's stochastic rounding has a pure-torch
reference that reproduces it bit for bit, on any device, without Triton.
"""

from __future__ import annotations

import torch
from torch import Tensor

_M32 = 0xFFFFFFFF
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_SCALE = torch.tensor(4.6566127342e-10, dtype=torch.float32)


def _mul32(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """High and low 32 bits of ``a · b`` for a 32-bit constant ``a`` and 32-bit ``b``."""
    a_lo, a_hi = a & 0xFFFF, a >> 16
    b_lo, b_hi = b & 0xFFFF, b >> 16
    lo_lo, hi_lo, lo_hi, hi_hi = a_lo * b_lo, a_hi * b_lo, a_lo * b_hi, a_hi * b_hi
    cross = (lo_lo >> 16) + (hi_lo & 0xFFFF) + (lo_hi & 0xFFFF)
    high = hi_hi + (hi_lo >> 16) + (lo_hi >> 16) + (cross >> 16)
    low = ((cross & 0xFFFF) << 16) | (lo_lo & 0xFFFF)
    return high & _M32, low & _M32


def philox_uint32(seed: int, offsets: Tensor, rounds: int = 10) -> Tensor:
    """The first Philox word for each 32-bit ``offset`` (int64 tensor of values in
    [0, 2^32)), as ``tl.randint(seed, offsets)`` gives it (as int64 in [0, 2^32))."""
    c0 = offsets.to(torch.int64) & _M32
    c1 = torch.zeros_like(c0)
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    for _ in range(rounds):
        hi_b, lo_b = _mul32(_ROUND_B, c2)
        hi_a, lo_a = _mul32(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _M32, (k1 + _KEY_B) & _M32
    return c0


def philox_uniform(seed: int, n: int, device: torch.device | str = "cpu") -> Tensor:
    """``tl.rand(seed, arange(n))``: ``n`` float32 uniforms in [0, 1)."""
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2^63), got {seed}")
    x = philox_uint32(seed, torch.arange(n, dtype=torch.int64, device=device))
    x = torch.where(x >= 2**31, x - 2**32, x)  # reinterpret as int32
    x = torch.where(x < 0, -x - 1, x)  # ~x
    return x.to(torch.float32) * _SCALE.to(device)
