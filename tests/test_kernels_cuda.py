"""The kernels compiled for a CUDA device, against their references at real sizes:
``TRITON_INTERPRET=0 python -m pytest -m cuda tests/test_kernels_cuda.py`` on a GPU
machine (bench/gpu.sh runs it). Without CUDA, under the interpreter
(``TRITON_INTERPRET=1``, which this file sets then, as tests/test_kernels.py does), the
same tests run at small sizes on the CPU: a rehearsal, so a mistake in a test itself (a
format's name, an argument) shows here and not first on a rare GPU lease."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # the rehearsal (before triton decorates the kernels)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from distill_data.kernels import triton_available  # noqa: E402

CUDA = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
REHEARSAL = not CUDA and os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not triton_available() or not (CUDA or REHEARSAL),
        reason="needs a CUDA device and compiled Triton, or TRITON_INTERPRET=1 (small sizes)",
    ),
]
#: the side of the "real" sizes: 4096 on the GPU, small under the ~100x slower interpreter
N = 4096 if CUDA else 64
ACT = (256, 128, 32, 32) if CUDA else (4, 8, 6, 6)
MS = [1, 16, 128, 1024] if CUDA else [1, 16, 33]


@pytest.fixture
def dev():
    return torch.device("cuda" if CUDA else "cpu")


@pytest.mark.parametrize("shape, per_channel", [((N, N), True), (ACT, False)])
def test_fused_lsq_fake_quant_at_real_sizes(dev, shape, per_channel):
    from distill_data.kernels import fake_quant

    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(shape, device=dev, generator=g)
    steps = (shape[0],) + (1,) * (len(shape) - 1) if per_channel else ()
    step = torch.rand(steps, device=dev, generator=g) * 0.1 + 0.01
    out = {}
    for backend in ("torch", "triton"):
        xi, si = x.clone().requires_grad_(True), step.clone().requires_grad_(True)
        y = fake_quant(xi, si, 8, 7, 0.01, backend=backend)
        y.backward(torch.ones_like(y))
        out[backend] = (y.detach(), xi.grad, si.grad)
    assert torch.equal(out["torch"][0], out["triton"][0])
    assert torch.equal(out["torch"][1], out["triton"][1])
    torch.testing.assert_close(out["torch"][2], out["triton"][2], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2", "fp4_e2m1"])
def test_fp_fake_quant_at_real_size(dev, fmt):
    from distill_data.kernels import fp_fake_quant

    x = torch.randn(N, N, device=dev) * 4
    s = torch.rand(N, 1, device=dev) + 0.5
    assert torch.equal(fp_fake_quant(x, s, fmt, backend="triton"),
                       fp_fake_quant(x, s, fmt, backend="torch"))  # fmt: skip


@pytest.mark.parametrize("stochastic", [False, True])
def test_bucket_fake_quant_at_real_size(dev, stochastic):
    from distill_data.kernels import bucket_fake_quant
    from distill_data.quant.fakequant import bucket_fake_quant as reference

    w = torch.randn(N, N, device=dev)
    g = torch.Generator(device=dev).manual_seed(5)
    out = bucket_fake_quant(w, 2, 256, stochastic, g if stochastic else None, backend="triton")
    seed = None
    if stochastic:
        seed = int(torch.randint(2**31 - 1, (1,), device=dev,
                                 generator=torch.Generator(device=dev).manual_seed(5)))  # fmt: skip
    assert torch.equal(out, reference(w, 2, 256, stochastic, seed=seed))


@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("kind, bits", [("per_channel", 4), ("per_tensor", 2), ("bucket", 2)])
def test_packed_products_at_real_sizes(dev, m, kind, bits):
    from distill_data.kernels.lowbit import dequantize_rows, packed_linear
    from distill_data.quant.pack import pack, unpack

    n = k = N
    signed = kind != "bucket"
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    codes = torch.randint(lo, hi + 1, (n, k))
    packed = pack(codes, bits, signed).to(dev)
    extra, scale = {}, None
    if kind == "bucket":
        buckets = n * k // 256
        extra = {"alpha": torch.rand(buckets, device=dev) + 0.1,
                 "beta": torch.randn(buckets, device=dev) * 0.1, "bucket_size": 256}  # fmt: skip
    else:
        scale = torch.rand(n if kind == "per_channel" else 1, device=dev) * 0.01 + 0.001
    x = torch.randn(m, k, device=dev)
    out = packed_linear(x, packed, bits, n, k, scale, kind, backend="triton", **extra)
    q = unpack(packed, bits, signed, n * k).view(n, k)
    w = dequantize_rows(q, kind, bits, 0, scale, **extra)
    torch.testing.assert_close(out, x @ w.T, rtol=1e-3, atol=1e-3)


def test_int8_product_is_exact_at_real_size(dev):
    from distill_data.kernels.lowbit import int8_linear

    m = 1024 if CUDA else 33
    xq = torch.randint(-127, 128, (m, N), dtype=torch.int8, device=dev)
    wq = torch.randint(-127, 128, (N, N), dtype=torch.int8, device=dev)
    xs, ws = torch.rand(m, device=dev), torch.rand(N, device=dev)
    exact = int8_linear(xq.cpu(), wq.cpu(), xs.cpu(), ws.cpu(), backend="torch")  # int64
    assert torch.equal(int8_linear(xq, wq, xs, ws, backend="triton").cpu(), exact)
    assert torch.equal(int8_linear(xq, wq, xs, ws, backend="torch").cpu(), exact)
