"""The one supervised training loop, ``fit(model, data, recipe)``: cross-entropy or
knowledge distillation (stored logits, or a teacher labelling every batch), with the
optimiser, schedule, augmentation, mixing and loss a :class:`TrainRecipe` names.

Used by evaluation (the train-from-scratch protocol and its student recipes), teacher
training, generators that need briefly trained networks (NCFM's feature-extractor pool)
and the student trainer.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from distill_data.augment import (
    DSA,
    AugmentPipeline,
    apply_mix,
    mix_targets,
    sample_mix,
    strategy_for,
)
from distill_data.data import ImageSpace
from distill_data.dist import ONE, Dist, batch_group
from distill_data.errors import DivergedError
from distill_data.models import nonfinite_tensors
from distill_data.runtime import autocast_for
from distill_data.train.losses import DEFAULT_TEMPERATURES, kd_loss
from distill_data.train.recipe import TrainRecipe
from distill_data.train.syncbn import synced_batchnorm


@dataclass(eq=False)
class TrainData:
    """What :func:`fit` trains on.

    Attributes:
        images: normalised images ``(N, C, H, W)``.
        labels: class indices ``(N,)``.
        soft: optional stored teacher logits ``(N, K)``, one row per image.
        temperature: the stored logits' temperature (used unless the recipe sets one).
        space: the images' :class:`~distill_data.data.ImageSpace` (digit data get no
            flips; kornia pipelines need its normalisation); required for
            ``augment="dsa"`` without a ``dsa_strategy`` and for kornia presets.
    """

    images: torch.Tensor
    labels: torch.Tensor
    soft: torch.Tensor | None = None
    temperature: float | None = None
    space: ImageSpace | None = None


def augmentation(recipe: TrainRecipe, space: ImageSpace | None) -> tuple[DSA, Any]:
    """The DSA and the kornia pipeline ``recipe`` trains with on ``space``'s images
    (a disabled DSA and None where the recipe does not use them)."""
    if recipe.augment == "dsa":
        strategy = recipe.dsa_strategy
        if strategy is None:
            if space is None:
                raise ValueError("augment='dsa' without dsa_strategy needs TrainData.space")
            strategy = strategy_for(space.is_digits)
        return DSA(strategy), None
    if recipe.augment == "none":
        return DSA("none"), None
    if space is None:
        raise ValueError(f"the kornia pipeline {recipe.augment!r} needs TrainData.space")
    return DSA("none"), AugmentPipeline.preset(recipe.augment, space)


def resolve_temperature(recipe: TrainRecipe, data: TrainData) -> float:
    """The distillation temperature: the recipe's, else the stored logits', else the
    loss's paper default (1 when there is none)."""
    if recipe.temperature is not None:
        return recipe.temperature
    if data.temperature is not None:
        return float(data.temperature)
    return DEFAULT_TEMPERATURES.get(recipe.kd) or 1.0


