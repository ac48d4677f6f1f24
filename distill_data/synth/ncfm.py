"""NCFM: Neural Characteristic Function Matching (Wang et al., "Dataset Distillation
with Neural Characteristic Function: A Minmax Perspective", CVPR 2025).

For L2-normalised embeddings x of class c and frequencies t, the empirical
characteristic function is Φ(t) = mean_x e^{i t·x}. The characteristic function
discrepancy (CFD) between real (T_c) and synthetic (S_c) features is

    CFD_c = mean_t sqrt( α · (|Φ_T(t)| − |Φ_S(t)|)²                         (amplitude)
                       + β · 2 (|Φ_T(t)||Φ_S(t)| − Re Φ_T Re Φ_S − Im Φ_T Im Φ_S) )  (phase)

(the phase term is 2|Φ_T||Φ_S|(1 − cos(θ_T − θ_S))), α = β = 0.5, summed over classes
and scaled by 300 as in the official code. Frequencies are t ~ N(0, I), ``num_freqs`` =
4096 fresh rows per iteration, as the released code runs; ``frequencies=sampler`` draws
them from a sampling network ψ: noise → t trained to *maximise* the CFD while the pixels
minimise it (the paper's min-max). The feature extractor of an iteration is one network
of a pool of ConvNets trained on the real data: with its initial weights θ₀ and trained
weights θ₁, it uses θ = λθ₀ + (1 − λ)θ₁, λ ~ U(0, 1). A calibration term
``calib_weight · Σ_c mean CE(θ₁(S_c), c)`` keeps synthetic images classifiable. AdamW on
pixels, clamped to the image range after every step.

Choices where paper and official code (gszfwsb/NCFM) differ, or the code is unusable:
- Frequencies: Gaussian by default. The paper's sampling network is never trained in the
  released code: every released config sets ``sampling_net: False``, and the ascent
  step of the later code cancels (its gradient is zeroed between two backward passes).
  ``--set frequencies=sampler`` applies a real ascent step (SGD ``lr_sampler`` 1e-3,
  momentum 0.5, as the public reproduction does). Measured on mnist5k (H200, IPC 1,
  1000 iterations, pool 20 × 60 epochs, calibration at 1/K of the official weight and
  no clamp): 53.3 → 62.6 % with the sampler, where DM reaches 87.8; in a feature-space
  test the adversary kept the class distributions from converging (class-mean distance
  1.5 → 1.5 with the sampler, 1.5 → 0.04 with Gaussian frequencies). The code tiles
  ``t_batch/16`` unique sampler rows 16×; tiling only repeats terms of the mean, so we
  draw ``sampler_freqs`` unique rows.
- Pixel learning rate: 0.01 in normalised units. The official AdamW runs at
  ``lr_img · lr_scale_adam`` = 0.001 in [0, 1] pixel units (≈ 0.003 normalised on
  MNIST) but steps 2K times per iteration (below), ≈ 0.015 normalised per iteration.
- Steps per iteration: the code steps the pixel optimiser once per class for matching
  and once per class for calibration (2K AdamW steps per iteration, each on one class's
  loss); we take one step on the loss summed over classes, as DM and DataDAM do, which
  is what batching all classes in one forward pass gives. The calibration CE is summed
  over classes (a mean within each) so that it weighs against the CFD as in the code.
- Clamp: the code clamps pixels to [0, 1] every iteration; we clamp the normalised
  images to the same range (``clamp``, default on). Without it Adam moves MNIST's flat
  background, which SGD-based DM leaves alone.
- Real batch: ``batch_real`` = 1024 per class as in the released configs (all of a
  class where it has fewer).
- Schedule and length: the code runs 20,000 iterations under ReduceLROnPlateau (×0.5,
  patience 500); we keep the learning rate constant (``--iterations`` sets the length).
- Pool: the code trains 20 ConvNets for 60 epochs (our defaults; its SGD uses weight
  decay 0.01, decays ×0.2 at 2/3 and 5/6 and adds CutMix; ours is the shared ``fit``:
  5e-4, ×0.1 at half, DSA); networks are trained once per (dataset, architecture,
  epochs, seed) and cached on disk (``bench/ncfm_pool.py`` fills the cache with worker
  processes). CPU users will want ``--set pool_size=2 --set pretrain_epochs=2``.
- Augmentation: the code applies IDC's ``DiffAug(batch=True)`` to ``cat([real, syn])``
  of a class, one transform for both; that is our default ``siamese=batch``. IDC's
  transform applies colour, crop and cutout together on every call; ours draws one DSA
  operation per iteration from the digits/default strategy, like DM and DataDAM.
- Init: the code's default is IDC-style multi-formation ("mix": four half-size real
  images per stored image, decoded for matching and evaluation); we initialise from
  real images (``init=real``) like every matching generator here; real batches are
  drawn at random each iteration (the code always takes the first ``batch_real``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from distill_data.augment import strategy_for
from distill_data.config import require
from distill_data.data import RealDataset
from distill_data.data.builtin import cache_dir
from distill_data.dist import together
from distill_data.errors import DivergedError, StoreError, setting
from distill_data.models import build_model, init_params_, load_model, save_model
from distill_data.runtime import to_device
from distill_data.synth.base import GENERATORS
from distill_data.synth.matching import (
    MatchingConfig,
    MatchingGenerator,
    class_means,
    net_options,
)
from distill_data.train import TrainData, fit, get_recipe

FREQUENCIES = ("sampler", "gaussian")


def empirical_cf(
    feats: torch.Tensor, labels: torch.Tensor, t: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class real and imaginary parts of mean_x e^{i t·x}: two (K, F) tensors.

    Always float32: cos/sin of bfloat16 phases would be meaningless.
    """
    dtype = torch.promote_types(torch.promote_types(feats.dtype, t.dtype), torch.float32)
    with torch.autocast(feats.device.type, enabled=False):
        tx = feats.to(dtype) @ t.to(dtype).T
    return class_means(torch.cos(tx), labels, num_classes), class_means(
        torch.sin(tx), labels, num_classes
    )


