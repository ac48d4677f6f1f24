"""The distill-data HDF5 store format, version 2, and its in-memory twin.

Every generator writes one HDF5 file with this layout; every consumer (evaluation,
``load()``, the quantization / distillation trainer, ``distill-data inspect``) reads it.
A file read with plain h5py says what it holds: each dataset carries attributes that
give its layout, value space and meaning.

Format ``distill-data``, version 2
----------------------------------

Datasets (all chunked, gzip level 4, shuffle filter):

=============== ======= ========= ================================================
name            dtype   shape     meaning
=============== ======= ========= ================================================
``images``      float32 (N,C,H,W) synthetic images in the *normalised* space
                                  generators optimise in, ``(x - mean) / std`` per
                                  channel, where ``x`` are pixels in [0, 1];
                                  ``images * std + mean`` gives the pixels back
                                  (``mean``/``std``: file attributes, one value per
                                  channel, broadcast over N, H, W).
``labels``      int64   (N,)      class index of each image, in
                                  ``[0, len(classes))``: ``classes[labels[i]]`` is
                                  the name of image ``i``'s class.
``soft_labels`` float32 (N,K)     optional; teacher logits (before softmax), row
                                  ``i`` for image ``i``, column ``k`` for
                                  ``classes[k]``. Attribute ``temperature`` (float >
                                  0): distil with ``softmax(soft_labels / T)``.
=============== ======= ========= ================================================

Attributes of the datasets (strings; descriptive, for readers that do not know this
format; distill-data itself does not need them):

=============== ================ ==============================================
dataset         attribute        value
=============== ================ ==============================================
``images``      ``layout``       ``"NCHW"``
``images``      ``value_space``  ``"normalised: (pixel - mean) / std per channel,
                                 pixel in [0, 1]"``
``images``      ``to_pixels``    ``"images * std + mean"`` (+ where mean/std are)
``images``      ``description``  one sentence on what the images are
``labels``      ``description``  class index into ``classes``
``soft_labels`` ``description``  teacher logits, their columns, how to use them
=============== ================ ==============================================

An ``images`` chunk holds whole images, up to 64 and about 1 MiB at most
(``min(N, 64)`` for 3x32x32 images and smaller), so reading one image decompresses only
its own chunk; ``soft_labels`` chunks hold the same rows, ``labels`` up to 4096.

File attributes:

======================= ======== ==================================================
name                    type     meaning
======================= ======== ==================================================
``format``              str      always ``"distill-data"``; marks the file as ours.
``format_version``      int      layout version (this document: 2). Readers refuse
                                 files newer than they know.
``generator``           str      registered generator name, e.g. ``"dm"``.
``config``              str      JSON object: the generator's full config.
``dataset``             str      name of the real dataset distilled.
``dataset_fingerprint`` str      hash of the real data (not its path).
``ipc``                 int      images per class; 0 when the set was asked for
                                 by total size (``count``).
``count``               int      total images asked for (``--count``); 0 for a
                                 per-class set (``ipc`` > 0). Exactly one of
                                 ``ipc`` and ``count`` is non-zero.
``seed``                int      seed of the run (uint64 when >= 2**63).
``mean``                float[C] per-channel mean used for normalisation.
``std``                 float[C] per-channel std used for normalisation.
``classes``             str      JSON list of class names; index = label.
``package_version``     str      distill-data version that wrote the file.
``created``             str      ISO-8601 UTC time of writing.
``iterations``          int      generator iterations done.
``extra``               str      JSON object for anything else.
======================= ======== ==================================================

JSON values round-trip as JSON does: tuples come back as lists, dict keys as strings.
Readers ignore attributes and datasets they do not know, so a reader can read files
that only *add* things; anything else bumps ``format_version``.

Version 1 (before 2026-12) had no ``count`` attribute and no dataset attributes; it is
read as it is, ``count`` taken as N for sets with ``ipc`` 0.
"""

from __future__ import annotations

