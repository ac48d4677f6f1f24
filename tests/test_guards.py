"""Guards against silent misuse: resume mismatches, divergence, mismatched teachers,
out-of-range seeds, options that would be ignored."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import distill_data as dd
from distill_data.errors import ConfigError
from distill_data.store import checkpoint_path_for, read_store
from distill_data.synth.zeroq import ZeroQ


def test_batched_resume_refuses_other_iterations(teacher_file, tmp_path, interrupt_build):
    out = tmp_path / "z.h5"
    opts = {"iterations": 4, "batch_size": 3, "checkpoint_every": 1}
    interrupt_build(
        ZeroQ,
        5,
        lambda: dd.build(
            None, "zeroq", None, out, teacher=teacher_file, count=6, options=opts, quiet=True
        ),
    )
    assert checkpoint_path_for(out).exists()
    with pytest.raises(ConfigError, match="different config"):
        dd.build(
            None,
            "zeroq",
            None,
            out,
            teacher=teacher_file,
            count=6,
            quiet=True,
            options={**opts, "iterations": 2},
            resume=True,
        )
    assert not out.exists()


def test_divergence_is_reported_not_stored(tiny_npz, tmp_path):
    out = tmp_path / "d.h5"
    # an MLP has no normalisation to absorb exploding pixels
    opts = {"model": "mlp", "width": 8, "batch_real": 4, "lr_img": 1e38, "momentum": 0.0}
    with pytest.raises(ConfigError, match="diverged"):
        dd.build(str(tiny_npz), "dm", 2, out, iterations=20, options=opts, quiet=True)
    assert not out.exists()


def test_teacher_with_other_normalisation_is_refused(teacher_file, tmp_path, make_npz):
    other = make_npz("bright.npz", seed=7)
    with np.load(other) as f:  # same shapes and classes, brighter pixels
        arrays = {k: f[k] for k in f.files}
    arrays["x_train"] = np.clip(arrays["x_train"].astype(int) // 4 + 180, 0, 255).astype(np.uint8)
    np.savez(other, **arrays)
    with pytest.raises(ConfigError, match="normalisation mean"):
        dd.build(str(other), "sre2l", 1, tmp_path / "s.h5", teacher=teacher_file)
    assert not (tmp_path / "s.h5").exists()


def test_infer_group_count_is_exact_integer_arithmetic():
    from distill_data.synth.infer import INFER

    class Spec:
        num_classes = 10

    gen = INFER.__new__(INFER)
    gen.data, gen.teachers = Spec(), [object()]
    for ipc, want in [(55, 50), (33, 30), (10, 9), (1, 0)]:
        gen.ipc = ipc
        assert gen.groups == want  # floor(ipc / (1 + 1/10)) without float rounding


@pytest.mark.parametrize("seed", [-1, 2**62])
def test_seed_out_of_range(tiny_npz, tmp_path, seed):
    with pytest.raises(ConfigError, match=r"seed must be in \[0, 2\*\*62\)"):
        dd.build(str(tiny_npz), "random", 1, tmp_path / "r.h5", seed=seed)
    assert not (tmp_path / "r.h5").exists()


def test_eval_teacher_without_soft_is_refused(teacher_file, tiny_npz, tmp_path):
    out = tmp_path / "r.h5"
    dd.build(str(tiny_npz), "random", 1, out, quiet=True)
    with pytest.raises(ConfigError, match="only used with soft=True"):
        dd.evaluate(out, teacher=teacher_file, runs=1, epochs=1, quiet=True)
    with pytest.raises(ConfigError, match="hard-label"):
        dd.evaluate(out, soft=True, scores=True, runs=1, epochs=1, quiet=True)


def test_generator_networks_leave_the_global_rng_alone(teacher_file, tiny_npz, tmp_path):
    before = torch.get_rng_state()
    dd.build(
        None,
        "genie",
        None,
        tmp_path / "g.h5",
        teacher=teacher_file,
        count=4,
        quiet=True,
        options={"iterations": 1, "batch_size": 4, "latent": 8},
    )
    dd.build(
        str(tiny_npz),
        "ncfm",
        1,
        tmp_path / "n.h5",
        quiet=True,
        options={
            "iterations": 1,
            "width": 8,
            "depth": 2,
            "batch_real": 2,
            "pool_size": 1,
            "pretrain_epochs": 1,
            "frequencies": "sampler",  # builds the sampling network (its init draws)
            "sampler_freqs": 4,
            "sampler_hidden": 8,
        },
    )
    assert read_store(tmp_path / "n.h5").meta.config["frequencies"] == "sampler"
    assert torch.equal(before, torch.get_rng_state())


def test_cli_online_relabel_without_teacher_is_one_line(run_cli, teacher_file, tiny_npz, tmp_path):
    out = tmp_path / "s.h5"
    dd.build(
        str(tiny_npz), "sre2l", 1, out, teacher=teacher_file, quiet=True, options={"iterations": 1}
    )
    code, stdout, stderr = run_cli(
        "eval", out, "--dataset", tiny_npz, "--soft", "--relabel", "online", "--runs", "1"
    )
    assert code == 2
    assert stderr.strip().count("\n") == 0 and "needs --soft and --teacher" in stderr


def test_cli_eval_takes_several_teachers(run_cli, teacher_file, tiny_npz, tmp_path):
    out = tmp_path / "s.h5"
    dd.build(
        str(tiny_npz), "sre2l", 1, out, teacher=teacher_file, quiet=True, options={"iterations": 1}
    )
    report = tmp_path / "r.json"
    args = ["eval", out, "--dataset", tiny_npz, "--soft", "--baseline", "random", "--runs", "1"]
    args += ["--epochs", "1", "--teacher", teacher_file, "--teacher", teacher_file, "-q"]
    code, _, stderr = run_cli(*args, "--json", report)
    assert code == 0, stderr
    protocol = json.loads(report.read_text())["protocol"]
    assert protocol["teachers"] == 2 and protocol["teacher_files"] == [str(teacher_file)] * 2
    code, _, stderr = run_cli(*args[:-1], "--teacher", tmp_path / "missing.pt")
    assert code == 2 and stderr.strip().count("\n") == 0 and "missing.pt" in stderr


def test_weights_blown_up_by_an_epochs_last_step_stop_the_run(tiny_npz, tmp_path, run_cli):
    """A loss is checked before its step, so the last step of the last epoch could make
    the network NaN unnoticed and its test accuracy would be reported; fit checks the
    weights after every epoch."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    out = tmp_path / "h.h5"
    dd.build(str(tiny_npz), "herding", 2, out, quiet=True)

    def poison(opt, args, kwargs):  # a step that leaves a NaN weight behind
        with torch.no_grad():
            opt.param_groups[0]["params"][0].fill_(float("nan"))

    handle = register_optimizer_step_post_hook(poison)
    try:
        code, _, err = run_cli("eval", out, "--dataset", tiny_npz, "--runs", 1, "--epochs", 1,
                               "--set", "width=4", "-q", "--json", tmp_path / "r.json")  # fmt: skip
    finally:
        handle.remove()
    assert code == 2 and err.count("\n") == 1 and "became NaN or infinite in epoch 1 of 1" in err
    assert "lower --set lr=" in err  # eval's lr is a --set setting, not a flag
    assert not (tmp_path / "r.json").exists()
