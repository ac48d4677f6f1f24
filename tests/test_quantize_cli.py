"""`distill-data quantize`: calibration specs, --compare, bit widths, JSON, errors."""

from __future__ import annotations

import json

import pytest

import distill_data as dd
from distill_data.errors import ConfigError


def test_quantize_compare_and_json(teacher_file, tmp_path, run_cli, monkeypatch):
    from distill_data.quant import calibrate, ptq

    float_passes = []  # model_logits on the float teacher (not a quantized copy)
    original = ptq.model_logits

    def counting(model, x, batch=500):
        float_passes.extend([] if ptq.quantized_layers(model) else [1])
        return original(model, x, batch)

    monkeypatch.setattr(calibrate, "model_logits", counting)
    monkeypatch.setattr(ptq, "model_logits", counting)

    calib = tmp_path / "zq.h5"
    dd.build(
        None,
        "zeroq",
        None,
        calib,
        teacher=teacher_file,
        count=6,
        quiet=True,
        options={"iterations": 3},
    )
    js = tmp_path / "q.json"
    code, out, err = run_cli(
        "quantize",
        "--teacher",
        str(teacher_file),
        "--calib",
        str(calib),
        "--compare",
        "--bits",
        "w8a8",
        "--bits",
        "w4a4",
        "--json",
        str(js),
    )
    assert code == 0, err
    report = json.loads(js.read_text())
    rows = report["results"]
    assert [(r["bits"], r["calib"]) for r in rows] == [
        (b, c) for b in ("w8a8", "w4a4") for c in (str(calib), "real:6", "noise:6")
    ]
    assert all(0 <= r["quant_accuracy"] <= 100 for r in rows)
    assert len({r["fp32_accuracy"] for r in rows}) == 1  # the same float teacher throughout
    assert all(r["calib_images"] == 6 for r in rows)
    assert all(0 <= r["agreement"] <= 100 and r["output_kl"] >= 0 for r in rows)
    assert "w4a4" in out and "noise:6" in out and "SQNR dB" in out
    assert len(float_passes) == 1  # 6 rows, one float forward of the test set


def test_quantize_first_last_bits_none_quantizes_every_layer(teacher_file, tmp_path, run_cli):
    js = tmp_path / "q.json"
    args = ["quantize", "--teacher", str(teacher_file), "--calib", "noise:4", "--bits", "w2a8"]
    sqnr = {}
    for flb, want in (("none", None), ("6", 6), ("8", 8)):
        code, _, err = run_cli(*args, "--first-last-bits", flb, "--json", str(js), "--force")
        assert code == 0, err
        rep = json.loads(js.read_text())
        assert rep["ptq"]["first_last_bits"] == want
        sqnr[flb] = rep["results"][0]["logit_sqnr_db"]
    # applied, not only echoed: the first and last layer at 2 bits cost the most
    assert sqnr["none"] < sqnr["6"] and sqnr["none"] < sqnr["8"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--calib", "real:x"], "must be an integer"),
        (["--calib", "noise:4", "--bits", "w9a8"], "from 2 to 8"),
        (["--calib", "noise:4", "--bits", "8bit"], "must look like 'w4a8'"),
        (["--calib", "missing.h5"], "no such file"),
        (["--calib", "noise:4", "--first-last-bits", "x"], "first_last_bits"),
        (["--calib", "noise:4", "--first-last-bits", "16"], "from 2 to 8"),
        (["--calib", "noise:4", "--device", "cuda:4096"], "cuda:4096"),
        (["--calib", "noise:4", "--set", "w_bits=2"], "w_bits comes from --bits"),
        (["--calib", "noise:4", "--set", "a_bits=4"], "a_bits comes from --bits"),
        (["--calib", "noise:4", "--seed", "1", "--set", "seed=2"], "seed is given twice"),
    ],
)
def test_quantize_errors(teacher_file, run_cli, args, message):
    code, _, err = run_cli("quantize", "--teacher", str(teacher_file), *args)
    assert code == 2
    assert err.startswith("error:") and err.count("\n") == 1 and message in err


def test_quantize_api_refuses_wrong_dataset(teacher_file):
    with pytest.raises(ConfigError, match="takes 1x10x10"):
        dd.quantize(teacher_file, "noise:4", "digits")


def test_quantize_reports_its_device(teacher_file):
    rep = dd.quantize(teacher_file, "noise:4", bits="w8a8", quiet=True, device="cpu")
    row = rep["results"][0]
    assert rep["device"] == "cpu"
    assert row["accuracy_drop"] == pytest.approx(row["fp32_accuracy"] - row["quant_accuracy"],
                                                 abs=0.01)  # fmt: skip
    assert rep["teacher"]["file"] == str(teacher_file)  # which network the report is of


def test_quantize_seed_by_set_is_the_seed_option(teacher_file, tmp_path, run_cli):
    js = tmp_path / "q.json"
    args = ["quantize", "--teacher", str(teacher_file), "--calib", "noise:4", "--json", str(js)]
    code, _, err = run_cli(*args, "--set", "seed=5")
    assert code == 0, err
    by_set = json.loads(js.read_text())
    code, _, err = run_cli(*args, "--seed", "5", "--force")
    assert code == 0, err
    by_option = json.loads(js.read_text())
    assert by_set["ptq"]["seed"] == by_option["ptq"]["seed"] == 5
    code, _, err = run_cli(*args, "--seed", "6", "--force")
    assert code == 0, err
    other_seed = json.loads(js.read_text())
    # noise:4 drawn from seed 5 both times; seed 6 draws other images
    timeless = [[{k: v for k, v in r.items() if k != "seconds"} for r in rep["results"]]
                for rep in (by_set, by_option, other_seed)]  # fmt: skip
    assert timeless[0] == timeless[1] != timeless[2]
