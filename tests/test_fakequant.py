"""Trainable fake quantizers: Polino buckets, LSQ, learned points, bit allocation, EMA."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from distill_data.errors import ConfigError
from distill_data.quant.fakequant import (
    EMAMinMaxObserver,
    allocate_bits,
    bucket_count,
    bucket_dequantize,
    bucket_fake_quant,
    bucket_overhead_bits,
    bucket_quantize,
    ema_update,
    lsq_fake_quant,
    lsq_grad_scale,
    lsq_init_step,
    lsq_mse_errors,
    lsq_mse_init_step,
    lsq_mse_step,
    lsq_qrange,
    nonuniform_codes,
    nonuniform_dequantize,
    nonuniform_quantize,
    quantile_points,
    uniform_points,
)
from distill_data.quant.quantizers import act_fake_quant, affine_qparams

F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _fq(w, bits, bucket_size=256, **kw):
    codes, alpha, beta = bucket_quantize(w, bits, bucket_size, **kw)
    return bucket_dequantize(codes, alpha, beta, w.shape, bits), codes, alpha, beta


# ------------------------------------------------------------------ bucket quantizer


def test_bucket_golden_ties_round_half_to_even():
    w = torch.tensor([0.0, 0.5, 1.5, 2.5, 3.0])
    # precondition: β = 0, α = 3 and x̃·3 are exact ties at .5
    assert torch.equal((w - 0.0) / 3.0 * 3, torch.tensor([0.0, 0.5, 1.5, 2.5, 3.0]))
    codes, alpha, beta = bucket_quantize(w, 2)
    assert codes.tolist() == [[0, 0, 2, 2, 3]]  # half away from zero would give 0,1,2,3,3
    assert alpha.tolist() == [3.0] and beta.tolist() == [0.0]
    assert bucket_dequantize(codes, alpha, beta, w.shape, 2).tolist() == [0.0, 0.0, 2.0, 2.0, 3.0]


def test_bucket_golden_two_buckets_padding_with_last_element():
    w = torch.tensor([[0.0, 1.0, 0.25], [0.5, 2.0, 6.0]])
    codes, alpha, beta = bucket_quantize(w, 2, bucket_size=4)
    # bucket 0 = [0, 1, .25, .5] (β=0, α=1), bucket 1 = [2, 6] padded with 6, 6
    assert codes.dtype == torch.uint8
    assert codes.tolist() == [[0, 3, 1, 2], [0, 3, 3, 3]]  # 0.75 -> 1, 1.5 -> 2
    assert alpha.tolist() == [1.0, 4.0] and beta.tolist() == [0.0, 2.0]
    out = bucket_dequantize(codes, alpha, beta, w.shape, 2)
    third = torch.tensor(1.0) / 3
    expected = torch.stack(
        [torch.tensor(0.0), torch.tensor(1.0), third, 2 / torch.tensor(3.0) * 1.0 + 0.0]
        + [torch.tensor(2.0), torch.tensor(6.0)]
    ).view(2, 3)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_bucket_levels_range_and_error(bits):
    w = torch.randn(5, 7, 11, generator=_gen(bits)) * 0.3
    out, codes, alpha, beta = _fq(w, bits, bucket_size=64)
    n = 2**bits - 1
    assert codes.shape == (bucket_count(w.numel(), 64), 64) == (7, 64)
    assert int(codes.max()) <= n
    flat = w.reshape(-1)
    for b in range(codes.shape[0]):
        wb = flat[64 * b : 64 * (b + 1)]
        qb = out.reshape(-1)[64 * b : 64 * (b + 1)]
        assert len(torch.unique(qb)) <= 2**bits
        lo, hi = wb.min(), wb.max()
        assert beta[b] == lo and qb[wb.argmin()] == lo  # bottom endpoint exact
        if hi == lo:  # the last bucket holds a single element (385 = 6·64 + 1)
            assert alpha[b] == 1.0 and torch.equal(qb, wb)
            continue
        assert alpha[b] == hi - lo
        top = alpha[b] + beta[b]
        assert (qb >= lo).all() and (qb <= top).all()
        assert qb[wb.argmax()] == top  # top endpoint is fl(α + β) …
        eps = torch.finfo(torch.float32).eps
        assert (top - hi).abs() <= eps * (alpha[b] + hi.abs())  # … within rounding of max
        assert ((qb - wb).abs() <= alpha[b] / (2 * n) * (1 + 1e-5) + 1e-7).all()


def test_bucket_endpoints_exact_when_range_is_exact():
    # max − min is exact for data of one sign within a factor of two (Sterbenz)
    w = 1.0 + torch.rand(1000, generator=_gen(1))
    out, _, alpha, beta = _fq(w, 3, bucket_size=100)
    for b in range(10):
        wb, qb = w[100 * b : 100 * (b + 1)], out[100 * b : 100 * (b + 1)]
        assert qb.min() == wb.min() and qb.max() == wb.max()


def test_bucket_none_and_small_tensors_are_one_bucket():
    w = torch.randn(3, 300, generator=_gen(2))
    codes, alpha, _ = bucket_quantize(w, 4, bucket_size=None)
    assert codes.shape == (1, 900) and alpha.shape == (1,)
    assert alpha[0] == w.max() - w.min()
    small = torch.randn(10, generator=_gen(3))
    codes, _, _ = bucket_quantize(small, 4, bucket_size=256)
    assert codes.shape == (1, 10)
    exact = torch.randn(512, generator=_gen(4))
    assert bucket_quantize(exact, 4)[0].shape == (2, 256)


def test_bucket_constant_bucket_uses_alpha_one():
    w = torch.full((6,), -0.7)
    out, codes, alpha, beta = _fq(w, 4)
    assert alpha.tolist() == [1.0] and codes.eq(0).all()
    assert torch.equal(out, w)


def test_bucket_dequantize_rejects_wrong_shape():
    codes, alpha, beta = bucket_quantize(torch.randn(300, generator=_gen(5)), 2)
    with pytest.raises(ConfigError):
        bucket_dequantize(codes, alpha, beta, (256,), 2)  # the last bucket would be empty
    with pytest.raises(ConfigError):
        bucket_dequantize(codes, alpha, beta, (513,), 2)
    assert bucket_dequantize(codes, alpha, beta, (3, 100), 2).shape == (3, 100)


@pytest.mark.parametrize(
    "kw", [{"bits": 1}, {"bits": 9}, {"bits": 4, "bucket_size": 0}, {"bits": 4, "bucket_size": 2.0}]
)
def test_bucket_bad_settings(kw):
    why = "bucket_size must be a positive integer" if "bucket_size" in kw else "bits must be"
    with pytest.raises(ConfigError, match=why):
        bucket_quantize(torch.randn(8), **kw)


def test_bucket_empty_tensor_rejected():
    with pytest.raises(ConfigError, match="empty"):
        bucket_quantize(torch.zeros(0), 4)


def test_bucket_stochastic_needs_generator_on_same_device():
    with pytest.raises(ConfigError, match="Generator"):
        bucket_quantize(torch.randn(8), 2, stochastic=True)


def test_stochastic_rounding_unbiased():
    x = torch.tensor(0.37)
    w = torch.cat([torch.tensor([0.0, 1.0]), x.expand(100_000)])
    out, codes, _, _ = _fq(w, 2, bucket_size=None, stochastic=True, generator=_gen(0))
    vals = out[2:]
    assert set(torch.unique(codes[0, 2:]).tolist()) == {1, 2}  # only the two neighbours
    p = float(x * 3 - 1)  # probability of rounding up, 0.11
    sigma = math.sqrt(p * (1 - p)) / 3 / math.sqrt(vals.numel())
    assert abs(vals.double().mean().item() - x.item()) <= 3 * sigma
    assert abs(codes[0, 2:].double().mean().item() - (1 + p)) <= 3 * sigma * 3


def test_stochastic_rounding_per_element_unbiased_and_adjacent():
    w = torch.randn(300, generator=_gen(7))
    g = _gen(1)
    draws = torch.stack([_fq(w, 2, 64, stochastic=True, generator=g)[0] for _ in range(400)])
    det, codes, alpha, _ = _fq(w, 2, 64)
    step = (alpha / 3).repeat_interleave(64)[:300]
    assert ((draws - w).abs() <= step * (1 + 1e-5)).all()  # floor or ceil only
    z = (draws.double().mean(0) - w.double()) / (step.double() * 0.5 / math.sqrt(400))
    assert z.abs().max() < 4.5  # σ ≤ step/2 per draw


def test_stochastic_rounding_reproducible_and_global_rng_untouched():
    w = torch.randn(1000, generator=_gen(8))
    state = torch.random.get_rng_state()
    a = bucket_quantize(w, 3, stochastic=True, generator=_gen(5))[0]
    b = bucket_quantize(w, 3, stochastic=True, generator=_gen(5))[0]
    c = bucket_quantize(w, 3, stochastic=True, generator=_gen(6))[0]
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # padding of a partial bucket repeats the last real code
    assert (a.view(-1)[1000:] == a.view(-1)[999]).all()


def test_bucket_fake_quant_forward_exact_and_straight_through():
    w = torch.randn(4, 100, generator=_gen(9), requires_grad=True)
    out = bucket_fake_quant(w, 3, 128)
    ref = _fq(w.detach(), 3, 128)[0]
    assert torch.equal(out, ref)
    noisy = bucket_fake_quant(w, 3, 128, stochastic=True, generator=_gen(3))
    again = _fq(w.detach(), 3, 128, stochastic=True, generator=_gen(3))[0]
    assert torch.equal(noisy, again) and not torch.equal(noisy, out)
    up = torch.randn(4, 100, generator=_gen(10))
    (out * up).sum().backward()
    assert torch.equal(w.grad, up)


def test_bucket_fake_quant_low_precision_dtype():
    w = torch.randn(300, generator=_gen(11)).bfloat16()
    out = bucket_fake_quant(w, 4)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, _fq(w.float(), 4)[0].bfloat16())


def test_bucket_overhead_bits():
    assert bucket_overhead_bits(1024, 256) == 0.25
    assert bucket_overhead_bits(1000, 256) == 4 * 64 / 1000
    assert bucket_overhead_bits(100, 256) == 0.64
    assert bucket_overhead_bits(4096, None) == 64 / 4096
    assert bucket_overhead_bits(512, 256, float_bits=16) == 0.125


# ---------------------------------------------------------------------------- LSQ


def test_lsq_ranges_scale_and_init_formulas():
    assert lsq_qrange(3, signed=True) == (4, 3)
    assert lsq_qrange(3, signed=False) == (0, 7)
    assert lsq_qrange(8, signed=True) == (128, 127)
    assert lsq_grad_scale(100, 4) == 1 / 20
    x = torch.tensor([[1.0, -3.0], [0.0, 0.0], [-2.0, 2.0]])
    assert lsq_init_step(x, 4).item() == pytest.approx(2 * 8 / 6 / 2)
    per_ch = lsq_init_step(x, 4, per_channel=True)
    assert per_ch.shape == (3, 1)
    assert per_ch.view(-1).tolist() == pytest.approx([2.0, 1e-12, 2.0])  # zero channel: ε
    with pytest.raises(ConfigError):
        lsq_grad_scale(0, 3)
    with pytest.raises(ConfigError):
        lsq_init_step(x, 0)


# x/s = [-6, -2.2, -0.5, 0, 0.52, 1.5, 3.2, 4] for s = 0.5, 3-bit signed (Q_N=4, Q_P=3)
LSQ_X = torch.tensor([-3.0, -1.1, -0.25, 0.0, 0.26, 0.75, 1.6, 2.0])


def test_lsq_golden_forward_and_gradients():
    x = LSQ_X.clone().requires_grad_(True)
    s = torch.tensor(0.5, requires_grad=True)
    out = lsq_fake_quant(x, s, 4, 3, grad_scale=1.0)
    # ties -0.5 -> -0 and 1.5 -> 2 (half to even); ends clipped to -4 and 3
    assert out.tolist() == [-2.0, -1.0, -0.0, 0.0, 0.5, 1.0, 1.5, 1.5]
    out.sum().backward()
    assert x.grad.tolist() == [0, 1, 1, 1, 1, 1, 0, 0]
    v = LSQ_X / 0.5
    # -Q_N + Σ(round(v) - v) inside + 2·Q_P
    expected = -4 + float((torch.round(v[1:6]) - v[1:6]).sum()) + 3 + 3
    assert s.grad.item() == pytest.approx(expected)
    assert expected == pytest.approx(3.68)


def test_lsq_values_exactly_on_the_range_ends_count_as_clipped():
    # eq. 3 uses strict inequalities: v = −Q_N and v = Q_P take the clipped branch
    x = torch.tensor([-2.0, 1.5], requires_grad=True)  # x/s = −4, 3
    s = torch.tensor(0.5, requires_grad=True)
    out = lsq_fake_quant(x, s, 4, 3)
    assert out.tolist() == [-2.0, 1.5]
    out.sum().backward()
    assert x.grad.tolist() == [0.0, 0.0] and s.grad.item() == -4 + 3


def _lsq_closed_form(x, s, qn, qp, g, up):
    """∂L/∂s of eq. 3 written out element by element."""
    total = 0.0
    for xi, ui in zip(x.view(-1).tolist(), up.view(-1).tolist()):
        v = xi / s
        if v <= -qn:
            d = -qn
        elif v >= qp:
            d = qp
        else:
            d = round(v) - v  # Python round: half to even, as torch.round
        total += ui * d
    return g * total


@pytest.mark.parametrize("signed", [True, False])
def test_lsq_step_gradient_matches_closed_form_and_grid(signed):
    qn, qp = lsq_qrange(4, signed)
    x = (torch.randn(200, generator=_gen(12), dtype=F64) * 2).requires_grad_(True)
    s = torch.tensor(0.3, dtype=F64, requires_grad=True)
    g = lsq_grad_scale(x.numel(), qp)
    up = torch.randn(200, generator=_gen(13), dtype=F64)
    out = lsq_fake_quant(x, s, qn, qp, g)
    k = out.detach() / 0.3
    assert torch.allclose(k, k.round(), atol=1e-9)  # on the grid …
    assert k.min() >= -qn - 1e-9 and k.max() <= qp + 1e-9  # … inside the range
    assert torch.equal(out.detach(), torch.round(torch.clamp(x.detach() / s, -qn, qp)) * s)
    (out * up).sum().backward()
    assert s.grad.item() == pytest.approx(_lsq_closed_form(x.detach(), 0.3, qn, qp, g, up))
    v = x.detach() / 0.3
    assert torch.equal(x.grad, up * ((v > -qn) & (v < qp)))  # STE, not scaled by g


def _away_from_kinks(n, qn, qp, s, seed):
    """Points x whose x/s is ≥ 0.1 from any rounding tie and from the clip ends."""
    g = _gen(seed)
    k = torch.randint(-qn - 3, qp + 4, (n,), generator=g).to(F64)
    frac = torch.rand(n, generator=g, dtype=F64) * 0.3 + 0.1  # |offset| in [0.1, 0.4]
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).to(F64)
    return (k + sign * frac) * s  # ≥ 0.1 from every integer (clip ends) and half-integer


def test_lsq_gradcheck_against_surrogate():
    """LSQ's gradients are the exact gradients of σ·clip(x/σ) + σ·κ, κ = round(v₀) − v₀ frozen.

    The forward below evaluates that smooth surrogate (so finite differences see it) while
    the backward is LSQ's; σ = s₀ + g·(s − s₀) puts the gradient scale into the surrogate.
    """
    qn, qp, g = 4, 3, 0.3
    s0 = torch.tensor(0.37, dtype=F64)
    x0 = _away_from_kinks(40, qn, qp, 0.37, 14)
    c0 = torch.clamp(x0 / s0, -qn, qp)
    kappa = torch.round(c0) - c0

    def f(x, s):
        sigma = s0 + g * (s - s0)
        surrogate = sigma * torch.clamp(x / sigma, -qn, qp) + sigma * kappa
        q = lsq_fake_quant(x, s, qn, qp, g)
        return surrogate.detach() + (q - q.detach())

    inputs = (x0.clone().requires_grad_(True), s0.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)


def test_lsq_matches_paper_pseudocode_gradients():
    """Autograd through the Appendix code (grad_scale / round_pass tricks) gives the same."""
    qn, qp = lsq_qrange(3, signed=True)
    x0 = _away_from_kinks(64, qn, qp, 0.2, 15).view(4, 16)
    g = lsq_grad_scale(x0.numel(), qp)
    up = torch.randn(4, 16, generator=_gen(16), dtype=F64)

    def paper(x, s):
        s = (s - s * g).detach() + s * g
        v = torch.clamp(x / s, -qn, qp)
        return ((v.round() - v).detach() + v) * s

    grads = []
    for fn in (paper, lambda x, s: lsq_fake_quant(x, s, qn, qp, g)):
        x = x0.clone().requires_grad_(True)
        s = torch.full((4, 1), 0.2, dtype=F64, requires_grad=True)
        (fn(x, s) * up).sum().backward()
        grads.append((x.grad, s.grad))
    assert torch.allclose(grads[0][0], grads[1][0], rtol=1e-12, atol=0)
    assert (grads[1][0] == 0).any() and (grads[1][0] != 0).any()
    assert torch.allclose(grads[0][1], grads[1][1], rtol=1e-12, atol=1e-14)


def test_lsq_per_channel_equals_per_tensor_per_channel():
    qn, qp = lsq_qrange(4, signed=True)
    x = torch.randn(3, 2, 3, 3, generator=_gen(17))
    up = torch.randn(3, 2, 3, 3, generator=_gen(18))
    steps = torch.tensor([0.1, 0.4, 0.25]).view(3, 1, 1, 1).requires_grad_(True)
    out = lsq_fake_quant(x, steps, qn, qp, 0.5)
    (out * up).sum().backward()
    assert steps.grad.shape == (3, 1, 1, 1)
    for c in range(3):
        sc = steps.detach()[c, 0, 0, 0].clone().requires_grad_(True)
        oc = lsq_fake_quant(x[c], sc, qn, qp, 0.5)
        (oc * up[c]).sum().backward()
        assert torch.equal(oc, out[c].detach())
        assert sc.grad.shape == ()
        assert torch.allclose(sc.grad, steps.grad[c, 0, 0, 0], rtol=1e-6)


def _mse_step_by_hand(values: list[float], qn: int, qp: int) -> float:
    """The least-MSE LSQ step over α = 1.00 … 0.01 of max|x|/Q_P, in plain Python
    (ties to the larger α)."""
    top = max(abs(v) for v in values)
    best, best_err = None, math.inf
    for k in range(100, 0, -1):
        s = float(torch.tensor(k / 100 * top, dtype=torch.float32) / qp)
        err = sum((min(max(round(v / s), -qn), qp) * s - v) ** 2 for v in values)
        if err < best_err:
            best, best_err = s, err
    return best


def test_lsq_mse_init_step_is_the_least_error_clipping():
    g = _gen(31)
    x = torch.randn(200, generator=g)
    x[7] = 9.0  # one outlier: clipping it costs less than a coarse grid for the rest
    for bits, signed in ((2, True), (4, True), (3, False)):
        xs = x if signed else x.abs()
        qn, qp = lsq_qrange(bits, signed)
        step = lsq_mse_init_step(xs, qn, qp)
        assert step.shape == () and step.dtype == torch.float32
        assert float(step) == pytest.approx(_mse_step_by_hand(xs.tolist(), qn, qp), rel=1e-6)
        assert float(step) < float(xs.abs().max()) / qp  # the outlier is clipped
    # data that fits a 4-bit grid exactly: nothing is clipped, the error is zero
    grid = torch.tensor([-7.0, -3.0, 0.0, 2.0, 7.0]) * 0.25
    assert float(lsq_mse_init_step(grid, 8, 7)) == pytest.approx(0.25)


def test_lsq_mse_init_step_per_channel_and_degenerate_rows():
    w = torch.randn(4, 3, 3, 3, generator=_gen(32))
    w[2] = 0.0
    qn, qp = lsq_qrange(3, signed=True)
    steps = lsq_mse_init_step(w, qn, qp, per_channel=True)
    assert steps.shape == (4, 1, 1, 1)
    for c in (0, 1, 3):
        assert torch.equal(steps[c].reshape(()), lsq_mse_init_step(w[c], qn, qp))
    assert float(steps[2]) > 0  # an all-zero channel still has a usable step
    with pytest.raises(ConfigError):
        lsq_mse_init_step(torch.zeros(()), qn, qp, per_channel=True)


def test_lsq_mse_errors_add_over_parts_of_a_batch():
    """Ranks holding parts of a batch add their error sums: the step chosen from the
    parts' sums is the whole batch's (what LSQActivation's first batch does under DDP)."""
    x = torch.randn(6, 50, generator=_gen(33)).relu()
    qn, qp = lsq_qrange(4, signed=False)
    top = x.abs().max().reshape(1)
    whole = lsq_mse_errors(x.reshape(1, -1), qn, qp, top)
    parts = sum(lsq_mse_errors(x[i : i + 2].reshape(1, -1), qn, qp, top) for i in (0, 2, 4))
    assert whole.shape == (1, 100) and whole.dtype == torch.float64
    assert torch.allclose(parts, whole, rtol=1e-12)
    assert torch.equal(lsq_mse_step(parts, qp, top), lsq_mse_step(whole, qp, top))
    assert torch.equal(lsq_mse_step(whole, qp, top).reshape(()), lsq_mse_init_step(x, qn, qp))


@pytest.mark.parametrize("kw", [{"qn": -1, "qp": 3}, {"qn": 4, "qp": 0}, {"grad_scale": 0.0}])
def test_lsq_bad_settings(kw):
    args = {"qn": 4, "qp": 3, "grad_scale": 1.0} | kw
    with pytest.raises(ConfigError):
        lsq_fake_quant(torch.randn(4), torch.tensor(0.1), **args)


# ------------------------------------------------------- differentiable quantization


def test_nonuniform_golden_nearest_point_ties_up():
    w = torch.tensor([0.0, 1.0, 0.2, 0.55, 0.7, 0.25, 0.75])  # β = 0, α = 1: x̃ = w
    points = torch.tensor([0.0, 0.5, 1.0])
    out = nonuniform_quantize(w, points, bucket_size=None)
    # 0.25 and 0.75 are exactly halfway: the official code picks the upper point
    assert out.tolist() == [0.0, 1.0, 0.0, 0.5, 0.5, 0.5, 1.0]
    codes, alpha, beta = nonuniform_codes(w, points, bucket_size=None)
    assert codes.tolist() == [[0, 2, 0, 1, 1, 1, 2]]


def test_nonuniform_golden_buckets():
    w = torch.tensor([2.0, 4.0, 3.0, -1.0, 1.0, 0.6])  # buckets [2,4,3], [-1,1,.6]
    points = torch.tensor([0.0, 0.25, 1.0])
    out = nonuniform_quantize(w, points, bucket_size=3)
    # x̃ = [0, 1, .5 | 0, 1, .8] -> points [0, 1, .25 | 0, 1, 1]; α = [2, 2], β = [2, -1]
    assert out.tolist() == [2.0, 4.0, 2.5, -1.0, 1.0, 1.0]


def test_nonuniform_codes_dequantize_match_and_level_count():
    w = torch.randn(6, 50, generator=_gen(19))
    points = quantile_points(w, 3, 64)
    out = nonuniform_quantize(w, points, 64)
    codes, alpha, beta = nonuniform_codes(w, points, 64)
    assert torch.equal(nonuniform_dequantize(codes, points, alpha, beta, w.shape), out)
    for b in range(codes.shape[0]):
        assert len(torch.unique(out.view(-1)[64 * b : 64 * (b + 1)])) <= 8


def test_nonuniform_point_gradient_formula_and_finite_differences():
    w = torch.randn(5, 37, generator=_gen(20), dtype=F64)  # 3 buckets of 64, last partial
    pts = quantile_points(w, 3, 64)
    assert pts.dtype == F64
    c = torch.randn(w.shape, generator=_gen(21), dtype=F64)
    p = pts.clone().requires_grad_(True)
    (nonuniform_quantize(w, p, 64) * c).sum().backward()

    codes, alpha, _ = nonuniform_codes(w, pts, 64)
    flat_codes = codes.view(-1)[: w.numel()]
    alpha_j = alpha.repeat_interleave(64)[: w.numel()]
    formula = [float((alpha_j * c.view(-1))[flat_codes == k].sum()) for k in range(8)]
    assert p.grad.tolist() == pytest.approx(formula, rel=1e-10, abs=1e-12)

    eps = 1e-7
    loss = lambda q: float((nonuniform_quantize(w, q, 64) * c).sum())  # noqa: E731
    for k in range(8):
        e = torch.zeros(8, dtype=F64)
        e[k] = eps
        for q in (pts + e, pts - e):  # assignments must not change under the perturbation
            assert torch.equal(nonuniform_codes(w, q, 64)[0], codes)
        numeric = (loss(pts + e) - loss(pts - e)) / (2 * eps)
        assert numeric == pytest.approx(p.grad[k].item(), rel=1e-5, abs=1e-7)
    assert (p.grad != 0).all()


def test_nonuniform_weight_gradient_is_straight_through():
    w = torch.randn(40, generator=_gen(22), requires_grad=True)
    up = torch.randn(40, generator=_gen(23))
    (nonuniform_quantize(w, uniform_points(4), 16) * up).sum().backward()
    assert torch.equal(w.grad, up)


def test_nonuniform_unsorted_points_gradient_lands_on_right_entries():
    w = torch.randn(100, generator=_gen(24))
    up = torch.randn(100, generator=_gen(25))
    sorted_pts = torch.tensor([0.0, 0.2, 0.45, 0.8, 1.0])
    perm = torch.tensor([3, 0, 4, 1, 2])
    a = sorted_pts.clone().requires_grad_(True)
    b = sorted_pts[perm].clone().requires_grad_(True)
    qa = nonuniform_quantize(w, a, 32)
    qb = nonuniform_quantize(w, b, 32)
    assert torch.equal(qa, qb)
    (qa * up).sum().backward()
    (qb * up).sum().backward()
    assert torch.equal(b.grad, a.grad[perm])


def test_quantile_points_match_numpy_percentile():
    w = torch.randn(3, 200, generator=_gen(26))
    pts = quantile_points(w, 2, 128)
    assert pts.shape == (4,) and (pts[1:] >= pts[:-1]).all()
    assert pts[0] == 0.0 and pts[-1] == 1.0
    # the scaled values, per 128-element bucket (last bucket 88 elements)
    flat = w.view(-1).double().numpy()
    scaled = np.concatenate(
        [(b - b.min()) / (b.max() - b.min()) for b in np.split(flat, [128, 256, 384, 512])]
    )
    ref = np.percentile(scaled, np.linspace(0, 100, 4))
    assert np.allclose(pts.numpy(), ref, atol=1e-6)
    five = quantile_points(w, bucket_size=None, num_points=5)
    assert five.shape == (5,) and ((five >= 0) & (five <= 1)).all()
    assert (five[1:] >= five[:-1]).all()
    with pytest.raises(ConfigError):
        quantile_points(w, 2, num_points=4)
    with pytest.raises(ConfigError):
        quantile_points(w)


def test_uniform_points():
    assert uniform_points(4).tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    with pytest.raises(ConfigError):
        uniform_points(1)


# ------------------------------------------------------------------- bit allocation


def _official_assign(norms, budget):
    """Literal port of ``assign_bits_automatically(..., input_is_point=True)``."""
    total = sum(budget)
    temp = [x // 2 for x in budget]
    rest = total - sum(temp)
    s = sum(norms)
    out = [y + round(x / s * rest) for x, y in zip(norms, temp)]
    diff = sum(out) - total
    if diff > 0:
        out[out.index(max(out))] -= diff
    elif diff < 0:
        out[out.index(min(out))] += -diff
    return out


def test_allocate_golden():
    assert allocate_bits([1, 2, 5], 16) == [11, 14, 23]
    assert allocate_bits([10, 1, 1, 1], 16) == [33, 11, 10, 10]  # d = −1: the first smallest
    assert allocate_bits([1, 1, 2], 3) == [3, 3, 3]  # 1.5 -> 2 twice, d = +1 from the largest
    assert allocate_bits([1, 1, 1], [4, 4, 5]) == [5, 4, 4]
    assert allocate_bits([1, 2, 5], 4, unit="bits") == [3, 4, 5]


def test_allocate_keeps_floor_where_official_would_not():
    # floors [8, 2, 1], shares 0, 5.5, 5.5 -> [8, 8, 7], d = +1: the official code takes it
    # from tensor 0, already at its floor (-> 7 < 8); here it comes from tensor 1
    assert _official_assign([0, 2, 2], [16, 4, 2]) == [7, 8, 7]
    assert allocate_bits([0, 2, 2], [16, 4, 2]) == [8, 7, 7]


def test_allocate_matches_official_preserves_total_and_favours_large_norms():
    g = _gen(27)
    for _ in range(200):
        n = int(torch.randint(2, 12, (1,), generator=g))
        norms = (torch.rand(n, generator=g) ** 3 * 10).tolist()
        budget = [2 ** int(torch.randint(1, 5, (1,), generator=g))] * n
        out = allocate_bits(torch.tensor(norms), budget)
        assert sum(out) == sum(budget)
        assert all(o >= b // 2 for o, b in zip(out, budget))
        assert out == _official_assign(norms, budget)
        # before the one-tensor rounding fix, more gradient never means fewer points
        rest = sum(budget) - sum(b // 2 for b in budget)
        raw = [b // 2 + round(x / sum(norms) * rest) for x, b in zip(norms, budget)]
        fixed = [i for i in range(n) if raw[i] != out[i]]
        assert len(fixed) <= 1
        for i in range(n):
            for j in range(n):
                if norms[i] > norms[j] and i not in fixed and j not in fixed:
                    assert out[i] >= out[j]


def test_allocate_edge_cases():
    assert allocate_bits([0.0, 0.0], 8) == [8, 8]  # nothing to go by: unchanged
    for bad, why in (
        ({"grad_norms": [1.0], "budget": [4, 4]}, "one budget per gradient norm"),
        ({"grad_norms": [1.0, -1.0], "budget": 4}, "finite and >= 0"),
        ({"grad_norms": [1.0, float("nan")], "budget": 4}, "finite and >= 0"),
        ({"grad_norms": [1.0, 1.0], "budget": 1}, "integers >= 2"),
        ({"grad_norms": [1.0, 1.0], "budget": 4, "unit": "bytes"}, "unknown unit 'bytes'"),
        ({"grad_norms": [], "budget": 4}, "at least one tensor"),
    ):
        with pytest.raises(ConfigError, match=why):
            allocate_bits(**bad)


# -------------------------------------------------------------------------- EMA


def test_ema_update_golden():
    lo, hi = ema_update(None, None, torch.tensor([-1.0, 0.5, 2.0]))
    assert (lo.item(), hi.item()) == (-1.0, 2.0)
    lo, hi = ema_update(lo, hi, torch.tensor([4.0, -3.0]), momentum=0.01)
    assert lo.item() == pytest.approx(-1.02) and hi.item() == pytest.approx(2.02)
    lo1, hi1 = ema_update(lo, hi, torch.tensor([7.0, -9.0]), momentum=1.0)
    assert (lo1.item(), hi1.item()) == (-9.0, 7.0)
    with pytest.raises(ConfigError):
        ema_update(lo, hi, torch.zeros(2), momentum=0.0)


def test_ema_matches_torch_ao_observer_bitwise():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization.observer import MovingAverageMinMaxObserver

        ref = MovingAverageMinMaxObserver()
    obs = EMAMinMaxObserver()
    g = _gen(28)
    for i in range(6):
        x = torch.randn(8, 5, generator=g) * (1 + i) + i
        ref(x)
        obs.observe(x)
        lo, hi = obs.range()
        assert torch.equal(lo, ref.min_val) and torch.equal(hi, ref.max_val)


def test_ema_observer_feeds_affine_fake_quant():
    obs = EMAMinMaxObserver(momentum=0.5)
    obs.observe(torch.tensor([0.0, 1.0]))
    obs.observe(torch.tensor([0.0, 3.0]))
    lo, hi = obs.range()
    assert (lo.item(), hi.item()) == (0.0, 2.0)
    scale, zp = affine_qparams(lo, hi, 4)
    out = act_fake_quant(torch.tensor([0.5, 2.0, 5.0]), scale, zp, 4)
    assert out.tolist() == pytest.approx([scale.item() * 4, 2.0, 2.0])
    with pytest.raises(ConfigError):
        EMAMinMaxObserver(momentum=1.5)
