"""Quantization: fake quantizers, activation-range observers and post-training
quantization (PTQ) of BatchNorm CNNs, used to score calibration sets.

``quantize_model(model, calib_images, PTQConfig(...))`` is the one verb;
``evaluate_ptq`` reports fp32 vs quantized accuracy for a calibration set, and the
quantized network's ``fidelity`` to the float one.
"""

from __future__ import annotations

from distill_data.quant.ptq import (
    ActQuant,
    PTQConfig,
    QuantConv2d,
    QuantLinear,
    evaluate_ptq,
    fidelity,
    fold_batchnorm,
    parse_bits,
    quantize_model,
    quantized_layers,
)
from distill_data.quant.quantizers import (
    OBSERVERS,
    MinMaxObserver,
    MSEObserver,
    Observer,
    PercentileObserver,
    act_fake_quant,
    affine_qparams,
    check_bits,
    make_observer,
    minmax_range,
    mse_range,
    percentile_range,
    weight_fake_quant,
    weight_scales,
)

__all__ = [
    "OBSERVERS",
    "ActQuant",
    "MSEObserver",
    "MinMaxObserver",
    "Observer",
    "PTQConfig",
    "PercentileObserver",
    "QuantConv2d",
    "QuantLinear",
    "act_fake_quant",
    "affine_qparams",
    "check_bits",
    "evaluate_ptq",
    "fidelity",
    "fold_batchnorm",
    "make_observer",
    "minmax_range",
    "mse_range",
    "parse_bits",
    "percentile_range",
    "quantize_model",
    "quantized_layers",
    "weight_fake_quant",
    "weight_scales",
]
