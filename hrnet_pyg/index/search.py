"""Searching a gallery index (``hrnet-pyg search --index``): the paper's test protocol over it.

A search (Sec. 4.2 "Testing", as :func:`hrnet_pyg.search.search_features`): the query's BN(F)
against the gallery's, a shortlist of ``rerank.shortlist`` = 120 by cosine from the index
(:meth:`~hrnet_pyg.index.GalleryIndex.shortlist`), then the query and its shortlist pass as one
graph through the IR and PR modules (:func:`~hrnet_pyg.scoring.score_query_graphs`), reading
only those rows of F.

Under ``rerank.protocol="gallery"``: the gallery protocol's inductive form over the index's
relational part (:mod:`hrnet_pyg.index.relational`), each query attached to its k nearest indexed
images and the index ranked by the cosine of BN(V').
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Union

import torch
import torch.nn.functional as Fn
from torch import Tensor

from hrnet_pyg.gallery import retrieval_of
from hrnet_pyg.image_features import ImageFeatures, features_of
from hrnet_pyg.index.layout import GalleryIndexError
from hrnet_pyg.index.shortlist import exact_shortlist
from hrnet_pyg.index.store import GalleryIndex
from hrnet_pyg.protocol import RerankConfig
from hrnet_pyg.runtime import progress as progress_of
from hrnet_pyg.runtime import resolve_device, unwrap_model
from hrnet_pyg.scoring import protocol_of
from hrnet_pyg.search import SearchResult, _retrieval

if TYPE_CHECKING:  # pragma: no cover
    from hrnet_pyg.model import HRNetModule as HRNet

PathLike = Union[str, "os.PathLike[str]"]


@torch.no_grad()
def search_index(
    model: HRNet,
    query: PathLike | ImageFeatures,
    index: PathLike | GalleryIndex,
    *,
    topk: int = 10,
    rerank: bool = True,
    shortlist: int | None = None,
    rerank_config: RerankConfig | None = None,
    exclude_self: bool = True,
    exact: bool = False,
    nprobe: int | None = None,
    ef_search: int | None = None,
    queries_per_pass: int = 16,
    labels: str = "auto",
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> SearchResult:
    """Rank the images of a :class:`GalleryIndex` for each query (images, a CSV or an ``.npz``).

    The ranking is that of :func:`hrnet_pyg.search.search_features` on the same gallery: the
    cosine shortlist of ``shortlist`` images (default: the test protocol's, 120) re-scored by
    :func:`~hrnet_pyg.scoring.score_query_graphs` under ``rerank_config`` (``None``: the model's),
    the rest of the ``topk`` listed in cosine order; only the shortlist's rows of F are read.
    ``exact=True`` takes the exact blocked product even when the index has a faiss part;
    ``nprobe`` overrides an IVF index's, ``ef_search`` an HNSW index's.

    Under ``rerank.protocol="gallery"`` (``rerank_config`` or the model's) the ranking is the
    gallery protocol's inductive form: each query attached to its k nearest indexed images through
    the IR layer's bipartite input (:meth:`GalleryIndex.attach`), the index ranked by the cosine of
    BN(V') against the stored relational part, which must have been computed with the protocol's
    ``gallery_*`` options (one line otherwise); ``relational_score`` then holds that cosine.
    """
    idx_obj = index if isinstance(index, GalleryIndex) else GalleryIndex(index)
    inner = unwrap_model(model)
    idx_obj.check_model(inner)
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    protocol = protocol_of(inner, rerank_config, shortlist=shortlist)
    rerank = rerank and protocol.protocol != "none"  # "none": the cosine of BN(F), as rerank=False
    gallery_graph = rerank and protocol.protocol == "gallery"
    if rerank and protocol.protocol != "paper" and not gallery_graph:
        raise ValueError(f"rerank.protocol={protocol.protocol!r}: a gallery index re-ranks with the paper's protocol "
                         "or the gallery protocol's inductive form; search it with --protocol paper, gallery or none, "
                         "or search the gallery's features (--gallery FEATS.npz) under this protocol")
    if gallery_graph and protocol.gallery_pr_shortlist:
        raise ValueError(f"rerank.gallery_pr_shortlist={protocol.gallery_pr_shortlist}: a gallery index ranks the "
                         "gallery protocol by BN(V') alone; set gallery_pr_shortlist=0, or search the gallery's "
                         "features (--gallery FEATS.npz)")
    if len(idx_obj) == 0:
        raise ValueError(f"index {idx_obj.path} holds no image")
    if gallery_graph:
        idx_obj.check_relational(inner, protocol)
    kw: dict[str, Any] = dict(labels=labels, batch_size=batch_size, num_workers=num_workers, device=device,
                              progress=progress)
    q = features_of(inner, query, **kw)
    if q.model_fingerprint is not None and q.model_fingerprint != idx_obj.fingerprint:
        raise GalleryIndexError(
            f"the query features were extracted by another model (fingerprint {q.model_fingerprint}, "
            f"the index's: {idx_obj.fingerprint}); extract them with the index's checkpoint"
        )
    dev = resolve_device(device)
    inner.to(dev).eval()
    if gallery_graph:
        return _search_relational(inner, idx_obj, q, protocol, topk, exclude_self, dev)
    notes: list[str] = []
    use_rerank = rerank and (inner.ir is not None or inner.pr is not None)
    if rerank and not use_rerank:
        notes.append("note: this model has no IR/PR module; ranked by cosine distance of BN(F)")
    n_short = min(protocol.shortlist, len(idx_obj)) if use_rerank else 0
    want = max(topk, n_short)
    q_ret = Fn.normalize(_retrieval(inner, q.features.float(), dev), dim=1)  # (Q, d)
    sims, rows, how = idx_obj.shortlist(q_ret, want + (1 if exclude_self else 0), exact=exact, nprobe=nprobe,
                                        ef_search=ef_search)
    notes += idx_obj.notes
    paths = idx_obj.paths  # reads the metadata: a damaged file fails before any scoring
    if exclude_self:
        sims, rows = _without_self(sims, rows, q.paths, paths, want)
    if rows.size(1) < 1:
        raise ValueError("the index holds only the query image itself; nothing to rank")
    if bool((rows < 0).any()):  # faiss pads with -1 when it finds fewer neighbours
        raise GalleryIndexError(
            f"the faiss {idx_obj.faiss_type} index returned fewer than {rows.size(1)} neighbours for a "
            "query; raise --nprobe or search with --exact"
        )
    order, score = _reranked_order(inner, idx_obj, q, rows, n_short if use_rerank else 0, protocol,
                                   queries_per_pass, dev, progress)
    notes.append(f"note: shortlist from {how} over {len(idx_obj)} indexed images ({idx_obj.path})")
    return _result(q, idx_obj, sims, rows, order[:, : min(topk, rows.size(1))], score if use_rerank else None,
                   notes)


def _search_relational(
    model: HRNet, index: GalleryIndex, q: ImageFeatures, protocol: RerankConfig, topk: int, exclude_self: bool,
    dev: torch.device,
) -> SearchResult:
    """The gallery protocol's inductive form: each query attached to its k nearest indexed images
    (:meth:`GalleryIndex.attach`), the index ranked by the cosine of BN(V') against the stored
    relational features (exact blocked product). The query's own file, when indexed, stays among
    the graph's nodes (as in ``search --gallery``) and is dropped from the ranking only."""
    part = index.relational
    assert part is not None
    v = index.attach(model, q.features.float(), device=dev)
    q_rel = retrieval_of(model, v).float().cpu()  # (Q, d') BN(V') / ||BN(V')||
    want = min(topk, len(index))
    sims, rows = exact_shortlist(q_rel, index.blocks("relational"), want + (1 if exclude_self else 0))
    paths = index.paths
    if exclude_self:
        sims, rows = _without_self(sims, rows, q.paths, paths, want)
    if rows.size(1) < 1:
        raise ValueError("the index holds only the query image itself; nothing to rank")
    q_ret = Fn.normalize(_retrieval(model, q.features.float(), dev), dim=1).cpu()  # BN(F): the listed cosine
    cos = torch.einsum("qd,qkd->qk", q_ret, torch.from_numpy(index.rows(rows.numpy(), "retrieval")))
    notes = [f"note: gallery protocol, inductive form: each query attached to its k={part['k']} nearest of "
             f"{len(index)} indexed images (normalize={part['normalize']!r}), ranked by the cosine of BN(V') "
             f"({index.path})"]
    if protocol.gallery_neighbours == "all":
        notes.append("note: an index attaches queries to the gallery alone (gallery_neighbours='gallery'); "
                     "gallery_neighbours='all' joins the queries' own graph: search the gallery's features")
    order = torch.arange(rows.size(1)).expand_as(rows)
    result = _result(q, index, cos, rows, order, sims, notes)
    result.protocol = "gallery"
    return result


def _without_self(
    sims: Tensor, rows: Tensor, query_paths: list[str], paths: list[str], want: int
) -> tuple[Tensor, Tensor]:
    """The shortlists without the query's own file, cut to one length (at most ``want``)."""
    keep_s, keep_r = [], []
    k = min(want, len(paths) - 1) if len(paths) > 1 else 0
    for i, qpath in enumerate(query_paths):
        me = os.path.normcase(os.path.realpath(qpath))
        valid = [j for j, r in enumerate(rows[i].tolist())
                 if r >= 0 and os.path.normcase(os.path.realpath(paths[r])) != me][:k]
        keep_s.append(sims[i, valid])
        keep_r.append(rows[i, valid])
    k = min(len(r) for r in keep_r)
    return torch.stack([s[:k] for s in keep_s]), torch.stack([r[:k] for r in keep_r])


def _reranked_order(
    model: HRNet, index: GalleryIndex, q: ImageFeatures, rows: Tensor, n_short: int, protocol: RerankConfig,
    queries_per_pass: int, dev: torch.device, progress: bool,
) -> tuple[Tensor, Tensor]:
    """Positions in the cosine shortlist, best first, with the first ``n_short`` re-ranked, and
    the relational scores (NaN outside the re-ranked part). ``n_short = 0``: the cosine order."""
    order = torch.arange(rows.size(1)).expand_as(rows).clone()  # positions in the cosine shortlist
    score = torch.full(rows.shape, float("nan"))
    m = min(n_short, rows.size(1))
    if m < 1:
        return order, score
    from hrnet_pyg.scoring import score_query_graphs  # torch_geometric: only when re-ranking

    passes = range(0, len(q), queries_per_pass)
    for s in progress_of(passes, "relational re-ranking", show=progress, unit="passes"):
        e = min(s + queries_per_pass, len(q))
        g = torch.from_numpy(index.rows(rows[s:e, :m].numpy()))  # (B, m, d): the shortlist only
        graph = torch.cat([q.features[s:e].float().unsqueeze(1), g], dim=1).to(dev)  # (B, 1 + m, d)
        sc = score_query_graphs(model, graph, protocol).float().cpu()  # (B, m)
        score[s:e, :m] = sc
        order[s:e, :m] = torch.sort(sc, dim=1, descending=True, stable=True).indices
    return order, score


def _result(
    q: ImageFeatures, index: GalleryIndex, sims: Tensor, rows: Tensor, order: Tensor, score: Tensor | None,
    notes: list[str],
) -> SearchResult:
    """The ranked lists of ``order`` (Q, k) positions in the shortlists ``rows``."""
    picked = rows.gather(1, order)  # (Q, k) gallery rows, best first
    uniq, inverse = torch.unique(picked, return_inverse=True)
    g_rows = uniq.tolist()
    g_pids = index.pids
    return SearchResult(
        query_paths=list(q.paths),
        gallery_paths=[index.paths[r] for r in g_rows],
        indices=inverse.view_as(picked),
        cosine_distance=1.0 - sims.gather(1, order),
        relational_score=score.gather(1, order) if score is not None else None,
        reranked=score is not None,
        q_pids=q.pids,
        g_pids=g_pids[g_rows] if g_pids is not None else None,
        notes=notes,
    )


__all__ = ["search_index"]
