"""Builds under torchrun (two gloo ranks on this machine) equal one-process builds.

One torchrun job builds a set with every kind of generator (matching: split by class;
coresets: by class; teacher-driven: by batch) through the Python API; each is compared
with the same build made here in one process (one thread, as torchrun gives each rank).
Bitwise equality is asserted wherever the arithmetic is the same; NCFM's sampling
network sums its gradient over ranks, so its images are held to a stated tolerance.
The CLI is run under torchrun for the resume-after-a-killed-rank path and the error
paths: ranks started with different settings, a rank that fails, and a checkpoint
resumed with another number of processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import write_npz

import distill_data as dd

TINY = {"width": 8, "batch_real": 8}
NCFM = {**TINY, "pool_size": 3, "pretrain_epochs": 1}
#: name: (method, ipc, count, options, needs teacher, two teachers)
JOBS = {
    "dm": ("dm", 2, None, {**TINY, "iterations": 3}),
    "dm_fyi": ("dm+fyi", 2, None, {**TINY, "iterations": 2}),
    "datadam": ("datadam", 2, None, {**TINY, "iterations": 2}),
    "ncfm": ("ncfm", 2, None, {**NCFM, "iterations": 2}),
    "ncfm_sampler": ("ncfm", 2, None, {**NCFM, "iterations": 3, "frequencies": "sampler"}),
    "random": ("random", 2, None, {}),
    "herding": ("herding", 2, None, {}),
    "kcenter": ("kcenter", 2, None, {}),
    "zeroq": ("zeroq", None, 10, {"batch_size": 4, "iterations": 2}),
    "genie": ("genie", None, 10, {"batch_size": 4, "iterations": 2}),
    "sre2l": ("sre2l", 3, None, {"iterations": 2}),
    "infer": ("infer", 6, None, {"iterations": 2}),
}
#: the only build whose ranks add floating-point parts (the sampler's gradient)
TOLERANCE = {"ncfm_sampler": 1e-3}

DRIVER = """
import json, sys
import distill_data as dd
jobs, npz, teacher, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
for name, (method, ipc, count, opts) in jobs.items():
    teachers = None
    if method in ("zeroq", "genie", "sre2l"):
        teachers = [teacher]
    if method == "infer":
        teachers = [teacher, teacher]
    dataset = None if count else npz
    options = dict(opts, cache_dir=out + "/pool") if method == "ncfm" else dict(opts)
    dd.build(dataset, method, ipc, f"{out}/{name}.h5", count=count, teacher=teachers,
             options=options, quiet=True)
dd.dist.leave(0)  # a script's way out of a torchrun job (see distill_data.dist.leave)
"""


def torchrun(args: list[str], nproc: int = 2, **kw) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=nproc ARGS`` (a free port each time)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={nproc}", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
    if res.returncode and os.environ.get("DD_DEBUG_LOG"):
        with open(os.environ["DD_DEBUG_LOG"], "a") as f:
            f.write(res.stderr + "\n=====\n")
    return res


def ours(stderr: str) -> list[str]:
    """stderr without torchrun's own warnings and failure summary."""
    return [ln for ln in stderr.splitlines() if ln.startswith(("error", "[rank", "note"))]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("torchrun")
    npz = write_npz(tmp / "d.npz", classes=4, n_train=12, n_test=4, seed=1)
    teacher = tmp / "t.pt"
    dd.teacher(str(npz), teacher, model="convnet_bn", epochs=1, width=8, quiet=True)
    return tmp, npz, teacher


@pytest.fixture(scope="module")
def two_rank_sets(files):
    tmp, npz, teacher = files
    out = tmp / "two"
    out.mkdir()
    driver = tmp / "driver.py"
    driver.write_text(textwrap.dedent(DRIVER))
    import json

    res = torchrun([str(driver), json.dumps(JOBS), str(npz), str(teacher), str(out)])
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def one_process(files, name: str, out: Path) -> Path:
    tmp, npz, teacher = files
    method, ipc, count, opts = JOBS[name]
    teachers = {"infer": [teacher, teacher]}.get(method, [teacher])
    needs_teacher = method in ("zeroq", "genie", "sre2l", "infer")
    opts = dict(opts, cache_dir=str(tmp / "two" / "pool")) if method == "ncfm" else opts
    dd.build(
        None if count else str(npz),
        method,
        ipc,
        out,
        count=count,
        teacher=teachers if needs_teacher else None,
        options=opts,
        quiet=True,
    )
    return out


