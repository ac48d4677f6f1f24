"""Calibration sets for post-training quantization, and the compare-them command.

A calibration spec is a stored set (``F.h5``), ``real:N`` (N random real training
images) or ``noise:N`` (N images of standard Gaussian noise in the normalised space).
Comparing a synthetic set with a real subset and with noise of the same size, at
several bit widths, is how a data-free calibration set is judged.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import torch
from torch import nn

from distill_data.data import RealDataset
from distill_data.errors import ConfigError
from distill_data.evaluation.report import machine_info, now_iso
from distill_data.quant.ptq import PTQConfig, evaluate_ptq, model_logits, parse_bits
from distill_data.store import read_store


def calibration_images(spec: str, data: RealDataset, seed: int = 0) -> tuple[torch.Tensor, str]:
    """``(images, description)`` for a spec: a store path, ``real:N`` or ``noise:N``."""
    kind, sep, n = spec.partition(":")
    if sep and kind in ("real", "noise"):
        try:
            count = int(n)
        except ValueError:
            raise ConfigError(f"calibration spec {spec!r}: N must be an integer") from None
        if count < 2:
            raise ConfigError(f"calibration spec {spec!r}: need at least 2 images")
        g = torch.Generator().manual_seed(seed)
        if kind == "real":
            if count > len(data.x_train):
                raise ConfigError(f"{spec}: the training split has only {len(data.x_train)} images")
            idx = torch.randperm(len(data.x_train), generator=g)[:count]
            return data.normalize(data.x_train[idx]), f"{count} random real training images"
        shape = (count, data.channels, *data.im_size)
        return torch.randn(shape, generator=g), f"{count} images of Gaussian noise N(0, 1)"
    synset = read_store(spec)
    if tuple(synset.images.shape[1:]) != (data.channels, *data.im_size):
        raise ConfigError(
            f"calibration set {spec} holds {tuple(synset.images.shape[1:])} "
            f"images, the teacher takes {(data.channels, *data.im_size)}"
        )
    images = synset.images
    if tuple(synset.meta.mean) != tuple(data.mean) or tuple(synset.meta.std) != tuple(data.std):
        images = data.normalize(synset.denormalized())
    return images, f"{len(images)} images from {spec} ({synset.meta.generator})"


def compare_calibrations(
    teacher: nn.Module,
    data: RealDataset,
    calibs: Sequence[str],
    bits: Sequence[str],
    cfg: PTQConfig,
    seed: int = 0,
    progress: bool | None = None,
) -> dict:
    """PTQ of ``teacher`` with every calibration spec at every bit width; a report
    (``progress``: bars over reconstruction's steps; None: on a terminal)."""
    test_x, test_y = data.normalize(data.x_test), data.y_test
    z = model_logits(teacher, test_x)  # once: every row compares with the same float outputs
    rows = []
    sets = {spec: calibration_images(spec, data, seed) for spec in calibs}
    for b in bits:
        w, a = parse_bits(b)
        c = dataclasses.replace(cfg, w_bits=w, a_bits=a)
        for spec, (images, desc) in sets.items():
            t0 = time.perf_counter()
            res = evaluate_ptq(teacher, images, test_x, test_y, c, fp32_logits=z, progress=progress)
            rows.append(
                {
                    "calib": spec,
                    "calib_description": desc,
                    "seconds": round(time.perf_counter() - t0, 2),
                    **res,
                }
            )
    return {
        "kind": "distill-data quantize",
        "created": now_iso(),
        "dataset": {"name": data.name, "fingerprint": data.fingerprint, "test": len(data.x_test)},
        "ptq": dataclasses.asdict(cfg),
        "results": rows,
        "machine": machine_info(),
    }


def format_comparison(report: dict) -> str:
    """The printed table: accuracy, and the quantized network's fidelity to the float one."""
    ptq = report.get("ptq", {})
    lines = []
    if ptq.get("method", "observer") != "observer":
        lines.append(
            f"{ptq['method']} reconstruction, {ptq['iterations']} steps per "
            + (
                "layer, activation ranges from the "
                if ptq["method"] == "adaround"
                else "block, activation steps learned from the "
            )  # fmt: skip
            + f"{ptq['observer']} observer's start"
        )
    for r in report["results"]:
        mixed = r.get("mixed_precision_result")
        if mixed is not None:
            counts: dict[int, int] = {}
            for b in mixed["bits"].values():
                counts[b] = counts.get(b, 0) + 1
            lines.append(
                f"mixed precision ({mixed['method']}, {r['calib'][:40]}, {r['bits']}): "
                f"{mixed['average_bits']:.2f} average weight bits (target "
                f"{mixed['target_average_bits']:g}); layers at "
                + ", ".join(f"{b} bits: {n}" for b, n in sorted(counts.items()))
            )
    formats = {r["formats"] for r in report["results"] if r.get("formats")}
    if formats:
        lines.append("number formats: " + "; ".join(sorted(formats)))
    for r in report["results"]:
        rec = r.get("reconstruction")
        if rec:
            before = sum(u["error_round_to_nearest"] for u in rec)
            after = sum(u["error_reconstructed"] for u in rec)
            units = "layers" if ptq.get("method") == "adaround" else "blocks"
            lines.append(
                f"{r['bits']} {r['calib'][:40]}: {len(rec)} {units} reconstructed in "
                f"{sum(u['seconds'] for u in rec):.0f} s, output error on the calibration "
                f"images {before:.4g} -> {after:.4g} (summed over the {units})"
            )
    lines.append(
        f"{'bits':<6} {'calibration':<40} {'fp32 %':>7} {'quant %':>8} {'drop':>6} "
        f"{'agree %':>8} {'SQNR dB':>8} {'KL':>8}"
    )
    for r in report["results"]:
        sqnr = r["logit_sqnr_db"]
        lines.append(
            f"{r['bits']:<6} {r['calib'][:40]:<40} {r['fp32_accuracy']:7.2f} "
            f"{r['quant_accuracy']:8.2f} {r['accuracy_drop']:6.2f} {r['agreement']:8.2f} "
            f"{'exact' if sqnr is None else f'{sqnr:.2f}':>8} {r['output_kl']:8.5f}"
        )
    return "\n".join(lines)
