"""Test-time scoring of query graphs (Sec. 4.2 "Testing"): the fast path of relational re-ranking.

A query and its shortlisted gallery images form one graph that passes through both relationship
modules. Re-ranking a gallery scores thousands of such graphs over the same images, so everything
that is a function of one image alone is computed once per image (:func:`project_images`: the
layers' own ``project``) and gathered for every graph the image belongs to; the relation head then
runs the layers' dense forms on each batch of graphs (:meth:`~hrnet_pyg.head.RelationHead.score_terms`).
This module only gathers and fuses: no equation is written here.

* :func:`project_images` -- the per-image half, once per image set.
* :func:`similarity_terms` -- every similarity of each query graph (rows of the projections).
* :func:`fuse_scores` -- Sec. 4.2's sum of the two modules' similarities.
* :func:`relational_scores` -- the two above with the model's test protocol: what re-ranking uses.
* :func:`score_query_graphs` -- the same from the (B, M, d) features of B query graphs.

Node 0 of each query graph is its query; the scores are those of node 0 against nodes 1..M-1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as Fn
from torch import Tensor

from hrnet_pyg.nn import IndividualProjection, PairProjection, gather_rows

if TYPE_CHECKING:  # pragma: no cover
    from hrnet_pyg.model import HRNetModule


@dataclass
class ImageProjections:
    """Per-image quantities of test-time re-ranking (:func:`project_images`).

    Everything here is a function of one image's CNN features alone, so it is computed once per
    image and gathered for every query graph the image belongs to; only what depends on a graph's
    node set (kNN edges, attention normalisers, the IR outputs V' and V' W_r) is left per graph.
    Row ``n`` of every field belongs to image ``n``.
    """

    feats: Tensor  # (N, d) F
    retrieval: Tensor  # (N, d) BN(F) / ||BN(F)||: the cosine shortlist features
    sq_norms: Tensor | None = None  # (N,) ||f||^2 for the kNN distances of Eq. 1 (IR module)
    ir: IndividualProjection | None = None  # F W_s and Eq. 2's dot products
    pr: PairProjection | None = None  # F W_p, Eq. 6 and 8-9's dot products; IGP on v = F (no IR module)


# Test-time similarities that fuse_scores can add (keys of similarity_terms).
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
    added". ``parts`` are :func:`similarity_terms`; ``ir`` and ``pr`` name the term each
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


def fusion_of(model: HRNetModule) -> dict[str, Any]:
    """The keyword arguments of :func:`fuse_scores` that the model's test protocol names."""
    cfg = model.config
    return dict(ir=cfg.rerank_ir_score, pr=cfg.rerank_pr_score, norm=cfg.rerank_norm,
                pr_weight=cfg.rerank_pr_weight)


@torch.no_grad()
def project_images(model: HRNetModule, feats: Tensor) -> ImageProjections:
    """The per-image part of :func:`similarity_terms`, for images with CNN features ``feats`` (N, d).

    All weight matrices that act on one image at a time are applied here, once per image (the
    layers' ``project``: W_s of Eq. 3, W_p of Eq. 7 and, when IGP reads v = f, W_l and W_r), and
    the attention dot products of Eq. 2, 6, 8-9, which are per-image scalars. Re-ranking a gallery
    then pays these d x d products once per gallery image instead of once per (query, shortlisted
    image) pair.
    """
    f = feats.float()
    ir, pr = model.head.project(f)
    sq_norms = (f * f).sum(-1) if ir is not None else None
    return ImageProjections(feats=f, retrieval=Fn.normalize(model.retrieval_features(f), dim=1),
                            sq_norms=sq_norms, ir=ir, pr=pr)


@torch.no_grad()
def similarity_terms(model: HRNetModule, images: ImageProjections, index: Tensor) -> dict[str, Tensor]:
    """Every test-time similarity of each graph's query (node 0) to its other nodes; the graphs'
    nodes are rows ``index`` (B, M) of ``images`` (:func:`project_images`).

    The rows of each graph are gathered here; the relation head does the rest
    (:meth:`~hrnet_pyg.head.RelationHead.score_terms`): the kNN graph C (Eq. 1), the attention
    normalisers of Eq. 2 and 6, the aggregations (A o C) X W_s and G F W_p (batched (M, M) x (M, d)
    matmuls) and, with IR and IGP, V' W_r: the one truly per-graph matrix product.

    Returns:
        dict of (B, M - 1) similarities (higher = more similar): ``"cosine"`` (BN(F), the
        shortlist's own score) always; with the IR module ``"ir_cosine"`` (cos(v'_q, v'_g))
        and ``"ir_bn_cosine"`` (cosine of BN(V'), the IR module's BNNeck features); with the
        PR module ``"pr_prob"`` (t_hat(q, g), Eq. 13) and ``"pr_logit"`` (its logit).
    """
    if index.dim() != 2 or index.size(1) < 2:
        raise ValueError(f"index must be (B, M) with M >= 2 (query + gallery), got {tuple(index.shape)}")
    r = gather_rows(images.retrieval, index)  # (B, M, d), unit rows
    out: dict[str, Tensor] = {"cosine": (r[:, 1:] @ r[:, 0].unsqueeze(-1)).squeeze(-1)}
    if model.ir is None and model.pr is None:
        return out
    query = torch.zeros(1, dtype=torch.long, device=index.device)  # the pair graph of node 0
    out.update(model.head.score_terms(
        gather_rows(images.feats, index),
        None if images.ir is None else images.ir.gather(index),
        None if images.pr is None else images.pr.gather(index, query),
        sq_norms=None if images.sq_norms is None else gather_rows(images.sq_norms, index),
    ))
    return out


@torch.no_grad()
def relational_scores(model: HRNetModule, images: ImageProjections, index: Tensor) -> Tensor:
    """The relational similarity of each graph's query (node 0) to its other nodes, the graphs'
    nodes being rows ``index`` (B, M) of ``images`` (:func:`project_images`).

    The similarities of :func:`similarity_terms` fused as the model's test protocol says
    (:func:`fuse_scores` with :func:`fusion_of`: ``rerank_ir_score`` + ``rerank_pr_weight`` x
    ``rerank_pr_score``, each normalised over the query's shortlist by ``rerank_norm``).

    Returns:
        (B, M - 1) similarity of node 0 to nodes 1..M-1 (higher = more similar).
    """
    return fuse_scores(similarity_terms(model, images, index), **fusion_of(model))


@torch.no_grad()
def score_query_graphs(model: HRNetModule, graph_feats: Tensor) -> Tensor:
    """Relational similarity of each graph's node 0 (the query) to its other nodes.

    Sec. 4.2 "Testing": the query and its top-k gallery images form one graph that passes
    through both relationship modules; the two similarity scores are added.

    Args:
        model: an :class:`~hrnet_pyg.model.HRNetModule` (in eval mode for its BatchNorms).
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
    images = project_images(model, graph_feats.reshape(b * m, d))
    index = torch.arange(b * m, device=graph_feats.device).view(b, m)
    return relational_scores(model, images, index)


__all__ = [
    "RERANK_SCORES",
    "ImageProjections",
    "fuse_scores",
    "fusion_of",
    "project_images",
    "relational_scores",
    "score_query_graphs",
    "similarity_terms",
]
