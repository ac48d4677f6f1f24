"""The public Python API: build, load, evaluate, list_methods, list_datasets."""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill_data import dist
from distill_data.augment import (
    AugmentPipeline,
    PerSampleAugment,
    PerSampleDSA,
    is_preset,
    strategy_for,
)
from distill_data.config import check_int, config_to_dict, make_config, resolve_device
from distill_data.data import DataSpec, RealDataset, find_dataset, list_datasets, load_dataset
from distill_data.data.base import is_digit_name
from distill_data.errors import ConfigError, DistillDataError, StoreError, opt, setting
from distill_data.evaluation import EvalConfig, EvalRequest
from distill_data.evaluation import evaluate as _evaluate
from distill_data.evaluation.report import machine_info, now_iso
from distill_data.models import nonfinite_tensors
from distill_data.paths import check_outputs, existing_paths
from distill_data.store import (
    SyntheticDataset,
    SyntheticSet,
    checkpoint_path_for,
    read_meta,
    read_store,
)
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
    seed = check_int("seed", seed)
    if not 0 <= seed < 2**62:
        raise ConfigError(f"seed must be in [0, 2**62), got {seed}")


def _teacher_list(teacher: Any) -> list:
    """One teacher or several, as a list (a str or path is one teacher)."""
    if teacher is None:
        return []
    if isinstance(teacher, (str, os.PathLike, nn.Module)):
        return [teacher]
    if isinstance(teacher, Sequence):
        return list(teacher)
    raise ConfigError(
        f"teacher must be a file path, an nn.Module or a list of them, got {type(teacher).__name__}"
    )


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
    force: bool = False,
) -> SyntheticSet | None:
    """Make a synthetic set with ``method`` and write it to ``out``.

    Args:
        dataset: real data (name, path or object); optional for data-free methods, which
            take the image space (shape, normalisation, classes) from the teacher file.
        method: a registered generator name (see :func:`list_methods`).
        ipc: images per class; or give ``count`` (a total) for methods that support it.
        teacher: a teacher file (``distill-data teacher``) or any ``nn.Module`` with
            BatchNorm layers, for teacher-driven methods; a list for ensemble methods
            (INFER), the first one also serving single-teacher methods. A module is
            copied: the caller's object is never changed.
        force: replace an existing ``out`` that is not a store (never an input).

    Everything is validated before any work starts (method, settings and their types,
    dataset, teacher, IPC, the memory the set needs, the output path: never one of the
    inputs, nor an existing file of another kind), so bad input never leaves a file
    behind or destroys one. The store is written
    atomically; long builds checkpoint next to ``out`` and continue with ``resume``.

    Under ``torchrun`` every rank calls this with the same arguments: the ranks split
    the classes (matching generators, coresets) or batches (teacher-driven ones), and
    rank 0 writes ``out``, equal to a one-process build's (docs/design-notes.md,
    "torchrun"). Rank 0 returns the set; the other ranks return None.
    """
    cls = GENERATORS.get(_check_str("method", method))
    _check_seed(seed)
    device = resolve_device(device)
    group = dist.context(device)  # under torchrun: this rank's place in the job
    device = dist.rank_device(device, group)
    if options is not None and not isinstance(options, Mapping):
        raise ConfigError(f"options must be a dict of settings, got {type(options).__name__}")
    opts = dict(options or {})
    if iterations is not None:
        if "iterations" in opts:  # one value, not a silent ranking of two
            raise ConfigError(
                f"iterations is given twice ({opt('iterations')} and {setting('iterations')})"
            )
        opts["iterations"] = check_int("iterations", iterations, 0)
    for key in ("seed", "ipc", "count"):
        if key in opts:  # the build's own arguments, not generator settings
            raise ConfigError(
                f"{key} is not a {method} setting ({setting(key)}); give it as {opt(key)}"
            )
    cfg = make_config(cls.Config, opts)
    cls.check_config(cfg)
    if (ipc is None) == (count is None):
        raise ConfigError(
            f"give exactly one of {opt('ipc')} (images per class) and {opt('count')} (total)"
        )
    if ipc is not None:
        ipc = check_int("ipc", ipc, 1)
    if count is not None:
        count = check_int("count", count, 1)
        if not cls.supports_count:
            raise ConfigError(
                f"method {method!r} makes images per class; use {opt('ipc')}, not {opt('count')}"
            )
    teachers = _teacher_list(teacher)
    check_outputs(
        [(out, "store"), (checkpoint_path_for(out), "checkpoint")],
        reads=[dataset, *teachers],
        force=force,
    )
    out_path = Path(out)
    net, tmeta, nets = None, {}, []
    if cls.needs_teacher:
        if not teachers:
            raise ConfigError(
                f"method {method!r} needs a trained network: {opt('teacher', 'T.pt')}"
            )
        if len(teachers) < cls.min_teachers:
            raise ConfigError(
                f"method {method!r} needs at least {cls.min_teachers} teachers "
                f"(repeat {opt('teacher')}); got {len(teachers)}"
            )
        loaded = [_load_teacher(t) for t in teachers]
        nets = [n for n, _ in loaded]
        net, tmeta = loaded[0]
    elif teachers:
        raise ConfigError(f"method {method!r} does not use a teacher; drop {opt('teacher')}")
    if dataset is None:
        if cls.needs_real:
            raise ConfigError(f"method {method!r} needs real data: {opt('dataset')}")
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
    cls.check_size(data, count if count is not None else ipc * data.num_classes)
    gen = cls(
        cfg,
        data,
        ipc or 0,
        seed=seed,
        device=device,
        teacher=net,
        count=count,
        teachers=nets or None,
        dist=group,
    )
    return run_generator(gen, method, out_path, resume=resume, quiet=quiet, log=log)


