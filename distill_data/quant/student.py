"""The shipped quantized student: integer weight codes packed into bytes, the scales that
dequantize them, the float rest, in one ``torch.load(weights_only=True)`` file.

Format ``distill-data-student``, version 1 (a dict of plain data):

================= ====================================================================
key               value
================= ====================================================================
``format``        ``"distill-data-student"``
``version``       1
``arch``          registered architecture name; ``config`` its constructor arguments
``spec``          the :class:`~distill_data.quant.qat.QuantSpec` of the run (a dict)
``layers``        ``{name: layer}`` for every quantized Conv2d/Linear, see below
``float_state``   every other parameter and buffer (layers left float, BatchNorm that
                  is not folded, ...), as a state dict
``meta``          data the student was trained for (classes, mean, std, input shape)
                  and the training report's essentials
================= ====================================================================

A ``layer`` holds ``spec`` (its QuantSpec: the filter's choice), ``weight`` (``kind``
``per_channel`` | ``per_tensor`` | ``bucket`` | ``points``; ``bits``, ``signed``,
``shape``, ``packed``: the codes as :func:`~distill_data.quant.pack.pack` lays them out,
row-major; ``scale`` per output channel or per tensor, or per bucket ``alpha``/``beta``
(and ``points``, ``bucket_size``)), ``bias`` (float, BatchNorm folded in where it was)
and ``act``: the input quantizer's state (EMA range or LSQ step) or None.

Loading rebuilds the architecture, applies :func:`~distill_data.quant.qat.quantize_`
with each layer's recorded spec, and puts every quantized layer in *deployed* mode: its
weight is the dequantized codes, its activation quantizer the recorded one. Because the
deployed forward is the eval-mode forward of the network that was trained, computed
with the same operations on the same numbers, the loaded student's logits equal the
fake-quantized student's bit for bit (tested for every method).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill_data.errors import ConfigError, StoreError
from distill_data.models import _reason, build_model
from distill_data.quant.fakequant import bucket_count, bucket_dequantize, nonuniform_dequantize
from distill_data.quant.pack import pack, unpack
from distill_data.quant.qat import QuantLayer, QuantSpec, quant_layers, quantize_

STUDENT_FORMAT = "distill-data-student"
STUDENT_VERSION = 1


def _pack_weight(w: dict) -> dict:
    codes = w.pop("codes").reshape(-1)
    numel = math.prod(w["shape"])
    out = {**w, "packed": pack(codes[:numel] if w["kind"] in ("bucket", "points") else codes,
                               w["bits"], w["signed"]), "numel": numel}  # fmt: skip
    return out


def _bucket_codes(flat: Tensor, numel: int, bucket_size: int | None) -> Tensor:
    """Codes of a bucketed tensor as ``(buckets, k)``, the last bucket padded with its last
    code (as :func:`~distill_data.quant.fakequant.bucket_quantize` returns them)."""
    k = numel if bucket_size is None or numel <= bucket_size else bucket_size
    rows = bucket_count(numel, bucket_size)
    pad = rows * k - numel
    if pad:
        flat = torch.cat([flat, flat[-1:].expand(pad)])
    return flat.view(rows, k)


def dequantize_weight(w: dict) -> Tensor:
    """The float weight a stored layer's codes stand for (the deployed weight)."""
    codes = unpack(w["packed"], w["bits"], w["signed"], w["numel"])
    shape = tuple(w["shape"])
    if w["kind"] == "per_channel":
        return codes.view(shape).float() * w["scale"].view(-1, *([1] * (len(shape) - 1)))
    if w["kind"] == "per_tensor":
        return codes.view(shape).float() * w["scale"]
    rows = _bucket_codes(codes, w["numel"], w["bucket_size"])
    if w["kind"] == "bucket":
        return bucket_dequantize(rows, w["alpha"], w["beta"], shape, w["bits"])
    return nonuniform_dequantize(rows, w["points"], w["alpha"], w["beta"], shape)


def _is_internal(key: str, names: list[str]) -> bool:
    return any(key.startswith(f"{n}.") for n in names)


