"""BatchNorm-statistic loss (golden values, zero at the running statistics) and ZeroQ."""

from __future__ import annotations

import dataclasses
import importlib
import math

import pytest
import torch

import distill_data as dd
from distill_data.errors import ConfigError
from distill_data.models import build_model, save_model
from distill_data.store import checkpoint_path_for, read_store
from distill_data.synth.bnstats import BNStatLoss, feature_stats, input_prior, stat_distance
from distill_data.synth.zeroq import ZeroQ
from distill_data.train import get_recipe


def fixed(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_stat_distance_golden_values():
    mean, var = torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.25])
    tm, tv = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0])
    # squared form on stds: (0.5² + 1²) + ((√2 − 1)² + (0.5 − 1)²), eps 0
    want = 0.25 + 1.0 + (math.sqrt(2) - 1) ** 2 + 0.25
    assert float(stat_distance(mean, var, tm, tv, "squared", eps=0.0)) == pytest.approx(want)
    # norm form on variances: ||(0.5, −1)||₂ + ||(1, −0.75)||₂
    want = math.hypot(0.5, 1.0) + math.hypot(1.0, 0.75)
    assert float(stat_distance(mean, var, tm, tv, "norm")) == pytest.approx(want)
    # per-sample statistics are averaged over samples
    m2 = torch.stack([mean, tm])
    v2 = torch.stack([var, tv])
    got = float(stat_distance(m2, v2, tm, tv, "norm"))
    assert got == pytest.approx(want / 2)


def test_feature_stats_batch_and_sample():
    x = fixed((3, 2, 4, 4))
    m, v = feature_stats(x, "batch")
    flat = x.transpose(0, 1).reshape(2, -1)
    torch.testing.assert_close(m, flat.mean(1))
    torch.testing.assert_close(v, flat.var(1))
    m, v = feature_stats(x, "sample")
    assert m.shape == v.shape == (3, 2)
    torch.testing.assert_close(m, x.flatten(2).mean(2))
    torch.testing.assert_close(v, x.flatten(2).var(2))
    _, vb = feature_stats(x, "sample", unbiased=False)
    torch.testing.assert_close(vb, x.flatten(2).var(2, unbiased=False))


def bn_net():
    net = build_model(
        "convnet_bn", 1, 3, (10, 10), width=6, depth=2, generator=torch.Generator().manual_seed(0)
    )
    return net.eval()


def test_bn_loss_is_zero_at_the_running_statistics_and_positive_elsewhere():
    net = bn_net()
    x = fixed((16, 1, 10, 10))
    # running statistics := this batch's BN-input statistics (unbiased var)
    with torch.no_grad():
        h = x
        for layer in net.features:
            if isinstance(layer, torch.nn.BatchNorm2d):
                m, v = feature_stats(h, "batch")
                layer.running_mean.copy_(m)
                layer.running_var.copy_(v)
            h = layer(h)
    with BNStatLoss(net, stats="batch") as bn:
        net(x)
    assert float(bn.loss().detach()) == pytest.approx(0.0, abs=1e-8)
    with BNStatLoss(net, stats="batch") as bn:
        net(x + 0.3)
    assert float(bn.loss().detach()) > 1e-4
    # the hooks are gone after the context
    assert all(not layer._forward_pre_hooks for layer in net.modules())


def test_input_prior_zero_for_standardised_images():
    x = fixed((4, 3, 8, 8))
    flat = x.reshape(4, 3, -1)
    z = (flat - flat.mean(2, keepdim=True)) / flat.std(2, keepdim=True)
    assert float(input_prior(z.reshape(4, 3, 8, 8))) == pytest.approx(0.0, abs=1e-5)
    assert float(input_prior(x * 3 + 1)) > 1.0


def test_zeroq_data_free_build_reduces_bn_loss(teacher_file, tmp_path):
    out = tmp_path / "zq.h5"
    synset = dd.build(
        None,
        "zeroq",
        None,
        out,
        teacher=teacher_file,
        count=5,
        quiet=True,
        options={"iterations": 40, "batch_size": 2},
    )
    stored = read_store(out)
    assert stored.images.shape == (5, 1, 10, 10)
    assert stored.meta.ipc == 0 and stored.meta.iterations == 80  # batches of 2 and 3
    assert stored.meta.dataset == "tiny.npz" and stored.meta.classes == ["0", "1", "2"]
    net = dd.train.load_teacher(teacher_file)[0]
    with torch.no_grad():
        assert torch.equal(net(stored.images).argmax(1), stored.labels)
    # the optimised images match BN statistics far better than fresh noise of the same size
    spec = dd.api._spec_from_teacher(dd.train.load_teacher(teacher_file)[1], net)
    gen = ZeroQ(ZeroQ.Config(iterations=1, batch_size=2), spec, 0, count=5, teacher=net)
    gen.setup()
    noise = torch.randn(3, 1, 10, 10, generator=torch.Generator().manual_seed(9))
    assert len(synset) == 5
    optimised = float(gen.loss(stored.images[2:]).detach())
    assert optimised < 0.75 * float(gen.loss(noise).detach())