import json
import math
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from distill_data._version import __version__
from distill_data.errors import ConfigError, DataError

FORMAT_NAME = "distill-data"
FORMAT_VERSION = 2
#: The oldest layout this reader still reads.
OLDEST_VERSION = 1

IMAGES = "images"
LABELS = "labels"
SOFT_LABELS = "soft_labels"
TEMPERATURE = "temperature"

#: File attributes every version-1 store carries (version 2 adds ``count``).
REQUIRED_ATTRS_V1: tuple[str, ...] = (
    "format",
    "format_version",
    "generator",
    "config",
    "dataset",
    "dataset_fingerprint",
    "ipc",
    "seed",
    "mean",
    "std",
    "classes",
    "package_version",
    "created",
    "iterations",
    "extra",
)

#: File attributes every store of a version must carry.
REQUIRED_ATTRS: dict[int, tuple[str, ...]] = {
    1: REQUIRED_ATTRS_V1,
    2: (*REQUIRED_ATTRS_V1, "count"),
}

#: The descriptive attributes written on each dataset (format version 2).
DATASET_ATTRS: dict[str, dict[str, str]] = {
    IMAGES: {
        "layout": "NCHW",
        "value_space": "normalised: (pixel - mean) / std per channel, pixel in [0, 1]",
        "to_pixels": "images * std + mean, with the file attributes mean and std "
        "(one value per channel, broadcast over N, H and W)",
        "description": "synthetic images, one per row, in the space the networks are trained in",
    },
    LABELS: {
        "description": "class index of each image into the file attribute 'classes' "
        "(a JSON list of names): classes[labels[i]] names image i's class",
    },
    SOFT_LABELS: {
        "description": "teacher logits before softmax, row i for image i, column k for "
        "classes[k]; distil with softmax(soft_labels / temperature)",
    },
}

#: Most images per chunk, and the byte budget a chunk aims to stay under.
CHUNK_IMAGES = 64
CHUNK_BYTES = 1 << 20
#: gzip level: 4 is close to 9 in size on float images and much faster.
GZIP_LEVEL = 4

_INT64_MIN = -(1 << 63)
_UINT64_MAX = (1 << 64) - 1


