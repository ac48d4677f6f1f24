"""Speed-up of torchrun (gloo, one thread per rank) over one process, with equal output.

For each stage the same work runs once as a plain process (one thread) and once under
``torchrun --standalone --nproc_per_node=K`` (K ranks, one thread each), through the
Python API in a worker (this file with ``--worker``), which records the wall seconds of
the call and the seconds and calls spent in collectives (``distill_data.dist.STATS``:
transfer plus waiting for the slower rank). The parent compares the outputs (stored
images bit for bit; evaluation accuracies and test losses) and writes
``bench/results/torchrun_<stage>_k<K>.json``.

    python bench/torchrun.py                      # dm, sre2l, eval3, eval6 at K = 2
    python bench/torchrun.py --stages dm --dm-iterations 50
    python bench/torchrun.py --device cuda --stages dm sre2l   # a GPU: NCCL (or, with
        DISTILL_DATA_BACKEND=gloo, two ranks sharing one GPU: a correctness check)

Stages: ``dm`` (mnist5k, IPC 10, ConvNet-128, the paper's settings, N iterations),
``sre2l`` (the ResNet-20 teacher of bench/.work, IPC 10, batches of one image per class,
N iterations per batch), ``eval3`` (3 ConvNets trained on the DM set) and ``eval6`` (the
same with the random-subset baseline: 6 models).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, write_result  # noqa: E402

WORK = ROOT / ".work" / "torchrun"
TEACHER = ROOT / ".work" / "teacher_resnet.pt"


def worker(stage: str, out: str, report: str, settings: dict) -> None:
    """Run one stage in this process (under torchrun: this rank's share)."""
    import torch

    import distill_data as dd
    from distill_data import dist

    torch.set_num_threads(1)
    dd.tune_allocator()
    t0 = time.perf_counter()
    device = settings.get("device", "cpu")
    if stage == "dm":
        dd.build("mnist5k", "dm", 10, out, iterations=settings["iterations"], quiet=True,
                 options={"checkpoint_every": 10**6}, force=True, device=device)  # fmt: skip
    elif stage == "sre2l":
        dd.build("mnist5k", "sre2l", 10, out, teacher=str(TEACHER), quiet=True,
                 iterations=settings["iterations"], force=True, device=device,
                 options={"checkpoint_every": 10**6})  # fmt: skip
    else:
        rep = dd.evaluate(settings["store"], "mnist5k", runs=settings["runs"],
                          epochs=settings["epochs"], baselines=settings["baselines"],
                          quiet=True, device=device)  # fmt: skip
    seconds = time.perf_counter() - t0
    group = dist.peek()
    facts = {
        "seconds": seconds,
        "comm_seconds": dist.STATS["seconds"],
        "comm_calls": dist.STATS["calls"],
        "comm_tensor_bytes": dist.STATS["tensor_bytes"],
    }
    everyone = dist.context().all_gather(facts) if group.active else [facts]
    if group.main:
        doc = {"ranks": everyone}
        if stage.startswith("eval"):
            doc["results"] = rep["results"]
        Path(report).write_text(json.dumps(doc))
    if group.active:
        dist.leave(0)


def launch(stage: str, k: int, out: Path, settings: dict) -> dict:
    """The stage as one process (k = 1) or under torchrun with k ranks; its report."""
    report = Path(tempfile.mkstemp(suffix=".json")[1])
    args = [__file__, "--worker", stage, "--out", str(out), "--report", str(report)]
    args += ["--settings", json.dumps(settings)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if k == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += [f"--nproc_per_node={k}", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{stage} k={k} failed:\n{proc.stderr[-3000:]}")
    doc = json.loads(report.read_text())
    report.unlink()
    doc["process_wall_seconds"] = round(wall, 2)
    return doc


def images_of(path: Path):
    import h5py

    with h5py.File(path, "r") as f:
        return f["images"][:], f["labels"][:]


def compare_sets(a: Path, b: Path) -> dict:
    import numpy as np

    (xa, ya), (xb, yb) = images_of(a), images_of(b)
    return {
        "same_shape": list(xa.shape) == list(xb.shape),
        "labels_equal": bool((ya == yb).all()),
        "max_abs_image_difference": float(np.abs(xa - xb).max()),
        "bitwise_equal": bool((xa == xb).all()),
    }


def stage(name: str, k: int, settings: dict, units: str, amount: int) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    outs = {n: WORK / f"{name}_k{n}.h5" for n in (1, k)}
    runs = {n: launch(name, n, outs[n], settings) for n in (1, k)}
    one, many = runs[1], runs[k]
    t1 = max(r["seconds"] for r in one["ranks"])
    tk = max(r["seconds"] for r in many["ranks"])
    share = max(r["comm_seconds"] for r in many["ranks"]) / tk if tk else 0.0
    result = {
        "benchmark": "torchrun",
        "stage": name,
        "processes": k,
        "backend": os.environ.get("DISTILL_DATA_BACKEND")
        or ("nccl" if settings.get("device") == "cuda" else "gloo"),
        "device": settings.get("device", "cpu"),
        "threads_per_process": 1,
        "settings": settings,
        "one_process": {"seconds": round(t1, 2), "wall": one["process_wall_seconds"]},
        "torchrun": {
            "seconds": round(tk, 2),
            "wall": many["process_wall_seconds"],
            "per_rank": many["ranks"],
        },
        "speedup": round(t1 / tk, 3),
        "speedup_wall": round(one["process_wall_seconds"] / many["process_wall_seconds"], 3),
        "communication_share": round(share, 4),
        f"seconds_per_{units}": {
            "one_process": round(t1 / amount, 4),
            "torchrun": round(tk / amount, 4),
        },  # fmt: skip
    }
    if name.startswith("eval"):
        same = {
            key: one["results"][key]["accs"] == many["results"][key]["accs"]
            and one["results"][key]["test_losses"] == many["results"][key]["test_losses"]
            for key in one["results"]
        }
        result["identical_results"] = all(same.values())
        result["accuracy"] = {
            key: {"mean": round(v["mean"], 2), "std": round(v["std"], 2), "accs": v["accs"]}
            for key, v in many["results"].items()
        }
    else:
        result["output"] = compare_sets(outs[1], outs[k])
    print(
        f"{name}: 1 process {t1:.1f} s, {k} ranks {tk:.1f} s, speed-up {t1 / tk:.2f}x, "
        f"collectives {100 * share:.1f} % of the {k}-rank time",
        flush=True,
    )
    device = settings.get("device", "cpu")
    tag = "" if device == "cpu" else "_" + device.replace(":", "")
    write_result(f"torchrun_{name}_k{k}{tag}", result)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", nargs="+", default=["dm", "sre2l", "eval3", "eval6"],
                   choices=["dm", "sre2l", "eval3", "eval6"])  # fmt: skip
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL)")
    p.add_argument("--dm-iterations", type=int, default=20)
    p.add_argument("--sre2l-iterations", type=int, default=100)
    p.add_argument("--eval-epochs", type=int, default=60)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--report", default=None, help=argparse.SUPPRESS)
    p.add_argument("--settings", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.out, args.report, json.loads(args.settings))
        return
    k = args.processes
    for name in args.stages:
        dev = {"device": args.device}
        if name == "dm":
            its = args.dm_iterations
            settings = {"dataset": "mnist5k", "method": "dm", "ipc": 10, "iterations": its, **dev}
            stage(name, k, settings, "iteration", its)
        elif name == "sre2l":
            its = args.sre2l_iterations
            settings = {"dataset": "mnist5k", "method": "sre2l", "ipc": 10,
                        "teacher": str(TEACHER), "iterations": its, **dev}  # fmt: skip
            stage(name, k, settings, "step", its * 10)
        else:
            store = WORK / "dm_k1.h5"
            if not store.exists():
                raise SystemExit(f"run the dm stage first (it writes {store})")
            models = 3 if name == "eval3" else 6
            baselines = [] if name == "eval3" else ["random"]
            settings = {"store": str(store), "runs": 3, "epochs": args.eval_epochs,
                        "baselines": baselines, "model": "convnet", **dev}  # fmt: skip
            stage(name, k, settings, "model", models)


if __name__ == "__main__":
    main()