def student_payload(model: nn.Module, spec: QuantSpec, meta: dict | None = None) -> dict:
    """The file contents of a quantized student (see the module docstring)."""
    arch = getattr(model, "arch", None)
    if arch is None or not hasattr(model, "config"):
        raise StoreError("only students built by distill_data.models.build_model can be saved")
    layers = quant_layers(model)
    if not layers:
        raise StoreError("the model has no quantized layer; quantize it with quantize_ first")
    was_training = model.training
    model.eval()
    try:
        packed = {}
        for name, q in layers.items():
            ex = q.export()
            packed[name] = {
                "spec": asdict(q.spec),
                "weight": _pack_weight(ex["weight"]),
                "bias": ex["bias"],
                "act": None if q.aq is None else {k: v.detach().clone() for k, v in
                                                   q.aq.state_dict().items()},
            }  # fmt: skip
    finally:
        model.train(was_training)
    float_state = {
        k: v.detach().cpu().clone()
        for k, v in model.state_dict().items()
        if not _is_internal(k, list(layers))
    }
    cfg = dict(model.config)
    cfg["im_size"] = list(cfg["im_size"])
    return {
        "format": STUDENT_FORMAT,
        "version": STUDENT_VERSION,
        "arch": arch,
        "config": cfg,
        "spec": asdict(spec),
        "layers": _to_cpu(packed),
        "float_state": float_state,
        "meta": meta or {},
    }


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def save_student(
    model: nn.Module, spec: QuantSpec, path: str | os.PathLike, meta: dict | None = None
) -> dict:
    """Write the quantized student to ``path`` atomically; returns the payload."""
    from distill_data.store.io import atomic_write

    payload = student_payload(model, spec, meta)
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)
    return payload


def load_student(path: str | os.PathLike, kernels: str = "torch") -> tuple[nn.Module, dict]:
    """Rebuild a student file as a deployed network (eval mode); returns ``(model, payload)``.

    ``kernels``: ``torch`` computes each layer with its dequantized float weight;
    ``triton`` (or ``auto`` on CUDA) multiplies with the packed codes directly
    (:mod:`distill_data.kernels.lowbit`) wherever a layer is a Linear or a convolution
    (any groups) at 2, 4 or 8 bits, whatever its layout (per-channel or per-tensor
    scales, ``qd``'s buckets, ``dq``'s points), the rest as ``torch``.

    Raises:
        StoreError: not a student file, a newer version, or contents that do not fit the
            architecture they name (the message says which).
    """
    p = Path(path)
    if not p.is_file():
        raise StoreError(f"no such student file: {p}")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means an unusable file
        raise StoreError(f"{p} is not a readable student file ({_reason(e)})") from None
    if not isinstance(payload, dict) or payload.get("format") != STUDENT_FORMAT:
        raise StoreError(f"{p} is not a distill-data student file (no format tag)")
    if payload.get("version", 0) > STUDENT_VERSION:
        raise StoreError(f"{p} was written by a newer distill-data; upgrade to read it")
    from distill_data.kernels import BACKENDS

    if kernels not in BACKENDS:
        raise ConfigError(f"unknown kernels {kernels!r}; choose from: {', '.join(BACKENDS)}")
    try:
        return deploy_payload(payload, kernels), payload
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        raise StoreError(f"{p}: the student does not fit its architecture ({_reason(e)})") from None


