"""The student trainer: a stored set (or the real training split) plus, optionally,
teachers in; a small, optionally quantized student out, with its report.

One config (:class:`StudentConfig`: architecture, initialisation, distillation loss,
quantization), one training recipe (:class:`~distill_data.train.recipe.TrainRecipe`,
preset ``student`` unless named), one verb (:func:`train_student`). Targets, in order:

* with teachers: their logits (the mean over an ensemble of their softmax outputs,
  MEAL V2's target) on every augmented batch, the distillation loss the recipe names
  (``hinton``, ``polino``, ``bdkd``) mixed with cross-entropy on the labels by
  ``kd_alpha``;
* without: the stored logits where the set has them (distillation at the stored
  temperature), else cross-entropy on the labels.

A data-free calibration set (a set made by count, whose labels are only a teacher's
predictions) needs a teacher. Zero-shot QAT is ``init="teacher"`` on such a set: the
teacher's own architecture and weights are quantized and fine-tuned on the synthetic
images alone, distilled from the float teacher (KD at T = 4, plus ``feature_weight``
times the MSE of every quantized layer's output against the teacher's, as the ICCV 2025
zero-shot QAT recipe does); no real image is used for training.

Quantization (:mod:`distill_data.quant.qat`): ``qat``, ``lsq``, ``qd``, ``dq``. For
``qat`` the activation ranges freeze at ``freeze_observers_at`` of the epochs, and the
BatchNorm statistics at ``freeze_bn_at`` when set (torchvision's QAT reference freezes
both late in a short fine-tune; Krishnamoorthi's whitepaper after a warm-up). ``dq``
learns the points (Polino et al., Alg. 2) with its own learning rate ``points_lr``;
the weights train with them (straight-through, as ``qd``) when the student starts from
scratch, and stay fixed when it starts from a trained teacher (``dq_weights``).
"""

from __future__ import annotations

import copy
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from distill_data.config import require, unknown_settings
from distill_data.data import RealDataset
from distill_data.dist import ONE, Dist, PeerFailed, first_line, lost_peer, together
from distill_data.errors import ConfigError, DivergedError, StoreError, opt, setting
from distill_data.evaluation.report import plural
from distill_data.models import MODELS, build_model, nonfinite_tensors, save_model
from distill_data.quant.qat import (
    QUANT_METHODS,
    BucketUniform,
    LearnedPoints,
    QuantSpec,
    float_mode,
    freeze_batchnorm,
    freeze_observers,
    keep_batchnorm_statistics,
    quant_layers,
    quantize_,
    weight_bits_report,
)
from distill_data.store import checkpoint_path_for, load_checkpoint, save_checkpoint
from distill_data.train.fit import FitState, TrainData, fit, steps_per_epoch
from distill_data.train.losses import feature_mse
from distill_data.train.recipe import TrainRecipe

INITS = ("scratch", "teacher")
KD_CHOICES = ("hinton", "polino", "bdkd", "none")


