"""Models: every registered architecture on every input shape, seeded init, the model
file format (round trip, weights-only loading, refusal of pickled objects), and errors.

Parametrized over ``MODELS.names()``, so a new architecture is tested when registered.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from distill_data.errors import ConfigError, DistillDataError, StoreError, UnknownNameError
from distill_data.models import (
    MODEL_FILE_FORMAT,
    MODEL_FILE_VERSION,
    MODELS,
    build_model,
    init_params_,
    load_model,
    save_model,
)

NAMES = MODELS.names()
SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 12, 10)]
K = 5


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", NAMES)
def test_every_model_builds_for_every_shape(name: str, shape) -> None:
    c, h, w = shape
    model = build_model(name, c, K, (h, w), generator=seeded())
    model.eval()
    x = torch.randn(3, c, h, w, generator=seeded(1))
    with torch.no_grad():
        logits = model(x)
        emb = model.embed(x)
    assert tuple(logits.shape) == (3, K)
    assert tuple(emb.shape) == (3, model.embed_dim)
    assert bool(torch.isfinite(logits).all()) and bool(torch.isfinite(emb).all())
    assert model.arch == name
    assert model.config["channels"] == c and model.config["num_classes"] == K
    assert tuple(model.config["im_size"]) == (h, w)


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("name", NAMES)
def test_init_params_seeded_and_global_rng_untouched(name: str) -> None:
    m1 = build_model(name, 1, K, (8, 8))
    m2 = build_model(name, 1, K, (8, 8))
    before = torch.get_rng_state()
    init_params_(m1, seeded(7))
    assert torch.equal(torch.get_rng_state(), before), "init_params_ moved the global RNG"
    init_params_(m2, seeded(7))
    assert_same_state(state(m1), state(m2))
    init_params_(m2, seeded(8))
    assert any(not torch.equal(a, b) for a, b in zip(state(m1).values(), state(m2).values()))


@pytest.mark.parametrize("name", NAMES)
def test_seeded_build_does_not_depend_on_global_rng(name: str) -> None:
    torch.manual_seed(123)
    a = state(build_model(name, 3, K, (12, 10), generator=seeded(4)))
    torch.manual_seed(456)
    b = state(build_model(name, 3, K, (12, 10), generator=seeded(4)))
    assert_same_state(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name: str, tmp_path) -> None:
    model = build_model(name, 3, K, (12, 10), generator=seeded(2))
    x = torch.randn(4, 3, 12, 10, generator=seeded(3))
    model.train()
    with torch.no_grad():
        model(x)  # move BatchNorm running statistics away from their defaults
    model.eval()
    path = tmp_path / "m.pt"
    save_model(model, path, meta={"note": "teacher", "epochs": 3})
    loaded, meta = load_model(path)
    assert meta == {"note": "teacher", "epochs": 3}
    assert loaded.arch == name
    assert loaded.config == model.config
    assert_same_state(state(model), state(loaded))
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
        assert torch.equal(model.embed(x), loaded.embed(x))
    payload = torch.load(path, weights_only=True)  # plain data only
    assert payload["format"] == MODEL_FILE_FORMAT and payload["version"] == MODEL_FILE_VERSION
    assert payload["arch"] == name
    assert not list(tmp_path.glob(".*tmp*")), "atomic write left a temp file"


def test_save_load_keeps_options(tmp_path) -> None:
    model = build_model("convnet", 1, 3, (8, 8), width=8, depth=2, norm="layernorm")
    save_model(model, tmp_path / "m.pt")
    loaded, _ = load_model(tmp_path / "m.pt")
    assert loaded.config == model.config
    assert loaded.embed_dim == model.embed_dim


@dataclasses.dataclass
class NotPlainData:
    value: int = 1


def test_pickled_object_in_model_file_is_refused(tmp_path) -> None:
    model = build_model("mlp", 1, 3, (8, 8), width=8)
    payload = {
        "format": MODEL_FILE_FORMAT,
        "version": MODEL_FILE_VERSION,
        "arch": "mlp",
        "config": {**model.config, "im_size": [8, 8]},
        "state_dict": model.state_dict(),
        "meta": {"evil": NotPlainData()},
    }
    path = tmp_path / "evil.pt"
    torch.save(payload, path)
    with pytest.raises(StoreError, match="not a readable distill-data model file"):
        load_model(path)


def test_model_file_errors(tmp_path) -> None:
    with pytest.raises(StoreError, match="no such model file"):
        load_model(tmp_path / "missing.pt")
    text = tmp_path / "text.pt"
    text.write_text("not a model")
    with pytest.raises(StoreError):
        load_model(text)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(StoreError, match="no format tag"):
        load_model(foreign)
    newer = tmp_path / "newer.pt"
    model = build_model("mlp", 1, 3, (8, 8), width=8)
    save_model(model, newer)
    payload = torch.load(newer, weights_only=True)
    payload["version"] = MODEL_FILE_VERSION + 1
    torch.save(payload, newer)
    with pytest.raises(StoreError, match="newer"):
        load_model(newer)
    misfit = tmp_path / "misfit.pt"
    payload["version"] = MODEL_FILE_VERSION
    payload["config"]["width"] = 16
    torch.save(payload, misfit)
    with pytest.raises(StoreError, match="do not fit"):
        load_model(misfit)


def test_only_registry_models_can_be_saved(tmp_path) -> None:
    with pytest.raises(ConfigError):
        save_model(torch.nn.Linear(2, 2), tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_unknown_model_name_lists_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        build_model("transformer", 1, 3, (8, 8))
    msg = str(info.value)
    assert "transformer" in msg
    for name in NAMES:
        assert name in msg
    assert isinstance(info.value, DistillDataError) and isinstance(info.value, KeyError)


@pytest.mark.parametrize(
    "name, options, why",
    [
        ("convnet", {"bogus": 1}, "unexpected keyword argument 'bogus'"),
        ("convnet", {"norm": "bogus"}, "unknown norm 'bogus'"),
        ("convnet", {"width": 0}, "width and depth must be >= 1"),
        ("resnet", {"depth": 10}, "depth must be 6n"),
        ("mlp", {"depth": 0}, "width and depth must be >= 1"),
    ],
)
def test_bad_model_option(name: str, options: dict, why: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(why)):
        build_model(name, 1, 3, (8, 8), **options)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_for_every_model(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        build_model(name, 1, 3, (8, 8), not_an_option=1)


@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (2, 5, 7, 9), (1, 2, 3, 3), (2, 3, 2, 2)])
def test_fast_avgpool_equals_native(shape) -> None:
    from distill_data.models.convnet import AvgPool2x2

    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    ref = torch.nn.functional.avg_pool2d(x, 2, 2)
    out = AvgPool2x2()(x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref)
    gy = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    (g_out,) = torch.autograd.grad(out, x, gy)
    (g_ref,) = torch.autograd.grad(ref, x, gy)
    torch.testing.assert_close(g_out, g_ref)
    cl = x.detach().float().contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(AvgPool2x2()(cl), torch.nn.functional.avg_pool2d(cl, 2, 2))
