"""Evaluation: the train-from-scratch protocol, baselines, DD-Ranking scores (golden
values), compatibility checks, the random-subset baseline and the LR schedule.

Tiny data (3 classes x 6 train / 3 test, 10x10), ConvNet width 8, 2 epochs, 2 runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import distill_data
from distill_data.data import load_dataset
from distill_data.errors import ConfigError, DataError
from distill_data.evaluation import (
    EvalConfig,
    augmentation_robust_score,
    label_robust_score,
    random_subset,
    train_and_test,
)
from distill_data.evaluation import protocol as protocol_mod
from distill_data.store import read_store

TINY = {"width": 8, "epochs": 2, "runs": 2, "full_epochs": 2}


def squash(a: float) -> float:
    """DD-Ranking's map of a difference in [-1, 1] to [0, 1], written out."""
    return (math.exp(a) - math.exp(-1.0)) / (math.exp(1.0) - math.exp(-1.0))


@pytest.fixture
def store(tiny_npz, tmp_path):
    out = tmp_path / "set.h5"
    distill_data.build(str(tiny_npz), "random", 2, out, quiet=True)
    return out


@pytest.fixture
def data(tiny_npz):
    return load_dataset(tiny_npz)


# --------------------------------------------------------------------------- report


def test_report_structure(store, tiny_npz) -> None:
    report = distill_data.evaluate(
        store, str(tiny_npz), baselines=("random", "full"), quiet=True, **TINY
    )
    for key in ("store", "dataset", "protocol", "results", "scores", "machine"):
        assert key in report
    json.dumps(report)  # JSON-ready
    assert report["scores"] is None
    assert set(report["results"]) == {"synthetic", "random", "full"}
    for name, r in report["results"].items():
        accs = r["accs"]
        assert len(accs) == 2 and r["runs"] == 2, name
        assert all(0.0 <= a <= 100.0 for a in accs), name
        assert r["mean"] == pytest.approx(np.mean(accs), abs=1e-3)
        assert r["std"] == pytest.approx(np.std(accs), abs=1e-3)
        assert r["epochs"] == 2
    assert report["results"]["synthetic"]["n_images"] == 6
    assert report["results"]["random"]["n_images"] == 6
    assert report["results"]["full"]["n_images"] == 18
    s = report["store"]
    assert (s["generator"], s["ipc"], s["n_images"], s["per_class"]) == ("random", 2, 6, [2, 2, 2])
    assert s["path"] == str(store)
    d = report["dataset"]
    assert (d["train"], d["test"], d["shape"]) == (18, 9, [1, 10, 10])
    assert d["fingerprint"] == s["dataset_fingerprint"]
    p = report["protocol"]
    assert (p["runs"], p["epochs"], p["width"], p["model"]) == (2, 2, 8, "convnet")
    assert report["machine"]["nproc"] >= 1 and "torch" in report["machine"]


def test_same_seed_same_accuracies(store, tiny_npz) -> None:
    def run(seed: int) -> dict:  # accuracies and final test losses, the latter continuous
        r = distill_data.evaluate(store, str(tiny_npz), quiet=True, seed=seed, **TINY)
        return {k: r["results"]["synthetic"][k] for k in ("accs", "test_losses")}

    assert run(0) == run(0) != run(1)


def test_train_and_test_is_deterministic_per_run(data) -> None:
    x, y = random_subset(data, 2, seed=0)
    cfg = EvalConfig(width=8, epochs=2)
    acc, loss = train_and_test(x, y, data, cfg, run=0)
    assert (acc, loss) == train_and_test(x, y, data, cfg, run=0)
    assert 0.0 <= acc <= 1.0 and loss > 0


def test_final_epoch_accuracy_one_test_per_run(store, tiny_npz, monkeypatch) -> None:
    calls = []
    real = protocol_mod.test_metrics

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(protocol_mod, "test_metrics", counting)
    distill_data.evaluate(store, str(tiny_npz), quiet=True, **{**TINY, "epochs": 3})
    assert len(calls) == 2  # tested once per run, after the last epoch (no best-epoch pick)


def test_unknown_baseline_and_bad_protocol(store, tiny_npz) -> None:
    with pytest.raises(ConfigError, match="unknown baseline"):
        distill_data.evaluate(store, str(tiny_npz), baselines=("bogus",), quiet=True, **TINY)
    with pytest.raises(ConfigError, match="unknown setting"):
        distill_data.evaluate(store, str(tiny_npz), quiet=True, epoch=3)
    with pytest.raises(ConfigError, match="runs must be >= 1"):
        distill_data.evaluate(store, str(tiny_npz), quiet=True, runs=0)


# --------------------------------------------------------------------------- scores


