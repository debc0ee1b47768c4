"""CNN features F of one's own images: extraction, the ``.npz`` feature files, the model's fingerprint.

Saved feature files hold F, the CNN features *before* the BNNeck, because the relational
re-ranking takes F (the graph modules' input); the BN features used for the cosine shortlist are
recomputed from F by the model (``HRNet.retrieval_features``). A file records the fingerprint of
the weights that extracted it (:func:`feature_fingerprint`), so that a search or an index can
tell features of another checkpoint.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch
from torch import Tensor

from hrnet_pyg.data.base import ImageDataset
from hrnet_pyg.data.transforms import build_transforms
from hrnet_pyg.image_files import ImageList, is_feature_file, list_images
from hrnet_pyg.runtime import atomic_write, resolve_device, unwrap_model

if TYPE_CHECKING:  # pragma: no cover
    from hrnet_pyg.model import HRNetModule as HRNet

PathLike = Union[str, "os.PathLike[str]"]

#: Feature files written by :meth:`ImageFeatures.save` (``format`` entry of the .npz).
FEATURES_FORMAT = "hrnet_pyg.features.v1"


def feature_fingerprint(model: HRNet) -> str:
    """A short hash of the weights that determine the features (backbone + BNNeck's BN).

    Stored in feature files so that :func:`search_features` can warn when gallery features
    came from another checkpoint than the one searching with them.
    """
    inner = unwrap_model(model)
    h = hashlib.sha1()
    state = inner.state_dict()
    for key in sorted(state):
        if key.startswith(("backbone.", "bnneck.bn.")):
            h.update(key.encode())
            h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class ImageFeatures:
    """CNN features F of a list of images, with paths and labels when known."""

    features: Tensor  # (N, d) float32 F: pooled CNN features before BNNeck (graph modules' input)
    paths: list[str]  # (N,) image files
    pids: np.ndarray | None = None  # (N,) identities when known
    camids: np.ndarray | None = None  # (N,) 0-based cameras when known
    model_fingerprint: str | None = None  # feature_fingerprint() of the model that extracted them

    def __post_init__(self) -> None:
        if not isinstance(self.features, Tensor) or self.features.dim() != 2:
            shape = tuple(self.features.shape) if isinstance(self.features, Tensor) else type(self.features).__name__
            raise ValueError(f"features must be a (N, d) tensor, got {shape}")
        n = self.features.size(0)
        if len(self.paths) != n:
            raise ValueError(f"{len(self.paths)} paths for {n} feature rows")
        for name in ("pids", "camids"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"{len(value)} {name} for {n} feature rows")

    def __len__(self) -> int:
        return self.features.size(0)

    def save(self, path: PathLike) -> Path:
        """Write an ``.npz`` with ``features``, ``paths`` and, when known, ``pids``/``camids``."""
        path = Path(path)
        arrays: dict[str, Any] = {
            "format": np.asarray(FEATURES_FORMAT),
            "features": self.features.detach().cpu().float().numpy(),
            "paths": np.asarray(self.paths, dtype=str),
        }
        if self.pids is not None:
            arrays["pids"] = np.asarray(self.pids)
        if self.camids is not None:
            arrays["camids"] = np.asarray(self.camids)
        if self.model_fingerprint is not None:
            arrays["model_fingerprint"] = np.asarray(self.model_fingerprint)
        # a file handle: np.savez would append .npz to other names; atomic: never a torn file
        atomic_write(path, lambda fh: np.savez(fh, **arrays))
        return path

    @classmethod
    def load(cls, path: PathLike) -> ImageFeatures:
        """Read a feature file written by :meth:`save` or by ``hrnet-pyg extract`` (either mode)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"feature file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except Exception as exc:  # zipfile/pickle errors: name the file instead
            raise ValueError(f"{path} could not be read as an .npz feature file ({type(exc).__name__}: {exc})") from exc
        for key in ("features", "paths"):
            if key not in arrays:
                raise ValueError(
                    f"{path} has no '{key}' array (found {sorted(arrays)}); write feature files with "
                    "hrnet-pyg extract"
                )
        feats = arrays["features"]
        if feats.ndim != 2 or not np.issubdtype(feats.dtype, np.floating):
            raise ValueError(f"{path}: 'features' must be a 2-D float array, got {feats.dtype} {feats.shape}")
        fp = arrays.get("model_fingerprint")
        return cls(
            features=torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32)),
            paths=[str(p) for p in arrays["paths"].tolist()],
            pids=arrays.get("pids"),
            camids=arrays.get("camids"),
            model_fingerprint=str(fp) if fp is not None else None,
        )


