"""The public Python API: build, load, evaluate, list_methods, list_datasets."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from distill_data.augment import PerSampleDSA, strategy_for
from distill_data.config import make_config, resolve_device
from distill_data.data import RealDataset, list_datasets, load_dataset
from distill_data.data.base import is_digit_name
from distill_data.errors import ConfigError, StoreError
from distill_data.evaluation import EvalConfig
from distill_data.evaluation import evaluate as _evaluate
from distill_data.store import SyntheticDataset, SyntheticSet, read_meta, read_store
from distill_data.store import load as _load
from distill_data.synth import GENERATORS, run_generator
from distill_data.train import TeacherConfig, train_teacher


def list_methods() -> list[tuple[str, str]]:
    """``(name, one-line description)`` of every registered generator."""
    return [(n, GENERATORS.help(n)) for n in GENERATORS.names()]


def _check_out(out: str | os.PathLike) -> Path:
    p = Path(out)
    if p.is_dir():
        raise ConfigError(f"--out {p} is a folder; give a file name such as {p / 'set.h5'}")
    if not p.parent.exists():
        raise ConfigError(f"output folder {p.parent} does not exist; create it first")
    return p


def build(
    dataset: str | RealDataset,
    method: str,
    ipc: int,
    out: str | os.PathLike,
    *,
    iterations: int | None = None,
    seed: int = 0,
    resume: bool = False,
    options: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    quiet: bool = False,
    log: Callable[[str], None] | None = None,
) -> SyntheticSet:
    """Condense ``dataset`` with ``method`` into ``ipc`` images per class, written to ``out``.

    Everything is validated before any work starts (method, settings, dataset, IPC,
    output folder), so bad input never leaves a file behind. The store is written
    atomically; long builds checkpoint next to ``out`` and continue with ``resume``.
    """
    cls = GENERATORS.get(method)
    device = resolve_device(device)
    opts = dict(options or {})
    if iterations is not None:
        opts["iterations"] = iterations
    cfg = make_config(cls.Config, opts)
    cls.check_config(cfg)
    out_path = _check_out(out)
    data = dataset if isinstance(dataset, RealDataset) else load_dataset(dataset)
    cls.check_ipc(data, ipc)
    gen = cls(cfg, data, ipc, seed=seed, device=device)
    return run_generator(gen, method, out_path, resume=resume, quiet=quiet, log=log)


def load(
    path: str | os.PathLike, augment: bool | str | Callable | None = None, soft: bool = False
) -> SyntheticDataset:
    """A torch ``Dataset`` of ``(image, label)`` (or ``(image, label, soft_label)`` with
    ``soft=True``) over a stored set; works with ``DataLoader(num_workers > 0)``.

    ``augment``: ``True`` for per-image DSA with the field's strategy (no flip for
    digit data), a DSA strategy string such as ``"crop_scale"``, or any callable
    (C, H, W) → (C, H, W).
    """
    if augment is True:
        augment = strategy_for(is_digit_name(read_meta(path).dataset))
    if isinstance(augment, str):
        augment = PerSampleDSA(augment)
    elif augment is False:
        augment = None
    return _load(path, augment=augment, soft=soft)


def evaluate(
    store: str | os.PathLike | SyntheticSet,
    dataset: str | RealDataset | None = None,
    *,
    baselines: Sequence[str] = (),
    scores: bool = False,
    device: str | torch.device = "cpu",
    quiet: bool = False,
    **protocol: Any,
) -> dict:
    """Evaluate a stored set with the papers' protocol; returns the JSON report dict.

    ``protocol`` keywords are :class:`~distill_data.evaluation.EvalConfig` fields
    (``model``, ``runs``, ``epochs``, ``augment``, ...).
    """
    device = resolve_device(device)
    path = None
    if not isinstance(store, SyntheticSet):
        path = str(store)
        store = read_store(store)
    cfg = make_config(EvalConfig, protocol)
    if dataset is None and not store.meta.dataset:
        raise StoreError("the store does not name its dataset; pass dataset=")
    return _evaluate(
        store,
        dataset,
        cfg,
        baselines=baselines,
        scores=scores,
        device=device,
        quiet=quiet,
        store_path=path,
    )


def teacher(
    dataset: str | RealDataset,
    out: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    quiet: bool = False,
    **settings: Any,
) -> dict:
    """Train a BatchNorm teacher on real data and save it to ``out``; returns a report.

    ``settings`` are :class:`~distill_data.train.TeacherConfig` fields (``model``,
    ``epochs``, ``lr``, ...). The file loads with ``torch.load(..., weights_only=True)``.
    """
    cfg = make_config(TeacherConfig, settings)
    device = resolve_device(device)
    out_path = _check_out(out)
    data = dataset if isinstance(dataset, RealDataset) else load_dataset(dataset)
    return train_teacher(data, cfg, out_path, device=device, quiet=quiet)


__all__ = ["build", "evaluate", "list_datasets", "list_methods", "load", "teacher"]
