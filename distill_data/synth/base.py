"""The generator base class and the one build loop every generator runs through.

A generator owns its state (synthetic pixels, optimisers, a ``torch.Generator``) and
exposes ``setup`` (fresh start), ``step`` (one iteration), ``result`` and
``state_dict``/``load_state_dict``. :func:`run_generator` drives it: progress bar,
periodic atomic checkpoints, resume, and the final atomic HDF5 write. Because every
random draw goes through the generator's own ``torch.Generator`` (whose state is in
the checkpoint), a resumed build ends with the same result as an uninterrupted one.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from distill_data.config import config_to_dict, require
from distill_data.data import ImageSpace, RealDataset
from distill_data.dist import ONE, Dist, first_line, together
from distill_data.errors import ConfigError, DivergedError, StoreError, opt, setting
from distill_data.registry import Registry
from distill_data.store import (
    StoreMeta,
    SyntheticSet,
    checkpoint_path_for,
    load_checkpoint,
    save_checkpoint,
    write_store,
)

GENERATORS: Registry[type[Generator]] = Registry("method")


@dataclass(frozen=True)
class GeneratorConfig:
    """Settings every generator has.

    Attributes:
        iterations: optimisation steps (0 for selection methods that do not iterate).
        checkpoint_every: write a resumable checkpoint every this many iterations.
    """

    iterations: int = 0
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        require(self.iterations >= 0, f"iterations must be >= 0, got {self.iterations}")
        require(self.checkpoint_every >= 1, "checkpoint_every must be >= 1")


class Generator(abc.ABC):
    """Base class: one subclass per method, registered in :data:`GENERATORS`.

    Subclasses set ``Config`` (a frozen dataclass deriving from GeneratorConfig whose
    defaults are the paper's) and implement :meth:`setup` and :meth:`result`; iterative
    methods also implement :meth:`step` and extend the state dict.
    """

    Config: ClassVar[type[GeneratorConfig]] = GeneratorConfig
    #: True when the method draws ``ipc`` real images per class (IPC is bounded by data).
    samples_real: ClassVar[bool] = True
    #: True when the method optimises over ``iterations`` steps (False: one-shot selection).
    iterative: ClassVar[bool] = False
    #: True when the method needs real images; False: a DataSpec (e.g. from a teacher) will do.
    needs_real: ClassVar[bool] = True
    #: True when the method needs a trained network (``--teacher``).
    needs_teacher: ClassVar[bool] = False
    #: True when the method can make a total number of images (``--count``), not per class.
    supports_count: ClassVar[bool] = False
    #: Teachers the method needs at least (ensemble methods: more than one).
    min_teachers: ClassVar[int] = 1
    #: How the work splits over torchrun ranks: ``class`` (each rank owns a block of
    #: classes) or ``batch`` (each rank owns a block of independent batches).
    shard_by: ClassVar[str] = "class"
    #: ``result()`` rows are stored grouped by class (a stable sort of the gathered
    #: rows by label restores the one-process order); False: concatenation does.
    sorted_by_class: ClassVar[bool] = False
    #: ``extra_meta`` keys whose lists are per-rank parts, concatenated in rank order.
    sharded_meta: ClassVar[tuple[str, ...]] = ()
    #: Settings that may differ on ``--resume`` (they do not change the steps already
    #: taken): more ``iterations`` continue the run; the rest only cap memory or layout.
    resume_free: ClassVar[tuple[str, ...]] = (
        "iterations",
        "checkpoint_every",
        "real_chunk",
        "channels_last",
        "cache_dir",
    )

    def __init__(
        self,
        config: GeneratorConfig,
        data: ImageSpace,
        ipc: int,
        seed: int = 0,
        device: str | torch.device = "cpu",
        teacher: nn.Module | None = None,
        count: int | None = None,
        teachers: list[nn.Module] | None = None,
        dist: Dist = ONE,
    ) -> None:
        self.config = config
        #: this process's place among torchrun ranks (one process: rank 0 of 1)
        self.dist = dist
        self.data = data
        self.ipc = ipc
        #: images to make: ``count`` when given (ipc is then 0), else ipc per class
        self.n_images = count if count is not None else ipc * data.num_classes
        self.teacher = teacher
        #: every teacher given (ensemble methods); ``teacher`` is the first
        self.teachers = teachers or ([teacher] if teacher is not None else [])
        self.seed = seed
        self.device = torch.device(device)
        self.rng = torch.Generator().manual_seed(seed)
        #: set by the build loop; generators with slow set-up show progress unless quiet
        self.quiet = True

    @classmethod
    def check_ipc(cls, data: ImageSpace, ipc: int) -> None:
        """Raise ConfigError if ``ipc`` cannot be supplied by ``data``."""
        if ipc < 1:
            raise ConfigError(f"ipc must be >= 1, got {ipc}")
        if cls.samples_real and isinstance(data, RealDataset):
            counts = data.class_counts()
            worst = min(range(len(counts)), key=counts.__getitem__)
            if ipc > counts[worst]:
                raise ConfigError(
                    f"ipc {ipc} is more than class {data.classes[worst]!r} of {data.name} "
                    f"holds ({counts[worst]} training images); use {opt('ipc', counts[worst])} "
                    "or less"
                )

    @classmethod
    def check_size(cls, data: ImageSpace, n_images: int) -> None:
        """Refuse a set that this machine's memory cannot hold (ConfigError), before any
        work: the finished set is assembled in host memory and written from there."""
        c, (h, w) = data.channels, data.im_size
        per_image = 4 * c * h * w
        need = 2 * n_images * per_image  # the batches, and the set they are joined into
        free = available_memory()
        if free is not None and need > free:
            raise ConfigError(
                f"{n_images:,} images of {c}x{h}x{w} need about {_bytes(need)} of memory "
                f"to assemble, but {_bytes(free)} is available here; at most about "
                f"{free // (2 * per_image):,} fit"
            )

    @classmethod
    def check_config(cls, config: GeneratorConfig) -> None:
        """Raise ConfigError for settings this method cannot honour."""
        if not cls.iterative and config.iterations > 0:
            raise ConfigError(
                "this method selects real images in one pass and does not iterate; "
                f"drop {opt('iterations')}"
            )

    # -- lifecycle -------------------------------------------------------------------
    @abc.abstractmethod
    def setup(self) -> None:
        """Create the initial state (fresh start). May draw from ``self.rng``."""

    def notes(self) -> list[str]:
        """Lines worth telling the user before a build (e.g. a setting that does not suit
        the data); shown by the CLI, never an error."""
        return []

    def step(self, iteration: int) -> float:
        """Run one iteration and return its loss (only called when ``iterative``)."""
        raise TypeError(f"{type(self).__name__} does not iterate")

    @abc.abstractmethod
    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(images, labels, soft_labels)``; images normalised, on the CPU."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue after a restart (besides ``self.rng``)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""

    def state_template(self, state: dict[str, Any]) -> dict[str, Any]:
        """The structure (keys, types, tensor shapes) a checkpoint's ``state`` must have
        to be loaded into this freshly set-up generator; resuming checks it first, so a
        damaged or hand-edited checkpoint is refused with the place that differs.
        Generators whose state changes shape as the build goes on override this (raise
        ValueError for a state that fits no point of the build)."""
        return self.state_dict()

    def total_steps(self) -> int:
        """Number of :meth:`step` calls this rank makes (default: ``config.iterations``)."""
        return self.config.iterations

    def build_steps(self) -> int:
        """Steps the whole build makes over all ranks (recorded in the store)."""
        return self.total_steps()

    def after_sync(self) -> None:
        """Under torchrun, called after each step once every rank has stepped without an
        error: the place for a step's own collectives (NCFM's sampler gradient), so that
        a rank that failed mid-step never leaves its peers in a collective it skips."""

    def shard_units(self) -> int:
        """How many units (classes or batches, see ``shard_by``) there are to split."""
        return self.data.num_classes

    def my_classes(self) -> range:
        """The classes this rank owns (all of them in one process)."""
        if self.shard_by != "class":
            return range(self.data.num_classes)
        return self.dist.shard(self.data.num_classes)

    def extra_meta(self) -> dict[str, Any]:
        """Method-specific facts recorded in the store's ``extra`` attribute."""
        return {}


