"""Tests for differentiable siamese augmentation (Zhao & Bilen, ICML 2021)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from distill_data.augment import (
    DEFAULT_STRATEGY,
    DSA,
    GROUPS,
    AugParams,
    DSAConfig,
    apply_contrast,
    apply_rotate,
    apply_saturation,
    apply_scale,
    parse_strategy,
    strategy_for,
)
from distill_data.errors import ConfigError, DataError, DistillDataError

ALL_OPS = tuple(op for group in DEFAULT_STRATEGY.split("_") for op in GROUPS[group])
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 4, c: int = 3, h: int = 8, w: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=gen(seed))


def params_for(op: str, **values: torch.Tensor) -> AugParams:
    n = next(iter(values.values())).shape[0]
    return AugParams(ops=(op,), values=dict(values), n=n)


def official_warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """The official code's warp: F.affine_grid + grid_sample, align_corners=True."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


# ----------------------------------------------------------------------------- config


def test_config_defaults_are_the_papers() -> None:
    cfg = DSAConfig()
    assert (cfg.scale, cfg.rotate, cfg.flip) == (1.2, 15.0, 0.5)
    assert (cfg.brightness, cfg.saturation, cfg.contrast) == (1.0, 2.0, 0.5)
    assert (cfg.crop, cfg.cutout) == (0.125, 0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.scale = 2.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scale": 0.5},
        {"rotate": -1.0},
        {"flip": 1.5},
        {"brightness": float("nan")},
        {"crop": 2.0},
        {"cutout": -0.1},
        {"contrast": "high"},
        {"saturation": True},
    ],
)
def test_config_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        DSAConfig(**kwargs)


def test_strategies() -> None:
    assert DEFAULT_STRATEGY == "color_crop_cutout_flip_scale_rotate"
    assert strategy_for(False) == DEFAULT_STRATEGY
    assert strategy_for(True) == "color_crop_cutout_scale_rotate"
    assert "flip" not in parse_strategy(strategy_for(True))
    assert parse_strategy("none") == parse_strategy("None") == parse_strategy("") == ()
    assert parse_strategy("crop_color") == ("crop", "color")


def test_unknown_op_and_mode_raise_config_error() -> None:
    with pytest.raises(ConfigError, match=r"'blur'.*color.*rotate"):
        DSA("color_blur")
    with pytest.raises(ConfigError, match="twice"):
        DSA("crop_crop")
    with pytest.raises(ConfigError, match="mode"):
        DSA(mode="both")
    with pytest.raises(ConfigError, match="must be a DSAConfig"):
        DSA(config={"scale": 1.2})  # type: ignore[arg-type]
    bad = AugParams(ops=("blur",), values={}, n=2)
    with pytest.raises(ConfigError, match="blur"):
        DSA().apply(images(2), bad)
    assert issubclass(ConfigError, DistillDataError)


def test_none_is_identity() -> None:
    x = images()
    for strategy in ("none", ""):
        dsa = DSA(strategy)
        assert not dsa.enabled
        p = dsa.sample(4, 8, 8, generator=gen())
        assert p.ops == () and p.values == {}
        assert torch.equal(dsa(x, generator=gen()), x)
    assert DSA().enabled


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("size", [8, 28, 32])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_and_dtype_preserved(size: int, channels: int, dtype: torch.dtype) -> None:
    x = images(3, channels, size, size).to(dtype)
    out = DSA(mode="multi")(x, generator=gen())
    assert out.shape == x.shape and out.dtype == dtype
    assert torch.isfinite(out).all()


