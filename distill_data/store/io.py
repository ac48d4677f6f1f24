"""Atomic writing and checked reading of distill-data HDF5 stores.

Writes never leave a half-written file: the store is written to a temp file in the
target's folder, fsynced, and renamed over the target, so a crash or kill at any point
leaves either the old file or the new one. Reads turn every way a file can be wrong
(missing, not HDF5, truncated, foreign, too new, incomplete) into a
:class:`~distill_data.errors.StoreError` that names the file and the problem.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from distill_data._version import __version__
from distill_data.errors import ConfigError, DataError, StoreError
from distill_data.store.schema import (
    DATASET_ATTRS,
    FORMAT_NAME,
    FORMAT_VERSION,
    GZIP_LEVEL,
    IMAGES,
    LABELS,
    OLDEST_VERSION,
    REQUIRED_ATTRS,
    SOFT_LABELS,
    TEMPERATURE,
    StoreInfo,
    StoreMeta,
    SyntheticSet,
    images_per_chunk,
    to_json,
)

PathLike = str | os.PathLike

#: Errors h5py / HDF5 raise on damaged files; turned into StoreError on read.
_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError)


# --------------------------------------------------------------------------- atomic write


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(folder: Path, name: str) -> None:
    """Delete temp files a SIGKILLed writer of ``name`` left behind (its pid is gone)."""
    for p in folder.glob(f".{name}.tmp-*-*"):
        try:
            pid = int(p.name[len(name) + 6 :].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            with contextlib.suppress(OSError):
                p.unlink()


@contextlib.contextmanager
def atomic_write(path: PathLike) -> Iterator[Path]:
    """Write a file all-or-nothing: yields a temp path to write to, then renames it.

    The temp file lives in the target's folder (``.<name>.tmp-<pid>-<random>``) so the
    final :func:`os.replace` is a same-filesystem rename, which is atomic. On success
    the temp file is fsynced, renamed onto ``path`` and the folder fsynced, so the new
    file survives a power cut. If the body raises (or is interrupted), the temp file is
    deleted and an existing ``path`` is left untouched. A process killed with SIGKILL
    can leave its temp file behind, never a partial ``path``.

    Used for stores, checkpoints and any report or image other modules write::

        with atomic_write(out / "report.json") as tmp:
            tmp.write_text(json.dumps(report))

    Args:
        path: the file to create or replace. A symlink is followed, so the link
            keeps pointing at the new contents.

    Yields:
        The temp path; the body must create the file there.

    Raises:
        StoreError: the folder does not exist, ``path`` is a folder, or the OS refused
            the write (permissions, disk full); the message names the path.
    """
    target = Path(path)
    if target.is_symlink():
        target = target.resolve()
    folder = target.parent
    if not folder.is_dir():
        raise StoreError(f"cannot write {target}: folder {folder} does not exist; create it first")
    if target.is_dir():
        raise StoreError(f"cannot write {target}: it is a folder; give a file name")
    _remove_stale_temps(folder, target.name)
    tmp = folder / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"atomic_write: the body wrote nothing to {tmp}")
        _fsync_path(tmp)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        # torch.save and h5py report a failed write (disk full, quota, file size
        # limit) as RuntimeError, the OS as OSError: either way one line, and the
        # previous file at ``path`` is untouched
        if isinstance(exc, (OSError, RuntimeError)) and not isinstance(exc, StoreError):
            raise StoreError(f"cannot write {target}: {_write_failure(exc, folder)}") from exc
        raise
    _fsync_dir(folder)


def _write_failure(exc: BaseException, folder: Path) -> str:
    """One line saying why a write failed, naming a full disk when that is the cause."""
    text = str(exc).strip()
    text = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", text)
    reason = (text.splitlines()[0] if text else type(exc).__name__).rstrip(".")
    full = getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in text
    if not full:
        with contextlib.suppress(OSError):
            full = shutil.disk_usage(folder).free < (1 << 20)
    if full:
        return f"no space left on the device ({reason}); free some space and rerun"
    if isinstance(exc, RuntimeError):
        return f"the write failed ({reason}); is the disk full or the file too large?"
    return reason


def _fsync_path(path: Path) -> None:
    """Flush a closed file's data to disk (any fd of the file flushes its pages)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on folders
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- write


