"""Seconds per iteration, compute floor and peak memory of the matching generators.

Each configuration runs in its own child process (so peak RSS is its own): set up the
generator on mnist5k at IPC 10 with its defaults, run 2 warm-up iterations, then time
``--steps`` iterations (median reported). The compute floor is measured in the same
process on the same kind of batches, one floor pass after each timed iteration (so slow
drift of the machine reaches both medians alike): one no-grad forward of a fresh
iteration's real images plus one forward/backward of its synthetic images through a
fresh network.

    python bench/matching_speed.py                  # dm, datadam, ncfm, dm+fyi; fp32 + bf16
    python bench/matching_speed.py --methods dm --steps 100
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import peak_rss_mib, write_result  # noqa: E402

DATASET = "mnist5k"
IPC = 10
# NCFM's pool (20 nets x 60 epochs) only affects accuracy, not the cost of an iteration.
EXTRA = {"ncfm": {"pool_size": 1, "pretrain_epochs": 1}}
EXTRA["ncfm+fyi"] = EXTRA["ncfm"]


def _sync(gen) -> None:
    """Wait for the device, so a GPU timing covers the work and not only its launch."""
    if gen.device.type == "cuda":
        import torch

        torch.cuda.synchronize(gen.device)


def floor_pass(gen) -> tuple[float, int, int]:
    """Seconds of the compute floor on one fresh net and one fresh batch: a no-grad
    forward of the real images plus a forward/backward of the synthetic images."""
    import torch

    net = gen.make_net()
    real, _, syn, _ = gen.sample_batches()
    syn = syn.detach().requires_grad_(True)
    _sync(gen)
    with gen.autocast():
        t0 = time.perf_counter()
        with torch.no_grad():
            gen.embed_real(net.embed, real)
        out = net.embed(syn).float().sum()
    out.backward()
    _sync(gen)
    return time.perf_counter() - t0, len(real), len(syn)


def one(method: str, steps: int, precision: str, allocator: str, device: str) -> dict:
    """Runs inside the child process."""
    import torch

    from distill_data.runtime import tune_allocator

    if allocator == "tuned" and not tune_allocator():
        raise SystemExit("could not tune the allocator here (glibc only)")

    from distill_data.config import make_config
    from distill_data.data import load_dataset
    from distill_data.synth import GENERATORS

    data = load_dataset(DATASET)
    cls = GENERATORS.get(method)
    opts = {**EXTRA.get(method, {}), "precision": precision}
    cfg = make_config(cls.Config, opts)
    gen = cls(cfg, data, IPC, seed=0, device=device)
    gen.setup()
    for it in range(2):
        gen.step(it)
    # Iterations and floor passes alternate, so that drift in the machine's speed (the
    # other core's load, frequency) reaches both medians alike.
    times, floor = [], []
    for it in range(steps):
        _sync(gen)
        t0 = time.perf_counter()
        gen.step(it)  # ends by reading the loss value, which waits for the device
        times.append(time.perf_counter() - t0)
        seconds, n_real, n_syn = floor_pass(gen)
        floor.append(seconds)
    return {
        "method": method,
        "precision": precision,
        "allocator": allocator,
        "device": device,
        "config": cfg.__dict__,
        "steps_timed": steps,
        "s_per_iter_median": statistics.median(times),
        "s_per_iter_all": [round(t, 4) for t in times],
        "compute_floor_s_median": statistics.median(floor),
        "compute_floor_s_all": [round(t, 4) for t in floor],
        "ratio_to_floor": statistics.median(times) / statistics.median(floor),
        "peak_rss_mib": peak_rss_mib(),
        "peak_gpu_mib": (
            torch.cuda.max_memory_allocated(gen.device) / 2**20
            if gen.device.type == "cuda"
            else None
        ),
        "real_images_per_iter": n_real,
        "syn_images_per_iter": n_syn,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="*", default=["dm", "datadam", "ncfm", "dm+fyi"])
    ap.add_argument("--precisions", nargs="*", default=["fp32", "bf16"])
    ap.add_argument(
        "--allocators",
        nargs="*",
        default=["tuned"],
        help="tuned: glibc keeps freed blocks (what the CLI does); default: glibc as is",
    )
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--allocator", default="tuned", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (one job alone on the GPU)")
    args = ap.parse_args()
    if args.one:
        res = one(args.one, args.steps, args.precision, args.allocator, args.device)
        print("RESULT " + json.dumps(res), flush=True)
        return
    rows = []
    for method, precision, allocator in itertools.product(
        args.methods, args.precisions, args.allocators
    ):
        cmd = [
            sys.executable,
            __file__,
            "--one",
            method,
            "--precision",
            precision,
            "--steps",
            str(args.steps),
            "--allocator",
            allocator,
            "--device",
            args.device,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
        if out.returncode != 0:
            raise SystemExit(out.stderr[-2000:])
        res = json.loads(out.stdout.split("RESULT ", 1)[1])
        print(
            f"{method:10s} {precision} {allocator:7s}: {res['s_per_iter_median']:.3f} s/it, floor "
            f"{res['compute_floor_s_median']:.3f} s ({res['ratio_to_floor']:.2f}x), "
            f"peak {res['peak_rss_mib']:.0f} MiB",
            flush=True,
        )
        rows.append(res)
    name = "matching_speed_" + "_".join(m.replace("+", "-") for m in args.methods)
    if args.allocators != ["tuned"]:
        name += "_alloc-" + "-".join(args.allocators)
    if args.device != "cpu":
        name += "_" + args.device
    write_result(
        name,
        {
            "benchmark": "matching-speed",
            "dataset": DATASET,
            "ipc": IPC,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
