"""Tests for the kornia training pipelines (crops, flip, colour jitter, mixup, CutMix),
and where they are used: fit(), the evaluation recipes, teachers, load(augment=...),
SRe2L's random view."""

from __future__ import annotations

import dataclasses
import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from distill_data.augment import (
    PRESETS,
    AugmentPipeline,
    PerSampleAugment,
    PipelineConfig,
    apply_mix,
    color_jitter,
    cutmix,
    flip_where,
    mix_targets,
    mixup,
    pad_crop,
    resized_crop,
    sample_mix,
)
from distill_data.augment.pipeline import boxes_from_corners, cutmix_box
from distill_data.errors import ConfigError, DataError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 6, c: int = 3, h: int = 12, w: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=gen(seed))


ALL = PipelineConfig(
    crop="resized", brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, flip=0.5
)


# ----------------------------------------------------------------------------- config


def test_config_defaults_and_validation() -> None:
    cfg = PipelineConfig()
    assert (cfg.crop, cfg.padding, cfg.flip) == ("pad", 4, 0.5)
    assert cfg.scale == (0.08, 1.0) and cfg.ratio == pytest.approx((0.75, 4 / 3))
    assert cfg.jitter == () and ALL.jitter == ("brightness", "contrast", "saturation", "hue")
    bad = [
        {"crop": "centre"},
        {"padding": -1},
        {"padding": 1.5},
        {"scale": (0.5, 0.2)},
        {"scale": (0.0, 1.0)},
        {"scale": (0.5, 1.5)},
        {"scale": "big"},
        {"ratio": (2.0, 1.0)},
        {"flip": 1.5},
        {"flip": True},
        {"brightness": -0.1},
        {"contrast": math.nan},
        {"hue": 0.6},
    ]
    for kw in bad:
        with pytest.raises(ConfigError):
            PipelineConfig(**kw)
    with pytest.raises(ConfigError, match="PipelineConfig"):
        AugmentPipeline(config={"crop": "pad"})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="std"):
        AugmentPipeline(std=0.0)


def test_presets_drop_the_flip_for_digits_and_take_the_normalisation() -> None:
    from distill_data.data.base import DataSpec

    digits = DataSpec("mnist5k", ["0", "1"], (0.13,), (0.31,), "f", 1, (28, 28))
    natural = DataSpec("cifar10", ["a", "b"], (0.5, 0.4, 0.3), (0.2, 0.2, 0.2), "f", 3, (8, 8))
    p = AugmentPipeline.preset("random_crop", digits)
    assert p.config.flip == 0.0 and p.config.crop == "pad" and p.config.padding == 4
    assert p.mean.tolist() == [0.13] and p.std.tolist() == [0.31]
    assert (
        AugmentPipeline.preset("kornia", natural).config
        == AugmentPipeline.preset("random_crop", natural).config
    )
    assert AugmentPipeline.preset("resized_crop", natural).config.flip == 0.5
    jit = AugmentPipeline.preset("resized_crop_jitter", natural).config
    assert jit.jitter == ("brightness", "contrast", "saturation")
    assert AugmentPipeline.preset("random_crop", digits, flip=0.3).config.flip == 0.3
    assert AugmentPipeline.preset("random_crop", is_digits=False).config.flip == 0.5
    with pytest.raises(ConfigError, match="unknown augmentation pipeline"):
        AugmentPipeline.preset("crop_flip")
    with pytest.raises(ConfigError, match="unknown pipeline option"):
        AugmentPipeline.preset("random_crop", pading=2)
    assert set(PRESETS) == {"random_crop", "resized_crop", "resized_crop_jitter"}


# ----------------------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("preset", [*PRESETS, "all"])
def test_same_seed_same_bits_and_the_global_rng_is_untouched(preset) -> None:
    pipe = (
        AugmentPipeline(ALL, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])
        if preset == "all"
        else AugmentPipeline.preset(preset, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])
    )
    x = torch.randn(32, 3, 16, 16, generator=gen(2))
    state = torch.get_rng_state()
    a = pipe(x, generator=gen(7))
    b = pipe(x, generator=gen(7))
    assert torch.equal(torch.get_rng_state(), state)  # nothing drew from the global RNG
    assert torch.equal(a, b)
    assert not torch.equal(a, pipe(x, generator=gen(8)))
    assert not torch.equal(a, x)
    # replay: sample then apply gives the call's result
    params = pipe.sample(32, 16, 16, generator=gen(7))
    assert torch.equal(pipe.apply(x, params), a)
    assert a.shape == x.shape and a.dtype == x.dtype


