"""Post-training quantization (PTQ) of BatchNorm CNNs, to score calibration sets.

One config, one verb (torchao's ``quantize_(model, config)`` style)::

    qmodel = quantize_model(teacher, calib_images, PTQConfig(w_bits=4, a_bits=8))

The recipe is the standard simulated-quantization PTQ (Krishnamoorthi,
arXiv:1806.08342, §3; Nagel et al., arXiv:2106.08295, §3):

1. copy the network, switch to eval mode and fold every Conv2d → BatchNorm2d pair into
   the convolution (``W' = W·γ/σ``, ``b' = (b − μ)·γ/σ + β``, σ = √(var + ε)), as an
   integer-only deployment would;
2. replace every Conv2d and Linear with a wrapper that fake-quantizes its weights
   (per-channel symmetric) and its *input* activations (per-tensor affine);
3. run the calibration images through the fp32 (folded) network while the activation
   observers record, then freeze the activation ranges.

The first conv and the last linear layer are kept at ``first_last_bits`` (8 by default)
for weights and input activations, the usual convention in the PTQ literature (e.g.
ZeroQ, Cai et al., CVPR 2020; BRECQ, Li et al., ICLR 2021), so that what is measured is
the effect of the calibration set on the body of the network. Only the activation
ranges depend on the calibration images, so the quantized accuracy scores how
representative a calibration set (real, synthetic, noise) is of the real activations.
"""

from __future__ import annotations

import copy
import re
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from distill_data.config import config_to_dict, require
from distill_data.errors import ConfigError, DataError
from distill_data.quant.fp import (
    FORMAT_NAMES,
    FORMATS,
    fp_fake_quant,
    fp_weight_quant,
    get_format,
    search_scale,
)
from distill_data.quant.quantizers import (
    DEFAULT_MAX_SAMPLES,
    MAX_BITS,
    MIN_BITS,
    OBSERVERS,
    SCALE_EPS,
    Observer,
    act_fake_quant,
    affine_qparams,
    affine_qrange,
    check_bits,
    make_observer,
    round_ste,
    weight_fake_quant,
)

PTQ_METHODS = ("observer", "adaround", "brecq", "qdrop", "genie")
_BITS_RE = re.compile(r"^\s*w(\d+)\s*a(\d+)\s*$", re.IGNORECASE)


def parse_bits(spec: str) -> tuple[int, int]:
    """``"w4a8"`` → ``(4, 8)`` (weight bits, activation bits); both must be in 2–8.

    Raises:
        ConfigError: the string is not ``w<int>a<int>`` or a bit width is out of range.
    """
    m = _BITS_RE.match(spec) if isinstance(spec, str) else None
    if m is None:
        raise ConfigError(
            f"bit setting must look like 'w4a8' (weight/activation bits), got {spec!r}"
        )
    return check_bits(int(m.group(1)), "weight bits"), check_bits(
        int(m.group(2)), "activation bits"
    )


