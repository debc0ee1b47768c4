"""Features of one's own images and image search (``hrnet-pyg extract --images``, ``hrnet-pyg search``).

The data flow is the paper's test protocol (Sec. 4.2 "Testing") applied to arbitrary images::

    image folder / CSV / single image -(test transform, backbone)-> F (N, d)   [extract_images]
        -> BN(F), cosine shortlist of ``rerank.shortlist`` = 120 gallery images per query
        -> query + shortlist as one graph through the IR and PR modules       [relational_rerank]
        -> ranked list (rank, path, cosine distance, relational score)        [search_features]

Saved feature files (``.npz``) hold F, the CNN features *before* the BNNeck, because the
relational re-ranking takes F (the graph modules' input); the BN features used for the
cosine shortlist are recomputed from F by the model (``HRNet.retrieval_features``).

Labels are optional: a CSV may carry ``pid``/``camid`` columns, Market-1501 style file names
(``0002_c1s1_000451_03.jpg``) give both, a folder-per-identity layout gives ``pid``; without
labels everything works, only the ranked-list grid then draws neutral borders instead of
green/red match borders.

Listing images is :mod:`hrnet_pyg.image_files`, extracting and saving their features
:mod:`hrnet_pyg.image_features`; this module re-exports both and ranks.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch
from torch import Tensor

from hrnet_pyg.distances import cosine_distance
from hrnet_pyg.image_features import (
    FEATURES_FORMAT,
    ImageFeatures,
    extract_images,
    feature_fingerprint,
    features_of,
)
from hrnet_pyg.image_files import LABEL_MODES, ImageList, is_feature_file, list_images
from hrnet_pyg.protocol import RerankConfig
from hrnet_pyg.ranked_grid import RankedGrid, ranked_list_grid
from hrnet_pyg.rerank import relational_rerank
from hrnet_pyg.runtime import resolve_device, unwrap_model
from hrnet_pyg.scoring import protocol_of
from hrnet_pyg.topk import stable_k_smallest

if TYPE_CHECKING:  # pragma: no cover
    from hrnet_pyg.model import HRNetModule as HRNet

PathLike = Union[str, "os.PathLike[str]"]

# Border colour of ranked-list grid cells whose match is unknown (no identity labels).
UNKNOWN_COLOR = (150, 150, 150)


# ---------------------------------------------------------------------------- search
@dataclass
class SearchResult:
    """Ranked gallery lists, one row per query, best first."""

    query_paths: list[str]
    gallery_paths: list[str]
    indices: Tensor  # (Q, k) long: gallery indices, best first
    cosine_distance: Tensor  # (Q, k): 1 - cosine of BN(F) (the CNN's distance)
    relational_score: Tensor | None  # (Q, k): IR cosine + PR probability (higher = better); NaN outside the shortlist
    reranked: bool  # the relational re-ranking ordered the lists
    q_pids: np.ndarray | None = None
    g_pids: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    protocol: str | None = "paper"  # the re-ranking's rerank.protocol when ``reranked``

    @property
    def ordered_by(self) -> str:
        """What ordered the lists, in words."""
        if not self.reranked:
            return "cosine distance of BN(F)"
        return "relational re-ranking" if self.protocol in (None, "paper") else f"rerank.protocol={self.protocol}"

    @property
    def topk(self) -> int:
        return self.indices.size(1)

    def format(self, max_queries: int | None = None) -> str:
        """The ranked lists as text: one block per query, one line per rank."""
        lines: list[str] = []
        num_q = len(self.query_paths) if max_queries is None else min(max_queries, len(self.query_paths))
        known = self.q_pids is not None and self.g_pids is not None
        order = self.ordered_by
        for q in range(num_q):
            pid = f" [pid {self.q_pids[q]}]" if self.q_pids is not None else ""
            lines.append(f"query {q + 1}/{len(self.query_paths)}: {self.query_paths[q]}{pid} (ordered by {order})")
            head = f"  {'rank':>4}  {'distance':>8}"
            head += f"  {'score':>6}" if self.relational_score is not None else ""
            head += "  match" if known else ""
            lines.append(head + "  path")
            for r in range(self.topk):
                j = int(self.indices[q, r])
                row = f"  {r + 1:>4}  {float(self.cosine_distance[q, r]):8.4f}"
                if self.relational_score is not None:
                    s = float(self.relational_score[q, r])
                    row += f"  {'-':>6}" if math.isnan(s) else f"  {s:6.3f}"  # NaN: outside the shortlist
                if self.q_pids is not None and self.g_pids is not None:  # known
                    row += "  " + ("  yes" if str(self.g_pids[j]) == str(self.q_pids[q]) else "   no")
                lines.append(f"{row}  {self.gallery_paths[j]}")
        if num_q < len(self.query_paths):
            lines.append(f"... {len(self.query_paths) - num_q} more queries")
        return "\n".join(lines + self.notes)

    def to_csv(self, path: PathLike) -> Path:
        """One row per (query, rank): query, rank, gallery, cosine_distance, relational_score[, pids]."""
        import csv

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            header = ["query", "rank", "gallery", "cosine_distance", "relational_score"]
            known = self.q_pids is not None and self.g_pids is not None
            writer.writerow(header + (["query_pid", "gallery_pid"] if known else []))
            for q, qpath in enumerate(self.query_paths):
                for r in range(self.topk):
                    j = int(self.indices[q, r])
                    score = "" if self.relational_score is None else float(self.relational_score[q, r])
                    row = [qpath, r + 1, self.gallery_paths[j], float(self.cosine_distance[q, r]), score]
                    if self.q_pids is not None and self.g_pids is not None:  # known
                        row += [self.q_pids[q], self.g_pids[j]]
                    writer.writerow(row)
        return path


@torch.no_grad()
def _retrieval(model: HRNet, feats: Tensor, dev: torch.device, chunk: int = 8192) -> Tensor:
    """BN(F) on the CPU, ``chunk`` rows at a time (large galleries never sit whole on the GPU)."""
    blocks = (feats[s : s + chunk].to(dev) for s in range(0, len(feats), chunk))
    return torch.cat([model.retrieval_features(b).float().cpu() for b in blocks])


def search_features(
    model: HRNet,
    query: ImageFeatures,
    gallery: ImageFeatures,
    *,
    topk: int = 10,
    rerank: bool = True,
    shortlist: int | None = None,
    rerank_config: RerankConfig | None = None,
    exclude_self: bool = True,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> SearchResult:
    """Rank ``gallery`` for every query.

    Args:
        model: the trained :class:`~hrnet_pyg.model.HRNetModule` that extracted the features.
        query, gallery: CNN features F (:func:`extract_images`, :meth:`ImageFeatures.load`).
        topk: gallery images listed per query. (default: ``10``)
        rerank: order by the paper's relational re-ranking (Sec. 4.2: cosine shortlist of
            ``shortlist`` images re-scored by the IR and PR modules); ``False``: plain cosine
            distance of BN(F). A model without IR and PR modules always ranks by cosine.
            (default: ``True``)
        shortlist: re-ranking shortlist length (default: the protocol's, 120).
        rerank_config: the re-ranking's test protocol (:class:`~hrnet_pyg.protocol.RerankConfig`);
            ``None``: the model's (``model.rerank_config``).
        exclude_self: drop the gallery image whose file is the query's own file (a query
            searched in the folder it comes from). (default: ``True``)
    """
    inner = unwrap_model(model)
    d = inner.feat_dim
    for name, feats in (("query", query), ("gallery", gallery)):
        if feats.features.size(1) != d:
            raise ValueError(
                f"{name} features have dimension {feats.features.size(1)}, but this model's features "
                f"have dimension {d}; extract them with the same checkpoint"
            )
        if len(feats) == 0:
            raise ValueError(f"the {name} set is empty")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    protocol = protocol_of(inner, rerank_config, shortlist=shortlist)
    notes: list[str] = []
    fp = feature_fingerprint(inner)
    for name, feats in (("query", query), ("gallery", gallery)):
        if feats.model_fingerprint is not None and feats.model_fingerprint != fp:
            msg = (
                f"the {name} features were extracted by another model (fingerprint "
                f"{feats.model_fingerprint}, this checkpoint: {fp}); distances may be meaningless"
            )
            warnings.warn(msg, stacklevel=2)
            notes.append(f"warning: {msg}")
    dev = resolve_device(device)
    inner.to(dev).eval()
    qf, gf = query.features.float(), gallery.features.float()
    cos = cosine_distance(_retrieval(inner, qf, dev), _retrieval(inner, gf, dev))  # (Q, G)
    paper = protocol.protocol == "paper"
    use_rerank = rerank and protocol.protocol != "none" and (not paper or inner.ir is not None or inner.pr is not None)
    if rerank and paper and not use_rerank:
        notes.append("note: this model has no IR/PR module; ranked by cosine distance of BN(F)")
    score = None
    if use_rerank and paper:
        dist, score = relational_rerank(
            inner, qf, gf, protocol, device=dev, progress=progress, return_scores=True
        )  # score: NaN outside the shortlist
    elif use_rerank:  # the other protocols give distances alone (no relational score per item)
        ranked = relational_rerank(inner, qf, gf, protocol, device=dev, progress=progress)
        assert isinstance(ranked, Tensor)
        dist = ranked
    else:
        dist = cos.clone()
    num_excluded = 0
    if exclude_self:
        g_index = {os.path.normcase(os.path.realpath(p)): j for j, p in enumerate(gallery.paths)}
        for i, p in enumerate(query.paths):
            j = g_index.get(os.path.normcase(os.path.realpath(p)))
            if j is not None:
                dist[i, j] = float("inf")
                num_excluded = 1
    k = min(topk, len(gallery) - num_excluded)
    if k < 1:
        raise ValueError("the gallery holds only the query image itself; nothing to rank")
    order = stable_k_smallest(dist, k)  # (Q, k), equal distances in gallery order
    return SearchResult(
        query_paths=list(query.paths),
        gallery_paths=list(gallery.paths),
        indices=order,
        cosine_distance=cos.gather(1, order),
        relational_score=score.gather(1, order) if score is not None else None,
        reranked=use_rerank,
        protocol=protocol.protocol if use_rerank else None,
        q_pids=query.pids,
        g_pids=gallery.pids,
        notes=notes,
    )


def search(
    model: HRNet,
    query: PathLike | ImageFeatures,
    gallery: PathLike | ImageFeatures,
    *,
    topk: int = 10,
    rerank: bool = True,
    shortlist: int | None = None,
    rerank_config: RerankConfig | None = None,
    exclude_self: bool = True,
    labels: str = "auto",
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> SearchResult:
    """Search ``gallery`` (images, a CSV or an ``.npz`` feature file) for each ``query``.

    ``query`` and ``gallery`` take what :func:`features_of` takes; images are extracted with
    :func:`extract_images`. See :func:`search_features` for the ranking options.
    """
    kw: dict[str, Any] = dict(
        labels=labels, batch_size=batch_size, num_workers=num_workers, device=device, progress=progress
    )
    q = features_of(model, query, **kw)
    g = features_of(model, gallery, **kw)
    return search_features(
        model,
        q,
        g,
        topk=topk,
        rerank=rerank,
        shortlist=shortlist,
        rerank_config=rerank_config,
        exclude_self=exclude_self,
        device=device,
        progress=progress,
    )


# ---------------------------------------------------------------------------- grid
def write_grid(
    result: SearchResult,
    path: PathLike,
    *,
    max_queries: int = 8,
    size: tuple[int, int] = (128, 64),
    border: int = 4,
) -> RankedGrid:
    """The ranked lists as an image grid (:func:`hrnet_pyg.ranked_grid.ranked_list_grid`).

    With identity labels on both sides, borders are green (same identity) or red; without,
    they are grey (:data:`UNKNOWN_COLOR`): a match cannot be told. Returns what was drawn
    (``.path``, and the cell ``boxes`` of each row).
    """
    from PIL import Image, ImageDraw

    if max_queries < 1:
        raise ValueError(f"max_queries must be >= 1, got {max_queries}")
    known = result.q_pids is not None and result.g_pids is not None
    q_pids: list[str] | list[int]
    g_pids: list[str] | list[int]
    # Compared as text: a CSV may give "7" where file names give 7.
    if result.q_pids is not None and result.g_pids is not None:
        q_pids = [str(p) for p in result.q_pids]
        g_pids = [str(p) for p in result.g_pids]
    else:
        q_pids, g_pids = [0] * len(result.query_paths), [1] * len(result.gallery_paths)
    rows = list(range(min(max_queries, len(result.query_paths))))
    order = "the relational re-ranking (Sec. 4.2)" if result.reranked else "cosine distance of BN(F)"
    legend = "green border: same identity, red: another" if known else "grey borders: identities unknown"
    grid = ranked_list_grid(
        result.query_paths,
        result.gallery_paths,
        result.indices.numpy(),
        q_pids,
        g_pids,
        path,
        topk=result.topk,
        queries=rows,
        size=size,
        border=border,
        caption=f"Ranked by {order}. Rank 1 = best; {legend}.",
    )
    if not known:  # repaint the (meaningless) red borders grey
        with Image.open(grid.path) as im:
            canvas = im.convert("RGB")
        draw = ImageDraw.Draw(canvas)
        for row in grid.boxes:
            for x0, y0, x1, y1 in row[1:]:
                draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=UNKNOWN_COLOR, width=border)
        canvas.save(grid.path)
    return grid


__all__ = [
    "FEATURES_FORMAT",
    "ImageFeatures",
    "ImageList",
    "LABEL_MODES",
    "SearchResult",
    "UNKNOWN_COLOR",
    "extract_images",
    "feature_fingerprint",
    "features_of",
    "is_feature_file",
    "list_images",
    "search",
    "search_features",
    "write_grid",
]