def test_non_square_and_bad_inputs() -> None:
    x = images(2, 3, 8, 12)
    assert DSA(mode="multi")(x, generator=gen()).shape == x.shape
    with pytest.raises(DataError, match=r"shape \(n, C, H, W\), got \(3, 8, 8\)"):
        DSA()(torch.rand(3, 8, 8), generator=gen())
    with pytest.raises(DataError, match="floating images"):
        DSA().apply(torch.zeros(2, 1, 8, 8, dtype=torch.long), DSA().sample(2, 8, 8, gen()))
    with pytest.raises(ConfigError, match="n=4"):
        DSA().apply(images(3), DSA().sample(4, 8, 8, gen()))
    with pytest.raises(ConfigError, match="n must be an int >= 0"):
        DSA().sample(-1, 8, 8)


# ----------------------------------------------------------------------------- replay


def test_replay_same_params_same_output() -> None:
    dsa = DSA(mode="multi")
    x = images(5, 3, 16, 16)
    p = dsa.sample(5, 16, 16, generator=gen(3))
    a = dsa.apply(x, p)
    b = dsa.apply(x.clone(), p)
    assert torch.equal(a, b)
    # A different instance (even with another config) replays the same transform.
    other = DSA("crop", config=DSAConfig(crop=0.5), mode="multi")
    assert torch.equal(other.apply(x, p), a)


@pytest.mark.parametrize("group", list(GROUPS))
def test_siamese_select_uses_same_rows(group: str) -> None:
    dsa = DSA(group, mode="multi")
    real = images(6, 3, 12, 12, seed=4)
    p = dsa.sample(6, 12, 12, generator=gen(5))
    idx = torch.tensor([4, 0, 2])
    syn = real[idx].clone()
    sub = p.select(idx)
    assert sub.n == 3 and sub.ops == p.ops
    torch.testing.assert_close(dsa.apply(syn, sub), dsa.apply(real, p)[idx])
    # A bool mask selects the same rows in order.
    mask = torch.tensor([True, False, True, False, False, False])
    torch.testing.assert_close(dsa.apply(real[mask], p.select(mask)), dsa.apply(real, p)[mask])


def test_params_to_and_validation() -> None:
    p = DSA(mode="multi").sample(3, 8, 8, generator=gen())
    q = p.to("cpu")
    assert q.n == 3 and set(q.values) == set(p.values)
    assert all(v.shape[0] == 3 for v in p.values.values())
    with pytest.raises(ConfigError, match="first dim"):
        AugParams(ops=("flip",), values={"flip": torch.zeros(2, dtype=torch.bool)}, n=3)
    with pytest.raises(ConfigError, match="lack"):
        DSA().apply(images(2), AugParams(ops=("crop",), values={}, n=2))
    with pytest.raises(ConfigError):
        p.select(torch.tensor([0.5]))


# ----------------------------------------------------------------------------- randomness


def test_seeded_determinism_and_global_rng_untouched() -> None:
    dsa = DSA(mode="multi")
    x = images(4, 3, 16, 16)
    state = torch.get_rng_state()
    a = dsa(x, generator=gen(7))
    b = dsa(x, generator=gen(7))
    c = dsa(x, generator=gen(8))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    pa, pc = dsa.sample(4, 16, 16, gen(7)), dsa.sample(4, 16, 16, gen(8))
    assert any(not torch.equal(pa.values[k], pc.values[k]) for k in pa.values)


def test_single_mode_picks_one_group_and_multi_applies_all() -> None:
    single = DSA()
    seen = set()
    for seed in range(60):
        p = single.sample(2, 8, 8, generator=gen(seed))
        matches = [g for g, ops in GROUPS.items() if ops == p.ops]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == set(DEFAULT_STRATEGY.split("_"))
    assert DSA(mode="multi").sample(2, 8, 8, generator=gen()).ops == ALL_OPS
    assert DSA(mode="M").mode == "multi" and DSA(mode="S").mode == "single"
    digits = DSA(strategy_for(True), mode="multi").sample(2, 8, 8, generator=gen())
    assert "flip" not in digits.ops


