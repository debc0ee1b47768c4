"""The whole relation step of HRNet (Sec. 3.2, Fig. 2) by message passing on one hybrid graph.

:class:`HybridRelationBlock` runs the individual relationship layer (Eq. 2-3), the pairwise layer
with inter-graph propagation (Eq. 6-9) and the verification head (Eq. 13) on the
:class:`~torch_geometric.data.HeteroData` of :func:`hrnet_pyg.graphs.hybrid_graph`, through the
layers' message-passing ``forward``, as wired by :meth:`hrnet_pyg.head.RelationHead.forward_graph`.
It is the readable, reusable form of what :class:`~hrnet_pyg.model.HRNetModule` computes on its
dense factorised path, and gives the same numbers (``tests/test_hybrid.py``); it batches with
:class:`torch_geometric.loader.DataLoader`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hrnet_pyg.graphs import INTRA, KNN, LEFT, RIGHT, HybridGraph, hybrid_graph
from hrnet_pyg.head import RelationHead
from hrnet_pyg.nn import IndividualRelationConv, PairwiseRelationConv, VerificationHead


@dataclass
class HybridOutput:
    """What :meth:`HybridRelationBlock.forward` returns; rows follow the nodes of the input graph."""

    feats: Tensor  # (N, d) F = data["image"].x: the IR input, v of Eq. 4-5
    ir_feats: Tensor | None = None  # (N, d') V' (Eq. 3): v' of Eq. 4-5; None without the IR layer
    ir_attention: tuple[Tensor, Tensor] | None = None  # (edge_index, a_ij) of A∘C on the knn edges
    pair_feats: Tensor | None = None  # (P, d) u'_{n,i} (Eq. 7), row p = pair node p
    pair_logits: Tensor | None = None  # (P,) logit of t_hat(n, i) (Eq. 13); None without a head

    @property
    def t_hat(self) -> Tensor | None:
        """(P,) same-identity probabilities :math:`\\hat{t}(n, i)` (Eq. 13)."""
        return None if self.pair_logits is None else torch.sigmoid(self.pair_logits)


class HybridRelationBlock(torch.nn.Module):
    r"""The relation step of HRNet, from "Learning Hybrid Relationships for Person Re-identification"
    (Liu, Huang and Zhang, AAAI 2021; Eq. 2-9 and 13), on a hybrid graph, by message passing.

    On the individual graph (node type ``image``, edges ``("image", "knn", "image")`` = C of
    Eq. 1) the individual relationship layer (:class:`~hrnet_pyg.nn.IndividualRelationConv`)
    computes

    .. math::
        \mathbf{V}' = \sigma\big((\mathbf{A} \circ \mathbf{C} + \mathbf{I})\,
        \mathbf{F} \mathbf{W}_s\big), \qquad
        a_{i,j} = \frac{\exp \mu([\mathbf{f}_i \Vert \mathbf{f}_j]^\top \mathbf{H}_s)}
        {\sum_{n} \exp \mu([\mathbf{f}_i \Vert \mathbf{f}_n]^\top \mathbf{H}_s)},

    whose input and output nodes :math:`(\mathbf{f}_i, \mathbf{v}'_i)` are what the consistent node
    constraint (Eq. 4-5) compares (``feats`` and ``ir_feats`` of the output). On the pair graphs
    (node type ``pair``, :math:`\mathbf{u}_{n,i} = \mathbf{f}_n - \mathbf{f}_i`, edges
    ``("pair", "intra", "pair")``) the pairwise layer
    (:class:`~hrnet_pyg.nn.PairwiseRelationConv`) aggregates with Eq. 6 and, over the
    inter-graph links ``("image", "left" / "right", "pair")``, from the image nodes
    :math:`\mathbf{v}_n, \mathbf{v}_i` (Eq. 7-9):

    .. math::
        \mathbf{u}'_{n,i} = \alpha\, \mathbf{u}_{n,i} + (1 - \alpha)\, \sigma\Big(
        \beta \sum_j g^n_{i,j}\, \mathbf{u}_{n,j} \mathbf{W}_p
        + (1 - \beta)\big(q^n_{i,n}\, \mathbf{v}_n \mathbf{W}_l + q^n_{i,i}\, \mathbf{v}_i
        \mathbf{W}_r\big)\Big),

    with :math:`\mathbf{v} = \mathbf{V}'` when the block has an individual layer and
    :math:`\mathbf{v} = \mathbf{F}` otherwise (the CNN+PR+IGP row of Table 1). The verification
    head (:class:`~hrnet_pyg.nn.VerificationHead`) then gives the logit of
    :math:`\hat{t}(n, i)` per pair node (Eq. 13).

    The block owns no parameters of its own: a :class:`~hrnet_pyg.head.RelationHead` wires the
    three modules it is given, so :meth:`from_model` shares a trained
    :class:`~hrnet_pyg.model.HRNetModule`'s head and weights (like PyG's ``GAE(encoder, decoder)``
    wires its parts). In training mode the head's BatchNorm takes its
    statistics over all pair nodes of the input, i.e. over the whole mini-batch of a
    :class:`~torch_geometric.loader.DataLoader` (as every BatchNorm in a PyG batch does); in
    evaluation mode every graph of a batch gets exactly what it gets alone.

    Args:
        ir (IndividualRelationConv, optional): Eq. 2-3; :obj:`None` for the rows without the
            individual module. (default: :obj:`None`)
        pr (PairwiseRelationConv, optional): Eq. 6-9 (IGP when built with ``igp=True``);
            :obj:`None` for the rows without the pairwise module. (default: :obj:`None`)
        verifier (VerificationHead, optional): Eq. 13, on the pairwise layer's outputs.
            (default: :obj:`None`)

    Shapes:
        - **input:** a :func:`~hrnet_pyg.graphs.hybrid_graph` (or a
          :class:`~torch_geometric.loader.DataLoader` batch of them) with image features
          :math:`(N, d)`, pair features :math:`(P, d)` (:math:`P = RN` per graph), knn edges
          :math:`(2, E)`, intra edges :math:`(2, E_p)`, left / right edges :math:`(2, P)`
        - **output:** :class:`HybridOutput`: ``feats`` :math:`(N, d)`, ``ir_feats``
          :math:`(N, d')`, ``ir_attention`` :math:`((2, E), (E,))`, ``pair_feats``
          :math:`(P, d)`, ``pair_logits`` :math:`(P,)` (each :obj:`None` where its module is absent)
    """

    def __init__(
        self,
        ir: IndividualRelationConv | None = None,
        pr: PairwiseRelationConv | None = None,
        verifier: VerificationHead | None = None,
    ) -> None:
        super().__init__()
        if ir is None and pr is None:
            raise ValueError(f"{type(self).__name__}: needs an individual (ir=) or a pairwise (pr=) layer, got neither")
        self.head = RelationHead(ir=ir, pr=pr, verifier=verifier)

    @property
    def ir(self) -> IndividualRelationConv | None:
        return self.head.ir

    @property
    def pr(self) -> PairwiseRelationConv | None:
        return self.head.pr

    @property
    def verifier(self) -> VerificationHead | None:
        return self.head.verifier

    @property
    def in_channels(self) -> int:
        if self.ir is not None:
            return self.ir.in_channels
        assert self.pr is not None
        return self.pr.channels

    @classmethod
    def from_model(cls, model: Any) -> HybridRelationBlock:
        """The block of a (trained) :class:`~hrnet_pyg.model.HRNetModule`, sharing its ``ir``, ``pr``
        and ``verifier`` modules (the same Parameter objects: training one trains the other)."""
        missing = [name for name in ("ir", "pr", "verifier") if not hasattr(model, name)]
        if missing:
            raise ValueError(f"HybridRelationBlock.from_model: {type(model).__name__} has no "
                             f"{', '.join(missing)} (expected an HRNetModule)")
        return cls(ir=model.ir, pr=model.pr, verifier=model.verifier)

    def reset_parameters(self) -> None:
        self.head.reset_parameters()

    def forward(self, data: HybridGraph) -> HybridOutput:
        """The relation step on ``data`` (a :func:`~hrnet_pyg.graphs.hybrid_graph` or a batch)."""
        where = type(self).__name__
        needed: list[tuple[Any, str]] = [("image", "x")]
        if self.ir is not None:
            needed.append((KNN, "edge_index"))
        if self.pr is not None:
            needed += [("pair", "x"), (INTRA, "edge_index")]
            if self.pr.igp:
                needed += [(LEFT, "edge_index"), (RIGHT, "edge_index")]
        for key, attr in needed:
            types = data.node_types if isinstance(key, str) else data.edge_types
            if key not in types or attr not in data[key]:
                raise ValueError(f"{where}: data lacks {key}.{attr}; build it with hrnet_pyg.graphs.hybrid_graph")
        rel = self.head.forward_graph(data)
        return HybridOutput(feats=data["image"].x, ir_feats=rel.ir_feats, ir_attention=rel.ir_attention,
                            pair_feats=rel.pair_feats, pair_logits=rel.pair_logits)

    def __repr__(self) -> str:
        return repr(self.head).replace(type(self.head).__name__, self.__class__.__name__, 1)


def hybrid_graph_for(model: Any, f: Tensor, y: Tensor | None = None, rows: Tensor | None = None) -> HybridGraph:
    """:func:`~hrnet_pyg.graphs.hybrid_graph` of the image features ``f`` (N, d) with the graph
    options of an :class:`~hrnet_pyg.model.HRNetModule`'s config: ``k``, ``ir_graph`` (kNN, or full
    for IR*), ``ir_self_in_knn`` and the Fig. 4 edges ``model.pr_edges_for(N)``: the graph that
    ``HRNetModule.forward`` builds for a training batch of these features."""
    cfg = model.config
    full = cfg.ir_graph == "full"
    return hybrid_graph(f, cfg.k, full=full, loop=cfg.ir_self_in_knn and not full,
                        pr_edges=model.pr_edges_for(f.size(0)), y=y, rows=rows)


__all__ = ["INTRA", "KNN", "LEFT", "RIGHT", "HybridOutput", "HybridRelationBlock", "hybrid_graph_for"]
