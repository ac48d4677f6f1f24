"""Reconstruction PTQ (AdaRound, BRECQ, QDrop, Genie-M): the rounding starts where
round-to-nearest is, β's schedule, blocks found in any graph, each block's error never
grows from its round-to-nearest start, and the command's paths."""

from __future__ import annotations

import json

import pytest
import torch
from test_cli import assert_one_error_line
from test_quant import _gen
from torch import nn

from distill_data.config import make_config
from distill_data.errors import ConfigError
from distill_data.models import build_model
from distill_data.quant import PTQConfig, quantize_model, quantized_layers
from distill_data.quant.ptq import QuantConv2d, model_logits
from distill_data.quant.quantizers import symmetric_qrange
from distill_data.quant.reconstruct import (
    AdaRoundWeight,
    beta_at,
    find_units,
    lp_weight_scales,
    rectified_sigmoid,
)


def _calibrated(model: nn.Module, channels: int = 3, n: int = 48, seed: int = 0):
    """The model with running statistics of a random batch, and calibration images."""
    g = _gen(seed)
    x = torch.randn(n, channels, 8, 8, generator=g)
    for bn in [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]:
        bn.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval(), x


class DepthwiseNet(nn.Module):
    """No residual blocks; a depthwise and a grouped convolution."""

    def __init__(self) -> None:
        super().__init__()
        g = _gen(3)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8),
                                nn.ReLU())  # fmt: skip
        self.grouped = nn.Sequential(nn.Conv2d(8, 8, 1, groups=2), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        x = self.grouped(self.dw(self.stem(x)))
        return self.head(x.mean((2, 3)))


def test_rounding_starts_at_the_fractional_part_and_round_to_nearest():
    w = torch.randn(6, 3, 3, 3, generator=_gen(1))
    q = AdaRoundWeight(w, 3)
    s = lp_weight_scales(w, 3).view(-1, 1, 1, 1)
    frac = w / s - torch.floor(w / s)
    assert torch.allclose(q.h(), frac, atol=1e-5)  # h(V) is the fractional part
    _, qmax = symmetric_qrange(3)
    q.soft = False
    rtn = torch.clamp(torch.round(w / s), -qmax, qmax) * s
    assert torch.allclose(q(), rtn, atol=1e-6)  # hard rounding starts at round-to-nearest
    q.soft = True  # and the soft weight is the float weight wherever it is in range
    inside = (w / s).abs() <= qmax - 1
    assert torch.allclose(q()[inside], w[inside], atol=1e-5)
    assert rectified_sigmoid(torch.tensor([-50.0, 50.0])).tolist() == [0.0, 1.0]


def test_lp_step_search_clips_no_worse_than_max_scaling():
    w = torch.randn(4, 64, generator=_gen(2))
    w[0, 0] = 12.0  # an outlier: the search clips it
    s = lp_weight_scales(w, 4)
    top = w.abs().amax(1) / 7
    assert s[0] < top[0] and torch.all(s <= top + 1e-7)

    def err(scale):
        return (w - torch.clamp(torch.round(w / scale[:, None]), -7, 7) * scale[:, None]).abs()

    assert torch.all(err(s).pow(2.4).mean(1) <= err(top).pow(2.4).mean(1) + 1e-7)


def test_beta_schedule_endpoints():
    assert beta_at(1, 1000, 0.2, 20, 2) == 20
    assert beta_at(199, 1000, 0.2, 20, 2) == 20  # flat through the warm-up
    assert beta_at(200, 1000, 0.2, 20, 2) == 20  # decay starts here
    assert beta_at(600, 1000, 0.2, 20, 2) == pytest.approx(11.0)
    assert beta_at(1000, 1000, 0.2, 20, 2) == 2


def test_blocks_are_found_from_the_graph():
    res, _ = _calibrated(build_model("resnet", 3, 5, (8, 8), generator=_gen(), width=4, depth=8))
    q = quantize_model(res, torch.randn(4, 3, 8, 8), PTQConfig())
    is_q = dict(q.named_modules()).__getitem__
    blocks = find_units(q, lambda t: isinstance(is_q(t), (QuantConv2d, nn.Linear)) or
                        type(is_q(t)).__name__ == "QuantLinear", "block")  # fmt: skip
    names = [u.layers for u in blocks]
    assert names[0] == ["stem.0"] and names[-1] == ["classifier"]
    # a residual block is one unit: both convs (and a projection shortcut) together
    assert all(len(n) >= 2 for n in names[1:-1]) and len(names) == 2 + 3
    layers = find_units(q, lambda t: type(is_q(t)).__name__.startswith("Quant"), "layer")
    assert [u.layers[0] for u in layers] == [n for ns in names for n in ns]
    plain = quantize_model(DepthwiseNet().eval(), torch.randn(4, 3, 8, 8), PTQConfig())
    mods = dict(plain.named_modules())
    units = find_units(plain, lambda t: type(mods[t]).__name__.startswith("Quant"), "block")
    assert [u.layers for u in units] == [["stem.0"], ["dw.0"], ["grouped.0"], ["head"]]


@pytest.mark.parametrize("method", ["adaround", "brecq", "qdrop", "genie"])
def test_reconstruction_never_increases_a_blocks_error(method):
    model, x = _calibrated(build_model("resnet", 3, 5, (8, 8), generator=_gen(), width=4, depth=8))
    # the official lr of V (1e-3) needs thousands of steps; at 1e-2, 200 settle this case
    cfg = PTQConfig(w_bits=2, a_bits=4, method=method, iterations=200, recon_batch=16,
                    lr_round=1e-2)  # fmt: skip
    q = quantize_model(model, x, cfg)
    rows = q.reconstruction
    assert len(rows) == (len(quantized_layers(q)) if method == "adaround" else 5)
    layers = quantized_layers(q)
    for r in rows:
        low_bit = any(layers[name].w_bits == 2 for name in r["layers"])
        if low_bit:  # every 2-bit block ends below its round-to-nearest start
            assert r["error_reconstructed"] < r["error_round_to_nearest"], r
        else:  # 8-bit first/last layers: already near exact, learned steps may wobble
            assert r["error_reconstructed"] <= 1.05 * r["error_round_to_nearest"], r
    # and by a margin somewhere
    assert any(r["error_reconstructed"] < 0.8 * r["error_round_to_nearest"] for r in rows)
    # the network is left with hard, on-grid weights and fixed steps
    for m in q.modules():
        if isinstance(m, QuantConv2d):
            assert m.wq.soft is False and m.act.step is None
            w = m.quantized_weight()
            codes = w / m.wq.scale.view(-1, 1, 1, 1)
            assert torch.allclose(codes, codes.round(), atol=1e-4)
    if method == "qdrop":  # seeded batches and masks: the same network twice
        again = quantize_model(model, x, cfg)
        assert torch.equal(model_logits(q, x), model_logits(again, x))


@pytest.mark.parametrize(
    "method, learn, moved",
    [("genie", None, True), ("genie", False, False), ("qdrop", None, False), ("qdrop", True, True)],
)
def test_learn_weight_step_overrides_the_method(method, learn, moved):
    """Genie-M learns the weight steps, QDrop keeps the clip search's; ``learn_weight_step``
    turns that on or off for any method (the ablation of Genie-M's joint optimisation)."""
    model, x = _calibrated(build_model("convnet_bn", 3, 5, (8, 8), generator=_gen(), width=4))
    cfg = PTQConfig(w_bits=2, a_bits=4, method=method, iterations=30, recon_batch=16,
                    learn_weight_step=learn)  # fmt: skip
    q = quantize_model(model, x, cfg)
    for name, m in quantized_layers(q).items():
        layer = m.conv if hasattr(m, "conv") else m.linear
        start = lp_weight_scales(layer.weight, m.w_bits)
        assert torch.equal(m.wq.scale, start) is not moved, name


def test_depthwise_and_grouped_convolutions_without_blocks():
    model, x = _calibrated(DepthwiseNet())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize_model(model, x, PTQConfig(w_bits=3, a_bits=4, method="genie", iterations=60,
                                           recon_batch=16))  # fmt: skip
    assert [r["layers"] for r in q.reconstruction] == [["stem.0"], ["dw.0"], ["grouped.0"],
                                                       ["head"]]  # fmt: skip
    assert torch.isfinite(model_logits(q, x)).all()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # lent: kept


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "optq"}, "unknown PTQ method"),
        ({"method": "genie", "iterations": 0}, "iterations must be"),
        ({"method": "genie", "fold_bn": False}, "fold_bn must be true"),
        ({"drop_prob": 1.0}, "drop_prob"),
        ({"learn_weight_step": "sometimes"}, "learn_weight_step"),
        ({"beta_start": 1.0, "beta_end": 2.0}, "beta_start"),
    ],
)
def test_bad_reconstruction_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_config(PTQConfig, kwargs)