def _reference_bn_objective(net, x, reduce: str, stats: str, prior_stats: str,
                            eps: float = 1e-6) -> float:  # fmt: skip
    """ZeroQ's Eq. 2 / Genie's loss written out in float64 from the layers' own inputs:
    Σ_BN [Σ or mean over channels of (μ̂_c − μ_c)² + (sqrt(σ̂²_c + eps) − sqrt(σ²_c + eps))²]
    with the batch's statistics (``stats="batch"``) or each image's, averaged over images
    (``"sample"``; unbiased variance), plus the input prior: per channel mean 0, std 1,
    summed over channels, on the batch or per image (``prior_stats``)."""
    inputs = []
    hooks = [m.register_forward_pre_hook(lambda m, a: inputs.append((m, a[0].detach())))
             for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]  # fmt: skip
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    assert len(inputs) >= 2

    def term(h, mu, var, how, red):  # h: (N, C, H, W) -> one layer's distance
        if how == "sample":
            return sum(term(h[i : i + 1], mu, var, "batch", red) for i in range(len(h))) / len(h)
        flat = h.double().transpose(0, 1).reshape(h.shape[1], -1)
        m, v = flat.mean(1), flat.var(1, unbiased=True)
        d = (m - mu) ** 2 + (torch.sqrt(v + eps) - torch.sqrt(var + eps)) ** 2
        return float(d.sum() if red == "sum" else d.mean())

    total = sum(term(h, bn.running_mean.double(), bn.running_var.double(), stats, reduce)
                for bn, h in inputs)  # fmt: skip
    c = x.shape[1]
    zero, one = torch.zeros(c, dtype=torch.float64), torch.full((c,), 1 - eps, dtype=torch.float64)
    return total + term(x, zero, one, prior_stats, "sum")


@pytest.mark.parametrize("method, stats", [("zeroq", "batch"), ("zeroq", "sample"),
                                           ("genie", None)])  # fmt: skip
def test_the_data_free_objectives_are_the_papers(teacher_file, method, stats):
    """ZeroQ sums each BN layer's squared statistic gaps over channels (Eq. 2) and adds an
    input prior, on the batch's statistics (the paper) or each image's (the code's
    ``stats=sample``); Genie averages the gaps over channels, on the batch, and puts the
    prior on each image. Pinned against a float64 reference, on inputs far from the prior
    (so dropping it shows), not against the loss the build optimises."""
    from distill_data.synth.genie import Genie

    net, meta = dd.train.load_teacher(teacher_file)
    spec = dd.api._spec_from_teacher(meta, net)
    if method == "zeroq":
        gen = ZeroQ(ZeroQ.Config(iterations=1, batch_size=4, stats=stats), spec, 0, count=4,
                    teacher=net)  # fmt: skip
        how = ("sum", stats, stats)
    else:
        gen = Genie(Genie.Config(iterations=1, batch_size=4, latent=8), spec, 0, count=4,
                    teacher=net)  # fmt: skip
        how = ("mean", "batch", "sample")
    gen.setup()
    x = 3 * fixed((4, 1, 10, 10), seed=4) + 1
    want = _reference_bn_objective(net, x, *how)
    assert float(gen.loss(x).detach()) == pytest.approx(want, rel=1e-5)
    prior = float(input_prior(x, how[2]).detach())
    assert prior > 1e-3 * want  # the prior is a visible part of what is pinned


def _interrupted_and_resumed(method, cls, teacher_file, tmp_path, interrupt_build, count_steps,
                             count, opts, at):  # fmt: skip
    """A data-free set of ``count`` images built whole, then again interrupted at step
    ``at`` and resumed: (the whole build's store, the resumed one's, the steps the
    resumed build ran)."""

    def build(out, **kw):
        return dd.build(None, method, None, out, teacher=teacher_file, count=count,
                        options=opts, quiet=True, **kw)  # fmt: skip

    full, out = tmp_path / "full.h5", tmp_path / "part.h5"
    build(full)
    interrupt_build(cls, at, lambda: build(out))
    assert checkpoint_path_for(out).exists() and not out.exists()
    ran = count_steps(cls, lambda: build(out, resume=True))
    return read_store(full), read_store(out), ran


