"""A callable feature extractor, as torchreid's ``FeatureExtractor`` is called::

    from hrnet_pyg import FeatureExtractor

    extractor = FeatureExtractor("runs/market1501/hrnet/last.pth", device="cpu")
    feats = extractor(["a.jpg", "b.jpg"])  # (2, d) float32: the CNN features F

It takes a list of paths, PIL images, HWC uint8 arrays (RGB) or a tensor, applies the model's own
test transform (resize to ``config.image_size``, ImageNet normalisation) and returns what
``hrnet-pyg extract`` writes for the same images: F, the pooled CNN features before the BNNeck
(the relational re-ranking's input). ``bnneck=True`` returns BN(F), the CNN's retrieval features.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from hrnet_pyg.data.base import read_image
from hrnet_pyg.data.transforms import build_transforms
from hrnet_pyg.engine import extract, load_model
from hrnet_pyg.model import HRNetModule
from hrnet_pyg.runtime import resolve_device, unwrap_model

PathLike = Union[str, "os.PathLike[str]"]


class FeatureExtractor:
    """Features of images for a trained :class:`~hrnet_pyg.model.HRNetModule`.

    Args:
        model: a checkpoint path (``last.pth`` of a run, or a file of ``HRNet.save``) or an
            :class:`~hrnet_pyg.model.HRNetModule` with a backbone.
        device: ``"auto"``/``None`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda:N"``.
        batch_size: images per forward pass. (default: ``64``)
        amp: autocast as in :func:`~hrnet_pyg.engine.extract` (on for CUDA under ``"auto"``).
        bnneck: return BN(F) (the cosine retrieval features) instead of F. (default: ``False``)

    Calling it with ``inputs`` returns an ``(N, d)`` float32 CPU tensor, one row per image:

    * a path, or a list of paths (``str``/``Path``): read as RGB, then the test transform;
    * a PIL image or a list of them: converted to RGB, then the test transform;
    * an ``(H, W, 3)`` uint8 array (RGB order; OpenCV's BGR needs ``img[..., ::-1]``), a list of
      them, or an ``(N, H, W, 3)`` uint8 array: as PIL images;
    * an ``(N, 3, H, W)`` (or ``(3, H, W)``) uint8 tensor: raw RGB images, as arrays;
    * an ``(N, 3, H, W)`` float tensor: images already through :attr:`transform` (normalised, at
      the model's ``image_size``), passed to the network as float32 (float64 and half precision
      are converted); NaN or infinite values are refused.
    """

    def __init__(
        self,
        model: PathLike | nn.Module,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 64,
        amp: bool | str = "auto",
        bnneck: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(model, nn.Module):
            net = unwrap_model(model)
        elif isinstance(model, (str, os.PathLike)):
            net = load_model(os.fspath(model))
        else:
            raise TypeError(f"model must be an HRNet or a checkpoint path, got {type(model).__name__}")
        if not isinstance(net, HRNetModule):
            raise TypeError(f"model must be an HRNet or a checkpoint path, got {type(net).__name__}")
        if getattr(net, "backbone", None) is None:
            raise ValueError(
                "this HRNet has no backbone (it was trained on pre-extracted features), so it cannot "
                "read images"
            )
        self.model = net
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.amp = amp
        self.bnneck = bnneck
        h, w = net.config.image_size
        self.image_size = (h, w)
        #: the model's test transform: PIL image -> normalised (3, H, W) tensor
        self.transform = build_transforms(*self.image_size, is_train=False)
        self.model.to(self.device).eval()

    @property
    def feat_dim(self) -> int:
        return int(self.model.feat_dim)

    def __repr__(self) -> str:
        h, w = self.image_size
        return (f"{self.__class__.__name__}(feat_dim={self.feat_dim}, image_size={h}x{w}, "
                f"device={self.device}, batch_size={self.batch_size}, bnneck={self.bnneck})")

    # ------------------------------------------------------------------ inputs -> batches
    def _from_pil(self, items: Sequence[Any]) -> Iterator[Tensor]:
        for s in range(0, len(items), self.batch_size):
            yield torch.stack([self.transform(_to_pil(x, i + s)) for i, x in enumerate(items[s : s + self.batch_size])])

    def _from_tensor(self, x: Tensor) -> Iterator[Tensor]:
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.size(1) != 3:
            raise ValueError(f"a tensor input must be (N, 3, H, W) or (3, H, W), got {tuple(x.shape)}")
        if x.dtype == torch.uint8:  # raw images: through PIL, as arrays are
            arrays = x.permute(0, 2, 3, 1).contiguous().numpy()
            yield from self._from_pil(list(arrays))
            return
        if not x.is_floating_point():
            raise ValueError(f"a tensor input must be uint8 (raw images) or float (transformed), got {x.dtype}")
        if tuple(x.shape[2:]) != self.image_size:
            h, w = self.image_size
            raise ValueError(
                f"a float tensor input is taken as already transformed and must be (N, 3, {h}, {w}), "
                f"the model's image_size; got {tuple(x.shape)}. Pass uint8 images, PIL images or "
                "paths to have them resized, or apply extractor.transform first"
            )
        bad = (~torch.isfinite(x)).flatten(1).any(1).nonzero().flatten().tolist()  # images with NaN/inf
        if bad:
            shown = ", ".join(str(i) for i in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise ValueError(
                f"the input tensor holds NaN or infinite values in image(s) {shown} (of {x.size(0)}); "
                "their features would be NaN"
            )
        # float64 (e.g. from numpy) or half precision: the network's weights are float32, and
        # autocast (amp) takes float32 inputs too.
        x = x.float()
        for s in range(0, x.size(0), self.batch_size):
            yield x[s : s + self.batch_size]

    def _batches(self, inputs: Any) -> tuple[int, Iterator[Tensor]]:
        if isinstance(inputs, Tensor):
            n = 1 if inputs.dim() == 3 else inputs.size(0)
            return n, self._from_tensor(inputs)
        if isinstance(inputs, np.ndarray) and inputs.ndim == 4:
            return inputs.shape[0], self._from_pil(list(inputs))
        if isinstance(inputs, (str, os.PathLike, Image.Image, np.ndarray)):
            inputs = [inputs]
        if not isinstance(inputs, (list, tuple)):
            raise TypeError(
                "FeatureExtractor takes a path, a PIL image, an (H, W, 3) uint8 array, a list of "
                f"these, or an (N, 3, H, W) tensor; got {type(inputs).__name__}"
            )
        return len(inputs), self._from_pil(list(inputs))

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(self, inputs: Any) -> Tensor:
        n, batches = self._batches(inputs)
        if n == 0:
            return torch.empty(0, self.feat_dim)
        # engine.extract runs the forward pass exactly as ``hrnet-pyg extract`` does (device,
        # autocast, float32 output); the labels it wants are placeholders here.
        loader = ((b, torch.zeros(b.size(0), dtype=torch.long)) for b in batches)
        feats, _, _ = extract(self.model, loader, device=self.device, amp=self.amp, progress=False)
        if self.bnneck:
            feats = torch.cat([
                self.model.retrieval_features(feats[s : s + 8192].to(self.device)).float().cpu()
                for s in range(0, len(feats), 8192)
            ])
        return feats.float()


def _to_pil(x: Any, index: int) -> Image.Image:
    if isinstance(x, (str, os.PathLike)):
        return read_image(Path(x))
    if isinstance(x, Image.Image):
        return x.convert("RGB")
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(
                f"input {index}: an array must be an (H, W, 3) uint8 RGB image, got {x.dtype} {x.shape}"
            )
        return Image.fromarray(np.ascontiguousarray(x))
    raise TypeError(
        f"input {index}: expected a path, a PIL image or an (H, W, 3) uint8 array, got {type(x).__name__}"
    )


__all__: list[str] = ["FeatureExtractor"]
