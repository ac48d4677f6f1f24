"""Students on mnist5k: distillation, quantization-aware training (qat, lsq), Polino's
quantized distillation (qd) and differentiable quantization (dq), against post-training
quantization of the same student, with the shipped integer file's size and fidelity.

Teachers are the README's (``bench/teacher_calib.py``: a ResNet-20, 272k parameters,
and a ConvNet-BN of width 64, 85k); the students are ConvNet-BNs of at most a quarter
of their teacher's parameters (width 32: 24k; width 24 for the ConvNet-BN teacher:
15k). Every run is ``distill_data.api.train`` (the ``train`` command), final epoch,
seeds 0-2; one JSON file per run in ``bench/results/student_*.json``.

    python bench/student.py --stage teacher                   # the two teachers (~6 min)
    python bench/student.py --stage runs --runs float ce qd4 qd2 --seeds 0 1 2
    python bench/student.py --stage ptq --seeds 0 1 2         # bucketed / global PTQ of the
                                                              # float students
    python bench/student.py --stage sets --seeds 0 1 2        # from condensed sets (300 ep)
                                                              # and the full split
    python bench/student.py --stage zeroshot --zeroq-iterations 100 --seeds 0 1 2
                                   # zero-shot QAT of the teacher on a ZeroQ set, real:256
                                   # and noise:256, against PTQ on the same sets
    python bench/student.py --stage zeroshot --zs-sets genie --genie-iterations 1000
    python bench/student.py --stage zeroshot --count 1024 --zeroq-iterations 100

Runs (``--runs``), each with KD from the teacher at the ``student`` recipe unless named:
``float`` (KD), ``ce`` (plain cross-entropy, no teacher), ``qd4``/``qd2`` (Polino's
quantized distillation with Polino's loss), ``dq2`` (learned points from the distilled
float student; ``dq2w``: its weights trained with them), ``lsq44``/``lsq24`` (LSQ
W4A4 / W2A4), ``qat44`` (fake quant + STE, W4A4); ``--teacher convnet_bn`` uses the
second teacher.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    ROOT,
    ensure_teacher,
    peak_rss_mib,
    reset_peak_rss,
    weights_sha256,
    write_result,
)

import distill_data as dd  # noqa: E402
from distill_data.data import load_dataset  # noqa: E402
from distill_data.models import load_model  # noqa: E402
from distill_data.quant.qat import QuantSpec, quantize_  # noqa: E402
from distill_data.runtime import tune_allocator  # noqa: E402
from distill_data.train.student import test_logits  # noqa: E402

DATASET = "mnist5k"
WORK = ROOT / ".work"
#: where the zero-shot and set stages build, train and test (``--device``); GPU result
#: files are named ``..._cuda`` and say ``"device"``, so tables keep them apart
DEVICE = "cpu"


def _tag() -> str:
    return "" if DEVICE == "cpu" else "_" + DEVICE.replace(":", "")


STUDENTS = WORK / "students"
TEACHERS = {
    "resnet": {"model": "resnet", "epochs": 15},
    "convnet_bn": {"model": "convnet_bn", "epochs": 10, "width": 64},
}
STUDENT_WIDTH = {"resnet": 32, "convnet_bn": 24}
EPOCHS = 30  # --stage runs (the full split: 40 steps an epoch)
SET_EPOCHS = 300  # --stage sets (one to nine steps an epoch on 100-900 images)
RUNS = {
    "float": {},
    "ce": {"teacher": False, "kd": "none"},
    "qd4": {"quant": "qd", "bits": "w4", "kd": "polino"},
    "qd2": {"quant": "qd", "bits": "w2", "kd": "polino"},
    "dq2": {"quant": "dq", "bits": "w2", "kd": "polino", "from_float": True},
    # the same with the weights trained too (straight-through, as qd) beside the points
    "dq2w": {"quant": "dq", "bits": "w2", "kd": "polino", "from_float": True, "dq_weights": True},
    "lsq44": {"quant": "lsq", "bits": "w4a4"},
    "lsq24": {"quant": "lsq", "bits": "w2a4"},
    "qat44": {"quant": "qat", "bits": "w4a4"},
}


def teacher_path(name: str) -> Path:
    return WORK / f"teacher_{name}.pt"


def stage_teacher(names: list[str]) -> None:
    for name in names:
        ensure_teacher(DATASET, name, TEACHERS[name], teacher_path(name))


def student_path(teacher: str, run: str, seed: int) -> Path:
    return STUDENTS / f"{teacher}_{run}_s{seed}.pt"


def stage_runs(teacher: str, runs: list[str], seeds: list[int], epochs: int) -> None:
    STUDENTS.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        for run in runs:
            cfg = dict(RUNS[run])
            use_teacher = cfg.pop("teacher", True)
            kd = cfg.pop("kd", None)
            run_epochs = cfg.pop("epochs", epochs)
            from_float = cfg.pop("from_float", False)
            student = {"width": STUDENT_WIDTH[teacher], "seed": seed, **cfg}
            extra = {}
            if from_float:  # Polino's Alg. 2 starts from the trained float student
                base = student_path(teacher, "float", seed)
                if not base.exists():
                    raise SystemExit(f"{run} needs the float student {base}: run 'float' first")
                extra["teacher_start"] = str(base)
            out = student_path(teacher, run, seed)
            reset_peak_rss()
            t0 = time.perf_counter()
            if from_float:
                rep = _dq_from_float(teacher, base, out, student, kd, run_epochs)
            else:
                rep = dd.train(
                    DATASET,
                    out,
                    teacher=teacher_path(teacher) if use_teacher else None,
                    kd=kd,
                    options={"epochs": run_epochs},
                    quiet=True,
                    force=True,
                    **student,
                )
            wall = time.perf_counter() - t0
            q = rep.get("integer_student")
            line = f"{teacher} {run} seed {seed}: {rep['test_accuracy']:.2f}%"
            if q:
                line += f" (float {rep['float_test_accuracy']:.2f}, {q['compression']}x)"
            print(line + f", {rep['seconds_per_epoch']:.2f} s/epoch", flush=True)
            write_result(
                f"student_{DATASET}_{teacher}_{run}_s{seed}",
                {
                    "benchmark": "student",
                    "teacher_name": teacher,
                    "run": run,
                    "seed": seed,
                    "settings": {"student": student, "kd": kd, "epochs": run_epochs, **extra},
                    "wall_seconds": round(wall, 1),
                    "peak_rss_mib": peak_rss_mib(),
                    "threads": torch.get_num_threads(),
                    "report": rep,
                },
            )


def _dq_from_float(teacher: str, base: Path, out: Path, student: dict, kd, epochs) -> dict:
    """dq on the distilled float student: only the points learn (its weights fixed,
    Polino's Alg. 2), or the weights too with ``dq_weights``."""
    return dd.train(
        DATASET,
        out,
        teacher=[teacher_path(teacher)],
        kd=kd,
        options={"epochs": epochs},
        quiet=True,
        force=True,
        init=str(base),
        **student,
    )


def stage_ptq(teacher: str, seeds: list[int]) -> None:
    """Post-training uniform quantization of the distilled float student's weights,
    Polino's baselines: per bucket of 256 and one global scale, at 4 and 2 bits."""
    data = load_dataset(DATASET)
    for seed in seeds:
        model, _ = load_model(student_path(teacher, "float", seed))
        rows = []
        for bits in (4, 2):
            for bucket in (256, None):
                q = quantize_(
                    copy.deepcopy(model),
                    QuantSpec(method="qd", w_bits=bits, a_bits=None, bucket_size=bucket),
                )
                logits = test_logits(q, data, torch.device("cpu"))
                acc = 100.0 * float((logits.argmax(1) == data.y_test).float().mean())
                rows.append({"bits": bits, "bucket_size": bucket, "test_accuracy": acc})
                print(f"{teacher} PTQ seed {seed} w{bits} bucket {bucket}: {acc:.2f}")
        write_result(
            f"student_{DATASET}_{teacher}_ptq_s{seed}",
            {
                "benchmark": "student-ptq",
                "teacher_name": teacher,
                "seed": seed,
                "settings": {"first_last_bits": 8, "method": "Polino uniform, no training"},
                "results": rows,
            },
        )


ZS_BITS = ("w4a4", "w2a4")


def _data_free_set(teacher: str, method: str, count: int, iterations: int) -> Path:
    """The stored ZeroQ or Genie set of ``count`` images made from the teacher alone."""
    path = WORK / f"{method}_{teacher}_{count}_it{iterations}.h5"
    if not path.exists():
        reset_peak_rss()
        t0 = time.perf_counter()
        dd.build(None, method, None, path, teacher=teacher_path(teacher), count=count,
                 options={"iterations": iterations}, quiet=True, device=DEVICE)  # fmt: skip
        wall = time.perf_counter() - t0
        print(f"{method} {count} images, {iterations} it/batch: {wall:.0f} s", flush=True)
        write_result(
            f"zeroshotset_{DATASET}_{teacher}_{method}{count}_it{iterations}{_tag()}",
            {
                "benchmark": "zero-shot-set-cost",
                "device": DEVICE,
                "teacher_name": teacher,
                "method": method,
                "count": count,
                "settings": {"iterations": iterations},
                "wall_seconds": round(wall, 1),
                "seconds_per_image": round(wall / count, 3),
                "peak_rss_mib": peak_rss_mib(),
                "threads": torch.get_num_threads(),
            },
        )
    return path


def stage_zeroshot(teacher: str, seeds: list[int], count: int, kinds: list[str],
                   iterations: dict[str, int], bits_list: list[str],
                   per_channel: bool = False, step_init: str = "mse",
                   freeze_weights: bool = False) -> None:  # fmt: skip
    """Zero-shot QAT: the teacher itself, LSQ-quantized and fine-tuned (``zsqat``: KD at
    T = 4 from its float self plus feature MSE, weight 1) on a ZeroQ or Genie set made
    from it alone, against the same run on ``real:N`` and ``noise:N`` and against PTQ of
    the teacher calibrated on each (MSE observer, first/last layer 8-bit, weights per
    output channel). ``per_channel``: LSQ learns a weight step per output channel too
    (result files ``..._pc``), the PTQ baseline's granularity; default the paper's one
    step per tensor. ``step_init``: the steps start at the least-MSE clipping (``mse``,
    the library's default for a trained start: where the PTQ baseline starts; result
    files ``..._mse``) or at the paper's ``2·mean|v|/√Q_P`` (``lsq``; the files without
    the suffix, run before the MSE start existed). ``freeze_weights``: the weights keep
    the teacher's values and only the steps, biases and BatchNorm train (files ``_fw``)."""
    tpath = teacher_path(teacher)
    sets = {}
    for kind in kinds:
        if kind in ("zeroq", "genie"):
            sets[kind] = str(_data_free_set(teacher, kind, count, iterations[kind]))
        else:
            sets[kind] = f"{kind}:{count}"
    ptq = dd.quantize(tpath, list(sets.values()), DATASET, bits=list(bits_list), observer="mse",
                      device=DEVICE)  # fmt: skip
    pc = ("_pc" if per_channel else "") + ("_mse" if step_init == "mse" else "")
    pc += "_fw" if freeze_weights else ""
    for seed in seeds:
        for name, spec in sets.items():
            for bits in bits_list:
                out = STUDENTS / f"zs_{teacher}_{name}{count}_{bits}{pc}_s{seed}.pt"
                rep = dd.train(DATASET, out, data=spec, teacher=tpath, init="teacher",
                               quant="lsq", bits=bits, recipe="zsqat", feature_weight=1.0,
                               per_channel=per_channel, step_init=step_init,
                               freeze_weights=freeze_weights, seed=seed,
                               quiet=True, force=True,
                               device=DEVICE)  # fmt: skip
                cal = next(r for r in ptq["results"] if r["bits"] == bits and r["calib"] == spec)
                print(f"zero-shot {name} {bits} seed {seed}: {rep['test_accuracy']:.2f}% "
                      f"(PTQ {cal['quant_accuracy']:.2f})", flush=True)  # fmt: skip
                write_result(
                    f"zeroshot_{DATASET}_{teacher}_{name}{count}_{bits}{pc}_s{seed}{_tag()}",
                    {
                        "benchmark": "zero-shot-qat",
                        "device": DEVICE,
                        "teacher_name": teacher,
                        "set": name,
                        "count": count,
                        "bits": bits,
                        "seed": seed,
                        "settings": {
                            "zeroq_iterations": iterations.get(name),  # (also genie's)
                            "quant": "lsq",
                            "lsq_weights": "per channel" if per_channel else "per tensor",
                            "lsq_step_init": step_init,
                            "lsq_freeze_weights": freeze_weights,
                            "recipe": "zsqat",
                            "feature_weight": 1.0,
                            "ptq_observer": "mse",
                        },
                        "ptq_accuracy": cal["quant_accuracy"],
                        "fp32_accuracy": cal["fp32_accuracy"],
                        "report": rep,
                    },
                )


# --stage sets: name -> (method, IPCs, build options); DM at 200 iterations (its default
# 20,000: 11 h here)
SETS = {
    "random": ("random", [10, 50], {}),
    "herding": ("herding", [10, 50], {}),
    "dm": ("dm", [10, 50], {"iterations": 200}),
    "infer": (
        "infer",
        [10, 50],
        {},
    ),  # from the teacher (its defaults; soft labels unused: KD online)
    # its pool (20 ConvNets x 60 epochs) is hours on this CPU: a GPU row (bench/gpu.sh),
    # not in the default --sets; 1000 iterations as bench/matching.py's NCFM rows. On a
    # CPU over several sittings: fill the pool with bench/ncfm_pool.py (each finished
    # network is cached) and build with the same DISTILL_DATA_CACHE; builds resume.
    "ncfm": ("ncfm", [10, 50], {"iterations": 1000}),
    # what fits a CPU sitting: a pool of 5 ConvNets x 20 epochs (1/12 of the default's
    # training) and 200 iterations, as DM's row; labelled with its settings in the table
    "ncfm_cpu": ("ncfm", [10, 50], {"iterations": 200, "pool_size": 5, "pretrain_epochs": 20}),
    # the reference: the same student distilled from the same teacher on the whole
    # training split (EPOCHS epochs, as --stage runs' float student)
    "full": (None, [None], {}),
}
GPU_SETS = ("ncfm",)
TEACHER_DRIVEN = ("infer", "sre2l")


def stage_sets(
    teacher: str, seeds: list[int], epochs: int, names: list[str], only_ipc: list[int] | None
) -> None:
    """Students distilled from the teacher on stored condensed sets: the downstream use
    of a set (accuracy against the images it costs), float KD students of the ``student``
    recipe at ``epochs`` (one step per epoch on 100 images, so more epochs than on the
    full split), and the same student from the whole training split at ``EPOCHS``."""
    weights = weights_sha256(teacher_path(teacher))
    for name, (method, ipcs, opts) in SETS.items():
        if name not in names:
            continue
        for ipc in ipcs if not only_ipc or method is None else [i for i in ipcs if i in only_ipc]:
            store = None if method is None else WORK / f"set_{name}_ipc{ipc}.h5"
            if store is not None and not store.exists():
                t0 = time.perf_counter()
                by = {"teacher": teacher_path(teacher)} if method in TEACHER_DRIVEN else {}
                # resume: a long build (NCFM on a CPU) killed at a stop continues next time
                dd.build(DATASET, method, ipc, store, options=opts, quiet=True, device=DEVICE,
                         resume=True, **by)  # fmt: skip
                print(f"{name} ipc {ipc}: built in {time.perf_counter() - t0:.0f} s", flush=True)
            run_epochs = EPOCHS if method is None else epochs
            for seed in seeds:
                what = "full" if method is None else f"{name}{ipc}"
                out = STUDENTS / f"set_{teacher}_{what}_s{seed}.pt"
                rep = dd.train(DATASET, out, data=None if store is None else str(store),
                               teacher=teacher_path(teacher), width=STUDENT_WIDTH[teacher],
                               seed=seed, device=DEVICE, options={"epochs": run_epochs},
                               quiet=True, force=True)  # fmt: skip
                print(f"set {what} seed {seed}: {rep['test_accuracy']:.2f}%", flush=True)
                what = "full" if method is None else f"{name}_ipc{ipc}"
                write_result(  # named by the teacher's weights: a retrained one adds files
                    f"studentset_{DATASET}_{teacher}_{what}_s{seed}_t{weights[:8]}{_tag()}",
                    {
                        "benchmark": "student-from-set",
                        "device": DEVICE,
                        "teacher_name": teacher,
                        "teacher_weights_sha256": weights,
                        "set": name,
                        "method": method or "full",
                        "ipc": ipc,
                        "seed": seed,
                        "settings": {"build": opts, "epochs": run_epochs, "kd": "student recipe"},
                        "report": rep,
                    },
                )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--stage",
        nargs="+",
        required=True,
        choices=["teacher", "runs", "ptq", "zeroshot", "sets"],
    )
    p.add_argument("--teacher", default="resnet", choices=list(TEACHERS))
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None,
                   help=f"student epochs ({EPOCHS} for runs, {SET_EPOCHS} for sets)")  # fmt: skip
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--count", type=int, default=256, help="images of the zero-shot sets")
    p.add_argument("--ipc", type=int, nargs="+", default=None,
                   help="only these IPCs of --stage sets (default: each set's)")  # fmt: skip
    p.add_argument("--sets", nargs="+", default=[m for m in SETS if m not in GPU_SETS],
                   choices=list(SETS), help="condensed sets of --stage sets (default: all "
                   f"but {', '.join(GPU_SETS)}, a GPU job)")  # fmt: skip
    p.add_argument(
        "--zeroq-iterations", type=int, default=500, help="ZeroQ's per batch (paper: 500)"
    )
    p.add_argument(
        "--genie-iterations", type=int, default=1000, help="Genie's per batch (paper: 4000)"
    )
    p.add_argument(
        "--zs-sets", nargs="+", default=["zeroq", "real", "noise"],
        choices=["zeroq", "genie", "real", "noise"], help="zero-shot training sets",
    )  # fmt: skip
    p.add_argument("--zs-bits", nargs="+", default=list(ZS_BITS), choices=list(ZS_BITS),
                   help="bit widths of --stage zeroshot")  # fmt: skip
    p.add_argument("--per-channel", action="store_true",
                   help="zero-shot LSQ with a weight step per output channel")  # fmt: skip
    p.add_argument(
        "--step-init",
        default="mse",
        choices=["mse", "lsq"],
        help="zero-shot LSQ steps start at the least-MSE clipping (mse, the "
        "library's default from a trained network) or the paper's rule (lsq)",
    )
    p.add_argument("--freeze-weights", action="store_true",
                   help="zero-shot LSQ trains the steps, biases and BatchNorm only")  # fmt: skip
    p.add_argument("--device", default="cpu",
                   help="cpu or cuda, for --stage zeroshot and sets")  # fmt: skip
    args = p.parse_args()
    global DEVICE
    DEVICE = args.device
    torch.set_num_threads(args.threads)
    tune_allocator()
    if "teacher" in args.stage:
        stage_teacher([args.teacher])
    if "runs" in args.stage:
        stage_runs(args.teacher, args.runs, args.seeds, args.epochs or EPOCHS)
    if "ptq" in args.stage:
        stage_ptq(args.teacher, args.seeds)
    if "sets" in args.stage:
        STUDENTS.mkdir(parents=True, exist_ok=True)
        stage_sets(args.teacher, args.seeds, args.epochs or SET_EPOCHS, args.sets, args.ipc)
    if "zeroshot" in args.stage:
        STUDENTS.mkdir(parents=True, exist_ok=True)
        its = {"zeroq": args.zeroq_iterations, "genie": args.genie_iterations}
        stage_zeroshot(args.teacher, args.seeds, args.count, args.zs_sets, its, args.zs_bits,
                       args.per_channel, args.step_init, args.freeze_weights)  # fmt: skip


if __name__ == "__main__":
    main()
