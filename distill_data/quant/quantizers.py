"""Uniform fake quantizers and activation-range observers (pure math plus thin state).

Conventions (Jacob et al., CVPR 2018, eq. 1; Krishnamoorthi, arXiv:1806.08342;
Nagel et al., "A White Paper on Neural Network Quantization", arXiv:2106.08295):

* A real value ``r`` is represented as ``r = S · (q − Z)`` with integer ``q``, scale
  ``S > 0`` and integer zero point ``Z``.
* Fake quantization maps ``x`` to ``S · (clamp(round(x / S) + Z, q_min, q_max) − Z)``,
  i.e. quantize then dequantize, staying in floating point. ``round`` is
  round-half-to-even (``torch``'s ``nearbyint``). Both fake-quant calls used here
  (``torch.fake_quantize_per_channel_affine`` / ``..._per_tensor_affine``) pass the
  gradient straight through inside the range, so the same functions serve QAT.
* Weights: per-output-channel **symmetric**, ``Z = 0``, integer range
  ``[−(2^(b−1) − 1), 2^(b−1) − 1]`` (the "restricted" range, so that ``−q`` is
  representable for every ``q``).
* Activations: per-tensor **asymmetric affine**, integer range ``[0, 2^b − 1]``. The
  range ``[lo, hi]`` is first widened to contain 0 so that 0 (padding, ReLU zeros) is
  exactly representable; for non-negative inputs (post-ReLU) ``Z = 0`` and this is
  plain unsigned quantization.

Range observers (which ``[lo, hi]`` to quantize activations to) follow the calibration
methods compared by Wu et al., "Integer Quantization for Deep Learning Inference:
Principles and Empirical Evaluation" (arXiv:2004.09602, §4): max (``minmax``),
percentile, and MSE-optimal clipping.
"""

from __future__ import annotations

import torch
from torch import Tensor

from distill_data.errors import ConfigError

MIN_BITS, MAX_BITS = 2, 8
OBSERVERS = ("minmax", "percentile", "mse", "lp")
#: The norm of the ``lp`` observer: BRECQ's, QDrop's and Genie's code search clipping
#: ranges minimising ``mean |x − q(x)|^2.4``.
LP_NORM = 2.4
#: Smallest scale allowed: an all-zero weight channel or a constant activation would
#: otherwise give S = 0 and a division by zero inside the fake-quant kernels.
SCALE_EPS = 1e-12
#: Clipping factors α tried by the MSE observer: ranges [α·min, α·max], α = 0.01 … 1.
MSE_GRID: tuple[float, ...] = tuple(k / 100 for k in range(1, 101))
#: Default cap on activation values an observer stores per layer (percentile, mse).
DEFAULT_MAX_SAMPLES = 2**18


