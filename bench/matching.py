"""Accuracy of the matching generators on mnist5k, and accuracy against wall-clock.

Runs one generator in-process and evaluates snapshots of its synthetic set after the
requested iteration counts (3 freshly trained ConvNets x 300 epochs each, final epoch,
mean ± std), recording the build's wall-clock seconds up to each snapshot (evaluation
time excluded).

    python bench/matching.py --method dm --ipc 10 --evals 0 100
    python bench/matching.py --method datadam --ipc 10 --evals 50 200 1000
    python bench/matching.py --method dm --ipc 10 --evals 100 --set precision=bf16 --tag bf16
    python bench/matching.py --method random --ipc 10 --evals 0 --device cuda --tag gpu
    python bench/matching.py --method dm --ipc 10 --evals 1000 8000 --resume   # over sittings

Coreset methods (random, herding, kcenter) are not iterative: give ``--evals 0``. The
``random`` row draws a fresh subset per evaluation model, like ``eval --baseline random``.
``--device cuda`` runs build and evaluation on the GPU (accuracy only: speed targets are
measured on CPU by ``bench/matching_speed.py``); the device is recorded in the result.
``--resume`` keeps a checkpoint in ``bench/.work/matching/`` (every ``--checkpoint-every``
iterations and at every evaluated point) and continues a killed run from it: the same
images as an uninterrupted run, the points already evaluated kept, the build seconds
summed over sittings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import RESULTS, ROOT, peak_rss_mib, write_result  # noqa: E402

from distill_data.config import config_to_dict, make_config, parse_set_options  # noqa: E402
from distill_data.data import load_dataset  # noqa: E402
from distill_data.evaluation import EvalConfig, evaluate_set  # noqa: E402
from distill_data.evaluation.evaluate import random_baseline_subset  # noqa: E402
from distill_data.runtime import allocator_tuned, tune_allocator  # noqa: E402
from distill_data.store.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
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
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--note", default="", help="recorded in the result (e.g. shared GPU)")
    ap.add_argument(
        "--skip-done",
        action="store_true",
        help="exit if the result file already holds every requested point",
    )
    ap.add_argument(
        "--resume",
        action="store_true",
        help="checkpoint in bench/.work/matching/ and continue a stopped run from it",
    )
    ap.add_argument("--checkpoint-every", type=int, default=100)
    args = ap.parse_args()
    tune_allocator()  # as the CLI does (distill_data/runtime.py)

    cls = GENERATORS.get(args.method)
    if not cls.iterative and args.evals != [0]:
        ap.error(f"{args.method} is not iterative: use --evals 0")
    opts = parse_set_options(args.sets)
    if cls.iterative:
        opts["iterations"] = max(args.evals)
    cfg = make_config(cls.Config, opts)
    if args.skip_done and (done := result_path(args)).is_file():
        old = json.loads(done.read_text())
        have = {p["iterations"] for p in old["curve"]}
        # a result of other settings (e.g. from before a default changed) is redone
        if set(args.evals) <= have and old["config"] == config_to_dict(cfg):
            print(f"{done.name}: already done")
            return
    data = load_dataset(DATASET)
    ecfg = EvalConfig(runs=args.runs, epochs=args.epochs, seed=0)
    gen = cls(cfg, data, args.ipc, seed=args.seed, device=args.device)
    resample = None
    if args.method == "random":  # the baseline's protocol: a fresh subset per model

        def resample(run: int):
            return random_baseline_subset(data, args.ipc, ecfg, run)

    gen.quiet = False
    t0 = time.perf_counter()
    gen.setup()
    build_s = time.perf_counter() - t0
    step_s: list[float] = []
    points: list[dict] = []
    it = 0
    ckpt = checkpoint_path(args)
    sig = {
        "method": args.method,
        "ipc": args.ipc,
        "seed": args.seed,
        "device": args.device,
        "config": json.dumps(config_to_dict(cfg), sort_keys=True),
        "eval": json.dumps(ecfg.__dict__, sort_keys=True),
        "evals": sorted(set(args.evals)),
    }
    if args.resume and ckpt.is_file():
        saved = load_checkpoint(ckpt)
        if saved.get("signature") != sig:
            sys.exit(f"{ckpt} is of another run (settings differ); delete it to start afresh")
        gen.load_state_dict(saved["state"])
        gen.rng.set_state(saved["rng"])
        it, build_s, step_s = saved["iteration"], saved["build_seconds"], saved["step_seconds"]
        points = [p for p in json.loads(saved["points"]) if p["iterations"] in args.evals]
        print(f"resuming from iteration {it} ({ckpt}), {len(points)} point(s) kept", flush=True)

    def checkpoint() -> None:
        if args.resume:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(ckpt, {
                "signature": sig, "iteration": it, "build_seconds": build_s,
                "step_seconds": step_s, "points": json.dumps(points),
                "state": gen.state_dict(), "rng": gen.rng.get_state(),
            })  # fmt: skip

    for target in sorted(set(args.evals)):
        if any(p["iterations"] == target for p in points):
            continue  # evaluated in an earlier sitting
        while it < target:
            t = time.perf_counter()
            gen.step(it)
            dt = time.perf_counter() - t
            step_s.append(dt)
            build_s += dt
            it += 1
            if it % 10 == 0:
                print(f"{args.method} ipc={args.ipc} it={it} {dt:.2f}s/it", flush=True)
            if it % args.checkpoint_every == 0 and it < target:
                checkpoint()
        images, labels, _ = gen.result()
        res = evaluate_set(
            images,
            labels,
            data,
            ecfg,
            f"{args.method}@{it}",
            device=args.device,
            quiet=True,
            resample=resample,
        )
        print(
            f"  after {it} iterations ({build_s:.0f} s): {res['mean']:.2f} ± {res['std']:.2f}",
            flush=True,
        )
        points.append({"iterations": it, "build_seconds": round(build_s, 1), "accuracy": res})
        # written after every point, so a run stopped early keeps the points it reached
        save(args, cfg, ecfg, data, step_s, points)
        checkpoint()
    if args.resume:
        ckpt.unlink(missing_ok=True)  # the run is complete


def result_path(args) -> Path:
    tag = f"_{args.tag}" if args.tag else ""
    return RESULTS / f"matching_{DATASET}_{args.method.replace('+', '-')}_ipc{args.ipc}{tag}.json"


def checkpoint_path(args) -> Path:
    return ROOT / ".work" / "matching" / f"{result_path(args).stem}.ckpt.pt"


def save(args, cfg, ecfg, data, step_s: list[float], points: list[dict]) -> None:
    name = result_path(args).stem
    sorted_steps = sorted(step_s)
    write_result(
        name,
        {
            "benchmark": "matching-accuracy",
            "dataset": DATASET,
            "method": args.method,
            "ipc": args.ipc,
            "seed": args.seed,
            "device": args.device,
            "allocator_tuned": allocator_tuned(),
            "config": config_to_dict(cfg),
            "eval": {**ecfg.__dict__, "dsa_strategy": ecfg.strategy(data)},
            "iterations_planned": max(args.evals),
            "s_per_iter_median": sorted_steps[len(sorted_steps) // 2] if step_s else None,
            "peak_rss_mib_process": peak_rss_mib(),
            **(
                {"peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
                if args.device.startswith("cuda")
                else {}
            ),
            **({"note": args.note} if args.note else {}),
            "curve": points,
        },
    )


if __name__ == "__main__":
    main()
