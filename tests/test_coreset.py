"""Coreset generators: random, herding and k-center against brute-force references,
feature models from files, and the settings they refuse.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import distill_data
from distill_data.config import make_config
from distill_data.data import load_dataset
from distill_data.errors import ConfigError
from distill_data.models import build_model, save_model
from distill_data.synth import GENERATORS
from distill_data.synth.coreset import FeatureCoresetConfig, Herding, KCenter, RandomSubset


@pytest.fixture
def data(tiny_npz):
    return load_dataset(tiny_npz)


def chosen_per_class(gen) -> list[list[int]]:
    """Training indices the generator chose, grouped by class (in pick order)."""
    y = gen.data.y_train[gen.indices]
    return [gen.indices[y == c].tolist() for c in range(gen.data.num_classes)]


# --------------------------------------------------------------------------- random


def test_random_is_balanced_without_replacement_and_seeded(data) -> None:
    def pick(seed: int, ipc: int = 4) -> RandomSubset:
        gen = RandomSubset(RandomSubset.Config(), data, ipc, seed=seed)
        gen.setup()
        return gen

    gen = pick(0)
    per_class = chosen_per_class(gen)
    for c, idx in enumerate(per_class):
        assert len(idx) == 4 and len(set(idx)) == 4  # balanced, no repeats
        assert all(int(data.y_train[i]) == c for i in idx)
    x, y, soft = gen.result()
    assert soft is None
    assert torch.equal(x, data.normalize(data.x_train[gen.indices]))
    assert torch.equal(y, data.y_train[gen.indices])
    # ipc == class size draws every image of every class exactly once
    full = pick(0, ipc=6)
    assert sorted(full.indices.tolist()) == list(range(len(data.y_train)))

    assert torch.equal(pick(0).indices, gen.indices)
    assert not torch.equal(pick(1).indices, gen.indices)
    assert gen.extra_meta()["selected_indices"] == gen.indices.tolist()


# --------------------------------------------------------------------------- herding


def brute_force_herding(f: np.ndarray, ipc: int) -> list[int]:
    """Welling's herding, written out: try every unchosen candidate at every step."""
    mu = f.mean(0)
    chosen: list[int] = []
    for k in range(1, ipc + 1):
        best, best_d = -1, np.inf
        for i in range(len(f)):
            if i in chosen:
                continue
            d = float(np.sum((mu - (f[chosen].sum(0) + f[i]) / k) ** 2))
            if d < best_d:
                best, best_d = i, d
        chosen.append(best)
    return chosen


def make_feature_coreset(cls, data, features: torch.Tensor, ipc: int):
    gen = cls(cls.Config(), data, ipc, seed=0)
    gen.features = features.double()
    return gen


def test_herding_hand_computed_sequence(data) -> None:
    # 1-D features 0, 1, 2, 10 (mean 3.25): 2 is nearest the mean; then (2+1)/2 = 1.5
    # beats (2+0)/2 = 1 and (2+10)/2 = 6; then (3+10)/3 = 4.33 beats (3+0)/3 = 1.
    feats = torch.zeros(len(data.y_train), 1)
    idx = torch.tensor([0, 1, 2, 3])
    feats[idx, 0] = torch.tensor([0.0, 1.0, 2.0, 10.0])
    gen = make_feature_coreset(Herding, data, feats, ipc=3)
    assert gen.select(0, idx).tolist() == [2, 1, 3]


@pytest.mark.parametrize("ipc", [1, 3, 6])
def test_herding_matches_brute_force(data, ipc: int) -> None:
    rng = np.random.default_rng(1)
    f = rng.normal(size=(len(data.y_train), 5))
    gen = make_feature_coreset(Herding, data, torch.from_numpy(f), ipc)
    for c, idx in enumerate(data.indices_per_class()):
        got = gen.select(c, idx).tolist()
        assert got == brute_force_herding(f[idx.numpy()], ipc)


def test_herding_setup_uses_patched_features(data, monkeypatch) -> None:
    f = torch.from_numpy(np.random.default_rng(2).normal(size=(len(data.y_train), 4)))
    monkeypatch.setattr(Herding, "_embed_all", lambda self: f.double())
    gen = Herding(Herding.Config(), data, 2, seed=0)
    gen.setup()
    want = [
        idx[brute_force_herding(f[idx].numpy(), 2)].tolist() for idx in data.indices_per_class()
    ]
    assert chosen_per_class(gen) == want


# --------------------------------------------------------------------------- k-center


def brute_force_kcenter(f: np.ndarray, ipc: int) -> list[int]:
    """Greedy farthest-first, starting from the point nearest the mean (plain numpy)."""
    d2 = ((f[:, None, :] - f[None, :, :]) ** 2).sum(-1)
    first = int(np.argmin(((f - f.mean(0)) ** 2).sum(1)))
    chosen = [first]
    while len(chosen) < ipc:
        cover = d2[:, chosen].min(1)
        cover[chosen] = -np.inf
        chosen.append(int(np.argmax(cover)))
    return chosen


