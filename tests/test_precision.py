"""``precision=bf16``: the training loop's forward passes under bfloat16 autocast for
every command that trains (eval, teacher, train), float32 everything else; the default
stays float32 and unchanged (tests/test_pinned.py pins it); quantized students refuse it."""

from __future__ import annotations

import json

import pytest
import torch
from test_cli import assert_one_error_line

import distill_data as dd
from distill_data.data import load_dataset
from distill_data.errors import ConfigError
from distill_data.evaluation import EvalConfig
from distill_data.models import build_model
from distill_data.train import TrainData, TrainRecipe, fit
from distill_data.train.teacher import TeacherConfig


def _train(tiny_npz, precision: str, teacher=None):
    """A tiny ConvNet trained 2 epochs; returns (model, dtypes its first conv output had
    in training, dtypes of the teacher's)."""
    data = load_dataset(tiny_npz)
    g = torch.Generator().manual_seed(0)
    model = build_model("convnet", 1, 3, (10, 10), width=4, depth=1, generator=g)
    seen: dict[str, set] = {"student": set(), "teacher": set()}
    model.features[0].register_forward_hook(
        lambda m, a, o: seen["student"].add(o.dtype) if m.training else None
    )
    if teacher is not None:
        teacher.features[0].register_forward_hook(lambda m, a, o: seen["teacher"].add(o.dtype))
    recipe = TrainRecipe(epochs=2, batch_size=8, augment="none", precision=precision)
    train = TrainData(data.normalize(data.x_train), data.y_train, space=data)
    fit(model, train, recipe, generator=torch.Generator().manual_seed(1), teacher=teacher)
    return model, seen


def test_bf16_runs_the_forward_passes_in_bfloat16_and_keeps_float32_weights(tiny_npz):
    t = build_model("convnet", 1, 3, (10, 10), width=4, depth=1).eval()
    model, seen = _train(tiny_npz, "bf16", teacher=t)
    assert seen == {"student": {torch.bfloat16}, "teacher": {torch.bfloat16}}
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    ref, seen32 = _train(tiny_npz, "fp32")
    assert seen32["student"] == {torch.float32}
    # the same draws, other rounding: close, not equal
    moved = [
        float((a - b).abs().max())
        for a, b in zip(model.state_dict().values(), ref.state_dict().values())
    ]
    assert 0 < max(moved) < 0.05


def test_precision_is_validated_and_reaches_every_recipe():
    with pytest.raises(ConfigError, match="unknown precision 'fp16'; choose from: fp32, bf16"):
        TrainRecipe(precision="fp16")
    assert EvalConfig(precision="bf16").train_recipe().precision == "bf16"
    assert TeacherConfig(precision="bf16").train_recipe().precision == "bf16"
    assert EvalConfig().train_recipe().precision == TrainRecipe().precision == "fp32"
    with pytest.raises(ConfigError, match="unknown precision"):
        EvalConfig(precision="half")


def test_eval_and_train_say_they_trained_in_bf16(tiny_npz, tmp_path, run_cli):
    store = tmp_path / "set.h5"
    dd.build(str(tiny_npz), "random", 2, store, quiet=True)
    js = tmp_path / "e.json"
    code, out, err = run_cli("eval", store, "--runs", 1, "--epochs", 2, "--set",
                             "precision=bf16", "--set", "width=4", "--json", js)  # fmt: skip
    assert code == 0, err
    assert "trained in bf16" in out
    protocol = json.loads(js.read_text())["protocol"]
    assert protocol["precision"] == protocol["train_recipe"]["precision"] == "bf16"
    s_js = tmp_path / "s.json"
    code, out, err = run_cli("train", "-d", tiny_npz, "--set", "width=4", "--epochs", 1,
                             "--set", "precision=bf16", "--out", tmp_path / "s.pt",
                             "--json", s_js, "-q")  # fmt: skip
    assert code == 0, err
    assert "trained in bf16" in out.splitlines()[0]
    assert json.loads(s_js.read_text())["settings"]["recipe"]["precision"] == "bf16"


def test_a_quantized_student_refuses_bf16(tiny_npz, tmp_path, run_cli):
    out = tmp_path / "q.pt"
    res = run_cli("train", "-d", tiny_npz, "--quant", "lsq", "--epochs", 1, "--set",
                  "precision=bf16", "--out", out)  # fmt: skip
    assert_one_error_line(*res)
    assert "precision=bf16 trains float students only" in res[2] and "quant=lsq" in res[2]
    assert not out.exists() and not out.with_suffix(".ckpt.pt").exists()
