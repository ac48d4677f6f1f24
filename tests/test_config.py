"""``--set key=value`` parsing and type conversion into frozen config dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pytest

from distill_data.config import config_to_dict, make_config, parse_set_options, require
from distill_data.errors import ConfigError, DistillDataError
from distill_data.evaluation import EvalConfig


@dataclass(frozen=True)
class Toy:
    count: int = 1
    rate: float = 0.5
    flag: bool = False
    name: str = "x"
    maybe: int | None = None
    old_style: Optional[float] = 1.0  # noqa: UP045 - typing.Optional must work too
    label: str | None = "a"
    sizes: tuple[int, ...] = (1, 2)
    pair: list[int] | None = None

    def __post_init__(self) -> None:
        require(self.count >= 0, f"count must be >= 0, got {self.count}")


# --------------------------------------------------------------------------- parse


def test_parse_set_options() -> None:
    assert parse_set_options([]) == {}
    assert parse_set_options(["a=1", " b = x ", "batch-size=64"]) == {
        "a": "1",
        "b": "x",
        "batch_size": "64",
    }
    assert parse_set_options(["path=a=b.pt"]) == {"path": "a=b.pt"}  # first '=' splits
    assert parse_set_options(["a=1", "a=2"]) == {"a": "2"}  # last one wins
    assert parse_set_options(["empty="]) == {"empty": ""}


@pytest.mark.parametrize("item", ["foo", "=3", " =3", ""])
def test_parse_set_options_malformed(item: str) -> None:
    with pytest.raises(ConfigError, match="key=value"):
        parse_set_options([item])


# --------------------------------------------------------------------------- convert


@pytest.mark.parametrize(
    "key, raw, want",
    [
        ("count", "42", 42),
        ("rate", "1e-3", 1e-3),
        ("rate", "2", 2.0),
        ("name", "hello world", "hello world"),
        ("name", "123", "123"),
        ("maybe", "7", 7),
        ("maybe", "none", None),
        ("maybe", "None", None),
        ("maybe", "null", None),
        ("old_style", "0.25", 0.25),
        ("old_style", "none", None),
        ("label", "b", "b"),
        ("label", "", None),
        ("sizes", "[3, 4]", (3, 4)),
        ("pair", "[5, 6]", [5, 6]),
        ("pair", "none", None),
    ],
)
def test_make_config_converts_strings(key: str, raw: str, want) -> None:
    cfg = make_config(Toy, {key: raw})
    got = getattr(cfg, key)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize("word", ["1", "true", "True", "YES", "on", "y", "t"])
def test_bool_true_words(word: str) -> None:
    assert make_config(Toy, {"flag": word}).flag is True


@pytest.mark.parametrize("word", ["0", "false", "False", "NO", "off", "n", "f"])
def test_bool_false_words(word: str) -> None:
    assert make_config(Toy, {"flag": word}).flag is False


@pytest.mark.parametrize(
    "key, raw, message",
    [
        ("count", "abc", "expected an integer"),
        ("count", "1.5", "expected an integer"),
        ("rate", "fast", "expected a number"),
        ("flag", "maybe", "expected true or false"),
        ("maybe", "seven", "expected an integer"),
        ("sizes", "[1,", "expected JSON"),
    ],
)
def test_bad_values(key: str, raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        make_config(Toy, {key: raw})
    assert key in str(info.value) and raw in str(info.value)


def test_post_init_errors_become_config_errors() -> None:
    with pytest.raises(ConfigError, match="count must be >= 0"):
        make_config(Toy, {"count": "-3"})


def test_defaults_and_non_string_values_pass_through() -> None:
    assert make_config(Toy) == Toy()
    assert make_config(Toy, {}) == Toy()
    assert make_config(Toy, {"count": 3, "rate": 0.1}) == Toy(count=3, rate=0.1)


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as info:
        make_config(Toy, {"colour": "red", "count": "2"})
    msg = str(info.value)
    assert "unknown setting colour" in msg and "Toy" in msg
    valid = msg.split("valid:", 1)[1]
    for field in ("count", "rate", "flag", "name", "maybe", "old_style", "label", "sizes"):
        assert field in valid
    assert isinstance(info.value, DistillDataError)


def test_eval_config_through_make_config() -> None:
    cfg = make_config(EvalConfig, {"runs": "2", "augment": "no", "width": "8", "lr": "0.05"})
    assert (cfg.runs, cfg.augment, cfg.width, cfg.lr) == (2, False, 8, 0.05)
    assert make_config(EvalConfig, {"width": "none"}).width is None
    assert make_config(EvalConfig, {"dsa_strategy": "crop"}).dsa_strategy == "crop"
    with pytest.raises(ConfigError, match="runs must be >= 1"):
        make_config(EvalConfig, {"runs": "0"})
    with pytest.raises(ConfigError, match="unknown model"):
        make_config(EvalConfig, {"model": "vit"})
    with pytest.raises(
        ConfigError, match=r"valid: .*epochs.*\(did you mean epochs \(not epoch\)\?\)"
    ):
        make_config(EvalConfig, {"epoch": "3"})
    with pytest.raises(ConfigError) as e:  # nothing close: no guess
        make_config(EvalConfig, {"zzz": "3"})
    assert "did you mean" not in str(e.value)


def test_config_to_dict_is_json_safe() -> None:
    d = config_to_dict(Toy())
    assert d["sizes"] == [1, 2] and d["maybe"] is None and d["flag"] is False


def test_numbers_beyond_float_and_complex_values_are_refused():
    from distill_data.config import check_float

    with pytest.raises(ConfigError, match="beyond float32's range"):
        check_float("lr", 10**400)
    with pytest.raises(ConfigError, match="must be a real number"):
        check_float("lr", np.complex128(1 + 1j))
