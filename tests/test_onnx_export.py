"""ONNX export with QuantizeLinear/DequantizeLinear: ONNX Runtime on the CPU computes
what the deployed student computes, the graph holds int8 weights and QDQ nodes where
the method has an ONNX form, float weights where it has none (qd/dq), and the
``export`` command writes the file or refuses with one error line.

Tolerances. ONNX Runtime runs with ``optimization="none"`` (the graph as written). Its
Conv/Gemm sum in another order than torch's, so a pre-activation can differ in its
last bit; when that value lies within an ulp of a rounding boundary of the next
quantizer, the two round to neighbouring integers (one activation moves one step), and
``qat``'s ``torch.fake_quantize_per_tensor_affine`` multiplies by ``1/s`` where ONNX
divides by ``s``, which does the same at near-ties. Every other image gives the same
logits up to float rounding. The chance that an image meets a near-tie grows with
the number of activations: in these width-8 networks on 10x10 inputs about 0.5 % of
the images do (in the benchmark's ResNet-20 on 28x28 digits, most). So we assert: at
least 97 % of the images agree to ``FLOAT_ATOL``, every image agrees to a fifth of the
largest logit (one step moved early in a small untrained network reaches up to ~8 %
of it), and the top-1 class is the same for every image of the batch.
Weight-only students (float weights in the file) agree to ``FLOAT_ATOL`` everywhere.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from test_student_file import case_spec, train_tiny

from distill_data.models import build_model, save_model
from distill_data.quant.student import load_student, save_student

FLOAT_ATOL = 1e-5
MIN_EXACT_ROWS = 0.97
MAX_REL_DIFF = 0.2
QDQ_CASES = [
    ("qat", 8, 8),
    ("qat", 4, 4),
    ("qat", 3, 4),
    ("lsq", 8, 8),
    ("lsq", 4, 4),
    ("lsq", 3, 4),
    ("lsq-channel", 4, 4),
]


@pytest.fixture
def ort():
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


def trained_student(arch: str, method: str, w_bits: int, a_bits: int | None, **spec_kw):
    return train_tiny(arch, case_spec(method, w_bits, a_bits, **spec_kw))


def student_file(tmp_path, arch, method, w_bits, a_bits, **spec_kw):
    model, spec = trained_student(arch, method, w_bits, a_bits, **spec_kw)
    path = tmp_path / f"{arch}_{method}_w{w_bits}.pt"
    save_student(model, spec, path, meta={"classes": ["a", "b", "c"], "mean": [0.5], "std": [0.25]})
    return path


def batch(n: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 10, 10, generator=g)


def ort_and_torch(tmp_path, path):
    from distill_data.quant.onnx_export import export_onnx, ort_logits, ort_session

    report = export_onnx(path, tmp_path / "s.onnx")
    deployed, payload = load_student(path)
    x = batch()
    with torch.no_grad():
        ref = deployed(x)
    got = ort_logits(ort_session(tmp_path / "s.onnx"), x)
    return got, ref, report, payload


@pytest.mark.parametrize("arch", ["convnet_bn", "resnet"])
@pytest.mark.parametrize("method,w_bits,a_bits", QDQ_CASES)
def test_onnx_runtime_computes_what_the_student_computes(
    tmp_path, ort, arch, method, w_bits, a_bits
):
    path = student_file(tmp_path, arch, method, w_bits, a_bits)
    got, ref, report, payload = ort_and_torch(tmp_path, path)
    diff = (got - ref).abs().amax(1)
    assert float((diff <= FLOAT_ATOL).float().mean()) >= MIN_EXACT_ROWS, diff.max()
    assert float(diff.max()) <= MAX_REL_DIFF * float(ref.abs().max())
    assert torch.equal(got.argmax(1), ref.argmax(1))
    assert report["qdq_layers"] == list(payload["layers"]) and report["float_layers"] == []


@pytest.mark.parametrize("arch", ["convnet_bn", "resnet"])
@pytest.mark.parametrize("method", ["qd", "dq"])
def test_bucket_and_point_students_export_float_weights(tmp_path, ort, arch, method):
    import onnx

    path = student_file(tmp_path, arch, method, 4, None)
    got, ref, report, payload = ort_and_torch(tmp_path, path)
    assert torch.allclose(got, ref, rtol=0, atol=FLOAT_ATOL)
    assert torch.equal(got.argmax(1), ref.argmax(1))
    assert report["qdq_layers"] == [] and report["float_layers"] == list(payload["layers"])
    kind = "bucket" if method == "qd" else "points"
    assert all(r["export"] == "float" and kind in r["weight"] for r in report["layers"])
    assert any("no per-bucket" in n for n in report["notes"])
    m = onnx.load(str(tmp_path / "s.onnx"))
    ops = {n.op_type for n in m.graph.node}
    assert not ops & {"QuantizeLinear", "DequantizeLinear"}
    assert not any(t.data_type == onnx.TensorProto.INT8 for t in m.graph.initializer)


def _initializers(m):
    from onnx import numpy_helper

    return {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in m.graph.initializer}


@pytest.mark.parametrize("method", ["qat", "lsq"])
def test_graph_holds_int8_weights_and_qdq_activations(tmp_path, ort, method):
    import onnx

    from distill_data.quant.pack import unpack

    path = student_file(tmp_path, "convnet_bn", method, 4, 4)
    got, ref, report, payload = ort_and_torch(tmp_path, path)
    m = onnx.load(str(tmp_path / "s.onnx"))
    nodes = m.graph.node
    by_out = {o: n for n in nodes for o in n.output}
    stored = _initializers(m)

    def value(name):  # an initializer, or one the exporter shares through an Identity
        return stored[name] if name in stored else value(by_out[name].input[0])

    ops = [n.op_type for n in nodes]
    n_layers = len(payload["layers"])  # 3 convs + classifier, all with input quantizers
    assert ops.count("QuantizeLinear") == n_layers
    assert ops.count("DequantizeLinear") == 2 * n_layers
    # first conv and classifier at 8 bits (the default filter): no Clip; the rest: Clip
    assert ops.count("Clip") == n_layers - 2
    convs = [n for n in nodes if n.op_type in ("Conv", "Gemm")]
    assert len(convs) == n_layers
    for node, layer in zip(convs, payload["layers"].values()):
        w = layer["weight"]
        dq = by_out[node.input[1]]  # the weight input comes from a DequantizeLinear ...
        assert dq.op_type == "DequantizeLinear"
        codes = value(dq.input[0])  # ... of an int8 initializer holding the stored codes
        assert codes.dtype == torch.int8 and list(codes.shape) == w["shape"]
        assert torch.equal(
            codes.long().flatten(), unpack(w["packed"], w["bits"], w["signed"], w["numel"])
        )
        axis = [a.i for a in dq.attribute if a.name == "axis"]
        assert axis == ([0] if method == "qat" else [])
        assert torch.equal(value(dq.input[1]).reshape(-1), w["scale"].reshape(-1).float())
        act_dq = by_out[node.input[0]]
        assert act_dq.op_type == "DequantizeLinear"
        assert by_out[act_dq.input[0]].op_type == "QuantizeLinear"
        zp = value(act_dq.input[2])
        act = layer["act"]
        if method == "qat":
            assert zp.dtype == torch.uint8
        else:
            assert zp.dtype == (torch.int8 if bool(act["signed"]) else torch.uint8)
            assert torch.equal(value(act_dq.input[1]), act["step"].float().reshape(()))
    # no float copy of a quantized weight travels in the file
    shapes = {tuple(layer["weight"]["shape"]) for layer in payload["layers"].values()}
    floats = [t for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    assert not any(tuple(t.dims) in shapes for t in floats)
    meta = {p.key: p.value for p in m.metadata_props}
    assert json.loads(meta["distill_data.spec"])["method"] == method
    assert json.loads(meta["distill_data.classes"]) == ["a", "b", "c"]
    assert json.loads(meta["distill_data.mean"]) == [0.5]


def _export_act(tmp_path, aq, shape):
    """A one-node-pair ONNX model: the activation quantizer ``aq`` as exported."""
    from distill_data.quant.onnx_export import _QuantizeDequantize, act_qdq_params

    p = act_qdq_params(aq)

    class Act(torch.nn.Module):
        def forward(self, x):
            return _QuantizeDequantize.apply(
                x, p["scale"], p["zero_point"], p["lo"], p["hi"], p["clip"]
            )

    out = tmp_path / "act.onnx"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Act(), (torch.zeros(shape),), str(out), dynamo=False, opset_version=17)
    return out, p


@pytest.mark.parametrize("bits,signed", [(3, True), (4, False), (8, True), (8, False)])
def test_lsq_activation_qdq_is_exact(tmp_path, ort, bits, signed):
    """LSQ rounds x/s, as QuantizeLinear does: bit for bit, clip included."""
    from distill_data.quant.onnx_export import ort_logits, ort_session
    from distill_data.quant.qat import LSQActivation

    aq = LSQActivation(bits)
    aq.signed.fill_(signed)
    aq.initialised.fill_(True)
    with torch.no_grad():
        aq.step.fill_(0.0371)
    x = torch.randn(64, 512, generator=torch.Generator().manual_seed(0)) * 3
    x[0, :4] = torch.tensor([1e4, -1e4, 0.0, 0.0371 * 2.5])  # far outside; a half step
    path, p = _export_act(tmp_path, aq, (64, 512))
    assert p["clip"] == (bits < 8)
    with torch.no_grad():
        assert torch.equal(ort_logits(ort_session(path), x), aq(x))


@pytest.mark.parametrize("bits", [4, 8])
def test_ema_activation_qdq_is_exact_but_for_near_ties(tmp_path, ort, bits):
    """``qat`` quantizes with torch's fake_quantize (x·(1/s)); ONNX divides. They agree
    except where x/s lies within an ulp of a half-integer: there, one step apart."""
    from distill_data.quant.onnx_export import ort_logits, ort_session
    from distill_data.quant.qat import EMAActivation

    aq = EMAActivation(bits, 0.01)
    aq.lo.fill_(-1.3)
    aq.hi.fill_(2.9)
    aq.seen.fill_(True)  # a range as if observed
    aq.freeze()
    aq.eval()
    x = torch.randn(64, 512, generator=torch.Generator().manual_seed(0)) * 2
    x[0, :2] = torch.tensor([1e4, -1e4])
    path, p = _export_act(tmp_path, aq, (64, 512))
    with torch.no_grad():
        want = aq(x)
    got = ort_logits(ort_session(path), x)
    off = got != want
    assert float(off.float().mean()) < 1e-3
    assert torch.allclose((got - want)[off].abs(), p["scale"].expand(int(off.sum())), rtol=1e-5)
    assert float(got.min()) == float(want.min()) and float(got.max()) == float(want.max())


def test_float_network_and_optimised_sessions(tmp_path, ort):
    from distill_data.quant.onnx_export import (
        export_float_onnx,
        onnx_node_counts,
        ort_logits,
        ort_session,
    )

    torch.manual_seed(0)
    net = build_model("resnet", 1, 3, (10, 10), width=8).eval()
    save_model(net, tmp_path / "f.pt", meta={"classes": ["a", "b", "c"]})
    export_float_onnx(tmp_path / "f.pt", tmp_path / "f.onnx")
    x = batch()
    with torch.no_grad():
        ref = net(x)
    for opt in ("none", "float", "all"):
        got = ort_logits(ort_session(tmp_path / "f.onnx", optimization=opt), x)
        assert torch.allclose(got, ref, rtol=1e-4, atol=FLOAT_ATOL)
    counts = onnx_node_counts(tmp_path / "f.onnx")
    assert "QuantizeLinear" not in counts and counts["int8_weights"] == 0
    # ORT's default optimisations run the QDQ student with integer kernels: close, not equal
    path = student_file(tmp_path, "resnet", "qat", 8, 8)
    from distill_data.quant.onnx_export import export_onnx

    export_onnx(path, tmp_path / "s.onnx")
    deployed, _ = load_student(path)
    with torch.no_grad():
        ref = deployed(x)
    got = ort_logits(ort_session(tmp_path / "s.onnx", optimization="all"), x)
    assert float((got.argmax(1) == ref.argmax(1)).float().mean()) >= 0.9


def test_bad_settings_are_config_errors(tmp_path, ort):
    from distill_data.errors import ConfigError
    from distill_data.quant.onnx_export import export_onnx, ort_session

    path = student_file(tmp_path, "convnet_bn", "qat", 8, 8)
    with pytest.raises(ConfigError, match="opset must be an integer from 13"):
        export_onnx(path, tmp_path / "s.onnx", opset=11)
    with pytest.raises(ConfigError, match=r"to \d+ \(the newest this torch"):
        export_onnx(path, tmp_path / "s.onnx", opset=99)  # torch's exporter would raise
    export_onnx(path, tmp_path / "s.onnx")
    with pytest.raises(ConfigError, match="unknown optimization 'fast'"):
        ort_session(tmp_path / "s.onnx", optimization="fast")
    with pytest.raises(ConfigError, match="quantized layers; export it with export_onnx"):
        from distill_data.quant.onnx_export import export_float_onnx

        export_float_onnx(load_student(path)[0], tmp_path / "f.onnx")


# ------------------------------------------------------------------------------ CLI


def test_export_command_writes_and_refuses(tmp_path, ort, run_cli, tiny_npz):
    from distill_data.quant.onnx_export import ort_session

    path = student_file(tmp_path, "convnet_bn", "lsq", 4, 4)
    out = tmp_path / "s.onnx"
    code, stdout, err = run_cli("export", path, "--out", out, "--json", tmp_path / "r.json")
    assert code == 0, err
    assert f"wrote {out}" in stdout and "4 layer(s) as QDQ, 0 as float" in stdout
    exported = json.loads((tmp_path / "r.json").read_text())
    assert exported["kind"] == "distill-data export" and exported["network"] == "student"
    assert exported["source"] == str(path) and exported["created"] and exported["machine"]
    ort_session(out)  # a valid model
    code, _, err = run_cli("export", path, "--out", out)  # replacing an ONNX file is fine
    assert code == 0, err

    def refused(*args, match):
        kept = {f: f.read_bytes() for f in (path, out, tiny_npz)}
        code, _, err = run_cli("export", *args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
        assert match in lines[0], lines[0]
        assert all(f.read_bytes() == b for f, b in kept.items())  # nothing written over

    refused(path, "--out", path, match="it is the input")
    refused(tiny_npz, "--out", out, match="is an .npz dataset, not a student or network file")
    refused(tmp_path / "missing.pt", "--out", out, match="no such file")
    refused(path, "--out", tiny_npz, match="refusing to overwrite")
    refused(path, "--out", tmp_path / "nofolder" / "s.onnx", match="does not exist")
    refused(path, "--out", out, "--opset", "11", match="opset must be an integer from 13")
    refused(path, "--out", out, "--opset", "99", match="the newest this torch")
    (tmp_path / "junk.pt").write_bytes(b"nope")
    refused(tmp_path / "junk.pt", "--out", out, match="not a distill-data file")
    # --force replaces a file of another kind (never an input)
    code, _, err = run_cli("export", path, "--out", tiny_npz, "--force")
    assert code == 0, err


def test_export_command_float_network(tmp_path, ort, run_cli):
    torch.manual_seed(0)
    net = build_model("convnet_bn", 1, 3, (10, 10), width=8).eval()
    save_model(net, tmp_path / "f.pt")
    code, stdout, err = run_cli("export", tmp_path / "f.pt", "--out", tmp_path / "f.onnx")
    assert code == 0, err
    assert "float convnet_bn: no quantized layer" in stdout


def test_missing_onnx_is_one_error_line(tmp_path, run_cli, monkeypatch):
    path = student_file(tmp_path, "convnet_bn", "qat", 8, 8)
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    code, _, err = run_cli("export", path, "--out", tmp_path / "s.onnx")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "onnx is not installed" in lines[0] and "pip install 'distill-data[deploy]'" in lines[0]
    assert not (tmp_path / "s.onnx").exists()
