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
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from distill_data.config import config_to_dict, require
from distill_data.data import ImageSpace, RealDataset
from distill_data.errors import ConfigError
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
    ) -> None:
        self.config = config
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
                    f"holds ({counts[worst]} training images); use --ipc {counts[worst]} or less"
                )

    @classmethod
    def check_config(cls, config: GeneratorConfig) -> None:
        """Raise ConfigError for settings this method cannot honour."""
        if not cls.iterative and config.iterations > 0:
            raise ConfigError(
                "this method selects real images in one pass and does not iterate; "
                "drop --iterations"
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

    def total_steps(self) -> int:
        """Number of :meth:`step` calls a build makes (default: ``config.iterations``)."""
        return self.config.iterations

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
) -> SyntheticSet:
    """Run ``gen`` to completion and write ``out`` atomically; returns the stored set.

    With ``resume`` and a matching checkpoint next to ``out``, continues from it; a
    checkpoint made with other settings is refused rather than silently mixed in.
    """
    out = Path(out)
    cfg = gen.config
    ckpt = checkpoint_path_for(out)
    sig = _signature(gen, method)
    start = 0
    gen.quiet = quiet
    if log:
        for note in gen.notes():
            log(f"note: {note}")
    gen.setup()
    if resume and ckpt.exists():
        payload = load_checkpoint(ckpt)
        mismatch = [k for k, v in sig.items() if payload.get("signature", {}).get(k) != v]
        if mismatch:
            raise ConfigError(
                f"checkpoint {ckpt} was made with different {', '.join(mismatch)}; "
                "rerun without --resume to start over"
            )
        gen.load_state_dict(payload["state"])
        gen.rng.set_state(payload["rng"])
        start = int(payload["iteration"])
        if start > gen.total_steps():
            raise ConfigError(
                f"checkpoint {ckpt} is at step {start}, past the {gen.total_steps()} steps "
                "asked for; raise --iterations or rerun without --resume"
            )
        if log:
            log(f"resuming {method} from iteration {start} ({ckpt})")
    elif resume and log:
        log(f"no checkpoint at {ckpt}; starting from scratch")

    def checkpoint(iteration: int) -> None:
        save_checkpoint(
            ckpt,
            {
                "iteration": iteration,
                "state": gen.state_dict(),
                "rng": gen.rng.get_state(),
                "signature": sig,
            },
        )

    total = gen.total_steps()
    if start < total:
        bar = tqdm(
            range(start, total),
            initial=start,
            total=total,
            desc=f"{method} ipc={gen.ipc}",
            disable=quiet,
            dynamic_ncols=True,
        )
        it = start
        try:
            for it in bar:
                loss = gen.step(it)
                if not math.isfinite(loss):
                    raise ConfigError(
                        f"{method} diverged: the loss is {loss} at iteration {it}; lower the "
                        "learning rate (--set ...) and rerun without --resume"
                    )
                bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
                if (it + 1) % cfg.checkpoint_every == 0 and it + 1 < total:
                    checkpoint(it + 1)
        except KeyboardInterrupt:
            bar.close()
            raise
        bar.close()

    images, labels, soft = gen.result()
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
        iterations=max(total, start),
        extra={
            **gen.extra_meta(),
            "dataset_source": gen.data.source,
            **({"teacher_fingerprint": sig["teacher"]} if gen.teacher is not None else {}),
        },
    )
    synset = SyntheticSet(
        images=images.detach().cpu().float().contiguous(),
        labels=labels.detach().cpu().long(),
        meta=meta,
        soft_labels=None if soft is None else soft.detach().cpu().float(),
        temperature=getattr(gen, "temperature", None) if soft is not None else None,
    )
    write_store(out, synset)
    ckpt.unlink(missing_ok=True)
    return synset
