"""Quantization-aware training of a student: one config, one verb, layers chosen by a
filter function (torchao's ``quantize_(model, config, filter_fn)``)::

    quantize_(student, QuantSpec(method="lsq", w_bits=4, a_bits=4))   # in place
    fit(student, data, recipe, ...)                                     # trains as usual
    payload = export_student(student)                                   # integer codes

Four methods, each a weight quantizer and (for ``qat``/``lsq``) an input-activation
quantizer on every chosen Conv2d / Linear:

``qat``
    Fake quantization with the straight-through estimator (Krishnamoorthi,
    arXiv:1806.08342, §3; Jacob et al., CVPR 2018): per-output-channel symmetric weights
    (scale ``max|w_c| / (2^(b−1) − 1)`` from the current weights), per-tensor affine
    input activations whose range is an exponential moving average of the batch min/max
    (averaging constant 0.01, ``torch.ao``'s ``MovingAverageMinMaxObserver``).
``lsq``
    Learned step sizes for weights and activations (Esser et al., ICLR 2020, eqs. 1–3):
    ``round(clip(v/s, −Q_N, Q_P))·s`` with the step gradient scaled by
    ``1/√(N·Q_P)`` and initialised at ``2·mean|v|/√Q_P`` (weights at preparation, each
    activation on its first batch); activations are unsigned where that first batch is
    non-negative (after a ReLU), signed otherwise. Weights per tensor, as the paper;
    ``per_channel=True`` learns one weight step per output channel (initialised per
    channel, the gradient scale still over the whole tensor's ``N``, as lsq-net and
    LSQ+ practice), the granularity the PTQ baselines and ``qat`` use.
    ``step_init="mse"`` starts every step (weights at preparation, activations on their
    first batch) at the clipping of the largest magnitude with the least quantization
    MSE instead (Nagel et al.'s white paper, arXiv:2106.08295, §4.2: MSE range setting
    as LSQ's start; LSQ+, Bhalgat et al. 2020, §3.3, for the activations): a trained
    network then starts fine-tuning where MSE post-training quantization leaves it.
``qd``
    Quantized distillation (Polino, Pascanu & Alistarh, ICLR 2018, Alg. 1): the float
    weights are the "shadow" weights; forward and backward run at their quantization
    (``2^b`` uniform levels per bucket of 256 consecutive weights with min/max scaling,
    deterministic or stochastic rounding), and the optimiser's update lands on the
    shadow weights (a straight-through gradient). Weights only, as the paper.
``dq``
    Differentiable quantization (Polino et al., Alg. 2): per tensor a learnable, sorted
    list of points in the bucket-scaled space, initialised at quantiles of the weights;
    the distillation loss's gradient reaches the points. Weights only.

Conv2d → BatchNorm2d pairs (found with ``torch.fx``) are folded for ``qat`` and ``lsq``,
as integer deployment needs, in torch.ao's way (its ``_ConvBnNd``; the whitepaper's
§3.2): while training, the weights are quantized after scaling by ``γ/σ`` of the
running statistics, the convolution's output is scaled back and normalised with the
batch statistics (which keep updating the running ones); in eval mode, and for good
once :func:`freeze_batchnorm` is called, the layer computes exactly what the integer
student computes: ``conv(x, q(W·γ/σ)) + (b − μ)·γ/σ + β``. ``qd``/``dq`` quantize the
convolution weights themselves and keep BatchNorm as a float op, as Polino et al. do.

Biases (and BatchNorm's parameters where it is not folded) stay float: they are well
under 1 % of the parameters. Polino's code quantizes them too; we state the deviation.
"""

from __future__ import annotations

import abc
import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill_data.config import require
from distill_data.dist import batch_abs_mean, batch_minmax, batch_sum
from distill_data.errors import ConfigError
from distill_data.kernels import bucket_fake_quant as fused_bucket_fake_quant
from distill_data.kernels import fake_quant
from distill_data.quant.fakequant import (
    EMA_MOMENTUM,
    bucket_overhead_bits,
    bucket_quantize,
    ema_update,
    lsq_grad_scale,
    lsq_init_step,
    lsq_mse_errors,
    lsq_mse_init_step,
    lsq_mse_step,
    lsq_qrange,
    lsq_step_from_mean,
    nonuniform_codes,
    nonuniform_quantize,
    quantile_points,
)
from distill_data.quant.ptq import _layer_order, _set_submodule, _trace
from distill_data.quant.quantizers import (
    MAX_BITS,
    MIN_BITS,
    SCALE_EPS,
    act_fake_quant,
    affine_qparams,
    symmetric_qrange,
    weight_scales,
)

