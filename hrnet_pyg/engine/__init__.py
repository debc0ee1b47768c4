"""Training, feature extraction, evaluation and checkpoints (paper Sec. 4.2).

- :mod:`~hrnet_pyg.engine.train`: :func:`fit`, which assembles a trainer and its hooks;
- :mod:`~hrnet_pyg.engine.trainer`: :class:`Trainer` (the step and the loop), :class:`HookBase`,
  the learning-rate schedule;
- :mod:`~hrnet_pyg.engine.hooks`: resume and RNG state, checkpoints and ``best.pth``, periodic
  evaluation, ``metrics.csv``, TensorBoard, progress and log lines, Ctrl-C;
- :mod:`~hrnet_pyg.engine.eval`: :func:`extract`, :func:`evaluate`, :class:`EvalReport`;
- :mod:`~hrnet_pyg.engine.checkpoint`: what a model checkpoint holds, :func:`save_model`,
  :func:`load_model`.

Device, AMP and checkpoint-file helpers live in :mod:`hrnet_pyg.runtime` (re-exported here).
"""
from hrnet_pyg.engine.checkpoint import load_model, model_from_checkpoint, save_model
from hrnet_pyg.engine.eval import EvalReport, evaluate, evaluate_features, extract
from hrnet_pyg.engine.train import FitResult, TrainingInterrupted, default_hooks, fit
from hrnet_pyg.engine.trainer import HookBase, Trainer, lr_at_epoch
from hrnet_pyg.runtime import (
    CHECKPOINT_FORMAT_VERSION,
    amp_dtype,
    atomic_save,
    autocast_context,
    load_checkpoint,
    resolve_device,
)

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "EvalReport",
    "FitResult",
    "HookBase",
    "Trainer",
    "TrainingInterrupted",
    "amp_dtype",
    "atomic_save",
    "autocast_context",
    "default_hooks",
    "evaluate",
    "evaluate_features",
    "extract",
    "fit",
    "load_checkpoint",
    "load_model",
    "lr_at_epoch",
    "model_from_checkpoint",
    "resolve_device",
    "save_model",
]