def _check_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a name (str), got {value!r}")
    return value


def _load_teacher(
    teacher: str | os.PathLike | nn.Module, need_bn: bool = True
) -> tuple[nn.Module, dict]:
    """A teacher file loaded, or a caller's module copied: the library freezes, moves
    and puts its teacher in eval mode, and must not do that to an object it was lent.
    ``need_bn``: the BN-statistic uses (generators, PTQ) need BatchNorm; KD does not."""
    if isinstance(teacher, nn.Module):
        if need_bn and not has_batchnorm(teacher):
            raise ConfigError(
                "the teacher has no BatchNorm layers; BN-statistic methods "
                "need a network with BatchNorm"
            )
        bad = nonfinite_tensors(teacher)
        if bad:
            raise ConfigError(
                f"the teacher's {', '.join(bad[:3])} hold NaN or infinite values; it "
                "diverged when it was trained, retrain it"
            )
        return copy.deepcopy(teacher).eval(), {}
    if not isinstance(teacher, (str, os.PathLike)):
        raise ConfigError(
            f"teacher must be a file path or an nn.Module, got {type(teacher).__name__}"
        )
    return load_teacher(teacher, need_bn=need_bn)


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _spec_from_teacher(meta: dict, net: nn.Module) -> DataSpec:
    need = ("input_shape", "mean", "std", "classes")
    missing = [k for k in need if k not in meta]
    if missing:
        raise ConfigError(
            f"the teacher does not record {', '.join(missing)}; pass {opt('dataset')} so the "
            "image space is known (teachers from `distill-data teacher` record it)"
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
    digit data), a DSA strategy string such as ``"crop_scale"``, a kornia training
    pipeline by name (``"kornia"`` or ``"random_crop"``: ``RandomCrop(padding=4)`` and a
    flip; ``"resized_crop"``, ``"resized_crop_jitter"``: see
    :data:`distill_data.augment.PRESETS`; no flip for digit data, normalisation from
    the store) or as an :class:`~distill_data.augment.AugmentPipeline`, or any callable
    (C, H, W) → (C, H, W). Strategies and pipelines are applied per item, each
    DataLoader worker drawing from its own generator; to augment per batch instead,
    call an ``AugmentPipeline`` on each batch with your generator (and mix batches with
    :func:`~distill_data.augment.sample_mix` and :func:`~distill_data.augment.apply_mix`).
    """
    if is_preset(augment):
        meta = path.meta if isinstance(path, SyntheticSet) else read_meta(path)
        augment = AugmentPipeline.preset(augment, meta)
    if isinstance(augment, AugmentPipeline):
        augment = PerSampleAugment(augment)
    elif augment is True:
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
    group = dist.context(device)  # under torchrun the ranks share the models to train
    device = dist.rank_device(device, group)
    request = EvalRequest(
        config=make_config(EvalConfig, protocol),
        baselines=tuple(baselines) if not isinstance(baselines, str) else baselines,
        scores=scores,
        soft=soft,
        relabel=relabel,
    )
    _check_seed(request.config.seed)
    path = None
    if not isinstance(store, SyntheticSet):
        path = str(store)
        store = read_store(store)
    if dataset is None and not store.meta.dataset:
        raise StoreError(f"the store does not name its dataset; pass {opt('dataset')}")
    net, members = None, []
    teachers = _teacher_list(teacher)
    if teachers:
        loaded = [_load_teacher(t) for t in teachers]
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
        request,
        teacher=net,
        device=device,
        quiet=quiet,
        store_path=path,
        group=group,
    )
    if net is not None:
        report["protocol"]["teachers"] = len(members)
        report["protocol"]["teacher_files"] = [
            os.fspath(t) for t in teachers if not isinstance(t, nn.Module)
        ]
    return report


def input_paths(*specs: Any, store: Any = None, networks: Sequence[Any] = ()) -> list[Path]:
    """The files and folders a command will read, for :func:`~distill_data.paths.check_outputs`:
    the existing paths among ``specs`` (lists are flattened), a stored set and the real
    data it records, and network files (teachers, ``init``) and the real data each
    records. What cannot be read here is skipped: reading it later gives the error."""
    flat: list[Any] = []
    for spec in (*specs, networks):
        flat += list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if isinstance(store, (str, os.PathLike)):
        flat.append(store)
        if os.path.isfile(store):
            with contextlib.suppress(DistillDataError):
                meta = read_meta(store)
                flat += [meta.dataset, meta.extra.get("dataset_source", "")]
    for net in networks:
        if isinstance(net, (str, os.PathLike)) and os.path.isfile(net):
            flat += _recorded_data(net)
    return existing_paths(flat)


def _recorded_data(path: str | os.PathLike) -> list[str]:
    """The dataset name and source a network file records ([] when it cannot say)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        meta = payload.get("meta", {}) if isinstance(payload, dict) else {}
        return [str(meta.get("dataset", "")), str(meta.get("dataset_source", ""))]
    except Exception:  # noqa: BLE001 - not a network file: loading it later says so
        return []