def test_zeroq_resume_across_batches_is_identical(
    teacher_file, tmp_path, interrupt_build, count_steps
):
    opts = {"iterations": 4, "batch_size": 3, "checkpoint_every": 1}
    a, b, ran = _interrupted_and_resumed("zeroq", ZeroQ, teacher_file, tmp_path,
                                         interrupt_build, count_steps, 7, opts, at=6)  # fmt: skip
    assert ran == [6, 7]  # batches of 3 and 4 (a lone image joins) x 4 iterations: on from 6
    assert torch.equal(a.images, b.images)


def test_zeroq_errors(teacher_file, tmp_path, tiny_npz):
    out = tmp_path / "x.h5"
    with pytest.raises(ConfigError, match="needs a trained network"):
        dd.build(None, "zeroq", None, out, count=4)
    plain = tmp_path / "mlp.pt"
    save_model(build_model("mlp", 1, 3, (10, 10), width=4), plain)
    with pytest.raises(ConfigError, match="no BatchNorm"):
        dd.build(None, "zeroq", None, out, teacher=plain, count=4)
    with pytest.raises(ConfigError, match="exactly one"):
        dd.build(None, "zeroq", 2, out, teacher=teacher_file, count=4)
    with pytest.raises(ConfigError, match="images per class"):
        dd.build(str(tiny_npz), "dm", None, out, count=4)
    with pytest.raises(ConfigError, match="needs real data"):
        dd.build(None, "dm", 2, out)
    assert not out.exists()


def test_swing_offsets():
    from distill_data.synth.genie import swing

    x = fixed((2, 3, 6, 5))
    torch.testing.assert_close(swing(x, 1, 1), x)  # the centre crop of a 1-pixel pad
    shifted = swing(x, 0, 0)
    torch.testing.assert_close(shifted[..., 1:, 1:], x[..., :-1, :-1])
    torch.testing.assert_close(shifted[..., 0, 1:], x[..., 1, :-1])  # reflected row


@pytest.mark.parametrize("on", [True, False])
def test_genie_swings_the_inputs_of_strided_convolutions(tiny_npz, tmp_path, on):
    """Genie's swing convolution (Jeon et al. 2023, Sec. 3.2): every strided convolution
    of the teacher sees its input reflect-padded by one pixel and cropped back at one
    (dy, dx) drawn per forward pass and shared by all of them; its hooks are gone after
    the loss. (convnet_bn has no strided convolution: a ResNet teacher here.)"""
    from distill_data.synth.genie import Genie, swing

    path = tmp_path / "r.pt"
    dd.teacher(str(tiny_npz), path, model="resnet", epochs=1, width=4, quiet=True)
    net, meta = dd.train.load_teacher(path)
    strided = [m for m in net.modules()
               if isinstance(m, torch.nn.Conv2d) and m.stride != (1, 1)]  # fmt: skip
    assert len(strided) >= 2
    seen: dict[str, list] = {"in": [], "used": []}
    mine = [
        m.register_forward_pre_hook(lambda m, a: seen["in"].append(a[0].detach())) for m in strided
    ]  # fmt: skip  (registered first: sees the input unswung)
    mine += [m.register_forward_hook(lambda m, a, o: seen["used"].append(a[0].detach()))
             for m in strided]  # fmt: skip
    spec = dd.api._spec_from_teacher(meta, net)
    cfg = Genie.Config(iterations=1, batch_size=4, latent=8, swing=on)
    gen = Genie(cfg, spec, 0, count=4, teacher=net)
    gen.setup()
    offsets = []
    for seed in range(4):
        seen["in"].clear()
        seen["used"].clear()
        gen.loss(fixed((4, 1, 10, 10), seed=seed))
        pairs = list(zip(seen["in"], seen["used"]))
        assert len(pairs) == len(strided)
        found = [(dy, dx) for dy in range(3) for dx in range(3)
                 if all(torch.equal(swing(a, dy, dx), b) for a, b in pairs)]  # fmt: skip
        assert len(found) == 1  # one offset, shared by every strided convolution
        offsets.append(found[0])
    if on:
        assert set(offsets) != {(1, 1)}  # (1, 1) is the unshifted crop
    else:
        assert set(offsets) == {(1, 1)}
    for h in mine:
        h.remove()
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in net.modules())


@pytest.mark.parametrize("size", [(28, 28), (10, 10), (12, 9)])
def test_genie_generator_shapes(size):
    from distill_data.synth.genie import GenieGenerator

    g = GenieGenerator(16, 3, size)
    assert g(torch.randn(4, 16)).shape == (4, 3, *size)


