"""Matching generators (DM, DataDAM, NCFM) and the FYI plug-in.

Golden values for every loss (torchdistill style) and the independent per-class numpy
references they were computed from; the exact-zero / positivity contract; CFD
permutation invariance; batched classes == per-class loop; ``real_chunk`` exactness;
FYI batches and siamese flips; NCFM's sampling network (gradient ascent), feature pool
cache and weight blending; seed determinism and state-dict resume.

Everything runs on 3 classes x 6 images of 10x10 with a width-8, depth-2 ConvNet.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import distill_data.synth.ncfm as ncfm_mod
from distill_data.config import make_config
from distill_data.data import RealDataset, make_real_dataset
from distill_data.errors import ConfigError
from distill_data.synth import GENERATORS
from distill_data.synth.datadam import datadam_loss, spatial_attention
from distill_data.synth.dm import dm_loss
from distill_data.synth.matching import class_means
from distill_data.synth.ncfm import NCFMConfig, cf_discrepancy, feature_pool

K, IPC, PER_CLASS = 3, 2, 6
TINY = {"width": 8, "depth": 2, "batch_real": 4}
NCFM_TINY = {
    **TINY,
    "pool_size": 1,
    "pretrain_epochs": 1,
    "num_freqs": 16,
    "sampler_freqs": 8,
    "sampler_hidden": 16,
    "calib_weight": 0.0,
    "dsa": False,
}
METHODS = ("dm", "datadam", "ncfm")


# ----------------------------------------------------------------------------- data


def tiny_data(channels: int = 1, seed: int = 0, same_per_class: bool = False) -> RealDataset:
    """3 classes x 6 train images of 10x10; ``same_per_class``: one image repeated per class."""
    rng = np.random.default_rng(seed)
    shape = (10, 10) if channels == 1 else (10, 10, channels)
    if same_per_class:
        protos = rng.integers(0, 256, (K, *shape), dtype=np.uint8)
        x_train = np.repeat(protos, PER_CLASS, axis=0)
    else:
        x_train = rng.integers(0, 256, (K * PER_CLASS, *shape), dtype=np.uint8)
    y_train = np.repeat(np.arange(K), PER_CLASS)
    x_test = rng.integers(0, 256, (K * 2, *shape), dtype=np.uint8)
    y_test = np.repeat(np.arange(K), 2)
    return make_real_dataset("tiny", x_train, y_train, x_test, y_test)


@pytest.fixture(scope="module")
def data1() -> RealDataset:
    return tiny_data(1)


@pytest.fixture(scope="module")
def data3() -> RealDataset:
    return tiny_data(3)


@pytest.fixture(scope="module")
def pool_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One NCFM pool cache for the module: each pool network is trained once."""
    return str(tmp_path_factory.mktemp("ncfm-pool"))


def make_gen(method: str, data: RealDataset, seed: int = 0, ipc: int = IPC, **opts):
    cls = GENERATORS.get(method)
    gen = cls(make_config(cls.Config, opts), data, ipc, seed=seed)
    gen.setup()
    return gen


def tiny_opts(method: str, pool_cache: str, **extra) -> dict:
    base = {**NCFM_TINY, "cache_dir": pool_cache} if method.startswith("ncfm") else dict(TINY)
    return {**base, **extra}


# ----------------------------------------------------------------------------- references
# Straightforward per-class float64 numpy versions of the docstring formulas. They do
# not call the library (the inputs are only converted), and use the angle form of the
# CFD phase term where the library uses real and imaginary parts.


def _mean_of(x, y, c) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return x[np.asarray(y) == c].mean(0)


def ref_dm(real_emb, real_y, syn_emb, syn_y, k) -> float:
    """Σ_c ||mean real_c − mean syn_c||² (DM Eq. 4)."""
    total = 0.0
    for c in range(k):
        total += float(((_mean_of(real_emb, real_y, c) - _mean_of(syn_emb, syn_y, c)) ** 2).sum())
    return total


def ref_attention(f, p) -> np.ndarray:
    """A(f) = Σ_channels |f_c|^p, flattened, L2-normalised per image."""
    out = []
    for img in np.asarray(f, dtype=np.float64):
        a = sum(np.abs(img[ch]) ** p for ch in range(img.shape[0])).reshape(-1)
        out.append(a / np.sqrt((a**2).sum()))
    return np.stack(out)


def ref_datadam(real_maps, real_emb, real_y, syn_maps, syn_emb, syn_y, k, p, lam=0.01) -> float:
    """L_SAM + λ·L_MMD (DataDAM Eq. 5), attention taken from raw feature maps."""
    total = 0.0
    for c in range(k):
        for fr, fs in zip(real_maps, syn_maps):
            diff = _mean_of(ref_attention(fr, p), real_y, c) - _mean_of(
                ref_attention(fs, p), syn_y, c
            )
            total += float((diff**2).sum())
        diff = _mean_of(real_emb, real_y, c) - _mean_of(syn_emb, syn_y, c)
        total += lam * float((diff**2).sum())
    return total


