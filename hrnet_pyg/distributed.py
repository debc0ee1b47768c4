"""Multi-GPU / multi-node training with ``torchrun`` and DistributedDataParallel.

``torchrun --nproc_per_node=N -m hrnet_pyg train --config ...`` needs no code change: the
launcher's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) is read by :func:`init_distributed`, and the pieces below do the rest:

- :func:`prepare_for_training` (called by :func:`hrnet_pyg.engine.fit`): graph scope
  (:func:`set_graph_scope`), SyncBatchNorm, ``DistributedDataParallel`` wrapping;
- :class:`~hrnet_pyg.data.PKSampler` with ``num_replicas``/``rank``: every rank gets whole,
  disjoint identities of one global P x K plan;
- :func:`gather_graph_batch` (:func:`all_gather_with_grad` of the features, set by
  :func:`set_graph_scope` as the model's ``graph_batch`` hook when ``graph_scope == "global"``, so
  that the forward, which DDP wraps, calls it): the graph modules see the batch of all ranks;
- :class:`ShardSampler` + :func:`all_gather_cat` (used by :func:`hrnet_pyg.engine.extract`):
  each rank extracts a contiguous shard of a test split, every rank gets the whole split back
  in the original order, and rank 0 computes the metrics.

Gradient bookkeeping of the global graph (``graph_scope="global"``), with ``R`` ranks: every rank
computes the same graph losses ``L_g`` on the same gathered features, so the gradient of ``L_g``
with respect to rank ``r``'s rows arrives ``R`` times and is summed back to its owner
(``R * dL_g/dF_r``); DDP then averages the parameter gradients over the ranks (``1/R``). The
update is therefore exactly the single-process gradient of ``mean_r L_cl^r + L_g``, i.e. of the
paper's loss on the global P x K batch (``L_cl`` is a per-image mean, so the average of the
per-rank means is the global mean when the ranks hold equally many images, as PKSampler
guarantees). See ``docs/distributed.md``.
"""
from __future__ import annotations

import atexit
import logging
import os
import time
from collections.abc import Iterator, Sequence, Sized
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Sampler

from hrnet_pyg.runtime import is_main_process, resolve_device, unwrap_model

log = logging.getLogger("hrnet_pyg")

GRAPH_SCOPES = ("local", "global")  # graphs per rank | over the batch of all ranks
_GLOO_RELEASE_S = 0.25  # how long the exit hook leaves the GIL to gloo's workers


# ---------------------------------------------------------------------------- process group
def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank, the number of ranks and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: a single process, no process group
    initialized_here: bool = False  # init_distributed created the process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        """Destroy the process group if :func:`init_distributed` created it."""
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise ValueError(
                f"environment variable {name} is not set, but WORLD_SIZE={os.environ.get('WORLD_SIZE')} "
                "says this is a distributed run; start it with torchrun (which sets RANK, LOCAL_RANK, "
                "WORLD_SIZE, MASTER_ADDR and MASTER_PORT)"
            )
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def _process_device(device: str | torch.device | None, local_rank: int, world_size: int) -> torch.device:
    """This process's device: ``auto``/``cuda`` -> ``cuda:LOCAL_RANK`` when CUDA is present."""
    dev = resolve_device(device)
    if dev.type != "cuda":
        return dev
    if world_size == 1:
        return dev
    if dev.index is not None and dev.index != local_rank:
        raise ValueError(
            f"device={device} names one GPU, but {world_size} processes were started; use "
            "device auto or cuda: each process then takes cuda:LOCAL_RANK (restrict the GPUs "
            "with CUDA_VISIBLE_DEVICES)"
        )
    if local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} visible "
            "GPU(s); start at most one process per GPU (torchrun --nproc_per_node)"
        )
    return torch.device("cuda", local_rank)


