"""Export a quantized student (or a float network) to ONNX with QuantizeLinear /
DequantizeLinear, the form ONNX Runtime and other runtimes read as an integer model.

Operator semantics used (ONNX operator docs, opset ≥ 13):

* ``QuantizeLinear(x, y_scale, y_zero_point)``: ``y = saturate(round(x / y_scale) +
  y_zero_point)``, rounding half to even, saturating to the range of the zero point's
  type (int8 ``[−128, 127]``, uint8 ``[0, 255]``).
* ``DequantizeLinear(x, x_scale, x_zero_point, axis)``: ``y = (x − x_zero_point) ·
  x_scale``; a 1-D scale is per slice along ``axis`` (per output channel with
  ``axis=0``), a scalar scale is per tensor.

The graph, per quantized Conv2d / Linear of a ``qat`` / ``lsq`` student (the stored
``per_channel`` / ``per_tensor`` weights)::

    x ─► [Clip(lo, hi)] ─► QuantizeLinear(s, z) ─► DequantizeLinear(s, z) ──┐
    W: int8 initializer ─► DequantizeLinear(S_w, 0[, axis=0]) ──────────────┼─► Conv/Gemm ─► y
    b: float32 initializer ─────────────────────────────────────────────────┘

* **Weights** are the student file's integer codes as an int8 initializer (every code
  of 2–8 bits fits), dequantized per output channel (``axis=0``, ``qat``) or per tensor
  (``lsq``) with zero point 0. ``code · S`` in float32 is exactly the deployed weight
  (checked at export).
* **Activations**: ``qat``'s per-tensor affine range (EMA of min/max) becomes a uint8
  QuantizeLinear → DequantizeLinear with the same scale and zero point; ``lsq``'s
  learned step becomes ``scale = step``, zero point 0, int8 when the step is signed,
  uint8 when not. ONNX QuantizeLinear only saturates to 8 bits, so for ``b < 8`` a
  float ``Clip`` to the b-bit range's two end values ``(q_min − z)·s``, ``(q_max − z)·s``
  comes first; clipping then quantizing equals quantizing with a b-bit clamp (both
  maps are monotone and the end values quantize to ``q_min``, ``q_max``), so the graph
  computes the b-bit fake quantization exactly.
* Rounding: QuantizeLinear rounds half to even, as ``torch.round`` does. ``lsq``
  computes ``round(x / s)``, ONNX's formula. ``qat`` uses
  ``torch.fake_quantize_per_tensor_affine``, which multiplies by ``1/s`` instead of
  dividing; the two products differ in the last bit for some ``x`` and then round
  to different integers when ``x/s`` lies within an ulp of a half-integer, a
  one-step (one ``s``) difference in that element. A float convolution summed in
  another order than torch's (ORT's kernels) does the same to the next quantizer.
  Both are rare per element, but a deeper network has many: on mnist5k's test split
  most images through a w8a8 ResNet-20 have at least one activation a step off, the
  logits move by at most 0.05 and the top-1 class agrees on every image
  (``bench/onnx_latency.py``). The graph cannot be bit-exact across runtimes; the
  tests bound the logit difference accordingly.

``qd`` / ``dq`` students (Polino et al.'s buckets of 256 consecutive weights of the
*flattened* tensor with their own min/max, or a learned codebook of points) have no
ONNX quantization type: DequantizeLinear offers per-tensor, per-axis and (opset 21)
blocked scales along one axis, not runs of the flattened tensor that cross rows, and no
codebooks. Their layers are exported with the dequantized float weights (the exact
values the deployed student uses, float32 initializers) and their activations are
float, as the methods define them; the export report lists every layer as ``qdq`` or
``float`` and says why.

Everything else (BatchNorm that was not folded, pooling, residual additions, norms,
layers the filter left float) is exported by PyTorch's exporter as float ops. The
model's input is the normalised image ``(N, C, H, W)`` float32 (the ``mean``/``std`` of
the student's data are in the model's metadata), the output the logits; the batch size
is dynamic.

Implementation: the deployed student (:func:`~distill_data.quant.student.load_student`)
with every quantized layer replaced by a module whose weight and activation steps are
``torch.autograd.Function`` s with an ONNX ``symbolic`` that emits exactly the nodes
above, exported with PyTorch's TorchScript-based exporter (``dynamo=False``), which
needs only the ``onnx`` package. The ``torch.export``-based exporter (torch's default
since 2.9) needs ``onnxscript`` as well, has no per-function ``symbolic``, and maps
``fake_quantize_*`` to QDQ only for 8-bit ranges and with float weight initializers.
The TorchScript exporter is deprecated; if a torch release drops it, this module is
the one place to change. Install the extra: ``pip install 'distill-data[deploy]'``
(onnx, onnxruntime).

ONNX Runtime (:func:`ort_session`): with its graph optimisations ORT rewrites QDQ
patterns into integer kernels (``QLinearConv``, ``MatMulNBits``...), which round
intermediate results differently; ``optimization="none"`` (the default there) runs the
graph as written, the setting under which the tests hold ORT's logits equal to the
student's.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill_data.errors import ConfigError, DistillDataError
from distill_data.quant.fakequant import lsq_qrange
from distill_data.quant.pack import unpack
from distill_data.quant.qat import (
    EMAActivation,
    LSQActivation,
    QuantLayer,
    positive,
    quant_layers,
)
from distill_data.quant.quantizers import affine_qrange

#: Default opset: 17 (ONNX 1.12, 2022) is read by every ONNX Runtime since 1.12 and has
#: per-axis DequantizeLinear (≥ 13); QuantizeLinear/DequantizeLinear changed only in
#: which types they accept after it.
DEFAULT_OPSET = 17
MIN_OPSET = 13
#: How ``ort_session`` may optimise the graph (see :func:`ort_session`).
OPTIMIZATIONS = ("none", "float", "all")
INSTALL_HINT = "pip install 'distill-data[deploy]'"
_QDQ_KINDS = ("per_channel", "per_tensor")


class MissingDependencyError(DistillDataError):
    """An optional package (the ``deploy`` extra) is not installed."""


def require_onnx(runtime: bool = False) -> Any:
    """Import ``onnx`` (and ``onnxruntime`` with ``runtime``) or raise one clear error."""
    names = ("onnx", "onnxruntime") if runtime else ("onnx",)
    mods = []
    for name in names:
        try:
            mods.append(__import__(name))
        except ImportError:
            raise MissingDependencyError(
                f"{name} is not installed; ONNX export needs the deploy extra: {INSTALL_HINT}"
            ) from None
    return mods[-1]


# ----------------------------------------------------------- ONNX ops as torch functions


class _DequantizeWeight(torch.autograd.Function):
    """``DequantizeLinear(codes, scale, 0, axis)``: the integer weight as an initializer."""

    @staticmethod
    def forward(ctx, codes: Tensor, scale: Tensor, zero_point: Tensor, axis: int) -> Tensor:
        s = scale.view((-1,) + (1,) * (codes.dim() - 1)) if scale.dim() == 1 else scale
        return (codes.to(torch.int32) - zero_point.to(torch.int32).view_as(s)).float() * s

    @staticmethod
    def symbolic(g, codes, scale, zero_point, axis):  # noqa: ANN001 - torch's graph API
        if axis < 0:  # per tensor: a scalar scale, no axis
            return g.op("DequantizeLinear", codes, scale, zero_point)
        return g.op("DequantizeLinear", codes, scale, zero_point, axis_i=axis)


class _QuantizeDequantize(torch.autograd.Function):
    """``[Clip(lo, hi) →] QuantizeLinear(s, z) → DequantizeLinear(s, z)``; the forward
    computes the ONNX semantics (division, round half to even, 8-bit saturation)."""

    @staticmethod
    def forward(
        ctx, x: Tensor, scale: Tensor, zero_point: Tensor, lo: Tensor, hi: Tensor, clip: bool
    ) -> Tensor:
        info = torch.iinfo(zero_point.dtype)
        if clip:
            x = torch.clamp(x, lo, hi)
        z = zero_point.to(torch.float32)
        q = torch.clamp(torch.round(x / scale) + z, info.min, info.max)
        return (q - z) * scale

    @staticmethod
    def symbolic(g, x, scale, zero_point, lo, hi, clip):  # noqa: ANN001
        if clip:
            x = g.op("Clip", x, lo, hi)
        q = g.op("QuantizeLinear", x, scale, zero_point)
        return g.op("DequantizeLinear", q, scale, zero_point)


# -------------------------------------------------------------------- export modules


def _weight_codes(stored: dict, expect: Tensor) -> tuple[Tensor, Tensor, int]:
    """``(int8 codes, float32 scale, axis)`` of a per-channel / per-tensor stored weight,
    checked to dequantize to the deployed weight bit for bit."""
    codes = unpack(stored["packed"], stored["bits"], stored["signed"], stored["numel"])
    if codes.numel() and (int(codes.min()) < -128 or int(codes.max()) > 127):
        raise ConfigError(f"weight codes of {stored['bits']} bits do not fit int8")
    codes = codes.to(torch.int8).view(tuple(stored["shape"]))
    scale = stored["scale"].detach().to(torch.float32)
    if stored["kind"] == "per_channel":
        axis, scale = 0, scale.reshape(-1)
    else:
        axis, scale = -1, scale.reshape(())
    zero = torch.zeros(scale.shape, dtype=torch.int8)
    if not torch.equal(_DequantizeWeight.forward(None, codes, scale, zero, axis), expect):
        raise ConfigError("the stored codes do not dequantize to the deployed weight")
    return codes, scale, axis


class _QDQLayer(nn.Module):
    """A deployed :class:`QuantLayer` as ONNX QDQ: int8 weight + DequantizeLinear, and
    the input quantizer as (Clip →) QuantizeLinear → DequantizeLinear."""

    def __init__(self, q: QuantLayer, stored: dict) -> None:
        super().__init__()
        self.layer = q.layer  # only its conv settings are used (stride, padding, ...)
        codes, scale, axis = _weight_codes(stored["weight"], q.deployed_weight)
        self.axis = axis
        self.register_buffer("w_codes", codes)
        self.register_buffer("w_scale", scale)
        self.register_buffer("w_zero_point", torch.zeros(scale.shape, dtype=torch.int8))
        self.register_buffer("bias", q.deployed_bias)
        self.act = act_qdq_params(q.aq)
        if self.act is not None:
            for key in ("scale", "zero_point", "lo", "hi"):
                self.register_buffer(f"a_{key}", self.act[key])

    def forward(self, x: Tensor) -> Tensor:
        if self.act is not None:
            x = _QuantizeDequantize.apply(
                x, self.a_scale, self.a_zero_point, self.a_lo, self.a_hi, self.act["clip"]
            )
        w = _DequantizeWeight.apply(self.w_codes, self.w_scale, self.w_zero_point, self.axis)
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(x, w, self.bias)
        return nn.functional.linear(x, w, self.bias)


def act_qdq_params(aq: nn.Module | None) -> dict | None:
    """The QuantizeLinear parameters of a deployed activation quantizer: ``scale``,
    ``zero_point`` (uint8 / int8), the b-bit clip ends ``lo``/``hi`` and whether the clip
    is needed (``b < 8``); None for a float input."""
    if aq is None:
        return None
    if isinstance(aq, EMAActivation):
        scale, zp = aq.qparams()
        qmin, qmax = affine_qrange(aq.bits)
        scale = scale.detach().to(torch.float32).reshape(())
        zp_i = int(zp)
        dtype, kind = torch.uint8, "affine"
    elif isinstance(aq, LSQActivation):
        signed = bool(aq.signed)
        qn, qmax = lsq_qrange(aq.bits, signed)
        qmin, zp_i = -qn, 0
        scale = positive(aq.step).detach().to(torch.float32).reshape(())
        dtype, kind = (torch.int8 if signed else torch.uint8), "lsq"
    else:
        raise ConfigError(f"no ONNX form for activation quantizer {type(aq).__name__}")
    info = torch.iinfo(dtype)
    zero_point = torch.tensor(zp_i, dtype=dtype)
    # the end values as DequantizeLinear computes them: (q − z)·s in float32
    lo = torch.tensor(float(qmin - zp_i), dtype=torch.float32) * scale
    hi = torch.tensor(float(qmax - zp_i), dtype=torch.float32) * scale
    return {
        "kind": kind,
        "bits": aq.bits,
        "scale": scale,
        "zero_point": zero_point,
        "lo": lo,
        "hi": hi,
        "clip": (qmin, qmax) != (info.min, info.max),
    }


def qdq_network(model: nn.Module, payload: dict) -> tuple[nn.Module, list[dict]]:
    """The deployed student with every ``per_channel``/``per_tensor`` layer as a QDQ
    module; returns ``(network, layers report)``. Its forward computes what the ONNX
    graph computes (ONNX rounding), so it doubles as a torch reference of the file."""
    import copy

    net = copy.deepcopy(model).eval()
    rows = []
    for name, q in quant_layers(net).items():
        stored = payload["layers"][name]
        w = stored["weight"]
        act = act_qdq_params(q.aq)
        row = {
            "layer": name,
            "op": "Conv" if isinstance(q.layer, nn.Conv2d) else "Gemm",
            "method": stored["spec"]["method"],
            "weight_kind": w["kind"],
            "w_bits": w["bits"],
            "a_bits": None if act is None else act["bits"],
        }
        if w["kind"] in _QDQ_KINDS:
            from distill_data.quant.ptq import _set_submodule

            _set_submodule(net, name, _QDQLayer(q, stored))
            per = "axis=0" if w["kind"] == "per_channel" else "per tensor"
            row["weight"] = f"int8 codes, DequantizeLinear {per}"
            row["export"] = "qdq"
        else:
            row["weight"] = f"float32 ({w['kind']}: no ONNX quantization type)"
            row["export"] = "float"
        if act is not None:
            dtype = "uint8" if act["zero_point"].dtype == torch.uint8 else "int8"
            clip = f", Clip to {act['bits']} bits" if act["clip"] else ""
            row["activation"] = f"{dtype} QuantizeLinear/DequantizeLinear{clip}"
        else:
            row["activation"] = "float"
        rows.append(row)
    return net, rows


# --------------------------------------------------------------------------- export


def max_opset() -> int:
    """The newest opset this torch's exporter writes (torch does not export the constant
    publicly; 20, the TorchScript exporter's limit in torch 2.5, where it is absent)."""
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_MAX_OPSET", 20))