def write_store(path: PathLike, synset: SyntheticSet) -> None:
    """Save a synthetic set as a distill-data store (format version 2), atomically.

    The set is validated first, so bad data (NaN, wrong shapes, labels out of range)
    raises before any file is created. ``meta.created`` is filled with the current UTC
    time when empty (the caller's ``meta`` is not modified). Images are stored as
    float32, labels as int64, soft labels as float32, whatever their dtype in memory.

    Raises:
        DataError: the set is malformed (see :meth:`SyntheticSet.validate`).
        ConfigError: ``meta.config`` / ``meta.extra`` are not JSON-serialisable.
        StoreError: the folder is missing or the file cannot be written.
    """
    synset.validate()
    meta = synset.meta
    if not meta.created:
        meta = replace(meta, created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if not meta.ipc and not meta.count:  # a set made without either: its size is the count
        meta = replace(meta, count=len(synset))
    images = synset.images.detach().to("cpu", torch.float32).contiguous().numpy()
    labels = synset.labels.detach().to("cpu", torch.int64).contiguous().numpy()
    soft = None
    if synset.soft_labels is not None:
        soft = synset.soft_labels.detach().to("cpu", torch.float32).contiguous().numpy()
    with atomic_write(path) as tmp, h5py.File(tmp, "w") as f:
        _write_datasets(f, images, labels, soft, synset.temperature)
        _write_attrs(f, meta)


def _write_datasets(
    f: h5py.File,
    images: np.ndarray,
    labels: np.ndarray,
    soft: np.ndarray | None,
    temperature: float | None,
) -> None:
    n = images.shape[0]
    rows = images_per_chunk(n, images.shape[1:])
    opts: dict[str, Any] = {"compression": "gzip", "compression_opts": GZIP_LEVEL, "shuffle": True}
    written = {
        IMAGES: f.create_dataset(IMAGES, data=images, chunks=(rows, *images.shape[1:]), **opts),
        LABELS: f.create_dataset(LABELS, data=labels, chunks=(min(n, 4096),), **opts),
    }
    if soft is not None:
        soft_rows = images_per_chunk(n, soft.shape[1:])
        ds = f.create_dataset(SOFT_LABELS, data=soft, chunks=(soft_rows, soft.shape[1]), **opts)
        ds.attrs[TEMPERATURE] = float(temperature)  # validate() made sure it is set
        written[SOFT_LABELS] = ds
    for name, ds in written.items():
        for key, text in DATASET_ATTRS[name].items():
            ds.attrs[key] = text


def _write_attrs(f: h5py.File, meta: StoreMeta) -> None:
    a = f.attrs
    a["format"] = FORMAT_NAME
    a["format_version"] = np.int64(FORMAT_VERSION)
    a["generator"] = meta.generator
    a["config"] = to_json(meta.config, "StoreMeta.config")
    a["dataset"] = meta.dataset
    a["dataset_fingerprint"] = meta.dataset_fingerprint
    a["ipc"] = _int_attr(meta.ipc)
    a["seed"] = _int_attr(meta.seed)
    a["mean"] = np.asarray([float(v) for v in meta.mean], dtype=np.float64)
    a["std"] = np.asarray([float(v) for v in meta.std], dtype=np.float64)
    a["classes"] = to_json(list(meta.classes), "StoreMeta.classes")
    a["package_version"] = meta.package_version
    a["created"] = meta.created
    a["iterations"] = _int_attr(meta.iterations)
    a["count"] = _int_attr(meta.count)
    a["extra"] = to_json(meta.extra, "StoreMeta.extra")


def _int_attr(value: int) -> np.integer:
    value = int(value)
    return np.int64(value) if value < (1 << 63) else np.uint64(value)


# --------------------------------------------------------------------------- read


def read_store(path: PathLike) -> SyntheticSet:
    """Load a whole store into memory, checking it on the way.

    Returns:
        The synthetic set: images float32 (normalised space), labels int64, soft
        labels float32 and their temperature when present.

    Raises:
        StoreError: the file is missing, not HDF5, truncated or corrupt, foreign, of a
            newer format version, incomplete, or holds invalid data (e.g. NaN).
    """
    with open_store(path) as (f, info):
        p = info.path
        try:
            images = torch.from_numpy(np.asarray(f[IMAGES][...], dtype=np.float32))
            labels = torch.from_numpy(np.asarray(f[LABELS][...], dtype=np.int64))
            soft = None
            if info.has_soft_labels:
                soft = torch.from_numpy(np.asarray(f[SOFT_LABELS][...], dtype=np.float32))
        except _H5_ERRORS as exc:
            raise _corrupt(p, exc) from exc
    synset = SyntheticSet(images, labels, info.meta, soft, info.temperature)
    try:
        synset.validate()
    except (DataError, ConfigError) as exc:
        raise StoreError(f"{p} holds invalid data: {exc}") from exc
    return synset


def read_info(path: PathLike) -> StoreInfo:
    """Read what a store holds from its attributes and dataset shapes only (cheap).

    Raises:
        StoreError: as :func:`read_store`, except that data values are not checked.
    """
    with open_store(path) as (_, info):
        return info


def read_meta(path: PathLike) -> StoreMeta:
    """Read only a store's attributes as a :class:`StoreMeta` (see :func:`read_info`)."""
    return read_info(path).meta


@contextlib.contextmanager
def open_store(path: PathLike, **h5_kwargs: Any) -> Iterator[tuple[h5py.File, StoreInfo]]:
    """Open a store read-only after checking its format, version, attributes and shapes.

    For readers that want a few rows rather than the whole set (the torch Dataset).
    The body's own h5py errors are not translated; wrap them with care.

    Args:
        path: the store.
        **h5_kwargs: passed to :class:`h5py.File` (e.g. ``rdcc_nbytes``).

    Yields:
        The open file and its :class:`StoreInfo`.

    Raises:
        StoreError: as :func:`read_info`.
    """
    p = check_readable(path)
    f = open_h5(p, **h5_kwargs)
    try:
        try:
            info = _info(f, p)
        except _H5_ERRORS as exc:
            raise _corrupt(p, exc) from exc
        yield f, info
    finally:
        with contextlib.suppress(*_H5_ERRORS):
            f.close()


def check_readable(path: PathLike) -> Path:
    """Return ``path`` as a Path if it is an existing readable file, else StoreError."""
    p = Path(path)
    if not p.exists():
        raise StoreError(f"no such file: {p}")
    if p.is_dir():
        raise StoreError(f"{p} is a folder, not a distill-data store file")
    if not os.access(p, os.R_OK):
        raise StoreError(f"cannot read {p}: permission denied")
    return p


def open_h5(p: Path, **h5_kwargs: Any) -> h5py.File:
    """Open ``p`` read-only with h5py, turning 'not HDF5 / truncated' into StoreError."""
    try:
        return h5py.File(p, "r", **h5_kwargs)
    except _H5_ERRORS as exc:
        raise _corrupt(p, exc) from exc


def _corrupt(p: Path, exc: BaseException) -> StoreError:
    from distill_data.paths import kind_phrase

    what = kind_phrase(p)
    if what is not None and "HDF5" not in what:  # another kind of file given as a store
        return StoreError(f"{p} is {what}, not a distill-data store (.h5)")
    reason = str(exc).strip() or type(exc).__name__
    return StoreError(f"{p} is not a readable HDF5 file (corrupt or truncated): {reason}")


def _info(f: h5py.File, p: Path) -> StoreInfo:
    """Check format, version, attributes and shapes of an open file; no data is read."""
    attrs = f.attrs
    if "format" not in attrs or _decode(attrs["format"]) != FORMAT_NAME:
        found = f"format = {_decode(attrs['format'])!r}" if "format" in attrs else "no 'format'"
        raise StoreError(
            f"{p} is not a distill-data store (foreign HDF5 file): it has {found} "
            f"attribute, expected format = {FORMAT_NAME!r}"
        )
    version = _get_int(attrs, "format_version", p) if "format_version" in attrs else None
    if version is None:
        raise StoreError(f"{p} is missing attribute 'format_version' (damaged distill-data store)")
    if version > FORMAT_VERSION:
        raise StoreError(
            f"{p} uses distill-data store format version {version}, but distill-data "
            f"{__version__} reads only up to version {FORMAT_VERSION}; upgrade distill-data "
            "(pip install -U distill-data)"
        )
    if version < OLDEST_VERSION:
        raise StoreError(f"{p} has invalid format_version {version} (damaged store)")
    missing = [name for name in REQUIRED_ATTRS[version] if name not in attrs]
    if missing:
        names = ", ".join(repr(m) for m in missing)
        raise StoreError(
            f"{p} is missing attribute(s) {names} required by store format version "
            f"{version} (incomplete or damaged store; rebuild it)"
        )
    missing = [name for name in (IMAGES, LABELS) if name not in f]
    if missing:
        names = ", ".join(repr(m) for m in missing)
        raise StoreError(f"{p} is missing dataset(s) {names} (incomplete or damaged store)")
    meta = StoreMeta(
        generator=_get_str(attrs, "generator", p),
        config=_get_json(attrs, "config", p, dict),
        dataset=_get_str(attrs, "dataset", p),
        dataset_fingerprint=_get_str(attrs, "dataset_fingerprint", p),
        ipc=_get_int(attrs, "ipc", p),
        seed=_get_int(attrs, "seed", p),
        mean=_get_floats(attrs, "mean", p),
        std=_get_floats(attrs, "std", p),
        classes=_get_json(attrs, "classes", p, list),
        iterations=_get_int(attrs, "iterations", p),
        count=_get_int(attrs, "count", p) if "count" in attrs else 0,
        package_version=_get_str(attrs, "package_version", p),
        created=_get_str(attrs, "created", p),
        extra=_get_json(attrs, "extra", p, dict),
    )
    images, labels = f[IMAGES], f[LABELS]
    if not isinstance(images, h5py.Dataset) or not isinstance(labels, h5py.Dataset):
        raise StoreError(f"{p}: 'images' and 'labels' must be datasets, not groups")
    if images.ndim != 4 or images.dtype.kind != "f":
        raise StoreError(
            f"{p}: 'images' must be a 4-D float dataset (N, C, H, W), "
            f"got shape {images.shape} of {images.dtype}"
        )
    n = int(images.shape[0])
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or int(labels.shape[0]) != n:
        raise StoreError(
            f"{p}: 'labels' must be a 1-D integer dataset of length {n} (one per image), "
            f"got shape {labels.shape} of {labels.dtype}"
        )
    if version == 1 and meta.ipc == 0:  # version 1 had no count: a count set's size
        meta.count = n
    channels = int(images.shape[1])
    for name in ("mean", "std"):
        if len(getattr(meta, name)) != channels:
            raise StoreError(
                f"{p}: attribute {name!r} has {len(getattr(meta, name))} values but the "
                f"images have {channels} channel(s)"
            )
    if not meta.classes or not all(isinstance(c, str) for c in meta.classes):
        raise StoreError(f"{p}: attribute 'classes' must be a non-empty JSON list of names")
    temperature = None
    has_soft = SOFT_LABELS in f
    if has_soft:
        soft = f[SOFT_LABELS]
        k = meta.num_classes
        if not isinstance(soft, h5py.Dataset) or soft.shape != (n, k) or soft.dtype.kind != "f":
            raise StoreError(
                f"{p}: 'soft_labels' must be a float dataset of shape (N, K) = ({n}, {k})"
            )
        if TEMPERATURE not in soft.attrs:
            raise StoreError(f"{p} is missing attribute 'temperature' on 'soft_labels'")
        try:
            temperature = float(soft.attrs[TEMPERATURE])
        except (TypeError, ValueError) as exc:
            raise StoreError(f"{p}: 'soft_labels' temperature is not a number") from exc
    return StoreInfo(
        path=p,
        meta=meta,
        format_version=version,
        num_images=n,
        image_shape=(channels, int(images.shape[2]), int(images.shape[3])),
        has_soft_labels=has_soft,
        temperature=temperature,
        file_size=p.stat().st_size,
    )


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "SUO":
        return _decode(value.item())
    return value


def _get_str(attrs: h5py.AttributeManager, name: str, p: Path) -> str:
    value = _decode(attrs[name])
    if not isinstance(value, str):
        raise StoreError(f"{p}: attribute {name!r} must be a string, got {value!r}")
    return value


def _get_int(attrs: h5py.AttributeManager, name: str, p: Path) -> int:
    value = attrs[name]
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise StoreError(f"{p}: attribute {name!r} must be an integer, got {value!r}")
    return int(value)


def _get_floats(attrs: h5py.AttributeManager, name: str, p: Path) -> tuple[float, ...]:
    value = np.asarray(attrs[name])
    if value.dtype.kind not in "fiu" or value.ndim > 1:
        raise StoreError(f"{p}: attribute {name!r} must be a list of numbers, got {value!r}")
    return tuple(float(v) for v in value.reshape(-1))


def _get_json(attrs: h5py.AttributeManager, name: str, p: Path, kind: type) -> Any:
    text = _get_str(attrs, name, p)
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise StoreError(f"{p}: attribute {name!r} is not valid JSON: {exc}") from exc
    if not isinstance(value, kind):
        raise StoreError(f"{p}: attribute {name!r} must be a JSON {kind.__name__}")
    return value