def init_distributed(
    device: str | torch.device | None = "auto",
    backend: str | None = None,
    timeout_minutes: float | None = 60.0,
) -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment.

    Without ``WORLD_SIZE > 1`` in the environment (a plain ``python`` run) nothing is initialised
    and the context says rank 0 of 1. An already initialised process group is reused.

    Args:
        device: ``"auto"`` (default): ``cuda:LOCAL_RANK`` when CUDA is present, else the CPU;
            ``"cuda"`` likewise; ``"cpu"`` forces the CPU (gloo).
        backend: ``None`` (default): ``nccl`` for CUDA devices, ``gloo`` for the CPU.
        timeout_minutes: how long a collective may wait (default: 60; torch's own defaults are
            10 min for NCCL, 30 for gloo). Ranks 1.. wait for rank 0 while it computes the test
            metrics alone, e.g. at the next experiment's first barrier in a sweep. ``None``:
            torch's default.

    The process group lives until the process exits (an ``atexit`` hook destroys it) or until
    :meth:`DistributedContext.close`, so several experiments in one process share it.
    """
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
        local_rank = _env_int("LOCAL_RANK", rank)
        dev = _process_device(device, local_rank, world)
        return DistributedContext(rank, world, local_rank, dev, dist.get_backend(), False)
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistributedContext(device=_process_device(device, 0, 1))
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK", rank)
    dev = _process_device(device, local_rank, world)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    kwargs: dict[str, Any] = {}
    if timeout_minutes is not None:
        kwargs["timeout"] = timedelta(minutes=timeout_minutes)
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world, **kwargs)
    atexit.register(_destroy_at_exit)
    log.debug("joined process group: rank %d of %d (%s, %s)", rank, world, backend, dev)
    return DistributedContext(rank, world, local_rank, dev, backend, True)


@contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. generating a dataset), the other ranks after it."""
    if is_distributed() and not is_main_process():
        dist.barrier()
    try:
        yield
    finally:
        if is_distributed() and is_main_process():
            dist.barrier()


def _destroy_at_exit() -> None:
    if not (dist.is_available() and dist.is_initialized()):
        return
    gloo = dist.get_backend() == "gloo"
    dist.destroy_process_group()
    if gloo:
        # gloo's worker threads drop a collective's tensors just after it returns, and dropping
        # a tensor that Python created takes the GIL. A thread that asks for the GIL once the
        # interpreter finalises aborts the process ("terminate called without an active
        # exception"), so the workers get the GIL here, while the interpreter is whole.
        time.sleep(_GLOO_RELEASE_S)


def _comm_device(x: Tensor) -> torch.device:
    """NCCL only moves CUDA tensors; gloo takes them where they are."""
    if dist.get_backend() == "nccl" and x.device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return x.device


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    size = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.empty_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s) for s in sizes]


def _all_gather_padded(x: Tensor, sizes: Sequence[int]) -> list[Tensor]:
    """``all_gather`` of tensors whose first dimension differs across ranks (padded, then cut)."""
    longest = max(sizes)
    if x.size(0) < longest:
        x = torch.cat([x, x.new_zeros((longest - x.size(0),) + tuple(x.shape[1:]))])
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x.contiguous())
    return [p[:s] for p, s in zip(parts, sizes, strict=False)]


