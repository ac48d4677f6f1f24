"""Shared helpers for benchmarks: timed child processes, result files, machine facts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distill_data.evaluation.report import machine_info, now_iso

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
#: the layout of bench/results/*.json. Raise it when a benchmark changes what a field
#: means or stops writing one make_table reads, and add the step that converts older
#: files to bench/upgrade_results.py; make_table reads only files at this version.
SCHEMA_VERSION = 1


_CHILD = """
import os, sys
from distill_data.cli import main
try:
    main(sys.argv[1:])
finally:
    with open('/proc/self/status') as f:
        kb = next(int(l.split()[1]) for l in f if l.startswith('VmHWM'))
    with open(os.environ['DD_BENCH_PEAK_FILE'], 'w') as f:
        f.write(str(kb))
"""


def peak_rss_mib() -> float:
    """This process's peak resident set size (VmHWM), in MiB.

    VmHWM belongs to the current address space, so unlike ``ru_maxrss`` it does not
    include memory the parent held when it forked us.
    """
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    return round(kb / 1024, 1)


def reset_peak_rss() -> None:
    """Restart this process's VmHWM at its current RSS (Linux ``clear_refs`` 5), so that
    the next :func:`peak_rss_mib` covers only what runs after this call."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def run_measured(args: list[str]) -> dict:
    """Run ``distill-data ARGS`` in a child; wall seconds and the child's peak RSS (MiB)."""
    with tempfile.NamedTemporaryFile(suffix=".peak") as peak:
        env = {**os.environ, "DD_BENCH_PEAK_FILE": peak.name}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _CHILD, *args], env=env)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"child failed with exit code {proc.returncode}: {' '.join(args)}")
        kb = int(Path(peak.name).read_text())
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(kb / 1024, 1)}


def write_result(name: str, payload: dict) -> Path:
    """Write ``bench/results/NAME.json`` with the schema version, date and machine facts
    added."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    doc = {
        "schema_version": SCHEMA_VERSION,
        "date": now_iso(),
        "machine": machine_info(),
        **payload,
    }
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}", flush=True)
    return out
