"""The shared loop of every matching generator (DM, DataDAM, NCFM, ...).

Each iteration: draw a real batch for every class, draw one DSA transform per class and
apply it to that class's real and synthetic images alike (siamese), embed all classes'
real images in one no-grad forward pass and all synthetic images in one forward pass
with autograd (instance norm is per sample, so batching classes is exact), compute the
method's loss from per-class statistics, and step the optimiser on the pixels.
"""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from distill_data.augment import DSA, AugParams, strategy_for
from distill_data.config import require
from distill_data.errors import ConfigError
from distill_data.models import MODELS, build_model
from distill_data.runtime import PRECISIONS, autocast_for, to_device
from distill_data.synth.base import Generator, GeneratorConfig

INITS = ("real", "noise")
SIAMESE = ("batch", "sample")


@dataclass(frozen=True)
class MatchingConfig(GeneratorConfig):
    """Settings shared by matching generators (defaults: DM's, WACV 2023).

    Attributes:
        iterations: optimisation steps on the synthetic pixels.
        model: architecture of the (freshly initialised) matching network.
        width, depth: its width and depth (ConvNet 128 × 3 in the papers).
        batch_real: real images drawn per class per iteration.
        init: ``real`` (random real images of the class) or ``noise`` (standard normal).
        dsa: siamese augmentation of real and synthetic batches.
        dsa_strategy: DSA strategy; default: the field's, without flip for digits.
        siamese: how one class's DSA draw covers its batches. ``batch`` (default, the
            official DM/DataDAM code: ``DiffAugment(..., seed=s)`` turns on
            ``batchmode``, so every real and synthetic image of the class gets the
            same transform); ``sample``: one transform per image, synthetic row i
            sharing real row i's (the real batch's mean then averages over many
            transforms, the synthetic one over ``ipc``).
        real_chunk: most real images per no-grad forward pass (0: all classes at once);
            a memory cap that does not change the result (ignored for networks with
            BatchNorm, whose train-mode statistics depend on the batch). 256 was the
            fastest on CPU (bench/matching_speed.py): smaller activation buffers are
            reused from the heap and stay closer to the cache.
        precision: ``fp32`` (default) or ``bf16``: network passes under bfloat16 autocast
            (losses and pixels stay float32), for CPUs/GPUs with fast bfloat16.
        channels_last: run the matching network in channels-last memory layout.
        fyi: Flip Your Images (Son et al., ECCV 2024): each class's synthetic batch
            becomes [S, hflip(S)] before augmentation, and a siamese random flip is
            always applied before the one DSA op drawn from the rest of the strategy.
    """

    iterations: int = 20000
    model: str = "convnet"
    width: int = 128
    depth: int = 3
    batch_real: int = 256
    init: str = "real"
    dsa: bool = True
    dsa_strategy: str | None = None
    siamese: str = "batch"
    real_chunk: int = 256
    precision: str = "fp32"
    channels_last: bool = False
    fyi: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.model in MODELS,
            f"unknown model {self.model!r}; choose from: " + ", ".join(MODELS.names()),
        )
        require(self.batch_real >= 1, f"batch_real must be >= 1, got {self.batch_real}")
        require(self.width >= 1 and self.depth >= 1, "width and depth must be >= 1")
        require(self.init in INITS, f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        require(self.real_chunk >= 0, "real_chunk must be >= 0")
        require(
            self.siamese in SIAMESE,
            f"siamese must be one of {', '.join(SIAMESE)}, got {self.siamese!r}",
        )
        require(
            self.precision in PRECISIONS,
            f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}",
        )


def net_options(cfg: MatchingConfig) -> dict[str, Any]:
    """Constructor options of the matching network (ResNet's depth means 6n+2 layers, so
    the ConvNet depth setting does not apply to it)."""
    if cfg.model == "resnet":
        return {"width": cfg.width}
    return {"width": cfg.width, "depth": cfg.depth}


