"""Export the feature extractor (backbone + BNNeck, inference mode) for deployment.

What is exported is the part of HRNet that turns images into retrieval features: the ResNet
trunk with global average pooling (Sec. 3.1) and the BatchNorm of the BNNeck, in eval mode
(running statistics). Its output ``bn_feats`` = BN(F) is what :meth:`HRNet.retrieval_features`
gives and what the CNN ranks by cosine distance; ``feats`` = F (optional) is the graph modules'
input, needed only to run the relational re-ranking in Python afterwards. The ID classifier
and the graph modules are not part of the export: at test time the graph modules act on a
query's neighbourhood (``hrnet_pyg.rerank``), not on single images.

Formats:

* ``torchscript``: ``torch.jit.trace`` (``.pt``; load with ``torch.jit.load``). torch.jit is
  deprecated in recent PyTorch but still supported; the trunk has no data-dependent control
  flow, so tracing is exact for every batch size and image size.
* ``onnx``: ``torch.onnx.export`` (``.onnx``; needs the ``onnx`` package, ``pip install
  hrnet_pyg[export]``), dynamic batch axis. The exporter built on ``torch.export`` is used
  when ``onnxscript`` is installed, else the TorchScript-based one (same numbers).
* ``torch.export``: ``torch.export.export`` + ``torch.export.save`` (``.pt2``; load with
  ``torch.export.load(path).module()``), dynamic batch dimension.

Inputs of every format: ``images`` (N, 3, H, W) float32, resized to the model's ``image_size``
and normalised with the ImageNet mean/std (``hrnet_pyg.data.build_transforms(is_train=False)``).
A JSON file beside the export (``<out>.json``) records these facts.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import torch
from torch import Tensor, nn

from hrnet_pyg import __version__
from hrnet_pyg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from hrnet_pyg.runtime import unwrap_model

if TYPE_CHECKING:  # pragma: no cover
    from hrnet_pyg.model import HRNetModule

PathLike = Union[str, "os.PathLike[str]"]

#: Export formats and their usual file suffix.
EXPORT_FORMATS: dict[str, str] = {"torchscript": ".pt", "onnx": ".onnx", "torch.export": ".pt2"}


class FeatureExtractor(nn.Module):
    r"""Images to retrieval features: the HRNet backbone, then the BNNeck's BatchNorm.

    .. math::
        F = \mathrm{GAP}(\mathrm{ResNet}(I)), \qquad \hat F = \mathrm{BN}(F)

    Built from a model with :meth:`from_model`, which copies the two parts (the source model
    is left as it was) in eval mode on the CPU.

    Args:
        backbone (nn.Module): images ``(N, 3, H, W)`` to ``(N, d)`` features F.
        bn (nn.BatchNorm1d): the BNNeck's BatchNorm.
        with_feats (bool, optional): also return F. (default: :obj:`False`)

    Shapes:
        - **input:** images :math:`(N, 3, H, W)`
        - **output:** ``bn_feats`` :math:`(N, d)`, or ``(bn_feats, feats)`` with ``with_feats``
    """

    def __init__(self, backbone: nn.Module, bn: nn.BatchNorm1d, with_feats: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.bn = bn
        self.with_feats = with_feats

    @classmethod
    def from_model(cls, model: HRNetModule, with_feats: bool = False) -> FeatureExtractor:
        inner = unwrap_model(model)
        if inner.backbone is None:
            raise ValueError(
                "this HRNet has no backbone (it was trained on pre-extracted features): there is "
                "no image-to-feature network to export"
            )
        extractor = cls(copy.deepcopy(inner.backbone), copy.deepcopy(inner.bnneck.bn), with_feats=with_feats)
        return extractor.float().cpu().eval()

    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        feats = self.backbone(images)  # (N, d) F
        bn_feats = self.bn(feats)  # (N, d) BN(F), running statistics in eval mode
        if self.with_feats:
            return bn_feats, feats
        return bn_feats

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.backbone!r}, bn={self.bn.num_features}, with_feats={self.with_feats})"


@dataclass
class ExportResult:
    path: Path
    format: str
    metadata_path: Path
    max_abs_diff: float | None  # exported vs eager on random input; None when not verified
    verify_note: str  # how it was verified, or why not


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _example(image_size: tuple[int, int], batch: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    h, w = image_size
    return torch.randn(batch, 3, h, w, generator=g)


def _output_names(with_feats: bool) -> list[str]:
    return ["bn_feats", "feats"] if with_feats else ["bn_feats"]


@contextmanager
def _quiet_export_warnings() -> Iterator[None]:
    """Silence what says nothing about this export: torch.jit's and the legacy ONNX exporter's
    deprecation notices, the tracer's note about the backbone's input-shape check (a Python
    check, not part of the traced graph), and the ONNX optimiser's INFO log."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        warnings.filterwarnings(
            "ignore", message=r"Converting a tensor to a Python boolean", module=r"hrnet_pyg\.backbone"
        )
        warnings.filterwarnings(
            "ignore", message=r"You are using the legacy TorchScript-based ONNX", category=DeprecationWarning
        )
        warnings.filterwarnings("ignore", message=r"The feature will be removed", category=DeprecationWarning)
        # The ONNX graph optimiser logs every pass at INFO; keep a CLI's INFO log readable.
        loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript", "torch.onnx")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(max(lg.level, logging.WARNING))
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=False):
                lg.setLevel(level)


