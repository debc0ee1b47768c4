"""HRNet: the CNN, the two relationship modules and their losses, wired as in Figure 2.

Data flow of one P x K training batch (N = P * K images)::

    images -(backbone, Sec. 3.1)-> F (N, d) -+-> BNNeck -> L_cl (Eq. 10-11), and L_tr on F (Eq. 12)
                                             +-> kNN graph C (Eq. 1) -> IR conv (Eq. 2-3) -> V' (N, d)
                                             |        V' -> own BNNeck -> L_in ; (F, V') -> L_c+/- (Eq. 4-5)
                                             +-> difference nodes u_{n,i} = f_n - f_i -> PR conv (Eq. 6-9,
                                                      IGP from V' or F) -> U' (N, N, d) -> t_hat -> L_pa (Eq. 13)

The Table 1 rows are switches of :class:`~hrnet_pyg.config.HRNetConfig` (``use_ir``, ``ir_graph``,
``use_cnc``, ``use_pr``, ``use_igp``). With ``backbone=None`` the same module trains the graph
modules on pre-extracted features (the forward then takes F instead of images).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as Fn
from torch import Tensor, nn

from hrnet_pyg.backbone import BNNeck, build_backbone
from hrnet_pyg.config import HRNetConfig
from hrnet_pyg.distributed import check_graph_scope, gather_graph_batch, get_world_size
from hrnet_pyg.graphs import full_edges, knn_adjacency, knn_edges, pair_mask
from hrnet_pyg.layers import IndividualRelationConv, PairwiseRelationConv, VerificationHead
from hrnet_pyg.losses import (
    batch_hard_triplet_loss,
    consistent_node_loss,
    cross_entropy_label_smooth,
    hrnet_total_loss,
    verification_loss,
)


@dataclass
class HRNetOutput:
    """Everything one forward pass produced; the type is the same in training and inference.

    In inference (``model.eval()`` or no ``pids``) only ``feats`` and ``bn_feats`` are filled:
    the graph modules act on a query's neighbourhood at test time (see :mod:`hrnet_pyg.rerank`).
    """

    feats: Tensor  # (N, d) F: pooled CNN features, the graph modules' input
    bn_feats: Tensor  # (N, d) BN(F): retrieval features of the CNN (BNNeck)
    logits: Tensor | None = None  # (N, S) ID logits on BN(F)
    ir_feats: Tensor | None = None  # (N, d) V' (Eq. 3)
    ir_logits: Tensor | None = None  # (N, S) ID logits on BN(V')
    ir_attention: tuple[Tensor, Tensor] | None = None  # (edge_index, a_ij) of A∘C
    pair_logits: Tensor | None = None  # (N, N) verification logits of t_hat(n, i)
    losses: dict[str, Tensor] = field(default_factory=dict)  # named terms of Eq. 14
    loss: Tensor | None = None  # L_total (Eq. 14)


@dataclass
class ImageTerms:
    """Per-image quantities of test-time re-ranking (:meth:`HRNet.image_terms`).

    Everything here is a function of one image's CNN features alone, so it is computed once per
    image and gathered for every query graph the image belongs to; only what depends on a graph's
    node set (kNN edges, attention normalisers, the IR outputs V' and V' W_r) is left per graph.
    Row ``n`` of every field belongs to image ``n``.
    """

    feats: Tensor  # (N, d) F
    retrieval: Tensor  # (N, d) BN(F) / ||BN(F)||: the cosine shortlist features
    sq_norms: Tensor | None = None  # (N,) ||f||^2 for the kNN distances of Eq. 1 (IR module)
    ir_lin: Tensor | None = None  # (N, d') F W_s (Eq. 3)
    ir_dots: Tensor | None = None  # (N, 2) F H_s[:d], F H_s[d:] (Eq. 2)
    pr_lin: Tensor | None = None  # (N, d) F W_p (Eq. 7)
    pr_dots: Tensor | None = None  # (N, 2|4) F H_p halves; F H_l[:d], F H_r[:d] (Eq. 6, 8-9)
    igp_lin_l: Tensor | None = None  # (N, d) F W_l: IGP on v = f (no IR module), Eq. 7
    igp_lin_r: Tensor | None = None  # (N, d) F W_r
    igp_dots: Tensor | None = None  # (N, 2) F H_l[d:], F H_r[d:]


# Test-time similarities that fuse_scores can add (keys of HRNet.graph_score_terms).
RERANK_SCORES = {
    "ir": ("ir_cosine", "ir_bn_cosine"),
    "pr": ("pr_prob", "pr_logit"),
    "norm": ("none", "zscore", "rank"),
}


def _normalise_over_shortlist(s: Tensor, norm: str) -> Tensor:
    """(B, K) scores of each query's shortlist, made comparable across the two modules."""
    if norm == "none":
        return s
    if norm == "zscore":  # (s - mean) / std over the query's K shortlisted images
        std = s.std(dim=1, keepdim=True, unbiased=False).clamp_min(1e-12)
        return (s - s.mean(dim=1, keepdim=True)) / std
    # "rank": 1 for the best of the shortlist down to 1/K for the worst (ties: stable order)
    k = s.size(1)
    order = s.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(k, device=s.device).expand_as(order))
    return 1.0 - ranks.to(s.dtype) / k