@dataclass(frozen=True)
class PTQConfig:
    """Post-training quantization settings.

    Attributes:
        w_bits: weight bits (per-output-channel symmetric), 2–8.
        a_bits: input-activation bits (per-tensor affine), 2–8.
        method: ``observer`` (ranges only: the observer's activation ranges and
            round-to-nearest weights) or a reconstruction method of
            :mod:`distill_data.quant.reconstruct`: ``adaround``, ``brecq``, ``qdrop``,
            ``genie`` (Genie-M), which start from the observer's network and learn the
            rounding (and steps) block by block on the calibration images.
        observer: activation range: ``minmax``, ``percentile``, ``mse`` or ``lp`` (the
            Lp search, p = 2.4, of BRECQ's code). None (default): ``minmax`` for
            ``method="observer"``, ``lp`` for reconstruction (its steps' start).
        percentile: clipping percentile for ``observer="percentile"`` (Wu et al. 2020
            recommend 99.9–99.999; 99.99 is the default here).
        first_last_bits: bits of the first conv and last linear layer (weights and
            input activations); None quantizes them like the rest.
        fold_bn: fold BatchNorm into the preceding conv before quantizing (what an
            integer deployment does); False keeps BN as a float op after the conv.
        calib_batch: images per calibration forward pass (memory only; min/max and
            percentile results do not depend on it).
        max_samples: activation values kept per layer for the percentile / MSE
            observers (uniform random subsample; bounds memory).
        seed: seed of that subsampling (an explicit ``torch.Generator``), and of
            reconstruction's batches and QDrop's masks.
        iterations: reconstruction steps per block or layer (the papers' code: 20,000;
            hours on a CPU, so set it).
        recon_batch: images per reconstruction step (the papers' code: 32).
        round_weight: λ of the rounding regulariser; None: the method's (0.01; Genie's
            code: 1).
        warmup: fraction of the steps before the regulariser starts and β decays.
        beta_start, beta_end: β's linear schedule after the warm-up (20 → 2).
        lr_round: Adam's learning rate of the rounding variables V (1e-3).
        lr_act: Adam's learning rate of the activation steps (4e-5, cosine-annealed).
        lr_weight_step: Adam's learning rate of Genie-M's weight steps (1e-4, cosine).
        learn_weight_step: learn the per-channel weight steps jointly with the rounding
            (Genie-M's §3.2); None: the method's (``genie`` only). Set it to ablate: Genie-M
            without it, or QDrop with it.
        drop_prob: QDrop's probability of leaving an activation element (and a block
            input element) unquantized during reconstruction; None: the method's (0.5
            for ``qdrop`` and ``genie``, 0 otherwise).
        mixed_precision: average weight bits of the layers between the first and the
            last (None: every layer at ``w_bits``): each layer's bits chosen from
            ``mp_bits`` by ``mp_method`` (:mod:`distill_data.quant.mixed`): ``zeroq``
            (the least total sensitivity on ZeroQ's Pareto frontier within that size)
            or ``polino`` (bits by gradient norm, Polino et al. §3).
        w_format, a_format: ``int`` or a floating-point format of
            :mod:`distill_data.quant.fp` (``fp8_e4m3``, ``fp8_e5m2`` with 8 bits,
            ``fp4_e2m1`` with 4) for the weights / input activations of the layers
            between the first and the last (those stay integers at ``first_last_bits``).
        fp_search: FP scales by LLM-FP4's search (per weight channel, per activation
            tensor); False: the largest value maps to the format's largest.
        mp_bits: the weight bit widths mixed precision chooses from, e.g. ``"2,4,8"``.
        mp_method: ``zeroq`` or ``polino`` (whose widths are any from 2 to 8: its rule
            moves single bits between layers, the sum over layers preserved).
    """

    w_bits: int = 8
    a_bits: int = 8
    observer: str | None = None
    percentile: float = 99.99
    first_last_bits: int | None = 8
    fold_bn: bool = True
    calib_batch: int = 64
    max_samples: int = DEFAULT_MAX_SAMPLES
    seed: int = 0
    method: str = "observer"
    iterations: int = 20_000
    recon_batch: int = 32
    round_weight: float | None = None
    warmup: float = 0.2
    beta_start: float = 20.0
    beta_end: float = 2.0
    lr_round: float = 1e-3
    lr_act: float = 4e-5
    lr_weight_step: float = 1e-4
    learn_weight_step: bool | None = None
    drop_prob: float | None = None
    mixed_precision: float | None = None
    mp_bits: str = "2,4,8"
    mp_method: str = "zeroq"
    w_format: str = "int"
    a_format: str = "int"
    fp_search: bool = True

    def __post_init__(self) -> None:
        check_bits(self.w_bits, "w_bits")
        check_bits(self.a_bits, "a_bits")
        require(
            self.method in PTQ_METHODS,
            f"unknown PTQ method {self.method!r}; choose from: {', '.join(PTQ_METHODS)}",
        )
        if self.observer is None:
            object.__setattr__(self, "observer", "minmax" if self.method == "observer" else "lp")
        require(
            isinstance(self.iterations, int) and self.iterations >= 1,
            f"iterations must be an integer >= 1, got {self.iterations!r}",
        )
        require(
            isinstance(self.recon_batch, int) and self.recon_batch >= 1,
            f"recon_batch must be an integer >= 1, got {self.recon_batch!r}",
        )
        require(0 <= self.warmup < 1, f"warmup must be in [0, 1), got {self.warmup}")
        require(
            self.beta_start >= self.beta_end > 0,
            f"need beta_start >= beta_end > 0, got {self.beta_start} and {self.beta_end}",
        )
        for name in ("lr_round", "lr_act", "lr_weight_step"):
            require(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        require(
            self.round_weight is None or self.round_weight >= 0,
            f"round_weight must be >= 0, got {self.round_weight}",
        )
        require(
            self.learn_weight_step in (None, True, False),
            f"learn_weight_step must be true or false, got {self.learn_weight_step!r}",
        )
        require(
            self.drop_prob is None or 0 <= self.drop_prob < 1,
            f"drop_prob must be in [0, 1), got {self.drop_prob}",
        )
        if self.mixed_precision is not None:
            from distill_data.quant.mixed import parse_bit_options

            opts = parse_bit_options(self.mp_bits)
            require(
                min(opts) <= self.mixed_precision <= max(opts),
                f"mixed precision at {self.mixed_precision:g} average bits is unreachable "
                f"with bits {self.mp_bits} (from {min(opts)} to {max(opts)})",
            )
            require(self.fold_bn, "mixed precision works on the folded network: fold_bn=true")
        for what, fmt, bits in (("w", self.w_format, self.w_bits), ("a", self.a_format,
                                                                     self.a_bits)):  # fmt: skip
            require(
                fmt in FORMAT_NAMES,
                f"unknown {what}_format {fmt!r}; choose from: {', '.join(FORMAT_NAMES)}",
            )
            require(
                fmt == "int" or FORMATS[fmt].bits == bits,
                f"{what}_format={fmt} has {FORMATS[fmt].bits if fmt in FORMATS else 0} bits, "
                f"but the {'weight' if what == 'w' else 'activation'} bits are {bits}",
            )
        require(
            (self.w_format == "int" and self.a_format == "int") or self.method == "observer",
            "reconstruction learns integer grids: use w_format=int and a_format=int",
        )
        require(
            self.w_format == "int" or self.mixed_precision is None,
            "mixed precision chooses integer widths: use w_format=int",
        )
        require(
            self.mp_method in ("zeroq", "polino"),
            f"unknown mp_method {self.mp_method!r}; choose from: zeroq, polino",
        )
        require(
            self.method == "observer" or self.fold_bn,
            "reconstruction works on the folded network: fold_bn must be true",
        )
        if self.first_last_bits is not None:
            check_bits(self.first_last_bits, "first_last_bits")
        require(
            self.observer in OBSERVERS,
            f"unknown observer {self.observer!r}; choose from: {', '.join(OBSERVERS)}",
        )
        require(
            0.0 < self.percentile <= 100.0,
            f"percentile must be in (0, 100], got {self.percentile}",
        )
        require(
            isinstance(self.calib_batch, int) and self.calib_batch >= 1,
            f"calib_batch must be an integer >= 1, got {self.calib_batch!r}",
        )
        require(
            isinstance(self.max_samples, int) and 1 <= self.max_samples <= 2**24,
            f"max_samples must be an integer in [1, 2^24], got {self.max_samples!r}",
        )

    @property
    def bits(self) -> str:
        """The ``w<bits>a<bits>`` tag of this setting, e.g. ``"w4a8"``."""
        return f"w{self.w_bits}a{self.a_bits}"


# ---------------------------------------------------------------- quantized modules


class ActQuant(nn.Module):
    """Per-tensor affine fake quantizer of a layer's input, with a calibration phase.

    While ``calibrating`` it records its input with ``observer`` and passes it through
    unchanged; :meth:`freeze` turns the observed range into ``scale`` / ``zero_point``
    buffers (which move with ``.to(device)`` and live in the state dict) and drops the
    observer's stored samples.
    """

    def __init__(self, bits: int, observer: Observer) -> None:
        super().__init__()
        self.bits = check_bits(bits, "activation bits")
        self.observer: Observer | None = observer
        self.calibrating = False
        self.register_buffer("scale", torch.ones((), dtype=torch.float32))
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int32))
        self.register_buffer("lo", torch.zeros((), dtype=torch.float32))
        self.register_buffer("hi", torch.zeros((), dtype=torch.float32))
        self.frozen = False
        # reconstruction (quant/reconstruct.py): a learned step and QDrop's random drop
        self.register_parameter("step", None)
        self.drop_prob = 0.0
        self.drop_generator: torch.Generator | None = None
        self.fp_format: str | None = None  # a floating-point grid (quant/fp.py) instead
        self.fp_search = True

    def freeze(self) -> None:
        """Fix the quantization range from the observations (RuntimeError if none)."""
        if self.observer is None or not self.observer.seen:
            raise RuntimeError("ActQuant.freeze: no calibration data was observed")
        if self.fp_format is not None:
            fmt = get_format(self.fp_format)
            samples = getattr(self.observer, "samples", None)
            lo, hi = self.observer.lo, self.observer.hi
            if samples is not None and self.fp_search:
                x = torch.cat([samples, lo.reshape(1), hi.reshape(1)])  # keep the extremes
            else:
                x = torch.stack([lo, hi])
            self.scale.copy_(search_scale(x, fmt, None, self.fp_search).reshape(()))
            self.zero_point.zero_()
            self.lo.copy_(-fmt.max_value * self.scale)
            self.hi.copy_(fmt.max_value * self.scale)
            self.observer = None
            self.calibrating = False
            self.frozen = True
            return
        lo, hi = self.observer.range()
        scale, zero_point = affine_qparams(lo, hi, self.bits)
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point)
        self.lo.copy_(lo)
        self.hi.copy_(hi)
        self.observer = None  # release stored samples
        self.calibrating = False
        self.frozen = True

    def forward(self, x: Tensor) -> Tensor:
        if self.calibrating:
            if self.observer is None:
                raise RuntimeError("ActQuant is calibrating but has no observer")
            self.observer.observe(x)
            return x
        if not self.frozen:
            raise RuntimeError("ActQuant used before calibration; run quantize_model")
        if self.fp_format is not None:
            return fp_fake_quant(x, self.scale, FORMATS[self.fp_format])
        if self.step is None:
            return act_fake_quant(x, self.scale, self.zero_point, self.bits)
        # LSQ (Esser et al. 2020): the step is a parameter, the round straight-through
        qmin, qmax = affine_qrange(self.bits)
        z = self.zero_point.to(x.dtype)
        xq = (torch.clamp(round_ste(x / self.step) + z, qmin, qmax) - z) * self.step
        if self.drop_prob > 0 and self.training:  # QDrop: keep elements in float at random
            keep = torch.rand(x.shape, generator=self.drop_generator, device=x.device)
            xq = torch.where(keep < self.drop_prob, x, xq)
        return xq

    def learn_step(self, on: bool) -> None:
        """Start learning the step (a parameter initialised to ``scale``), or stop and
        keep what was learned as the fixed ``scale`` (and the range it implies)."""
        if on:
            self.step = nn.Parameter(self.scale.detach().clone())
            return
        if self.step is not None:
            with torch.no_grad():
                s = self.step.detach().abs().clamp(min=SCALE_EPS)
                qmin, qmax = affine_qrange(self.bits)
                self.scale.copy_(s)
                self.lo.copy_((qmin - self.zero_point) * s)
                self.hi.copy_((qmax - self.zero_point) * s)
        self.step = None
        self.drop_prob = 0.0

    def extra_repr(self) -> str:
        learned = ", learning its step" if self.step is not None else ""
        return f"bits={self.bits}, frozen={self.frozen}{learned}"