def _check_opset(opset: int) -> None:
    top = max_opset()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= top:
        raise ConfigError(
            f"opset must be an integer from {MIN_OPSET} (per-channel DequantizeLinear) to "
            f"{top} (the newest this torch {torch.__version__.split('+')[0]} exports), "
            f"got {opset!r}"
        )


def _export(
    net: nn.Module,
    input_shape: tuple[int, ...],
    out_path: str | os.PathLike,
    opset: int,
    metadata: dict[str, Any],
) -> Path:
    onnx = require_onnx()
    _check_opset(opset)
    from distill_data.store.io import atomic_write

    buf = io.BytesIO()
    x = torch.zeros((1, *input_shape), dtype=torch.float32)
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated in favour of torch.export's, which
        # needs onnxscript and has no per-function symbolic (see the module docstring)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        with torch.no_grad():
            torch.onnx.export(
                net,
                (x,),
                buf,
                dynamo=False,
                opset_version=opset,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                do_constant_folding=True,
            )
    model = onnx.load_from_string(buf.getvalue())
    model.producer_name = "distill-data"
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(model)
    out = Path(out_path)
    with atomic_write(out) as tmp:
        Path(tmp).write_bytes(model.SerializeToString())
    return out


def _meta(payload_meta: dict) -> dict:
    keep = ("classes", "mean", "std", "dataset", "input_shape", "im_size", "channels")
    return {f"distill_data.{k}": payload_meta[k] for k in keep if k in payload_meta}