def cf_discrepancy(
    real_feats: torch.Tensor,
    real_y: torch.Tensor,
    syn_feats: torch.Tensor,
    syn_y: torch.Tensor,
    t: torch.Tensor,
    num_classes: int,
    alpha: float = 0.5,
    beta: float = 0.5,
) -> torch.Tensor:
    """Σ_c mean_t sqrt(α·amplitude + β·phase) (NCFM's CFD; see the module docstring)."""
    re_r, im_r = empirical_cf(real_feats, real_y, t, num_classes)
    re_s, im_s = empirical_cf(syn_feats, syn_y, t, num_classes)
    mod_r = torch.sqrt(re_r**2 + im_r**2 + 1e-12)
    mod_s = torch.sqrt(re_s**2 + im_s**2 + 1e-12)
    amplitude = (mod_r - mod_s) ** 2
    phase = (2 * (mod_r * mod_s - re_r * re_s - im_r * im_s)).clamp_min(1e-12)
    return torch.sqrt((alpha * amplitude + beta * phase).clamp_min(1e-12)).mean(1).sum()


class SamplingNet(nn.Module):
    """ψ: noise → frequencies. Linear-BN-LeakyReLU(0.2) ×2, then Linear-BN-Tanh
    (the official SampleNet's shape)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, dim),
            nn.BatchNorm1d(dim),
            nn.Tanh(),
        )

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.net(noise)


@dataclass(frozen=True)
class NCFMConfig(MatchingConfig):
    """NCFM settings (defaults: paper / official configs; see the module docstring)."""

    batch_real: int = 1024
    lr_img: float = 0.01
    weight_decay: float = 5e-4
    alpha: float = 0.5
    beta: float = 0.5
    loss_scale: float = 300.0
    frequencies: str = "gaussian"
    num_freqs: int = 4096
    sampler_freqs: int = 256
    sampler_hidden: int = 0
    lr_sampler: float = 1e-3
    momentum_sampler: float = 0.5
    pool_size: int = 20
    pretrain_epochs: int = 60
    pretrain_lr: float = 0.01
    pretrain_batch: int = 128
    calib_weight: float = 1.0
    clamp: bool = True
    cache_dir: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.frequencies in FREQUENCIES,
            f"frequencies must be one of {', '.join(FREQUENCIES)}, got {self.frequencies!r}",
        )
        require(
            self.alpha >= 0 and self.beta >= 0 and self.alpha + self.beta > 0,
            "alpha and beta must be >= 0 and not both 0",
        )
        require(
            self.num_freqs >= 1 and self.sampler_freqs >= 2,
            "num_freqs must be >= 1 and sampler_freqs >= 2 (BatchNorm needs two rows)",
        )
        require(self.sampler_hidden >= 0, "sampler_hidden must be >= 0 (0: feature size)")
        require(self.pool_size >= 1, "pool_size must be >= 1")
        require(self.pretrain_epochs >= 0, "pretrain_epochs must be >= 0")
        require(
            self.lr_img > 0 and self.lr_sampler > 0 and self.pretrain_lr > 0,
            "learning rates must be > 0",
        )
        require(self.calib_weight >= 0, "calib_weight must be >= 0")


def _shell(cfg: NCFMConfig, data: RealDataset) -> nn.Module:
    """The architecture, for weights loaded right after; leaves the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        return build_model(
            cfg.model, data.channels, data.num_classes, data.im_size, **net_options(cfg)
        )