def check_bits(bits: int, what: str = "bits") -> int:
    """Return ``bits`` if it is an integer in [2, 8], else raise :class:`ConfigError`.

    Why 2–8: 1 bit has no symmetric non-zero level besides ±S (a different method,
    binarisation), and above 8 bits fake quantization is indistinguishable from fp32
    for these networks.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ConfigError(f"{what} must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}")
    return bits


def round_ste(x: Tensor) -> Tensor:
    """``round(x)`` forward, identity backward (the straight-through estimator)."""
    return (torch.round(x) - x).detach() + x


def symmetric_qrange(bits: int) -> tuple[int, int]:
    """Integer range of symmetric (weight) quantization: ``(−(2^(b−1)−1), 2^(b−1)−1)``."""
    qmax = 2 ** (check_bits(bits) - 1) - 1
    return -qmax, qmax


def affine_qrange(bits: int) -> tuple[int, int]:
    """Integer range of affine (activation) quantization: ``(0, 2^b − 1)``."""
    return 0, 2 ** check_bits(bits) - 1


# --------------------------------------------------------------------------- weights


def weight_scales(w: Tensor, bits: int) -> Tensor:
    """Per-output-channel symmetric scales ``S_c = max|w_c| / (2^(b−1) − 1)`` (float32).

    Channel ``c`` is ``w[c]`` (dim 0: output channels of a conv or rows of a linear
    weight). All-zero channels get :data:`SCALE_EPS` instead of 0, so they quantize to
    exact zeros instead of dividing by zero.
    """
    _, qmax = symmetric_qrange(bits)
    if w.dim() < 1 or w.shape[0] == 0:
        raise ConfigError(
            f"weight must have at least one output channel, got shape {tuple(w.shape)}"
        )
    amax = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1).float()
    return (amax / qmax).clamp(min=SCALE_EPS)


def weight_fake_quant(w: Tensor, bits: int) -> Tensor:
    """Per-output-channel symmetric fake quantization of a weight tensor.

    ``q(w)_c = S_c · clamp(round(w_c / S_c), −(2^(b−1)−1), 2^(b−1)−1)`` with
    ``S_c = max|w_c| / (2^(b−1)−1)`` and zero point 0 (Krishnamoorthi 2018, §2.2,
    uniform symmetric quantizer; Nagel et al. 2021, symmetric uniform quantization).
    The largest-magnitude weight of each channel is represented exactly; every other
    weight is off by at most ``S_c/2``.

    Uses ``torch.fake_quantize_per_channel_affine`` (which wants float32 scales and
    int32 zero points); ``w``'s dtype is preserved, gradients pass straight through.
    """
    qmin, qmax = symmetric_qrange(bits)
    scale = weight_scales(w, bits)
    zero_point = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale, zero_point, 0, qmin, qmax)


# ----------------------------------------------------------------------- activations


def affine_qparams(lo: float | Tensor, hi: float | Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Scale and zero point that map ``[lo, hi]`` onto the integers ``[0, 2^b − 1]``.

    ``lo' = min(lo, 0)``, ``hi' = max(hi, 0)`` (0 must be exactly representable),
    ``S = max((hi' − lo') / (2^b − 1), ε)``, ``Z = clamp(round(−lo' / S), 0, 2^b − 1)``
    (Jacob et al. 2018, §2.1; Krishnamoorthi 2018, §2.1, uniform affine quantizer).
    Because ``Z`` is rounded, the representable range is ``[lo', hi']`` shifted by less
    than ``S/2``.

    Returns:
        ``(scale, zero_point)``: 0-dim float32 and int32 tensors on ``lo``'s device.
    """
    qmin, qmax = affine_qrange(bits)
    device = lo.device if isinstance(lo, Tensor) else None
    lo_t = torch.as_tensor(lo, dtype=torch.float32, device=device).detach().clamp(max=0.0)
    hi_t = torch.as_tensor(hi, dtype=torch.float32, device=lo_t.device).detach().clamp(min=0.0)
    scale = ((hi_t - lo_t) / (qmax - qmin)).clamp(min=SCALE_EPS)
    zero_point = (qmin - torch.round(lo_t / scale)).clamp(qmin, qmax).to(torch.int32)
    return scale, zero_point


def act_fake_quant(x: Tensor, scale: Tensor, zero_point: Tensor, bits: int) -> Tensor:
    """Per-tensor affine fake quantization ``S · (clamp(round(x/S) + Z, 0, 2^b−1) − Z)``.

    Thin wrapper on ``torch.fake_quantize_per_tensor_affine`` with tensor qparams (so
    it runs on any device without a host sync); gradients pass straight through
    inside the range and are zero outside it.
    """
    qmin, qmax = affine_qrange(bits)
    return torch.fake_quantize_per_tensor_affine(
        x, scale.to(torch.float32), zero_point.to(torch.int32), qmin, qmax
    )


