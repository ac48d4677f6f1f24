"""Shared loop of teacher-inversion generators that make images in independent batches
(ZeroQ, Genie, SRe2L, INFER): per-batch set-up, the step → batch dispatch, finished
batches, labels from the teacher's predictions, and resumable state.

Every batch draws from its own ``torch.Generator``, seeded from (seed, batch index)
(:func:`batch_seed`), so a batch's images do not depend on which batches ran before it
in the same process: under torchrun each rank makes its own block of batches and the
gathered set equals a one-process build's. (Until 3 Dec 2026 one generator ran through
all batches in turn; sets built before then differ from today's for the same seed.)"""

from __future__ import annotations

import abc
import hashlib
from typing import Any, ClassVar

import torch

from distill_data.synth.base import Generator


def batch_seed(seed: int, batch: int) -> int:
    """The seed of batch ``batch`` of a build seeded ``seed`` (a hash: neighbouring
    seeds and batches get unrelated streams)."""
    digest = hashlib.sha256(f"distill-data batch {seed} {batch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class BatchedInversion(Generator):
    """Images are optimised in batches of ``config.batch_size`` for ``config.iterations``
    steps each; ``step(i)`` works on batch ``i // iterations``. Subclasses implement
    :meth:`start_batch`, :meth:`images`, :meth:`loss` and the batch state."""

    iterative = True
    samples_real = False
    needs_real = False
    needs_teacher = True
    supports_count = True
    #: optimisers / schedulers of the current batch, set by start_batch
    optimizers: list[torch.optim.Optimizer]
    schedulers: list[Any]
    per_iteration_schedulers: ClassVar[bool] = True
    # ``iterations`` is per batch here: changing it on resume would remap finished steps
    resume_free = ("checkpoint_every",)

    shard_by = "batch"

    def setup(self) -> None:
        self.teacher = self.teacher.to(self.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.sizes = self.plan()
        #: this rank's block of batches (all of them in one process)
        self.mine = self.dist.shard(len(self.sizes))
        self.done: list[torch.Tensor] = []
        self.batch = self.mine.start
        self.begin_batch(self.batch)

    def shard_units(self) -> int:
        return len(self.plan())

    def plan(self) -> list[int]:
        """Batch sizes: full batches, the rest last; a lone remainder image joins the
        last full batch (a batch of one has no batch statistics)."""
        bs, n = self.config.batch_size, self.n_images
        sizes = [bs] * (n // bs) + ([n % bs] if n % bs else [])
        if len(sizes) > 1 and sizes[-1] == 1:
            sizes.pop()
            sizes[-1] += 1
        return sizes

    def total_steps(self) -> int:
        return self.config.iterations * len(self.dist.shard(len(self.plan())))

    def build_steps(self) -> int:
        return self.config.iterations * len(self.plan())

    def begin_batch(self, b: int) -> None:
        """Batch ``b``'s own random stream, then the method's :meth:`start_batch`."""
        self.rng = torch.Generator().manual_seed(batch_seed(self.seed, b))
        self.start_batch(b)

    @abc.abstractmethod
    def start_batch(self, b: int) -> None:
        """Create the learnable state, optimisers and schedulers of batch ``b``."""

    @abc.abstractmethod
    def images(self) -> torch.Tensor:
        """The current batch's images (differentiable w.r.t. the learnable state)."""

    @abc.abstractmethod
    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """The method's objective on images ``x``."""

    def schedule(self, iteration: int, loss: float) -> None:
        """Step the schedulers after an optimiser step (default: plateau on the loss)."""
        for s in self.schedulers:
            s.step(loss)

    @abc.abstractmethod
    def batch_state(self) -> dict[str, Any]:
        """Learnable tensors of the current batch (optimiser states are added here)."""

    @abc.abstractmethod
    def load_batch_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`batch_state`."""

    def step(self, iteration: int) -> float:
        b = self.mine.start + iteration // self.config.iterations
        if b != self.batch:
            self._finish_batch()
            self.batch = b
            self.begin_batch(b)
        loss = self.loss(self.images())
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in self.optimizers:
            opt.step()
        value = float(loss.detach())
        self.schedule(iteration, value)
        if iteration + 1 == self.total_steps():
            self._finish_batch()
        return value

    @torch.no_grad()
    def _finish_batch(self) -> None:
        if len(self.done) == self.batch - self.mine.start:
            self.done.append(self.images().detach().cpu().clone())

    @torch.no_grad()
    def result(self) -> tuple[torch.Tensor, torch.Tensor, None]:
        images = torch.cat(self.done) if self.done else self.images().detach().cpu()
        logits = torch.cat(
            [
                self.teacher(images[i : i + 256].to(self.device)).cpu()
                for i in range(0, len(images), 256)
            ]
        )
        return images, logits.argmax(1), None

    def state_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "done": [t.clone() for t in self.done],
            "learn": self.batch_state(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [s.state_dict() for s in self.schedulers],
        }

    def state_template(self, state: dict[str, Any]) -> dict[str, Any]:
        """Batch ``state['batch']``'s learnable state, and one finished batch of the
        planned size per entry of ``done`` (shapes only: meta tensors)."""
        b, done = state.get("batch"), state.get("done")
        if isinstance(b, bool) or not isinstance(b, int) or b not in self.mine:
            raise ValueError(f"state['batch'] = {b!r} is not a batch of this build")
        before = b - self.mine.start
        if not isinstance(done, list) or len(done) not in (before, before + 1):
            raise ValueError(f"state['done'] does not hold the {before} batches finished before")
        self.begin_batch(b)
        template = self.state_dict()
        shape = tuple(self.images().shape[1:])
        template["done"] = [
            torch.empty(self.sizes[self.mine.start + i], *shape, device="meta")
            for i in range(len(done))
        ]
        return template

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batch = int(state["batch"])
        self.begin_batch(self.batch)
        self.done = list(state["done"])
        self.load_batch_state(state["learn"])
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)
        for sch, s in zip(self.schedulers, state["schedulers"]):
            sch.load_state_dict(s)
