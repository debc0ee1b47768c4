"""hrnet_pyg: HRNet for person re-ID on PyG, from Liu, Huang and Zhang, "Learning Hybrid Relationships
for Person Re-identification", AAAI 2021.

The names below are imported on first use, so that ``hrnet-pyg --help`` and the verbs that need
neither torch nor torch_geometric start without paying for them.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "HRNet": "hrnet_pyg.api",
    "HRNetConfig": "hrnet_pyg.config",
    "RerankConfig": "hrnet_pyg.protocol",
    "HRNetModule": "hrnet_pyg.model",
    "HRNetOutput": "hrnet_pyg.model",
    "RelationHead": "hrnet_pyg.head",
    "IndividualRelationConv": "hrnet_pyg.nn",
    "PairwiseRelationConv": "hrnet_pyg.nn",
    "VerificationHead": "hrnet_pyg.nn",
    "HybridRelationBlock": "hrnet_pyg.hybrid",
    "HybridOutput": "hrnet_pyg.hybrid",
    "hybrid_graph": "hrnet_pyg.graphs",
    "FeatureExtractor": "hrnet_pyg.extractor",
    "build_dataset": "hrnet_pyg.data",
    "evaluate_rank": "hrnet_pyg.evaluation",
    "relational_rerank": "hrnet_pyg.rerank",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hrnet_pyg' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))


class _QuietPyGImport(importlib.abc.MetaPathFinder):
    """Imports ``torch_geometric`` with exactly one known warning silenced.

    torch_geometric 2.8 calls ``torch.jit.script`` while it is imported, and torch 2.9+ answers
    each call with a FutureWarning ("`torch.jit.script` is deprecated") that users cannot act on.
    Only that message, only from ``torch.jit``, only while ``torch_geometric`` itself is being
    imported is ignored: the same warning from one's own code still shows.
    """

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "torch_geometric":
            return None
        sys.meta_path.remove(self)  # one shot: find the real spec, then wrap its loader
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def quiet_exec(module: Any) -> None:
            with warnings.catch_warnings():
                warnings.filterwarnings(
                    "ignore", message=r"`torch\.jit\.script` is (deprecated|not supported)",
                    category=FutureWarning, module=r"torch\.jit\.",
                )
                exec_module(module)

        loader.exec_module = quiet_exec  # type: ignore[method-assign]
        return spec


if "torch_geometric" not in sys.modules:
    sys.meta_path.insert(0, _QuietPyGImport())

__all__ = [
    "FeatureExtractor",
    "HRNet",
    "HRNetConfig",
    "HRNetModule",
    "HRNetOutput",
    "HybridOutput",
    "HybridRelationBlock",
    "IndividualRelationConv",
    "PairwiseRelationConv",
    "RelationHead",
    "RerankConfig",
    "VerificationHead",
    "__version__",
    "build_dataset",
    "evaluate_rank",
    "hybrid_graph",
    "relational_rerank",
]
