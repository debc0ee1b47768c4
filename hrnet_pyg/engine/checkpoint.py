"""The checkpoint format of a whole HRNet: its config, class count, weights and test protocol.

The file I/O (atomic writes, ``weights_only`` loading, format version) is
:mod:`hrnet_pyg.runtime`'s; this module decides what a model checkpoint holds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from hrnet_pyg.config import HRNetConfig, split_legacy_rerank
from hrnet_pyg.model import HRNetModule
from hrnet_pyg.protocol import RerankConfig
from hrnet_pyg.runtime import CHECKPOINT_FORMAT_VERSION, CHECKPOINT_KIND, atomic_save, load_checkpoint, unwrap_model


def model_payload(model: nn.Module) -> dict[str, Any]:
    """What every checkpoint holds of the model: kind, format version, config, class count, weights
    (on the CPU) and the test protocol it re-ranks with (``rerank``); ``fit`` adds its training
    state to it."""
    inner = unwrap_model(model)
    return {
        "kind": CHECKPOINT_KIND,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "config": inner.config.to_dict(),
        "rerank": inner.rerank_config.to_dict(),
        "num_classes": inner.num_classes,
        "model": {k: v.detach().cpu() for k, v in inner.state_dict().items()},
    }


def save_model(model: nn.Module, path: str | Path) -> None:
    """Write the whole HRNet (config, graph modules included) atomically."""
    atomic_save(model_payload(model), path)


def model_from_checkpoint(
    ckpt: dict[str, Any], cls: type[HRNetModule] = HRNetModule, where: str = "checkpoint"
) -> HRNetModule:
    """A ``cls`` (an :class:`~hrnet_pyg.model.HRNetModule` or subclass) built from a loaded checkpoint.

    A checkpoint written before the test protocol had its own entry carries it among the config's
    fields (``top_k_rerank``, ``rerank_*``): those become the model's ``rerank_config``, with one
    deprecation line naming ``where``. A checkpoint whose protocol names no ``protocol`` (written
    before the switch) re-ranks with ``"paper"``.
    """
    values, legacy = split_legacy_rerank(dict(ckpt["config"]), where, "config")
    values["pretrained"] = False  # the checkpoint carries the weights: never download
    saved = ckpt.get("rerank")
    saved = legacy if saved is None else saved
    if isinstance(saved, dict) and "protocol" not in saved:
        # Written before the protocol switch existed: the model re-ranked with the paper's protocol,
        # and keeps doing so whatever the default protocol is now.
        saved = {**saved, "protocol": "paper"}
    rerank = RerankConfig.from_dict(saved, f"{where}: rerank")
    model = cls(HRNetConfig.from_dict(values), num_classes=int(ckpt["num_classes"]), rerank_config=rerank)
    model.load_state_dict(ckpt["model"])
    return model


def load_model(
    path: str | Path, map_location: str | torch.device = "cpu", cls: type[HRNetModule] = HRNetModule
) -> HRNetModule:
    """The HRNet saved by :func:`save_model` or by :func:`~hrnet_pyg.engine.fit`'s checkpoints.

    ``cls``: the class to build (default: :class:`hrnet_pyg.model.HRNetModule`); :meth:`hrnet_pyg.HRNet.load`
    passes its own class, so that the model it returns has the ``fit``/``evaluate`` methods.
    """
    return model_from_checkpoint(load_checkpoint(path, map_location=map_location), cls, f"checkpoint {path}")


__all__ = ["load_model", "model_from_checkpoint", "save_model"]
