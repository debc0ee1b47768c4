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
* :func:`relational_scores` -- the two above under a test protocol (:class:`~hrnet_pyg.protocol.RerankConfig`):
  what re-ranking uses.
* :func:`score_query_graphs` -- the same from the (B, M, d) features of B query graphs.

Node 0 of each query graph is its query; the scores are those of node 0 against nodes 1..M-1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as Fn
from torch import Tensor

from hrnet_pyg.config import deprecated
from hrnet_pyg.nn import IndividualProjection, PairProjection, gather_rows
from hrnet_pyg.protocol import IRScore, Norm, PRScore, RerankConfig
from hrnet_pyg.runtime import unwrap_model

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


# The similarities and normalisations fuse_scores takes: RerankConfig's, read from its annotations.
RERANK_SCORES = {
    "ir": RerankConfig.choices("ir_score"),
    "pr": RerankConfig.choices("pr_score"),
    "norm": RerankConfig.choices("norm"),
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


def fuse_scores(parts: dict[str, Tensor], ir: IRScore = "ir_cosine", pr: PRScore = "pr_prob",
                norm: Norm = "none", pr_weight: float = 1.0) -> Tensor:
    """Sec. 4.2: "the similarity scores calculated from the two relationship learning modules are
    added". ``parts`` are :func:`similarity_terms`; ``ir`` and ``pr`` name the term each
    module contributes and ``norm`` how each is normalised over the query's shortlist before the
    sum (``"none"`` is the literal sum); ``pr_weight`` scales the normalised PR term
    (``norm(ir) + pr_weight * norm(pr)``; 1.0 adds the two as equals). A model with one module
    returns that module's term (normalised: the order is the same); with neither, the cosine of
    the shortlist.

    Shapes: every part (B, K) -> (B, K).
    """
    RerankConfig(ir_score=ir, pr_score=pr, norm=norm, pr_weight=pr_weight)  # the values checked, once
    if ir in parts and pr in parts:
        return _normalise_over_shortlist(parts[ir], norm) + pr_weight * _normalise_over_shortlist(parts[pr], norm)
    for name in (ir, pr):
        if name in parts:
            return _normalise_over_shortlist(parts[name], norm)
    return parts["cosine"]


def protocol_of(
    model: HRNetModule, rerank_config: RerankConfig | int | None = None, *, shortlist: int | None = None,
    top_k: int | None = None, where: str = "relational_rerank",
) -> RerankConfig:
    """The test protocol to score with: ``rerank_config``, or the one the model carries (its run's,
    from its checkpoint), with its shortlist replaced by ``shortlist`` when given.

    ``top_k`` (or an int in place of ``rerank_config``) is the shortlist's former name, accepted
    with one deprecation line naming ``where``.
    """
    if isinstance(rerank_config, int) and not isinstance(rerank_config, bool):
        rerank_config, top_k = None, rerank_config
    if top_k is not None:
        deprecated(f"{where}(top_k=...): the shortlist is the test protocol's now; pass "
                   "rerank_config=RerankConfig(shortlist=...)")
        shortlist = top_k if shortlist is None else shortlist
    if rerank_config is None:
        rerank_config = getattr(unwrap_model(model), "rerank_config", None) or RerankConfig()
    elif not isinstance(rerank_config, RerankConfig):
        raise TypeError(f"rerank_config must be a RerankConfig, got {type(rerank_config).__name__}")
    return rerank_config if shortlist is None else rerank_config.replace(shortlist=shortlist)


def fusion_of(rerank_config: RerankConfig) -> dict[str, Any]:
    """The keyword arguments of :func:`fuse_scores` that the test protocol names."""
    return dict(ir=rerank_config.ir_score, pr=rerank_config.pr_score, norm=rerank_config.norm,
                pr_weight=rerank_config.pr_weight)


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
def relational_scores(
    model: HRNetModule, images: ImageProjections, index: Tensor, rerank_config: RerankConfig | None = None
) -> Tensor:
    """The relational similarity of each graph's query (node 0) to its other nodes, the graphs'
    nodes being rows ``index`` (B, M) of ``images`` (:func:`project_images`).

    The similarities of :func:`similarity_terms` fused as the test protocol says
    (:func:`fuse_scores` with :func:`fusion_of`: ``ir_score`` + ``pr_weight`` x ``pr_score``, each
    normalised over the query's shortlist by ``norm``); ``rerank_config=None``: the model's.

    Returns:
        (B, M - 1) similarity of node 0 to nodes 1..M-1 (higher = more similar).
    """
    return fuse_scores(similarity_terms(model, images, index), **fusion_of(protocol_of(model, rerank_config)))


@torch.no_grad()
def score_query_graphs(model: HRNetModule, graph_feats: Tensor, rerank_config: RerankConfig | None = None) -> Tensor:
    """Relational similarity of each graph's node 0 (the query) to its other nodes.

    Sec. 4.2 "Testing": the query and its top-k gallery images form one graph that passes
    through both relationship modules; the two similarity scores are added.

    Args:
        model: an :class:`~hrnet_pyg.model.HRNetModule` (in eval mode for its BatchNorms).
        graph_feats: (B, M, d) CNN features F of B query graphs; node 0 of each is the query.
        rerank_config: the test protocol's similarities, normalisation and PR weight (its
            shortlist is the graphs' size here); ``None``: the model's.

    Returns:
        (B, M - 1) similarity (higher = more similar): the IR module's cosine plus ``pr_weight``
        times the PR module's t_hat(q, g) (or its logit), each normalised as the protocol says
        and each where the module is enabled; the plain cosine of the BN(F) retrieval features
        when neither is.
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
    return relational_scores(model, images, index, rerank_config)


__all__ = [
    "RERANK_SCORES",
    "ImageProjections",
    "fuse_scores",
    "fusion_of",
    "project_images",
    "protocol_of",
    "relational_scores",
    "score_query_graphs",
    "similarity_terms",
]
