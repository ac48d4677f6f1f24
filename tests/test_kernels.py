"""The Triton kernels against their torch references, under TRITON_INTERPRET=1 on the
CPU: small shapes, odd sizes, the edges of the grid and exact ties."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton decorates the kernels

import pytest  # noqa: E402
import torch  # noqa: E402

from distill_data.errors import ConfigError  # noqa: E402
from distill_data.kernels import fake_quant, triton_available  # noqa: E402

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not installed")


def _case(shape, per_channel, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 3
    if per_channel:
        step = torch.rand((shape[0],) + (1,) * (len(shape) - 1), generator=g) * 0.5 + 0.1
    else:
        step = torch.tensor(0.37)
    # exact ties and both ends of the range: x/s = k + 0.5, −Q_N, Q_P and beyond
    flat = x.view(-1)
    s0 = float(step.reshape(-1)[0])
    specials = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -8.0, 7.0, -9.0, 9.0, 0.0]) * s0
    flat[: min(len(specials), flat.numel())] = specials[: flat.numel()]
    return x, step


@pytest.mark.parametrize(
    "shape, per_channel",
    [((1,), False), ((7,), False), ((3, 5), True), ((5, 130), True), ((4, 3, 3, 3), True),
     ((2, 1100), False), ((3, 2049), True)],
)  # fmt: skip
def test_fused_fake_quant_equals_the_reference(shape, per_channel):
    qn, qp, gs = 8, 7, 0.25
    x, step = _case(shape, per_channel)
    outs = {}
    for backend in ("torch", "triton"):
        xi = x.clone().requires_grad_(True)
        si = step.clone().requires_grad_(True)
        y = fake_quant(xi, si, qn, qp, gs, backend=backend)
        g = torch.linspace(-1, 1, y.numel()).reshape(y.shape)
        (y * g).sum().backward()
        outs[backend] = (y.detach(), xi.grad, si.grad)
    (y_t, gx_t, gs_t), (y_k, gx_k, gs_k) = outs["torch"], outs["triton"]
    assert torch.equal(y_k, y_t)  # bit-identical, ties to even included
    assert torch.equal(gx_k, gx_t)  # the straight-through mask, range ends clipped
    assert torch.allclose(gs_k, gs_t, rtol=1e-5, atol=1e-6)  # a sum in another order


def test_ties_round_to_even_as_torch_round():
    x = torch.tensor([0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, 6.5, -7.5])
    y = fake_quant(x, torch.tensor(1.0), 8, 7, backend="triton")
    assert torch.equal(y, torch.round(x).clamp(-8, 7))


def test_unknown_backend_and_unsupported_step_shapes():
    x = torch.randn(4, 6)
    with pytest.raises(ConfigError, match="unknown kernel backend"):
        fake_quant(x, torch.tensor(1.0), 8, 7, backend="cuda")
    with pytest.raises(ConfigError, match="one step per tensor or per first-dimension"):
        fake_quant(x, torch.ones(1, 6), 8, 7, backend="triton")


def test_an_lsq_student_trains_the_same_with_the_fused_kernels(tiny_npz, tmp_path):
    import distill_data as dd
    from distill_data.quant.student import load_student

    reports, models = {}, {}
    for k in ("torch", "triton"):
        out = tmp_path / f"{k}.pt"
        reports[k] = dd.train(str(tiny_npz), out, quant="lsq", bits="w4a4", width=4,
                              kernels=k, options={"epochs": 2}, quiet=True)  # fmt: skip
        models[k] = load_student(out)[0].state_dict()
    assert reports["torch"]["test_accuracy"] == reports["triton"]["test_accuracy"]
    for name, v in models["torch"].items():  # the step-size sums run in another order
        assert torch.allclose(v.float(), models["triton"][name].float(), atol=1e-4), name
    with pytest.raises(ConfigError, match="unknown kernels"):
        dd.train(str(tiny_npz), tmp_path / "x.pt", quant="lsq", kernels="cuda", quiet=True)


def assert_close_to_linear(got, x, w, bias=None):
    """``got`` is x·wᵀ + bias to fp32 accuracy: a sum of k terms is off by up to ~k·eps of
    the terms' magnitudes, not of the result's (an output that cancels to 0.4 from terms
    of ~100 is off by ~1e-4, and which way depends on the CPU's matmul order)."""
    x, w = x.double(), w.double()
    b = torch.zeros(w.shape[0], dtype=torch.float64) if bias is None else bias.double()
    exact = x @ w.T + b
    tol = 1e-5 * (x.abs() @ w.abs().T + b.abs()) + 1e-6
    assert ((got.double() - exact).abs() <= tol).all(), (got.double() - exact).abs().max()


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("kind", ["per_channel", "per_tensor"])
@pytest.mark.parametrize("m, n, k", [(1, 3, 5), (5, 33, 70), (17, 8, 64)])
def test_packed_linear_equals_unpack_then_linear(bits, kind, m, n, k):
    from distill_data.kernels.lowbit import packed_linear
    from distill_data.quant.pack import code_range, pack

    g = torch.Generator().manual_seed(bits * 100 + m)
    lo, hi = code_range(bits, True)
    codes = torch.randint(lo, hi + 1, (n, k), generator=g)
    codes[0, 0], codes[-1, -1] = lo, hi  # both ends of the code range
    packed = pack(codes, bits, True)
    scale = torch.rand(n if kind == "per_channel" else 1, generator=g) + 0.1
    x = torch.randn(m, k, generator=g)
    bias = torch.randn(n, generator=g)
    ref = packed_linear(x, packed, bits, n, k, scale, kind, bias, backend="torch")
    out = packed_linear(x, packed, bits, n, k, scale, kind, bias, backend="triton")
    w = codes.double() * scale.double().reshape(-1, 1)
    assert_close_to_linear(ref, x, w, bias)
    assert_close_to_linear(out, x, w, bias)  # the sum in tiles


def test_packed_conv_through_im2col_equals_conv2d():
    from distill_data.kernels.lowbit import packed_conv2d
    from distill_data.quant.pack import pack

    g = torch.Generator().manual_seed(3)
    codes = torch.randint(-8, 8, (6, 3, 3, 3), generator=g)
    scale = torch.rand(6, generator=g) + 0.1
    x = torch.randn(2, 3, 9, 7, generator=g)
    w = codes.float() * scale.view(-1, 1, 1, 1)
    want = torch.nn.functional.conv2d(x, w, None, stride=2, padding=1)
    for backend in ("torch", "triton"):
        y = packed_conv2d(x, pack(codes, 4, True), 4, (6, 3, 3, 3), scale, "per_channel",
                          stride=2, padding=1, backend=backend)  # fmt: skip
        assert torch.allclose(y, want, atol=1e-4), backend


@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (3, 40, 65), (20, 7, 128)])
def test_int8_product_is_exact(m, n, k):
    from distill_data.kernels.lowbit import int8_linear

    g = torch.Generator().manual_seed(m + n + k)
    xq = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int64).to(torch.int8)
    wq = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int64).to(torch.int8)
    xq[0, 0], wq[0, 0] = -128, -127  # the extremes
    xs, ws = torch.rand(m, generator=g) + 0.5, torch.rand(n, generator=g) + 0.5
    exact = (xq.long() @ wq.long().T).double() * xs.double()[:, None] * ws.double()[None, :]
    for backend in ("torch", "triton"):
        y = int8_linear(xq, wq, xs, ws, backend=backend)
        assert torch.allclose(y.double(), exact, rtol=1e-6), backend
    acc = int8_linear(xq, wq, torch.ones(1), torch.ones(1), backend="triton")
    assert torch.equal(acc, (xq.long() @ wq.long().T).float())  # the integer sums, exactly
    with pytest.raises(ConfigError, match="int8 codes"):
        int8_linear(xq.float(), wq, xs, ws)


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2", "fp4_e2m1"])
def test_fp_fake_quant_kernel_equals_the_reference(fmt):
    from distill_data.kernels import fp_fake_quant
    from distill_data.quant.fp import FORMATS

    spec = FORMATS[fmt]
    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, 333, generator=g) * torch.exp2(torch.randint(-10, 8, (6, 333), generator=g))
    grid = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, spec.max_value, 1e9])
    x[0, : len(grid)] = grid  # grid values, saturation
    x[1, : len(grid) - 1] = (grid[1:] + grid[:-1]) / 2  # ties
    scale = torch.rand(6, 1, generator=g) + 0.5
    scale[0] = scale[1] = 1.0
    for xs, s in ((x, scale), (x, torch.tensor(0.75))):
        ref = fp_fake_quant(xs, s, fmt, backend="torch")
        out = fp_fake_quant(xs, s, fmt, backend="triton")
        assert torch.equal(out, ref)
    xg = x.clone().requires_grad_(True)
    fp_fake_quant(xg, scale, fmt, backend="triton").sum().backward()
    assert torch.equal(xg.grad, torch.ones_like(x))


