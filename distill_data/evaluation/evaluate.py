"""Evaluate a stored set: the protocol, optional baselines, DD-Ranking scores, a report."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from distill_data.data import RealDataset, find_dataset, load_dataset
from distill_data.dist import ONE, Dist, balance, together
from distill_data.errors import ConfigError, DataError, opt
from distill_data.evaluation.protocol import (
    EvalConfig,
    evaluate_set,
    label_mode,
    run_set,
    summarise,
    train_and_test,
)
from distill_data.evaluation.report import machine_info, now_iso, plural
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


def random_count_subset(data: RealDataset, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random real images (normalised), as class-balanced as the data allows: n // K
    per class and one more for n % K classes drawn at random; a class too small for its
    share gives the rest to classes that have images to spare."""
    g = torch.Generator().manual_seed(seed)
    pools = data.indices_per_class()
    if n > sum(len(p) for p in pools):
        raise ConfigError(f"{n} random images asked for; the training split has fewer")
    k = len(pools)
    order = torch.randperm(k, generator=g).tolist()
    want = {c: n // k + (r < n % k) for r, c in enumerate(order)}
    take = {c: min(want[c], len(pools[c])) for c in range(k)}
    short = n - sum(take.values())
    while short > 0:  # hand a small class's shortfall on, one image a class in turn
        for c in order:
            if short and take[c] < len(pools[c]):
                take[c] += 1
                short -= 1
    idx = torch.cat(
        [pools[c][torch.randperm(len(pools[c]), generator=g)[: take[c]]] for c in range(k)]
    )
    return data.normalize(data.x_train[idx]), data.y_train[idx].clone()


def random_baseline_subset(
    data: RealDataset, ipc: int, cfg: EvalConfig, run: int, count: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The random baseline's training set for evaluation run ``run``: a fresh draw per
    run, seeded apart from the runs' model seeds; ``ipc`` images per class, or for a set
    made to a total ``count`` (calibration sets) the same number of images."""
    seed = 10_000 + cfg.seed * 1000 + run
    return random_count_subset(data, count, seed) if count else random_subset(data, ipc, seed)


RELABEL = ("stored", "online")


@dataclass(frozen=True)
class EvalRequest:
    """What an evaluation trains and compares, validated before any work.

    Attributes:
        config: the protocol (model, runs, epochs, student recipe, ...).
        baselines: any of ``random`` (a random real subset at the same IPC, a fresh draw
            per run) and ``full`` (the whole training set, ``full_epochs`` epochs).
        scores: also compute DD-Ranking's LRS and ARS; implies both baselines and adds
            runs without augmentation for the synthetic set and the random subset.
        soft: train by knowledge distillation from the store's soft labels (teacher
            logits) at the store's temperature, instead of with hard labels.
        relabel: with ``soft``: ``stored`` trains on the store's logits (one vector per
            image, whatever the augmentation); ``online`` asks the teacher for the logits
            of every augmented batch (SRe2L/FKD's protocol), for the synthetic set and
            the random baseline alike.
    """

    config: EvalConfig = field(default_factory=EvalConfig)
    baselines: tuple[str, ...] = ()
    scores: bool = False
    soft: bool = False
    relabel: str = "stored"

    def __post_init__(self) -> None:
        baselines = (self.baselines,) if isinstance(self.baselines, str) else self.baselines
        if not all(isinstance(b, str) for b in baselines):
            raise ConfigError(f"baselines must be names, got {self.baselines!r}")
        unknown = sorted(set(baselines) - set(BASELINES))
        if unknown:
            raise ConfigError(
                f"unknown baseline {', '.join(unknown)}; choose from: {', '.join(BASELINES)}"
            )
        wanted = set(baselines) | ({"random", "full"} if self.scores else set())
        object.__setattr__(self, "baselines", tuple(b for b in BASELINES if b in wanted))
        if self.relabel not in RELABEL:
            raise ConfigError(f"unknown relabel mode {self.relabel!r}; choose stored or online")
        recipe = self.config.recipe
        if self.soft and self.scores:
            raise ConfigError(
                f"DD-Ranking scores are defined on hard-label training; ask for "
                f"{opt('scores', True)} without {opt('soft', True)}"
            )
        if recipe == "sre2l" and not (self.soft and self.relabel == "online"):
            raise ConfigError(
                f"{opt('recipe', 'sre2l')} distils from the teacher on every mixed batch: it "
                f"needs {opt('soft', True)}, {opt('relabel', 'online')} and "
                f"{opt('teacher', 'T.pt')}"
            )
        if recipe != "dc" and not self.soft:
            raise ConfigError(
                f"{opt('recipe', recipe)} is a soft-label recipe: it needs {opt('soft', True)}"
            )
        if recipe != "dc" and ("full" in self.baselines or self.scores):
            raise ConfigError(
                f"{opt('recipe', recipe)} is a soft-label recipe: the full-data baseline and "
                f"{opt('scores', True)} are hard-label protocols; drop them"
            )

    def check(self, synset: SyntheticSet, data: RealDataset, teacher: object | None) -> None:
        """The checks that need the store, the real data and the teacher."""
        check_compatible(synset, data)
        if teacher is not None and not self.soft:
            raise ConfigError(
                f"{opt('teacher')} is only used with {opt('soft', True)} (it relabels the "
                f"random baseline); drop it or add {opt('soft', True)}"
            )
        if self.relabel == "online" and not (self.soft and teacher is not None):
            raise ConfigError(
                f"{opt('relabel', 'online')} needs {opt('soft', True)} and {opt('teacher')} "
                "(the teacher relabels)"
            )
        if self.soft and synset.soft_labels is None:
            raise ConfigError(f"the store has no soft labels; evaluate without {opt('soft', True)}")
        if self.soft and "random" in self.baselines and teacher is None:
            raise ConfigError(
                f"{opt('soft', True)} with the random baseline needs {opt('teacher')} to give "
                "the random subset the same kind of soft labels"
            )
        ipc = store_ipc(synset, data)
        if not synset.meta.ipc:  # a set made to a size: the baseline draws that many
            if "random" in self.baselines and len(synset.labels) > sum(data.class_counts()):
                raise ConfigError(
                    f"random baseline needs {len(synset.labels)} images; data has fewer"
                )
        elif "random" in self.baselines and ipc > min(data.class_counts()):
            raise ConfigError(f"random baseline needs {ipc} images per class; data has fewer")


def store_ipc(synset: SyntheticSet, data: RealDataset) -> int:
    """Images per class of a store (for a set made by total count: its size / K)."""
    return int(synset.meta.ipc) or max(1, round(len(synset.labels) / data.num_classes))


@dataclass
class PlannedSet:
    """One row of an evaluation: what trains ``config.runs`` fresh models.

    ``draw(run)`` gives the run's ``(images, labels[, soft])`` when the set is redrawn per
    run (the random baseline); otherwise ``images``/``labels``/``soft`` are used as they
    are. ``teacher`` labels every batch online.
    """

    key: str
    title: str
    config: EvalConfig
    images: torch.Tensor
    labels: torch.Tensor
    soft: torch.Tensor | None = None
    temperature: float = 1.0
    teacher: torch.nn.Module | None = None
    epochs: int | None = None
    draw: Callable[[int], tuple[torch.Tensor, ...]] | None = None


def plan(
    request: EvalRequest, synset: SyntheticSet, data: RealDataset, teacher: object | None
) -> list[PlannedSet]:
    """The rows an evaluation trains, in report order (synthetic, baselines, no-aug)."""
    cfg = request.config
    images = _to_data_space(synset, data)
    labels = synset.labels
    ipc = store_ipc(synset, data)
    online = teacher if request.relabel == "online" else None
    temperature = float(synset.temperature or 1.0) if request.soft else 1.0
    soft = synset.soft_labels if request.soft and online is None else None

    @torch.no_grad()
    def relabel_set(x: torch.Tensor) -> torch.Tensor:
        dev = next(teacher.parameters()).device
        return torch.cat(
            [teacher.eval()(x[i : i + 256].to(dev)).cpu() for i in range(0, len(x), 256)]
        )

    count = 0 if synset.meta.ipc else len(labels)  # a set made to a size: match it

    def rnd(run: int) -> tuple[torch.Tensor, ...]:
        x, y = random_baseline_subset(data, ipc, cfg, run, count)
        return (x, y, relabel_set(x)) if request.soft and online is None else (x, y)

    rows = [PlannedSet("synthetic", "synthetic", cfg, images, labels, soft, temperature, online)]
    if "random" in request.baselines:
        rows.append(
            PlannedSet(
                "random",
                f"random {count} images" if count else f"random ipc={ipc}",
                cfg,
                images,
                labels,
                None,
                temperature,
                online,
                draw=rnd,
            )  # fmt: skip
        )
    if "full" in request.baselines:
        full_x = data.normalize(data.x_train)
        rows.append(
            PlannedSet("full", "full data", cfg, full_x, data.y_train, epochs=cfg.full_epochs)
        )
    if request.scores:
        noaug = replace(cfg, augment=False)
        rows += [
            PlannedSet(
                "synthetic_noaug", "synthetic (no aug)", noaug, images, labels, soft, temperature
            ),
            PlannedSet(
                "random_noaug",
                "random (no aug)",
                noaug,
                images,
                labels,
                None,
                temperature,
                draw=rnd,
            ),  # fmt: skip
        ]
    return rows


def evaluate(
    synset: SyntheticSet,
    data: RealDataset | str | None = None,
    request: EvalRequest | None = None,
    *,
    teacher: torch.nn.Module | None = None,
    device: str | torch.device = "cpu",
    quiet: bool = False,
    store_path: str | None = None,
    group: Dist = ONE,
) -> dict:
    """Train-from-scratch evaluation of ``synset``; returns a JSON-ready report.

    Args:
        synset: the stored set (see :func:`distill_data.store.read_store`).
        data: the real dataset (object, built-in name or path); default: the store's.
        request: what to train and compare (:class:`EvalRequest`); default: the papers'
            protocol on the set alone.
        teacher: relabels the random-subset baseline when ``request.soft`` (same soft
            labels), and every batch with ``relabel="online"``.
        group: under torchrun, the ranks share the models to train (each keeps its run
            seed, so the report equals a one-process one); every rank gets the report.
    """
    request = request or EvalRequest()
    cfg = request.config
    if data is None:
        data = _dataset_of(synset)
    if isinstance(data, str):
        data = load_dataset(data, progress=not quiet)
    request.check(synset, data, teacher)
    # (a warning, not a progress display: --quiet keeps it)
    if synset.meta.dataset_fingerprint != data.fingerprint and group.main:
        print(
            f"note: store was built from data with fingerprint {synset.meta.dataset_fingerprint},"
            f" evaluating on {data.name} ({data.fingerprint}): other images than it was "
            "built from (a changed file?)",
            file=sys.stderr,
        )
    results: dict[str, dict] = {}
    rows = plan(request, synset, data, teacher)
    if group.active:
        results = evaluate_shared(rows, data, device, quiet, group)
    for row in rows if not group.active else ():
        results[row.key] = evaluate_set(
            row.images,
            row.labels,
            data,
            row.config,
            row.title,
            epochs=row.epochs,
            device=device,
            quiet=quiet,
            resample=row.draw,
            soft=row.soft,
            temperature=row.temperature,
            teacher=row.teacher,
        )
    score_block = None
    if request.scores:
        f = {k: v["mean"] / 100.0 for k, v in results.items()}
        score_block = {
            **label_robust_score(f["synthetic"], f["random"], f["full"]),
            **augmentation_robust_score(
                f["synthetic"], f["random"], f["synthetic_noaug"], f["random_noaug"]
            ),
            "computed_from": "mean accuracies over runs, as fractions",
        }
    m = synset.meta
    online = request.relabel == "online" and teacher is not None
    temperature = float(synset.temperature or 1.0) if request.soft else 1.0
    recipe = cfg.train_recipe()
    return {
        "kind": "distill-data evaluation",
        "created": now_iso(),
        "store": {
            "path": store_path,
            "generator": m.generator,
            "ipc": m.ipc or None,  # None: a set made to a size (count)
            "count": m.count or None,
            "n_images": len(synset.labels),
            "per_class": torch.bincount(synset.labels, minlength=data.num_classes).tolist(),
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
            **{k: getattr(recipe, k) for k in ("lr", "momentum", "weight_decay", "batch_size")},
            "dsa_strategy": cfg.strategy(data),
            "labels": label_mode(request.soft, online, temperature, cfg.recipe),
            "relabel": request.relabel if request.soft else None,
            "optimizer": {"sgd": "SGD", "adamw": "AdamW"}[recipe.optimizer],
            "lr_decay": (
                f"x{recipe.decay_factor:g} at epochs*{recipe.decay_at:g}"
                if recipe.schedule == "step"
                else "cosine to 0 over the epochs"
                if recipe.schedule == "cosine"
                else "none"
            ),
            "schedule": recipe.schedule,
            "mixup": recipe.mixup,
            "cutmix": recipe.cutmix,
            "kd_t2": recipe.kd_t2,
            "train_recipe": dataclasses.asdict(recipe),
            "reported": "mean ± std over runs of the final-epoch test accuracy (percent)",
        },
        "results": results,
        "scores": score_block,
        "machine": machine_info(),
        "device": str(device),
        "processes": group.world,
    }


def evaluate_shared(
    rows: list[PlannedSet], data: RealDataset, device: Any, quiet: bool, group: Dist
) -> dict[str, dict]:
    """Every (row, run) model of the plan, shared out over the ranks (longest first to
    the least-loaded rank; cost = epochs × training images), then each row summarised
    in run order on every rank. A run's seed is its run index, as in one process."""
    jobs = [(i, r) for i, row in enumerate(rows) for r in range(row.config.runs)]

    def epochs_of(row: PlannedSet) -> int:
        return row.epochs or row.config.epochs

    costs = [float(epochs_of(rows[i]) * max(1, len(rows[i].images))) for i, _ in jobs]
    owner = balance(costs, group.world)
    mine = [job for job, o in zip(jobs, owner) if o == group.rank]

    def train_mine() -> list[tuple]:
        out = []
        total = sum(epochs_of(rows[i]) for i, _ in mine)
        desc = f"eval (rank 0 of {group.world})"
        hide = quiet or not group.main
        with tqdm(total=total, desc=desc, disable=hide, dynamic_ncols=True) as bar:
            for i, r in mine:
                row = rows[i]
                x, y, s = run_set(r, row.images, row.labels, row.soft, row.draw)
                t0 = time.perf_counter()
                acc, loss = train_and_test(x, y, data, row.config, r, epochs_of(row), device,
                                           bar, s, row.temperature, row.teacher)  # fmt: skip
                out.append((i, r, 100.0 * acc, loss, len(x), s is not None,
                            time.perf_counter() - t0))  # fmt: skip
        return out

    done = sorted(x for part in group.all_gather(together(group, train_mine)) for x in part)
    results = {}
    for i, row in enumerate(rows):
        runs = [x for x in done if x[0] == i]
        results[row.key] = summarise(
            [x[2] for x in runs],
            [x[3] for x in runs],
            row.config,
            epochs_of(row),
            runs[-1][4],
            row.temperature,
            row.teacher is not None or runs[-1][5],
            row.teacher is not None,
            sum(x[6] for x in runs),
        )
    return results


def format_report(report: dict) -> str:
    """Human-readable summary lines of a report."""
    lines = []
    s = report["store"]
    p = report["protocol"]
    size = f"ipc={s['ipc']} " if s["ipc"] else ""  # a set made to a size (count): its images
    lines.append(
        f"{s['generator']} {size}"
        f"({s['n_images']} images) on {report['dataset']['name']}:"
        f" {p['model']}, {plural(p['runs'], 'run')}, {plural(p['epochs'], 'epoch')},"
        f" DSA={p['dsa_strategy']},"
        + (f" augment={p['pipeline']}," if p.get("pipeline") else "")
        + (f" mix={p['mix']}," if p.get("mix") else "")
        + f" {p['labels']} labels"
        + (f", {p['recipe']} student recipe" if p.get("recipe", "dc") != "dc" else "")
        + (f", trained in {p['precision']}" if p.get("precision", "fp32") != "fp32" else "")
    )
    for name, r in report["results"].items():
        lines.append(
            f"  {name:<16} {r['mean']:6.2f} ± {r['std']:.2f} %   "
            f"({plural(r['runs'], 'run')} × {plural(r['epochs'], 'epoch')}, "
            f"{r['seconds']:.0f} s)"
        )
    sc = report.get("scores")
    if sc:
        lines.append(
            f"  LRS {100 * sc['lrs']:.2f}  (HLR {100 * sc['hlr']:.2f}, IOR {100 * sc['ior']:.2f})"
            f"   ARS {100 * sc['ars']:.2f}"
        )
    return "\n".join(lines)
