"""What a training run does around the loop of :class:`~hrnet_pyg.engine.trainer.Trainer`.

Each hook is one concern, usable (and tested) alone:

- :class:`ResumeHook`: weights, optimiser, history, step count, best and RNG state of a checkpoint;
- :class:`RankSeedHook`: under DDP, each rank's RNG reseeded per epoch;
- :class:`ProgressHook`: a bar on a terminal, plain step lines otherwise;
- :class:`EvalHook`: evaluation every ``eval_freq`` epochs and after the last one;
- :class:`EpochLogHook`: the epoch's line in the log;
- :class:`CheckpointHook`: ``best.pth`` and ``last.pth`` (atomic writes);
- :class:`CSVHook`: ``metrics.csv``, rewritten from the history;
- :class:`InterruptHook`: Ctrl-C as :class:`TrainingInterrupted`, naming the checkpoint to resume;
- :class:`TensorBoardHook`: losses per step, learning rate and evaluation per epoch;
- :class:`EpochCallback`: a user's ``on_epoch_end(epoch, row)``.

:func:`hrnet_pyg.engine.fit` assembles them in this order, which is the order of their
``after_epoch`` calls: the metrics join the row before it is logged and saved, ``best.pth`` is
written before ``last.pth``, and the CSV after the checkpoint.
"""
from __future__ import annotations

import csv
import logging
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hrnet_pyg.distributed import get_rank, get_world_size
from hrnet_pyg.engine.checkpoint import model_payload
from hrnet_pyg.engine.trainer import HookBase
from hrnet_pyg.runtime import Progress, _hms, atomic_save, atomic_write, load_checkpoint, unwrap_model

log = logging.getLogger("hrnet_pyg")


# ---------------------------------------------------------------------------- resume and RNG state
def rng_state() -> dict[str, Any]:
    """The torch, NumPy, Python (and every GPU's) RNG state, in tensors and lists that a
    ``weights_only`` load reads back."""
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


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
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


class ResumeHook(HookBase):
    """Before training: continue the run of checkpoint ``path`` (written by :class:`CheckpointHook`)
    with its weights, optimiser and loss-scaler state, history, step count, best epoch and RNG
    state; the loop then starts at the epoch after the checkpoint's."""

    def __init__(self, path: str | Path) -> None:
        self.path = path

    def before_train(self) -> None:
        trainer, state = self.trainer, self.trainer.state
        ckpt = load_training_state(trainer.model, self.path)
        trainer.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            trainer.scaler.load_state_dict(ckpt["scaler"])
        state.start_epoch = int(ckpt["epoch"]) + 1
        state.history = list(ckpt.get("history", []))
        state.global_step = int(ckpt.get("global_step", sum(int(r.get("steps", 0)) for r in state.history)))
        state.best = ckpt.get("best")
        set_rng_state(ckpt["rng"])
        log.info(
            "resumed from %s: %d of %d epochs done, continuing with epoch %d",
            self.path, state.start_epoch, state.total_epochs, state.start_epoch + 1,
        )