def export_torchscript(extractor: FeatureExtractor, path: Path, example: Tensor) -> None:
    with _quiet_export_warnings():
        # check_trace=False: export_model compares the saved module with the eager one itself.
        traced = torch.jit.trace(extractor, example, check_trace=False)
        torch.jit.save(traced, str(path))


def export_onnx(
    extractor: FeatureExtractor,
    path: Path,
    example: Tensor,
    *,
    opset: int | None = None,
    dynamo: bool | str = "auto",
) -> None:
    """ONNX with a dynamic batch axis (inputs ``images``; outputs ``bn_feats`` [, ``feats``])."""
    if not _has_module("onnx"):
        raise ImportError(
            "ONNX export needs the 'onnx' package: pip install 'hrnet_pyg[export]' (or pip install onnx onnxruntime)"
        )
    use_dynamo = _has_module("onnxscript") if dynamo == "auto" else bool(dynamo)
    if use_dynamo and not _has_module("onnxscript"):
        raise ImportError(
            "the torch.export-based ONNX exporter (dynamo=True) needs 'onnxscript': pip install onnxscript"
        )
    outputs = _output_names(extractor.with_feats)
    kwargs: dict[str, Any] = dict(input_names=["images"], output_names=outputs, dynamo=use_dynamo)
    if opset is not None:
        kwargs["opset_version"] = opset
    if use_dynamo:
        kwargs["dynamic_shapes"] = {"images": {0: torch.export.Dim("batch", min=1)}}
        kwargs["external_data"] = False  # one self-contained file (ResNet-50 is ~100 MB < 2 GB)
        kwargs["verbose"] = False
    else:
        kwargs["dynamic_axes"] = {name: {0: "batch"} for name in ["images", *outputs]}
    with _quiet_export_warnings():
        torch.onnx.export(extractor, (example,), str(path), **kwargs)


def export_program(extractor: FeatureExtractor, path: Path, example: Tensor) -> None:
    """``torch.export`` program with a dynamic batch dimension, saved as ``.pt2``."""
    program = torch.export.export(
        extractor, (example,), dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}}
    )
    torch.export.save(program, str(path))