def _input_shape(config: dict) -> tuple[int, int, int]:
    return (int(config["channels"]), *(int(v) for v in config["im_size"]))


def export_onnx(
    student: str | os.PathLike | dict,
    out_path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
) -> dict:
    """Write a quantized student as an ONNX QDQ model (see the module docstring).

    Args:
        student: a student file (:func:`~distill_data.quant.student.save_student`) or
            its payload.
        out_path: the ``.onnx`` file to write (atomically).
        opset: ONNX opset, ≥ 13 (default :data:`DEFAULT_OPSET`).

    Returns:
        The export report: ``path``, ``opset``, ``bytes``, ``layers`` (per quantized
        layer: op, method, bits, ``export`` = ``qdq`` or ``float``, and how its weight
        and activation are written), ``qdq_layers`` and ``float_layers``, ``notes``.

    Raises:
        MissingDependencyError: ``onnx`` is not installed.
        StoreError: not a readable student file.
        ConfigError: an opset below 13.
    """
    from distill_data.quant.student import deploy_payload, load_student

    require_onnx()
    _check_opset(opset)
    if isinstance(student, dict):
        model, payload = deploy_payload(student), student
    else:
        model, payload = load_student(student)
    net, rows = qdq_network(model, payload)
    qdq = [r["layer"] for r in rows if r["export"] == "qdq"]
    flt = [r["layer"] for r in rows if r["export"] == "float"]
    notes = []
    if flt:
        kinds = sorted({r["weight_kind"] for r in rows if r["export"] == "float"})
        notes.append(
            f"{len(flt)} layer(s) with {'/'.join(kinds)} weights are exported with their "
            "dequantized float weights: ONNX has no per-bucket (runs of the flattened "
            "tensor) or codebook quantization type"
        )
    meta = {
        "distill_data.kind": "student (QDQ)",
        "distill_data.arch": payload["arch"],
        "distill_data.spec": payload["spec"],
        "distill_data.layers": {r["layer"]: r["export"] for r in rows},
        **_meta(payload.get("meta", {})),
    }
    out = _export(net, _input_shape(payload["config"]), out_path, opset, meta)
    return {
        "path": str(out),
        "opset": opset,
        "bytes": out.stat().st_size,
        "arch": payload["arch"],
        "spec": payload["spec"],
        "layers": rows,
        "qdq_layers": qdq,
        "float_layers": flt,
        "notes": notes,
    }