@dataclass(frozen=True)
class StudentConfig:
    """What student to train and how it is quantized.

    Attributes:
        model: student architecture (registry name); ignored with ``init="teacher"``.
        width: its width (None: the architecture's default).
        init: ``scratch`` (fresh weights from ``seed``), ``teacher`` (a copy of the
            first teacher: zero-shot QAT / quantization of the teacher itself), or the
            path of a network file (``distill-data teacher`` / a float ``train`` output)
            to start from, e.g. a distilled float student that ``dq`` then quantizes.
        quant: ``none`` or one of :data:`~distill_data.quant.qat.QUANT_METHODS`.
        bits: ``wXaY`` (``qat``/``lsq``) or ``wX`` (the weight-only ``qd``/``dq``).
        first_last_bits: bits of the first conv and last linear layer (None: like the rest).
        bucket_size: weights per min/max bucket (``qd``/``dq``; None: one per tensor).
        stochastic: ``qd`` rounds stochastically.
        per_channel: ``lsq`` learns a weight step per output channel (the paper: one
            per tensor).
        step_init: how ``lsq`` starts its steps: ``lsq`` (the paper's
            ``2·mean|v|/√Q_P``) or ``mse`` (the least-MSE clipping, where MSE
            post-training quantization would put them; the white paper's start for LSQ).
            None: ``mse`` for a student that starts trained (``init`` = ``teacher`` or a
            file), ``lsq`` from scratch. Measured (zero-shot, mnist5k ConvNet-BN teacher,
            ZeroQ-1024 set, 3 seeds, per-tensor steps): W4A4 97.60 ± 0.16 % from the
            paper's start, 97.93 ± 0.05 from the MSE start (PTQ of the same set 97.9);
            W2A4 97.63 → 97.73 (PTQ 96.3). With per-channel steps at 2 bits the MSE
            start trained worse on the ResNet (docs/design-notes.md).
        freeze_weights: ``lsq`` keeps every convolution's and linear layer's weights at
            the values it started with and trains only the step sizes, the biases and
            the normalisation layers' affine parameters. The weight tensors stay the
            trained start's; a layer with BatchNorm folded in still quantizes W·γ/σ,
            which moves with γ and with the running statistics (unless
            ``keep_bn_stats``), so its integer codes can change. After PEQA (Kim et al.,
            NeurIPS 2023, §3), which fine-tunes only a quantized network's scales; the
            biases and BatchNorm train here too. Needs a trained start. Measured
            (zero-shot, mnist5k ResNet teacher 97.7 %, per-tensor steps from the MSE
            start, 3 seeds): Genie-1024 W4A4 97.80 % frozen against 97.43 with every
            weight trained (PTQ 97.7); at W2A4 on 256 images freezing costs 0.5-1.1
            points. Not the default (docs/design-notes.md).
        freeze_bn_at: fraction of the epochs after which every BatchNorm normalises
            with its running statistics and stops updating them (folded layers compute
            the deployed folding; None: never). Off by default: torchvision's QAT
            reference freezes late in a short fine-tune at lr 1e-4, and while the
            learning rate is still high the switch from batch to running statistics made
            LSQ steps explode (mnist5k, measured: a 2-epoch W4A4 student went to 10 %
            with the freeze at epoch 1 and reached 91 % without it; a W2A4 ResNet
            fine-tuned at lr 0.005 with frozen statistics fell to 10 % in one step). The
            eval forward, which the saved student computes, always uses the running ones.
        keep_bn_stats: BatchNorm normalises each training batch with its own statistics
            but never updates the running ones (momentum 0), so the statistics a trained
            network came with survive the fine-tune. Off by default, measured: zero-shot
            W2A4 of the mnist5k ResNet, 30 epochs on 256 images, updating the running
            statistics gave 97.6 % (real images) and 97.0 % (ZeroQ set) against 95.8 %
            and 95.2 % keeping them (the quantized network's own statistics serve it
            better than the float one's); on noise both fall to 10 % at the ``zsqat``
            lr 0.005 (the weights themselves are destroyed: float accuracy 10 % too).
        freeze_observers_at: fraction of the epochs after which ``qat`` fixes its
            activation ranges (None: never).
        step_lr_scale: ``lsq``'s step sizes train at the recipe's learning rate times this,
            without weight decay. LSQ fine-tunes a trained network at lr 0.01 (Esser et
            al., §3); a student trained from scratch at the ``student`` recipe's 0.05
            drove steps below zero within an epoch on mnist5k (measured), at 0.005 they
            track the weights.
        points_lr: ``dq``'s learning rate of the points (the official code: 1e-6…1e-5 at
            CIFAR scale; its gradients sum over every weight assigned to a point).
        dq_weights: ``dq`` also trains the weights (straight-through, as ``qd``) in the
            same steps as the points; None: when the student starts from scratch (the
            points of an untrained network quantize nothing useful), not when it starts
            from a trained teacher (Polino's Alg. 2 learns the points alone).
        dq_allocate: ``dq`` redistributes the points across layers by the norm of each
            layer's gradient (Polino §3; 5 cross-entropy minibatches, half of each
            layer's points kept as a floor, the total number of points preserved).
        feature_weight: weight of the feature-MSE term against the teacher (zero-shot QAT).
        kernels: ``lsq``'s and ``qd``'s fake quantization by ``torch``, ``triton`` (the
            fused kernels, :mod:`distill_data.kernels`) or ``auto`` (Triton on CUDA when
            installed); ``qd``'s stochastic rounding then draws Triton's Philox stream.
        seed: seed of initialisation, shuffling, augmentation and stochastic rounding.
    """

    model: str = "convnet_bn"
    width: int | None = None
    init: str = "scratch"
    quant: str = "none"
    bits: str | None = None
    first_last_bits: int | None = 8
    bucket_size: int | None = 256
    stochastic: bool = False
    per_channel: bool = False
    step_init: str | None = None
    freeze_weights: bool = False
    freeze_bn_at: float | None = None
    keep_bn_stats: bool = False
    freeze_observers_at: float | None = 0.9
    step_lr_scale: float = 0.1
    points_lr: float = 1e-4
    dq_weights: bool | None = None
    dq_allocate: bool = False
    feature_weight: float = 0.0
    kernels: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        require(
            self.model in MODELS,
            f"unknown model {self.model!r}; choose from: {', '.join(MODELS.names())}",
        )
        require(
            self.init in INITS or self.init.endswith(".pt"),
            f"init must be scratch, teacher or a network file (.pt), got {self.init!r}",
        )
        require(
            self.quant in ("none", *QUANT_METHODS),
            f"unknown quant {self.quant!r}; choose from: none, {', '.join(QUANT_METHODS)}",
        )
        require(self.width is None or self.width >= 1, f"width must be >= 1, got {self.width}")
        for name in ("freeze_bn_at", "freeze_observers_at"):
            v = getattr(self, name)
            require(v is None or 0 <= v <= 1, f"{name} must be in [0, 1] or none, got {v}")
        require(self.points_lr > 0, f"points_lr must be > 0, got {self.points_lr}")
        require(self.step_lr_scale > 0, f"step_lr_scale must be > 0, got {self.step_lr_scale}")
        require(self.feature_weight >= 0, "feature_weight must be >= 0")
        require(
            self.dq_weights is None or self.quant == "dq", "dq_weights is a setting of quant=dq"
        )
        require(not self.dq_allocate or self.quant == "dq", "dq_allocate is a setting of quant=dq")
        require(
            not self.freeze_weights or self.quant == "lsq",
            "freeze_weights is a setting of quant=lsq (qd and dq: dq_weights)",
        )
        require(
            not self.freeze_weights or self.init != "scratch",
            "freeze_weights keeps a trained start's weights; init=scratch has none to keep "
            "(use init=teacher or a network file)",
        )
        if self.quant == "none":
            require(self.bits is None, f"bits={self.bits!r} needs a quant method (quant=...)")
        self.spec()  # bits and the rest make a valid QuantSpec

    def spec(self) -> QuantSpec | None:
        """The :class:`QuantSpec` of this student (None when it is not quantized)."""
        if self.quant == "none":
            return None
        w_bits, a_bits = parse_student_bits(self.bits, self.quant)
        return QuantSpec(
            method=self.quant,
            w_bits=w_bits,
            a_bits=a_bits,
            first_last_bits=self.first_last_bits,
            bucket_size=self.bucket_size,
            stochastic=self.stochastic,
            per_channel=self.per_channel,
            step_init=self.step_init
            or ("mse" if self.quant == "lsq" and self.init != "scratch" else "lsq"),
            kernels=self.kernels,
        )


