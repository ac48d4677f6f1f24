"""The public Python API: build, load, evaluate, list_methods, list_datasets."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill_data.augment import PerSampleDSA, strategy_for
from distill_data.config import config_to_dict, make_config, resolve_device
from distill_data.data import DataSpec, RealDataset, find_dataset, list_datasets, load_dataset
from distill_data.data.base import is_digit_name
from distill_data.errors import ConfigError, StoreError
from distill_data.evaluation import EvalConfig
from distill_data.evaluation import evaluate as _evaluate
from distill_data.store import SyntheticDataset, SyntheticSet, read_meta, read_store
from distill_data.store import load as _load
from distill_data.synth import GENERATORS, run_generator
from distill_data.train import TeacherConfig, load_teacher, train_teacher
from distill_data.train.teacher import TeacherEnsemble, has_batchnorm


def list_methods() -> list[tuple[str, str]]:
    """``(name, one-line description)`` of every registered generator."""
    return [(n, GENERATORS.help(n)) for n in GENERATORS.names()]


def method_defaults(name: str) -> dict[str, Any]:
    """The ``--set`` keys of generator ``name`` with their defaults (ConfigError if
    unknown)."""
    return config_to_dict(GENERATORS.get(name).Config())


def _check_seed(seed: int) -> None:
    if not 0 <= int(seed) < 2**62:
        raise ConfigError(f"seed must be in [0, 2**62), got {seed}")


def _check_out(out: str | os.PathLike) -> Path:
    p = Path(out)
    if p.is_dir():
        raise ConfigError(f"--out {p} is a folder; give a file name such as {p / 'set.h5'}")
    if not p.parent.exists():
        raise ConfigError(f"output folder {p.parent} does not exist; create it first")
    if not os.access(p.parent, os.W_OK):
        raise ConfigError(f"output folder {p.parent} is not writable")
    return p


def build(
    dataset: str | RealDataset | None,
    method: str,
    ipc: int | None,
    out: str | os.PathLike,
    *,
    teacher: str | os.PathLike | nn.Module | Sequence[str | os.PathLike | nn.Module] | None = None,
    count: int | None = None,
    iterations: int | None = None,
    seed: int = 0,
    resume: bool = False,
    options: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    quiet: bool = False,
    log: Callable[[str], None] | None = None,
) -> SyntheticSet:
    """Make a synthetic set with ``method`` and write it to ``out``.

    Args:
        dataset: real data (name, path or object); optional for data-free methods, which
            take the image space (shape, normalisation, classes) from the teacher file.
        method: a registered generator name (see :func:`list_methods`).
        ipc: images per class; or give ``count`` (a total) for methods that support it.
        teacher: a teacher file (``distill-data teacher``) or any ``nn.Module`` with
            BatchNorm layers, for teacher-driven methods; a list for ensemble methods
            (INFER), the first one also serving single-teacher methods.

    Everything is validated before any work starts (method, settings, dataset, teacher,
    IPC, output folder), so bad input never leaves a file behind. The store is written
    atomically; long builds checkpoint next to ``out`` and continue with ``resume``.
    """
    cls = GENERATORS.get(method)
    _check_seed(seed)
    device = resolve_device(device)
    opts = dict(options or {})
    if iterations is not None:
        opts["iterations"] = iterations
    cfg = make_config(cls.Config, opts)
    cls.check_config(cfg)
    if (ipc is None) == (count is None):
        raise ConfigError("give exactly one of --ipc (images per class) and --count (total)")
    if count is not None and not cls.supports_count:
        raise ConfigError(f"method {method!r} makes images per class; use --ipc, not --count")
    if count is not None and count < 1:
        raise ConfigError(f"count must be >= 1, got {count}")
    out_path = _check_out(out)
    net, tmeta, nets = None, {}, []
    teachers = (
        []
        if teacher is None
        else (list(teacher) if isinstance(teacher, list | tuple) else [teacher])
    )
    if cls.needs_teacher:
        if not teachers:
            raise ConfigError(f"method {method!r} needs a trained network: --teacher T.pt")
        if len(teachers) < cls.min_teachers:
            raise ConfigError(
                f"method {method!r} needs at least {cls.min_teachers} teachers "
                f"(repeat --teacher); got {len(teachers)}"
            )
        loaded = [_load_teacher(t) for t in teachers]
        nets = [n for n, _ in loaded]
        net, tmeta = loaded[0]
    elif teachers:
        raise ConfigError(f"method {method!r} does not use a teacher; drop --teacher")
    if dataset is None:
        if cls.needs_real:
            raise ConfigError(f"method {method!r} needs real data: --dataset")
        data = _spec_from_teacher(tmeta, net)
    else:
        data = (
            dataset
            if isinstance(dataset, RealDataset)
            else load_dataset(dataset, progress=not quiet)
        )
        for n, (_, m) in zip(nets, loaded if nets else []):
            _check_teacher_fits(n, m, data)
    if ipc is not None:
        cls.check_ipc(data, ipc)
    gen = cls(
        cfg,
        data,
        ipc or 0,
        seed=seed,
        device=device,
        teacher=net,
        count=count,
        teachers=nets or None,
    )
    return run_generator(gen, method, out_path, resume=resume, quiet=quiet, log=log)


def _load_teacher(teacher: str | os.PathLike | nn.Module) -> tuple[nn.Module, dict]:
    if isinstance(teacher, nn.Module):
        if not has_batchnorm(teacher):
            raise ConfigError(
                "the teacher has no BatchNorm layers; BN-statistic methods "
                "need a network with BatchNorm"
            )
        return teacher.eval(), {}
    return load_teacher(teacher)


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _spec_from_teacher(meta: dict, net: nn.Module) -> DataSpec:
    need = ("input_shape", "mean", "std", "classes")
    missing = [k for k in need if k not in meta]
    if missing:
        raise ConfigError(
            f"the teacher does not record {', '.join(missing)}; pass --dataset so the image "
            "space is known (teachers from `distill-data teacher` record it)"
        )
    c, h, w = meta["input_shape"]
    return DataSpec(
        meta.get("dataset", "teacher"),
        list(meta["classes"]),
        tuple(meta["mean"]),
        tuple(meta["std"]),
        meta.get("dataset_fingerprint", ""),
        c,
        (h, w),
        meta.get("dataset_source", ""),
    )


def _check_teacher_fits(net: nn.Module, meta: dict, data: RealDataset) -> None:
    """Refuse a teacher whose input shape, class count or normalisation differ from data's."""
    want = [data.channels, *data.im_size]
    shape = meta.get("input_shape")
    if shape is not None and list(shape) != want:
        raise ConfigError(
            f"the teacher takes {shape[0]}x{shape[1]}x{shape[2]} inputs but "
            f"{data.name} images are {want[0]}x{want[1]}x{want[2]}"
        )
    with torch.no_grad():
        try:
            out = net.eval()(torch.zeros(2, *want, device=next(net.parameters()).device))
        except RuntimeError as e:
            raise ConfigError(
                f"the teacher does not accept {data.name} images "
                f"({want[0]}x{want[1]}x{want[2]}): {str(e).splitlines()[0]}"
            ) from None
    if out.shape[-1] != data.num_classes:
        raise ConfigError(
            f"the teacher predicts {out.shape[-1]} classes but {data.name} has {data.num_classes}"
        )
    for key in ("mean", "std"):
        if key in meta and not all(
            math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-4)
            for a, b in zip(meta[key], getattr(data, key))
        ):
            raise ConfigError(
                f"the teacher was trained with normalisation {key}={_fmt(meta[key])} but "
                f"{data.name} has {key}={_fmt(getattr(data, key))}; use the data it was trained on"
            )


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
    soft: bool = False,
    teacher: str | os.PathLike | nn.Module | Sequence[str | os.PathLike | nn.Module] | None = None,
    relabel: str = "stored",
    device: str | torch.device = "cpu",
    quiet: bool = False,
    **protocol: Any,
) -> dict:
    """Evaluate a stored set with the papers' protocol; returns the JSON report dict.

    ``protocol`` keywords are :class:`~distill_data.evaluation.EvalConfig` fields
    (``model``, ``runs``, ``epochs``, ``augment``, ...). ``soft=True`` trains by
    knowledge distillation from the store's soft labels; ``teacher`` then relabels the
    random-subset baseline the same way. ``relabel="online"`` (with ``soft`` and
    ``teacher``) distils from the teacher's logits on every augmented batch instead.
    Several teachers (a list) label as one, by the mean of their logits, which is how
    INFER's ensemble labels its set: pass the same teachers the set was built with.
    """
    device = resolve_device(device)
    path = None
    if not isinstance(store, SyntheticSet):
        path = str(store)
        store = read_store(store)
    cfg = make_config(EvalConfig, protocol)
    _check_seed(cfg.seed)
    if dataset is None and not store.meta.dataset:
        raise StoreError("the store does not name its dataset; pass dataset=")
    net = None
    if teacher is not None:
        if not soft:
            raise ConfigError(
                "--teacher is only used with --soft (it relabels the random "
                "baseline); drop it or add --soft"
            )
        many = isinstance(teacher, Sequence) and not isinstance(teacher, (str, os.PathLike))
        loaded = [_load_teacher(t) for t in (teacher if many else [teacher])]
        if dataset is None:
            dataset = find_dataset(store.meta.dataset, store.meta.extra.get("dataset_source", ""))
        if not isinstance(dataset, RealDataset):
            dataset = load_dataset(dataset, progress=not quiet)
        for member, tmeta in loaded:
            _check_teacher_fits(member, tmeta, dataset)
        members = [member for member, _ in loaded]
        net = (members[0] if len(members) == 1 else TeacherEnsemble(members)).eval().to(device)
    report = _evaluate(
        store,
        dataset,
        cfg,
        baselines=baselines,
        scores=scores,
        device=device,
        quiet=quiet,
        store_path=path,
        soft=soft,
        teacher=net,
        relabel=relabel,
    )
    if net is not None:
        report["protocol"]["teachers"] = len(members)
    return report


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
    _check_seed(cfg.seed)
    device = resolve_device(device)
    out_path = _check_out(out)
    data = (
        dataset if isinstance(dataset, RealDataset) else load_dataset(dataset, progress=not quiet)
    )
    return train_teacher(data, cfg, out_path, device=device, quiet=quiet)


