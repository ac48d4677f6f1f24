"""Networks by name, and the one file format for a trained network.

Every model takes ``(channels, num_classes, im_size, **options)``, exposes
``embed(x)`` (the feature before the classifier) and ``forward(x)``, and records its
constructor arguments in ``model.config`` so it can be saved and rebuilt.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill_data.errors import ConfigError, StoreError
from distill_data.models.convnet import ConvNet, ConvNetBN
from distill_data.models.init import init_params_
from distill_data.models.mlp import MLP
from distill_data.models.resnet import ResNet
from distill_data.registry import Registry

MODELS: Registry[type[nn.Module]] = Registry("model")
MODELS.register("convnet", "ConvNet, width 128, depth 3, instance norm (the field's standard)")(
    ConvNet
)
MODELS.register("convnet_bn", "ConvNet with BatchNorm")(ConvNetBN)
MODELS.register("resnet", "CIFAR-style ResNet-20 with BatchNorm (width 16)")(ResNet)
MODELS.register("mlp", "Two-hidden-layer perceptron, width 128")(MLP)

MODEL_FILE_FORMAT = "distill-data-model"
MODEL_FILE_VERSION = 1


def build_model(
    name: str,
    channels: int,
    num_classes: int,
    im_size: tuple[int, int],
    generator: torch.Generator | None = None,
    **options: Any,
) -> nn.Module:
    """Instantiate a registered model; unknown options raise :class:`ConfigError`.

    With ``generator``, parameters are drawn from it (see :func:`init_params_`), so a
    seeded run never touches the global RNG's outcome.
    """
    cls = MODELS.get(name)
    try:
        # every constructor argument, defaults included, so save_model can rebuild it
        bound = inspect.signature(cls).bind(channels, num_classes, tuple(im_size), **options)
        bound.apply_defaults()
        if generator is None:
            model = cls(channels, num_classes, tuple(im_size), **options)
        else:  # default init draws from the global RNG; restore it, then redraw
            with torch.random.fork_rng(devices=[]):
                model = cls(channels, num_classes, tuple(im_size), **options)
    except TypeError as e:
        raise ConfigError(f"bad options for model {name!r}: {e}") from None
    model.arch = name  # type: ignore[attr-defined]
    model.config = dict(bound.arguments)  # type: ignore[attr-defined]
    if generator is not None:
        init_params_(model, generator)
    return model


def save_model(model: nn.Module, path: str | os.PathLike, meta: dict | None = None) -> None:
    """Write a model file: architecture name, constructor arguments, state dict, meta.

    Loadable with ``torch.load(..., weights_only=True)``; written atomically.
    """
    from distill_data.store import atomic_write

    arch = getattr(model, "arch", None)
    if arch is None or not hasattr(model, "config"):
        raise ConfigError("only models built by distill_data.models.build_model can be saved")
    cfg = dict(model.config)
    cfg["im_size"] = list(cfg["im_size"])
    payload = {
        "format": MODEL_FILE_FORMAT,
        "version": MODEL_FILE_VERSION,
        "arch": arch,
        "config": cfg,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta or {},
    }
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)


def load_model(path: str | os.PathLike, map_location: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a model saved by :func:`save_model`; returns ``(model, meta)``.

    Only ``weights_only=True`` loading is used: nothing in the file is executed.
    """
    p = Path(path)
    if not p.is_file():
        raise StoreError(f"no such model file: {p}")
    try:
        payload = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means an unusable file
        msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise StoreError(f"{p} is not a readable distill-data model file ({msg})") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FILE_FORMAT:
        raise StoreError(f"{p} is not a distill-data model file (no format tag)")
    if int(payload.get("version", 0)) > MODEL_FILE_VERSION:
        raise StoreError(f"{p} was written by a newer distill-data; upgrade to read it")
    cfg = dict(payload["config"])
    channels, num_classes = cfg.pop("channels"), cfg.pop("num_classes")
    im_size = tuple(cfg.pop("im_size"))
    with torch.random.fork_rng(devices=[]):  # weights come from the file, not the RNG
        model = build_model(payload["arch"], channels, num_classes, im_size, **cfg)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise StoreError(f"{p}: weights do not fit architecture {payload['arch']!r}: {e}") from None
    return model, dict(payload.get("meta", {}))


__all__ = [
    "MODELS",
    "ConvNet",
    "ConvNetBN",
    "MLP",
    "ResNet",
    "build_model",
    "init_params_",
    "load_model",
    "save_model",
]
