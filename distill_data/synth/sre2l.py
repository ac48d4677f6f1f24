"""SRe2L — squeeze, recover, relabel (Yin, Xing & Shen, "Squeeze, Recover and Relabel:
Dataset Condensation at ImageNet Scale From A New Perspective", NeurIPS 2023).

Squeeze is training the teacher on the real data (``distill-data teacher``). Recover
(Eq. 6–8) synthesises class-conditioned images from the teacher alone:

    min_x  CE(f(A(x)), y)  +  r_bn · Σ_l w_l ( ||μ_l(A(x)) − μ_l^BN||₂ + ||σ²_l(A(x)) − σ²_l^BN||₂ )

with batch statistics of each BN layer's input (biased variance, plain L2 norms, the
first BN layer weighted ×10 as in the code), under a random augmentation A drawn every
iteration, and pixels clipped to the valid image range after each step. Relabel stores
the teacher's logits on the recovered images as soft labels with the temperature used
for knowledge-distillation evaluation (``distill-data eval --soft``).

Defaults follow the official small-dataset recipe (VILA-Lab/SRe2L, ``recover_cifar``):
Adam lr 0.25, betas (0.5, 0.9), cosine decay to 0, 1,000 iterations, r_bn 0.01, one
image per class per batch (the code's batch of 100 is one per class of CIFAR-100; on a
10-class dataset ``ipc_per_batch=10`` gives its batch size instead), random circular
shift (jitter) of up to 4 pixels (``shift=translate`` shifts without wrapping around: on
small centred digits the circular shift lets a digit form across the border, see
docs/design-notes.md); we add the random horizontal flip of the ImageNet recipe except
for digit data, and the ImageNet random resized crop is available (``crop_min_scale``,
ImageNet 0.08; default 1 = off). The images stay float (the code saves JPEGs).
Relabel: the teacher's logits on the final images at T = 30, the temperature the
official small-dataset relabel script hard-codes (``relabel_cifar.py``; its ImageNet
FKD script passes ``-T 20``; until 27 Nov 2026 we used 3, the argparse default of
``train_FKD.py``, which no released script uses). The official relabel stage labels
every augmented (crop/flip/mixup or CutMix) batch afresh; ``distill-data eval --soft
--relabel online --teacher T`` does that, while the stored logits (one vector per image)
serve ``--relabel stored``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from kornia.geometry.transform import hflip

from distill_data.augment.pipeline import boxes_from_corners, resized_crop
from distill_data.config import require
from distill_data.synth.base import GENERATORS, GeneratorConfig
from distill_data.synth.bnstats import BNStatLoss
from distill_data.synth.inversion import BatchedInversion


def random_view(
    x: torch.Tensor,
    g: torch.Generator,
    jitter: int,
    flip: bool,
    crop_min_scale: float,
    shift: str = "roll",
) -> torch.Tensor:
    """One augmentation for the whole batch: random resized crop (if ``crop_min_scale`` <
    1), horizontal flip (p = 0.5), and a shift of up to ``jitter`` pixels each way:
    ``shift="roll"`` circular (``torch.roll``, the official codes'), ``"translate"`` a
    translation whose uncovered border repeats the edge pixels (nothing wraps around).

    The crop (a square-ratio box of area U(crop_min_scale, 1), bilinear resize without
    corner alignment) and the flip are kornia's ``crop_by_indices`` and ``hflip``, which
    give the same numbers as the slice-and-``F.interpolate`` and ``Tensor.flip`` used
    before (``bench/kornia_aug.py`` checks it); the integer shifts stay index ops."""
    h, w = x.shape[-2:]
    if crop_min_scale < 1.0:
        scale = crop_min_scale + (1 - crop_min_scale) * float(torch.rand((), generator=g))
        ch, cw = max(1, round(h * math.sqrt(scale))), max(1, round(w * math.sqrt(scale)))
        y0 = int(torch.randint(0, h - ch + 1, (), generator=g))
        x0 = int(torch.randint(0, w - cw + 1, (), generator=g))
        box = boxes_from_corners(*torch.tensor([[y0], [x0], [ch], [cw]]))
        x = resized_crop(x, box.expand(x.shape[0], 4, 2))
    if flip and float(torch.rand((), generator=g)) < 0.5:
        x = hflip(x)
    if jitter > 0:
        dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=g))
        if shift == "roll":
            x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
        else:  # out[i, j] = x[i - dy, j - dx], indices clamped to the image
            p = jitter
            x = F.pad(x, (p, p, p, p), mode="replicate")[
                ..., p - dy : p - dy + h, p - dx : p - dx + w
            ]
    return x


@dataclass(frozen=True)
class SRe2LConfig(GeneratorConfig):
    """SRe2L recover/relabel settings (see the module docstring).

    Attributes:
        iterations: optimisation steps per batch.
        ipc_per_batch: images per class optimised together (batch = classes × this).
        lr, beta1, beta2: Adam on pixels, cosine-decayed to 0 over ``iterations``.
        r_bn: weight of the BN statistic term; first_bn_multiplier: weight of layer 1.
        jitter: random shift in pixels; shift: ``roll`` (circular, the official code)
            or ``translate`` (edges repeated, nothing wraps: digits cannot form across
            the border); flip: None = on unless digit data.
        crop_min_scale: random-resized-crop minimum area (1 = no crop).
        temperature: stored with the soft labels, used by ``eval --soft``.
    """

    iterations: int = 1000
    ipc_per_batch: int = 1
    lr: float = 0.25
    beta1: float = 0.5
    beta2: float = 0.9
    r_bn: float = 0.01
    first_bn_multiplier: float = 10.0
    jitter: int = 4
    shift: str = "roll"
    flip: bool | None = None
    crop_min_scale: float = 1.0
    temperature: float = 30.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.iterations >= 1 and self.ipc_per_batch >= 1,
            "iterations and ipc_per_batch must be >= 1",
        )
        require(self.lr > 0 and self.r_bn >= 0, "lr must be > 0 and r_bn >= 0")
        require(0 < self.crop_min_scale <= 1, "crop_min_scale must be in (0, 1]")
        require(self.jitter >= 0 and self.temperature > 0, "jitter >= 0, temperature > 0")
        require(
            self.shift in ("roll", "translate"),
            f"shift must be roll or translate, got {self.shift!r}",
        )


@GENERATORS.register("sre2l", "SRe2L: recover class images from a teacher, relabel (NeurIPS 2023)")
class SRe2L(BatchedInversion):
    """Yin et al., NeurIPS 2023: recover images with CE + r_bn·BN loss under random
    augmentation from the teacher alone, relabel with the teacher's soft labels."""

    Config = SRe2LConfig
    config: SRe2LConfig
    supports_count = False
    sorted_by_class = True

    @property
    def temperature(self) -> float:
        return self.config.temperature

    def plan(self) -> list[int]:
        k, per = self.data.num_classes, self.config.ipc_per_batch
        sizes, left = [], self.ipc
        while left > 0:
            sizes.append(k * min(per, left))
            left -= min(per, left)
        return sizes

    def start_batch(self, b: int) -> None:
        cfg, d = self.config, self.data
        k = d.num_classes
        n = self.sizes[b]
        self.y = torch.arange(k).repeat(n // k).to(self.device)
        self.x = torch.randn((n, d.channels, *d.im_size), generator=self.rng)
        self.x = self.x.to(self.device).requires_grad_(True)
        lo, hi = d.pixel_bounds()
        self.lo, self.hi = lo.to(self.device), hi.to(self.device)
        opt = torch.optim.Adam([self.x], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        self.optimizers = [opt]
        self.schedulers = [torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.iterations)]

    def schedule(self, iteration: int, loss: float) -> None:
        self.schedulers[0].step()
        with torch.no_grad():
            self.x.copy_(torch.maximum(torch.minimum(self.x, self.hi), self.lo))

    def images(self) -> torch.Tensor:
        return self.x

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        flip = (not self.data.is_digits) if cfg.flip is None else cfg.flip
        view = random_view(x, self.rng, cfg.jitter, flip, cfg.crop_min_scale, cfg.shift)
        with BNStatLoss(
            self.teacher,
            stats="batch",
            form="norm",
            unbiased=False,
            first_multiplier=cfg.first_bn_multiplier,
        ) as bn:
            logits = self.teacher(view)
        return F.cross_entropy(logits, self.y) + cfg.r_bn * bn.loss()

    @torch.no_grad()
    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        parts = list(self.done)
        first = self.mine.start
        if len(parts) == self.batch - first:  # called before the last batch finished
            parts.append(self.x.detach().cpu())
        images = torch.cat(parts)
        k = self.data.num_classes
        sizes = self.sizes[first : first + len(parts)]
        labels = torch.cat([torch.arange(k).repeat(n // k) for n in sizes])
        soft = torch.cat(
            [
                self.teacher(images[i : i + 256].to(self.device)).cpu()
                for i in range(0, len(images), 256)
            ]
        )
        order = torch.argsort(labels, stable=True)  # store grouped by class
        return images[order], labels[order], soft[order]

    def batch_state(self) -> dict[str, Any]:
        return {"x": self.x.detach().cpu().clone()}

    def load_batch_state(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.x.copy_(state["x"].to(self.device))