def teacher_fingerprint(model: nn.Module | None) -> str:
    """Content hash of a network's state (empty string for no network)."""
    if model is None:
        return ""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _signature(gen: Generator, method: str) -> dict:
    cfg_d = {k: v for k, v in config_to_dict(gen.config).items() if k not in gen.resume_free}
    return {
        "method": method,
        "config": json.dumps(cfg_d, sort_keys=True),
        "dataset": gen.data.name,  # the name decides e.g. whether flips are used
        "dataset_fingerprint": gen.data.fingerprint,
        "ipc": gen.ipc,
        "n_images": gen.n_images,
        "seed": gen.seed,
        "teacher": ",".join(teacher_fingerprint(t) for t in gen.teachers),
    }


def run_generator(
    gen: Generator,
    method: str,
    out: str | Path,
    resume: bool = False,
    quiet: bool = False,
    log: Any = None,
) -> SyntheticSet | None:
    """Run ``gen`` to completion and write ``out`` atomically; returns the stored set.

    With ``resume`` and a matching checkpoint next to ``out``, continues from it; a
    checkpoint made with other settings is refused rather than silently mixed in, and
    one whose contents do not fit this build (a damaged or hand-edited file) is refused
    with the reason. A NaN or infinite loss stops the run, naming the learning-rate
    settings to lower; nothing is written then.

    Under torchrun (``gen.dist`` active) every rank runs this with its share of the
    work: the ranks first check that they were given the same settings, step together
    (one all-reduce of the loss and a failure flag per step), and rank 0 gathers every
    rank's state into the one checkpoint and every rank's rows into the one store.
    Rank 0 returns the set; the other ranks return None.
    """
    out = Path(out)
    cfg = gen.config
    d = gen.dist
    ckpt = checkpoint_path_for(out)
    sig = _signature(gen, method)
    if d.active:
        _check_same_settings(gen, sig, out)
    quiet = quiet or not d.main
    log = log if d.main else None
    start = 0
    gen.quiet = quiet
    if log:
        for note in gen.notes():
            log(f"note: {note}")
        _size_note(log, gen)
    together(d, gen.setup)
    mine_total = gen.total_steps()
    total = d.all_max(mine_total)  # batch shards may differ by one batch
    if resume:
        found = d.broadcast(ckpt.exists() if d.main else None)
        if found:
            parts = together(d, lambda: _split_checkpoint(d, ckpt) if d.main else None)
            mine = d.scatter(parts)
            start = together(d, lambda: _restore(gen, mine, sig, ckpt, total))
            if log:
                log(f"resuming {method} from iteration {start} ({ckpt})")
        elif log:
            log(f"no checkpoint at {ckpt}; starting from scratch")

    def checkpoint(iteration: int) -> None:
        mine = together(d, lambda: {"state": gen.state_dict(), "rng": gen.rng.get_state()})
        parts = d.gather(mine)

        def write() -> None:
            if not d.main:
                return
            head = {"iteration": iteration, "signature": sig}
            if d.active:
                save_checkpoint(ckpt, {**head, "world_size": d.world, "ranks": parts})
            else:
                save_checkpoint(ckpt, {**head, **mine})

        together(d, write)

    if start < total:
        bar = tqdm(
            range(start, total),
            initial=start,
            total=total,
            desc=f"{method} {size_label(gen.ipc, gen.n_images)}",
            disable=quiet,
            dynamic_ncols=True,
        )
        t0 = time.perf_counter()
        try:
            for it in bar:
                loss = _step(gen, it, mine_total)
                if not math.isfinite(loss):
                    raise DivergedError(_diverged(gen, method, loss, it))
                bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
                if it == start and log and total - start > 1:
                    _cost_note(log, time.perf_counter() - t0, total - start)
                if (it + 1) % cfg.checkpoint_every == 0 and it + 1 < total:
                    checkpoint(it + 1)
        finally:
            bar.close()

    images, labels, soft, extra = _gather_result(gen)
    meta = StoreMeta(
        generator=method,
        config=config_to_dict(cfg),
        dataset=gen.data.name,
        dataset_fingerprint=gen.data.fingerprint,
        ipc=gen.ipc,
        seed=gen.seed,
        mean=tuple(gen.data.mean),
        std=tuple(gen.data.std),
        classes=list(gen.data.classes),
        iterations=max(gen.build_steps() if d.active else total, start),
        count=0 if gen.ipc else gen.n_images,
        extra={
            **extra,
            "dataset_source": gen.data.source,
            **({"teacher_fingerprint": sig["teacher"]} if gen.teacher is not None else {}),
        },
    )
    synset = None
    if d.main:
        synset = SyntheticSet(
            images=images.detach().cpu().float().contiguous(),
            labels=labels.detach().cpu().long(),
            meta=meta,
            soft_labels=None if soft is None else soft.detach().cpu().float(),
            temperature=getattr(gen, "temperature", None) if soft is not None else None,
        )

    def finish() -> None:
        if d.main:
            write_store(out, synset)
            ckpt.unlink(missing_ok=True)

    together(d, finish)  # the other ranks return once the store is there
    return synset


