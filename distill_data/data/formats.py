"""Loading datasets a user already has on disk, in the formats they usually come in.

Supported: a ``.npz`` of arrays, an ImageFolder tree, the CIFAR-10/100 "python version"
pickle folders, and the MNIST/Fashion-MNIST IDX files. Every loader ends in
:func:`~distill_data.data.base.make_real_dataset`, so validation, normalisation
statistics and the fingerprint are the same whatever the format.

The CIFAR files are pickles, and unpickling runs code chosen by whoever wrote the file;
they are read with :class:`RestrictedUnpickler`, which only rebuilds plain containers
and numpy arrays and refuses everything else.
"""

from __future__ import annotations

import codecs
import gzip
import io
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from distill_data.data.base import RealDataset, make_real_dataset
from distill_data.errors import DataError

try:  # numpy >= 2 moved the internals to numpy._core; pickles may name either module
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

FORMATS = ("npz", "imagefolder", "cifar10", "cifar100", "idx")
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")

_EXPECTED = (
    "expected a .npz file (x_train, y_train, x_test, y_test), an ImageFolder "
    "(train/<class>/*.png|jpg and test/<class>/...), a CIFAR-10 python folder "
    "(data_batch_1..5, test_batch), a CIFAR-100 python folder (train, test), or an "
    "MNIST IDX folder (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
    "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz])"
)

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------- detection