def parse_student_bits(bits: str | None, method: str) -> tuple[int, int | None]:
    """``"w4a4"`` → (4, 4); ``"w2"`` → (2, None) for the weight-only methods. Defaults:
    w4a4 for ``qat``/``lsq``, w4 for ``qd``/``dq``."""
    weight_only = method in ("qd", "dq")
    text = (bits or ("w4" if weight_only else "w4a4")).strip().lower()
    m = re.fullmatch(r"w(\d+)(?:a(\d+))?", text)
    if m is None:
        raise ConfigError(f"bits must look like w4a4 or w2, got {bits!r}")
    w, a = int(m.group(1)), None if m.group(2) is None else int(m.group(2))
    if weight_only and a is not None:
        raise ConfigError(
            f"{method} quantizes weights only (Polino et al.); give bits as w{w}, not {text}"
        )
    if not weight_only and a is None:
        raise ConfigError(f"{method} quantizes activations too; give bits as w{w}a{w}")
    return w, a


@dataclass
class StudentData:
    """The training set of a student run: images (normalised in the data's space),
    labels, optional stored logits and their temperature, and where they came from."""

    images: torch.Tensor
    labels: torch.Tensor
    soft: torch.Tensor | None = None
    temperature: float | None = None
    source: str = "real training split"
    data_free: bool = False
    extra: dict = field(default_factory=dict)


def _loss_note(recipe: TrainRecipe, teachers: int, data: StudentData) -> str:
    targets = bool(teachers) or data.soft is not None
    if recipe.kd == "none" or not targets:
        return "cross-entropy on the labels" + (" (kd none: no distillation)" if targets else "")
    if teachers:
        ens = f"the mean of {teachers} teachers' softmax" if teachers > 1 else "the teacher"
        return f"{recipe.kd} KD from {ens} on every augmented batch (kd_alpha {recipe.kd_alpha})"
    return f"{recipe.kd} KD from the stored logits"


