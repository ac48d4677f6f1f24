"""Trainable fake quantizers for the student trainer: Polino buckets, LSQ, learned points.

Three weight quantizers and one activation-range rule, each a pure function (plus one
small observer class for the only state, the running activation range):

* **Uniform bucket quantization** (Polino, Pascanu & Alistarh, "Model compression via
  distillation and quantization", ICLR 2018, §2.1 and §4 "bucketing"; official code
  ``antspy/quantized_distillation``, ``quantization/quant_functions.py``
  ``uniformQuantization`` / ``ScalingFunction``): per bucket of consecutive elements of
  the flattened tensor, affine min/max scaling to [0, 1] and ``2^b`` evenly spaced points.
  Used by quantized distillation (paper Alg. 1) with a straight-through gradient.
* **LSQ** (Esser et al., "Learned Step Size Quantization", ICLR 2020, §2, eqs. 1–3):
  ``round(clip(x/s, −Q_N, Q_P))·s`` with a learned step ``s`` and the paper's gradient.
* **Differentiable quantization** (Polino et al. 2018, §3 / Alg. 2; official
  ``nonUniformQuantization`` / ``nonUniformQuantization_variable``): the same bucket
  scaling, then the nearest of a learned sorted list of points; gradients flow to the
  points. Plus the quantile initialisation and the gradient-norm bit allocation.
* **EMA activation ranges** for QAT (Krishnamoorthi, arXiv:1806.08342, QAT with moving
  averages of activation min/max; ``torch.ao.quantization.MovingAverageMinMaxObserver``,
  averaging constant 0.01), to be used with :func:`~distill_data.quant.quantizers.
  affine_qparams` / :func:`~distill_data.quant.quantizers.act_fake_quant`.

Arithmetic contract (GPU kernels must reproduce these numbers bit for bit):

* Compute dtype: float32 for float16/bfloat16/float32 inputs, float64 for float64.
* Rounding is round-half-to-even (``torch.round``). Every formula below is evaluated
  left to right as written, one IEEE operation at a time, **without fused
  multiply-add** (a kernel must keep ``a*b + c`` as two roundings).
* Bucket scaling: ``β = min``, ``α = max − min`` (``α := 1`` if ``α < 1e-10``),
  ``x̃ = (x − β) / α``.
* Uniform codes: ``c = round(x̃ · n)`` with ``n = 2^b − 1``; values ``(c / n) · α + β``.
* Non-uniform codes: index of the nearest sorted point (ties to the upper point);
  values ``p_c · α + β``.
* LSQ: ``round(clamp(x / s, −Q_N, Q_P)) · s``.

Note on the top endpoint: the bucket minimum is reproduced exactly (``c = 0`` gives
``β``), but the maximum comes back as ``fl(α + β)``, which equals ``max`` only when
``max − min`` is exact in floating point (e.g. both of the same sign within a factor of
two). Otherwise it can differ from ``max`` by up to half an ulp of ``α`` plus half an
ulp of the result — for random float32 weights about half of all buckets. This is the
official code's arithmetic (it stores the same two floats ``α, β`` per bucket) and it
is kept so that the stored integer model and the trained fake-quant model agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from distill_data.errors import ConfigError
from distill_data.quant.quantizers import (
    SCALE_EPS,
    Observer,
    check_bits,
    clip_choice,
    clip_errors,
)

#: ``α`` below this is replaced by 1 (official ``ScalingFunction.tol_diff_zero``): a
#: constant bucket would otherwise divide by zero; it then quantizes to its minimum.
ALPHA_TOL = 1e-10
#: Default bucket size of every experiment in the official code (``'bucket_size':256``).
DEFAULT_BUCKET_SIZE = 256
#: Default EMA averaging constant of ``torch.ao`` ``MovingAverageMinMaxObserver``.
EMA_MOMENTUM = 0.01
ALLOCATION_UNITS = ("points", "bits")


# ------------------------------------------------------------------------ buckets


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_bucket_size(bucket_size: int | None) -> None:
    if bucket_size is None:
        return
    if isinstance(bucket_size, bool) or not isinstance(bucket_size, int) or bucket_size < 1:
        raise ConfigError(
            f"bucket_size must be a positive integer or None (one bucket), got {bucket_size!r}"
        )


def _row_length(numel: int, bucket_size: int | None) -> int:
    """Elements per bucket row: a tensor smaller than one bucket is one short row."""
    if numel < 1:
        raise ConfigError("cannot quantize an empty tensor (numel = 0)")
    _check_bucket_size(bucket_size)
    return numel if bucket_size is None else min(bucket_size, numel)


def bucket_count(numel: int, bucket_size: int | None = DEFAULT_BUCKET_SIZE) -> int:
    """Number of buckets a tensor of ``numel`` elements is split into (``⌈numel/k⌉``)."""
    return -(-numel // _row_length(numel, bucket_size))


def _bucket_rows(w: Tensor, bucket_size: int | None) -> Tensor:
    """``w`` flattened in memory order, padded with its last element, as ``(buckets, k)``.

    Official ``create_bucket_tensor(..., fill_values='last')``: the padding repeats the
    last element, so no bucket's min/max changes; a tensor smaller than one bucket
    becomes a single row of its own length; ``bucket_size=None`` is one row.
    """
    flat = w.detach().reshape(-1).to(_compute_dtype(w.dtype))
    numel = flat.numel()
    length = _row_length(numel, bucket_size)
    pad = bucket_count(numel, bucket_size) * length - numel
    if pad:
        flat = torch.cat([flat, flat[-1:].expand(pad)])
    return flat.view(-1, length)


def _bucket_affine(rows: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row ``(α, β) = (max − min, min)`` with ``α := 1`` where ``α < 1e-10``."""
    lo, hi = torch.aminmax(rows, dim=1)
    alpha = hi - lo
    alpha = torch.where(alpha < ALPHA_TOL, torch.ones_like(alpha), alpha)
    return alpha, lo


