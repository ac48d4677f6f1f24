"""The one supervised training loop (plain cross-entropy, SGD, step decay, DSA).

Used by evaluation (train-from-scratch protocol) and by generators that need briefly
trained networks (NCFM's feature-extractor pool). Knowledge distillation and
quantization-aware training extend this module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from distill_data.augment import DSA


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)), batch mean (Hinton et al., 2015)."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student / t, dim=1),
        F.log_softmax(teacher / t, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)


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
) -> nn.Module:
    """Train ``model`` in place on normalised ``images`` with cross-entropy, or, with
    ``soft_targets`` (teacher logits, one row per image), by knowledge distillation:
    ``T² · KL(softmax(t/T) || softmax(s/T))`` (Hinton et al., 2015). With ``teacher``
    the targets are instead the teacher's logits on each augmented batch, computed as
    the batch is drawn (online relabelling, as SRe2L's and FKD's training does).

    SGD with momentum and weight decay; the learning rate is multiplied by 0.1 from
    epoch ``int(epochs * decay_at)`` on (the field's "×0.1 at half"); ``dsa`` augments
    every batch. Shuffling and augmentation draw only from ``generator``. ``bar`` (if
    given) advances by one per epoch.
    """
    device = next(model.parameters()).device
    if teacher is not None:
        teacher.eval()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    x_all, y_all = images.to(device), labels.to(device)
    soft = None if soft_targets is None else soft_targets.to(device)
    n = len(x_all)
    decay_epoch = None if decay_at is None else int(epochs * decay_at)
    for ep in range(epochs):
        if ep == decay_epoch:
            for group in opt.param_groups:
                group["lr"] = lr * 0.1
        model.train()
        perm = torch.randperm(n, generator=generator).to(device)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            x, y = x_all[idx], y_all[idx]
            if dsa is not None and dsa.enabled:
                x = dsa(x, generator=generator)
            out = model(x)
            if teacher is not None:
                with torch.no_grad():
                    target = teacher(x)
                loss = kd_loss(out, target, temperature)
            elif soft is None:
                loss = F.cross_entropy(out, y)
            else:
                loss = kd_loss(out, soft[idx], temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if bar is not None:
            bar.update(1)
    return model