def _step(gen: Generator, it: int, mine_total: int) -> float:
    """One step on every rank; the returned loss is the sum over class shards (the
    one-process loss) or this rank's batch loss, NaN when any rank's loss was NaN."""
    d = gen.dist
    if not d.active:
        return gen.step(it)
    loss, error = 0.0, None
    try:
        if it < mine_total:
            loss = gen.step(it)
    except Exception as e:
        error = e
    total, failed = d.sync_step(loss if error is None else 0.0, error is not None)
    if failed:
        d.agree(error)
    if it < mine_total:
        gen.after_sync()  # every rank stepped: the step's own collectives may run now
    if gen.shard_by == "class" or not math.isfinite(total):
        return total
    return loss


def _gather_result(gen: Generator) -> tuple[torch.Tensor, torch.Tensor, Any, dict]:
    """This rank's rows and facts, joined on rank 0 in the one-process order."""
    d = gen.dist

    def local() -> tuple:
        images, labels, soft = gen.result()
        return images.detach().cpu(), labels.detach().cpu(), soft, gen.extra_meta()

    part = together(d, local)
    if not d.active:
        return part
    parts = d.gather(part)
    if not d.main:
        return part  # only rank 0 writes
    images = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts])
    soft = None if parts[0][2] is None else torch.cat([p[2].detach().cpu() for p in parts])
    extra = dict(parts[0][3])
    for key in gen.sharded_meta:
        extra[key] = [v for p in parts for v in p[3][key]]
    if gen.sorted_by_class:
        order = torch.argsort(labels, stable=True)
        images, labels = images[order], labels[order]
        soft = None if soft is None else soft[order]
    return images, labels, soft, extra