def test_genie_build_and_resume(teacher_file, tmp_path, interrupt_build, count_steps):
    from distill_data.synth.genie import Genie

    opts = {"iterations": 3, "batch_size": 3, "latent": 8, "checkpoint_every": 1, "decay_every": 2}
    a, b, ran = _interrupted_and_resumed("genie", Genie, teacher_file, tmp_path,
                                         interrupt_build, count_steps, 6, opts, at=4)  # fmt: skip
    assert ran == [4, 5]  # two batches x 3 iterations: on from the checkpoint at step 4
    assert a.images.shape == (6, 1, 10, 10)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_sre2l_objective_and_defaults_are_the_papers(teacher_file):
    """SRe2L's recover loss (Yin et al. 2023, Eq. 4-5; official recover code):
    CE(f(x̃), y) + r_bn·(10·d_1 + Σ_{l>1} d_l), d_l = ||μ̂_l − μ_l||₂ + ||σ̂²_l − σ²_l||₂
    with the batch's biased variance, written out in float64 (no jitter, flip or crop
    here, so the view is the image itself); and the official defaults."""
    from distill_data.synth.sre2l import SRe2L

    cfg = SRe2L.Config()
    assert (cfg.iterations, cfg.lr, cfg.beta1, cfg.beta2) == (1000, 0.25, 0.5, 0.9)
    assert (cfg.r_bn, cfg.first_bn_multiplier, cfg.jitter, cfg.temperature) == (
        0.01, 10.0, 4, 30.0)  # fmt: skip
    net, meta = dd.train.load_teacher(teacher_file)
    spec = dd.api._spec_from_teacher(meta, net)
    gen = SRe2L(SRe2L.Config(iterations=1, jitter=0, flip=False), spec, 1, teacher=net)
    gen.setup()
    x = 3 * fixed((3, 1, 10, 10), seed=6) + 1
    inputs = []
    hooks = [m.register_forward_pre_hook(lambda m, a: inputs.append((m, a[0].detach())))
             for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]  # fmt: skip
    with torch.no_grad():
        logits = net(x)
    for h in hooks:
        h.remove()
    d = []
    for bn, h in inputs:
        flat = h.double().transpose(0, 1).reshape(h.shape[1], -1)
        mean, var = flat.mean(1), flat.var(1, unbiased=False)
        d.append(float(torch.linalg.vector_norm(mean - bn.running_mean.double())
                       + torch.linalg.vector_norm(var - bn.running_var.double())))  # fmt: skip
    ce = float(torch.nn.functional.cross_entropy(logits.double(), gen.y))
    want = ce + 0.01 * (10 * d[0] + sum(d[1:]))
    assert float(gen.loss(x).detach()) == pytest.approx(want, rel=1e-5)
    assert 0.01 * 10 * d[0] > 1e-3 * want  # the BN term is a visible part of it


def test_sre2l_recovers_labelled_images_with_soft_labels(teacher_file, tiny_npz, tmp_path):
    out = tmp_path / "s.h5"
    dd.build(
        str(tiny_npz), "sre2l", 2, out, teacher=teacher_file, quiet=True, options={"iterations": 5}
    )
    s = read_store(out)
    assert s.images.shape == (6, 1, 10, 10)
    assert s.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert s.temperature == 30.0 and s.soft_labels.shape == (6, 3)
    net = dd.train.load_teacher(teacher_file)[0]
    with torch.no_grad():
        torch.testing.assert_close(net(s.images), s.soft_labels)
    # pixels were clipped to the valid range of normalised [0, 1] images
    lo, hi = (0 - s.meta.mean[0]) / s.meta.std[0], (1 - s.meta.mean[0]) / s.meta.std[0]
    assert float(s.images.min()) >= lo - 1e-5 and float(s.images.max()) <= hi + 1e-5


def test_sre2l_is_data_free(teacher_file, tmp_path):
    out = tmp_path / "s.h5"
    dd.build(None, "sre2l", 1, out, teacher=teacher_file, quiet=True, options={"iterations": 2})
    assert read_store(out).meta.dataset == "tiny.npz"


def test_kd_loss_golden_and_zero():
    from distill_data.train.losses import hinton_kd as kd_loss

    t = torch.tensor([[2.0, 0.0, -1.0]])
    assert float(kd_loss(t, t, 3.0)) == pytest.approx(0.0, abs=1e-7)
    s = torch.tensor([[0.0, 0.0, 0.0]])
    p = torch.softmax(t / 2, 1)[0]
    want = 4 * float((p * (p.log() - math.log(1 / 3))).sum())  # T² · KL(p ‖ uniform)
    assert float(kd_loss(s, t, 2.0)) == pytest.approx(want, rel=1e-6)


