"""A torch Dataset over a distill-data store, safe in multi-worker DataLoaders.

The HDF5 file is opened lazily, once per process, on first access: an h5py handle
shared across ``fork`` corrupts reads, and one cannot be pickled for ``spawn``
workers. Labels (small) are read once up front; images and soft labels are read per
item, and a 32 MiB chunk cache per process means each compressed chunk is usually
decompressed only once per epoch even when the loader shuffles.
"""

from __future__ import annotations

import contextlib
import operator
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from distill_data.errors import ConfigError, DataError, StoreError
from distill_data.store.io import _H5_ERRORS, PathLike, _corrupt, open_h5, open_store
from distill_data.store.schema import (
    IMAGES,
    LABELS,
    SOFT_LABELS,
    StoreInfo,
    StoreMeta,
    SyntheticSet,
)

#: Per-process HDF5 chunk cache: holds all chunks of typical synthetic sets.
_CACHE_BYTES = 32 << 20
_CACHE_SLOTS = 10007  # a prime, as HDF5 recommends

Augment = Callable[[torch.Tensor], torch.Tensor]


class SyntheticDataset(Dataset):
    """Items of a synthetic set: ``(image, label)`` or ``(image, label, soft_label)``.

    Images are float32 (C, H, W) in the normalised space the set was built in (what
    models trained on it expect); labels are ints; soft labels are float32 (K,)
    teacher logits (use them with :attr:`temperature`).

    Args:
        source: a store path, or a :class:`SyntheticSet` already in memory.
        augment: optional callable applied to each image, (C, H, W) -> (C, H, W), at
            every access (train-time augmentation; it sees normalised images).
        soft: also return the soft label of each item.

    Raises:
        StoreError: the store cannot be read, or ``soft=True`` and it has no soft labels.
        DataError: an in-memory set is malformed, or ``soft=True`` and it has none.
        ConfigError: ``augment`` is not callable.
    """

    def __init__(
        self,
        source: PathLike | SyntheticSet,
        augment: Augment | None = None,
        soft: bool = False,
    ) -> None:
        if augment is not None and not callable(augment):
            raise ConfigError(f"augment must be a callable (C,H,W) -> (C,H,W), got {augment!r}")
        self.augment = augment
        self.soft = bool(soft)
        self._synset: SyntheticSet | None = None
        self._path: Path | None = None
        self._h5: h5py.File | None = None
        self._h5_pid: int | None = None
        self._info: StoreInfo | None = None
        if isinstance(source, SyntheticSet):
            source.validate()
            if self.soft and source.soft_labels is None:
                raise DataError("soft=True but this synthetic set has no soft_labels")
            self._synset = source
            self._meta = source.meta
            self._labels = source.labels.detach().to("cpu", torch.int64)
            self._temperature = source.temperature
            self._has_soft = source.soft_labels is not None
            self._image_shape = source.image_shape
        else:
            with open_store(source) as (f, info):
                try:
                    labels = np.asarray(f[LABELS][...], dtype=np.int64)
                except _H5_ERRORS as exc:
                    raise _corrupt(info.path, exc) from exc
            k = info.num_classes
            if labels.size and (labels.min() < 0 or labels.max() >= k):
                raise StoreError(f"{info.path} holds labels outside [0, {k}) (damaged store)")
            if self.soft and not info.has_soft_labels:
                raise StoreError(
                    f"soft=True but {info.path} has no soft_labels; build it with a teacher "
                    "or load it with soft=False"
                )
            self._path = info.path
            self._info = info
            self._meta = info.meta
            self._labels = torch.from_numpy(labels)
            self._temperature = info.temperature
            self._has_soft = info.has_soft_labels
            self._image_shape = info.image_shape

    # ----------------------------------------------------------------- properties

    @property
    def meta(self) -> StoreMeta:
        """The store's metadata (generator, config, dataset, mean/std, ...)."""
        return self._meta

    @property
    def classes(self) -> list[str]:
        """Class names; label ``i`` means ``classes[i]``."""
        return list(self._meta.classes)

    @property
    def num_classes(self) -> int:
        return len(self._meta.classes)

    @property
    def labels(self) -> torch.Tensor:
        """All labels, int64 (N,) (e.g. for a class-balanced sampler)."""
        return self._labels

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return self._image_shape

    @property
    def has_soft_labels(self) -> bool:
        return self._has_soft

    @property
    def temperature(self) -> float | None:
        """Temperature of the soft labels, ``None`` when there are none."""
        return self._temperature

    @property
    def path(self) -> Path | None:
        """The store file, ``None`` for an in-memory set."""
        return self._path

    # ----------------------------------------------------------------- Dataset

    def __len__(self) -> int:
        return int(self._labels.shape[0])

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        i = operator.index(index)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for {n} images")
        if self._synset is not None:
            image = self._synset.images[i].detach().to("cpu", torch.float32).clone()
            soft = None
            if self.soft:
                soft = self._synset.soft_labels[i].detach().to("cpu", torch.float32)
        else:
            image, soft = self._read(i)
        if self.augment is not None:
            image = self.augment(image)
        label = int(self._labels[i])
        if self.soft:
            return image, label, soft
        return image, label

    def _read(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        f = self._file()
        try:
            image = torch.from_numpy(np.asarray(f[IMAGES][i], dtype=np.float32))
            soft = None
            if self.soft:
                soft = torch.from_numpy(np.asarray(f[SOFT_LABELS][i], dtype=np.float32))
        except _H5_ERRORS as exc:
            raise _corrupt(self._path, exc) from exc
        return image, soft

    def _file(self) -> h5py.File:
        """This process's handle, (re)opened after a fork so none is ever shared."""
        pid = os.getpid()
        if self._h5 is None or self._h5_pid != pid:
            if self._h5 is not None:  # inherited across fork: drop, never read through it
                with contextlib.suppress(*_H5_ERRORS):
                    self._h5.close()
            assert self._path is not None
            self._h5 = open_h5(self._path, rdcc_nbytes=_CACHE_BYTES, rdcc_nslots=_CACHE_SLOTS)
            self._h5_pid = pid
        return self._h5

    def close(self) -> None:
        """Close this process's file handle (reopened on the next access)."""
        if self._h5 is not None and self._h5_pid == os.getpid():
            with contextlib.suppress(*_H5_ERRORS):
                self._h5.close()
        self._h5 = None
        self._h5_pid = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_h5"] = None  # h5py handles cannot cross processes
        state["_h5_pid"] = None
        return state

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    @property
    def info(self) -> StoreInfo | None:
        """Attributes and shapes of the store file, ``None`` for an in-memory set."""
        return self._info

    def __repr__(self) -> str:
        src = str(self._path) if self._path is not None else "in-memory"
        return (
            f"SyntheticDataset({src}, n={len(self)}, classes={self.num_classes}, "
            f"image_shape={self._image_shape}, soft={self.soft})"
        )


def load(
    path: PathLike | SyntheticSet, augment: Augment | None = None, soft: bool = False
) -> SyntheticDataset:
    """Open a store as a torch Dataset for downstream training (see SyntheticDataset)."""
    return SyntheticDataset(path, augment=augment, soft=soft)
