"""The one shape every real dataset takes inside distill-data."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from distill_data.errors import DataError, DistillDataWarning

MIN_SIZE = 8


class ImageSpace:
    """What every consumer needs to know about the images, with or without the data:
    class names, per-channel normalisation, shape, and where they came from."""

    name: str
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def is_digits(self) -> bool:
        """Digit-like data (MNIST, sklearn digits): horizontal flips change the class."""
        return is_digit_name(self.name)

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return mean, std

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map [0, 1] pixels to the normalised space models are trained in."""
        mean, std = self._stats(x)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize` (no clamping)."""
        mean, std = self._stats(x)
        return x * std + mean

    def pixel_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised values of pixels 0 and 1, each (1, C, 1, 1): the range that
        generators clamping to valid images clamp to."""
        ends = torch.tensor([0.0, 1.0], dtype=torch.float64).view(2, 1, 1, 1)
        lo, hi = self.normalize(ends.expand(2, self.channels, 1, 1)).float()
        return lo.unsqueeze(0), hi.unsqueeze(0)


@dataclass(eq=False)
class DataSpec(ImageSpace):
    """The image space of a dataset without its images: what data-free generators know
    from a teacher file (input shape, normalisation, classes, the data's fingerprint)."""

    name: str
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fingerprint: str
    channels: int
    im_size: tuple[int, int]
    source: str = ""


@dataclass(eq=False)
class RealDataset(ImageSpace):
    """Real labelled images, train and test, as float32 NCHW in [0, 1].

    ``mean``/``std`` are per-channel statistics of the training images; generators and
    evaluation work in the normalised space ``(x - mean) / std``. ``fingerprint`` is a
    hash of the data itself (not the path), recorded in every store built from it.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fingerprint: str
    source: str = ""
    _by_class: list[torch.Tensor] | None = field(default=None, repr=False)

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def im_size(self) -> tuple[int, int]:
        return int(self.x_train.shape[2]), int(self.x_train.shape[3])

    def spec(self) -> DataSpec:
        """The image space alone (no images)."""
        return DataSpec(
            self.name,
            list(self.classes),
            tuple(self.mean),
            tuple(self.std),
            self.fingerprint,
            self.channels,
            self.im_size,
            self.source,
        )

    def indices_per_class(self) -> list[torch.Tensor]:
        """Training-set indices of each class, in data order."""
        if self._by_class is None:
            self._by_class = [
                torch.nonzero(self.y_train == c, as_tuple=False).flatten()
                for c in range(self.num_classes)
            ]
        return self._by_class

    def class_counts(self) -> list[int]:
        return [int(i.numel()) for i in self.indices_per_class()]


def is_digit_name(name: str) -> bool:
    """True for dataset names of digit data, where a horizontal flip changes the class."""
    low = name.lower()
    return name in {"mnist5k", "digits"} or ("mnist" in low and "fashion" not in low)


def fingerprint_arrays(*arrays: np.ndarray | torch.Tensor) -> str:
    """Content hash (sha256, first 16 hex digits) over shapes, dtypes and bytes."""
    h = hashlib.sha256()
    for a in arrays:
        a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def to_nchw_float(x: np.ndarray, what: str) -> np.ndarray:
    """Images in any of (N,H,W), (N,H,W,C), (N,C,H,W), uint8 0-255 or float 0-1 -> float32 NCHW.

    A 4-D array is read as NCHW when its second axis is 1 or 3 and its last axis is not,
    otherwise as NHWC.
    """
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.transpose(0, 3, 1, 2)
        elif x.shape[1] not in (1, 3):
            raise DataError(
                f"{what}: cannot tell the channel axis of shape {tuple(x.shape)}; "
                "use (N,H,W), (N,H,W,C) or (N,C,H,W) with 1 or 3 channels"
            )
    else:
        raise DataError(
            f"{what}: images must be (N,H,W), (N,H,W,C) or (N,C,H,W), got shape {tuple(x.shape)}"
        )
    if x.dtype == np.uint8:
        out = x.astype(np.float32) / 255.0
    elif np.issubdtype(x.dtype, np.floating):
        out = x.astype(np.float32)
        if not np.isfinite(out).all():
            raise DataError(f"{what}: images contain NaN or infinite values")
        lo, hi = float(out.min(initial=0.0)), float(out.max(initial=0.0))
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise DataError(
                f"{what}: float images must lie in [0, 1] (found {lo:.3g}..{hi:.3g}); "
                "store uint8 0-255 or scale to [0, 1]"
            )
    elif np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(f"{what}: integer images must lie in 0..255")
        out = x.astype(np.float32) / 255.0
    else:
        raise DataError(f"{what}: unsupported image dtype {x.dtype}")
    return np.ascontiguousarray(out)


def make_real_dataset(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    classes: list[str] | None = None,
    source: str = "",
) -> RealDataset:
    """Validate raw arrays and build a :class:`RealDataset`.

    Images may be any layout/dtype accepted by :func:`to_nchw_float`. Labels must be
    integers 0..K-1. Raises :class:`DataError` with a one-line message on any problem.
    """
    xtr = to_nchw_float(x_train, f"{name} train images")
    xte = to_nchw_float(x_test, f"{name} test images")
    ytr = _labels(y_train, f"{name} train labels", len(xtr))
    yte = _labels(y_test, f"{name} test labels", len(xte))
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataError(
            f"{name}: train images are {xtr.shape[1:]} but test images are {xte.shape[1:]}"
        )
    c, h, w = xtr.shape[1:]
    if c not in (1, 3):
        raise DataError(f"{name}: images must have 1 or 3 channels, got {c}")
    if h < MIN_SIZE or w < MIN_SIZE:
        raise DataError(f"{name}: images must be at least {MIN_SIZE}x{MIN_SIZE}, got {h}x{w}")
    if len(xtr) == 0 or len(xte) == 0:
        raise DataError(f"{name}: train and test splits must both be non-empty")
    if classes is None:
        ytr, yte, classes = _number_classes(name, ytr, yte)
    classes = [str(c_) for c_ in classes]
    k = int(max(ytr.max(), yte.max())) + 1
    if len(classes) < k:
        raise DataError(f"{name}: labels go up to {k - 1} but only {len(classes)} class names")
    counts = np.bincount(ytr, minlength=len(classes))
    empty = [classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise DataError(
            f"{name}: class {empty[0]!r}{more} has no training images; every class needs "
            "at least one (drop the class from 'classes' or add its images)"
        )
    mean = tuple(float(v) for v in xtr.mean(axis=(0, 2, 3), dtype=np.float64))
    std = tuple(max(float(v), 1e-6) for v in xtr.std(axis=(0, 2, 3), dtype=np.float64))
    return RealDataset(
        name=name,
        x_train=torch.from_numpy(xtr),
        y_train=torch.from_numpy(ytr),
        x_test=torch.from_numpy(xte),
        y_test=torch.from_numpy(yte),
        classes=classes,
        mean=mean,
        std=std,
        fingerprint=fingerprint_arrays(xtr, ytr, xte, yte),
        source=source,
    )


def _number_classes(
    name: str, ytr: np.ndarray, yte: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Class names for data that gives none: the labels themselves. Labels that are not
    0..K-1 (``{3, 7, 9}``, or one stray 2**40) are renumbered in sorted order, so K is
    the number of distinct labels, never the largest one; the names keep the original
    labels and a :class:`DistillDataWarning` says so."""
    present = np.union1d(ytr, yte)
    if int(present[-1]) + 1 == len(present):
        return ytr, yte, [str(i) for i in range(len(present))]
    shown = ", ".join(str(v) for v in present[:6]) + (", ..." if len(present) > 6 else "")
    warnings.warn(
        f"{name}: the labels ({shown}) are not 0..K-1; renumbered to 0..{len(present) - 1} "
        "in sorted order, and the class names keep the original labels",
        DistillDataWarning,
        stacklevel=3,
    )
    remap = np.searchsorted(present, ytr), np.searchsorted(present, yte)
    return remap[0].astype(np.int64), remap[1].astype(np.int64), [str(v) for v in present]


def _labels(y: np.ndarray, what: str, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[0] == n and y.shape[1] > 1:
        raise DataError(
            f"{what}: labels of shape {tuple(y.shape)} (one-hot or scores?); give one "
            f"integer class per image, shape ({n},) (e.g. y.argmax(1))"
        )
    y = y.reshape(-1)
    if len(y) != n:
        raise DataError(f"{what}: {len(y)} labels for {n} images")
    if not np.issubdtype(y.dtype, np.integer):
        if (
            np.issubdtype(y.dtype, np.floating)
            and np.isfinite(y).all()
            and (y == np.round(y)).all()
        ):
            y = y.astype(np.int64)
        else:
            raise DataError(f"{what}: labels must be integers 0..K-1 (got dtype {y.dtype})")
    if y.size and y.min() < 0:
        raise DataError(f"{what}: labels must be non-negative")
    return y.astype(np.int64)