QUANT_METHODS = ("qat", "lsq", "qd", "dq")
#: Methods that quantize input activations (``qd``/``dq`` are weight-only, as in Polino).
ACT_METHODS = ("qat", "lsq")
#: How ``lsq`` initialises its steps: the paper's mean rule, or the least-MSE clipping.
STEP_INITS = ("lsq", "mse")


@dataclass(frozen=True)
class QuantSpec:
    """How a student is quantized.

    Attributes:
        method: one of :data:`QUANT_METHODS` (see the module docstring).
        w_bits: weight bits, 2–8.
        a_bits: input-activation bits, 2–8, for ``qat``/``lsq``; None (float
            activations) for the weight-only ``qd``/``dq``.
        first_last_bits: bits (weights and activations) of the first conv and the last
            linear layer under the default filter (:func:`first_last_filter`); None
            quantizes them like the rest.
        bucket_size: weights per min/max bucket for ``qd``/``dq`` (None: one bucket per
            tensor, Polino's "global" scaling).
        stochastic: ``qd`` rounds stochastically (unbiased) instead of to nearest.
        fold_bn: fold Conv2d → BatchNorm2d pairs (``qat``/``lsq``); False keeps BatchNorm
            a float op after the quantized convolution.
        ema_momentum: averaging constant of ``qat``'s activation ranges.
        per_channel: ``lsq`` learns one weight step per output channel instead of the
            paper's one per tensor.
        step_init: how ``lsq`` starts its steps: ``lsq`` (the paper's
            ``2·mean|v|/√Q_P``) or ``mse`` (the least-MSE clipping of ``max|v|``, see
            the module docstring).
        kernels: ``lsq``'s and ``qd``'s fake quantization by ``torch`` (the reference),
            ``triton`` (the fused kernels of :mod:`distill_data.kernels`) or ``auto``
            (Triton on CUDA when installed). ``qd``'s stochastic rounding on the kernel
            draws Triton's Philox stream (a seed per step from the trainer's generator),
            a different random stream from the reference's ``torch.rand``.
    """

    method: str = "qat"
    w_bits: int = 8
    a_bits: int | None = 8
    first_last_bits: int | None = 8
    bucket_size: int | None = 256
    stochastic: bool = False
    fold_bn: bool = True
    ema_momentum: float = EMA_MOMENTUM
    per_channel: bool = False
    step_init: str = "lsq"
    kernels: str = "auto"

    def __post_init__(self) -> None:
        from distill_data.kernels import BACKENDS

        require(
            self.kernels in BACKENDS,
            f"unknown kernels {self.kernels!r}; choose from: {', '.join(BACKENDS)}",
        )
        require(
            self.method in QUANT_METHODS,
            f"unknown quantization {self.method!r}; choose from: {', '.join(QUANT_METHODS)}",
        )
        for name in ("w_bits", "a_bits", "first_last_bits"):
            value = getattr(self, name)
            if value is None and name != "w_bits":
                continue
            require(
                isinstance(value, int) and MIN_BITS <= value <= MAX_BITS,
                f"{name} must be an integer from {MIN_BITS} to {MAX_BITS}, got {value!r}",
            )
        if self.method in ACT_METHODS:
            require(self.a_bits is not None, f"{self.method} quantizes activations: give a_bits")
        else:
            require(
                self.a_bits is None,
                f"{self.method} quantizes weights only (Polino et al.); set a_bits=none",
            )
        require(
            self.bucket_size is None or self.bucket_size >= 2,
            f"bucket_size must be >= 2 or none, got {self.bucket_size}",
        )
        require(not self.stochastic or self.method == "qd", "stochastic rounding is a qd setting")
        require(
            not self.per_channel or self.method == "lsq",
            "per_channel is an lsq setting (qat's weights are always per channel)",
        )
        require(
            self.step_init in STEP_INITS,
            f"unknown step_init {self.step_init!r}; choose from: {', '.join(STEP_INITS)}",
        )
        require(
            self.step_init == "lsq" or self.method == "lsq",
            "step_init is an lsq setting (the other methods learn no step)",
        )
        require(0 < self.ema_momentum <= 1, "ema_momentum must be in (0, 1]")

    #: the settings each method reads besides method, w_bits and first_last_bits
    _READS = {
        "qat": ("a_bits", "fold_bn", "ema_momentum"),
        "lsq": ("a_bits", "fold_bn", "per_channel", "step_init", "kernels"),
        "qd": ("bucket_size", "stochastic", "kernels"),
        "dq": ("bucket_size",),
    }

    def in_effect(self) -> dict:
        """The settings this method reads (a report lists these, not the other
        methods' defaults, e.g. no ``fold_bn`` for ``qd`` which never folds)."""
        keep = ("method", "w_bits", "first_last_bits", *self._READS[self.method])
        return {k: getattr(self, k) for k in keep}

    @property
    def tag(self) -> str:
        """``w4a4``, or ``w2`` for weight-only methods."""
        return f"w{self.w_bits}" + ("" if self.a_bits is None else f"a{self.a_bits}")


