"""Training-time augmentation on kornia: crops, flips, colour jitter, mixup and CutMix.

The augmentation of *training* a network (a teacher on real data, a student on a
distilled set, a downstream user's loader) is the torchvision recipe the papers' code
runs: a random crop (``RandomCrop(size, padding=4)`` in the small-dataset scripts of
SRe2L and INFER, ``RandomResizedCrop(scale=(0.08, 1))`` in SRe2L's ImageNet FKD
script), a horizontal flip, optionally ``ColorJitter``, then mixup or CutMix of the
batch. Here every geometric and colour op is kornia's (Riba et al., "Kornia: an Open
Source Differentiable Computer Vision Library for PyTorch", WACV 2020):
``crop_by_indices`` (slice, then bilinear resize), ``hflip``, and the torchvision
formulas of ``kornia.enhance`` (``adjust_brightness_accumulative``,
``adjust_contrast_with_mean_subtraction``, ``adjust_saturation_with_gray_subtraction``,
``adjust_hue``); CutMix pastes through ``kornia.geometry.bbox.bbox_to_mask``.

Design (kornia's own, as :mod:`distill_data.augment.dsa`): pure functions of images and
explicit parameters, and a thin :class:`AugmentPipeline` that only draws parameters
from an explicit :class:`torch.Generator` (:meth:`AugmentPipeline.sample`) and replays
them (:meth:`AugmentPipeline.apply`). kornia's ``augmentation`` modules draw from the
global RNG, so they are not used: the same seed gives the same augmentation bit for bit
and the global RNG is never touched.

Not here: the matching loop of DC/DSA/DM-style generators keeps the hand-written DSA
(:mod:`distill_data.augment.dsa`), whose warps are one ``affine_grid``/``grid_sample``
with no host round trip; kornia serves as the reference in its tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace

import torch
from kornia.enhance import (
    adjust_brightness_accumulative,
    adjust_contrast_with_mean_subtraction,
    adjust_hue,
    adjust_saturation_with_gray_subtraction,
)
from kornia.geometry.bbox import bbox_to_mask
from kornia.geometry.transform import crop_by_indices, hflip

from distill_data.augment.base import BatchAugment, PerSample
from distill_data.errors import ConfigError, DataError

__all__ = [
    "CROPS",
    "JITTER_OPS",
    "MIXES",
    "PRESETS",
    "AugmentPipeline",
    "MixParams",
    "PerSampleAugment",
    "PipelineConfig",
    "PipelineParams",
    "apply_mix",
    "boxes_from_corners",
    "color_jitter",
    "cutmix",
    "cutmix_box",
    "flip_where",
    "is_preset",
    "mix_targets",
    "mixup",
    "pad_crop",
    "resized_crop",
    "sample_mix",
]

#: Crop modes: none, ``pad`` (torchvision ``RandomCrop(size, padding)``: pad with black,
#: crop the original size back at a random offset) and ``resized``
#: (``RandomResizedCrop``: a random box of random area and aspect ratio, resized back).
CROPS = ("none", "pad", "resized")

#: Colour-jitter ops in torchvision's order (one random permutation is drawn per batch).
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")

#: Batch-mixing kinds: mixup (Zhang et al., ICLR 2018) and CutMix (Yun et al., ICCV 2019).
MIXES = ("mixup", "cutmix")

#: Named pipelines (``PipelineConfig`` fields). ``random_crop`` is the student recipe of
#: SRe2L's and INFER's small-dataset code (``RandomCrop(32, padding=4)`` and
#: ``RandomHorizontalFlip``: VILA-Lab/SRe2L ``relabel_cifar.py``, zhangxin-xd/UFC
#: ``val_static.py``); ``resized_crop`` is SRe2L's ImageNet FKD recipe
#: (``RandomResizedCrop(scale=(0.08, 1))``, flip); ``resized_crop_jitter`` adds timm's
#: default ``ColorJitter(0.4, 0.4, 0.4)``. A flip is dropped for digit data.
PRESETS: dict[str, dict] = {
    "random_crop": {"crop": "pad", "padding": 4, "flip": 0.5},
    "resized_crop": {"crop": "resized", "scale": (0.08, 1.0), "flip": 0.5},
    "resized_crop_jitter": {
        "crop": "resized",
        "scale": (0.08, 1.0),
        "flip": 0.5,
        "brightness": 0.4,
        "contrast": 0.4,
        "saturation": 0.4,
    },
}

#: The preset ``"kornia"`` means when a caller asks for kornia augmentation by name.
DEFAULT_PRESET = "random_crop"


def is_preset(name: object) -> bool:
    """Whether ``name`` names a pipeline (a :data:`PRESETS` key or ``"kornia"``)."""
    return isinstance(name, str) and name.strip().lower() in (*PRESETS, "kornia")


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class PipelineConfig:
    """What a training pipeline does; defaults: ``RandomCrop(padding=4)`` and a flip.

    Attributes:
        crop: One of :data:`CROPS`.
        padding: Pixels of black added on every side before a ``pad`` crop.
        scale: Range of the crop's area as a fraction of the image (``resized``).
        ratio: Range of the crop's aspect ratio w/h, drawn log-uniformly (``resized``).
        flip: Probability of a horizontal flip per image (0 for digit data).
        brightness, contrast, saturation: Jitter strengths ``s``; factors are drawn from
            ``U(max(0, 1 - s), 1 + s)`` (torchvision's ``ColorJitter``); 0 = off.
        hue: Hue shift drawn from ``U(-hue, hue)`` in turns, ``hue <= 0.5``; 0 = off.
    """

    crop: str = "pad"
    padding: int = 4
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip: float = 0.5
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0

    def __post_init__(self) -> None:
        """Reject unknown crop modes and out-of-range strengths."""
        if self.crop not in CROPS:
            raise ConfigError(f"unknown crop {self.crop!r}; choose from: {', '.join(CROPS)}")
        if isinstance(self.padding, bool) or not isinstance(self.padding, int):
            raise ConfigError(f"PipelineConfig.padding must be an int >= 0, got {self.padding!r}")
        if self.padding < 0:
            raise ConfigError(f"PipelineConfig.padding must be >= 0, got {self.padding}")
        for name, low, high in (("scale", 0.0, 1.0), ("ratio", 0.0, math.inf)):
            pair = getattr(self, name)
            try:
                lo, hi = (float(v) for v in pair)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"PipelineConfig.{name} must be a (low, high) pair of numbers, got {pair!r}"
                ) from None
            if not (low < lo <= hi <= high) or not math.isfinite(hi):
                raise ConfigError(
                    f"PipelineConfig.{name}={pair!r} is invalid; use low <= high in "
                    f"({low:g}, {high:g}]"
                )
            object.__setattr__(self, name, (lo, hi))
        bounds = {
            "flip": (1.0, "a probability in [0, 1]"),
            "brightness": (math.inf, "a strength >= 0"),
            "contrast": (math.inf, "a strength >= 0"),
            "saturation": (math.inf, "a strength >= 0"),
            "hue": (0.5, "turns in [0, 0.5]"),
        }
        for name, (high, what) in bounds.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"PipelineConfig.{name} must be {what}, got {value!r}")
            if not math.isfinite(value) or not 0.0 <= value <= high:
                raise ConfigError(f"PipelineConfig.{name}={value!r} is invalid; use {what}")
            object.__setattr__(self, name, float(value))

    @property
    def jitter(self) -> tuple[str, ...]:
        """The colour ops switched on, in :data:`JITTER_OPS` order."""
        return tuple(op for op in JITTER_OPS if getattr(self, op) > 0)


# ----------------------------------------------------------------------------- params


@dataclass(eq=False)
class PipelineParams:
    """Everything random about one pipeline call on ``n`` images; replayable.

    Attributes:
        n: Batch size the parameters are for.
        boxes: ``(n, 4, 2)`` crop boxes in kornia's convention (corners top-left,
            top-right, bottom-right, bottom-left as ``(x, y)``, inclusive), in the padded
            image for a ``pad`` crop; ``None`` without a crop.
        flip: Bool ``(n,)``; ``None`` without flips.
        jitter: Per-image factors ``(n,)`` of each colour op (hue in turns).
        order: The colour ops in the order they are applied.
    """

    n: int
    boxes: torch.Tensor | None = None
    flip: torch.Tensor | None = None
    jitter: dict[str, torch.Tensor] = field(default_factory=dict)
    order: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Check that every value holds one row per image."""
        values = {"boxes": self.boxes, "flip": self.flip, **self.jitter}
        for key, value in values.items():
            if value is not None and (value.dim() == 0 or value.shape[0] != self.n):
                raise ConfigError(
                    f"PipelineParams.{key} must have first dim n={self.n}, got {tuple(value.shape)}"
                )
        if set(self.order) != set(self.jitter):
            raise ConfigError(f"PipelineParams.order {self.order} must list the jitter ops once")


