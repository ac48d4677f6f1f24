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

from distill_data.errors import ConfigError, DistillDataError, DivergedError, StoreError
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

    Loadable with ``torch.load(..., weights_only=True)``; written atomically. A network
    with a NaN or infinite weight is refused: such a file could only mislead whoever
    loads it.

    Raises:
        ConfigError: the model was not built by :func:`build_model`.
        DivergedError: a parameter or buffer is not finite.
        StoreError: the file cannot be written (the previous file, if any, stays).
    """
    from distill_data.store import atomic_write

    arch = getattr(model, "arch", None)
    if arch is None or not hasattr(model, "config"):
        raise ConfigError("only models built by distill_data.models.build_model can be saved")
    bad = nonfinite_tensors(model)
    if bad:
        raise DivergedError(
            f"refusing to save {path}: {', '.join(bad[:3])} hold NaN or infinite values "
            "(the training diverged)"
        )
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


def nonfinite_tensors(model: nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers holding NaN or infinity.

    One host synchronisation for the whole model (the training loop asks every epoch):
    the per-tensor flags are stacked on the device and read back once."""
    floats = [(name, t) for name, t in model.state_dict().items() if t.is_floating_point()]
    if not floats:
        return []
    dev = floats[0][1].device
    finite = torch.stack([torch.isfinite(t).all().to(dev) for _, t in floats]).tolist()
    return [name for (name, _), ok in zip(floats, finite) if not ok]


def load_model(path: str | os.PathLike, map_location: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a model saved by :func:`save_model`; returns ``(model, meta)``.

    Only ``weights_only=True`` loading is used: nothing in the file is executed. The
    file's structure is checked the way a store's is (every key, its type, the weights'
    names and shapes against the architecture, finite values), so a hand-edited or
    damaged file is one :class:`StoreError` naming what is wrong.
    """
    p = Path(path)
    if not p.is_file():
        raise StoreError(f"no such model file: {p}")
    try:
        payload = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means an unusable file
        from distill_data.paths import kind_phrase

        what = kind_phrase(p)
        if what is not None and "torch.save" not in what:
            raise StoreError(f"{p} is {what}, not a network file (.pt)") from None
        raise StoreError(f"{p} is not a readable distill-data model file ({_reason(e)})") from None
    if isinstance(payload, dict) and payload.get("format") == "distill-data-student":
        raise StoreError(
            f"{p} is a quantized student (distill-data train --quant); a teacher or a "
            "starting network must be a float network file (distill-data teacher, or "
            "train without --quant)"
        )
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FILE_FORMAT:
        raise StoreError(f"{p} is not a distill-data model file (no format tag)")
    version = payload.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise StoreError(f"{p}: 'version' must be an integer, got {version!r} (damaged file)")
    if version > MODEL_FILE_VERSION:
        raise StoreError(f"{p} was written by a newer distill-data; upgrade to read it")
    arch, cfg, state, meta = _checked_payload(p, payload)
    channels, num_classes = cfg.pop("channels"), cfg.pop("num_classes")
    im_size = tuple(cfg.pop("im_size"))
    try:
        with torch.random.fork_rng(devices=[]):  # weights come from the file, not the RNG
            model = build_model(arch, channels, num_classes, im_size, **cfg)
    except (DistillDataError, TypeError, ValueError, RuntimeError) as e:
        raise StoreError(f"{p}: cannot rebuild architecture {arch!r} ({_reason(e)})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        # torch says "Error(s) in loading state_dict for X:" and then one line per problem
        lines = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
        detail = " ".join(lines) or _reason(e)
        raise StoreError(f"{p}: weights do not fit architecture {arch!r}: {detail}") from None
    bad = nonfinite_tensors(model)
    if bad:
        raise StoreError(
            f"{p}: {', '.join(bad[:3])} hold NaN or infinite values; the network diverged "
            "when it was trained, retrain it"
        )
    return model, meta


def _checked_payload(p: Path, payload: dict) -> tuple[str, dict, dict, dict]:
    """The arch, constructor arguments, state dict and meta of a model file, each
    checked for presence and type."""
    missing = [k for k in ("arch", "config", "state_dict") if k not in payload]
    if missing:
        raise StoreError(f"{p} is missing {', '.join(missing)} (damaged model file)")
    arch, cfg, state = payload["arch"], payload["config"], payload["state_dict"]
    meta = payload.get("meta", {})
    if not isinstance(arch, str) or arch not in MODELS:
        raise StoreError(f"{p}: unknown architecture {arch!r}; known: {', '.join(MODELS.names())}")
    if not isinstance(cfg, dict):
        raise StoreError(f"{p}: 'config' must be a dict of constructor arguments")
    for key in ("channels", "num_classes"):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise StoreError(f"{p}: config {key!r} must be a positive integer, got {value!r}")
    im_size = cfg.get("im_size")
    if (
        not isinstance(im_size, (list, tuple))
        or len(im_size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in im_size)
    ):
        raise StoreError(f"{p}: config 'im_size' must be [height, width], got {im_size!r}")
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise StoreError(f"{p}: 'state_dict' must map parameter names to tensors")
    if not isinstance(meta, dict):
        raise StoreError(f"{p}: 'meta' must be a dict, got {type(meta).__name__}")
    return arch, dict(cfg), state, dict(meta)


def _reason(e: BaseException) -> str:
    """The first line of an exception's message, whole (never cut mid-sentence)."""
    text = str(e).strip()
    if "WeightsUnpickler error:" in text:  # skip torch's long preamble
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    return text.splitlines()[0].rstrip(".:") if text else type(e).__name__


__all__ = [
    "MODELS",
    "ConvNet",
    "ConvNetBN",
    "MLP",
    "ResNet",
    "build_model",
    "init_params_",
    "load_model",
    "nonfinite_tensors",
    "save_model",
]