#: ``filter_fn(module, name) -> QuantSpec | None``: the spec of a Conv2d/Linear layer,
#: or None to keep it float.
FilterFn = Callable[[nn.Module, str], "QuantSpec | None"]


def first_last_filter(spec: QuantSpec, first: str, last: str) -> FilterFn:
    """The default filter: every layer at ``spec``, the first conv and the last linear
    layer at ``spec.first_last_bits`` (weights and activations) when it is set."""

    def choose(module: nn.Module, name: str) -> QuantSpec | None:
        if spec.first_last_bits is None or name not in (first, last):
            return spec
        a_bits = None if spec.a_bits is None else spec.first_last_bits
        return replace(spec, w_bits=spec.first_last_bits, a_bits=a_bits)

    return choose


# ------------------------------------------------------------------ weight quantizers


def positive(step: Tensor) -> Tensor:
    """A learned step as used: ``|s|``, at least :data:`SCALE_EPS`. LSQ's step is a
    scale and must be positive; an optimiser step that overshoots zero would otherwise
    mirror the range (and send every input of an unsigned quantizer to 0). The absolute
    value keeps a gradient, so the step can recover."""
    return step.abs().clamp_min(SCALE_EPS)


class WeightQuantizer(nn.Module, abc.ABC):
    """Maps a float weight tensor to its (differentiable) quantized value, and to the
    integer codes and scales that store it (:meth:`codes`)."""

    bits: int

    @abc.abstractmethod
    def codes(self, w: Tensor) -> dict:
        """The integer codes of ``w`` and what dequantizes them, as the forward does."""