def images_per_chunk(n: int, image_shape: tuple[int, ...], itemsize: int = 4) -> int:
    """Images per HDF5 chunk: whole images, at most 64 and at most ~1 MiB (>= 1).

    Small chunks keep per-image reads (the torch Dataset) cheap; whole images keep
    one image from ever spanning two chunks.
    """
    per_image = itemsize * math.prod(image_shape)
    by_bytes = max(1, CHUNK_BYTES // max(1, per_image))
    return max(1, min(n, CHUNK_IMAGES, by_bytes))


@dataclass
class StoreMeta:
    """Everything about a synthetic set except its tensors (the file attributes).

    Attributes:
        generator: registered generator name.
        config: the generator's full config, JSON-serialisable.
        dataset: name of the real dataset.
        dataset_fingerprint: hash of the real data, so a store can be matched to it.
        ipc: images per class; 0 when the set was asked for by total size.
        seed: seed of the run.
        mean: per-channel mean of the normalisation the images live in.
        std: per-channel std of that normalisation.
        classes: class names; label ``i`` means ``classes[i]``.
        iterations: generator iterations done (lets a resumed run continue counting).
        count: total images asked for when the set is not per class (``ipc`` 0);
            0 for per-class sets.
        package_version: distill-data version that made the set.
        created: ISO-8601 UTC time; filled by :func:`write_store` when empty.
        extra: JSON-serialisable dict for anything else (scores, notes, ...).
    """

    generator: str
    config: dict[str, Any]
    dataset: str
    dataset_fingerprint: str
    ipc: int
    seed: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str]
    iterations: int = 0
    count: int = 0
    package_version: str = __version__
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def validate(self, channels: int | None = None) -> None:
        """Check types and ranges; ``channels`` also checks ``mean``/``std`` lengths.

        Raises:
            DataError: a field has the wrong type or an impossible value.
            ConfigError: ``config`` or ``extra`` is not JSON-serialisable.
        """
        for name in ("generator", "dataset", "dataset_fingerprint", "package_version"):
            if not isinstance(getattr(self, name), str):
                raise DataError(
                    f"StoreMeta.{name} must be a str, got {type(getattr(self, name)).__name__}"
                )
        if not self.generator:
            raise DataError("StoreMeta.generator is empty; give the generator's name")
        if not isinstance(self.created, str):
            raise DataError("StoreMeta.created must be an ISO-8601 str (or '' to fill it)")
        for name, lo, hi in (
            ("ipc", 0, _UINT64_MAX),
            ("seed", _INT64_MIN, _UINT64_MAX),
            ("iterations", 0, _UINT64_MAX),
            ("count", 0, _UINT64_MAX),
        ):
            value = _as_int(getattr(self, name), f"StoreMeta.{name}")
            if not lo <= value <= hi:
                raise DataError(f"StoreMeta.{name} = {value} is out of range [{lo}, {hi}]")
        if not isinstance(self.classes, (list, tuple)) or not self.classes:
            raise DataError("StoreMeta.classes must be a non-empty list of class names")
        bad = [c for c in self.classes if not isinstance(c, str)]
        if bad:
            raise DataError(f"StoreMeta.classes must hold str names, got {bad[0]!r}")
        for name in ("config", "extra"):
            value = getattr(self, name)
            if not isinstance(value, dict):
                raise ConfigError(f"StoreMeta.{name} must be a dict, got {type(value).__name__}")
            to_json(value, f"StoreMeta.{name}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            try:
                floats = [float(v) for v in values]
            except (TypeError, ValueError) as exc:
                raise DataError(f"StoreMeta.{name} must be a sequence of floats: {exc}") from exc
            if not floats or not all(math.isfinite(v) for v in floats):
                raise DataError(f"StoreMeta.{name} must be non-empty and finite, got {values}")
            if channels is not None and len(floats) != channels:
                raise DataError(
                    f"StoreMeta.{name} has {len(floats)} values but the images have "
                    f"{channels} channel(s); give one value per channel"
                )
        if any(float(s) <= 0 for s in self.std):
            raise DataError(f"StoreMeta.std must be > 0 per channel, got {self.std}")


@dataclass(eq=False)
class SyntheticSet:
    """A synthetic set in memory: what generators produce and :func:`write_store` saves.

    Attributes:
        images: (N, C, H, W) float, in the normalised space ``(x - mean) / std``.
        labels: (N,) integer class indices.
        meta: everything else (see :class:`StoreMeta`).
        soft_labels: optional (N, K) teacher logits, ``K = len(meta.classes)``.
        temperature: distillation temperature of ``soft_labels``; required with them.
    """

    images: torch.Tensor
    labels: torch.Tensor
    meta: StoreMeta
    soft_labels: torch.Tensor | None = None
    temperature: float | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:  # not the dataclass default, which prints every pixel
        m = self.meta
        size = f"ipc={m.ipc}" if m.ipc else f"count={m.count}"
        soft = "" if self.soft_labels is None else f", soft labels at T={self.temperature:g}"
        shape = "x".join(str(d) for d in self.image_shape)
        return (
            f"SyntheticSet({m.generator}, {size}: {len(self)} images of {shape}, "
            f"{self.num_classes} classes of {m.dataset}{soft})"
        )

    @property
    def num_classes(self) -> int:
        return self.meta.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def denormalized(self) -> torch.Tensor:
        """The images back in pixel space, ``x * std + mean`` ([0, 1]-ish, not clamped).

        Not clamped so that the inverse is exact; clamp yourself for display.
        """
        shape = (1, -1, 1, 1)
        dtype = self.images.dtype
        device = self.images.device
        mean = torch.tensor(self.meta.mean, dtype=dtype, device=device).view(shape)
        std = torch.tensor(self.meta.std, dtype=dtype, device=device).view(shape)
        return self.images * std + mean

    def validate(self) -> None:
        """Check that the set can be stored and read back as it is.

        Checks shapes, dtypes, label range, soft-label shape, mean/std length and
        that no image or soft label is NaN or infinite.

        Raises:
            DataError: the tensors or meta are malformed (message says which and why).
            ConfigError: ``meta.config`` or ``meta.extra`` is not JSON-serialisable.
        """
        if not isinstance(self.meta, StoreMeta):
            kind = type(self.meta).__name__
            raise DataError(f"SyntheticSet.meta must be a StoreMeta, got {kind}")
        x, y = self.images, self.labels
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise DataError("SyntheticSet.images and .labels must be torch tensors")
        if x.dim() != 4 or not x.is_floating_point():
            raise DataError(
                f"images must be a 4-D float tensor (N, C, H, W), got {x.dim()}-D {x.dtype}"
            )
        n = int(x.shape[0])
        if n == 0 or min(x.shape[1:]) == 0:
            raise DataError(f"images must not be empty, got shape {tuple(x.shape)}")
        if y.dim() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise DataError(f"labels must be a 1-D integer tensor, got {y.dim()}-D {y.dtype}")
        if int(y.shape[0]) != n:
            raise DataError(f"labels has {y.shape[0]} entries but there are {n} images")
        self.meta.validate(channels=int(x.shape[1]))
        k = self.meta.num_classes
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= k:
            raise DataError(
                f"labels must lie in [0, {k}) for {k} classes, found values in [{lo}, {hi}]"
            )
        if not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
            raise DataError(f"images contain NaN or inf ({bad} of {n} images affected)")
        if self.soft_labels is None:
            if self.temperature is not None:
                raise DataError("temperature is set but there are no soft_labels")
            return
        s = self.soft_labels
        if not isinstance(s, torch.Tensor) or not s.is_floating_point():
            raise DataError("soft_labels must be a float tensor of teacher logits")
        if tuple(s.shape) != (n, k):
            raise DataError(
                f"soft_labels must have shape (N, K) = ({n}, {k}), got {tuple(s.shape)}"
            )
        if not bool(torch.isfinite(s).all()):
            raise DataError("soft_labels contain NaN or inf")
        t = self.temperature
        if t is None or isinstance(t, bool):
            raise DataError("soft_labels need a temperature (the one the teacher logits use)")
        try:
            t = float(t)
        except (TypeError, ValueError) as exc:
            raise DataError(f"temperature must be a float, got {self.temperature!r}") from exc
        if not (math.isfinite(t) and t > 0):
            raise DataError(f"temperature must be finite and > 0, got {t}")


@dataclass(frozen=True)
class StoreInfo:
    """What a store holds, read from attributes and shapes only (cheap; for ``inspect``).

    Attributes:
        path: the file.
        meta: the file attributes as a :class:`StoreMeta`.
        format_version: layout version of the file.
        num_images: N.
        image_shape: (C, H, W).
        has_soft_labels: whether ``soft_labels`` is present.
        temperature: temperature of the soft labels, ``None`` without them.
        file_size: size on disk in bytes.
    """

    path: Path
    meta: StoreMeta
    format_version: int
    num_images: int
    image_shape: tuple[int, int, int]
    has_soft_labels: bool
    temperature: float | None
    file_size: int

    @property
    def num_classes(self) -> int:
        return self.meta.num_classes


def to_json(value: Any, what: str) -> str:
    """Serialise ``value`` to JSON, naming ``what`` when it cannot be.

    Raises:
        ConfigError: ``value`` holds something JSON cannot represent (or NaN/inf).
    """
    try:
        return json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{what} must be JSON-serialisable (str, numbers, bools, None, lists, dicts): {exc}"
        ) from exc


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise DataError(f"{what} must be an int, got bool")
    try:
        return operator.index(value)
    except TypeError as exc:
        raise DataError(f"{what} must be an int, got {type(value).__name__}") from exc