class RankSeedHook(HookBase):
    """Under DDP, each rank's torch RNG reseeded at each epoch from (seed, epoch, rank).

    Ranks would otherwise share rank 0's RNG stream (the same augmentation draws on every rank);
    a pure function of (seed, epoch, rank) keeps resume exact. A no-op in a single process.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def before_epoch(self) -> None:
        if get_world_size() > 1:
            torch.manual_seed(self.seed + 1_000_003 * (self.trainer.state.epoch + 1) + 7_919 * get_rank())


# ---------------------------------------------------------------------------- progress and logs
class ProgressHook(HookBase):
    """Progress of each epoch: the package's :class:`~hrnet_pyg.runtime.Progress` rule (a tqdm bar
    when stderr is a terminal), with the running losses and images/s on the bar; off a terminal
    a plain log line every ``print_freq`` steps (and at the epoch's last step) with the loss,
    images/s and the time left in the epoch and in the run.

    Files (nohup, SLURM, redirected output) then hold whole lines, never ``\\r`` fragments or
    block characters.
    """

    def __init__(self, print_freq: int) -> None:
        self.print_freq = max(int(print_freq), 1)
        self.bar: Progress | None = None
        self.desc = ""  # "epoch 1/2", set for each epoch
        self.steps_after: int | None = None  # steps of the epochs still to come (for the run's ETA)

    def before_epoch(self) -> None:
        state = self.trainer.state
        self.desc = f"epoch {state.epoch + 1}/{state.total_epochs}"
        planned = state.planned
        self.steps_after = None if planned is None else planned * (state.total_epochs - state.epoch - 1)
        # interval=inf: the plain lines are this hook's own, one per print_freq steps
        self.bar = Progress(planned, self.desc, interval=math.inf)

    def after_step(self) -> None:
        if self.bar is None:
            return
        state = self.trainer.state
        self.bar.update(state.steps - self.bar.n)
        elapsed = max(time.perf_counter() - self.bar.t0, 1e-9)
        if self.bar.bar is not None:  # a terminal's bar moves every step, with the means of the steps read
            postfix = {k: f"{v:.3f}" for k, v in state.mean_losses().items()}
            self.bar.bar.set_postfix(postfix | {"img/s": f"{state.images / elapsed:.1f}"}, refresh=False)
        elif self.bar.plain and (state.steps % self.print_freq == 0 or state.steps == state.planned):
            log.info(self.line(state.steps, state.planned, elapsed, state.images, state.mean_losses()))

    def line(self, step: int, total: int | None, elapsed: float, images: int, losses: dict[str, float]) -> str:
        """The plain line after ``step`` steps and ``images`` images in ``elapsed`` seconds:
        ``epoch 1/2 step 1/2: loss=... img/s eta ...``; ``losses`` are running means."""
        where = f"{self.desc} step {step}" + (f"/{total}" if total else "")
        text = f"{where}: loss={losses.get('total', float('nan')):.4f} {images / elapsed:.1f} img/s"
        if total:
            per_step = elapsed / step
            text += f" eta {_hms(per_step * (total - step))}"
            if self.steps_after:
                text += f" (run {_hms(per_step * (total - step + self.steps_after))})"
        return text

    def after_epoch(self) -> None:
        self.close()

    def after_train(self) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EpochLogHook(HookBase):
    """One line per epoch in the log: its losses, learning rate, images/s and evaluation."""

    def after_epoch(self) -> None:
        state = self.trainer.state
        row = state.row
        msg = (
            f"epoch {state.epoch + 1}/{state.total_epochs}: "
            + " ".join(f"{k}={v:.4f}" for k, v in row.items() if k.startswith("loss_"))
            + f" lr={state.lr:.2e} {row['images_per_s']:.1f} img/s"
        )
        if "eval_mAP" in row:
            msg += " | " + " ".join(f"{k[5:]}={100 * v:.1f}" for k, v in row.items() if k.startswith("eval_"))
        log.info(msg)  # the epoch's bar is closed: a plain line on terminals and in files alike


# ---------------------------------------------------------------------------- evaluation
class EvalHook(HookBase):
    """``eval_fn(model) -> {"mAP": ..., ...}`` every ``eval_freq`` epochs and after the last one;
    the metrics join the epoch's row as ``eval_<name>``.

    Every rank calls ``eval_fn`` (a sharded evaluation needs them all); ranks that get ``None``
    (all but rank 0) add nothing.
    """

    def __init__(self, eval_fn: Callable[[nn.Module], dict[str, float] | None], eval_freq: int) -> None:
        if eval_freq < 1:
            raise ValueError(f"eval_freq must be at least 1 for an EvalHook, got {eval_freq}")
        self.eval_fn, self.eval_freq = eval_fn, eval_freq

    def due(self) -> bool:
        state = self.trainer.state
        return (state.epoch + 1) % self.eval_freq == 0 or state.epoch + 1 == state.total_epochs

    def after_epoch(self) -> None:
        if not self.due():
            return
        trainer = self.trainer
        metrics = self.eval_fn(trainer.model)
        trainer.model.train()
        if metrics is not None:
            trainer.state.row.update({f"eval_{k}": float(v) for k, v in metrics.items()})


# ---------------------------------------------------------------------------- files
class CheckpointHook(HookBase):
    """After each epoch: ``last.pth`` (weights and the training state a resume continues), and
    ``best.pth`` (weights and metrics, no training state) when the epoch's ``eval_mAP`` is the
    highest so far. Both are written atomically; ``best.pth`` first, so that a kill in between
    leaves a best no older than the last."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.last = self.out_dir / "last.pth"

    def after_epoch(self) -> None:
        state = self.trainer.state
        row = state.row
        if "eval_mAP" in row and (state.best is None or row["eval_mAP"] > state.best["mAP"]):
            state.best = {"epoch": state.epoch + 1, "mAP": row["eval_mAP"]}
            payload = model_payload(self.trainer.model)
            payload.update(epoch=state.epoch, metrics={k[5:]: v for k, v in row.items() if k.startswith("eval_")})
            atomic_save(payload, self.out_dir / "best.pth")
            log.info("best.pth: epoch %d, mAP %.1f", state.epoch + 1, 100 * row["eval_mAP"])
        state.checkpoint = self.last
        atomic_save(self.training_state(), self.last)

    def training_state(self) -> dict[str, Any]:
        """``last.pth``: the model's payload plus what :class:`ResumeHook` restores."""
        trainer, state = self.trainer, self.trainer.state
        payload = model_payload(trainer.model)
        payload.update(
            optimizer=trainer.optimizer.state_dict(),
            scaler=trainer.scaler.state_dict() if trainer.scaler.is_enabled() else None,
            epoch=state.epoch,
            history=state.history,
            rng=rng_state(),
            global_step=state.global_step,
            best=state.best,
        )
        return payload


def remove_stale_temporaries(out_dir: Path) -> None:
    """Delete the partial checkpoints that a process killed in the middle of a write left."""
    for name in ("last.pth", "best.pth", "metrics.csv"):
        for tmp in out_dir.glob(f"{name}.*.tmp"):
            log.warning("removing %s, a partial file left by an interrupted write", tmp)
            tmp.unlink()


def write_csv(path: Path, history: list[dict[str, Any]]) -> None:
    """``metrics.csv`` rewritten from the history (atomically): one row per finished epoch.

    Columns that only some rows have (evaluation metrics) stay empty elsewhere.
    """
    fields: list[str] = []
    for row in history:
        fields.extend(k for k in row if k not in fields)

    def write(fh: Any) -> None:
        writer = csv.DictWriter(fh, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(history)

    atomic_write(path, write, mode="w")


class CSVHook(HookBase):
    """``metrics.csv`` rewritten from the history after each epoch (after the checkpoint), and
    at the start of a resumed run.

    The history travels in ``last.pth``, so after a resume the file holds exactly the epochs of
    the checkpoint and those trained since, never a row twice, and never an epoch that a resume
    would train again.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def before_train(self) -> None:
        if self.trainer.state.history:  # resumed: drops rows of epochs not in the checkpoint
            write_csv(self.path, self.trainer.state.history)

    def after_epoch(self) -> None:
        write_csv(self.path, self.trainer.state.history)


# ---------------------------------------------------------------------------- Ctrl-C
class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`~hrnet_pyg.engine.fit`: where training stopped and which checkpoint
    can resume it."""

    def __init__(
        self, epoch: int, total_epochs: int, step: int, steps: int | None, checkpoint: Path | None, done: int,
    ) -> None:
        super().__init__(f"interrupted at epoch {epoch}/{total_epochs}, step {step}")
        self.epoch, self.total_epochs, self.step, self.steps = epoch, total_epochs, step, steps
        self.checkpoint, self.done = checkpoint, done  # done: epochs the checkpoint holds


class InterruptHook(HookBase):
    """Ctrl-C becomes a :class:`TrainingInterrupted` (a ``KeyboardInterrupt``) that names the
    epoch and step reached and the checkpoint to resume from: ``last`` when it was written,
    else the checkpoint the run resumed from, and none before the first epoch ended.

    It goes after :class:`CheckpointHook`: an epoch counts as done once its checkpoint is written.
    """

    def __init__(self, last: Path | None = None, resume: str | Path | None = None) -> None:
        self.last, self.resume = last, resume
        self.done = 0

    def before_train(self) -> None:
        self.done = self.trainer.state.start_epoch

    def after_epoch(self) -> None:
        self.done = self.trainer.state.epoch + 1

    def after_train(self) -> None:
        state = self.trainer.state
        if not state.interrupted:
            return
        if self.last is not None and self.last.is_file():
            ckpt: Path | None = self.last
        else:
            ckpt = Path(self.resume) if self.resume is not None else None
        state.stop = TrainingInterrupted(
            state.epoch + 1, state.total_epochs, state.steps, state.planned, ckpt if self.done else None, self.done
        )


# ---------------------------------------------------------------------------- TensorBoard, callbacks
def open_tensorboard(log_dir: Path | None, wanted: bool | None) -> Any:
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


class TensorBoardHook(HookBase):
    """``log_dir/tensorboard``: every step's loss terms (written when the loop reads them), and
    per epoch the learning rate and the evaluation metrics, at the run's global step (a resumed
    run continues the count). ``wanted``: as :func:`open_tensorboard`."""

    def __init__(self, log_dir: Path | None, wanted: bool | None = None) -> None:
        self.log_dir, self.wanted = log_dir, wanted
        self.writer: Any = None

    def before_train(self) -> None:
        self.writer = open_tensorboard(self.log_dir, self.wanted)

    def after_step(self) -> None:
        self.write_losses()

    def write_losses(self) -> None:
        if self.writer is None:
            return
        for step, values in self.trainer.state.losses_read:
            for name, value in values.items():
                if name != "total":
                    self.writer.add_scalar(f"loss/{name}", value, step)

    def after_epoch(self) -> None:
        if self.writer is None:
            return
        self.write_losses()
        state = self.trainer.state
        self.writer.add_scalar("lr", state.lr, state.global_step)
        for k, v in state.row.items():
            if k.startswith("eval_"):
                self.writer.add_scalar(f"eval/{k[5:]}", v, state.global_step)

    def after_train(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class EpochCallback(HookBase):
    """``fn(epoch, row)`` after each epoch (0-based epoch, the history's row)."""

    def __init__(self, fn: Callable[[int, dict[str, Any]], Any]) -> None:
        self.fn = fn

    def after_epoch(self) -> None:
        self.fn(self.trainer.state.epoch, self.trainer.state.row)


__all__ = [
    "CSVHook",
    "CheckpointHook",
    "EpochCallback",
    "EpochLogHook",
    "EvalHook",
    "InterruptHook",
    "ProgressHook",
    "RankSeedHook",
    "ResumeHook",
    "TensorBoardHook",
    "TrainingInterrupted",
    "load_training_state",
    "open_tensorboard",
    "remove_stale_temporaries",
    "rng_state",
    "set_rng_state",
    "write_csv",
]
