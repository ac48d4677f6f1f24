"""Distillation losses: golden values (torchdistill style), properties, registry, errors.

Every golden number below was computed once in NumPy float64 from the literal logits
and is written here; each test also recomputes it with the independent NumPy reference
in this file, so a wrong literal cannot hide behind a wrong implementation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill_data.errors import ConfigError
from distill_data.train.losses import (
    DEFAULT_TEMPERATURES,
    KD_LOSSES,
    bdkd,
    bdkd_weights,
    feature_mse,
    hinton_kd,
    kd_loss,
    kd_options,
    multi_teacher_target,
    polino_kd,
    soft_ce,
)

S = [[1.0, 2.0, 0.5, -1.0], [0.0, 0.0, 3.0, 1.0], [-2.0, 1.5, 0.5, 0.0]]
T = [[2.0, 1.0, 0.0, -0.5], [0.5, -1.0, 2.5, 1.5], [-1.0, 2.0, 1.0, -0.5]]
T2 = [[0.0, 3.0, -1.0, 0.5], [1.0, 0.0, 0.0, 2.0], [0.5, 0.5, 2.0, -1.0]]
Y = [1, 2, 0]
K = 4


def tensors(dtype=torch.float64):
    return (
        torch.tensor(S, dtype=dtype),
        torch.tensor(T, dtype=dtype),
        torch.tensor(T2, dtype=dtype),
        torch.tensor(Y),
    )


# ------------------------------------------------------------ NumPy reference (float64)


def np_softmax(z, temp=1.0):
    z = np.asarray(z, dtype=np.float64) / temp
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_kl(p, q):  # per row
    return (p * np.log(p / q)).sum(axis=1)


def np_entropy(p):
    return -(p * np.log(p)).sum(axis=1)


def np_ce(z, y):
    return float(-np.log(np_softmax(z)[np.arange(len(y)), y]).mean())


def np_hinton(s, t, temp):
    return float(temp**2 * np_kl(np_softmax(t, temp), np_softmax(s, temp)).mean())


def np_polino(s, t, y, temp, alpha, official):
    kl = np_kl(np_softmax(t, temp), np_softmax(s, temp)).mean()
    if official:
        kl /= np.shape(s)[1]
    return float(alpha * temp**2 * kl + (1 - alpha) * np_ce(s, y))


def np_bdkd(s, t, temp, kappa):
    p, q = np_softmax(s, temp), np_softmax(t, temp)
    gap = np_entropy(p) - np_entropy(q)
    w = np.where(gap > 0, 1.0, 0.0) if math.isinf(kappa) else 1 / (1 + np.exp(-kappa * gap))
    return float(temp**2 * ((1 - w) * np_kl(q, p) + w * np_kl(p, q)).mean())


def np_mean_target(ts, temp):
    return np.mean([np_softmax(t, temp) for t in ts], axis=0)


def np_soft_ce(s, probs, temp):
    return float(-(probs * np.log(np_softmax(s, temp))).sum(axis=1).mean())


# ------------------------------------------------------------------- golden values

GOLDEN = {
    "hinton_T4": (
        lambda s, t, t2, y: hinton_kd(s, t),
        lambda: np_hinton(S, T, 4.0),
        0.2153976347471137,
    ),
    "hinton_T1": (
        lambda s, t, t2, y: hinton_kd(s, t, temperature=1.0),
        lambda: np_hinton(S, T, 1.0),
        0.18597072478550133,
    ),
    "hinton_ensemble_T2": (
        lambda s, t, t2, y: hinton_kd(s, [t, t2], temperature=2.0),
        lambda: float(4 * np_kl(np_mean_target([T, T2], 2.0), np_softmax(S, 2.0)).mean()),
        0.34436649790880364,
    ),
    "polino": (
        lambda s, t, t2, y: polino_kd(s, t, y),
        lambda: np_polino(S, T, Y, 2.0, 0.7, official=False),
        0.6133951801522728,
    ),
    "polino_official": (
        lambda s, t, t2, y: polino_kd(s, t, y, kl_reduction="official"),
        lambda: np_polino(S, T, Y, 2.0, 0.7, official=True),
        0.5050500784479154,
    ),
    "bdkd_T1_hard": (
        lambda s, t, t2, y: bdkd(s, t, temperature=1.0),
        lambda: np_bdkd(S, T, 1.0, math.inf),
        0.18531215673169785,
    ),
    "bdkd_T1_sigmoid2": (
        lambda s, t, t2, y: bdkd(s, t, temperature=1.0, sharpness=2.0),
        lambda: np_bdkd(S, T, 1.0, 2.0),
        0.18384590264360715,
    ),
    "bdkd_T2_hard": (
        lambda s, t, t2, y: bdkd(s, t, temperature=2.0),
        lambda: np_bdkd(S, T, 2.0, math.inf),
        0.20886876199719914,
    ),
    "soft_ce_meal": (
        lambda s, t, t2, y: soft_ce(s, multi_teacher_target([t, t2])),
        lambda: np_soft_ce(S, np_mean_target([T, T2], 1.0), 1.0),
        1.3672815276879116,
    ),
    "soft_ce_T2": (
        lambda s, t, t2, y: soft_ce(s, multi_teacher_target([t, t2], 2.0), 2.0),
        lambda: np_soft_ce(S, np_mean_target([T, T2], 2.0), 2.0),
        1.3728524069102779,
    ),
}


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_golden_value(case):
    fn, reference, golden = GOLDEN[case]
    assert reference() == pytest.approx(golden, abs=1e-12)  # the literal is right
    value = fn(*tensors())
    assert value.dim() == 0 and value.dtype == torch.float64
    assert float(value) == pytest.approx(golden, abs=1e-6)
    value32 = fn(*tensors(torch.float32))
    assert value32.dtype == torch.float32
    assert float(value32) == pytest.approx(golden, abs=1e-6)


def test_multi_teacher_target_golden():
    _, t, t2, _ = tensors()
    expected = [
        [0.33704079, 0.55074001, 0.05064647, 0.06157273],
        [0.15638642, 0.05114374, 0.36736747, 0.42510237],
        [0.09117167, 0.40796179, 0.45686081, 0.04400574],
    ]
    np.testing.assert_allclose(np_mean_target([T, T2], 1.0), expected, atol=1e-8)
    got = multi_teacher_target([t, t2])
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), atol=1e-8, rtol=0)
    torch.testing.assert_close(got.sum(1), torch.ones(3, dtype=torch.float64))
    # the mean of probabilities, not the softmax of the mean logits
    assert not torch.allclose(got, F.softmax((t + t2) / 2, dim=1), atol=1e-3)


def test_feature_mse_golden():
    fs = [torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([1.0, -1.0, 0.5])]
    ft = [torch.tensor([[0.0, 2.0], [3.0, 2.0]]), torch.zeros(3)]
    # layer 0: (1 + 0 + 0 + 4) / 4 = 1.25; layer 1: (1 + 1 + 0.25) / 3 = 0.75; mean = 1.0
    assert float(feature_mse(fs, ft)) == pytest.approx(1.0, abs=1e-7)
    assert float(feature_mse(fs[:1], ft[:1])) == pytest.approx(1.25, abs=1e-7)


# --------------------------------------------------------------------- properties


def _entropy(q):
    return -(q * q.log()).sum(1).mean()


@pytest.mark.parametrize(
    "loss",
    [
        lambda s, t: hinton_kd(s, t),
        lambda s, t: hinton_kd(s, t, temperature=0.5),
        lambda s, t: polino_kd(s, t, torch.tensor(Y), alpha=1.0),
        lambda s, t: polino_kd(s, t, torch.tensor(Y), alpha=1.0, kl_reduction="official"),
        lambda s, t: bdkd(s, t),
        lambda s, t: bdkd(s, t, temperature=1.0, sharpness=2.0),
        lambda s, t: hinton_kd(s, [t, t, t]),
        lambda s, t: soft_ce(s, F.softmax(t, 1)) - _entropy(F.softmax(t, 1)),
    ],
)
def test_kd_is_zero_when_student_equals_teacher(loss):
    s, _, _, _ = tensors()
    assert abs(float(loss(s, s.clone()))) < 1e-12
    _, t, _, _ = tensors()
    assert float(loss(s, t)) > 1e-3  # and not zero otherwise: the check can fail


def test_hinton_batchmean_is_k_times_mean_reduction():
    s, t, _, _ = tensors()
    temp = 4.0
    # what F.kl_div(..., reduction="mean") computes: the mean over all B·K elements
    elements = F.kl_div(F.log_softmax(s / temp, 1), F.softmax(t / temp, 1), reduction="none")
    mean_red = elements.mean()
    torch.testing.assert_close(hinton_kd(s, t, temp), K * temp**2 * mean_red)
    # Polino's "official" reduction is exactly that mean reduction
    y = torch.tensor(Y)
    off = polino_kd(s, t, y, temperature=temp, alpha=1.0, kl_reduction="official")
    torch.testing.assert_close(off, temp**2 * mean_red)
    bm = polino_kd(s, t, y, temperature=temp, alpha=1.0)
    torch.testing.assert_close(bm, K * off)


def test_hinton_gradient_matches_paper_eq2():
    """d(T²·KL)/ds = T·(softmax(s/T) − softmax(t/T)) / B (Hinton et al. eq. 2 × T²)."""
    s, t, _, _ = tensors()
    s.requires_grad_(True)
    t.requires_grad_(True)
    temp = 3.0
    hinton_kd(s, t, temp).backward()
    expected = temp * (F.softmax(s.detach() / temp, 1) - F.softmax(t.detach() / temp, 1)) / 3
    torch.testing.assert_close(s.grad, expected)
    assert t.grad is None  # the teacher is a fixed target


def test_temperature_scaling():
    s, t, _, _ = tensors()
    # softmax(c·s / (c·T)) = softmax(s / T), so only the T² factor changes
    c = 2.5
    torch.testing.assert_close(hinton_kd(c * s, c * t, c * 2.0), c**2 * hinton_kd(s, t, 2.0))
    # high-temperature limit (Hinton §2.1): T²·KL -> (1/2K) Σ_k (δ_k − mean δ)², δ = s − t
    d = s - t
    logit_match = ((d - d.mean(1, keepdim=True)) ** 2).sum(1).mean() / (2 * K)
    torch.testing.assert_close(hinton_kd(s, t, 1000.0), logit_match, rtol=2e-3, atol=0)


@pytest.mark.parametrize(
    "loss",
    [
        lambda s, t, y: hinton_kd(s, t),
        lambda s, t, y: polino_kd(s, t, y),
        lambda s, t, y: bdkd(s, t, temperature=1.0),
        lambda s, t, y: bdkd(s, t, sharpness=3.0),
        lambda s, t, y: soft_ce(s, multi_teacher_target([t, 2 * t])),
        lambda s, t, y: feature_mse([s, s * 2], [t, t]),
    ],
)
def test_gradients_finite_and_teacher_detached(loss):
    # extreme logits: saturated softmaxes must not give inf/nan
    s = torch.tensor([[80.0, -80.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    t = torch.tensor([[-90.0, 90.0, 0.0], [1.0, -2.0, 60.0]], requires_grad=True)
    y = torch.tensor([0, 2])
    value = loss(s, t, y)
    assert torch.isfinite(value)
    value.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None


def test_multi_teacher_of_identical_teachers_is_the_teacher():
    s, t, _, _ = tensors()
    for temp in (1.0, 3.0):
        torch.testing.assert_close(multi_teacher_target([t, t, t], temp), F.softmax(t / temp, 1))
        torch.testing.assert_close(multi_teacher_target([t], temp), F.softmax(t / temp, 1))
    torch.testing.assert_close(hinton_kd(s, [t, t]), hinton_kd(s, t))
    torch.testing.assert_close(bdkd(s, [t, t], 1.0), bdkd(s, t, 1.0))


def test_soft_ce_is_kl_plus_target_entropy():
    s, t, _, _ = tensors()
    temp = 2.0
    q = F.softmax(t / temp, 1)
    entropy = -(q * q.log()).sum(1).mean()
    torch.testing.assert_close(soft_ce(s, q, temp), hinton_kd(s, t, temp) / temp**2 + entropy)


# ------------------------------------------------------------------------ BD-KD


def _fkl_rkl(s, t, temp):
    p, q = F.log_softmax(s / temp, 1), F.log_softmax(t / temp, 1)
    fkl = (q.exp() * (q - p)).sum(1)
    rkl = (p.exp() * (p - q)).sum(1)
    return fkl, rkl


def test_bdkd_weights_follow_the_entropy_gap():
    s, t, _, _ = tensors()
    # at T = 1 the student is flatter than the teacher on rows 0 and 2, sharper on row 1
    torch.testing.assert_close(bdkd_weights(s, t, 1.0), torch.tensor([1.0, 0.0, 1.0]).double())
    w = bdkd_weights(s, t, 1.0, sharpness=2.0)
    torch.testing.assert_close(w, torch.tensor([0.5106922, 0.38189018, 0.54721597]).double())
    torch.testing.assert_close(
        bdkd_weights(s, t, 1.0, sharpness=0.0), torch.full((3,), 0.5).double()
    )
    # a large finite sharpness approaches the hard switch
    torch.testing.assert_close(bdkd_weights(s, t, 1.0, 1e6), bdkd_weights(s, t, 1.0))
    torch.testing.assert_close(bdkd_weights(s, s, 1.0), torch.full((3,), 0.5).double())


def test_bdkd_special_cases():
    s, t, _, _ = tensors()
    temp = 1.5
    fkl, rkl = _fkl_rkl(s, t, temp)
    # κ = 0: half the Jeffreys divergence
    torch.testing.assert_close(bdkd(s, t, temp, 0.0), temp**2 * 0.5 * (fkl + rkl).mean())
    # hard switch, student sharper than the teacher everywhere: forward KL = Hinton
    sharp = 3 * t
    torch.testing.assert_close(bdkd(sharp, t, temp), hinton_kd(sharp, t, temp))
    # hard switch, student flatter everywhere: reverse KL
    flat = t / 3
    _, rkl_flat = _fkl_rkl(flat, t, temp)
    torch.testing.assert_close(bdkd(flat, t, temp), temp**2 * rkl_flat.mean())
    assert not torch.allclose(bdkd(flat, t, temp), hinton_kd(flat, t, temp))


def test_bdkd_weights_carry_no_gradient():
    s, t, _, _ = tensors()
    temp, kappa = 1.0, 2.0
    w = bdkd_weights(s, t, temp, kappa)
    a = s.clone().requires_grad_(True)
    bdkd(a, t, temp, kappa).backward()
    b = s.clone().requires_grad_(True)
    fkl, rkl = _fkl_rkl(b, t, temp)
    (((1 - w) * fkl + w * rkl).mean() * temp**2).backward()
    torch.testing.assert_close(a.grad, b.grad)


# ----------------------------------------------------------------------- registry


def test_registry_names():
    assert set(KD_LOSSES) == {"hinton", "polino", "bdkd", "none"}
    assert set(DEFAULT_TEMPERATURES) == set(KD_LOSSES)
    assert kd_options("polino") == {"alpha": 0.7, "kl_reduction": "batchmean"}
    assert kd_options("bdkd") == {"alpha": 1.0, "sharpness": math.inf}
    assert kd_options("none") == {}


@pytest.mark.parametrize("name", sorted(KD_LOSSES))
def test_every_registered_loss_trains(name):
    s, t, _, y = tensors()
    s.requires_grad_(True)
    value = kd_loss(name, s, t, y)
    assert value.dim() == 0 and torch.isfinite(value) and float(value.detach()) > 0
    value.backward()
    assert torch.isfinite(s.grad).all()


def test_kd_loss_dispatches_with_paper_defaults():
    s, t, _, y = tensors()
    torch.testing.assert_close(kd_loss("hinton", s, t, None), hinton_kd(s, t, 4.0))
    torch.testing.assert_close(kd_loss("polino", s, t, y), polino_kd(s, t, y, 2.0, 0.7))
    torch.testing.assert_close(
        kd_loss("polino", s, t, y, 3.0, kl_reduction="official"),
        polino_kd(s, t, y, 3.0, kl_reduction="official"),
    )
    torch.testing.assert_close(kd_loss("bdkd", s, t, None, 1.0), bdkd(s, t, 1.0))
    torch.testing.assert_close(kd_loss("none", s, None, y), F.cross_entropy(s, y))
    ce = F.cross_entropy(s, y)
    torch.testing.assert_close(
        kd_loss("hinton", s, t, y, 2.0, alpha=0.25), 0.25 * hinton_kd(s, t, 2.0) + 0.75 * ce
    )
    torch.testing.assert_close(
        kd_loss("bdkd", s, t, y, 2.0, alpha=0.5, sharpness=1.0),
        0.5 * bdkd(s, t, 2.0, 1.0) + 0.5 * ce,
    )


# ------------------------------------------------------------------------- errors


def test_kd_loss_errors():
    s, t, _, y = tensors()
    with pytest.raises(ConfigError, match="unknown KD loss 'dkd'; choose from: bdkd, hinton"):
        kd_loss("dkd", s, t, y)
    with pytest.raises(ConfigError, match="unknown option.*sharpness.*valid: alpha, kl_reduc"):
        kd_loss("polino", s, t, y, sharpness=1.0)
    with pytest.raises(ConfigError, match="needs teacher logits"):
        kd_loss("hinton", s, None, y)
    with pytest.raises(ConfigError, match="labels are required"):
        kd_loss("hinton", s, t, None, alpha=0.5)
    with pytest.raises(ConfigError, match="labels are required"):
        kd_loss("none", s, None, None)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s, t, y: hinton_kd(s, t, 0.0), "temperature must be a positive number"),
        (lambda s, t, y: hinton_kd(s, t, float("nan")), "temperature must be a positive"),
        (lambda s, t, y: hinton_kd(s, t[:, :3]), r"shape \(3, 4\), got \(3, 3\)"),
        (lambda s, t, y: hinton_kd(s[0], t), r"shape \(B, K\), got \(4,\)"),
        (lambda s, t, y: hinton_kd(s, [t, t[:2]]), "teacher 1's logits must have"),
        (lambda s, t, y: polino_kd(s, t, y, alpha=1.5), "alpha must be a number from 0 to 1"),
        (lambda s, t, y: polino_kd(s, t, y, kl_reduction="mean"), "kl_reduction must be one"),
        (lambda s, t, y: polino_kd(s, t, y[:2]), r"labels must be an integer tensor of shape"),
        (lambda s, t, y: polino_kd(s, t, y.double()), r"labels must be an integer tensor"),
        (lambda s, t, y: bdkd(s, t, sharpness=-1.0), "sharpness must be a number >= 0"),
        (lambda s, t, y: multi_teacher_target([]), "teacher_logits is empty"),
        (lambda s, t, y: multi_teacher_target(t), "must be a list of"),
        (lambda s, t, y: soft_ce(s, t[:2]), "target probabilities must have"),
        (lambda s, t, y: feature_mse([s], [t, t]), "different numbers of feature maps"),
        (lambda s, t, y: feature_mse([s], [t[:2]]), "feature map 0: student shape"),
        (lambda s, t, y: feature_mse([], []), "at least one layer"),
    ],
)
def test_errors_name_the_input(call, message):
    s, t, _, y = tensors()
    with pytest.raises(ConfigError, match=message):
        call(s, t, y)