def test_observer_default_follows_the_method():
    assert PTQConfig().observer == "minmax"
    assert PTQConfig(method="qdrop").observer == "lp"
    assert PTQConfig(method="qdrop", observer="mse").observer == "mse"


def test_quantize_command_reconstructs_and_reports_blocks(teacher_file, tmp_path, run_cli):
    out = tmp_path / "q.json"
    code, stdout, err = run_cli("quantize", "--teacher", teacher_file, "--calib", "noise:8",
                                "--bits", "w2a4", "--method", "qdrop", "--set", "iterations=3",
                                "--json", out)  # fmt: skip
    assert code == 0, err
    assert "qdrop reconstruction, 3 steps per block" in stdout
    assert "blocks reconstructed in" in stdout and "summed over the blocks" in stdout
    report = json.loads(out.read_text())
    row = report["results"][0]
    assert row["method"] == "qdrop" and row["observer"] == "lp" and row["iterations"] == 3
    assert row["reconstruction"] and all(
        {"unit", "layers", "error_round_to_nearest", "error_reconstructed", "seconds"}
        <= set(r) for r in row["reconstruction"]
    )  # fmt: skip
    res = run_cli("quantize", "--teacher", teacher_file, "--calib", "noise:8", "--method", "gptq")
    assert_one_error_line(*res)
    assert "'gptq' is not one of 'observer', 'adaround'" in res[2]
    res = run_cli("quantize", "--teacher", teacher_file, "--calib", "noise:8", "--method",
                  "genie", "--set", "iterations=-1")  # fmt: skip
    assert_one_error_line(*res)
    assert "iterations must be" in res[2]