def ref_cfd(real_f, real_y, syn_f, syn_y, t, k, alpha=0.5, beta=0.5) -> float:
    """Σ_c mean_t sqrt(α(|Φ_T|−|Φ_S|)² + β·2|Φ_T||Φ_S|(1 − cos(θ_T − θ_S)))."""
    rf, sf, tt = (np.asarray(a, dtype=np.float64) for a in (real_f, syn_f, t))
    ry, sy = np.asarray(real_y), np.asarray(syn_y)
    total = 0.0
    for c in range(k):
        phi_t = np.exp(1j * rf[ry == c] @ tt.T).mean(0)
        phi_s = np.exp(1j * sf[sy == c] @ tt.T).mean(0)
        amp = (np.abs(phi_t) - np.abs(phi_s)) ** 2
        angle = np.angle(phi_t) - np.angle(phi_s)
        phase = 2 * np.abs(phi_t) * np.abs(phi_s) * (1 - np.cos(angle))
        total += float(np.sqrt(alpha * amp + beta * phase).mean())
    return total


def loss_inputs(seed: int = 1234, dtype: torch.dtype = torch.float32):
    """Fixed tiny inputs: unsorted labels, 7 real and 5 synthetic rows over 3 classes."""
    g = torch.Generator().manual_seed(seed)
    real_y = torch.tensor([2, 0, 1, 0, 2, 1, 1])
    syn_y = torch.tensor([1, 0, 2, 0, 2])
    real_emb = torch.randn(7, 6, generator=g)
    syn_emb = torch.randn(5, 6, generator=g)
    real_maps = [torch.randn(7, 3, 4, 4, generator=g), torch.randn(7, 3, 2, 2, generator=g)]
    syn_maps = [torch.randn(5, 3, 4, 4, generator=g), torch.randn(5, 3, 2, 2, generator=g)]
    t = torch.randn(5, 6, generator=g)
    conv = {
        "real_y": real_y,
        "syn_y": syn_y,
        "real_emb": real_emb.to(dtype),
        "syn_emb": syn_emb.to(dtype),
        "real_maps": [m.to(dtype) for m in real_maps],
        "syn_maps": [m.to(dtype) for m in syn_maps],
        "t": t.to(dtype),
    }
    conv["real_f"] = F.normalize(conv["real_emb"], dim=1)
    conv["syn_f"] = F.normalize(conv["syn_emb"], dim=1)
    return conv


def lib_dm(x) -> torch.Tensor:
    return dm_loss(x["real_emb"], x["real_y"], x["syn_emb"], x["syn_y"], K)


def lib_datadam(x, p, lam=0.01) -> torch.Tensor:
    ra = [spatial_attention(m, p) for m in x["real_maps"]]
    sa = [spatial_attention(m, p) for m in x["syn_maps"]]
    return datadam_loss(ra, x["real_emb"], x["real_y"], sa, x["syn_emb"], x["syn_y"], K, lam)


def lib_cfd(x, alpha=0.5, beta=0.5) -> torch.Tensor:
    return cf_discrepancy(x["real_f"], x["real_y"], x["syn_f"], x["syn_y"], x["t"], K, alpha, beta)


# ----------------------------------------------------------------------------- 1. golden values
# Computed once with the float64 references above on loss_inputs(1234); stored here so
# that numerical drift in the library (or the references) is caught.
GOLDEN_DM = 13.980182274946369
GOLDEN_DATADAM = {1: 1.1625060886376004, 4: 4.103722170203417}
GOLDEN_CFD = {(0.5, 0.5): 1.4451059348857571, (0.3, 0.7): 1.6089298241755745}


def test_golden_dm_loss() -> None:
    assert float(lib_dm(loss_inputs())) == pytest.approx(GOLDEN_DM, rel=1e-5)


@pytest.mark.parametrize("p", [1, 4])
def test_golden_datadam_loss(p: int) -> None:
    assert float(lib_datadam(loss_inputs(), p)) == pytest.approx(GOLDEN_DATADAM[p], rel=1e-5)


@pytest.mark.parametrize("alpha,beta", [(0.5, 0.5), (0.3, 0.7)])
def test_golden_cf_discrepancy(alpha: float, beta: float) -> None:
    value = float(lib_cfd(loss_inputs(), alpha, beta))
    assert value == pytest.approx(GOLDEN_CFD[alpha, beta], rel=1e-5)


@pytest.mark.parametrize("seed", [1234, 99])
def test_references_match_library(seed: int) -> None:
    """The live check behind the golden numbers (and a second input draw)."""
    x = loss_inputs(seed)
    args = (x["real_y"], x["syn_y"])
    dm = ref_dm(x["real_emb"], args[0], x["syn_emb"], args[1], K)
    assert float(lib_dm(x)) == pytest.approx(dm, rel=1e-5)
    for p in (1, 4):
        dam = ref_datadam(
            x["real_maps"], x["real_emb"], args[0], x["syn_maps"], x["syn_emb"], args[1], K, p
        )
        assert float(lib_datadam(x, p)) == pytest.approx(dam, rel=1e-5)
        dam_lam = ref_datadam(
            x["real_maps"], x["real_emb"], args[0], x["syn_maps"], x["syn_emb"], args[1], K, p, 3.0
        )
        assert float(lib_datadam(x, p, lam=3.0)) == pytest.approx(dam_lam, rel=1e-5)
    for alpha, beta in [(0.5, 0.5), (0.3, 0.7), (1.0, 0.0)]:
        cfd = ref_cfd(x["real_f"], args[0], x["syn_f"], args[1], x["t"], K, alpha, beta)
        assert float(lib_cfd(x, alpha, beta)) == pytest.approx(cfd, rel=1e-5)
    if seed == 1234:  # the stored literals are what the references give
        ry, sy = args
        assert dm == pytest.approx(GOLDEN_DM, rel=1e-12)
        for p, golden in GOLDEN_DATADAM.items():
            ref = ref_datadam(
                x["real_maps"], x["real_emb"], ry, x["syn_maps"], x["syn_emb"], sy, K, p
            )
            assert ref == pytest.approx(golden, rel=1e-12)
        for (alpha, beta), golden in GOLDEN_CFD.items():
            ref = ref_cfd(x["real_f"], ry, x["syn_f"], sy, x["t"], K, alpha, beta)
            assert ref == pytest.approx(golden, rel=1e-12)


