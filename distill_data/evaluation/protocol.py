"""The field's train-from-scratch evaluation protocol.

As in DC/DSA/DM (Zhao et al., ICLR 2021; Zhao & Bilen, ICML 2021 / WACV 2023): train R
freshly initialised networks on the condensed set with SGD (lr 0.01, momentum 0.9,
weight decay 5e-4, batch 256), multiply the learning rate by 0.1 at half the epochs,
apply DSA to every training batch, and test each on the real test split. The result is
the mean ± std over the R models **at the final epoch** (never the best epoch).

``recipe="sre2l"`` trains the students instead as the official SRe2L small-dataset code
does (VILA-Lab/SRe2L ``relabel_cifar.py``): AdamW (lr 1e-3, weight decay 0.01), a cosine
schedule over the epochs, batch 128, mixup (α = 0.8) on every batch with the teacher
labelling the mixed batch, KL at the store's temperature without the T² factor. It keeps
our architecture, DSA (in place of the code's random crop and flip; ``pipeline=
"random_crop"`` runs the code's ``RandomCrop(padding=4)`` and flip instead, on kornia)
and the final epoch (the code also saves the last checkpoint), so it needs soft labels
relabelled online by a teacher. ``mix="cutmix"`` mixes by CutMix (α = 1) instead of
mixup, the other ``--mix-type`` of SRe2L's ImageNet relabelling (``relabel/
generate_soft_label.py``).

``recipe="infer"`` is INFER's student recipe (zhangxin-xd/UFC, ``val_static.py`` and
``val_dyn.py`` as ``sh/ufc_cifar.sh`` runs them): the same optimiser, schedule, mixup and
loss at batch 64. With the store's logits (INFER's "static labeling", the one its
label-storage claim rests on) the target of a mixed pair is the same mix of the two
stored logit vectors, λ·z_i + (1 − λ)·z_j; with ``relabel="online"`` the teacher labels
every mixed batch (INFER+Dyn). Epochs stay ours (the code: 400 static, 80 dynamic).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from distill_data.augment import (
    DSA,
    MIXES,
    PRESETS,
    AugmentPipeline,
    is_preset,
    strategy_for,
)
from distill_data.config import require
from distill_data.data import RealDataset
from distill_data.errors import DivergedError, opt
from distill_data.models import MODELS, build_model
from distill_data.train import fit

#: fit() settings of each student recipe but ``dc`` (whose SGD settings are EvalConfig's)
RECIPE_SETTINGS = {
    "sre2l": {  # VILA-Lab/SRe2L relabel_cifar.py
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 0.01,
        "batch_size": 128,
        "schedule": "cosine",
        "mixup": 0.8,
        "kd_t2": False,
    },
}
RECIPE_SETTINGS["infer"] = {**RECIPE_SETTINGS["sre2l"], "batch_size": 64}  # sh/ufc_cifar.sh
RECIPES = ("dc", *RECIPE_SETTINGS)
#: CutMix's α where a recipe mixes by CutMix (SRe2L relabel/generate_soft_label.py --cutmix)
CUTMIX_ALPHA = 1.0


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation protocol settings (paper defaults).

    Attributes:
        model: architecture trained from scratch (registry name).
        runs: number of freshly initialised models (R).
        epochs: training epochs on the condensed set (papers: 1000).
        full_epochs: epochs for the full-training-set baseline (it has far more steps
            per epoch; 30 epochs of 4000 MNIST images is ~500 steps).
        lr, momentum, weight_decay, batch_size: SGD settings.
        augment: DSA during training.
        dsa_strategy: override the strategy; default: the field's, without flip for digits.
        width: network width override (None: the architecture's default).
        seed: base seed; run r draws from a generator seeded with seed·1000 + r.
        recipe: ``dc`` (the field's protocol above, with the SGD settings here) or
            ``sre2l`` / ``infer`` (the official SRe2L / INFER student recipes; their own
            optimiser settings, ``RECIPE_SETTINGS``).
        pipeline: augment with a kornia training pipeline instead of DSA (a name in
            :data:`distill_data.augment.PRESETS`; ``random_crop`` is the official SRe2L
            and INFER students' ``RandomCrop(padding=4)`` + flip, no flip for digits);
            None: DSA.
        mix: batch mixing of the ``sre2l``/``infer`` recipes: ``mixup`` (theirs, α 0.8)
            or ``cutmix`` (α :data:`CUTMIX_ALPHA`); None: the recipe's own.
    """

    model: str = "convnet"
    runs: int = 5
    epochs: int = 1000
    full_epochs: int = 30
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    augment: bool = True
    dsa_strategy: str | None = None
    width: int | None = None
    seed: int = 0
    recipe: str = "dc"
    pipeline: str | None = None
    mix: str | None = None

    def __post_init__(self) -> None:
        require(
            self.recipe in RECIPES,
            f"unknown recipe {self.recipe!r}; choose from: " + ", ".join(RECIPES),
        )
        require(
            self.model in MODELS,
            f"unknown model {self.model!r}; choose from: " + ", ".join(MODELS.names()),
        )
        require(self.runs >= 1, f"runs must be >= 1, got {self.runs}")
        require(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        require(self.full_epochs >= 1, f"full_epochs must be >= 1, got {self.full_epochs}")
        require(self.batch_size >= 1, "batch_size must be >= 1")
        require(self.lr > 0, "lr must be > 0")
        require(
            self.pipeline is None or is_preset(self.pipeline),
            f"unknown pipeline {self.pipeline!r}; choose from: " + ", ".join(PRESETS),
        )
        require(
            self.mix is None or self.mix in MIXES,
            f"unknown mix {self.mix!r}; choose from: " + ", ".join(MIXES),
        )
        require(
            self.mix is None or self.recipe in RECIPE_SETTINGS,
            f"mix is an option of the soft-label recipes ({', '.join(RECIPE_SETTINGS)}), "
            f"not of recipe {self.recipe!r}",
        )

    def strategy(self, data: RealDataset) -> str:
        """The DSA strategy of the training runs ("none" without DSA)."""
        if not self.augment or self.pipeline is not None:
            return "none"
        return self.dsa_strategy if self.dsa_strategy is not None else strategy_for(data.is_digits)


def fit_settings(cfg: EvalConfig) -> dict:
    """The optimiser, batch and mixing settings :func:`fit` gets under ``cfg``'s recipe."""
    if cfg.recipe == "dc":
        return {
            "lr": cfg.lr,
            "momentum": cfg.momentum,
            "weight_decay": cfg.weight_decay,
            "batch_size": cfg.batch_size,
        }
    settings = dict(RECIPE_SETTINGS[cfg.recipe])
    if cfg.mix == "cutmix":
        settings.update(mixup=0.0, cutmix=CUTMIX_ALPHA)
    return settings


def training_pipeline(cfg: EvalConfig, data: RealDataset) -> AugmentPipeline | None:
    """The kornia pipeline of ``cfg`` for ``data`` (None when DSA or nothing augments)."""
    if not cfg.augment or cfg.pipeline is None:
        return None
    return AugmentPipeline.preset(cfg.pipeline, data)


@torch.no_grad()
def test_accuracy(
    model: torch.nn.Module, data: RealDataset, device: torch.device, batch: int = 1000
) -> float:
    """Top-1 accuracy (fraction) on the real test split."""
    model.eval()
    correct = 0
    for i in range(0, len(data.x_test), batch):
        x = data.normalize(data.x_test[i : i + batch]).to(device)
        y = data.y_test[i : i + batch].to(device)
        correct += int((model(x).argmax(1) == y).sum())
    return correct / len(data.x_test)


def train_and_test(
    images: torch.Tensor,
    labels: torch.Tensor,
    data: RealDataset,
    cfg: EvalConfig,
    run: int,
    epochs: int | None = None,
    device: str | torch.device = "cpu",
    bar: tqdm | None = None,
    soft: torch.Tensor | None = None,
    temperature: float = 1.0,
    teacher: torch.nn.Module | None = None,
) -> float:
    """Train one fresh model on ``(images, labels)`` (normalised) and return test accuracy.

    With ``soft`` (teacher logits per image), the model is trained by knowledge
    distillation at ``temperature`` instead of with the hard labels; with ``teacher``,
    by distillation from the teacher's logits on every augmented batch (online). All randomness
    (init, shuffling, DSA or the pipeline, mixing) comes from a generator seeded with
    ``cfg.seed·1000 + run``.
    """
    device = torch.device(device)
    epochs = epochs or cfg.epochs
    g = torch.Generator().manual_seed((cfg.seed * 1000 + run) % 2**63)
    opts = {} if cfg.width is None else {"width": cfg.width}
    model = build_model(
        cfg.model, data.channels, data.num_classes, data.im_size, generator=g, **opts
    ).to(device)
    train = fit_settings(cfg)
    try:
        fit(
            model,
            images,
            labels,
            epochs=epochs,
            generator=g,
            **train,
            dsa=DSA(cfg.strategy(data)),
            augment=training_pipeline(cfg, data),
            bar=bar,
            soft_targets=soft,
            temperature=temperature,
            teacher=teacher,
        )
    except DivergedError as e:
        raise DivergedError(
            f"evaluation run {run} ({cfg.model}, recipe {cfg.recipe}, lr {train['lr']:g}): "
            f"{e}; check the set's images for extreme values, or lower {opt('lr')}"
        ) from None
    return test_accuracy(model, data, device)


def label_mode(soft: bool, online: bool, temperature: float, recipe: str = "dc") -> str:
    """How the evaluation models were supervised, as reports say it."""
    if not soft:
        return "hard"
    mixed = recipe in RECIPE_SETTINGS and RECIPE_SETTINGS[recipe]["mixup"] > 0
    if online:
        batch = "augmented, mixed batch" if mixed else "augmented batch"
        return f"soft (KD from the teacher on each {batch}, T={temperature:g})"
    if mixed:
        return f"soft (KD from stored logits, mixed as the images are, T={temperature:g})"
    return f"soft (KD from stored logits, T={temperature:g})"


def evaluate_set(
    images: torch.Tensor,
    labels: torch.Tensor,
    data: RealDataset,
    cfg: EvalConfig,
    name: str = "synthetic",
    epochs: int | None = None,
    device: str | torch.device = "cpu",
    quiet: bool = False,
    resample: Callable[[int], tuple[torch.Tensor, ...]] | None = None,
    soft: torch.Tensor | None = None,
    temperature: float = 1.0,
    teacher: torch.nn.Module | None = None,
) -> dict:
    """Train ``cfg.runs`` fresh models and summarise final-epoch test accuracy (percent).

    ``resample(run) -> (images, labels[, soft])``, when given, draws a new training set
    per run (the random-subset baseline, whose spread includes the subset draw).
    ``soft``: teacher logits → knowledge-distillation training at ``temperature``;
    ``teacher``: distillation from the teacher's logits on each augmented batch instead.
    """
    epochs = epochs or cfg.epochs
    accs = []
    t0 = time.perf_counter()
    with tqdm(
        total=cfg.runs * epochs, desc=f"eval {name}", disable=quiet, dynamic_ncols=True
    ) as bar:
        for r in range(cfg.runs):
            x, y, s = (*resample(r), None)[:3] if resample is not None else (images, labels, soft)
            acc = train_and_test(x, y, data, cfg, r, epochs, device, bar, s, temperature, teacher)
            accs.append(100.0 * acc)
            bar.set_postfix(acc=f"{np.mean(accs):.2f}%", refresh=False)
    return {
        "accs": [round(a, 4) for a in accs],
        "mean": float(np.mean(accs)),
        "std": float(np.std(accs)),
        "runs": cfg.runs,
        "epochs": epochs,
        "n_images": int(len(images)) if resample is None else int(len(x)),
        "labels": label_mode(
            teacher is not None or s is not None, teacher is not None, temperature, cfg.recipe
        ),
        "seconds": round(time.perf_counter() - t0, 2),
    }