class QuantConv2d(nn.Module):
    """Conv2d with fake-quantized weights (per-channel symmetric, ``w_bits``) and
    fake-quantized input (per-tensor affine, ``a_bits``). Wraps the float conv, whose
    parameters it keeps in full precision (so the same wrapper can be fine-tuned)."""

    def __init__(self, conv: nn.Conv2d, w_bits: int, a_bits: int, observer: Observer) -> None:
        super().__init__()
        self.conv = conv
        self.w_bits = check_bits(w_bits, "weight bits")
        self.a_bits = check_bits(a_bits, "activation bits")
        self.act = ActQuant(a_bits, observer)
        self.wq: nn.Module | None = None  # a learned weight quantizer (reconstruction)
        self.enabled = True  # False: the float layer (reconstruction targets)

    def quantized_weight(self) -> Tensor:
        """The weight as the quantized layer uses it."""
        if self.wq is not None:
            return self.wq()
        return weight_fake_quant(self.conv.weight, self.w_bits)

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return self.conv(x)
        x = self.act(x)
        if self.act.calibrating:  # observers see the fp32 network's activations
            return self.conv(x)
        return self.conv._conv_forward(x, self.quantized_weight(), self.conv.bias)

    def extra_repr(self) -> str:
        return f"w_bits={self.w_bits}, a_bits={self.a_bits}"


