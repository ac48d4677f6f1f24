"""Floating-point formats: exact on their grids, the same rounding as torch's FP8 casts,
saturation, the scale search, and FP8/FP4 PTQ of a network."""

from __future__ import annotations

import pytest
import torch

from distill_data.config import make_config
from distill_data.errors import ConfigError
from distill_data.quant import PTQConfig, quantize_model
from distill_data.quant.fp import FORMATS, fp_fake_quant, fp_round, fp_weight_quant, search_scale
from distill_data.quant.ptq import model_logits

TORCH_TYPES = {"fp8_e4m3": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}


def _grid(name: str) -> torch.Tensor:
    """Every finite value of an FP8 format, from its bit patterns (torch's own decoding)."""
    dtype = getattr(torch, TORCH_TYPES[name])
    v = torch.arange(256, dtype=torch.uint8).view(dtype).float()
    return v[torch.isfinite(v)]


@pytest.mark.parametrize("name", list(TORCH_TYPES))
def test_fp8_rounding_is_exact_on_the_grid_and_matches_torch_casts(name):
    fmt, dtype = FORMATS[name], getattr(torch, TORCH_TYPES[name])
    grid = _grid(name)
    assert torch.equal(fp_round(grid, fmt), grid)  # every representable value stays
    assert float(grid.max()) == fmt.max_value
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, generator=g) * torch.exp2(torch.randint(-12, 10, (20000,), generator=g))
    x = x[x.abs() < fmt.max_value]
    assert torch.equal(fp_round(x, fmt), x.to(dtype).float())  # same as the cast, ties too
    mids = (grid.sort().values[1:] + grid.sort().values[:-1]) / 2  # every tie
    mids = mids[mids.abs() < fmt.max_value]
    assert torch.equal(fp_round(mids, fmt), mids.to(dtype).float())


def test_fp4_e2m1_grid_rounding_and_saturation():
    fmt = FORMATS["fp4_e2m1"]
    grid = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6])
    full = torch.cat([-grid.flip(0), grid])
    assert torch.equal(fp_round(full, fmt), full)
    x = torch.tensor([0.2, 0.25, 0.3, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 5.1, 7.0, 100.0, -2.5])
    want = torch.tensor([0, 0, 0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0, 6.0, -2.0])
    assert torch.equal(fp_round(x, fmt), want)  # ties to the even mantissa; saturated
    assert fmt.max_value == 6 and FORMATS["fp8_e5m2"].max_value == 57344


def test_fp_fake_quant_passes_gradients_straight_through():
    x = torch.randn(50, requires_grad=True)
    fp_fake_quant(x, torch.tensor(0.1), FORMATS["fp4_e2m1"]).sum().backward()
    assert torch.equal(x.grad, torch.ones(50))


def test_scale_search_clips_no_worse_than_max_scaling():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 100, generator=g)
    w[0, 0] = 15.0
    fmt = FORMATS["fp4_e2m1"]
    s, s_max = search_scale(w, fmt, 0), search_scale(w, fmt, 0, search=False)
    assert torch.all(s <= s_max + 1e-9) and s[0] < s_max[0]

    def err(scale):
        return (fp_round(w / scale[:, None], fmt) * scale[:, None] - w).pow(2).mean(1)

    assert torch.all(err(s) <= err(s_max) + 1e-9)
    q = fp_weight_quant(w, fmt)
    codes = q / s[:, None]
    assert torch.allclose(fp_round(codes, fmt), codes, atol=1e-5)  # on the scaled grid


def test_fp8_and_fp4_ptq_of_a_network():
    from distill_data.models import build_model

    g = torch.Generator().manual_seed(0)
    model = build_model("convnet_bn", 3, 5, (8, 8), generator=g, width=8, depth=2).eval()
    x = torch.randn(64, 3, 8, 8, generator=g)
    ref = model_logits(model, x)
    errs = {}
    for kw in ({"w_format": "fp8_e4m3", "a_format": "fp8_e4m3"},
               {"w_bits": 4, "w_format": "fp4_e2m1"}):  # fmt: skip
        q = quantize_model(model, x, PTQConfig(**kw))
        errs[tuple(kw.items())] = float((model_logits(q, x) - ref).pow(2).mean())
    fp8, fp4 = errs.values()
    assert fp8 < fp4 and fp8 < 1e-2 * float(ref.pow(2).mean())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"w_format": "fp6"}, "unknown w_format"),
        ({"w_format": "fp4_e2m1"}, "has 4 bits, but the weight bits are 8"),
        ({"a_format": "fp8_e4m3", "a_bits": 4}, "has 8 bits"),
        ({"w_format": "fp8_e4m3", "method": "genie"}, "integer grids"),
    ],
)
def test_bad_format_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_config(PTQConfig, kwargs)


def test_quantize_command_with_fp_formats(teacher_file, run_cli, tmp_path):
    import json

    out = tmp_path / "fp.json"
    code, stdout, err = run_cli("quantize", "--teacher", teacher_file, "--calib", "noise:8",
                                "--bits", "w4a8", "--set", "w_format=fp4_e2m1", "--set",
                                "a_format=fp8_e4m3", "--json", out)  # fmt: skip
    assert code == 0, err
    assert "number formats: w_format=fp4_e2m1, a_format=fp8_e4m3" in stdout
    row = json.loads(out.read_text())["results"][0]
    assert row["w_format"] == "fp4_e2m1" and row["fp_search"] is True
    # applied, not only echoed: the integer grid at the same bits gives other logits
    code, _, err = run_cli("quantize", "--teacher", teacher_file, "--calib", "noise:8",
                           "--bits", "w4a8", "--json", out, "--force")  # fmt: skip
    assert code == 0, err
    assert json.loads(out.read_text())["results"][0]["logit_sqnr_db"] != row["logit_sqnr_db"]