def _check_same_settings(gen: Generator, sig: dict, out: Path) -> None:
    """Every rank must run the same build; name what differs from rank 0's."""
    d = gen.dist
    units = gen.shard_units()
    mine = {**sig, "out": str(out)}
    everyone = d.all_gather(mine)
    for r, theirs in enumerate(everyone):
        diff = [k for k in mine if theirs.get(k) != everyone[0].get(k)]
        if diff:
            verb = "differs" if len(diff) == 1 else "differ"
            raise ConfigError(
                f"rank {r} was started with other settings than rank 0 "
                f"({', '.join(diff)} {verb}); start every rank with the same command"
            )
    if d.world > units:
        what = f"{units} {gen.shard_by}{'es' if units > 1 else ''}"
        fix = "run one process" if units == 1 else f"run at most {units}"
        raise ConfigError(
            f"{d.world} processes but only {what} to share out; {fix} (torchrun --nproc_per_node)"
        )


def _split_checkpoint(d: Dist, ckpt: Path) -> list[dict]:
    """The checkpoint's per-rank payloads (each with the shared iteration/signature)."""
    payload = load_checkpoint(ckpt)
    head = {k: payload.get(k) for k in ("iteration", "signature")}
    made = payload.get("world_size", 1)
    if not isinstance(made, int) or isinstance(made, bool) or made < 1:
        raise StoreError(f"checkpoint {ckpt} has no valid 'world_size' (damaged)")
    if made != d.world:
        how = "without torchrun" if made == 1 else f"under torchrun --nproc_per_node={made}"
        raise ConfigError(
            f"checkpoint {ckpt} was written by {made} process{'es' if made > 1 else ''}, "
            f"this build has {d.world}; resume it {how}"
        )
    if made == 1:
        return [payload]
    ranks = payload.get("ranks")
    if (
        not isinstance(ranks, list)
        or len(ranks) != made
        or not all(isinstance(r, dict) for r in ranks)
    ):
        raise StoreError(f"checkpoint {ckpt} does not hold {made} ranks' states (damaged)")
    return [{**head, **r} for r in ranks]


