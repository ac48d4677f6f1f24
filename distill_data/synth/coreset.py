"""Coreset baselines: pick real images instead of learning synthetic ones.

``random`` (class-balanced uniform subset), ``herding`` (Welling, ICML 2009; the
selection used as a baseline in DC/DM) and ``kcenter`` (greedy k-center, Sener &
Savarese, ICLR 2018). Herding and k-center work in a feature space: the embedding of a
network the user names (``feature_model=path/to/model.pt``, a file written by
``distill_data.models.save_model`` / ``distill-data teacher``) or, by default, a
randomly initialised ConvNet drawn from the run's seed — the choice made in DC-bench.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np
import torch

from distill_data.config import require
from distill_data.errors import ConfigError
from distill_data.models import build_model, load_model
from distill_data.synth.base import GENERATORS, Generator, GeneratorConfig


class CoresetGenerator(Generator):
    """Shared shape: choose ``ipc`` training indices per class in :meth:`select`."""

    sharded_meta = ("selected_indices",)

    def setup(self) -> None:
        chosen = []
        self.classes = self.my_classes()
        for c, idx in enumerate(self.data.indices_per_class()):
            if c not in self.classes:
                self.skip(c, idx)
                continue
            local = self.select(c, idx)
            if len(local) != self.ipc or len(set(local.tolist())) != self.ipc:
                raise RuntimeError(f"{type(self).__name__} selected a bad set for class {c}")
            chosen.append(idx[local])
        self.indices = torch.cat(chosen)

    @abc.abstractmethod
    def select(self, c: int, idx: torch.Tensor) -> torch.Tensor:
        """Positions (into ``idx``, the class's training indices) of the chosen images."""

    def skip(self, c: int, idx: torch.Tensor) -> None:
        """Another rank selects class ``c``; make the random draws its selection would
        make, so this rank's classes see the one-process random stream."""

    def result(self) -> tuple[torch.Tensor, torch.Tensor, None]:
        x = self.data.normalize(self.data.x_train[self.indices])
        return x, self.data.y_train[self.indices].clone(), None

    def extra_meta(self) -> dict:
        return {"selected_indices": [int(i) for i in self.indices]}


@GENERATORS.register("random", "class-balanced random real subset")
class RandomSubset(CoresetGenerator):
    """Uniformly random real images, ``ipc`` per class (the field's reference point)."""

    def select(self, c: int, idx: torch.Tensor) -> torch.Tensor:
        return torch.randperm(len(idx), generator=self.rng)[: self.ipc]

    def skip(self, c: int, idx: torch.Tensor) -> None:
        self.select(c, idx)


@dataclass(frozen=True)
class FeatureCoresetConfig(GeneratorConfig):
    """Settings of feature-space coresets.

    Attributes:
        feature_model: ``random`` (a freshly initialised network of architecture
            ``model``, drawn from the seed) or a path to a saved model file.
        model: architecture of the random feature network.
        batch_size: images per forward pass when embedding.
    """

    feature_model: str = "random"
    model: str = "convnet"
    batch_size: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.batch_size >= 1, "batch_size must be >= 1")


class FeatureCoreset(CoresetGenerator):
    """Coresets that select in the embedding space of a network."""

    Config = FeatureCoresetConfig
    config: FeatureCoresetConfig

    #: training index → row of ``features`` (None: rows are training indices)
    _row: torch.Tensor | None = None

    def setup(self) -> None:
        self.features = self._embed_all()
        super().setup()

    def features_of(self, idx: torch.Tensor) -> torch.Tensor:
        """Features of the training images ``idx``."""
        return self.features[idx if self._row is None else self._row[idx]]

    @torch.no_grad()
    def _embed_all(self) -> torch.Tensor:
        d = self.data
        cfg = self.config
        if cfg.feature_model == "random":
            net = build_model(cfg.model, d.channels, d.num_classes, d.im_size, generator=self.rng)
        else:
            net, _ = load_model(cfg.feature_model)
            got = (net.config["channels"], tuple(net.config["im_size"]))
            if got != (d.channels, tuple(d.im_size)):
                raise ConfigError(
                    f"feature model {cfg.feature_model!r} does not accept {d.name} images: "
                    f"built for {got[0]}-channel {got[1][0]}x{got[1][1]}, the data is "
                    f"{d.channels}-channel {d.im_size[0]}x{d.im_size[1]}"
                )
        net = net.to(self.device).eval()
        # this rank's classes only (all in one process); rows of ``features`` follow
        # the training indices through ``_row``
        per_class = d.indices_per_class()
        mine = torch.cat([per_class[c] for c in self.my_classes()])
        if len(mine) == len(d.x_train):
            mine = torch.arange(len(d.x_train))
        else:
            self._row = torch.full((len(d.x_train),), -1, dtype=torch.long)
            self._row[mine] = torch.arange(len(mine))
        try:
            feats = [
                net.embed(
                    d.normalize(d.x_train[mine[i : i + cfg.batch_size]]).to(self.device)
                ).cpu()
                for i in range(0, len(mine), cfg.batch_size)
            ]
        except RuntimeError as e:
            raise ConfigError(
                f"feature model {cfg.feature_model!r} does not accept {d.name} images "
                f"({d.channels}x{d.im_size[0]}x{d.im_size[1]}): {str(e).splitlines()[0]}"
            ) from None
        return torch.cat(feats).double()


@GENERATORS.register("herding", "greedy class-mean matching in feature space")
class Herding(FeatureCoreset):
    """Herding (Welling, ICML 2009): greedily add the image that keeps the running mean
    of the chosen features closest to the class-mean feature,
    ``argmin_i || mu - (sum_{j in S} f_j + f_i) / (|S| + 1) ||``.
    """

    def select(self, c: int, idx: torch.Tensor) -> torch.Tensor:
        f = self.features_of(idx)
        mu = f.mean(0)
        total = torch.zeros_like(mu)
        available = torch.ones(len(idx), dtype=torch.bool)
        chosen = []
        for k in range(1, self.ipc + 1):
            dist = ((mu - (total + f) / k) ** 2).sum(1)
            dist[~available] = float("inf")
            i = int(dist.argmin())
            chosen.append(i)
            available[i] = False
            total += f[i]
        return torch.tensor(chosen, dtype=torch.long)


@GENERATORS.register("kcenter", "greedy k-center coverage in feature space")
class KCenter(FeatureCoreset):
    """Greedy k-center (Sener & Savarese, ICLR 2018): start from the image nearest the
    class-mean feature, then repeatedly add the image farthest from all chosen ones
    (a 2-approximation of the minimax cover). Distances by faiss.
    """

    def select(self, c: int, idx: torch.Tensor) -> torch.Tensor:
        import faiss  # only k-center needs it: importing distill_data stays light

        f = np.ascontiguousarray(self.features_of(idx).float().numpy())
        mu = f.mean(0, keepdims=True)
        first = int(faiss.pairwise_distances(mu, f)[0].argmin())
        chosen = [first]
        mind = faiss.pairwise_distances(f[first : first + 1], f)[0]
        for _ in range(1, self.ipc):
            mind[chosen] = -1.0
            i = int(mind.argmax())
            chosen.append(i)
            mind = np.minimum(mind, faiss.pairwise_distances(f[i : i + 1], f)[0])
        return torch.tensor(chosen, dtype=torch.long)
