"""RelationHead: the relation step of HRNet (Sec. 3.2-3.3, Fig. 2), wired once.

The head owns the individual layer (Eq. 2-3) with its BNNeck, the pairwise layer (Eq. 6-9) and the
verification head (Eq. 13), the graph options of the config (k of Eq. 1, the IR* graph, Fig. 4's
edges) and the loss terms on their outputs (Eq. 4-5, 10-11 on V', 13). Its three entry points run
the same wiring on three representations of the graphs:

* :meth:`RelationHead.forward`: a training batch, densely, with the losses (``HRNetModule.forward``);
* :meth:`RelationHead.forward_graph`: a :func:`~hrnet_pyg.graphs.hybrid_graph`, by message passing
  (:class:`~hrnet_pyg.hybrid.HybridRelationBlock`);
* :meth:`RelationHead.score_terms`: a batch of query graphs from gathered per-image projections
  (:mod:`hrnet_pyg.scoring`, test time, Sec. 4.2).

Which image nodes the inter-graph propagation reads (:meth:`RelationHead.image_nodes`) and which
graphs are built (:meth:`individual_edges`, :meth:`individual_adjacency`, :meth:`pair_mask`) is
decided here once for all three. The equations themselves are the layers' (:mod:`hrnet_pyg.nn`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from hrnet_pyg.backbone import BNNeck
from hrnet_pyg.config import HRNetConfig
from hrnet_pyg.graphs import INTRA, KNN, LEFT, RIGHT, HybridGraph, full_edges, knn_adjacency, knn_edges, pair_mask
from hrnet_pyg.losses import consistent_node_loss, cross_entropy_label_smooth, verification_loss
from hrnet_pyg.nn import (
    IndividualProjection,
    IndividualRelationConv,
    PairProjection,
    PairwiseRelationConv,
    VerificationHead,
)


@dataclass
class RelationOutput:
    """What the relation step produced; each field ``None`` where its module is absent."""

    ir_feats: Tensor | None = None  # (N, d') V' (Eq. 3): v' of Eq. 4-5
    # (edge_index, a_ij) of A∘C on the edges of C (of the batch and any mined negatives, in that order)
    ir_attention: tuple[Tensor, Tensor] | None = None
    ir_logits: Tensor | None = None  # (N, S) ID logits on BN(V') (training only)
    pair_feats: Tensor | None = None  # u'_{n,i} (Eq. 7): (N, N, d) densely, (P, d) on a hybrid graph
    pair_logits: Tensor | None = None  # logits of t_hat(n, i) (Eq. 13), the shape of pair_feats[..., 0]
    losses: dict[str, Tensor] = field(default_factory=dict)  # "in", "c_pos", "c_neg", "pa" (Eq. 14)


def _query_cosine(x: Tensor) -> Tensor:
    """(B, M, d) -> (B, M - 1): cos(x_0, x_j) of each graph's query (node 0) and its other nodes."""
    norm = torch.linalg.vector_norm(x, dim=-1).clamp_min(1e-12)  # (B, M)
    return (x[:, 1:] @ x[:, 0].unsqueeze(-1)).squeeze(-1) / (norm[:, :1] * norm[:, 1:])


