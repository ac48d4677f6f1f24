"""Small frozen settings dataclasses and the ``--set key=value`` machinery.

Every configurable part (generators, evaluation) describes its settings as a frozen
dataclass whose defaults are the paper's. ``--set`` strings are converted to each
field's type here, and unknown keys are rejected with the list of valid ones.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import torch

from distill_data.errors import ConfigError

C = TypeVar("C")

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


def parse_set_options(items: Iterable[str]) -> dict[str, str]:
    """``["a=1", "b=x"]`` → ``{"a": "1", "b": "x"}``; malformed items raise ConfigError."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        out[key] = value.strip()
    return out


def _convert(name: str, tp: Any, raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in {"none", "null", ""} and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        for a in non_none:
            try:
                return _convert(name, a, raw)
            except ConfigError:
                continue
        raise ConfigError(f"setting {name}={raw!r} is not a valid {tp}")
    if tp is bool:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ConfigError(f"setting {name}={raw!r}: expected true or false")
    if tp is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"setting {name}={raw!r}: expected an integer") from None
    if tp is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"setting {name}={raw!r}: expected a number") from None
    if tp is str:
        return raw
    if origin in (tuple, list, dict) or tp in (tuple, list, dict):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            raise ConfigError(f"setting {name}={raw!r}: expected JSON") from None
        return tuple(value) if origin is tuple else value
    return raw


def make_config(cls: type[C], overrides: Mapping[str, Any] | None = None) -> C:
    """Build ``cls`` from its defaults plus ``overrides`` (strings are type-converted).

    Raises:
        ConfigError: an unknown key (message lists the valid ones) or a bad value.
    """
    overrides = dict(overrides or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown setting {', '.join(unknown)} for {cls.__name__}; "
            f"valid: {', '.join(sorted(fields))}"
        )
    kwargs = {k: _convert(k, hints[k], v) for k, v in overrides.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{cls.__name__}: {e}") from None


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-safe dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def resolve_device(device: Any) -> torch.device:
    """Parse a device spec, refusing ones this machine cannot use (ConfigError)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise ConfigError(f"unsupported device {device!r}; use cpu or cuda")
    return dev


def require(cond: bool, message: str) -> None:
    """Validation helper for ``__post_init__``: raise ConfigError(message) unless cond."""
    if not cond:
        raise ConfigError(message)
