"""ConvNet, the dataset-distillation field's standard network, and its BatchNorm twin.

Architecture as in Zhao et al. (DC, ICLR 2021), reused unchanged by DSA, DM, DataDAM
and NCFM: ``depth`` blocks of conv3x3 → norm → ReLU → 2×2 average pool, then one linear
classifier on the flattened features. Width 128, depth 3 and instance norm are the
defaults (instance norm is ``GroupNorm(width, width)``, as in the official code).
Single-channel inputs get padding 3 on the first convolution (28×28 MNIST becomes
32×32, as in the official code); depth shrinks when the image is too small for three
poolings, so 8×8 inputs work.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from distill_data.errors import ConfigError

NORMS = ("instancenorm", "batchnorm", "layernorm", "none")


def _norm(kind: str, width: int, hw: int) -> nn.Module:
    if kind == "instancenorm":
        return nn.GroupNorm(width, width, affine=True)
    if kind == "batchnorm":
        return nn.BatchNorm2d(width)
    if kind == "layernorm":
        return nn.GroupNorm(1, width, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"unknown norm {kind!r}; choose from: {', '.join(NORMS)}")


def avg_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(x, 2, 2)``; on CPU for contiguous NCHW, by adding phases (faster)."""
    if x.device.type != "cpu" or x.dim() != 4 or not x.is_contiguous():
        return F.avg_pool2d(x, 2, 2)
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    x = x[..., :h, :w]
    rows = x[..., 0::2, :] + x[..., 1::2, :]
    return (rows[..., 0::2] + rows[..., 1::2]) * 0.25


# torch.fx (BatchNorm folding for PTQ) records the call instead of tracing the branch
torch.fx.wrap("avg_pool_2x2")


class AvgPool2x2(nn.AvgPool2d):
    """``nn.AvgPool2d(2, 2)`` with a faster CPU path for contiguous NCHW tensors.

    PyTorch's CPU kernel for NCHW average pooling is ~4× slower than adding the two row
    phases and then the two column phases of the (even-cropped) map, forward and
    backward; in a matching iteration pooling was ~17 % of the time. Same values up to
    float rounding (the four terms are summed pairwise), same floor-mode output size;
    channels-last and non-CPU tensors take the native kernel, which is fast there.
    """

    def __init__(self) -> None:
        super().__init__(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_pool_2x2(x)


class ConvNet(nn.Module):
    """The field's ConvNet. ``embed(x)`` is the flattened last feature map.

    Args:
        channels: input channels (1 or 3).
        num_classes: classifier outputs.
        im_size: input (H, W).
        width: channels of every conv layer (paper default 128).
        depth: number of conv blocks (paper default 3; reduced for tiny images).
        norm: ``instancenorm`` (default), ``batchnorm``, ``layernorm`` or ``none``.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        im_size: tuple[int, int],
        width: int = 128,
        depth: int = 3,
        norm: str = "instancenorm",
    ) -> None:
        super().__init__()
        if width < 1 or depth < 1:
            raise ConfigError(f"ConvNet width and depth must be >= 1 (got {width}, {depth})")
        pad0 = 3 if channels == 1 else 1
        h, w = im_size[0] + 2 * pad0 - 2, im_size[1] + 2 * pad0 - 2
        layers: list[nn.Module] = []
        in_ch = channels
        self.depth = 0
        for d in range(depth):
            if d > 0 and min(h, w) < 2:
                break  # no room for another pooling: adapt depth to the image size
            layers += [
                nn.Conv2d(in_ch, width, 3, padding=pad0 if d == 0 else 1),
                _norm(norm, width, h),
                nn.ReLU(inplace=True),
                AvgPool2x2(),
            ]
            in_ch = width
            h, w = h // 2, w // 2
            self.depth += 1
        self.features = nn.Sequential(*layers)
        self.feature_shape = (width, h, w)
        self.embed_dim = width * h * w
        self.classifier = nn.Linear(self.embed_dim, num_classes)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Output of every block (after pooling), for attention-style losses."""
        maps = []
        block = 4
        for i in range(0, len(self.features), block):
            x = self.features[i : i + block](x)
            maps.append(x)
        return maps

    def block_activations(
        self,
        x: torch.Tensor,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
        skip_last: bool = False,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One pass returning each block's activation (after norm and ReLU, before
        pooling; what DataDAM attends to) and the embedding (flattened last map).

        ``reduce`` is applied to each activation as soon as it is computed (so without
        autograd the full-size map is freed before the next block); ``skip_last`` leaves
        out the last block's activation (its pooled map is the embedding anyway).
        """
        acts = []
        n = len(self.features) // 4
        for b in range(n):
            conv, norm, act, pool = self.features[4 * b : 4 * b + 4]
            x = act(norm(conv(x)))
            if not (skip_last and b == n - 1):
                acts.append(reduce(x) if reduce is not None else x)
            x = pool(x)
        return acts, x.flatten(1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Feature vector before the classifier (flattened last feature map)."""
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class ConvNetBN(ConvNet):
    """ConvNet with BatchNorm instead of instance norm (for BN-statistic methods)."""

    def __init__(
        self,
        channels: int,
        num_classes: int,
        im_size: tuple[int, int],
        width: int = 128,
        depth: int = 3,
        norm: str = "batchnorm",
    ) -> None:
        super().__init__(channels, num_classes, im_size, width=width, depth=depth, norm=norm)
