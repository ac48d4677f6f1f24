"""The CPU allocator setting (distill_data.runtime), checked in fresh interpreters."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
PROBE = "import distill_data as dd; print(dd.tune_allocator(), dd.tune_allocator())"


def _run(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "DISTILL_DATA_MALLOC"}
    if env_value is not None:
        env["DISTILL_DATA_MALLOC"] = env_value
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True
    )
    return out.stdout.strip()


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_tune_allocator_applies_once_on_glibc() -> None:
    assert _run(None) == "True True"


def test_tune_allocator_can_be_switched_off() -> None:
    assert _run("0") == "False False"


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_large_tensors_still_correct_after_tuning() -> None:
    """Reused heap pages must not leak old values into fresh tensors' results."""
    code = (
        "import torch, distill_data as dd; dd.tune_allocator()\n"
        "for i in range(3):\n"
        "    x = torch.full((64, 1024, 1024), float(i))\n"
        "    assert float(x.sum()) == i * x.numel(), i\n"
        "    del x\n"
        "z = torch.zeros(64, 1024, 1024); assert float(z.abs().sum()) == 0.0\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.strip() == "ok"
