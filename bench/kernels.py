"""GPU benchmark of the fused kernels (distill_data/kernels) against their torch
references: fused LSQ fake quantization forward + backward on a 4096 × 4096 weight (one
step per output channel) and a 256 × 128 × 32 × 32 activation (one step), median
milliseconds and peak CUDA memory of each, and ``qd``'s bucket fake quantization
(deterministic and stochastic rounding); one JSON file in bench/results/.

    python bench/kernels.py            # needs a CUDA device and triton

The packed weight-only products (a 4096 × 4096 weight as 4-bit per-channel codes and
as 2-bit ``qd`` buckets of 256, times 1, 16, 128 and 1024 rows) and the int8 × int8 product run
against their references (unpack + dequantize + matmul; int64 matmul for int8) in a
second table: milliseconds, peak extra memory, and the weight bytes each reads.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

from distill_data.kernels import bucket_fake_quant, fake_quant, triton_available  # noqa: E402
from distill_data.quant.fakequant import lsq_grad_scale  # noqa: E402

CASES = {
    "weight 4096x4096, per-channel step": ((4096, 4096), "channel"),
    "activation 256x128x32x32, per-tensor step": ((256, 128, 32, 32), "tensor"),
}


def _time(fn, repeats: int = 20) -> tuple[float, float]:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), (torch.cuda.max_memory_allocated() - base) / 2**20


def main() -> None:
    if not (torch.cuda.is_available() and triton_available()):
        raise SystemExit("bench/kernels.py needs a CUDA device and triton")
    dev = torch.device("cuda")
    rows = []
    for name, (shape, kind) in CASES.items():
        x = torch.randn(shape, device=dev, requires_grad=True)
        steps = (shape[0],) + (1,) * (len(shape) - 1) if kind == "channel" else ()
        step = torch.full(steps, 0.05, device=dev, requires_grad=True)
        g = lsq_grad_scale(x.numel(), 7)
        grad = torch.randn(shape, device=dev)
        row = {"case": name, "shape": list(shape), "step": kind}
        for backend in ("torch", "triton"):

            def run(b=backend, x=x, step=step, g=g, grad=grad):
                x.grad = step.grad = None
                fake_quant(x, step, 8, 7, g, backend=b).backward(grad)

            ms, mib = _time(run)
            row[backend] = {"ms_fwd_bwd": round(ms, 4), "peak_extra_mib": round(mib, 1)}
        row["speedup"] = round(row["torch"]["ms_fwd_bwd"] / row["triton"]["ms_fwd_bwd"], 2)
        print(row, flush=True)
        rows.append(row)
    for stochastic in (False, True):  # qd: Polino's buckets of 256 at 2 bits
        w = torch.randn(4096, 4096, device=dev, requires_grad=True)
        gen = torch.Generator(device=dev).manual_seed(0)
        row = {"case": "qd bucket fake quant 4096x4096, w2, buckets of 256"
               + (", stochastic" if stochastic else ""), "shape": [4096, 4096]}  # fmt: skip
        for backend in ("torch", "triton"):

            def run(b=backend, w=w, st=stochastic, g=gen if stochastic else None):
                w.grad = None
                bucket_fake_quant(w, 2, 256, st, g, backend=b).sum().backward()

            ms, mib = _time(run)
            row[backend] = {"ms_fwd_bwd": round(ms, 4), "peak_extra_mib": round(mib, 1)}
        row["speedup"] = round(row["torch"]["ms_fwd_bwd"] / row["triton"]["ms_fwd_bwd"], 2)
        print(row, flush=True)
        rows.append(row)
    write_result(
        "kernels_fakequant_gpu",
        {"benchmark": "kernels", "device": torch.cuda.get_device_name(), "rows": rows},
    )
    write_result(
        "kernels_student_gpu",
        {"benchmark": "kernels-student", "device": torch.cuda.get_device_name(),
         "rows": student_rows(dev)},
    )  # fmt: skip
    write_result(
        "kernels_lowbit_gpu",
        {"benchmark": "kernels-lowbit", "device": torch.cuda.get_device_name(),
         "rows": lowbit_rows(dev)},
    )  # fmt: skip


def student_rows(dev: torch.device) -> list[dict]:
    """A student epoch with the fused kernels against the torch reference (``lsq`` W4A4
    and ``qd`` W2, ConvNet-BN width 32 on mnist5k, 2 epochs each; seconds per epoch and
    test accuracy), and the shipped ``lsq`` student's inference throughput (images per
    second over the test split, batches of 256) with the packed products, the
    dequantized weights and the float network."""
    import tempfile

    import distill_data as dd
    from distill_data.data import load_dataset
    from distill_data.models import load_model
    from distill_data.quant.student import load_student

    rows = []
    folder = Path(tempfile.mkdtemp())
    for quant, bits in (("lsq", "w4a4"), ("qd", "w2")):
        row = {"case": f"{quant} {bits} student epoch (convnet_bn, width 32, mnist5k)"}
        for backend in ("torch", "triton"):
            rep = dd.train("mnist5k", folder / f"{quant}_{backend}.pt", quant=quant, bits=bits,
                           width=32, kernels=backend, device="cuda",
                           options={"epochs": 2}, quiet=True, force=True)  # fmt: skip
            row[backend] = {"s_per_epoch": rep["seconds_per_epoch"],
                            "test_accuracy": rep["test_accuracy"]}  # fmt: skip
        row["speedup"] = round(row["torch"]["s_per_epoch"] / row["triton"]["s_per_epoch"], 2)
        print(row, flush=True)
        rows.append(row)
    data = load_dataset("mnist5k")
    x = data.normalize(data.x_test).to(dev)
    dd.train("mnist5k", folder / "float.pt", width=32, device="cuda", options={"epochs": 1},
             quiet=True, force=True)  # fmt: skip
    nets = {
        "packed (triton)": load_student(folder / "lsq_triton.pt", kernels="triton")[0],
        "dequantized (torch)": load_student(folder / "lsq_triton.pt", kernels="torch")[0],
        "float network": load_model(folder / "float.pt")[0].eval(),
    }
    row = {"case": "shipped lsq w4a4 student, test-split inference, batches of 256"}
    for name, net in nets.items():
        net = net.to(dev)

        def infer(net=net):
            with torch.no_grad():
                for i in range(0, len(x), 256):
                    net(x[i : i + 256])

        ms, mib = _time(infer, repeats=10)
        row[name] = {"images_per_s": round(len(x) / (ms / 1000)), "peak_extra_mib": round(mib, 1)}
    print(row, flush=True)
    rows.append(row)
    return rows


def lowbit_rows(dev: torch.device) -> list[dict]:
    """The packed products against their references, per case and batch of rows."""
    from distill_data.kernels.lowbit import int8_linear, packed_linear
    from distill_data.quant.pack import pack

    n = k = 4096
    g = torch.Generator().manual_seed(0)
    int4 = pack(torch.randint(-8, 8, (n, k), generator=g), 4, True).to(dev)
    scale = (torch.rand(n, generator=g) + 0.5).to(dev) / 100
    int2 = pack(torch.randint(0, 4, (n * k,), generator=g), 2, False).to(dev)
    buckets = n * k // 256
    affine = {"alpha": torch.rand(buckets, device=dev), "beta": torch.randn(buckets, device=dev),
              "bucket_size": 256}  # fmt: skip
    wq = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8).to(dev)
    rows = []
    for m in (1, 16, 128, 1024):
        x = torch.randn(m, k, device=dev)
        xq = torch.randint(-127, 128, (m, k), dtype=torch.int8, device=dev)
        xs, ws = torch.rand(m, device=dev), torch.rand(n, device=dev)
        cases = {
            "int4 per-channel": (
                lambda b, x=x: packed_linear(x, int4, 4, n, k, scale, "per_channel", backend=b),
                int4.numel(),
            ),  # fmt: skip
            "int2 qd buckets of 256": (
                lambda b, x=x: packed_linear(x, int2, 2, n, k, None, "bucket", backend=b, **affine),
                int2.numel(),
            ),  # fmt: skip
            "int8 x int8": (
                lambda b, xq=xq, xs=xs, ws=ws: int8_linear(xq, wq, xs, ws, backend=b),
                wq.numel(),
            ),  # fmt: skip
        }
        for name, (fn, nbytes) in cases.items():
            row = {"case": name, "m": m, "n": n, "k": k, "weight_bytes": nbytes}
            for backend in ("torch", "triton"):
                with torch.no_grad():
                    ms, mib = _time(lambda fn=fn, b=backend: fn(b))
                row[backend] = {"ms": round(ms, 4), "peak_extra_mib": round(mib, 1)}
            row["speedup"] = round(row["torch"]["ms"] / row["triton"]["ms"], 2)
            print(row, flush=True)
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
