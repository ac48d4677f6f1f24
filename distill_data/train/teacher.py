"""Teachers: BatchNorm networks trained on real data, saved with everything a data-free
consumer needs (architecture, constructor arguments, input shape, normalisation,
classes) so that BN-statistic inversion never needs the dataset again."""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn
from tqdm.auto import tqdm

from distill_data.augment import PRESETS, is_preset
from distill_data.augment.pipeline import DEFAULT_PRESET
from distill_data.config import require
from distill_data.data import RealDataset
from distill_data.dist import ONE, Dist, together
from distill_data.errors import ConfigError, DivergedError, StoreError, opt
from distill_data.models import build_model, load_model, save_model
from distill_data.train.fit import TrainData, fit, steps_per_epoch
from distill_data.train.recipe import TrainRecipe, get_recipe

TEACHER_MODELS = ("resnet", "convnet_bn")


@dataclass(frozen=True)
class TeacherConfig:
    """Teacher training settings: the architecture, and the ``teacher`` training recipe
    (:mod:`distill_data.train.recipe`) with any of its settings overridden.

    Attributes:
        model: a BatchNorm architecture (``resnet`` or ``convnet_bn``).
        width: network width override (None: the architecture's default).
        seed: seed of initialisation, shuffling and augmentation.
        epochs, lr, momentum, weight_decay, batch_size: override the recipe's (None: the
            ``teacher`` preset's: 30 epochs of SGD, lr 0.05 ×0.1 at half, momentum 0.9,
            weight decay 5e-4, batch 128).
        augment: DSA on every batch (no flip for digit data); False: no augmentation.
        pipeline: augment with a kornia training pipeline instead of DSA (a name in
            :data:`distill_data.augment.PRESETS`, e.g. ``random_crop``: the usual
            ``RandomCrop(padding=4)`` + flip, no flip for digits); None: DSA.
        precision: ``fp32`` or ``bf16`` (forward passes under bfloat16 autocast; see
            :class:`~distill_data.train.TrainRecipe`).
    """

    model: str = "resnet"
    epochs: int | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    batch_size: int | None = None
    augment: bool = True
    width: int | None = None
    seed: int = 0
    pipeline: str | None = None
    precision: str = "fp32"

    def __post_init__(self) -> None:
        require(
            self.pipeline is None or is_preset(self.pipeline),
            f"unknown pipeline {self.pipeline!r}; choose from: " + ", ".join(PRESETS),
        )
        require(
            self.model in TEACHER_MODELS,
            f"teacher model must be a BatchNorm network ({', '.join(TEACHER_MODELS)}), "
            f"got {self.model!r}",
        )
        self.train_recipe()  # the overrides must make a valid recipe

    def train_recipe(self) -> TrainRecipe:
        """The ``teacher`` preset with this config's overrides."""
        changes = {
            k: getattr(self, k)
            for k in ("epochs", "lr", "momentum", "weight_decay", "batch_size")
            if getattr(self, k) is not None
        }
        if not self.augment:
            changes["augment"] = "none"
        elif self.pipeline is not None:
            name = self.pipeline.strip().lower()
            changes["augment"] = DEFAULT_PRESET if name == "kornia" else name
        return replace(get_recipe("teacher"), precision=self.precision, **changes)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class TeacherEnsemble(nn.Module):
    """Several teachers as one: the mean of their logits (INFER's soft labels, and its
    official dynamic relabelling, average the M teachers' logits this way)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ConfigError("a teacher ensemble needs at least one teacher")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


@torch.no_grad()
def accuracy(model: nn.Module, data: RealDataset, device: torch.device, batch: int = 500) -> float:
    """Top-1 test accuracy in percent (model in eval mode: BN running statistics)."""
    model.eval()
    correct = 0
    for i in range(0, len(data.x_test), batch):
        x = data.normalize(data.x_test[i : i + batch]).to(device)
        correct += int((model(x).argmax(1).cpu() == data.y_test[i : i + batch]).sum())
    return 100.0 * correct / len(data.x_test)


def train_teacher(
    data: RealDataset,
    cfg: TeacherConfig,
    out: str | os.PathLike,
    device: torch.device | str = "cpu",
    quiet: bool = False,
    group: Dist = ONE,
) -> dict:
    """Train a teacher on ``data``, save it to ``out`` (atomically) and return a report.

    Under torchrun (``group``) the teacher trains data-parallel as
    :func:`~distill_data.train.fit` describes (the one-process result up to the order of
    floating-point sums); rank 0 writes the file."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(cfg.seed)
    opts = {} if cfg.width is None else {"width": cfg.width}
    model = build_model(
        cfg.model, data.channels, data.num_classes, data.im_size, generator=g, **opts
    ).to(device)
    recipe = cfg.train_recipe()
    t0 = time.perf_counter()
    per = steps_per_epoch(len(data.x_train), recipe)
    with tqdm(
        total=recipe.epochs * per,
        unit="step",
        desc=f"teacher {cfg.model}",
        disable=quiet or not group.main,
        dynamic_ncols=True,
    ) as bar:
        try:
            fit(
                model,
                TrainData(data.normalize(data.x_train), data.y_train, space=data),
                recipe,
                generator=g,
                bar=bar,
                bar_unit="step",
                group=group,
            )
        except DivergedError as e:
            raise DivergedError(
                f"teacher {e}; lower {opt('lr')} (now {recipe.lr:g}) and rerun"
            ) from None
    seconds = time.perf_counter() - t0
    acc = accuracy(model, data, device)
    meta = {
        "dataset": data.name,
        "dataset_source": data.source,
        "dataset_fingerprint": data.fingerprint,
        "input_shape": [data.channels, *data.im_size],
        "num_classes": data.num_classes,
        "classes": list(data.classes),
        "mean": list(data.mean),
        "std": list(data.std),
        "test_accuracy": acc,
        "train_config": _resolved(cfg, recipe),
        "train_recipe": asdict(recipe),
    }
    together(group, lambda: save_model(model.cpu(), out, meta=meta) if group.main else None)
    return {
        "teacher": str(out),
        "test_accuracy": acc,
        "train_seconds": round(seconds, 1),
        **{k: meta[k] for k in ("dataset", "dataset_fingerprint", "input_shape")},
        "config": _resolved(cfg, recipe),
    }


