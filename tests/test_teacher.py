"""Teachers: training, the file format (weights_only), BatchNorm checks, CLI."""

from __future__ import annotations

import json

import pytest
import torch

import distill_data as dd
from distill_data.errors import ConfigError, StoreError
from distill_data.models import build_model, save_model
from distill_data.train import load_teacher
from distill_data.train.teacher import has_batchnorm


@pytest.mark.parametrize("model", ["resnet", "convnet_bn"])
def test_teacher_round_trip(tiny_npz, tmp_path, model):
    out = tmp_path / "t.pt"
    report = dd.teacher(str(tiny_npz), out, model=model, epochs=2, width=8, quiet=True)
    assert 0.0 <= report["test_accuracy"] <= 100.0
    payload = torch.load(out, weights_only=True)  # never unpickles code
    assert payload["arch"] == model
    net, meta = load_teacher(out)
    assert has_batchnorm(net)
    assert meta["input_shape"] == [1, 10, 10]
    assert meta["num_classes"] == 3 and len(meta["mean"]) == 1
    assert meta["test_accuracy"] == report["test_accuracy"]
    x = torch.randn(4, 1, 10, 10)
    assert net(x).shape == (4, 3)


def test_teacher_is_deterministic(tiny_npz, tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    for p in (a, b):
        dd.teacher(str(tiny_npz), p, epochs=1, width=8, quiet=True, seed=3)
    sa, sb = (torch.load(p, weights_only=True)["state_dict"] for p in (a, b))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_teacher_without_batchnorm_is_refused(tmp_path):
    path = tmp_path / "mlp.pt"
    save_model(build_model("mlp", 1, 3, (10, 10), width=8), path)
    with pytest.raises(ConfigError, match="no BatchNorm"):
        load_teacher(path)


def test_teacher_bad_inputs(tiny_npz, tmp_path):
    with pytest.raises(ConfigError, match="BatchNorm network"):
        dd.teacher(str(tiny_npz), tmp_path / "t.pt", model="mlp", epochs=1)
    with pytest.raises(StoreError):
        load_teacher(tmp_path / "missing.pt")
    assert not (tmp_path / "t.pt").exists()


def test_teacher_cli(tiny_npz, tmp_path, run_cli):
    out, js = tmp_path / "t.pt", tmp_path / "t.json"
    code, stdout, err = run_cli(
        "teacher",
        "-d",
        str(tiny_npz),
        "--epochs",
        "1",
        "--width",
        "8",
        "--out",
        str(out),
        "--json",
        str(js),
        "-q",
    )
    assert code == 0, err
    assert "test accuracy" in stdout
    report = json.loads(js.read_text())
    assert report["kind"] == "distill-data teacher" and report["config"]["epochs"] == 1
    before = out.read_bytes()
    code, _, err = run_cli("teacher", "-d", str(tiny_npz), "--model", "mlp", "--out", str(out))
    assert code == 2 and err.count("\n") == 1 and err.startswith("error:")
    assert "'mlp' is not one of 'resnet', 'convnet_bn'" in err and out.read_bytes() == before
