"""Small frozen settings dataclasses and the ``--set key=value`` machinery.

Every configurable part (generators, evaluation) describes its settings as a frozen
dataclass whose defaults are the paper's. ``--set`` strings are converted to each
field's type here, and unknown keys are rejected with the list of valid ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import numpy as np
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


#: The largest magnitude a float setting may have: every setting ends up in float32
#: arithmetic (a learning rate multiplies float32 gradients), where more overflows.
FLOAT_LIMIT = float(torch.finfo(torch.float32).max)


def convert_setting(name: str, tp: Any, raw: Any) -> Any:
    """``raw`` (a ``--set`` string, or a value from Python) as a value of type ``tp``.

    Strings are parsed; other values are type-checked, so a Python caller who passes
    ``"2"`` for an int gets the same message as a command-line user who types ``2x``.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        none_words = {"none", "null", ""}
        if type(None) in args and (
            raw is None or (isinstance(raw, str) and raw.lower() in none_words)
        ):
            return None
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for a in non_none:
            try:
                return convert_setting(name, a, raw)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) == 1:
            raise ConfigError(errors[0])
        raise ConfigError(f"setting {name}={raw!r} is not a valid {_type_name(tp)}")
    if tp is bool:
        if isinstance(raw, (bool, np.bool_)):
            return bool(raw)
        if isinstance(raw, str):
            if raw.lower() in _TRUE:
                return True
            if raw.lower() in _FALSE:
                return False
        raise ConfigError(f"setting {name}={raw!r}: expected true or false")
    if tp is int:
        if isinstance(raw, str):
            try:
                return int(raw)
            except ValueError:
                raise ConfigError(f"setting {name}={raw!r}: expected an integer") from None
        return check_int(name, raw)
    if tp is float:
        if isinstance(raw, str):
            try:
                raw = float(raw)
            except ValueError:
                raise ConfigError(f"setting {name}={raw!r}: expected a number") from None
        return check_float(name, raw)
    if tp is str:
        if not isinstance(raw, str):
            raise ConfigError(f"setting {name}={raw!r}: expected a string")
        return raw
    if origin in (tuple, list, dict) or tp in (tuple, list, dict):
        want = origin or tp
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError:
                raise ConfigError(f"setting {name}={raw!r}: expected JSON") from None
        if want is dict and not isinstance(raw, dict):
            raise ConfigError(f"setting {name}={raw!r}: expected a JSON object")
        if want in (tuple, list) and not isinstance(raw, (list, tuple)):
            raise ConfigError(f"setting {name}={raw!r}: expected a list")
        if want in (tuple, list) and args and args[-1] is not Ellipsis and len(args) > 1:
            if len(raw) != len(args):
                raise ConfigError(f"setting {name}={raw!r}: expected {len(args)} values")
            return tuple(convert_setting(name, a, v) for a, v in zip(args, raw))
        if want in (tuple, list) and args:
            raw = [convert_setting(name, args[0], v) for v in raw]
        return tuple(raw) if want is tuple else raw
    return raw


def _type_name(tp: Any) -> str:
    names = {int: "integer", float: "number", bool: "true/false", str: "string"}
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return " or ".join(names.get(a, getattr(a, "__name__", str(a))) for a in args) + " or none"


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as an int, refusing bools, floats and strings with one clear message
    (``name`` is the setting's name); ``minimum`` also checks the lower bound."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        kind = type(value).__name__
        raise ConfigError(f"{name} must be an integer, got {value!r} ({kind})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_float(name: str, value: Any) -> float:
    """``value`` as a finite float within float32's range, else ConfigError naming it.

    NaN and infinity are refused here, at the door, so that no run starts from a setting
    that can only produce NaN, and so does a magnitude float32 arithmetic cannot hold.
    """
    if isinstance(value, (bool, np.bool_, np.complexfloating)) or not isinstance(
        value, (int, float, np.number)
    ):
        kind = type(value).__name__
        raise ConfigError(f"{name} must be a real number, got {value!r} ({kind})")
    try:
        value = float(value)
    except OverflowError:  # an int beyond any float
        digits = len(str(abs(int(value))))
        raise ConfigError(
            f"{name} is beyond float32's range (an integer of {digits} digits)"
        ) from None
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}")
    if abs(value) > FLOAT_LIMIT:
        raise ConfigError(
            f"{name}={value:g} is beyond float32's range (|x| <= {FLOAT_LIMIT:.3g}), "
            "where the computation would overflow"
        )
    return value


def make_config(cls: type[C], overrides: Mapping[str, Any] | None = None) -> C:
    """Build ``cls`` from its defaults plus ``overrides``, every value checked.

    ``--set`` strings are parsed to each field's type; values from Python are checked
    against it (an int field refuses ``"2"`` and ``True``, a float field NaN, infinity
    and magnitudes float32 cannot hold).

    Raises:
        ConfigError: an unknown key (message lists the valid ones) or a bad value.
    """
    overrides = dict(overrides or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise unknown_settings(unknown, {"valid": fields}, where=f" for {cls.__name__}")
    kwargs = {k: convert_setting(k, hints[k], v) for k, v in overrides.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{cls.__name__}: {e}") from None


def unknown_settings(
    unknown: Iterable[str], families: Mapping[str, Iterable[str]], where: str = ""
) -> ConfigError:
    """The error for ``--set`` keys no config has: each family of valid keys by its label,
    and the nearest valid spelling of each unknown key when one is close."""
    unknown = sorted(unknown)
    valid = sorted({k for names in families.values() for k in names})
    near = {k: difflib.get_close_matches(k, valid, n=1, cutoff=0.75) for k in unknown}
    hint = "; ".join(f"did you mean {m[0]} (not {k})?" for k, m in near.items() if m)
    listed = "; ".join(f"{label}: {', '.join(sorted(names))}" for label, names in families.items())
    return ConfigError(
        f"unknown setting {', '.join(unknown)}{where}; {listed}" + (f" ({hint})" if hint else "")
    )


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-safe dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


#: Device kinds torch can be built with, and how to ask whether this machine has one.
_DEVICE_KINDS = {
    "cuda": ("CUDA", lambda: torch.cuda.is_available(), lambda: torch.cuda.device_count()),
    "mps": (
        "Apple MPS",
        lambda: torch.backends.mps.is_available(),
        lambda: 1 if torch.backends.mps.is_available() else 0,
    ),
    "xpu": (
        "Intel XPU",
        lambda: hasattr(torch, "xpu") and torch.xpu.is_available(),
        lambda: torch.xpu.device_count() if hasattr(torch, "xpu") else 0,
    ),
}


def resolve_device(device: Any) -> torch.device:
    """Parse a device spec, refusing ones this machine cannot use (ConfigError).

    Every kind is checked for availability here (a torch built without it, or a
    machine without one), so no run fails later with torch's own traceback.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type not in _DEVICE_KINDS:
        raise ConfigError(f"unsupported device {device!r}; use cpu, cuda, mps or xpu")
    what, available, count = _DEVICE_KINDS[dev.type]
    try:
        ok = bool(available())
    except (RuntimeError, AssertionError, AttributeError):
        ok = False
    if not ok:
        raise ConfigError(
            f"device {str(device)!r} requested but {what} is not available here "
            f"(torch {torch.__version__}); use cpu"
        )
    n = count()
    if dev.index is not None and dev.index >= n:
        raise ConfigError(f"device {str(device)!r}: only {n} {what} device(s) visible")
    return dev


def require(cond: bool, message: str) -> None:
    """Validation helper for ``__post_init__``: raise ConfigError(message) unless cond."""
    if not cond:
        raise ConfigError(message)