def _resolved(cfg: TeacherConfig, recipe: TrainRecipe) -> dict:
    """The config as it ran: the recipe's values in place of the Nones."""
    return {k: getattr(recipe, k) if v is None and hasattr(recipe, k) else v
            for k, v in asdict(cfg).items()}  # fmt: skip


def load_teacher(path: str | os.PathLike, need_bn: bool = True) -> tuple[nn.Module, dict]:
    """Load a teacher file (weights_only), check it has BatchNorm layers (``need_bn``:
    the BN-statistic methods; distillation does not need them) and that what it records
    about its data (shape, normalisation, classes) is well-formed."""
    model, meta = load_model(path)
    if need_bn and not has_batchnorm(model):
        raise ConfigError(
            f"teacher {path} has no BatchNorm layers; BN-statistic methods "
            "need a network with BatchNorm (e.g. resnet, convnet_bn)"
        )
    check_teacher_meta(path, meta, model)
    return model.eval(), meta


def check_teacher_meta(path: str | os.PathLike, meta: dict, model: nn.Module) -> None:
    """Refuse a teacher file whose recorded image space is malformed (StoreError): each
    key a data-free build reads must have the type it needs and agree with the network."""
    cfg = getattr(model, "config", {})

    def bad(key: str, want: str) -> StoreError:
        return StoreError(f"{path}: meta {key!r} must be {want}, got {meta[key]!r}")

    def ints(v: object, n: int) -> bool:
        return (
            isinstance(v, (list, tuple))
            and len(v) == n
            and all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in v)
        )

    channels = cfg.get("channels")
    if "input_shape" in meta:
        shape = meta["input_shape"]
        if not ints(shape, 3):
            raise bad("input_shape", "[channels, height, width]")
        if channels is not None and shape[0] != channels:
            raise StoreError(
                f"{path}: meta 'input_shape' has {shape[0]} channels but the network "
                f"takes {channels}"
            )
    for key in ("mean", "std"):
        if key in meta:
            v = meta[key]
            if not isinstance(v, (list, tuple)) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                for x in v
            ):
                raise bad(key, "a list of finite numbers, one per channel")
            if channels is not None and len(v) != channels:
                raise bad(key, f"{channels} value(s), one per channel")
            if key == "std" and any(x <= 0 for x in v):
                raise bad(key, "positive per channel")
    if "classes" in meta:
        names = meta["classes"]
        if not isinstance(names, (list, tuple)) or not all(isinstance(c, str) for c in names):
            raise bad("classes", "a list of class names")
        k = cfg.get("num_classes")
        if k is not None and len(names) != k:
            raise StoreError(
                f"{path}: meta 'classes' names {len(names)} classes but the network predicts {k}"
            )
    for key in ("dataset", "dataset_source", "dataset_fingerprint"):
        if key in meta and not isinstance(meta[key], str):
            raise bad(key, "a string")
