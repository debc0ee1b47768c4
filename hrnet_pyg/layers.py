"""The graph layers of HRNet under the import path ``hrnet_pyg.layers``; :mod:`hrnet_pyg.nn` holds
them, one module per concept (``individual.py``, ``pairwise.py``, ``verification.py``)."""
from hrnet_pyg.nn import (
    IndividualProjection,
    IndividualRelationConv,
    NodeProjection,
    PairProjection,
    PairwiseRelationConv,
    VerificationHead,
    all_node_logsumexp,
)

__all__ = [
    "IndividualProjection",
    "IndividualRelationConv",
    "NodeProjection",
    "PairProjection",
    "PairwiseRelationConv",
    "VerificationHead",
    "all_node_logsumexp",
]