def test_params_are_checked() -> None:
    pipe = AugmentPipeline(ALL)
    params = pipe.sample(4, 12, 12, generator=gen())
    with pytest.raises(ConfigError, match="n=4"):
        pipe.apply(images(5), params)
    with pytest.raises(DataError, match="floating"):
        pipe.apply(torch.zeros(4, 3, 12, 12, dtype=torch.long), params)
    with pytest.raises(ConfigError, match="PipelineParams"):
        pipe.apply(images(4), {"boxes": None})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="height"):
        pipe.sample(4, 0, 12)
    assert pipe.apply(images(0), pipe.sample(0, 12, 12, gen())).shape == (0, 3, 12, 12)
    two = AugmentPipeline(PipelineConfig(), mean=[0.1, 0.2], std=[0.3, 0.3])
    with pytest.raises(DataError, match="2 channels"):
        two(images(4), generator=gen())


# ----------------------------------------------------------------------------- ops


def test_pad_crop_is_torchvisions_random_crop_with_black_padding() -> None:
    """RandomCrop(size, padding=p): pad with black (the normalised value of pixel 0), cut
    an H x W window at offsets 0..2p, i.e. a whole-pixel translation."""
    x = torch.randn(5, 2, 7, 9, generator=gen(3))
    mean, std = torch.tensor([0.3, 0.6]), torch.tensor([0.5, 0.25])
    black = (0 - mean) / std
    top, left = torch.tensor([0, 8, 4, 2, 5]), torch.tensor([8, 0, 4, 7, 1])
    boxes = boxes_from_corners(top, left, torch.full((5,), 7), torch.full((5,), 9))
    out = pad_crop(x, boxes, 4, black)
    padded = black.view(1, 2, 1, 1).expand(5, 2, 15, 17).clone()
    padded[..., 4:11, 4:13] = x
    for i in range(5):
        t, lft = int(top[i]), int(left[i])
        assert torch.equal(out[i], padded[i, :, t : t + 7, lft : lft + 9])
    assert torch.equal(out[2], x[2])  # offset (p, p) is the identity
    assert torch.equal(out[0, :, :4], black.view(2, 1, 1).expand(2, 4, 9))  # moved down by 4
    # the module: offsets are uniform over 0..2p and the crop keeps the size
    pipe = AugmentPipeline(PipelineConfig(crop="pad", padding=2, flip=0.0))
    p = pipe.sample(2000, 7, 9, gen(4))
    offsets = p.boxes[:, 0, :].long()
    assert set(offsets[:, 0].tolist()) == set(range(5)) == set(offsets[:, 1].tolist())
    assert torch.equal(
        p.boxes[:, 2, :] - p.boxes[:, 0, :], torch.tensor([8.0, 6.0]).expand(2000, 2)
    )


def test_resized_crop_boxes_follow_torchvision_and_resize_like_interpolate() -> None:
    cfg = PipelineConfig(crop="resized", scale=(0.25, 0.5), ratio=(0.5, 2.0), flip=0.0)
    pipe = AugmentPipeline(cfg)
    h, w = 24, 32
    boxes = pipe.sample(500, h, w, gen(5)).boxes
    x0, y0 = boxes[:, 0, 0], boxes[:, 0, 1]
    bw, bh = boxes[:, 2, 0] - x0 + 1, boxes[:, 2, 1] - y0 + 1
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + bw <= w).all() and (y0 + bh <= h).all()
    area = bw * bh / (h * w)
    # rounding of each side moves the area a little outside the drawn range
    assert area.min() > 0.25 * 0.85 and area.max() < 0.5 * 1.15
    ratio = bw / bh
    assert ratio.min() > 0.5 * 0.8 and ratio.max() < 2.0 * 1.25
    assert len(set(zip(x0.tolist(), y0.tolist()))) > 100  # positions vary
    # applying a box is torchvision's resized_crop: slice, then bilinear resize
    x = torch.randn(3, 2, h, w, generator=gen(6))
    b = boxes[:3]
    out = resized_crop(x, b)
    for i in range(3):
        l, t = int(b[i, 0, 0]), int(b[i, 0, 1])
        r, bot = int(b[i, 2, 0]) + 1, int(b[i, 2, 1]) + 1
        ref = F.interpolate(x[i : i + 1, :, t:bot, l:r], size=(h, w), mode="bilinear")
        torch.testing.assert_close(out[i : i + 1], ref, atol=1e-6, rtol=0)
    full = boxes_from_corners(*(torch.tensor([v] * 3) for v in (0, 0, h, w)))
    assert torch.equal(resized_crop(x, full), x)


