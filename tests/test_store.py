"""Tests for distill_data.store: schema round trip, atomic writes, every read error,
the torch Dataset in multi-worker loaders, and safe checkpoints.

All files are tiny and written by the tests in tmp_path; the one subprocess test
(SIGKILL mid-write) stops its writer after a few writes, so the file runs in seconds.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from distill_data._version import __version__
from distill_data.errors import ConfigError, DataError, DistillDataError, StoreError
from distill_data.store import (
    FORMAT_NAME,
    FORMAT_VERSION,
    StoreInfo,
    StoreMeta,
    SyntheticDataset,
    SyntheticSet,
    atomic_write,
    checkpoint_path_for,
    load,
    load_checkpoint,
    read_info,
    read_meta,
    read_store,
    save_checkpoint,
    write_store,
)
from distill_data.store import io as store_io
from distill_data.store.schema import CHUNK_IMAGES, images_per_chunk

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers


def make_meta(channels: int = 3, num_classes: int = 4, **overrides) -> StoreMeta:
    meta = StoreMeta(
        generator="dm",
        config={"lr_img": 1.0, "momentum": 0.5, "net": {"depth": 3}, "aug": ["crop", "flip"]},
        dataset="toy",
        dataset_fingerprint="sha256:abc123",
        ipc=2,
        seed=1234,
        mean=tuple(0.1 * (c + 1) for c in range(channels)),
        std=tuple(0.2 + 0.05 * c for c in range(channels)),
        classes=[f"class_{i}" for i in range(num_classes)],
        iterations=17,
        extra={"note": "ünïcode ok", "score": 0.5},
    )
    return replace(meta, **overrides)


def make_set(
    n: int = 8,
    channels: int = 3,
    size: int = 8,
    num_classes: int = 4,
    soft: bool = False,
    seed: int = 0,
) -> SyntheticSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, channels, size, size, generator=g)
    labels = torch.arange(n) % num_classes
    soft_labels = torch.randn(n, num_classes, generator=g) if soft else None
    return SyntheticSet(
        images=images,
        labels=labels,
        meta=make_meta(channels, num_classes),
        soft_labels=soft_labels,
        temperature=4.0 if soft else None,
    )


def indexed_set(n: int, num_classes: int = 5) -> SyntheticSet:
    """Image i is filled with the value i, so a loader's items can be identified."""
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 8, 8).clone()
    labels = (torch.arange(n) * 7) % num_classes
    soft = torch.arange(n * num_classes, dtype=torch.float32).view(n, num_classes)
    meta = make_meta(channels=1, num_classes=num_classes)
    return SyntheticSet(images, labels, meta, soft_labels=soft, temperature=2.0)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "syn.h5"
    write_store(path, make_set(soft=True))
    return path


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [8, 28])
@pytest.mark.parametrize("soft", [False, True])
def test_round_trip_every_field(tmp_path: Path, channels: int, size: int, soft: bool) -> None:
    synset = make_set(n=10, channels=channels, size=size, soft=soft)
    path = tmp_path / "out.h5"
    write_store(path, synset)
    back = read_store(path)

    assert back.images.dtype == torch.float32 and back.labels.dtype == torch.int64
    assert torch.equal(back.images, synset.images)
    assert torch.equal(back.labels, synset.labels)
    if soft:
        assert back.soft_labels is not None and back.soft_labels.dtype == torch.float32
        assert torch.equal(back.soft_labels, synset.soft_labels)
        assert back.temperature == 4.0
    else:
        assert back.soft_labels is None and back.temperature is None
    assert back.meta.created  # filled at write time
    assert back.meta == replace(synset.meta, created=back.meta.created)
    assert isinstance(back.meta.mean, tuple) and isinstance(back.meta.std, tuple)
    assert len(back) == 10 and back.image_shape == (channels, size, size)


def test_created_filled_in_utc_and_caller_meta_untouched(tmp_path: Path) -> None:
    synset = make_set()
    write_store(tmp_path / "a.h5", synset)
    assert synset.meta.created == ""
    created = read_meta(tmp_path / "a.h5").created
    stamp = datetime.fromisoformat(created)
    assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0

    synset.meta.created = "2024-01-02T03:04:05+00:00"
    write_store(tmp_path / "b.h5", synset)
    assert read_meta(tmp_path / "b.h5").created == "2024-01-02T03:04:05+00:00"


