"""How a network is trained, as one frozen, validated config: :class:`TrainRecipe`.

Every training loop in the package (the evaluation protocol's students, teachers,
NCFM's feature-extractor pool, the student trainer) is :func:`~distill_data.train.fit`
run with a recipe. The named presets in :data:`RECIPES` are the protocols the field
uses; any field can be overridden with ``dataclasses.replace`` (from Python) or
``--set key=value`` (on the command line).

Presets:

``dc``
    The dataset-condensation evaluation protocol (DC/DSA/DM: Zhao et al., ICLR 2021;
    Zhao & Bilen, ICML 2021 / WACV 2023): SGD (lr 0.01, momentum 0.9, weight decay
    5e-4), batch 256, learning rate ×0.1 at half the epochs, DSA on every batch;
    cross-entropy on hard labels, or Hinton's T²·KL on soft ones.
``sre2l``
    The official SRe2L small-dataset student (VILA-Lab/SRe2L ``relabel_cifar.py``):
    AdamW (lr 1e-3, weight decay 0.01), cosine to 0 over the epochs, batch 128, mixup
    (α = 0.8) on every batch, KL without the T² factor.
``infer``
    INFER's student (zhangxin-xd/UFC ``sh/ufc_cifar.sh``): ``sre2l`` at batch 64.
``teacher``
    How ``distill-data teacher`` trains a BatchNorm teacher on real data: SGD (lr 0.05,
    momentum 0.9, weight decay 5e-4), batch 128, ×0.1 at half, DSA.
``student``
    Our default for ``distill-data train``: the teacher recipe's SGD (lr 0.05, momentum
    0.9, weight decay 5e-4, batch 128) with a cosine schedule and DSA, and Hinton's loss
    0.9·T²·KL + 0.1·CE at T = 4 (the weighted average of Hinton et al. 2015, §2, with the
    temperature of the CIFAR distillation baselines); 30 epochs.
``finetune``
    ``student`` for a network that is already trained (``init=teacher`` or a file):
    10 epochs at lr 0.005 (LSQ fine-tunes at 0.01, Esser et al. §3; at the student's
    0.05 a trained ResNet-20 fell from 95.5 % to 85 % in one epoch, measured).
``zsqat``
    Zero-shot QAT's fine-tune of a quantized teacher on synthetic images alone: KD at
    T = 4 only (the labels of a data-free set are the teacher's own predictions), SGD lr
    0.005 with a cosine schedule (the ``finetune`` rate), batch 64, DSA; our choice of
    optimiser settings (the ICCV 2025 recipe trains detectors).
``polino``
    The student recipe of quantized distillation (Polino, Pascanu & Alistarh, ICLR
    2018, §2 and the official code's ``cifar10_test.py``): SGD with Nesterov momentum
    0.9, loss 0.7·T²·KL + 0.3·CE at T = 2, no DSA (the code trains on plain images).
    The code's lr and schedule (1e-3, halved on plateaus, batch 25, 200 epochs) are for
    CIFAR-10 at full size; here lr 0.01 at batch 128 with a cosine schedule, stated
    as our choice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from distill_data.config import make_config, require
from distill_data.errors import ConfigError
from distill_data.runtime import PRECISIONS

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine", "constant")
#: Batch mixing: none, mixup (Zhang et al., ICLR 2018) or CutMix (Yun et al., ICCV 2019).
MIX_KINDS = ("none", "mixup", "cutmix")
#: Distillation losses of :mod:`distill_data.train.losses` (``none``: cross-entropy only).
KD_KINDS = ("hinton", "polino", "bdkd", "none")


@dataclass(frozen=True)
class TrainRecipe:
    """One training protocol: optimiser, schedule, batches, augmentation, mixing, loss.

    Attributes:
        epochs: passes over the training images.
        batch_size: images per step.
        optimizer: ``sgd`` (momentum, optional Nesterov) or ``adamw``.
        lr: initial learning rate.
        momentum: SGD momentum; None with AdamW, which has its own betas.
        nesterov: SGD with Nesterov momentum.
        weight_decay: L2 penalty (SGD) or decoupled decay (AdamW).
        schedule: ``step`` (×``decay_factor`` from epoch ``int(epochs·decay_at)`` on),
            ``cosine`` (to 0 over the epochs, set per epoch as ``CosineAnnealingLR``)
            or ``constant``.
        decay_at: fraction of the epochs at which ``step`` decays; must be None for the
            other schedules (it would be silently ignored otherwise).
        decay_factor: the ``step`` schedule's multiplier.
        augment: ``dsa`` (differentiable siamese augmentation, :mod:`distill_data.augment`),
            ``none``, or a kornia pipeline preset (``distill_data.augment.PRESETS``).
        dsa_strategy: DSA ops; None: the field's strategy for the data (no flip on digits).
        mix: ``none``, ``mixup`` or ``cutmix`` (needs soft targets or a teacher to label
            the mixed batch).
        mix_alpha: α of the Beta(α, α) mixing weight (> 0 exactly when ``mix`` is set).
        kd: the loss on soft targets (stored logits or a teacher): ``hinton`` (T²·KL),
            ``polino`` (α·T²·KL + (1−α)·CE), ``bdkd`` or ``none`` (cross-entropy on the
            hard labels even when soft targets exist).
        kd_alpha: weight of the distillation term (``polino``: 0.7; ``hinton``: 1 = KD only).
        temperature: softmax temperature of the distillation term; None: the stored set's
            temperature, or the loss's paper default when a teacher labels the batches.
        kd_t2: multiply the KL term by T² (Hinton's scaling); SRe2L's students drop it.
        precision: ``fp32`` (the papers') or ``bf16``: the forward passes (student and
            teacher) under bfloat16 autocast, the weights, optimiser, losses and the test
            pass in float32 (:func:`distill_data.runtime.autocast_for`). Faster where the
            hardware has bfloat16 arithmetic; results move by its rounding, so tables
            made with it say so. Float networks only: the student trainer refuses it
            with ``quant`` (bfloat16 would round the fake-quantization grids).
    """

    epochs: int = 300
    batch_size: int = 256
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float | None = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "step"
    decay_at: float | None = 0.5
    decay_factor: float = 0.1
    augment: str = "dsa"
    dsa_strategy: str | None = None
    mix: str = "none"
    mix_alpha: float = 0.0
    kd: str = "hinton"
    kd_alpha: float = 1.0
    temperature: float | None = None
    kd_t2: bool = True
    precision: str = "fp32"

    def __post_init__(self) -> None:
        from distill_data.augment import PRESETS

        require(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        require(
            self.optimizer in OPTIMIZERS,
            f"unknown optimizer {self.optimizer!r}; choose from: {', '.join(OPTIMIZERS)}",
        )
        require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        if self.optimizer == "sgd":
            require(
                self.momentum is not None and 0 <= self.momentum < 1,
                f"momentum must be in [0, 1) for SGD, got {self.momentum}",
            )
            require(not self.nesterov or self.momentum > 0, "nesterov needs momentum > 0")
        else:
            require(
                self.momentum is None and not self.nesterov,
                "momentum and nesterov are SGD settings; AdamW has its own betas "
                "(set momentum=none)",
            )
        require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        require(
            self.schedule in SCHEDULES,
            f"unknown schedule {self.schedule!r}; choose from: {', '.join(SCHEDULES)}",
        )
        if self.schedule == "step":
            require(
                self.decay_at is not None and 0 <= self.decay_at <= 1,
                f"decay_at must be in [0, 1] for the step schedule, got {self.decay_at}",
            )
            require(0 < self.decay_factor <= 1, "decay_factor must be in (0, 1]")
        else:
            require(
                self.decay_at is None,
                f"decay_at={self.decay_at} only applies to the step schedule, not "
                f"{self.schedule!r}; set decay_at=none",
            )
        augments = ("dsa", "none", *PRESETS)
        require(
            self.augment in augments,
            f"unknown augment {self.augment!r}; choose from: {', '.join(augments)}",
        )
        require(
            self.dsa_strategy is None or self.augment == "dsa",
            "dsa_strategy is a setting of augment=dsa",
        )
        require(self.mix in MIX_KINDS, f"unknown mix {self.mix!r}; choose from: {MIX_KINDS}")
        require(
            (self.mix == "none") == (self.mix_alpha == 0),
            f"mix_alpha must be > 0 with mix={self.mix!r} and 0 without mixing, "
            f"got {self.mix_alpha}",
        )
        require(self.mix_alpha >= 0, f"mix_alpha must be >= 0, got {self.mix_alpha}")
        require(self.kd in KD_KINDS, f"unknown kd {self.kd!r}; choose from: {', '.join(KD_KINDS)}")
        require(0 <= self.kd_alpha <= 1, f"kd_alpha must be in [0, 1], got {self.kd_alpha}")
        require(
            self.mix == "none" or self.kd_alpha == 1 or self.kd == "none",
            f"mix={self.mix!r} with kd_alpha={self.kd_alpha} would train the cross-entropy "
            "term on the unmixed labels of a mixed batch; use kd_alpha=1",
        )
        require(
            self.temperature is None or self.temperature > 0,
            f"temperature must be > 0, got {self.temperature}",
        )
        require(
            self.precision in PRECISIONS,
            f"unknown precision {self.precision!r}; choose from: {', '.join(PRECISIONS)}",
        )

    @property
    def mixup(self) -> float:
        """The mixup α (0 unless ``mix == "mixup"``)."""
        return self.mix_alpha if self.mix == "mixup" else 0.0

    @property
    def cutmix(self) -> float:
        """The CutMix α (0 unless ``mix == "cutmix"``)."""
        return self.mix_alpha if self.mix == "cutmix" else 0.0

    def with_settings(self, overrides: dict[str, Any] | None) -> TrainRecipe:
        """This recipe with ``overrides`` (``--set`` strings or Python values) applied,
        every value type-checked and the result validated as a whole."""
        if not overrides:
            return self
        merged = {**_fields(self), **overrides}
        return make_config(TrainRecipe, merged)


def _fields(recipe: TrainRecipe) -> dict[str, Any]:
    return {k: getattr(recipe, k) for k in recipe.__dataclass_fields__}


_SRE2L = TrainRecipe(
    batch_size=128,
    optimizer="adamw",
    lr=1e-3,
    momentum=None,
    weight_decay=0.01,
    schedule="cosine",
    decay_at=None,
    mix="mixup",
    mix_alpha=0.8,
    kd_t2=False,
)

#: The named training protocols (see the module docstring for their sources).
RECIPES: dict[str, TrainRecipe] = {
    "dc": TrainRecipe(),
    "sre2l": _SRE2L,
    "infer": replace(_SRE2L, batch_size=64),
    "teacher": TrainRecipe(epochs=30, batch_size=128, lr=0.05),
    "student": TrainRecipe(
        epochs=30,
        batch_size=128,
        lr=0.05,
        schedule="cosine",
        decay_at=None,
        kd="hinton",
        kd_alpha=0.9,
        temperature=4.0,
    ),
    "finetune": TrainRecipe(
        epochs=10,
        batch_size=128,
        lr=0.005,
        schedule="cosine",
        decay_at=None,
        kd="hinton",
        kd_alpha=0.9,
        temperature=4.0,
    ),
    "zsqat": TrainRecipe(
        epochs=30,
        batch_size=64,
        lr=0.005,
        schedule="cosine",
        decay_at=None,
        kd="hinton",
        kd_alpha=1.0,
        temperature=4.0,
    ),
    "polino": TrainRecipe(
        batch_size=128,
        nesterov=True,
        schedule="cosine",
        decay_at=None,
        augment="none",
        kd="polino",
        kd_alpha=0.7,
        temperature=2.0,
    ),
}


def get_recipe(name: str) -> TrainRecipe:
    """The preset ``name`` (ConfigError naming the valid ones)."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose from: {', '.join(RECIPES)}")
    return RECIPES[name]
