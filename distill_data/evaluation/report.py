"""Facts recorded next to every number: the machine, the software, the time."""

from __future__ import annotations

import datetime as _dt
import os
import platform

import torch

from distill_data._version import __version__


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    """nproc, CPU model, torch/python/package versions, GPU if any."""
    info = {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "distill_data": __version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def plural(n: int, noun: str) -> str:
    """``"1 run"``, ``"3 runs"``: a count and its noun for the printed summaries."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
