"""Running under ``torchrun``: one process group, the work split by rank, one result.

``torchrun --nproc_per_node=K -m distill_data build ...`` starts K copies of the same
command. Each finds its rank in the environment torchrun sets (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``); :func:`context`
joins the process group once (gloo for CPU work, NCCL for CUDA devices) and returns a
:class:`Dist` that the rest of the library asks "which part is mine?" and "combine
this". Without those variables (a plain ``distill-data build``) it is the one-process
context, whose collectives are the identity, so no code path forks on
"distributed or not" beyond asking for its share.

What crosses between ranks is small and explicit: one float64 pair per step (the
loss and a failure flag), Python objects at set-up, checkpoints and the end (gathered
to rank 0 with pickles: they are this job's own tensors, never a file from outside).
A rank whose step raises tells the others through that pair, so every rank stops at
the same step: the failing rank reports its error, the others raise :class:`PeerFailed`
(which the CLI keeps quiet), and nothing is written.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import datetime
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as td

from distill_data.errors import ConfigError, DistillDataError

ENV = ("RANK", "WORLD_SIZE")


class PeerFailed(DistillDataError):
    """Another rank failed; it reported why (this rank has nothing to add)."""


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: ``rank`` of ``world`` (1: no process group)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """True when there are other ranks to talk to."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0 writes files, prints and shows progress."""
        return self.rank == 0

    def shard(self, n: int) -> range:
        """This rank's contiguous block of ``range(n)``; the first ``n % world`` ranks
        take one more (blocks keep their order, so concatenating them by rank restores
        the one-process order)."""
        return shard_range(n, self.rank, self.world)

    # -- collectives (identity with one process) -------------------------------------
    def sync_step(self, loss: float, failed: bool) -> tuple[float, int]:
        """Sum of every rank's loss and the number of ranks that failed this step."""
        if not self.active:
            return loss, int(failed)
        t = _on_backend(torch.tensor([loss, float(failed)], dtype=torch.float64))
        _collective(td.all_reduce, t)  # (under NCCL ``t`` is the CUDA copy: read it)
        total, count = t.tolist()
        return float(total), int(round(count))

    def all_max(self, value: int) -> int:
        if not self.active:
            return value
        t = _on_backend(torch.tensor([value], dtype=torch.int64))
        _collective(td.all_reduce, t, op=td.ReduceOp.MAX)
        return int(t.item())

    def all_reduce_(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Sum (or ``op`` = ``min`` / ``max``) ``t`` over ranks in place (a CPU tensor
        under NCCL travels via the GPU)."""
        if not self.active:
            return t
        moved = _on_backend(t)
        ops = {"sum": td.ReduceOp.SUM, "min": td.ReduceOp.MIN, "max": td.ReduceOp.MAX}
        _collective(td.all_reduce, moved, op=ops[op])
        if moved is not t:
            t.copy_(moved)
        return t

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        _collective(td.all_gather_object, out, obj)
        return out

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (in rank order); None elsewhere."""
        if not self.active:
            return [obj]
        out: list[Any] | None = [None] * self.world if self.main else None
        _collective(td.gather_object, obj, out, dst=0)
        return out

    def scatter(self, objs: list[Any] | None) -> Any:
        """Rank 0 hands ``objs[r]`` to rank r (the others pass None)."""
        if not self.active:
            assert objs is not None
            return objs[0]
        out: list[Any] = [None]
        _collective(td.scatter_object_list, out, objs if self.main else None, src=0)
        return out[0]

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj if self.main else None]
        _collective(td.broadcast_object_list, box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            _collective(td.barrier)

    def agree(self, error: BaseException | None) -> None:
        """Every rank learns whether any rank failed a stage (set-up, resume, result):
        the rank that failed raises its own error, the others :class:`PeerFailed`. Call
        it on every rank, with the stage's exception or None. When several ranks failed,
        the lowest one reports (its error gets ``dist_report = True``)."""
        failed = self.all_gather(None if error is None else first_line(error))
        first = next((r for r, f in enumerate(failed) if f is not None), None)
        if first is None:
            return
        if first == self.rank and error is not None:
            error.dist_report = True  # type: ignore[attr-defined]  # this rank tells
            raise error
        raise PeerFailed(f"rank {first} failed: {failed[first]}")


ONE = Dist()

#: the group whose ranks each hold a block of the current batch's rows (set by the
#: trainer under DDP): batch statistics (activation ranges, LSQ's first step) span it
_BATCH: contextvars.ContextVar[Dist] = contextvars.ContextVar("distill_data_batch", default=ONE)


@contextlib.contextmanager
def batch_group(group: Dist) -> Iterator[None]:
    """Within the block, :func:`batch_minmax` and :func:`batch_abs_mean` reduce over
    ``group`` (each rank holds a block of the batch's rows)."""
    token = _BATCH.set(group)
    try:
        yield
    finally:
        _BATCH.reset(token)


def current_batch_group() -> Dist:
    """The group the current batch is spread over (one process: :data:`ONE`)."""
    return _BATCH.get()


def batch_minmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's float32 minimum and maximum (over every rank's rows under DDP: one
    MAX all-reduce of ``(−min, max)``)."""
    lo, hi = torch.aminmax(x.detach().float())
    group = _BATCH.get()
    if group.active:
        both = group.all_reduce_(torch.stack([-lo, hi]), "max")
        lo, hi = -both[0], both[1]
    return lo, hi


def batch_abs_mean(x: torch.Tensor) -> torch.Tensor | None:
    """mean|x| over every rank's rows (float64 sums), or None with one process (the
    caller then keeps its own arithmetic, unchanged)."""
    group = _BATCH.get()
    if not group.active:
        return None
    a = x.detach().double().abs()
    both = group.all_reduce_(torch.stack([a.sum(), a.new_tensor(float(a.numel()))]))
    return both[0] / both[1]


def batch_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over every rank's part of the batch (a new tensor; with one process
    a copy of ``t``): per-rank partial sums, e.g. of squared errors, made whole."""
    out = t.detach().clone()
    group = _BATCH.get()
    return group.all_reduce_(out) if group.active else out


