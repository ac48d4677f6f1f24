"""The one supervised training loop: cross-entropy or knowledge distillation (stored
logits, or a teacher labelling every batch), SGD with step decay or AdamW with cosine
decay, DSA or a kornia augmentation pipeline, optional mixup or CutMix.

Used by evaluation (train-from-scratch protocol and its ``sre2l``/``infer`` student
recipes) and by generators that need briefly trained networks (NCFM's feature-extractor
pool).
Quantization-aware training extends this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from distill_data.augment import DSA, apply_mix, mix_targets, sample_mix
from distill_data.errors import DivergedError


def kd_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, t2: bool = True
) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)), batch mean (Hinton et al., 2015);
    ``t2=False`` drops the T² factor (SRe2L's student training)."""
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student / t, dim=1),
        F.log_softmax(teacher / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return kl * (t * t) if t2 else kl


def fit(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    generator: torch.Generator,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 256,
    dsa: DSA | None = None,
    decay_at: float | None = 0.5,
    bar: tqdm | None = None,
    soft_targets: torch.Tensor | None = None,
    temperature: float = 1.0,
    teacher: nn.Module | None = None,
    optimizer: str = "sgd",
    schedule: str = "step",
    mixup: float = 0.0,
    kd_t2: bool = True,
    cutmix: float = 0.0,
    augment: Callable[..., torch.Tensor] | None = None,
) -> nn.Module:
    """Train ``model`` in place on normalised ``images`` with cross-entropy, or, with
    ``soft_targets`` (teacher logits, one row per image), by knowledge distillation:
    ``T² · KL(softmax(t/T) || softmax(s/T))`` (Hinton et al., 2015). With ``teacher``
    the targets are instead the teacher's logits on each augmented batch, computed as
    the batch is drawn (online relabelling, as SRe2L's and FKD's training does).

    SGD with momentum and weight decay (``optimizer="adamw"``: AdamW, no momentum
    setting); ``schedule="step"`` multiplies the learning rate by 0.1 from epoch
    ``int(epochs * decay_at)`` on (the field's "×0.1 at half"), ``"cosine"`` anneals it
    to 0 over the epochs (per epoch, as ``CosineAnnealingLR(T_max=epochs)``); ``dsa``
    augments every batch. ``mixup`` > 0 (needs soft targets or ``teacher``) mixes every
    augmented batch with a shuffled copy of itself, λ ~ Beta(mixup, mixup); the teacher
    labels the mixed batch (SRe2L's small-dataset recipe), or the stored logits are mixed
    with the same λ and partners, λ·z_i + (1 − λ)·z_j (INFER's static labels).
    ``cutmix`` > 0 mixes by CutMix instead (Yun et al., ICCV 2019; λ ~ Beta(cutmix,
    cutmix), one box per batch as SRe2L's FKD code, stored logits weighted by the share
    of the image each kept); give one of ``mixup`` and ``cutmix``. ``augment`` (e.g. an
    :class:`~distill_data.augment.AugmentPipeline`) is called as
    ``augment(x, generator=generator)`` on every batch after ``dsa``, before mixing.
    ``kd_t2=False`` drops the T² factor of the distillation loss. Shuffling, augmentation
    and mixing draw only from ``generator``. ``bar`` (if given) advances by one per epoch.

    Raises:
        DivergedError: a loss was NaN or infinite (checked at the end of every epoch);
            callers add which of their settings to change.
    """
    device = next(model.parameters()).device
    if teacher is not None:
        teacher.eval()
    if mixup > 0 and cutmix > 0:
        raise ValueError("give mixup or cutmix, not both: each batch is mixed one way")
    alpha, mix_kind = (mixup, "mixup") if mixup > 0 else (cutmix, "cutmix")
    if alpha > 0 and teacher is None and soft_targets is None:
        raise ValueError(f"{mix_kind} needs soft targets or a teacher to label the mixed batches")
    if augment is not None and not callable(augment):
        raise ValueError(f"augment must be callable as augment(x, generator=g), got {augment!r}")
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
        )
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose sgd or adamw")
    if schedule not in ("step", "cosine"):
        raise ValueError(f"unknown schedule {schedule!r}; choose step or cosine")
    # λ ~ Beta from a NumPy generator seeded by ``generator``: torch has no seeded Beta
    mix_rng = (
        np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
        if alpha > 0
        else None
    )
    x_all, y_all = images.to(device), labels.to(device)
    soft = None if soft_targets is None else soft_targets.to(device)
    n = len(x_all)
    decay_epoch = None if decay_at is None else int(epochs * decay_at)
    # NaN/inf losses are counted on the device and checked once per epoch: one sync
    # per epoch instead of one per step, and a diverged run stops before it is used
    bad_steps = torch.zeros((), dtype=torch.int64, device=device)
    for ep in range(epochs):
        if schedule == "cosine":
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * ep / epochs))
        elif ep == decay_epoch:
            for group in opt.param_groups:
                group["lr"] = lr * 0.1
        model.train()
        perm = torch.randperm(n, generator=generator).to(device)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            x, y = x_all[idx], y_all[idx]
            if dsa is not None and dsa.enabled:
                x = dsa(x, generator=generator)
            if augment is not None:
                x = augment(x, generator=generator)
            # stored logits, unless a teacher labels the (mixed) batch below
            target = soft[idx] if soft is not None and teacher is None else None
            if mix_rng is not None:
                lam = float(mix_rng.beta(alpha, alpha))
                h, w = x.shape[-2:]
                mix = sample_mix(mix_kind, len(x), int(h), int(w), lam, generator, device)
                x = apply_mix(x, mix)
                if target is not None:
                    target = mix_targets(target, mix)
            out = model(x)
            if teacher is not None:
                with torch.no_grad():
                    target = teacher(x)
                loss = kd_loss(out, target, temperature, kd_t2)
            elif target is None:
                loss = F.cross_entropy(out, y)
            else:
                loss = kd_loss(out, target, temperature, kd_t2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bad_steps += ~torch.isfinite(loss.detach())
        if int(bad_steps):
            raise DivergedError(
                f"training diverged: the loss became NaN or infinite in epoch {ep + 1} of {epochs}"
            )
        if bar is not None:
            bar.update(1)
    return model
