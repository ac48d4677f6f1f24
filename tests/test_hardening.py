"""Faults a new user runs into, each fixed at its root and held here: no command writes
over a file it reads, every fault is one ``error:`` line (exit 2, nothing written),
nothing NaN is saved, and the library never changes an object it was lent."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from test_cli import assert_one_error_line

import distill_data as dd
from distill_data.errors import (
    ConfigError,
    DataError,
    DistillDataWarning,
    DivergedError,
    StoreError,
)
from distill_data.models import build_model, save_model
from distill_data.store import checkpoint_path_for, read_store
from distill_data.synth.dm import DistributionMatching

TINY_DM = ["--set", "model=mlp", "--set", "width=8", "--set", "batch_real=4"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


# --------------------------------------------------------------------------- outputs


@pytest.fixture
def store(run_cli, tiny_npz, tmp_path) -> Path:
    out = tmp_path / "set.h5"
    code, _, err = run_cli("build", "-d", tiny_npz, "-m", "random", "--ipc", 2, "--out", out)
    assert code == 0, err
    return out


def test_no_command_writes_over_its_input(run_cli, tiny_npz, store, teacher_file, tmp_path):
    cases = [
        ["build", "-d", tiny_npz, "-m", "random", "--ipc", 1, "--out", tiny_npz],
        ["teacher", "-d", tiny_npz, "--epochs", 1, "--out", tiny_npz],
        ["show", store, "--out", store],
        ["eval", store, "--runs", 1, "--epochs", 1, "--json", store],
        ["eval", store, "--runs", 1, "--epochs", 1, "--json", tiny_npz, "--force"],
        ["quantize", "--teacher", teacher_file, "--calib", store, "--json", teacher_file],
        ["quantize", "--teacher", teacher_file, "--calib", store, "--json", store, "--force"],
        ["build", "-m", "zeroq", "--teacher", teacher_file, "--count", 4, "--out", teacher_file],
    ]
    before = snapshot(tmp_path)
    for args in cases:
        code, out, err = run_cli(*args)
        assert_one_error_line(code, out, err)
        assert "refusing to write" in err and "reads" in err, (args, err)
        assert snapshot(tmp_path) == before, args


def test_links_to_an_input_are_caught(run_cli, tiny_npz, tmp_path):
    sym, hard = tmp_path / "sym.h5", tmp_path / "hard.h5"
    sym.symlink_to(tiny_npz)
    os.link(tiny_npz, hard)
    data = tiny_npz.read_bytes()
    for out in (sym, hard):
        res = run_cli("build", "-d", tiny_npz, "-m", "random", "--ipc", 1, "--out", out)
        assert_one_error_line(*res)
        assert "refusing to write" in res[2]
    assert tiny_npz.read_bytes() == data


def test_a_file_inside_an_input_folder_is_not_overwritten(run_cli, tmp_path):
    root = tmp_path / "imgs"
    from PIL import Image

    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((8, 8), 40 * i + (c == "b") * 100, np.uint8)).save(
                    root / split / c / f"{i}.png"
                )
    victim = root / "train" / "a" / "0.png"
    data = victim.read_bytes()
    res = run_cli("build", "-d", root, "-m", "random", "--ipc", 1, "--out", victim, "--force")
    assert_one_error_line(*res)
    assert "inside the input folder" in res[2] and victim.read_bytes() == data


def test_two_outputs_may_not_be_one_file(run_cli, tiny_npz, tmp_path):
    t = tmp_path / "t.pt"
    res = run_cli("teacher", "-d", tiny_npz, "--epochs", 1, "--out", t, "--json", t)
    assert_one_error_line(*res)
    assert "same file" in res[2] and not t.exists()


def test_a_file_of_another_kind_needs_force(run_cli, tiny_npz, store, tmp_path):
    other = tmp_path / "notes.txt"
    other.write_text("my notes\n")
    png = tmp_path / "grid.png"
    res = run_cli("build", "-d", tiny_npz, "-m", "random", "--ipc", 1, "--out", other)
    assert_one_error_line(*res)
    assert "refusing to overwrite" in res[2] and "--force" in res[2]
    assert other.read_text() == "my notes\n"
    before = tiny_npz.read_bytes()
    res = run_cli("show", store, "--out", tiny_npz)  # a dataset the command does not read
    assert_one_error_line(*res)
    assert "an .npz dataset, not a PNG picture" in res[2] and tiny_npz.read_bytes() == before
    # same kind: a rebuild replaces its store, a redraw its picture
    assert run_cli("show", store, "--out", png)[0] == 0
    assert run_cli("show", store, "--out", png)[0] == 0
    code, _, err = run_cli("build", "-d", tiny_npz, "-m", "random", "--ipc", 1, "--out", other,
                           "--force")  # fmt: skip
    assert code == 0, err
    assert read_store(other).meta.generator == "random"


def test_the_python_api_checks_outputs_too(tiny_npz, tmp_path):
    with pytest.raises(ConfigError, match="refusing to write"):
        dd.build(str(tiny_npz), "random", 1, tiny_npz)
    notes = tmp_path / "x.h5"
    notes.write_text("x")
    with pytest.raises(ConfigError, match="pass force=True to replace it"):
        dd.teacher(str(tiny_npz), notes, epochs=1, quiet=True)
    assert notes.read_text() == "x"


# --------------------------------------------------------------------------- labels


def write_labels(path: Path, y_train, y_test, **extra) -> Path:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (len(y_train), 10, 10), dtype=np.uint8)
    xt = rng.integers(0, 256, (len(y_test), 10, 10), dtype=np.uint8)
    np.savez(path, x_train=x, y_train=np.asarray(y_train), x_test=xt,
             y_test=np.asarray(y_test), **extra)  # fmt: skip
    return path


def test_a_huge_label_is_renumbered_with_a_note(run_cli, tmp_path):
    path = write_labels(tmp_path / "big.npz", [0, 0, 1, 1, 2**40, 2**40], [0, 1, 2**40])
    out = tmp_path / "s.h5"
    code, _, err = run_cli("build", "-d", path, "-m", "random", "--ipc", 2, "--out", out)
    assert code == 0, err
    assert "note:" in err and "renumbered to 0..2" in err
    s = read_store(out)
    assert s.meta.classes == ["0", "1", str(2**40)] and s.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_sparse_labels_keep_their_names(tmp_path):
    from distill_data.data import load_dataset

    path = write_labels(tmp_path / "s.npz", [3, 3, 7, 7, 9, 9], [9, 7, 3])
    with pytest.warns(DistillDataWarning, match=r"\(3, 7, 9\) are not 0..K-1"):
        data = load_dataset(path)
    assert data.classes == ["3", "7", "9"]
    assert data.y_train.tolist() == [0, 0, 1, 1, 2, 2] and data.y_test.tolist() == [2, 1, 0]


def test_a_class_without_training_images_is_named(run_cli, tmp_path):
    names = np.array(["cat", "dog", "emu"])
    path = write_labels(tmp_path / "e.npz", [0, 0, 2, 2], [0, 1, 2], classes=names)
    res = run_cli("build", "-d", path, "-m", "random", "--ipc", 1, "--out", tmp_path / "o.h5")
    assert_one_error_line(*res)
    assert "class 'dog'" in res[2] and "no training images" in res[2]
    assert "--ipc 0" not in res[2] and not (tmp_path / "o.h5").exists()
    # a test-only label is such a class too
    path = write_labels(tmp_path / "t.npz", [0, 0, 1, 1], [0, 1, 5])
    with pytest.warns(DistillDataWarning), pytest.raises(DataError, match="class '5'"):
        dd.build(str(path), "random", 1, tmp_path / "o.h5")


def test_random_bytes_are_not_a_pickle_question(run_cli, tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    res = run_cli("build", "-d", path, "-m", "random", "--ipc", 1, "--out", tmp_path / "o.h5")
    assert_one_error_line(*res)
    assert "not a .npz archive" in res[2] and "pickle" not in res[2]
    assert not (tmp_path / "o.h5").exists()


# --------------------------------------------------------------------------- sizes, devices


@pytest.mark.parametrize("method", ["zeroq", "genie"])
def test_a_count_beyond_memory_is_refused_at_once(run_cli, teacher_file, tmp_path, method):
    out = tmp_path / "c.h5"
    res = run_cli("build", "-m", method, "--teacher", teacher_file, "--count", 10**12,
                  "--out", out)  # fmt: skip
    assert_one_error_line(*res)
    assert "memory" in res[2] and "at most about" in res[2]
    assert not out.exists()


@pytest.mark.parametrize("device", ["mps", "xpu", "cuda:4096", "tpu"])
def test_devices_this_machine_lacks(run_cli, tiny_npz, tmp_path, device):
    res = run_cli("build", "-d", tiny_npz, "-m", "dm", "--ipc", 1, "--out", tmp_path / "o.h5",
                  "--device", device)  # fmt: skip
    assert_one_error_line(*res)
    assert repr(device) in res[2] and not (tmp_path / "o.h5").exists()


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    "value, needle",
    [("1e308", "beyond float32's range"), ("nan", "finite"), ("inf", "finite")],
)
def test_impossible_numbers_are_refused_by_name(run_cli, tiny_npz, tmp_path, value, needle):
    res = run_cli("build", "-d", tiny_npz, "-m", "dm", "--ipc", 1, "--out", tmp_path / "o.h5",
                  "--set", f"lr_img={value}")  # fmt: skip
    assert_one_error_line(*res)
    assert "lr_img" in res[2] and needle in res[2] and not (tmp_path / "o.h5").exists()


def test_a_diverging_build_names_its_learning_rate(run_cli, tiny_npz, tmp_path):
    out = tmp_path / "o.h5"
    res = run_cli("build", "-d", tiny_npz, "-m", "dm", "--ipc", 1, "--out", out,
                  "--iterations", 5, *TINY_DM, "--set", "lr_img=1e37", "-q")  # fmt: skip
    assert_one_error_line(*res)
    assert "diverged" in res[2] and "--set lr_img=1e+36 (now 1e+37)" in res[2]
    assert not out.exists() and not checkpoint_path_for(out).exists()


def test_a_diverging_teacher_is_not_saved(run_cli, tiny_npz, tmp_path):
    out = tmp_path / "t.pt"
    res = run_cli("teacher", "-d", tiny_npz, "--model", "convnet_bn", "--width", 4,
                  "--epochs", 3, "--lr", "1e30", "--out", out, "-q")  # fmt: skip
    assert_one_error_line(*res)
    assert "diverged" in res[2] and "--lr (now 1e+30)" in res[2]
    assert not out.exists()


def test_nothing_nan_is_saved(tmp_path):
    net = build_model("convnet_bn", 1, 3, (10, 10), width=4)
    with torch.no_grad():
        next(net.parameters())[0] = float("nan")
    with pytest.raises(DivergedError, match="NaN"):
        save_model(net, tmp_path / "n.pt")
    assert not (tmp_path / "n.pt").exists()
    from distill_data.store import save_checkpoint

    with pytest.raises(DivergedError, match=r"payload\['x'\]\[0\] holds NaN or infinite"):
        save_checkpoint(tmp_path / "c.ckpt.pt", {"x": [torch.tensor([1.0, float("inf")])]})
    assert not (tmp_path / "c.ckpt.pt").exists()


# --------------------------------------------------------------------------- disk full

_LIMITED = """
import resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from distill_data.cli import main
main(sys.argv[2:])
"""


def run_limited(limit: int, *args: object) -> subprocess.CompletedProcess:
    """The CLI in a child whose files may not grow past ``limit`` bytes: every write
    beyond fails as it does on a full disk (EFBIG; Python ignores SIGXFSZ)."""
    env = {**os.environ, "DISTILL_DATA_MALLOC": "0"}
    cmd = [sys.executable, "-c", _LIMITED, str(limit), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_a_full_disk_while_saving_a_teacher_is_one_line(tiny_npz, tmp_path):
    out = tmp_path / "t.pt"
    out.write_bytes(b"")  # an earlier (empty) file stays as it was
    proc = run_limited(4096, "teacher", "-d", tiny_npz, "--model", "convnet_bn",
                       "--epochs", 1, "--out", out, "-q")  # fmt: skip
    assert_one_error_line(proc.returncode, proc.stdout, proc.stderr)
    assert "cannot write" in proc.stderr and str(out) in proc.stderr
    assert out.read_bytes() == b""
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint(
    tiny_npz, tmp_path, interrupt_build
):
    out = tmp_path / "o.h5"
    args = _interrupted_dm(tiny_npz, out, interrupt_build)  # a checkpoint at iteration 3
    ckpt = checkpoint_path_for(out)
    before = ckpt.read_bytes()
    proc = run_limited(512, *args)  # the next checkpoint cannot be written
    assert_one_error_line(proc.returncode, proc.stdout, proc.stderr)
    assert "cannot write" in proc.stderr and str(ckpt) in proc.stderr
    assert ckpt.read_bytes() == before and not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    # and the build goes on from that checkpoint once there is room
    proc = run_limited(2**40, *[a for a in args if a != "-q"])
    assert proc.returncode == 0, proc.stderr
    assert "resuming dm from iteration 3 " in proc.stderr
    assert read_store(out).meta.iterations == 6


# --------------------------------------------------------------------------- lent objects


def test_a_lent_teacher_module_is_left_as_it_was(tiny_npz, teacher_file, tmp_path):
    from distill_data.models import load_model

    net, _ = load_model(teacher_file)
    net.train()
    frozen_before = [p.requires_grad for p in net.parameters()]
    state = copy.deepcopy(net.state_dict())
    dd.build(str(tiny_npz), "zeroq", None, tmp_path / "z.h5", teacher=net, count=4,
             options={"iterations": 2, "batch_size": 4}, quiet=True)  # fmt: skip
    dd.build(str(tiny_npz), "sre2l", 1, tmp_path / "s.h5", teacher=net,
             options={"iterations": 2}, quiet=True)  # fmt: skip
    dd.evaluate(tmp_path / "s.h5", str(tiny_npz), soft=True, teacher=net, runs=1, epochs=1,
                quiet=True, baselines=["random"])  # fmt: skip
    dd.quantize(net, "noise:8", str(tiny_npz), bits="w4a4")
    assert net.training
    assert [p.requires_grad for p in net.parameters()] == frozen_before
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


def test_a_lent_resnet_teacher_is_left_as_it_was_by_genie_and_infer(tiny_npz, tmp_path):
    """Genie hooks a teacher's strided convolutions (a convnet_bn has none) and INFER
    labels with it: the module lent is as it was, hooks included."""
    from distill_data.models import load_model

    path = tmp_path / "r.pt"
    dd.teacher(str(tiny_npz), path, model="resnet", epochs=1, width=4, quiet=True)
    net, _ = load_model(path)
    net.train()
    frozen_before = [p.requires_grad for p in net.parameters()]
    state = copy.deepcopy(net.state_dict())
    dd.build(str(tiny_npz), "genie", None, tmp_path / "g.h5", teacher=net, count=4,
             options={"iterations": 2, "batch_size": 4, "latent": 8}, quiet=True)  # fmt: skip
    dd.build(str(tiny_npz), "infer", 2, tmp_path / "i.h5", teacher=net,
             options={"iterations": 2}, quiet=True)  # fmt: skip
    assert net.training
    assert [p.requires_grad for p in net.parameters()] == frozen_before
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in net.modules())


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"ipc": "2"}, "ipc must be an integer, got '2'"),
        ({"ipc": 2.0}, "ipc must be an integer"),
        ({"ipc": True}, "ipc must be an integer"),
        ({"ipc": 2, "seed": "0"}, "seed must be an integer"),
        ({"ipc": 2, "iterations": 1.5}, "iterations must be an integer"),
        ({"ipc": 2, "options": {"lr_img": "fast"}}, "lr_img='fast': expected a number"),
        ({"ipc": 2, "options": {"lr_img": [1]}}, "lr_img must be a real number"),
        ({"ipc": 2, "options": {"batch_real": 2.5}}, "batch_real must be an integer"),
        ({"ipc": 2, "options": "lr_img=1"}, "options must be a dict"),
        ({"ipc": 2, "method": 3}, "method must be a name"),
    ],
)
def test_python_api_types_are_checked(tiny_npz, tmp_path, kwargs, needle):
    args = {"dataset": str(tiny_npz), "method": "dm", "out": tmp_path / "o.h5", **kwargs}
    with pytest.raises(ConfigError) as info:
        dd.build(**args)
    assert needle in str(info.value)
    assert not (tmp_path / "o.h5").exists()


def test_messages_spell_settings_as_the_user_types_them(run_cli, teacher_file, tmp_path):
    with pytest.raises(ConfigError, match=r"dataset\b") as info:
        dd.build(None, "dm", 1, tmp_path / "o.h5")
    assert "--dataset" not in str(info.value)
    res = run_cli("build", "-m", "dm", "--ipc", 1, "--out", tmp_path / "o.h5")
    assert_one_error_line(*res)
    assert "--dataset" in res[2]


# --------------------------------------------------------------------------- damaged files


def _edit_teacher(src: Path, dst: Path, edit) -> Path:
    payload = torch.load(src, weights_only=True)
    edit(payload)
    torch.save(payload, dst)
    return dst


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda p: p.pop("state_dict"), "missing state_dict"),
        (lambda p: p.update(arch=7), "unknown architecture 7"),
        (lambda p: p.update(config=[1, 2]), "'config' must be a dict"),
        (lambda p: p["config"].update(channels="1"), "'channels' must be a positive integer"),
        (lambda p: p["config"].update(im_size=[10]), "'im_size' must be [height, width]"),
        (lambda p: p.update(state_dict={"w": 3}), "must map parameter names to tensors"),
        (lambda p: p["state_dict"].pop(next(iter(p["state_dict"]))), "Missing key(s)"),
        (
            lambda p: p["state_dict"].update(
                {k: torch.zeros(3) for k in list(p["state_dict"])[:1]}
            ),
            "size mismatch",
        ),
        (
            lambda p: p["state_dict"].update(
                {k: v.fill_(float("nan")) for k, v in list(p["state_dict"].items())[:1]}
            ),
            "NaN",
        ),
        (lambda p: p.update(version="1"), "'version' must be an integer"),
        (lambda p: p["meta"].update(mean=["a"]), "'mean' must be a list of finite numbers"),
        (lambda p: p["meta"].update(classes=[1, 2, 3]), "'classes' must be a list of class"),
        (lambda p: p["meta"].update(classes=["a"]), "names 1 classes but the network"),
        (lambda p: p["meta"].update(input_shape=[3, 10, 10]), "3 channels but the network"),
    ],
)
def test_hand_edited_teacher_files(run_cli, teacher_file, tmp_path, edit, needle):
    bad = _edit_teacher(teacher_file, tmp_path / "bad.pt", edit)
    res = run_cli("build", "-m", "zeroq", "--teacher", bad, "--count", 4, "--out",
                  tmp_path / "z.h5")  # fmt: skip
    assert_one_error_line(*res)
    assert needle in res[2], res[2]
    assert not (tmp_path / "z.h5").exists()


def _interrupted_dm(tiny_npz, out, interrupt_build, at=3):
    opts = {"model": "mlp", "width": 8, "batch_real": 4, "checkpoint_every": 1}
    interrupt_build(
        DistributionMatching,
        at,
        lambda: dd.build(str(tiny_npz), "dm", 2, out, iterations=6, options=opts, quiet=True),
    )
    return ["build", "-d", tiny_npz, "-m", "dm", "--ipc", 2, "--out", out, "--iterations", 6,
            *TINY_DM, "--set", "checkpoint_every=1", "--resume", "-q"]  # fmt: skip


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda p: p.pop("rng"), "no valid 'rng'"),
        (lambda p: p.update(iteration="3"), "no valid 'iteration'"),
        (lambda p: p.update(iteration=-1), "negative step"),
        (lambda p: p["state"].pop("images"), "state lacks 'images'"),
        (lambda p: p["state"].update(images=torch.zeros(5, 1, 10, 10)), "state['images'] is"),
        (lambda p: p["state"]["images"].fill_(float("nan")), "NaN"),
        (lambda p: p.update(rng=torch.zeros(3)), "does not fit this build"),
        (
            lambda p: p["state"]["optimizers"][0]["state"][0].update(
                momentum_buffer=torch.zeros(2)
            ),
            "optimiser buffer 'momentum_buffer'",
        ),
    ],
)
def test_hand_edited_checkpoints(run_cli, tiny_npz, tmp_path, interrupt_build, edit, needle):
    out = tmp_path / "o.h5"
    args = _interrupted_dm(tiny_npz, out, interrupt_build)
    ckpt = checkpoint_path_for(out)
    payload = torch.load(ckpt, weights_only=True)
    edit(payload)
    torch.save(payload, ckpt)
    res = run_cli(*args)
    assert_one_error_line(*res)
    assert needle in res[2], res[2]
    assert not out.exists()


def test_ctrl_c_points_at_resume(run_cli, tiny_npz, tmp_path, monkeypatch):
    out = tmp_path / "o.h5"
    real_step = DistributionMatching.step

    def dying(self, it):
        if it == 2:
            raise KeyboardInterrupt
        return real_step(self, it)

    monkeypatch.setattr(DistributionMatching, "step", dying)
    base = ["build", "-d", tiny_npz, "-m", "dm", "--ipc", 1, "--out", out, "--iterations", 6,
            *TINY_DM, "-q"]  # fmt: skip
    code, _, err = run_cli(*base, "--set", "checkpoint_every=1")
    assert code == 130 and "aborted" not in err
    assert "--resume" in err and str(checkpoint_path_for(out)) in err
    checkpoint_path_for(out).unlink()
    code, _, err = run_cli(*base)
    assert code == 130 and "before the first checkpoint" in err
    assert not out.exists()


# --------------------------------------------------------------------------- count sets


def test_count_sets_say_count_not_ipc_zero(run_cli, teacher_file, tmp_path):
    out = tmp_path / "z.h5"
    code, stdout, err = run_cli("build", "-m", "zeroq", "--teacher", teacher_file, "--count", 5,
                                "--out", out, "--iterations", 2)  # fmt: skip
    assert code == 0, err
    assert "count=5" in stdout and "ipc=0" not in stdout + err
    assert "zeroq count=5" in err  # the progress bar
    meta = read_store(out).meta
    assert meta.count == 5 and meta.ipc == 0
    with h5py.File(out) as f:
        assert int(f.attrs["count"]) == 5
    code, stdout, _ = run_cli("inspect", out)
    assert "count: 5" in stdout


def test_teacher_load_errors_are_whole_sentences(tmp_path):
    bad = tmp_path / "t.pt"
    bad.write_bytes(b"PK\x03\x04" + b"\x00" * 300)
    with pytest.raises(StoreError) as info:
        dd.build(None, "zeroq", None, tmp_path / "z.h5", teacher=bad, count=2)
    text = str(info.value)
    assert text.endswith(")") and "\n" not in text


def test_a_long_build_says_how_long_it_will_take():
    from distill_data.synth.base import _cost_note

    lines: list[str] = []
    _cost_note(lines.append, 2.0, 50)  # 100 s: the bar is enough
    assert lines == []
    _cost_note(lines.append, 1.5, 10_000)
    assert lines and "about 4.2 h" in lines[0] and "10,000 steps" in lines[0]


def test_a_large_build_says_its_size_before_it_starts(teacher_file, tmp_path, monkeypatch):
    from distill_data.synth.zeroq import ZeroQ

    monkeypatch.setattr(ZeroQ, "setup", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
    lines: list[str] = []
    with pytest.raises(KeyboardInterrupt):  # stop right after the note
        dd.build(None, "zeroq", None, tmp_path / "z.h5", teacher=teacher_file,
                 count=200_000, log=lines.append, quiet=True)  # fmt: skip
    assert any("200,000 images" in x and "optimisation steps" in x for x in lines), lines


def test_a_file_of_another_kind_is_named_for_what_it_is(run_cli, store, teacher_file, tiny_npz):
    res = run_cli("show", teacher_file, "--out", teacher_file.with_suffix(".png"))
    assert_one_error_line(*res)
    assert "is a network file (torch.save), not a distill-data store" in res[2]
    res = run_cli("eval", tiny_npz)
    assert "is an .npz dataset, not a distill-data store" in res[2]
    res = run_cli("quantize", "--teacher", store, "--calib", "noise:4")
    assert_one_error_line(*res)
    assert "is a distill-data store (HDF5), not a network file" in res[2]


def test_force_never_replaces_the_data_a_store_or_teacher_records(
    run_cli, tiny_npz, store, teacher_file, tmp_path
):
    data = tiny_npz.read_bytes()
    for args in (
        ["train", "--data", store, "--out", tiny_npz, "--force"],  # the store's dataset
        ["train", "--teacher", teacher_file, "--out", tiny_npz, "--force"],  # the teacher's
        [
            "quantize",
            "--teacher",
            teacher_file,
            "--calib",
            "noise:4",
            "--json",
            tiny_npz,
            "--force",
        ],  # fmt: skip
    ):
        res = run_cli(*args)
        assert_one_error_line(*res)
        assert "refusing to write" in res[2], (args, res[2])
    assert tiny_npz.read_bytes() == data
    with pytest.raises(ConfigError, match="refusing to write"):
        dd.train(None, tiny_npz, data=str(store), force=True, quiet=True)
