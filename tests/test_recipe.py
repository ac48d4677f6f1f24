"""TrainRecipe: the presets are valid and say what their papers say; impossible or
silently-ignored combinations are refused; --set strings override any field."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from distill_data.errors import ConfigError
from distill_data.train import RECIPES, TrainRecipe, get_recipe


def test_presets_are_the_documented_protocols():
    dc, sre2l, infer = RECIPES["dc"], RECIPES["sre2l"], RECIPES["infer"]
    assert (dc.optimizer, dc.lr, dc.momentum, dc.weight_decay, dc.batch_size) == (
        "sgd", 0.01, 0.9, 5e-4, 256
    )  # fmt: skip
    assert (dc.schedule, dc.decay_at, dc.decay_factor, dc.augment) == ("step", 0.5, 0.1, "dsa")
    assert (sre2l.optimizer, sre2l.lr, sre2l.weight_decay, sre2l.batch_size) == (
        "adamw", 1e-3, 0.01, 128
    )  # fmt: skip
    assert (sre2l.schedule, sre2l.mixup, sre2l.kd_t2) == ("cosine", 0.8, False)
    assert infer == dataclasses.replace(sre2l, batch_size=64)
    polino = RECIPES["polino"]
    assert (polino.kd, polino.kd_alpha, polino.temperature, polino.nesterov) == (
        "polino", 0.7, 2.0, True
    )  # fmt: skip


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"schedule": "cosine"}, "decay_at=0.5 only applies to the step schedule"),
        ({"optimizer": "adamw"}, "momentum and nesterov are SGD settings"),
        ({"mix": "mixup"}, "mix_alpha must be > 0"),
        ({"mix_alpha": 0.5}, "mix_alpha must be > 0 with mix='none' and 0 without"),
        ({"augment": "autoaugment"}, "unknown augment"),
        ({"kd": "crd"}, "unknown kd"),
        ({"kd_alpha": 1.5}, "kd_alpha must be in [0, 1]"),
        ({"dsa_strategy": "crop", "augment": "none"}, "dsa_strategy is a setting of"),
        ({"nesterov": True, "momentum": 0.0}, "nesterov needs momentum > 0"),
        ({"epochs": 0}, "epochs must be >= 1"),
    ],
)
def test_impossible_or_ignored_settings_are_refused(kwargs, needle):
    with pytest.raises(ConfigError) as info:
        TrainRecipe(**kwargs)
    assert needle in str(info.value)


def test_set_strings_override_any_field():
    r = get_recipe("dc").with_settings({"lr": "0.05", "schedule": "cosine", "decay_at": "none"})
    assert (r.lr, r.schedule, r.decay_at) == (0.05, "cosine", None)
    assert get_recipe("dc").with_settings({}) is get_recipe("dc")
    with pytest.raises(ConfigError, match="unknown setting"):
        get_recipe("dc").with_settings({"learning_rate": "1"})
    with pytest.raises(ConfigError, match="expected a number"):
        get_recipe("dc").with_settings({"lr": "fast"})
    with pytest.raises(ConfigError, match="unknown recipe 'fast'"):
        get_recipe("fast")


def test_fit_bar_counts_steps_or_epochs():
    from distill_data.train import TrainData, fit, get_recipe
    from distill_data.train.fit import steps_per_epoch

    class Bar:
        def __init__(self):
            self.n, self.postfix = 0, ""

        def update(self, k):
            self.n += k

        def set_postfix_str(self, text, refresh=True):
            self.postfix = text

    recipe = get_recipe("dc").with_settings({"epochs": 2, "batch_size": 4, "augment": "none"})
    data = TrainData(torch.randn(10, 1, 8, 8), torch.arange(10) % 2)
    for unit, want in (("step", 2 * steps_per_epoch(10, recipe)), ("epoch", 2)):
        bar = Bar()
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
        fit(net, data, recipe, generator=torch.Generator().manual_seed(0), bar=bar,
            bar_unit=unit)  # fmt: skip
        assert bar.n == want
    assert steps_per_epoch(10, recipe) == 3 and bar.postfix == ""
