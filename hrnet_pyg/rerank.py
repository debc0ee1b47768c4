"""The paper's test-time relational re-ranking (Sec. 4.2 "Testing").

For each query: the top-k gallery images by cosine similarity of the CNN features (k = 120),
then the query and those k images pass as one graph through both relationship modules, and
the IR similarity plus the PR similarity re-orders them. Gallery images outside the top-k keep
their cosine order after them. The classic k-reciprocal baseline lives in
:mod:`hrnet_pyg.kreciprocal`.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as Fn
from torch import Tensor, nn
from tqdm.auto import tqdm

# Re-ranked items get distances in [-3 - max_score, -3 - min_score] with scores in [-1, 2]
# (cosine + probability), i.e. below 0 <= any cosine distance of the items left in CNN order.
_RERANK_OFFSET = 3.0


@torch.no_grad()
def relational_rerank(
    model: nn.Module,
    query_feats: Tensor,
    gallery_feats: Tensor,
    top_k: int = 120,
    *,
    queries_per_pass: int = 64,
    device: Union[str, torch.device, None] = None,
    progress: bool = True,
) -> Tensor:
    """Query x gallery distance matrix (lower = better) after relational re-ranking.

    Args:
        model: a trained :class:`~hrnet_pyg.model.HRNet` (its BNNeck gives the cosine
            shortlist; its IR/PR modules re-score it).
        query_feats: (Q, d) CNN features F of the queries (``HRNet.extract``).
        gallery_feats: (G, d) CNN features F of the gallery.
        top_k: shortlist length (the paper's 120); clipped to G.
        queries_per_pass: query graphs processed together (disjoint graphs in one pass).

    Returns:
        (Q, G) float32 tensor on the CPU that :func:`~hrnet_pyg.evaluation.evaluate_rank`
        accepts. It encodes an ordering: the shortlist (re-scored) first, the rest by cosine.
    """
    from hrnet_pyg.engine import resolve_device

    if query_feats.dim() != 2 or gallery_feats.dim() != 2 or query_feats.size(1) != gallery_feats.size(1):
        raise ValueError(
            "query_feats and gallery_feats must be (Q, d) and (G, d) with the same d; got "
            f"{tuple(query_feats.shape)} and {tuple(gallery_feats.shape)}"
        )
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    dev = resolve_device(device)
    model = model.to(dev).eval()
    q_all, g_all = query_feats.float(), gallery_feats.float()
    num_q, num_g = q_all.size(0), g_all.size(0)
    k = min(top_k, num_g)
    g_dev = g_all.to(dev)
    g_ret = Fn.normalize(model.retrieval_features(g_dev), dim=1)  # (G, d)
    dist = torch.empty(num_q, num_g, dtype=torch.float32)
    starts = range(0, num_q, queries_per_pass)
    for s in tqdm(starts, desc="relational re-ranking", disable=not progress, leave=False):
        q = q_all[s : s + queries_per_pass].to(dev)  # (B, d)
        cos = Fn.normalize(model.retrieval_features(q), dim=1) @ g_ret.T  # (B, G)
        chunk = 1.0 - cos
        top = cos.topk(k, dim=1).indices  # (B, k)
        graph = torch.cat([q.unsqueeze(1), g_dev[top]], dim=1)  # (B, 1 + k, d)
        score = model.query_graph_scores(graph)  # (B, k)
        chunk.scatter_(1, top, -_RERANK_OFFSET - score)
        dist[s : s + q.size(0)] = chunk.cpu()
    return dist


__all__ = ["relational_rerank"]