def test_batchmode_shares_params() -> None:
    dsa = DSA(mode="multi", batchmode=True)
    p = dsa.sample(5, 16, 16, generator=gen(2))
    for key, value in p.values.items():
        assert value.shape[0] == 5
        assert (value == value[0]).all(), key
    one = images(1, 3, 16, 16)
    out = dsa.apply(one.expand(5, -1, -1, -1).contiguous(), p)
    assert torch.allclose(out, out[:1].expand_as(out))
    per_sample = DSA(mode="multi").sample(64, 16, 16, generator=gen(2))
    assert not (per_sample.values["rotate"] == per_sample.values["rotate"][0]).all()


def test_sampled_ranges_match_official() -> None:
    n, cfg = 2000, DSAConfig()
    p = DSA(mode="multi").sample(n, 32, 28, generator=gen(11))
    v = p.values
    assert 0.35 < v["flip"].float().mean() < 0.65
    for key in ("scale_x", "scale_y"):
        assert v[key].min() >= 1 / cfg.scale and v[key].max() <= cfg.scale
    assert v["rotate"].abs().max() <= cfg.rotate and v["rotate"].abs().max() > 14.0
    assert v["saturation"].min() >= 0 and v["saturation"].max() <= 2.0
    assert v["contrast"].min() >= 0.5 and v["contrast"].max() <= 1.5
    # crop: integer shifts uniform in [-s, s], s = int(side * 0.125 + 0.5)
    assert set(v["crop_dy"].tolist()) == set(range(-4, 5))  # int(32 * .125 + .5) = 4
    assert set(v["crop_dx"].tolist()) == set(range(-4, 5))  # int(28 * .125 + .5) = 4
    # cutout: offset = start + size // 2 in [0, side + (1 - size % 2))
    assert (v["cutout_h"] == 16).all() and (v["cutout_w"] == 14).all()
    assert set((v["cutout_y0"] + 8).tolist()) == set(range(33))
    assert set((v["cutout_x0"] + 7).tolist()) == set(range(29))


# ----------------------------------------------------------------------------- exact ops


def test_flip_flips_exactly() -> None:
    x = images(2)
    p = params_for("flip", flip=torch.tensor([True, False]))
    out = DSA().apply(x, p)
    assert torch.equal(out[0], x[0].flip(-1))
    assert torch.equal(out[1], x[1])


def test_brightness_shift_is_u_minus_half_times_ratio() -> None:
    x = images(6)
    p1 = DSA("color", DSAConfig(brightness=1.0), mode="multi").sample(6, 8, 8, gen(9))
    p3 = DSA("color", DSAConfig(brightness=3.0), mode="multi").sample(6, 8, 8, gen(9))
    u = p1.values["brightness"] + 0.5
    assert ((u >= 0) & (u < 1)).all()
    torch.testing.assert_close(p3.values["brightness"], (u - 0.5) * 3.0)
    only = AugParams(ops=("brightness",), values={"brightness": p3.values["brightness"]}, n=6)
    shift = DSA().apply(x, only) - x
    torch.testing.assert_close(shift, p3.values["brightness"].view(-1, 1, 1, 1).expand_as(x))


def test_saturation_and_contrast_formulas() -> None:
    x = images(2)
    f = torch.tensor([0.0, 1.7])
    m = x.mean(1, keepdim=True)
    torch.testing.assert_close(apply_saturation(x, f), (x - m) * f.view(-1, 1, 1, 1) + m)
    assert torch.allclose(apply_saturation(x, f)[0], m[0].expand(3, -1, -1))
    m = x.mean((1, 2, 3), keepdim=True)
    torch.testing.assert_close(apply_contrast(x, f), (x - m) * f.view(-1, 1, 1, 1) + m)
    gray = images(2, 1)
    torch.testing.assert_close(apply_saturation(gray, f), gray)  # no-op on one channel


def test_color_group_order() -> None:
    x = images(3)
    p = DSA("color", mode="multi").sample(3, 8, 8, gen(4))
    assert p.ops == ("brightness", "saturation", "contrast")
    v = p.values
    y = x + v["brightness"].view(-1, 1, 1, 1)
    y = apply_saturation(y, v["saturation"])
    y = apply_contrast(y, v["contrast"])
    torch.testing.assert_close(DSA().apply(x, p), y)