class _Ensemble(nn.Module):
    """Several teachers as one target: the log of the mean of their softmax outputs
    (MEAL V2's target; a KD loss's log_softmax of it gives back the mean probabilities
    at T = 1 and a sharpened average at other temperatures)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 logits: CPU autocast (precision=bf16) would round the log-softmax
        logs = torch.stack([F.log_softmax(m(x).float(), dim=1) for m in self.members])
        return torch.logsumexp(logs, dim=0) - math.log(len(self.members))


@torch.no_grad()
def test_logits(model: nn.Module, data: RealDataset, device: torch.device) -> torch.Tensor:
    model.eval()
    out = []
    for i in range(0, len(data.x_test), 500):
        out.append(model(data.normalize(data.x_test[i : i + 500]).to(device)).cpu())
    return torch.cat(out)


def _top1(logits: torch.Tensor, data: RealDataset) -> float:
    return 100.0 * int((logits.argmax(1) == data.y_test).sum()) / len(data.y_test)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if not n.endswith(("step", "points")))


def train_student(
    data: RealDataset,
    train: StudentData,
    cfg: StudentConfig,
    recipe: TrainRecipe,
    out: str | os.PathLike,
    *,
    teachers: list[nn.Module] | None = None,
    teacher_meta: dict | None = None,
    device: torch.device | str = "cpu",
    quiet: bool = False,
    resume: bool = False,
    log: Any = None,
    group: Dist = ONE,
) -> dict:
    """Train a student on ``train`` as ``cfg`` and ``recipe`` say, save it to ``out``
    (a quantized student file, or a network file when not quantized) and return the
    report (see the module docstring). Resumable from ``out``'s checkpoint.

    Under torchrun (``group``) the one student trains data-parallel (see
    :func:`~distill_data.train.fit`); rank 0 writes the checkpoints and the file, and
    every rank returns the report.

    Raises:
        ConfigError: a data-free set without a teacher, ``init="teacher"`` without one,
            or a checkpoint from other settings.
        DivergedError: the loss became NaN (nothing is saved).
    """
    device = torch.device(device)
    log = log if group.main else None  # under torchrun rank 0 tells
    teachers = [t.to(device).eval() for t in (teachers or [])]
    for t in teachers:
        for p in t.parameters():
            p.requires_grad_(False)
    if train.data_free and not teachers:
        raise ConfigError(
            "a data-free calibration set has no ground-truth labels, only a teacher's "
            f"predictions: pass the teacher ({opt('teacher', 'T.pt')})"
        )
    if cfg.init == "teacher" and not teachers:
        raise ConfigError(f"init=teacher needs a teacher ({opt('teacher', 'T.pt')})")
    if cfg.feature_weight > 0 and not teachers:
        raise ConfigError("feature_weight > 0 matches a teacher's features: pass a teacher")
    if recipe.precision != "fp32" and cfg.quant != "none":
        raise ConfigError(
            f"precision={recipe.precision} trains float students only: bfloat16 would round "
            f"quant={cfg.quant}'s fake-quantization grids; use precision=fp32"
        )
    spec = cfg.spec()
    g = torch.Generator().manual_seed(cfg.seed)
    if cfg.init == "teacher":
        student = copy.deepcopy(teachers[0]).cpu()
        for p in student.parameters():
            p.requires_grad_(True)
        if not hasattr(student, "arch"):
            raise ConfigError("init=teacher needs a teacher built by distill-data (a .pt file)")
    elif cfg.init != "scratch":
        student = _network_from_file(cfg.init, data)
    else:
        opts = {} if cfg.width is None else {"width": cfg.width}
        student = build_model(
            cfg.model, data.channels, data.num_classes, data.im_size, generator=g, **opts
        )
    float_params = _params(student)
    if train.data_free:  # a data-free set's only labels are the teacher's predictions
        train = replace(train, labels=_teacher_labels(teacher_of(teachers), train, device))
    if spec is not None:
        if cfg.init == "scratch" and spec.method in ("qat", "lsq"):
            _calibrate_batchnorm(student, train, recipe)
        quantize_(student, spec)
    student.to(device)
    rounding = _rounding_generators(student, cfg.seed, device)
    allocation = _allocate_points(student, train, recipe, cfg, device) if cfg.dq_allocate else None
    params = _param_groups(student, cfg, recipe)
    trained_params = sum(p.numel() for p in student.parameters() if p.requires_grad)
    teacher = teacher_of(teachers)
    aux, remove_hooks = _feature_term(student, teachers[0], cfg) if cfg.feature_weight else (
        None, lambda: None)  # fmt: skip

    out = Path(out)
    ckpt = checkpoint_path_for(out)
    signature = {
        "config": repr(sorted(asdict(cfg).items())),
        # precision only when not the default: checkpoints from before it existed resume
        "recipe": repr(
            sorted((k, v) for k, v in asdict(recipe).items() if k != "precision" or v != "fp32")
        ),  # fmt: skip
        "data": train.source,
        "n": len(train.images),
        "teachers": len(teachers),
    }
    state = None
    if resume and group.broadcast(ckpt.exists() if group.main else None):
        payload = group.broadcast(
            together(group, lambda: load_checkpoint(ckpt) if group.main else None)
        )
        if payload.get("signature") != signature:
            raise ConfigError(
                f"checkpoint {ckpt} was made with other settings; rerun without "
                f"{opt('resume', True)} to start over"
            )
        try:
            student.load_state_dict(payload["model"])
            state = FitState(**payload["fit"])
            restored = {k: bool(payload["frozen"][k]) for k in ("bn", "observers")}
            if not isinstance(state.epoch, int) or not 0 < state.epoch < recipe.epochs:
                raise ValueError(f"epoch {state.epoch!r} is not inside this run")
        except (KeyError, TypeError, RuntimeError, ValueError, AttributeError) as e:
            raise StoreError(
                f"checkpoint {ckpt} does not fit this run ({e}); delete it or rerun without "
                f"{opt('resume', True)}"
            ) from None
        if restored["bn"]:  # freezing is state outside the state dict
            freeze_batchnorm(student)
        if restored["observers"]:
            freeze_observers(student)
        if log:
            log(f"resuming from epoch {state.epoch} ({ckpt})")

    frozen = {"bn": False, "observers": False} if state is None else restored

    if cfg.keep_bn_stats:
        keep_batchnorm_statistics(student)

    def due(fraction: float | None, ep: int) -> bool:
        # never before one epoch of statistics has been seen (int(0.9 * 1) would be 0)
        return fraction is not None and ep >= max(1, int(fraction * recipe.epochs))

    def epoch_start(ep: int) -> None:  # called after model.train()
        for i, gen in enumerate(rounding):  # each epoch's rounding from (seed, epoch, layer)
            gen.manual_seed((cfg.seed * 100_003 + ep) * 1009 + i + 1)
        if frozen["bn"] or due(cfg.freeze_bn_at, ep):
            freeze_batchnorm(student)  # again each epoch: train() undid the eval mode
            frozen["bn"] = True
        if spec is None:
            return
        if due(cfg.freeze_observers_at, ep) and not frozen["observers"]:
            freeze_observers(student)
            frozen["observers"] = True

    def epoch_end(ep: int, fit_state: FitState) -> None:
        together(group, lambda: save(ep, fit_state) if group.main else None)

    def save(ep: int, fit_state: FitState) -> None:
        if ep + 1 < recipe.epochs:
            save_checkpoint(
                ckpt,
                {
                    "model": {k: v.detach().cpu() for k, v in student.state_dict().items()},
                    "fit": asdict(fit_state),
                    "frozen": dict(frozen),
                    "signature": signature,
                },
            )

    t0 = time.perf_counter()
    start_epoch = 0 if state is None else state.epoch
    try:
        per = steps_per_epoch(len(train.images), recipe)
        with tqdm(
            total=recipe.epochs * per,
            initial=start_epoch * per,
            unit="step",
            desc=f"student {cfg.model if cfg.init == 'scratch' else 'from teacher'}"
            + ("" if spec is None else f" {spec.method} {spec.tag}"),
            disable=quiet or not group.main,
            dynamic_ncols=True,
        ) as bar:
            fit(
                student,
                TrainData(train.images, train.labels, train.soft, train.temperature, space=data),
                recipe,
                generator=g,
                teacher=teacher,
                bar=bar,
                bar_unit="step",
                params=params,
                aux_loss=aux,
                epoch_start=epoch_start,
                epoch_end=epoch_end,
                resume=state,
                group=group,
            )
    except DivergedError as e:
        raise DivergedError(
            f"student {e}; lower {setting('lr', float(f'{recipe.lr / 10:g}'))} (now {recipe.lr:g})"
        ) from None
    except RuntimeError as e:  # DDP's all-reduce when another rank is gone
        if group.active and lost_peer(e):
            raise PeerFailed(f"lost contact with another rank ({first_line(e)})") from None
        raise
    finally:
        remove_hooks()
    seconds = time.perf_counter() - t0
    epochs_run = recipe.epochs - start_epoch

    def finish() -> dict | None:
        if not group.main:  # rank 0 tests, saves and reports
            return None
        student.eval()
        bad = nonfinite_tensors(student)
        if bad:
            raise DivergedError(f"the student's {', '.join(bad[:3])} became NaN; lower the lr")
        logits = test_logits(student, data, device)
        report: dict = {
            "student": {
                "model": student.arch,
                "config": {k: v for k, v in student.config.items() if k != "im_size"},
                "parameters": float_params,
                # what the optimizer changed (steps and points included)
                "trained_parameters": trained_params,
            },
            "data": {"source": train.source, "images": len(train.images), **train.extra},
            "loss": _loss_note(recipe, len(teachers), train),
            "test_accuracy": _top1(logits, data),
            "train_seconds": round(seconds, 2),
            "seconds_per_epoch": round(seconds / max(1, epochs_run), 3),
            "epochs": recipe.epochs,
        }
        if teachers:
            t_logits = test_logits(teacher, data, device)
            report["teacher"] = {
                "count": len(teachers),
                "test_accuracy": _top1(t_logits, data),
                "parameters": sum(_params(t) for t in teachers),
            }
        meta = {
            "dataset": data.name,
            "dataset_source": data.source,
            "dataset_fingerprint": data.fingerprint,
            "input_shape": [data.channels, *data.im_size],
            "classes": list(data.classes),
            "mean": list(data.mean),
            "std": list(data.std),
            "test_accuracy": report["test_accuracy"],
            "student_config": asdict(cfg),
            "train_recipe": asdict(recipe),
            # the float student's parameters (before quantization and BatchNorm folding):
            # the fp32 baseline of every size comparison, here and in `inspect`
            "fp32_parameters": float_params,
            **({"teacher": teacher_meta} if teacher_meta else {}),
        }
        if spec is None:
            save_model(student.cpu(), out, meta=meta)
            tensors = sum(t.numel() * t.element_size() for t in student.state_dict().values())
            report["file_bytes"] = out.stat().st_size
            report["payload_bytes"] = tensors
            report["fp32_bytes"] = 4 * float_params
        else:
            from distill_data.quant.student import load_student, save_student, student_summary

            with float_mode(student):
                report["float_test_accuracy"] = _top1(test_logits(student, data, device), data)
            report["quant"] = {**spec.in_effect(), "layers": weight_bits_report(student)}
            if allocation is not None:
                report["quant"]["points_allocation"] = allocation
            payload = save_student(student.cpu(), spec, out, meta=meta)
            summary = student_summary(payload)
            loaded, _ = load_student(out)
            again = test_logits(loaded.to(device), data, device)
            report["integer_student"] = {
                "file": str(out),
                "file_bytes": out.stat().st_size,
                "payload_bytes": summary["bytes"],
                # the float student's parameters before quantization (and folding), as for
                # the float runs, so every row of a comparison has the same baseline
                "fp32_bytes": summary["fp32_bytes"],
                "compression": summary["compression"],
                "test_accuracy": _top1(again, data),
                "top1_agreement_with_fake_quant": 100.0
                * float((again.argmax(1) == logits.argmax(1)).float().mean()),
                "max_abs_logit_difference": float((again - logits).abs().max()),
            }
        ckpt.unlink(missing_ok=True)
        return report

    return group.broadcast(together(group, finish))


def teacher_of(teachers: list[nn.Module]) -> nn.Module | None:
    """The distillation target: the teacher, or an ensemble of them."""
    if not teachers:
        return None
    return teachers[0] if len(teachers) == 1 else _Ensemble(teachers)


@torch.no_grad()
def _teacher_labels(teacher: nn.Module, train: StudentData, device: torch.device) -> torch.Tensor:
    """The teacher's predicted classes of a data-free set (noise has no class; a ZeroQ
    set's stored labels are these already): the labels of any cross-entropy term."""
    out = [
        teacher(train.images[i : i + 256].to(device)).argmax(1).cpu()
        for i in range(0, len(train.images), 256)
    ]
    return torch.cat(out)