class SymmetricPerChannel(WeightQuantizer):
    """``qat``'s weights: per-output-channel symmetric, scale from the current weights."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def forward(self, w: Tensor) -> Tensor:
        qmin, qmax = symmetric_qrange(self.bits)
        scale = weight_scales(w, self.bits)
        zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, qmin, qmax)

    def codes(self, w: Tensor) -> dict:
        scale = weight_scales(w, self.bits)
        values = self.forward(w.detach())
        view = (-1,) + (1,) * (w.dim() - 1)
        q = torch.round(values / scale.view(view)).to(torch.int64)
        return {"kind": "per_channel", "codes": q, "signed": True, "scale": scale}


class LSQWeight(WeightQuantizer):
    """``lsq``'s weights: one learned step per tensor (or per output channel), signed
    range ``[−2^(b−1), 2^(b−1)−1]``."""

    def __init__(
        self,
        bits: int,
        w: Tensor,
        kernels: str = "auto",
        per_channel: bool = False,
        step_init: str = "lsq",
    ) -> None:
        super().__init__()
        self.bits = bits
        self.per_channel = per_channel
        self.qn, self.qp = lsq_qrange(bits, signed=True)
        self.grad_scale = lsq_grad_scale(w.numel(), self.qp)
        if step_init == "mse":
            step = lsq_mse_init_step(w, self.qn, self.qp, per_channel=per_channel)
        else:
            step = lsq_init_step(w.detach(), self.qp, per_channel=per_channel).float()
        self.step = nn.Parameter(step if per_channel else step.reshape(()))
        self.kernels = kernels

    def forward(self, w: Tensor) -> Tensor:
        return fake_quant(
            w, positive(self.step), self.qn, self.qp, self.grad_scale, backend=self.kernels
        )

    def codes(self, w: Tensor) -> dict:
        s = positive(self.step).detach()
        q = torch.round(torch.clamp(w.detach() / s, -self.qn, self.qp)).to(torch.int64)
        if self.per_channel:
            return {"kind": "per_channel", "codes": q, "signed": True, "scale": s.reshape(-1)}
        return {"kind": "per_tensor", "codes": q, "signed": True, "scale": s.reshape(1)}


class BucketUniform(WeightQuantizer):
    """``qd``'s weights: Polino's uniform quantization per bucket, straight-through."""

    def __init__(
        self, bits: int, bucket_size: int | None, stochastic: bool, kernels: str = "auto"
    ) -> None:
        super().__init__()
        self.bits, self.bucket_size, self.stochastic = bits, bucket_size, stochastic
        self.kernels = kernels
        #: the generator of stochastic rounding (the trainer sets it from its seed)
        self.generator: torch.Generator | None = None

    def forward(self, w: Tensor) -> Tensor:
        stochastic = self.stochastic and self.training
        gen = self.generator if stochastic else None
        return fused_bucket_fake_quant(w, self.bits, self.bucket_size, stochastic, gen,
                                       backend=self.kernels)  # fmt: skip

    def codes(self, w: Tensor) -> dict:
        codes, alpha, beta = bucket_quantize(w.detach(), self.bits, self.bucket_size)
        return {
            "kind": "bucket",
            "codes": codes.to(torch.int64),
            "signed": False,
            "alpha": alpha,
            "beta": beta,
            "bucket_size": self.bucket_size,
        }


class LearnedPoints(WeightQuantizer):
    """``dq``'s weights: nearest of learnable points in the bucket-scaled space."""

    def __init__(self, bits: int, bucket_size: int | None, w: Tensor) -> None:
        super().__init__()
        self.bucket_size = bucket_size
        pts = quantile_points(w.detach(), bits=bits, bucket_size=bucket_size)
        self.points = nn.Parameter(pts.float())

    @property
    def bits(self) -> int:
        """Bits per code: enough for every point (a gradient-norm allocation can give a
        tensor a point count that is not a power of two)."""
        return max(1, math.ceil(math.log2(self.points.numel())))

    def forward(self, w: Tensor) -> Tensor:
        return nonuniform_quantize(w, self.points, self.bucket_size)

    def codes(self, w: Tensor) -> dict:
        codes, alpha, beta = nonuniform_codes(w.detach(), self.points, self.bucket_size)
        return {
            "kind": "points",
            "codes": codes.to(torch.int64),
            "signed": False,
            "points": self.points.detach().sort().values,
            "alpha": alpha,
            "beta": beta,
            "bucket_size": self.bucket_size,
        }


# ------------------------------------------------------------- activation quantizers


class EMAActivation(nn.Module):
    """``qat``'s input quantizer: per-tensor affine over an EMA of the batch min/max,
    updated in training mode until :meth:`freeze` (then and in eval mode: fixed)."""

    def __init__(self, bits: int, momentum: float) -> None:
        super().__init__()
        self.bits, self.momentum = bits, momentum
        self.frozen = False
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def freeze(self) -> None:
        """Fix the range; an observer that has seen no batch yet keeps observing (a
        range of [0, 0] would quantize every input to zero)."""
        if bool(self.seen):
            self.frozen = True

    def forward(self, x: Tensor) -> Tensor:
        if self.training and not self.frozen:
            with torch.no_grad():
                cur_lo, cur_hi = batch_minmax(x)  # the whole batch's, under DDP
                if bool(self.seen):
                    lo, hi = ema_update(self.lo, self.hi, x, self.momentum, (cur_lo, cur_hi))
                else:
                    lo, hi = cur_lo, cur_hi
                self.lo.copy_(lo)
                self.hi.copy_(hi)
                self.seen.fill_(True)
        if not bool(self.seen):  # no range yet (eval before any training batch): float
            return x
        scale, zero_point = self.qparams()
        return act_fake_quant(x, scale, zero_point, self.bits)

    def qparams(self) -> tuple[Tensor, Tensor]:
        return affine_qparams(self.lo, self.hi, self.bits)

    def export(self) -> dict:
        scale, zero_point = self.qparams()
        return {"kind": "affine", "bits": self.bits, "scale": scale, "zero_point": zero_point}


