"""distill_data.runtime: the CPU allocator setting (checked in fresh interpreters) and the
batched host-to-device transfer."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from distill_data.runtime import to_device

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
PROBE = (
    "import distill_data as dd; from distill_data.runtime import allocator_tuned as t\n"
    "print(t(), dd.tune_allocator(), t(), dd.tune_allocator())"
)


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
    # not tuned at import; applied by the first call, which the second finds done
    assert _run(None) == "False True True True"


def test_tune_allocator_can_be_switched_off() -> None:
    assert _run("0") == "False False False False"


def _mixed() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(3, 4, generator=g),
        torch.randint(0, 9, (5,), generator=g),
        torch.rand(7, generator=g) < 0.5,
        torch.randn(2, 1, 3, generator=g),
        torch.randint(0, 9, (2, 2), generator=g),
    ]


def test_to_device_on_cpu_returns_the_same_values() -> None:
    src = _mixed()
    out = to_device(src, torch.device("cpu"))
    assert len(out) == len(src)
    for a, b in zip(src, out):
        assert b.device.type == "cpu" and b.dtype == a.dtype and torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_device_packs_per_dtype_and_keeps_values() -> None:
    src = _mixed()
    out = to_device(src, torch.device("cuda"))
    for a, b in zip(src, out):
        assert b.device.type == "cuda" and b.dtype == a.dtype and b.shape == a.shape
        assert torch.equal(a, b.cpu())
    # one device buffer per dtype: the two float tensors share storage
    assert out[0].untyped_storage().data_ptr() == out[3].untyped_storage().data_ptr()
