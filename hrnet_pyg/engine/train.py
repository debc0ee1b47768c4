"""The training loop (paper Sec. 4.2): schedule, progress, logging, checkpoints and resume.

``fit`` is the one training loop: end-to-end on images, or on pre-extracted features when the
model has no backbone (fast ablations on a CPU) -- the same code path either way.
"""
from __future__ import annotations

import csv
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

# tqdm.std, not tqdm.auto: outside notebooks tqdm.auto is the asyncio variant, whose constructor
# already calls iter() on the loader, so each epoch would draw the sampler's plan twice.
from tqdm import tqdm

from hrnet_pyg.config import HRNetConfig
from hrnet_pyg.distributed import (
    broadcast_buffers,
    get_rank,
    get_world_size,
    prepare_for_training,
    reduce_epoch_stats,
)
from hrnet_pyg.engine.checkpoint import model_payload
from hrnet_pyg.engine.eval import split_batch
from hrnet_pyg.outputs import check_run_folder, clear_run_folder
from hrnet_pyg.runtime import (
    amp_dtype,
    atomic_save,
    atomic_write,
    autocast_context,
    check_compile,
    is_main_process,
    load_checkpoint,
    on_terminal,
    resolve_device,
    unwrap_model,
)

log = logging.getLogger("hrnet_pyg")


def lr_at_epoch(cfg: HRNetConfig, epoch: int) -> float:
    """Learning rate of a (0-based) epoch: Sec. 4.2's step schedule, plus optional warm-up.

    The warm-up (BoT, Luo et al. 2019: linear from lr/10 over ``warmup_epochs``) is not in the
    paper and off by default.
    """
    lr = cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    if cfg.warmup_epochs > 0 and epoch < cfg.warmup_epochs:
        lr *= 0.1 + 0.9 * epoch / cfg.warmup_epochs
    return lr


