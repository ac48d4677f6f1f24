"""The one place that decides whether a command may write a file.

Every command that writes (a store, a checkpoint, a teacher, a picture, a JSON report)
asks :func:`check_outputs` before any work starts, naming every file it will write and
every file or folder it reads. A write is refused, with one message naming both paths,
when

- the output is a file the command reads (compared by resolved path and by inode, so a
  symlink or a hard link to the input is caught too), or lies inside a folder it reads
  and already exists there;
- two outputs of one command are the same file (``--out t.pt --json t.pt``);
- the output exists and is a file of another kind than the one to be written (a
  dataset, a store, a teacher, a picture, a report), unless the caller passes
  ``force=True`` (``--force``): replacing a store with a store is what a rebuild does,
  replacing a dataset with a store is almost always a typo;
- the output is a folder, its folder does not exist, or the folder is not writable.

The kind of an existing file is read from its first bytes and, for HDF5 and zip files,
from its structure, never by unpickling anything.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from distill_data.errors import ConfigError, opt

PathLike = str | os.PathLike

#: What each output kind is called in messages, and what a file of that kind is.
KIND_NAMES = {
    "store": "distill-data store (HDF5)",
    "checkpoint": "checkpoint",
    "model": "network file (torch.save)",
    "png": "PNG picture",
    "json": "JSON report",
    "onnx": "ONNX model",
}
#: Names of the other kinds :func:`file_kind` tells apart, for messages.
_OTHER_NAMES = {
    "hdf5": "HDF5 file that is not a distill-data store",
    "npz": ".npz dataset",
    "zip": "zip archive",
    "other": "file of another kind",
}

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def existing_paths(specs: Iterable[object]) -> list[Path]:
    """The entries of ``specs`` that name an existing file or folder (built-in dataset
    names, ``real:N``, modules, ``None`` and the like are skipped)."""
    out = []
    for spec in specs:
        if isinstance(spec, (str, os.PathLike)) and spec != "" and os.path.exists(spec):
            out.append(Path(spec))
    return out


def file_kind(path: Path) -> str:
    """What an existing file is: one of :data:`KIND_NAMES`' keys, or ``"hdf5"``,
    ``"npz"``, ``"zip"``, ``"empty"`` or ``"other"``."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return "other"
    if not head:
        return "empty"
    if head == _PNG_MAGIC:
        return "png"
    if head == _HDF5_MAGIC:
        return "store" if _is_store(path) else "hdf5"
    if head[:2] == b"PK":
        return _zip_kind(path)
    if head[:1] == b"\x08" and path.suffix == ".onnx":  # ModelProto opens with ir_version
        return "onnx"
    if head.lstrip()[:1] in (b"{", b"["):
        try:
            json.loads(path.read_text(encoding="utf-8"))
            return "json"
        except (OSError, ValueError):
            return "other"
    return "other"


def _is_store(path: Path) -> bool:
    import h5py

    from distill_data.store.schema import FORMAT_NAME

    try:
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format")
    except (OSError, RuntimeError, ValueError, KeyError):
        return False
    if isinstance(fmt, bytes):
        fmt = fmt.decode("utf-8", "replace")
    return fmt == FORMAT_NAME


def kind_phrase(path: Path) -> str | None:
    """``"an .npz dataset"``, ``"a PNG picture"``, ...: what an existing file is, for a
    message that refuses it as something else; None when its kind is unknown."""
    found = file_kind(path)
    what = KIND_NAMES.get(found) or (None if found == "other" else _OTHER_NAMES.get(found))
    return None if what is None else f"{_article(what)} {what}"


def _zip_kind(path: Path) -> str:
    """``torch.save`` writes a zip holding ``<name>/data.pkl``; numpy's ``.npz`` a zip of
    ``.npy`` members. Checkpoints and network files are both torch zips; the name tells
    which one a torch zip is meant to be."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile):
        return "other"
    if any(n.endswith("/data.pkl") for n in names):
        return "checkpoint" if path.name.endswith(".ckpt.pt") else "model"
    if names and all(n.endswith(".npy") for n in names):
        return "npz"
    return "zip"


def _article(noun: str) -> str:
    return "an" if noun[0] in "aeiouAEIOUH." else "a"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def check_outputs(
    outputs: Sequence[tuple[PathLike | None, str]],
    reads: Iterable[object] = (),
    *,
    force: bool = False,
) -> list[Path]:
    """Refuse, before any work, every write that would destroy something (see the
    module docstring); returns the outputs as Paths (``None`` entries are skipped).

    Args:
        outputs: ``(path, kind)`` of each file the command writes; ``kind`` is a key of
            :data:`KIND_NAMES`.
        reads: every input the command reads: paths, or specs such as a built-in dataset
            name, ``real:N`` or a module, which are skipped.
        force: allow replacing an existing file of another kind (never an input).

    Raises:
        ConfigError: the message names the output, the conflicting file and the fix.
    """
    inputs = existing_paths(reads)
    seen: list[Path] = []
    for raw, kind in outputs:
        if raw is None:
            continue
        p = Path(raw)
        if p.is_dir():
            raise ConfigError(f"output {p} is a folder; give a file name such as {p / 'out'}")
        if not p.parent.exists():
            raise ConfigError(f"output folder {p.parent} does not exist; create it first")
        if not os.access(p.parent, os.W_OK):
            raise ConfigError(f"output folder {p.parent} is not writable")
        for other in seen:
            if p.resolve() == other.resolve() or (p.exists() and _same_file(p, other)):
                raise ConfigError(f"two outputs are the same file {p}; give each its own name")
        for src in inputs:
            if src.is_dir():
                if p.exists() and _inside(p, src):
                    raise ConfigError(
                        f"refusing to write {p}: it is a file inside the input folder {src}, "
                        "which this command reads; write the output elsewhere"
                    )
            elif (p.exists() and _same_file(p, src)) or p.resolve() == src.resolve():
                raise ConfigError(
                    f"refusing to write {p}: it is the input {src} this command reads, "
                    "which would be destroyed; give the output another name"
                )
        if p.exists() and not force:
            found = file_kind(p)
            if found not in (kind, "empty"):
                what = KIND_NAMES.get(found) or _OTHER_NAMES[found]
                raise ConfigError(
                    f"refusing to overwrite {p}: it is {_article(what)} {what}, not "
                    f"{_article(KIND_NAMES[kind])} {KIND_NAMES[kind]}; "
                    f"give another name, or pass {opt('force', True)} to replace it"
                )
        seen.append(p)
    return seen