def test_spatial_attention_matches_reference() -> None:
    x = loss_inputs()
    for p in (1, 2, 4):
        got = spatial_attention(x["real_maps"][0], p)
        assert got.shape == (7, 16)
        np.testing.assert_allclose(got.numpy(), ref_attention(x["real_maps"][0], p), rtol=1e-5)


@pytest.mark.parametrize("p", [2, 4])
def test_spatial_attention_slabwise_gradient(p: int) -> None:
    """The slab-wise power sum (forward without and with autograd, and its hand-written
    backward) equals autograd through |f|^p, across a batch longer than one slab."""
    g = torch.Generator().manual_seed(3)
    f = torch.randn(19, 5, 4, 3, generator=g, dtype=torch.float64)
    ref_in = f.clone().requires_grad_(True)
    ref = F.normalize(ref_in.abs().pow(p).sum(1).flatten(1), dim=1)
    w = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    (ref * w).sum().backward()
    got_in = f.clone().requires_grad_(True)
    got = spatial_attention(got_in, p)
    (got * w).sum().backward()
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(got_in.grad, ref_in.grad, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(spatial_attention(f, p), ref.detach(), rtol=1e-12, atol=0)
    small = f[:10].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: spatial_attention(t, p), (small,))


def test_losses_keep_float64_precision() -> None:
    """float64 inputs must give float64 losses (gradchecks, references, golden fixtures).

    ``class_means``/``spatial_attention``/``empirical_cf`` call ``.float()`` to *upcast*
    bf16 under autocast, which also silently *downcasts* float64 to float32.
    """
    x = loss_inputs(dtype=torch.float64)
    assert class_means(x["real_emb"], x["real_y"], K).dtype == torch.float64
    assert spatial_attention(x["real_maps"][0], 4).dtype == torch.float64
    assert lib_dm(x).dtype == torch.float64
    assert lib_datadam(x, 4).dtype == torch.float64
    assert lib_cfd(x).dtype == torch.float64
    cfd = ref_cfd(x["real_f"], x["real_y"], x["syn_f"], x["syn_y"], x["t"], K)
    assert float(lib_cfd(x)) == pytest.approx(cfd, rel=1e-10)


# ----------------------------------------------------------------------------- 2. zero iff equal


def _perturbed(t: torch.Tensor) -> torch.Tensor:
    out = t.clone()
    out.view(-1)[0] += 0.5
    return out


def test_dm_loss_zero_iff_equal() -> None:
    x = loss_inputs()
    e, y = x["real_emb"], x["real_y"]
    assert float(dm_loss(e, y, e.clone(), y, K)) == 0.0
    assert float(dm_loss(e, y, _perturbed(e), y, K)) > 0.0


@pytest.mark.parametrize("p", [1, 4])
def test_datadam_loss_zero_iff_equal(p: int) -> None:
    x = loss_inputs()
    e, y = x["real_emb"], x["real_y"]
    maps = x["real_maps"]
    attn = [spatial_attention(m, p) for m in maps]
    same = [spatial_attention(m.clone(), p) for m in maps]
    assert float(datadam_loss(attn, e, y, same, e.clone(), y, K)) == 0.0
    # a change in the attention maps only, and in the embedding only, both show
    moved = [spatial_attention(_perturbed(maps[0]), p), same[1]]
    assert float(datadam_loss(attn, e, y, moved, e, y, K)) > 0.0
    assert float(datadam_loss(attn, e, y, same, _perturbed(e), y, K)) > 0.0


def test_cf_discrepancy_floor_when_equal_float64() -> None:
    """Equal per-class sets: the amplitude term is exactly 0 and the phase term is
    2·(|Φ|² + 1e-12 − |Φ|²) = 2e-12 (the 1e-12 inside each modulus), so every class
    contributes sqrt(β·2e-12) = 1e-6 for β = 0.5: the loss is K·1e-6, not 0. In
    float64 nothing else is left; the floor is the clamps' and eps' doing."""
    x = loss_inputs(dtype=torch.float64)
    f, y, t = x["real_f"], x["real_y"], x["t"]
    value = float(cf_discrepancy(f, y, f.clone(), y, t, K))
    assert value <= K * 1e-6 * (1 + 1e-3)
    assert float(cf_discrepancy(f, y, F.normalize(_perturbed(f), dim=1), y, t, K)) > 1e-3


def test_cf_discrepancy_floor_when_equal_float32() -> None:
    """In float32 the phase term 2(|Φ_T||Φ_S| − Re·Re − Im·Im) of equal sets is a
    cancellation of O(1) numbers, ~2^-23·|Φ|² instead of 0, so each (class, t) term can
    reach sqrt(β·2·2^-22); the loss at equality is bounded by K times that (~1.5e-3),
    far below any real mismatch."""
    x = loss_inputs()
    f, y, t = x["real_f"], x["real_y"], x["t"]
    bound = K * (0.5 * 2 * 2.0**-22) ** 0.5
    assert float(cf_discrepancy(f, y, f.clone(), y, t, K)) <= bound
    assert float(cf_discrepancy(f, y, F.normalize(_perturbed(f), dim=1), y, t, K)) > 10 * bound