def _pool_dir(cfg: NCFMConfig, data: RealDataset, seed: int) -> Path:
    key = (
        f"{data.fingerprint}-{cfg.model}-w{cfg.width}-d{cfg.depth}-e{cfg.pretrain_epochs}"
        f"-lr{cfg.pretrain_lr}-b{cfg.pretrain_batch}-s{seed}-{strategy_for(data.is_digits)}"
    )
    root = Path(cfg.cache_dir) if cfg.cache_dir else cache_dir() / "ncfm-pool"
    return root / hashlib.sha256(key.encode()).hexdigest()[:16]


def feature_pool(
    cfg: NCFMConfig,
    data: RealDataset,
    seed: int,
    device: torch.device,
    quiet: bool = True,
    members: Iterable[int] | None = None,
) -> list[tuple[dict, dict]]:
    """``pool_size`` pairs (initial, trained) of state dicts, trained once and cached.

    Network i is initialised and trained from a generator seeded with (seed, i), so the
    pool is a pure function of its key; a cached copy is used when present. ``members``
    (default: all) picks which networks to return, so that several processes can fill
    one cache side by side (``bench/ncfm_pool.py``).
    """
    folder = _pool_dir(cfg, data, seed)
    x, y = data.normalize(data.x_train), data.y_train
    # the dc protocol's SGD (momentum 0.9, weight decay 5e-4, x0.1 at half) with DSA
    recipe = replace(
        get_recipe("dc"),
        epochs=cfg.pretrain_epochs,
        lr=cfg.pretrain_lr,
        batch_size=cfg.pretrain_batch,
        dsa_strategy=strategy_for(data.is_digits),
    )
    pool = []
    for i in range(cfg.pool_size) if members is None else members:
        require(0 <= i < cfg.pool_size, f"pool member {i} is outside 0..{cfg.pool_size - 1}")
        paths = folder / f"net{i}_init.pt", folder / f"net{i}_trained.pt"
        if all(p.exists() for p in paths):
            try:
                pool.append(tuple(load_model(p)[0].state_dict() for p in paths))
                continue
            except StoreError:
                pass  # unreadable cache entry: train it again
        g = torch.Generator().manual_seed(seed * 7919 + i)
        net = build_model(
            cfg.model,
            data.channels,
            data.num_classes,
            data.im_size,
            generator=g,
            **net_options(cfg),
        ).to(device)
        init = {k: v.detach().clone() for k, v in net.state_dict().items()}
        with tqdm(
            total=cfg.pretrain_epochs,
            desc=f"ncfm pool net {i + 1}/{cfg.pool_size}",
            disable=quiet,
            dynamic_ncols=True,
        ) as bar:
            try:
                fit(net, TrainData(x, y), recipe, generator=g, bar=bar)
            except DivergedError as e:
                raise DivergedError(
                    f"ncfm's network pool: {e}; lower "
                    f"{setting('pretrain_lr', float(f'{cfg.pretrain_lr / 10:g}'))}"
                ) from None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            ref = _shell(cfg, data)
            ref.load_state_dict(init)
            save_model(ref, paths[0])
            save_model(net.cpu(), paths[1])
            net.to(device)
        except (OSError, StoreError):
            pass  # cache is an optimisation; an unwritable folder only costs retraining
        pool.append((init, {k: v.detach().clone() for k, v in net.state_dict().items()}))
    return pool


def _cpu_pool(pool: list[tuple[dict, dict]]) -> list[tuple[dict, dict]]:
    """A pool's state dicts on the CPU (to travel between ranks)."""
    return [tuple({k: v.cpu() for k, v in sd.items()} for sd in pair) for pair in pool]