@pytest.fixture
def sre2l_store(teacher_file, tiny_npz, tmp_path):
    """A tiny SRe2L store (IPC 2, two iterations) with the teacher's soft labels."""
    out = tmp_path / "s.h5"
    dd.build(
        str(tiny_npz), "sre2l", 2, out, teacher=teacher_file, quiet=True, options={"iterations": 2}
    )
    return out


def test_eval_with_soft_labels(sre2l_store, teacher_file, tiny_npz, tmp_path):
    out = sre2l_store
    kw = {"runs": 1, "epochs": 2, "width": 8, "quiet": True}
    rep = dd.evaluate(
        out, str(tiny_npz), soft=True, teacher=teacher_file, baselines=["random"], **kw
    )
    assert rep["protocol"]["labels"].startswith("soft")
    assert rep["results"]["synthetic"]["labels"] == "soft (KD from stored logits, T=30)"
    assert rep["results"]["random"]["labels"] == "soft (KD from stored logits, T=30)"
    hard = dd.evaluate(out, str(tiny_npz), **kw)
    assert hard["protocol"]["labels"] == "hard"
    with pytest.raises(ConfigError, match="needs teacher to give"):
        dd.evaluate(out, str(tiny_npz), soft=True, baselines=["random"], **kw)
    coreset = tmp_path / "r.h5"
    dd.build(str(tiny_npz), "random", 2, coreset, quiet=True)
    with pytest.raises(ConfigError, match="no soft labels"):
        dd.evaluate(coreset, str(tiny_npz), soft=True, **kw)


def test_teacher_ensemble_is_the_mean_of_logits():
    from distill_data.train.teacher import TeacherEnsemble

    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)
    torch.testing.assert_close(TeacherEnsemble([a, b])(x), (a(x) + b(x)) / 2)
    with pytest.raises(ConfigError, match="at least one teacher"):
        TeacherEnsemble([])


def test_eval_with_a_teacher_ensemble(sre2l_store, teacher_file, tiny_npz, tmp_path):
    """Several --teacher label as one (mean of logits): every member labels the random
    baseline, and two copies of one teacher give exactly that teacher's result."""
    out = sre2l_store
    kw = {"runs": 1, "epochs": 2, "width": 8, "quiet": True, "baselines": ["random"]}
    one = dd.evaluate(out, str(tiny_npz), soft=True, teacher=teacher_file, **kw)
    two = dd.evaluate(out, str(tiny_npz), soft=True, teacher=[teacher_file, teacher_file], **kw)
    assert two["protocol"]["teachers"] == 2 and one["protocol"]["teachers"] == 1
    for row in ("synthetic", "random"):  # losses too: 9 test images tie on accuracy easily
        for key in ("accs", "test_losses"):
            assert two["results"][row][key] == one["results"][row][key], (row, key)

    calls = [0, 0]
    members = []
    for i in range(2):
        net = dd.train.load_teacher(teacher_file)[0]
        net.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
        members.append(net)
    dd.evaluate(out, str(tiny_npz), soft=True, teacher=members, **kw)
    assert calls[0] > 0 and calls[0] == calls[1]


def test_infer_accounting_real_images_and_ensemble_labels(teacher_file, tiny_npz, tmp_path):
    from distill_data.data import load_dataset

    second = tmp_path / "t2.pt"
    dd.teacher(str(tiny_npz), second, model="resnet", epochs=1, width=4, quiet=True)
    out = tmp_path / "inf.h5"
    dd.build(
        str(tiny_npz),
        "infer",
        3,
        out,
        teacher=[teacher_file, second],
        quiet=True,
        options={"iterations": 3},
    )
    s = read_store(out)
    # ipc budget 3, M = 2 teachers, K = 3 classes: ipc_init = floor(3 / (1 + 2/3)) = 1,
    # stored per class: ipc_init * (M + 1) = 3 images
    assert s.meta.extra["ipc_init"] == 1 and s.meta.extra["images_per_class"] == 3
    assert s.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    data = load_dataset(tiny_npz)
    real = data.normalize(data.x_train)
    # the first image of each class is an untouched real training image
    for c in range(3):
        first = s.images[3 * c]
        assert any(torch.equal(first, r) for r in real[data.y_train == c])
    # compensated image = clip(real + u) with one u shared by all classes of the group
    lo = (0 - s.meta.mean[0]) / s.meta.std[0]
    hi = (1 - s.meta.mean[0]) / s.meta.std[0]

    def inside(x):
        return (x > lo + 1e-5) & (x < hi - 1e-5)

    mask = inside(s.images[1]) & inside(s.images[4])
    assert mask.float().mean() > 0.3
    u0, u1 = s.images[1] - s.images[0], s.images[4] - s.images[3]
    torch.testing.assert_close(u0[mask], u1[mask], atol=1e-5, rtol=0)
    assert float(u0[mask].abs().max()) > 0  # the compensator was learned
    nets = [dd.train.load_teacher(p)[0] for p in (teacher_file, second)]
    with torch.no_grad():
        want = torch.stack([n(s.images) for n in nets]).mean(0)
    torch.testing.assert_close(s.soft_labels, want)
    assert s.temperature == 30.0


