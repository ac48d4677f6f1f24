"""Accuracy of the matching generators on mnist5k, and accuracy against wall-clock.

Runs one generator in-process and evaluates snapshots of its synthetic set after the
requested iteration counts (3 freshly trained ConvNets x 300 epochs each, final epoch,
mean ± std), recording the build's wall-clock seconds up to each snapshot (evaluation
time excluded).

    python bench/matching.py --method dm --ipc 10 --evals 0 100
    python bench/matching.py --method datadam --ipc 10 --evals 50 200 1000
    python bench/matching.py --method dm --ipc 10 --evals 100 --set precision=bf16 --tag bf16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import peak_rss_mib, write_result  # noqa: E402

from distill_data.config import config_to_dict, make_config, parse_set_options  # noqa: E402
from distill_data.data import load_dataset  # noqa: E402
from distill_data.evaluation import EvalConfig, evaluate_set  # noqa: E402
from distill_data.synth import GENERATORS  # noqa: E402

DATASET = "mnist5k"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", required=True)
    ap.add_argument("--ipc", type=int, required=True)
    ap.add_argument(
        "--evals",
        type=int,
        nargs="+",
        required=True,
        help="iteration counts after which to evaluate (0 = the initial set)",
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    data = load_dataset(DATASET)
    cls = GENERATORS.get(args.method)
    opts = parse_set_options(args.sets)
    opts["iterations"] = max(args.evals)
    cfg = make_config(cls.Config, opts)
    ecfg = EvalConfig(runs=args.runs, epochs=args.epochs, seed=0)
    gen = cls(cfg, data, args.ipc, seed=args.seed)
    gen.quiet = False
    t0 = time.perf_counter()
    gen.setup()
    build_s = time.perf_counter() - t0
    step_s: list[float] = []
    points = []
    it = 0
    for target in sorted(set(args.evals)):
        while it < target:
            t = time.perf_counter()
            gen.step(it)
            dt = time.perf_counter() - t
            step_s.append(dt)
            build_s += dt
            it += 1
            if it % 10 == 0:
                print(f"{args.method} ipc={args.ipc} it={it} {dt:.2f}s/it", flush=True)
        images, labels, _ = gen.result()
        res = evaluate_set(images, labels, data, ecfg, f"{args.method}@{it}", quiet=True)
        print(
            f"  after {it} iterations ({build_s:.0f} s): {res['mean']:.2f} ± {res['std']:.2f}",
            flush=True,
        )
        points.append({"iterations": it, "build_seconds": round(build_s, 1), "accuracy": res})

    tag = f"_{args.tag}" if args.tag else ""
    name = f"matching_{DATASET}_{args.method.replace('+', '-')}_ipc{args.ipc}{tag}"
    sorted_steps = sorted(step_s)
    write_result(
        name,
        {
            "benchmark": "matching-accuracy",
            "dataset": DATASET,
            "method": args.method,
            "ipc": args.ipc,
            "seed": args.seed,
            "config": config_to_dict(cfg),
            "eval": {**ecfg.__dict__, "dsa_strategy": ecfg.strategy(data)},
            "s_per_iter_median": sorted_steps[len(sorted_steps) // 2] if step_s else None,
            "peak_rss_mib_process": peak_rss_mib(),
            "curve": points,
        },
    )


if __name__ == "__main__":
    main()
