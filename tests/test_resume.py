"""A killed or interrupted build resumes from its checkpoint and ends where an
uninterrupted build with the same seed ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import distill_data as dd
from distill_data.errors import ConfigError
from distill_data.store import checkpoint_path_for, read_store
from distill_data.synth.dm import DistributionMatching

TINY = {"width": 8, "depth": 2, "batch_real": 4, "checkpoint_every": 2}


@pytest.fixture()
def npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (18, 10, 10), dtype=np.uint8),
        y_train=np.repeat(np.arange(3), 6),
        x_test=rng.integers(0, 256, (6, 10, 10), dtype=np.uint8),
        y_test=np.repeat(np.arange(3), 2),
    )
    return str(path)


def test_interrupted_build_resumes_to_identical_result(npz, tmp_path, interrupt_build, count_steps):
    full = tmp_path / "full.h5"
    dd.build(npz, "dm", 2, full, iterations=7, seed=3, options=TINY, quiet=True)

    out = tmp_path / "part.h5"
    interrupt_build(
        DistributionMatching,
        5,
        lambda: dd.build(npz, "dm", 2, out, iterations=7, seed=3, options=TINY, quiet=True),
    )
    assert not out.exists()  # nothing half-written
    ckpt = checkpoint_path_for(out)
    assert ckpt.exists()
    assert torch.load(ckpt, weights_only=True)["iteration"] == 4

    ran = count_steps(
        DistributionMatching,
        lambda: dd.build(
            npz, "dm", 2, out, iterations=7, seed=3, options=TINY, quiet=True, resume=True
        ),  # fmt: skip
    )
    assert ran == [4, 5, 6]  # on from the checkpoint, not started over
    a, b = read_store(full), read_store(out)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.labels, b.labels)
    assert b.meta.iterations == 7
    assert not ckpt.exists()  # cleaned up after a successful write


def test_resume_refuses_checkpoint_with_other_settings(npz, tmp_path, interrupt_build):
    out = tmp_path / "s.h5"
    interrupt_build(
        DistributionMatching,
        3,
        lambda: dd.build(npz, "dm", 2, out, iterations=6, seed=1, options=TINY, quiet=True),
    )
    with pytest.raises(ConfigError, match="different seed"):
        dd.build(npz, "dm", 2, out, iterations=6, seed=2, options=TINY, quiet=True, resume=True)


def test_sigkilled_build_resumes_from_last_checkpoint(npz, tmp_path):
    """A real SIGKILL mid-build: no output file, a valid checkpoint, identical final set."""
    sets = [f"--set={k}={v}" for k, v in TINY.items() if k != "checkpoint_every"]
    common = ["build", "-d", npz, "-m", "dm", "--ipc", "2", "--seed", "5", "-q"]
    common += ["--iterations", "150", *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "ref.h5"
    out = tmp_path / "killed.h5"
    cmd = [sys.executable, "-m", "distill_data.cli"]
    every = ["--set", "checkpoint_every=1"]
    subprocess.run([*cmd, *common, "--out", str(ref)], check=True, timeout=300, env=env)

    proc = subprocess.Popen([*cmd, *common, *every, "--out", str(out)], env=env)
    ckpt = checkpoint_path_for(out)
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "no checkpoint appeared before the kill"
    assert not out.exists()
    done = torch.load(ckpt, weights_only=True)["iteration"]
    assert 0 < done < 150

    loud = [a for a in common if a != "-q"]  # the resume line is a progress message
    res = subprocess.run([*cmd, *loud, *every, "--out", str(out), "--resume"], check=True,
                         timeout=300, env=env, capture_output=True, text=True)  # fmt: skip
    assert f"resuming dm from iteration {done} " in res.stderr + res.stdout
    assert torch.equal(read_store(ref).images, read_store(out).images)
