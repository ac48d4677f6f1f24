"""Differentiable Siamese Augmentation (DSA).

Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation", ICML 2021.
DSA augments the real and the synthetic batch with the *same* randomly drawn
transformation before their gradients (or embeddings) are matched, and every
transformation is differentiable so the matching loss reaches the synthetic pixels
through it. Without the shared draw the two batches would be matched under different
transformations and the augmentation would only add noise to the objective.

Design (kornia style): each op is a pure function of the images and its explicit
per-sample parameters; :class:`DSA` only draws parameters (:meth:`DSA.sample`) and
replays them (:meth:`DSA.apply`). An :class:`AugParams` holds the *effective* values
(a pixel shift, a scale factor, an angle in degrees, ...), so replaying it needs
neither the generator nor the config that drew it.

Semantics follow the official code (VICO-UoE/DatasetCondensation, ``utils.py``,
``ParamDiffAug`` / ``DiffAugment``): the same ranges, the same order inside the
``color`` group, official ``'S'`` (one group per call) and ``'M'`` (all groups) modes,
affine warps in normalised coordinates with ``align_corners=True``. Randomness comes
only from an explicit :class:`torch.Generator`, where the official code reseeds the
global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from distill_data.augment.base import BatchAugment, PerSample
from distill_data.errors import ConfigError
from distill_data.runtime import to_device

__all__ = [
    "DEFAULT_STRATEGY",
    "GROUPS",
    "MODES",
    "AugParams",
    "DSA",
    "DSAConfig",
    "apply_brightness",
    "apply_contrast",
    "apply_crop",
    "apply_cutout",
    "apply_flip",
    "apply_rotate",
    "apply_saturation",
    "apply_scale",
    "parse_strategy",
    "strategy_for",
]

#: The strategy of the DSA paper and official code for natural images.
DEFAULT_STRATEGY: str = "color_crop_cutout_flip_scale_rotate"

#: Strategy groups and the ops each expands to, in application order. ``color`` is
#: one group of three ops, as in the official ``AUGMENT_FNS`` table.
GROUPS: dict[str, tuple[str, ...]] = {
    "color": ("brightness", "saturation", "contrast"),
    "crop": ("crop",),
    "cutout": ("cutout",),
    "flip": ("flip",),
    "scale": ("scale",),
    "rotate": ("rotate",),
}

#: Accepted ``mode`` values; the official one-letter names are aliases.
MODES: dict[str, str] = {"single": "single", "s": "single", "multi": "multi", "m": "multi"}

_NONE_STRATEGIES = {"", "none"}
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def strategy_for(is_digits: bool) -> str:
    """The field's DSA strategy for a dataset.

    Digits (MNIST, SVHN, ...) change class under a horizontal flip, so the official
    code drops ``flip`` for them (Zhao & Bilen, ICML 2021).

    Args:
        is_digits: Whether the dataset holds digit images.

    Returns:
        ``"color_crop_cutout_scale_rotate"`` for digits, :data:`DEFAULT_STRATEGY` otherwise.
    """
    if is_digits:
        return "_".join(g for g in DEFAULT_STRATEGY.split("_") if g != "flip")
    return DEFAULT_STRATEGY


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """Split an official-style strategy string into its groups, validating each.

    Args:
        strategy: Group names joined by ``_`` (e.g. ``"color_crop"``); ``"none"`` or
            ``""`` means no augmentation.

    Returns:
        The group names in order; empty for ``"none"``.

    Raises:
        ConfigError: If ``strategy`` is not a string, names an unknown op or repeats one.
    """
    if not isinstance(strategy, str):
        raise ConfigError(f"DSA strategy must be a string, got {type(strategy).__name__}")
    text = strategy.strip().lower()
    if text in _NONE_STRATEGIES:
        return ()
    groups = tuple(part.strip() for part in text.split("_"))
    for i, group in enumerate(groups):
        if group not in GROUPS:
            raise ConfigError(
                f"unknown DSA op {group!r} in strategy {strategy!r}; valid ops: "
                f"{', '.join(GROUPS)} (joined by '_'), or 'none'"
            )
        if group in groups[:i]:
            raise ConfigError(f"DSA strategy {strategy!r} lists {group!r} twice; list each op once")
    return groups


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class DSAConfig:
    """Augmentation strengths; defaults are the DSA paper's and official code's.

    Attributes:
        scale: Ratio ``r``; per-axis factors are drawn from ``U(1/r, r)`` (1 = off).
        rotate: Maximum rotation in degrees; angles are drawn from ``U(-rotate, rotate)``.
        flip: Probability of a horizontal flip per sample.
        brightness: Additive shift ``(u - 0.5) * brightness``, ``u ~ U(0, 1)``.
        saturation: Factor ``u * saturation`` on the deviation from the channel mean.
        contrast: Factor ``u + contrast`` on the deviation from the image mean.
        crop: Maximum translation as a fraction of the side, ``int(H * crop + 0.5)``.
        cutout: Side of the zeroed square as a fraction of the side, ``int(H * cutout + 0.5)``.
    """

    scale: float = 1.2
    rotate: float = 15.0
    flip: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    crop: float = 0.125
    cutout: float = 0.5

    def __post_init__(self) -> None:
        """Reject non-numeric, non-finite and out-of-range strengths."""
        bounds = {
            "scale": (1.0, math.inf, "a ratio >= 1 (1 disables scaling)"),
            "rotate": (0.0, 180.0, "degrees in [0, 180]"),
            "flip": (0.0, 1.0, "a probability in [0, 1]"),
            "brightness": (0.0, math.inf, "a value >= 0"),
            "saturation": (0.0, math.inf, "a value >= 0"),
            "contrast": (0.0, math.inf, "a value >= 0"),
            "crop": (0.0, 1.0, "a fraction of the image side in [0, 1]"),
            "cutout": (0.0, 1.0, "a fraction of the image side in [0, 1]"),
        }
        for f in fields(self):
            value = getattr(self, f.name)
            lo, hi, what = bounds[f.name]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"DSAConfig.{f.name} must be a number ({what}), got {value!r}")
            if not math.isfinite(value) or not lo <= value <= hi:
                raise ConfigError(f"DSAConfig.{f.name}={value!r} is invalid; use {what}")
            object.__setattr__(self, f.name, float(value))


# ----------------------------------------------------------------------------- params


@dataclass(eq=False)
class AugParams:
    """Everything random about one DSA call, replayable on any batch of ``n`` images.

    Applying the same ``AugParams`` to the real and the synthetic batch is the
    "siamese" part of DSA (Zhao & Bilen, ICML 2021). Values are the effective
    per-sample parameters, so a replay does not depend on the config that drew them.

    Attributes:
        ops: Op names applied, in order (e.g. ``("scale",)`` or
            ``("brightness", "saturation", "contrast")``).
        values: Per-sample tensors whose first dimension is ``n``. Keys:
            ``flip`` (bool), ``brightness`` (additive shift), ``saturation`` and
            ``contrast`` (factors), ``crop_dy``/``crop_dx`` (int pixel shifts),
            ``cutout_y0``/``cutout_x0``/``cutout_h``/``cutout_w`` (int box, top-left
            may lie outside the image), ``scale_x``/``scale_y`` (official affine
            factors: output coordinate times factor = input coordinate), ``rotate``
            (degrees).
        n: Batch size the parameters are for.
    """

    ops: tuple[str, ...]
    values: dict[str, torch.Tensor]
    n: int

    def __post_init__(self) -> None:
        """Check that every value holds one row per sample."""
        self.ops = tuple(self.ops)
        for key, value in self.values.items():
            if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != self.n:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
                raise ConfigError(
                    f"AugParams value {key!r} must be a tensor with first dim n={self.n}, "
                    f"got {shape}"
                )

    def select(self, index: torch.Tensor) -> AugParams:
        """The parameters of the rows in ``index`` (a 1-D LongTensor or bool mask).

        Used to apply one class's draw to a smaller synthetic batch, or to cut a
        batched draw into per-class pieces, while keeping the siamese pairing.

        Args:
            index: Row indices into ``range(n)``; repeats are allowed.

        Returns:
            New parameters with ``n = len(index)``.
        """
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        if index.dim() != 1 or index.is_floating_point():
            raise ConfigError(
                f"AugParams.select expects a 1-D integer index, got {index.dtype} "
                f"of shape {tuple(index.shape)}"
            )
        index = index.long()
        values = {k: v[index.to(v.device)] for k, v in self.values.items()}
        return AugParams(ops=self.ops, values=values, n=int(index.numel()))

    def head(self, n: int) -> AugParams:
        """The parameters of the first ``n`` rows (views; no index tensor, so nothing is
        copied between host and device): how a class's draw for ``max(real, syn)`` rows
        is cut for its real and its synthetic batch."""
        if not 0 <= n <= self.n:
            raise ConfigError(f"AugParams.head: n must be in [0, {self.n}], got {n}")
        return AugParams(ops=self.ops, values={k: v[:n] for k, v in self.values.items()}, n=n)

    def to(self, device: torch.device | str | None) -> AugParams:
        """The same parameters with every value on ``device``."""
        if device is None:
            return AugParams(ops=self.ops, values=dict(self.values), n=self.n)
        moved = to_device(list(self.values.values()), device)
        return AugParams(ops=self.ops, values=dict(zip(self.values, moved)), n=self.n)


# ----------------------------------------------------------------------------- pure ops


def _col(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-sample vector shaped ``(n, 1, 1, 1)`` in ``x``'s dtype and device."""
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def apply_flip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror the samples where ``flip`` is true left-right.

    Args:
        x: Images ``(n, C, H, W)``.
        flip: Bool ``(n,)``.
    """
    mask = flip.to(device=x.device, dtype=torch.bool).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(-1), x)


def apply_brightness(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Add a per-sample brightness shift: ``x + shift``.

    Args:
        x: Images ``(n, C, H, W)``.
        shift: ``(n,)``; DSA draws ``(u - 0.5) * brightness``.
    """
    return x + _col(shift, x)


