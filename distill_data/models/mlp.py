"""A plain multilayer perceptron (the field's cross-architecture baseline)."""

from __future__ import annotations

import torch
from torch import nn

from distill_data.errors import ConfigError


class MLP(nn.Module):
    """Flatten → ``depth`` × (Linear → ReLU) of ``width`` units → Linear classifier."""

    def __init__(
        self,
        channels: int,
        num_classes: int,
        im_size: tuple[int, int],
        width: int = 128,
        depth: int = 2,
    ) -> None:
        super().__init__()
        if width < 1 or depth < 1:
            raise ConfigError(f"MLP width and depth must be >= 1 (got {width}, {depth})")
        layers: list[nn.Module] = [nn.Flatten()]
        d_in = channels * im_size[0] * im_size[1]
        for _ in range(depth):
            layers += [nn.Linear(d_in, width), nn.ReLU(inplace=True)]
            d_in = width
        self.body = nn.Sequential(*layers)
        self.embed_dim = width
        self.classifier = nn.Linear(width, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))
