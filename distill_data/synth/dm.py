"""Distribution Matching (Zhao & Bilen, "Dataset Condensation with Distribution
Matching", WACV 2023).

Objective (paper Eq. 4, with the DSA transform A_ω shared by both sides):

    min_S  E_{θ ~ P_θ, ω}  Σ_c || mean_{x ∈ T_c} ψ_θ(A_ω(x)) − mean_{s ∈ S_c} ψ_θ(A_ω(s)) ||²

where ψ_θ is the embedding (output before the classifier) of a ConvNet freshly
initialised at every iteration. One ω per class and iteration transforms every real
and synthetic image of the class (``siamese=batch``, the official code's ``batchmode``);
``--set siamese=sample`` draws one ω per image instead. Defaults follow the paper and
the official code: SGD on pixels with lr 1 and momentum 0.5, 256 real images per class
per iteration, init from real images, DSA, 20,000 iterations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from distill_data.config import require
from distill_data.synth.base import GENERATORS
from distill_data.synth.matching import MatchingConfig, MatchingGenerator, class_means


def dm_loss(
    real_emb: torch.Tensor,
    real_y: torch.Tensor,
    syn_emb: torch.Tensor,
    syn_y: torch.Tensor,
    num_classes: int,
) -> torch.Tensor:
    """Σ_c ||mean real embedding of c − mean synthetic embedding of c||² (DM, Eq. 4)."""
    diff = class_means(real_emb, real_y, num_classes) - class_means(syn_emb, syn_y, num_classes)
    return (diff**2).sum()


@dataclass(frozen=True)
class DMConfig(MatchingConfig):
    """DM settings. ``lr_img``/``momentum``: SGD on pixels (paper: 1.0 / 0.5)."""

    lr_img: float = 1.0
    momentum: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.lr_img > 0, f"lr_img must be > 0, got {self.lr_img}")
        require(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")


@GENERATORS.register("dm", "Distribution Matching: class-mean embeddings of random ConvNets")
class DistributionMatching(MatchingGenerator):
    """Zhao & Bilen, WACV 2023: match class-mean embeddings of a random network (Eq. 4)."""

    Config = DMConfig
    config: DMConfig

    def make_optimizers(self) -> list[torch.optim.Optimizer]:
        cfg = self.config
        return [torch.optim.SGD([self.images], lr=cfg.lr_img, momentum=cfg.momentum)]

    def match(
        self,
        net: nn.Module,
        real: torch.Tensor,
        real_y: torch.Tensor,
        syn: torch.Tensor,
        syn_y: torch.Tensor,
    ) -> torch.Tensor:
        real_emb = self.embed_real(net.embed, real)
        return dm_loss(real_emb, real_y, net.embed(syn), syn_y, self.num_local)