@pytest.mark.parametrize(
    "quant, bits, kind",
    [("lsq", "w4a4", "per_tensor"), ("qat", "w2a8", "per_channel"), ("qd", "w2", "bucket"),
     ("dq", "w4", "points")],
)  # fmt: skip
def test_a_shipped_student_runs_through_the_packed_kernels(tiny_npz, tmp_path, quant, bits,
                                                           kind):  # fmt: skip
    import distill_data as dd
    from distill_data.data import load_dataset
    from distill_data.quant.qat import quant_layers
    from distill_data.quant.student import load_student

    out = tmp_path / "s.pt"
    dd.train(str(tiny_npz), out, quant=quant, bits=bits, width=4, options={"epochs": 1},
             quiet=True)  # fmt: skip
    ref, _ = load_student(out)
    fast, _ = load_student(out, kernels="triton")
    layers = quant_layers(fast)
    assert all(getattr(q, "packed", None) for q in layers.values())  # every layer packs
    assert kind in {q.packed["kind"] for q in layers.values()}
    data = load_dataset(str(tiny_npz))
    x = data.normalize(data.x_test)
    with torch.no_grad():
        a, b = ref(x), fast(x)
    assert torch.allclose(a, b, atol=1e-4) and torch.equal(a.argmax(1), b.argmax(1))
    with pytest.raises(ConfigError, match="unknown kernels"):
        load_student(out, kernels="gpu")


