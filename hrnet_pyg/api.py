"""``hrnet_pyg.HRNet``: the model with the engine's verbs as methods.

:class:`hrnet_pyg.model.HRNetModule` is the modeling alone and never imports the engine; this subclass
sits above both and adds ``fit``, ``extract``, ``evaluate``, ``save`` and ``load``, so that a user
writes ``HRNet(cfg, num_classes).fit(loader)``. Its weights, config and checkpoints are those of
the base class: a checkpoint saved by either loads into either.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor

from hrnet_pyg import engine
from hrnet_pyg.engine import EvalReport, FitResult
from hrnet_pyg.model import HRNetModule


class HRNet(HRNetModule):
    """HRNet, the method of "Learning Hybrid Relationships for Person Re-identification" (Liu, Huang
    and Zhang, AAAI 2021): :class:`~hrnet_pyg.model.HRNetModule` plus the methods below (see
    :mod:`hrnet_pyg.engine`).

    Args:
        config: hyperparameters and Table 1 switches (defaults: the paper's values).
        num_classes: number of training identities S (Eq. 10).
        rerank_config: the test protocol it re-ranks with by default
            (:class:`~hrnet_pyg.protocol.RerankConfig`; stored in its checkpoints).
    """

    def fit(self, train_loader: Iterable, epochs: int | None = None, **kwargs: Any) -> FitResult:
        """Train as in Sec. 4.2 (Adam, lr 3.5e-4, wd 5e-4, x0.1 at 40/120, 200 epochs):
        :func:`~hrnet_pyg.engine.fit`."""
        return engine.fit(self, train_loader, epochs=epochs, **kwargs)

    def extract(self, loader: Iterable, **kwargs: Any) -> tuple[Tensor, Tensor, Tensor]:
        """(F, pids, camids) of every image of ``loader``: :func:`~hrnet_pyg.engine.extract`."""
        return engine.extract(self, loader, **kwargs)

    def evaluate(self, query_loader: Iterable, gallery_loader: Iterable, **kwargs: Any) -> EvalReport | None:
        """CNN-only and relational re-ranking metrics side by side (Sec. 4.2 "Testing"):
        :func:`~hrnet_pyg.engine.evaluate`; ``rerank_config=RerankConfig(...)`` scores under
        another test protocol than the model's (``RerankConfig(protocol="gallery")``: another
        re-ranking, :mod:`hrnet_pyg.protocol`)."""
        return engine.evaluate(self, query_loader, gallery_loader, **kwargs)

    def save(self, path: str | Path) -> None:
        """The whole model (config, graph modules included), written atomically."""
        engine.save_model(self, path)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> HRNet:
        """The model saved by :meth:`save` or by ``fit``'s checkpoints, as an instance of ``cls``."""
        return cast(HRNet, engine.load_model(path, map_location=map_location, cls=cls))


__all__ = ["HRNet"]