def test_infer_errors(teacher_file, tiny_npz, tmp_path):
    out = tmp_path / "x.h5"
    with pytest.raises(ConfigError, match="needs real data"):
        dd.build(None, "infer", 2, out, teacher=teacher_file)
    with pytest.raises(ConfigError, match="too small"):
        dd.build(
            str(tiny_npz),
            "infer",
            1,
            out,
            teacher=[teacher_file, teacher_file],
            options={"iterations": 1},
        )
    assert not out.exists()


def test_online_relabel_without_augmentation_equals_stored_logits(teacher_file, tiny_npz):
    """Without DSA the teacher sees exactly the stored images, so distilling from its
    logits batch by batch must train the very same weights as the stored logits."""
    from distill_data.evaluation import EvalConfig
    from distill_data.evaluation.protocol import train_and_test

    data = dd.data.load_dataset(tiny_npz)
    net = dd.train.load_teacher(teacher_file)[0].eval()
    x = data.normalize(data.x_train[:6])
    y = data.y_train[:6]
    with torch.no_grad():
        logits = net(x)
    cfg = EvalConfig(runs=1, epochs=3, width=8, augment=False, batch_size=4)
    stored = train_and_test(x, y, data, cfg, 0, soft=logits, temperature=3.0)
    online = train_and_test(x, y, data, cfg, 0, temperature=3.0, teacher=net)
    assert online == stored


def test_online_relabel_asks_the_teacher_for_every_augmented_batch(tiny_npz):
    """With DSA on, each batch the student sees is the one the teacher labels."""
    from distill_data.train import TrainData, TrainRecipe, fit

    data = dd.data.load_dataset(tiny_npz)
    seen: list[torch.Tensor] = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(x.detach().clone())
            return torch.zeros(len(x), data.num_classes)

    student = build_model("convnet", 1, 3, data.im_size, width=8, depth=1)
    fed: list[torch.Tensor] = []
    student.register_forward_pre_hook(lambda m, a: fed.append(a[0].detach().clone()))
    x = data.normalize(data.x_train[:6])
    fit(
        student,
        TrainData(x, data.y_train[:6]),
        TrainRecipe(epochs=2, batch_size=4, dsa_strategy="color_crop_cutout_scale_rotate"),
        generator=torch.Generator().manual_seed(0),
        teacher=Spy(),
    )
    assert len(seen) == len(fed) == 4  # 2 epochs x 2 batches
    for a, b in zip(seen, fed):
        assert torch.equal(a, b)
    assert not any(torch.equal(s, x[: len(s)]) for s in seen)  # augmented, not raw


def _eval_online(store, npz, teacher, baselines=("random",), **extra) -> dict:
    """A tiny online-relabelled evaluation of ``store`` and (by default) its random
    baseline."""
    return dd.evaluate(
        store,
        str(npz),
        soft=True,
        teacher=teacher,
        relabel="online",
        baselines=list(baselines),
        runs=1,
        epochs=2,
        width=8,
        quiet=True,
        **extra,
    )


def test_eval_online_relabel_report_and_errors(sre2l_store, teacher_file, tiny_npz):
    out = sre2l_store
    kw = {"runs": 1, "epochs": 2, "width": 8, "quiet": True}
    rep = _eval_online(out, tiny_npz, teacher_file)
    for part in ("synthetic", "random"):
        assert rep["results"][part]["labels"].startswith("soft (KD from the teacher on each")
    assert rep["protocol"]["relabel"] == "online"
    with pytest.raises(ConfigError, match="needs soft=True and teacher"):
        dd.evaluate(out, str(tiny_npz), soft=True, relabel="online", **kw)
    with pytest.raises(ConfigError, match="unknown relabel"):
        dd.evaluate(out, str(tiny_npz), soft=True, teacher=teacher_file, relabel="bogus", **kw)


# ------------------------------------------------- the official SRe2L student recipe


