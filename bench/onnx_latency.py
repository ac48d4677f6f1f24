"""ONNX export of a quantized student: top-1 and CPU latency in ONNX Runtime, QDQ
against the float ONNX model of the same architecture.

A float network is trained on the real training split (``distill_data.api.train``,
``quant="none"``, 3 epochs) and a ``qat`` student is fine-tuned from it (``init=`` that
file, 2 epochs at lr 0.005); or pass your own with ``--float`` / ``--student``. Both are exported
(:mod:`distill_data.quant.onnx_export`) and run with ONNX Runtime on the CPU, one
intra-op thread:

* top-1 on the test split: torch float, torch fake-quant student, ORT float, and the
  ORT QDQ model under three optimisation settings: ``none`` (the graph as written, the
  setting the tests hold equal to torch), ``float`` (every float optimisation, no QDQ
  fusion) and ``all`` (ORT's default: QDQ groups fused into integer kernels such as
  QLinearConv); with the agreement of each with the torch student's top-1 and the
  largest logit difference;
* latency per image (median over repeats) at batch 1 and batch 256, QDQ under each
  setting against the float ONNX model (ORT's default optimisations) and the torch
  models (one thread).

    python bench/onnx_latency.py                       # convnet_bn, qat w8a8 (~3 min)
    python bench/onnx_latency.py --model resnet
    python bench/onnx_latency.py --student S.pt --float F.pt --tag _mine
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, write_result  # noqa: E402

import distill_data as dd  # noqa: E402
from distill_data.data import load_dataset  # noqa: E402
from distill_data.models import load_model  # noqa: E402
from distill_data.quant.onnx_export import (  # noqa: E402
    OPTIMIZATIONS,
    export_float_onnx,
    export_onnx,
    onnx_node_counts,
    ort_logits,
    ort_session,
)
from distill_data.quant.student import load_student  # noqa: E402

WORK = ROOT / ".work" / "onnx"


def train(args: argparse.Namespace) -> tuple[Path, Path, list[str]]:
    """The float network and the qat student (trained into WORK unless given or there
    already), and the names of those trained by this call."""
    WORK.mkdir(parents=True, exist_ok=True)
    trained = []
    float_path = Path(args.float) if args.float else WORK / f"{args.model}_float.pt"
    if not args.float and not float_path.exists():
        trained.append("float")
        dd.train(
            args.dataset,
            float_path,
            model=args.model,
            quant="none",
            seed=0,
            options={"epochs": args.float_epochs},
            quiet=True,
        )
    student_path = Path(args.student) if args.student else WORK / f"{args.model}_qat_{args.bits}.pt"
    if not args.student and not student_path.exists():
        trained.append("student")
        dd.train(
            args.dataset,
            student_path,
            model=args.model,
            quant="qat",
            bits=args.bits,
            init=str(float_path),
            seed=0,
            options={"epochs": args.qat_epochs, "lr": args.qat_lr},
            quiet=True,
        )
    return float_path, student_path, trained


def per_image_ms(run, x: torch.Tensor, batch: int, repeats: int) -> float:
    """Median over ``repeats`` of the time to push ``batch`` images through, per image (ms)."""
    xb = x[:batch].contiguous()
    run(xb)  # warm up (ORT allocations, torch's first-call dispatch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(xb)
        times.append(time.perf_counter() - t0)
    return round(1000 * statistics.median(times) / batch, 4)


def pct(mask: torch.Tensor) -> float:
    return round(100.0 * float(mask.float().mean()), 2)


def top1(logits: torch.Tensor, y: torch.Tensor) -> float:
    return pct(logits.argmax(1) == y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--model", default="convnet_bn")
    ap.add_argument("--bits", default="w8a8")
    ap.add_argument("--float-epochs", type=int, default=3)
    ap.add_argument("--qat-epochs", type=int, default=2)
    # a fine-tune: the student recipe's lr 0.05 (for training from scratch) wrecks the
    # trained ResNet within an epoch, quantized (10 %) or not (95.5 -> 85 %)
    ap.add_argument("--qat-lr", type=float, default=0.005)
    ap.add_argument("--student", default=None, help="a student file (skip training)")
    ap.add_argument("--float", default=None, help="the float network file (skip training)")
    ap.add_argument("--repeats-1", type=int, default=200, help="batch-1 repeats")
    ap.add_argument("--repeats-256", type=int, default=15, help="batch-256 repeats")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    float_path, student_path, trained = train(args)
    train_s = time.perf_counter() - t0
    data = load_dataset(args.dataset, progress=False)
    x = data.normalize(data.x_test).float().contiguous()
    y = data.y_test

    fmodel, _ = load_model(float_path)
    smodel, payload = load_student(student_path)
    fmodel.eval()
    with torch.no_grad():
        f_logits = torch.cat([fmodel(x[i : i + 500]) for i in range(0, len(x), 500)])
        s_logits = torch.cat([smodel(x[i : i + 500]) for i in range(0, len(x), 500)])

    stem = f"{args.model}_qat_{args.bits}{args.tag}"
    qdq_file, float_file = WORK / f"{stem}.onnx", WORK / f"{stem}_float.onnx"
    WORK.mkdir(parents=True, exist_ok=True)
    export = export_onnx(student_path, qdq_file)
    export_float_onnx(float_path, float_file)

    accuracy = {"torch_float": top1(f_logits, y), "torch_fake_quant": top1(s_logits, y)}
    fidelity = {}
    sessions = {f"ort_qdq_{o}": ort_session(qdq_file, optimization=o) for o in OPTIMIZATIONS}
    sessions["ort_float"] = ort_session(float_file, optimization="all")
    for name, sess in sessions.items():
        logits = ort_logits(sess, x)
        accuracy[name] = top1(logits, y)
        ref = f_logits if name == "ort_float" else s_logits
        fidelity[name] = {
            "top1_agreement_pct": pct(logits.argmax(1) == ref.argmax(1)),
            "max_abs_logit_diff": float((logits - ref).abs().max()),
            "rows_differing_pct": pct((logits - ref).abs().amax(1) > 1e-5),
        }

    latency: dict[str, dict] = {}
    runners = {
        name: (lambda xb, s=sess: ort_logits(s, xb, batch_size=xb.shape[0]))
        for name, sess in sessions.items()
    }

    def torch_runner(model):
        def run(xb):
            with torch.no_grad():
                return model(xb)

        return run

    runners["torch_float"] = torch_runner(fmodel)
    runners["torch_fake_quant"] = torch_runner(smodel)
    for name, run in runners.items():
        latency[name] = {
            "batch1_ms_per_image": per_image_ms(run, x, 1, args.repeats_1),
            "batch256_ms_per_image": per_image_ms(run, x, 256, args.repeats_256),
        }
        print(name, latency[name], accuracy[name], flush=True)

    import onnxruntime

    result = {
        "benchmark": "onnx-latency",
        "dataset": args.dataset,
        "model": args.model,
        "quant": payload["spec"],
        "float_file": str(float_path),
        "student_file": str(student_path),
        "trained_now": trained,
        "train_seconds": round(train_s, 1),
        "float_epochs": load_model(float_path)[1].get("train_recipe", {}).get("epochs"),
        "student_epochs": payload.get("meta", {}).get("train_recipe", {}).get("epochs"),
        "student_lr": payload.get("meta", {}).get("train_recipe", {}).get("lr"),
        "float_test_accuracy_at_training": load_model(float_path)[1].get("test_accuracy"),
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "threads": 1,
        "test_images": len(y),
        "export": {
            "opset": export["opset"],
            "qdq_bytes": export["bytes"],
            "float_bytes": float_file.stat().st_size,
            "qdq_layers": export["qdq_layers"],
            "float_layers": export["float_layers"],
            "qdq_nodes": onnx_node_counts(qdq_file),
        },
        "accuracy": accuracy,
        "fidelity": fidelity,
        "latency": latency,
        "speedup_vs_ort_float": {
            f"{k}_{b}": round(latency["ort_float"][b] / latency[k][b], 3)
            for k in latency
            if k.startswith("ort_qdq")
            for b in ("batch1_ms_per_image", "batch256_ms_per_image")
        },
        "notes": "latency: median over repeats, one intra-op thread, per image; the CPU was "
        "shared with other jobs, so compare rows of one file rather than across files",
    }
    write_result(f"onnx_{args.dataset}_{stem}", result)


if __name__ == "__main__":
    main()