# ----------------------------------------------------------------------------- pure ops


def boxes_from_corners(
    top: torch.Tensor, left: torch.Tensor, height: torch.Tensor, width: torch.Tensor
) -> torch.Tensor:
    """kornia boxes ``(n, 4, 2)`` from per-image top-left corners and sizes (ints).

    Corners are inclusive, so an empty box (``height`` or ``width`` 0) selects nothing
    in :func:`kornia.geometry.bbox.bbox_to_mask`.
    """
    x0, y0 = left.to(torch.float32), top.to(torch.float32)
    x1, y1 = x0 + width.to(torch.float32) - 1, y0 + height.to(torch.float32) - 1
    return torch.stack([x0, y0, x1, y0, x1, y1, x0, y1], dim=-1).view(-1, 4, 2)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Cut each image's box and resize it back to the image size (torchvision's
    ``resized_crop``: a slice, then bilinear interpolation without corner alignment),
    by ``kornia.geometry.transform.crop_by_indices``.

    Args:
        x: Images ``(n, C, H, W)``.
        boxes: ``(n, 4, 2)`` kornia boxes inside the image.
    """
    h, w = x.shape[-2:]
    return crop_by_indices(
        x, boxes.to(x.device), (h, w), interpolation="bilinear", align_corners=False
    )


def _fill(x: torch.Tensor, fill: torch.Tensor | float) -> torch.Tensor:
    """``fill`` as a ``(1, C, 1, 1)`` tensor in ``x``'s dtype and device."""
    value = torch.as_tensor(fill, dtype=x.dtype, device=x.device).flatten()
    if value.numel() not in (1, x.shape[1]):
        raise DataError(f"fill has {value.numel()} values for {x.shape[1]}-channel images")
    return value.expand(x.shape[1]).view(1, -1, 1, 1)


