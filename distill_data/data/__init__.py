"""Real data in: built-in datasets, ``.npz``, ImageFolder, CIFAR pickles, MNIST IDX.

Everything comes out as one :class:`RealDataset` (float32 NCHW in [0, 1] plus
normalisation statistics and a content fingerprint), whatever it came in as.
"""

from __future__ import annotations

import os

from distill_data.data.base import DataSpec, ImageSpace, RealDataset, make_real_dataset
from distill_data.data.builtin import DATASETS
from distill_data.data.formats import detect_format, load_path
from distill_data.errors import DataError, opt

__all__ = [
    "DATASETS",
    "DataSpec",
    "ImageSpace",
    "RealDataset",
    "detect_format",
    "find_dataset",
    "list_datasets",
    "load_dataset",
    "load_path",
    "make_real_dataset",
]


def load_dataset(spec: str | os.PathLike[str], *, progress: bool = True) -> RealDataset:
    """Load a dataset by built-in name (see :func:`list_datasets`) or by path.

    A built-in name wins over a file or folder of the same name in the working
    directory; write ``./digits`` to load the folder instead.

    Args:
        spec: a built-in name such as ``"mnist5k"``, or a path :func:`detect_format`
            recognises.
        progress: show a progress bar while decoding image files.

    Raises:
        DataError: neither a built-in nor an existing path, or the data is malformed.
    """
    if isinstance(spec, str) and spec in DATASETS:
        return DATASETS.get(spec)()
    if os.path.exists(spec):
        return load_path(spec, progress=progress)
    raise DataError(
        f"unknown dataset {os.fspath(spec)!r}: not a built-in "
        f"({', '.join(DATASETS.names())}) and no such path"
    )


def find_dataset(name: str, source: str = "") -> str:
    """The spec to load a dataset recorded as ``name`` (a built-in or a path) with its
    absolute ``source`` path: the name if it resolves, else the source if it exists."""
    if name in DATASETS or os.path.exists(name) or not source:
        return name
    if os.path.exists(source):
        return source
    raise DataError(f"the data came from {source!r}, which no longer exists; pass {opt('dataset')}")


def list_datasets() -> list[tuple[str, str]]:
    """Built-in datasets as ``(name, one-line description)``, sorted by name."""
    return [(name, DATASETS.help(name)) for name in DATASETS.names()]