# ---------------------------------------------------------------------------- gathering
class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenation of every rank's rows; the backward sums each row's gradient over the ranks
    and hands it to the row's owner.

    Not ``torch.distributed.nn.functional.all_gather``: deprecated in torch 2.14 (a FutureWarning
    per call), equal shapes only, and on gloo its backward emulates reduce-scatter with one
    scatter per rank. One ``all_reduce`` of the (N_global, d) gradient is simple and works on
    every backend; the tensor is small (66 x 2048 floats in the paper's setting).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, sizes: tuple[int, ...]) -> Tensor:
        ctx.sizes, ctx.rank = sizes, dist.get_rank()
        return torch.cat(_all_gather_padded(x, sizes))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()  # all_reduce is in place; autograd may reuse ``grad``
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Rows of ``x`` of every rank, concatenated in rank order, differentiable.

    The gradient that reaches this rank's ``x`` is the sum, over all ranks, of the gradient each
    rank's loss sends to these rows (see the module docstring for why that, with DDP's averaging,
    gives the single-process gradient). The ranks may hold different numbers of rows.
    Outside a process group of more than one rank, ``x`` itself is returned.

    Shapes:
        - **input:** :math:`(N_r, *)` on rank :math:`r`
        - **output:** :math:`(\\sum_r N_r, *)` on every rank
    """
    if not is_distributed():
        return x
    sizes = tuple(_gather_sizes(x.size(0), x.device))
    return _AllGatherWithGrad.apply(x, sizes)


@torch.no_grad()
def all_gather_cat(x: Tensor) -> Tensor:
    """Rows of ``x`` of every rank concatenated in rank order (no gradient), on ``x``'s device.

    The ranks may hold different numbers of rows (e.g. the shards of a :class:`ShardSampler`).
    Outside a process group of more than one rank, ``x`` itself is returned.
    """
    if not is_distributed():
        return x
    comm = _comm_device(x)
    local = x.to(comm)
    sizes = _gather_sizes(local.size(0), comm)
    return torch.cat(_all_gather_padded(local, sizes)).to(x.device)


def gather_graph_batch(feats: Tensor, pids: Tensor) -> tuple[Tensor, Tensor, float]:
    """The global batch for ``graph_scope="global"``: features with gradients, identities without,
    and the weight of this rank's ``L_cl`` that makes DDP's average over the ranks the mean over the
    global batch (1 when the ranks hold equally many images). The model's ``graph_batch`` hook."""
    n_local = feats.size(0)
    feats, pids = all_gather_with_grad(feats), all_gather_cat(pids)
    return feats, pids, get_world_size() * n_local / feats.size(0)


def check_graph_scope(scope: str) -> str:
    if scope not in GRAPH_SCOPES:
        raise ValueError(
            f"graph_scope must be 'local' (graphs per rank) or 'global' (graphs over the batch of "
            f"all ranks), got {scope!r}"
        )
    return scope


def set_graph_scope(model: nn.Module, scope: str) -> None:
    """``"global"``: the model's graphs span the batch of all ranks (its ``graph_batch`` hook is
    :func:`gather_graph_batch`); ``"local"``: this rank's batch (no hook)."""
    unwrap_model(model).graph_batch = gather_graph_batch if check_graph_scope(scope) == "global" else None


def graph_scope_of(model: nn.Module) -> str:
    """The scope :func:`set_graph_scope` gave ``model`` (``"local"`` by default)."""
    return "global" if getattr(unwrap_model(model), "graph_batch", None) is not None else "local"


# ---------------------------------------------------------------------------- samplers
class ShardSampler(Sampler[int]):
    """A contiguous, unpadded shard of ``range(n)`` for inference: rank ``r`` of ``R`` gets
    ``[r * n // R, (r + 1) * n // R)``.

    Concatenating the shards in rank order gives ``range(n)`` back, every index exactly once
    (torch's ``DistributedSampler`` interleaves and pads with repeats, which would change the
    gallery). :func:`hrnet_pyg.engine.extract` recognises a loader built on this sampler and
    gathers the shards, so every rank returns the whole split.

    Args:
        data_source: a sized dataset or the number of items ``n``.
        num_replicas: number of ranks (default: the process group's size, 1 without one).
        rank: this rank (default: the process group's rank, 0 without one).
    """

    def __init__(
        self, data_source: Sized | int, num_replicas: int | None = None, rank: int | None = None
    ) -> None:
        n = data_source if isinstance(data_source, int) else len(data_source)
        self.num_replicas = get_world_size() if num_replicas is None else int(num_replicas)
        self.rank = get_rank() if rank is None else int(rank)
        if self.num_replicas < 1 or not 0 <= self.rank < self.num_replicas:
            raise ValueError(
                f"need num_replicas >= 1 and 0 <= rank < num_replicas, got "
                f"num_replicas={self.num_replicas}, rank={self.rank}"
            )
        if n < self.num_replicas:
            raise ValueError(f"cannot shard {n} items over {self.num_replicas} ranks: every rank needs one")
        self.n = n
        self.start = self.rank * n // self.num_replicas
        self.stop = (self.rank + 1) * n // self.num_replicas

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start

    def __repr__(self) -> str:
        return f"ShardSampler(n={self.n}, rank={self.rank}, num_replicas={self.num_replicas})"