# ----------------------------------------------------------------------------- 3. permutations


def test_cf_discrepancy_invariant_to_sample_order_and_interleaving() -> None:
    g = torch.Generator().manual_seed(5)
    real_y = torch.arange(K).repeat_interleave(5)  # grouped by class
    syn_y = torch.arange(K).repeat_interleave(2)
    real_f = F.normalize(torch.randn(len(real_y), 8, generator=g), dim=1)
    syn_f = F.normalize(torch.randn(len(syn_y), 8, generator=g), dim=1)
    t = torch.randn(16, 8, generator=g)
    base = cf_discrepancy(real_f, real_y, syn_f, syn_y, t, K)
    for _ in range(3):
        pr = torch.randperm(len(real_y), generator=g)  # interleaves the classes
        ps = torch.randperm(len(syn_y), generator=g)
        assert (real_y[pr][:-1] != real_y[pr][1:]).any()
        perm = cf_discrepancy(real_f[pr], real_y[pr], syn_f[ps], syn_y[ps], t, K)
        assert float(perm) == pytest.approx(float(base), rel=1e-5)
    # the pairing of rows with labels matters: shuffling labels alone changes the value
    shuffled = cf_discrepancy(real_f, real_y[torch.randperm(15, generator=g)], syn_f, syn_y, t, K)
    assert float(shuffled) != pytest.approx(float(base), rel=1e-3)


# ----------------------------------------------------------------------------- 4. batching


def _per_class_loss(gen, method: str, net, real, real_y, syn, syn_y, t) -> torch.Tensor:
    """Sum over classes of the loss of each class alone, each run through ``net`` alone."""
    cfg = gen.config
    total = torch.zeros(())
    for c in range(K):
        rc, sc = real[real_y == c], syn[syn_y == c]
        if method == "dm":
            with torch.no_grad():
                er = net.embed(rc)
            total = total + ((er.mean(0) - net.embed(sc).mean(0)) ** 2).sum()
        elif method == "datadam":
            with torch.no_grad():
                acts_r, er = net.block_activations(rc)
            acts_s, es = net.block_activations(sc)
            term = cfg.lam * ((er.mean(0) - es.mean(0)) ** 2).sum()
            for ar, as_ in zip(acts_r[:-1], acts_s[:-1]):
                diff = spatial_attention(ar, cfg.p).mean(0) - spatial_attention(as_, cfg.p).mean(0)
                term = term + (diff**2).sum()
            total = total + cfg.loss_scale * term
        else:
            with torch.no_grad():
                fr = F.normalize(net.embed(rc), dim=1)
            fs = F.normalize(net.embed(sc), dim=1)
            zr, zs = torch.zeros(len(fr), dtype=torch.long), torch.zeros(len(fs), dtype=torch.long)
            total = total + cfg.loss_scale * cf_discrepancy(
                fr, zr, fs, zs, t, 1, cfg.alpha, cfg.beta
            )
    return total


@pytest.mark.parametrize("method", METHODS)
def test_batched_classes_equal_per_class_loop(method: str, data1, pool_cache) -> None:
    gen = make_gen(method, data1, **tiny_opts(method, pool_cache, dsa=True))
    # float64 throughout, so the check is about batching, not float32 summation order
    # (NCFM's sqrt near its clamp amplifies the latter)
    net = gen.make_net().double()
    real, real_y, syn, syn_y = gen.sample_batches()  # fixed augmented batches
    real, syn = real.double(), syn.double()
    t = None
    if method == "ncfm":
        t = torch.randn(12, gen.feat_dim, generator=torch.Generator().manual_seed(0))
        t = t.double()
        gen.frequencies = lambda: t  # the same frequencies for both computations
    leaf = syn.detach().clone().requires_grad_(True)
    batched = gen.match(net, real, real_y, leaf, syn_y)
    (g_batched,) = torch.autograd.grad(batched, leaf)
    looped = _per_class_loss(gen, method, net, real, real_y, leaf, syn_y, t)
    (g_looped,) = torch.autograd.grad(looped, leaf)
    assert batched.dtype == torch.float64
    assert float(batched.detach()) > 0
    assert float(batched.detach()) == pytest.approx(float(looped.detach()), rel=1e-10)
    torch.testing.assert_close(g_batched, g_looped, rtol=1e-9, atol=1e-12)
    assert g_batched.abs().sum() > 0


@pytest.mark.parametrize("method", METHODS)
def test_real_chunk_does_not_change_result(method: str, data1, pool_cache) -> None:
    gen = make_gen(method, data1, **tiny_opts(method, pool_cache, real_chunk=0))
    net = gen.make_net()
    real, real_y, syn, syn_y = gen.sample_batches()
    assert len(real) == K * TINY["batch_real"]
    if method == "ncfm":
        t = torch.randn(12, gen.feat_dim, generator=torch.Generator().manual_seed(0))
        gen.frequencies = lambda: t
    one_pass = gen.embed_real(net.embed, real)
    one_tuple = gen.embed_real(lambda x: net.block_activations(x)[0] + [net.embed(x)], real)
    loss_one = gen.match(net, real, real_y, syn, syn_y)
    gen.config = dataclasses.replace(gen.config, real_chunk=5)  # chunks of 5, 5, 2
    chunked = gen.embed_real(net.embed, real)
    chunked_tuple = gen.embed_real(lambda x: net.block_activations(x)[0] + [net.embed(x)], real)
    loss_chunked = gen.match(net, real, real_y, syn, syn_y)
    torch.testing.assert_close(chunked, one_pass, rtol=1e-5, atol=1e-6)
    assert len(chunked_tuple) == len(one_tuple)
    for a, b in zip(chunked_tuple, one_tuple):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert float(loss_chunked.detach()) == pytest.approx(float(loss_one.detach()), rel=1e-5)


