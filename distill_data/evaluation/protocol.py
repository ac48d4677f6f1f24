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
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from distill_data.augment import MIXES, PRESETS, is_preset, strategy_for
from distill_data.augment.pipeline import DEFAULT_PRESET
from distill_data.config import require
from distill_data.data import RealDataset
from distill_data.errors import DivergedError, keyword
from distill_data.models import MODELS, build_model
from distill_data.train import TrainData, TrainRecipe, fit, get_recipe
from distill_data.train.recipe import RECIPES as TRAIN_RECIPES

#: The student recipes evaluation offers (presets of :mod:`distill_data.train.recipe`).
RECIPES = ("dc", "sre2l", "infer")
#: The soft-label recipes: their students mix every batch and need soft targets.
SOFT_RECIPES = tuple(r for r in RECIPES if TRAIN_RECIPES[r].mix != "none")
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
        lr, momentum, weight_decay, batch_size: override the recipe's optimiser settings
            (None: the recipe's; ``dc``: SGD lr 0.01, momentum 0.9, weight decay 5e-4,
            batch 256).
        augment: augment the training batches (DSA, or ``pipeline``).
        dsa_strategy: override the strategy; default: the field's, without flip for digits.
        width: network width override (None: the architecture's default).
        seed: base seed; run r draws from a generator seeded with seed·1000 + r.
        recipe: the students' training protocol, a preset of
            :mod:`distill_data.train.recipe`: ``dc`` (the field's protocol above) or
            ``sre2l`` / ``infer`` (the official SRe2L / INFER student recipes).
        pipeline: augment with a kornia training pipeline instead of DSA (a name in
            :data:`distill_data.augment.PRESETS`; ``random_crop`` is the official SRe2L
            and INFER students' ``RandomCrop(padding=4)`` + flip, no flip for digits);
            None: DSA.
        mix: batch mixing of the ``sre2l``/``infer`` recipes: ``mixup`` (theirs, α 0.8)
            or ``cutmix`` (α :data:`CUTMIX_ALPHA`); None: the recipe's own.
        precision: ``fp32`` (the papers') or ``bf16``: the models train with their
            forward passes under bfloat16 autocast (see
            :class:`~distill_data.train.TrainRecipe`); testing stays float32.
    """

    model: str = "convnet"
    runs: int = 5
    epochs: int = 1000
    full_epochs: int = 30
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    batch_size: int | None = None
    augment: bool = True
    dsa_strategy: str | None = None
    width: int | None = None
    seed: int = 0
    recipe: str = "dc"
    pipeline: str | None = None
    mix: str | None = None
    precision: str = "fp32"

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
        require(
            self.pipeline is None or is_preset(self.pipeline),
            f"unknown pipeline {self.pipeline!r}; choose from: " + ", ".join(PRESETS),
        )
        require(
            self.mix is None or self.mix in MIXES,
            f"unknown mix {self.mix!r}; choose from: " + ", ".join(MIXES),
        )
        require(
            self.mix is None or self.recipe in SOFT_RECIPES,
            f"mix is an option of the soft-label recipes ({', '.join(SOFT_RECIPES)}), "
            f"not of recipe {self.recipe!r}",
        )
        self.train_recipe()  # the overrides must make a valid recipe

    def strategy(self, data: RealDataset) -> str:
        """The DSA strategy of the training runs ("none" without DSA)."""
        if not self.augment or self.pipeline is not None:
            return "none"
        return self.dsa_strategy if self.dsa_strategy is not None else strategy_for(data.is_digits)

    def train_recipe(self, epochs: int | None = None) -> TrainRecipe:
        """The :class:`TrainRecipe` the evaluation models train with: the preset
        ``recipe`` with this config's overrides, for ``epochs`` (default ``self.epochs``)."""
        base = get_recipe(self.recipe)
        changes: dict = {"epochs": epochs or self.epochs, "precision": self.precision}
        for key in ("lr", "momentum", "weight_decay", "batch_size"):
            if getattr(self, key) is not None:
                changes[key] = getattr(self, key)
        if not self.augment:
            changes["augment"] = "none"
        elif self.pipeline is not None:
            name = self.pipeline.strip().lower()
            changes["augment"] = DEFAULT_PRESET if name == "kornia" else name
        elif self.dsa_strategy is not None:
            changes["dsa_strategy"] = self.dsa_strategy
        if self.mix == "cutmix":
            changes.update(mix="cutmix", mix_alpha=CUTMIX_ALPHA)
        elif self.mix == "mixup":
            changes.update(mix="mixup", mix_alpha=base.mix_alpha)
        return replace(base, **changes)


@torch.no_grad()
def test_metrics(
    model: torch.nn.Module, data: RealDataset, device: torch.device, batch: int = 1000
) -> tuple[float, float]:
    """Top-1 accuracy (fraction) and mean cross-entropy on the real test split."""
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(data.x_test), batch):
        x = data.normalize(data.x_test[i : i + batch]).to(device)
        y = data.y_test[i : i + batch].to(device)
        out = model(x)
        correct += int((out.argmax(1) == y).sum())
        loss += float(F.cross_entropy(out, y, reduction="sum"))
    return correct / len(data.x_test), loss / len(data.x_test)


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
) -> tuple[float, float]:
    """Train one fresh model on ``(images, labels)`` (normalised); return its test
    accuracy (fraction) and test cross-entropy.

    With ``soft`` (teacher logits per image), the model is trained by knowledge
    distillation at ``temperature`` instead of with the hard labels; with ``teacher``,
    by distillation from the teacher's logits on every augmented batch (online). All
    randomness (init, shuffling, DSA or the pipeline, mixing) comes from a generator
    seeded with ``cfg.seed·1000 + run``.
    """
    device = torch.device(device)
    recipe = cfg.train_recipe(epochs)
    g = torch.Generator().manual_seed((cfg.seed * 1000 + run) % 2**63)
    opts = {} if cfg.width is None else {"width": cfg.width}
    model = build_model(
        cfg.model, data.channels, data.num_classes, data.im_size, generator=g, **opts
    ).to(device)
    train = TrainData(images, labels, soft=soft, temperature=temperature, space=data)
    try:
        fit(model, train, recipe, generator=g, teacher=teacher, bar=bar)
    except DivergedError as e:
        raise DivergedError(
            f"evaluation run {run} ({cfg.model}, recipe {cfg.recipe}, lr {recipe.lr:g}): "
            f"{e}; check the set's images for extreme values, or lower "
            f"{keyword('lr', float(f'{recipe.lr / 10:g}'))}"
        ) from None
    return test_metrics(model, data, device)


def label_mode(soft: bool, online: bool, temperature: float, recipe: str = "dc") -> str:
    """How the evaluation models were supervised, as reports say it."""
    if not soft:
        return "hard"
    mixed = recipe in SOFT_RECIPES
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
    The report holds each run's final test accuracy and test cross-entropy.
    """
    epochs = epochs or cfg.epochs
    accs, losses = [], []
    t0 = time.perf_counter()
    with tqdm(
        total=cfg.runs * epochs, desc=f"eval {name}", disable=quiet, dynamic_ncols=True
    ) as bar:
        for r in range(cfg.runs):
            x, y, s = run_set(r, images, labels, soft, resample)
            acc, loss = train_and_test(
                x, y, data, cfg, r, epochs, device, bar, s, temperature, teacher
            )
            accs.append(100.0 * acc)
            losses.append(loss)
            bar.set_postfix(acc=f"{np.mean(accs):.2f}%", refresh=False)
    n = int(len(images)) if resample is None else int(len(x))
    supervised = teacher is not None or s is not None
    return summarise(accs, losses, cfg, epochs, n, temperature, supervised, teacher is not None,
                     time.perf_counter() - t0)  # fmt: skip


def run_set(
    run: int,
    images: torch.Tensor,
    labels: torch.Tensor,
    soft: torch.Tensor | None,
    resample: Callable[[int], tuple[torch.Tensor, ...]] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(images, labels, soft)`` that run ``run`` trains on: the set, or its own draw."""
    if resample is None:
        return images, labels, soft
    return (*resample(run), None)[:3]


def summarise(
    accs: list[float],
    losses: list[float],
    cfg: EvalConfig,
    epochs: int,
    n_images: int,
    temperature: float,
    soft: bool,
    online: bool,
    seconds: float,
) -> dict:
    """One row of the report from its runs' final test accuracies (percent) and losses."""
    return {
        "accs": [round(a, 4) for a in accs],
        "mean": float(np.mean(accs)),
        "std": float(np.std(accs)),
        "test_losses": [round(v, 6) for v in losses],
        "runs": cfg.runs,
        "epochs": epochs,
        "n_images": n_images,
        "labels": label_mode(soft, online, temperature, cfg.recipe),
        "seconds": round(seconds, 2),
    }
