"""Reading pretrained weight files: the layouts of torchvision, torchreid, fast-reid and this project.

The backbones (:mod:`hrnet_pyg.backbone`) decide which tensors of a file are their trunk; this
module only turns a file into a flat name -> tensor dict, safely (``weights_only``), and words
what went wrong in one line.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from hrnet_pyg.runtime import CHECKPOINT_KIND, torch_load_weights, unreadable_reason


class PretrainedWeightsError(RuntimeError, ValueError):
    """Pretrained weights that cannot be used: an unknown weight name, an unreadable file, or a
    state dict that does not fit the trunk (the message names the file and the keys).

    A ``ValueError`` too, so that the command line reports it as bad input in one line.
    """


def weights_report(loaded: int, source: str, skipped: Mapping[str, int]) -> str:
    """The one line printed when pretrained weights are loaded."""
    rest = ", ".join(f"{g} ({n} tensor{'s' if n != 1 else ''})" for g, n in sorted(skipped.items()))
    return (f"pretrained weights: loaded {loaded} backbone tensors from {source}; "
            f"skipped: {rest or 'nothing'}")


def strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """``state`` without ``prefix`` on its keys when every key has it (``module.``, ``backbone.``)."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def read_weights_file(path: str) -> tuple[dict[str, Tensor], str]:
    """A flat name -> tensor dict from ``path`` and the name of its layout."""
    if path.lower().endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as err:
            raise PretrainedWeightsError(
                f"reading {path!r} needs the safetensors package: pip install safetensors "
                "(or pip install hrnet_pyg[safetensors])") from err
        try:
            return dict(load_file(path, device="cpu")), "safetensors"
        except Exception as err:
            raise PretrainedWeightsError(
                f"could not read pretrained weights file {path!r} as safetensors "
                f"({type(err).__name__}: {err})") from err
    try:
        obj: Any = torch_load_weights(path)
    except Exception as err:
        # torch's message advises loading with weights_only=False, which would let the file run
        # code: the reason in words instead, and no chained exception to print it with -v.
        reason = unreadable_reason(path, err, kind="weights files")
        if "never unpickled" in reason:
            raise PretrainedWeightsError(
                f"pretrained weights file {path!r} is not a plain state dict, so it cannot be loaded "
                f"safely: {reason}") from None
        raise PretrainedWeightsError(f"could not read pretrained weights file {path!r}: {reason}") from None
    layout = "torchvision state dict"
    if isinstance(obj, Mapping):
        if obj.get("kind") == CHECKPOINT_KIND and isinstance(obj.get("model"), Mapping):
            obj, layout = obj["model"], "hrnet_pyg checkpoint"
        elif isinstance(obj.get("state_dict"), Mapping):
            obj, layout = obj["state_dict"], "torchreid checkpoint"
        elif isinstance(obj.get("model"), Mapping):
            obj, layout = obj["model"], "fast-reid checkpoint"
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise PretrainedWeightsError(
            f"pretrained weights file {path!r} must hold a state dict (name -> tensor), "
            f"or a dict with a 'state_dict' or 'model' entry; got {type(obj).__name__}")
    return dict(obj), layout


__all__ = ["PretrainedWeightsError", "read_weights_file", "strip_prefix", "weights_report"]
