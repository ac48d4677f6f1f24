"""Quantization: fake quantizers, activation-range observers and post-training
quantization (PTQ) of BatchNorm CNNs, used to score calibration sets.

``quantize_model(model, calib_images, PTQConfig(...))`` is the one verb;
``evaluate_ptq`` reports fp32 vs quantized accuracy for a calibration set, and the
quantized network's ``fidelity`` to the float one.
"""

from __future__ import annotations

from distill_data.quant.fakequant import (
    EMAMinMaxObserver,
    allocate_bits,
    bucket_dequantize,
    bucket_fake_quant,
    bucket_overhead_bits,
    bucket_quantize,
    ema_update,
    lsq_fake_quant,
    lsq_grad_scale,
    lsq_init_step,
    lsq_qrange,
    nonuniform_codes,
    nonuniform_dequantize,
    nonuniform_quantize,
    quantile_points,
    uniform_points,
)
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
    "EMAMinMaxObserver",
    "MSEObserver",
    "MinMaxObserver",
    "Observer",
    "PTQConfig",
    "PercentileObserver",
    "QuantConv2d",
    "QuantLinear",
    "act_fake_quant",
    "affine_qparams",
    "allocate_bits",
    "bucket_dequantize",
    "bucket_fake_quant",
    "bucket_overhead_bits",
    "bucket_quantize",
    "check_bits",
    "ema_update",
    "evaluate_ptq",
    "fidelity",
    "fold_batchnorm",
    "lsq_fake_quant",
    "lsq_grad_scale",
    "lsq_init_step",
    "lsq_qrange",
    "make_observer",
    "minmax_range",
    "mse_range",
    "nonuniform_codes",
    "nonuniform_dequantize",
    "nonuniform_quantize",
    "parse_bits",
    "percentile_range",
    "quantile_points",
    "quantize_model",
    "quantized_layers",
    "uniform_points",
    "weight_fake_quant",
    "weight_scales",
]
