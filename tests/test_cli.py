"""The command line end to end on tiny data, and every user error path: exit code 2,
exactly one ``error:`` line on stderr, no traceback, no file left behind.

Commands run in-process through :func:`distill_data.cli.main` (the ``run_cli`` fixture).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from distill_data.cli import cli
from distill_data.store import read_store
from distill_data.synth import GENERATORS

COMMANDS = sorted(cli.commands)


def assert_one_error_line(code: int, out: str, err: str) -> None:
    assert code == 2, (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in err + out


def files_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def build_args(dataset, out, method="random", ipc=2, *extra) -> list:
    return ["build", "--dataset", dataset, "--method", method, "--ipc", ipc, "--out", out, *extra]


@pytest.fixture
def built(run_cli, tiny_npz, tmp_path) -> Path:
    out = tmp_path / "set.h5"
    code, out_text, err = run_cli(*build_args(tiny_npz, out, "herding", 2, "--quiet"))
    assert code == 0, err
    return out


# --------------------------------------------------------------------------- happy path


def test_build_inspect_show_eval(run_cli, tiny_npz, tmp_path) -> None:
    store = tmp_path / "set.h5"
    code, out, err = run_cli(*build_args(tiny_npz, store, "herding", 2, "--seed", 4, "-q"))
    assert code == 0, err
    assert f"wrote {store}" in out and "6 images" in out and "herding" in out
    assert store.is_file()

    code, out, err = run_cli("inspect", store, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["generator"] == "herding" and info["ipc"] == 2 and info["seed"] == 4
    assert info["images"] == [6, 1, 10, 10]
    assert info["labels_per_class"] == [2, 2, 2]
    assert info["dataset"] == "tiny.npz"
    assert info["dataset_fingerprint"] == read_store(store).meta.dataset_fingerprint
    assert len(info["extra"]["selected_indices"]) == 6  # 2 per class: short, so printed
    assert info["count"] is None  # an IPC set, not one of a fixed size

    code, out, err = run_cli("inspect", store)
    assert code == 0, err
    assert "generator: herding" in out

    png = tmp_path / "grid.png"
    code, out, err = run_cli("show", store, "--out", png, "--no-labels")
    assert code == 0, err
    with Image.open(png) as im:
        im.load()
        assert im.format == "PNG" and im.mode == "L"
        # 3 rows (classes) x 2 columns (ipc) of 10x10 images enlarged 6x (to >= 56 px),
        # 2 px padding around and between cells
        scale = math.ceil(56 / 10)
        cell = 10 * scale + 2
        assert im.size == (2 * cell + 2, 3 * cell + 2)
        bare = np.asarray(im)
    code, out, err = run_cli("show", store, "--out", png)  # with the row labels (default)
    assert code == 0, err
    with Image.open(png) as im:
        labelled = np.asarray(im)
    margin = labelled.shape[1] - bare.shape[1]
    assert labelled.shape[0] == bare.shape[0] and margin > 0
    assert (labelled[:, margin:] == bare).all()  # the grid itself is unchanged
    assert (labelled[:, :margin] < 128).any()  # dark text in the label column

    report_path = tmp_path / "r.json"
    code, out, err = run_cli(
        "eval", store, "-d", tiny_npz, "--runs", 1, "--epochs", 2, "--json", report_path, "-q"
    )
    assert code == 0, err
    assert f"wrote {report_path}" in out and "synthetic" in out
    report = json.loads(report_path.read_text())
    syn = report["results"]["synthetic"]
    assert len(syn["accs"]) == 1 and 0 <= syn["mean"] <= 100
    assert report["protocol"]["epochs"] == 2 and report["store"]["generator"] == "herding"


def test_eval_options_reach_the_protocol(run_cli, built, tiny_npz, tmp_path) -> None:
    report_path = tmp_path / "r.json"
    code, out, err = run_cli(
        "eval", built, "-d", tiny_npz, "--runs", 1, "--epochs", 2, "--full-epochs", 1,
        "--baseline", "random", "--baseline", "full", "--no-augment", "--seed", 3,
        "--model", "mlp", "--json", report_path, "-q",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert set(report["results"]) == {"synthetic", "random", "full"}
    assert report["results"]["full"]["epochs"] == 1
    p = report["protocol"]
    assert (p["model"], p["augment"], p["seed"], p["dsa_strategy"]) == ("mlp", False, 3, "none")


def test_show_rgb_and_max_per_class(run_cli, tiny_npz_rgb, tmp_path) -> None:
    store = tmp_path / "rgb.h5"
    assert run_cli(*build_args(tiny_npz_rgb, store, "random", 3, "-q"))[0] == 0
    png = tmp_path / "g.png"
    code, _, err = run_cli("show", store, "-o", png, "--max-per-class", 1, "--no-labels")
    assert code == 0, err
    with Image.open(png) as im:
        cell = 10 * 6 + 2
        assert im.mode == "RGB" and im.size == (1 * cell + 2, 3 * cell + 2)


def test_build_with_set_and_log(run_cli, tiny_npz, tmp_path) -> None:
    store = tmp_path / "k.h5"
    code, out, err = run_cli(
        *build_args(tiny_npz, store, "kcenter", 2, "--set", "batch_size=4", "--set", "model=mlp")
    )
    assert code == 0, err
    cfg = read_store(store).meta.config
    assert cfg["batch_size"] == 4 and cfg["model"] == "mlp"


def test_methods_lists_every_generator(run_cli) -> None:
    code, out, err = run_cli("methods")
    assert code == 0, err
    listed = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert listed == GENERATORS.names()
    for name in GENERATORS.names():
        assert GENERATORS.help(name) in out


def test_methods_shows_a_methods_settings(run_cli) -> None:
    code, out, err = run_cli("methods", "dm")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"dm: {GENERATORS.help('dm')}"
    sets = dict(line.strip().removeprefix("--set ").split("=", 1) for line in lines[1:])
    assert sets["siamese"] == "batch" and sets["lr_img"] == "1.0" and sets["fyi"] == "false"
    assert set(sets) == set(dataclasses.asdict(GENERATORS.get("dm").Config()))
    code, out, err = run_cli("methods", "nope")
    assert code == 2 and err.strip().count("\n") == 0 and "nope" in err


def test_datasets_lists_builtins(run_cli, builtin_cache) -> None:
    code, out, err = run_cli("datasets")
    assert code == 0, err
    names = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert {"mnist5k", "digits"} <= names
    assert ".npz" in out


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_explains_itself(run_cli, command) -> None:
    args = ["--help"] if command is None else [command, "--help"]
    code, out, err = run_cli(*args)
    assert code == 0 and err == ""
    assert out.startswith("Usage: distill-data")
    group_or_cmd = cli if command is None else cli.commands[command]
    first_words = " ".join(group_or_cmd.help.split()[:4])
    assert first_words in " ".join(out.split())
    if command is None:
        for name in COMMANDS:
            assert name in out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help_text(command) -> None:
    undocumented = [
        p.opts[0]
        for p in cli.commands[command].params
        if p.param_type_name == "option" and not (p.help or "").strip()
    ]
    assert undocumented == [], f"{command}: options without help: {undocumented}"


def test_version(run_cli) -> None:
    from distill_data import __version__

    code, out, _ = run_cli("--version")
    assert code == 0 and __version__ in out


# --------------------------------------------------------------------------- build errors


def test_build_error_unknown_dataset(run_cli, tmp_path, builtin_cache) -> None:
    out = tmp_path / "a.h5"
    res = run_cli(*build_args("no_such_dataset", out))
    assert_one_error_line(*res)
    assert "no_such_dataset" in res[2] and "digits" in res[2]
    assert files_in(tmp_path) <= {"cache"}


def test_build_error_unknown_method(run_cli, tiny_npz, tmp_path) -> None:
    res = run_cli(*build_args(tiny_npz, tmp_path / "a.h5", "bogus_method"))
    assert_one_error_line(*res)
    for name in GENERATORS.names():
        assert name in res[2]
    assert files_in(tmp_path) == {"tiny.npz"}


def test_build_error_missing_dataset_path(run_cli, tmp_path) -> None:
    res = run_cli(*build_args(tmp_path / "missing.npz", tmp_path / "a.h5"))
    assert_one_error_line(*res)
    assert "missing.npz" in res[2]
    assert files_in(tmp_path) == set()


def test_build_error_nan_in_npz(run_cli, tiny_npz, tmp_path) -> None:
    with np.load(tiny_npz) as z:
        arrays = {k: z[k] for k in z.files}
    x = arrays["x_train"].astype(np.float32) / 255
    x[0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", **{**arrays, "x_train": x})
    res = run_cli(*build_args(tmp_path / "nan.npz", tmp_path / "a.h5"))
    assert_one_error_line(*res)
    assert "NaN" in res[2]
    assert not (tmp_path / "a.h5").exists()


@pytest.mark.parametrize("method", ["random", "herding"])
def test_build_error_ipc_too_large(run_cli, tiny_npz, tmp_path, method) -> None:
    res = run_cli(*build_args(tiny_npz, tmp_path / "a.h5", method, 7))
    assert_one_error_line(*res)
    assert "--ipc 6" in res[2]
    assert files_in(tmp_path) == {"tiny.npz"}


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--set", "colour=red"], "unknown setting colour"),
        (["--set", "batch_size=big"], "expected an integer"),
        (["--set", "batch_size"], "key=value"),
        (["--set", "=3"], "key=value"),
        (["--set", "batch_size=0"], "batch_size"),
        (["--set", "model=vit"], "unknown model"),
        (["--iterations", "5"], "does not iterate"),
        (["--ipc", "0"], "ipc must be >= 1"),
    ],
)
def test_build_error_bad_settings(run_cli, tiny_npz, tmp_path, extra, needle) -> None:
    res = run_cli(*build_args(tiny_npz, tmp_path / "a.h5", "herding", 2, *extra))
    assert_one_error_line(*res)
    assert needle in res[2]
    assert files_in(tmp_path) == {"tiny.npz"}


@pytest.mark.parametrize(
    "args",
    [["--ipc", "two"], ["--seed", "x"], ["--frobnicate"]],
    ids=["ipc-not-int", "seed-not-int", "unknown-option"],
)
def test_build_error_usage(run_cli, tiny_npz, tmp_path, args) -> None:
    base = ["build", "--dataset", tiny_npz, "--method", "random", "--out", tmp_path / "a.h5"]
    if args[0] != "--ipc":
        base += ["--ipc", "2"]
    res = run_cli(*base, *args)
    assert_one_error_line(*res)
    assert "--help" in res[2]
    assert files_in(tmp_path) == {"tiny.npz"}


def test_build_error_missing_required_option(run_cli, tiny_npz) -> None:
    res = run_cli("build", "--dataset", tiny_npz, "--method", "random", "--ipc", "2")
    assert_one_error_line(*res)
    assert "--out" in res[2]


def test_build_error_output_folder_missing(run_cli, tiny_npz, tmp_path) -> None:
    res = run_cli(*build_args(tiny_npz, tmp_path / "nope" / "a.h5"))
    assert_one_error_line(*res)
    assert "does not exist" in res[2]
    assert files_in(tmp_path) == {"tiny.npz"}


def test_build_error_output_is_a_folder(run_cli, tiny_npz, tmp_path) -> None:
    res = run_cli(*build_args(tiny_npz, tmp_path))
    assert_one_error_line(*res)
    assert "folder" in res[2]


@pytest.mark.parametrize("device", ["bogus", "cuda:99"])
def test_build_error_bad_device(run_cli, tiny_npz, tmp_path, device) -> None:
    """A device torch cannot use is a user error like any other (no traceback)."""
    res = run_cli(*build_args(tiny_npz, tmp_path / "a.h5", "herding", 2, "--device", device))
    assert_one_error_line(*res)
    assert f"device {device!r}" in res[2]
    assert files_in(tmp_path) == {"tiny.npz"}


@pytest.mark.parametrize(
    "override",
    [
        {"--ipc": 99},
        {"--set": "colour=red"},
        {"--set": "batch_size=x"},
        {"--method": "bogus_method"},
        {"--iterations": 3},
    ],
    ids=lambda o: "".join(f"{k}={v}" for k, v in o.items()),
)
def test_failed_build_leaves_existing_store_untouched(run_cli, built, tiny_npz, override) -> None:
    before = built.read_bytes()
    opts = {"--dataset": tiny_npz, "--method": "herding", "--ipc": 2, "--out": built, **override}
    res = run_cli("build", *(x for kv in opts.items() for x in kv))
    assert_one_error_line(*res)
    assert built.read_bytes() == before
    assert files_in(built.parent) == {"tiny.npz", "set.h5"}


def test_failed_build_from_bad_data_leaves_existing_store_untouched(
    run_cli, built, make_npz
) -> None:
    before = built.read_bytes()
    small = make_npz("small.npz", n_train=1)
    res = run_cli(*build_args(small, built, "herding", 2))
    assert_one_error_line(*res)
    assert built.read_bytes() == before


# --------------------------------------------------------------------------- read errors


@pytest.fixture
def bad_stores(tmp_path) -> dict[str, Path]:
    text = tmp_path / "text.h5"
    text.write_text("this is not HDF5\n")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["images"] = np.zeros((2, 1, 8, 8), np.float32)
        f.attrs["creator"] = "someone else"
    return {"missing": tmp_path / "missing.h5", "text": text, "foreign": foreign}


@pytest.mark.parametrize("kind", ["missing", "text", "foreign"])
@pytest.mark.parametrize("command", ["eval", "inspect", "show"])
def test_bad_store_file(run_cli, bad_stores, tmp_path, kind, command) -> None:
    path = bad_stores[kind]
    target = tmp_path / "out.any"
    extra = {
        "eval": ["--runs", 1, "--epochs", 1, "--json", target],
        "inspect": ["--json"],
        "show": ["--out", target],
    }[command]
    res = run_cli(command, path, *extra)
    assert_one_error_line(*res)
    assert str(path) in res[2]
    assert not target.exists()
    if kind == "foreign":
        assert "foreign" in res[2]


def test_show_into_missing_folder(run_cli, built, tmp_path) -> None:
    res = run_cli("show", built, "--out", tmp_path / "nope" / "g.png")
    assert_one_error_line(*res)
    assert "nope does not exist" in res[2]
    assert not (tmp_path / "nope").exists()


def test_eval_json_into_missing_folder(run_cli, built, tiny_npz, tmp_path) -> None:
    res = run_cli("eval", built, "-d", tiny_npz, "--json", tmp_path / "nope" / "r.json")
    assert_one_error_line(*res)
    assert "nope does not exist" in res[2] and not (tmp_path / "nope").exists()


def test_eval_bad_baseline_is_a_usage_error(run_cli, built, tmp_path) -> None:
    res = run_cli("eval", built, "--baseline", "bogus", "--json", tmp_path / "r.json")
    assert_one_error_line(*res)
    assert "bogus" in res[2] and "random" in res[2]
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--runs", "0"], "runs must be >= 1"),
        (["--epochs", "0"], "epochs must be >= 1"),
        (["--model", "vit"], "'vit' is not one of 'convnet'"),
        (["--dataset", "no_such_dataset"], "no_such_dataset"),
    ],
)
def test_eval_bad_protocol(run_cli, built, tiny_npz, tmp_path, extra, needle) -> None:
    args = ["eval", built, "--dataset", tiny_npz, "--json", tmp_path / "r.json", *extra]
    res = run_cli(*args)
    assert_one_error_line(*res)
    assert needle in res[2]
    assert not (tmp_path / "r.json").exists()


def test_eval_on_incompatible_dataset(run_cli, built, make_npz, tmp_path) -> None:
    other = make_npz("big.npz", size=(12, 12))
    report = tmp_path / "r.json"
    res = run_cli("eval", built, "-d", other, "--runs", 1, "--epochs", 1, "--json", report)
    assert_one_error_line(*res)
    assert "(1, 10, 10)" in res[2] and "(1, 12, 12)" in res[2]
    assert not report.exists()


def test_eval_on_builtin_of_another_shape(run_cli, built, builtin_cache) -> None:
    res = run_cli("eval", built, "-d", "digits", "--runs", 1, "--epochs", 1)
    assert_one_error_line(*res)
    assert "stored images are (1, 10, 10) but dataset 'digits' has (1, 8, 8)" in res[2]


def test_eval_bad_device(run_cli, built, tiny_npz) -> None:
    res = run_cli("eval", built, "-d", tiny_npz, "--runs", 1, "--epochs", 1, "--device", "bogus")
    assert_one_error_line(*res)
    assert "unknown device 'bogus'" in res[2]


def test_build_notes_fyi_on_digit_data(run_cli, make_npz, tiny_npz, tmp_path) -> None:
    """FYI's flips suit natural images, not digits: the CLI says so (and still builds)."""
    tiny = ["--iterations", 1, "--set", "width=8", "--set", "depth=1", "--set", "batch_real=2"]
    digits = make_npz("mnist_tiny.npz")
    code, _, err = run_cli(*build_args(digits, tmp_path / "f.h5", "dm+fyi", 1, *tiny))
    assert code == 0, err
    assert "note: FYI assumes a horizontal flip keeps" in err
    code, _, err = run_cli(*build_args(tiny_npz, tmp_path / "g.h5", "dm+fyi", 1, *tiny))
    assert code == 0, err
    assert "FYI assumes" not in err
    code, _, err = run_cli(*build_args(digits, tmp_path / "h.h5", "dm", 1, *tiny))
    assert code == 0 and "FYI assumes" not in err