class QuantLinear(nn.Module):
    """Linear layer with fake-quantized weights (per-output-row symmetric) and input
    (per-tensor affine); see :class:`QuantConv2d`."""

    def __init__(self, linear: nn.Linear, w_bits: int, a_bits: int, observer: Observer) -> None:
        super().__init__()
        self.linear = linear
        self.w_bits = check_bits(w_bits, "weight bits")
        self.a_bits = check_bits(a_bits, "activation bits")
        self.act = ActQuant(a_bits, observer)
        self.wq: nn.Module | None = None
        self.enabled = True

    def quantized_weight(self) -> Tensor:
        """The weight as the quantized layer uses it."""
        if self.wq is not None:
            return self.wq()
        return weight_fake_quant(self.linear.weight, self.w_bits)

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return self.linear(x)
        x = self.act(x)
        if self.act.calibrating:
            return self.linear(x)
        return F.linear(x, self.quantized_weight(), self.linear.bias)

    def extra_repr(self) -> str:
        return f"w_bits={self.w_bits}, a_bits={self.a_bits}"


QUANT_LAYERS = (QuantConv2d, QuantLinear)


class FixedWeight(nn.Module):
    """A weight quantized once (a floating-point grid): returned as it is."""

    def __init__(self, w: Tensor) -> None:
        super().__init__()
        self.register_buffer("w", w.clone())

    def forward(self) -> Tensor:
        return self.w


