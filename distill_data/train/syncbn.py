"""BatchNorm with the statistics of the whole batch across torchrun ranks, on any device.

Under DDP each rank holds a block of every batch's rows; a BatchNorm that normalises
with its own rows' statistics trains a different network from one process. torch's
``SyncBatchNorm`` fixes that on GPUs only (its kernels are CUDA). This version is plain
arithmetic with three all-reduces per layer and step (two in the forward pass: the sum,
then the summed squared deviations around the global mean, in float64; one in the
backward pass: the sums of ``g`` and ``g·x̂``), so gloo on CPUs gets it too.

Gradients: the trainer weights each rank's loss by ``world × rows / batch`` and DDP
averages the ranks' parameter gradients (:func:`distill_data.train.fit.batch_share`), so
every gradient flowing here is ``world`` times the one-process batch's, uniformly; the
input gradient ``γ/σ·(g − Σg/n − x̂·Σg·x̂/n)`` uses the all-reduced sums and stays
consistent with that scale, and ``∂γ``, ``∂β`` are this rank's partial sums, which DDP's
average turns into the full ones. The running statistics are updated as torch does
(momentum, unbiased variance), identically on every rank.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from distill_data.dist import Dist, current_batch_group


class _SyncBN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
                group: Dist, out_stats: list) -> Tensor:  # fmt: skip
        dims = [0, *range(2, x.dim())]
        xd = x.double()
        head = torch.cat([xd.sum(dims), xd.new_tensor([x.numel() / x.shape[1]])])
        group.all_reduce_(head)
        n = head[-1]
        mean = head[:-1] / n
        shape = [1, -1] + [1] * (x.dim() - 2)
        dev = (xd - mean.view(shape)) ** 2
        var = group.all_reduce_(dev.sum(dims)) / n  # biased: what normalises
        invstd = torch.rsqrt(var + eps)
        xhat = ((xd - mean.view(shape)) * invstd.view(shape)).to(x.dtype)
        y = xhat
        if weight is not None:
            y = xhat * weight.view(shape) + bias.view(shape)
        ctx.save_for_backward(xhat, weight, invstd.to(x.dtype))
        ctx.n, ctx.group, ctx.dims, ctx.shape = float(n), group, dims, shape
        out_stats.extend([mean, var, float(n)])
        return y.to(x.dtype)  # float32 weights on a bfloat16 input (autocast): as BatchNorm

    @staticmethod
    def backward(ctx, g: Tensor):
        xhat, weight, invstd = ctx.saved_tensors
        dims, shape, n = ctx.dims, ctx.shape, ctx.n
        in_dtype = xhat.dtype
        # bfloat16 activations (autocast): the arithmetic in float32, as BatchNorm's own
        # backward; float32 and float64 are computed as they come
        cdt = torch.promote_types(g.dtype, torch.float32)
        g, xhat, invstd = g.to(cdt), xhat.to(cdt), invstd.to(cdt)
        local = torch.cat([g.double().sum(dims), (g * xhat).double().sum(dims)])
        both = ctx.group.all_reduce_(local.clone())
        c = xhat.shape[1]
        sum_g, sum_gx = both[:c].to(cdt), both[c:].to(cdt)
        scale = invstd if weight is None else weight * invstd
        gx = scale.view(shape) * (g - (sum_g / n).view(shape) - xhat * (sum_gx / n).view(shape))
        gw = gb = None
        if weight is not None:  # this rank's part; DDP's average completes it
            gw, gb = local[c:].to(weight.dtype), local[:c].to(weight.dtype)
        return gx.to(in_dtype), gw, gb, None, None, None


def _forward(self: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    if not self.training:  # eval mode, frozen statistics: the running ones, as ever
        return self._plain_forward(x)
    group = current_batch_group()
    if not group.active:  # every rank holds the whole (small) batch: its own statistics
        return self._plain_forward(x)
    stats: list = []
    y = _SyncBN.apply(x, self.weight, self.bias, self.eps, group, stats)
    if self.track_running_stats:
        mean, var, n = stats
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum
            if m is None:  # cumulative moving average, as torch
                m = 1.0 / float(self.num_batches_tracked)
            unbiased = var * (n / max(n - 1.0, 1.0))
            self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
            self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
    return y


@contextlib.contextmanager
def synced_batchnorm(model: nn.Module, group: Dist) -> Iterator[None]:
    """Within the block, every BatchNorm of ``model`` in training mode normalises with
    the statistics of the batch spread over the ranks of the current
    :func:`~distill_data.dist.batch_group` (eval mode, frozen statistics, one process,
    and a batch every rank holds whole are untouched); the modules are restored
    afterwards."""
    if not group.active:
        yield
        return
    patched = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and "forward" not in vars(m):
            m._plain_forward = m.forward
            m.forward = types.MethodType(_forward, m)
            patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward, m._plain_forward
