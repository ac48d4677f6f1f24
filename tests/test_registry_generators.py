"""Every registered generator, run on tiny data: finite loss, shapes, balanced labels,
changed output (iterative methods), HDF5 round trip, seed determinism.

Parametrized over ``GENERATORS.names()``, so a generator is tested the day it is
registered. Settings are shrunk generically: iterative methods run 3 iterations, and
fields such as ``batch_real`` or ``width`` are set small when the method's Config has
them (discovered with ``dataclasses.fields``, never assumed).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import distill_data
from distill_data.config import make_config
from distill_data.data import load_dataset
from distill_data.models import build_model
from distill_data.store import read_store
from distill_data.synth import GENERATORS, Generator
from distill_data.synth.inversion import BatchedInversion

IPC = 2
ITERATIONS = 3
#: Small values for settings a generator may have; only those its Config has are set.
SMALL = {
    "batch_real": 4,
    "batch_syn": 4,
    "width": 8,
    "net_width": 8,
    "batch_size": 8,
}

METHODS = GENERATORS.names()


def tiny_options(cls: type[Generator]) -> dict:
    names = {f.name for f in dataclasses.fields(cls.Config) if f.init}
    opts = {k: v for k, v in SMALL.items() if k in names}
    if cls.iterative:
        opts["iterations"] = ITERATIONS
    return opts


@pytest.fixture
def data(tiny_npz):
    return load_dataset(tiny_npz)


@pytest.fixture
def teacher(data):
    """A small BatchNorm network with running statistics from real images."""
    net = build_model(
        "convnet_bn",
        data.channels,
        data.num_classes,
        data.im_size,
        width=8,
        depth=2,
        generator=torch.Generator().manual_seed(0),
    )
    net.train()
    with torch.no_grad():
        net(data.normalize(data.x_train))
    return net.eval()


def extra_args(cls: type[Generator], teacher) -> dict:
    return {"teacher": teacher} if cls.needs_teacher else {}


def check_labels(cls: type[Generator], labels: torch.Tensor, k: int) -> None:
    if cls.needs_teacher:  # the teacher's predictions: any class, not balanced
        assert int(labels.min()) >= 0 and int(labels.max()) < k
    else:
        assert torch.bincount(labels, minlength=k).tolist() == [IPC] * k


def test_registry_is_not_empty_and_has_the_coresets() -> None:
    assert {"random", "herding", "kcenter"} <= set(METHODS)
    for name in METHODS:
        assert GENERATORS.help(name), f"{name} has no one-line description"
        assert issubclass(GENERATORS.get(name), Generator)


@pytest.mark.parametrize("name", METHODS)
def test_generator_runs_on_tiny_data(name: str, data, teacher) -> None:
    cls = GENERATORS.get(name)
    cfg = make_config(cls.Config, tiny_options(cls))
    cls.check_config(cfg)
    cls.check_ipc(data, IPC)
    gen = cls(cfg, data, IPC, seed=0, **extra_args(cls, teacher))
    starts = []  # a batched generator's images as each batch starts (its result() before
    if isinstance(gen, BatchedInversion):  # the steps holds the first batch only)
        real_begin = gen.begin_batch

        def spy(b: int) -> None:
            real_begin(b)
            with torch.no_grad():
                starts.append(gen.images().detach().cpu().clone())

        gen.begin_batch = spy
    gen.setup()
    x0 = None if starts else gen.result()[0].detach().clone()
    if cls.iterative:
        for it in range(gen.total_steps()):
            loss = gen.step(it)
            assert math.isfinite(float(loss)), f"{name} step {it} gave loss {loss}"
    images, labels, soft = gen.result()
    k, c, (h, w) = data.num_classes, data.channels, data.im_size
    assert tuple(images.shape) == (k * IPC, c, h, w)
    assert images.dtype == torch.float32
    assert images.device.type == "cpu"
    assert bool(torch.isfinite(images).all())
    assert tuple(labels.shape) == (k * IPC,)
    check_labels(cls, labels, k)
    if soft is not None:
        assert tuple(soft.shape) == (k * IPC, k)
        assert bool(torch.isfinite(soft).all())
    if cls.iterative:  # each batch's images as it started and as it finished
        before, after = (torch.cat(starts), torch.cat(gen.done)) if starts else (x0, images)
        assert before.shape == after.shape  # the same images, compared
        assert not torch.equal(after, before), f"{name}: {ITERATIONS} steps changed nothing"


@pytest.mark.parametrize("name", METHODS)
def test_generator_hdf5_round_trip(name: str, data, teacher, tmp_path) -> None:
    cls = GENERATORS.get(name)
    out = tmp_path / f"{name}.h5"
    synset = distill_data.build(
        data,
        name,
        IPC,
        out,
        seed=3,
        options=tiny_options(cls),
        quiet=True,
        **extra_args(cls, teacher),
    )
    assert out.is_file()
    assert not list(tmp_path.glob("*.ckpt.pt")), "checkpoint left behind after a finished build"
    stored = read_store(out)
    assert torch.equal(stored.images, synset.images)
    assert torch.equal(stored.labels, synset.labels)
    assert stored.images.dtype == torch.float32
    if synset.soft_labels is None:
        assert stored.soft_labels is None
    else:
        assert torch.equal(stored.soft_labels, synset.soft_labels)
    m = stored.meta
    assert m.generator == name
    assert m.ipc == IPC
    assert m.seed == 3
    assert m.dataset_fingerprint == data.fingerprint
    assert m.dataset == data.name
    assert m.classes == data.classes
    assert m.mean == pytest.approx(data.mean) and m.std == pytest.approx(data.std)
    cfg = make_config(cls.Config, tiny_options(cls))
    steps = cls(cfg, data, IPC, **extra_args(cls, teacher)).total_steps()
    assert m.iterations == steps  # batched methods run `iterations` per batch
    assert steps == (ITERATIONS if cls.iterative else 0) or issubclass(cls, BatchedInversion)
    assert m.config == synset.meta.config
    for key, value in tiny_options(cls).items():
        assert m.config[key] == value


@pytest.mark.parametrize("name", METHODS)
def test_generator_seed_determinism(name: str, data, teacher, tmp_path) -> None:
    cls = GENERATORS.get(name)
    opts = tiny_options(cls)

    def stored(seed: int, tag: str) -> torch.Tensor:
        out = tmp_path / f"{tag}.h5"
        distill_data.build(
            data, name, IPC, out, seed=seed, options=opts, quiet=True, **extra_args(cls, teacher)
        )
        return read_store(out).images

    a, b = stored(0, "a"), stored(0, "b")
    assert torch.equal(a, b), f"{name}: the same seed gave different images"
    if name == "random" or cls.iterative:
        assert not torch.equal(a, stored(1, "c")), f"{name}: seeds 0 and 1 gave the same images"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", METHODS)
def test_generator_runs_on_cuda(name: str, data, teacher) -> None:
    """Every generator builds on a GPU: the work happens there, the result comes back."""
    cls = GENERATORS.get(name)
    cfg = make_config(cls.Config, tiny_options(cls))
    gen = cls(cfg, data, IPC, seed=0, device="cuda", **extra_args(cls, teacher))
    gen.setup()
    if cls.iterative:
        for it in range(gen.total_steps()):
            assert math.isfinite(float(gen.step(it)))
    images, labels, soft = gen.result()
    assert images.device.type == "cpu" and labels.device.type == "cpu"
    assert tuple(images.shape) == (data.num_classes * IPC, data.channels, *data.im_size)
    assert bool(torch.isfinite(images).all())
    check_labels(cls, labels, data.num_classes)
    if soft is not None:
        assert soft.device.type == "cpu" and bool(torch.isfinite(soft).all())