def minmax_range(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(min(x), max(x))`` as 0-dim float32 tensors: no clipping at all."""
    x = x.detach().float()
    return x.min(), x.max()


def percentile_range(samples: Tensor, percentile: float = 99.99) -> tuple[Tensor, Tensor]:
    """Clip both tails: ``(P_{100−p}(x), P_p(x))`` of the samples (linear interpolation).

    For post-ReLU data the lower percentile is 0 and only the top outliers are clipped,
    which is the usual "99.99th percentile of x" calibration (Wu et al. 2020, §4.2);
    for signed inputs (the normalised image) both tails are clipped symmetrically in
    probability.
    """
    if not 0.0 < percentile <= 100.0:
        raise ConfigError(f"percentile must be in (0, 100], got {percentile}")
    x = samples.detach().flatten().float()
    p = torch.tensor([1.0 - percentile / 100.0, percentile / 100.0], device=x.device)
    lo, hi = torch.quantile(x, p)
    return lo, hi


def mse_range(
    samples: Tensor,
    bits: int,
    lo: float | Tensor | None = None,
    hi: float | Tensor | None = None,
    grid: tuple[float, ...] = MSE_GRID,
    p: float = 2.0,
) -> tuple[Tensor, Tensor]:
    """Clipping range ``[α·lo, α·hi]`` minimising the fake-quant MSE on ``samples``
    (with ``p``: the mean ``|q(x) − x|^p``; BRECQ's code searches with p = 2.4).

    ``α* = argmin_α mean((q_α(x) − x)²)`` over ``grid`` (Wu et al. 2020, §4.2, "MSE"
    calibration; a grid search rather than Banner et al.'s analytic ACIQ). ``lo``/``hi``
    default to the samples' min/max; pass the full-data extremes when ``samples`` is a
    subsample. ``lo``/``hi`` are first widened to contain 0 (as :func:`affine_qparams`
    would), so the result is ``(α·min(lo, 0), α·max(hi, 0))``. Ties go to the larger α
    (less clipping), so with 1.0 in the grid the result never has a larger error than
    the min/max range.
    """
    check_bits(bits)
    x = samples.detach().flatten().float()
    if lo is None or hi is None:
        lo_s, hi_s = minmax_range(x)
        lo = lo_s if lo is None else lo
        hi = hi_s if hi is None else hi
    lo_t = torch.as_tensor(lo, dtype=torch.float32, device=x.device).clamp(max=0.0)
    hi_t = torch.as_tensor(hi, dtype=torch.float32, device=x.device).clamp(min=0.0)
    best_err, best = None, (lo_t, hi_t)
    for alpha in sorted(grid, reverse=True):
        s, z = affine_qparams(alpha * lo_t, alpha * hi_t, bits)
        err = float((act_fake_quant(x, s, z, bits) - x).abs().pow(p).mean())
        if best_err is None or err < best_err:
            best_err, best = err, (alpha * lo_t, alpha * hi_t)
    return best


def clip_errors(
    rows: Tensor, top: Tensor, largest: float, quantize, p: float = 2.0, total: bool = False
) -> Tensor:
    """Errors of each row of ``rows`` (2-D) at the scales ``s_k = α_k · top / largest``,
    ``α_k`` = 1.00, 0.99, …, 0.01 (:data:`MSE_GRID`, largest first), shape ``(R, K)``:
    ``mean |row − q(row)|^p`` (float32), or with ``total`` the float64 sums, which ranks
    holding parts of one batch can add. ``quantize(rows, s)`` takes one scale per row
    (shape ``(R, 1)``); ``top`` (shape ``(R,)``) is each row's largest magnitude."""
    flat = rows.detach().float()
    top = top.detach().float().reshape(-1).clamp(min=SCALE_EPS)
    errors = []
    for ratio in sorted(MSE_GRID, reverse=True):
        s = (ratio * top / largest).clamp(min=SCALE_EPS)
        err = (flat - quantize(flat, s[:, None])).abs()
        errors.append(err.double().square().sum(1) if total else err.pow(p).mean(1))
    return torch.stack(errors, 1)


def clip_choice(errors: Tensor, top: Tensor, largest: float) -> Tensor:
    """The scale of :func:`clip_errors`' candidates with the least error per row (ties
    keep the larger α, less clipping), float32 of shape ``(R,)``."""
    ratios = torch.tensor(sorted(MSE_GRID, reverse=True), device=errors.device)
    best = ratios[torch.argmin(errors, dim=1)]  # the first minimum: the largest α
    return (best * top.detach().float().reshape(-1).clamp(min=SCALE_EPS) / largest).clamp(
        min=SCALE_EPS
    )


def clip_search(
    rows: Tensor, largest: float, quantize, p: float = 2.0, search: bool = True
) -> Tensor:
    """Per-row scales ``s = α · max|row| / largest`` minimising ``mean |row − q(row)|^p``
    over the clipping ratios α = 1.00, 0.99, …, 0.01 (ties keep the larger α); with
    ``search=False`` α = 1. ``rows`` is 2-D; ``quantize(rows, s)`` returns the quantized
    rows for one scale per row (shape ``(R, 1)``). The search of BRECQ's / Genie's weight
    steps (p = 2.4) and of LLM-FP4's FP scales (p = 2)."""
    top = rows.detach().float().abs().amax(1).clamp(min=SCALE_EPS)
    if not search:
        return top / largest
    return clip_choice(clip_errors(rows, top, largest, quantize, p), top, largest)


# ------------------------------------------------------------------------- observers


class Observer:
    """Records activations during calibration and yields a range ``[lo, hi]``.

    The one stateful piece: a quantizer module calls :meth:`observe` on every
    calibration batch, then :meth:`range` once to freeze its qparams.
    """

    def __init__(self) -> None:
        self.lo: Tensor | None = None
        self.hi: Tensor | None = None

    @property
    def seen(self) -> bool:
        """Whether any calibration data has been observed."""
        return self.lo is not None

    def observe(self, x: Tensor) -> None:
        """Update the running min/max with a batch (no gradient is kept)."""
        lo, hi = minmax_range(x)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def range(self) -> tuple[Tensor, Tensor]:
        """The chosen ``(lo, hi)``; raises ``RuntimeError`` before any observation."""
        if self.lo is None or self.hi is None:
            raise RuntimeError(f"{type(self).__name__} has not observed any data")
        return self.lo, self.hi


class MinMaxObserver(Observer):
    """Running min/max over all calibration batches (Wu et al. 2020, "max")."""


class _SamplingObserver(Observer):
    """Running min/max plus a uniform random subsample of at most ``max_samples`` values.

    The subsample is exact bottom-k sampling: every value seen gets a uniform random
    key from an explicit ``torch.Generator`` (seeded with ``seed``, created on the
    data's device) and the ``max_samples`` values with the smallest keys are kept, so
    memory stays bounded however much calibration data passes through, every value is
    equally likely to be kept, and results are reproducible.
    """

    def __init__(self, max_samples: int = DEFAULT_MAX_SAMPLES, seed: int = 0) -> None:
        super().__init__()
        if max_samples < 1 or max_samples > 2**24:
            raise ConfigError(f"max_samples must be in [1, 2^24], got {max_samples}")
        self.max_samples = max_samples
        self.seed = seed
        self._gen: torch.Generator | None = None
        self._vals: Tensor | None = None
        self._keys: Tensor | None = None

    @property
    def samples(self) -> Tensor:
        """The stored values (a uniform subsample of everything observed)."""
        if self._vals is None:
            raise RuntimeError(f"{type(self).__name__} has not observed any data")
        return self._vals

    def observe(self, x: Tensor) -> None:
        super().observe(x)
        v = x.detach().flatten().float()
        if self._gen is None:
            self._gen = torch.Generator(device=v.device).manual_seed(self.seed)
        keys = torch.rand(v.numel(), generator=self._gen, device=v.device)
        if self._vals is not None:
            v = torch.cat([self._vals, v])
            keys = torch.cat([self._keys, keys])
        if v.numel() > self.max_samples:
            idx = torch.topk(keys, self.max_samples, largest=False, sorted=False).indices
            v, keys = v[idx], keys[idx]
        self._vals, self._keys = v, keys


class PercentileObserver(_SamplingObserver):
    """Clip at the ``percentile``-th percentile of the observed values (see
    :func:`percentile_range`), estimated from the bounded subsample."""

    def __init__(
        self, percentile: float = 99.99, max_samples: int = DEFAULT_MAX_SAMPLES, seed: int = 0
    ) -> None:
        super().__init__(max_samples, seed)
        if not 0.0 < percentile <= 100.0:
            raise ConfigError(f"percentile must be in (0, 100], got {percentile}")
        self.percentile = percentile

    def range(self) -> tuple[Tensor, Tensor]:
        super().range()
        return percentile_range(self.samples, self.percentile)


class MSEObserver(_SamplingObserver):
    """MSE-optimal clipping ``[α·min, α·max]`` (see :func:`mse_range`) for ``bits``-bit
    activations; min/max are exact over all data, the error is measured on the
    bounded subsample."""

    def __init__(
        self,
        bits: int,
        max_samples: int = DEFAULT_MAX_SAMPLES,
        seed: int = 0,
        grid: tuple[float, ...] = MSE_GRID,
    ) -> None:
        super().__init__(max_samples, seed)
        self.bits = check_bits(bits)
        self.grid = grid

    p = 2.0

    def range(self) -> tuple[Tensor, Tensor]:
        lo, hi = super().range()
        return mse_range(self.samples, self.bits, lo, hi, self.grid, self.p)


class LpObserver(MSEObserver):
    """The MSE observer's search with the error ``mean |x − q(x)|^2.4`` (the Lp-norm
    search of BRECQ's, QDrop's and Genie's code), the start of reconstruction's steps."""

    p = LP_NORM


def make_observer(
    name: str,
    bits: int,
    percentile: float = 99.99,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    seed: int = 0,
) -> Observer:
    """Observer by name (``minmax``, ``percentile``, ``mse`` or ``lp``); ConfigError otherwise."""
    check_bits(bits, "activation bits")
    if name == "minmax":
        return MinMaxObserver()
    if name == "percentile":
        return PercentileObserver(percentile, max_samples, seed)
    if name == "mse":
        return MSEObserver(bits, max_samples, seed)
    if name == "lp":
        return LpObserver(bits, max_samples, seed)
    raise ConfigError(f"unknown observer {name!r}; choose from: {', '.join(OBSERVERS)}")


__all__ = [
    "DEFAULT_MAX_SAMPLES",
    "LP_NORM",
    "MSE_GRID",
    "OBSERVERS",
    "SCALE_EPS",
    "LpObserver",
    "MSEObserver",
    "MinMaxObserver",
    "Observer",
    "PercentileObserver",
    "act_fake_quant",
    "affine_qparams",
    "affine_qrange",
    "check_bits",
    "clip_choice",
    "clip_errors",
    "clip_search",
    "make_observer",
    "minmax_range",
    "mse_range",
    "percentile_range",
    "round_ste",
    "symmetric_qrange",
    "weight_fake_quant",
    "weight_scales",
]