def quantize(
    teacher: str | os.PathLike | nn.Module,
    calib: str | Sequence[str],
    dataset: str | RealDataset | None = None,
    *,
    bits: str | Sequence[str] = "w8a8",
    compare: bool = False,
    seed: int = 0,
    **ptq: Any,
) -> dict:
    """Post-training quantization of ``teacher`` calibrated on ``calib``; a report.

    ``calib``: a stored set, ``real:N`` or ``noise:N`` (or several). ``compare=True``
    adds ``real:N`` and ``noise:N`` with N = the size of the first calibration set.
    ``ptq`` keywords are :class:`~distill_data.quant.PTQConfig` fields (``observer``,
    ``first_last_bits``, ...). ``dataset`` defaults to the one the teacher records.
    """
    from distill_data.quant import PTQConfig
    from distill_data.quant.calibrate import calibration_images, compare_calibrations

    net, meta = _load_teacher(teacher)
    if dataset is None:
        if not meta.get("dataset"):
            raise ConfigError("the teacher does not name its dataset; pass --dataset")
        dataset = find_dataset(meta["dataset"], meta.get("dataset_source", ""))
    data = dataset if isinstance(dataset, RealDataset) else load_dataset(dataset)
    _check_teacher_fits(net, meta, data)
    calibs = [calib] if isinstance(calib, str) else list(calib)
    if not calibs:
        raise ConfigError("give a calibration set: --calib F.h5, real:N or noise:N")
    if compare:
        n = len(calibration_images(calibs[0], data, seed)[0])
        calibs += [c for c in (f"real:{n}", f"noise:{n}") if c not in calibs]
    bit_list = [bits] if isinstance(bits, str) else list(bits)
    _check_seed(seed)
    cfg = make_config(PTQConfig, {"seed": seed, **ptq})
    return compare_calibrations(net, data, calibs, bit_list, cfg, seed=seed)


__all__ = ["build", "evaluate", "list_datasets", "list_methods", "load", "quantize", "teacher"]