def _affine_case(kind, bits, n, k, bucket, seed):
    """Unsigned codes with per-bucket α, β (and sorted points) over an (n, k) weight; the
    weight as the student file dequantizes it."""
    from distill_data.quant.fakequant import bucket_dequantize, nonuniform_dequantize
    from distill_data.quant.pack import pack
    from distill_data.quant.student import _bucket_codes

    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (n * k,), generator=g)
    codes[0], codes[-1] = 0, 2**bits - 1
    size = n * k if n * k <= bucket else bucket
    rows = -(-n * k // size)
    alpha = torch.rand(rows, generator=g) + 0.2
    beta = torch.randn(rows, generator=g) * 0.1
    points = torch.rand(2**bits, generator=g) * 2 - 1
    grid = _bucket_codes(codes, n * k, bucket)
    if kind == "bucket":
        w = bucket_dequantize(grid, alpha, beta, (n, k), bits)
    else:
        w = nonuniform_dequantize(grid, points, alpha, beta, (n, k))
    affine = {"alpha": alpha, "beta": beta, "bucket_size": size}
    if kind == "points":
        affine["points"] = points
    return pack(codes, bits, False), w, affine


@pytest.mark.parametrize("kind", ["bucket", "points"])
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("m, n, k, bucket", [(3, 5, 7, 8), (9, 33, 70, 256), (4, 8, 40, 1000)])
def test_bucket_and_points_weights_multiply_as_their_dequantized_weight(kind, bits, m, n, k,
                                                                        bucket):  # fmt: skip
    from distill_data.kernels.lowbit import packed_linear

    packed, w, affine = _affine_case(kind, bits, n, k, bucket, seed=bits + n)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(1))
    ref = packed_linear(x, packed, bits, n, k, None, kind, backend="torch", **affine)
    out = packed_linear(x, packed, bits, n, k, None, kind, backend="triton", **affine)
    assert torch.equal(ref, torch.nn.functional.linear(x, w))  # the same weight values
    assert_close_to_linear(out, x, w)  # the sum in tiles
    with pytest.raises(ConfigError, match="need alpha"):
        packed_linear(x, packed, bits, n, k, None, kind, backend="torch")


@pytest.mark.parametrize("kind, bits", [("per_channel", 2), ("per_tensor", 4), ("bucket", 2),
                                        ("points", 4)])  # fmt: skip
