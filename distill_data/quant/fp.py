"""Floating-point number formats for fake quantization: FP8 (E4M3, E5M2) and FP4 (E2M1).

A value is represented as ``s · v`` with a float scale ``s`` (per output channel for
weights, per tensor for activations) and ``v`` on the format's grid: sign, ``e``
exponent bits with bias ``2^(e−1) − 1``, ``m`` mantissa bits, subnormals, no infinity
or NaN in use (values beyond the largest are saturated to it):

========  ===  ===  ======  =================================  =========
format     e    m   bias    largest                             smallest
========  ===  ===  ======  =================================  =========
fp8_e4m3   4    3     7     448 (the OCP "fn" variant)          2^−9
fp8_e5m2   5    2    15     57344                               2^−16
fp4_e2m1   2    1     1     6 (grid 0, .5, 1, 1.5, 2, 3, 4, 6)  0.5
========  ===  ===  ======  =================================  =========

Rounding is written in plain arithmetic (round-to-nearest-even on the mantissa, the
binade from ``floor(log2 |x|)`` clamped at the smallest normal exponent, so subnormals
get the smallest normal spacing), and is checked against ``torch.float8_e4m3fn`` /
``torch.float8_e5m2`` casts where torch has the types.

The scale: LLM-FP4 (Liu et al., "LLM-FP4: 4-Bit Floating-Point Quantized Transformers",
EMNLP 2023, §3.1-3.2) searches the format's exponent bias per tensor, which is the same
as searching a real scale ``s = max_clip / largest``; here over clipping ratios
1.00, 0.99, …, 0.01 of ``max |x|`` minimising the mean squared error (per channel for
weights, per tensor for activations, on the calibration samples). ``search=False``:
``s = max |x| / largest`` (no clipping).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from distill_data.errors import ConfigError
from distill_data.quant.quantizers import clip_search


@dataclass(frozen=True)
class FPFormat:
    name: str
    exp_bits: int
    man_bits: int

    @property
    def bias(self) -> int:
        return 2 ** (self.exp_bits - 1) - 1

    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def min_exp(self) -> int:
        """Exponent of the smallest normal value (subnormals share its spacing)."""
        return 1 - self.bias

    @property
    def max_value(self) -> float:
        if self.name == "fp8_e4m3":  # OCP E4M3 "fn": the top exponent holds numbers too,
            return 448.0  # only S.1111.111 is NaN, so the largest is 1.75 · 2^8
        top = 2**self.exp_bits - 2 - self.bias  # the all-ones exponent is inf/NaN (IEEE)
        if self.name == "fp4_e2m1":  # E2M1 has no inf/NaN: all exponents hold numbers
            top = 2**self.exp_bits - 1 - self.bias
        return (2 - 2.0**-self.man_bits) * 2.0**top


FORMATS = {
    "fp8_e4m3": FPFormat("fp8_e4m3", 4, 3),
    "fp8_e5m2": FPFormat("fp8_e5m2", 5, 2),
    "fp4_e2m1": FPFormat("fp4_e2m1", 2, 1),
}
FORMAT_NAMES = ("int", *FORMATS)


def get_format(name: str) -> FPFormat:
    if name not in FORMATS:
        raise ConfigError(f"unknown number format {name!r}; choose from: {', '.join(FORMAT_NAMES)}")
    return FORMATS[name]


def fp_round(x: Tensor, fmt: FPFormat) -> Tensor:
    """``x`` rounded to the nearest value of ``fmt`` (ties to even mantissa), saturated at
    ± the largest value. Plain arithmetic in the input's dtype (float32 or wider)."""
    mag = x.abs()
    exp = torch.floor(torch.log2(mag.clamp(min=torch.finfo(x.dtype).tiny)))
    exp = exp.clamp(min=fmt.min_exp)
    quantum = torch.exp2(exp - fmt.man_bits)
    out = torch.round(mag / quantum) * quantum  # torch.round: half to even
    out = out.clamp(max=fmt.max_value)
    return torch.where(x < 0, -out, out)


def fp_fake_quant(x: Tensor, scale: Tensor, fmt: FPFormat) -> Tensor:
    """``s · fp_round(x / s)`` with the gradient passed straight through. Written
    ``y + (x − x.detach())`` (an exact zero) rather than ``x + (y − x).detach()``, whose
    two roundings moved saturated values by an ulp."""
    y = fp_round(x.detach() / scale, fmt) * scale
    return y.detach() + (x - x.detach())


def search_scale(x: Tensor, fmt: FPFormat, dim: int | None, search: bool = True) -> Tensor:
    """The scale of ``x`` for ``fmt``: per slice along ``dim`` (None: one per tensor),
    minimising the mean squared error over the clipping grid (LLM-FP4's exponent-bias
    search, module docstring; :func:`~distill_data.quant.quantizers.clip_search`), or
    ``max |x| / largest`` with ``search=False``."""
    rows = x.reshape(1, -1) if dim is None else x.movedim(dim, 0).reshape(x.shape[dim], -1)
    return clip_search(rows, fmt.max_value, lambda v, s: fp_round(v / s, fmt) * s, 2.0, search)


def fp_weight_quant(w: Tensor, fmt: FPFormat, search: bool = True) -> Tensor:
    """Weights on ``fmt``'s grid with one searched scale per output channel."""
    s = search_scale(w, fmt, 0, search).to(w.dtype)
    return fp_round(w / s.view(-1, *([1] * (w.dim() - 1))), fmt) * s.view(
        -1, *([1] * (w.dim() - 1))
    )