def test_raw_attributes_follow_the_documented_schema(store: Path) -> None:
    with h5py.File(store, "r") as f:
        a = f.attrs
        assert a["format"] == FORMAT_NAME == "distill-data"
        assert int(a["format_version"]) == FORMAT_VERSION == 2
        assert json.loads(a["config"])["net"] == {"depth": 3}
        assert json.loads(a["classes"]) == ["class_0", "class_1", "class_2", "class_3"]
        assert json.loads(a["extra"])["note"] == "ünïcode ok"
        assert list(a["mean"]) == pytest.approx([0.1, 0.2, 0.3])
        assert int(a["ipc"]) == 2 and int(a["seed"]) == 1234 and int(a["iterations"]) == 17
        assert a["package_version"] == __version__
        assert f["images"].dtype == "float32" and f["labels"].dtype == "int64"
        assert f["soft_labels"].attrs["temperature"] == 4.0


def test_datasets_describe_themselves_to_plain_h5py(store: Path) -> None:
    """Read with h5py alone, the attributes say enough to get pixels and class names."""
    synset = read_store(store)
    with h5py.File(store, "r") as f:
        img = f["images"]
        assert img.attrs["layout"] == "NCHW"
        assert "(pixel - mean) / std" in img.attrs["value_space"]
        assert img.attrs["to_pixels"].startswith("images * std + mean")
        # following the recipe on the raw arrays gives the documented pixels back
        mean = np.asarray(f.attrs["mean"]).reshape(1, -1, 1, 1)
        std = np.asarray(f.attrs["std"]).reshape(1, -1, 1, 1)
        pixels = img[...] * std + mean
        assert np.allclose(pixels, synset.denormalized().numpy(), atol=1e-6)
        assert "classes[labels[i]]" in f["labels"].attrs["description"]
        text = f["soft_labels"].attrs["description"]
        assert "logits" in text and "softmax(soft_labels / temperature)" in text


def test_count_is_stored_and_exactly_one_of_ipc_and_count_is_set(tmp_path: Path) -> None:
    per_class = make_set()  # ipc 2
    write_store(tmp_path / "p.h5", per_class)
    by_count = make_set()
    by_count.meta.ipc = 0  # a set made without either: its size becomes its count
    write_store(tmp_path / "c.h5", by_count)
    assert by_count.meta.count == 0  # the caller's meta is not modified
    with h5py.File(tmp_path / "p.h5") as f:
        assert int(f.attrs["ipc"]) == 2 and int(f.attrs["count"]) == 0
    with h5py.File(tmp_path / "c.h5") as f:
        assert int(f.attrs["ipc"]) == 0 and int(f.attrs["count"]) == 8
    assert read_meta(tmp_path / "c.h5").count == 8


def test_version_1_files_still_read(tmp_path: Path) -> None:
    """A store written before version 2: no count, no dataset attributes."""
    path = tmp_path / "v1.h5"
    synset = make_set(soft=True)
    synset.meta.ipc = 0
    write_store(path, synset)
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 1
        del f.attrs["count"]
        for name in ("images", "labels", "soft_labels"):
            for key in list(f[name].attrs):
                if key != "temperature":
                    del f[name].attrs[key]
    back = read_store(path)
    assert read_info(path).format_version == 1
    assert back.meta.count == 8 and back.meta.ipc == 0  # a count set: its size
    assert torch.equal(back.images, synset.images)
    assert len(SyntheticDataset(path)) == 8
    with h5py.File(path, "a") as f:  # version 2 requires the count
        f.attrs["format_version"] = 2
    with pytest.raises(StoreError, match="'count'"):
        read_store(path)


def test_other_dtypes_are_stored_as_float32_int64(tmp_path: Path) -> None:
    synset = make_set()
    synset.images = synset.images.to(torch.float16)
    synset.labels = synset.labels.to(torch.int32)
    write_store(tmp_path / "x.h5", synset)
    back = read_store(tmp_path / "x.h5")
    assert back.images.dtype == torch.float32 and back.labels.dtype == torch.int64
    assert torch.equal(back.images, synset.images.float())


def test_large_seed_and_big_extra_round_trip(tmp_path: Path) -> None:
    synset = make_set()
    synset.meta.seed = 2**64 - 1  # torch.Generator.initial_seed() can be this large
    synset.meta.extra = {"log": "x" * 200_000}  # beyond HDF5's 64 KiB compact attributes
    write_store(tmp_path / "x.h5", synset)
    meta = read_meta(tmp_path / "x.h5")
    assert meta.seed == 2**64 - 1 and len(meta.extra["log"]) == 200_000