def size_label(ipc: int, count: int) -> str:
    """``ipc=10`` for per-class sets, ``count=256`` for sets of a total size."""
    return f"ipc={ipc}" if ipc else f"count={count}"


def steps_label(config: dict, steps: int) -> str | None:
    """What a store's ``iterations`` (the optimisation steps the build made) means in
    its method's own terms: ``200 iterations``, ``500 iterations x 2 batches`` for the
    batch-wise teacher-driven methods (``iterations`` is per batch), or None for a
    method that does not iterate (coresets)."""
    per = config.get("iterations")
    if not isinstance(per, int) or isinstance(per, bool) or per == steps == 0:
        return None  # (coresets carry iterations=0)
    if per and steps != per and steps % per == 0:
        return f"{per} iterations x {steps // per} batches"
    return f"{steps} iterations"


def _diverged(gen: Generator, method: str, loss: float, it: int) -> str:
    """The divergence message, naming the method's learning-rate settings."""
    lrs = [
        (f.name, getattr(gen.config, f.name))
        for f in dataclasses.fields(gen.config)
        if (f.name.startswith("lr") or "_lr" in f.name)
        and isinstance(getattr(gen.config, f.name), float)
    ]
    fix = (
        " or ".join(f"{setting(k, float(f'{v / 10:g}'))} (now {v:g})" for k, v in lrs)
        or "its settings"
    )
    return (
        f"{method} diverged: the loss is {loss} at iteration {it}; lower {fix} and rerun "
        f"without {opt('resume', True)}"
    )


def _size_note(log: Any, gen: Generator) -> None:
    """Before a large build starts, say how large it is: images, bytes and steps."""
    steps = gen.build_steps()
    size = 4 * gen.n_images * gen.data.channels * math.prod(gen.data.im_size)
    if steps >= 100_000 or size >= 1 << 30:
        log(
            f"note: {gen.n_images:,} images ({_bytes(size)} as float32) in {steps:,} "
            "optimisation steps; the time they take is told after the first step"
        )


def _cost_note(log: Any, first_step: float, steps: int) -> None:
    """After the first step, say how long the whole build will take when that is long."""
    eta = first_step * steps
    if eta >= 600:
        log(
            f"note: the first step took {first_step:.2g} s; the {steps:,} steps will take "
            f"about {_duration(eta)} (the progress bar refines this)"
        )


def _duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"  # pragma: no cover