def teacher(
    dataset: str | RealDataset,
    out: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    quiet: bool = False,
    force: bool = False,
    **settings: Any,
) -> dict:
    """Train a BatchNorm teacher on real data and save it to ``out``; returns a report.

    ``settings`` are :class:`~distill_data.train.TeacherConfig` fields (``model``,
    ``epochs``, ``lr``, ...). The file loads with ``torch.load(..., weights_only=True)``.
    ``force`` replaces an existing ``out`` that is not a network file (never the data).
    A run whose loss becomes NaN stops with a :class:`DivergedError` and saves nothing.
    """
    cfg = make_config(TeacherConfig, settings)
    _check_seed(cfg.seed)
    device = resolve_device(device)
    group = dist.context(device)  # under torchrun: one teacher, data-parallel (DDP)
    device = dist.rank_device(device, group)
    (out_path,) = check_outputs([(out, "model")], reads=[dataset], force=force)
    data = (
        dataset if isinstance(dataset, RealDataset) else load_dataset(dataset, progress=not quiet)
    )
    return train_teacher(data, cfg, out_path, device=device, quiet=quiet, group=group)


def train(
    dataset: str | RealDataset | None,
    out: str | os.PathLike,
    *,
    data: str | os.PathLike | SyntheticSet | None = None,
    teacher: str | os.PathLike | nn.Module | Sequence[str | os.PathLike | nn.Module] | None = None,
    recipe: str | None = None,
    kd: str | None = None,
    options: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    quiet: bool = False,
    resume: bool = False,
    force: bool = False,
    log: Callable[[str], None] | None = None,
    **student: Any,
) -> dict:
    """Train a student (optionally quantized) and save it to ``out``; returns its report.

    Args:
        dataset: real data for testing (and training when ``data`` is None); default:
            the one the stored set or the teacher records.
        data: a stored set to train on (hard or soft labels, or a data-free calibration
            set, which needs ``teacher``); ``real:N`` (N random real training images with
            their labels) or ``noise:N`` (N images of Gaussian noise, which need
            ``teacher``), the references a synthetic set is measured against; None
            trains on the real training split.
        teacher: teacher file(s) or module(s) to distil from (copied, never changed);
            several are one target, the mean of their softmax outputs.
        recipe: a :data:`~distill_data.train.RECIPES` preset (``student``, ``finetune``,
            ``polino``, ``zsqat``, ``dc``, ...); None: ``student`` for a student from
            scratch, ``finetune`` for one that starts trained; ``kd`` picks the loss
            (``hinton``, ``polino``, ``bdkd``, ``none``) at its paper's weight and
            temperature; ``options`` are
            :class:`~distill_data.train.TrainRecipe` overrides (``epochs``, ``lr``, ...).
        student: :class:`~distill_data.train.student.StudentConfig` fields (``model``,
            ``quant``, ``bits``, ``init``, ...).

    The report gives the float and quantized test accuracy, parameters, bytes on disk,
    compression against fp32 and seconds per epoch; a quantized student is saved as
    packed integer codes and reloaded to check it predicts as the trained network does.
    """
    from distill_data.evaluation.evaluate import _to_data_space, check_compatible
    from distill_data.train import TrainRecipe
    from distill_data.train.student import (
        StudentConfig,
        StudentData,
        student_recipe,
        train_student,
    )

    misplaced = sorted(
        set(student)
        & set(TrainRecipe.__dataclass_fields__) - set(StudentConfig.__dataclass_fields__)
    )
    if misplaced:  # the mirror of student_recipe's check on options
        raise ConfigError(
            f"{', '.join(misplaced)}: a recipe setting, not a student one; pass it in "
            f"options ({{{misplaced[0]!r}: ...}})"
        )
    cfg = make_config(StudentConfig, student)
    _check_seed(cfg.seed)
    if options is not None and not isinstance(options, Mapping):
        raise ConfigError(f"options must be a dict of settings, got {type(options).__name__}")
    if recipe is None:
        recipe = "student" if cfg.init == "scratch" else "finetune"
    train_recipe = student_recipe(recipe, dict(options or {}), kd)
    device = resolve_device(device)
    group = dist.context(device)  # under torchrun: one model, data-parallel (DDP)
    device = dist.rank_device(device, group)
    teachers = _teacher_list(teacher)
    spec_kind = _sample_spec(data)
    store_path = None if data is None or isinstance(data, SyntheticSet) or spec_kind else data
    init_file = [cfg.init] if cfg.init.endswith(".pt") else []
    check_outputs(
        [(out, "model"), (checkpoint_path_for(out), "checkpoint")],
        reads=input_paths(dataset, store=store_path, networks=[*teachers, *init_file]),
        force=force,
    )
    synset = read_store(data) if store_path is not None else (None if spec_kind else data)
    loaded = [_load_teacher(t, need_bn=False) for t in teachers]
    if dataset is None:
        if synset is not None and synset.meta.dataset:
            dataset = find_dataset(synset.meta.dataset, synset.meta.extra.get("dataset_source", ""))
        elif loaded and loaded[0][1].get("dataset"):
            meta = loaded[0][1]
            dataset = find_dataset(meta["dataset"], meta.get("dataset_source", ""))
        else:
            raise ConfigError(f"name the real data to test on: {opt('dataset')}")
    real = (
        dataset if isinstance(dataset, RealDataset) else load_dataset(dataset, progress=not quiet)
    )
    for net, meta in loaded:
        _check_teacher_fits(net, meta, real)
    if spec_kind:
        from distill_data.quant.calibrate import calibration_images

        images, what = calibration_images(str(data), real, cfg.seed)
        if spec_kind == "real":  # the same draw calibration_images made, with its labels
            g = torch.Generator().manual_seed(cfg.seed)
            idx = torch.randperm(len(real.x_train), generator=g)[: len(images)]
            labels = real.y_train[idx]
        else:  # noise has no class: a teacher labels it (data_free)
            labels = torch.zeros(len(images), dtype=torch.long)
        train_data = StudentData(
            images, labels, source=str(data), data_free=spec_kind == "noise",
            extra={"count": len(images), "what": what},
        )  # fmt: skip
    elif synset is None:
        train_data = StudentData(real.normalize(real.x_train), real.y_train)
    else:
        check_compatible(synset, real)
        m = synset.meta
        train_data = StudentData(
            _to_data_space(synset, real),
            synset.labels,
            synset.soft_labels,
            synset.temperature,
            source=str(store_path) if store_path is not None else f"{m.generator} set",
            data_free=m.ipc == 0,
            extra={"generator": m.generator, "ipc": m.ipc, "count": m.count},
        )
    report = train_student(
        real,
        train_data,
        cfg,
        train_recipe,
        out,
        teachers=[n for n, _ in loaded],
        teacher_meta={"files": [str(t) for t in teachers if not isinstance(t, nn.Module)]},
        device=device,
        quiet=quiet,
        resume=resume,
        log=log,
        group=group,
    )
    if "teacher" in report:
        report["teacher"]["files"] = [str(t) for t in teachers if not isinstance(t, nn.Module)]
    return {
        "kind": "distill-data student",
        "created": now_iso(),
        "dataset": real.name,
        **report,
        "settings": {"student": config_to_dict(cfg), "recipe": config_to_dict(train_recipe)},
        "machine": machine_info(),
    }