@torch.no_grad()
def _calibrate_batchnorm(student: nn.Module, train: StudentData, recipe: TrainRecipe) -> None:
    """Set a fresh student's BatchNorm running statistics from up to 8 training batches
    (cumulative average) before its Conv-BN pairs are folded: LSQ initialises each step
    on the folded weights ``W·γ/σ``, and with the untrained ``σ = 1`` the steps were off
    by the ratio of the real statistics; a 2-epoch LSQ student then collapsed to 10 %
    (measured on mnist5k). A generator of its own leaves the training draws unchanged."""
    bns = [m for m in student.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches below
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(train.images), generator=g)
    student.train()
    for i in range(min(8, -(-len(perm) // recipe.batch_size))):
        student(train.images[perm[i * recipe.batch_size : (i + 1) * recipe.batch_size]])
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum


def _rounding_generators(student: nn.Module, seed: int, device: torch.device) -> list:
    """One generator per ``qd`` layer that rounds stochastically, on the layer's device.
    Each epoch reseeds them from (seed, epoch, layer), apart from the training draws and
    from each other, so a resumed run rounds as an uninterrupted one without carrying
    their state."""
    gens = []
    for q in quant_layers(student).values():
        if isinstance(q.wq, BucketUniform) and q.wq.stochastic:
            q.wq.generator = torch.Generator(device=device).manual_seed(seed)
            gens.append(q.wq.generator)
    return gens


def _network_from_file(path: str, data: RealDataset) -> nn.Module:
    """The network in ``path`` as a student's starting point, checked against the data."""
    from distill_data.models import load_model

    if not Path(path).is_file():
        raise ConfigError(f"init={path!r}: no such network file")
    model, meta = load_model(path)
    want = [data.channels, *data.im_size]
    if meta.get("input_shape") not in (None, want):
        raise ConfigError(f"init={path!r} takes {meta['input_shape']} inputs, the data is {want}")
    if model.config.get("num_classes") != data.num_classes:
        raise ConfigError(
            f"init={path!r} predicts {model.config.get('num_classes')} classes, "
            f"the data has {data.num_classes}"
        )
    return model


def _allocate_points(
    student: nn.Module,
    train: StudentData,
    recipe: TrainRecipe,
    cfg: StudentConfig,
    device: torch.device,
) -> dict:
    """Polino's bit allocation for ``dq``: the gradient norm of each quantized layer's
    weight, averaged over 5 cross-entropy minibatches (a generator of its own, so the
    training draws do not change), redistributes the points (total preserved, half of
    each layer's points as a floor); each layer's points are re-initialised at the
    quantiles of its weights. Only layers at the student's bit width take part (the first
    and last at ``first_last_bits`` keep theirs). Returns ``{layer: [points before, after,
    gradient norm]}``."""
    from distill_data.quant.fakequant import allocate_bits, quantile_points

    body = cfg.spec().w_bits  # first/last layers kept at first_last_bits are not traded
    layers = {
        n: q
        for n, q in quant_layers(student).items()
        if isinstance(q.wq, LearnedPoints) and q.spec.w_bits == body
    }
    weights = [q.layer.weight for q in layers.values()]
    flags = [w.requires_grad for w in weights]
    for w in weights:
        w.requires_grad_(True)
    sums = [torch.zeros_like(w) for w in weights]
    g = torch.Generator().manual_seed(cfg.seed + 2)
    perm = torch.randperm(len(train.images), generator=g)
    student.train()
    for i in range(5):
        idx = perm[i * recipe.batch_size : (i + 1) * recipe.batch_size]
        if len(idx) == 0:
            break
        x, y = train.images[idx].to(device), train.labels[idx].to(device)
        grads = torch.autograd.grad(F.cross_entropy(student(x), y), weights, allow_unused=True)
        for acc, gr in zip(sums, grads):
            if gr is not None:
                acc += gr
    for w, flag in zip(weights, flags):
        w.requires_grad_(flag)
    norms = [float((acc / 5).norm()) for acc in sums]
    before = [q.wq.points.numel() for q in layers.values()]
    after = allocate_bits(norms, before, unit="points")
    if max(after) > 256:
        raise ConfigError(
            f"the allocation gives a layer {max(after)} points, more than 8-bit codes hold; "
            "use fewer bits with dq_allocate"
        )
    for q, n in zip(layers.values(), after):
        pts = quantile_points(q.layer.weight.detach(), num_points=n, bucket_size=q.wq.bucket_size)
        q.wq.points = nn.Parameter(pts.float().to(q.wq.points.device))
    return {name: [b, a, round(gn, 6)] for name, b, a, gn in zip(layers, before, after, norms)}


def _param_groups(student: nn.Module, cfg: StudentConfig, recipe: TrainRecipe) -> list[dict] | None:
    """``lsq``: the step sizes at ``step_lr_scale`` × the recipe's lr, no weight decay
    (with ``freeze_weights`` the convolution and linear weights are left out and stop
    needing gradients); ``dq``: the points at ``points_lr`` (no weight decay), plus the
    weights when they train too (``dq_weights``); otherwise every parameter in one group."""
    if cfg.quant == "lsq":
        steps = [p for n, p in student.named_parameters() if n.endswith(".step")]
        ids = {id(p) for p in steps}
        if cfg.freeze_weights:
            for m in student.modules():
                if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                    m.weight.requires_grad_(False)
                    ids.add(id(m.weight))
        rest = [p for p in student.parameters() if id(p) not in ids]
        return [
            {"params": rest},
            {"params": steps, "lr": recipe.lr * cfg.step_lr_scale, "weight_decay": 0.0},
        ]
    if cfg.quant != "dq":
        return None
    points = [m.points for m in student.modules() if isinstance(m, LearnedPoints)]
    ids = {id(p) for p in points}
    groups: list[dict] = [{"params": points, "lr": cfg.points_lr, "weight_decay": 0.0}]
    rest = [p for p in student.parameters() if id(p) not in ids]
    weights = cfg.dq_weights if cfg.dq_weights is not None else cfg.init == "scratch"
    # (a student that starts from trained weights, the teacher's or a file's, keeps them)
    if weights:
        groups.append({"params": rest})
    else:
        for p in rest:
            p.requires_grad_(False)
    return groups


def _feature_term(student: nn.Module, teacher: nn.Module, cfg: StudentConfig):
    """``feature_weight`` × the mean MSE of every quantized layer's output against the
    teacher's output at the same place (after its BatchNorm where the student folded
    it), collected by forward hooks; returns (aux_loss, remove_hooks)."""
    layers = quant_layers(student)
    if not layers:
        raise ConfigError("feature_weight needs a quantized student (quant=...)")
    t_modules = dict(teacher.named_modules())
    s_feats: dict[str, torch.Tensor] = {}
    t_feats: dict[str, torch.Tensor] = {}
    handles = []
    for name, q in layers.items():
        # the teacher's BatchNorm output where the student folded it into this conv
        target = q.bn_name or name
        if target not in t_modules:
            raise ConfigError(
                f"feature_weight matches layer outputs by name: the teacher has no {target!r} "
                "(use init=teacher, or a teacher of the student's architecture)"
            )
        handles.append(q.register_forward_hook(lambda m, a, o, n=name: s_feats.__setitem__(n, o)))
        handles.append(
            t_modules[target].register_forward_hook(
                lambda m, a, o, n=name: t_feats.__setitem__(n, o.detach())
            )
        )

    def aux() -> torch.Tensor:
        names = [n for n in s_feats if n in t_feats]
        loss = feature_mse([s_feats[n] for n in names], [t_feats[n] for n in names])
        s_feats.clear()
        t_feats.clear()
        return cfg.feature_weight * loss

    def remove() -> None:
        for h in handles:
            h.remove()

    return aux, remove


def student_recipe(name: str, overrides: dict | None, kd: str | None) -> TrainRecipe:
    """The preset ``name`` with ``--set`` overrides and the ``kd`` choice applied (each
    loss at its paper's weight and temperature unless the overrides set them)."""
    from distill_data.train.recipe import get_recipe

    recipe = get_recipe(name)
    if kd is not None and "kd" in (overrides or {}):  # one way in, as every setting
        raise ConfigError(f"kd is given twice ({opt('kd')} and {setting('kd')})")
    if kd is not None:
        if kd not in KD_CHOICES:
            raise ConfigError(f"unknown kd {kd!r}; choose from: {', '.join(KD_CHOICES)}")
        defaults = {"polino": (0.7, 2.0), "hinton": (0.9, 4.0), "bdkd": (0.9, 4.0)}
        if kd != recipe.kd:  # another loss: at its paper's weight and temperature
            alpha, temp = defaults.get(kd, (recipe.kd_alpha, recipe.temperature))
            recipe = replace(recipe, kd=kd, kd_alpha=alpha, temperature=temp)
    student_fields = set(StudentConfig.__dataclass_fields__)
    misplaced = sorted(set(overrides or {}) & student_fields)
    if misplaced:  # dd.train(options=...) holds recipe settings only
        raise ConfigError(
            f"{', '.join(misplaced)}: a student setting, not a recipe one; pass it to "
            f"dd.train as a keyword ({misplaced[0]}=...), not in options"
        )
    recipe_fields = set(TrainRecipe.__dataclass_fields__)
    unknown = set(overrides or {}) - recipe_fields
    if unknown:  # name both families: the key may have been meant for either
        raise unknown_settings(
            unknown, {"student settings": student_fields, "recipe settings": recipe_fields}
        )
    return recipe.with_settings(overrides)


def format_student_report(report: dict) -> str:
    """Human-readable summary lines of a student report."""
    st = report["student"]
    trained = st.get("trained_parameters", st["parameters"])
    some = f", {trained:,} trained" if trained < st["parameters"] else ""  # freeze_weights, dq
    precision = report.get("settings", {}).get("recipe", {}).get("precision", "fp32")
    lines = [
        f"student {st['model']} ({st['parameters']:,} parameters{some}) on "
        f"{report['data']['source']}"
        f" ({report['data']['images']} images): {report['loss']}, "
        f"{plural(report['epochs'], 'epoch')}, "
        f"{report['seconds_per_epoch']:.2f} s/epoch"
        + (f", trained in {precision}" if precision != "fp32" else "")
    ]
    if "teacher" in report:
        t = report["teacher"]
        lines.append(
            f"  teacher          {t['test_accuracy']:6.2f} %   ({t['parameters']:,} params)"
        )
    if "quant" not in report:
        buffers = report["payload_bytes"] != report["fp32_bytes"]  # BatchNorm statistics
        lines.append(
            f"  student          {report['test_accuracy']:6.2f} %   (float: fp32 parameters "
            f"{report['fp32_bytes']:,} bytes, the baseline of every compression figure"
            + (f"; {report['payload_bytes']:,} with its buffers)" if buffers else ")")
        )
        return "\n".join(lines)
    q, integer = report["quant"], report["integer_student"]
    tag = f"w{q['w_bits']}" + ("" if q.get("a_bits") is None else f"a{q['a_bits']}")
    lines.append(f"  student float    {report['float_test_accuracy']:6.2f} %")
    lines.append(
        f"  student {q['method'] + ' ' + tag:<9}{report['test_accuracy']:6.2f} %   (integer "
        f"codes, scales and float tensors {integer['payload_bytes']:,} bytes, "
        f"{integer['compression']:.2f}x smaller than fp32's {integer['fp32_bytes']:,}; file "
        f"{integer['file_bytes']:,} bytes with its headers; it predicts as trained on "
        f"{integer['top1_agreement_with_fake_quant']:.2f} % of the test images)"
    )
    return "\n".join(lines)