def test_mixup_feeds_teacher_and_student_convex_pairs_of_the_batch():
    """fit(mixup=α): each training batch is λ·x + (1−λ)·x[perm], one λ per batch, and the
    teacher labels exactly that mixed batch. One-hot images make the check exact: a
    mixed row has at most two non-zero entries, which sum to 1."""
    from distill_data.train import TrainData, fit

    n = 8
    x = torch.eye(n).view(n, 1, 1, n)  # image i is the one-hot row i
    seen: list[torch.Tensor] = []

    class Spy(torch.nn.Module):
        def forward(self, batch):
            seen.append(batch.detach().clone())
            return torch.zeros(len(batch), 2)

    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(n, 2))
    fed: list[torch.Tensor] = []
    student.register_forward_pre_hook(lambda m, a: fed.append(a[0].detach().clone()))
    recipe = dataclasses.replace(
        get_recipe("sre2l"), epochs=3, batch_size=4, augment="none", temperature=30.0
    )
    fit(
        student,
        TrainData(x, torch.zeros(n, dtype=torch.long)),
        recipe,
        generator=torch.Generator().manual_seed(0),
        teacher=Spy(),
    )
    assert len(seen) == len(fed) == 6
    mixed_any = False
    for a, b in zip(seen, fed):
        assert torch.equal(a, b)
        rows = a.view(len(a), n)
        assert torch.allclose(rows.sum(1), torch.ones(len(a)))  # convex combinations
        assert int((rows > 0).sum(1).max()) <= 2  # of two images
        mixed_any |= bool((rows.max(1).values < 1 - 1e-6).any())
    assert mixed_any  # λ strictly inside (0, 1) for some row


def test_mixup_mixes_stored_logits_with_the_images_partners_and_lambda(monkeypatch):
    """fit(mixup=α, soft_targets=z) without a teacher (INFER's static labels): the target
    of mixed row λ·x_i + (1−λ)·x_j is λ·z_i + (1−λ)·z_j, the same λ and partner. Image i
    is the one-hot row i and z_i = 10·(one-hot i), so target = 10 × the student's input."""
    fit_mod = importlib.import_module("distill_data.train.fit")

    n = 8
    x = torch.eye(n).view(n, 1, 1, n)
    z = 10.0 * torch.eye(n)
    fed: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    real_kd = fit_mod.kd_loss

    def spy_kd(name, student, teacher, *args, **kwargs):
        targets.append(teacher.detach().clone())
        return real_kd(name, student, teacher, *args, **kwargs)

    monkeypatch.setattr(fit_mod, "kd_loss", spy_kd)
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(n, n))
    student.register_forward_pre_hook(lambda m, a: fed.append(a[0].detach().clone()))
    recipe = fit_mod.TrainRecipe(
        epochs=3, batch_size=4, augment="none", mix="mixup", mix_alpha=0.8, temperature=30.0
    )
    fit_mod.fit(
        student,
        fit_mod.TrainData(x, torch.zeros(n, dtype=torch.long), soft=z),
        recipe,
        generator=torch.Generator().manual_seed(0),
    )
    assert len(fed) == len(targets) == 6
    mixed_any = False
    for a, t in zip(fed, targets):
        rows = a.view(len(a), n)
        assert torch.allclose(t, 10.0 * rows, atol=1e-5)
        mixed_any |= bool((rows.max(1).values < 1 - 1e-6).any())
    assert mixed_any


def test_mixup_needs_labels_to_mix_and_options_are_checked():
    from distill_data.train import TrainData, TrainRecipe, fit

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    data = TrainData(torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long))
    mixing = TrainRecipe(epochs=1, augment="none", mix="mixup", mix_alpha=0.8)
    with pytest.raises(ValueError, match="mixup needs soft targets or a teacher"):
        fit(net, data, mixing, generator=torch.Generator())
    with pytest.raises(ConfigError, match="unknown optimizer"):
        TrainRecipe(optimizer="lamb")
    with pytest.raises(ConfigError, match="unknown schedule"):
        TrainRecipe(schedule="linear")


def test_kd_loss_without_t2_is_the_plain_kl():
    from distill_data.train.losses import hinton_kd as kd_loss

    s, t = torch.randn(5, 3), torch.randn(5, 3)
    assert float(kd_loss(s, t, 4.0, t2=False)) * 16 == pytest.approx(float(kd_loss(s, t, 4.0)))


def test_cosine_schedule_anneals_per_epoch(monkeypatch):
    """schedule="cosine": epoch e trains at lr·(1 + cos(π e / E)) / 2."""
    from distill_data.train import TrainData, fit

    lrs: list[float] = []
    real_step = torch.optim.AdamW.step

    def spy_step(self, *a, **k):
        lrs.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy_step)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    x, y = torch.randn(4, 1, 2, 2), torch.zeros(4, dtype=torch.long)
    recipe = dataclasses.replace(
        get_recipe("sre2l"), epochs=4, lr=1.0, augment="none", mix="none", mix_alpha=0.0
    )
    fit(net, TrainData(x, y), recipe, generator=torch.Generator())
    assert lrs == pytest.approx([0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])