def test_crop_shifts_by_sampled_integers() -> None:
    h, w = 8, 10
    x = (torch.arange(h * w, dtype=torch.float32) + 1).view(1, 1, h, w).repeat(3, 2, 1, 1)
    dy, dx = torch.tensor([1, -2, 0]), torch.tensor([-3, 0, 2])
    out = DSA().apply(x, params_for("crop", crop_dy=dy, crop_dx=dx))
    for k in range(3):
        expected = torch.zeros(h, w)
        for i in range(h):
            for j in range(w):
                si, sj = i + int(dy[k]), j + int(dx[k])
                if 0 <= si < h and 0 <= sj < w:
                    expected[i, j] = x[k, 0, si, sj]
        assert torch.equal(out[k, 0], expected) and torch.equal(out[k, 1], expected)


def test_cutout_zeroes_square_of_right_size() -> None:
    x = images(64, 2, 8, 8) + 1.0  # no zeros before cutout
    dsa = DSA("cutout", mode="multi")
    p = dsa.sample(64, 8, 8, generator=gen(6))
    out = dsa.apply(x, p)
    size = int(8 * 0.5 + 0.5)
    full = 0
    for k in range(64):
        zero = out[k, 0] == 0
        assert torch.equal(zero, out[k, 1] == 0)
        y0, x0 = int(p.values["cutout_y0"][k]), int(p.values["cutout_x0"][k])
        expected = torch.zeros(8, 8, dtype=torch.bool)
        expected[max(y0, 0) : max(y0 + size, 0), max(x0, 0) : max(x0 + size, 0)] = True
        assert torch.equal(zero, expected)
        torch.testing.assert_close(out[k][:, ~zero], x[k][:, ~zero])
        full += int(zero.sum()) == size * size
    assert full > 0
    hand = DSA().apply(
        torch.ones(1, 1, 8, 8),
        params_for(
            "cutout",
            cutout_y0=torch.tensor([2]),
            cutout_x0=torch.tensor([-1]),
            cutout_h=torch.tensor([4]),
            cutout_w=torch.tensor([4]),
        ),
    )
    expected = torch.ones(8, 8)
    expected[2:6, 0:3] = 0
    assert torch.equal(hand[0, 0], expected)