def export_float_onnx(
    model: str | os.PathLike | nn.Module,
    out_path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
) -> dict:
    """Write a float network (a :func:`~distill_data.models.save_model` file or a model
    built by :func:`~distill_data.models.build_model`) as a plain float ONNX model: the
    baseline a QDQ student's accuracy and latency are compared with.

    Raises:
        MissingDependencyError: ``onnx`` is not installed.
        StoreError: not a readable network file.
        ConfigError: a quantized model (export it with :func:`export_onnx`), or a model
            that records no input shape.
    """
    from distill_data.models import load_model

    require_onnx()
    _check_opset(opset)
    meta: dict = {}
    if not isinstance(model, nn.Module):
        model, meta = load_model(model)
    if quant_layers(model):
        raise ConfigError("this network has quantized layers; export it with export_onnx")
    config = getattr(model, "config", None)
    if config is None:
        raise ConfigError("only models built by distill_data.models.build_model can be exported")
    import copy

    net = copy.deepcopy(model).eval().cpu()
    extra = {
        "distill_data.kind": "float",
        "distill_data.arch": getattr(model, "arch", type(model).__name__),
        **_meta(meta or {}),
    }
    out = _export(net, _input_shape(config), out_path, opset, extra)
    arch = extra["distill_data.arch"]
    return {"path": str(out), "opset": opset, "bytes": out.stat().st_size, "arch": arch}


