"""The package's top-k routines: every kNN graph, neighbour list and shortlist is built from these.

* :func:`k_smallest_mask` -- the ``k`` smallest entries of each row as a mask, ties towards the
  lower column index (the kNN graphs of :mod:`hrnet_pyg.graphs`, Eq. 1).
* :func:`stable_k_smallest` -- the ``k`` smallest entries of each row as sorted column indices,
  ties towards the lower index (k-reciprocal neighbour lists, ranked lists of ``search``).
* :func:`merge_topk` -- a running top-k over column blocks (blocked passes that never hold a
  whole distance or similarity matrix: k-reciprocal re-ranking, the gallery index shortlist).
* :func:`k_smallest_sorted`, :func:`merge_k_smallest` -- the same pair with the tie rule of
  :func:`k_smallest_mask` (lower column first) at every step, so that a blocked pass gives exactly
  the neighbours of the dense one (the kNN tables of :mod:`hrnet_pyg.neighbours`).

A leaf module: torch only.
"""
from __future__ import annotations

import torch
from torch import Tensor


def k_smallest_mask(dist: Tensor, kk: Tensor, kmax: int | None = None) -> Tensor:
    """Boolean mask of the ``kk[r]`` smallest entries of each row ``dist[r]`` (any leading dims).

    Ties are broken by column index (lower index first), so the result is deterministic, unlike
    :func:`torch.topk` whose choice among equal values is unspecified: everything strictly below the
    ``kk``-th smallest value is taken, then the lowest-index entries equal to it fill up the row.
    ``kmax`` (``kk.max()``, when the caller knows it) spares a device-to-host sync.
    """
    if kmax is None:
        kmax = int(kk.max()) if kk.numel() > 0 else 0
    if kmax == 0:
        return torch.zeros_like(dist, dtype=torch.bool)
    vals = torch.topk(dist, kmax, dim=-1, largest=False, sorted=True).values
    thr = vals.gather(-1, (kk - 1).clamp(min=0).unsqueeze(-1))  # (..., 1): kk-th smallest
    below = dist < thr
    equal = dist == thr
    need = (kk - below.sum(-1)).unsqueeze(-1)  # >= 1 wherever kk >= 1
    sel = below | (equal & (equal.cumsum(-1) <= need))
    return sel & (kk > 0).unsqueeze(-1)


def stable_k_smallest(dist: Tensor, k: int, chunk_elements: int = 1 << 22) -> Tensor:
    """Column indices of the ``k`` smallest entries of each row of ``dist`` (R, C), smallest first.

    Equal values keep column order (a stable sort), so the result is deterministic. Rows are
    sorted ``chunk_elements // C`` at a time, which bounds the sort's temporaries. Returns (R, k).
    """
    out = torch.empty(dist.shape[0], k, dtype=torch.long, device=dist.device)
    step = max(1, chunk_elements // max(1, dist.shape[1]))
    for s in range(0, dist.shape[0], step):
        out[s : s + step] = torch.sort(dist[s : s + step], dim=1, stable=True).indices[:, :k]
    return out


def merge_topk(
    best_v: Tensor, best_i: Tensor, v: Tensor, i: Tensor, k: int, largest: bool = False
) -> tuple[Tensor, Tensor]:
    """The running top-``k`` of each row after one more block of candidates.

    ``(best_v, best_i)`` (R, k0) hold the best values and their indices so far, ``(v, i)`` (R, b)
    those of the new block (indices already offset to the whole set). Returns the best
    ``min(k, k0 + b)`` of both, sorted best first (smallest, or largest with ``largest=True``);
    the order among equal values is :func:`torch.topk`'s.
    """
    cv = torch.cat([best_v, v], 1)
    ci = torch.cat([best_i, i], 1)
    nv, pos = torch.topk(cv, min(k, cv.size(1)), dim=1, largest=largest, sorted=True)
    return nv, ci.gather(1, pos)


def _lexsort(v: Tensor, i: Tensor) -> tuple[Tensor, Tensor]:
    """Each row of ``(v, i)`` (R, c) sorted by value, equal values by index (two stable sorts)."""
    order = i.argsort(dim=1, stable=True)
    v, i = v.gather(1, order), i.gather(1, order)
    order = v.argsort(dim=1, stable=True)
    return v.gather(1, order), i.gather(1, order)


def _fix_ties(v: Tensor, i: Tensor, cand_v: Tensor, cand_i: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``(v, i)`` (R, k + 1): the ``k + 1`` smallest of the candidates ``(cand_v, cand_i)`` by
    :func:`torch.topk`, whose order among equal values is unspecified. Rows where two of them are
    equal (finite) are redone by (value, index) from the candidates; returns the first ``k``."""
    tied = ((v[:, 1:] == v[:, :-1]) & torch.isfinite(v[:, 1:])).any(1)
    v, i = v[:, :k], i[:, :k]
    if bool(tied.any()):  # rare with real-valued features: a sort of those rows only
        rows = tied.nonzero().squeeze(1)
        tv, ti = _lexsort(cand_v[rows], cand_i[rows])
        v, i = v.clone(), i.clone()
        v[rows], i[rows] = tv[:, :k], ti[:, :k]
    return v, i


def k_smallest_sorted(dist: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` smallest entries of each row of ``dist`` (R, C) and their columns, both (R, k),
    sorted by value, equal values by column: exactly the entries of :func:`k_smallest_mask`
    (ties towards the lower column index), in a deterministic order.

    :func:`torch.topk` picks ``k + 1`` entries; where the ``k``-th and ``(k+1)``-th values differ the
    ``k`` smallest are settled, and only rows with equal values among them are redone: by the mask
    where the tie sits at the boundary (an equal entry may have been left out), by a sort of the
    ``k + 1`` otherwise. With real-valued features such rows are rare.
    """
    kk = min(k + 1, dist.size(1))
    vals, idx = torch.topk(dist, kk, dim=1, largest=False, sorted=True)
    if kk <= k:  # every column is taken
        return _lexsort(vals, idx)
    edge = (vals[:, k] == vals[:, k - 1]) & torch.isfinite(vals[:, k])
    out_v, out_i = _fix_ties(vals, idx, vals, idx, k)
    if bool(edge.any()):
        rows = edge.nonzero().squeeze(1)
        keep = torch.full((rows.numel(),), k, dtype=torch.long, device=dist.device)
        fixed = k_smallest_mask(dist[rows], keep, k).nonzero()[:, 1].view(-1, k)
        out_v, out_i = out_v.clone(), out_i.clone()
        out_v[rows], out_i[rows] = _lexsort(dist[rows].gather(1, fixed), fixed)
    return out_v, out_i


def merge_k_smallest(best_v: Tensor, best_i: Tensor, v: Tensor, i: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """:func:`merge_topk` (smallest first) with the tie rule of :func:`k_smallest_mask`: the best
    ``k`` of both candidate sets by (value, index), so a running merge over blocks of columns keeps
    the same entries as one pass over the whole row. The two sets must not share an index."""
    cv, ci = torch.cat([best_v, v], 1), torch.cat([best_i, i], 1)
    kk = min(k + 1, cv.size(1))
    nv, pos = torch.topk(cv, kk, dim=1, largest=False, sorted=True)
    ni = ci.gather(1, pos)
    if kk <= k:
        return _lexsort(nv, ni)
    return _fix_ties(nv, ni, cv, ci, k)
