"""Test-time scoring of query graphs (Sec. 4.2 "Testing"): the fast path of relational re-ranking.

A query and its shortlisted gallery images form one graph that passes through both relationship
modules. Re-ranking a gallery scores thousands of such graphs over the same images, so everything
that is a function of one image alone is computed once per image (:func:`image_terms`) and
gathered for every graph the image belongs to; per graph only what depends on its node set is left
(:func:`graph_score_terms`): the kNN graph C (Eq. 1), the attention normalisers of Eq. 2 and 6,
two (M, M) x (M, d) aggregations and, with IR and IGP, V' W_r.

This module works on the layers' public parameters (``lin``, ``att_*``, ``lin_p``, ...) and small
public methods (:meth:`~hrnet_pyg.layers.PairwiseRelationConv.image_dots`, ``node_dots``), so the
layers keep the signatures a PyG user passes. Its results equal the layers' own paths
(``IndividualRelationConv.forward`` on each graph, ``PairwiseRelationConv.forward_dense`` with
``rows=[0]``) to float tolerance; ``tests/test_rerank.py`` checks both against loop references.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as Fn
from torch import Tensor

from hrnet_pyg.graphs import knn_adjacency, pair_mask
from hrnet_pyg.layers import IndividualRelationConv, PairwiseRelationConv

if TYPE_CHECKING:  # pragma: no cover
    from hrnet_pyg.model import HRNet


@dataclass
class ImageTerms:
    """Per-image quantities of test-time re-ranking (:func:`image_terms`).

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


# Test-time similarities that fuse_scores can add (keys of graph_score_terms).
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
                norm: str = "none", pr_weight: float = 1.0) -> Tensor:
    """Sec. 4.2: "the similarity scores calculated from the two relationship learning modules are
    added". ``parts`` are :func:`graph_score_terms`; ``ir`` and ``pr`` name the term each
    module contributes and ``norm`` how each is normalised over the query's shortlist before the
    sum (``"none"`` is the literal sum); ``pr_weight`` scales the normalised PR term
    (``norm(ir) + pr_weight * norm(pr)``; 1.0 adds the two as equals). A model with one module
    returns that module's term (normalised: the order is the same); with neither, the cosine of
    the shortlist.

    Shapes: every part (B, K) -> (B, K).
    """
    if ir not in RERANK_SCORES["ir"] or pr not in RERANK_SCORES["pr"] or norm not in RERANK_SCORES["norm"]:
        raise ValueError(
            f"rerank scores: ir must be one of {RERANK_SCORES['ir']}, pr one of {RERANK_SCORES['pr']}, "
            f"norm one of {RERANK_SCORES['norm']}; got ir={ir!r}, pr={pr!r}, norm={norm!r}"
        )
    if not 0.0 <= pr_weight < math.inf:
        raise ValueError(f"pr_weight must be a finite number >= 0, got {pr_weight}")
    if ir in parts and pr in parts:
        return _normalise_over_shortlist(parts[ir], norm) + pr_weight * _normalise_over_shortlist(parts[pr], norm)
    for name in (ir, pr):
        if name in parts:
            return _normalise_over_shortlist(parts[name], norm)
    return parts["cosine"]


# ------------------------------------------------------------------ per-image terms of the layers
def individual_dots(conv: IndividualRelationConv, x: Tensor) -> Tensor:
    r"""The two per-node attention scalars of Eq. 2, :math:`(\mathbf{x}^\top \mathbf{H}_s[:d],
    \mathbf{x}^\top \mathbf{H}_s[d:])`, stacked on the last axis: :math:`(*, 2)`."""
    return x @ torch.stack([conv.att_dst, conv.att_src], dim=1)