def test_resized_crop_falls_back_to_the_centre_crop() -> None:
    """No try fits (the area alone exceeds the image for a tall ratio range on a wide
    image): the whole image cut to the nearest allowed ratio, centred."""
    cfg = PipelineConfig(crop="resized", scale=(1.0, 1.0), ratio=(3.0, 4.0), flip=0.0)
    boxes = AugmentPipeline(cfg).sample(4, 30, 20, gen(7)).boxes
    # in ratio 20/30 < 3: full width 20, height round(20 / 3) = 7, centred at row 11
    assert boxes[:, 0].tolist() == [[0.0, 11.0]] * 4
    assert boxes[:, 2].tolist() == [[19.0, 17.0]] * 4


def test_flip_and_color_jitter_follow_torchvisions_formulas() -> None:
    x = images(4, 3, 5, 6)
    mask = torch.tensor([True, False, False, True])
    out = flip_where(x, mask)
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.3, 0.25])
    xn = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    f = torch.tensor([0.5, 1.0, 1.3, 0.8])
    got = color_jitter(xn, {"brightness": f}, ["brightness"], mean, std)
    pix = (x * f.view(-1, 1, 1, 1)).clamp(0, 1)
    torch.testing.assert_close(got * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1), pix)
    grey_w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    c = torch.tensor([0.5, 1.0, 1.5, 0.0])
    got = color_jitter(x, {"contrast": c}, ["contrast"])
    m = (x * grey_w).sum(1, keepdim=True).mean((-2, -1), keepdim=True)
    ref = (c.view(-1, 1, 1, 1) * x + (1 - c.view(-1, 1, 1, 1)) * m).clamp(0, 1)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    grey = color_jitter(x, {"saturation": torch.zeros(4)}, ["saturation"])
    assert torch.allclose(grey[:, 0], grey[:, 1], atol=1e-6)  # saturation 0: a grey image
    same = color_jitter(x, {"hue": torch.zeros(4)}, ["hue"])
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    # one-channel images: saturation and hue do nothing
    g1 = images(4, 1, 5, 6)
    jit = {"saturation": torch.full((4,), 0.2), "hue": torch.full((4,), 0.3)}
    assert torch.equal(color_jitter(g1, jit, ["saturation", "hue"]), g1)
    # grey contrast blends each image with its own mean (not the batch's)
    got = color_jitter(g1, {"contrast": c}, ["contrast"])
    m1 = g1.mean((-3, -2, -1), keepdim=True)
    ref = (c.view(-1, 1, 1, 1) * g1 + (1 - c.view(-1, 1, 1, 1)) * m1).clamp(0, 1)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="jitter op"):
        color_jitter(x, {"gamma": f}, ["gamma"])


def test_jitter_order_is_drawn_and_factors_stay_in_range() -> None:
    pipe = AugmentPipeline(ALL)
    orders = {pipe.sample(8, 12, 12, gen(s)).order for s in range(40)}
    assert len(orders) > 5 and all(sorted(o) == sorted(ALL.jitter) for o in orders)
    p = pipe.sample(1000, 12, 12, gen(9))
    b = p.jitter["brightness"]
    assert b.min() >= 0.6 and b.max() <= 1.4 and b.std() > 0.2
    assert p.jitter["hue"].abs().max() <= 0.1
    assert 0.4 < p.flip.float().mean() < 0.6


# ----------------------------------------------------------------------------- mixing


def test_mixup_and_its_targets() -> None:
    x, t = images(6), torch.randn(6, 4, generator=gen(10))
    m = sample_mix("mixup", 6, 12, 12, 0.3, gen(11))
    assert m.boxes is None and m.target_lam == 0.3
    assert sorted(m.partner.tolist()) == list(range(6))
    assert torch.equal(apply_mix(x, m), 0.3 * x + 0.7 * x[m.partner])
    assert torch.equal(mix_targets(t, m), 0.3 * t + 0.7 * t[m.partner])
    assert torch.equal(mixup(x, 1.0, m.partner), x)


