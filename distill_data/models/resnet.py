"""Small ResNet with BatchNorm (He et al., CVPR 2016, CIFAR variant).

Three stages of basic blocks with ``width``, 2·``width`` and 4·``width`` channels and
``(depth - 2) / 6`` blocks each (ResNet-20 by default), global average pooling, linear
classifier. Small enough to train as a teacher on a CPU; BatchNorm everywhere so
BN-statistic inversion (ZeroQ, Genie, SRe2L) has statistics to match.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill_data.errors import ConfigError


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet-(6n+2) with BatchNorm. ``embed(x)`` is the pooled feature."""

    def __init__(
        self,
        channels: int,
        num_classes: int,
        im_size: tuple[int, int],
        width: int = 16,
        depth: int = 20,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ConfigError(
                f"ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, ...), got {depth}"
            )
        if width < 1:
            raise ConfigError(f"ResNet width must be >= 1, got {width}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        stages, in_ch = [], width
        for i, mult in enumerate((1, 2, 4)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_ch, width * mult, stride))
                in_ch = width * mult
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.embed_dim = in_ch
        self.classifier = nn.Linear(in_ch, num_classes)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))