def deploy_payload(payload: dict, kernels: str = "torch") -> nn.Module:
    """A deployed network from a student payload (see :func:`load_student`)."""
    cfg = dict(payload["config"])
    channels, num_classes = cfg.pop("channels"), cfg.pop("num_classes")
    im_size = tuple(cfg.pop("im_size"))
    with torch.random.fork_rng(devices=[]):  # weights come from the file
        model = build_model(payload["arch"], channels, num_classes, im_size, **cfg)
    layer_specs = {n: QuantSpec(**d["spec"]) for n, d in payload["layers"].items()}
    spec = QuantSpec(**payload["spec"])
    quantize_(model, spec, filter_fn=lambda m, name: layer_specs.get(name))
    layers = quant_layers(model)
    if set(layers) != set(layer_specs):
        raise ValueError(f"quantized layers {sorted(layers)} != stored {sorted(layer_specs)}")
    missing, unexpected = model.load_state_dict(payload["float_state"], strict=False)
    missing = [k for k in missing if not _is_internal(k, list(layers))]
    if missing or unexpected:
        raise ValueError(f"float state: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, q in layers.items():
        stored = payload["layers"][name]
        weight = dequantize_weight(stored["weight"])
        if weight.shape != q.layer.weight.shape:
            raise ValueError(
                f"layer {name}: stored weight {tuple(weight.shape)}, the architecture has "
                f"{tuple(q.layer.weight.shape)}"
            )
        _deploy(q, weight, stored["bias"], stored["act"])
        w = stored["weight"]
        affine = w["kind"] in ("bucket", "points")
        packable = (
            kernels != "torch"
            and w["bits"] in (2, 4, 8)
            and w["signed"] != affine  # scaled codes are signed, bucket codes unsigned
            and isinstance(q.layer, (nn.Linear, nn.Conv2d))
            and getattr(q.layer, "padding_mode", "zeros") == "zeros"  # im2col pads zeros
            and not isinstance(getattr(q.layer, "padding", 0), str)
        )
        if packable:  # the packed product reads these instead of deployed_weight
            numel, size = w["numel"], w.get("bucket_size")
            # tensors as (non-persistent) buffers: ``model.to(device)`` moves them once
            tensors = {"blob": w["packed"]}
            if affine:
                tensors.update(alpha=w["alpha"].float(), beta=w["beta"].float())
                if w.get("points") is not None:
                    tensors["points"] = w["points"].float()
            else:
                tensors["scale"] = w["scale"].float()
            for key, t in tensors.items():
                q.register_buffer(f"packed_{key}", t, persistent=False)
            q.packed = {
                "tensors": tuple(tensors),
                "bits": w["bits"],
                "kind": w["kind"],
                "shape": tuple(w["shape"]),
                "backend": kernels,
                "bucket_size": (numel if size is None or numel <= size else size)
                if affine
                else None,
            }
    return model.eval()


def _deploy(q: QuantLayer, weight: Tensor, bias: Tensor | None, act: dict | None) -> None:
    q.register_buffer("deployed_weight", weight)
    q.register_buffer("deployed_bias", bias)
    if q.aq is not None:
        q.aq.load_state_dict(act)
        if hasattr(q.aq, "freeze"):
            q.aq.freeze()
    q.deployed = True


def student_summary(payload: dict) -> dict:
    """Bits per layer, bytes and compression against fp32, from a student payload."""
    rows, code_bytes, scale_bytes, float_params = [], 0, 0, 0
    for name, layer in payload["layers"].items():
        w = layer["weight"]
        extras = [w.get(k) for k in ("scale", "alpha", "beta", "points")]
        scales = sum(t.numel() * t.element_size() for t in extras if isinstance(t, Tensor))
        bias = layer["bias"]
        bias_bytes = 0 if bias is None else bias.numel() * bias.element_size()
        act = layer["act"] or {}
        act_bytes = sum(t.numel() * t.element_size() for t in act.values())
        code_bytes += w["packed"].numel()
        scale_bytes += scales + bias_bytes + act_bytes
        float_params += w["numel"] + (0 if bias is None else bias.numel())
        rows.append(
            {
                "layer": name,
                "kind": w["kind"],
                "bits": w["bits"],
                "weights": w["numel"],
                "bytes": w["packed"].numel() + scales,
            }
        )
    rest = sum(t.numel() * t.element_size() for t in payload["float_state"].values())
    rest_params = sum(t.numel() for t in payload["float_state"].values() if t.is_floating_point())
    total = code_bytes + scale_bytes + rest
    # the baseline: the float student as trained (before BatchNorm folding), which the
    # trainer records; a file without that record falls back to its own parameters
    fp32_params = payload["meta"].get("fp32_parameters", float_params + rest_params)
    fp32 = 4 * fp32_params
    return {
        "layers": rows,
        "parameters": float_params + rest_params,
        "bytes": total,
        "code_bytes": code_bytes,
        "scale_and_float_bytes": scale_bytes + rest,
        "fp32_parameters": fp32_params,
        "fp32_bytes": fp32,
        "compression": round(fp32 / total, 3) if total else None,
        "spec": payload["spec"],
    }