@pytest.mark.parametrize("groups", [2, 6])  # 6: depthwise, 9 codes a group (not byte-aligned)
def test_grouped_convolutions_run_from_the_packed_codes(kind, bits, groups):
    from distill_data.kernels.lowbit import packed_conv2d
    from distill_data.quant.pack import code_range, pack

    o, c, kh, kw = 6, 6 // groups, 3, 3
    g = torch.Generator().manual_seed(groups + bits)
    affine, scale = {}, None
    if kind in ("bucket", "points"):
        packed, w, affine = _affine_case(kind, bits, o, c * kh * kw, 16, seed=groups)
        w = w.view(o, c, kh, kw)
    else:
        lo, hi = code_range(bits, True)
        codes = torch.randint(lo, hi + 1, (o, c, kh, kw), generator=g)
        scale = torch.rand(o if kind == "per_channel" else 1, generator=g) + 0.1
        w = codes.float() * (scale.view(-1, 1, 1, 1) if kind == "per_channel" else scale)
        packed = pack(codes, bits, True)
    x = torch.randn(2, 6, 7, 9, generator=g)
    bias = torch.randn(o, generator=g)
    want = torch.nn.functional.conv2d(x, w, bias, stride=2, padding=1, groups=groups)
    for backend in ("torch", "triton"):
        y = packed_conv2d(x, packed, bits, (o, c, kh, kw), scale, kind, bias, stride=2,
                          padding=1, backend=backend, groups=groups, **affine)  # fmt: skip
        assert torch.allclose(y, want, atol=1e-4), backend
    with pytest.raises(ConfigError, match="channels"):
        packed_conv2d(x[:, :5], packed, bits, (o, c, kh, kw), scale, kind, groups=groups,
                      **affine)  # fmt: skip


def test_philox_in_torch_is_tritons_rand():
    import triton
    import triton.language as tl

    from distill_data.kernels.philox import philox_uniform

    @triton.jit
    def _rand(out_ptr, seed, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(out_ptr + offs, tl.rand(seed, offs), mask=offs < n)

    for seed in (0, 1, 12345, 2**31 - 2):
        n = 3000
        out = torch.empty(n)
        _rand[(triton.cdiv(n, 1024),)](out, seed, n, BLOCK=1024)
        assert torch.equal(out, philox_uniform(seed, n)), seed
    u = philox_uniform(7, 100_000)
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 3 * (1 / 12) ** 0.5 / 100_000**0.5


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("shape, bucket", [((7,), 256), ((5, 130), 256), ((4, 3, 3, 3), 16),
                                           ((3, 2049), None), ((2, 8), 1)])  # fmt: skip
def test_fused_bucket_fake_quant_is_the_reference_bit_for_bit(bits, shape, bucket):
    from distill_data.kernels import bucket_fake_quant
    from distill_data.quant.fakequant import bucket_fake_quant as reference

    g = torch.Generator().manual_seed(bits)
    w = torch.randn(shape, generator=g)
    w.view(-1)[-1] = w.view(-1)[0]  # a repeated value; and a constant bucket below
    if w.numel() >= 32:
        w.view(-1)[16:32] = 0.25
    out = bucket_fake_quant(w, bits, bucket, backend="triton")
    assert torch.equal(out, reference(w, bits, bucket))
    seeded = bucket_fake_quant(w, bits, bucket, True, torch.Generator().manual_seed(3),
                               backend="triton")  # fmt: skip
    seed = int(torch.randint(2**31 - 1, (1,), generator=torch.Generator().manual_seed(3)))
    assert torch.equal(seeded, reference(w, bits, bucket, True, seed=seed))
    x = w.clone().requires_grad_(True)
    bucket_fake_quant(x, bits, bucket, backend="triton").sum().backward()
    assert torch.equal(x.grad, torch.ones_like(w))  # straight through


def test_a_qd_student_trains_the_same_with_the_fused_kernel(tiny_npz, tmp_path):
    import distill_data as dd

    reps = {}
    for backend in ("torch", "triton"):
        out = tmp_path / f"{backend}.pt"
        reps[backend] = dd.train(str(tiny_npz), out, quant="qd", bits="w2", width=4,
                                 kernels=backend, options={"epochs": 2}, quiet=True)  # fmt: skip
    a = torch.load(tmp_path / "torch.pt", weights_only=True)["layers"]
    b = torch.load(tmp_path / "triton.pt", weights_only=True)["layers"]
    for name in a:
        assert torch.equal(a[name]["weight"]["packed"], b[name]["weight"]["packed"]), name
    assert reps["torch"]["test_accuracy"] == reps["triton"]["test_accuracy"]


def test_buckets_too_large_for_one_program_take_the_reference_with_the_same_stream():
    from distill_data.kernels import bucket_fake_quant
    from distill_data.quant.fakequant import bucket_fake_quant as reference

    w = torch.randn(300, 300, generator=torch.Generator().manual_seed(0))  # 90,000 > 2^16
    assert torch.equal(bucket_fake_quant(w, 2, None, backend="triton"), reference(w, 2, None))
    gen = torch.Generator().manual_seed(4)
    out = bucket_fake_quant(w, 2, None, True, gen, backend="triton")
    seed = int(torch.randint(2**31 - 1, (1,), generator=torch.Generator().manual_seed(4)))
    assert torch.equal(out, reference(w, 2, None, True, seed=seed))
