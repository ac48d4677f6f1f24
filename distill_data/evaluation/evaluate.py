"""Evaluate a stored set: the protocol, optional baselines, DD-Ranking scores, a report."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence

import torch

from distill_data.data import RealDataset, find_dataset, load_dataset
from distill_data.errors import ConfigError, DataError, opt
from distill_data.evaluation.protocol import (
    EvalConfig,
    evaluate_set,
    fit_settings,
    label_mode,
)
from distill_data.evaluation.report import machine_info, now_iso
from distill_data.evaluation.scores import augmentation_robust_score, label_robust_score
from distill_data.store import SyntheticSet

BASELINES = ("random", "full")


def _to_data_space(synset: SyntheticSet, data: RealDataset) -> torch.Tensor:
    """Re-normalise stored images with ``data``'s statistics if they differ."""
    if tuple(synset.meta.mean) == tuple(data.mean) and tuple(synset.meta.std) == tuple(data.std):
        return synset.images
    return data.normalize(synset.denormalized())


def check_compatible(synset: SyntheticSet, data: RealDataset) -> None:
    """Raise DataError if the stored images cannot be evaluated on ``data``."""
    shape = tuple(synset.images.shape[1:])
    want = (data.channels, *data.im_size)
    if shape != want:
        raise DataError(
            f"stored images are {shape} but dataset {data.name!r} has {want}; "
            f"evaluate on the dataset the set was built from ({opt('dataset')})"
        )
    if len(synset.meta.classes) != data.num_classes:
        raise DataError(
            f"store has {len(synset.meta.classes)} classes but dataset {data.name!r} has "
            f"{data.num_classes}"
        )


def _dataset_of(synset: SyntheticSet) -> str:
    """The dataset a store names: a built-in, a path that exists, or its recorded source."""
    return find_dataset(synset.meta.dataset, synset.meta.extra.get("dataset_source") or "")


