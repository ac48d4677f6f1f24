"""What DSA and the kornia pipelines share: a batch augmentation that draws its
parameters (``sample``) and replays them (``apply``), and its per-image wrapper for
``Dataset``/``DataLoader`` pipelines."""

from __future__ import annotations

from typing import Any

import torch

from distill_data.errors import ConfigError, DataError


class BatchAugment:
    """Mixin: ``aug(x, generator=g)`` draws parameters for the batch and applies them;
    ``aug(x, params=p)`` replays given ones (siamese augmentation). Subclasses define
    ``sample(n, height, width, generator=None, device=None)`` and ``apply(x, params)``."""

    #: how messages name the augmentation
    kind = "augmentation"

    def __call__(
        self, x: torch.Tensor, generator: torch.Generator | None = None, params: Any = None
    ) -> torch.Tensor:
        """Augment ``x`` ``(n, C, H, W)``, drawing with ``generator`` unless ``params``."""
        if params is None:
            if not isinstance(x, torch.Tensor) or x.dim() != 4:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)
                raise DataError(f"{self.kind} expects images of shape (n, C, H, W), got {shape}")
            n, _, h, w = x.shape
            params = self.sample(int(n), int(h), int(w), generator=generator, device=x.device)
        return self.apply(x, params)

    def check_batch(self, x: Any, params: Any, params_type: type, hint: str = "") -> None:
        """What ``apply`` needs: 4-D floating images and parameters of ``params_type``
        drawn for this batch size (``hint`` is added to the size mismatch message)."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
            desc = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x)
            raise DataError(f"{self.kind} expects floating images (n, C, H, W), got {desc}")
        if not isinstance(params, params_type):
            raise ConfigError(
                f"{self.kind} apply expects {params_type.__name__}, got {type(params).__name__}"
            )
        if x.shape[0] != params.n:
            raise ConfigError(
                f"{self.kind} apply: batch has {x.shape[0]} images but params were drawn "
                f"for n={params.n}{hint}"
            )


class PerSample:
    """A batch augmenter (``aug(x, generator=g)``) as a per-image transform
    ``(C, H, W) -> (C, H, W)`` for ``Dataset``/``DataLoader``.

    Each process (DataLoader worker) draws from its own generator seeded from
    ``torch.initial_seed()``, which the DataLoader sets differently per worker, so
    workers do not repeat each other's draws and the global RNG is not consumed.
    """

    def __init__(self, augment: Any) -> None:
        self.augment = augment
        self._gen: torch.Generator | None = None
        self._seed: int | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        seed = torch.initial_seed()
        if self._gen is None or self._seed != seed:
            self._gen, self._seed = torch.Generator().manual_seed(seed), seed
        return self.augment(x.unsqueeze(0), generator=self._gen).squeeze(0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.augment!r})"

    def __getstate__(self) -> dict:
        return {"augment": self.augment, "_gen": None, "_seed": None}