# -------------------------------------------------------------------- BN folding


def fold_batchnorm(model: nn.Module) -> fx.GraphModule:
    """A copy of ``model`` in eval mode with every Conv2d → BatchNorm2d pair folded.

    Traces the model with ``torch.fx`` and folds with
    ``torch.fx.experimental.optimization.fuse`` (eval-mode folding with the running
    statistics; Jacob et al. 2018, §3.2). A BN whose conv output is also used elsewhere,
    or that follows something other than a conv (or a Linear → BatchNorm1d pair, also
    folded), stays a float op. The input model is not changed.

    Raises:
        ConfigError: the model cannot be traced by ``torch.fx`` (data-dependent Python
            control flow, e.g. ``if x.sum() > 0``); quantize with ``fold_bn=False``.
    """
    return _fold_inplace(copy.deepcopy(model))


def _fold_inplace(model: nn.Module) -> fx.GraphModule:
    # imported here, quietly: it pulls in torch.utils.mkldnn, whose torch.jit use warns
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.fx.experimental.optimization import fuse

    gm = _trace(model.eval(), "fold BatchNorm (use fold_bn=False to quantize without folding)")
    return fuse(gm, inplace=True, no_trace=True)


def _trace(model: nn.Module, purpose: str) -> fx.GraphModule:
    if isinstance(model, fx.GraphModule):
        return model
    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - fx raises many types (TraceError, TypeError, ...)
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ConfigError(
            f"torch.fx cannot trace {type(model).__name__} to {purpose}: {msg}"
        ) from None