def test_cutmix_pastes_the_partners_box_and_weights_targets_by_area() -> None:
    # the official rand_bbox: sides int(side * sqrt(1 - lam)) around the centre, clipped
    assert cutmix_box(0.75, 32, 32, 16, 16) == (8, 8, 16, 16)
    assert cutmix_box(0.75, 32, 32, 2, 30) == (0, 22, 10, 10)
    assert cutmix_box(1.0, 32, 32, 5, 5)[2:] == (0, 0)
    x, t = images(6, 3, 32, 32), torch.randn(6, 4, generator=gen(12))
    m = sample_mix("cutmix", 6, 32, 32, 0.75, gen(13))
    out = apply_mix(x, m)
    (x0, y0), (x1, y1) = m.boxes[0, 0].long().tolist(), m.boxes[0, 2].long().tolist()
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[y0 : y1 + 1, x0 : x1 + 1] = True
    assert torch.equal(out[:, :, inside], x[m.partner][:, :, inside])
    assert torch.equal(out[:, :, ~inside], x[:, :, ~inside])
    assert m.target_lam == pytest.approx(1 - inside.sum().item() / 1024)
    torch.testing.assert_close(
        mix_targets(t, m), m.target_lam * t + (1 - m.target_lam) * t[m.partner]
    )
    none = sample_mix("cutmix", 6, 32, 32, 1.0, gen(14))
    assert torch.equal(cutmix(x, none.boxes, none.partner), x) and none.target_lam == 1.0
    with pytest.raises(ConfigError, match="unknown mix"):
        sample_mix("mosaic", 6, 32, 32, 0.5)
    with pytest.raises(ConfigError, match="lambda"):
        sample_mix("mixup", 6, 32, 32, 1.5)


def _spy_fit(monkeypatch, **kw):
    """Run fit on 8 images of 4x8 pixels, image i filled with the value i + 1, with stored
    logits z_i = 10·onehot(i); return (fed inputs, distillation targets)."""
    fit_mod = importlib.import_module("distill_data.train.fit")
    n = 8
    x = (torch.arange(n, dtype=torch.float32) + 1).view(n, 1, 1, 1).expand(n, 1, 4, n).clone()
    fed: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    real_kd = fit_mod.kd_loss

    def spy_kd(name, student, teacher, *args, **kwargs):
        targets.append(teacher.detach().clone())
        return real_kd(name, student, teacher, *args, **kwargs)

    monkeypatch.setattr(fit_mod, "kd_loss", spy_kd)
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * n, n))
    student.register_forward_pre_hook(lambda m, a: fed.append(a[0].detach().clone()))
    augment = kw.pop("augment", None)
    recipe = fit_mod.TrainRecipe(epochs=4, batch_size=4, augment="none", temperature=30.0, **kw)
    data = fit_mod.TrainData(x, torch.zeros(n, dtype=torch.long), soft=10.0 * torch.eye(n))
    fit_mod.fit(student, data, recipe, generator=gen(0), augment=augment)
    return fed, targets


def test_fit_cutmix_mixes_stored_logits_by_the_kept_area(monkeypatch) -> None:
    """fit(cutmix=α, soft_targets=z): each row keeps its own pixels outside one box per
    batch and takes its partner's inside; its target is λ'·z_i + (1 − λ')·z_j with λ'
    the share of the image it kept. Pixel values name their source image, so the
    target must be 10 × the share of each source's pixels."""
    fed, targets = _spy_fit(monkeypatch, mix="cutmix", mix_alpha=1.0)
    assert len(fed) == len(targets) == 8
    cut_any = False
    for a, t in zip(fed, targets):
        src = a.view(len(a), -1).long() - 1  # source image of every pixel
        share = F.one_hot(src, 8).float().mean(1)  # (rows, 8)
        torch.testing.assert_close(t, 10.0 * share, atol=1e-5, rtol=0)
        assert int((share > 0).sum(1).max()) <= 2  # two sources per row at most
        cut_any |= bool(((share > 0) & (share < 1)).any())
    assert cut_any


