"""GPU benchmark of the fused kernels (distill_data/kernels) against their torch
references: fused LSQ fake quantization forward + backward on a 4096 × 4096 weight (one
step per output channel) and a 256 × 128 × 32 × 32 activation (one step), median
milliseconds and peak CUDA memory of each; one JSON file in bench/results/.

    python bench/kernels.py            # needs a CUDA device and triton

Only the fake-quantization kernels exist so far; the packed int4/int2 and int8 products
of issue 17 come with their own rows.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

from distill_data.kernels import fake_quant, triton_available  # noqa: E402
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
    write_result(
        "kernels_fakequant_gpu",
        {"benchmark": "kernels", "device": torch.cuda.get_device_name(), "rows": rows},
    )


if __name__ == "__main__":
    main()