def test_compression_and_chunking_are_set(tmp_path: Path) -> None:
    path = tmp_path / "big.h5"
    write_store(path, make_set(n=100, channels=3, size=8, soft=True))
    with h5py.File(path, "r") as f:
        for name in ("images", "labels", "soft_labels"):
            ds = f[name]
            assert ds.compression == "gzip", name
            assert ds.shuffle, name
            assert ds.chunks is not None, name
        assert f["images"].chunks == (64, 3, 8, 8)  # whole images, min(N, 64)
        assert f["soft_labels"].chunks[1] == 4
    path = tmp_path / "small.h5"
    write_store(path, make_set(n=5))
    with h5py.File(path, "r") as f:
        assert f["images"].chunks == (5, 3, 8, 8)


def test_chunks_stay_small_for_large_images() -> None:
    assert images_per_chunk(1000, (3, 32, 32)) == CHUNK_IMAGES
    assert images_per_chunk(10, (3, 32, 32)) == 10
    assert images_per_chunk(1000, (3, 224, 224)) == 1  # 600 KB per image
    assert images_per_chunk(1000, (3, 128, 128)) == 5


def test_denormalized_inverts_normalisation() -> None:
    synset = make_set(channels=3)
    pixels = torch.rand(8, 3, 8, 8)
    mean = torch.tensor(synset.meta.mean).view(1, 3, 1, 1)
    std = torch.tensor(synset.meta.std).view(1, 3, 1, 1)
    synset.images = (pixels - mean) / std
    assert torch.allclose(synset.denormalized(), pixels, atol=1e-6)
    synset.images = torch.full((8, 3, 8, 8), 100.0)  # not clamped
    assert synset.denormalized().max() > 1


def test_read_info_reads_shapes_without_data(store: Path) -> None:
    info = read_info(store)
    assert isinstance(info, StoreInfo)
    assert info.num_images == 8 and info.image_shape == (3, 8, 8)
    assert info.has_soft_labels and info.temperature == 4.0
    assert info.format_version == 2 and info.num_classes == 4
    assert info.file_size == store.stat().st_size
    assert read_meta(store) == info.meta


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda s: s.images.view(-1).__setitem__(5, float("nan")), DataError, "NaN or inf"),
        (lambda s: s.images.view(-1).__setitem__(0, float("inf")), DataError, "NaN or inf"),
        (lambda s: setattr(s, "images", s.images[0]), DataError, "4-D float"),
        (lambda s: setattr(s, "images", s.images.long()), DataError, "4-D float"),
        (lambda s: setattr(s, "labels", s.labels.float()), DataError, "1-D integer"),
        (lambda s: setattr(s, "labels", s.labels[:-1]), DataError, "7 entries"),
        (lambda s: s.labels.__setitem__(0, 4), DataError, r"\[0, 4\)"),
        (lambda s: s.labels.__setitem__(0, -1), DataError, r"\[0, 4\)"),
        (lambda s: setattr(s.meta, "mean", (0.5,)), DataError, "mean has 1 values"),
        (lambda s: setattr(s.meta, "std", (1.0, 0.0, 1.0)), DataError, "> 0"),
        (lambda s: setattr(s, "soft_labels", torch.zeros(8, 3)), DataError, r"\(8, 4\)"),
        (lambda s: s.soft_labels.__setitem__((0, 0), float("nan")), DataError, "soft_labels"),
        (lambda s: setattr(s, "temperature", None), DataError, "temperature"),
        (lambda s: setattr(s, "temperature", -1.0), DataError, "temperature"),
        (lambda s: setattr(s.meta, "classes", []), DataError, "classes"),
        (lambda s: setattr(s.meta, "ipc", -1), DataError, "ipc"),
        (lambda s: setattr(s.meta, "seed", "7"), DataError, "seed"),
        (lambda s: setattr(s.meta, "config", {"f": object()}), ConfigError, "config"),
        (lambda s: setattr(s.meta, "extra", {"x": float("nan")}), ConfigError, "extra"),
    ],
)
def test_bad_sets_are_refused_before_any_file_exists(tmp_path, mutate, error, match) -> None:
    synset = make_set(soft=True)
    mutate(synset)
    with pytest.raises(error, match=match):
        write_store(tmp_path / "out.h5", synset)
    assert list(tmp_path.iterdir()) == []