def test_fit_mixing_needs_labels_and_a_callable_augment() -> None:
    from distill_data.train import TrainData, TrainRecipe, fit

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    data = TrainData(torch.randn(4, 1, 4, 4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ConfigError, match="mix_alpha must be > 0"):
        TrainRecipe(mix="cutmix")  # one mixing kind, with its alpha
    cut = TrainRecipe(epochs=1, augment="none", mix="cutmix", mix_alpha=1.0)
    with pytest.raises(ValueError, match="cutmix needs soft targets"):
        fit(net, data, cut, generator=gen())
    plain = TrainRecipe(epochs=1, augment="none")
    with pytest.raises(ValueError, match="callable"):
        fit(net, data, plain, generator=gen(), augment="random_crop")


def test_fit_applies_the_pipeline_with_its_generator(monkeypatch) -> None:
    """fit(augment=pipe) feeds pipe(x, generator=g) batches: same seed, same inputs; a
    different pipeline seed stream, different inputs."""
    pipe = AugmentPipeline(PipelineConfig(crop="pad", padding=2, flip=0.5))
    fed_a, _ = _spy_fit(monkeypatch, augment=pipe)
    fed_b, _ = _spy_fit(monkeypatch, augment=pipe)
    fed_c, _ = _spy_fit(monkeypatch)
    assert all(torch.equal(a, b) for a, b in zip(fed_a, fed_b))
    assert any(not torch.equal(a, c) for a, c in zip(fed_a, fed_c))


# ----------------------------------------------------------------------------- recipes, teachers


def test_eval_config_pipeline_and_mix(tiny_npz) -> None:
    from distill_data.data import load_dataset
    from distill_data.evaluation.protocol import CUTMIX_ALPHA, EvalConfig, train_and_test
    from distill_data.train import get_recipe

    data = load_dataset(tiny_npz)
    dc = EvalConfig()
    assert dc.pipeline is None and dc.mix is None
    assert dc.train_recipe() == dataclasses.replace(get_recipe("dc"), epochs=dc.epochs)
    r = dc.train_recipe()
    assert (r.lr, r.momentum, r.weight_decay, r.batch_size, r.augment) == (
        0.01, 0.9, 5e-4, 256, "dsa"
    )  # fmt: skip
    sre2l = EvalConfig(recipe="sre2l").train_recipe()
    assert sre2l == dataclasses.replace(get_recipe("sre2l"), epochs=1000)
    cut = EvalConfig(recipe="infer", mix="cutmix").train_recipe()
    assert (cut.mixup, cut.cutmix, cut.batch_size) == (0.0, CUTMIX_ALPHA, 64)
    cfg = EvalConfig(pipeline="random_crop", width=8, epochs=2, runs=1)
    assert cfg.strategy(data) == "none"  # the pipeline replaces DSA
    assert cfg.train_recipe().augment == "random_crop"
    assert EvalConfig(pipeline="random_crop", augment=False).train_recipe().augment == "none"
    x, y = data.normalize(data.x_train), data.y_train
    a = train_and_test(x, y, data, cfg, run=0)
    assert a == train_and_test(x, y, data, cfg, run=0)
    for kw, msg in (
        ({"pipeline": "nope"}, "unknown pipeline"),
        ({"mix": "mosaic", "recipe": "sre2l"}, "unknown mix"),
        ({"mix": "cutmix"}, "soft-label recipes"),
    ):
        with pytest.raises(ConfigError, match=msg):
            EvalConfig(**kw)


def test_teacher_with_a_pipeline(tiny_npz, tmp_path) -> None:
    import distill_data as dd
    from distill_data.train import TeacherConfig

    assert TeacherConfig().pipeline is None
    with pytest.raises(ConfigError, match="unknown pipeline"):
        TeacherConfig(pipeline="dsa")
    a, b, c = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    for p in (a, b):
        dd.teacher(str(tiny_npz), p, epochs=1, width=8, quiet=True, pipeline="random_crop")
    dd.teacher(str(tiny_npz), c, epochs=1, width=8, quiet=True)
    sa, sb, sc = (torch.load(p, weights_only=True)["state_dict"] for p in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # seeded: reproducible
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)  # not DSA's training


# ----------------------------------------------------------------------------- load(augment=...)


def test_load_with_a_kornia_pipeline_per_item_and_in_workers(tmp_path) -> None:
    import distill_data as dd
    from distill_data.store import SyntheticSet, write_store
    from distill_data.store.schema import StoreMeta

    g = gen(21)
    meta = StoreMeta(
        generator="dm",
        config={},
        dataset="cifar10",
        classes=["a", "b", "c"],
        mean=(0.4, 0.5, 0.6),
        std=(0.2, 0.2, 0.2),
        dataset_fingerprint="x",
        ipc=4,
        seed=0,
    )
    synset = SyntheticSet(torch.randn(12, 3, 10, 10, generator=g), torch.arange(12) % 3, meta)
    path = tmp_path / "s.h5"
    write_store(path, synset)
    plain = dd.load(path)
    aug = dd.load(path, augment="kornia")
    assert isinstance(aug.augment, PerSampleAugment)
    pipe = aug.augment.augment
    assert pipe.config.crop == "pad" and pipe.config.flip == 0.5  # not digits
    assert torch.allclose(pipe.mean.float(), torch.tensor([0.4, 0.5, 0.6]))
    changed = sum(not torch.equal(plain[i][0], aug[i][0]) for i in range(12))
    assert changed > 0
    loader = torch.utils.data.DataLoader(aug, batch_size=4, num_workers=2)
    xs, ys = zip(*loader)
    assert torch.cat(xs).shape == (12, 3, 10, 10)
    assert torch.cat(ys).tolist() == [int(plain[i][1]) for i in range(12)]
    custom = AugmentPipeline(PipelineConfig(crop="resized", flip=0.0))
    assert dd.load(path, augment=custom).augment.augment is custom
    assert dd.load(path, augment="resized_crop").augment.augment.config.crop == "resized"
    # DSA strategies still mean DSA
    from distill_data.augment import PerSampleDSA

    assert isinstance(dd.load(path, augment="crop_flip").augment, PerSampleDSA)


def test_per_sample_augment_draws_from_its_own_generator() -> None:
    pipe = AugmentPipeline(PipelineConfig(crop="pad", padding=3))
    t = PerSampleAugment(pipe)
    x = images(1, 3, 8, 8)[0]
    state = torch.get_rng_state()
    outs = [t(x) for _ in range(6)]
    assert torch.equal(torch.get_rng_state(), state)
    assert all(o.shape == x.shape for o in outs)
    assert len({o.sum().item() for o in outs}) > 1
    assert t.__getstate__()["_gen"] is None
    with pytest.raises(ConfigError):
        PerSampleAugment("random_crop")


# ----------------------------------------------------------------------------- SRe2L's view


def _old_random_view(x, g, jitter, flip, crop_min_scale, shift="roll"):
    """random_view as it was before kornia (F.interpolate, Tensor.flip), as reference."""
    h, w = x.shape[-2:]
    if crop_min_scale < 1.0:
        scale = crop_min_scale + (1 - crop_min_scale) * float(torch.rand((), generator=g))
        ch, cw = max(1, round(h * math.sqrt(scale))), max(1, round(w * math.sqrt(scale)))
        y0 = int(torch.randint(0, h - ch + 1, (), generator=g))
        x0 = int(torch.randint(0, w - cw + 1, (), generator=g))
        x = F.interpolate(
            x[..., y0 : y0 + ch, x0 : x0 + cw], size=(h, w), mode="bilinear", align_corners=False
        )
    if flip and float(torch.rand((), generator=g)) < 0.5:
        x = x.flip(-1)
    if jitter > 0:
        dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=g))
        if shift == "roll":
            x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
        else:
            p = jitter
            x = F.pad(x, (p, p, p, p), mode="replicate")[
                ..., p - dy : p - dy + h, p - dx : p - dx + w
            ]
    return x


@pytest.mark.parametrize("shift", ["roll", "translate"])
@pytest.mark.parametrize("crop", [1.0, 0.08, 0.5])
def test_sre2l_random_view_is_unchanged_by_kornia(crop, shift) -> None:
    """The kornia crop and flip give the old view bit for bit, with the same draws (the
    generator ends in the same state), so SRe2L's and INFER's sets do not change."""
    from distill_data.synth.sre2l import random_view

    x = torch.randn(10, 3, 28, 28, generator=gen(30), requires_grad=True)
    for seed in range(8):
        g_new, g_old = gen(seed), gen(seed)
        new = random_view(x, g_new, 4, True, crop, shift)
        old = _old_random_view(x, g_old, 4, True, crop, shift)
        assert torch.equal(new, old)
        assert torch.equal(g_new.get_state(), g_old.get_state())
    new.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
