"""Shared helpers for benchmarks: timed child processes, result files, machine facts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from distill_data.evaluation.report import machine_info, now_iso

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"


def run_measured(args: list[str]) -> dict:
    """Run ``python -m distill_data.cli ARGS`` in a child; wall seconds and peak RSS (MiB)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "distill_data.cli", *args])
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"child failed with exit code {code}: {' '.join(args)}")
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def write_result(name: str, payload: dict) -> Path:
    """Write ``bench/results/NAME.json`` with date and machine facts added."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    doc = {"date": now_iso(), "machine": machine_info(), **payload}
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}", flush=True)
    return out
