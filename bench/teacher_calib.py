"""Teacher-driven synthesis on mnist5k: data-free calibration for PTQ, and soft-label
condensation.

(a) A ResNet teacher is trained on the real data; ZeroQ and Genie make 256-image
    calibration sets from it alone; each is compared with 256 real training images and
    256 images of Gaussian noise by post-training quantization of the teacher at
    W8A8, W6A6, W4A8 and W4A4 (test accuracy on the 1,000 real test images, and the
    quantized network's fidelity to the float one on them: logit SQNR, agreement, KL).
(b) SRe2L and INFER sets at IPC 10 (and 50 with --ipc 10 50), evaluated with soft labels
    (knowledge distillation from the stored logits), against a random real subset at
    the same IPC relabelled by the same teacher(s) (INFER's two: the mean of their
    logits, as its stored labels are); ``--relabel online`` has the teacher(s) label
    every augmented batch instead (SRe2L's own protocol) for both.

    python bench/teacher_calib.py --stage teacher calib ptq
    # the README's PTQ tables: every stored set, each observer, the issue's widths and
    # the 2-3 bit ones, then every layer quantized (about 25 min on one CPU thread)
    for o in minmax percentile mse; do
      S="--stage ptq --observer $o --ptq-sets zeroq_256 genie_256 genie_256_gpu4000"
      python bench/teacher_calib.py $S --bits w8a8 w6a6 w4a8 w4a4 w4a2 w3a3 w2a4
      python bench/teacher_calib.py $S --first-last-bits none --tag _all-layers
    done
    python bench/teacher_calib.py --stage softlabel --ipc 10
    python bench/teacher_calib.py --stage cost --ipc 10   # SRe2L/INFER build s/image, RSS
    python bench/teacher_calib.py --stage softlabel --ipc 10 --relabel online
    python bench/teacher_calib.py --stage softlabel --soft-methods sre2l --ipc 10 \
        --set shift=translate --tag _cpu_translate   # a non-default generator setting
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, ensure_teacher, peak_rss_mib, reset_peak_rss, run_measured, write_result  # noqa: E402

import distill_data as dd  # noqa: E402
from distill_data.config import parse_set_options  # noqa: E402
from distill_data.evaluation.protocol import RECIPES  # noqa: E402
from distill_data.runtime import tune_allocator  # noqa: E402
from distill_data.store import read_store  # noqa: E402

DATASET = "mnist5k"
WORK = ROOT / ".work"  # teachers and sets (not committed)
BITS = ["w8a8", "w6a6", "w4a8", "w4a4"]
TEACHER = {"model": "resnet", "epochs": 15}
TEACHER2 = {"model": "convnet_bn", "epochs": 10, "width": 64}
CALIB = {
    "zeroq": {},  # paper/official defaults: 500 iterations per batch of 32
    "genie": {"iterations": 1000},  # official 4,000 per batch of 128: cut for this CPU
}


def stage_teacher(device: str) -> None:
    for name, cfg in (("resnet", TEACHER), ("convnet_bn", TEACHER2)):
        ensure_teacher(DATASET, name, cfg, WORK / f"teacher_{name}.pt", device)


def stage_calib(methods: list[str], device: str, tag: str = "", **overrides: dict) -> None:
    for method in methods:
        opts = {**CALIB[method], **overrides.get(method, {})}
        out = WORK / f"calib_{method}_256{tag}.h5"
        reset_peak_rss()  # the previous method's build in this process
        t0 = time.perf_counter()
        dd.build(
            None,
            method,
            None,
            out,
            teacher=WORK / "teacher_resnet.pt",
            count=256,
            options=opts,
            device=device,
            quiet=True,
        )
        secs = time.perf_counter() - t0
        meta = read_store(out).meta
        print(f"{method}: 256 images in {secs:.0f} s")
        write_result(
            f"calib_{DATASET}_{method}_256{tag}",
            {
                "benchmark": "calibration-set",
                "method": method,
                "count": 256,
                "device": device,
                "config": meta.config,
                "seconds": round(secs, 1),
                "seconds_per_image": round(secs / 256, 3),
                "peak_rss_mib_process": peak_rss_mib(),
            },
        )


def stage_ptq(
    observer: str,
    methods: list[str],
    bits: list[str],
    tag: str = "",
    first_last_bits: int | str | None = 8,
) -> None:
    calibs = [str(WORK / f"calib_{m}.h5") for m in methods] + ["real:256", "noise:256"]
    rep = dd.quantize(
        WORK / "teacher_resnet.pt",
        calibs,
        DATASET,
        bits=bits,
        observer=observer,
        first_last_bits=first_last_bits,
    )
    for r in rep["results"]:
        r["calib"] = Path(r["calib"]).name if r["calib"].endswith(".h5") else r["calib"]
        acc, fp = r["quant_accuracy"], r["fp32_accuracy"]
        print(f"{r['bits']} {r['calib']:<22} {acc:.2f} (fp32 {fp:.2f})")
    write_result(f"ptq_{DATASET}_resnet_{observer}{tag}", {"benchmark": "ptq-calibration", **rep})


SOFT_TEACHERS = {
    "sre2l": ["teacher_resnet.pt"],
    "infer": ["teacher_resnet.pt", "teacher_convnet_bn.pt"],
}


def stage_softlabel(
    ipcs: list[int],
    methods: list[str],
    runs: int,
    epochs: int,
    device: str,
    tag: str,
    relabel: str = "stored",
    resume: bool = False,
    recipe: str = "dc",
    reuse: bool = False,
    options: dict[str, str] | None = None,
    seed: int = 0,
) -> None:
    for ipc in ipcs:
        for method in methods:
            ts = [WORK / t for t in SOFT_TEACHERS[method]]
            online = "_online" if relabel == "online" else ""
            out = WORK / f"{method}_ipc{ipc}{tag}{online}.h5"  # runs may overlap
            # a build an earlier (killed) run checkpointed continues; its seconds then
            # cover only the rest, so no per-image time is reported for it
            resumed = resume and Path(f"{out}.ckpt.pt").is_file()
            reused = reuse and out.is_file()  # e.g. another recipe on the same set
            reset_peak_rss()  # an earlier set's build or evaluation in this process
            t0 = time.perf_counter()
            if reused:
                synset = read_store(out)
            else:
                synset = dd.build(
                    DATASET,
                    method,
                    ipc,
                    out,
                    teacher=ts,
                    options=options,
                    seed=seed,
                    device=device,
                    quiet=True,
                    resume=resume,
                )
            secs = None if reused else time.perf_counter() - t0
            build_rss = None if reused else peak_rss_mib()  # before the evaluation runs
            rep = dd.evaluate(
                out,
                DATASET,
                soft=True,
                teacher=ts,  # the set's own teachers: INFER's ensemble labels both
                baselines=["random"],
                relabel=relabel,
                recipe=recipe,
                runs=runs,
                epochs=epochs,
                device=device,
                quiet=True,
            )
            s, r = rep["results"]["synthetic"], rep["results"]["random"]
            print(
                f"{method} ipc={ipc}: {s['mean']:.2f} ± {s['std']:.2f} vs random+soft "
                f"{r['mean']:.2f} ± {r['std']:.2f} "
                + ("(set reused)" if secs is None else f"({secs:.0f} s to build)")
            )
            student = "" if recipe == "dc" else f"_{recipe}"
            write_result(
                f"softlabel_{DATASET}_{method}_ipc{ipc}{tag}{online}{student}",
                {
                    "benchmark": "soft-label",
                    "method": method,
                    "ipc": ipc,
                    "relabel": relabel,
                    "recipe": recipe,
                    "options": options or {},  # generator settings off their defaults
                    "seed": seed,
                    "label_teachers": len(ts),
                    "device": device,
                    "stored_images": len(synset),
                    "build_seconds": None if secs is None else round(secs, 1),
                    "seconds_per_image": (
                        None if resumed or secs is None else round(secs / len(synset), 3)
                    ),
                    "resumed_from_checkpoint": resumed,
                    "reused_set": reused,
                    "peak_rss_mib_build": build_rss,
                    "peak_rss_mib_process": peak_rss_mib(),  # since the reset: build + eval
                    "eval": rep,
                },
            )


def stage_cost(ipcs: list[int], methods: list[str], device: str, tag: str, note: str) -> None:
    """Generation cost of the soft-label sets alone: ``distill-data build`` in a child
    process, so its peak RSS is the build's and not an evaluation's."""
    for ipc in ipcs:
        for method in methods:
            out = WORK / f"cost_{method}_ipc{ipc}{tag}.h5"
            out.unlink(missing_ok=True)
            args = ["build", "-d", DATASET, "--method", method, "--ipc", str(ipc)]
            args += [a for t in SOFT_TEACHERS[method] for a in ("--teacher", str(WORK / t))]
            args += ["--out", str(out), "--device", device, "--quiet"]
            cost = run_measured(args)
            n = len(read_store(out))
            out.unlink()
            per_image = round(cost["seconds"] / n, 3)
            print(f"{method} ipc={ipc}: {n} images, {per_image:.2f} s/image")
            write_result(
                f"gencost_{DATASET}_{method}_ipc{ipc}{tag}",
                {
                    "benchmark": "generation-cost",
                    "method": method,
                    "ipc": ipc,
                    "device": device,
                    "teachers": SOFT_TEACHERS[method],
                    "stored_images": n,
                    "seconds": cost["seconds"],  # the child's wall time, start-up included
                    "seconds_per_image": per_image,
                    "peak_rss_mib_build": cost["peak_rss_mib"],
                    "note": note,
                },
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", nargs="+", default=["teacher", "calib", "ptq", "softlabel"])
    ap.add_argument("--ipc", type=int, nargs="+", default=[10])
    ap.add_argument("--observer", default="minmax")
    ap.add_argument(
        "--calib-methods",
        nargs="+",
        default=list(CALIB),
        help="generators the calib stage runs (zeroq, genie)",
    )
    ap.add_argument(
        "--ptq-sets",
        nargs="+",
        default=[f"{m}_256" for m in CALIB],
        help="stored sets (bench/.work/calib_NAME.h5) the ptq stage compares with real and noise",
    )
    ap.add_argument("--soft-methods", nargs="+", default=list(SOFT_TEACHERS))
    ap.add_argument(
        "--relabel",
        choices=["stored", "online"],
        default="stored",
        help="soft-label evaluation: the stored logits, or the teacher on every batch",
    )
    ap.add_argument("--genie-iterations", type=int, default=CALIB["genie"]["iterations"])
    ap.add_argument("--bits", nargs="+", default=BITS)
    ap.add_argument(
        "--first-last-bits",
        default="8",
        help="ptq: bits of the first conv and last linear layer, or 'none' to quantize "
        "them like the rest",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tag", default="", help="suffix of the result files")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument(
        "--recipe",
        choices=list(RECIPES),
        default="dc",
        help="softlabel: the students' training recipe (sre2l needs --relabel online; "
        "infer takes stored or online labels)",
    )
    ap.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="softlabel: a generator setting off its default (repeatable); give a --tag",
    )
    ap.add_argument("--seed", type=int, default=0, help="softlabel: the build seed; give a --tag")
    ap.add_argument("--note", default="", help="cost: recorded (e.g. other jobs on the CPU)")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="softlabel: evaluate the set an earlier run stored instead of building it again",
    )
    ap.add_argument(
        "--resume",
        action="store_true",
        help="softlabel: continue a set an earlier, stopped run checkpointed",
    )
    args = ap.parse_args()
    tune_allocator()  # as the CLI does (distill_data/runtime.py)
    WORK.mkdir(exist_ok=True)
    if "teacher" in args.stage:
        stage_teacher(args.device)
    if "calib" in args.stage:
        genie = {"iterations": args.genie_iterations}
        stage_calib(args.calib_methods, args.device, args.tag, genie=genie)
    if "ptq" in args.stage:
        stage_ptq(args.observer, args.ptq_sets, args.bits, args.tag, args.first_last_bits)
    if "cost" in args.stage:
        stage_cost(args.ipc, args.soft_methods, args.device, args.tag, args.note)
    if "softlabel" in args.stage:
        stage_softlabel(
            args.ipc,
            args.soft_methods,
            args.runs,
            args.epochs,
            args.device,
            args.tag,
            relabel=args.relabel,
            resume=args.resume,
            recipe=args.recipe,
            reuse=args.reuse,
            options=parse_set_options(args.sets),
            seed=args.seed,
        )


if __name__ == "__main__":
    main()