# ---------------------------------------------------------------- mixed precision


def test_pareto_dp_equals_brute_force_on_every_assignment():
    from distill_data.quant.mixed import brute_force, pareto_frontier

    g = _gen(5)
    names = [f"l{i}" for i in range(5)]
    sizes = {n: int(s) for n, s in zip(names, torch.randint(1, 50, (5,), generator=g))}
    sens = {n: {k: float(torch.rand((), generator=g)) / k**2 for k in (2, 4, 8)} for n in names}
    dp, bf = pareto_frontier(sens, sizes), brute_force(sens, sizes)
    assert [(a.size_bits, a.bits) for a in dp] == [(a.size_bits, a.bits) for a in bf]
    assert [a.sensitivity for a in dp] == pytest.approx([a.sensitivity for a in bf])
    assert dp[0].average_bits == 2 and dp[-1].average_bits <= 8
    sens_sorted = [a.sensitivity for a in dp]
    assert sens_sorted == sorted(sens_sorted, reverse=True)  # larger is never worse


def test_mixed_precision_picks_within_the_budget_and_measures_sensitivity():
    from distill_data.quant.mixed import choose, layer_sensitivity, pareto_frontier

    model, x = _calibrated(DepthwiseNet())
    from distill_data.quant import fold_batchnorm

    folded = fold_batchnorm(model)
    layers = ["dw.0", "grouped.0"]
    before = {k: v.clone() for k, v in folded.state_dict().items()}
    sens = layer_sensitivity(folded, x, layers, (2, 4, 8))
    assert all(torch.equal(before[k], v) for k, v in folded.state_dict().items())  # restored
    for n in layers:  # fewer bits, more sensitive
        assert sens[n][2] > sens[n][4] > sens[n][8] >= 0
    sizes = {"dw.0": 72, "grouped.0": 32}
    frontier = pareto_frontier(sens, sizes)
    pick = choose(frontier, 5.0)
    assert pick.average_bits <= 5.0
    assert all(a.sensitivity >= pick.sensitivity for a in frontier if a.average_bits <= 5.0)
    with pytest.raises(ConfigError, match="unreachable"):
        choose(frontier, 1.5)
    q = quantize_model(model, x, PTQConfig(a_bits=8, mixed_precision=3.0))
    mp = q.mixed_precision
    assert set(mp["bits"]) == {"dw.0", "grouped.0"} and mp["average_bits"] <= 3.0
    assert {n: m.w_bits for n, m in quantized_layers(q).items()} == {
        "stem.0": 8,
        **mp["bits"],
        "head": 8,
    }


def test_mixed_precision_command_plot_and_errors(teacher_file, tmp_path, run_cli):
    plot, out = tmp_path / "frontier.png", tmp_path / "mp.json"
    code, stdout, err = run_cli("quantize", "--teacher", teacher_file, "--calib", "noise:8",
                                "--bits", "w4a8", "--mixed-precision", "3", "--frontier-plot",
                                plot, "--json", out)  # fmt: skip
    assert code == 0, err
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    row = json.loads(out.read_text())["results"][0]
    mp = row["mixed_precision_result"]
    assert mp["average_bits"] <= 3 and row["bits"].startswith("w") and "mixed precision" in stdout
    assert len(mp["frontier"]) >= 2 and set(mp["uniform"]) == {"2", "4", "8"}
    res = run_cli("quantize", "--teacher", teacher_file, "--calib", "noise:8",
                  "--mixed-precision", "1")  # fmt: skip
    assert_one_error_line(*res)
    assert "unreachable" in res[2]
    res = run_cli("quantize", "--teacher", teacher_file, "--calib", "noise:8",
                  "--frontier-plot", tmp_path / "x.png")  # fmt: skip
    assert_one_error_line(*res)
    assert "--frontier-plot needs --mixed-precision" in res[2]
    assert not (tmp_path / "x.png").exists()


def test_a_diverged_reconstruction_is_one_error_naming_the_rates(monkeypatch):
    """Adam's steps are bounded by the learning rate, so no rate makes a tiny case NaN
    here; a block whose error comes out NaN stands in for one that diverged."""
    import distill_data.quant.reconstruct as rec
    from distill_data.errors import DivergedError

    real = rec._unit_error
    calls = []

    def nan_after_training(*args):
        calls.append(1)
        return real(*args) if len(calls) == 1 else float("nan")

    monkeypatch.setattr(rec, "_unit_error", nan_after_training)
    model, x = _calibrated(DepthwiseNet())
    with pytest.raises(DivergedError, match="lr_round .* or lr_act"):
        quantize_model(model, x, PTQConfig(w_bits=2, a_bits=4, method="brecq", iterations=2,
                                           recon_batch=8))  # fmt: skip