def _sample_spec(data: Any) -> str | None:
    """``"real"`` / ``"noise"`` for a ``real:N`` / ``noise:N`` spec, else None."""
    if isinstance(data, str):
        kind, sep, _ = data.partition(":")
        if sep and kind in ("real", "noise") and not os.path.exists(data):
            return kind
    return None


def quantize(
    teacher: str | os.PathLike | nn.Module,
    calib: str | Sequence[str],
    dataset: str | RealDataset | None = None,
    *,
    bits: str | Sequence[str] = "w8a8",
    compare: bool = False,
    seed: int = 0,
    quiet: bool = False,
    device: str | torch.device = "cpu",
    **ptq: Any,
) -> dict:
    """Post-training quantization of ``teacher`` calibrated on ``calib``; a report.

    ``calib``: a stored set, ``real:N`` or ``noise:N`` (or several). ``compare=True``
    adds ``real:N`` and ``noise:N`` with N = the size of the first calibration set.
    ``ptq`` keywords are :class:`~distill_data.quant.PTQConfig` fields (``method``,
    ``observer``, ``first_last_bits``, ``iterations``, ...): ``method="genie"`` (or
    ``adaround``, ``brecq``, ``qdrop``) reconstructs the quantized network block by
    block on the calibration images. ``dataset`` defaults to the one the teacher
    records. ``quiet``: no progress bars. ``device``: where the network calibrates,
    reconstructs and is tested (the images move there batch by batch).
    """
    from distill_data.quant import PTQConfig
    from distill_data.quant.calibrate import calibration_images, compare_calibrations

    device = resolve_device(device)
    net, meta = _load_teacher(teacher)
    net = net.to(device)  # a copy (see _load_teacher): the caller's module stays put
    if dataset is None:
        if not meta.get("dataset"):
            raise ConfigError(f"the teacher does not name its dataset; pass {opt('dataset')}")
        dataset = find_dataset(meta["dataset"], meta.get("dataset_source", ""))
    data = dataset if isinstance(dataset, RealDataset) else load_dataset(dataset)
    _check_teacher_fits(net, meta, data)
    calibs = [calib] if isinstance(calib, (str, os.PathLike)) else list(calib)
    if not calibs or not all(isinstance(c, (str, os.PathLike)) for c in calibs):
        raise ConfigError(
            f"give calibration sets as names: {opt('calib', 'F.h5')}, real:N or noise:N"
        )
    calibs = [os.fspath(c) for c in calibs]
    if compare:
        n = len(calibration_images(calibs[0], data, seed)[0])
        calibs += [c for c in (f"real:{n}", f"noise:{n}") if c not in calibs]
    bit_list = [bits] if isinstance(bits, str) else list(bits)
    if not all(isinstance(b, str) for b in bit_list):
        raise ConfigError(f"bits must be names such as 'w8a8', got {bits!r}")
    _check_seed(seed)
    for key in ("w_bits", "a_bits"):
        if key in ptq:  # one source for the bit widths: a second one would be ignored
            raise ConfigError(
                f"{key} comes from {opt('bits')} ('w4a4': 4-bit weights, 4-bit "
                f"activations); give the bit widths there, not as {key}"
            )
    from distill_data.quant.ptq import parse_bits

    w0, a0 = parse_bits(bit_list[0]) if bit_list else (8, 8)  # validated with its widths
    cfg = make_config(PTQConfig, {"seed": seed, "w_bits": w0, "a_bits": a0, **ptq})
    report = compare_calibrations(net, data, calibs, bit_list, cfg, seed=seed, progress=not quiet)
    report["device"] = str(device)
    report["teacher"] = {
        "file": None if isinstance(teacher, nn.Module) else os.fspath(teacher),
        "test_accuracy": meta.get("test_accuracy"),
    }
    return report


__all__ = [
    "build",
    "evaluate",
    "list_datasets",
    "list_methods",
    "load",
    "quantize",
    "teacher",
    "train",
]