@GENERATORS.register("ncfm", "NCFM: characteristic-function matching (CVPR 2025)")
class NCFM(MatchingGenerator):
    """Wang et al., CVPR 2025: minimise the characteristic function discrepancy of
    L2-normalised embeddings, at Gaussian frequencies (default, as the released code) or
    at frequencies a sampling network maximises it for (``frequencies=sampler``)."""

    Config = NCFMConfig
    config: NCFMConfig

    def setup(self) -> None:
        cfg, d = self.config, self.data
        # under torchrun each rank trains its block of the pool; all ranks get all of it
        members = self.dist.shard(cfg.pool_size) if self.dist.active else None
        mine = together(
            self.dist,
            lambda: feature_pool(cfg, d, self.seed, self.device, quiet=self.quiet, members=members),
        )  # a pool net that diverges stops every rank here, with its message
        pool = [pair for part in self.dist.all_gather(_cpu_pool(mine)) for pair in part]
        # on the device once: blending then never crosses between host and device
        self.pool = [
            tuple({k: v.to(self.device) for k, v in sd.items()} for sd in pair) for pair in pool
        ]
        self._shells: list[nn.Module] | None = None
        self._lo, self._hi = (b.to(self.device) for b in d.pixel_bounds())  # for ``clamp``
        probe = _shell(cfg, d)
        self.feat_dim = int(probe.embed_dim)
        self.sampler = None
        if cfg.frequencies == "sampler":
            hidden = cfg.sampler_hidden or self.feat_dim
            with torch.random.fork_rng(devices=[]):
                sampler = SamplingNet(self.feat_dim, hidden)
            self.sampler = init_params_(sampler, self.rng)
            self.sampler = self.sampler.to(self.device).train()
        super().setup()

    def make_optimizers(self) -> list[torch.optim.Optimizer]:
        cfg = self.config
        opts: list[torch.optim.Optimizer] = [
            torch.optim.AdamW([self.images], lr=cfg.lr_img, weight_decay=cfg.weight_decay)
        ]
        if self.sampler is not None:
            opts.append(
                torch.optim.SGD(
                    self.sampler.parameters(), lr=cfg.lr_sampler, momentum=cfg.momentum_sampler
                )
            )
        return opts

    def make_net(self) -> nn.Module:
        """Blend a pool member with its initial weights: θ = λθ₀ + (1 − λ)θ₁."""
        cfg, d = self.config, self.data
        i = int(torch.randint(len(self.pool), (1,), generator=self.rng))
        lam = float(torch.rand((), generator=self.rng))
        init, trained = self.pool[i]
        blended = {
            k: (lam * init[k] + (1 - lam) * v) if v.is_floating_point() else v
            for k, v in trained.items()
        }
        if self._shells is None:  # two frozen networks on the device, refilled per call
            self._shells = [self.prepare_net(_shell(cfg, d)) for _ in range(2)]
        nets = self._shells
        for net, state in zip(nets, (blended, trained)):
            net.load_state_dict(state)
        self._calib_net = nets[1]
        return nets[0]

    _t_split: tuple[torch.Tensor, torch.Tensor] | None = None

    def frequencies(self) -> torch.Tensor:
        cfg = self.config
        n = cfg.num_freqs if self.sampler is None else cfg.sampler_freqs
        noise = torch.randn((n, self.feat_dim), generator=self.rng)
        noise = to_device([noise], self.device)[0]
        if self.sampler is None:
            return noise
        t = self.sampler(noise)
        if not self.dist.active:
            return t
        # the sampler ascends the CFD summed over every rank's classes: the loss here
        # sees a detached copy, whose gradient is summed over ranks in after_backward
        leaf = t.detach().requires_grad_(True)
        self._t_split = (t, leaf)
        return leaf

    def match(self, net, real, real_y, syn, syn_y) -> torch.Tensor:
        cfg = self.config
        real_f = self.embed_real(lambda x: F.normalize(net.embed(x), dim=1), real)
        syn_f = F.normalize(net.embed(syn), dim=1)
        t = self.frequencies()
        loss = cfg.loss_scale * cf_discrepancy(
            real_f, real_y, syn_f, syn_y, t, self.num_local, cfg.alpha, cfg.beta
        )
        if cfg.calib_weight > 0:
            # Σ_c mean CE over class c's images: the official per-class calibration steps,
            # each as heavy as that class's CFD term (the classifier sees dataset labels)
            ce = F.cross_entropy(self._calib_net(syn), syn_y + self.classes.start, reduction="sum")
            loss = loss + cfg.calib_weight * ce / (len(syn_y) / self.num_local)
        return loss

    def step(self, iteration: int) -> float:
        loss = super().step(iteration)
        if self.config.clamp:  # Adam moves every pixel; keep them in the image range
            with torch.no_grad():
                self.images.clamp_(self._lo, self._hi)
        return loss

    def after_backward(self) -> None:
        """Min-max: the sampling network ascends the discrepancy the pixels descend
        (under torchrun its gradient is complete only after :meth:`after_sync`)."""
        if self.sampler is not None and self._t_split is None:
            for p in self.sampler.parameters():
                if p.grad is not None:
                    p.grad.neg_()

    def after_sync(self) -> None:
        """Under torchrun: sum dCFD/dt over the ranks (each holds its classes' part),
        back-propagate it through ψ and take ψ's ascent step (the step itself left ψ
        alone: its parameters had no gradient). Same arithmetic as one process, but for
        the order in which the ranks' parts are added."""
        if self._t_split is None:
            return
        t, leaf = self._t_split
        self._t_split = None
        grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        t.backward(self.dist.all_reduce_(grad))
        for p in self.sampler.parameters():
            if p.grad is not None:
                p.grad.neg_()
        self.optimizers[1].step()

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.sampler is not None:
            # cloned: on the CPU .cpu() is the live tensor, which the next step changes
            state["sampler"] = {
                k: v.detach().cpu().clone() for k, v in self.sampler.state_dict().items()
            }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.sampler is not None:
            self.sampler.load_state_dict(state["sampler"])
        super().load_state_dict(state)