class RelationHead(nn.Module):
    r"""The relation step of HRNet: V', U', :math:`\hat{t}` and their losses from image features.

    .. math::
        \mathbf{V}' = \mathrm{IR}(\mathbf{F}, \mathbf{C}), \qquad
        \mathbf{U}' = \mathrm{PR}(\mathbf{F}, \mathbf{v}), \qquad
        \hat{t} = \operatorname{sigmoid}(\mathrm{head}(\mathbf{U}')),

    with :math:`\mathbf{v} = \mathbf{V}'` when the head has an individual layer and
    :math:`\mathbf{v} = \mathbf{F}` otherwise (the note under Table 1), read only with IGP.

    Args:
        ir (IndividualRelationConv, optional): Eq. 2-3. (default: :obj:`None`)
        ir_neck (BNNeck, optional): the IR output's own BNNeck and classifier (:math:`L_{in}`) and,
            at test time, the BN(V') of the ``ir_bn_cosine`` similarity. (default: :obj:`None`)
        pr (PairwiseRelationConv, optional): Eq. 6-9; IGP when built with ``igp=True``.
            (default: :obj:`None`)
        verifier (VerificationHead, optional): Eq. 13 on the pairwise layer's output.
            (default: :obj:`None`)
        config (HRNetConfig, optional): the graph options (``k``, ``ir_graph``, ``ir_self_in_knn``,
            ``pr_edges``, ``pr_edges_relative``, the P x K batch size) and the loss options
            (``label_smoothing``, ``use_cnc``, ``cnc_margin``, ``cnc_mining``).
            (default: :class:`~hrnet_pyg.config.HRNetConfig`'s defaults)
    """

    def __init__(
        self,
        ir: IndividualRelationConv | None = None,
        ir_neck: BNNeck | None = None,
        pr: PairwiseRelationConv | None = None,
        verifier: VerificationHead | None = None,
        config: HRNetConfig | None = None,
    ) -> None:
        super().__init__()
        where = type(self).__name__
        for name, module, cls in (("ir", ir, IndividualRelationConv), ("ir_neck", ir_neck, BNNeck),
                                  ("pr", pr, PairwiseRelationConv), ("verifier", verifier, VerificationHead)):
            if module is not None and not isinstance(module, cls):
                raise ValueError(f"{where}: {name} must be a {cls.__name__}, got {type(module).__name__}")
        if verifier is not None:
            if pr is None:
                raise ValueError(f"{where}: verifier scores the pairwise layer's outputs; pass pr= too")
            if verifier.in_channels != pr.channels:
                raise ValueError(f"{where}: verifier takes {verifier.in_channels} channels, "
                                 f"the pairwise layer gives {pr.channels}")
        if ir is not None and pr is not None:
            if ir.in_channels != pr.channels:
                raise ValueError(f"{where}: both layers read the image features: ir has "
                                 f"{ir.in_channels} input channels, pr {pr.channels}")
            if pr.igp and ir.out_channels != pr.channels:
                raise ValueError(f"{where}: the inter-graph propagation reads V' with {pr.channels} "
                                 f"channels, but ir gives {ir.out_channels}")
        self.ir = ir
        self.ir_neck = ir_neck
        self.pr = pr
        self.verifier = verifier
        self.config = config if config is not None else HRNetConfig()
        # The feature memory of ``ir_hard_negatives`` (training only; not in the state dict): a ring
        # of the last ``ir_memory_size`` batch features F and their identities.
        self._memory: tuple[Tensor, Tensor] | None = None
        self._memory_count = 0
        self._memory_next = 0

    @classmethod
    def from_config(cls, cfg: HRNetConfig, channels: int, num_classes: int) -> RelationHead:
        """The modules of the Table 1 row that ``cfg`` switches on, for ``channels``-dim features."""
        ir = ir_neck = pr = verifier = None
        if cfg.use_ir:
            ir = IndividualRelationConv(channels, channels, negative_slope=cfg.leaky_relu_slope,
                                        normalize=cfg.ir_attention_norm)
            ir_neck = BNNeck(channels, num_classes)  # L_in: "its own classifier"
        if cfg.use_pr:
            pr = PairwiseRelationConv(channels, alpha=cfg.alpha, beta=cfg.beta,
                                      negative_slope=cfg.leaky_relu_slope, igp=cfg.use_igp)
            verifier = VerificationHead(channels, projection=cfg.pr_head == "projected", init=cfg.pr_head_init)
        return cls(ir, ir_neck, pr, verifier, config=cfg)

    def reset_parameters(self) -> None:
        for module in (self.ir, self.pr, self.verifier):
            if module is not None:
                module.reset_parameters()
        self._memory, self._memory_count, self._memory_next = None, 0, 0

    # ------------------------------------------------------------------ hard negatives (not in the paper)
    @torch.no_grad()
    def hard_negatives(self, f: Tensor, pids: Tensor) -> Tensor:
        """Up to ``ir_hard_negatives`` rows of the feature memory to join the IR layer's training graph.

        The test graph holds thousands of nodes, most of them other identities; a P x K batch holds
        ten. Each batch image takes its ceil(M / N) nearest memory features (Euclidean, as Eq. 1)
        among the identities absent from the batch; of their union, the M nearest to the batch stay
        (exact duplicates once). (0, d) while the memory is empty.
        """
        m = self.config.ir_hard_negatives
        if self._memory is None or self._memory_count == 0 or self._memory[0].device != f.device:
            return f.new_zeros(0, f.size(1))
        feats, ids = (t[:self._memory_count] for t in self._memory)
        feats = feats[~torch.isin(ids, pids)]
        if feats.size(0) == 0:
            return f.new_zeros(0, f.size(1))
        dist = torch.cdist(f.detach().float(), feats)  # (N, S)
        per = min(feats.size(0), -(-m // f.size(0)))
        near = dist.topk(per, dim=1, largest=False).indices.flatten().unique()
        if near.numel() > m:
            near = near[dist[:, near].amin(dim=0).topk(m, largest=False).indices]
        return torch.unique(feats[near], dim=0).to(f.dtype)

    @torch.no_grad()
    def remember(self, f: Tensor, pids: Tensor) -> None:
        """Puts a batch's features F (detached) and identities into the memory, over its oldest rows."""
        size = self.config.ir_memory_size
        if self._memory is None or self._memory[0].shape != (size, f.size(1)) or self._memory[0].device != f.device:
            self._memory = (f.new_zeros(size, f.size(1), dtype=torch.float32),
                            torch.zeros(size, dtype=torch.long, device=f.device))
            self._memory_count = self._memory_next = 0
        f, pids = f[-size:], pids[-size:]
        rows = (self._memory_next + torch.arange(f.size(0), device=f.device)) % size
        self._memory[0][rows] = f.detach().float()
        self._memory[1][rows] = pids.long()
        self._memory_next = (self._memory_next + f.size(0)) % size
        self._memory_count = min(size, self._memory_count + f.size(0))

    # ------------------------------------------------------------------ graphs (Eq. 1, Fig. 4)
    def individual_edges(self, feats: Tensor, batch: Tensor | None = None, k: int | None = None) -> Tensor:
        """Edges of C (Eq. 1): kNN, or the fully-connected graph for the IR* row."""
        cfg = self.config
        if cfg.ir_graph == "full":
            return full_edges(feats.size(0), batch=batch, device=feats.device)
        return knn_edges(feats.detach(), k=k or cfg.k, batch=batch, loop=cfg.ir_self_in_knn)

    def individual_adjacency(self, graph_feats: Tensor, sq_norms: Tensor | None = None) -> Tensor:
        """C of Eq. 1 for B graphs of M nodes, dense: (B, M, M) bool, ``[b, i, j]`` = edge j -> i.

        The edges of :meth:`individual_edges` on the graphs' disjoint union, k clipped to M - 1 as at
        test time, via :func:`~hrnet_pyg.graphs.knn_adjacency`. ``sq_norms`` (B, M): the rows'
        ||f||^2 if already known. The features must be finite.
        """
        b, m, _ = graph_feats.shape
        cfg = self.config
        if cfg.ir_graph == "full":
            return ~torch.eye(m, dtype=torch.bool, device=graph_feats.device).expand(b, m, m)
        return knn_adjacency(graph_feats, cfg.k, loop=cfg.ir_self_in_knn, sq_norms=sq_norms)

    def pr_edges_for(self, num_nodes: int) -> int | None:
        """Fig. 4's edges per difference node in a pair graph of ``num_nodes`` nodes.

        ``pr_edges`` counts edges in a training graph of P x K nodes; with
        ``pr_edges_relative`` (default) a graph of another size (121 nodes at test time) keeps the
        same share of its nodes, so ``pr_edges = P K`` is the complete graph at any size.
        """
        cfg = self.config
        if cfg.pr_edges is None:
            return None
        if not cfg.pr_edges_relative:
            return cfg.pr_edges
        return max(1, min(num_nodes, round(cfg.pr_edges * num_nodes / cfg.batch_size)))

    def pair_mask(self, f: Tensor) -> Tensor | None:
        """The pair graphs' neighbour mask of images ``f`` (N, d) or (B, N, d) (Fig. 4), ``None``
        for the complete graphs of Eq. 6."""
        if self.config.pr_edges is None:
            return None
        return pair_mask(f.detach(), self.pr_edges_for(f.size(-2)))

    def image_nodes(self, f: Tensor, v: Tensor | None) -> Tensor | None:
        """The image nodes that Eq. 7-9 read: V' (``v``) with the individual layer, F itself without
        it (the note under Table 1); ``None`` without the inter-graph propagation."""
        if self.pr is None or not self.pr.igp:
            return None
        return f if v is None else v

    # ------------------------------------------------------------------ training (dense)
    def forward(self, f: Tensor, pids: Tensor) -> RelationOutput:
        """The relation step on one training batch ``f`` (N, d) with identities ``pids`` (N,): every
        graph spans the batch; the loss terms of Eq. 14 that the head's modules give. With
        ``ir_hard_negatives`` (in training mode) the IR layer's graph also holds the batch's
        :meth:`hard_negatives`, which feed the batch's nodes and carry no loss themselves."""
        cfg = self.config
        n = f.size(0)
        if self.ir is not None and cfg.ir_graph == "knn" and n < cfg.k + 1:
            raise ValueError(
                f"a batch of {n} images is smaller than k+1 = {cfg.k + 1} (k = {cfg.k} neighbours "
                f"of Eq. 1); use a larger batch (P x K = {cfg.num_identities} x {cfg.num_instances}) "
                "or a smaller k"
            )
        out = RelationOutput()
        v = None
        if self.ir is not None:
            graph = f
            if self.training and cfg.ir_hard_negatives > 0:  # the batch first, then its mined negatives
                graph = torch.cat([f, self.hard_negatives(f, pids)])
                self.remember(f, pids)
            one_graph = torch.zeros(graph.size(0), dtype=torch.long, device=f.device)  # Eq. 2 spans the graph
            v, out.ir_attention = self.ir(graph, self.individual_edges(graph), batch=one_graph,
                                          return_attention_weights=True)
            v = v[:n]  # the loss terms read the batch's nodes
            out.ir_feats = v
            if self.ir_neck is not None:
                _, out.ir_logits = self.ir_neck(v)
                out.losses["in"] = cross_entropy_label_smooth(out.ir_logits, pids, cfg.label_smoothing)
            if cfg.use_cnc:
                out.losses["c_pos"], out.losses["c_neg"] = consistent_node_loss(
                    f, v, pids, cfg.cnc_margin, mining=cfg.cnc_mining)
        if self.pr is not None:
            out.pair_feats = self.pr.forward_dense(f, self.image_nodes(f, v), mask=self.pair_mask(f))  # (N, N, d)
            if self.verifier is not None:
                out.pair_logits = self.verifier(out.pair_feats)  # (N, N)
                out.losses["pa"] = verification_loss(out.pair_logits, pids)
        return out

    # ------------------------------------------------------------------ message passing
    def forward_graph(self, data: HybridGraph) -> RelationOutput:
        """The relation step on a :func:`~hrnet_pyg.graphs.hybrid_graph` (or a PyG ``DataLoader``
        batch of them) by message passing; no losses. Rows follow the graph's nodes."""
        f = data["image"].x
        out = RelationOutput()
        v = None
        if self.ir is not None:
            batch = data["image"].batch if "batch" in data["image"] else None
            if batch is None:  # one graph: Eq. 2's all-node denominator spans its N nodes
                batch = torch.zeros(f.size(0), dtype=torch.long, device=f.device)
            v, out.ir_attention = self.ir(f, data[KNN].edge_index, batch=batch, return_attention_weights=True)
            out.ir_feats = v
        if self.pr is not None:
            nodes = self.image_nodes(f, v)
            igp = {} if nodes is None else dict(
                x_image=nodes, left_index=data[LEFT].edge_index, right_index=data[RIGHT].edge_index)
            out.pair_feats = self.pr(data["pair"].x, data[INTRA].edge_index, **igp)
            if self.verifier is not None:
                out.pair_logits = self.verifier(out.pair_feats)
        return out

    # ------------------------------------------------------------------ test time (Sec. 4.2)
    @torch.no_grad()
    def project(self, f: Tensor) -> tuple[IndividualProjection | None, PairProjection | None]:
        """The per-image projections of both layers for images ``f`` (N, d): computed once per
        image, then gathered for every query graph that holds it. The inter-graph propagation's
        image-node terms are per image only when they read F (no individual layer); V' depends on
        the graph, so :meth:`score_terms` projects it per graph."""
        ir = self.ir.project(f) if self.ir is not None else None
        pr = None
        if self.pr is not None:
            pr = self.pr.project(f, nodes=self.ir is None)
        return ir, pr

    @torch.no_grad()
    def score_terms(self, f: Tensor, ir_proj: IndividualProjection | None, pr_proj: PairProjection | None,
                    sq_norms: Tensor | None = None) -> dict[str, Tensor]:
        """Every similarity of each query graph's node 0 (the query) to its other nodes.

        Args:
            f: (B, M, d) image features F of B query graphs, node 0 of each the query.
            ir_proj, pr_proj: :meth:`project` of the graphs' images, gathered per graph (the pair
                graph of node 0 only: ``rows=[0]``).
            sq_norms: (B, M) ||f||^2 of the nodes, if already known (the kNN graph of Eq. 1).

        Returns:
            dict of (B, M - 1) similarities (higher = more similar): with the individual layer
            ``"ir_cosine"`` (cos(v'_q, v'_g)) and, with its BNNeck, ``"ir_bn_cosine"`` (of BN(V'));
            with the pairwise layer and the verifier ``"pr_logit"`` and ``"pr_prob"``
            (:math:`\\hat{t}(q, g)`, Eq. 13).
        """
        b, m, _ = f.shape
        out: dict[str, Tensor] = {}
        v = None
        if self.ir is not None:
            v = self.ir.forward_dense(f, self.individual_adjacency(f, sq_norms), proj=ir_proj)
            out["ir_cosine"] = _query_cosine(v)
            if self.ir_neck is not None:
                out["ir_bn_cosine"] = _query_cosine(self.ir_neck.bn(v.reshape(b * m, -1)).view(b, m, -1))
        if self.pr is not None and self.verifier is not None:
            assert pr_proj is not None
            query = torch.zeros(1, dtype=torch.long, device=f.device)  # the pair graph of node 0
            nodes = self.image_nodes(f, v)
            if nodes is not None and v is not None:  # v = V' (graph dependent): the per-graph GEMM
                pr_proj = pr_proj._replace(nodes=self.pr.project_nodes(nodes, rows=query))
            out.update(self.pair_terms(f, pr_proj))
        return out

    @torch.no_grad()
    def pair_terms(self, f: Tensor, pr_proj: PairProjection) -> dict[str, Tensor]:
        r"""The PR module's similarities of each query graph's node 0 to its other nodes: the pair
        graph of the query (Eq. 6-9) and :math:`\hat{t}` (Eq. 13).

        Args:
            f: (B, M, d) image features F of B query graphs, node 0 of each the query.
            pr_proj: :meth:`project`'s pair terms gathered per graph (``rows=[0]``), with the image
                nodes' terms of the inter-graph propagation (``nodes``) already in place when the
                layer has IGP: those of the graph's own V' (:meth:`score_terms`), or of V' computed
                once for every image (the gallery-graph protocol, :mod:`hrnet_pyg.gallery`).

        Returns:
            ``{"pr_logit", "pr_prob"}``, each (B, M - 1).
        """
        if self.pr is None or self.verifier is None:
            raise ValueError(f"{type(self).__name__}.pair_terms needs the pairwise layer and its verifier")
        query = torch.zeros(1, dtype=torch.long, device=f.device)  # the pair graph of node 0
        u = self.pr.forward_dense(f, mask=self.pair_mask(f), rows=query, proj=pr_proj)[:, 0]  # (B, M, d)
        logit = self.verifier(u[:, 1:])  # (B, M - 1)
        return {"pr_logit": logit, "pr_prob": torch.sigmoid(logit)}  # t_hat(q, g)

    def __repr__(self) -> str:
        parts = [f"{name}={module}" for name, module in
                 (("ir", self.ir), ("pr", self.pr), ("verifier", self.verifier)) if module is not None]
        return f"{self.__class__.__name__}({', '.join(parts)})"


__all__ = ["RelationHead", "RelationOutput"]
