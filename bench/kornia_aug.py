"""kornia in the training pipelines: is anything slower or less accurate?

Issue 14 (section 4) moved the augmentation of *training* onto kornia (teacher and
student pipelines: crops, flip, colour jitter, mixup/CutMix; SRe2L's and INFER's crop
and flip; ``load(augment=...)``) and kept the hand-written DSA in the matching loop.
The "old" code is the tree at BASE, before that change.

    OMP_NUM_THREADS=1 python bench/kornia_aug.py --stage speed            # ~3 min
    python bench/kornia_aug.py --stage teacher --seed 0                    # ~4 min each
    python bench/kornia_aug.py --stage teacher --seed 1
    python bench/kornia_aug.py --stage recipe --recipe sre2l --variant dsa # 6-9 min each
    python bench/kornia_aug.py --stage recipe --recipe sre2l --variant random_crop
    python bench/kornia_aug.py --stage recipe --recipe sre2l --variant random_crop --mix cutmix
    python bench/kornia_aug.py --stage recipe --recipe infer --variant dsa
    python bench/kornia_aug.py --stage recipe --recipe infer --variant random_crop

speed: per-batch CPU time on one thread (median of repeats) for 256x1x28x28 and
  256x3x32x32: SRe2L's random view (old slice+interpolate vs kornia crop/flip, forward
  and backward, plus a bit-for-bit check over seeds); a training batch's augmentation
  (DSA, what teachers and students used, vs the kornia pipelines); mixup (old inline
  code vs the pipeline's function) and CutMix; DSA's warps vs kornia's warp_affine on
  the same matrices (forward and backward, the matching loop's use); and one item of
  ``load(augment=...)`` (per-image DSA vs the kornia pipeline).
teacher: a convnet_bn teacher (width 64, 10 epochs, the soft-label benchmark's second
  teacher) on mnist5k with DSA (the default; at seed 0 it is the stored
  teacher_mnist5k_convnet_bn.json run) and with the ``random_crop`` pipeline.
recipe: the ``sre2l`` (teacher labels every mixed batch) and ``infer`` (stored logits,
  mixed with the images) student recipes on the random-subset baseline of the
  soft-label benchmark (IPC 10, a fresh subset per run, labelled by the seed-0 DSA
  teacher of the teacher stage, T = 30), 3 runs x 300 epochs: DSA (the recipes' default)
  against the official code's RandomCrop(padding=4) on kornia, and mixup against CutMix.
"""

from __future__ import annotations

import argparse
import ast
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import kornia
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, write_result  # noqa: E402

from distill_data.augment import (  # noqa: E402
    DSA,
    AugmentPipeline,
    PerSampleAugment,
    PerSampleDSA,
    apply_mix,
    apply_rotate,
    apply_scale,
    sample_mix,
    strategy_for,
)
from distill_data.data import load_dataset  # noqa: E402
from distill_data.evaluation.evaluate import random_baseline_subset  # noqa: E402
from distill_data.evaluation.protocol import EvalConfig, evaluate_set  # noqa: E402
from distill_data.synth.sre2l import random_view  # noqa: E402
from distill_data.train.teacher import TeacherConfig, load_teacher, train_teacher  # noqa: E402

#: the commit before kornia came back: the "old" implementation
BASE = "54d5575"
DATASET = "mnist5k"
WORK = ROOT / ".work" / "kornia"
SHAPES = [(256, 1, 28, 28), (256, 3, 32, 32)]
TEACHER = {"model": "convnet_bn", "epochs": 10, "width": 64}
TEMPERATURE = 30.0


# ----------------------------------------------------------------------------- speed