def random_subset(data: RealDataset, ipc: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced random real subset (normalised), drawn from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.cat(
        [i[torch.randperm(len(i), generator=g)[:ipc]] for i in data.indices_per_class()]
    )
    return data.normalize(data.x_train[idx]), data.y_train[idx].clone()


def random_baseline_subset(
    data: RealDataset, ipc: int, cfg: EvalConfig, run: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The random baseline's training set for evaluation run ``run``: a fresh draw per
    run, seeded apart from the runs' model seeds."""
    return random_subset(data, ipc, seed=10_000 + cfg.seed * 1000 + run)


def evaluate(
    synset: SyntheticSet,
    data: RealDataset | str | None = None,
    config: EvalConfig | None = None,
    baselines: Sequence[str] = (),
    scores: bool = False,
    device: str | torch.device = "cpu",
    quiet: bool = False,
    store_path: str | None = None,
    soft: bool = False,
    teacher: torch.nn.Module | None = None,
    relabel: str = "stored",
) -> dict:
    """Train-from-scratch evaluation of ``synset``; returns a JSON-ready report.

    Args:
        synset: the stored set (see :func:`distill_data.store.read_store`).
        data: the real dataset (object, built-in name or path); default: the store's.
        config: protocol settings; defaults are the papers'.
        baselines: any of ``random`` (random real subset at the same IPC, a fresh draw
            per run) and ``full`` (the whole training set, ``full_epochs`` epochs).
        scores: also compute DD-Ranking's LRS and ARS; implies both baselines and adds
            runs without augmentation for the synthetic set and the random subset.
        soft: train by knowledge distillation from the store's soft labels (teacher
            logits) at the store's temperature, instead of with hard labels.
        teacher: relabels the random-subset baseline when ``soft`` (same soft labels).
        relabel: with ``soft``: ``stored`` trains on the store's logits (one vector per
            image, whatever the augmentation); ``online`` asks ``teacher`` for the logits
            of every augmented batch (SRe2L/FKD's protocol), for the synthetic set and
            the random baseline alike. Either way at the store's temperature.
    """
    cfg = config or EvalConfig()
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ConfigError(f"unknown baseline {', '.join(unknown)}; choose from: random, full")
    if data is None:
        data = _dataset_of(synset)
    if isinstance(data, str):
        data = load_dataset(data, progress=not quiet)
    check_compatible(synset, data)
    if synset.meta.dataset_fingerprint != data.fingerprint and not quiet:
        print(
            f"note: store was built from data with fingerprint {synset.meta.dataset_fingerprint},"
            f" evaluating on {data.name} ({data.fingerprint})",
            file=sys.stderr,
        )
    baselines = set(baselines) | ({"random", "full"} if scores else set())
    images = _to_data_space(synset, data)
    labels = synset.labels
    counts = torch.bincount(labels, minlength=data.num_classes)
    ipc = int(synset.meta.ipc) or max(1, round(len(labels) / data.num_classes))

    temperature = 1.0
    soft_syn = None
    if soft and scores:
        raise ConfigError(
            f"DD-Ranking scores are defined on hard-label training; ask for "
            f"{opt('scores', True)} without {opt('soft', True)}"
        )
    if "random" in baselines and ipc > min(data.class_counts()):
        raise ConfigError(f"random baseline needs {ipc} images per class; data has fewer")
    if relabel not in ("stored", "online"):
        raise ConfigError(f"unknown relabel mode {relabel!r}; choose stored or online")
    if relabel == "online" and not (soft and teacher is not None):
        raise ConfigError(
            f"{opt('relabel', 'online')} needs {opt('soft', True)} and {opt('teacher')} "
            "(the teacher relabels)"
        )
    online = teacher if relabel == "online" else None
    if cfg.recipe == "sre2l" and online is None:
        raise ConfigError(
            f"{opt('recipe', 'sre2l')} distils from the teacher on every mixed batch: it "
            f"needs {opt('soft', True)}, {opt('relabel', 'online')} and {opt('teacher', 'T.pt')}"
        )
    if cfg.recipe != "dc" and not soft:
        raise ConfigError(
            f"{opt('recipe', cfg.recipe)} is a soft-label recipe: it needs {opt('soft', True)}"
        )
    if cfg.recipe != "dc" and ({"full"} & set(baselines) or scores):
        raise ConfigError(
            f"{opt('recipe', cfg.recipe)} is a soft-label recipe: the full-data baseline and "
            f"{opt('scores', True)} are hard-label protocols; drop them"
        )
    if soft:
        if synset.soft_labels is None:
            raise ConfigError(f"the store has no soft labels; evaluate without {opt('soft', True)}")
        temperature = float(synset.temperature or 1.0)
        soft_syn = synset.soft_labels if online is None else None  # online: teacher per batch
        if "random" in baselines and teacher is None:
            raise ConfigError(
                f"{opt('soft', True)} with the random baseline needs {opt('teacher')} to give "
                "the random subset the same kind of soft labels"
            )

    @torch.no_grad()
    def relabel_set(x: torch.Tensor) -> torch.Tensor:
        dev = next(teacher.parameters()).device
        return torch.cat(
            [teacher.eval()(x[i : i + 256].to(dev)).cpu() for i in range(0, len(x), 256)]
        )

    results: dict[str, dict] = {}
    results["synthetic"] = evaluate_set(
        images,
        labels,
        data,
        cfg,
        "synthetic",
        device=device,
        quiet=quiet,
        soft=soft_syn,
        temperature=temperature,
        teacher=online,
    )

    def rnd(run: int) -> tuple[torch.Tensor, ...]:
        x, y = random_baseline_subset(data, ipc, cfg, run)
        return (x, y, relabel_set(x)) if soft and online is None else (x, y)

    if "random" in baselines:
        results["random"] = evaluate_set(
            images,
            labels,
            data,
            cfg,
            f"random ipc={ipc}",
            device=device,
            quiet=quiet,
            resample=rnd,
            temperature=temperature,
            teacher=online,
        )
    if "full" in baselines:
        x_full = data.normalize(data.x_train)
        results["full"] = evaluate_set(
            x_full,
            data.y_train,
            data,
            cfg,
            "full data",
            epochs=cfg.full_epochs,
            device=device,
            quiet=quiet,
        )
    score_block = None
    if scores:
        noaug = dataclasses.replace(cfg, augment=False)
        results["synthetic_noaug"] = evaluate_set(
            images,
            labels,
            data,
            noaug,
            "synthetic (no aug)",
            device=device,
            quiet=quiet,
            soft=soft_syn,
            temperature=temperature,
        )
        results["random_noaug"] = evaluate_set(
            images,
            labels,
            data,
            noaug,
            "random (no aug)",
            device=device,
            quiet=quiet,
            resample=rnd,
            temperature=temperature,
        )
        f = {k: v["mean"] / 100.0 for k, v in results.items()}
        score_block = {
            **label_robust_score(f["synthetic"], f["random"], f["full"]),
            **augmentation_robust_score(
                f["synthetic"], f["random"], f["synthetic_noaug"], f["random_noaug"]
            ),
            "computed_from": "mean accuracies over runs, as fractions",
        }
    m = synset.meta
    report = {
        "kind": "distill-data evaluation",
        "created": now_iso(),
        "store": {
            "path": store_path,
            "generator": m.generator,
            "ipc": m.ipc,
            "n_images": len(labels),
            "per_class": counts.tolist(),
            "iterations": m.iterations,
            "seed": m.seed,
            "config": m.config,
            "dataset": m.dataset,
            "dataset_fingerprint": m.dataset_fingerprint,
        },
        "dataset": {
            "name": data.name,
            "fingerprint": data.fingerprint,
            "train": len(data.x_train),
            "test": len(data.x_test),
            "shape": [data.channels, *data.im_size],
        },
        "protocol": {
            **dataclasses.asdict(cfg),
            "dsa_strategy": cfg.strategy(data),
            "labels": label_mode(soft, online is not None, temperature, cfg.recipe),
            "relabel": relabel if soft else None,
            **(
                {"optimizer": "SGD", "lr_decay": "x0.1 at epochs/2"}
                if cfg.recipe == "dc"
                else {
                    **fit_settings(cfg),
                    "momentum": None,
                    "optimizer": "AdamW",
                    "lr_decay": "cosine to 0 over the epochs",
                }
            ),
            "reported": "mean ± std over runs of the final-epoch test accuracy (percent)",
        },
        "results": results,
        "scores": score_block,
        "machine": machine_info(),
        "device": str(device),
    }
    return report


def format_report(report: dict) -> str:
    """Human-readable summary lines of a report."""
    lines = []
    s = report["store"]
    p = report["protocol"]
    lines.append(
        f"{s['generator']} ipc={s['ipc']} ({s['n_images']} images) on {report['dataset']['name']}:"
        f" {p['model']}, {p['runs']} runs, {p['epochs']} epochs, DSA={p['dsa_strategy']},"
        + (f" augment={p['pipeline']}," if p.get("pipeline") else "")
        + (f" mix={p['mix']}," if p.get("mix") else "")
        + f" {p['labels']} labels"
        + (f", {p['recipe']} student recipe" if p.get("recipe", "dc") != "dc" else "")
    )
    for name, r in report["results"].items():
        lines.append(
            f"  {name:<16} {r['mean']:6.2f} ± {r['std']:.2f} %   "
            f"({r['runs']} runs × {r['epochs']} epochs, {r['seconds']:.0f} s)"
        )
    sc = report.get("scores")
    if sc:
        lines.append(
            f"  LRS {100 * sc['lrs']:.2f}  (HLR {100 * sc['hlr']:.2f}, IOR {100 * sc['ior']:.2f})"
            f"   ARS {100 * sc['ars']:.2f}"
        )
    return "\n".join(lines)