def individual_dense(conv: IndividualRelationConv, x: Tensor, adj: Tensor, *, x_lin: Tensor | None = None,
                     dots: Tensor | None = None) -> Tensor:
    r""":class:`~hrnet_pyg.layers.IndividualRelationConv` on a batch of small dense graphs: :math:`B`
    graphs of :math:`M` nodes each.

    Same result as the layer's ``forward`` on the disjoint union of the graphs (with ``batch``), but
    the aggregation :math:`(\mathbf{A} \circ \mathbf{C})\,\mathbf{X}\mathbf{W}_s` is one batched
    :math:`(M, M) \times (M, d')` matmul per graph instead of a gather/scatter of
    :math:`|\mathcal{E}| \times d'` messages, several times faster for re-ranking graphs
    (:math:`M = 121`, :math:`k = 10`).

    Args:
        conv: the layer whose parameters are used.
        x: node features :math:`(M, d)` or :math:`(B, M, d)`.
        adj: bool :math:`(M, M)` or :math:`(B, M, M)`; ``adj[..., i, j]`` is the edge
            :math:`j \rightarrow i` of :math:`\mathbf{C}` (a set: no multi-edges).
        x_lin: :math:`\mathbf{X}\mathbf{W}_s` if already known (gathered per-image rows),
            :math:`(B?, M, d')`.
        dots: :func:`individual_dots` of ``x`` if already known, :math:`(B?, M, 2)`.

    Returns:
        :math:`(B?, M, d')`.
    """
    where = "individual_dense"
    if not isinstance(x, Tensor) or x.dim() not in (2, 3) or x.size(-1) != conv.in_channels:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{where}: x must be a 2-D or 3-D tensor with {conv.in_channels} channels, got {shape}")
    m = x.size(-2)
    if not isinstance(adj, Tensor) or adj.dtype != torch.bool or adj.shape != x.shape[:-2] + (m, m):
        shape = tuple(adj.shape) if isinstance(adj, Tensor) else type(adj).__name__
        raise ValueError(f"{where}: adj must be a bool tensor of shape {tuple(x.shape[:-2]) + (m, m)}, got {shape}")
    if x_lin is None:
        x_lin = conv.lin(x)
    elif x_lin.shape != x.shape[:-1] + (conv.out_channels,):
        raise ValueError(f"{where}: x_lin must have shape {tuple(x.shape[:-1]) + (conv.out_channels,)}, "
                         f"got {tuple(x_lin.shape)}")
    if dots is None:
        dots = individual_dots(conv, x)
    elif dots.shape != x.shape[:-1] + (2,):
        raise ValueError(f"{where}: dots must have shape {tuple(x.shape[:-1]) + (2,)} (individual_dots of x), "
                         f"got {tuple(dots.shape)}")
    # Eq. 2 logits mu(x_i.H_s[:d] + x_j.H_s[d:]) of every (i, j) of a graph: M^2 scalars.
    e = Fn.leaky_relu(dots[..., :, None, 0] + dots[..., None, :, 1], conv.negative_slope)
    if conv.normalize in ("all", "size"):  # denominator over all M nodes, then masked by C
        lse = torch.logsumexp(e, dim=-1, keepdim=True)
        if conv.normalize == "size":  # ref_nodes * mean over the M nodes
            assert conv.ref_nodes is not None
            lse = lse + (math.log(conv.ref_nodes) - math.log(m))
        a = torch.exp(e - lse).masked_fill_(~adj, 0.0)
    else:  # softmax over the neighbours; a node without any gets nothing (as in forward)
        a = torch.softmax(e.masked_fill(~adj, float("-inf")), dim=-1).masked_fill_(~adj, 0.0)
    out = a @ x_lin  # (A o C) X W_s
    if conv.add_identity:
        out = out.add_(x_lin)  # + I X W_s
    if conv.act:
        out = Fn.relu(out, inplace=True)
    return out


