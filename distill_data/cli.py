"""The ``distill-data`` command line. Thin: parse, call the API, print.

Every error a user can cause ends as one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import sys
import typing
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from distill_data import api, dist
from distill_data._version import __version__
from distill_data.config import convert_setting, parse_set_options
from distill_data.errors import DistillDataError, DistillDataWarning, cli_spelling
from distill_data.evaluation import BASELINES, EvalConfig, EvalRequest
from distill_data.evaluation.evaluate import RELABEL
from distill_data.evaluation.protocol import RECIPES
from distill_data.models import MODELS
from distill_data.paths import check_outputs
from distill_data.quant.onnx_export import DEFAULT_OPSET
from distill_data.quant.ptq import PTQ_METHODS, PTQConfig
from distill_data.quant.qat import QUANT_METHODS
from distill_data.quant.quantizers import OBSERVERS
from distill_data.runtime import tune_allocator
from distill_data.train import TeacherConfig, get_recipe
from distill_data.train.recipe import RECIPES as TRAIN_RECIPES
from distill_data.train.student import KD_CHOICES, StudentConfig, format_student_report
from distill_data.train.teacher import TEACHER_MODELS

#: The teacher recipe, whose settings the teacher command's defaults show.
_TEACHER = get_recipe("teacher")


def _err(msg: str) -> None:
    click.echo(msg, err=True)


#: What to tell the user when Ctrl-C stops the running command (set by the command).
_interrupt_hint: Callable[[], str] = lambda: "interrupted"  # noqa: E731


def _write_json(path: str, obj: dict) -> None:
    """Write a report atomically; NaN is refused (JSON has no NaN, and none is saved)."""
    from distill_data.store import atomic_write

    try:
        text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    except ValueError as e:
        raise DistillDataError(f"refusing to write {path}: the report holds NaN ({e})") from None
    with atomic_write(path) as tmp:
        Path(tmp).write_text(text)


_FORCE = click.option(
    "--force",
    is_flag=True,
    help="Replace an existing output file of another kind (never one of the inputs).",
)


def _quantize_reads(teacher: str, dataset: str | None, calibs: tuple[str, ...]) -> list:
    """What quantize reads: the teacher and the data it records, the dataset, and each
    stored calibration set with the data it records."""
    reads = api.input_paths(dataset, networks=[teacher])
    for c in calibs:
        reads += api.input_paths(store=c)
    return reads


def _resume_hint(ckpt: Path, first: str) -> Callable[[], str]:
    """What Ctrl-C says in a resumable command: how to continue, or that nothing was
    written yet (``first`` names the first checkpoint's moment)."""
    return lambda: (
        f"interrupted; the last checkpoint is {ckpt}: rerun the same command with --resume "
        "to continue from it"
        if ckpt.exists()
        else f"interrupted before {first}; nothing was written"
    )


def _setting(cls: type, name: str, *decls: str, shown: Any = None, **extra: Any):
    """A click option for field ``name`` of config dataclass ``cls``: its default and
    type come from the dataclass, so no default is written twice. ``shown`` is the
    default to display when the field's own is None (e.g. "the recipe's")."""
    default = cls.__dataclass_fields__[name].default
    hint = typing.get_type_hints(cls)[name]
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    kwargs: dict[str, Any] = {
        "default": default,
        "type": base if base in (int, float, str) else str,
        "show_default": True if default is not None else (None if shown is None else str(shown)),
    }
    kwargs.update(extra)
    return click.option(*(decls or (f"--{name.replace('_', '-')}",)), **kwargs)


def _with_sets(
    ctx: click.Context, given: dict[str, Any], sets: tuple[str, ...] | dict[str, str]
) -> dict:
    """``given`` (option name → value) with the ``--set`` pairs added; a setting given
    both as its own option and with ``--set`` is refused rather than silently ranked."""
    extra = sets if isinstance(sets, dict) else parse_set_options(sets)
    params = {"augment": "no_augment"}  # a setting whose option is named otherwise
    for key in extra:
        param = params.get(key, key)
        if key in given and ctx.get_parameter_source(param) == ParameterSource.COMMANDLINE:
            raise DistillDataError(f"{key} is given twice (--{param.replace('_', '-')} and --set)")
    return {**given, **extra}


def _set_option(what: str):
    return click.option(
        "--set",
        "sets",
        multiple=True,
        metavar="KEY=VALUE",
        help=f"Override any {what} setting (repeatable); an unknown key lists the valid ones.",
    )


#: the commands that share their work out under torchrun; the rest run in one process
DISTRIBUTED = ("build", "eval", "train", "teacher")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="distill-data")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Condense labelled image datasets into a few synthetic images per class, and
    make data-free calibration sets, all stored in one HDF5 format.

    \b
    Typical session:
      distill-data datasets                      # built-ins; or pass a path
      distill-data methods                       # generators
      distill-data build --dataset mnist5k --method herding --ipc 10 --out set.h5
      distill-data show set.h5 --out set.png     # picture grid
      distill-data eval set.h5 --runs 3 --epochs 300 --baseline random --json report.json

    \b
    Environment:
      DISTILL_DATA_CACHE   where built-in datasets and NCFM's network pool are cached
                           (default ~/.cache/distill-data)
      DISTILL_DATA_MALLOC  0 = leave glibc's allocator alone (default: keep freed memory
                           for reuse, much faster CPU builds; README "Command line")
      DISTILL_DATA_BACKEND under torchrun: gloo or nccl (default: nccl for --device
                           cuda, gloo otherwise; gloo lets ranks share one GPU)
    """
    sub = ctx.invoked_subcommand
    if dist.launched() and sub is not None and sub not in DISTRIBUTED:
        raise DistillDataError(
            f"`{sub}` runs in one process; start it without torchrun (under torchrun: "
            f"{', '.join(DISTRIBUTED)})"
        )


@cli.command()
@click.option(
    "--dataset",
    "-d",
    default=None,
    help="Built-in name (mnist5k, digits) or a path: .npz, ImageFolder, "
    "CIFAR-10/100 python folder, MNIST IDX folder. Optional for data-free methods "
    "(zeroq), which read the image space from the teacher file.",
)
@click.option("--method", "-m", required=True, help="Generator (see `distill-data methods`).")
@click.option("--ipc", type=int, default=None, help="Images per class to produce.")
@click.option(
    "--count",
    type=int,
    default=None,
    help="Total images instead of per class (data-free methods, e.g. zeroq).",
)
@click.option(
    "--teacher",
    "teachers",
    multiple=True,
    help="Trained network file (`distill-data teacher`) for teacher-driven methods; "
    "repeat it for ensemble methods (infer).",
)
@click.option("--out", "-o", required=True, help="Output HDF5 file (written atomically).")
@click.option(
    "--iterations",
    type=int,
    default=None,
    help="Optimisation steps (default: the method's paper default).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for every random draw.")
@click.option(
    "--resume", is_flag=True, help="Continue from OUT.ckpt.pt if a previous build was interrupted."
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a method setting (repeatable), e.g. --set lr_img=0.5 for dm; "
    "`distill-data methods METHOD` lists a method's keys and defaults.",
)
@click.option(
    "--device", default="cpu", show_default=True, help="torch device: cpu, cuda, cuda:N, mps, xpu."
)
@_FORCE
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def build(
    dataset,
    method,
    ipc,
    count,
    teachers,
    out,
    iterations,
    seed,
    resume,
    sets,
    device,
    force,
    quiet,
) -> None:
    """Build a synthetic set with METHOD and write it to OUT.

    \b
    Condense real data:   --dataset mnist5k --method dm --ipc 10 --out set.h5
    Data-free from a net: --method zeroq --teacher t.pt --count 256 --out calib.h5

    Long builds checkpoint to OUT.ckpt.pt; after Ctrl-C or a crash, the same command
    with --resume continues from there.

    
    On several processes (gloo on CPU, NCCL with --device cuda), the same result:
      torchrun --nproc_per_node=2 -m distill_data build --dataset mnist5k \\
          --method dm --ipc 10 --out set.h5
    Matching methods and coresets split the classes, teacher-driven ones the batches;
    rank 0 writes OUT and the checkpoint (resume with the same process count).
    """
    global _interrupt_hint
    from distill_data.store import checkpoint_path_for
    from distill_data.synth.base import size_label, steps_label

    ckpt = checkpoint_path_for(out)
    _interrupt_hint = _resume_hint(ckpt, "the first checkpoint")
    options = parse_set_options(sets)
    log = None if quiet else (lambda m: click.echo(m, err=True))
    synset = api.build(
        dataset,
        method,
        ipc,
        out,
        teacher=list(teachers) or None,
        count=count,
        iterations=iterations,
        seed=seed,
        resume=resume,
        options=options,
        device=device,
        quiet=quiet,
        log=log,
        force=force,
    )
    if synset is None:  # another torchrun rank: rank 0 wrote the store and says so
        return
    m = synset.meta
    steps = steps_label(m.config, m.iterations)
    click.echo(
        f"wrote {out}: {len(synset)} images ({m.generator}, {size_label(m.ipc, m.count)}"
        + (f", {steps})" if steps else ")")
    )


@cli.command(name="eval")
@click.argument("store")
@click.option(
    "--dataset",
    "-d",
    default=None,
    help="Real dataset to test on (default: the one the store names).",
)
@_setting(
    EvalConfig,
    "model",
    type=click.Choice(MODELS.names()),
    help="Architecture to train (the field's standard is convnet).",
)
@_setting(EvalConfig, "runs", help="Fresh models trained; the report gives mean ± std.")
@_setting(EvalConfig, "epochs", help="Training epochs on the stored set (papers: 1000).")
@_setting(EvalConfig, "full_epochs", help="Epochs for the full-data baseline.")
@click.option(
    "--baseline",
    "baselines",
    multiple=True,
    type=click.Choice(BASELINES),
    help="Also evaluate a random real subset at the same IPC and/or the full data.",
)
@click.option(
    "--scores",
    is_flag=True,
    help="Also compute DD-Ranking's LRS and ARS (runs both baselines and no-aug runs).",
)
@click.option("--no-augment", is_flag=True, help="Train without augmentation.")
@click.option(
    "--soft",
    is_flag=True,
    help="Train by knowledge distillation from the store's soft labels (teacher logits, "
    "at the stored temperature) instead of hard labels.",
)
@click.option(
    "--teacher",
    "teachers",
    multiple=True,
    help="With --soft: the teacher that relabels the random baseline (and, with --relabel "
    "online, every batch). Repeat for an ensemble (mean of logits, as INFER labels its "
    "set): pass the teachers the set was built with.",
)
@_setting(
    EvalRequest,
    "relabel",
    type=click.Choice(RELABEL),
    help="With --soft: stored = the store's logits, one per image; online = --teacher "
    "labels every augmented batch (SRe2L/FKD's protocol), for the set and the baseline.",
)
@_setting(
    EvalConfig,
    "recipe",
    type=click.Choice(RECIPES),
    help="How the students train: dc = the field's protocol (SGD, x0.1 at half, DSA); "
    "sre2l = the official SRe2L student recipe (AdamW, cosine, batch 128, mixup relabelled "
    "online, KL without T^2; needs --soft --relabel online --teacher); infer = INFER's "
    "(the same at batch 64; with --soft alone the stored logits are mixed as the images "
    "are, its static labels; with --relabel online the teacher labels each mixed batch).",
)
@_setting(EvalConfig, "seed", help="Base seed; run r is seeded with seed*1000 + r.")
@_set_option("evaluation (lr, batch_size, width, pipeline, mix, precision, ...)")
@click.option(
    "--device", default="cpu", show_default=True, help="torch device for training, e.g. cuda."
)
@click.option("--json", "json_out", default=None, help="Write the full report here.")
@_FORCE
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.pass_context
def eval_cmd(
    ctx,
    store,
    dataset,
    model,
    runs,
    epochs,
    full_epochs,
    baselines,
    scores,
    no_augment,
    soft,
    teachers,
    relabel,
    recipe,
    seed,
    sets,
    device,
    json_out,
    force,
    quiet,
) -> None:
    """Train fresh networks on STORE and test them on the real test split.

    \b
    Under torchrun the ranks share the models (same report as one process):
      torchrun --nproc_per_node=2 -m distill_data eval set.h5 --runs 4
    """
    from distill_data.evaluation import format_report

    reads = api.input_paths(dataset, store=store, networks=teachers)
    check_outputs([(json_out, "json")], reads=reads, force=force)
    protocol = _with_sets(
        ctx,
        {
            "model": model,
            "runs": runs,
            "epochs": epochs,
            "full_epochs": full_epochs,
            "seed": seed,
            "recipe": recipe,
            **({"augment": False} if no_augment else {}),
        },
        sets,
    )
    report = api.evaluate(
        store,
        dataset,
        baselines=baselines,
        scores=scores,
        soft=soft,
        teacher=list(teachers) or None,
        relabel=relabel,
        device=device,
        quiet=quiet,
        **protocol,
    )
    if not dist.peek().main:  # torchrun: every rank has the report, rank 0 tells
        return
    click.echo(format_report(report))
    if json_out:
        _write_json(json_out, report)
        click.echo(f"wrote {json_out}")


@cli.command()
@click.option("--dataset", "-d", required=True, help="Real dataset to train on (name or path).")
@_setting(TeacherConfig, "model", type=click.Choice(TEACHER_MODELS), help="BatchNorm architecture.")
@_setting(TeacherConfig, "epochs", shown=_TEACHER.epochs, help="Training epochs.")
@_setting(
    TeacherConfig,
    "lr",
    shown=_TEACHER.lr,
    help="SGD learning rate (x0.1 at half the epochs).",
)
@_setting(TeacherConfig, "batch_size", shown=_TEACHER.batch_size, help="Batch size.")
@_setting(TeacherConfig, "width", shown="the model's", help="Network width.")
@_setting(TeacherConfig, "seed", help="Seed of every draw.")
@_set_option("teacher (momentum, weight_decay, augment, pipeline, precision, ...)")
@click.option("--out", "-o", required=True, help="Teacher file to write (.pt).")
@click.option(
    "--device", default="cpu", show_default=True, help="torch device: cpu, cuda, cuda:N, mps, xpu."
)
@click.option("--json", "json_out", default=None, help="Write the report here.")
@_FORCE
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.pass_context
def teacher(
    ctx, dataset, model, epochs, lr, batch_size, width, seed, sets, out, device, json_out, force,
    quiet,
) -> None:  # fmt: skip
    """Train a BatchNorm teacher on real data and report its test accuracy.

    The file holds the architecture, its constructor arguments, the weights, the input
    shape, normalisation and class names, and loads with torch.load(weights_only=True).
    """
    check_outputs([(out, "model"), (json_out, "json")], reads=api.input_paths(dataset), force=force)
    given = {"model": model, "epochs": epochs, "lr": lr, "batch_size": batch_size}
    settings = _with_sets(ctx, {**given, "width": width, "seed": seed}, sets)
    report = api.teacher(dataset, out, device=device, quiet=quiet, force=force, **settings)
    if not dist.peek().main:  # torchrun: rank 0 wrote the file and reports
        return
    bf = report["config"].get("precision", "fp32")
    click.echo(
        f"wrote {out}: {model} on {report['dataset']}, test accuracy "
        f"{report['test_accuracy']:.2f}% ({report['train_seconds']:.0f} s"
        + (f", trained in {bf})" if bf != "fp32" else ")")
    )
    if json_out:
        from distill_data.evaluation.report import machine_info, now_iso

        _write_json(
            json_out,
            {
                "kind": "distill-data teacher",
                "created": now_iso(),
                **report,
                "machine": machine_info(),
            },  # fmt: skip
        )
        click.echo(f"wrote {json_out}")


@cli.command()
@click.option("--teacher", required=True, help="Teacher file to quantize (`distill-data teacher`).")
@click.option(
    "--calib",
    "calibs",
    multiple=True,
    required=True,
    help="Calibration data: a stored set F.h5, real:N or noise:N (repeatable).",
)
@click.option(
    "--dataset",
    "-d",
    default=None,
    help="Real dataset for test accuracy (default: the one the teacher records).",
)
@click.option(
    "--bits",
    "bits",
    multiple=True,
    default=(PTQConfig().bits,),
    show_default=True,
    help="Weight/activation bit widths, e.g. w8a8, w4a8, w4a4 (repeatable; 2-8).",
)
@_setting(
    PTQConfig,
    "method",
    type=click.Choice(PTQ_METHODS),
    help="observer: activation ranges only, round-to-nearest weights; adaround (per layer), "
    "brecq, qdrop, genie (Genie-M; per block): learn the rounding and steps on the "
    "calibration images (set --set iterations=N: the papers' 20,000 per block is hours).",
)
@_setting(
    PTQConfig,
    "observer",
    type=click.Choice(OBSERVERS),
    shown="minmax; lp for reconstruction",
    help="Activation range observer (lp: the Lp search, p = 2.4, of BRECQ's code).",
)
@_setting(
    PTQConfig,
    "first_last_bits",
    type=str,  # a width or 'none'
    help="Bits of the first and last layer (or 'none' to quantize them like the rest).",
)
@_setting(
    PTQConfig,
    "mixed_precision",
    type=float,
    help="Average weight bits of the layers between the first and last: each layer's "
    "bits from --set mp_bits=2,4,8 by ZeroQ's Pareto frontier of sensitivity against "
    "size (--set mp_method=polino: by gradient norm); --bits then sets the activations.",
)
@click.option(
    "--frontier-plot",
    default=None,
    help="With --mixed-precision: write the frontier of the first calibration set and bit "
    "width as a PNG here.",
)
@click.option(
    "--compare",
    is_flag=True,
    help="Also calibrate on real:N and noise:N, N = the size of the first set.",
)
@_setting(PTQConfig, "seed", help="Seed of real:N / noise:N draws and observer sampling.")
@_set_option(
    "quantization (percentile, fold_bn, calib_batch, max_samples; formats: "
    "w_format/a_format=fp8_e4m3|fp8_e5m2|fp4_e2m1, fp_search; reconstruction: "
    "iterations, recon_batch, round_weight, warmup, lr_round, lr_act, lr_weight_step, "
    "learn_weight_step, drop_prob; mixed "
    "precision: mp_bits, mp_method)"
)
@click.option("--json", "json_out", default=None, help="Write the report here.")
@click.option(
    "--device", default="cpu", show_default=True,
    help="torch device for calibration, reconstruction and testing: cpu, cuda, cuda:N.",
)  # fmt: skip
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@_FORCE
@click.pass_context
def quantize(
    ctx, teacher, calibs, dataset, bits, method, observer, first_last_bits, mixed_precision,
    frontier_plot, compare, seed, sets, json_out, device, quiet, force,
) -> None:  # fmt: skip
    """Post-training quantization of a teacher, calibrated on synthetic, real or noise data.

    Per-channel symmetric weights, per-tensor activations (min/max, percentile or MSE
    ranges), BatchNorm folded, first and last layer at 8 bits by default. Prints fp32 and
    quantized test accuracy for every calibration set and bit width, and how faithfully
    the quantized network reproduces the float one on the test images: top-1 agreement,
    logit SQNR (dB, higher is better) and output KL (lower is better). These still rank
    calibration sets when the accuracies tie.

    With --method adaround/brecq/qdrop/genie the calibration images also teach the
    weights' rounding and the steps, block by block (the report lists each block's
    error before and after), e.g. Genie-M at W2A4 from a Genie set:

    \b
        distill-data quantize --teacher t.pt --calib genie.h5 --bits w2a4 \\
                              --method genie --set iterations=2000 --compare
    """
    from distill_data.quant.calibrate import format_comparison

    check_outputs(
        [(json_out, "json"), (frontier_plot, "png")],
        reads=_quantize_reads(teacher, dataset, calibs),
        force=force,
    )
    given = {"method": method, "observer": observer, "first_last_bits": first_last_bits,
             "mixed_precision": mixed_precision, "seed": seed}  # fmt: skip
    ptq = _with_sets(ctx, given, sets)
    seed = convert_setting("seed", int, ptq.pop("seed"))  # --seed or --set seed=N: one setting
    if frontier_plot and ptq.get("mixed_precision") is None:
        raise DistillDataError("--frontier-plot needs --mixed-precision")
    report = api.quantize(
        teacher, list(calibs), dataset, bits=list(bits), compare=compare, seed=seed,
        device=device, quiet=quiet, **ptq,
    )  # fmt: skip
    click.echo(format_comparison(report))
    if frontier_plot:
        from distill_data.quant.mixed import plot_report

        plot_report(report["results"][0]["mixed_precision_result"], frontier_plot)
        click.echo(f"wrote {frontier_plot}")
    if json_out:
        _write_json(json_out, report)
        click.echo(f"wrote {json_out}")


@cli.command(name="export")
@click.argument("network")
@click.option("--out", "-o", required=True, help="ONNX file to write (.onnx).")
@click.option(
    "--opset",
    type=int,
    default=DEFAULT_OPSET,
    show_default=True,
    help="ONNX opset: 13 (per-channel DequantizeLinear) up to the newest your torch exports.",
)
@click.option("--json", "json_out", default=None, help="Write the export report here.")
@_FORCE
def export_cmd(network, out, opset, json_out, force) -> None:
    """Export a student (`distill-data train`) or a float network file to ONNX.

    A qat/lsq student's quantized layers become QuantizeLinear/DequantizeLinear: int8
    weight codes with their per-channel or per-tensor scales, and each input quantizer's
    scale and zero point (clipped to its bit width below 8 bits), so ONNX Runtime computes
    what the student computes. qd/dq layers (Polino buckets, learned points) have no ONNX
    quantization type and are written with their float weights; the report lists which
    layers are which. Needs the deploy extra: pip install 'distill-data[deploy]'.
    """
    from distill_data.quant.onnx_export import export_file, format_export_report

    check_outputs([(out, "onnx"), (json_out, "json")], reads=[network], force=force)
    report = export_file(network, out, opset=opset)
    click.echo(format_export_report(report))
    if json_out:
        from distill_data.evaluation.report import machine_info, now_iso

        report = {**report, "source": str(network), "created": now_iso(),
                  "machine": machine_info()}  # fmt: skip
        _write_json(json_out, report)
        click.echo(f"wrote {json_out}")


@cli.command()
@click.option(
    "--dataset",
    "-d",
    default=None,
    help="Real dataset to test on, and to train on without --data (default: the one the "
    "stored set or the teacher records).",
)
@click.option(
    "--data",
    default=None,
    help="Stored set to train on (hard or soft labels, or a data-free calibration set, "
    "which needs --teacher); default: the real training split.",
)
@click.option(
    "--teacher",
    "teachers",
    multiple=True,
    help="Teacher to distil from (repeat for an ensemble: the mean of their softmax).",
)
@_setting(StudentConfig, "model", type=click.Choice(MODELS.names()), help="Student architecture.")
@_setting(
    StudentConfig,
    "quant",
    type=click.Choice(("none", *QUANT_METHODS)),
    help="qat = fake quant + STE with EMA ranges; lsq = learned step sizes; qd = Polino's "
    "quantized distillation (weights, buckets); dq = differentiable quantization "
    "(learned points).",
)
@_setting(
    StudentConfig,
    "bits",
    shown="w4a4 for qat/lsq, w4 for qd/dq",
    help="Bit widths: wXaY (qat, lsq) or wX (qd, dq); 2-8.",
)
@click.option(
    "--kd",
    type=click.Choice(KD_CHOICES),
    default=None,
    show_default="the recipe's: hinton, 0.9 KD + 0.1 CE, T=4",
    help="Distillation loss: hinton (T^2 KL), polino (0.7 T^2 KL + 0.3 CE, T=2), bdkd "
    "(entropy-balanced forward/reverse KL), none (cross-entropy).",
)
@click.option(
    "--recipe",
    default=None,
    show_default="student from scratch, finetune from trained weights",
    type=click.Choice(tuple(TRAIN_RECIPES)),
    help="Training protocol preset (distill_data/train/recipe.py).",
)
@click.option("--epochs", type=int, default=None, show_default="the recipe's", help="Epochs.")
@_setting(StudentConfig, "seed", help="Seed of the student's weights, data order and augmentation.")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any student (init, width, first_last_bits, bucket_size, ...) or recipe (lr, "
    "batch_size, augment, temperature, precision, ...) setting; repeatable.",
)
@click.option("--out", "-o", required=True, help="Student file to write (.pt).")
@click.option("--json", "json_out", default=None, help="Write the report here.")
@click.option("--resume", is_flag=True, help="Continue from OUT.ckpt.pt after an interruption.")
@click.option(
    "--device", default="cpu", show_default=True, help="torch device: cpu, cuda, cuda:N, mps, xpu."
)
@_FORCE
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.pass_context
def train(
    ctx, dataset, data, teachers, model, quant, bits, kd, recipe, epochs, seed, sets, out,
    json_out, resume, device, force, quiet,
) -> None:  # fmt: skip
    """Train a small, optionally quantized student from a stored set or real data.

    \b
    Distil a float student:   -d mnist5k --teacher t.pt --out s.pt
    Quantized (4-bit LSQ):    -d mnist5k --teacher t.pt --quant lsq --bits w4a4 --out s.pt
    Polino's quantized distillation at 2 bits:
                              -d mnist5k --teacher t.pt --quant qd --bits w2 --kd polino ...
    Zero-shot QAT from a data-free set (no real image trains):
                              --data zeroq.h5 --teacher t.pt --set init=teacher \\
                              --quant lsq --bits w4a4 --recipe zsqat --out s.pt

    A quantized student is saved as packed integer codes with their scales (it loads with
    torch.load(weights_only=True)); the report checks that the saved student predicts
    exactly as the trained one, and gives float and quantized accuracy, size and speed.

    \b
    One student, data-parallel over processes (DDP; each rank takes its rows of
    every batch, rank 0 writes the file):
      torchrun --nproc_per_node=2 -m distill_data train -d mnist5k --teacher t.pt ...
    """
    global _interrupt_hint
    from distill_data.store import checkpoint_path_for

    ckpt = checkpoint_path_for(out)
    _interrupt_hint = _resume_hint(ckpt, "the first epoch ended")
    extra = parse_set_options(sets)
    fields = set(StudentConfig.__dataclass_fields__)
    student = _with_sets(
        ctx,
        {"model": model, "quant": quant, "bits": bits, "seed": seed},
        {k: v for k, v in extra.items() if k in fields},
    )
    given = {} if epochs is None else {"epochs": epochs}
    options = _with_sets(ctx, given, {k: v for k, v in extra.items() if k not in fields})
    init = student.get("init")
    nets = [*teachers, *([init] if isinstance(init, str) and init.endswith(".pt") else [])]
    reads = api.input_paths(dataset, store=data, networks=nets)
    check_outputs([(out, "model"), (json_out, "json")], reads=reads, force=force)
    log = None if quiet else (lambda m: click.echo(m, err=True))
    report = api.train(
        dataset,
        out,
        data=data,
        teacher=list(teachers) or None,
        recipe=recipe,
        kd=kd,
        options=options,
        device=device,
        quiet=quiet,
        resume=resume,
        force=force,
        log=log,
        **student,
    )
    if not dist.peek().main:  # torchrun: rank 0 saved the student and reports
        return
    click.echo(format_student_report(report))
    if json_out:
        _write_json(json_out, report)
        click.echo(f"wrote {json_out}")


@cli.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as JSON.")
def inspect(store, as_json) -> None:
    """Show what STORE holds: a synthetic set (generator, settings, dataset, shapes), or a
    student or teacher file from `distill-data train` / `teacher` (bits per layer, bytes,
    compression against fp32)."""
    from distill_data.paths import file_kind

    path = Path(store)
    kind = file_kind(path) if path.is_file() else None
    # a damaged .pt is named as the network file it was meant to be, not as an HDF5 file
    if kind == "model" or (kind in ("other", "empty") and path.suffix in (".pt", ".pth")):
        info, rows = _network_info(path)
    else:
        info, rows = _store_info(store), []
    if as_json:
        click.echo(json.dumps({**info, **({"layers": rows} if rows else {})}, indent=2))
        return
    for k, v in info.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items())
        elif k == "compression" and v is not None:
            v = f"{v:.2f}x smaller than fp32"
        click.echo(f"{k:>20}: {v}")
    if rows:
        click.echo(f"{'layer':>20}  kind         bits   weights      bytes")
        for r in rows:
            click.echo(
                f"{r['layer']:>20}  {r['kind']:<12} {r['bits']:>4} {r['weights']:>9,} "
                f"{r['bytes']:>10,}"
            )


def _store_info(store: str) -> dict:
    from distill_data.store import read_store
    from distill_data.synth.base import steps_label

    s = read_store(store)
    m = s.meta
    return {
        "path": store,
        "images": list(s.images.shape),
        "labels_per_class": [int((s.labels == c).sum()) for c in range(len(m.classes))],
        "soft_labels": None if s.soft_labels is None else list(s.soft_labels.shape),
        "temperature": s.temperature,
        "generator": m.generator,
        "config": m.config,
        "dataset": m.dataset,
        "dataset_fingerprint": m.dataset_fingerprint,
        # a set of a fixed size (--count: calibration sets) has no images per class
        "ipc": m.ipc or None,
        "seed": m.seed,
        "count": m.count or None,
        "iterations": m.iterations,  # optimisation steps made, over every batch
        **({"built": b} if (b := steps_label(m.config, m.iterations)) else {}),
        "classes": m.classes,
        "mean": list(m.mean),
        "std": list(m.std),
        "package_version": m.package_version,
        "created": m.created,
        # what the generator recorded besides its settings (the teacher's fingerprint,
        # a coreset's chosen indices, ...); long lists are counted, not printed
        "extra": {k: _brief(v) for k, v in sorted(m.extra.items())},
    }


def _brief(value: Any) -> Any:
    if isinstance(value, (list, tuple)) and len(value) > 8:
        return f"{len(value)} values"
    if isinstance(value, dict):
        return {k: _brief(v) for k, v in value.items()}
    return value


def _network_info(path: Path) -> tuple[dict, list[dict]]:
    """A student file's summary and per-layer rows, or a float network file's facts."""
    import torch

    from distill_data.models import load_model
    from distill_data.quant.student import STUDENT_FORMAT, load_student, student_summary

    try:
        head = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - load_model below gives the precise message
        head = None
    if isinstance(head, dict) and head.get("format") == STUDENT_FORMAT:
        _, payload = load_student(path)  # validates that it deploys
        summary = student_summary(payload)
        meta = payload["meta"]
        info = {
            "path": str(path),
            "kind": "quantized student",
            "arch": payload["arch"],
            "quantization": {k: v for k, v in payload["spec"].items() if v is not None},
            # as trained (the train report's count); BatchNorm folding may store fewer
            "parameters": summary["fp32_parameters"],
            **(
                {"stored_parameters": summary["parameters"]}
                if summary["parameters"] != summary["fp32_parameters"]
                else {}
            ),
            "payload_bytes": summary["bytes"],
            "code_bytes": summary["code_bytes"],
            "fp32_bytes": summary["fp32_bytes"],
            "compression": summary["compression"],
            "dataset": meta.get("dataset"),
            "test_accuracy": meta.get("test_accuracy"),
            "file_bytes": path.stat().st_size,
        }
        return info, summary["layers"]
    model, meta = load_model(path)
    params = sum(p.numel() for p in model.parameters())
    info = {
        "path": str(path),
        "kind": "network (float)",
        "arch": model.arch,
        "config": {k: v for k, v in model.config.items() if k != "im_size"},
        "parameters": params,
        "fp32_bytes": 4 * params,
        "dataset": meta.get("dataset"),
        "test_accuracy": meta.get("test_accuracy"),
        "file_bytes": path.stat().st_size,
    }
    return info, []


@cli.command()
@click.argument("store")
@click.option("--out", "-o", required=True, help="PNG file to write.")
@click.option(
    "--max-per-class",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Columns per class row.",
)
@click.option(
    "--labels/--no-labels",
    default=True,
    show_default=True,
    help="Name each row's class and its image count in a column on the left.",
)
@_FORCE
def show(store, out, max_per_class, labels, force) -> None:
    """Write a picture grid of STORE (one row per class) to a PNG."""
    from distill_data.store import read_store
    from distill_data.viz import save_grid

    (p,) = check_outputs([(out, "png")], reads=[store], force=force)
    save_grid(read_store(store), p, max_per_class=max_per_class, labels=labels)
    click.echo(f"wrote {out}")


@cli.command()
@click.argument("method", required=False)
def methods(method: str | None) -> None:
    """List the registered generators; with METHOD, its --set keys and their defaults
    (the generator's docstring, e.g. `python -m pydoc distill_data.synth.dm`, explains
    each and cites the paper)."""
    if method is None:
        for name, desc in api.list_methods():
            click.echo(f"{name:<12} {desc}")
        return
    defaults = api.method_defaults(method)
    click.echo(f"{method}: {dict(api.list_methods())[method]}")
    for key, value in defaults.items():
        click.echo(f"  --set {key}={json.dumps(value) if not isinstance(value, str) else value}")


@cli.command()
def datasets() -> None:
    """List the built-in datasets (any supported file or folder path works too)."""
    for name, desc in api.list_datasets():
        click.echo(f"{name:<12} {desc}")
    click.echo(
        "or a path: .npz (x_train,y_train,x_test,y_test), ImageFolder (train/, test/), "
        "CIFAR-10/100 python folder, MNIST/Fashion-MNIST IDX folder"
    )


def _show_note(message, category, filename, lineno, file=None, line=None) -> None:
    """Library warnings meant for the user (DistillDataWarning) as ``note:`` lines."""
    if issubclass(category, DistillDataWarning):
        _err(f"note: {message}")
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line on stderr and exit code 2 for every user error."""
    code: int | str | None = 0
    try:
        _main(argv)
    except SystemExit as e:
        code = e.code
        if not dist.joined():
            raise
    if dist.joined():  # torchrun: leave the group together, without C++ teardown
        dist.leave(code if isinstance(code, int) else (0 if code is None else 1))