def fuse_scores(parts: dict[str, Tensor], ir: str = "ir_cosine", pr: str = "pr_prob",
                norm: str = "none") -> Tensor:
    """Sec. 4.2: "the similarity scores calculated from the two relationship learning modules are
    added". ``parts`` are :meth:`HRNet.graph_score_terms`; ``ir`` and ``pr`` name the term each
    module contributes and ``norm`` how each is normalised over the query's shortlist before the
    sum (``"none"`` is the literal sum). A model with one module returns that module's term
    (normalised: the order is the same); with neither, the cosine of the shortlist.

    Shapes: every part (B, K) -> (B, K).
    """
    if ir not in RERANK_SCORES["ir"] or pr not in RERANK_SCORES["pr"] or norm not in RERANK_SCORES["norm"]:
        raise ValueError(
            f"rerank scores: ir must be one of {RERANK_SCORES['ir']}, pr one of {RERANK_SCORES['pr']}, "
            f"norm one of {RERANK_SCORES['norm']}; got ir={ir!r}, pr={pr!r}, norm={norm!r}"
        )
    chosen = [parts[name] for name in (ir, pr) if name in parts]
    if not chosen:
        return parts["cosine"]
    fused = _normalise_over_shortlist(chosen[0], norm)
    for s in chosen[1:]:
        fused = fused + _normalise_over_shortlist(s, norm)
    return fused