@torch.no_grad()
def pairwise_query_graph(conv: PairwiseRelationConv, f: Tensor, *, f_lin: Tensor, f_dots: Tensor,
                         mask: Tensor | None = None, v_lin_l: Tensor | None = None,
                         v_lin_r: Tensor | None = None, v_dots: Tensor | None = None) -> Tensor:
    r"""Eq. 6-9 on the pair graph of node 0 of each of :math:`B` query graphs, from per-image terms.

    Equals ``conv.forward_dense(f, v, mask=mask, rows=torch.tensor([0]))[:, 0]`` (inference), with
    every per-image linear map given instead of computed from ``f`` and ``v``:

    Args:
        conv: the layer whose parameters are used.
        f: image features :math:`(B, M, d)`; node 0 of each graph is the query.
        f_lin: :math:`\mathbf{F}\mathbf{W}_p`, :math:`(B, M, d)`.
        f_dots: ``conv.image_dots(f)``, :math:`(B, M, 2)` (:math:`(B, M, 4)` with IGP).
        mask: bool :math:`(B, M, M)` of :func:`~hrnet_pyg.graphs.pair_mask`, or ``None`` (complete).
        v_lin_l: :math:`\mathbf{v}_0 \mathbf{W}_l` of the query node, :math:`(B, 1, d)` (IGP).
        v_lin_r: :math:`\mathbf{V}\mathbf{W}_r`, :math:`(B, M, d)` (IGP).
        v_dots: ``conv.node_dots(v)``, :math:`(B, M, 2)` (IGP).

    Returns:
        :math:`\mathbf{u}'_{0, i}` of shape :math:`(B, M, d)`.
    """
    b, m, d = f.shape
    igp = conv.igp
    terms: dict[str, tuple[Tensor | None, tuple[int, ...]]] = {"f_lin": (f_lin, (b, m, d)),
                                                              "f_dots": (f_dots, (b, m, 4 if igp else 2))}
    if igp:
        terms.update(v_lin_l=(v_lin_l, (b, 1, d)), v_lin_r=(v_lin_r, (b, m, d)), v_dots=(v_dots, (b, m, 2)))
    for name, (t, shape) in terms.items():
        if t is None or tuple(t.shape) != shape:
            got = None if t is None else tuple(t.shape)
            raise ValueError(f"pairwise_query_graph: {name} must have shape {shape}, got {got}")
    slope = conv.negative_slope
    # Eq. 6, logits e[i, j] = mu(u_{0,i}.a_dst + u_{0,j}.a_src) = mu((f_0.a_dst + f_0.a_src) - f_i.a_dst
    # - f_j.a_src): per-image dot products only.
    pd, ps = f_dots[..., 0], f_dots[..., 1]  # (B, M)
    c = (pd + ps)[..., :1]  # (B, 1)
    e = Fn.leaky_relu(c[..., :, None, None] - pd[..., None, :, None] - ps[..., None, None, :], slope)  # (B, 1, M, M)
    if mask is not None:
        e = e.masked_fill(~mask.unsqueeze(-3), float("-inf"))
    g = torch.softmax(e, dim=-1)  # G^0, rows sum to 1

    # As in forward_dense: scalars of Eq. 7 folded into the smaller operand, the (M, d) message
    # sum_j g_ij u_{0,j} W_p = f_0 W_p - (G F W_p)_i as one (M, M) @ (M, d) matmul, the IGP terms and the
    # residual added in place to the one (B, M, d) tensor the matmul allocates.
    c_p = (1.0 - conv.alpha) * (conv.beta if igp else 1.0)  # no IGP: beta = 1
    c_q = (1.0 - conv.alpha) * (1.0 - conv.beta)
    fold = m < conv.channels
    p = f_lin if fold else f_lin * c_p
    onehot = (torch.arange(m, device=f.device) == 0).to(g.dtype).unsqueeze(0)  # (1, M): e_0
    agg = onehot.unsqueeze(-2) - g
    if fold:
        agg = agg * c_p
    pre = agg @ p.unsqueeze(-3)  # (B, 1, M, d)
    if igp:
        assert v_lin_l is not None and v_lin_r is not None and v_dots is not None
        fl, fr = f_dots[..., 2], f_dots[..., 3]  # (B, M)
        vl, vr = v_dots[..., 0], v_dots[..., 1]  # (B, M)
        zl = Fn.leaky_relu((fl + vl)[..., :1].unsqueeze(-1) - fl.unsqueeze(-2), slope)  # (B, 1, M), with v_0
        zr = Fn.leaky_relu(fr[..., :1].unsqueeze(-1) - fr.unsqueeze(-2) + vr.unsqueeze(-2), slope)  # with v_i
        q = torch.softmax(torch.stack([zl, zr], dim=-1), dim=-1)  # (B, 1, M, 2)
        if fold:
            ql, wl, qr, wr = q[..., 0] * c_q, v_lin_l, q[..., 1] * c_q, v_lin_r
        else:
            ql, wl, qr, wr = q[..., 0], v_lin_l * c_q, q[..., 1], v_lin_r * c_q
        pre.addcmul_(ql.unsqueeze(-1), wl.unsqueeze(-2)).addcmul_(qr.unsqueeze(-1), wr.unsqueeze(-3))
    pre = Fn.relu(pre, inplace=True)
    if fold:  # alpha f_0 - alpha f_i, added in place
        out = pre.add_(f[..., :1, :].unsqueeze(-2), alpha=conv.alpha).sub_(f.unsqueeze(-3), alpha=conv.alpha)
    else:
        fa = f * conv.alpha
        out = (fa[..., :1, :].unsqueeze(-2) + (-fa).unsqueeze(-3)).add_(pre)  # Eq. 7
    return out[:, 0]


