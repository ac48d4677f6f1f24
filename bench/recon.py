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
    python bench/recon.py --stage methods --teacher convnet_bn --methods minmax qdrop genie \
        --bits w2a4 --calib --data-free zeroq:100 genie:1000   # sets from that teacher
    python bench/recon.py --stage methods --teacher convnet_bn --methods minmax qdrop genie \
        --bits w2a4 --calib real:1024 noise:1024 --data-free zeroq:100 --count 1024
    python bench/recon.py --stage mixed --calib real:256   # ZeroQ mixed precision
    python bench/recon.py --stage formats --calib real:256 # FP8 / FP4 against integers
    python bench/recon.py --stage steps --teacher convnet_bn --methods genie --bits w2a4 \
        --calib real:256 noise:256 --steps 1000 20000   # the papers' 20,000 per block
    python bench/recon.py --stage ablation --teacher convnet_bn --bits w2a4 \\
        --calib real:256 noise:256   # QDrop -> Genie-M: lambda and learned weight steps

steps: the same runs at several step counts per block, the teacher file's sha256 in every
result (``recon_steps_*.json``, a table of their own; the methods table stays at one count).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, file_sha256, peak_rss_mib, reset_peak_rss, write_result  # noqa: E402

import distill_data as dd  # noqa: E402
from distill_data.runtime import tune_allocator  # noqa: E402

DATASET = "mnist5k"
#: where every run calibrates, reconstructs and tests (``--device``); GPU files are
#: named ``..._cuda`` and kept apart from the CPU tables
DEVICE = "cpu"


def _tag() -> str:
    return "" if DEVICE == "cpu" else "_" + DEVICE.replace(":", "")


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


def _quantize(tpath: Path, calib: str, bits: str, seed: int, settings: dict) -> tuple:
    """One ``quantize`` run: (its result row, wall seconds, reconstructed blocks, mean
    seconds per block or None without reconstruction)."""
    reset_peak_rss()
    t0 = time.perf_counter()
    rep = dd.quantize(tpath, calib, DATASET, bits=bits, seed=seed, quiet=True, device=DEVICE,
                      **settings)  # fmt: skip
    wall = time.perf_counter() - t0
    row = rep["results"][0]
    blocks = row.get("reconstruction") or []
    per_block = sum(r["seconds"] for r in blocks) / len(blocks) if blocks else None
    return row, wall, blocks, per_block


def _teacher(teacher: str) -> Path:
    tpath = WORK / f"teacher_{teacher}.pt"
    if not tpath.exists():
        raise SystemExit(f"no teacher {tpath}: run bench/student.py --stage teacher first")
    return tpath