def _main(argv: list[str] | None) -> None:
    tune_allocator()  # see distill_data.runtime: large CPU tensors reuse heap pages
    try:
        with cli_spelling(), warnings.catch_warnings():
            warnings.showwarning = _show_note
            warnings.simplefilter("always", DistillDataWarning)
            cli.main(args=argv, prog_name="distill-data", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:  # pragma: no cover - click>=8.2
        click.echo(e.ctx.get_help() if e.ctx else str(e))
        sys.exit(0)
    except click.UsageError as e:
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx else ""
        _err(f"error: {e.format_message()}{hint}")
        sys.exit(2)
    except DistillDataError as e:
        if dist.reports(e, dist.peek()):  # under torchrun: one rank tells, not every one
            prefix = f"[rank {dist.peek().rank}] " if dist.peek().active else ""
            _err(f"{prefix}error: {e}")
        sys.exit(2)
    except (click.Abort, KeyboardInterrupt) as e:
        # click turns Ctrl-C into Abort; a bare Abort (e.g. EOF at a prompt) is no interrupt
        ctrl_c = isinstance(e, KeyboardInterrupt) or isinstance(e.__context__, KeyboardInterrupt)
        if dist.peek().main:  # torchrun hands Ctrl-C to every rank; one hint is enough
            _err(_interrupt_hint() if ctrl_c else "aborted")
        sys.exit(130)
    except OSError as e:
        if dist.peek().main:
            _err(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "))
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