def _layer_order(model: nn.Module) -> list[str]:
    """Names of the Conv2d / Linear modules in execution order.

    From the traced graph when the model can be traced; otherwise (fold_bn=False on an
    untraceable model) in registration order, which is the execution order for
    ``nn.Sequential``-style networks.
    """
    kinds = (nn.Conv2d, nn.Linear)
    try:
        gm = _trace(model, "order its layers")
    except ConfigError:
        return [n for n, m in model.named_modules() if isinstance(m, kinds)]
    modules = dict(gm.named_modules())
    order: list[str] = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(modules.get(node.target), kinds):
            if node.target not in order:
                order.append(node.target)
    return order


def first_and_last(model: nn.Module, order: list[str]) -> tuple[str, str]:
    """The first Conv2d and the last Linear layer (the first / last layer otherwise)."""
    first = next((n for n in order if isinstance(model.get_submodule(n), nn.Conv2d)), order[0])
    last = next(
        (n for n in reversed(order) if isinstance(model.get_submodule(n), nn.Linear)), order[-1]
    )
    return first, last


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, new)


def _device_of(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _check_images(x: Tensor, what: str) -> None:
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise DataError(f"{what} must be a non-empty (N, C, H, W) tensor, got {shape}")
    if not x.is_floating_point():
        raise DataError(f"{what} must be normalised float images, got dtype {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise DataError(f"{what} contain NaN or infinite values")


# ----------------------------------------------------------------------- the verbs


def quantized_layers(model: nn.Module) -> dict[str, QuantConv2d | QuantLinear]:
    """The quantized wrappers of a model returned by :func:`quantize_model`, by name,
    in registration order (to inspect their ``w_bits`` / ``a_bits`` / ranges)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QUANT_LAYERS)}


def quantize_model(
    model: nn.Module, calib_images: Tensor, cfg: PTQConfig | None = None, progress: bool = False
) -> nn.Module:
    """Fake-quantize a copy of ``model``, calibrating activation ranges on ``calib_images``.

    Args:
        model: a float network (typically a BatchNorm teacher); never modified.
        calib_images: normalised calibration images ``(N, C, H, W)`` (real subset,
            synthetic set, noise, ...); moved to the model's device batch by batch.
        cfg: settings (defaults: W8A8, min/max, first/last layer at 8 bits, BN folded).
        progress: a progress bar over reconstruction's steps (None: on a terminal).

    Returns:
        The quantized copy in eval mode (an ``fx.GraphModule`` when BN was folded) whose
        Conv2d / Linear layers are :class:`QuantConv2d` / :class:`QuantLinear` with
        frozen activation ranges; after reconstruction its ``reconstruction``
        attribute lists each block's error before and after.

    Raises:
        ConfigError: bad settings, or ``fold_bn=True`` on a model fx cannot trace.
        DataError: empty, non-float or non-finite calibration images.
    """
    cfg = cfg or PTQConfig()
    _check_images(calib_images, "calibration images")
    qmodel: nn.Module = copy.deepcopy(model).eval()
    if cfg.fold_bn:
        qmodel = _fold_inplace(qmodel)
    order = _layer_order(qmodel)
    if not order:
        raise ConfigError(f"{type(model).__name__} has no Conv2d or Linear layer to quantize")
    first, last = first_and_last(qmodel, order)
    mixed = None
    if cfg.mixed_precision is not None:
        from distill_data.quant.mixed import assign_bits

        body = [n for n in order if cfg.first_last_bits is None or n not in (first, last)]
        mixed = assign_bits(qmodel, calib_images, body, cfg)
    for name in order:
        layer = qmodel.get_submodule(name)
        keep = cfg.first_last_bits is not None and name in (first, last)
        w_bits = cfg.first_last_bits if keep else cfg.w_bits
        if mixed is not None and name in mixed["bits"]:
            w_bits = mixed["bits"][name]
        a_bits = cfg.first_last_bits if keep else cfg.a_bits
        a_fp = None if keep or cfg.a_format == "int" else cfg.a_format
        # a floating-point grid's scale search needs samples: a sampling observer
        obs = "mse" if a_fp is not None and cfg.observer == "minmax" else cfg.observer
        observer = make_observer(obs, a_bits, cfg.percentile, cfg.max_samples, cfg.seed)
        wrapper_cls = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
        wrapper = wrapper_cls(layer, w_bits, a_bits, observer).to(layer.weight.device)
        wrapper.act.fp_format, wrapper.act.fp_search = a_fp, cfg.fp_search
        if not keep and cfg.w_format != "int":
            wrapper.wq = FixedWeight(
                fp_weight_quant(layer.weight.detach(), get_format(cfg.w_format), cfg.fp_search)
            )
        _set_submodule(qmodel, name, wrapper)

    quantizers = [m for m in qmodel.modules() if isinstance(m, ActQuant)]
    for q in quantizers:
        q.calibrating = True
    device = _device_of(qmodel)
    with torch.no_grad():
        for i in range(0, calib_images.shape[0], cfg.calib_batch):
            qmodel(calib_images[i : i + cfg.calib_batch].to(device))
    for q in quantizers:
        if q.observer is not None and q.observer.seen:
            q.freeze()
        else:  # a registered layer the forward pass never used: nothing to calibrate
            q.calibrating = False
    if mixed is not None:
        qmodel.mixed_precision = mixed
    if cfg.method != "observer":
        from distill_data.quant.reconstruct import reconstruct

        qmodel.reconstruction = reconstruct(qmodel, calib_images, cfg, progress=progress)
    return qmodel.eval()


@torch.no_grad()
def model_logits(model: nn.Module, x: Tensor, batch: int = 500) -> Tensor:
    """The model's outputs on ``x`` in eval mode, as float32 on the CPU (training flag restored)."""
    device = _device_of(model)
    was_training = model.training
    model.eval()
    try:
        return torch.cat(
            [model(x[i : i + batch].to(device)).float().cpu() for i in range(0, x.shape[0], batch)]
        )
    finally:
        model.train(was_training)


def fidelity(fp32_logits: Tensor, quant_logits: Tensor) -> dict:
    """How closely the quantized network reproduces the float one on the same inputs.

    Top-1 accuracy on a small test set ties whenever quantization costs fewer errors than
    the set can resolve (on 1000 images 0.1 point is one image), yet the calibration set
    still decides how far the quantized outputs drift. These read that drift directly:

    - ``agreement``: percent of inputs whose top-1 class is the float network's;
    - ``logit_sqnr_db``: signal-to-quantization-noise ratio of the logits,
      ``10·log10(Σ z² / Σ (z − ẑ)²)`` over all inputs and classes (the measure of
      torch.ao's numeric suite; higher is better, +6 dB ≈ one bit; ``None`` when the
      outputs are identical or the float ones all zero);
    - ``output_kl``: mean ``KL(softmax(z) ‖ softmax(ẑ))`` in nats (lower is better).
    """
    if fp32_logits.shape != quant_logits.shape:
        raise DataError(
            f"logit shapes differ: {tuple(fp32_logits.shape)} vs {tuple(quant_logits.shape)}"
        )
    z, zq = fp32_logits.double(), quant_logits.double()
    signal, noise = z.pow(2).sum(), (z - zq).pow(2).sum()
    sqnr = None if noise == 0 or signal == 0 else float(10 * torch.log10(signal / noise))
    kl = F.kl_div(F.log_softmax(zq, 1), F.log_softmax(z, 1), log_target=True, reduction="batchmean")
    return {
        "agreement": 100.0 * int((z.argmax(1) == zq.argmax(1)).sum()) / len(z),
        "logit_sqnr_db": sqnr,
        "output_kl": max(float(kl), 0.0),
    }


def _top1(logits: Tensor, y: Tensor) -> float:
    return 100.0 * int((logits.argmax(1) == y.cpu()).sum()) / len(y)  # exact 0.1 steps


def evaluate_ptq(
    model: nn.Module,
    calib_images: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    cfg: PTQConfig | None = None,
    fp32_logits: Tensor | None = None,
    progress: bool | None = False,
) -> dict:
    """Top-1 accuracy of ``model`` in fp32 and after PTQ calibrated on ``calib_images``.

    Args:
        model: the float network (left as it was, training flag included).
        calib_images: normalised calibration images.
        test_x: normalised test images ``(N, C, H, W)``.
        test_y: integer labels ``(N,)``.
        cfg: PTQ settings.
        fp32_logits: the float network's outputs on ``test_x`` when the caller already
            has them (comparing many calibration sets), to skip that forward pass.
        progress: a progress bar over reconstruction's steps (None: on a terminal).

    Returns:
        ``fp32_accuracy`` and ``quant_accuracy`` (percent), ``accuracy_drop``
        (fp32 − quantized, points), the quantized network's :func:`fidelity` to the float
        one on the test images (``agreement``, ``logit_sqnr_db``, ``output_kl``),
        ``bits`` (e.g. ``"w4a8"``), ``calib_images`` (count), every
        :class:`PTQConfig` field, and for reconstruction ``reconstruction``: each
        block's error on the calibration images before and after.
    """
    cfg = cfg or PTQConfig()
    _check_images(test_x, "test images")
    if test_y.dim() != 1 or test_y.shape[0] != test_x.shape[0]:
        raise DataError(
            f"test labels must be a vector of {test_x.shape[0]} labels, got shape "
            f"{tuple(test_y.shape)}"
        )
    z = model_logits(model, test_x) if fp32_logits is None else fp32_logits
    qmodel = quantize_model(model, calib_images, cfg, progress=progress)
    zq = model_logits(qmodel, test_x)
    fp32, quant = _top1(z, test_y), _top1(zq, test_y)
    recon = getattr(qmodel, "reconstruction", None)
    mixed = getattr(qmodel, "mixed_precision", None)
    fmt = [f"{k}={getattr(cfg, k)}" for k in ("w_format", "a_format") if getattr(cfg, k) != "int"]
    return {
        **({"formats": ", ".join(fmt)} if fmt else {}),
        **({"reconstruction": recon} if recon is not None else {}),
        **({"mixed_precision_result": mixed} if mixed is not None else {}),
        "fp32_accuracy": fp32,
        "quant_accuracy": quant,
        "accuracy_drop": round(fp32 - quant, 6),  # no float noise in a diffed report
        **fidelity(z, zq),
        # mixed precision: the body's average weight bits, e.g. "w2.5a8"
        "bits": cfg.bits if mixed is None else f"w{mixed['average_bits']:.3g}a{cfg.a_bits}",
        "calib_images": int(calib_images.shape[0]),
        **config_to_dict(cfg),
    }


__all__ = [
    "MAX_BITS",
    "MIN_BITS",
    "ActQuant",
    "PTQConfig",
    "QuantConv2d",
    "QuantLinear",
    "evaluate_ptq",
    "fidelity",
    "fold_batchnorm",
    "parse_bits",
    "quantize_model",
    "quantized_layers",
]