def _run(name: str, benchmark: str, teacher: str, calib: str, bits: str, seed: int,
         settings: dict, label: str, **fields) -> None:  # fmt: skip
    """One ``quantize`` run of ``teacher`` on ``calib``, printed and written as
    ``bench/results/NAME.json`` with ``fields`` beside the common ones."""
    tpath = _teacher(teacher)
    row, wall, blocks, per_block = _quantize(tpath, calib, bits, seed, settings)
    print(f"{teacher} {bits} {_calib_name(calib)} {label}: {row['quant_accuracy']:.2f} "
          f"(fp32 {row['fp32_accuracy']:.2f}), {wall:.0f} s", flush=True)  # fmt: skip
    write_result(
        name,
        {
            "benchmark": benchmark,
            "device": DEVICE,
            "teacher_name": teacher,
            **fields,
            "calib": calib,
            "calib_name": _calib_name(calib),
            "bits": bits,
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


def stage_methods(teacher: str, calibs: list[str], bits: list[str], methods: list[str],
                  iterations: int, seed: int) -> None:  # fmt: skip
    # the teacher file's sha256 names the result, so that runs on a retrained teacher of
    # the same name neither overwrite nor mix with an earlier teacher's rows
    sha = file_sha256(_teacher(teacher))
    for b in bits:
        for calib in calibs:
            for name in methods:
                settings = dict(METHODS[name])
                if settings["method"] != "observer":
                    settings["iterations"] = iterations
                tag = f"{DATASET}_{teacher}_{b}_{_calib_name(calib)}_{name}_s{seed}_t{sha[:8]}"
                _run(f"recon_{tag}{_tag()}", "reconstruction-ptq", teacher, calib, b, seed,
                     settings, name, teacher_sha256=sha, method=name)  # fmt: skip


def stage_steps(teacher: str, calibs: list[str], bits: list[str], methods: list[str],
                steps: list[int], seed: int) -> None:  # fmt: skip
    """Reconstruction at each step count per block: does the papers' 20,000 change what
    1,000 showed (and does noise stay with real images)?"""
    sha = file_sha256(_teacher(teacher))
    methods = [m for m in methods if METHODS[m]["method"] != "observer"]  # no steps to count
    if not methods:
        raise SystemExit("--stage steps compares reconstruction methods: pass --methods ...")
    for b in bits:
        for calib in calibs:
            for name in methods:
                for its in steps:
                    tag = f"{DATASET}_{teacher}_{b}_{_calib_name(calib)}_{name}_it{its}_s{seed}"
                    _run(f"recon_steps_{tag}{_tag()}", "reconstruction-steps", teacher, calib,
                         b, seed, {**METHODS[name], "iterations": its}, f"{name} {its} steps",
                         teacher_sha256=sha, method=name, iterations=its)  # fmt: skip


#: --stage ablation: QDrop and Genie-M differ in two settings, the rounding regulariser's
#: λ (0.01 / 1) and whether the weight steps are learned; every cell of that 2 x 2 grid
ABLATION = {
    "qdrop": {"round_weight": 0.01, "learn_weight_step": False},
    "qdrop_steps": {"round_weight": 0.01, "learn_weight_step": True},
    "qdrop_lambda1": {"round_weight": 1.0, "learn_weight_step": False},
    "genie": {"round_weight": 1.0, "learn_weight_step": True},
}


def stage_ablation(teacher: str, calibs: list[str], bits: list[str], iterations: int,
                   seed: int) -> None:  # fmt: skip
    """Which of Genie-M's two differences from QDrop lets it calibrate on noise: every
    cell of (λ, learned weight steps), each from ``method=qdrop`` with both set."""
    sha = file_sha256(_teacher(teacher))
    for b in bits:
        for calib in calibs:
            for name, cell in ABLATION.items():
                tag = f"{DATASET}_{teacher}_{b}_{_calib_name(calib)}_{name}_it{iterations}"
                _run(f"recon_ablation_{tag}_s{seed}{_tag()}", "reconstruction-ablation",
                     teacher, calib, b, seed, {"method": "qdrop", "iterations": iterations,
                                               **cell}, name,
                     teacher_sha256=sha, variant=name, iterations=iterations)  # fmt: skip


MIXED = {  # name: PTQConfig settings; activations at 8 bits isolate the weights (ZeroQ Tab. 3)
    "uniform4": {"bits": "w4a8"},
    "uniform3": {"bits": "w3a8"},
    "uniform2": {"bits": "w2a8"},
    "zeroq4": {"bits": "w8a8", "mixed_precision": 4.0},
    "zeroq3": {"bits": "w8a8", "mixed_precision": 3.0},
    "zeroq2.5": {"bits": "w8a8", "mixed_precision": 2.5},
    "zeroq3_2348": {"bits": "w8a8", "mixed_precision": 3.0, "mp_bits": "2,3,4,8"},
    "polino4": {"bits": "w8a8", "mixed_precision": 4.0, "mp_method": "polino"},
    "polino3": {"bits": "w8a8", "mixed_precision": 3.0, "mp_method": "polino"},
}


def stage_mixed(teacher: str, calibs: list[str], seed: int, only: list[str] | None = None) -> None:
    """ZeroQ's mixed precision (and Polino's allocation) against uniform weight bits at
    equal size, MSE observer, activations at 8 bits; the frontier of the first set as a
    PNG in docs/."""
    tpath = _teacher(teacher)
    for calib in calibs:
        for name, s in MIXED.items():
            if only and name not in only:
                continue
            settings = {k: v for k, v in s.items() if k != "bits"}
            t0 = time.perf_counter()
            rep = dd.quantize(tpath, calib, DATASET, bits=s["bits"], seed=seed, quiet=True,
                              device=DEVICE, observer="mse", **settings)  # fmt: skip
            wall = time.perf_counter() - t0
            row = rep["results"][0]
            mixed = row.get("mixed_precision_result")
            avg = mixed["average_bits"] if mixed else float(s["bits"][1])
            print(f"{teacher} {_calib_name(calib)} {name}: {row['quant_accuracy']:.2f} at "
                  f"{avg:.3f} average weight bits, {wall:.0f} s", flush=True)  # fmt: skip
            if mixed and name == "zeroq3" and calib == calibs[0]:
                from distill_data.quant.mixed import plot_report

                png = ROOT.parent / "docs" / f"mixed_frontier_{teacher}.png"
                plot_report(mixed, png)
                print(f"wrote {png}")
            write_result(
                f"mixed_{DATASET}_{teacher}_{_calib_name(calib)}_{name}_s{seed}{_tag()}",
                {
                    "benchmark": "mixed-precision",
                    "device": DEVICE,
                    "teacher_name": teacher,
                    "calib": calib,
                    "calib_name": _calib_name(calib),
                    "run": name,
                    "seed": seed,
                    "settings": {**s, "observer": "mse", "first_last_bits": 8},
                    "average_weight_bits": avg,
                    "wall_seconds": round(wall, 1),
                    "result": row,
                },
            )


FORMATS = {  # name: (bits, PTQConfig settings); integer rows use the min/max observer
    "int8": ("w8a8", {}),
    "fp8_e4m3": ("w8a8", {"w_format": "fp8_e4m3", "a_format": "fp8_e4m3"}),
    "fp8_e5m2": ("w8a8", {"w_format": "fp8_e5m2", "a_format": "fp8_e5m2"}),
    "int4": ("w4a8", {}),
    "fp4_e2m1": ("w4a8", {"w_format": "fp4_e2m1"}),
    "fp4_e2m1_nosearch": ("w4a8", {"w_format": "fp4_e2m1", "fp_search": False}),
}


def stage_formats(teacher: str, calibs: list[str], seed: int) -> None:
    """FP8 (E4M3, E5M2) W8A8 and FP4 (E2M1) W4A8 against integers of the same widths
    (min/max observer; FP activation scales from the LLM-FP4 search on the samples)."""
    tpath = _teacher(teacher)
    for calib in calibs:
        for name, (bits, settings) in FORMATS.items():
            t0 = time.perf_counter()
            rep = dd.quantize(tpath, calib, DATASET, bits=bits, seed=seed, quiet=True,
                              device=DEVICE, observer="minmax", **settings)  # fmt: skip
            wall = time.perf_counter() - t0
            row = rep["results"][0]
            print(f"{teacher} {_calib_name(calib)} {name} {bits}: {row['quant_accuracy']:.2f} "
                  f"(fp32 {row['fp32_accuracy']:.2f}), {wall:.0f} s", flush=True)  # fmt: skip
            write_result(
                f"formats_{DATASET}_{teacher}_{_calib_name(calib)}_{name}_s{seed}{_tag()}",
                {
                    "benchmark": "number-formats",
                    "device": DEVICE,
                    "teacher_name": teacher,
                    "calib": calib,
                    "calib_name": _calib_name(calib),
                    "run": name,
                    "seed": seed,
                    "settings": {"bits": bits, "observer": "minmax", **settings},
                    "wall_seconds": round(wall, 1),
                    "result": row,
                },
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", nargs="+", required=True,
                   choices=["methods", "mixed", "formats", "steps", "ablation"])  # fmt: skip
    p.add_argument("--teacher", default="resnet")
    p.add_argument("--calib", nargs="*", default=["real:256"])
    p.add_argument(
        "--data-free", nargs="+", default=[], metavar="METHOD:ITERATIONS",
        help="also calibrate on a ZeroQ / Genie set of --count images made from the teacher "
        "(built by bench/student.py's helper if missing), e.g. zeroq:100 genie:1000",
    )  # fmt: skip
    p.add_argument("--count", type=int, default=256, help="images of the --data-free sets")
    p.add_argument("--bits", nargs="+", default=["w4a4", "w3a3", "w2a4"])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--iterations", type=int, default=1000, help="reconstruction steps per block")
    p.add_argument("--steps", type=int, nargs="+", default=[1000, 20000],
                   help="--stage steps: the step counts per block to compare")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mixed", nargs="+", choices=list(MIXED), help="runs of --stage mixed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda (GPU rows are kept apart)")
    args = p.parse_args()
    global DEVICE
    DEVICE = args.device
    torch.set_num_threads(args.threads)
    tune_allocator()
    for spec in args.data_free:
        from student import _data_free_set

        method, _, its = spec.partition(":")
        args.calib.append(str(_data_free_set(args.teacher, method, args.count, int(its))))
    if "formats" in args.stage:
        stage_formats(args.teacher, args.calib, args.seed)
    if "mixed" in args.stage:
        stage_mixed(args.teacher, args.calib, args.seed, args.mixed)
    if "methods" in args.stage:
        stage_methods(args.teacher, args.calib, args.bits, args.methods, args.iterations,
                      args.seed)  # fmt: skip
    if "steps" in args.stage:
        stage_steps(args.teacher, args.calib, args.bits, args.methods, args.steps, args.seed)
    if "ablation" in args.stage:
        stage_ablation(args.teacher, args.calib, args.bits, args.iterations, args.seed)


if __name__ == "__main__":
    main()