def old_random_view():
    """``random_view`` as BASE has it, compiled from ``git show`` (only the function: the
    old module would register the generator a second time)."""
    src = subprocess.run(
        ["git", "show", f"{BASE}:distill_data/synth/sre2l.py"],
        cwd=ROOT.parent,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    fn = next(
        n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == "random_view"
    )
    namespace = {"torch": torch, "F": F, "math": math}
    exec(compile(ast.Module([fn], []), "old_sre2l", "exec"), namespace)
    return namespace["random_view"]


REPS = 15


def per_call_ms(fns: dict, calls: int = 20) -> dict:
    """Milliseconds per call of each function: the median over REPS rounds of the mean
    of ``calls`` calls, the functions interleaved within each round (in a rotating
    order) so that load from other jobs on the shared CPU hits them alike."""
    names = list(fns)
    for name in names:
        for _ in range(3):
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(REPS):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            for _ in range(calls):
                fns[name]()
            times[name].append((time.perf_counter() - t0) / calls)
    return {name: round(1e3 * statistics.median(t), 4) for name, t in times.items()}


def kornia_affine(linear: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """kornia's pixel-space src->dst matrix of DSA's normalised output->input map."""
    n = linear.shape[0]
    lin = linear.double()
    d = torch.diag(torch.tensor([2.0 / (w - 1), 2.0 / (h - 1)], dtype=torch.float64))
    d_inv = torch.linalg.inv(d)
    ones = torch.ones(2, 1, dtype=torch.float64)
    m = torch.zeros(n, 3, 3, dtype=torch.float64)
    m[:, 2, 2] = 1.0
    m[:, :2, :2] = d_inv @ lin @ d
    m[:, :2, 2:] = d_inv @ (ones - lin @ ones)
    return torch.linalg.inv(m)[:, :2, :].float()


def speed_row(shape: tuple[int, ...], old_view) -> dict:
    """The timings of one batch shape (see the module docstring)."""
    from kornia.geometry.transform import warp_affine

    n, c, h, w = shape
    digits = c == 1
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    row: dict = {"shape": list(shape), "data": "digits" if digits else "natural"}

    # SRe2L / INFER's random view: crop on (min scale 0.08), flip, roll 4
    xg = x.clone().requires_grad_(True)
    view_args = (4, True, 0.08, "roll")
    identical = all(
        torch.equal(
            random_view(x, torch.Generator().manual_seed(s), *view_args),
            old_view(x, torch.Generator().manual_seed(s), *view_args),
        )
        for s in range(20)
    )

    def view(fn, xg=xg):
        fn(xg, torch.Generator().manual_seed(1), *view_args).sum().backward()

    ms = per_call_ms({"old": lambda: view(old_view), "new": lambda: view(random_view)})
    row["random_view"] = {
        "settings": "crop_min_scale 0.08, flip, jitter 4 roll; forward + backward",
        "old_ms": ms["old"],
        "new_ms": ms["new"],
        "bitwise_identical_20_seeds": identical,
    }

    # a training batch's augmentation: DSA (old teachers/students) vs kornia pipelines
    g = torch.Generator().manual_seed(2)
    dsa = DSA(strategy_for(digits))
    aug = {"old_dsa_" + dsa.strategy: lambda: dsa(x, generator=g)}
    for name in ("random_crop", "resized_crop", "resized_crop_jitter"):
        pipe = AugmentPipeline.preset(name, is_digits=digits, mean=[0.5] * c, std=[0.25] * c)
        aug[f"new_{name}"] = lambda pipe=pipe: pipe(x, generator=g)
    row["train_batch_augment_ms"] = per_call_ms(aug)

    # mixing: the old inline mixup of fit() vs the pipeline's; CutMix
    def old_mix():
        lam = 0.7
        partner = torch.randperm(n, generator=g)
        return lam * x + (1 - lam) * x[partner]

    def new_mix(kind):
        return apply_mix(x, sample_mix(kind, n, h, w, 0.7, g))

    row["mix_ms"] = per_call_ms(
        {
            "old_mixup": old_mix,
            "new_mixup": lambda: new_mix("mixup"),
            "new_cutmix": lambda: new_mix("cutmix"),
        }
    )

    # DSA's warps vs kornia warp_affine on the same matrices (matching-loop use)
    sx = 0.9 + 0.3 * torch.rand(n, generator=g)
    sy = 0.9 + 0.3 * torch.rand(n, generator=g)
    lin = torch.zeros(n, 2, 2)
    lin[:, 0, 0], lin[:, 1, 1] = sx, sy
    mat = kornia_affine(lin, h, w)
    deg = 30 * torch.rand(n, generator=g) - 15
    t = torch.deg2rad(deg)
    rot = torch.stack(
        [torch.stack([t.cos(), -t.sin()], -1), torch.stack([t.sin(), t.cos()], -1)], -2
    )
    rmat = kornia_affine(rot, h, w)

    def fb(fn):
        return lambda: fn().sum().backward()

    row["dsa_warp_fwd_bwd_ms"] = per_call_ms(
        {
            "dsa_scale": fb(lambda: apply_scale(xg, sx, sy)),
            "kornia_scale": fb(lambda: warp_affine(xg, mat, (h, w), align_corners=True)),
            "dsa_rotate": fb(lambda: apply_rotate(xg, deg)),
            "kornia_rotate": fb(lambda: warp_affine(xg, rmat, (h, w), align_corners=True)),
        }
    )
    row["dsa_warp_max_abs_diff_scale_randn_input"] = float(
        (apply_scale(x, sx, sy) - warp_affine(x, mat, (h, w), align_corners=True)).abs().max()
    )

    # one item of load(augment=...): per-image DSA vs the kornia pipeline
    item = x[0]
    per_dsa = PerSampleDSA(strategy_for(digits))
    per_k = PerSampleAugment(
        AugmentPipeline.preset("random_crop", is_digits=digits, mean=0.5, std=0.25)
    )
    row["load_item_ms"] = per_call_ms(
        {"old_dsa": lambda: per_dsa(item), "new_random_crop": lambda: per_k(item)}, calls=200
    )
    print(row, flush=True)
    return row


def stage_speed() -> None:
    torch.set_num_threads(1)
    old_view = old_random_view()
    rows = [speed_row(shape, old_view) for shape in SHAPES]
    write_result(
        "kornia_speed",
        {
            "benchmark": "kornia-speed",
            "base_commit": BASE,
            "kornia": kornia.__version__,
            "device": "cpu",
            "threads": torch.get_num_threads(),
            "timing": f"median over {REPS} rounds of the mean of 20 calls (200 for load "
            "items), the compared functions interleaved in each round, after 3 warm-up "
            "calls; milliseconds",
            "rows": rows,
        },
    )


# ----------------------------------------------------------------------------- accuracy


def teacher_path(variant: str, seed: int) -> Path:
    return WORK / f"teacher_{variant}_s{seed}.pt"


def stage_teacher(seed: int, variants: list[str]) -> None:
    torch.set_num_threads(1)
    WORK.mkdir(parents=True, exist_ok=True)
    data = load_dataset(DATASET, progress=False)
    out = {}
    for variant in variants:
        cfg = TeacherConfig(**TEACHER, seed=seed, pipeline=None if variant == "dsa" else variant)
        rep = train_teacher(data, cfg, teacher_path(variant, seed), quiet=True)
        out[variant] = {
            "test_accuracy": rep["test_accuracy"],
            "train_seconds": rep["train_seconds"],
            "config": rep["config"],
        }
        print(
            f"teacher {variant} seed {seed}: {rep['test_accuracy']:.2f}% "
            f"in {rep['train_seconds']:.0f} s",
            flush=True,
        )
    write_result(
        f"kornia_teacher_{DATASET}_s{seed}",
        {
            "benchmark": "kornia-teacher",
            "base_commit": BASE,
            "kornia": kornia.__version__,
            "dataset": DATASET,
            "seed": seed,
            "teacher": TEACHER,
            "note": "dsa = the default (unchanged code path); the others train with the "
            "kornia pipeline of that name in place of DSA (no flip: digit data)",
            "results": out,
        },
    )


def stage_recipe(recipe: str, variant: str, mix: str | None, runs: int, epochs: int) -> None:
    torch.set_num_threads(1)
    data = load_dataset(DATASET, progress=False)
    path = teacher_path("dsa", 0)
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run --stage teacher --seed 0 first")
    teacher, _ = load_teacher(path)
    online = recipe == "sre2l"  # sre2l: the teacher labels every mixed batch
    cfg = EvalConfig(
        recipe=recipe,
        runs=runs,
        epochs=epochs,
        pipeline=None if variant == "dsa" else variant,
        mix=mix,
    )

    @torch.no_grad()
    def rnd(run: int):
        x, y = random_baseline_subset(data, 10, cfg, run)
        return (x, y) if online else (x, y, teacher(x))

    res = evaluate_set(
        None,
        None,
        data,
        cfg,
        f"{recipe} {variant} {mix or 'mixup'}",
        resample=rnd,
        temperature=TEMPERATURE,
        teacher=teacher if online else None,
        quiet=True,
    )
    print(
        f"{recipe} {variant} {mix or 'mixup'}: {res['mean']:.2f} ± {res['std']:.2f} "
        f"{res['accs']} in {res['seconds']:.0f} s",
        flush=True,
    )
    tag = f"{variant}" + (f"_{mix}" if mix else "")
    write_result(
        f"kornia_recipe_{DATASET}_{recipe}_{tag}",
        {
            "benchmark": "kornia-recipe",
            "base_commit": BASE,
            "kornia": kornia.__version__,
            "dataset": DATASET,
            "recipe": recipe,
            "augment": "dsa " + cfg.strategy(data) if variant == "dsa" else variant,
            "mix": mix or "mixup",
            "relabel": "online" if online else "stored",
            "set": "random real subset, IPC 10, a fresh draw per run (the random baseline)",
            "teacher": str(path.relative_to(ROOT)),
            "teacher_settings": {**TEACHER, "seed": 0, "augment": "dsa"},
            "temperature": TEMPERATURE,
            "protocol": {k: getattr(cfg, k) for k in ("runs", "epochs", "seed", "model")},
            "result": res,
        },
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", choices=["speed", "teacher", "recipe"], required=True)
    ap.add_argument("--seed", type=int, default=0, help="teacher stage: the training seed")
    ap.add_argument("--teacher-variants", nargs="+", default=["dsa", "random_crop"])
    ap.add_argument("--recipe", choices=["sre2l", "infer"], default="sre2l")
    ap.add_argument("--variant", default="dsa", help="dsa or a pipeline name")
    ap.add_argument("--mix", choices=["mixup", "cutmix"], default=None)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=300)
    args = ap.parse_args()
    if args.stage == "speed":
        stage_speed()
    elif args.stage == "teacher":
        stage_teacher(args.seed, args.teacher_variants)
    else:
        stage_recipe(args.recipe, args.variant, args.mix, args.runs, args.epochs)


if __name__ == "__main__":
    main()