def test_eval_teacher_quantize_take_set_and_show_their_dataclass_defaults(
    run_cli, built, tiny_npz, tmp_path
) -> None:
    code, out, err = run_cli("eval", built, "--dataset", tiny_npz, "--runs", 1, "--epochs", 1,
                             "--set", "width=8", "--set", "lr=0.02", "--json",
                             tmp_path / "r.json", "-q")  # fmt: skip
    assert code == 0, err
    protocol = json.loads((tmp_path / "r.json").read_text())["protocol"]
    assert protocol["width"] == 8 and protocol["lr"] == 0.02
    res = run_cli("eval", built, "--dataset", tiny_npz, "--epochs", 1, "--set", "epochs=2")
    assert_one_error_line(*res)
    assert "epochs is given twice" in res[2]
    res = run_cli("eval", built, "--dataset", tiny_npz, "--no-augment", "--set", "augment=true")
    assert_one_error_line(*res)
    assert "augment is given twice (--no-augment and --set)" in res[2]
    res = run_cli("eval", built, "--dataset", tiny_npz, "--set", "lr=fast")
    assert_one_error_line(*res)
    assert "lr='fast'" in res[2]
    res = run_cli("teacher", "-d", tiny_npz, "--out", tmp_path / "t.pt", "--set", "nope=1")
    assert_one_error_line(*res)
    assert "unknown setting nope for TeacherConfig" in res[2]
    code, out, err = run_cli("teacher", "-d", tiny_npz, "--model", "convnet_bn", "--epochs", 1,
                             "--set", "width=4", "--set", "momentum=0.5", "--out",
                             tmp_path / "t.pt", "--json", tmp_path / "t.json", "-q")  # fmt: skip
    assert code == 0, err
    cfg = json.loads((tmp_path / "t.json").read_text())["config"]
    assert (cfg["width"], cfg["momentum"], cfg["lr"], cfg["epochs"]) == (4, 0.5, 0.05, 1)
    res = run_cli("quantize", "--teacher", tmp_path / "t.pt", "--calib", "noise:4",
                  "--set", "observer=mse", "--observer", "minmax")  # fmt: skip
    assert_one_error_line(*res)
    assert "observer is given twice" in res[2]
    # build: --iterations against --set iterations, and the build's own arguments by --set
    res = run_cli(*build_args(tiny_npz, tmp_path / "b.h5", "dm", 1, "--iterations", 3,
                              "--set", "iterations=2"))  # fmt: skip
    assert_one_error_line(*res)
    assert "iterations is given twice (--iterations and --set iterations)" in res[2]
    res = run_cli(*build_args(tiny_npz, tmp_path / "b.h5", "dm", 1, "--set", "seed=3"))
    assert_one_error_line(*res)
    assert "seed is not a dm setting (--set seed); give it as --seed" in res[2]
    assert not (tmp_path / "b.h5").exists()
    for command, default in (("eval", "[default: 1000]"), ("teacher", "[default: (30)]")):
        code, out, _ = run_cli(command, "--help")
        assert code == 0 and default in " ".join(out.split())