@pytest.mark.parametrize("shape", [(8, 8), (28, 28), (10, 14)])
def test_scale_and_rotate_identity_params(shape: tuple[int, int]) -> None:
    x = images(3, 3, *shape)
    one, zero = torch.ones(3), torch.zeros(3)
    torch.testing.assert_close(apply_scale(x, one, one), x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(apply_rotate(x, zero), x, atol=1e-5, rtol=1e-5)


def test_scale_and_rotate_match_official_affine_grid() -> None:
    x = images(3, 3, 10, 14)
    sx, sy = torch.tensor([1.2, 0.9, 1.05]), torch.tensor([0.85, 1.1, 1.0])
    theta = torch.zeros(3, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = sx, sy
    torch.testing.assert_close(apply_scale(x, sx, sy), official_warp(x, theta))
    deg = torch.tensor([15.0, -7.0, 3.0])
    rad = deg * math.pi / 180
    theta = torch.zeros(3, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = rad.cos(), -rad.sin()
    theta[:, 1, 0], theta[:, 1, 1] = rad.sin(), rad.cos()
    torch.testing.assert_close(apply_rotate(x, deg), official_warp(x, theta))


def test_rotate_quarter_turn_on_square() -> None:
    x = images(1, 1, 9, 9)
    out = apply_rotate(x, torch.tensor([90.0]))
    # theta maps output (x, y) to input (-y, x): a quarter turn of the pixel grid.
    torch.testing.assert_close(out, torch.rot90(x, k=1, dims=(2, 3)), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("op", ALL_OPS)
def test_gradient_reaches_pixels_through_every_op(op: str) -> None:
    x = images(4, 3, 8, 8).requires_grad_(True)
    group = next(g for g, ops in GROUPS.items() if op in ops)
    full = DSA(group, mode="multi").sample(4, 8, 8, generator=gen(1))
    keys = {
        "crop": ("crop_dy", "crop_dx"),
        "cutout": ("cutout_y0", "cutout_x0", "cutout_h", "cutout_w"),
        "scale": ("scale_x", "scale_y"),
    }.get(op, (op,))
    p = AugParams(ops=(op,), values={k: full.values[k] for k in keys}, n=4)
    out = DSA().apply(x, p)
    weight = torch.rand(out.shape, generator=gen(2))
    (out * weight).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad.abs().flatten(1).sum(1) > 0).all()


def test_bfloat16_autocast_is_reasonable() -> None:
    dsa = DSA(mode="multi")
    x = images(2, 3, 16, 16).requires_grad_(True)
    p = dsa.sample(2, 16, 16, generator=gen(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dsa.apply(x, p)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out, dsa.apply(x, p), atol=2e-2, rtol=2e-2)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    low = dsa.apply(x.detach().bfloat16(), p)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low.float()).all()


# ----------------------------------------------------------------------------- devices


@CUDA
def test_cuda_matches_cpu_and_backprops() -> None:
    dsa = DSA(mode="multi")
    x = images(4, 3, 32, 32)
    cpu = dsa(x, generator=gen(5))
    xc = x.cuda().requires_grad_(True)
    gpu = dsa(xc, generator=gen(5))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)
    gpu.sum().backward()
    assert torch.isfinite(xc.grad).all()
    p = dsa.sample(4, 32, 32, generator=gen(5), device="cuda")
    assert all(v.device.type == "cuda" for v in p.values.values())
    with torch.autocast("cuda", dtype=torch.bfloat16):
        amp = dsa.apply(xc, p)
    torch.testing.assert_close(amp.float(), gpu, atol=2e-2, rtol=2e-2)


# ----------------------------------------------------------------------------- kornia as reference
#
# DSA's ops are hand-written (one affine_grid/grid_sample, no host round trip: faster in
# the matching loop); kornia's warp_affine, translate, hflip and enhance ops are the
# independent reference for the same parameters. Warps agree to float32 rounding of the
# sampling grid: within KORNIA_ATOL on images in [0, 1] (measured: under 8e-6).

KORNIA_ATOL = 2e-5


def kornia_matrix(linear: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """kornia's pixel-space forward matrix (source to destination) of DSA's normalised
    output-to-input map ``linear``, with align_corners=True coordinates
    ``u = 2 p / (side - 1) - 1``: p_in = D⁻¹ L D p_out + D⁻¹ (1 − L·1)."""
    n = linear.shape[0]
    lin = linear.double()
    d = torch.diag(torch.tensor([2.0 / (w - 1), 2.0 / (h - 1)], dtype=torch.float64))
    d_inv = torch.linalg.inv(d)
    ones = torch.ones(2, 1, dtype=torch.float64)
    out_to_in = torch.zeros(n, 3, 3, dtype=torch.float64)
    out_to_in[:, 2, 2] = 1.0
    out_to_in[:, :2, :2] = d_inv @ lin @ d
    out_to_in[:, :2, 2:] = d_inv @ (ones - lin @ ones)
    return torch.linalg.inv(out_to_in)[:, :2, :].float()


SHAPES = [(1, 28, 28), (3, 32, 32), (3, 12, 20)]


@pytest.mark.parametrize("shape", SHAPES)
def test_scale_matches_kornia_warp_affine(shape) -> None:
    from kornia.geometry.transform import warp_affine

    c, h, w = shape
    x = images(16, c, h, w, seed=11)
    g = gen(12)
    sx, sy = (torch.rand(16, generator=g) * (1.2 - 1 / 1.2) + 1 / 1.2 for _ in range(2))
    linear = torch.zeros(16, 2, 2)
    linear[:, 0, 0], linear[:, 1, 1] = sx, sy
    ref = warp_affine(x, kornia_matrix(linear, h, w), (h, w), align_corners=True)
    torch.testing.assert_close(apply_scale(x, sx, sy), ref, atol=KORNIA_ATOL, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_rotate_matches_kornia_warp_affine(shape) -> None:
    from kornia.geometry.transform import warp_affine

    c, h, w = shape
    x = images(16, c, h, w, seed=13)
    deg = (torch.rand(16, generator=gen(14)) - 0.5) * 2 * 15.0
    t = torch.deg2rad(deg)
    linear = torch.stack(
        [torch.stack([t.cos(), -t.sin()], -1), torch.stack([t.sin(), t.cos()], -1)], -2
    )
    ref = warp_affine(x, kornia_matrix(linear, h, w), (h, w), align_corners=True)
    torch.testing.assert_close(apply_rotate(x, deg), ref, atol=KORNIA_ATOL, rtol=0)
    # and a true rotation about the centre on square images: kornia's own rotate
    if h == w:
        from kornia.geometry.transform import rotate

        # the same angle convention: DSA's theta [[cos, -sin], [sin, cos]] maps output to
        # input with y down, which is kornia's counter-clockwise turn by +deg on screen
        torch.testing.assert_close(
            apply_rotate(x, deg), rotate(x, deg, align_corners=True), atol=KORNIA_ATOL, rtol=0
        )


@pytest.mark.parametrize("shape", SHAPES)
def test_crop_matches_kornia_translate(shape) -> None:
    from kornia.geometry.transform import translate

    from distill_data.augment import apply_crop

    c, h, w = shape
    x = images(16, c, h, w, seed=15)
    g = gen(16)
    dy, dx = torch.randint(-4, 5, (16,), generator=g), torch.randint(-4, 5, (16,), generator=g)
    # out[i, j] = x[i + dy, j + dx]: the content moves by (-dx, -dy)
    ref = translate(x, torch.stack([-dx, -dy], -1).float(), align_corners=True)
    torch.testing.assert_close(apply_crop(x, dy, dx), ref, atol=KORNIA_ATOL, rtol=0)


def test_flip_brightness_contrast_match_kornia() -> None:
    """Flip and brightness are exactly kornia's; DSA's contrast on grey images is
    kornia's mean-subtracting contrast (which clamps to [0, 1]: factors <= 1 keep
    images in [0, 1] inside it). DSA's saturation uses the plain channel mean, kornia's
    the luminance weights, so the two are different ops and not compared."""
    from kornia.enhance import adjust_brightness, adjust_contrast_with_mean_subtraction
    from kornia.geometry.transform import hflip

    from distill_data.augment import apply_brightness, apply_flip

    x = images(8, 3, 9, 9, seed=17)
    flip = torch.tensor([True, False] * 4)
    expect = torch.where(flip.view(-1, 1, 1, 1), hflip(x), x)
    assert torch.equal(apply_flip(x, flip), expect)
    shift = torch.rand(8, generator=gen(18)) - 0.5
    assert torch.equal(apply_brightness(x, shift), adjust_brightness(x, shift, clip_output=False))
    grey = images(8, 1, 9, 9, seed=19)
    factor = 0.5 + 0.5 * torch.rand(8, generator=gen(20))
    for i in range(8):  # one image per call: kornia < 0.9 takes a grey batch's mean
        torch.testing.assert_close(
            apply_contrast(grey[i : i + 1], factor[i : i + 1]),
            adjust_contrast_with_mean_subtraction(grey[i : i + 1], factor[i : i + 1]),
            atol=1e-6,
            rtol=0,
        )