def export_file(
    path: str | os.PathLike, out_path: str | os.PathLike, *, opset: int = DEFAULT_OPSET
) -> dict:
    """Export a student file with :func:`export_onnx` or a float network file with
    :func:`export_float_onnx`, whichever ``path`` is; the report's ``network`` says which
    (``student`` or ``float``).

    Raises:
        MissingDependencyError: ``onnx`` is not installed.
        StoreError: ``path`` is neither (the message says what it is).
    """
    from distill_data.errors import StoreError
    from distill_data.models import MODEL_FILE_FORMAT
    from distill_data.quant.student import STUDENT_FORMAT

    require_onnx()
    p = Path(path)
    if not p.is_file():
        raise StoreError(f"no such file: {p}")
    try:
        fmt = torch.load(p, map_location="cpu", weights_only=True).get("format")
    except Exception:  # noqa: BLE001 - the loaders below name the problem
        fmt = None
    if fmt == MODEL_FILE_FORMAT:
        return {"kind": "distill-data export", "network": "float",
                **export_float_onnx(p, out_path, opset=opset)}  # fmt: skip
    if fmt != STUDENT_FORMAT:
        from distill_data.paths import kind_phrase

        what = kind_phrase(p)
        raise StoreError(
            f"{p} is {what or 'not a distill-data file'}"
            + (", not a student or network file (.pt)" if what else " (student or network)")
        )
    return {"kind": "distill-data export", "network": "student",
            **export_onnx(p, out_path, opset=opset)}  # fmt: skip