def apply_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale each pixel's deviation from its channel mean: ``(x - m) * factor + m``.

    A no-op on one-channel images, as in the official code.

    Args:
        x: Images ``(n, C, H, W)``.
        factor: ``(n,)``; DSA draws ``u * saturation``.
    """
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * _col(factor, x) + mean


def apply_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale each image's deviation from its mean over C, H, W: ``(x - m) * factor + m``.

    Args:
        x: Images ``(n, C, H, W)``.
        factor: ``(n,)``; DSA draws ``u + contrast``.
    """
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _col(factor, x) + mean


def apply_crop(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Translate by whole pixels with zero fill: ``out[.., i, j] = x[.., i + dy, j + dx]``.

    The official DSA "crop" (pad-and-crop as a translation). Implemented as a gather
    from a one-pixel zero-padded copy with clamped indices, so any shift size works
    without a host sync and gradients flow to every kept pixel.

    Args:
        x: Images ``(n, C, H, W)``.
        dy: Int ``(n,)`` row shifts.
        dx: Int ``(n,)`` column shifts.
    """
    n, c, h, w = x.shape
    dev = x.device
    rows = torch.arange(h, device=dev).view(1, h) + dy.to(dev, torch.long).view(-1, 1) + 1
    cols = torch.arange(w, device=dev).view(1, w) + dx.to(dev, torch.long).view(-1, 1) + 1
    rows = rows.clamp(0, h + 1)
    cols = cols.clamp(0, w + 1)
    padded = F.pad(x, (1, 1, 1, 1))
    out = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w + 2))
    return out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))


def apply_cutout(
    x: torch.Tensor,
    y0: torch.Tensor,
    x0: torch.Tensor,
    size_h: torch.Tensor,
    size_w: torch.Tensor,
) -> torch.Tensor:
    """Zero the box ``[y0, y0 + size_h) x [x0, x0 + size_w)`` (clipped to the image).

    A multiplicative mask, so the kept pixels still receive gradient.

    Args:
        x: Images ``(n, C, H, W)``.
        y0: Int ``(n,)`` top row of the box (may be negative).
        x0: Int ``(n,)`` left column of the box (may be negative).
        size_h: Int ``(n,)`` box height.
        size_w: Int ``(n,)`` box width.
    """
    _, _, h, w = x.shape
    dev = x.device
    top = y0.to(dev, torch.long).view(-1, 1)
    left = x0.to(dev, torch.long).view(-1, 1)
    rows = torch.arange(h, device=dev).view(1, h)
    cols = torch.arange(w, device=dev).view(1, w)
    in_rows = (rows >= top) & (rows < top + size_h.to(dev, torch.long).view(-1, 1))
    in_cols = (cols >= left) & (cols < left + size_w.to(dev, torch.long).view(-1, 1))
    inside = in_rows.unsqueeze(2) & in_cols.unsqueeze(1)  # (n, H, W)
    keep = (~inside).to(x.dtype).unsqueeze(1)
    return x * keep


def _warp_normalised(x: torch.Tensor, linear: torch.Tensor) -> torch.Tensor:
    """Warp by a normalised-coordinate linear map: ``F.affine_grid(theta)`` then
    ``F.grid_sample`` (bilinear, zero padding, ``align_corners=True``), as the official
    code does.

    ``linear`` ``(n, 2, 2)`` maps normalised *output* coordinates (x then y) to
    normalised *input* coordinates, i.e. it is the official ``theta`` without
    translation. Runs in float32 with autocast off, so bfloat16/float16 autocast does
    not round the sampling grid. No host round trip: nothing here synchronises a GPU
    (kornia's ``warp_affine``, used before, inverted a pixel-space matrix and built
    constants on the host on every call).
    """
    n, c, h, w = x.shape
    out_dtype = x.dtype
    with torch.autocast(device_type=x.device.type, enabled=False):
        xf = x.float() if x.dtype in _LOW_PRECISION else x
        lin = linear.to(device=xf.device, dtype=xf.dtype)
        theta = torch.cat([lin, lin.new_zeros(n, 2, 1)], dim=-1)
        grid = F.affine_grid(theta, [n, c, h, w], align_corners=True)
        out = F.grid_sample(xf, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.to(out_dtype)


def apply_scale(x: torch.Tensor, scale_x: torch.Tensor, scale_y: torch.Tensor) -> torch.Tensor:
    """Scale about the centre by the official affine ``[[sx, 0, 0], [0, sy, 0]]``.

    ``theta`` maps output to input coordinates, so ``sx > 1`` shrinks the content
    (zero fill at the border) and ``sx < 1`` zooms in, exactly as the official
    ``F.affine_grid(theta, align_corners=True)`` warp.

    Args:
        x: Images ``(n, C, H, W)``.
        scale_x: ``(n,)`` width factor.
        scale_y: ``(n,)`` height factor.
    """
    sx = scale_x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    sy = scale_y.to(sx.dtype).to(sx.device)
    zero = torch.zeros_like(sx)
    linear = torch.stack([torch.stack([sx, zero], -1), torch.stack([zero, sy], -1)], -2)
    return _warp_normalised(x, linear)


def apply_rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate about the centre by the official ``[[cos, -sin, 0], [sin, cos, 0]]``.

    As in the official code the rotation acts on normalised coordinates: a true
    rotation for square images (all standard DSA datasets), slightly anisotropic for
    non-square ones.

    Args:
        x: Images ``(n, C, H, W)``.
        degrees: ``(n,)`` angles.
    """
    theta = torch.deg2rad(degrees.to(torch.float64 if x.dtype == torch.float64 else torch.float32))
    cos, sin = torch.cos(theta), torch.sin(theta)
    linear = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    return _warp_normalised(x, linear)


# Op name -> (value keys, function applying it from the values dict).
_OPS: dict[str, tuple[tuple[str, ...], Callable[..., torch.Tensor]]] = {
    "flip": (("flip",), apply_flip),
    "brightness": (("brightness",), apply_brightness),
    "saturation": (("saturation",), apply_saturation),
    "contrast": (("contrast",), apply_contrast),
    "crop": (("crop_dy", "crop_dx"), apply_crop),
    "cutout": (("cutout_y0", "cutout_x0", "cutout_h", "cutout_w"), apply_cutout),
    "scale": (("scale_x", "scale_y"), apply_scale),
    "rotate": (("rotate",), apply_rotate),
}


# ----------------------------------------------------------------------------- module


class DSA(BatchAugment):
    """Differentiable Siamese Augmentation: draw a transformation once, apply it twice.

    Zhao & Bilen (ICML 2021) match the synthetic set to the real data under a shared
    random transformation ``A_w``: draw ``params = dsa.sample(...)`` and call
    ``dsa.apply(real, params)`` and ``dsa.apply(syn, params.select(idx))``. All ops
    are differentiable, so the matching loss reaches the synthetic pixels.

    Args:
        strategy: Groups joined by ``_`` (see :data:`GROUPS`); ``"none"`` disables.
        config: Strengths; defaults are the paper's.
        mode: ``"single"`` (official ``'S'``, the default there): each call applies one
            group chosen uniformly from the strategy; ``"multi"`` (``'M'``): every
            group, in strategy order.
        batchmode: Draw one parameter set and share it by all ``n`` samples (the
            official ``batchmode``/``Siamese`` seeding); otherwise one per sample.

    Raises:
        ConfigError: For an unknown op, mode or config type.
    """

    kind = "DSA"

    def __init__(
        self,
        strategy: str = DEFAULT_STRATEGY,
        config: DSAConfig = DSAConfig(),
        mode: str = "single",
        batchmode: bool = False,
    ) -> None:
        self.groups: tuple[str, ...] = parse_strategy(strategy)
        self.strategy: str = "_".join(self.groups) if self.groups else "none"
        if not isinstance(config, DSAConfig):
            raise ConfigError(f"DSA config must be a DSAConfig, got {type(config).__name__}")
        self.config = config
        if not isinstance(mode, str) or mode.strip().lower() not in MODES:
            raise ConfigError(f"unknown DSA mode {mode!r}; valid modes: 'single', 'multi'")
        self.mode: str = MODES[mode.strip().lower()]
        self.batchmode = bool(batchmode)

    def __repr__(self) -> str:
        return (
            f"DSA(strategy={self.strategy!r}, mode={self.mode!r}, "
            f"batchmode={self.batchmode}, config={self.config})"
        )

    @property
    def enabled(self) -> bool:
        """Whether any op is configured (``False`` for strategy ``"none"``)."""
        return bool(self.groups)

    # -- sampling ----------------------------------------------------------------------

    def sample(
        self,
        n: int,
        height: int,
        width: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> AugParams:
        """Draw the parameters of one call for ``n`` images of ``height x width``.

        Draws happen on the generator's device (CPU by default) and are then moved to
        ``device``, so a seeded CPU generator gives the same augmentation on any
        device. Without a generator torch's default generator is used (never reseeded).

        Args:
            n: Batch size.
            height: Image height (crop/cutout sizes depend on it).
            width: Image width.
            generator: Source of all randomness.
            device: Where the returned values live (default CPU).

        Returns:
            Replayable parameters.
        """
        for name, value, low in (("n", n, 0), ("height", height, 1), ("width", width, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"DSA.sample: {name} must be an int >= {low}, got {value!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ConfigError(
                f"DSA.sample: generator must be a torch.Generator, got {type(generator).__name__}"
            )
        gen_device = generator.device if generator is not None else torch.device("cpu")
        if not self.groups:
            return AugParams(ops=(), values={}, n=n)
        if self.mode == "single":
            pick = int(
                torch.randint(len(self.groups), (1,), generator=generator, device=gen_device)
            )
            groups: tuple[str, ...] = (self.groups[pick],)
        else:
            groups = self.groups
        draws = 1 if self.batchmode else n
        ops: list[str] = []
        values: dict[str, torch.Tensor] = {}
        for group in groups:
            for op in GROUPS[group]:
                ops.append(op)
                values.update(self._draw(op, draws, height, width, generator, gen_device))
        if self.batchmode:
            values = {k: v.expand(n, *v.shape[1:]).clone() for k, v in values.items()}
        if device is not None:  # one non-blocking copy per dtype (no per-value GPU wait)
            values = dict(zip(values, to_device(list(values.values()), device)))
        return AugParams(ops=tuple(ops), values=values, n=n)

    def _draw(
        self,
        op: str,
        n: int,
        height: int,
        width: int,
        generator: torch.Generator | None,
        device: torch.device,
    ) -> dict[str, torch.Tensor]:
        """Draw one op's effective per-sample values with the official ranges."""
        cfg = self.config

        def uniform() -> torch.Tensor:
            return torch.rand(n, generator=generator, device=device, dtype=torch.float32)

        def integers(low: int, high: int) -> torch.Tensor:
            return torch.randint(low, high, (n,), generator=generator, device=device)

        if op == "flip":
            return {"flip": uniform() < cfg.flip}
        if op == "brightness":
            return {"brightness": (uniform() - 0.5) * cfg.brightness}
        if op == "saturation":
            return {"saturation": uniform() * cfg.saturation}
        if op == "contrast":
            return {"contrast": uniform() + cfg.contrast}
        if op == "crop":
            shift_h, shift_w = int(height * cfg.crop + 0.5), int(width * cfg.crop + 0.5)
            return {
                "crop_dy": integers(-shift_h, shift_h + 1),
                "crop_dx": integers(-shift_w, shift_w + 1),
            }
        if op == "cutout":
            size_h, size_w = int(height * cfg.cutout + 0.5), int(width * cfg.cutout + 0.5)
            # Official: centre offset in [0, H + (1 - size % 2)), box starts at offset - size // 2.
            off_y = integers(0, height + (1 - size_h % 2))
            off_x = integers(0, width + (1 - size_w % 2))
            return {
                "cutout_y0": off_y - size_h // 2,
                "cutout_x0": off_x - size_w // 2,
                "cutout_h": torch.full((n,), size_h, dtype=torch.long, device=device),
                "cutout_w": torch.full((n,), size_w, dtype=torch.long, device=device),
            }
        if op == "scale":
            r = cfg.scale
            return {
                "scale_x": uniform() * (r - 1.0 / r) + 1.0 / r,
                "scale_y": uniform() * (r - 1.0 / r) + 1.0 / r,
            }
        if op == "rotate":
            return {"rotate": (uniform() - 0.5) * 2.0 * cfg.rotate}
        raise ConfigError(f"unknown DSA op {op!r}; valid ops: {', '.join(_OPS)}")

    # -- applying ----------------------------------------------------------------------

    def apply(self, x: torch.Tensor, params: AugParams) -> torch.Tensor:
        """Apply ``params`` to ``x``; the same ``params`` give the same transformation.

        Args:
            x: Floating images ``(n, C, H, W)``, ``n == params.n``.
            params: From :meth:`sample` (or :meth:`AugParams.select` of it).

        Returns:
            Augmented images, same shape and dtype as ``x``, differentiable w.r.t. ``x``.

        Raises:
            ConfigError: If ``x.shape[0] != params.n`` or ``params`` is malformed.
            DataError: If ``x`` is not a 4-D floating tensor.
        """
        self.check_batch(x, params, AugParams, "; use params.select(index) to match the batch")
        out = x
        for op in params.ops:
            if op not in _OPS:
                raise ConfigError(f"unknown DSA op {op!r} in params; valid ops: {', '.join(_OPS)}")
            keys, fn = _OPS[op]
            missing = [k for k in keys if k not in params.values]
            if missing:
                raise ConfigError(f"AugParams for op {op!r} lack values {missing}")
            out = fn(out, *(params.values[k] for k in keys))
        return out.to(x.dtype) if params.ops else out


class PerSampleDSA(PerSample):
    """DSA as a per-image transform for ``Dataset``/``DataLoader`` pipelines.

    ``t(x)`` augments one (C, H, W) image with a fresh draw; see
    :class:`~distill_data.augment.base.PerSample` for how workers draw.
    """

    def __init__(self, strategy: str = DEFAULT_STRATEGY, config: DSAConfig | None = None) -> None:
        super().__init__(DSA(strategy, config or DSAConfig()))

    @property
    def dsa(self) -> DSA:
        """The batch DSA this transform applies."""
        return self.augment