class LSQActivation(nn.Module):
    """``lsq``'s input quantizer: a learned step, initialised on the first batch (which
    also decides unsigned ``[0, 2^b−1]`` for non-negative inputs, else signed), by the
    paper's rule or (``step_init="mse"``) the least-MSE clipping of the batch's largest
    magnitude; under DDP both over every rank's rows."""

    def __init__(self, bits: int, kernels: str = "auto", step_init: str = "lsq") -> None:
        super().__init__()
        self.bits = bits
        self.kernels = kernels
        self.step_init = step_init
        self.step = nn.Parameter(torch.ones(()))
        self.register_buffer("signed", torch.zeros((), dtype=torch.bool))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def forward(self, x: Tensor) -> Tensor:
        if not bool(self.initialised):
            with torch.no_grad():
                lo, hi = batch_minmax(x)
                self.signed.fill_(bool(lo < 0))
                qn, qp = lsq_qrange(self.bits, bool(self.signed))
                if self.step_init == "mse":
                    top = torch.maximum(-lo, hi).reshape(1)
                    errors = batch_sum(lsq_mse_errors(x.reshape(1, -1), qn, qp, top))
                    step = lsq_mse_step(errors, qp, top)
                else:
                    mean = batch_abs_mean(x)  # None in one process: lsq_init_step's own
                    step = lsq_init_step(x, qp) if mean is None else lsq_step_from_mean(mean, qp)
                self.step.copy_(step.reshape(()))
                self.initialised.fill_(True)
        qn, qp = lsq_qrange(self.bits, bool(self.signed))
        g = lsq_grad_scale(x[0].numel(), qp)
        return fake_quant(x, positive(self.step), qn, qp, g, backend=self.kernels)

    def export(self) -> dict:
        return {
            "kind": "lsq",
            "bits": self.bits,
            "step": positive(self.step).detach().reshape(()),
            "signed": bool(self.signed),
        }


# ---------------------------------------------------------------------------- layers