def student_loss(
    recipe: TrainRecipe,
    out: torch.Tensor,
    target: torch.Tensor | None,
    y: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """The loss of one batch: cross-entropy without soft targets (or with ``kd="none"``),
    else the recipe's distillation loss (:mod:`distill_data.train.losses`)."""
    if target is None or recipe.kd == "none":
        return F.cross_entropy(out, y)
    if recipe.kd == "hinton":
        return kd_loss(
            "hinton", out, target, y, temperature, alpha=recipe.kd_alpha, t2=recipe.kd_t2
        )
    return kd_loss(recipe.kd, out, target, y, temperature, alpha=recipe.kd_alpha)


def make_optimizer(
    model: nn.Module, recipe: TrainRecipe, params: Any = None
) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over ``params`` (default: ``model``'s
    parameters; parameter groups may set their own ``lr`` / ``weight_decay``)."""
    params = model.parameters() if params is None else params
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=recipe.lr,
            momentum=recipe.momentum,
            nesterov=recipe.nesterov,
            weight_decay=recipe.weight_decay,
        )
    return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def epoch_lr(recipe: TrainRecipe, base: float, epoch: int) -> float:
    """The learning rate during ``epoch`` of a parameter group that starts at ``base``."""
    if recipe.schedule == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * epoch / recipe.epochs))
    if recipe.schedule == "step" and epoch >= int(recipe.epochs * recipe.decay_at):
        return base * recipe.decay_factor
    return base


@dataclass
class FitState:
    """Where a :func:`fit` run stands after an epoch: enough to continue it exactly
    (the epochs done, the optimiser, the shuffling/augmentation generator and the
    mixing generator). Plain data, so it goes into a weights-only checkpoint."""

    epoch: int
    optimizer: dict
    generator: torch.Tensor
    mix_rng: dict | None = None


def fit(
    model: nn.Module,
    data: TrainData,
    recipe: TrainRecipe,
    *,
    generator: torch.Generator,
    teacher: nn.Module | None = None,
    bar: tqdm | None = None,
    bar_unit: str = "epoch",
    augment: Any = None,
    params: Any = None,
    aux_loss: Any = None,
    epoch_start: Any = None,
    epoch_end: Any = None,
    resume: FitState | None = None,
    group: Dist = ONE,
) -> nn.Module:
    """Train ``model`` in place on ``data`` as ``recipe`` says; the one training loop.

    Targets: the hard labels (cross-entropy), or the stored logits ``data.soft``, or,
    with ``teacher``, the teacher's logits on every augmented (and mixed) batch, computed
    as the batch is drawn (online relabelling, as SRe2L's and FKD's training does); soft
    targets are trained on with the recipe's distillation loss. Mixing (``mix``) needs
    soft targets or a teacher: the teacher labels the mixed batch (SRe2L's recipe), or
    the stored logits are mixed with the same λ and partners (INFER's static labels;
    CutMix weighs them by the area each image kept).

    Each epoch draws a permutation, each batch DSA or the kornia pipeline and then the
    mixing, all from ``generator`` only (λ ~ Beta(α, α) from a NumPy generator seeded by
    it: torch has no seeded Beta). ``bar`` (if given) advances by one per epoch, or with
    ``bar_unit="step"`` by one per batch (its total is then epochs × :func:`steps_per_epoch`,
    and it shows the epoch beside the count).
    ``augment`` replaces the recipe's augmentation with any batch transform called as
    ``augment(x, generator=generator)`` (e.g. an :class:`AugmentPipeline` of your own).

    Hooks for trainers built on this loop: ``params`` (parameter groups for the
    optimiser), ``aux_loss()`` (added to every batch's loss, called after the forward
    passes, e.g. a feature-matching term fed by forward hooks), ``epoch_start(epoch)``
    (called after ``model.train()``, e.g. to freeze BatchNorm statistics by putting
    those modules in eval mode), ``epoch_end(epoch, state)`` with a
    :class:`FitState` (e.g. a checkpoint), and ``resume`` to continue from such a state:
    the result equals an uninterrupted run's.

    ``group`` (under torchrun): data-parallel training of one model with
    DistributedDataParallel. Every rank draws the same permutation, augmentation and
    mixing for the whole batch (the one-process draws), keeps its block of the batch's
    rows, and weights its loss by its share of the rows, so the averaged gradient is
    the one-process batch gradient up to summation order. BatchNorm normalises with
    the whole batch's statistics across the ranks
    (:mod:`distill_data.train.syncbn`, on any device), and the activation observers
    (``qat``'s ranges, ``lsq``'s first step) see the whole batch too, so a student trains
    as in one process up to the order of floating-point sums; floating-point buffers
    are also averaged after every epoch (float64: equal values stay equal).

    Raises:
        DivergedError: a loss was NaN or infinite (checked at the end of every epoch);
            callers add which of their settings to change.
        ValueError: mixing without soft targets or a teacher (a programming error; the
            configs that reach here validate it).
    """
    device = next(model.parameters()).device
    if teacher is not None:
        teacher.eval()
    if recipe.mix != "none" and teacher is None and data.soft is None:
        raise ValueError(f"{recipe.mix} needs soft targets or a teacher to label the mixed batches")
    if augment is not None and not callable(augment):
        raise ValueError(f"augment must be callable as augment(x, generator=g), got {augment!r}")
    dsa, pipeline = (DSA("none"), augment) if augment else augmentation(recipe, data.space)
    temperature = resolve_temperature(recipe, data)
    opt = make_optimizer(model, recipe, params)
    base_lrs = [pg["lr"] for pg in opt.param_groups]
    mix_rng = (
        np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
        if recipe.mix != "none"
        else None
    )
    start = 0
    if resume is not None:
        opt.load_state_dict(resume.optimizer)
        generator.set_state(resume.generator)
        if mix_rng is not None:
            mix_rng.bit_generator.state = resume.mix_rng
        start = resume.epoch
    net = model if not group.active else _data_parallel(model, device)
    amp, amp_on = autocast_for(recipe.precision, device), recipe.precision != "fp32"
    # under DDP, BatchNorm and the activation observers see the whole batch on every rank
    with synced_batchnorm(model, group):
        x_all, y_all = data.images.to(device), data.labels.to(device)
        soft = None if data.soft is None else data.soft.to(device)
        n = len(x_all)
        # NaN/inf losses are counted on the device and checked once per epoch: one sync
        # per epoch instead of one per step, and a diverged run stops before it is used
        bad_steps = torch.zeros((), dtype=torch.int64, device=device)
        for ep in range(start, recipe.epochs):
            for pg, base in zip(opt.param_groups, base_lrs):
                pg["lr"] = epoch_lr(recipe, base, ep)
            model.train()
            if bar is not None and bar_unit == "step":
                bar.set_postfix_str(f"epoch {ep + 1}/{recipe.epochs}", refresh=False)
            if epoch_start is not None:  # after train(): the hook may put modules in eval mode
                epoch_start(ep)
            perm = torch.randperm(n, generator=generator).to(device)
            for i in range(0, n, recipe.batch_size):
                idx = perm[i : i + recipe.batch_size]
                x, y = x_all[idx], y_all[idx]
                if dsa.enabled:
                    x = dsa(x, generator=generator)
                if pipeline is not None:
                    x = pipeline(x, generator=generator)
                # stored logits, unless a teacher labels the (mixed) batch below
                target = soft[idx] if soft is not None and teacher is None else None
                if mix_rng is not None:
                    lam = float(mix_rng.beta(recipe.mix_alpha, recipe.mix_alpha))
                    h, w = x.shape[-2:]
                    mix = sample_mix(recipe.mix, len(x), int(h), int(w), lam, generator, device)
                    x = apply_mix(x, mix)
                    if target is not None:
                        target = mix_targets(target, mix)
                share, split = 1.0, ONE
                if group.active:  # this rank's rows of the one-process batch
                    rows, share = batch_share(len(x), group)
                    split = group if rows.stop - rows.start < len(x) else ONE
                    x, y = x[rows], y[rows]
                    target = None if target is None else target[rows]
                with batch_group(split):  # statistics over the ranks that split the batch
                    with amp:
                        out = net(x)
                        # (kd none: the teacher runs only for a feature term's hooks)
                        if teacher is not None and (recipe.kd != "none" or aux_loss is not None):
                            with torch.no_grad():
                                target = teacher(x)
                    if amp_on:  # the losses in float32 (a no-op for float32 tensors)
                        out = out.float()
                        target = None if target is None else target.float()
                    loss = student_loss(recipe, out, target, y, temperature)
                    if aux_loss is not None:
                        loss = loss + aux_loss()
                opt.zero_grad(set_to_none=True)
                (loss * share if share != 1.0 else loss).backward()
                opt.step()
                bad_steps += ~torch.isfinite(loss.detach())
                if bar is not None and bar_unit == "step":
                    bar.update(1)
            if group.active:
                bad_steps = group.all_reduce_(bad_steps)
                _average_buffers(model, group)
            if int(bad_steps):
                raise DivergedError(
                    "training diverged: the loss became NaN or infinite in epoch "
                    f"{ep + 1} of {recipe.epochs}"
                )
            # a loss is checked before its step: the epoch's last step can still blow
            # the weights up (and a final-epoch blow-up would otherwise be "evaluated")
            bad = nonfinite_tensors(model)
            if bad:
                raise DivergedError(
                    f"training diverged: the network's {bad[0]} became NaN or infinite in "
                    f"epoch {ep + 1} of {recipe.epochs}"
                )
            if bar is not None and bar_unit == "epoch":
                bar.update(1)
            if epoch_end is not None:
                epoch_end(
                    ep,
                    FitState(
                        ep + 1,
                        opt.state_dict(),
                        generator.get_state(),
                        None if mix_rng is None else mix_rng.bit_generator.state,
                    ),
                )
    return model


def steps_per_epoch(n: int, recipe: TrainRecipe) -> int:
    """Batches in one epoch of ``n`` images (the last one may be short)."""
    return -(-n // recipe.batch_size)


def batch_share(n: int, group: Dist) -> tuple[slice, float]:
    """This rank's rows of a batch of ``n`` and the weight of its mean loss
    (``world × rows / n``: DDP averages the ranks' gradients, so the result is the
    gradient of the batch mean). A batch smaller than the group is taken whole by every
    rank (weight 1: the average of equal gradients is that gradient)."""
    if n < group.world:
        return slice(0, n), 1.0
    rows = group.shard(n)
    return slice(rows.start, rows.stop), group.world * len(rows) / n


def _data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` under DistributedDataParallel (rank 0's weights broadcast at the start;
    buffers are averaged per epoch by :func:`fit`, not broadcast per step)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device] if device.type == "cuda" else None
    params = inspect.signature(DistributedDataParallel).parameters
    sync = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    return DistributedDataParallel(model, device_ids=ids, **{sync: False})


@torch.no_grad()
def _average_buffers(model: nn.Module, group: Dist) -> None:
    """The mean of each floating-point buffer over the ranks, summed in float64: equal
    values come back unchanged (a float32 sum of K equal values divided by K does not
    always give the value back, which would nudge frozen statistics every epoch)."""
    for buf in model.buffers():
        if buf.is_floating_point():
            wide = group.all_reduce_(buf.double()).div_(group.world)
            buf.copy_(wide.to(buf.dtype))