# ------------------------------------------------------------------ the model's query graphs
@torch.no_grad()
def image_terms(model: HRNet, feats: Tensor) -> ImageTerms:
    """The per-image part of :func:`graph_scores`, for images with CNN features ``feats`` (N, d).

    All weight matrices that act on one image at a time are applied here, once per image:
    W_s of the IR layer (Eq. 3), W_p of the PR layer (Eq. 7; the factorisation
    sum_j g_ij u_j W_p = f_n W_p - (G F W_p)_i needs F W_p only), and, when IGP runs on v = f
    (no IR module), W_l and W_r; likewise the attention dot products of Eq. 2, 6, 8-9, which
    are per-image scalars. Re-ranking a gallery then pays these d x d products once per
    gallery image instead of once per (query, shortlisted image) pair.
    """
    f = feats.float()
    terms = ImageTerms(feats=f, retrieval=Fn.normalize(model.retrieval_features(f), dim=1))
    if model.ir is not None:
        terms.sq_norms = (f * f).sum(-1)
        terms.ir_lin = model.ir.lin(f)
        terms.ir_dots = individual_dots(model.ir, f)
    if model.pr is not None:
        terms.pr_lin = model.pr.lin_p(f)
        terms.pr_dots = model.pr.image_dots(f)
        if model.config.use_igp and model.ir is None:
            assert model.pr.lin_l is not None and model.pr.lin_r is not None
            terms.igp_lin_l = model.pr.lin_l(f)
            terms.igp_lin_r = model.pr.lin_r(f)
            terms.igp_dots = model.pr.node_dots(f)
    return terms


def individual_adjacency(model: HRNet, graph_feats: Tensor, sq_norms: Tensor | None = None) -> Tensor:
    """C of Eq. 1 for B graphs of M nodes, dense: (B, M, M) bool, ``[b, i, j]`` = edge j -> i.

    The edges of ``HRNet.individual_edges`` on the graphs' disjoint union, k clipped to M - 1 as
    at test time, via :func:`~hrnet_pyg.graphs.knn_adjacency` (the edges of ``knn_edges`` in a
    few whole-batch ops). ``sq_norms`` (B, M): the rows' ||f||^2 if already known (:class:`ImageTerms`).
    The features must be finite (callers check once per image set, not per graph).
    """
    b, m, _ = graph_feats.shape
    cfg = model.config
    if cfg.ir_graph == "full":
        return ~torch.eye(m, dtype=torch.bool, device=graph_feats.device).expand(b, m, m)
    return knn_adjacency(graph_feats, cfg.k, loop=cfg.ir_self_in_knn, sq_norms=sq_norms)