class HRNet(nn.Module):
    """Hybrid Relationship Network (Xu et al., AAAI 2021): the modeling alone.

    Training, evaluation and checkpoints are the engine's (:mod:`hrnet_pyg.engine`);
    :class:`hrnet_pyg.HRNet` is this class with ``fit``/``extract``/``evaluate``/``save``/``load``
    methods that call it.

    Args:
        config: hyperparameters and Table 1 switches (defaults: the paper's values).
        num_classes: number of training identities S (Eq. 10).
    """

    def __init__(self, config: HRNetConfig | None = None, num_classes: int = 751) -> None:
        super().__init__()
        cfg = config if config is not None else HRNetConfig()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (training identities), got {num_classes}")
        self.config = cfg
        self.num_classes = num_classes
        if cfg.backbone is None:
            self.backbone: nn.Module | None = None
            dim = cfg.feat_dim
        else:
            self.backbone = build_backbone(cfg.backbone, pretrained=cfg.pretrained, last_stride=cfg.last_stride)
            dim = self.backbone.out_channels
        self.feat_dim = dim
        # under torch.distributed: "local" = graphs per rank, "global" = over all ranks' batch
        self.graph_scope = "local"
        self.bnneck = BNNeck(dim, num_classes)
        self.ir: IndividualRelationConv | None = None
        self.ir_neck: BNNeck | None = None
        if cfg.use_ir:
            self.ir = IndividualRelationConv(
                dim, dim, negative_slope=cfg.leaky_relu_slope, normalize=cfg.ir_attention_norm,
                ref_nodes=cfg.batch_size if cfg.ir_attention_norm == "size" else None,
            )
            self.ir_neck = BNNeck(dim, num_classes)  # L_in: "its own classifier"
        self.pr: PairwiseRelationConv | None = None
        self.verifier: VerificationHead | None = None
        if cfg.use_pr:
            self.pr = PairwiseRelationConv(
                dim,
                alpha=cfg.alpha,
                beta=cfg.beta,
                negative_slope=cfg.leaky_relu_slope,
                igp=cfg.use_igp,
            )
            self.verifier = VerificationHead(dim, projection=cfg.pr_head == "projected",
                                             init=cfg.pr_head_init)

    # ------------------------------------------------------------------ graph construction
    def individual_edges(self, feats: Tensor, batch: Tensor | None = None, k: int | None = None) -> Tensor:
        """Edges of C (Eq. 1): kNN, or the fully-connected graph for the IR* row."""
        if self.config.ir_graph == "full":
            return full_edges(feats.size(0), batch=batch, device=feats.device)
        return knn_edges(feats.detach(), k=k or self.config.k, batch=batch, loop=self.config.ir_self_in_knn)

    # ------------------------------------------------------------------ forward
    def extract_features(self, inputs: Tensor) -> Tensor:
        """F (N, d): the backbone's pooled features, or ``inputs`` itself without a backbone."""
        if self.backbone is None:
            if inputs.dim() != 2 or inputs.size(1) != self.feat_dim:
                raise ValueError(
                    f"this HRNet has no backbone and takes features of shape (N, {self.feat_dim}); "
                    f"got a tensor of shape {tuple(inputs.shape)}"
                )
            return inputs
        if inputs.dim() != 4:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(inputs.shape)}")
        return self.backbone(inputs)

    def forward(self, inputs: Tensor, pids: Tensor | None = None) -> HRNetOutput:
        feats = self.extract_features(inputs)  # (N, d)
        bn_feats, logits = self.bnneck(feats)
        out = HRNetOutput(feats=feats, bn_feats=bn_feats, logits=logits)
        if pids is None or not self.training:
            return out
        cfg = self.config
        if not bool(torch.isfinite(feats).all()):  # one sync; a clear message beats a kNN error
            raise ValueError("non-finite CNN features F (NaN or inf) entering the loss terms and graph modules")
        # Graph modules run in fp32 under autocast: softmax over up to N^2 logits per graph.
        with torch.autocast(device_type=feats.device.type, enabled=False):
            f32 = feats.float()
            losses = out.losses
            losses["cl"] = cross_entropy_label_smooth(logits.float(), pids, cfg.label_smoothing)
            # --- under torch.distributed, with graph_scope "global", L_tr and the graph modules below
            # see the batch of all ranks (features gathered with gradients); L_cl above stays per
            # rank, weighted so that DDP's average over the ranks is the mean over the global batch
            # (the weight is 1 when the ranks hold equally many images). See hrnet_pyg/distributed.py.
            if check_graph_scope(self.graph_scope) == "global":
                n_local = f32.size(0)
                f32, pids = gather_graph_batch(f32, pids)
                losses["cl"] = losses["cl"] * (get_world_size() * n_local / f32.size(0))
            # --- end distributed
            n = f32.size(0)
            if self.ir is not None and cfg.ir_graph == "knn" and n < cfg.k + 1:
                raise ValueError(
                    f"a batch of {n} images is smaller than k+1 = {cfg.k + 1} (k = {cfg.k} neighbours "
                    f"of Eq. 1); use a larger batch (P x K = {cfg.num_identities} x {cfg.num_instances}) "
                    "or a smaller k"
                )
            losses["tr"] = batch_hard_triplet_loss(f32, pids, cfg.triplet_margin)
            v = f32  # Eq. 7 uses v = f when the IR module is off (note under Table 1)
            if self.ir is not None and self.ir_neck is not None:
                edge_index = self.individual_edges(f32)
                v, att = self.ir(f32, edge_index, return_attention_weights=True)
                out.ir_feats, out.ir_attention = v, att
                _, out.ir_logits = self.ir_neck(v)
                losses["in"] = cross_entropy_label_smooth(out.ir_logits, pids, cfg.label_smoothing)
                if cfg.use_cnc:
                    losses["c_pos"], losses["c_neg"] = consistent_node_loss(
                        f32, v, pids, cfg.cnc_margin, mining=cfg.cnc_mining)
            if self.pr is not None and self.verifier is not None:
                mask = pair_mask(f32.detach(), self.pr_edges_for(n)) if cfg.pr_edges else None
                u = self.pr.forward_dense(f32, v if cfg.use_igp else None, mask=mask)  # (N, N, d)
                out.pair_logits = self.verifier(u)  # (N, N)
                losses["pa"] = verification_loss(out.pair_logits, pids)
            out.loss = hrnet_total_loss(losses, cfg.lambda_cnc)
        return out

    # ------------------------------------------------------------------ test protocol
    @torch.no_grad()
    def retrieval_features(self, feats: Tensor) -> Tensor:
        """BN(F): the CNN features used for the cosine top-k shortlist (BNNeck convention)."""
        return self.bnneck.bn(feats)

    @torch.no_grad()
    def query_graph_scores(self, graph_feats: Tensor) -> Tensor:
        """Relational similarity of each graph's node 0 (the query) to its other nodes.

        Sec. 4.2 "Testing": the query and its top-k gallery images form one graph that passes
        through both relationship modules; the two similarity scores are added.

        Args:
            graph_feats: (B, M, d) CNN features F of B query graphs; node 0 of each is the query.

        Returns:
            (B, M - 1) similarity (higher = more similar): cosine(v'_q, v'_g) from the IR module
            plus t_hat(q, g) from the PR module, each where the module is enabled; the plain
            cosine of the BN(F) retrieval features when neither is.
        """
        if graph_feats.dim() != 3 or graph_feats.size(-1) != self.feat_dim or graph_feats.size(1) < 2:
            raise ValueError(
                f"graph_feats must be (B, M, {self.feat_dim}) with M >= 2 (a query and at least one "
                f"gallery image), got {tuple(graph_feats.shape)}"
            )
        if not bool(torch.isfinite(graph_feats).all()):
            raise ValueError("graph_feats holds NaN or infinite values")
        b, m, d = graph_feats.shape
        terms = self.image_terms(graph_feats.reshape(b * m, d))
        index = torch.arange(b * m, device=graph_feats.device).view(b, m)
        return self.graph_scores(terms, index)

    @torch.no_grad()
    def image_terms(self, feats: Tensor) -> ImageTerms:
        """The per-image part of :meth:`graph_scores`, for images with CNN features ``feats`` (N, d).

        All weight matrices that act on one image at a time are applied here, once per image:
        W_s of the IR layer (Eq. 3), W_p of the PR layer (Eq. 7; the factorisation
        sum_j g_ij u_j W_p = f_n W_p - (G F W_p)_i needs F W_p only), and, when IGP runs on v = f
        (no IR module), W_l and W_r; likewise the attention dot products of Eq. 2, 6, 8-9, which
        are per-image scalars. Re-ranking a gallery then pays these d x d products once per
        gallery image instead of once per (query, shortlisted image) pair.
        """
        f = feats.float()
        terms = ImageTerms(feats=f, retrieval=Fn.normalize(self.retrieval_features(f), dim=1))
        if self.ir is not None:
            terms.sq_norms = (f * f).sum(-1)
            terms.ir_lin = self.ir.lin(f)
            terms.ir_dots = self.ir.image_dots(f)
        if self.pr is not None:
            terms.pr_lin = self.pr.lin_p(f)
            terms.pr_dots = self.pr.image_dots(f)
            if self.config.use_igp and self.ir is None:
                assert self.pr.lin_l is not None and self.pr.lin_r is not None
                terms.igp_lin_l = self.pr.lin_l(f)
                terms.igp_lin_r = self.pr.lin_r(f)
                terms.igp_dots = self.pr.node_dots(f)
        return terms

    def individual_adjacency(self, graph_feats: Tensor, sq_norms: Tensor | None = None) -> Tensor:
        """C of Eq. 1 for B graphs of M nodes, dense: (B, M, M) bool, ``[b, i, j]`` = edge j -> i.

        The edges of :meth:`individual_edges` on the graphs' disjoint union, k clipped to M - 1 as
        at test time, via :func:`~hrnet_pyg.graphs.knn_adjacency` (the edges of ``knn_edges`` in a
        few whole-batch ops). ``sq_norms`` (B, M): the rows' ||f||^2 if already known (:class:`ImageTerms`).
        The features must be finite (callers check once per image set, not per graph).
        """
        b, m, _ = graph_feats.shape
        if self.config.ir_graph == "full":
            return ~torch.eye(m, dtype=torch.bool, device=graph_feats.device).expand(b, m, m)
        return knn_adjacency(graph_feats, self.config.k, loop=self.config.ir_self_in_knn, sq_norms=sq_norms)

    @torch.no_grad()
    def graph_scores(self, terms: ImageTerms, index: Tensor) -> Tensor:
        """:meth:`query_graph_scores` of the graphs whose nodes are rows ``index`` (B, M) of
        ``terms`` (:meth:`image_terms`); node 0 of each graph is its query.

        The similarities of :meth:`graph_score_terms` fused as the config says
        (:func:`fuse_scores`: ``rerank_ir_score`` + ``rerank_pr_score``, each normalised over the
        query's shortlist by ``rerank_norm``).

        Returns:
            (B, M - 1) similarity of node 0 to nodes 1..M-1 (higher = more similar).
        """
        cfg = self.config
        parts = self.graph_score_terms(terms, index)
        return fuse_scores(parts, ir=cfg.rerank_ir_score, pr=cfg.rerank_pr_score, norm=cfg.rerank_norm)

    @torch.no_grad()
    def graph_score_terms(self, terms: ImageTerms, index: Tensor) -> dict[str, Tensor]:
        """Every test-time similarity of each graph's query (node 0) to its other nodes.

        Only the work that depends on a graph's node set is done here: the kNN graph C (Eq. 1,
        one (M, M) distance block per graph), the attention normalisers of Eq. 2 and 6 (M^2
        scalars), the aggregations (A o C) X W_s and G F W_p (batched (M, M) x (M, d) matmuls)
        and, with IR and IGP, V' W_r: the IR outputs change with the graph and pass through a ReLU,
        so this (B M, d) x (d, d) product is the one truly per-graph matrix product (one GEMM for
        all B graphs).

        Returns:
            dict of (B, M - 1) similarities (higher = more similar): ``"cosine"`` (BN(F), the
            shortlist's own score) always; with the IR module ``"ir_cosine"`` (cos(v'_q, v'_g))
            and ``"ir_bn_cosine"`` (cosine of BN(V'), the IR module's BNNeck features); with the
            PR module ``"pr_prob"`` (t_hat(q, g), Eq. 13) and ``"pr_logit"`` (its logit).
        """
        b, m = index.shape
        if m < 2:
            raise ValueError(f"index must be (B, M) with M >= 2 (query + gallery), got {tuple(index.shape)}")
        flat = index.reshape(-1)

        def rows_of(t: Tensor) -> Tensor:  # (N, ...) -> (B, M, ...); row copies, not per element
            return t.index_select(0, flat).view(b, m, *t.shape[1:])

        def query_cosine(x: Tensor) -> Tensor:  # (B, M, d) -> (B, M - 1) cos(x_0, x_j)
            norm = torch.linalg.vector_norm(x, dim=-1).clamp_min(1e-12)  # (B, M)
            return (x[:, 1:] @ x[:, 0].unsqueeze(-1)).squeeze(-1) / (norm[:, :1] * norm[:, 1:])

        r = rows_of(terms.retrieval)  # (B, M, d), unit rows
        out: dict[str, Tensor] = {"cosine": (r[:, 1:] @ r[:, 0].unsqueeze(-1)).squeeze(-1)}
        if self.ir is None and self.pr is None:
            return out
        f = rows_of(terms.feats)  # (B, M, d)
        v: Tensor | None = None
        if self.ir is not None and self.ir_neck is not None:
            assert terms.ir_lin is not None and terms.ir_dots is not None
            assert terms.sq_norms is not None
            adj = self.individual_adjacency(f, rows_of(terms.sq_norms))
            v = self.ir.forward_dense(f, adj, x_lin=rows_of(terms.ir_lin), dots=rows_of(terms.ir_dots))
            out["ir_cosine"] = query_cosine(v)
            out["ir_bn_cosine"] = query_cosine(self.ir_neck.bn(v.reshape(b * m, -1)).view(b, m, -1))
        if self.pr is not None and self.verifier is not None:
            cfg = self.config
            mask = pair_mask(f, self.pr_edges_for(m)) if cfg.pr_edges else None  # (B, M, M) or None
            rows = torch.zeros(1, dtype=torch.long, device=f.device)  # graph n = the query
            extra: dict[str, Tensor] = {}
            if cfg.use_igp:
                assert self.pr.lin_l is not None and self.pr.lin_r is not None
                if v is not None:  # v = V' (graph dependent): the per-graph GEMM of re-ranking
                    extra = dict(v_lin_l=self.pr.lin_l(v[:, :1]), v_lin_r=self.pr.lin_r(v),
                                 v_dots=self.pr.node_dots(v))
                else:  # v = f: per-image, gathered
                    assert terms.igp_lin_l is not None and terms.igp_lin_r is not None
                    assert terms.igp_dots is not None
                    extra = dict(v_lin_l=terms.igp_lin_l[index[:, :1]], v_lin_r=rows_of(terms.igp_lin_r),
                                 v_dots=rows_of(terms.igp_dots))
            assert terms.pr_lin is not None and terms.pr_dots is not None
            u = self.pr.forward_dense(f, None, mask=mask, rows=rows, f_lin=rows_of(terms.pr_lin),
                                      f_dots=rows_of(terms.pr_dots), **extra)  # (B, 1, M, d)
            logit = self.verifier(u[:, 0, 1:])  # (B, M - 1)
            out["pr_logit"] = logit
            out["pr_prob"] = torch.sigmoid(logit)  # t_hat(q, g)
        return out

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


__all__ = ["HRNet", "HRNetOutput", "ImageTerms", "fuse_scores", "RERANK_SCORES"]
