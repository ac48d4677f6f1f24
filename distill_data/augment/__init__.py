"""Differentiable siamese augmentation: sample parameters once, apply them to both batches.

Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation", ICML 2021.
See :mod:`distill_data.augment.dsa`.
"""

from distill_data.augment.dsa import (
    DEFAULT_STRATEGY,
    DSA,
    GROUPS,
    MODES,
    AugParams,
    DSAConfig,
    PerSampleDSA,
    apply_brightness,
    apply_contrast,
    apply_crop,
    apply_cutout,
    apply_flip,
    apply_rotate,
    apply_saturation,
    apply_scale,
    parse_strategy,
    strategy_for,
)

__all__ = [
    "DEFAULT_STRATEGY",
    "DSA",
    "GROUPS",
    "MODES",
    "AugParams",
    "DSAConfig",
    "PerSampleDSA",
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