def together(d: Dist, fn: Any) -> Any:
    """Run one stage (``fn()``) on every rank; if any rank raised, every rank stops
    here: the (first) failing one with its error, the others with PeerFailed."""
    if not d.active:
        return fn()
    try:
        value = fn()
    except Exception as e:
        d.agree(e)
        raise  # pragma: no cover - agree re-raises
    d.agree(None)
    return value


def balance(costs: list[float], world: int) -> list[int]:
    """Owner rank of each job: longest job first to the least-loaded rank (ties to the
    lower rank), so every rank computes the same assignment from the same costs."""
    load = [0.0] * world
    owner = [0] * len(costs)
    for j in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
        r = min(range(world), key=lambda r: (load[r], r))
        owner[j] = r
        load[r] += costs[j]
    return owner


def shard_range(n: int, rank: int, world: int) -> range:
    """Contiguous, balanced block ``rank`` of ``world`` over ``range(n)``."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def launched() -> bool:
    """True when torchrun (or another launcher) started this process as one of several."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    except ValueError:
        return False


def context(device: str | torch.device = "cpu") -> Dist:
    """This process's :class:`Dist`: the group the caller already made, the one the
    torchrun environment describes (joined here, once), or the one-process context.
    The backend is NCCL for CUDA devices and gloo otherwise; ``DISTILL_DATA_BACKEND``
    (``gloo``/``nccl``) overrides it, e.g. gloo for two ranks sharing one GPU."""
    if td.is_available() and td.is_initialized():
        return Dist(td.get_rank(), td.get_world_size(), _local_rank())
    if not launched():
        return ONE
    if not td.is_available():  # pragma: no cover - every supported torch has it
        raise ConfigError("this torch build has no torch.distributed; run one process")
    device = torch.device(device)
    backend = os.environ.get("DISTILL_DATA_BACKEND") or (
        "nccl" if device.type == "cuda" else "gloo"
    )
    if backend not in ("nccl", "gloo"):
        raise ConfigError(f"DISTILL_DATA_BACKEND must be nccl or gloo, got {backend!r}")
    if backend == "nccl":
        gpus = torch.cuda.device_count()
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        if local > gpus:
            raise ConfigError(
                f"NCCL needs a GPU per process: {local} processes on this node, {gpus} "
                "GPU(s); start fewer (torchrun --nproc_per_node), or set "
                "DISTILL_DATA_BACKEND=gloo to let them share a GPU (slow; for checks)"
            )
        torch.cuda.set_device(_local_rank())
    try:
        td.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    except (RuntimeError, ValueError) as e:
        raise ConfigError(
            f"could not join the torchrun process group ({backend}): {first_line(e)}"
        ) from None
    global _joined
    if not _joined:
        _joined = True
        atexit.register(close)
    return Dist(td.get_rank(), td.get_world_size(), _local_rank())


