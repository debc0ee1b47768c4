"""``fit``: the training run of Sec. 4.2, a :class:`~hrnet_pyg.engine.trainer.Trainer` with hooks.

``fit`` checks its arguments, places the model (device, memory format, DDP, ``torch.compile``),
builds the optimiser and the loss scaler, prepares the output folder, and assembles the hooks
of :mod:`hrnet_pyg.engine.hooks` that its arguments ask for. The loop itself is
:class:`~hrnet_pyg.engine.trainer.Trainer`'s: end-to-end on images, or on pre-extracted
features when the model has no backbone (fast ablations on a CPU) -- the same code path either way.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hrnet_pyg.config import HRNetConfig
from hrnet_pyg.distributed import prepare_for_training
from hrnet_pyg.engine.hooks import (
    CheckpointHook,
    CSVHook,
    EpochCallback,
    EpochLogHook,
    EvalHook,
    InterruptHook,
    ProgressHook,
    RankSeedHook,
    ResumeHook,
    TensorBoardHook,
    TrainingInterrupted,
    load_training_state,
    remove_stale_temporaries,
)
from hrnet_pyg.engine.trainer import HookBase, Trainer, lr_at_epoch
from hrnet_pyg.outputs import check_run_folder, clear_run_folder
from hrnet_pyg.runtime import amp_dtype, check_compile, is_main_process, resolve_device, unwrap_model

log = logging.getLogger("hrnet_pyg")


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    checkpoint: Path | None = None  # last checkpoint written


def fit(
    model: nn.Module,
    train_loader: Iterable,
    epochs: int | None = None,
    *,
    device: str | torch.device | None = None,
    amp: bool | str = "auto",
    channels_last: bool = False,
    compile: bool | str = False,
    output_dir: str | Path | None = None,
    resume: str | Path | None = None,
    max_steps_per_epoch: int | None = None,
    progress: bool = True,
    on_epoch_end: Any | None = None,
    sync_bn: bool = False,
    graph_scope: str | None = None,
    print_freq: int = 20,
    eval_fn: Callable[[nn.Module], dict[str, float] | None] | None = None,
    eval_freq: int = 0,
    tensorboard: bool | None = None,
    overwrite: bool = False,
) -> FitResult:
    """Train ``model`` as in Sec. 4.2 and return the per-epoch history.

    A :class:`~hrnet_pyg.engine.trainer.Trainer` with :func:`default_hooks` of these arguments.

    Args:
        model: an :class:`~hrnet_pyg.model.HRNetModule` (with or without backbone).
        train_loader: yields ``(inputs, pids, ...)``; use :class:`~hrnet_pyg.data.PKSampler`
            as its ``batch_sampler`` for the paper's P x K batches.
        epochs: total epochs (default ``config.epochs`` = 200). With ``resume`` it is the total,
            not the number still to run.
        device: ``"auto"`` (default): CUDA when present, else CPU.
        amp: ``"auto"``: bf16 (or fp16 with loss scaling) autocast on CUDA, off on CPU;
            ``False`` off; ``"bf16"`` also on CPU; ``"fp16"``: fp16 with loss scaling (CUDA).
        channels_last: NHWC memory format for the backbone (faster on recent GPUs).
        compile: wrap the model in ``torch.compile`` (``True``: its default backend, inductor);
            a string names the backend (e.g. ``"eager"``: Dynamo's tracing without code generation).
        output_dir: where ``last.pth`` (every epoch, written atomically), ``metrics.csv`` and
            TensorBoard logs go; ``None`` keeps nothing on disk. A folder that already holds a
            run is refused (``ValueError``, before anything is written) unless ``resume``
            continues that run or ``overwrite`` is set.
        resume: a checkpoint written by ``fit``: continues with the same optimiser, learning
            rate, sampler position and RNG state.
        max_steps_per_epoch: cut epochs short (smoke tests, demos).
        progress: a tqdm bar per epoch when stderr is a terminal; otherwise a plain line every
            ``print_freq`` steps with the loss, images/s and the time left.
        on_epoch_end: ``callable(epoch, row)`` called after each epoch's checkpoint.
        sync_bn: under ``torchrun`` (DDP), SyncBatchNorm in the backbone and BNNeck (CUDA only).
        graph_scope: ``"local"``: graphs per rank; ``"global"``: graphs over the batch of all
            ranks (see :mod:`hrnet_pyg.distributed`); ``None`` keeps the scope the model has
            (:func:`~hrnet_pyg.distributed.graph_scope_of`).
        print_freq: steps between two progress lines when stderr is not a terminal, and between
            two reads of the loss values: the loop's one host-device synchronisation per
            interval (every step's values stay on the device meanwhile and are all logged).
            (default: 20)
        eval_fn: ``callable(model) -> {"mAP": ..., ...}`` (``None`` on distributed ranks other
            than 0), run every ``eval_freq`` epochs and after the last one; its metrics join
            the epoch's row, and the epoch of the highest ``mAP`` is kept as ``best.pth``.
        eval_freq: epochs between two evaluations; ``0`` = none during training. (default: 0)
        tensorboard: ``None``: TensorBoard logs when it is installed; ``True``: also warn when
            it is not; ``False``: none. (default: ``None``)
        overwrite: start again in an ``output_dir`` that holds a run, deleting that run's files
            (:data:`hrnet_pyg.outputs.RUN_FILES`) first. (default: ``False``)

    Ctrl-C raises :class:`TrainingInterrupted` (a ``KeyboardInterrupt``) saying the epoch and
    step reached and the checkpoint to resume from.
    """
    total_epochs = _check_arguments(unwrap_model(model).config, epochs, max_steps_per_epoch, print_freq, compile)
    out_dir = Path(output_dir) if output_dir is not None else None
    main = is_main_process()
    if out_dir is not None and main:  # before anything is written: another run's files stay
        check_run_folder(out_dir, resume=resume, overwrite=overwrite)
    dev = resolve_device(device)
    model = _place(model, dev, train_loader, channels_last=channels_last, sync_bn=sync_bn, graph_scope=graph_scope)
    cfg: HRNetConfig = unwrap_model(model).config
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    use_amp = amp if amp != "auto" else (dev.type == "cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype(dev, use_amp) == torch.float16)
    if out_dir is not None and main:
        if overwrite:
            clear_run_folder(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out_dir)
    if cfg.num_instances < 2 and main:
        log.warning(
            "model.num_instances = %d (K): a P x K batch then holds no two images of one identity, "
            "so the triplet loss (Eq. 12) has no positive pair and stays 0; use K >= 2 (the paper: 6)",
            cfg.num_instances,
        )
    hooks = default_hooks(
        cfg, out_dir, main=main, resume=resume, progress=progress, print_freq=print_freq, eval_fn=eval_fn,
        eval_freq=eval_freq, tensorboard=tensorboard, on_epoch_end=on_epoch_end,
    )
    trainer = Trainer(
        model, train_loader, optimizer, scaler, total_epochs=total_epochs, device=dev, amp=use_amp,
        channels_last=channels_last, step_model=_compiled(model, compile), max_steps_per_epoch=max_steps_per_epoch,
        read_every=print_freq, hooks=hooks,
    )
    trainer.train()
    return FitResult(history=trainer.state.history, checkpoint=trainer.state.checkpoint)


def _check_arguments(
    cfg: HRNetConfig, epochs: Any, max_steps_per_epoch: int | None, print_freq: Any, compile: bool | str,
) -> int:
    """The run's total epochs; ``ValueError`` naming the argument that is out of range."""
    wanted = epochs if epochs is not None else cfg.epochs
    if isinstance(wanted, bool) or not isinstance(wanted, (int, np.integer)) or wanted < 1:
        raise ValueError(f"epochs must be a whole number of at least 1, got {wanted!r}")
    if max_steps_per_epoch is not None and max_steps_per_epoch < 1:
        raise ValueError(f"max_steps_per_epoch must be at least 1 (or None), got {max_steps_per_epoch}")
    if isinstance(print_freq, bool) or not isinstance(print_freq, int) or print_freq < 1:
        raise ValueError(f"print_freq must be a positive number of steps, got {print_freq!r}")
    check_compile(compile)
    return int(wanted)


def _place(
    model: nn.Module, dev: torch.device, train_loader: Iterable, *, channels_last: bool, sync_bn: bool,
    graph_scope: str | None,
) -> nn.Module:
    """The model on ``dev`` (NHWC when asked), with its graph scope and SyncBatchNorm, and wrapped
    in DDP when torchrun started more than one rank."""
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return prepare_for_training(model, dev, train_loader, sync_bn=sync_bn, graph_scope=graph_scope)


def _compiled(model: nn.Module, compile: bool | str) -> nn.Module:
    """``model`` under ``torch.compile`` (a string names the backend: "inductor", "eager", ...)."""
    if isinstance(compile, str):
        return torch.compile(model, backend=compile)  # type: ignore[return-value]
    return torch.compile(model) if compile else model  # type: ignore[return-value]


def default_hooks(
    cfg: HRNetConfig,
    out_dir: Path | None,
    *,
    main: bool = True,
    resume: str | Path | None = None,
    progress: bool = False,
    print_freq: int = 20,
    eval_fn: Callable[[nn.Module], dict[str, float] | None] | None = None,
    eval_freq: int = 0,
    tensorboard: bool | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], Any] | None = None,
) -> list[HookBase]:
    """The hooks of :func:`fit`'s arguments, in their order (see :mod:`hrnet_pyg.engine.hooks`).

    ``main=False`` (a distributed rank other than 0): no progress, log lines or files; that
    rank still resumes, evaluates (its part of a sharded evaluation) and stops on Ctrl-C.
    """
    hooks: list[HookBase] = []
    if resume is not None:
        hooks.append(ResumeHook(resume))
    hooks.append(RankSeedHook(cfg.seed))
    if progress and main:
        hooks.append(ProgressHook(print_freq))
    if eval_fn is not None and eval_freq > 0:
        hooks.append(EvalHook(eval_fn, eval_freq))
    if main:
        hooks.append(EpochLogHook())
    if out_dir is not None and main:
        hooks += [CheckpointHook(out_dir), CSVHook(out_dir / "metrics.csv")]
    hooks.append(InterruptHook(out_dir / "last.pth" if out_dir is not None else None, resume))
    if out_dir is not None and main and tensorboard is not False:
        hooks.append(TensorBoardHook(out_dir, tensorboard))
    if on_epoch_end is not None:
        hooks.append(EpochCallback(on_epoch_end))
    return hooks


__all__ = ["FitResult", "TrainingInterrupted", "default_hooks", "fit", "load_training_state", "lr_at_epoch"]
