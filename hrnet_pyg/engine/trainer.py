"""The training loop (paper Sec. 4.2) as a :class:`Trainer`: one step, one loop, hooks around them.

The loop owns what every run needs -- the learning-rate schedule, the sampler's epoch, the loss
sums and the epoch's row -- and :meth:`Trainer.run_step`, the one place where training calls the
model. Everything a run may or may not want (resume, checkpoints, evaluation, the CSV,
TensorBoard, progress lines, Ctrl-C) is a :class:`HookBase` in :mod:`hrnet_pyg.engine.hooks`,
called at fixed points::

    before_train
    for each epoch:  (the schedule's lr, sampler.set_epoch, model.train())
        before_epoch
        for each batch:  before_step, run_step, (losses kept), after_step
        (the epoch's row appended to the history)  after_epoch
    after_train  (also after an error or Ctrl-C)

Hooks run in the order given; ``after_epoch`` hooks see the finished row and may add to it
(evaluation metrics).
"""
from __future__ import annotations

import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hrnet_pyg.config import HRNetConfig
from hrnet_pyg.distributed import broadcast_buffers, reduce_epoch_stats
from hrnet_pyg.engine.eval import split_batch
from hrnet_pyg.runtime import autocast_context, unwrap_model


def lr_at_epoch(cfg: HRNetConfig, epoch: int) -> float:
    """Learning rate of a (0-based) epoch: Sec. 4.2's step schedule, plus optional warm-up.

    The warm-up (BoT, Luo et al. 2019: linear from lr/10 over ``warmup_epochs``) is not in the
    paper and off by default.
    """
    lr = cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    if cfg.warmup_epochs > 0 and epoch < cfg.warmup_epochs:
        lr *= 0.1 + 0.9 * epoch / cfg.warmup_epochs
    return lr


def batch_sampler_of(loader: Any) -> Any:
    """The loader's (batch) sampler that has ``set_epoch``, or ``None``."""
    for candidate in (getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None)):
        if candidate is not None and hasattr(candidate, "set_epoch"):
            return candidate
    return None


class LossMeter:
    """Per-step loss values kept on the device until :meth:`read` fetches them.

    A ``float(loss)`` per term and step would make the host wait for the GPU at every step
    (no queueing of the next step's kernels); one transfer per logging interval does not.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[int, dict[str, Tensor]]] = []
        self.sums: dict[str, float] = {}  # per term: the sum over the steps read

    def add(self, step: int, terms: dict[str, Tensor], total: Tensor) -> None:
        values = {name: v.detach().float().reshape(()) for name, v in terms.items()}
        values["total"] = total.detach().float().reshape(())
        self.pending.append((step, values))

    def read(self) -> list[tuple[int, dict[str, float]]]:
        """The pending steps' values, with one device-to-host copy; they join :attr:`sums`."""
        if not self.pending:
            return []
        flat = iter(torch.stack([v for _, values in self.pending for v in values.values()]).tolist())
        read = [(step, {name: next(flat) for name in values}) for step, values in self.pending]
        for _, values in read:
            for name, value in values.items():
                self.sums[name] = self.sums.get(name, 0.0) + value
        self.pending.clear()
        return read


@dataclass
class TrainState:
    """What the loop knows, for its hooks to read (and, where said, to set)."""

    total_epochs: int
    start_epoch: int = 0  # set by a resume
    global_step: int = 0  # steps of the whole run (a resume continues the count)
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per finished epoch
    best: dict[str, Any] | None = None  # {"epoch", "mAP"} of best.pth
    checkpoint: Path | None = None  # the last checkpoint written
    # the epoch in progress
    epoch: int = 0  # 0-based
    lr: float = 0.0
    planned: int | None = None  # steps this epoch will take, when the loader has a length
    steps: int = 0  # steps taken
    images: int = 0
    read: int = 0  # steps whose losses were read (the means of the progress bar)
    meter: LossMeter = field(default_factory=LossMeter)
    t0: float = 0.0
    row: dict[str, Any] = field(default_factory=dict)  # the finished epoch's row
    # the step just taken
    out: Any = None  # the model's output (None outside after_step)
    losses_read: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # values fetched now
    interrupted: bool = False  # Ctrl-C: after_train hooks run, then the loop raises
    stop: BaseException | None = None  # what to raise then (set by the Ctrl-C hook)

    def mean_losses(self) -> dict[str, float]:
        """Running means of the steps read so far this epoch."""
        return {k: v / max(self.read, 1) for k, v in self.meter.sums.items()}


