"""ZeroQ's distilled data (Cai et al., "ZeroQ: A Novel Zero Shot Quantization
Framework", CVPR 2020, Sec. 3.1, Eq. 2).

From a trained network alone, optimise input pixels x so that at every BatchNorm layer
i the statistics of the layer's input match the stored running statistics:

    min_x  Σ_i ||μ̃_i(x) − μ_i||² + ||σ̃_i(x) − σ_i||²  +  ||μ̃_0(x) − 0||² + ||σ̃_0(x) − 1||²

where the last two terms are the input prior (the input "layer" of a network trained
on normalised data has mean 0 and std 1). No labels and no cross-entropy; the stored
labels are the teacher's predictions. Images are made in independent batches of
``batch_size``, so 10 or 1,000 images cost proportionally.

Defaults follow the official code (amirgholami/ZeroQ, ``getDistilData``): Adam on
pixels with lr 0.5, ReduceLROnPlateau on the loss (factor 0.1, patience 100, min lr
1e-4), 500 iterations per batch, batches of 32, eps 1e-6, teacher in eval mode.
Where paper and code differ:
- Statistics: the code matches each image's own per-channel statistics ((N, C),
  averaged over images); the paper's Eq. 2 and this project's default match the
  batch's statistics ((C)). ``--set stats=sample`` gives the code's form.
- Initialisation: the paper draws Gaussian noise (our default, ``init=gaussian``); the
  code's UniformDataset divides by the variance instead of the std, giving uniform
  noise in ±0.0235 (``init=uniform``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from distill_data.config import require
from distill_data.synth.base import GENERATORS, GeneratorConfig
from distill_data.synth.bnstats import STATS, BNStatLoss, input_prior
from distill_data.synth.inversion import BatchedInversion

INITS = ("gaussian", "uniform")


@dataclass(frozen=True)
class ZeroQConfig(GeneratorConfig):
    """ZeroQ settings (see the module docstring for paper vs code choices).

    Attributes:
        iterations: optimisation steps per batch of images.
        batch_size: images optimised together (their statistics are matched jointly).
        lr: Adam learning rate on pixels.
        patience, min_lr: ReduceLROnPlateau settings (factor 0.1), stepped every iteration.
        stats: ``batch`` (paper) or ``sample`` (official code).
        init: ``gaussian`` (paper) or ``uniform`` (official code's ±0.0235).
        eps: added to variances before the square root.
    """

    iterations: int = 500
    batch_size: int = 32
    lr: float = 0.5
    patience: int = 100
    min_lr: float = 1e-4
    stats: str = "batch"
    init: str = "gaussian"
    eps: float = 1e-6

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.iterations >= 1, "iterations must be >= 1")
        require(self.batch_size >= 2, "batch_size must be >= 2 (batch statistics)")
        require(self.lr > 0 and self.min_lr >= 0, "lr must be > 0 and min_lr >= 0")
        require(self.stats in STATS, f"stats must be one of {', '.join(STATS)}")
        require(self.init in INITS, f"init must be one of {', '.join(INITS)}")


@GENERATORS.register("zeroq", "ZeroQ: BN-statistic inversion of a teacher, no data (CVPR 2020)")
class ZeroQ(BatchedInversion):
    """Cai et al., CVPR 2020: pixels whose per-layer BN input statistics match the
    teacher's running statistics, plus an input prior (Eq. 2); labels = predictions."""

    Config = ZeroQConfig
    config: ZeroQConfig

    def start_batch(self, b: int) -> None:
        cfg, d = self.config, self.data
        shape = (self.sizes[b], d.channels, *d.im_size)
        if cfg.init == "gaussian":
            x = torch.randn(shape, generator=self.rng)
        else:  # the official code's UniformDataset: (U{0..255} − 127.5) / 5418.75
            x = (torch.randint(0, 256, shape, generator=self.rng).float() - 127.5) / 5418.75
        self.x = x.to(self.device).requires_grad_(True)
        opt = torch.optim.Adam([self.x], lr=cfg.lr)
        self.optimizers = [opt]
        self.schedulers = [
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, factor=0.1, patience=cfg.patience, min_lr=cfg.min_lr
            )
        ]

    def images(self) -> torch.Tensor:
        return self.x

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        with BNStatLoss(self.teacher, stats=cfg.stats, form="squared", eps=cfg.eps) as bn:
            self.teacher(x)
        return bn.loss() + input_prior(x, cfg.stats, cfg.eps)

    def batch_state(self) -> dict[str, Any]:
        return {"x": self.x.detach().cpu().clone()}

    def load_batch_state(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.x.copy_(state["x"].to(self.device))