def test_scores_from_report_means(store, tiny_npz) -> None:
    report = distill_data.evaluate(store, str(tiny_npz), scores=True, quiet=True, **TINY)
    res = report["results"]
    assert set(res) == {"synthetic", "random", "full", "synthetic_noaug", "random_noaug"}
    sc = report["scores"]
    assert 0.0 <= sc["lrs"] <= 1.0 and 0.0 <= sc["ars"] <= 1.0
    f = {k: v["mean"] / 100.0 for k, v in res.items()}
    lrs = label_robust_score(f["synthetic"], f["random"], f["full"])
    ars = augmentation_robust_score(
        f["synthetic"], f["random"], f["synthetic_noaug"], f["random_noaug"]
    )
    assert sc["lrs"] == pytest.approx(lrs["lrs"])
    assert sc["hlr"] == pytest.approx(f["full"] - f["synthetic"])
    assert sc["ior"] == pytest.approx(f["synthetic"] - f["random"])
    assert sc["ars"] == pytest.approx(ars["ars"])
    assert report["protocol"]["dsa_strategy"] != "none"


def test_label_robust_score_golden() -> None:
    # HLR = 0.9 - 0.8 = 0.1, IOR = 0.8 - 0.6 = 0.2, a = 0.5 * 0.2 - 0.5 * 0.1 = 0.05
    r = label_robust_score(0.8, 0.6, 0.9)
    assert r["hlr"] == pytest.approx(0.1) and r["ior"] == pytest.approx(0.2)
    assert r["lrs"] == pytest.approx(squash(0.05), abs=1e-12)
    assert r["lrs"] == pytest.approx(0.2907551740505273, abs=1e-12)
    assert r["lambda"] == 0.5
    # no better than random and as good as full data: a = 0 -> (1 - 1/e) / (e - 1/e)
    assert label_robust_score(0.5, 0.5, 0.5)["lrs"] == pytest.approx(0.26894142136999516)
    # the extremes of the map: a = -1 -> 0 and a = 1 -> 1
    assert label_robust_score(0.0, 1.0, 1.0)["lrs"] == pytest.approx(0.0, abs=1e-12)
    assert label_robust_score(1.0, 0.0, 1.0, lam=1.0)["lrs"] == pytest.approx(1.0)
    # lambda weights IOR against HLR: a = 0.25 * 0.2 - 0.75 * 0.1 = -0.025
    assert label_robust_score(0.8, 0.6, 0.9, lam=0.25)["lrs"] == pytest.approx(squash(-0.025))


def test_augmentation_robust_score_golden() -> None:
    # with aug 0.7 - 0.5 = 0.2, without 0.6 - 0.55 = 0.05, a = 0.5 * 0.2 + 0.5 * 0.05
    r = augmentation_robust_score(0.7, 0.5, 0.6, 0.55)
    assert r["with_aug_gain"] == pytest.approx(0.2)
    assert r["without_aug_gain"] == pytest.approx(0.05)
    assert r["ars"] == pytest.approx(squash(0.125), abs=1e-12)
    assert r["ars"] == pytest.approx(0.32559063760078766, abs=1e-12)
    assert augmentation_robust_score(0.4, 0.4, 0.3, 0.3)["ars"] == pytest.approx(squash(0.0))
    assert augmentation_robust_score(0.7, 0.5, 0.6, 0.55, gamma=1.0)["ars"] == pytest.approx(
        squash(0.2)
    )


# --------------------------------------------------------------------------- data checks


@pytest.mark.parametrize(
    "kwargs",
    [{"size": (12, 12)}, {"size": (10, 12)}, {"classes": 4}, {"channels": 3}],
    ids=["size", "non-square", "classes", "channels"],
)
def test_incompatible_dataset(store, make_npz, kwargs) -> None:
    other = make_npz("other.npz", **kwargs)
    why = "store has 3 classes" if "classes" in kwargs else r"stored images are \(1, 10, 10\)"
    with pytest.raises(DataError, match=why):
        distill_data.evaluate(store, str(other), quiet=True, **TINY)


def test_compatible_dataset_with_other_content_renormalises(
    store, make_npz, capsys, monkeypatch
) -> None:
    import sys

    evaluate_mod = sys.modules["distill_data.evaluation.evaluate"]  # the package's name is
    # the function
    planned = []
    real_plan = evaluate_mod.plan
    monkeypatch.setattr(
        evaluate_mod, "plan", lambda *a, **k: planned.extend(real_plan(*a, **k)) or planned
    )
    other = load_dataset(make_npz("other.npz", seed=5))
    report = distill_data.evaluate(store, other, quiet=False, **{**TINY, "runs": 1})
    out = capsys.readouterr().err  # notes go to stderr, keeping stdout for the report
    assert "note: store was built from data with fingerprint" in out
    assert report["dataset"]["fingerprint"] == other.fingerprint
    assert report["dataset"]["fingerprint"] != report["store"]["dataset_fingerprint"]
    # the networks trained on the stored pixels in the other data's normalisation
    stored = read_store(store)
    assert tuple(stored.meta.mean) != tuple(other.mean)  # the case is not vacuous
    want = other.normalize(stored.denormalized())
    assert not torch.allclose(want, stored.images)
    assert torch.allclose(planned[0].images, want)


