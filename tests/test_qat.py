"""quantize_: which layers become quantized, BatchNorm folding, the float mode, gradients
to the right parameters, and exported integer codes that reproduce the eval forward."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from distill_data.errors import ConfigError
from distill_data.models import build_model
from distill_data.quant.fakequant import bucket_dequantize, nonuniform_dequantize
from distill_data.quant.qat import (
    QUANT_METHODS,
    LSQActivation,
    QuantLayer,
    QuantSpec,
    float_mode,
    freeze_batchnorm,
    freeze_observers,
    quant_layers,
    quantize_,
    weight_bits_report,
)


def spec(method: str, w: int = 4, a: int = 4, **kw) -> QuantSpec:
    return QuantSpec(method=method, w_bits=w, a_bits=None if method in ("qd", "dq") else a, **kw)


def net(arch: str = "convnet_bn", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = build_model(arch, 1, 3, (10, 10), width=8)
    m.train()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            m(torch.randn(16, 1, 10, 10) * 2 + 0.5)
    return m.eval()


def dequantize(w: dict) -> torch.Tensor:
    shape = w["shape"]
    if w["kind"] == "per_channel":
        return w["codes"].float() * w["scale"].view(-1, *([1] * (len(shape) - 1)))
    if w["kind"] == "per_tensor":
        return w["codes"].float() * w["scale"]
    if w["kind"] == "bucket":
        return bucket_dequantize(w["codes"], w["alpha"], w["beta"], shape, w["bits"])
    return nonuniform_dequantize(w["codes"], w["points"], w["alpha"], w["beta"], shape)


@pytest.mark.parametrize("arch", ["convnet_bn", "resnet"])
@pytest.mark.parametrize("method", QUANT_METHODS)
def test_float_mode_is_the_network_before_quantization(arch, method):
    ref = net(arch)
    student = quantize_(copy.deepcopy(ref), spec(method))
    x = torch.randn(8, 1, 10, 10)
    with float_mode(student):
        torch.testing.assert_close(student(x), ref(x), rtol=0, atol=1e-5)
    student.train()
    freeze_batchnorm(student)  # keep the running statistics as they are
    for m in student.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    with torch.no_grad():
        student(x)  # activation ranges / steps see one batch
    student.eval()
    with float_mode(student):
        torch.testing.assert_close(student(x), ref(x), rtol=0, atol=1e-5)
    quantized = student(x)
    assert not torch.allclose(quantized, ref(x), atol=1e-4)  # quantized differs ...
    # ... a bit: relative MSE of the logits measured at most 7e-4 (resnet, qd); a lost
    # scale or a layer left unquantized moves it to ~1
    with torch.no_grad():
        rel = float(((quantized - ref(x)) ** 2).mean() / (ref(x) ** 2).mean())
    assert rel < 1e-2


@pytest.mark.parametrize("method", QUANT_METHODS)
def test_layers_bn_folding_and_first_last_filter(method):
    student = quantize_(net("resnet"), spec(method))
    layers = quant_layers(student)
    convs = [n for n, q in layers.items() if isinstance(q.layer, nn.Conv2d)]
    assert len(layers) == len(convs) + 1  # every conv and the classifier
    first, last = convs[0], next(n for n, q in layers.items() if isinstance(q.layer, nn.Linear))
    assert layers[first].wq.bits == 8 and layers[last].wq.bits == 8
    assert all(q.wq.bits == 4 for n, q in layers.items() if n not in (first, last))
    folded = [q.bn is not None for q in layers.values() if isinstance(q.layer, nn.Conv2d)]
    assert all(folded) if method in ("qat", "lsq") else not any(folded)
    bns = [m for m in student.modules() if isinstance(m, nn.BatchNorm2d)]
    if method in ("qat", "lsq"):  # each BatchNorm belongs to the conv it is folded into
        assert all(any(q.bn is b for q in layers.values()) for b in bns)
    else:  # every BatchNorm stays a module of its own, in the network's forward
        n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in net("resnet").modules())
        assert len(bns) == n_bn > 0 and all(q.bn is None for q in layers.values())
    # a filter keeps the classifier float and quantizes the rest at 3 bits
    custom = quantize_(
        net("resnet"),
        spec(method),
        filter_fn=lambda m, name: None if isinstance(m, nn.Linear) else spec(method, w=3, a=3),
    )
    assert all(q.wq.bits == 3 for q in quant_layers(custom).values())
    assert not any(isinstance(q.layer, nn.Linear) for q in quant_layers(custom).values())
    with pytest.raises(ConfigError, match="QuantSpec or None"):
        quantize_(net(), spec(method), filter_fn=lambda m, name: 4)


@pytest.mark.parametrize("method", QUANT_METHODS)
def test_exported_codes_reproduce_the_eval_weights_exactly(method):
    student = quantize_(net("resnet"), spec(method, w=3, a=4))
    student.train()
    student(torch.randn(8, 1, 10, 10))  # initialises LSQ steps and EMA ranges
    student.eval()
    for name, q in quant_layers(student).items():
        exported = q.export()
        w, b = q.folded()
        with torch.no_grad():
            want = q.wq(w)
        got = dequantize(exported["weight"])
        assert torch.equal(got, want), name
        codes = exported["weight"]["codes"]
        levels = 2 ** exported["weight"]["bits"]
        assert codes.unique().numel() <= levels
        if b is not None:
            assert torch.equal(exported["bias"], b.detach())


def test_qat_folds_batchnorm_like_deployment_and_freezes():
    student = quantize_(net("convnet_bn"), spec("qat", w=8, a=8))
    q = next(iter(quant_layers(student).values()))
    mean_before = q.bn.running_mean.clone()
    student.train()
    student(torch.randn(8, 1, 10, 10) + 3)
    assert not torch.equal(q.bn.running_mean, mean_before)  # batch statistics update them
    freeze_batchnorm(student)
    freeze_observers(student)
    frozen = q.bn.running_mean.clone(), q.aq.lo.clone()
    student(torch.randn(8, 1, 10, 10) - 3)
    assert torch.equal(q.bn.running_mean, frozen[0]) and torch.equal(q.aq.lo, frozen[1])
    # frozen training forward == eval forward == the deployed formula
    x = torch.randn(4, 1, 10, 10)
    a = student(x)
    student.eval()
    torch.testing.assert_close(a, student(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "method, learned",
    [("qat", "layer.weight"), ("lsq", "step"), ("qd", "layer.weight"), ("dq", "points")],
)
def test_gradients_reach_the_shadow_weights_steps_and_points(method, learned):
    student = quantize_(net("convnet_bn"), spec(method))
    student.train()
    student(torch.randn(8, 1, 10, 10)).logsumexp(1).sum().backward()
    grads = {n: p.grad for n, p in student.named_parameters() if n.endswith(learned)}
    assert grads and all(g is not None and bool(g.abs().sum() > 0) for g in grads.values())


def test_lsq_activations_are_unsigned_after_relu_and_signed_on_images():
    student = quantize_(net("convnet_bn"), spec("lsq"))
    student.train()
    student(torch.randn(8, 1, 10, 10))
    acts = [m for m in student.modules() if isinstance(m, LSQActivation)]
    assert bool(acts[0].signed) and not any(bool(a.signed) for a in acts[1:])
    assert all(float(a.step.detach()) > 0 for a in acts)


def test_mse_step_init_starts_at_the_least_error_clipping():
    from distill_data.quant.fakequant import lsq_init_step, lsq_mse_init_step, lsq_qrange

    x = torch.randn(8, 1, 10, 10, generator=torch.Generator().manual_seed(5))
    for per_channel in (False, True):
        s_mse = spec("lsq", w=3, a=4, per_channel=per_channel, step_init="mse")
        s_lsq = spec("lsq", w=3, a=4, per_channel=per_channel)
        student, paper = quantize_(net(), s_mse), quantize_(net(), s_lsq)
        for name, q in quant_layers(student).items():
            w, _ = q.folded()  # the weight step: from the folded weights, at preparation
            qn, qp = lsq_qrange(q.spec.w_bits, True)
            want = lsq_mse_init_step(w.detach(), qn, qp, per_channel)
            assert torch.equal(q.wq.step.detach(), want), name
            other = quant_layers(paper)[name].wq.step.detach()
            assert torch.equal(other, lsq_init_step(w.detach(), qp, per_channel)), name
            assert not torch.equal(other, want), name  # the two rules differ
    # the activation steps: from each layer's input on the first batch (signed images)
    student.train()
    student(x)
    acts = [m for m in student.modules() if isinstance(m, LSQActivation)]
    assert bool(acts[0].signed) and acts[0].step_init == "mse"
    qn, qp = lsq_qrange(acts[0].bits, True)
    assert torch.equal(acts[0].step.detach(), lsq_mse_init_step(x, qn, qp))
    with pytest.raises(ConfigError, match="step_init is an lsq setting"):
        QuantSpec(method="qat", step_init="mse")
    with pytest.raises(ConfigError, match="unknown step_init"):
        QuantSpec(method="lsq", a_bits=4, step_init="max")


def test_spec_validation_and_report():
    with pytest.raises(ConfigError, match="weights only"):
        QuantSpec(method="qd", a_bits=4)
    with pytest.raises(ConfigError, match="give a_bits"):
        QuantSpec(method="lsq", a_bits=None)
    with pytest.raises(ConfigError, match="w_bits must be an integer from 2 to 8"):
        QuantSpec(w_bits=1)
    with pytest.raises(ConfigError, match="unknown quantization"):
        QuantSpec(method="awq")
    rows = weight_bits_report(quantize_(net(), spec("qd", w=2)))
    assert {r["w_bits"] for r in rows} == {2, 8}
    assert all(r["overhead_bits_per_weight"] > 0 for r in rows)
    assert isinstance(next(iter(quant_layers(quantize_(net(), spec("qat"))).values())), QuantLayer)


def test_per_channel_lsq_learns_a_step_per_output_channel():
    student = quantize_(net("convnet_bn"), spec("lsq", w=3, a=4, per_channel=True))
    student.train()
    student(torch.randn(8, 1, 10, 10)).logsumexp(1).sum().backward()
    for name, q in quant_layers(student).items():
        w, _ = q.folded()
        assert q.wq.step.shape == (w.shape[0],) + (1,) * (w.dim() - 1), name
        assert q.wq.step.grad is not None and q.wq.step.grad.shape == q.wq.step.shape
        # initialised per channel at 2·mean|w_c|/√Q_P, so channels differ
        assert q.wq.step.detach().flatten().unique().numel() > 1, name
        exported = q.export()["weight"]
        assert exported["kind"] == "per_channel"
        with torch.no_grad():
            assert torch.equal(dequantize(exported), q.wq(w)), name
    with pytest.raises(ConfigError, match="per_channel is an lsq setting"):
        QuantSpec(method="qat", per_channel=True)
