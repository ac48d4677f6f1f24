"""Shared fixtures: tiny .npz datasets written into tmp_path, a CLI runner, a private
cache folder for the built-in datasets.

Everything here is small on purpose (3 classes x 6 train / 3 test images of 10x10), so
tests that train networks on it finish in well under a second each.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

K, N_TRAIN, N_TEST, SIZE = 3, 6, 3, (10, 10)


def write_npz(
    path: Path,
    *,
    channels: int = 1,
    size: tuple[int, int] = SIZE,
    classes: int = K,
    n_train: int = N_TRAIN,
    n_test: int = N_TEST,
    seed: int = 0,
) -> Path:
    """Write a tiny uint8 dataset (``n_train``/``n_test`` images per class) to ``path``.

    1-channel images are (N, H, W); 3-channel images are (N, H, W, 3). Labels are
    sorted by class so every class is present in both splits.
    """
    rng = np.random.default_rng(seed)
    shape = size if channels == 1 else (*size, channels)

    def split(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        n = per_class * classes
        x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
        return x, np.repeat(np.arange(classes), per_class).astype(np.int64)

    x_train, y_train = split(n_train)
    x_test, y_test = split(n_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny tensors run fastest on one thread; with two threads on a busy 2-core machine
    torch spends seconds per forward pass waiting for the other thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory):
    """Tests never read or write the user's cache (~/.cache/distill-data)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DISTILL_DATA_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture
def make_npz(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_npz("name.npz", channels=3, size=(12, 12), classes=4, ...)``."""

    def make(name: str = "tiny.npz", **kwargs) -> Path:
        return write_npz(tmp_path / name, **kwargs)

    return make


@pytest.fixture
def tiny_npz(make_npz) -> Path:
    """3 classes x 6 train / 3 test, 1 channel, 10x10, uint8."""
    return make_npz("tiny.npz")


@pytest.fixture
def tiny_npz_rgb(make_npz) -> Path:
    """3 classes x 6 train / 3 test, 3 channels, 10x10, uint8 (stored NHWC)."""
    return make_npz("tiny_rgb.npz", channels=3)


@pytest.fixture
def builtin_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the built-in datasets' cache at a private folder (use in tests that load one)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DISTILL_DATA_CACHE", str(cache))
    return cache


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """``run_cli("build", "--dataset", ...)`` -> ``(exit code, stdout, stderr)``.

    Calls :func:`distill_data.cli.main` in-process (so it is fast and sees monkeypatches)
    and turns ``SystemExit`` into its code; a normal return is code 0. An exception that
    escapes ``main`` is reported as the real command would show it: exit code 1 and a
    traceback on stderr.
    """
    from distill_data.cli import main

    def run(*args: object) -> tuple[int, str, str]:
        capsys.readouterr()  # drop anything printed before
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception:  # noqa: BLE001 - what a user would see: a traceback, exit 1
            out, err = capsys.readouterr()
            return 1, out, err + traceback.format_exc()
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def teacher_file(tmp_path: Path, tiny_npz: Path) -> Path:
    """A small trained BatchNorm teacher for the tiny dataset (convnet_bn, width 8)."""
    import distill_data

    path = tmp_path / "teacher.pt"
    distill_data.teacher(str(tiny_npz), path, model="convnet_bn", epochs=2, width=8, quiet=True)
    return path


@pytest.fixture
def interrupt_build(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``interrupt_build(GenCls, i, build)``: run ``build()`` with ``GenCls.step`` raising
    KeyboardInterrupt at step ``i`` (as Ctrl-C would), expect the interrupt, then restore."""

    def run(cls: type, at: int, build: Callable[[], object]) -> None:
        real_step = cls.step

        def dying(self, it):
            if it == at:
                raise KeyboardInterrupt
            return real_step(self, it)

        monkeypatch.setattr(cls, "step", dying)
        with pytest.raises(KeyboardInterrupt):
            build()
        monkeypatch.setattr(cls, "step", real_step)

    return run


@pytest.fixture
def count_steps(monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[int]]:
    """``count_steps(GenCls, build)``: run ``build()`` and return the iterations its
    ``GenCls.step`` ran, in order. A resumed build must run exactly the iterations after
    its checkpoint: ending with the uninterrupted images alone does not show that it
    resumed (a deterministic build that ignored the checkpoint and started over would
    end with them too)."""

    def run(cls: type, build: Callable[[], object]) -> list[int]:
        real_step, ran = cls.step, []

        def counting(self, it):
            ran.append(it)
            return real_step(self, it)

        monkeypatch.setattr(cls, "step", counting)
        try:
            build()
        finally:
            monkeypatch.setattr(cls, "step", real_step)
        return ran

    return run