def available_memory() -> int | None:
    """Bytes of memory the system can give this process now (Linux MemAvailable), or
    None where that cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


_RESUME_ERRORS = (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError)


def _restore(gen: Generator, payload: dict, sig: dict, ckpt: Path, total: int) -> int:
    """Load a checkpoint into a freshly set-up ``gen``; returns the iteration to go on
    from. Every way the file can fail to fit the build is one StoreError/ConfigError."""
    fix = f"delete it or rerun without {opt('resume', True)} to start afresh"
    kinds = {"iteration": int, "state": dict, "rng": torch.Tensor, "signature": dict}
    for key, kind in kinds.items():
        value = payload.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise StoreError(
                f"checkpoint {ckpt} has no valid {key!r} (damaged or not a build checkpoint); {fix}"
            )
    mismatch = [k for k, v in sig.items() if payload["signature"].get(k) != v]
    if mismatch:
        raise ConfigError(
            f"checkpoint {ckpt} was made with different {', '.join(mismatch)}; "
            f"rerun without {opt('resume', True)} to start over"
        )
    start = payload["iteration"]
    if start < 0:
        raise StoreError(f"checkpoint {ckpt} is at a negative step {start}; {fix}")
    if start > total:  # the job's steps: a rank with fewer batches may be done already
        raise ConfigError(
            f"checkpoint {ckpt} is at step {start}, past the {total} steps "
            f"asked for; raise {opt('iterations')} or rerun without {opt('resume', True)}"
        )
    try:
        problem = _state_mismatch(gen.state_template(payload["state"]), payload["state"], "state")
        if problem is None:
            gen.load_state_dict(payload["state"])
            gen.rng.set_state(payload["rng"])
            problem = _optimizer_mismatch(gen)
    except _RESUME_ERRORS as e:
        problem = first_line(e)
    if problem is not None:
        raise StoreError(f"checkpoint {ckpt} does not fit this build ({problem}); {fix}")
    return start


def _state_mismatch(fresh: Any, loaded: Any, where: str) -> str | None:
    """The first place where a loaded state differs in structure from a fresh one
    (missing keys, other types, other tensor shapes), or None. Optimiser and scheduler
    states and lists that grow as a build goes on are checked by loading them."""
    if isinstance(fresh, dict):
        if not isinstance(loaded, dict):
            return f"{where} should be a dict, not {type(loaded).__name__}"
        for key, value in fresh.items():
            if key not in loaded:
                return f"{where} lacks {key!r}"
            if key in ("optimizers", "schedulers"):
                continue
            found = _state_mismatch(value, loaded[key], f"{where}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(fresh, torch.Tensor):
        if not isinstance(loaded, torch.Tensor):
            return f"{where} should be a tensor, not {type(loaded).__name__}"
        if loaded.shape != fresh.shape or loaded.dtype != fresh.dtype:
            return (
                f"{where} is {tuple(loaded.shape)} {loaded.dtype}, this build has "
                f"{tuple(fresh.shape)} {fresh.dtype}"
            )
        if loaded.is_floating_point() and not bool(torch.isfinite(loaded).all()):
            return f"{where} holds NaN or infinite values"
        return None
    if isinstance(fresh, (list, tuple)):
        if not isinstance(loaded, (list, tuple)):
            return f"{where} should be a list, not {type(loaded).__name__}"
        if len(loaded) == len(fresh):
            for i, (a, b) in enumerate(zip(fresh, loaded)):
                found = _state_mismatch(a, b, f"{where}[{i}]")
                if found:
                    return found
        return None
    if isinstance(fresh, (int, float)) and not isinstance(fresh, bool):
        if isinstance(loaded, bool) or not isinstance(loaded, (int, float)):
            return f"{where} should be a number, not {loaded!r}"
    return None


def _optimizer_mismatch(gen: Generator) -> str | None:
    """A loaded optimiser state whose buffers do not match their parameters' shapes."""
    found: list[torch.optim.Optimizer] = []
    for value in vars(gen).values():
        items = value if isinstance(value, (list, tuple)) else [value]
        found += [v for v in items if isinstance(v, torch.optim.Optimizer)]
    for opt_ in found:
        for param, state in opt_.state.items():
            for key, buf in state.items():
                if isinstance(buf, torch.Tensor) and buf.dim() > 0 and buf.shape != param.shape:
                    return (
                        f"optimiser buffer {key!r} is {tuple(buf.shape)} for a parameter of "
                        f"{tuple(param.shape)}"
                    )
    return None
