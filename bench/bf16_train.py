"""bfloat16 training (``--set precision=bf16``): how much faster, and what it costs in
accuracy, against the float32 default.

    OMP_NUM_THREADS=1 python bench/bf16_train.py --stage speed     # ~2 min
    OMP_NUM_THREADS=1 python bench/bf16_train.py --stage eval      # ~1 h (IPC 10 + 50)
    OMP_NUM_THREADS=1 python bench/bf16_train.py --stage teacher   # ~4 min

speed: seconds per training step (forward, backward, SGD step; median of repeats,
  fp32 and bf16 steps alternated so both see the same load) on one thread for the
  evaluation ConvNet (width 128, instance norm, 28x28) at the eval protocol's batch of
  256 and at 100 images (an IPC 10 set), the ConvNet-BN teacher (width 64, batch 128)
  and the ResNet teacher (batch 128).
eval: ``distill-data eval`` of random real subsets of mnist5k at IPC 10 and 50 (the DC
  protocol, 3 runs x 300 epochs, the same sets and seeds), fp32 against bf16:
  final-epoch accuracy and wall time.
teacher: the ConvNet-BN teacher (10 epochs, width 64, seed 0) trained in fp32 and bf16.

bf16 is fast only where the CPU has bfloat16 arithmetic: the result records the CPU's
bf16 flags (avx512_bf16, amx_bf16); seconds are wall time with another benchmark on
the other core.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

import distill_data as dd  # noqa: E402
from distill_data.models import build_model  # noqa: E402
from distill_data.runtime import autocast_for, tune_allocator  # noqa: E402

DATASET = "mnist5k"


def bf16_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set(next((ln for ln in text.splitlines() if ln.startswith("flags")), "").split())
    return sorted(flags & {"avx512_bf16", "amx_bf16"})


def _step_seconds(model, batch: int, precision: str, channels: int = 1) -> float:
    x = torch.randn(batch, channels, 28, 28)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    amp = autocast_for(precision, torch.device("cpu"))
    t0 = time.perf_counter()
    with amp:
        out = model(x)
    loss = F.cross_entropy(out.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def stage_speed(repeats: int) -> None:
    cases = [
        ("eval ConvNet, batch 256", "convnet", {}, 256),
        ("eval ConvNet, batch 100 (IPC 10)", "convnet", {}, 100),
        ("ConvNet-BN teacher, batch 128", "convnet_bn", {"width": 64}, 128),
        ("ResNet teacher, batch 128", "resnet", {}, 128),
    ]
    rows = []
    for name, arch, opts, batch in cases:
        models = {p: build_model(arch, 1, 10, (28, 28), **opts).train() for p in ("fp32", "bf16")}
        times: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for i in range(repeats + 2):
            for p in ("fp32", "bf16"):
                t = _step_seconds(models[p], batch, p)
                if i >= 2:  # warm-up steps
                    times[p].append(t)
        fp32, bf16 = statistics.median(times["fp32"]), statistics.median(times["bf16"])
        rows.append({"case": name, "model": arch, "batch": batch, "fp32_s": round(fp32, 4),
                     "bf16_s": round(bf16, 4), "speedup": round(fp32 / bf16, 2)})  # fmt: skip
        print(f"{name}: fp32 {fp32:.3f} s, bf16 {bf16:.3f} s, {fp32 / bf16:.2f}x", flush=True)
    write_result(
        "bf16_train_speed",
        {
            "benchmark": "bf16-train",
            "stage": "speed",
            "cpu_bf16_flags": bf16_flags(),
            "settings": {
                "repeats": repeats,
                "threads": torch.get_num_threads(),
                "step": "forward + backward + SGD step, median",
            },
            "rows": rows,
        },  # fmt: skip
    )


def stage_eval(ipcs: list[int], runs: int, epochs: int) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ipc in ipcs:
            store = Path(tmp) / f"random_ipc{ipc}.h5"
            dd.build(DATASET, "random", ipc, store, quiet=True)
            for precision in ("fp32", "bf16"):
                t0 = time.perf_counter()
                rep = dd.evaluate(store, DATASET, runs=runs, epochs=epochs, quiet=True,
                                  precision=precision)  # fmt: skip
                s = rep["results"]["synthetic"]
                rows.append({"ipc": ipc, "precision": precision, "mean": s["mean"],
                             "std": s["std"], "accs": s["accs"],
                             "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip
                print(f"IPC {ipc} {precision}: {s['mean']:.2f} ± {s['std']:.2f} "
                      f"({rows[-1]['seconds']:.0f} s)", flush=True)  # fmt: skip
    write_result(
        "bf16_train_eval",
        {
            "benchmark": "bf16-train",
            "stage": "eval",
            "cpu_bf16_flags": bf16_flags(),
            "settings": {
                "dataset": DATASET,
                "set": "random real subset (dd.build random)",
                "runs": runs,
                "epochs": epochs,
                "protocol": "dc",
                "threads": torch.get_num_threads(),
            },
            "rows": rows,
        },  # fmt: skip
    )


def stage_teacher() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            rep = dd.teacher(DATASET, Path(tmp) / f"t_{precision}.pt", model="convnet_bn",
                             epochs=10, width=64, seed=0, precision=precision,
                             quiet=True)  # fmt: skip
            rows.append({"precision": precision, "test_accuracy": rep["test_accuracy"],
                         "seconds": round(rep["train_seconds"], 1)})  # fmt: skip
            print(f"teacher {precision}: {rep['test_accuracy']:.2f} % "
                  f"({rep['train_seconds']:.0f} s)", flush=True)  # fmt: skip
    write_result(
        "bf16_train_teacher",
        {
            "benchmark": "bf16-train",
            "stage": "teacher",
            "cpu_bf16_flags": bf16_flags(),
            "settings": {
                "dataset": DATASET,
                "model": "convnet_bn",
                "width": 64,
                "epochs": 10,
                "seed": 0,
                "threads": torch.get_num_threads(),
            },
            "rows": rows,
        },  # fmt: skip
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=["speed", "eval", "teacher"], required=True)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--ipc", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=300)
    args = ap.parse_args()
    tune_allocator()
    torch.set_num_threads(1)
    if args.stage == "speed":
        stage_speed(args.repeats)
    elif args.stage == "eval":
        stage_eval(args.ipc, args.runs, args.epochs)
    else:
        stage_teacher()


if __name__ == "__main__":
    main()