class QuantLayer(nn.Module):
    """A quantized Conv2d or Linear (optionally with its BatchNorm folded in), in one of
    two modes: *training* (float shadow weights through ``wq``) or *deployed* (fixed
    dequantized integer weights, loaded from a student file)."""

    def __init__(
        self,
        layer: nn.Conv2d | nn.Linear,
        spec: QuantSpec,
        wq: WeightQuantizer,
        aq: nn.Module | None,
        bn: nn.BatchNorm2d | None = None,
    ) -> None:
        super().__init__()
        self.layer, self.bn, self.wq, self.aq = layer, bn, wq, aq
        self.spec = spec
        self.bn_frozen = False
        self.bn_name: str | None = None
        self.deployed = False
        self.enabled = True  # False: the float network (quantizers bypassed)

    # -- the float weights and bias the quantizer sees
    def _fold_scale(self) -> Tensor:
        bn = self.bn
        return bn.weight / torch.sqrt(bn.running_var + bn.eps)

    def folded(self) -> tuple[Tensor, Tensor | None]:
        """The weight and bias of the layer as deployed: BatchNorm folded in with its
        running statistics (or the layer's own when there is no BatchNorm)."""
        w, b = self.layer.weight, self.layer.bias
        if self.bn is None:
            return w, b
        s = self._fold_scale()
        bias = b if b is not None else torch.zeros_like(self.bn.running_mean)
        return w * s.view(-1, *([1] * (w.dim() - 1))), (bias - self.bn.running_mean) * s + (
            self.bn.bias
        )

    def _packed_op(self, x: Tensor, p: dict) -> Tensor:
        """The deployed layer through the packed low-bit product (load_student's kernels)."""
        from distill_data.kernels.lowbit import packed_conv2d, packed_linear

        b = self.deployed_bias
        t = {key: getattr(self, f"packed_{key}") for key in p["tensors"]}  # moved with .to()
        affine = {}
        if p["bucket_size"] is not None:
            affine = {"alpha": t["alpha"], "beta": t["beta"], "points": t.get("points"),
                      "bucket_size": p["bucket_size"]}  # fmt: skip
        scale = t.get("scale")
        if isinstance(self.layer, nn.Conv2d):
            c = self.layer
            return packed_conv2d(x, t["blob"], p["bits"], p["shape"], scale, p["kind"], b,
                                 c.stride, c.padding, c.dilation, p["backend"], c.groups,
                                 **affine)  # fmt: skip
        n, k = p["shape"]
        return packed_linear(x, t["blob"], p["bits"], n, k, scale, p["kind"], b, p["backend"],
                             **affine)  # fmt: skip

    def _op(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(x, w, b)
        return F.linear(x, w, b)

    def forward(self, x: Tensor) -> Tensor:
        if self.deployed:
            x = self.aq(x) if self.aq is not None else x
            packed = getattr(self, "packed", None)
            if packed is not None:
                return self._packed_op(x, packed)
            return self._op(x, self.deployed_weight, self.deployed_bias)
        if not self.enabled:  # the float network: plain layer, BatchNorm as trained
            out = self.layer(x)
            return self.bn(out) if self.bn is not None else out
        if self.aq is not None:
            x = self.aq(x)
        if self.bn is not None and self.training and not self.bn_frozen:
            # torch.ao's _ConvBnNd: quantize W·γ/σ_running, scale the output back, and
            # let BatchNorm normalise with the batch statistics (updating the running)
            s = self._fold_scale()
            w = self.wq(self.layer.weight * s.view(-1, 1, 1, 1))
            out = self._op(x, w, None) / s.view(1, -1, 1, 1)
            if self.layer.bias is not None:
                out = out + self.layer.bias.view(1, -1, 1, 1)
            return self.bn(out)
        w, b = self.folded()
        return self._op(x, self.wq(w), b)

    def export(self) -> dict:
        """The integer weights (codes + scales), the float bias and the activation
        quantizer's parameters, exactly as the eval-mode forward uses them."""
        with torch.no_grad():
            w, b = self.folded()
            out = {"weight": self.wq.codes(w), "bias": None if b is None else b.detach().clone()}
            out["weight"].update(bits=self.wq.bits, shape=list(w.shape))
        out["act"] = None if self.aq is None else self.aq.export()
        return out

    def extra_repr(self) -> str:
        folded = ", bn folded" if self.bn is not None else ""
        return f"{self.spec.method} {self.spec.tag}{folded}"


# ------------------------------------------------------------------------- the verb


def conv_bn_pairs(model: nn.Module) -> dict[str, str]:
    """``{conv name: bn name}`` for every Conv2d whose only user is a BatchNorm2d, from
    the model's ``torch.fx`` graph ({} when it cannot be traced)."""
    try:
        gm = _trace(model, "find Conv2d → BatchNorm2d pairs")
    except ConfigError:
        return {}
    modules = dict(gm.named_modules())
    pairs = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.Conv2d):
            continue
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module":
            bn = modules.get(users[0].target)
            # folding needs γ, β and running statistics; other BatchNorms stay float ops
            if isinstance(bn, nn.BatchNorm2d) and bn.affine and bn.track_running_stats:
                pairs[node.target] = users[0].target
    return pairs


def _weight_quantizer(spec: QuantSpec, w: Tensor) -> WeightQuantizer:
    if spec.method == "qat":
        return SymmetricPerChannel(spec.w_bits)
    if spec.method == "lsq":
        return LSQWeight(spec.w_bits, w, spec.kernels, spec.per_channel, spec.step_init)
    if spec.method == "qd":
        return BucketUniform(spec.w_bits, spec.bucket_size, spec.stochastic, spec.kernels)
    return LearnedPoints(spec.w_bits, spec.bucket_size, w)


def _act_quantizer(spec: QuantSpec) -> nn.Module | None:
    if spec.a_bits is None:
        return None
    if spec.method == "qat":
        return EMAActivation(spec.a_bits, spec.ema_momentum)
    return LSQActivation(spec.a_bits, spec.kernels, spec.step_init)