def _batch_sampler_of(loader: Any) -> Any:
    for candidate in (getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None)):
        if candidate is not None and hasattr(candidate, "set_epoch"):
            return candidate
    return None


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class _StepProgress:
    """Progress of one epoch: a tqdm bar on a terminal, else a plain log line every ``print_freq``.

    Files (nohup, SLURM, redirected output) then hold whole lines with the loss, images/s and the
    time left, never ``\r`` fragments or block characters.
    """

    def __init__(
        self, desc: str, total: int | None, *, show: bool, print_freq: int, steps_after: int | None,
    ) -> None:
        self.desc, self.total, self.print_freq = desc, total, max(int(print_freq), 1)
        self.steps_after = steps_after  # steps of the epochs still to come (for the run's ETA)
        self.bar = None
        self.plain = show and not on_terminal()
        if show and not self.plain:
            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
        self.t0 = time.perf_counter()

    def update(self, step: int, images: int, losses: dict[str, float]) -> None:
        """After ``step`` (1-based) steps and ``images`` images; ``losses`` are running means."""
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        rate = images / elapsed
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()} | {"img/s": f"{rate:.1f}"}, refresh=False)
            return
        if not self.plain or (step % self.print_freq and step != self.total):
            return
        where = f"{self.desc} step {step}" + (f"/{self.total}" if self.total else "")
        line = f"{where}: loss={losses.get('total', float('nan')):.4f} {rate:.1f} img/s"
        if self.total:
            per_step = elapsed / step
            line += f" eta {_duration(per_step * (self.total - step))}"
            if self.steps_after:
                line += f" (run {_duration(per_step * (self.total - step + self.steps_after))})"
        log.info(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # the legacy form: (name, keys, pos, has_gauss, cached)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if state.get("cuda") and torch.cuda.is_available():
        # One state per GPU of the run that saved it; a machine with fewer (or more) visible GPUs
        # restores those it has in common, and a CPU-only one restores none.
        saved = state["cuda"]
        for index in range(min(len(saved), torch.cuda.device_count())):
            torch.cuda.set_rng_state(saved[index].cpu(), index)


# ---------------------------------------------------------------------------- training
@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    checkpoint: Path | None = None  # last checkpoint written


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`fit`: where training stopped and which checkpoint can resume it."""

    def __init__(
        self, epoch: int, total_epochs: int, step: int, steps: int | None, checkpoint: Path | None, done: int,
    ) -> None:
        super().__init__(f"interrupted at epoch {epoch}/{total_epochs}, step {step}")
        self.epoch, self.total_epochs, self.step, self.steps = epoch, total_epochs, step, steps
        self.checkpoint, self.done = checkpoint, done  # done: epochs the checkpoint holds


def _write_csv(path: Path, history: list[dict[str, Any]]) -> None:
    """``metrics.csv`` rewritten from the history (atomically): one row per finished epoch.

    The history travels in ``last.pth``, so after a resume the file holds exactly the epochs of
    the checkpoint and those trained since, never a row twice; columns that only some rows have
    (evaluation metrics) stay empty elsewhere.
    """
    fields: list[str] = []
    for row in history:
        fields.extend(k for k in row if k not in fields)

    def write(fh: Any) -> None:
        writer = csv.DictWriter(fh, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(history)

    atomic_write(path, write, mode="w")


class _LossMeter:
    """Per-step loss values kept on the device until :func:`_read_losses` fetches them.

    A ``float(loss)`` per term and step would make the host wait for the GPU at every step
    (no queueing of the next step's kernels); one transfer per logging interval does not.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[int, dict[str, Tensor]]] = []

    def add(self, step: int, terms: dict[str, Tensor], total: Tensor) -> None:
        values = {name: v.detach().float().reshape(()) for name, v in terms.items()}
        values["total"] = total.detach().float().reshape(())
        self.pending.append((step, values))


def _read_losses(meter: _LossMeter, sums: dict[str, float], tb: Any) -> None:
    """Add the pending steps' losses to ``sums`` (and TensorBoard) with one device-to-host copy."""
    if not meter.pending:
        return
    flat = torch.stack([v for _, values in meter.pending for v in values.values()]).tolist()
    i = 0
    for step, values in meter.pending:
        for name in values:
            sums[name] = sums.get(name, 0.0) + flat[i]
            if tb is not None and name != "total":
                tb.add_scalar(f"loss/{name}", flat[i], step)
            i += 1
    meter.pending.clear()


def _tensorboard(log_dir: Path | None, wanted: bool | None) -> Any:
    """A SummaryWriter; ``wanted=None``: when tensorboard is installed, ``True``: warn if not."""
    if log_dir is None or wanted is False:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is an optional extra
        if wanted:
            log.warning(
                "run.tensorboard is on but tensorboard is not installed (pip install tensorboard); "
                "the metrics go to metrics.csv and train.log only"
            )
        return None
    return SummaryWriter(str(log_dir / "tensorboard"))


def _stale_temporaries(out_dir: Path) -> None:
    """Delete the partial checkpoints that a process killed in the middle of a write left."""
    for name in ("last.pth", "best.pth", "metrics.csv"):
        for tmp in out_dir.glob(f"{name}.*.tmp"):
            log.warning("removing %s, a partial file left by an interrupted write", tmp)
            tmp.unlink()


def _config_differences(saved: dict[str, Any], current: dict[str, Any]) -> str:
    keys = [k for k in current if k in saved and saved[k] != current[k] and k not in ("pretrained", "epochs")]
    return ", ".join(f"model.{k}: {saved[k]!r} in the checkpoint, {current[k]!r} now" for k in keys)


def load_training_state(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """The checkpoint ``path`` that ``fit(resume=path)`` continues, its weights loaded into ``model``.

    Raises ``ValueError`` in one line when the file holds no training state (a ``best.pth`` or a
    file of ``save()``), or weights of another model (naming the settings that differ).
    """
    inner = unwrap_model(model)
    ckpt = load_checkpoint(path, map_location="cpu")
    if "optimizer" not in ckpt:
        hint = f"; resume from {Path(path).parent / 'last.pth'}" if Path(path).name == "best.pth" else ""
        raise ValueError(f"{path} holds a model but no training state (saved with save(), not fit()){hint}")
    try:
        inner.load_state_dict(ckpt["model"])
    except RuntimeError:  # shapes or keys differ: say which settings, not 80 parameter names
        diff = _config_differences(ckpt.get("config", {}), inner.config.to_dict())
        raise ValueError(
            f"checkpoint {path} does not fit this model"
            + (f" ({diff})" if diff else " (its parameters have other names or shapes)")
            + "; resume with the settings it was trained with"
        ) from None
    return ckpt


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

    Args:
        model: an :class:`~hrnet_pyg.model.HRNet` (with or without backbone).
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
            ranks (see :mod:`hrnet_pyg.distributed`); ``None`` keeps ``model.graph_scope``.
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
    inner = unwrap_model(model)
    cfg: HRNetConfig = inner.config
    wanted = epochs if epochs is not None else cfg.epochs
    if isinstance(wanted, bool) or not isinstance(wanted, (int, np.integer)) or wanted < 1:
        raise ValueError(f"epochs must be a whole number of at least 1, got {wanted!r}")
    total_epochs = int(wanted)
    if max_steps_per_epoch is not None and max_steps_per_epoch < 1:
        raise ValueError(f"max_steps_per_epoch must be at least 1 (or None), got {max_steps_per_epoch}")
    check_compile(compile)
    out_dir = Path(output_dir) if output_dir is not None else None
    main = is_main_process()
    if out_dir is not None and main:  # before anything is written: another run's files stay
        check_run_folder(out_dir, resume=resume, overwrite=overwrite)
    dev = resolve_device(device)
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    # graph scope, SyncBatchNorm, and DDP wrapping when torchrun started more than one rank
    model = prepare_for_training(model, dev, train_loader, sync_bn=sync_bn, graph_scope=graph_scope)
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    use_amp = amp if amp != "auto" else (dev.type == "cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype(dev, use_amp) == torch.float16)
    if isinstance(print_freq, bool) or not isinstance(print_freq, int) or print_freq < 1:
        raise ValueError(f"print_freq must be a positive number of steps, got {print_freq!r}")
    if out_dir is not None and main:
        if overwrite:
            clear_run_folder(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        _stale_temporaries(out_dir)
    if cfg.num_instances < 2 and main:
        log.warning(
            "model.num_instances = %d (K): a P x K batch then holds no two images of one identity, "
            "so the triplet loss (Eq. 12) has no positive pair and stays 0; use K >= 2 (the paper: 6)",
            cfg.num_instances,
        )
    result = FitResult()
    start_epoch, global_step, best = 0, 0, None
    if resume is not None:
        ckpt = load_training_state(inner, resume)
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch = int(ckpt["epoch"]) + 1
        result.history = list(ckpt.get("history", []))
        global_step = int(ckpt.get("global_step", sum(int(r.get("steps", 0)) for r in result.history)))
        best = ckpt.get("best")
        _set_rng_state(ckpt["rng"])
        log.info(
            "resumed from %s: %d of %d epochs done, continuing with epoch %d",
            resume, start_epoch, total_epochs, start_epoch + 1,
        )
        if out_dir is not None and main and result.history:
            _write_csv(out_dir / "metrics.csv", result.history)  # drops rows of epochs not in the checkpoint
    if isinstance(compile, str):  # a torch.compile backend by name ("inductor", "eager", ...)
        run_model = torch.compile(model, backend=compile)
    else:
        run_model = torch.compile(model) if compile else model
    tb = _tensorboard(out_dir, tensorboard) if main else None
    sampler = _batch_sampler_of(train_loader)
    show = progress and main
    last = out_dir / "last.pth" if out_dir is not None else None
    epoch, steps, planned, done = start_epoch, 0, None, start_epoch
    try:
        for epoch in range(start_epoch, total_epochs):
            steps, planned = 0, None
            if sampler is not None:
                sampler.set_epoch(epoch)
            if get_world_size() > 1:
                # Ranks would otherwise share rank 0's RNG stream (same augmentation draws on every
                # rank); a pure function of (seed, epoch, rank) keeps resume exact.
                torch.manual_seed(cfg.seed + 1_000_003 * (epoch + 1) + 7_919 * get_rank())
            lr = lr_at_epoch(cfg, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            model.train()
            sums: dict[str, float] = {}
            meter = _LossMeter()
            images, read, t0 = 0, 0, time.perf_counter()
            try:
                planned = len(train_loader)  # type: ignore[arg-type]
            except TypeError:  # an iterable without len()
                planned = None
            if planned is not None and max_steps_per_epoch is not None:
                planned = min(planned, max_steps_per_epoch)
            bar = _StepProgress(
                f"epoch {epoch + 1}/{total_epochs}", planned, show=show, print_freq=print_freq,
                steps_after=None if planned is None else planned * (total_epochs - epoch - 1),
            )
            # The loader is iterated once per epoch, here: with workers every iter() draws the
            # sampler's plan and starts prefetching (and a second iter() would discard that).
            for step, batch in enumerate(train_loader):
                if max_steps_per_epoch is not None and step >= max_steps_per_epoch:
                    break
                inputs, pids, _ = split_batch(batch)
                inputs = inputs.to(dev, non_blocking=True)
                if channels_last and inputs.dim() == 4:
                    inputs = inputs.contiguous(memory_format=torch.channels_last)
                pids = pids.to(dev, non_blocking=True)
                with autocast_context(dev, use_amp):
                    try:
                        out = run_model(inputs, pids)
                    except ValueError as exc:
                        if "non-finite" in str(exc):
                            raise FloatingPointError(f"{exc} at epoch {epoch + 1}, step {step + 1}") from exc
                        raise
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(out.loss).backward()
                scaler.step(optimizer)
                scaler.update()
                steps += 1
                images += inputs.size(0)
                global_step += 1
                meter.add(global_step, out.losses, out.loss)
                if steps % print_freq == 0 or steps == planned:  # the interval's one read of the losses
                    _read_losses(meter, sums, tb)
                    read = steps
                if show:  # a terminal's bar moves every step, with the means of the steps read
                    bar.update(steps, images, {k: v / max(read, 1) for k, v in sums.items()})
            _read_losses(meter, sums, tb)
            bar.close()
            if steps == 0:
                raise ValueError(
                    "the training loader yielded no batch: with a PKSampler it needs at least P "
                    f"identities (P = {cfg.num_identities}) with images"
                )
            elapsed = time.perf_counter() - t0
            sums, images = reduce_epoch_stats(sums, images)  # distributed: means over ranks, all images
            row = {"epoch": epoch + 1, "lr": lr, "steps": steps, "images_per_s": images / elapsed}
            row.update({f"loss_{k}": v / steps for k, v in sums.items()})
            if eval_fn is not None and eval_freq > 0 and ((epoch + 1) % eval_freq == 0 or epoch + 1 == total_epochs):
                metrics = eval_fn(model)  # every rank takes part; rank 0 gets the numbers
                model.train()
                if metrics is not None:
                    row.update({f"eval_{k}": float(v) for k, v in metrics.items()})
            result.history.append(row)
            if main:
                msg = (
                    f"epoch {epoch + 1}/{total_epochs}: "
                    + " ".join(f"{k}={v:.4f}" for k, v in row.items() if k.startswith("loss_"))
                    + f" lr={lr:.2e} {row['images_per_s']:.1f} img/s"
                )
                if "eval_mAP" in row:
                    msg += " | " + " ".join(f"{k[5:]}={100 * v:.1f}" for k, v in row.items() if k.startswith("eval_"))
                log.info(msg)  # the epoch's bar is closed: a plain line on terminals and in files alike
            improved = "eval_mAP" in row and (best is None or row["eval_mAP"] > best["mAP"])
            if improved:
                best = {"epoch": epoch + 1, "mAP": row["eval_mAP"]}
            if out_dir is not None and main:
                if improved:  # before last.pth: a kill in between leaves a best no older than last
                    payload = model_payload(model)
                    payload.update(epoch=epoch, metrics={k[5:]: v for k, v in row.items() if k.startswith("eval_")})
                    atomic_save(payload, out_dir / "best.pth")
                    log.info("best.pth: epoch %d, mAP %.1f", epoch + 1, 100 * row["eval_mAP"])
                payload = model_payload(model)
                payload.update(
                    optimizer=optimizer.state_dict(),
                    scaler=scaler.state_dict() if scaler.is_enabled() else None,
                    epoch=epoch,
                    history=result.history,
                    rng=_rng_state(),
                    global_step=global_step,
                    best=best,
                )
                assert last is not None  # out_dir is set
                result.checkpoint = last
                atomic_save(payload, last)
                # after the checkpoint: the CSV never holds an epoch that a resume would train again
                _write_csv(out_dir / "metrics.csv", result.history)
            done = epoch + 1
            if tb is not None:
                tb.add_scalar("lr", lr, global_step)
                for k, v in row.items():
                    if k.startswith("eval_"):
                        tb.add_scalar(f"eval/{k[5:]}", v, global_step)
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)
    except KeyboardInterrupt:
        if tb is not None:
            tb.close()
        ckpt_path = last if last is not None and last.is_file() else (Path(resume) if resume is not None else None)
        raise TrainingInterrupted(epoch + 1, total_epochs, steps, planned, ckpt_path if done else None, done) from None
    if tb is not None:
        tb.close()
    broadcast_buffers(model)  # distributed: every rank ends with rank 0's BN statistics (the checkpoint's)
    return result


__all__ = ["FitResult", "TrainingInterrupted", "fit", "load_training_state", "lr_at_epoch"]