def close() -> None:
    """Leave the process group this library joined: a barrier first (a rank that tears
    its connections down while a peer still finishes the last collective aborts the
    peer), then destroy. Registered with ``atexit`` when :func:`context` joins; the CLI
    also calls it on its way out. Harmless when there is no group or it is gone."""
    global _joined
    if not _joined or not (td.is_available() and td.is_initialized()):
        return
    _joined = False
    try:
        td.barrier()
    except RuntimeError:
        pass
    try:
        td.destroy_process_group()
    except RuntimeError:  # pragma: no cover - a broken group is left to exit
        pass


_joined = False


def joined() -> bool:
    """Whether this library joined a torchrun process group in this process."""
    return _joined


def leave(code: int) -> None:
    """End a torchrun worker process with ``code``: after a barrier on success (so no
    rank closes its connections while a peer still finishes the last collective), flush
    and ``os._exit``. Destroying a gloo group, or letting the interpreter's teardown do
    it, aborted a rank now and then ("terminate called without an active exception",
    about 1 run in 6 on this machine, torch 2.13; pytorch/pytorch#190489: gloo's worker
    threads still hold work at interpreter teardown): skipping the C++ teardown of a
    process whose files are all written and closed is the reliable way out. Python
    scripts run under torchrun end with ``distill_data.dist.leave(0)`` for the same
    reason (the ``atexit`` fallback, :func:`close`, still aborts about 1 run in 25)."""
    import sys

    if code == 0:
        try:
            td.barrier()
        except RuntimeError:
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def peek() -> Dist:
    """This process's rank as torchrun set it, without joining a group (for deciding
    who prints, e.g. after an error)."""
    if td.is_available() and td.is_initialized():
        return Dist(td.get_rank(), td.get_world_size(), _local_rank())
    if not launched():
        return ONE
    try:
        return Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), _local_rank())
    except ValueError:
        return ONE


def rank_device(device: torch.device, d: Dist) -> torch.device:
    """Under several ranks, a bare ``cuda`` means this rank's GPU (``cuda:LOCAL_RANK``)."""
    if d.active and device.type == "cuda" and device.index is None:
        return torch.device("cuda", d.local_rank % max(1, torch.cuda.device_count()))
    return device


def _local_rank() -> int:
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return 0


def _on_backend(t: torch.Tensor) -> torch.Tensor:
    """NCCL reduces CUDA tensors only; gloo takes CPU tensors."""
    if td.get_backend() == "nccl" and t.device.type != "cuda":
        return t.to(torch.device("cuda", torch.cuda.current_device()))
    return t


#: this process's collectives so far: calls, seconds inside them (transfer and waiting
#: for slower ranks), and bytes of the tensors it reduced (object collectives excluded)
STATS = {"calls": 0, "seconds": 0.0, "tensor_bytes": 0}


def reset_stats() -> None:
    STATS.update(calls=0, seconds=0.0, tensor_bytes=0)


def _collective(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """A collective whose peer vanished (killed, crashed) is one PeerFailed, not a
    backend traceback. Counted in :data:`STATS`."""
    t0 = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    except RuntimeError as e:  # gloo: "Connection closed by peer", NCCL: "... aborted"
        raise PeerFailed(f"lost contact with another rank ({first_line(e)})") from None
    finally:
        STATS["calls"] += 1
        STATS["seconds"] += time.perf_counter() - t0
        STATS["tensor_bytes"] += sum(
            a.numel() * a.element_size() for a in args if isinstance(a, torch.Tensor)
        )


def first_line(error: BaseException) -> str:
    """The first line of an error's text, or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def lost_peer(error: BaseException) -> bool:
    """Whether a backend's RuntimeError says another rank went away (closed or reset
    connection, an aborted communicator), as opposed to this rank's own failure."""
    text = str(error)
    return any(
        s in text for s in ("Connection closed", "Connection reset", "peer", "NCCL", "aborted")
    )


def reports(error: BaseException, d: Dist) -> bool:
    """Whether this rank should print ``error``: rank 0 for errors every rank meets alike
    (bad settings, a diverged loss), the failing rank for its own, never PeerFailed."""
    if isinstance(error, PeerFailed):
        return False
    return d.main or bool(getattr(error, "dist_report", False))
