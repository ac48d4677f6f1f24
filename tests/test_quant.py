"""Post-training quantization: golden quantizer values, observers, BN folding, PTQ."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill_data.config import make_config
from distill_data.errors import ConfigError, DataError
from distill_data.models import build_model
from distill_data.quant import (
    MinMaxObserver,
    MSEObserver,
    PercentileObserver,
    PTQConfig,
    QuantConv2d,
    QuantLinear,
    act_fake_quant,
    affine_qparams,
    evaluate_ptq,
    fidelity,
    fold_batchnorm,
    parse_bits,
    quantize_model,
    quantized_layers,
    weight_fake_quant,
    weight_scales,
)
from distill_data.quant.ptq import model_logits

# channel 0: ordinary; channel 1: all zeros (scale clamp); channel 2: max at a negative
W = torch.tensor(
    [
        [1.4, -0.45, 0.33, 0.0],
        [0.0, 0.0, 0.0, 0.0],
        [-3.5, 1.0, 2.0, 0.1],
    ]
)

MODELS = [("convnet_bn", {"width": 8, "depth": 2}), ("resnet", {"width": 4, "depth": 8})]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _bn_model(name: str, opts: dict, seed: int = 0) -> nn.Module:
    """A small BN network with non-trivial BN affine parameters and running statistics."""
    g = _gen(seed)
    model = build_model(name, 3, 5, (8, 8), generator=g, **opts)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.uniform_(0.5, 1.5, generator=g)
            bn.bias.normal_(0.0, 0.3, generator=g)
            bn.momentum = 1.0  # running stats := this batch's statistics
        model.train()
        model(torch.randn(32, 3, 8, 8, generator=g) * 2.0 + 0.5)
    for bn in bns:
        bn.momentum = 0.1
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    return model.eval()


# ---------------------------------------------------------------- golden values


def test_weight_fake_quant_golden_4bit():
    # q_max = 2^3 - 1 = 7; S = (1.4/7, clamp, 3.5/7) = (0.2, eps, 0.5)
    assert torch.allclose(weight_scales(W, 4), torch.tensor([0.2, 1e-12, 0.5]))
    expected = torch.tensor(
        [
            [1.4, -0.4, 0.4, 0.0],  # 7, round(-2.25)=-2, round(1.65)=2, 0 (times 0.2)
            [0.0, 0.0, 0.0, 0.0],
            [-3.5, 1.0, 2.0, 0.0],  # -7, 2, 4, round(0.2)=0 (times 0.5)
        ]
    )
    assert torch.allclose(weight_fake_quant(W, 4), expected, atol=1e-6)


def test_weight_fake_quant_golden_8bit():
    # q_max = 127; S = (1.4/127, clamp, 3.5/127)
    # ch0: -0.45/S = -40.82 -> -41, 0.33/S = 29.94 -> 30
    # ch2: 1.0/S = 36.29 -> 36, 2.0/S = 72.57 -> 73, 0.1/S = 3.63 -> 4
    expected = torch.tensor(
        [
            [127 * 1.4 / 127, -41 * 1.4 / 127, 30 * 1.4 / 127, 0.0],
            [0.0, 0.0, 0.0, 0.0],
            [-127 * 3.5 / 127, 36 * 3.5 / 127, 73 * 3.5 / 127, 4 * 3.5 / 127],
        ]
    )
    got = weight_fake_quant(W, 8)
    assert torch.allclose(got, expected, atol=1e-6)
    assert got[0, 1].item() == pytest.approx(-0.4519685, abs=1e-6)
    assert got[2, 2].item() == pytest.approx(2.0118110, abs=1e-6)


def test_activation_fake_quant_golden():
    # 2 bits, range [0, 3]: S = 3/3 = 1, Z = 0, integers 0..3
    s, z = affine_qparams(0.0, 3.0, 2)
    assert s.item() == pytest.approx(1.0) and z.item() == 0
    x = torch.tensor([-0.2, 0.4, 1.3, 2.6, 3.5])
    assert torch.allclose(act_fake_quant(x, s, z, 2), torch.tensor([0.0, 0.0, 1.0, 3.0, 3.0]))
    # 2 bits, range [-1, 2]: S = 1, Z = round(1/1) = 1, representable {-1, 0, 1, 2}
    s, z = affine_qparams(-1.0, 2.0, 2)
    assert s.item() == pytest.approx(1.0) and z.item() == 1
    x = torch.tensor([-1.4, -0.6, 0.2, 1.7, 2.8])
    assert torch.allclose(act_fake_quant(x, s, z, 2), torch.tensor([-1.0, -1.0, 0.0, 2.0, 2.0]))
    # 8 bits, range [-1, 2]: S = 3/255, Z = round(85.0) = 85
    s, z = affine_qparams(-1.0, 2.0, 8)
    assert s.item() == pytest.approx(3 / 255) and z.item() == 85
    # a range not containing 0 is widened to include it: [0.5, 2] -> [0, 2]
    s, z = affine_qparams(0.5, 2.0, 8)
    assert s.item() == pytest.approx(2 / 255) and z.item() == 0


# ------------------------------------------------------------ round-trip bounds


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_weight_round_trip_within_half_step(bits):
    w = torch.randn(6, 3, 3, 3, generator=_gen(bits))
    scale = weight_scales(w, bits)
    err = (weight_fake_quant(w, bits) - w).abs().reshape(6, -1).amax(1)
    assert torch.all(err <= scale / 2 + 1e-6)
    # the largest-magnitude weight of each channel is exact
    amax = w.abs().reshape(6, -1).amax(1)
    q_amax = weight_fake_quant(w, bits).abs().reshape(6, -1).amax(1)
    assert torch.allclose(q_amax, amax, atol=1e-6)


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("lo,hi", [(0.0, 1.0), (-0.3, 1.0), (-2.0, 0.7)])
def test_activation_round_trip_within_half_step(bits, lo, hi):
    x = torch.rand(2000, generator=_gen(bits)) * (hi - lo) + lo
    s, z = affine_qparams(lo, hi, bits)
    err = (act_fake_quant(x, s, z, bits) - x).abs()
    assert err.max().item() <= s.item() / 2 + 1e-6


def test_fake_quant_passes_gradients_straight_through():
    w = torch.randn(4, 3, generator=_gen()).requires_grad_()
    weight_fake_quant(w, 4).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


# -------------------------------------------------------------------- observers


def test_minmax_observer_range_is_data_range():
    g = _gen()
    batches = [torch.randn(4, 3, 5, 5, generator=g) * (i + 1) for i in range(3)]
    obs = MinMaxObserver()
    for b in batches:
        obs.observe(b)
    lo, hi = obs.range()
    data = torch.cat([b.flatten() for b in batches])
    assert lo.item() == data.min().item() and hi.item() == data.max().item()


def test_percentile_observer_clips_outliers():
    g = _gen()
    x = torch.cat([torch.rand(10_000, generator=g), torch.tensor([100.0, 80.0, 60.0])])
    pct, mm = PercentileObserver(percentile=99.9), MinMaxObserver()
    for o in (pct, mm):
        o.observe(x)
    assert mm.range()[1].item() == 100.0
    lo, hi = pct.range()
    assert 0.9 < hi.item() <= 1.0 and 0.0 <= lo.item() < 0.01


def test_percentile_observer_caps_stored_values_reproducibly():
    def run() -> tuple[torch.Tensor, torch.Tensor]:
        obs = PercentileObserver(percentile=99.0, max_samples=500, seed=3)
        g = _gen(1)
        for _ in range(8):
            obs.observe(torch.rand(1000, generator=g))
        assert obs.samples.numel() == 500
        return obs.range()

    (lo1, hi1), (lo2, hi2) = run(), run()
    assert lo1 == lo2 and hi1 == hi2
    assert 0.95 < hi1.item() <= 1.0  # the 99th percentile of U(0, 1), from 500 of 8000


def test_mse_observer_clips_no_wider_and_no_worse_than_minmax():
    g = _gen()
    x = torch.cat([torch.randn(4000, generator=g).abs(), torch.tensor([25.0])])  # heavy tail
    mse, mm = MSEObserver(bits=4), MinMaxObserver()
    for o in (mse, mm):
        o.observe(x)
    (lo, hi), (mlo, mhi) = mse.range(), mm.range()
    # effective ranges include 0 (affine_qparams widens them): compare those
    assert min(mlo.item(), 0.0) <= lo.item() <= 0.0 <= hi.item() <= mhi.item()
    assert hi.item() < mhi.item()  # the outlier is clipped

    def err(a, b):
        s, z = affine_qparams(a, b, 4)
        return (act_fake_quant(x, s, z, 4) - x).pow(2).mean().item()

    assert err(lo, hi) <= err(mlo, mhi)


# ------------------------------------------------------------------- BN folding


@pytest.mark.parametrize("name,opts", MODELS)
def test_fold_batchnorm_preserves_outputs(name, opts):
    model = _bn_model(name, opts)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # input untouched
    x = torch.randn(16, 3, 8, 8, generator=_gen(5))
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_untraceable_model_needs_fold_bn_false():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2)

        def forward(self, x):
            y = self.bn(self.conv(x))
            if y.sum() > 0:  # data-dependent control flow: fx cannot trace this
                y = y * 2
            return self.fc(y.mean((2, 3)))

    model = Branchy().eval()
    x = torch.randn(8, 3, 6, 6, generator=_gen())
    with pytest.raises(ConfigError, match="fold_bn=False"):
        quantize_model(model, x)
    q = quantize_model(model, x, PTQConfig(fold_bn=False))
    assert set(quantized_layers(q)) == {"conv", "fc"}
    with torch.no_grad():
        assert torch.allclose(q(x), model(x), atol=0.05)


# --------------------------------------------------------------------------- PTQ


@pytest.mark.parametrize("name,opts", MODELS)
def test_w8a8_agrees_with_fp32(name, opts):
    model = _bn_model(name, opts)
    g = _gen(7)
    calib, x = torch.randn(64, 3, 8, 8, generator=g), torch.randn(256, 3, 8, 8, generator=g)
    q = quantize_model(model, calib, PTQConfig(first_last_bits=None))
    with torch.no_grad():
        agree = (q(x).argmax(1) == model(x).argmax(1)).float().mean().item()
    assert agree >= 0.95


@pytest.mark.parametrize("observer", ["minmax", "percentile", "mse"])
def test_output_error_grows_as_bits_shrink(observer):
    model = _bn_model("convnet_bn", {"width": 8, "depth": 2})
    g = _gen(8)
    calib, x = torch.randn(64, 3, 8, 8, generator=g), torch.randn(128, 3, 8, 8, generator=g)
    with torch.no_grad():
        ref = model(x)
        errs = [
            (quantize_model(model, calib, PTQConfig(b, b, observer, first_last_bits=None))(x) - ref)
            .pow(2)
            .mean()
            .item()
            for b in (8, 4, 2)
        ]
    assert errs[0] < errs[1] < errs[2]


@pytest.mark.parametrize("name,opts", MODELS)
def test_first_and_last_layers_kept_at_8_bits(name, opts):
    model = _bn_model(name, opts)
    calib = torch.randn(16, 3, 8, 8, generator=_gen())
    layers = quantized_layers(quantize_model(model, calib, PTQConfig(w_bits=4, a_bits=3)))
    first = "features.0" if name == "convnet_bn" else "stem.0"
    assert isinstance(layers[first], QuantConv2d) and isinstance(layers["classifier"], QuantLinear)
    for n, layer in layers.items():
        want = (8, 8) if n in (first, "classifier") else (4, 3)
        assert (layer.w_bits, layer.a_bits, layer.act.bits) == (*want, want[1]), n
    n_convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert len(layers) == n_convs + 1
    layers = quantized_layers(
        quantize_model(model, calib, PTQConfig(w_bits=4, a_bits=3, first_last_bits=None))
    )
    assert {(m.w_bits, m.a_bits) for m in layers.values()} == {(4, 3)}


def test_quantize_model_does_not_mutate_input_and_is_batch_independent():
    model = _bn_model("resnet", {"width": 4, "depth": 8}).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calib, x = torch.randn(40, 3, 8, 8, generator=_gen()), torch.randn(8, 3, 8, 8)
    q64 = quantize_model(model, calib, PTQConfig(w_bits=4, a_bits=4))
    q7 = quantize_model(model, calib, PTQConfig(w_bits=4, a_bits=4, calib_batch=7))
    assert model.training and not q64.training
    assert not any(isinstance(m, QuantConv2d | QuantLinear) for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(q64(x), q7(x))  # min/max ranges do not depend on the batching


def test_quantize_without_folding_keeps_bn():
    model = _bn_model("convnet_bn", {"width": 8, "depth": 2})
    calib = torch.randn(32, 3, 8, 8, generator=_gen())
    q = quantize_model(model, calib, PTQConfig(fold_bn=False))
    assert any(isinstance(m, nn.BatchNorm2d) for m in q.modules())
    with torch.no_grad():
        assert torch.allclose(q(calib), model(calib), atol=0.02)


def test_evaluate_ptq_report():
    model = _bn_model("convnet_bn", {"width": 8, "depth": 2})
    g = _gen(9)
    calib, x = torch.randn(32, 3, 8, 8, generator=g), torch.randn(100, 3, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)  # labels the fp32 model gets right by construction
    rep = evaluate_ptq(model, calib, x, y, PTQConfig(observer="percentile"))
    assert rep["fp32_accuracy"] == 100.0 and rep["quant_accuracy"] >= 95.0
    assert rep["accuracy_drop"] == pytest.approx(rep["fp32_accuracy"] - rep["quant_accuracy"])
    assert rep["bits"] == "w8a8" and rep["observer"] == "percentile" and rep["calib_images"] == 32
    assert rep["agreement"] == rep["quant_accuracy"]  # y is the fp32 model's own top-1
    assert rep["logit_sqnr_db"] > 20 and 0 < rep["output_kl"] < 0.05
    given = model_logits(model, x)  # the float outputs a caller comparing many sets passes
    assert evaluate_ptq(model, calib, x, y, PTQConfig(observer="percentile"), given) == rep
    flipped = evaluate_ptq(model, calib, x, y, PTQConfig(observer="percentile"), -given)
    assert flipped["fp32_accuracy"] < 100.0  # the given logits are used, not recomputed
    low = evaluate_ptq(model, calib, x, y, PTQConfig(w_bits=3, a_bits=3, first_last_bits=None))
    assert low["logit_sqnr_db"] < rep["logit_sqnr_db"] and low["output_kl"] > rep["output_kl"]
    with pytest.raises(DataError):
        evaluate_ptq(model, calib, x, y[:10])
    with pytest.raises(DataError):
        quantize_model(model, torch.full((4, 3, 8, 8), float("nan")))


def test_fidelity_golden_values():
    z = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    zq = torch.tensor([[1.5, 0.5, -1.0], [1.0, 1.0, 0.0]])
    f = fidelity(z, zq)
    assert f["agreement"] == 50.0  # row 0 keeps class 0; row 1 ties 1.0/1.0 -> argmax 0
    # signal 4 + 1 + 0.25 + 2.25 = 7.5, noise 4 x 0.25 = 1 -> 10 log10 7.5
    assert f["logit_sqnr_db"] == pytest.approx(8.750612633917, abs=1e-9)
    assert f["output_kl"] == pytest.approx(0.0813863553, abs=1e-9)  # Σ p (log p − log q), mean
    same = fidelity(z, z.clone())
    assert same == {"agreement": 100.0, "logit_sqnr_db": None, "output_kl": 0.0}
    assert fidelity(torch.zeros(2, 3), zq)["logit_sqnr_db"] is None  # no signal to compare
    with pytest.raises(DataError):
        fidelity(z, zq[:1])


# ------------------------------------------------------------------- settings


def test_parse_bits():
    assert parse_bits("w4a8") == (4, 8)
    assert parse_bits("W2A2") == (2, 2)
    for bad in ("4/8", "w4", "a8w4", "w1a8", "w4a9", "w16a16", ""):
        with pytest.raises(ConfigError, match="must look like 'w4a8'|bits must be an integer"):
            parse_bits(bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"w_bits": 1},
        {"a_bits": 9},
        {"w_bits": 4.0},
        {"w_bits": True},
        {"first_last_bits": 16},
        {"observer": "kl"},
        {"percentile": 0.0},
        {"calib_batch": 0},
        {"max_samples": 0},
    ],
)
def test_bad_settings_raise_config_error(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):  # names the setting
        PTQConfig(**kwargs)


def test_bad_bits_in_pure_functions_and_set_strings():
    with pytest.raises(ConfigError):
        weight_fake_quant(W, 1)
    with pytest.raises(ConfigError):
        affine_qparams(0.0, 1.0, 9)
    cfg = make_config(PTQConfig, {"w_bits": "4", "first_last_bits": "none", "observer": "mse"})
    assert (cfg.w_bits, cfg.first_last_bits, cfg.observer, cfg.bits) == (4, None, "mse", "w4a8")
    with pytest.raises(ConfigError):
        make_config(PTQConfig, {"observer": "entropy"})