def read(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][:] for k in ("images", "labels", "soft_labels") if k in f}


@pytest.mark.parametrize("name", list(JOBS))
def test_two_ranks_make_the_one_process_set(files, two_rank_sets, tmp_path, name):
    two = read(two_rank_sets / f"{name}.h5")
    one = read(one_process(files, name, tmp_path / "one.h5"))
    assert two.keys() == one.keys()
    np.testing.assert_array_equal(two["labels"], one["labels"])
    tol = TOLERANCE.get(name, 0.0)
    for key in ("images", "soft_labels"):
        if key in one:
            assert two[key].shape == one[key].shape
            diff = float(np.abs(two[key] - one[key]).max())
            assert diff <= tol, f"{name} {key}: max |difference| {diff} > {tol}"
    with h5py.File(two_rank_sets / f"{name}.h5", "r") as a, h5py.File(tmp_path / "one.h5") as b:
        assert a.attrs["iterations"] == b.attrs["iterations"]


def build_args(npz: Path, out: Path, *extra: str) -> list[str]:
    """``-m distill_data build`` of a tiny DM set (the first two items are the module)."""
    sets = [item for k, v in TINY.items() for item in ("--set", f"{k}={v}")]
    args = ["-m", "distill_data", "build", "--dataset", str(npz), "--method", "dm"]
    return [*args, "--ipc", "2", "--out", str(out), "-q", *sets, *extra]


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        kids += [int(k) for k in text]
    return kids


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("victim", [1, 0])
def test_a_killed_rank_resumes_from_the_checkpoint(files, tmp_path, victim):
    _, npz, _ = files
    out = tmp_path / "set.h5"
    ckpt = Path(str(out) + ".ckpt.pt")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += build_args(npz, out, "--iterations", "100000", "--set", "checkpoint_every=3")
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not ckpt.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert ckpt.exists(), "no checkpoint appeared"
        victims = [p for p in _children(job.pid) if _rank_of(p) == victim]
        assert victims, f"rank {victim} not found"
        os.kill(victims[0], signal.SIGKILL)
        _, err = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0
    assert not out.exists()  # nothing half-written
    saved = torch.load(ckpt, weights_only=True)
    assert saved["world_size"] == 2 and len(saved["ranks"]) == 2
    stop = saved["iteration"] + 2

    # the checkpoint holds both ranks' states: one process cannot take it over
    lone = (
        None
        if victim == 0
        else subprocess.run(
            [sys.executable, "-m", "distill_data", *build_args(npz, out, "--resume")[2:]],
            capture_output=True,
            text=True,
        )
    )
    if lone is not None:
        assert lone.returncode == 2
        assert "written by 2 processes" in lone.stderr and "Traceback" not in lone.stderr
    loud = [a for a in build_args(npz, out, "--resume", "--iterations", str(stop)) if a != "-q"]
    res = torchrun(loud)
    assert res.returncode == 0, res.stderr[-2000:]
    # on from the checkpoint (a rebuild from step 0 would end with the same images too)
    assert f"resuming dm from iteration {saved['iteration']} " in res.stderr
    assert not ckpt.exists()
    ref = tmp_path / "ref.h5"
    dd.build(str(npz), "dm", 2, ref, options={**TINY, "iterations": stop}, quiet=True)
    np.testing.assert_array_equal(read(out)["images"], read(ref)["images"])


