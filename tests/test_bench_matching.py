"""bench/matching.py --resume: a run stopped part-way continues from its checkpoint to
the images an uninterrupted run reaches, keeping the points it had evaluated."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BENCH))
    return mod


@pytest.fixture
def bench(tmp_path, tiny_npz, monkeypatch):
    """bench/matching.py writing into tmp_path, on the tiny dataset, with an evaluation
    that records the images it is given (the images are what resuming must preserve)."""
    mm = _module("matching")
    common = sys.modules["common"]
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(mm, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(mm, "ROOT", tmp_path)
    monkeypatch.setattr(mm, "DATASET", str(tiny_npz))
    monkeypatch.setattr(mm, "tune_allocator", lambda: None)
    seen: list[torch.Tensor] = []

    def evaluate(images, labels, data, ecfg, name, **kw):
        seen.append(images.clone())
        return {"mean": float(images.double().sum()), "std": 0.0, "accs": [0.0]}

    monkeypatch.setattr(mm, "evaluate_set", evaluate)

    def run(*extra: str) -> dict:
        argv = ["matching.py", "--method", "dm", "--ipc", "1", "--evals", "2", "5"]
        argv += ["--set", "width=4", "--set", "depth=1", "--set", "batch_real=8", *extra]
        monkeypatch.setattr(sys, "argv", argv)
        mm.main()
        (path,) = (tmp_path / "results").rglob("*.json")  # named after the data path
        return json.loads(path.read_text())

    return mm, run, seen


def test_a_stopped_run_resumes_to_the_uninterrupted_images(bench, tmp_path, interrupt_build):
    mm, run, seen = bench
    whole = run()
    straight = [t.clone() for t in seen]
    assert [p["iterations"] for p in whole["curve"]] == [2, 5]
    seen.clear()

    stopped = lambda: run("--resume", "--checkpoint-every", "1")  # noqa: E731
    interrupt_build(mm.GENERATORS.get("dm"), 3, stopped)
    (ckpt,) = (tmp_path / ".work" / "matching").rglob("*.ckpt.pt")
    assert len(seen) == 1 and torch.equal(seen[0], straight[0])  # the point at 2

    resumed = run("--resume", "--checkpoint-every", "1")
    assert len(seen) == 2 and torch.equal(seen[1], straight[1])  # only 5 evaluated again
    assert [p["iterations"] for p in resumed["curve"]] == [2, 5]
    assert [p["accuracy"]["mean"] for p in resumed["curve"]] == [
        p["accuracy"]["mean"] for p in whole["curve"]
    ]
    assert not ckpt.exists()  # a complete run leaves no checkpoint


def test_a_checkpoint_of_other_settings_is_refused(bench, interrupt_build):
    mm, run, _ = bench
    stopped = lambda: run("--resume", "--checkpoint-every", "1")  # noqa: E731
    interrupt_build(mm.GENERATORS.get("dm"), 3, stopped)
    with pytest.raises(SystemExit, match="another run"):
        run("--resume", "--set", "lr_img=0.5")
