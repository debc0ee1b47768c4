"""The paper's test-time relational re-ranking (Sec. 4.2 "Testing"), and the switch between it and
the other test protocols (``RerankConfig.protocol``).

:func:`relational_rerank` is the one entry point: ``"paper"`` runs the per-query graphs below,
``"gallery"`` / ``"gallery+kreciprocal"`` the IR layer over the whole gallery's kNN graph
(:func:`hrnet_pyg.gallery.gallery_rerank`), ``"kreciprocal"`` k-reciprocal re-ranking of BN(F)
(:func:`hrnet_pyg.kreciprocal.k_reciprocal_rerank_features`, the call of the evaluation's
k-reciprocal row) and ``"none"`` the cosine of BN(F).

The paper's protocol, for each query: the shortlist, its top gallery images by cosine similarity of the CNN features
(120 of them), then the query and the shortlist pass as one graph through both relationship
modules, and the IR similarity plus the PR similarity re-orders them. Gallery images outside the
shortlist keep their cosine order after them. The test protocol (shortlist, similarities,
normalisation, PR weight) is a :class:`~hrnet_pyg.protocol.RerankConfig`. The classic
k-reciprocal baseline lives in :mod:`hrnet_pyg.kreciprocal`.

Why it is fast (``docs/performance.md``): every weight matrix that acts on one image at a time
(W_s of Eq. 3, W_p of Eq. 7 through sum_j g_ij u_j W_p = f_n W_p - (G F W_p)_i, and the
attention vectors of Eq. 2, 6, 8-9) is applied once per image of the whole query + gallery set
(:func:`~hrnet_pyg.scoring.project_images`), and each query graph gathers the rows of its 121
images. Per query only what depends on its node set remains
(:func:`~hrnet_pyg.scoring.relational_scores`): the kNN graph, the attention normalisers, two
(M, M) x (M, d) aggregations and V' W_r (about 1 GFLOP per query at d = 2048), batched over
``queries_per_pass`` queries into single large matrix products.
"""
from __future__ import annotations

import torch
from torch import Tensor

from hrnet_pyg.distances import cosine_distance
from hrnet_pyg.gallery import gallery_rerank, options_of
from hrnet_pyg.kreciprocal import k_reciprocal_rerank_features
from hrnet_pyg.model import HRNetModule
from hrnet_pyg.protocol import RerankConfig
from hrnet_pyg.runtime import progress as progress_of
from hrnet_pyg.runtime import resolve_device
from hrnet_pyg.scoring import project_images, protocol_of, relational_scores

# Bytes of one (queries, 1 + shortlist, d) float32 tensor of a pass when queries_per_pass is not given.
# CPU: glibc serves allocations above 32 MiB with fresh mmap()s, which page-fault again on every
# pass, and a pass allocates about a dozen such tensors; below the threshold freed blocks are
# reused. GPUs (caching allocator) gain from larger passes: fewer kernel launches per query.
_PASS_TENSOR_BYTES = {"cpu": 24 << 20}
_PASS_TENSOR_BYTES_OTHER = 128 << 20