def test_the_cli_says_it_once(files, tmp_path):
    _, npz, _ = files
    res = torchrun(build_args(npz, tmp_path / "s.h5", "--iterations", "2"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("wrote ") == 1


ODD = """
import os, sys
from distill_data.cli import main
args = sys.argv[1:]
if os.environ["RANK"] == "1":
    args += ["--seed", "5"]
main(args)
"""


def test_ranks_started_differently_stop_with_one_line(files, tmp_path):
    _, npz, _ = files
    script = tmp_path / "odd.py"
    script.write_text(ODD)
    out = tmp_path / "s.h5"
    res = torchrun([str(script), *build_args(npz, out, "--iterations", "2")[2:]])
    assert res.returncode != 0
    lines = ours(res.stderr)
    assert len(lines) == 1, res.stderr
    assert "rank 1 was started with other settings" in lines[0] and "seed" in lines[0]
    assert not out.exists()


PATCHED = """
import os, sys
from distill_data.cli import main
from distill_data.errors import StoreError
from {module} import {cls}

step = {cls}.step
def patched(self, it):
    if os.environ["RANK"] == "{rank}" and it == {at}:
        raise StoreError("{message}")
    return step(self, it)
{cls}.step = patched
main(sys.argv[1:])
"""


def patched_cli(path: Path, cls: str, rank: int, at: int, message: str) -> Path:
    """A CLI script whose ``cls.step`` raises ``message`` on ``rank`` at step ``at``."""
    module = {"DistributionMatching": "distill_data.synth.dm",
              "BatchedInversion": "distill_data.synth.inversion"}[cls]  # fmt: skip
    path.write_text(PATCHED.format(module=module, cls=cls, rank=rank, at=at, message=message))
    return path


def test_a_failing_rank_stops_every_rank_with_its_message(files, tmp_path):
    _, npz, _ = files
    script = patched_cli(tmp_path / "fail.py", "DistributionMatching", 1, 1,
                         "disk trouble on rank 1")  # fmt: skip
    out = tmp_path / "s.h5"
    res = torchrun([str(script), *build_args(npz, out, "--iterations", "4")[2:]])
    assert res.returncode != 0
    assert ours(res.stderr) == ["[rank 1] error: disk trouble on rank 1"], res.stderr
    assert not out.exists() and not Path(str(out) + ".ckpt.pt").exists()


def test_more_processes_than_batches_is_refused(files, tmp_path):
    _, _, teacher = files
    out = tmp_path / "z.h5"
    args = ["-m", "distill_data", "build", "--method", "zeroq", "--teacher", str(teacher)]
    args += ["--count", "4", "--set", "batch_size=4", "--iterations", "1", "--out", str(out)]
    res = torchrun(args)
    assert res.returncode != 0
    lines = ours(res.stderr)
    assert len(lines) == 1 and "2 processes but only 1 batch to" in lines[0], res.stderr
    assert not out.exists()


def test_evaluation_runs_shared_over_ranks_give_the_one_process_report(files, tmp_path):
    tmp, npz, _ = files
    store = tmp_path / "set.h5"
    dd.build(str(npz), "random", 2, store, quiet=True)
    args = [str(store), "--dataset", str(npz), "--runs", "3", "--epochs", "3"]
    args += ["--set", "width=8", "--baseline", "random", "-q"]
    res = torchrun(["-m", "distill_data", "eval", *args, "--json", str(tmp_path / "two.json")])
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("synthetic") == 1  # one report, from rank 0
    import json

    two = json.loads((tmp_path / "two.json").read_text())
    one = dd.evaluate(store, str(npz), runs=3, epochs=3, width=8, baselines=["random"], quiet=True)
    assert two["processes"] == 2 and one["processes"] == 1
    for key in ("synthetic", "random"):
        assert two["results"][key]["accs"] == one["results"][key]["accs"]
        assert two["results"][key]["test_losses"] == one["results"][key]["test_losses"]


@pytest.mark.parametrize("quant,step_init", [("lsq", "lsq"), ("lsq", "mse"), ("qat", None)])
def test_a_student_trains_data_parallel_like_one_process(files, tmp_path, quant, step_init):
    # ConvNet-BN with its BatchNorm folded: whole-batch statistics across the ranks, and
    # the activation observers (lsq's first step, by either rule; qat's EMA ranges) too;
    # plain BatchNorm is the teacher test's
    _, npz, teacher = files
    bits = {"lsq": "w4a4", "qat": "w4a8"}[quant]
    init = {"step_init": step_init} if step_init else {}
    args = ["-d", str(npz), "--teacher", str(teacher), "--model", "convnet_bn", "--epochs", "2"]
    args += ["--set", "width=8", "--set", "batch_size=10", "-q", "--quant", quant, "--bits", bits]
    args += ["--set", f"step_init={step_init}"] if step_init else []
    res = torchrun(["-m", "distill_data", "train", *args, "--out", str(tmp_path / "two.pt")])
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("student convnet_bn") == 1
    dd.train(str(npz), tmp_path / "one.pt", teacher=str(teacher), model="convnet_bn", width=8,
             quant=quant, bits=bits, options={"batch_size": 10, "epochs": 2}, **init,
             quiet=True)  # fmt: skip
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    from distill_data.quant.pack import unpack

    for name, layer in one["layers"].items():
        # the same integer codes but where a weight sits on a rounding boundary (the
        # rounding of the sums may tip it one level); ranges within rounding
        w1, w2 = layer["weight"], two["layers"][name]["weight"]
        c1, c2 = (unpack(w["packed"], w["bits"], w["signed"], w["numel"]) for w in (w1, w2))
        moved = (c1.long() - c2.long()).abs()
        tipped = int((moved > 0).sum())
        assert int(moved.max()) <= 1 and tipped <= max(2, moved.numel() // 100), name
        for key, value in (layer["act"] or {}).items():
            torch.testing.assert_close(two["layers"][name]["act"][key], value, rtol=0, atol=1e-5)
    assert two["float_state"].keys() == one["float_state"].keys()
    for k, v in one["float_state"].items():  # the batch gradient as a sum of two ranks' parts
        if v.is_floating_point():
            torch.testing.assert_close(two["float_state"][k], v, rtol=0, atol=1e-5)


def test_uneven_batch_shards_resume_past_the_shorter_rank(files, tmp_path):
    # 3 batches on 2 ranks: rank 0 makes two (4 steps), rank 1 one (2 steps); the
    # checkpoint at step 3 finds rank 1 finished and rank 0 inside its second batch
    _, _, teacher = files
    script = patched_cli(tmp_path / "stop.py", "BatchedInversion", 0, 3, "stopped for the test")
    out = tmp_path / "z.h5"
    args = ["build", "--method", "zeroq", "--teacher", str(teacher), "--count", "12"]
    args += ["--set", "batch_size=4", "--iterations", "2", "--set", "checkpoint_every=3"]
    args += ["--out", str(out), "-q"]
    res = torchrun([str(script), *args])
    assert res.returncode != 0 and "stopped for the test" in res.stderr
    assert torch.load(Path(str(out) + ".ckpt.pt"), weights_only=True)["iteration"] == 3
    res = torchrun(["-m", "distill_data", *[a for a in args if a != "-q"], "--resume"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming zeroq from iteration 3 " in res.stderr
    ref = tmp_path / "ref.h5"
    dd.build(None, "zeroq", None, ref, teacher=str(teacher), count=12,
             options={"batch_size": 4, "iterations": 2}, quiet=True)  # fmt: skip
    np.testing.assert_array_equal(read(out)["images"], read(ref)["images"])
    np.testing.assert_array_equal(read(out)["labels"], read(ref)["labels"])


def test_noise_init_is_one_draw_of_the_whole_set(files):
    # class-split draws of randn differ from one draw when a class's share is not a
    # multiple of 16 values (here 2 images of 1x10x10): the set must be one draw
    from distill_data.data import load_dataset
    from distill_data.synth.dm import DistributionMatching

    _, npz, _ = files
    data = load_dataset(str(npz))
    gen = DistributionMatching(DistributionMatching.Config(init="noise", width=8), data, 2, seed=4)
    gen.setup()
    want = torch.randn((4 * 2, 1, 10, 10), generator=torch.Generator().manual_seed(4))
    assert torch.equal(gen.images.detach(), want)


class _ThreeEqualRanks:
    """A stand-in group of three ranks that hold the same buffers (sum = 3 × value)."""

    world = 3

    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        return t.mul_(3)


def test_averaging_equal_buffers_over_ranks_leaves_them_unchanged():
    from distill_data.train.fit import _average_buffers

    net = torch.nn.BatchNorm1d(4096)
    net.running_mean.copy_(torch.randn(4096, generator=torch.Generator().manual_seed(0)))
    before = net.running_mean.clone()
    assert not torch.equal(before * 3 / 3, before)  # float32 arithmetic would nudge them
    _average_buffers(net, _ThreeEqualRanks())
    assert torch.equal(net.running_mean, before)


def test_sync_batchnorm_on_bfloat16_activations_is_batchnorms():
    """precision=bf16 (autocast) feeds BatchNorm bfloat16 activations and float32 weights:
    the synced version returns what BatchNorm returns (bfloat16) with float32 weight
    gradients, so a torchrun run takes the one-process path's dtypes."""
    from distill_data.dist import ONE
    from distill_data.train.syncbn import _SyncBN

    g = torch.Generator().manual_seed(1)
    x32 = torch.randn(6, 3, 5, 4, generator=g)
    w0, b0 = torch.rand(3, generator=g), torch.randn(3, generator=g)
    grad = torch.randn(6, 3, 5, 4, generator=g).bfloat16()
    outs = {}
    for name in ("sync", "torch"):
        x = x32.bfloat16().requires_grad_(True)
        w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
        if name == "sync":
            y = _SyncBN.apply(x, w, b, 1e-5, ONE, [])
        else:
            y = torch.nn.functional.batch_norm(x, None, None, w, b, training=True, eps=1e-5)
        y.backward(grad)
        outs[name] = (y.detach(), x.grad, w.grad, b.grad)
    for a, c in zip(outs["sync"], outs["torch"]):
        assert a.dtype == c.dtype
        torch.testing.assert_close(a.float(), c.float(), rtol=2e-2, atol=2e-2)
    assert outs["sync"][0].dtype == torch.bfloat16 and outs["sync"][2].dtype == torch.float32


def test_sync_batchnorm_arithmetic_is_batchnorms():
    # with one rank the all-reduces are the identity: forward, gradients and running
    # statistics must be BatchNorm's own (float64 so nothing hides in rounding)
    from distill_data.dist import ONE
    from distill_data.train.syncbn import _SyncBN

    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.rand(3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(6, 3, 5, 4, generator=g, dtype=torch.float64)
    stats: list = []
    y = _SyncBN.apply(x, w, b, 1e-5, ONE, stats)
    y.backward(grad)
    mine = (y.detach(), x.grad.clone(), w.grad.clone(), b.grad.clone())
    for t in (x, w, b):
        t.grad = None
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    ref = torch.nn.functional.batch_norm(x, rm, rv, w, b, training=True, eps=1e-5)
    ref.backward(grad)
    for a, c in zip(mine, (ref.detach(), x.grad, w.grad, b.grad)):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)
    mean, var, n = stats
    torch.testing.assert_close(rm, 0.1 * mean)  # torch's running update, momentum 0.1
    torch.testing.assert_close(rv, 0.9 + 0.1 * var * n / (n - 1))


def test_commands_without_a_share_refuse_torchrun(files, tmp_path):
    _, npz, teacher = files
    res = torchrun(["-m", "distill_data", "quantize", "--teacher", str(teacher), "--calib",
                    "noise:4", "--json", str(tmp_path / "q.json")])  # fmt: skip
    assert res.returncode != 0
    lines = ours(res.stderr)
    assert len(lines) == 1 and "`quantize` runs in one process" in lines[0], res.stderr
    assert not (tmp_path / "q.json").exists()


def test_a_teacher_trains_data_parallel_like_one_process(files, tmp_path):
    # 48 images in batches of 47: one split over the ranks, one of a single image that
    # every rank holds whole (BatchNorm then uses its own rows, which are the batch)
    _, npz, _ = files
    args = ["--dataset", str(npz), "--model", "convnet_bn", "--width", "8", "--epochs", "2"]
    args += ["--batch-size", "47"]
    res = torchrun(["-m", "distill_data", "teacher", *args, "--out", str(tmp_path / "two.pt")])
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("wrote ") == 1
    dd.teacher(str(npz), tmp_path / "one.pt", model="convnet_bn", width=8, epochs=2,
               batch_size=47, quiet=True)  # fmt: skip
    two = torch.load(tmp_path / "two.pt", weights_only=True)["state_dict"]
    one = torch.load(tmp_path / "one.pt", weights_only=True)["state_dict"]
    for k, v in one.items():
        if v.is_floating_point():
            torch.testing.assert_close(two[k], v, rtol=0, atol=1e-5)