@torch.no_grad()
def graph_score_terms(model: HRNet, terms: ImageTerms, index: Tensor) -> dict[str, Tensor]:
    """Every test-time similarity of each graph's query (node 0) to its other nodes; the graphs'
    nodes are rows ``index`` (B, M) of ``terms`` (:func:`image_terms`).

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
    if model.ir is None and model.pr is None:
        return out
    f = rows_of(terms.feats)  # (B, M, d)
    v: Tensor | None = None
    if model.ir is not None and model.ir_neck is not None:
        assert terms.ir_lin is not None and terms.ir_dots is not None
        assert terms.sq_norms is not None
        adj = individual_adjacency(model, f, rows_of(terms.sq_norms))
        v = individual_dense(model.ir, f, adj, x_lin=rows_of(terms.ir_lin), dots=rows_of(terms.ir_dots))
        out["ir_cosine"] = query_cosine(v)
        out["ir_bn_cosine"] = query_cosine(model.ir_neck.bn(v.reshape(b * m, -1)).view(b, m, -1))
    if model.pr is not None and model.verifier is not None:
        cfg = model.config
        pr = model.pr
        mask = pair_mask(f, model.pr_edges_for(m)) if cfg.pr_edges else None  # (B, M, M) or None
        extra: dict[str, Tensor] = {}
        if cfg.use_igp:
            assert pr.lin_l is not None and pr.lin_r is not None
            if v is not None:  # v = V' (graph dependent): the per-graph GEMM of re-ranking
                extra = dict(v_lin_l=pr.lin_l(v[:, :1]), v_lin_r=pr.lin_r(v), v_dots=pr.node_dots(v))
            else:  # v = f: per-image, gathered
                assert terms.igp_lin_l is not None and terms.igp_lin_r is not None
                assert terms.igp_dots is not None
                extra = dict(v_lin_l=terms.igp_lin_l[index[:, :1]], v_lin_r=rows_of(terms.igp_lin_r),
                             v_dots=rows_of(terms.igp_dots))
        assert terms.pr_lin is not None and terms.pr_dots is not None
        u = pairwise_query_graph(pr, f, mask=mask, f_lin=rows_of(terms.pr_lin), f_dots=rows_of(terms.pr_dots),
                                 **extra)  # (B, M, d)
        logit = model.verifier(u[:, 1:])  # (B, M - 1)
        out["pr_logit"] = logit
        out["pr_prob"] = torch.sigmoid(logit)  # t_hat(q, g)
    return out


@torch.no_grad()
def graph_scores(model: HRNet, terms: ImageTerms, index: Tensor) -> Tensor:
    """:func:`query_graph_scores` of the graphs whose nodes are rows ``index`` (B, M) of
    ``terms`` (:func:`image_terms`); node 0 of each graph is its query.

    The similarities of :func:`graph_score_terms` fused as the config says
    (:func:`fuse_scores`: ``rerank_ir_score`` + ``rerank_pr_weight`` x ``rerank_pr_score``, each
    normalised over the query's shortlist by ``rerank_norm``).

    Returns:
        (B, M - 1) similarity of node 0 to nodes 1..M-1 (higher = more similar).
    """
    cfg = model.config
    parts = graph_score_terms(model, terms, index)
    return fuse_scores(parts, ir=cfg.rerank_ir_score, pr=cfg.rerank_pr_score, norm=cfg.rerank_norm,
                       pr_weight=cfg.rerank_pr_weight)


@torch.no_grad()
def query_graph_scores(model: HRNet, graph_feats: Tensor) -> Tensor:
    """Relational similarity of each graph's node 0 (the query) to its other nodes.

    Sec. 4.2 "Testing": the query and its top-k gallery images form one graph that passes
    through both relationship modules; the two similarity scores are added.

    Args:
        model: an :class:`~hrnet_pyg.model.HRNet` (in eval mode for its BatchNorms).
        graph_feats: (B, M, d) CNN features F of B query graphs; node 0 of each is the query.

    Returns:
        (B, M - 1) similarity (higher = more similar): the IR module's cosine plus
        ``rerank_pr_weight`` times the PR module's t_hat(q, g) (or its logit), each normalised as
        the config says and each where the module is enabled; the plain
        cosine of the BN(F) retrieval features when neither is.
    """
    if graph_feats.dim() != 3 or graph_feats.size(-1) != model.feat_dim or graph_feats.size(1) < 2:
        raise ValueError(
            f"graph_feats must be (B, M, {model.feat_dim}) with M >= 2 (a query and at least one "
            f"gallery image), got {tuple(graph_feats.shape)}"
        )
    if not bool(torch.isfinite(graph_feats).all()):
        raise ValueError("graph_feats holds NaN or infinite values")
    b, m, d = graph_feats.shape
    terms = image_terms(model, graph_feats.reshape(b * m, d))
    index = torch.arange(b * m, device=graph_feats.device).view(b, m)
    return graph_scores(model, terms, index)


__all__ = [
    "ImageTerms",
    "RERANK_SCORES",
    "fuse_scores",
    "graph_score_terms",
    "graph_scores",
    "image_terms",
    "individual_adjacency",
    "individual_dense",
    "individual_dots",
    "pairwise_query_graph",
    "query_graph_scores",
]