def detect_format(path: PathLike) -> str:
    """Tell which supported format ``path`` is in, from names alone (no file is parsed).

    Returns:
        One of ``"npz"``, ``"imagefolder"``, ``"cifar10"``, ``"cifar100"``, ``"idx"``.

    Raises:
        DataError: the path does not exist or matches none of the formats.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"no such file or folder: {str(path)!r}")
    if p.is_file():
        if p.suffix.lower() == ".npz":
            return "npz"
        raise DataError(f"{str(path)!r} is not a recognised dataset: {_EXPECTED}")
    cifar = _cifar_kind(p)
    if cifar is not None:
        return cifar
    for sub, kind in (("cifar-10-batches-py", "cifar10"), ("cifar-100-python", "cifar100")):
        if (p / sub).is_dir() and _cifar_kind(p / sub) == kind:
            return kind
    if _idx_file(p, "train-images-idx3-ubyte") is not None:
        return "idx"
    if (p / "train").is_dir() and (p / "test").is_dir():
        return "imagefolder"
    raise DataError(f"{str(path)!r} is not a recognised dataset: {_EXPECTED}")


def load_path(path: PathLike, *, progress: bool = True) -> RealDataset:
    """Load a dataset file or folder in any format :func:`detect_format` recognises.

    The dataset is named after the path's last component and records the absolute path
    as its ``source``.

    Args:
        path: a ``.npz`` file or a dataset folder.
        progress: show a progress bar while decoding image files.

    Raises:
        DataError: unknown format, or malformed data (the message names the file).
    """
    kind = detect_format(path)
    if kind == "npz":
        return load_npz(path)
    if kind == "imagefolder":
        return load_imagefolder(path, progress=progress)
    if kind in ("cifar10", "cifar100"):
        return load_cifar(path)
    return load_idx(path)


def _name_source(path: PathLike) -> tuple[str, str]:
    full = os.path.abspath(os.fspath(path))
    return os.path.basename(full) or full, full


# --------------------------------------------------------------------------- npz


def load_npz(path: PathLike) -> RealDataset:
    """Load a ``.npz`` with ``x_train, y_train, x_test, y_test`` and optional ``classes``.

    Images may be (N,H,W), (N,H,W,C) or (N,C,H,W), uint8 0-255 or float 0-1. ``classes``
    must be an array of strings (object arrays are refused: they would need pickle).
    """
    name, source = _name_source(path)
    arrays: dict[str, np.ndarray] = {}
    classes: list[str] | None = None
    if not zipfile.is_zipfile(path):  # else np.load tries it as a pickle and says so
        raise DataError(
            f"{source}: not a .npz archive (numpy.savez writes a zip of .npy arrays; this "
            "file is not a zip: damaged, or another kind of file)"
        )
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{source}: not a readable .npz file ({e})") from None
    if isinstance(z, np.ndarray):
        raise DataError(f"{source}: is a single .npy array, expected a .npz archive of arrays")
    with z:
        for key in NPZ_KEYS:
            if key not in z.files:
                raise DataError(
                    f"{source}: missing key {key!r}; expected keys "
                    f"{', '.join(NPZ_KEYS)} (and optional 'classes'), found: "
                    f"{', '.join(z.files) or 'none'}"
                )
            arrays[key] = _npz_array(z, key, source)
        if "classes" in z.files:
            classes = _class_names(_npz_array(z, "classes", source), source)
    return make_real_dataset(name, *(arrays[k] for k in NPZ_KEYS), classes=classes, source=source)


def _npz_array(z: Any, key: str, source: str) -> np.ndarray:
    try:
        return np.asarray(z[key])
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(
            f"{source}: cannot read {key!r} ({e}); store plain numeric/string arrays"
        ) from None


def _class_names(a: np.ndarray, source: str) -> list[str]:
    a = a.reshape(-1)
    if a.dtype.kind == "U":
        return [str(s) for s in a]
    if a.dtype.kind == "S":
        return [s.decode("utf-8", "replace") for s in a]
    raise DataError(f"{source}: 'classes' must be an array of strings, got dtype {a.dtype}")


# --------------------------------------------------------------------------- ImageFolder

_GRAY_MODES = {"L", "1"}
_UNSUPPORTED_MODES = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


def load_imagefolder(path: PathLike, *, progress: bool = True) -> RealDataset:
    """Load ``root/train/<class>/*.png|jpg|jpeg|bmp`` and ``root/test/<class>/...``.

    Classes are the sorted subfolder names of ``train/``; files are read in sorted order
    so the fingerprint does not depend on the file system. When every image is
    grayscale ("L" or "1") the data has 1 channel, otherwise all are converted to RGB.
    All images must share one size: resizing silently would change the data.
    """
    from PIL import Image, UnidentifiedImageError
    from tqdm.auto import tqdm

    name, source = _name_source(path)
    root = Path(path)
    train_dir, test_dir = root / "train", root / "test"
    if not (train_dir.is_dir() and test_dir.is_dir()):
        raise DataError(f"{root}: an ImageFolder needs train/<class>/ and test/<class>/ folders")
    classes = sorted(
        d.name for d in train_dir.iterdir() if d.is_dir() and not d.name.startswith(".")
    )
    if not classes:
        raise DataError(f"{train_dir}: no class subfolders; expected train/<class>/*.png")
    test_classes = sorted(
        d.name for d in test_dir.iterdir() if d.is_dir() and not d.name.startswith(".")
    )
    extra = [c for c in test_classes if c not in classes]
    if extra:
        raise DataError(
            f"{test_dir}: class folder {extra[0]!r} is not in train/ "
            f"(train classes: {', '.join(classes)}); test must use the train classes"
        )
    index = {c: i for i, c in enumerate(classes)}

    def files(split_dir: Path) -> list[tuple[Path, int]]:
        out = []
        for c in classes:
            d = split_dir / c
            if d.is_dir():
                out += [
                    (f, index[c])
                    for f in sorted(d.iterdir())
                    if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                ]
        return out

    splits = {"train": files(train_dir), "test": files(test_dir)}
    for split, items in splits.items():
        if not items:
            raise DataError(
                f"{root / split}: no images ({', '.join(IMAGE_SUFFIXES)}) in any class folder"
            )

    # Pass 1: headers only (cheap) - one size for all, and the common colour mode.
    first: tuple[Path, tuple[int, int]] | None = None
    gray = True
    for f, _ in splits["train"] + splits["test"]:
        try:
            with Image.open(f) as im:
                size, mode = im.size, im.mode
        except (OSError, UnidentifiedImageError) as e:
            raise DataError(f"{f}: not a readable image ({e})") from None
        if mode in _UNSUPPORTED_MODES:
            raise DataError(f"{f}: {mode!r} images (16-bit/float) are not supported; save 8-bit")
        if first is None:
            first = (f, size)
        elif size != first[1]:
            raise DataError(
                f"{f}: image is {size[0]}x{size[1]} (width x height) but {first[0]} is "
                f"{first[1][0]}x{first[1][1]}; all images must share one size (resize them)"
            )
        gray = gray and mode in _GRAY_MODES
    assert first is not None
    w, h = first[1]
    mode = "L" if gray else "RGB"

    # Pass 2: decode into preallocated uint8 arrays.
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, items in splits.items():
        x = np.empty((len(items), h, w) if gray else (len(items), h, w, 3), dtype=np.uint8)
        y = np.fromiter((lab for _, lab in items), dtype=np.int64, count=len(items))
        bar = tqdm(items, desc=f"{name} {split}", unit="img", disable=not progress, leave=False)
        for i, (f, _) in enumerate(bar):
            try:
                with Image.open(f) as im:
                    x[i] = np.asarray(im.convert(mode), dtype=np.uint8)
            except (OSError, UnidentifiedImageError) as e:
                raise DataError(f"{f}: not a readable image ({e})") from None
        out[split] = (x, y)
    return make_real_dataset(
        name, *out["train"], *out["test"], classes=list(classes), source=source
    )


# --------------------------------------------------------------------------- CIFAR


def _allowed_globals() -> dict[tuple[str, str], Any]:
    recon = _multiarray._reconstruct
    scalar = _multiarray.scalar
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = recon
        allowed[(f"{mod}.multiarray", "scalar")] = scalar
        # Python >= 3.8 pickles arrays with protocol 5, which rebuilds them with
        # numeric._frombuffer (frombuffer + reshape: no code of the file's choosing).
        frombuffer = getattr(_numeric, "_frombuffer", None)
        if frombuffer is not None:
            allowed[(f"{mod}.numeric", "_frombuffer")] = frombuffer
    return allowed


_ALLOWED = _allowed_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild only dicts, lists, strings, numbers and numpy arrays.

    A pickle names the callables it wants run; ordinary ``pickle.load`` imports and calls
    any of them (``os.system`` included). This one resolves names against a fixed table
    of numpy reconstruction helpers and raises :class:`DataError` for anything else, so a
    malicious file is refused before any of its code runs.
    """

    def __init__(self, file: io.BufferedIOBase, source: str = "pickle") -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.source}: refusing to unpickle {module}.{name}; only numpy arrays "
                "are allowed in dataset pickles (is this file really a CIFAR batch?)"
            ) from None


def restricted_load(path: PathLike) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; any failure is a DataError."""
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, source=str(path)).load()
    except DataError:
        raise
    except Exception as e:  # a corrupt pickle can raise almost anything
        raise DataError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None


def _cifar_kind(d: Path) -> str | None:
    if (d / "data_batch_1").is_file() and (d / "test_batch").is_file():
        return "cifar10"
    if (d / "train").is_file() and (d / "test").is_file():
        return "cifar100"
    return None


def _cifar_root(path: Path) -> tuple[Path, str]:
    kind = _cifar_kind(path)
    if kind is not None:
        return path, kind
    found = [
        (path / sub, kind)
        for sub, kind in (("cifar-10-batches-py", "cifar10"), ("cifar-100-python", "cifar100"))
        if (path / sub).is_dir() and _cifar_kind(path / sub) == kind
    ]
    if len(found) > 1:
        raise DataError(f"{path}: holds both CIFAR-10 and CIFAR-100; pass one subfolder")
    if not found:
        raise DataError(f"{path}: not a CIFAR python folder; {_EXPECTED}")
    return found[0]


def _get(d: dict[Any, Any], key: str, source: str) -> Any:
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise DataError(f"{source}: missing key {key!r} (found {sorted(map(str, d))})")


def _cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = restricted_load(path)
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a dict, got {type(d).__name__}")
    data = np.asarray(_get(d, "data", str(path)))
    labels = np.asarray(_get(d, label_key, str(path)))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{path}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}"
        )
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {labels.size} labels for {len(data)} images")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_names(path: Path, key: str) -> list[str] | None:
    if not path.is_file():
        return None
    d = restricted_load(path)
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a dict, got {type(d).__name__}")
    names = _get(d, key, str(path))
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]


def load_cifar(path: PathLike) -> RealDataset:
    """Load the CIFAR-10 or CIFAR-100 "python version" folder (fine labels for CIFAR-100).

    ``path`` may be the batch folder itself or a folder holding one
    ``cifar-10-batches-py`` / ``cifar-100-python`` subfolder. CIFAR-10 reads every
    ``data_batch_<n>`` (they must be numbered 1..k without gaps) and ``test_batch``.
    Class names come from ``batches.meta`` / ``meta`` when present.
    """
    name, source = _name_source(path)
    root, kind = _cifar_root(Path(path))
    if kind == "cifar10":
        nums = sorted(
            int(m.group(1))
            for f in root.iterdir()
            if (m := re.fullmatch(r"data_batch_(\d+)", f.name)) and f.is_file()
        )
        if nums != list(range(1, len(nums) + 1)):
            raise DataError(f"{root}: training batches {nums} have a gap; expected data_batch_1..k")
        parts = [_cifar_batch(root / f"data_batch_{n}", "labels") for n in nums]
        x_train = np.concatenate([p[0] for p in parts])
        y_train = np.concatenate([p[1] for p in parts])
        x_test, y_test = _cifar_batch(root / "test_batch", "labels")
        classes = _cifar_names(root / "batches.meta", "label_names")
    else:
        x_train, y_train = _cifar_batch(root / "train", "fine_labels")
        x_test, y_test = _cifar_batch(root / "test", "fine_labels")
        classes = _cifar_names(root / "meta", "fine_label_names")
    return make_real_dataset(name, x_train, y_train, x_test, y_test, classes, source)


# --------------------------------------------------------------------------- IDX

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _idx_file(d: Path, stem: str) -> Path | None:
    for p in (d / stem, d / f"{stem}.gz"):
        if p.is_file():
            return p
    return None


def read_idx(path: PathLike) -> np.ndarray:
    """Parse one IDX file (optionally gzipped) into a native-endian numpy array.

    Format (LeCun's MNIST page): two zero bytes, a type code, the number of dimensions,
    then each dimension as a big-endian uint32, then the data, big-endian, row-major.

    Raises:
        DataError: bad magic number, unknown type code, or a truncated/oversized file.
    """
    try:
        if str(path).endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = Path(path).read_bytes()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'none'})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(
            f"{path}: {what} ({len(raw)} bytes, header {dims} needs {expected}); re-download it"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def load_idx(path: PathLike) -> RealDataset:
    """Load an MNIST / Fashion-MNIST folder of the four IDX files (each optionally ``.gz``).

    Class names are "0".."9": the files do not carry them (Fashion-MNIST's are
    T-shirt/top, Trouser, ...); pass a ``.npz`` with ``classes`` to name them.
    """
    name, source = _name_source(path)
    root = Path(path)
    arrays = []
    for stem, ndim in (
        ("train-images-idx3-ubyte", 3),
        ("train-labels-idx1-ubyte", 1),
        ("t10k-images-idx3-ubyte", 3),
        ("t10k-labels-idx1-ubyte", 1),
    ):
        f = _idx_file(root, stem)
        if f is None:
            raise DataError(f"{root}: missing {stem} (or {stem}.gz)")
        a = read_idx(f)
        if a.ndim != ndim:
            raise DataError(f"{f}: expected {ndim} dimensions, got shape {a.shape}")
        arrays.append(a)
    return make_real_dataset(name, *arrays, source=source)