def _scaled_rows(w: Tensor, bucket_size: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """``(x̃, α, β)``: the bucket rows scaled to [0, 1] by ``(x − β) / α``."""
    rows = _bucket_rows(w, bucket_size)
    alpha, beta = _bucket_affine(rows)
    return (rows - beta[:, None]) / alpha[:, None], alpha, beta


def _strip(rows: Tensor, shape: torch.Size | Sequence[int]) -> Tensor:
    """Drop the padding of bucket rows and restore ``shape``."""
    numel = math.prod(shape)
    return rows.reshape(-1)[:numel].reshape(shape)


def _check_codes(codes: Tensor, alpha: Tensor, beta: Tensor, shape: Sequence[int]) -> None:
    numel = math.prod(shape)
    if codes.dim() != 2 or alpha.shape != (codes.shape[0],) or beta.shape != alpha.shape:
        raise ConfigError(
            f"codes must be (buckets, k) with alpha and beta of shape (buckets,); got codes "
            f"{tuple(codes.shape)}, alpha {tuple(alpha.shape)}, beta {tuple(beta.shape)}"
        )
    if not codes.numel() - codes.shape[1] < numel <= codes.numel():
        raise ConfigError(
            f"shape {tuple(shape)} ({numel} elements) does not fit codes of shape "
            f"{tuple(codes.shape)}: the last bucket must hold between 1 and k real elements"
        )


def bucket_quantize(
    w: Tensor,
    bits: int,
    bucket_size: int | None = DEFAULT_BUCKET_SIZE,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Uniform min/max bucket quantization to ``2^b`` levels (Polino et al. 2018, §2.1).

    The flattened tensor is cut into buckets of ``bucket_size`` consecutive elements
    (they may straddle channels; the last one is padded with the tensor's last element,
    as the official ``create_bucket_tensor`` does). Per bucket, ``β = min``,
    ``α = max − min`` (``α := 1`` if below 1e-10), ``x̃ = (x − β)/α ∈ [0, 1]`` and the
    code is ``c = round(x̃·n)`` with ``n = 2^b − 1`` (``2^b`` points, ``2^b − 1``
    intervals: the official trainer passes ``s = 2**numBits`` points, CFM:209-211).

    Stochastic rounding (the paper's §2.1 quantization function, unbiased:
    ``E[c] = x̃·n``): ``c = ⌊x̃·n⌋ + [u < frac(x̃·n)]`` with one float32 ``u ~ U[0, 1)``
    per real element, drawn in flattened order from ``generator`` (required). The
    official code compares ``u <= p``; ``<`` is used here so that a value already on
    the grid (``p = 0``) can never move up a level. The official trainer itself uses
    deterministic rounding (``stochastic_rounding=False``, CFM:216-221), hence the
    default.

    Args:
        w: Tensor to quantize (any shape; float16/bfloat16/float32 are computed in
            float32, float64 in float64).
        bits: Bits per code, 2–8.
        bucket_size: Elements per bucket; ``None`` = one bucket for the whole tensor.
        stochastic: Unbiased stochastic rounding instead of round-half-to-even.
        generator: ``torch.Generator`` on ``w``'s device; needed iff ``stochastic``
            (unless ``seed`` is given).
        seed: draw the uniforms from Triton's counter-based Philox stream instead
            (``tl.rand(seed, flat index)``, :mod:`distill_data.kernels.philox`): the
            reference of the fused kernel's stochastic rounding, bit for bit.

    Returns:
        ``(codes, alpha, beta)``: ``codes`` uint8 of shape ``(buckets, k)`` (``k`` =
        ``min(bucket_size, numel)``; padded entries repeat the last real code), ``alpha``
        and ``beta`` of shape ``(buckets,)`` in the compute dtype. Feed them with
        ``w.shape`` to :func:`bucket_dequantize`.
    """
    n = 2 ** check_bits(bits) - 1
    scaled, alpha, beta = _scaled_rows(w, bucket_size)
    scaled = scaled * n
    if not stochastic:
        return torch.round(scaled).to(torch.uint8), alpha, beta
    if seed is not None:
        from distill_data.kernels.philox import philox_uniform

        u = philox_uniform(seed, w.numel(), w.device)
        return _round_stochastic(scaled, u, w.numel()), alpha, beta
    if generator is None:
        raise ConfigError("stochastic rounding needs an explicit torch.Generator (generator=...)")
    if generator.device.type != w.device.type:
        raise ConfigError(
            f"generator is on {generator.device} but the tensor is on {w.device}; "
            "create the generator on the tensor's device"
        )
    u = torch.rand(w.numel(), generator=generator, device=w.device, dtype=torch.float32)
    return _round_stochastic(scaled, u, w.numel()), alpha, beta


def _round_stochastic(scaled: Tensor, u: Tensor, numel: int) -> Tensor:
    """``⌊v⌋ + [u < frac(v)]`` per real element (``u`` in flattened order); padding
    repeats the last real code."""
    low = torch.floor(scaled)
    frac = scaled - low
    u = torch.cat([u, u.new_ones(scaled.numel() - numel)]).view_as(scaled)
    codes = (low + (u < frac).to(low.dtype)).to(torch.uint8)
    flat = codes.view(-1)
    flat[numel:] = flat[numel - 1]
    return codes


def bucket_dequantize(
    codes: Tensor,
    alpha: Tensor,
    beta: Tensor,
    shape: torch.Size | Sequence[int],
    bits: int,
) -> Tensor:
    """Values ``(c / n) · α + β`` (``n = 2^b − 1``) of bucket codes, reshaped to ``shape``.

    Inverse of :func:`bucket_quantize` (official ``ScalingFunction.inv_scale_down``
    applied to ``round(x̃·n)/n``); the padding of the last bucket is dropped. ``bits``
    is needed because the codes alone do not say how many levels there are. The result
    has ``alpha``'s dtype.
    """
    n = 2 ** check_bits(bits) - 1
    shape = tuple(shape)
    _check_codes(codes, alpha, beta, shape)
    values = codes.to(alpha.dtype) / n * alpha[:, None] + beta[:, None]
    return _strip(values, shape)


class _StraightThroughBucket(torch.autograd.Function):
    """Forward: bucket quantize + dequantize; backward: identity (plain STE)."""

    @staticmethod
    def forward(ctx, w, bits, bucket_size, stochastic, generator, seed):
        codes, alpha, beta = bucket_quantize(w, bits, bucket_size, stochastic, generator, seed)
        return bucket_dequantize(codes, alpha, beta, w.shape, bits).to(w.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None, None, None


def bucket_fake_quant(
    w: Tensor,
    bits: int,
    bucket_size: int | None = DEFAULT_BUCKET_SIZE,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> Tensor:
    """Bucket fake quantization with a straight-through gradient (Polino et al. 2018, Alg. 1).

    Forward: ``bucket_dequantize(bucket_quantize(w, ...))`` in ``w``'s shape and dtype.
    Backward: the gradient w.r.t. the quantized weights is applied unchanged to ``w``
    (official ``backprop_quantization_style='none'``, the default of ``train_model``:
    the float weights receive the quantized model's gradient, with no clipping). The
    forward output is computed directly, never as ``w + (q − w).detach()``, so it is
    bit-identical to :func:`bucket_dequantize`.
    """
    return _StraightThroughBucket.apply(w, bits, bucket_size, stochastic, generator, seed)


def bucket_overhead_bits(
    numel: int, bucket_size: int | None = DEFAULT_BUCKET_SIZE, float_bits: int = 32
) -> float:
    """Bits per weight spent on the per-bucket ``(α, β)`` pair.

    ``2 · float_bits · buckets / numel``: ``64/k`` for a tensor of full buckets (0.25 bit
    per weight at ``k = 256``, the paper's accounting, official ``get_size_reduction``
    HLP:216-262), more for a tensor whose last bucket is partial or that is smaller than
    one bucket (it still stores one full pair).
    """
    return 2 * float_bits * bucket_count(numel, bucket_size) / numel


# ---------------------------------------------------------------------------- LSQ


def lsq_qrange(bits: int, signed: bool) -> tuple[int, int]:
    """``(Q_N, Q_P)`` of LSQ (Esser et al. 2020, §2): the clip range is ``[−Q_N, Q_P]``.

    Signed data (weights): ``(2^(b−1), 2^(b−1) − 1)``, the full two's-complement range;
    unsigned data (post-ReLU activations): ``(0, 2^b − 1)``.
    """
    check_bits(bits)
    return (2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def _check_qrange(qn: int, qp: int) -> None:
    if qn < 0 or qp < 1:
        raise ConfigError(f"LSQ range needs qn >= 0 and qp >= 1, got qn={qn}, qp={qp}")


def lsq_grad_scale(numel: int, qp: int) -> float:
    """Step-size gradient scale ``g = 1/√(N · Q_P)`` (Esser et al. 2020, §2.2).

    ``N`` is the number of weights of the layer (weight step) or of features (activation
    step); the paper's Appendix code passes ``x.numel()`` for both, which for activations
    includes the batch size. The caller chooses ``N``; for per-channel steps lsq-net keeps
    the whole tensor's ``numel``.
    """
    if numel < 1 or qp < 1:
        raise ConfigError(f"lsq_grad_scale needs numel >= 1 and qp >= 1, got {numel}, {qp}")
    return 1.0 / math.sqrt(numel * qp)


def lsq_init_step(x: Tensor, qp: int, per_channel: bool = False) -> Tensor:
    """Initial step ``s₀ = 2 · mean|x| / √Q_P`` (Esser et al. 2020, §2.1).

    Per channel (``per_channel=True``): the mean over all dims but the first, returned
    with shape ``(C, 1, …, 1)`` so it broadcasts against ``x``. An all-zero tensor or
    channel gets :data:`~distill_data.quant.quantizers.SCALE_EPS` instead of 0.
    Detached; float32 (float64 for float64 input).
    """
    if qp < 1:
        raise ConfigError(f"lsq_init_step needs qp >= 1, got {qp}")
    a = x.detach().abs().to(_compute_dtype(x.dtype))
    if per_channel:
        if x.dim() < 1 or x.shape[0] == 0:
            raise ConfigError(f"per-channel step needs a channel dim, got shape {tuple(x.shape)}")
        mean = a.reshape(x.shape[0], -1).mean(dim=1).reshape(-1, *([1] * (x.dim() - 1)))
    else:
        mean = a.mean()
    return lsq_step_from_mean(mean, qp)


def lsq_step_from_mean(mean: Tensor, qp: int) -> Tensor:
    """``2 · mean|x| / √Q_P``, at least :data:`~distill_data.quant.quantizers.SCALE_EPS`."""
    return (2.0 * mean / math.sqrt(qp)).clamp(min=SCALE_EPS)


def _lsq_quantize(qn: int, qp: int):
    """LSQ's ``round(clamp(x/s, −Q_N, Q_P))·s`` as a ``quantize(rows, s)`` of the
    clipping search (:func:`~distill_data.quant.quantizers.clip_errors`)."""
    return lambda v, s: torch.round(torch.clamp(v / s, -qn, qp)) * s


def lsq_mse_errors(rows: Tensor, qn: int, qp: int, top: Tensor) -> Tensor:
    """Squared-error sums ``Σ (q_s(x) − x)²`` of each row of ``rows`` (shape ``(R, M)``)
    at the candidate steps ``s_k = α_k · top / Q_P`` of the clipping search
    (:func:`~distill_data.quant.quantizers.clip_errors`), ``q_s`` LSQ's quantizer and
    ``top`` (shape ``(R,)``) the rows' largest magnitude. Float64 sums of shape
    ``(R, K)``: sums, not means, so that ranks holding parts of one batch can add theirs
    (:func:`lsq_mse_step` takes the argmin)."""
    _check_qrange(qn, qp)
    return clip_errors(rows, top, qp, _lsq_quantize(qn, qp), total=True)


def lsq_mse_step(errors: Tensor, qp: int, top: Tensor) -> Tensor:
    """The step of :func:`lsq_mse_errors`' candidates with the least error per row (ties:
    the larger step, less clipping), float32 of ``top``'s shape."""
    return clip_choice(errors, top, qp).reshape(top.shape)


def lsq_mse_init_step(x: Tensor, qn: int, qp: int, per_channel: bool = False) -> Tensor:
    """Initial LSQ step minimising the quantization MSE of ``x`` itself, over clipping
    ratios of its largest magnitude: the MSE range setting that Nagel et al. ("A White
    Paper on Neural Network Quantization", 2021, §3.4 and §4.2, Table 8) find the better
    start for LSQ at low bits, and LSQ+'s (Bhalgat et al., CVPRW 2020, §3.3) MSE
    initialisation of the activation scale. ``per_channel``: one step per first-dim
    slice, shape ``(C, 1, …, 1)``; otherwise a 0-dim tensor. Detached, float32."""
    if per_channel:
        if x.dim() < 1 or x.shape[0] == 0:
            raise ConfigError(f"per-channel step needs a channel dim, got shape {tuple(x.shape)}")
        rows = x.detach().reshape(x.shape[0], -1)
    else:
        rows = x.detach().reshape(1, -1)
    top = rows.float().abs().amax(1)
    step = lsq_mse_step(lsq_mse_errors(rows, qn, qp, top), qp, top)
    return step.reshape(-1, *([1] * (x.dim() - 1))) if per_channel else step.reshape(())


class _LSQ(torch.autograd.Function):
    """``round(clamp(x/s, −Q_N, Q_P))·s`` with the LSQ gradients (eq. 3 and the STE)."""

    @staticmethod
    def forward(ctx, x, step, qn, qp, grad_scale):
        ctx.save_for_backward(x, step)
        ctx.qn, ctx.qp, ctx.grad_scale = qn, qp, grad_scale
        return torch.round(torch.clamp(x / step, -qn, qp)) * step

    @staticmethod
    def backward(ctx, grad):
        x, step = ctx.saved_tensors
        qn, qp = ctx.qn, ctx.qp
        v = x / step
        inside = (v > -qn) & (v < qp)
        grad_x = grad_step = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad * inside).to(x.dtype)
        if ctx.needs_input_grad[1]:
            clipped = torch.where(v <= -qn, float(-qn), float(qp))
            ds = torch.where(inside, torch.round(v) - v, clipped)
            grad_step = (grad * ds * ctx.grad_scale).sum_to_size(step.shape).to(step.dtype)
        return grad_x, grad_step, None, None, None


def lsq_fake_quant(x: Tensor, step: Tensor, qn: int, qp: int, grad_scale: float = 1.0) -> Tensor:
    """LSQ fake quantization ``v̂ = round(clip(x/s, −Q_N, Q_P)) · s`` (Esser et al. 2020, eqs. 1–2).

    Gradients (a custom autograd function, so the forward value is exactly the formula
    above — the paper's ``grad_scale`` trick ``(s − s·g).detach() + s·g`` can change
    ``s`` by an ulp in the forward):

    * w.r.t. ``x``: straight-through inside the range, 1 if ``−Q_N < x/s < Q_P``, else 0;
    * w.r.t. ``s`` (eq. 3), times ``grad_scale``: ``round(x/s) − x/s`` inside,
      ``−Q_N`` if ``x/s ≤ −Q_N``, ``Q_P`` if ``x/s ≥ Q_P``; summed over the elements
      that share a step.

    The paper's inequalities are strict, so a value exactly on a range end counts as
    clipped (autograd through ``torch.clamp`` would count it as inside; the two differ
    only on that measure-zero set).

    Args:
        x: Data to quantize.
        step: Step size ``s > 0`` (not checked: a host sync per call): 0-dim or shape
            ``(1,)`` per tensor, ``(C, 1, 1, 1)`` / ``(C, 1)`` per output channel, or any
            shape that broadcasts against ``x``.
        qn: ``Q_N`` (see :func:`lsq_qrange`).
        qp: ``Q_P``.
        grad_scale: ``g`` multiplying the step gradient (see :func:`lsq_grad_scale`).
    """
    _check_qrange(qn, qp)
    if not grad_scale > 0:
        raise ConfigError(f"grad_scale must be > 0, got {grad_scale}")
    return _LSQ.apply(x, step, qn, qp, grad_scale)


# ------------------------------------------------------ differentiable quantization


def _nearest(scaled: Tensor, points: Tensor) -> Tensor:
    """Index of the nearest sorted point; on an exact tie, the upper point.

    Official ``nonUniformQuantization``: ``i = searchsorted(p, x, 'left')`` clipped to
    the last index, then ``i − 1`` if ``|x − p[i−1]| < |x − p[i]|``.
    """
    hi = torch.searchsorted(points, scaled, side="left").clamp_(max=points.numel() - 1)
    lo = (hi - 1).clamp_(min=0)
    take_lo = (hi > 0) & ((scaled - points[lo]).abs() < (scaled - points[hi]).abs())
    return torch.where(take_lo, lo, hi)


def _check_points(points: Tensor, w: Tensor) -> None:
    if points.dim() != 1 or points.numel() < 1:
        raise ConfigError(f"points must be a non-empty 1-D tensor, got shape {tuple(points.shape)}")
    if points.device != w.device:
        raise ConfigError(f"points are on {points.device} but the weights are on {w.device}")


def nonuniform_codes(
    w: Tensor, points: Tensor, bucket_size: int | None = DEFAULT_BUCKET_SIZE
) -> tuple[Tensor, Tensor, Tensor]:
    """Nearest-point codes of a tensor (Polino et al. 2018, §3; ``nonUniformQuantization``).

    Buckets and ``(α, β)`` exactly as in :func:`bucket_quantize`; each scaled value
    ``x̃`` is assigned the index of the nearest point of ``sort(points)`` (ties go to
    the upper point, as in the official code).

    Returns:
        ``(codes, alpha, beta)``: int64 codes of shape ``(buckets, k)`` indexing the
        **sorted** points, and per-bucket ``alpha``, ``beta``.
    """
    _check_points(points, w)
    scaled, alpha, beta = _scaled_rows(w, bucket_size)
    sorted_points = points.detach().to(scaled.dtype).sort().values
    return _nearest(scaled.contiguous(), sorted_points), alpha, beta


def nonuniform_dequantize(
    codes: Tensor,
    points: Tensor,
    alpha: Tensor,
    beta: Tensor,
    shape: torch.Size | Sequence[int],
) -> Tensor:
    """Values ``p_c · α + β`` of non-uniform codes (``p`` = ``sort(points)``), in ``shape``."""
    shape = tuple(shape)
    _check_codes(codes, alpha, beta, shape)
    p = points.detach().to(alpha.dtype).sort().values
    return _strip(p[codes] * alpha[:, None] + beta[:, None], shape)


class _NonUniform(torch.autograd.Function):
    """Forward: nearest-point quantization; backward: STE to ``w``, eq. below to points."""

    @staticmethod
    def forward(ctx, w, sorted_points, bucket_size):
        scaled, alpha, beta = _scaled_rows(w, bucket_size)
        p = sorted_points.detach().to(scaled.dtype)
        codes = _nearest(scaled.contiguous(), p)
        ctx.save_for_backward(codes, alpha)
        ctx.numel, ctx.num_points, ctx.points_dtype = w.numel(), p.numel(), sorted_points.dtype
        return _strip(p[codes] * alpha[:, None] + beta[:, None], w.shape).to(w.dtype)

    @staticmethod
    def backward(ctx, grad):
        codes, alpha = ctx.saved_tensors
        grad_points = None
        if ctx.needs_input_grad[1]:
            # ∂L/∂p_k = Σ_{j: c_j = k} α_{bucket(j)} · ∂L/∂q_j (padding excluded)
            g = grad.reshape(-1).to(alpha.dtype)
            pad = codes.numel() - ctx.numel
            g = torch.cat([g, g.new_zeros(pad)]).view_as(codes) * alpha[:, None]
            grad_points = g.new_zeros(ctx.num_points).index_add_(0, codes.reshape(-1), g.view(-1))
            grad_points = grad_points.to(ctx.points_dtype)
        return grad, grad_points, None


def nonuniform_quantize(
    w: Tensor, points: Tensor, bucket_size: int | None = DEFAULT_BUCKET_SIZE
) -> Tensor:
    """Non-uniform fake quantization with learnable points (Polino et al. 2018, §3, Alg. 2).

    Per bucket (as in :func:`bucket_quantize`) ``x̃ = (x − β)/α``, ``q = α·p_k + β`` with
    ``p_k`` the point nearest to ``x̃``. ``points`` (one list per tensor, shared by all
    its buckets) are sorted inside the call, so a vector left unsorted by an optimizer
    step still works and its gradient lands on the right entries (the official loop
    re-sorts after every step instead, CFM:549-551).

    Gradients (official ``nonUniformQuantization_variable.backward``), with the
    assignment ``k(j)`` held constant:

    * w.r.t. ``points``: ``∂L/∂p_k = Σ_{j: k(j)=k} α_{bucket(j)} · ∂L/∂q_j``, since
      ``∂q_j/∂p_k = α_{bucket(j)}·[k(j) = k]``;
    * w.r.t. ``w``: straight through (``grad_inputTensor = grad_output`` in the official
      code). The scale ``α, β`` is not differentiated; in Alg. 2 the weights are frozen
      and only the points are optimized, so this matters only if ``w`` is trained too.

    Returns:
        The quantized tensor, ``w``'s shape and dtype.
    """
    _check_points(points, w)
    return _NonUniform.apply(w, points.sort().values, bucket_size)


def uniform_points(
    num_points: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> Tensor:
    """Evenly spaced points ``k/(s−1)``, ``k = 0…s−1`` (official ``'uniform'`` init)."""
    if num_points < 2:
        raise ConfigError(f"uniform points need num_points >= 2, got {num_points}")
    return torch.arange(num_points, dtype=dtype, device=device) / (num_points - 1)


def quantile_points(
    w: Tensor,
    bits: int | None = None,
    bucket_size: int | None = DEFAULT_BUCKET_SIZE,
    *,
    num_points: int | None = None,
) -> Tensor:
    """Initial points at equally spaced quantiles of the scaled weights (Polino et al. 2018, §3).

    Official ``initialize_quantization_points`` (QHF:140-154):
    ``np.percentile(x̃, linspace(0, 100, s))`` over the bucket-scaled values ``x̃`` of the
    real (unpadded) elements, linear interpolation, so the first point is 0 and the last
    1 (every bucket has its min at 0 and its max at 1). ``s = 2^bits``, or ``num_points``
    for the non-power-of-two counts that :func:`allocate_bits` can produce; give exactly
    one. The result is clamped to [0, 1] and sorted (guards against one-ulp
    interpolation wobble); float32 (float64 for float64 ``w``).
    """
    if (bits is None) == (num_points is None):
        raise ConfigError("give exactly one of bits and num_points")
    s = 2 ** check_bits(bits) if bits is not None else num_points
    if isinstance(s, bool) or not isinstance(s, int) or s < 1:
        raise ConfigError(f"num_points must be a positive integer, got {num_points!r}")
    scaled, _, _ = _scaled_rows(w, bucket_size)
    x = scaled.reshape(-1)[: w.numel()].to(torch.float64).sort().values
    pos = torch.linspace(0.0, 1.0, s, dtype=torch.float64, device=x.device) * (x.numel() - 1)
    lo = pos.floor().long()
    hi = pos.ceil().long()
    vals = x[lo] + (x[hi] - x[lo]) * (pos - lo.to(pos.dtype))
    return vals.clamp(0.0, 1.0).sort().values.to(scaled.dtype)


def allocate_bits(
    grad_norms: Sequence[float] | Tensor,
    budget: int | Sequence[int],
    *,
    unit: str = "points",
) -> list[int]:
    """Redistribute points (or bits) across tensors in proportion to gradient norms.

    Polino et al. 2018, §3 ("bit allocation by gradient norm"); official
    ``assign_bits_automatically`` (QHF:97-138), called by ``optimize_quantization_points``
    with ``input_is_point=True`` (CFM:423-448). With ``P_i`` the initial allocation
    (``budget``; an int means the same for every tensor) and ``g_i`` the gradient norms:

    1. floor ``f_i = ⌊P_i/2⌋`` (``unit="points"``, half of each tensor's points) or
       ``f_i = P_i − 1`` (``unit="bits"``);
    2. ``R = ΣP_i − Σf_i``; ``P'_i = f_i + round(g_i / Σg · R)`` (Python ``round``:
       half to even, as in the official code);
    3. ``d = ΣP'_i − ΣP_i``; if ``d < 0`` add ``−d`` to the first smallest ``P'_i``; if
       ``d > 0`` take ``d`` from the first largest.

    So ``ΣP'_i = ΣP_i`` exactly (a sum over tensors, not weighted by their sizes — the
    official rule, which is why there is no ``numel`` argument). Before step 3 a larger
    norm never gets fewer points above its floor; step 3 changes one tensor by the
    rounding remainder ``|d| ≤ n/2``, which can break that order for that tensor.

    Deviations from the official code, both only where it would fail: if all norms
    are 0 the initial allocation is returned unchanged (the official code divides by
    zero); if taking ``d`` from the largest would push it below its floor, the excess is
    taken from the next largest (first index among equals), and so on (the official
    code's comment warns that a large ``d`` "could bring issues": it can produce zero or
    negative counts). Whenever the official result respects the floors it is returned
    unchanged.

    Args:
        grad_norms: One non-negative, finite norm per tensor (the official trainer uses
            ``‖Σ_{5 minibatches} ∇CE / 5‖₂`` per parameter tensor).
        budget: Initial points (at least 2, so every floor keeps a point) or bits (at
            least 1) per tensor.
        unit: ``"points"`` (official DQ setting) or ``"bits"``.

    Returns:
        The new allocation, one int per tensor.
    """
    if unit not in ALLOCATION_UNITS:
        raise ConfigError(f"unknown unit {unit!r}; choose from: {', '.join(ALLOCATION_UNITS)}")
    norms = [float(g) for g in grad_norms]
    initial = [budget] * len(norms) if isinstance(budget, int) else list(budget)
    if not norms or len(initial) != len(norms):
        raise ConfigError(
            f"need one budget per gradient norm and at least one tensor, got {len(norms)} "
            f"norms and {len(initial)} budgets"
        )
    least = 2 if unit == "points" else 1
    if any(isinstance(p, bool) or not isinstance(p, int) or p < least for p in initial):
        raise ConfigError(f"budgets must be integers >= {least} ({unit}), got {initial}")
    if any(not math.isfinite(g) or g < 0 for g in norms):
        raise ConfigError(f"gradient norms must be finite and >= 0, got {norms}")
    total = sum(initial)
    floors = [p // 2 for p in initial] if unit == "points" else [p - 1 for p in initial]
    sum_norms = sum(norms)
    if sum_norms == 0:
        return initial
    rest = total - sum(floors)
    alloc = [f + round(g / sum_norms * rest) for g, f in zip(norms, floors)]
    diff = sum(alloc) - total
    if diff < 0:
        alloc[alloc.index(min(alloc))] -= diff
    while diff > 0:  # Σ(alloc − floors) = rest + diff ≥ diff, so this ends
        spare = [a if a > f else -math.inf for a, f in zip(alloc, floors)]
        i = spare.index(max(spare))
        take = min(diff, alloc[i] - floors[i])
        alloc[i] -= take
        diff -= take
    return alloc


# ------------------------------------------------------------- EMA activation range


def _check_momentum(momentum: float) -> None:
    if not 0.0 < momentum <= 1.0:
        raise ConfigError(f"momentum must be in (0, 1], got {momentum}")


def ema_update(
    lo: Tensor | None,
    hi: Tensor | None,
    x: Tensor,
    momentum: float = EMA_MOMENTUM,
    current: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """One EMA step of an activation range (Krishnamoorthi 2018, QAT; torch.ao observer).

    ``lo ← lo + c·(min(x) − lo)``, ``hi ← hi + c·(max(x) − hi)`` with ``c = momentum``
    (``torch.ao.quantization.MovingAverageMinMaxObserver``'s ``averaging_constant``,
    default 0.01, same arithmetic); the first batch (``lo``/``hi`` None) sets the range to
    its own min/max. No gradient; float32 0-dim tensors. ``current``: the batch's
    ``(min, max)`` when the caller has them (e.g. over every DDP rank's rows).
    """
    _check_momentum(momentum)
    cur_lo, cur_hi = torch.aminmax(x.detach().float()) if current is None else current
    if lo is None or hi is None:
        return cur_lo, cur_hi
    return lo + momentum * (cur_lo - lo), hi + momentum * (cur_hi - hi)


class EMAMinMaxObserver(Observer):
    """Activation range as an EMA of batch min/max, for QAT (see :func:`ema_update`).

    Call :meth:`observe` on each training batch before fake-quantizing it with
    ``affine_qparams(*observer.range(), bits)`` and ``act_fake_quant`` (torch.ao
    updates the observer first, then fake-quantizes with the new range); stop calling
    it to freeze the range.
    """

    def __init__(self, momentum: float = EMA_MOMENTUM) -> None:
        super().__init__()
        _check_momentum(momentum)
        self.momentum = momentum

    def observe(self, x: Tensor) -> None:
        """Move the range towards this batch's min/max (the first batch sets it)."""
        self.lo, self.hi = ema_update(self.lo, self.hi, x, self.momentum)


__all__ = [
    "ALLOCATION_UNITS",
    "ALPHA_TOL",
    "DEFAULT_BUCKET_SIZE",
    "EMA_MOMENTUM",
    "EMAMinMaxObserver",
    "allocate_bits",
    "bucket_count",
    "bucket_dequantize",
    "bucket_fake_quant",
    "bucket_overhead_bits",
    "bucket_quantize",
    "ema_update",
    "lsq_fake_quant",
    "lsq_grad_scale",
    "lsq_init_step",
    "lsq_mse_errors",
    "lsq_mse_init_step",
    "lsq_mse_step",
    "lsq_qrange",
    "nonuniform_codes",
    "nonuniform_dequantize",
    "nonuniform_quantize",
    "quantile_points",
    "uniform_points",
]