@pytest.mark.parametrize("ipc", [1, 2, 4, 6])
def test_kcenter_matches_brute_force(data, ipc: int) -> None:
    f = np.random.default_rng(3).normal(size=(len(data.y_train), 6))
    gen = make_feature_coreset(KCenter, data, torch.from_numpy(f), ipc)
    for c, idx in enumerate(data.indices_per_class()):
        local = f[idx.numpy()]
        got = gen.select(c, idx).tolist()
        assert got == brute_force_kcenter(local, ipc)
        # the first pick is the image nearest the class-mean feature
        assert got[0] == int(np.argmin(((local - local.mean(0)) ** 2).sum(1)))


def test_kcenter_hand_computed_sequence(data) -> None:
    # 1-D points 0, 4.2, 5, 9 (mean 4.55): first 4.2 (0.35 from the mean), then the
    # farthest from it is 9 (4.8 away), then 0 (4.2 from its nearest centre 4.2).
    feats = torch.zeros(len(data.y_train), 1)
    idx = torch.tensor([0, 1, 2, 3])
    feats[idx, 0] = torch.tensor([0.0, 4.2, 5.0, 9.0])
    gen = make_feature_coreset(KCenter, data, feats, ipc=3)
    assert gen.select(0, idx).tolist() == [1, 3, 0]


# --------------------------------------------------------------------------- feature models


@pytest.mark.parametrize("method", ["herding", "kcenter"])
def test_feature_model_from_file(method: str, data, tmp_path) -> None:
    net = build_model(
        "convnet", data.channels, data.num_classes, data.im_size, torch.Generator().manual_seed(0)
    )
    path = tmp_path / "feat.pt"
    save_model(net, path)
    out = tmp_path / "set.h5"
    synset = distill_data.build(
        data, method, 2, out, options={"feature_model": str(path)}, quiet=True
    )
    assert synset.meta.config["feature_model"] == str(path)
    assert torch.bincount(synset.labels).tolist() == [2, 2, 2]

    # the selection is the reference selection in the saved network's embedding
    with torch.no_grad():
        f = net.eval().embed(data.normalize(data.x_train)).double().numpy()
    ref = brute_force_herding if method == "herding" else brute_force_kcenter
    want = [idx[ref(f[idx.numpy()], 2)].tolist() for idx in data.indices_per_class()]
    assert synset.meta.extra["selected_indices"] == sum(want, [])


@pytest.mark.parametrize(
    "arch, channels, size",
    [
        ("convnet", 3, (10, 10)),  # wrong channel count
        ("mlp", 1, (12, 12)),  # wrong image size for a flattening network
    ],
)
def test_feature_model_with_wrong_input_shape(arch, channels, size, data, tmp_path) -> None:
    path = tmp_path / "wrong.pt"
    save_model(build_model(arch, channels, data.num_classes, size, width=8), path)
    out = tmp_path / "set.h5"
    with pytest.raises(ConfigError, match="does not accept"):
        distill_data.build(data, "herding", 2, out, options={"feature_model": str(path)})
    assert not out.exists()


def test_feature_convnet_for_another_image_size_is_refused(data, tmp_path) -> None:
    """A ConvNet saved for 28x28 images embeds 10x10 ones without a shape error (conv
    layers accept any size), so its features would silently mean something else; the
    stored model config says which images it takes and should be checked."""
    path = tmp_path / "mnist_sized.pt"
    save_model(build_model("convnet", 1, data.num_classes, (28, 28), width=8), path)
    out = tmp_path / "set.h5"
    with pytest.raises(ConfigError, match="built for 1-channel 28x28, the data is 1-channel 10x10"):
        distill_data.build(data, "herding", 2, out, options={"feature_model": str(path)})
    assert not out.exists()


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("method", ["random", "herding", "kcenter"])
def test_ipc_larger_than_a_class(method: str, make_npz, tmp_path) -> None:
    path = make_npz("small.npz", n_train=3)
    out = tmp_path / "set.h5"
    with pytest.raises(ConfigError, match="ipc 4 is more than class"):
        distill_data.build(str(path), method, 4, out)
    assert not out.exists()


@pytest.mark.parametrize("method", ["random", "herding", "kcenter"])
def test_iterations_for_a_one_pass_method(method: str, tiny_npz, tmp_path) -> None:
    out = tmp_path / "set.h5"
    assert not GENERATORS.get(method).iterative
    with pytest.raises(ConfigError, match="does not iterate"):
        distill_data.build(str(tiny_npz), method, 2, out, iterations=5)
    assert not out.exists()


def test_feature_coreset_config_validation() -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        make_config(FeatureCoresetConfig, {"batch_size": "0"})
    assert make_config(FeatureCoresetConfig, {"batch_size": "7"}).batch_size == 7