def test_eval_uses_the_dataset_the_store_names_from_any_folder(
    store, tiny_npz, tmp_path, monkeypatch, run_cli
) -> None:
    """The store records where its data came from, so `evaluate(store)` (and
    `distill-data eval STORE` without --dataset) works from any working directory."""
    assert tiny_npz.parent == tmp_path
    monkeypatch.chdir(tmp_path)  # built from a relative path ...
    rel = Path("rel.h5")
    distill_data.build("tiny.npz", "random", 2, rel, quiet=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # ... and evaluated from another folder
    want = read_store(tmp_path / rel).meta.dataset_fingerprint
    for built in (store, tmp_path / rel):
        report = distill_data.evaluate(built, quiet=True, **{**TINY, "runs": 1})
        assert report["dataset"]["fingerprint"] == want
    code, _, err = run_cli("eval", tmp_path / rel, "--runs", 1, "--epochs", 1,
                           "--json", "r.json")  # fmt: skip
    assert code == 0, err
    assert json.loads((elsewhere / "r.json").read_text())["dataset"]["fingerprint"] == want


# --------------------------------------------------------------------------- random subset


def test_random_subset_balanced_and_deterministic(data) -> None:
    x, y = random_subset(data, 4, seed=11)
    assert torch.bincount(y, minlength=3).tolist() == [4, 4, 4]
    assert tuple(x.shape) == (12, 1, 10, 10)
    x2, y2 = random_subset(data, 4, seed=11)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = random_subset(data, 4, seed=12)
    assert not torch.equal(x, x3)
    # the images are normalised real training images, each drawn once
    pix = data.normalize(data.x_train).flatten(1)
    rows = [int(torch.nonzero((pix == r).all(1)).flatten()[0]) for r in x.flatten(1)]
    assert len(set(rows)) == 12
    assert [int(data.y_train[i]) for i in rows] == y.tolist()


# --------------------------------------------------------------------------- LR schedule


def test_lr_drops_tenfold_at_half_the_epochs(data, monkeypatch) -> None:
    seen: list[float] = []

    class RecordingSGD(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "SGD", RecordingSGD)
    x, y = random_subset(data, 6, seed=0)  # 18 images
    cfg = EvalConfig(width=8, epochs=5, batch_size=8, augment=False, lr=0.02)
    train_and_test(x, y, data, cfg, run=0)
    steps_per_epoch = 3  # ceil(18 / 8)
    assert len(seen) == 5 * steps_per_epoch
    drop = (5 // 2) * steps_per_epoch  # epochs 0 and 1 at lr, epochs 2..4 at lr / 10
    assert seen[:drop] == pytest.approx([0.02] * drop)
    assert seen[drop:] == pytest.approx([0.002] * (len(seen) - drop))


def test_a_set_made_to_a_size_is_compared_with_as_many_random_images(
    teacher_file, tiny_npz, tmp_path, run_cli
) -> None:
    from distill_data.evaluation.evaluate import random_count_subset

    calib = tmp_path / "z.h5"
    distill_data.build(None, "zeroq", None, calib, teacher=teacher_file, count=7,
                       options={"iterations": 1}, quiet=True)  # fmt: skip
    js = tmp_path / "r.json"
    code, out, err = run_cli("eval", calib, "--runs", 1, "--epochs", 1, "--set", "width=4",
                             "--baseline", "random", "--json", js, "-q")  # fmt: skip
    assert code == 0, err
    report = json.loads(js.read_text())
    assert report["store"]["ipc"] is None and report["store"]["count"] == 7
    assert report["results"]["random"]["n_images"] == 7  # not 3 classes x round(7 / 3)
    assert "zeroq (7 images) on" in out
    data = load_dataset(str(tiny_npz))
    x, y = random_count_subset(data, 7, seed=0)
    counts = sorted(torch.bincount(y, minlength=3).tolist())
    assert len(x) == 7 and counts == [2, 2, 3]  # as balanced as 7 over 3 classes allows


def test_random_count_subset_passes_a_small_class_share_on(tmp_path) -> None:
    from distill_data.evaluation.evaluate import random_count_subset

    y = np.array([0] * 2 + [1] * 10 + [2] * 10)
    x = np.zeros((len(y), 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "imb.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    data = load_dataset(str(tmp_path / "imb.npz"))
    for n, want in ((15, [2, 6, 7]), (22, [2, 10, 10])):  # class 0 has only 2 to give
        _, labels = random_count_subset(data, n, seed=0)
        assert sorted(torch.bincount(labels, minlength=3).tolist()) == want
    with pytest.raises(ConfigError, match="23 random images asked for"):
        random_count_subset(data, 23, seed=0)