def test_inspect_a_calibration_set_names_its_teacher(run_cli, teacher_file, tmp_path):
    from distill_data.models import load_model
    from distill_data.synth.base import teacher_fingerprint

    calib = tmp_path / "calib.h5"
    code, _, err = run_cli("build", "--method", "zeroq", "--teacher", teacher_file,
                           "--count", "4", "--iterations", "1", "--out", calib, "-q")  # fmt: skip
    assert code == 0, err
    code, out, err = run_cli("inspect", calib, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["count"] == 4 and info["ipc"] is None  # a set of a size, not per class
    model, _ = load_model(teacher_file)
    assert info["extra"]["teacher_fingerprint"] == teacher_fingerprint(model)


def test_build_summary_says_iterations_in_the_methods_own_terms(run_cli, tiny_npz, tmp_path):
    from distill_data.synth.base import steps_label

    assert steps_label({"iterations": 5}, 10) == "5 iterations x 2 batches"  # per batch
    assert steps_label({"iterations": 200}, 200) == "200 iterations"
    assert steps_label({"iterations": 0}, 0) is None  # a coreset does not iterate
    code, out, err = run_cli(*build_args(tiny_npz, tmp_path / "r.h5", "random", 2, "-q"))
    assert code == 0 and "(random, ipc=2)" in out and "iterations" not in out


def test_a_plus_fyi_method_refuses_fyi_off(run_cli, tiny_npz, tmp_path):
    out = tmp_path / "f.h5"
    res = run_cli(*build_args(tiny_npz, out, "dm+fyi", 1, "--iterations", 1,
                              "--set", "fyi=false"))  # fmt: skip
    assert_one_error_line(*res)
    assert "build with dm itself instead of setting --set fyi to false" in res[2]
    assert not out.exists()