def quantize_(model: nn.Module, spec: QuantSpec, filter_fn: FilterFn | None = None) -> nn.Module:
    """Prepare ``model`` for quantization-aware training, in place; returns it.

    Every Conv2d and Linear that ``filter_fn(module, name)`` gives a spec for (default:
    :func:`first_last_filter`) becomes a :class:`QuantLayer`; with ``spec.fold_bn`` and
    a method that quantizes activations, a BatchNorm2d right after a conv is folded into
    it (and replaced by an identity). Call on the student you own (the trainer copies a
    teacher before it does this).

    Raises:
        ConfigError: the model has no Conv2d or Linear layer, or the filter returns
            something other than a QuantSpec or None.
    """
    order = _layer_order(model)
    if not order:
        raise ConfigError(f"{type(model).__name__} has no Conv2d or Linear layer to quantize")
    convs = [n for n in order if isinstance(model.get_submodule(n), nn.Conv2d)]
    linears = [n for n in order if isinstance(model.get_submodule(n), nn.Linear)]
    first = convs[0] if convs else order[0]
    last = linears[-1] if linears else order[-1]
    choose = filter_fn or first_last_filter(spec, first, last)
    fold = spec.fold_bn and spec.method in ACT_METHODS
    pairs = conv_bn_pairs(model) if fold else {}
    for name in order:
        layer = model.get_submodule(name)
        layer_spec = choose(layer, name)
        if layer_spec is None:
            continue
        if not isinstance(layer_spec, QuantSpec):
            raise ConfigError(
                f"filter_fn must return a QuantSpec or None, got {type(layer_spec).__name__}"
            )
        bn = model.get_submodule(pairs[name]) if name in pairs else None
        w = layer.weight
        if bn is not None:  # the quantizer is initialised on the folded weights
            with torch.no_grad():
                w = w * (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(-1, 1, 1, 1)
        q = QuantLayer(layer, layer_spec, _weight_quantizer(layer_spec, w), _act_quantizer(
            layer_spec), bn)  # fmt: skip
        q.to(layer.weight.device)
        q.bn_name = pairs.get(name)  # where the folded BatchNorm was (feature matching)
        _set_submodule(model, name, q)
        if bn is not None:
            _set_submodule(model, pairs[name], nn.Identity())
    return model


def quant_layers(model: nn.Module) -> dict[str, QuantLayer]:
    """The model's :class:`QuantLayer` modules by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}


def freeze_batchnorm(model: nn.Module) -> None:
    """From now on every BatchNorm uses its running statistics and stops updating them,
    the whitepaper's "freeze BN statistics" after a warm-up: folded layers compute the
    deployed folding, the others normalise in eval mode. ``model.train()`` puts unfolded
    BatchNorms back in training mode, so a trainer calls this after it (every epoch);
    γ and β still train."""
    for q in quant_layers(model).values():
        if q.bn is not None:
            q.bn_frozen = True
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def keep_batchnorm_statistics(model: nn.Module) -> None:
    """Every BatchNorm keeps normalising training batches with their own statistics but
    stops updating its running ones (momentum 0): a trained network's statistics, which
    its eval forward and the folded integer student use, survive a fine-tune on other
    images (a data-free set, noise)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.0


def freeze_observers(model: nn.Module) -> None:
    """Fix the EMA activation ranges of ``qat`` layers (later batches no longer move them)."""
    for m in model.modules():
        if isinstance(m, EMAActivation):
            m.freeze()


@contextlib.contextmanager
def float_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every QuantLayer runs its float layer (the student before
    quantization: shadow weights, BatchNorm as a float op)."""
    layers = list(quant_layers(model).values())
    before = [q.enabled for q in layers]
    for q in layers:
        q.enabled = False
    try:
        yield model
    finally:
        for q, state in zip(layers, before):
            q.enabled = state


def weight_bits_report(model: nn.Module) -> list[dict]:
    """Per quantized layer: name, method, bits, weights, and the bits spent per weight
    on scales (``qd``/``dq`` buckets, per-channel scales)."""
    rows = []
    for name, q in quant_layers(model).items():
        numel = q.layer.weight.numel()
        if isinstance(q.wq, (BucketUniform, LearnedPoints)):
            overhead = bucket_overhead_bits(numel, q.wq.bucket_size)
            if isinstance(q.wq, LearnedPoints):
                overhead += 32 * q.wq.points.numel() / numel
        elif isinstance(q.wq, SymmetricPerChannel):
            overhead = 32 * q.layer.weight.shape[0] / numel
        else:
            overhead = 32 / numel
        rows.append(
            {
                "layer": name,
                "method": q.spec.method,
                "w_bits": q.wq.bits,
                "a_bits": q.spec.a_bits,
                "weights": numel,
                "overhead_bits_per_weight": round(overhead, 4),
                "bn_folded": q.bn is not None,
            }
        )
    return rows


def check_finite_quantizers(model: nn.Module) -> list[str]:
    """Names of learned quantizer parameters (steps, points) that are not finite."""
    bad = []
    for name, p in model.named_parameters():
        if (name.endswith(".step") or name.endswith(".points")) and not bool(
            torch.isfinite(p).all()
        ):
            bad.append(name)
    return bad