def extract_images(
    model: HRNet,
    source: PathLike | ImageList | Sequence[PathLike],
    *,
    labels: str = "auto",
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    amp: bool | str = "auto",
    progress: bool = True,
) -> ImageFeatures:
    """CNN features F of one's own images (the test transform of the model's ``image_size``).

    Args:
        model: an :class:`~hrnet_pyg.model.HRNetModule` with a backbone.
        source: an image, a folder, a CSV (see :func:`list_images`), a list of image paths
            (no labels) or an :class:`ImageList`. For PIL images, arrays and tensors use
            :class:`~hrnet_pyg.extractor.FeatureExtractor`.
        labels: how labels of a folder are found (:data:`LABEL_MODES`). (default: ``"auto"``)
        batch_size: images per forward pass. (default: ``64``)
        num_workers: data loader processes. (default: ``0``)
        device: ``"auto"``/``None``: CUDA when present, else CPU.
        amp: autocast as in :func:`~hrnet_pyg.engine.extract` (on for CUDA under ``"auto"``).
        progress: a bar on a terminal, plain lines otherwise (:class:`~hrnet_pyg.runtime.Progress`).

    A missing or unreadable image raises :class:`~hrnet_pyg.data.DatasetError` naming its path.
    """
    from torch.utils.data import DataLoader

    from hrnet_pyg.engine import extract  # the engine imports the model and torch_geometric

    inner = unwrap_model(model)
    if getattr(inner, "backbone", None) is None:
        raise ValueError(
            "this HRNet has no backbone (it was trained on pre-extracted features), so it cannot "
            "read images; extract features with the CNN that produced them instead"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(source, ImageList):
        images = source
    elif isinstance(source, (list, tuple)):  # a list of image files, in the given order
        images = ImageList([str(Path(p).expanduser().resolve()) for p in source], source="list of paths")
        if not images.paths:
            raise ValueError("the list of images is empty")
    elif isinstance(source, (str, os.PathLike)):
        images = list_images(source, labels=labels)
    else:
        raise TypeError(
            "source must be an image, a folder, a CSV, an ImageList or a list of image paths; "
            f"got {type(source).__name__}"
        )
    h, w = inner.config.image_size
    dataset = ImageDataset([(p, 0, 0) for p in images.paths], build_transforms(h, w, is_train=False))
    dev = resolve_device(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=dev.type == "cuda")
    feats, _, _ = extract(inner, loader, device=dev, amp=amp, progress=progress)
    return ImageFeatures(
        features=feats.float(),
        paths=list(images.paths),
        pids=images.pids,
        camids=images.camids,
        model_fingerprint=feature_fingerprint(inner),
    )


def features_of(
    model: HRNet, source: PathLike | ImageFeatures, **kwargs: Any
) -> ImageFeatures:
    """``source`` as features: an :class:`ImageFeatures`, an ``.npz`` feature file, or images."""
    if isinstance(source, ImageFeatures):
        return source
    if is_feature_file(source):
        return ImageFeatures.load(source)
    return extract_images(model, source, **kwargs)


__all__ = ["FEATURES_FORMAT", "ImageFeatures", "extract_images", "feature_fingerprint", "features_of"]