@torch.no_grad()
def relational_rerank(
    model: HRNetModule,
    query_feats: Tensor,
    gallery_feats: Tensor,
    rerank_config: RerankConfig | None = None,
    *,
    queries_per_pass: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    return_scores: bool = False,
    top_k: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Query x gallery distance matrix (lower = better) after re-ranking under the test protocol
    (``rerank_config.protocol``; see the module docstring).

    Args:
        model: a trained :class:`~hrnet_pyg.model.HRNetModule` (its BNNeck gives the cosine
            shortlist; its IR/PR modules re-score it).
        query_feats: (Q, d) CNN features F of the queries (``HRNet.extract``).
        gallery_feats: (G, d) CNN features F of the gallery.
        rerank_config: the test protocol (:class:`~hrnet_pyg.protocol.RerankConfig`: the
            shortlist length, clipped to G, the similarities, their normalisation and the PR
            weight); ``None``: the model's (``model.rerank_config``, its run's).
        queries_per_pass: query graphs processed together (their per-graph matrix products are
            batched into one; memory grows with it, about 1 MB per query and per-pass tensor at
            d = 2048, top-120). Default on the CPU: as many as keep one (queries, 1 + shortlist, d)
            float32 tensor within 24 MiB (24 queries at d = 2048, top-120): larger passes gain
            nothing on a quiet machine, the GEMM being large already, and lose to page faults;
            on a GPU within 128 MiB.

        return_scores: also return the (Q, G) relational scores, NaN outside each shortlist (the
            paper's protocol only).
        top_k: the shortlist's former name (deprecated: ``RerankConfig(shortlist=...)``).

    Returns:
        (Q, G) float32 tensor on the CPU that :func:`~hrnet_pyg.evaluation.evaluate_rank`
        accepts. Under the other protocols: :func:`~hrnet_pyg.gallery.gallery_rerank`'s distances
        (``output="distances"``), k-reciprocal's, or ``1 - cos`` of BN(F). Under the paper's, it
        encodes an ordering: the shortlist (re-scored) first, the rest by cosine.
        Each query's scores equal :func:`~hrnet_pyg.scoring.score_query_graphs` of its graph (query, shortlist);
        a shortlisted item's distance is ``-1 - (score - lowest score of the shortlist)``, below
        every cosine distance (>= 0) of the items left in cosine order, whatever the scores' range
        (the protocol's normalisation need not be bounded).
    """
    if query_feats.dim() != 2 or gallery_feats.dim() != 2 or query_feats.size(1) != gallery_feats.size(1):
        raise ValueError(
            "query_feats and gallery_feats must be (Q, d) and (G, d) with the same d; got "
            f"{tuple(query_feats.shape)} and {tuple(gallery_feats.shape)}"
        )
    protocol = protocol_of(model, rerank_config, top_k=top_k)
    if queries_per_pass is not None and queries_per_pass < 1:
        raise ValueError(f"queries_per_pass must be >= 1, got {queries_per_pass}")
    if gallery_feats.size(0) == 0:
        raise ValueError("gallery_feats is empty: there is nothing to rank")
    for name, feats in (("query_feats", query_feats), ("gallery_feats", gallery_feats)):
        if not bool(torch.isfinite(feats).all()):
            raise ValueError(f"{name} holds NaN or infinite values")
    dev = resolve_device(device)
    model = model.to(dev).eval()
    if protocol.protocol == "paper":
        return _paper_rerank(model, query_feats, gallery_feats, protocol, queries_per_pass, dev, progress,
                             return_scores)
    if return_scores:
        raise ValueError("return_scores: the relational scores of the paper protocol's shortlist; "
                         f"rerank.protocol={protocol.protocol!r} has none")
    return _other_rerank(model, query_feats, gallery_feats, protocol, dev, progress)


def _other_rerank(model: HRNetModule, query_feats: Tensor, gallery_feats: Tensor, protocol: RerankConfig,
                  dev: torch.device, progress: bool) -> Tensor:
    """The (Q, G) distances of the protocols other than the paper's."""
    if protocol.uses_gallery_graph:
        dist = gallery_rerank(model, query_feats, gallery_feats, **options_of(protocol), output="distances",
                              device=dev, progress=progress)
        assert isinstance(dist, Tensor)
        return dist
    qb = model.retrieval_features(query_feats.float().to(dev))  # BN(F), as the evaluation's rows
    gb = model.retrieval_features(gallery_feats.float().to(dev))
    if protocol.protocol == "kreciprocal":
        return k_reciprocal_rerank_features(qb, gb, progress=progress).cpu()
    return cosine_distance(qb.cpu(), gb.cpu())  # "none"


def _paper_rerank(model: HRNetModule, query_feats: Tensor, gallery_feats: Tensor, protocol: RerankConfig,
                  queries_per_pass: int | None, dev: torch.device, progress: bool,
                  return_scores: bool) -> Tensor | tuple[Tensor, Tensor]:
    """Sec. 4.2's per-query graphs (the module docstring): the (Q, G) distances, and the scores."""
    num_q, num_g = query_feats.size(0), gallery_feats.size(0)
    k = min(protocol.shortlist, num_g)
    if queries_per_pass is None:
        budget = _PASS_TENSOR_BYTES.get(dev.type, _PASS_TENSOR_BYTES_OTHER)
        queries_per_pass = max(1, budget // ((k + 1) * query_feats.size(1) * 4))
    # Per-image terms of queries (rows 0..Q-1) and gallery (rows Q..Q+G-1), computed once.
    images = project_images(model, torch.cat([query_feats.float().to(dev), gallery_feats.float().to(dev)]))
    g_ret = images.retrieval[num_q:]  # (G, d) normalised BN(F)
    dist = torch.empty(num_q, num_g, dtype=torch.float32)
    scores = torch.full((num_q, num_g), float("nan")) if return_scores else None
    starts = range(0, num_q, queries_per_pass)
    for s in progress_of(starts, "relational re-ranking", show=progress, unit="passes"):
        e = min(s + queries_per_pass, num_q)
        cos = images.retrieval[s:e] @ g_ret.T  # (B, G) cosine of BN(F)
        top = cos.topk(k, dim=1).indices  # (B, k) the shortlist
        q_ids = torch.arange(s, e, device=dev).unsqueeze(1)
        score = relational_scores(model, images, torch.cat([q_ids, top + num_q], dim=1), protocol)  # (B, k)
        chunk = cos.neg_().add_(1.0)  # 1 - cos: items outside the shortlist keep cosine order
        chunk.scatter_(1, top, score.amin(dim=1, keepdim=True) - score - 1.0)
        dist[s:e] = chunk.cpu()
        if scores is not None:
            scores[s:e].scatter_(1, top.cpu(), score.float().cpu())
    if scores is not None:
        return dist, scores
    return dist


__all__ = ["relational_rerank"]