def test_eval_sre2l_recipe_report_and_errors(sre2l_store, teacher_file, tiny_npz, run_cli):
    out = sre2l_store
    kw = {"runs": 1, "epochs": 2, "width": 8, "quiet": True}
    rep = _eval_online(out, tiny_npz, teacher_file, recipe="sre2l")
    p = rep["protocol"]
    assert (p["recipe"], p["optimizer"], p["lr"], p["mixup"], p["kd_t2"]) == (
        "sre2l",
        "AdamW",
        1e-3,
        0.8,
        False,
    )
    for part in ("synthetic", "random"):
        assert "mixed batch" in rep["results"][part]["labels"]
    assert "sre2l student recipe" in dd.evaluation.format_report(rep)
    with pytest.raises(ConfigError, match="needs soft=True, relabel=.online. and teacher="):
        dd.evaluate(out, str(tiny_npz), soft=True, teacher=teacher_file, recipe="sre2l", **kw)
    with pytest.raises(ConfigError, match="full-data baseline"):
        _eval_online(out, tiny_npz, teacher_file, baselines=["full"], recipe="sre2l")
    with pytest.raises(ConfigError, match="unknown recipe"):
        dd.evaluate(out, str(tiny_npz), recipe="fkd", **kw)
    code, _, stderr = run_cli("eval", out, "--dataset", tiny_npz, "--soft", "--recipe", "sre2l")
    assert code == 2 and stderr.strip().count("\n") == 0
    assert "--recipe sre2l distils from the teacher" in stderr
    assert "needs --soft, --relabel online and --teacher" in stderr


def test_eval_infer_recipe_stored_and_online(sre2l_store, teacher_file, tiny_npz, run_cli):
    """--recipe infer: INFER's student recipe (batch 64) with the stored logits mixed
    with the images (its static labeling), or the teacher on each mixed batch (+Dyn)."""
    out = sre2l_store
    kw = {"runs": 1, "epochs": 2, "width": 8, "quiet": True}
    rep = dd.evaluate(
        out,
        str(tiny_npz),
        soft=True,
        teacher=teacher_file,
        baselines=["random"],
        recipe="infer",
        **kw,
    )
    p = rep["protocol"]
    assert (p["recipe"], p["optimizer"], p["batch_size"], p["mixup"], p["kd_t2"]) == (
        "infer",
        "AdamW",
        64,
        0.8,
        False,
    )
    for part in ("synthetic", "random"):
        assert "stored logits, mixed as the images are" in rep["results"][part]["labels"]
    assert "infer student recipe" in dd.evaluation.format_report(rep)
    rep = _eval_online(out, tiny_npz, teacher_file, recipe="infer")
    assert "teacher on each augmented, mixed batch" in rep["results"]["synthetic"]["labels"]
    code, _, stderr = run_cli("eval", out, "--dataset", tiny_npz, "--recipe", "infer")
    assert code == 2 and stderr.strip().count("\n") == 0 and "needs --soft" in stderr


def test_random_view_translate_moves_like_roll_without_wrapping_around():
    """SRe2L's ``shift=translate``: the same random offset as the circular roll (same
    generator draws), the same pixels inside, and the border repeats the edge instead
    of the pixels that wrapped around."""
    from distill_data.synth.sre2l import random_view

    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    for seed in range(20):
        rolled = random_view(x, torch.Generator().manual_seed(seed), 2, False, 1.0)
        moved = random_view(
            x, torch.Generator().manual_seed(seed), 2, False, 1.0, shift="translate"
        )
        dy, dx = (
            int(v)
            for v in torch.randint(-2, 3, (2,), generator=torch.Generator().manual_seed(seed))
        )
        assert torch.equal(rolled, torch.roll(x, (dy, dx), (-2, -1)))
        rows = (torch.arange(6) - dy).clamp(0, 5)
        cols = (torch.arange(6) - dx).clamp(0, 5)
        assert torch.equal(moved, x[..., rows[:, None], cols[None, :]])
        inside = (slice(max(dy, 0), 6 + min(dy, 0)), slice(max(dx, 0), 6 + min(dx, 0)))
        assert torch.equal(moved[..., inside[0], inside[1]], rolled[..., inside[0], inside[1]])
    with pytest.raises(ConfigError, match="shift must be roll or translate"):
        from distill_data.synth.sre2l import SRe2LConfig

        SRe2LConfig(shift="wrap")
