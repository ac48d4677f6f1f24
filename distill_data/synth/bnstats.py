"""BatchNorm-statistic matching: the shared core of ZeroQ, Genie, SRe2L and INFER.

A teacher's BatchNorm layers remember the per-channel mean μ_l and variance σ²_l of
their inputs over the training data. Inverting a teacher means making inputs whose
statistics at every BN layer match those. The methods differ in details, so the loss
here is parametrised:

- ``stats="batch"``: statistics over the whole batch (N, H, W) → (C);
  ``stats="sample"``: per image over (H, W) → (N, C), each image matched on its own
  (ZeroQ's official code).
- ``form="squared"``: Σ_l ||μ̂_l − μ_l||² + ||σ̂_l − σ_l||² on standard deviations
  (ZeroQ, Genie); ``form="norm"``: Σ_l w_l (||μ̂_l − μ_l||₂ + ||σ̂²_l − σ²_l||₂) on
  variances with plain L2 norms (SRe2L, INFER).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

STATS = ("batch", "sample")
FORMS = ("squared", "norm")


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm layers in module order."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def feature_stats(
    x: torch.Tensor, stats: str = "batch", unbiased: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and variance of an (N, C, ...) tensor; (C) or (N, C) each."""
    x = x.float()
    if stats == "batch":
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        return flat.mean(1), flat.var(1, unbiased=unbiased)
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    return flat.mean(2), flat.var(2, unbiased=unbiased)


def stat_distance(
    mean: torch.Tensor,
    var: torch.Tensor,
    target_mean: torch.Tensor,
    target_var: torch.Tensor,
    form: str = "squared",
    eps: float = 1e-6,
    channel_reduce: str = "sum",
) -> torch.Tensor:
    """Distance between (possibly per-sample) statistics and one layer's targets.

    ``channel_reduce="mean"`` divides the squared form by the number of channels
    (Genie's per-channel MSE) instead of summing (ZeroQ).

    ``squared``: ||μ̂ − μ||² + ||σ̂ − σ||² with σ = sqrt(var + eps), averaged over
    samples when the statistics are per sample (ZeroQ's ``||A − B||² / N``).
    ``norm``: ||μ̂ − μ||₂ + ||σ̂² − σ²||₂ (SRe2L), averaged over samples likewise.
    """
    if form == "squared":
        d = (mean - target_mean) ** 2 + (torch.sqrt(var + eps) - torch.sqrt(target_var + eps)) ** 2
        d = d.sum(-1) if channel_reduce == "sum" else d.mean(-1)
    else:
        d = torch.linalg.vector_norm(mean - target_mean, dim=-1) + torch.linalg.vector_norm(
            var - target_var, dim=-1
        )
    return d.mean() if d.dim() > 0 else d


class BNStatLoss:
    """Collects the input statistics of every BN layer during a forward pass.

    Use as ``with BNStatLoss(teacher, ...) as bn: teacher(x); loss = bn.loss()``.
    Layer weights: ``first_multiplier`` scales the first BN layer (SRe2L uses 10).
    """

    def __init__(
        self,
        model: nn.Module,
        stats: str = "batch",
        form: str = "squared",
        first_multiplier: float = 1.0,
        unbiased: bool = True,
        eps: float = 1e-6,
        channel_reduce: str = "sum",
    ) -> None:
        self.layers = batchnorm_layers(model)
        self.channel_reduce = channel_reduce
        if not self.layers:
            raise ValueError("the model has no BatchNorm layers")
        self.stats, self.form, self.eps, self.unbiased = stats, form, eps, unbiased
        self.weights = [first_multiplier] + [1.0] * (len(self.layers) - 1)
        self._terms: list[torch.Tensor] = []
        self._handles: list = []

    def _hook(self, index: int):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            mean, var = feature_stats(inputs[0], self.stats, self.unbiased)
            d = stat_distance(
                mean,
                var,
                module.running_mean,
                module.running_var,
                self.form,
                self.eps,
                self.channel_reduce,
            )
            self._terms.append(self.weights[index] * d)

        return hook

    def __enter__(self) -> BNStatLoss:
        self._terms = []
        self._handles = [
            layer.register_forward_pre_hook(self._hook(i)) for i, layer in enumerate(self.layers)
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def loss(self) -> torch.Tensor:
        """Sum over layers of the weighted distances collected since entering."""
        if not self._terms:
            raise RuntimeError("no BatchNorm layer was run inside the context")
        return torch.stack(self._terms).sum()


@contextmanager
def bn_stat_loss(model: nn.Module, **kwargs) -> Iterator[BNStatLoss]:
    """Functional spelling of :class:`BNStatLoss`."""
    with BNStatLoss(model, **kwargs) as tracker:
        yield tracker


def input_prior(x: torch.Tensor, stats: str = "sample", eps: float = 1e-6) -> torch.Tensor:
    """ZeroQ's input term: each image's per-channel mean 0 and std 1 (in normalised space)."""
    mean, var = feature_stats(x, stats)
    zeros, ones = torch.zeros_like(mean), torch.ones_like(var)
    return stat_distance(mean, var, zeros, ones - eps, "squared", eps)