def format_export_report(report: dict) -> str:
    """Human-readable lines of an export report."""
    lines = [f"wrote {report['path']} ({report['bytes']:,} bytes, opset {report['opset']})"]
    if report.get("network") == "float":
        lines.append(f"  float {report['arch']}: no quantized layer")
        return "\n".join(lines)
    for r in report["layers"]:
        lines.append(
            f"  {r['layer']:<24} {r['op']:<4} {r['export']:<5} weight {r['weight']}; "
            f"input {r['activation']}"
        )
    lines.append(
        f"  {len(report['qdq_layers'])} layer(s) as QDQ, {len(report['float_layers'])} as float"
    )
    lines += [f"  note: {n}" for n in report["notes"]]
    return "\n".join(lines)


# ------------------------------------------------------------------------ ONNX Runtime


def ort_session(
    path: str | os.PathLike | bytes, *, threads: int = 1, optimization: str = "none"
) -> Any:
    """An ONNX Runtime CPU session on an exported model (one inter-op thread, sequential).

    Args:
        path: the ``.onnx`` file (or its bytes).
        threads: intra-op threads (1 for per-image latency).
        optimization: how ORT may rewrite the graph:

            * ``none`` (default): ``ORT_DISABLE_ALL``, the graph runs as written, every
              QuantizeLinear/DequantizeLinear its own kernel: the ONNX semantics, the
              setting the tests compare with the torch student. ``ORT_ENABLE_BASIC`` is
              not faithful: its ``WeightBiasQuantization`` rounds a float bias feeding a
              QDQ Conv to int32 at scale ``s_x·s_w``.
            * ``float``: ``ORT_ENABLE_ALL`` with ``session.disable_quant_qdq=1``: every
              float optimisation (Conv+ReLU fusion, NCHWc layouts) but no QDQ fusion;
              Q/DQ stay float ops. Same arithmetic up to float summation order.
            * ``all``: ORT's default ``ORT_ENABLE_ALL``: QDQ groups become integer
              kernels (``QLinearConv``...), which requantize the integer accumulators
              and round biases to int32, so activations can move by a step; with
              ``session.qdq_matmulnbits_accuracy_level=0`` so a DequantizeLinear→MatMul
              never becomes ``MatMulNBits`` with int8-quantized activations.
    """
    ort = require_onnx(runtime=True)
    if optimization not in OPTIMIZATIONS:
        raise ConfigError(
            f"unknown optimization {optimization!r}; choose from: {', '.join(OPTIMIZATIONS)}"
        )
    so = ort.SessionOptions()
    level = ort.GraphOptimizationLevel
    so.graph_optimization_level = (
        level.ORT_DISABLE_ALL if optimization == "none" else level.ORT_ENABLE_ALL
    )
    if optimization == "float":
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def ort_logits(session: Any, x: Tensor, batch_size: int = 256) -> Tensor:
    """Logits of ``x`` (normalised images) from an ONNX Runtime session, in batches."""
    name = session.get_inputs()[0].name
    outs = []
    for i in range(0, x.shape[0], batch_size):
        chunk = x[i : i + batch_size].detach().cpu().to(torch.float32).contiguous().numpy()
        outs.append(torch.from_numpy(session.run(None, {name: chunk})[0]))
    return torch.cat(outs) if outs else torch.zeros(0)


def onnx_node_counts(path: str | os.PathLike) -> dict[str, int]:
    """``{op_type: count}`` of an ONNX file's graph, plus ``int8_weights``: the int8
    initializers that a DequantizeLinear reads as its data (the integer weights)."""
    onnx = require_onnx()
    m = onnx.load(str(path))
    counts: dict[str, int] = {}
    for node in m.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    int8 = {t.name for t in m.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    dq_data = {n.input[0] for n in m.graph.node if n.op_type == "DequantizeLinear"}
    counts["int8_weights"] = len(int8 & dq_data)
    return counts