class HookBase:
    """Something done around the loop; :class:`Trainer` sets :attr:`trainer` (a weak proxy: the
    hook does not keep its trainer alive) when registering it.

    Every method does nothing unless overridden. ``after_train`` also runs when the loop stops
    with an error or Ctrl-C (``trainer.state.interrupted``).
    """

    trainer: Trainer

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_epoch(self) -> None:
        pass

    def after_epoch(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass


class Trainer:
    """Sec. 4.2's loop: a step per batch, the schedule per epoch, hooks around both.

    Args:
        model: the model being trained (possibly DDP-wrapped), on ``device``; evaluation hooks
            and checkpoints use it.
        loader: yields ``(inputs, pids, ...)``; iterated once per epoch.
        optimizer: its learning rate is set from :func:`lr_at_epoch` at each epoch.
        scaler: a ``GradScaler`` (disabled unless fp16).
        total_epochs: epochs of the whole run (a resume continues towards it).
        device: where batches go.
        amp: autocast (see :func:`hrnet_pyg.runtime.autocast_context`).
        channels_last: NHWC input images.
        step_model: what :meth:`run_step` calls (the compiled model); default ``model``.
        max_steps_per_epoch: cut epochs short (default: whole epochs).
        read_every: steps between two reads of the loss values (the loop's one host-device
            synchronisation per interval).
        hooks: run in this order at each point.
    """

    def __init__(
        self, model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, scaler: Any, *,
        total_epochs: int, device: torch.device, amp: bool | str = False, channels_last: bool = False,
        step_model: nn.Module | None = None, max_steps_per_epoch: int | None = None, read_every: int = 20,
        hooks: Sequence[HookBase] = (),
    ) -> None:
        self.model, self.loader, self.optimizer, self.scaler = model, loader, optimizer, scaler
        self.step_model = step_model if step_model is not None else model
        self.device, self.amp, self.channels_last = device, amp, channels_last
        self.max_steps, self.read_every = max_steps_per_epoch, read_every
        self.cfg: HRNetConfig = unwrap_model(model).config
        self.sampler = batch_sampler_of(loader)
        self.state = TrainState(total_epochs=total_epochs)
        self.hooks: list[HookBase] = []
        for hook in hooks:
            # A proxy, so that hooks do not own the trainer: a trainer <-> hook cycle would keep
            # the loader, and the workers of a persistent loader, alive after the run until the
            # garbage collector ran, possibly inside the forked workers of a later DataLoader.
            hook.trainer = weakref.proxy(self)
            self.hooks.append(hook)

    def call_hooks(self, point: str) -> None:
        for hook in self.hooks:
            getattr(hook, point)()

    def train(self) -> None:
        """``before_train``, the epochs from ``state.start_epoch``, ``after_train``.

        Ctrl-C ends the loop; the ``after_train`` hooks still run, then the exception a hook put
        in ``state.stop`` (else the ``KeyboardInterrupt``) is raised.
        """
        state = self.state
        self.call_hooks("before_train")
        state.epoch = state.start_epoch
        try:
            for epoch in range(state.start_epoch, state.total_epochs):
                self.train_epoch(epoch)
        except KeyboardInterrupt:
            state.interrupted = True
        finally:
            self.call_hooks("after_train")
        if state.interrupted:
            raise state.stop if state.stop is not None else KeyboardInterrupt
        broadcast_buffers(self.model)  # distributed: every rank ends with rank 0's BN statistics (the checkpoint's)

    def train_epoch(self, epoch: int) -> None:
        """One epoch: the loader iterated once, a step per batch, the epoch's row."""
        self.begin_epoch(epoch)
        self.call_hooks("before_epoch")
        # The loader is iterated once per epoch, here: with workers every iter() draws the
        # sampler's plan and starts prefetching (and a second iter() would discard that).
        for step, batch in enumerate(self.loader):
            if self.max_steps is not None and step >= self.max_steps:
                break
            self.call_hooks("before_step")
            inputs, pids = self.batch_to_device(batch)
            self.count_step(self.run_step(inputs, pids), inputs.size(0))
            self.call_hooks("after_step")
            self.state.out = None  # the step's activations are freed before the next forward
        self.end_epoch()
        self.call_hooks("after_epoch")

    def run_step(self, inputs: Tensor, pids: Tensor) -> Any:
        """One optimisation step on one batch; returns the model's output (``.loss``, ``.losses``).

        The one place where training calls the model.
        """
        with autocast_context(self.device, self.amp):
            try:
                out = self.step_model(inputs, pids)
            except ValueError as exc:
                if "non-finite" in str(exc):
                    where = f"epoch {self.state.epoch + 1}, step {self.state.steps + 1}"
                    raise FloatingPointError(f"{exc} at {where}") from exc
                raise
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return out

    def batch_to_device(self, batch: Any) -> tuple[Tensor, Tensor]:
        """(inputs, pids) of a loader item, on the device (inputs NHWC with ``channels_last``)."""
        inputs, pids, _ = split_batch(batch)
        inputs = inputs.to(self.device, non_blocking=True)
        if self.channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs, pids.to(self.device, non_blocking=True)

    def begin_epoch(self, epoch: int) -> None:
        """The sampler's epoch, the schedule's learning rate, fresh counters."""
        state = self.state
        state.epoch, state.steps, state.planned, state.row = epoch, 0, None, {}
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        state.lr = lr_at_epoch(self.cfg, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = state.lr
        self.model.train()
        state.meter, state.images, state.read, state.t0 = LossMeter(), 0, 0, time.perf_counter()
        try:
            state.planned = len(self.loader)  # type: ignore[arg-type]
        except TypeError:  # an iterable without len()
            state.planned = None
        if state.planned is not None and self.max_steps is not None:
            state.planned = min(state.planned, self.max_steps)

    def count_step(self, out: Any, images: int) -> None:
        """Count the step; keep its losses on the device, read them once per ``read_every`` steps."""
        state = self.state
        state.out = out
        state.steps += 1
        state.images += images
        state.global_step += 1
        state.meter.add(state.global_step, out.losses, out.loss)
        state.losses_read = []
        if state.steps % self.read_every == 0 or state.steps == state.planned:  # the interval's one read
            state.losses_read = state.meter.read()
            state.read = state.steps

    def end_epoch(self) -> None:
        """The epoch's row (losses averaged over the steps, and over the ranks), in the history."""
        state = self.state
        state.losses_read = state.meter.read()
        if state.steps == 0:
            raise ValueError(
                "the training loader yielded no batch: with a PKSampler it needs at least P "
                f"identities (P = {self.cfg.num_identities}) with images"
            )
        elapsed = time.perf_counter() - state.t0
        sums, images = reduce_epoch_stats(state.meter.sums, state.images)  # distributed: means over ranks
        row: dict[str, Any] = {"epoch": state.epoch + 1, "lr": state.lr, "steps": state.steps}
        row["images_per_s"] = images / elapsed
        row.update({f"loss_{k}": v / state.steps for k, v in sums.items()})
        state.row = row
        state.history.append(row)


__all__ = ["HookBase", "LossMeter", "TrainState", "Trainer", "batch_sampler_of", "lr_at_epoch"]