def load_exported(path: PathLike) -> Callable[[Tensor], tuple[Tensor, ...]]:
    """A function images -> tuple of output tensors for an exported file, by its suffix:
    ``.onnx`` (onnxruntime, CPU), ``.pt2`` (torch.export), anything else TorchScript."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        if not _has_module("onnxruntime"):
            raise ImportError("running an ONNX export needs 'onnxruntime': pip install onnxruntime")
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run_onnx(images: Tensor) -> tuple[Tensor, ...]:
            outs = session.run(None, {"images": images.detach().cpu().float().numpy()})
            return tuple(torch.from_numpy(o) for o in outs)

        return run_onnx
    if suffix == ".pt2":
        module = torch.export.load(str(path)).module()
    else:
        with _quiet_export_warnings():
            module = torch.jit.load(str(path), map_location="cpu")

    @torch.no_grad()
    def run_torch(images: Tensor) -> tuple[Tensor, ...]:
        out = module(images)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    return run_torch


def _metadata(model: HRNetModule, fmt: str, with_feats: bool) -> dict[str, Any]:
    inner = unwrap_model(model)
    h, w = inner.config.image_size
    return {
        "format": fmt,
        "inputs": {"images": ["batch", 3, h, w]},
        "outputs": {name: ["batch", inner.feat_dim] for name in _output_names(with_feats)},
        "preprocessing": {
            "resize": [h, w],
            "scale": "RGB / 255",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
        "retrieval": "cosine similarity of bn_feats (BNNeck features, as HRNet.retrieval_features)",
        "hrnet_pyg_version": __version__,
        "torch_version": torch.__version__,
        "config": inner.config.to_dict(),
    }


def export_model(
    model: HRNetModule,
    path: PathLike,
    format: str = "torchscript",
    *,
    with_feats: bool = False,
    opset: int | None = None,
    dynamo: bool | str = "auto",
    verify: bool = True,
    atol: float = 1e-4,
) -> ExportResult:
    """Export the feature extractor of ``model`` and check it against the eager model.

    Args:
        model: an :class:`~hrnet_pyg.model.HRNetModule` with a backbone (left unchanged).
        path: output file; the usual suffix (:data:`EXPORT_FORMATS`) is not added.
        format: ``"torchscript"``, ``"onnx"`` or ``"torch.export"``. (default: ``"torchscript"``)
        with_feats: also output F (for the relational re-ranking). (default: ``False``)
        opset: ONNX opset (default: the exporter's).
        dynamo: ONNX exporter: ``"auto"`` (torch.export-based when ``onnxscript`` is
            installed), ``True`` or ``False`` (TorchScript-based). (default: ``"auto"``)
        verify: run the saved file on a random batch of a size other than the traced one and
            compare with the eager model (ONNX: only with ``onnxruntime`` installed).
            (default: ``True``)
        atol: largest absolute difference accepted by ``verify``. (default: ``1e-4``)

    Raises:
        ValueError: unknown format, a model without backbone.
        ImportError: ONNX without the ``onnx`` package.
        RuntimeError: the exported model's features differ from the eager model's.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; valid formats: {', '.join(EXPORT_FORMATS)}")
    extractor = FeatureExtractor.from_model(model, with_feats=with_feats)
    inner = unwrap_model(model)
    image_size = tuple(inner.config.image_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = _example(image_size, batch=2, seed=0)
    if format == "torchscript":
        export_torchscript(extractor, path, example)
    elif format == "onnx":
        export_onnx(extractor, path, example, opset=opset, dynamo=dynamo)
    else:
        export_program(extractor, path, example)
    meta_path = path.with_name(path.name + ".json")
    meta = _metadata(model, format, with_feats)

    diff: float | None = None
    note = "not verified (verify=False)"
    if verify:
        if format == "onnx" and not _has_module("onnxruntime"):
            note = "not verified: onnxruntime is not installed (pip install onnxruntime)"
        else:
            x = _example(image_size, batch=3, seed=1)  # another batch size than traced
            with torch.no_grad():
                ref = extractor(x)
            ref_t = ref if isinstance(ref, tuple) else (ref,)
            got = load_exported(path)(x)
            if len(got) != len(ref_t):
                raise RuntimeError(f"the export {path} returned {len(got)} outputs, expected {len(ref_t)}")
            diff = max(float((g.float() - r).abs().max()) for g, r in zip(got, ref_t, strict=False))
            if not diff <= atol:
                raise RuntimeError(
                    f"the export {path} differs from the eager model by {diff:.3g} (> atol {atol:g}) on a random batch"
                )
            runtime = (
                "onnxruntime"
                if format == "onnx"
                else ("torch.export.load" if format == "torch.export" else "torch.jit.load")
            )
            note = f"verified with {runtime}: max |exported - eager| = {diff:.2e} on a random batch of 3"
    meta["verification"] = note
    meta_path.write_text(json.dumps(meta, indent=2))
    return ExportResult(path=path, format=format, metadata_path=meta_path, max_abs_diff=diff, verify_note=note)


__all__ = [
    "EXPORT_FORMATS",
    "ExportResult",
    "FeatureExtractor",
    "export_model",
    "export_onnx",
    "export_program",
    "export_torchscript",
    "load_exported",
]
