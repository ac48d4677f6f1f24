"""Reconstruction PTQ on mnist5k: AdaRound, BRECQ, QDrop and Genie-M against range-only
PTQ, and whether the calibration sets separate once the data teaches the rounding.

Every run is ``distill_data.api.quantize`` (the ``quantize`` command) of the README's
ResNet teacher (``bench/student.py --stage teacher`` trains it into bench/.work), first
and last layer at 8 bits, one JSON file per run in ``bench/results/recon_*.json``.
Reconstruction runs at ``--iterations`` steps per block (the papers' 20,000 per block
is about an hour per network on this CPU), every other setting the official code's.

    python bench/recon.py --stage methods --calib real:256 --bits w4a4 w3a3 w2a4
    python bench/recon.py --stage methods --methods genie qdrop --bits w2a4 \\
        --calib bench/.work/genie_resnet_256_it1000.h5 bench/.work/zeroq_resnet_256_it100.h5 \\
        noise:256
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, peak_rss_mib, reset_peak_rss, write_result  # noqa: E402

import distill_data as dd  # noqa: E402
from distill_data.runtime import tune_allocator  # noqa: E402

DATASET = "mnist5k"
WORK = ROOT / ".work"
# range-only baselines: min/max (the README's PTQ tables) and the MSE observer
METHODS = {
    "minmax": {"method": "observer", "observer": "minmax"},
    "mse": {"method": "observer", "observer": "mse"},
    "adaround": {"method": "adaround"},
    "brecq": {"method": "brecq"},
    "qdrop": {"method": "qdrop"},
    "genie": {"method": "genie"},
}


def _calib_name(spec: str) -> str:
    return Path(spec).stem if spec.endswith(".h5") else spec.replace(":", "")


def stage_methods(teacher: str, calibs: list[str], bits: list[str], methods: list[str],
                  iterations: int, seed: int) -> None:  # fmt: skip
    tpath = WORK / f"teacher_{teacher}.pt"
    if not tpath.exists():
        raise SystemExit(f"no teacher {tpath}: run bench/student.py --stage teacher first")
    for b in bits:
        for calib in calibs:
            for name in methods:
                settings = dict(METHODS[name])
                if settings["method"] != "observer":
                    settings["iterations"] = iterations
                reset_peak_rss()
                t0 = time.perf_counter()
                rep = dd.quantize(tpath, calib, DATASET, bits=b, seed=seed, quiet=True, **settings)
                wall = time.perf_counter() - t0
                row = rep["results"][0]
                blocks = row.get("reconstruction") or []
                per_block = sum(r["seconds"] for r in blocks) / len(blocks) if blocks else None
                print(f"{teacher} {b} {_calib_name(calib)} {name}: {row['quant_accuracy']:.2f} "
                      f"(fp32 {row['fp32_accuracy']:.2f}), {wall:.0f} s", flush=True)  # fmt: skip
                write_result(
                    f"recon_{DATASET}_{teacher}_{b}_{_calib_name(calib)}_{name}_s{seed}",
                    {
                        "benchmark": "reconstruction-ptq",
                        "teacher_name": teacher,
                        "calib": calib,
                        "calib_name": _calib_name(calib),
                        "bits": b,
                        "method": name,
                        "seed": seed,
                        "settings": {**settings, "first_last_bits": 8},
                        "wall_seconds": round(wall, 1),
                        "seconds_per_block": None if per_block is None else round(per_block, 2),
                        "blocks": len(blocks),
                        "peak_rss_mib": peak_rss_mib(),
                        "threads": torch.get_num_threads(),
                        "result": row,
                    },
                )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", nargs="+", required=True, choices=["methods"])
    p.add_argument("--teacher", default="resnet")
    p.add_argument("--calib", nargs="+", default=["real:256"])
    p.add_argument("--bits", nargs="+", default=["w4a4", "w3a3", "w2a4"])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--iterations", type=int, default=1000, help="reconstruction steps per block")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tune_allocator()
    if "methods" in args.stage:
        stage_methods(args.teacher, args.calib, args.bits, args.methods, args.iterations,
                      args.seed)  # fmt: skip


if __name__ == "__main__":
    main()