def pad_crop(
    x: torch.Tensor, boxes: torch.Tensor, padding: int, fill: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """torchvision's ``RandomCrop(size, padding)``: pad every side by ``padding`` pixels of
    ``fill``, then cut each image's ``H x W`` box (a whole-pixel translation) with
    ``kornia.geometry.transform.crop_by_indices``.

    Args:
        x: Images ``(n, C, H, W)``.
        boxes: ``(n, 4, 2)`` kornia boxes of size ``H x W`` in the padded image.
        padding: Pixels added on each side.
        fill: The padded value, a scalar or one per channel (torchvision pads with black
            before normalising: pass the normalised value of pixel 0).
    """
    n, c, h, w = x.shape
    if padding == 0:
        return x
    padded = _fill(x, fill).expand(n, c, h + 2 * padding, w + 2 * padding).clone()
    padded[..., padding : padding + h, padding : padding + w] = x
    return crop_by_indices(padded, boxes.to(x.device), (h, w))


def flip_where(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror left-right (``kornia.geometry.transform.hflip``) the images where ``flip``.

    Args:
        x: Images ``(n, C, H, W)``.
        flip: Bool ``(n,)``.
    """
    mask = flip.to(device=x.device, dtype=torch.bool).view(-1, 1, 1, 1)
    return torch.where(mask, hflip(x), x)


def _jitter_one(x01: torch.Tensor, op: str, factor: torch.Tensor) -> torch.Tensor:
    if op == "brightness":
        return adjust_brightness_accumulative(x01, factor)
    if op == "contrast":
        if x01.shape[1] == 3:
            return adjust_contrast_with_mean_subtraction(x01, factor)
        # grey: blend with each image's mean (kornia < 0.9 takes the whole batch's mean)
        f = factor.view(-1, 1, 1, 1)
        mean = x01.mean(dim=(-3, -2, -1), keepdim=True)
        return (x01 * f + mean * (1 - f)).clamp(0.0, 1.0)
    if x01.shape[1] != 3:  # saturation and hue need RGB; grey images have neither
        return x01
    if op == "saturation":
        return adjust_saturation_with_gray_subtraction(x01, factor)
    return adjust_hue(x01, factor * (2 * math.pi))


def color_jitter(
    x: torch.Tensor,
    factors: dict[str, torch.Tensor],
    order: Sequence[str],
    mean: torch.Tensor | float = 0.0,
    std: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """torchvision's ``ColorJitter`` formulas on pixels in [0, 1], by ``kornia.enhance``.

    Images are mapped from their normalised space to pixels (``x * std + mean``), clamped
    to [0, 1] as torchvision's images are, jittered, and mapped back: out-of-range
    values of a synthetic image are clipped. Brightness multiplies, contrast blends
    with the image's grey mean, saturation with its grey image, hue shifts in HSV
    (``factor`` in turns); saturation and hue leave one-channel images unchanged.

    Args:
        x: Normalised images ``(n, C, H, W)``.
        factors: Per-image factors ``(n,)`` of each op in ``order``.
        order: Op names from :data:`JITTER_OPS`, applied in this order.
        mean, std: The normalisation of ``x`` (scalars or one value per channel).
    """
    if not order:
        return x
    m, s = _fill(x, mean), _fill(x, std)
    out = (x * s + m).clamp(0.0, 1.0)
    for op in order:
        if op not in JITTER_OPS:
            raise ConfigError(f"unknown jitter op {op!r}; valid ops: {', '.join(JITTER_OPS)}")
        out = _jitter_one(out, op, factors[op].to(device=x.device, dtype=x.dtype))
    return (out - m) / s


def mixup(x: torch.Tensor, lam: float, partner: torch.Tensor) -> torch.Tensor:
    """mixup (Zhang et al., ICLR 2018): ``lam · x + (1 − lam) · x[partner]``.

    One λ per batch, as the official SRe2L and INFER code mixes (``mixup_data``). A pure
    function: kornia's ``RandomMixUpV2`` draws λ ~ U(0, 1) from the global RNG and
    weights the partner by λ, so it is neither the recipe's Beta(α, α) nor replayable.

    Args:
        x: Batch ``(n, ...)``; also used for targets (logits) ``(n, K)``.
        lam: Weight of the batch itself.
        partner: ``(n,)`` row each row is mixed with.
    """
    return lam * x + (1 - lam) * x[partner]


def cutmix_box(lam: float, height: int, width: int, cy: int, cx: int) -> tuple[int, ...]:
    """The CutMix box of the official code (``rand_bbox``, Yun et al., ICCV 2019): sides
    ``int(side · sqrt(1 − lam))`` centred on ``(cy, cx)``, clipped to the image.

    Returns:
        ``(top, left, box_height, box_width)``; the box may be empty.
    """
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(height * cut), int(width * cut)
    y0, y1 = min(max(cy - ch // 2, 0), height), min(max(cy + ch // 2, 0), height)
    x0, x1 = min(max(cx - cw // 2, 0), width), min(max(cx + cw // 2, 0), width)
    return y0, x0, y1 - y0, x1 - x0


def cutmix(x: torch.Tensor, boxes: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """CutMix (Yun et al., ICCV 2019): each image's box is replaced by the same box of its
    partner; the mask is ``kornia.geometry.bbox.bbox_to_mask``, as kornia's CutMix builds it.

    Args:
        x: Images ``(n, C, H, W)``.
        boxes: ``(n, 4, 2)`` kornia boxes (the official code uses one box per batch).
        partner: ``(n,)`` source row of each image's box.
    """
    h, w = x.shape[-2:]
    mask = bbox_to_mask(boxes.to(device=x.device, dtype=torch.float32), w, h).bool()
    return torch.where(mask.unsqueeze(1), x[partner], x)


@dataclass(eq=False)
class MixParams:
    """One batch's mixing: what :func:`apply_mix` and :func:`mix_targets` replay.

    Attributes:
        kind: ``"mixup"`` or ``"cutmix"``.
        lam: The drawn λ (mixup's image weight; CutMix's box size).
        partner: ``(n,)`` partner rows.
        boxes: CutMix's ``(n, 4, 2)`` boxes (``None`` for mixup).
        target_lam: Weight of each row's own target: λ for mixup, the share of the image
            CutMix kept, ``1 − box area / (H·W)``, for CutMix (Yun et al.).
    """

    kind: str
    lam: float
    partner: torch.Tensor
    boxes: torch.Tensor | None = None
    target_lam: float = 1.0


def sample_mix(
    kind: str,
    n: int,
    height: int,
    width: int,
    lam: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> MixParams:
    """Draw one batch's partners (and CutMix box) for a given λ.

    λ is an argument because torch has no Beta sampler that takes a generator: the
    training loop draws λ ~ Beta(α, α) from a NumPy generator seeded by its torch
    generator, as :func:`distill_data.train.fit.fit` does. The partner permutation is
    drawn first (so mixup's draws are the loop's earlier ones), then CutMix's centre,
    uniform over the pixels, one box for the batch as in the official code.

    Args:
        kind: One of :data:`MIXES`.
        n, height, width: Batch size and image size.
        lam: λ in [0, 1].
        generator: Source of the permutation and the box centre.
        device: Where the partner index lives.
    """
    if kind not in MIXES:
        raise ConfigError(f"unknown mix {kind!r}; choose from: {', '.join(MIXES)}")
    if not 0.0 <= lam <= 1.0:
        raise ConfigError(f"mix lambda must be in [0, 1], got {lam!r}")
    partner = torch.randperm(n, generator=generator)
    if device is not None:
        partner = partner.to(device)
    if kind == "mixup":
        return MixParams(kind, float(lam), partner, None, float(lam))
    gen_device = generator.device if generator is not None else torch.device("cpu")
    cy = int(torch.randint(height, (1,), generator=generator, device=gen_device))
    cx = int(torch.randint(width, (1,), generator=generator, device=gen_device))
    top, left, bh, bw = cutmix_box(lam, height, width, cy, cx)
    one = torch.ones(n, dtype=torch.long)
    boxes = boxes_from_corners(one * top, one * left, one * bh, one * bw)
    kept = 1.0 - bh * bw / float(height * width)
    return MixParams(kind, float(lam), partner, boxes, kept)


def apply_mix(x: torch.Tensor, params: MixParams) -> torch.Tensor:
    """Mix a batch of images with :func:`mixup` or :func:`cutmix` as ``params`` say."""
    if params.kind == "mixup":
        return mixup(x, params.lam, params.partner)
    assert params.boxes is not None
    return cutmix(x, params.boxes, params.partner)


def mix_targets(targets: torch.Tensor, params: MixParams) -> torch.Tensor:
    """The targets (logits or probabilities, ``(n, K)``) of a mixed batch:
    ``λ' · t + (1 − λ') · t[partner]`` with ``λ' = params.target_lam`` (for mixup the
    same arithmetic as the images, so a static label follows its mixed image exactly)."""
    return mixup(targets, params.target_lam, params.partner)


# ----------------------------------------------------------------------------- module


class AugmentPipeline(BatchAugment):
    """A training augmentation pipeline: crop, flip, colour jitter, drawn per image.

    Mirrors torchvision's ``Compose([Random(Resized)Crop, RandomHorizontalFlip,
    ColorJitter])`` applied to every image of a batch, on normalised images, with
    kornia's ops and an explicit generator: ``params = pipe.sample(n, h, w, g)`` then
    ``pipe.apply(x, params)``, or ``pipe(x, generator=g)``.

    Args:
        config: What to do; see :class:`PipelineConfig`.
        mean, std: The normalisation of the images (scalars or per channel): a ``pad``
            crop fills with black, ``(0 - mean) / std``, and colour jitter works on
            pixels. Default: the images are pixels in [0, 1].

    Raises:
        ConfigError: For a config that is not a :class:`PipelineConfig`.
    """

    kind = "pipeline"

    def __init__(
        self,
        config: PipelineConfig = PipelineConfig(),
        mean: Sequence[float] | float = 0.0,
        std: Sequence[float] | float = 1.0,
    ) -> None:
        if not isinstance(config, PipelineConfig):
            raise ConfigError(f"pipeline config must be a PipelineConfig, got {config!r}")
        self.config = config
        self.mean = torch.as_tensor(mean, dtype=torch.float64).flatten()
        self.std = torch.as_tensor(std, dtype=torch.float64).flatten()
        if (self.std <= 0).any():
            raise ConfigError(f"std must be > 0, got {std!r}")
        self._cache: dict = {}

    @classmethod
    def preset(
        cls,
        name: str,
        space: object | None = None,
        *,
        is_digits: bool | None = None,
        mean: Sequence[float] | float | None = None,
        std: Sequence[float] | float | None = None,
        **overrides: object,
    ) -> AugmentPipeline:
        """A named pipeline (:data:`PRESETS`; ``"kornia"`` is ``random_crop``) for data.

        Args:
            name: Preset name.
            space: An :class:`~distill_data.data.base.ImageSpace` (a dataset or its
                spec, or a store's meta with ``mean``/``std``/``dataset``): supplies
                ``mean``, ``std`` and whether the data are digits.
            is_digits: Digit data change class under a flip, so the flip is dropped
                (default: from ``space``, else False).
            mean, std: Override the normalisation.
            **overrides: :class:`PipelineConfig` fields to change.

        Raises:
            ConfigError: For an unknown preset or field.
        """
        key = str(name).strip().lower()
        key = DEFAULT_PRESET if key == "kornia" else key
        if key not in PRESETS:
            raise ConfigError(
                f"unknown augmentation pipeline {name!r}; choose from: "
                f"{', '.join(PRESETS)} (or 'kornia' = {DEFAULT_PRESET})"
            )
        if is_digits is None:
            digits = getattr(space, "is_digits", None)
            if digits is None and getattr(space, "dataset", None):
                from distill_data.data.base import is_digit_name

                digits = is_digit_name(space.dataset)  # type: ignore[attr-defined]
            is_digits = bool(digits)
        names = {f.name for f in fields(PipelineConfig)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(f"unknown pipeline option(s) {', '.join(unknown)}")
        cfg = PipelineConfig(**{**PRESETS[key], **overrides})
        if is_digits and "flip" not in overrides:
            cfg = replace(cfg, flip=0.0)
        mean = getattr(space, "mean", 0.0) if mean is None else mean
        std = getattr(space, "std", 1.0) if std is None else std
        return cls(cfg, mean=mean, std=std)

    def __repr__(self) -> str:
        return f"AugmentPipeline({self.config}, mean={self.mean.tolist()}, std={self.std.tolist()})"

    # -- sampling ----------------------------------------------------------------------

    def sample(
        self,
        n: int,
        height: int,
        width: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> PipelineParams:
        """Draw the parameters of one call for ``n`` images of ``height x width``.

        Draws are vectorised over the batch and happen on the generator's device, in a
        fixed order (crop, flip, jitter order, jitter factors), so a seed fixes them.

        Args:
            n: Batch size.
            height, width: Image size.
            generator: Source of all randomness (torch's default generator if None,
                never reseeded).
            device: Unused: parameters live on the generator's device (the DSA
                signature, so both are :class:`BatchAugment`).
        """
        for name, value, low in (("n", n, 0), ("height", height, 1), ("width", width, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"pipeline sample: {name} must be an int >= {low}, got {value!r}")
        cfg = self.config
        dev = generator.device if generator is not None else torch.device("cpu")

        def uniform(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator, device=dev, dtype=torch.float64)

        boxes = None
        if cfg.crop == "pad":
            span = 2 * cfg.padding + 1  # offsets 0..2p into the padded image
            top = torch.randint(span, (n,), generator=generator, device=dev)
            left = torch.randint(span, (n,), generator=generator, device=dev)
            full = torch.ones(n, dtype=torch.long, device=dev)
            boxes = boxes_from_corners(top, left, full * height, full * width)
        elif cfg.crop == "resized":
            boxes = self._resized_boxes(n, height, width, uniform)
        flip = uniform(n) < cfg.flip if cfg.flip > 0 else None
        ops = cfg.jitter
        order: tuple[str, ...] = ()
        jitter: dict[str, torch.Tensor] = {}
        if ops:
            perm = torch.randperm(len(ops), generator=generator, device=dev).tolist()
            order = tuple(ops[i] for i in perm)
            for op in ops:
                s = getattr(cfg, op)
                lo, hi = (-s, s) if op == "hue" else (max(0.0, 1.0 - s), 1.0 + s)
                jitter[op] = (lo + (hi - lo) * uniform(n)).float()
        return PipelineParams(n=n, boxes=boxes, flip=flip, jitter=jitter, order=order)

    def _resized_boxes(self, n: int, height: int, width: int, uniform) -> torch.Tensor:
        """torchvision's ``RandomResizedCrop.get_params`` for every image at once: ten
        tries of area ~ U(scale)·H·W and log-uniform aspect ratio, the first that fits;
        else the centre crop clipped to the ratio range."""
        cfg, tries = self.config, 10
        lo, hi = cfg.scale
        area = float(height * width) * (lo + (hi - lo) * uniform(n, tries))
        log_lo, log_hi = math.log(cfg.ratio[0]), math.log(cfg.ratio[1])
        aspect = torch.exp(log_lo + (log_hi - log_lo) * uniform(n, tries))
        w = torch.round(torch.sqrt(area * aspect)).long()
        h = torch.round(torch.sqrt(area / aspect)).long()
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = ok.long().argmax(dim=1, keepdim=True)
        found = ok.any(dim=1)
        w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
        # fallback: the whole image, cut to the nearest allowed aspect ratio
        in_ratio = width / height
        if in_ratio < cfg.ratio[0]:
            fw, fh = width, int(round(width / cfg.ratio[0]))
        elif in_ratio > cfg.ratio[1]:
            fw, fh = int(round(height * cfg.ratio[1])), height
        else:
            fw, fh = width, height
        w = torch.where(found, w, torch.full_like(w, fw))
        h = torch.where(found, h, torch.full_like(h, fh))
        top = (uniform(n) * (height - h + 1)).long().clamp_max(height - h)
        left = (uniform(n) * (width - w + 1)).long().clamp_max(width - w)
        top = torch.where(found, top, (height - h) // 2)
        left = torch.where(found, left, (width - w) // 2)
        return boxes_from_corners(top, left, h, w)

    # -- applying ----------------------------------------------------------------------

    def apply(self, x: torch.Tensor, params: PipelineParams) -> torch.Tensor:
        """Apply ``params`` to ``x``: crop, flip, then colour jitter.

        Args:
            x: Floating images ``(n, C, H, W)``, ``n == params.n``.
            params: From :meth:`sample`.

        Returns:
            Augmented images, same shape and dtype.

        Raises:
            ConfigError: If ``params`` do not fit ``x``.
            DataError: If ``x`` is not a 4-D floating tensor.
        """
        self.check_batch(x, params, PipelineParams)
        if params.n == 0:
            return x
        out = x
        if params.boxes is not None:
            if self.config.crop == "pad":
                out = pad_crop(out, params.boxes, self.config.padding, self._norm(x)[2])
            else:
                out = resized_crop(out, params.boxes)
        if params.flip is not None:
            out = flip_where(out, params.flip)
        if params.order:
            mean, std, _ = self._norm(x)
            out = color_jitter(out, params.jitter, params.order, mean, std)
        return out

    def _norm(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """mean, std and the normalised black, per channel in ``x``'s dtype and device
        (kept per dtype and device: per-image use calls this for every item)."""
        key = (x.dtype, x.device, x.shape[1])
        hit = self._cache.get(key)
        if hit is None:
            for v in (self.mean, self.std):
                if v.numel() not in (1, x.shape[1]):
                    raise DataError(
                        f"pipeline normalisation has {v.numel()} channels, images have {x.shape[1]}"
                    )
            mean, std = (v.to(device=x.device, dtype=x.dtype) for v in (self.mean, self.std))
            hit = self._cache[key] = (mean, std, (0.0 - mean) / std)
        return hit


class PerSampleAugment(PerSample):
    """A batch augmenter (``aug(x, generator=g)``, e.g. :class:`AugmentPipeline`) as a
    per-image transform ``(C, H, W) -> (C, H, W)`` for ``Dataset``/``DataLoader``; see
    :class:`~distill_data.augment.base.PerSample` for how workers draw."""

    def __init__(self, augment) -> None:
        if not callable(augment):
            raise ConfigError(f"PerSampleAugment needs a callable batch augmenter, got {augment!r}")
        super().__init__(augment)