def test_temperature_without_soft_labels_is_refused(tmp_path: Path) -> None:
    synset = make_set()
    synset.temperature = 2.0
    with pytest.raises(DataError, match="no soft_labels"):
        write_store(tmp_path / "out.h5", synset)


def test_missing_parent_folder_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    with pytest.raises(StoreError, match="does not exist") as exc:
        write_store(missing / "out.h5", make_set())
    assert str(missing) in str(exc.value)
    assert not (tmp_path / "no").exists()


def test_target_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out.h5").mkdir()
    with pytest.raises(StoreError, match="is a folder"):
        write_store(tmp_path / "out.h5", make_set())


# --------------------------------------------------------------------------- atomicity


def test_write_failing_midway_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "out.h5"
    write_store(path, make_set(seed=1))
    before = path.read_bytes()
    seen: list[list[str]] = []

    def boom(f, meta):  # called after the datasets were written into the temp file
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(store_io, "_write_attrs", boom)
    with pytest.raises(StoreError, match="cannot write .*out.h5: the write failed .disk on fire"):
        write_store(path, make_set(seed=2))
    assert len(seen) == 1 and len(seen[0]) == 2  # the temp file did exist mid-write
    assert any(name.startswith(".out.h5.tmp-") for name in seen[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]
    assert path.read_bytes() == before


def test_write_failing_midway_without_old_file_creates_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(store_io, "_write_attrs", lambda f, m: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        write_store(tmp_path / "out.h5", make_set())
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_generic(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    with atomic_write(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".report.json.tmp-")
        tmp.write_text("{}")
    assert target.read_text() == "{}"

    for exc in (ValueError("bad"), KeyboardInterrupt()):
        with pytest.raises(type(exc)), atomic_write(target) as tmp:
            tmp.write_text("half")
            raise exc
        assert target.read_text() == "{}"
        assert [p.name for p in tmp_path.iterdir()] == ["report.json"]

    with pytest.raises(StoreError, match="does not exist"), atomic_write(tmp_path / "x" / "y"):
        pass


def test_atomic_write_follows_symlinks(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    with atomic_write(link) as tmp:
        tmp.write_text("new")
    assert link.is_symlink() and real.read_text() == "new"


WRITER = textwrap.dedent(
    """
    import sys, torch
    from distill_data.store import StoreMeta, SyntheticSet, write_store
    target, n = sys.argv[1], int(sys.argv[2])
    base = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(n) % 10
    meta = dict(generator="dm", config={}, dataset="toy", dataset_fingerprint="f", ipc=0,
                seed=0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                classes=[str(i) for i in range(10)])
    k = 0
    while True:
        k += 1
        write_store(target, SyntheticSet(base + k, labels, StoreMeta(iterations=k, **meta)))
        print(k, flush=True)
    """
)


def test_sigkill_mid_write_never_leaves_a_corrupt_store(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    target = tmp_path / "big.h5"
    n = 600  # ~7 MB of random floats: each write takes a noticeable time
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, str(script), str(target), str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        stamps = []
        for _ in range(3):  # wait for 3 complete writes, timing the last ones
            line = proc.stdout.readline()
            assert line.strip(), f"writer died: {proc.stderr.read()}"
            stamps.append(time.monotonic())
        # kill while the next write is under way: its temp file is there
        deadline = time.monotonic() + 10 * max(stamps[2] - stamps[1], 0.1)
        mid_write = False
        while not mid_write and time.monotonic() < deadline:
            mid_write = any(".tmp-" in q.name for q in tmp_path.iterdir())
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert mid_write, "no write was under way to interrupt"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()

    assert target.exists()  # three writes finished, so the target is there ...
    back = read_store(target)  # ... and complete, whatever the kill interrupted
    k = back.meta.iterations
    assert k >= 3
    base = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(back.images, base + k)
    # a leftover temp file is possible (SIGKILL cannot clean up) but is never the target
    for p in tmp_path.iterdir():
        assert p.name in {"writer.py", "big.h5"} or p.name.startswith(".big.h5.tmp-")


# --------------------------------------------------------------------------- read errors


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such file: .*nope.h5"):
        read_store(tmp_path / "nope.h5")
    with pytest.raises(StoreError, match="no such file"):
        read_meta(tmp_path / "nope.h5")


@pytest.mark.parametrize("content", [b"hello, I am a text file\n" * 20, b""])
def test_non_hdf5_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.h5"
    path.write_bytes(content)
    with pytest.raises(StoreError, match=r"is not a readable HDF5 file \(corrupt or truncated\)"):
        read_store(path)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_truncated_file(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "syn.h5"
    write_store(path, make_set(n=64, soft=True))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(StoreError, match=r"is not a readable HDF5 file \(corrupt or truncated\)"):
        read_store(path)


def test_corrupt_chunk_bytes(tmp_path: Path) -> None:
    path = tmp_path / "syn.h5"
    write_store(path, make_set(n=64))
    with h5py.File(path, "r") as f:
        offset = f["images"].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    data[offset : offset + 64] = b"\xff" * 64  # destroy the gzip stream of the first chunk
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="corrupt or truncated"):
        read_store(path)


def test_foreign_hdf5_file(tmp_path: Path) -> None:
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["images"] = torch.zeros(2, 1, 8, 8).numpy()
    with pytest.raises(StoreError, match=r"is not a distill-data store \(foreign HDF5 file\)"):
        read_store(path)
    with h5py.File(path, "a") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(StoreError, match="foreign HDF5 file.*something-else"):
        read_meta(path)


def test_newer_format_version(store: Path) -> None:
    with h5py.File(store, "a") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(StoreError, match="format version 3.*upgrade distill-data"):
        read_store(store)
    with pytest.raises(StoreError, match="upgrade distill-data"):
        SyntheticDataset(store)


@pytest.mark.parametrize("name", ["images", "labels"])
def test_missing_dataset(store: Path, name: str) -> None:
    with h5py.File(store, "a") as f:
        del f[name]
    with pytest.raises(StoreError, match=f"missing dataset.*'{name}'"):
        read_store(store)


@pytest.mark.parametrize("name", ["seed", "classes", "mean"])
def test_missing_attribute(store: Path, name: str) -> None:
    with h5py.File(store, "a") as f:
        del f.attrs[name]
    with pytest.raises(StoreError, match=f"missing attribute.*'{name}'"):
        read_meta(store)


def test_inconsistent_shapes(store: Path, tmp_path: Path) -> None:
    with h5py.File(store, "a") as f:
        del f["labels"]
        f["labels"] = torch.zeros(5, dtype=torch.int64).numpy()
    with pytest.raises(StoreError, match="'labels' must be a 1-D integer dataset of length 8"):
        read_store(store)

    other = tmp_path / "b.h5"
    write_store(other, make_set(soft=True))
    with h5py.File(other, "a") as f:
        f.attrs["mean"] = [0.0]
    with pytest.raises(StoreError, match="'mean' has 1 values but the images have 3"):
        read_store(other)

    write_store(other, make_set(soft=True))
    with h5py.File(other, "a") as f:
        del f["soft_labels"].attrs["temperature"]
    with pytest.raises(StoreError, match="temperature"):
        read_store(other)


def test_invalid_data_in_file_is_a_store_error(store: Path) -> None:
    with h5py.File(store, "a") as f:
        f["labels"][0] = 99
    with pytest.raises(StoreError, match="holds invalid data"):
        read_store(store)
    with pytest.raises(StoreError, match="labels outside"):
        SyntheticDataset(store)


def test_all_errors_are_distill_data_errors() -> None:
    assert issubclass(StoreError, DistillDataError) and issubclass(DataError, DistillDataError)


# --------------------------------------------------------------------------- Dataset


def test_dataloader_with_workers_yields_each_item_once(tmp_path: Path) -> None:
    path = tmp_path / "idx.h5"
    synset = indexed_set(23)
    write_store(path, synset)
    ds = load(path)
    assert ds[0][0].shape == (1, 8, 8)  # parent opens its handle before the fork
    loader = DataLoader(ds, batch_size=4, shuffle=True, num_workers=2)
    seen, labels = [], []
    for x, y in loader:
        seen += x[:, 0, 0, 0].long().tolist()
        labels += y.tolist()
    assert sorted(seen) == list(range(23))
    assert labels == [int(synset.labels[i]) for i in seen]


def test_dataloader_soft_labels_with_workers(tmp_path: Path) -> None:
    path = tmp_path / "idx.h5"
    synset = indexed_set(10)
    write_store(path, synset)
    ds = load(path, soft=True)
    loader = DataLoader(ds, batch_size=3, num_workers=2)
    batches = list(loader)
    x = torch.cat([b[0] for b in batches])
    s = torch.cat([b[2] for b in batches])
    assert torch.equal(x, synset.images) and torch.equal(s, synset.soft_labels)
    assert ds.temperature == 2.0 and ds.has_soft_labels


def test_dataset_items_properties_and_augment(store: Path) -> None:
    synset = read_store(store)
    ds = SyntheticDataset(store, augment=lambda x: x.flip(-1) + 100.0)
    assert len(ds) == 8 and ds.num_classes == 4
    assert ds.classes == ["class_0", "class_1", "class_2", "class_3"]
    assert ds.meta == synset.meta and ds.image_shape == (3, 8, 8)
    image, label = ds[3]
    assert isinstance(label, int) and label == int(synset.labels[3])
    assert torch.equal(image, synset.images[3].flip(-1) + 100.0)
    assert torch.equal(ds[-1][0], synset.images[7].flip(-1) + 100.0)
    with pytest.raises(IndexError):
        ds[8]
    ds.close()
    assert torch.equal(ds[0][0], synset.images[0].flip(-1) + 100.0)  # reopens


def test_dataset_soft_labels(store: Path, tmp_path: Path) -> None:
    synset = read_store(store)
    ds = load(store, soft=True)
    image, label, soft = ds[2]
    assert torch.equal(soft, synset.soft_labels[2]) and label == int(synset.labels[2])

    plain = tmp_path / "plain.h5"
    write_store(plain, make_set())
    with pytest.raises(StoreError, match="no soft_labels"):
        load(plain, soft=True)
    with pytest.raises(DataError, match="no soft_labels"):
        SyntheticDataset(make_set(), soft=True)
    with pytest.raises(ConfigError, match="callable"):
        load(plain, augment="flip")
    with pytest.raises(StoreError, match="no such file"):
        load(tmp_path / "missing.h5")


def test_dataset_from_memory(store: Path) -> None:
    synset = read_store(store)
    ds = SyntheticDataset(synset, soft=True)
    x, y, s = ds[5]
    assert torch.equal(x, synset.images[5]) and y == int(synset.labels[5])
    assert torch.equal(s, synset.soft_labels[5]) and ds.path is None
    batch = next(iter(DataLoader(ds, batch_size=8)))
    assert torch.equal(batch[0], synset.images)


def test_dataset_pickles_without_its_handle(store: Path) -> None:
    ds = load(store)
    first = ds[0][0]
    assert ds._h5 is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._h5 is None and ds._h5 is not None
    assert torch.equal(clone[0][0], first)


# --------------------------------------------------------------------------- checkpoints


class Evil:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoint_path_for() -> None:
    assert checkpoint_path_for("runs/out.h5") == Path("runs/out.h5.ckpt.pt")


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(7)
    torch.randn(5, generator=g)  # advance it
    param = torch.nn.Parameter(torch.randn(4, 3, generator=g))
    opt = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    param.sum().backward()
    opt.step()
    payload = {
        "iteration": 42,
        "images": param.detach().clone(),
        "optimizer": opt.state_dict(),
        "rng": g.get_state(),
        "config": json.dumps({"lr_img": 1.0}),
        "dataset_fingerprint": "sha256:abc",
        "losses": [1.5, 1.25],
    }
    path = checkpoint_path_for(tmp_path / "out.h5")
    save_checkpoint(path, payload)
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5.ckpt.pt"]
    back = load_checkpoint(path)

    assert back["iteration"] == 42 and back["losses"] == [1.5, 1.25]
    assert back["config"] == payload["config"] and back["dataset_fingerprint"] == "sha256:abc"
    assert torch.equal(back["images"], payload["images"])
    g2 = torch.Generator()
    g2.set_state(back["rng"])
    assert torch.equal(torch.randn(6, generator=g2), torch.randn(6, generator=g))

    param2 = torch.nn.Parameter(back["images"].clone())
    opt2 = torch.optim.SGD([param2], lr=0.5, momentum=0.0)
    opt2.load_state_dict(back["optimizer"])
    assert opt2.param_groups[0]["lr"] == 0.1 and opt2.param_groups[0]["momentum"] == 0.9
    assert torch.equal(opt2.state[param2]["momentum_buffer"], opt.state[param]["momentum_buffer"])


def test_checkpoint_load_uses_weights_only(tmp_path: Path, monkeypatch) -> None:
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    save_checkpoint(tmp_path / "c.pt", {"x": torch.ones(2)})
    load_checkpoint(tmp_path / "c.pt")
    assert calls == [{"map_location": "cpu", "weights_only": True}]


def test_checkpoint_with_pickled_object_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.ckpt.pt"
    torch.save({"iteration": 1, "payload": Evil(str(marker))}, path)
    with pytest.raises(StoreError, match="refusing to unpickle"):
        load_checkpoint(path)
    assert not marker.exists()
    torch.save({"x": Evil}, path)  # a class itself is refused too, and named
    with pytest.raises(StoreError, match=r"\(test_store\.Evil\); refusing"):
        load_checkpoint(path)


def test_checkpoint_corrupt_missing_and_non_dict(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"x": torch.randn(100)})
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(StoreError, match="not a readable checkpoint"):
        load_checkpoint(path)
    path.write_text("not a checkpoint")
    with pytest.raises(StoreError, match="not a readable checkpoint"):
        load_checkpoint(path)
    with pytest.raises(StoreError, match="no such file"):
        load_checkpoint(tmp_path / "none.pt")
    torch.save([1, 2], path)
    with pytest.raises(StoreError, match="not a distill-data checkpoint"):
        load_checkpoint(path)


def test_save_checkpoint_refuses_unloadable_payloads(tmp_path: Path) -> None:
    import numpy as np

    path = tmp_path / "c.pt"
    with pytest.raises(TypeError, match=r"\['stats'\]\['acc'\].*numpy"):
        save_checkpoint(path, {"stats": {"acc": np.float64(0.5)}})
    with pytest.raises(TypeError, match="Evil"):
        save_checkpoint(path, {"x": [Evil("m")]})
    with pytest.raises(TypeError, match="must be a dict"):
        save_checkpoint(path, [1])
    assert list(tmp_path.iterdir()) == []


def test_save_checkpoint_is_atomic(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"iteration": 1})
    before = path.read_bytes()

    def half_save(obj, f):
        Path(f).write_bytes(b"PK\x03\x04 half")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(StoreError, match="No space left"):
        save_checkpoint(path, {"iteration": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_atomic_write_removes_temp_files_of_dead_writers(tmp_path):
    """A SIGKILLed writer's temp file is cleaned up by the next write; a live one is kept."""
    import subprocess

    from distill_data.store import atomic_write

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".x.json.tmp-{dead.pid}-abcd"
    stale.write_text("junk")
    live = tmp_path / f".x.json.tmp-{os.getppid()}-abcd"
    live.write_text("junk")
    with atomic_write(tmp_path / "x.json") as tmp:
        tmp.write_text("ok")
    assert not stale.exists()
    assert live.exists()
    assert (tmp_path / "x.json").read_text() == "ok"


def test_api_load_with_dsa_augmentation_in_workers(tmp_path):
    """dd.load(path, augment=True) gives per-image DSA that changes images, keeps shapes
    and labels, and works in DataLoader workers."""
    import distill_data as dd
    from distill_data.augment import PerSampleDSA

    path = tmp_path / "s.h5"
    write_store(path, make_set(n=12, channels=1, size=12, num_classes=3))
    plain = dd.load(path)
    aug = dd.load(path, augment=True)
    assert isinstance(aug.augment, PerSampleDSA)
    assert aug.augment.dsa.strategy == "color_crop_cutout_flip_scale_rotate"  # not digits
    changed = sum(not torch.equal(plain[i][0], aug[i][0]) for i in range(len(plain)))
    assert changed > 0
    loader = torch.utils.data.DataLoader(aug, batch_size=4, num_workers=2)
    xs, ys = zip(*loader)
    assert torch.cat(ys).tolist() == [int(plain[i][1]) for i in range(len(plain))]
    assert torch.cat(xs).shape == (len(plain), 1, 12, 12)
    assert dd.load(path, augment=False).augment is None
    with pytest.raises(ConfigError, match="nonsense_op"):
        dd.load(path, augment="nonsense_op")


def test_a_set_prints_as_a_summary_not_its_pixels(tiny_npz, tmp_path):
    import distill_data as dd

    synset = dd.build(str(tiny_npz), "herding", 2, tmp_path / "h.h5", quiet=True)
    text = repr(synset)
    assert text == "SyntheticSet(herding, ipc=2: 6 images of 1x10x10, 3 classes of tiny.npz)"