def loader_is_sharded(loader: Any) -> bool:
    """True when ``loader`` reads one :class:`ShardSampler` shard of a split of several."""
    sampler = getattr(loader, "sampler", None)
    return isinstance(sampler, ShardSampler) and sampler.num_replicas > 1


# ---------------------------------------------------------------------------- training
def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """SyncBatchNorm in the backbone and the BNNeck (the modules that see per-rank batches).

    The IR module's own BNNeck is left alone: with ``graph_scope="global"`` it already sees the
    global batch, and with ``"local"`` its graph is per rank too.
    """
    inner = unwrap_model(model)
    for name in ("backbone", "bnneck"):
        sub = getattr(inner, name, None)
        if sub is not None:
            setattr(inner, name, nn.SyncBatchNorm.convert_sync_batchnorm(sub))
    return model


def prepare_for_training(
    model: nn.Module,
    device: torch.device,
    train_loader: Any = None,
    *,
    sync_bn: bool = False,
    graph_scope: str | None = None,
    find_unused_parameters: bool = False,
) -> nn.Module:
    """What :func:`hrnet_pyg.engine.fit` does before its first step; returns the model to train.

    Sets the graph scope of the HRNet (:func:`set_graph_scope`), converts BatchNorm to SyncBatchNorm
    when asked, and wraps the model in ``DistributedDataParallel`` inside a process group of more than one rank (DDP
    broadcasts rank 0's parameters, so all ranks start equal). A no-op wrapper-wise otherwise.
    """
    inner = unwrap_model(model)
    if graph_scope is not None:
        set_graph_scope(inner, graph_scope)
    if sync_bn:
        if is_distributed() and device.type == "cpu":
            raise ValueError(
                "sync_bn needs CUDA devices (torch's SyncBatchNorm has no CPU implementation); "
                "set run.sync_bn=false for CPU runs"
            )
        convert_sync_batchnorm(inner)
    if not is_distributed() or isinstance(model, nn.parallel.DistributedDataParallel):
        return model
    sampler = getattr(train_loader, "batch_sampler", None) or getattr(train_loader, "sampler", None)
    if getattr(sampler, "num_replicas", get_world_size()) != get_world_size():
        log.warning(
            "the training sampler has num_replicas=%s but %d ranks are running: the ranks will "
            "not split the batches as intended (build PKSampler with num_replicas and rank)",
            getattr(sampler, "num_replicas", None), get_world_size(),
        )
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=ids, output_device=ids[0] if ids else None,
        find_unused_parameters=find_unused_parameters,
    )


@torch.no_grad()
def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank.

    DDP broadcasts them at the start of each forward, so after the last step each rank holds its
    own running statistics; a sharded evaluation must use one model (rank 0's, the checkpoint's).
    """
    if not is_distributed():
        return
    for buf in unwrap_model(model).buffers():
        comm = _comm_device(buf)
        b = buf.to(comm)
        dist.broadcast(b, src=0)
        buf.copy_(b)


def reduce_epoch_stats(sums: dict[str, float], images: int) -> tuple[dict[str, float], int]:
    """Loss sums averaged over the ranks and the images counted over all of them (for logging)."""
    if not is_distributed():
        return sums, images
    keys = list(sums)  # the same loss terms, in the same order, on every rank
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([sums[k] for k in keys] + [float(images)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    world = dist.get_world_size()
    values = t.tolist()
    return {k: values[i] / world for i, k in enumerate(keys)}, int(round(values[-1]))


__all__ = [
    "GRAPH_SCOPES",
    "DistributedContext",
    "ShardSampler",
    "all_gather_cat",
    "all_gather_with_grad",
    "broadcast_buffers",
    "check_graph_scope",
    "convert_sync_batchnorm",
    "gather_graph_batch",
    "get_rank",
    "get_world_size",
    "graph_scope_of",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "loader_is_sharded",
    "main_process_first",
    "prepare_for_training",
    "reduce_epoch_stats",
    "set_graph_scope",
]
