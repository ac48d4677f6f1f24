"""Shared helpers for benchmarks: timed child processes, result files, machine facts."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
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


def file_sha256(path: Path) -> str:
    """The file's sha256 (hex): which teacher file a result was made with."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def weights_sha256(path: Path) -> str:
    """sha256 of a network file's weights alone (every tensor of its state dict, by
    name): a retrained teacher can have the same weights in a file whose metadata (a
    setting added since, the training time) differs."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(
            t.view(torch.uint8).numpy().tobytes()
            if t.dim()
            else t.reshape(1).view(torch.uint8).numpy().tobytes()
        )  # fmt: skip  (bytes of any dtype, bfloat16 too)
    return h.hexdigest()


def ensure_teacher(dataset: str, name: str, cfg: dict, out: Path, device: str = "cpu") -> None:
    """Train the teacher ``out`` if it is missing, and keep the record of the file every
    benchmark uses (``teacher_{dataset}_{name}.json``) with the file's sha256, so a
    record and a file can be matched. An existing file is never retrained (every result
    made with it would silently change teacher); one without a matching record (trained
    before records carried the hash) gets one from its own metadata: accuracy and
    settings as trained, training time unknown. A record of another file is refused. A
    recorded file that is missing (``bench/.work`` stays on the machine that made it) is
    retrained: the record stands if the new weights are bitwise the recorded ones (the
    record's ``weights_sha256``; older records have the file's sha only), and is otherwise
    kept under a dated name beside the new one."""
    import distill_data as dd
    from distill_data.models import load_model

    record = RESULTS / f"teacher_{dataset}_{name}.json"
    if out.exists():
        sha = file_sha256(out)
        if record.exists():
            doc = json.loads(record.read_text())
            if doc.get("file_sha256") == sha:
                print(f"teacher {name}: {out} exists, recorded in {record.name}")
                return
            if doc.get("weights_sha256") == weights_sha256(out):  # same weights, new file
                _update_record(record, doc, file_sha256=sha)
                print(f"teacher {name}: {out} has the weights {record.name} records")
                return
            raise SystemExit(
                f"{record} describes another {name} teacher than {out}; rename it to "
                f"teacher_{dataset}_{name}_<date>.json to keep it, then rerun"
            )
        _, meta = load_model(out)
        trained = datetime.fromtimestamp(out.stat().st_mtime, timezone.utc)
        rep = {
            "teacher": str(out),
            "test_accuracy": meta["test_accuracy"],
            "train_seconds": None,
            **{k: meta[k] for k in ("dataset", "dataset_fingerprint", "input_shape")},
            "config": meta["train_config"],
            "trained": trained.isoformat(timespec="seconds"),
            "note": "recorded afterwards from the file's own metadata; "
            "its training time was not recorded",
        }
        print(f"teacher {name}: {out} exists; recording it ({rep['test_accuracy']:.2f}%)")
    else:
        rep = dd.teacher(dataset, out, quiet=True, device=device, **cfg)
        print(f"teacher {name}: {rep['test_accuracy']:.2f}% in {rep['train_seconds']:.0f} s")
        if record.exists():  # the file was lost (bench/.work is per machine): retrained
            old = json.loads(record.read_text())
            if old.get("weights_sha256", old.get("file_sha256")) in (
                weights_sha256(out),
                file_sha256(out),
            ):  # the record stands, naming the new file
                _update_record(record, old, file_sha256=file_sha256(out))
                print(f"teacher {name}: retrained bitwise to the weights {record.name} records")
                return
            kept = _keep_record(record, old)
            print(
                f"teacher {name}: retrained to another file than {record.name} recorded "
                f"(kept as {kept.name}); results made since name this one"
            )
    write_result(
        record.stem,
        {
            "benchmark": "teacher",
            **rep,
            "file_sha256": file_sha256(out),
            "weights_sha256": weights_sha256(out),
        },  # fmt: skip
    )


def _update_record(record: Path, doc: dict, **changes) -> None:
    """Rewrite a record with ``changes`` (its date and machine stay: they say when and
    where the teacher was trained)."""
    tmp = record.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**doc, **changes}, indent=2) + "\n")
    os.replace(tmp, record)


def _keep_record(record: Path, doc: dict) -> Path:
    """Rename the record of a teacher that is being replaced to ``<stem>_<trained date>``
    (a free name), so the tables made with it keep their teacher."""
    day = str(doc.get("trained") or doc.get("date") or "undated")[:10]
    kept = record.with_name(f"{record.stem}_{day}.json")
    n = 2
    while kept.exists():
        kept = record.with_name(f"{record.stem}_{day}-{n}.json")
        n += 1
    os.replace(record, kept)
    return kept