def class_means(feats: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class mean of ``feats`` (N, ...) → (K, ...), by index operations (no loop)."""
    flat = feats.reshape(len(feats), -1)
    flat = flat.to(torch.promote_types(flat.dtype, torch.float32))  # bf16 → fp32, fp64 stays
    sums = torch.zeros(num_classes, flat.shape[1], dtype=flat.dtype, device=flat.device)
    sums = sums.index_add(0, labels, flat)
    # counts by index_add, not bincount: CUDA's bincount reads the maximum back to the host
    ones = torch.ones(len(labels), dtype=flat.dtype, device=flat.device)
    counts = torch.zeros(num_classes, dtype=flat.dtype, device=flat.device)
    counts = counts.index_add(0, labels, ones).clamp_min(1)
    return (sums / counts[:, None]).reshape(num_classes, *feats.shape[1:])


class MatchingGenerator(Generator):
    """Base of generators that learn pixels by matching real and synthetic statistics."""

    Config: ClassVar[type[GeneratorConfig]] = MatchingConfig
    iterative = True
    samples_real = True  # init from real images and real batches per class
    config: MatchingConfig

    # -- set-up ----------------------------------------------------------------------
    def notes(self) -> list[str]:
        if self.config.fyi and self.data.is_digits:
            return [
                "FYI assumes a horizontal flip keeps an image's class; digits are not "
                "flip-invariant (mnist5k IPC 1: dm+fyi 74.1 % vs dm 87.8 %)"
            ]
        return []

    def setup(self) -> None:
        d, cfg = self.data, self.config
        k, ipc = d.num_classes, self.ipc
        #: this rank's classes (all in one process); losses see local labels 0..n-1
        self.classes = self.my_classes()
        self.num_local = len(self.classes)
        if self.dist.active:
            self._refuse_batchnorm()
        self.labels = torch.tensor(list(self.classes)).repeat_interleave(ipc)
        # every rank makes every class's draws, in class order, and keeps its own: the
        # random stream, and so the images, are those of a one-process build
        if cfg.init == "real":
            picks = [
                idx[torch.randperm(len(idx), generator=self.rng)[:ipc]]
                for idx in d.indices_per_class()
            ]
            init = d.normalize(d.x_train[torch.cat([picks[c] for c in self.classes])])
        else:  # one draw of the whole set (draws split by class would give other numbers)
            init = torch.randn((k * ipc, d.channels, *d.im_size), generator=self.rng)
            init = init[self.classes.start * ipc : self.classes.stop * ipc].clone()
        self.images = init.to(self.device).clone().requires_grad_(True)
        strategy = cfg.dsa_strategy if cfg.dsa_strategy is not None else strategy_for(d.is_digits)
        strategy = strategy if cfg.dsa else "none"
        # FYI (official code): flip leaves the DSA pool and is always applied first.
        batchmode = cfg.siamese == "batch"
        self.flip = DSA("flip", batchmode=batchmode) if cfg.fyi and cfg.dsa else None
        if cfg.fyi:
            strategy = "_".join(g for g in strategy.split("_") if g != "flip") or "none"
        self.dsa = DSA(strategy, batchmode=batchmode)
        # Real training images of this rank's classes, normalised once, on the device
        # (grad never needed); ``_row`` maps a training index to its row there.
        self.real_by_class = d.indices_per_class()
        mine = torch.cat([self.real_by_class[c] for c in self.classes])
        self.real = d.normalize(d.x_train[mine]).to(self.device)
        self._row = torch.full((len(d.x_train),), -1, dtype=torch.long)
        self._row[mine] = torch.arange(len(mine))
        self.optimizers = self.make_optimizers()

    def _refuse_batchnorm(self) -> None:
        """Train-mode BatchNorm normalises over every class's images at once, so a class
        shard cannot compute its part alone."""
        d, cfg = self.data, self.config
        with torch.random.fork_rng(devices=[]):
            probe = build_model(cfg.model, d.channels, d.num_classes, d.im_size, **net_options(cfg))
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in probe.modules()):
            raise ConfigError(
                f"model {cfg.model!r} has BatchNorm, whose batch statistics mix every "
                "class's images, so its classes cannot be split over processes; use a "
                "per-sample-normalised model (convnet) or run one process"
            )

    @abc.abstractmethod
    def make_optimizers(self) -> list[torch.optim.Optimizer]:
        """Optimisers over the learnable tensors (pixels first)."""

    def make_net(self) -> nn.Module:
        """A freshly initialised matching network, drawn from ``self.rng``, frozen."""
        d, cfg = self.data, self.config
        opts = net_options(cfg)
        net = build_model(
            cfg.model, d.channels, d.num_classes, d.im_size, generator=self.rng, **opts
        )
        return self.prepare_net(net)

    def prepare_net(self, net: nn.Module) -> nn.Module:
        """Move to the device in train mode, channels-last if asked, parameters frozen."""
        if self.device.type != "cpu":  # a fresh net per iteration: one copy, not one per tensor
            tensors = [*net.parameters(), *net.buffers()]
            for t, moved in zip(tensors, to_device([t.detach() for t in tensors], self.device)):
                t.data = moved
        net = net.train()
        if self.config.channels_last:
            net = net.to(memory_format=torch.channels_last)
        for p in net.parameters():
            p.requires_grad_(False)
        self._net_has_bn = any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()
        )
        return net

    # -- one iteration -----------------------------------------------------------------
    def sample_batches(
        self,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Real and synthetic batches of all classes with one siamese DSA draw per class.

        Returns ``(real_x, real_y, syn_x, syn_y)``; rows are grouped by class, labels
        are local (0 .. ``num_local`` − 1 over this rank's classes; add
        ``self.classes.start`` for the dataset's class index).

        All random draws come from ``self.rng`` on the host, class by class (real pick,
        then each DSA draw); then everything one iteration needs on the device goes over
        in one copy per dtype (:func:`distill_data.runtime.to_device`), so on a GPU the
        host never waits for the device inside an iteration.
        """
        cfg = self.config
        h, w = self.data.im_size
        dsas = [d for d in (self.flip, self.dsa) if d is not None and d.enabled]
        n_syn = self.ipc * (2 if cfg.fyi else 1)
        picks, draws = [], []
        for c, idx in enumerate(self.real_by_class):  # every class's draws, as one process
            pick = idx[torch.randperm(len(idx), generator=self.rng)[: cfg.batch_real]]
            n = max(len(pick), n_syn)
            draw = [d.sample(n, h, w, generator=self.rng) for d in dsas]
            if c in self.classes:
                picks.append(self._row[pick])
                draws.append(draw)
        real_y = torch.arange(len(picks)).repeat_interleave(torch.tensor([len(p) for p in picks]))
        syn_y = torch.arange(len(picks)).repeat_interleave(n_syn)
        host = [torch.cat(picks), real_y, syn_y]
        host += [v for per_class in draws for prm in per_class for v in prm.values.values()]
        moved = iter(to_device(host, self.device))
        pick_all, real_y, syn_y = next(moved), next(moved), next(moved)
        real_all = self.real[pick_all]
        real_parts, syn_parts, start = [], [], 0
        for c, per_class in enumerate(draws):
            real = real_all[start : start + len(picks[c])]
            start += len(picks[c])
            syn = self.images[c * self.ipc : (c + 1) * self.ipc]
            if cfg.fyi:
                syn = torch.cat([syn, syn.flip(-1)])
            for dsa, prm in zip(dsas, per_class):
                prm = AugParams(prm.ops, {k: next(moved) for k in prm.values}, prm.n)
                real = dsa.apply(real, prm.head(len(real)))
                syn = dsa.apply(syn, prm.head(len(syn)))
            real_parts.append(real)
            syn_parts.append(syn)
        return torch.cat(real_parts), real_y, torch.cat(syn_parts), syn_y

    @torch.no_grad()
    def embed_real(self, fn: Any, real: torch.Tensor) -> Any:
        """``fn(real)`` without autograd, in chunks of ``real_chunk`` (0: one pass)."""
        chunk = self.config.real_chunk
        if chunk <= 0 or len(real) <= chunk or self._net_has_bn:
            return fn(real)
        parts = [fn(real[i : i + chunk]) for i in range(0, len(real), chunk)]
        if isinstance(parts[0], torch.Tensor):
            return torch.cat(parts)
        return [torch.cat(p) for p in zip(*parts)]

    @abc.abstractmethod
    def match(
        self,
        net: nn.Module,
        real: torch.Tensor,
        real_y: torch.Tensor,
        syn: torch.Tensor,
        syn_y: torch.Tensor,
    ) -> torch.Tensor:
        """The method's loss for one iteration (differentiable w.r.t. ``syn``)."""

    _net_has_bn = False

    def step(self, iteration: int) -> float:
        net = self.make_net()  # prepare_net has set _net_has_bn for it
        real, real_y, syn, syn_y = self.sample_batches()
        if self.config.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
            syn = syn.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            loss = self.match(net, real, real_y, syn, syn_y)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        self.after_backward()
        for opt in self.optimizers:
            opt.step()
        return float(loss.detach())

    def autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast for ``precision=bf16``, else a no-op."""
        return autocast_for(self.config.precision, self.device)

    def after_backward(self) -> None:
        """Hook between backward and the optimiser steps (e.g. gradient ascent parts)."""

    # -- results and state -------------------------------------------------------------
    def result(self) -> tuple[torch.Tensor, torch.Tensor, None]:
        return self.images.detach().cpu().clone(), self.labels.clone(), None

    def state_dict(self) -> dict[str, Any]:
        return {
            "images": self.images.detach().cpu().clone(),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.images.copy_(state["images"].to(self.device))
        for opt, s in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(s)
