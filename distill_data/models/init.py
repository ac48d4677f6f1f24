"""Parameter initialisation from an explicit ``torch.Generator``.

PyTorch modules initialise themselves from the global RNG. Library code must not
depend on or reseed that, so models built for a run are re-initialised here with the
same distributions PyTorch uses by default, drawn from the run's own generator.
"""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def init_params_(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-draw every parameter with PyTorch's default init, from ``generator``.

    Conv/Linear: Kaiming-uniform weights (a=√5) and U(±1/√fan_in) bias, exactly
    ``reset_parameters``' distributions. Norm layers: weight 1, bias 0, running stats
    reset. Parameters are drawn on the CPU and copied, so results do not depend on the
    device.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            w = torch.empty(m.weight.shape)
            nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=generator)
            m.weight.copy_(w)
            if m.bias is not None:
                fan_in = m.weight[0].numel()
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                b = torch.empty(m.bias.shape)
                nn.init.uniform_(b, -bound, bound, generator=generator)
                m.bias.copy_(b)
        elif isinstance(m, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm):
            if getattr(m, "weight", None) is not None:
                m.weight.fill_(1.0)
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
            if isinstance(m, nn.modules.batchnorm._NormBase):
                m.reset_running_stats()
    return model
