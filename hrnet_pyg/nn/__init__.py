"""The graph layers of HRNet for PyG, one module per concept of the paper.

The method is HRNet from Shuang Liu, Wenmin Huang and Zhong Zhang, "Learning Hybrid Relationships
for Person Re-identification", AAAI 2021 (Sec. 3.2-3.3):

* :class:`IndividualRelationConv` (:mod:`~hrnet_pyg.nn.individual`) -- Eq. 2-3, attention over a
  (kNN) graph of image features.
* :class:`PairwiseRelationConv` (:mod:`~hrnet_pyg.nn.pairwise`) -- Eq. 6-9, attention over complete
  graphs of feature differences plus the inter-graph propagation (IGP).
* :class:`VerificationHead` (:mod:`~hrnet_pyg.nn.verification`) -- the same-identity probability
  :math:`\\hat{t}(n, i)` of Eq. 13.

Each equation is written once by message passing (``forward``: any PyG ``Adj`` -- an integer
``edge_index``, an ``EdgeIndex``, a ``SparseTensor`` or a ``torch.sparse`` adjacency --,
``(x_src, x_dst)``, ``size``; ``torch.compile(fullgraph=True)`` traces it) and once densely
(``forward_dense``, from the per-node terms of ``project``, which a caller scoring many graphs over
the same nodes computes once per node). Only torch, torch_geometric and the package's leaf helpers
are imported: nothing here is re-ID specific.
"""
from hrnet_pyg.nn._common import gather_rows
from hrnet_pyg.nn.individual import IndividualProjection, IndividualRelationConv, all_node_logsumexp
from hrnet_pyg.nn.pairwise import NodeProjection, PairProjection, PairwiseRelationConv
from hrnet_pyg.nn.verification import VerificationHead

__all__ = [
    "IndividualProjection",
    "IndividualRelationConv",
    "NodeProjection",
    "PairProjection",
    "PairwiseRelationConv",
    "VerificationHead",
    "all_node_logsumexp",
    "gather_rows",
]