def test_real_chunk_does_not_change_result_with_batchnorm(data1) -> None:
    """MatchingConfig says ``real_chunk`` is "a memory cap that does not change the
    result"; with ``model=convnet_bn`` (the net in train mode, so BatchNorm uses the
    statistics of each forward batch) chunking the real pass changes the embeddings."""
    gen = make_gen("dm", data1, **TINY, model="convnet_bn", real_chunk=0)
    net = gen.make_net()
    real = gen.sample_batches()[0]
    one_pass = gen.embed_real(net.embed, real)
    gen.config = dataclasses.replace(gen.config, real_chunk=5)
    torch.testing.assert_close(gen.embed_real(net.embed, real), one_pass, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- 5. FYI


def _rows_of(x: torch.Tensor, y: torch.Tensor, c: int) -> torch.Tensor:
    return x[y == c]


def test_fyi_batches_without_dsa_are_images_and_their_flips(data3) -> None:
    gen = make_gen("dm", data3, **TINY, fyi=True, dsa=False)
    real, real_y, syn, syn_y = gen.sample_batches()
    stored = gen.result()[0]
    assert stored.shape == (K * IPC, 3, 10, 10)
    for c in range(K):
        rows = _rows_of(syn, syn_y, c).detach()
        assert len(rows) == 2 * IPC
        torch.testing.assert_close(rows[:IPC], stored[c * IPC : (c + 1) * IPC], rtol=0, atol=0)
        torch.testing.assert_close(rows[IPC:], torch.flip(rows[:IPC], dims=[-1]), rtol=0, atol=0)
        assert len(_rows_of(real, real_y, c)) == TINY["batch_real"]  # real is not doubled
    # without DSA the real rows are un-augmented training images
    pool = gen.real.flatten(1)
    for row in real.flatten(1):
        assert (pool == row).all(1).any()


def test_fyi_flip_is_siamese(data3) -> None:
    """Each class holds one repeated image X, so the synthetic images start equal to the
    real ones. With only the FYI flip active, real row i and synthetic row i share flip
    i: the first ipc synthetic rows equal the real rows, the second ipc (made from
    hflip(S)) equal their mirror images."""
    data = tiny_data(3, seed=4, same_per_class=True)
    gen = make_gen(
        "dm+fyi", data, **{**TINY, "batch_real": 6}, dsa_strategy="flip", siamese="sample"
    )
    assert gen.flip is not None and not gen.dsa.enabled  # flip left the DSA pool
    real, real_y, syn, syn_y = gen.sample_batches()
    syn = syn.detach()
    flipped_seen, plain_seen = False, False
    for c in range(K):
        x = gen.real[gen.real_by_class[c][0]]
        r, s = _rows_of(real, real_y, c), _rows_of(syn, syn_y, c)
        assert len(r) == 6 and len(s) == 2 * IPC
        torch.testing.assert_close(s[:IPC], r[:IPC], rtol=0, atol=0)
        torch.testing.assert_close(s[IPC:], r[IPC : 2 * IPC].flip(-1), rtol=0, atol=0)
        for row in r:
            plain_seen |= bool(torch.equal(row, x))
            flipped_seen |= bool(torch.equal(row, x.flip(-1)))
            assert torch.equal(row, x) or torch.equal(row, x.flip(-1))
    assert plain_seen and flipped_seen  # the flip really is random per row

    # the full default strategy: flip first, then one DSA op, all shared row by row
    gen = make_gen("dm+fyi", data, **{**TINY, "batch_real": 6}, seed=1, siamese="sample")
    assert "flip" not in gen.dsa.strategy.split("_") and gen.dsa.enabled
    for _ in range(3):
        real, real_y, syn, syn_y = gen.sample_batches()
        for c in range(K):
            r, s = _rows_of(real, real_y, c), _rows_of(syn, syn_y, c).detach()
            torch.testing.assert_close(s[:IPC], r[:IPC], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["dm", "dm+fyi"])
def test_siamese_batch_gives_a_whole_class_one_transform(method: str) -> None:
    """Official DSA seeding (``DiffAugment(..., seed=s)`` sets ``batchmode``): every real
    and synthetic image of a class gets the same transform. Each class holds one
    repeated image X and the synthetic images start as X, so with ``siamese=batch``
    all of a class's rows are equal after augmentation (and so are the copies made from
    FYI's hflip(S)); with ``sample`` they are not."""
    data = tiny_data(1, seed=5, same_per_class=True)
    opts = {**TINY, "batch_real": 6}
    gen = make_gen(method, data, **opts, seed=2)
    assert gen.config.siamese == "batch" and gen.dsa.batchmode
    transformed = 0
    for _ in range(4):
        real, real_y, syn, syn_y = gen.sample_batches()
        syn = syn.detach()
        for c in range(K):
            r, s = _rows_of(real, real_y, c), _rows_of(syn, syn_y, c)
            torch.testing.assert_close(r, r[:1].expand_as(r), rtol=0, atol=0)
            torch.testing.assert_close(s[:IPC], r[:IPC], rtol=1e-6, atol=1e-6)
            if method == "dm+fyi":  # T(hflip(X)), the same for every copy
                torch.testing.assert_close(s[IPC:], s[IPC:][:1].expand_as(s[IPC:]), rtol=0, atol=0)
            transformed += not torch.equal(r[0], gen.real[gen.real_by_class[c][0]])
    assert transformed > 0  # the transforms are not identities

    per_sample = make_gen(method, data, **opts, seed=2, siamese="sample")
    differ = False
    for _ in range(4):
        real, real_y, _, _ = per_sample.sample_batches()
        for c in range(K):
            r = _rows_of(real, real_y, c)
            differ |= not torch.equal(r, r[:1].expand_as(r))
    assert differ


def test_siamese_option_is_checked() -> None:
    with pytest.raises(ConfigError, match="siamese must be one of batch, sample"):
        make_config(GENERATORS.get("dm").Config, {"siamese": "pairs"})


@pytest.mark.parametrize("method", METHODS)
def test_fyi_method_names(method: str, data1, pool_cache) -> None:
    base, fyi = GENERATORS.get(method), GENERATORS.get(f"{method}+fyi")
    assert issubclass(fyi, base)
    assert fyi.Config().fyi is True and base.Config().fyi is False
    assert issubclass(fyi.Config, base.Config)
    gen = make_gen(f"{method}+fyi", data1, **tiny_opts(method, pool_cache))
    assert gen.config.fyi is True
    _, _, syn, _ = gen.sample_batches()
    assert len(syn) == 2 * K * IPC
    gen.step(0)
    images, labels, _ = gen.result()
    assert images.shape == (K * IPC, 1, 10, 10)  # stored set is not doubled
    assert torch.bincount(labels, minlength=K).tolist() == [IPC] * K


# ----------------------------------------------------------------------------- 6. NCFM sampler


def test_ncfm_sampler_ascends_the_discrepancy(data1, pool_cache) -> None:
    gen = make_gen("ncfm", data1, **NCFM_TINY, cache_dir=pool_cache, frequencies="sampler")
    cfg, sampler = gen.config, gen.sampler
    ref = copy.deepcopy(sampler)  # θ0, buffers included
    theta0 = [p.detach().clone() for p in sampler.parameters()]
    seen: dict = {}

    forward = sampler.forward

    def spy_forward(noise):
        seen["noise"] = noise.clone()
        return forward(noise)

    match = gen.match

    def spy_match(net, real, real_y, syn, syn_y):
        seen.update(net=net, real=real, real_y=real_y, syn=syn.detach().clone(), syn_y=syn_y)
        return match(net, real, real_y, syn, syn_y)

    after = gen.after_backward

    def spy_after():
        seen["grad"] = [p.grad.clone() for p in sampler.parameters()]
        after()
        seen["stored"] = [p.grad.clone() for p in sampler.parameters()]

    sampler.forward, gen.match, gen.after_backward = spy_forward, spy_match, spy_after
    gen.step(0)

    # the gradient the optimiser sees is minus the gradient of the loss ...
    for g, s in zip(seen["grad"], seen["stored"]):
        assert torch.equal(s, -g)
    # ... and the loss's gradient is scale · ∇_ψ CFD with the step's features held fixed
    net = seen["net"]
    with torch.no_grad():
        rf = F.normalize(net.embed(seen["real"]), dim=1)
        sf = F.normalize(net.embed(seen["syn"]), dim=1)

    def cfd(module) -> torch.Tensor:
        t = module(seen["noise"])
        return cf_discrepancy(rf, seen["real_y"], sf, seen["syn_y"], t, K, cfg.alpha, cfg.beta)

    grads = torch.autograd.grad(cfg.loss_scale * cfd(ref), list(ref.parameters()))
    for a, b in zip(grads, seen["grad"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert sum(float(g.abs().sum()) for g in grads) > 0

    # the update is the first momentum-SGD step along +∇ (ascent) ...
    theta1 = [p.detach().clone() for p in sampler.parameters()]
    for p0, p1, g in zip(theta0, theta1, grads):
        step = cfg.lr_sampler * g
        # p1 - p0 cancels float32 digits: allow rounding of p0 (biases before BatchNorm
        # have a ~0 gradient, so their step is pure rounding)
        atol = 1e-4 * float(step.abs().max()) + 1.2e-7 * float(p0.abs().max())
        torch.testing.assert_close(p1 - p0, step, rtol=1e-3, atol=atol)
    # ... and it raises the discrepancy, as does a small step along the stored direction
    before = float(cfd(ref).detach())
    moved = copy.deepcopy(ref)
    with torch.no_grad():
        for p, p1 in zip(moved.parameters(), theta1):
            p.copy_(p1)
    assert float(cfd(moved).detach()) > before
    norm = sum(float((g**2).sum()) for g in grads) ** 0.5
    with torch.no_grad():
        for p, p0, s in zip(moved.parameters(), theta0, seen["stored"]):
            p.copy_(p0 - 1e-3 * s / norm)  # SGD direction: minus the stored gradient
    assert float(cfd(moved).detach()) > before


def test_ncfm_gaussian_frequencies(data1, pool_cache) -> None:
    opts = {**NCFM_TINY, "num_freqs": 12}
    gen = make_gen("ncfm", data1, **opts, cache_dir=pool_cache, frequencies="gaussian")
    assert gen.sampler is None
    assert len(gen.optimizers) == 1
    t = gen.frequencies()
    assert t.shape == (12, gen.feat_dim)
    assert not torch.equal(t, gen.frequencies())  # fresh draws each call
    assert "sampler" not in gen.state_dict()
    assert np.isfinite(gen.step(0))


def test_ncfm_clamp_keeps_pixels_in_the_image_range(data1, pool_cache) -> None:
    """Official NCFM clamps pixels to [0, 1] every iteration; Adam at a large rate would
    otherwise push them out (here: without the clamp they leave the range)."""
    lo, hi = (float(data1.normalize(torch.tensor(v).view(1, 1, 1, 1))) for v in (0.0, 1.0))
    for clamp in (True, False):
        gen = make_gen("ncfm", data1, **NCFM_TINY, cache_dir=pool_cache, lr_img=5.0, clamp=clamp)
        for i in range(3):
            gen.step(i)
        images = gen.result()[0]
        inside = bool(images.min() >= lo - 1e-6 and images.max() <= hi + 1e-6)
        assert inside == clamp, (clamp, float(images.min()), float(images.max()), lo, hi)


def test_ncfm_calibration_is_a_per_class_mean_summed_over_classes(data1, pool_cache) -> None:
    """As the official per-class calibration steps: Σ_c mean_{i in c} CE(θ₁(S_i), c),
    on the same footing as the CFD summed over classes."""
    losses = {}
    for w in (0.0, 2.0):
        gen = make_gen("ncfm", data1, **{**NCFM_TINY, "calib_weight": w}, cache_dir=pool_cache)
        net = gen.make_net()
        real, real_y, syn, syn_y = gen.sample_batches()
        t = gen.frequencies()
        gen.frequencies = lambda t=t: t
        losses[w] = float(gen.match(net, real, real_y, syn, syn_y).detach())
    with torch.no_grad():
        ce = F.cross_entropy(gen._calib_net(syn), syn_y, reduction="none")
    per_class = sum(float(ce[syn_y == c].mean()) for c in range(data1.num_classes))
    assert losses[2.0] - losses[0.0] == pytest.approx(2.0 * per_class, rel=1e-4)


def test_ncfm_defaults_are_the_released_configs() -> None:
    cfg = make_config(NCFMConfig, {})
    assert (cfg.frequencies, cfg.num_freqs, cfg.batch_real, cfg.clamp) == (
        "gaussian",
        4096,
        1024,
        True,
    )
    assert (cfg.pool_size, cfg.pretrain_epochs, cfg.lr_img, cfg.loss_scale) == (20, 60, 0.01, 300)
    assert (cfg.alpha, cfg.beta, cfg.calib_weight, cfg.weight_decay) == (0.5, 0.5, 1.0, 5e-4)
    assert (cfg.pretrain_lr, cfg.pretrain_batch, cfg.iterations) == (0.01, 128, 20000)


def test_dm_and_datadam_defaults_are_the_documented_ones() -> None:
    """The defaults the module docstrings choose (paper or code, each documented): the
    reference loss in test_batched_classes_equal_per_class_loop reads them from the config,
    so only this pins them."""
    dm = make_config(GENERATORS.get("dm").Config, {})
    assert (dm.lr_img, dm.momentum, dm.batch_real, dm.iterations) == (1.0, 0.5, 256, 20000)
    assert (dm.width, dm.depth, dm.init, dm.dsa) == (128, 3, "real", True)
    dam = make_config(GENERATORS.get("datadam").Config, {})
    assert (dam.p, dam.lam, dam.loss_scale) == (4.0, 0.01, 100.0)  # paper p, code's 100x
    assert (dam.iterations, dam.batch_real, dam.lr_img, dam.momentum) == (8000, 64, 1.0, 0.5)


# ----------------------------------------------------------------------------- 7. NCFM pool


def test_ncfm_pool_is_cached(data1, tmp_path, monkeypatch) -> None:
    cfg = make_config(NCFMConfig, {**NCFM_TINY, "pool_size": 2, "cache_dir": str(tmp_path)})
    first = feature_pool(cfg, data1, 3, torch.device("cpu"))
    assert len(first) == 2 and len(list(tmp_path.rglob("*.pt"))) == 4
    init, trained = first[0]
    assert any(not torch.equal(init[k], trained[k]) for k in init)  # it was trained

    def no_training(*args, **kwargs):
        raise AssertionError("feature_pool trained a network that is cached")

    monkeypatch.setattr(ncfm_mod, "fit", no_training)
    second = feature_pool(cfg, data1, 3, torch.device("cpu"))
    assert len(second) == len(first)
    for pair1, pair2 in zip(first, second):
        for s1, s2 in zip(pair1, pair2):
            assert s1.keys() == s2.keys()
            for k in s1:
                assert torch.equal(s1[k], s2[k]), k
    with pytest.raises(AssertionError, match="trained a network"):
        feature_pool(cfg, data1, 4, torch.device("cpu"))  # another seed: another pool


def test_ncfm_pool_members_train_the_same_networks(data1, tmp_path) -> None:
    """Workers that each train some members (bench/ncfm_pool.py) fill the cache with
    the networks one process would have trained: member i depends on (seed, i) alone."""
    opts = {**NCFM_TINY, "pool_size": 3}
    one = make_config(NCFMConfig, {**opts, "cache_dir": str(tmp_path / "one")})
    whole = feature_pool(one, data1, 3, torch.device("cpu"))
    cfg = make_config(NCFMConfig, {**opts, "cache_dir": str(tmp_path / "workers")})
    odd = feature_pool(cfg, data1, 3, torch.device("cpu"), members=[1])
    assert len(odd) == 1 and len(list((tmp_path / "workers").rglob("*.pt"))) == 2
    for s1, s2 in zip(whole[1], odd[0]):
        for k in s1:
            assert torch.equal(s1[k], s2[k]), k
    with pytest.raises(ConfigError, match="pool member 3"):
        feature_pool(cfg, data1, 3, torch.device("cpu"), members=[3])


def test_ncfm_make_net_blends_initial_and_trained_weights(data1, pool_cache) -> None:
    gen = make_gen("ncfm", data1, **{**NCFM_TINY, "pool_size": 2}, cache_dir=pool_cache)
    state = gen.rng.get_state()
    net = gen.make_net()
    replay = torch.Generator()
    replay.set_state(state)
    i = int(torch.randint(len(gen.pool), (1,), generator=replay))
    lam = float(torch.rand((), generator=replay))
    init, trained = gen.pool[i]
    got = net.state_dict()
    key = "features.0.weight"
    assert not torch.equal(init[key], trained[key])
    torch.testing.assert_close(got[key], lam * init[key] + (1 - lam) * trained[key])
    for k, v in trained.items():
        if v.is_floating_point():
            torch.testing.assert_close(got[k], lam * init[k] + (1 - lam) * v)
        assert torch.equal(gen._calib_net.state_dict()[k], v)  # calibration: θ1 itself
    assert not any(p.requires_grad for p in net.parameters())


# ----------------------------------------------------------------------------- 8. determinism


def _run(gen, steps: range) -> None:
    for it in steps:
        gen.step(it)


@pytest.mark.parametrize("method", [*METHODS, "ncfm-sampler"])
def test_same_seed_same_images_and_resume(method: str, data1, pool_cache) -> None:
    sampler = method == "ncfm-sampler"  # the sampling network's weights and momentum too
    method = "ncfm" if sampler else method
    opts = tiny_opts(method, pool_cache)
    if method == "ncfm":
        opts["calib_weight"] = 1.0  # also exercise the calibration term
    if sampler:
        opts.update(frequencies="sampler", sampler_freqs=4, sampler_hidden=8)
    a = make_gen(method, data1, seed=7, **opts)
    _run(a, range(3))
    b = make_gen(method, data1, seed=7, **opts)
    _run(b, range(3))
    assert torch.equal(a.result()[0], b.result()[0])
    other = make_gen(method, data1, seed=8, **opts)
    _run(other, range(3))
    assert not torch.equal(a.result()[0], other.result()[0])

    # resume through state_dict + rng state, as the build loop's checkpoint does
    part = make_gen(method, data1, seed=7, **opts)
    _run(part, range(1))
    state = copy.deepcopy(part.state_dict())
    rng = part.rng.get_state()
    resumed = make_gen(method, data1, seed=7, **opts)
    resumed.load_state_dict(state)
    resumed.rng.set_state(rng)
    _run(resumed, range(1, 3))
    assert torch.equal(resumed.result()[0], a.result()[0])
    if sampler:
        assert resumed.sampler is not None
        want = a.sampler.state_dict()
        assert all(torch.equal(v, want[k]) for k, v in resumed.sampler.state_dict().items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", METHODS)
def test_match_on_cuda_equals_cpu(method: str, data1, pool_cache, monkeypatch) -> None:
    """The same batches and network give the same loss and pixel gradient on a GPU."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 convs, as on CPU
    opts = tiny_opts(method, pool_cache, dsa=True)
    cpu = make_gen(method, data1, **opts)
    gpu = make_gen(method, data1, **opts)
    gpu.device = torch.device("cuda")
    net = cpu.make_net()
    real, real_y, syn, syn_y = cpu.sample_batches()
    if method == "ncfm":
        t = torch.randn(12, cpu.feat_dim, generator=torch.Generator().manual_seed(0))
        cpu.frequencies = lambda: t
        gpu.frequencies = lambda: t.cuda()
    leaf = syn.detach().clone().requires_grad_(True)
    loss = cpu.match(net, real, real_y, leaf, syn_y)
    (grad,) = torch.autograd.grad(loss, leaf)
    leaf_g = syn.detach().cuda().requires_grad_(True)
    loss_g = gpu.match(copy.deepcopy(net).cuda(), real.cuda(), real_y.cuda(), leaf_g, syn_y.cuda())
    (grad_g,) = torch.autograd.grad(loss_g, leaf_g)
    assert loss_g.device.type == "cuda"
    assert float(loss_g) == pytest.approx(float(loss), rel=1e-4)
    scale = float(grad.abs().max())
    torch.testing.assert_close(grad_g.cpu(), grad, rtol=1e-3, atol=1e-4 * scale)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["dm", "datadam", "ncfm", "dm+fyi"])
def test_iteration_on_cuda_never_waits_for_the_gpu(method: str, data1, pool_cache) -> None:
    """Inside an iteration (fresh net, batches with DSA, loss, backward, pixel step) no
    operation synchronises host and GPU; only reading the loss value at the end does.
    Per-class host-to-device copies made a GPU iteration as slow as a CPU one."""
    cls = GENERATORS.get(method)
    cfg = make_config(cls.Config, tiny_opts(method, pool_cache, dsa=True))
    gen = cls(cfg, data1, IPC, seed=0, device="cuda")
    gen.setup()
    gen.step(0)  # warm-up: first-use allocations
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        net = gen.make_net()
        real, real_y, syn, syn_y = gen.sample_batches()
        loss = gen.match(net, real, real_y, syn, syn_y)
        for opt in gen.optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in gen.optimizers:
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss).item()
