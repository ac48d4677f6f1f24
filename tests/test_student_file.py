"""The shipped student file: real packed integer codes, loaded back as a network whose
logits equal the trained fake-quantized student's bit for bit, for every method."""

from __future__ import annotations

import pytest
import torch

from distill_data.errors import StoreError
from distill_data.models import build_model
from distill_data.quant.qat import QUANT_METHODS, QuantSpec, freeze_observers, quantize_
from distill_data.quant.student import load_student, save_student, student_summary


def train_tiny(arch: str, spec: QuantSpec) -> tuple:
    """A tiny quantized student after a few SGD steps on random data, observers frozen."""
    torch.manual_seed(0)
    model = build_model(arch, 1, 3, (10, 10), width=8)
    quantize_(model, spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(4):
        x, y = torch.randn(16, 1, 10, 10), torch.randint(0, 3, (16,))
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    freeze_observers(model)
    return model.eval(), spec


def case_spec(method: str, w_bits: int, a_bits: int | None, **spec_kw) -> QuantSpec:
    """The spec of a test case: a quantization method, or ``lsq-channel`` (lsq with a
    weight step per output channel)."""
    if method == "lsq-channel":
        method, spec_kw = "lsq", {**spec_kw, "per_channel": True}
    return QuantSpec(method=method, w_bits=w_bits, a_bits=a_bits, **spec_kw)


def trained_student(arch: str, method: str, w_bits: int = 4) -> tuple:
    a_bits = None if method in ("qd", "dq") else 4
    return train_tiny(arch, case_spec(method, w_bits, a_bits))


@pytest.mark.parametrize("arch", ["convnet_bn", "resnet"])
@pytest.mark.parametrize("method", [*QUANT_METHODS, "lsq-channel"])
def test_loaded_integer_student_equals_the_fake_quant_student(tmp_path, arch, method):
    model, spec = trained_student(arch, method)
    path = tmp_path / "s.pt"
    save_student(model, spec, path, meta={"classes": ["a", "b", "c"]})
    loaded, payload = load_student(path)
    x = torch.randn(32, 1, 10, 10)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # the codes really are low-bit: the body at 4 bits, first and last at 8 (the default),
    # packed bytes = bits/8 per weight
    bits = [layer["weight"]["bits"] for layer in payload["layers"].values()]
    assert bits[0] == bits[-1] == 8 and set(bits[1:-1]) == {4}, bits
    for layer in payload["layers"].values():
        w = layer["weight"]
        assert w["packed"].dtype == torch.uint8
        assert w["packed"].numel() == -(-w["numel"] * w["bits"] // 8)
    summary = student_summary(payload)
    assert summary["compression"] > 1 and summary["bytes"] < summary["fp32_bytes"]
    assert payload["meta"]["classes"] == ["a", "b", "c"]


def test_two_bit_students_are_smaller_than_four_bit(tmp_path):
    sizes = {}
    for bits in (2, 4):
        model, spec = trained_student("resnet", "qd", w_bits=bits)
        sizes[bits] = student_summary(save_student(model, spec, tmp_path / f"{bits}.pt"))
    assert sizes[2]["code_bytes"] < sizes[4]["code_bytes"] * 0.6


def test_damaged_student_files_are_one_error(tmp_path):
    model, spec = trained_student("convnet_bn", "qat")
    path = tmp_path / "s.pt"
    payload = save_student(model, spec, path)
    payload["layers"].popitem()
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(StoreError, match="does not fit its architecture"):
        load_student(tmp_path / "bad.pt")
    (tmp_path / "junk.pt").write_bytes(b"nope")
    with pytest.raises(StoreError, match="not a readable student file"):
        load_student(tmp_path / "junk.pt")
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(StoreError, match="not a distill-data student file"):
        load_student(tmp_path / "other.pt")
