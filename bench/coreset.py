"""Coreset baselines on mnist5k: accuracy (mean ± std over fresh ConvNets, final epoch),
build seconds and peak memory, at IPC 1, 10 and 50, plus the full-data figure.

    python bench/coreset.py                 # everything missing from bench/results/
    python bench/coreset.py --ipc 10 --methods herding --force

Evaluation budget (stated in every result file): 3 ConvNets; 300 epochs at IPC 1 and
10; 150 epochs at IPC 50 (each epoch there is two SGD steps of 256, so 300 steps in all;
300 epochs would take ~1.5 h on this 2-core machine); the full training set (4000
images, 16 steps per epoch) is trained for 20 epochs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, run_measured, write_result  # noqa: E402

import distill_data as dd  # noqa: E402
from distill_data.data import load_dataset  # noqa: E402
from distill_data.evaluation import EvalConfig, evaluate_set  # noqa: E402
from distill_data.evaluation.report import now_iso  # noqa: E402

DATASET = "mnist5k"
EPOCHS = {1: 300, 10: 300, 50: 150}
RUNS = 3
FULL_EPOCHS = 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ipc", type=int, nargs="*", default=[1, 10, 50])
    ap.add_argument("--methods", nargs="*", default=["random", "herding", "kcenter"])
    ap.add_argument("--runs", type=int, default=RUNS)
    ap.add_argument("--no-full", action="store_true", help="skip the full-data figure")
    ap.add_argument("--force", action="store_true", help="recompute existing results")
    ap.add_argument(
        "--remeasure-builds",
        action="store_true",
        help="only re-time the builds of existing results (seconds, peak RSS)",
    )
    args = ap.parse_args()
    if args.remeasure_builds:
        remeasure_builds()
        return
    data = load_dataset(DATASET)

    for ipc in args.ipc:
        if ipc == 50:
            full(args)  # cheaper than IPC 50; lands first if the run is cut short
        for method in args.methods:
            name = f"coreset_{DATASET}_{method}_ipc{ipc}"
            if (RESULTS / f"{name}.json").exists() and not args.force:
                print(f"skip {name} (exists)")
                continue
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "set.h5"
                build = run_measured(
                    [
                        "build",
                        "--dataset",
                        DATASET,
                        "--method",
                        method,
                        "--ipc",
                        str(ipc),
                        "--out",
                        str(out),
                        "--seed",
                        "0",
                        "--quiet",
                    ]
                )
                epochs = EPOCHS.get(ipc, 300)
                report = dd.evaluate(out, data, runs=args.runs, epochs=epochs, seed=0)
            write_result(
                name,
                {
                    "benchmark": "coreset",
                    "dataset": DATASET,
                    "method": method,
                    "ipc": ipc,
                    "build": build,
                    "eval": report["protocol"],
                    "accuracy": report["results"]["synthetic"],
                },
            )

    full(args)


def remeasure_builds() -> None:
    """Re-take build seconds and peak RSS (VmHWM of the build process) of every result."""
    for path in sorted(RESULTS.glob(f"coreset_{DATASET}_*.json")):
        doc = json.loads(path.read_text())
        with tempfile.TemporaryDirectory() as tmp:
            doc["build"] = run_measured(
                [
                    "build",
                    "--dataset",
                    DATASET,
                    "--method",
                    doc["method"],
                    "--ipc",
                    str(doc["ipc"]),
                    "--out",
                    str(Path(tmp) / "set.h5"),
                    "--seed",
                    "0",
                    "--quiet",
                ]
            )
        doc["build"]["measured"] = now_iso()
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"{path.name}: {doc['build']}")


def full(args: argparse.Namespace) -> None:
    data = load_dataset(DATASET)
    name = f"full_{DATASET}"
    if not args.no_full and (args.force or not (RESULTS / f"{name}.json").exists()):
        cfg = EvalConfig(runs=args.runs, epochs=FULL_EPOCHS, seed=0)
        res = evaluate_set(data.normalize(data.x_train), data.y_train, data, cfg, "full data")
        write_result(
            name,
            {
                "benchmark": "full-data",
                "dataset": DATASET,
                "method": "full",
                "ipc": None,
                "eval": {**cfg.__dict__, "dsa_strategy": cfg.strategy(data)},
                "accuracy": res,
            },
        )


if __name__ == "__main__":
    main()
