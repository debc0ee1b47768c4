"""Re-ID evaluation: chunked distance matrices and the field's ranking metrics (CMC, mAP, mINP).

:func:`evaluate_rank` implements the camera-aware protocol of torchreid's ``eval_market1501``
and fast-reid's ``evaluate_rank`` (which adds mINP): for each query, gallery images with the
query's identity *and* camera are removed ("junk"), queries left without any true match are
skipped, and CMC / AP / INP are computed over the remaining ranking.  See ``docs/evaluation.md``
for the conventions (AP variants, ties, CUHK03 single-shot, missing camera ids).

Why it is fast: every metric depends only on the positions of the true matches in the kept
ranking.  The position of a true match ``g`` of query ``q`` is

    #{valid g' : d(q, g') < d(q, g)} + #{valid g' : d(q, g') == d(q, g) and g' < g}

so instead of an argsort per query (and gathers of pids and camera ids in that order) we sort
the *values* of each row once (numpy's SIMD sort), binary-search the few true-match distances in
it, and subtract the junk images that precede each match.  Everything is vectorised over all
queries of a chunk; there is no Python loop over queries or gallery items.
"""
from __future__ import annotations

import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence]

AP_MODES = ("torchreid", "market_trapezoid")
PROTOCOLS = ("market", "cuhk03_single_shot")

# Rows of the distance matrix sorted at once; 256 x 15,913 float32 is 16 MB.
_EVAL_CHUNK_ELEMENTS = 1 << 22


# ----------------------------------------------------------------------------------------------
# Distances
# ----------------------------------------------------------------------------------------------
def _as_features(x: Union[np.ndarray, torch.Tensor], name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (num_items, dim), got shape {tuple(x.shape)}")
    x = x.detach()
    if not x.is_floating_point():
        x = x.to(torch.float32)
    elif x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if x.numel() and not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return x


def _check_pair(a: torch.Tensor, b: torch.Tensor, chunk_size: int) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"feature dims differ: a has {a.shape[1]} columns, b has {b.shape[1]}"
        )
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def _pairwise_chunks(
    a: torch.Tensor, b: torch.Tensor, metric: str, chunk_size: int, squared: bool = False
) -> Iterator[Tuple[int, int, torch.Tensor]]:
    """Yield ``(start, stop, block)`` with ``block`` = distances of ``a[start:stop]`` to ``b``.

    Blocks are in the promoted dtype of ``a`` and ``b`` (float32 or float64); at most one block
    lives at a time.
    """
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    dtype = torch.promote_types(a.dtype, b.dtype)
    b = b.to(device=a.device, dtype=dtype)
    if metric == "cosine":
        bn_t = F.normalize(b, dim=1).t()
        for s in range(0, a.shape[0], chunk_size):
            an = F.normalize(a[s : s + chunk_size].to(dtype), dim=1)
            # 1 - cos computed in place on the matmul output: one block of extra memory.
            yield s, s + an.shape[0], torch.mm(an, bn_t).neg_().add_(1.0)
    else:
        b_t = b.t()
        bb = b.pow(2).sum(1).unsqueeze(0)  # (1, G)
        for s in range(0, a.shape[0], chunk_size):
            ac = a[s : s + chunk_size].to(dtype)
            # |a|^2 + |b|^2 - 2 a.b ; clamp: rounding can make it slightly negative.
            blk = torch.addmm(bb, ac, b_t, beta=1.0, alpha=-2.0)
            blk.add_(ac.pow(2).sum(1, keepdim=True)).clamp_(min=0.0)
            if not squared:
                blk.sqrt_()
            yield s, s + ac.shape[0], blk


def _full_matrix(
    a: Union[np.ndarray, torch.Tensor],
    b: Union[np.ndarray, torch.Tensor],
    metric: str,
    chunk_size: int,
    squared: bool = False,
) -> torch.Tensor:
    a = _as_features(a, "a")
    b = _as_features(b, "b")
    _check_pair(a, b, chunk_size)
    out = torch.empty(a.shape[0], b.shape[0], dtype=torch.float32, device=a.device)
    for s, e, blk in _pairwise_chunks(a, b, metric, int(chunk_size), squared):
        out[s:e] = blk  # float64 blocks are rounded to float32 here
    return out


def cosine_distance(
    a: Union[np.ndarray, torch.Tensor],
    b: Union[np.ndarray, torch.Tensor],
    chunk_size: int = 4096,
) -> torch.Tensor:
    """Cosine distance ``1 - <a_i, b_j> / (|a_i| |b_j|)`` as a ``(len(a), len(b))`` float32 tensor.

    Computed ``chunk_size`` rows of ``a`` at a time, so the memory beyond the output is one
    ``(chunk_size, len(b))`` block.  Rows of norm zero have distance 1 to everything.

    Args:
        a: ``(Q, d)`` features (tensor or numpy array).
        b: ``(G, d)`` features.
        chunk_size: rows of ``a`` per block (default: 4096).
    """
    return _full_matrix(a, b, "cosine", chunk_size)


def euclidean_distance(
    a: Union[np.ndarray, torch.Tensor],
    b: Union[np.ndarray, torch.Tensor],
    chunk_size: int = 4096,
    squared: bool = False,
) -> torch.Tensor:
    """Euclidean distance ``|a_i - b_j|`` (or its square) as a ``(len(a), len(b))`` float32 tensor.

    Uses ``|a|^2 + |b|^2 - 2 a.b`` per block of ``chunk_size`` rows of ``a`` (as torch.cdist does
    for large inputs), clamped at 0; memory beyond the output is one block.

    Args:
        a: ``(Q, d)`` features (tensor or numpy array).
        b: ``(G, d)`` features.
        chunk_size: rows of ``a`` per block (default: 4096).
        squared: return squared distances (default: False).
    """
    return _full_matrix(a, b, "euclidean", chunk_size, squared)


def topk_neighbours(
    a: Union[np.ndarray, torch.Tensor],
    b: Union[np.ndarray, torch.Tensor],
    k: int,
    metric: str = "cosine",
    chunk_size: int = 4096,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest rows of ``b`` for every row of ``a``, without the full distance matrix.

    Returns ``(distances, indices)``, both ``(len(a), k)``, sorted by increasing distance
    (float32 distances, int64 indices into ``b``).  Exactly equal distances come in an
    unspecified order (``torch.topk``).

    Args:
        a: ``(Q, d)`` query features.
        b: ``(G, d)`` gallery features.
        k: neighbours per row, ``1 <= k <= len(b)``.
        metric: ``"cosine"`` (default) or ``"euclidean"``.
        chunk_size: rows of ``a`` per block (default: 4096).
    """
    a = _as_features(a, "a")
    b = _as_features(b, "b")
    _check_pair(a, b, chunk_size)
    k = int(k)
    if not 1 <= k <= b.shape[0]:
        raise ValueError(f"k must lie in [1, len(b)={b.shape[0]}], got {k}")
    vals = torch.empty(a.shape[0], k, dtype=torch.float32, device=a.device)
    idx = torch.empty(a.shape[0], k, dtype=torch.long, device=a.device)
    for s, e, blk in _pairwise_chunks(a, b, metric, int(chunk_size)):
        v, i = torch.topk(blk, k, dim=1, largest=False, sorted=True)
        vals[s:e] = v
        idx[s:e] = i
    return vals, idx


# ----------------------------------------------------------------------------------------------
# Ranking metrics
# ----------------------------------------------------------------------------------------------
@dataclass
class RankResult:
    """Output of :func:`evaluate_rank`; also readable like a dict (``r["mAP"]``, ``r.keys()``).

    Attributes:
        cmc: ``(max_rank,)`` CMC curve, ``cmc[k]`` = fraction of valid queries whose first true
            match is within the top ``k + 1``.
        mAP: mean average precision over valid queries (in [0, 1]).
        mINP: mean inverse negative penalty over valid queries (in [0, 1]).
        num_valid_queries: queries with at least one valid true match.
        all_AP: ``(num_query,)`` AP per query, NaN for skipped queries.
        all_INP: ``(num_query,)`` INP per query, NaN for skipped queries.
    """

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid_queries: int
    all_AP: np.ndarray
    all_INP: np.ndarray

    def keys(self) -> Tuple[str, ...]:
        return tuple(f.name for f in fields(self))

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(f"{key!r}; valid keys: {', '.join(self.keys())}")
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def items(self):
        return [(k, getattr(self, k)) for k in self.keys()]

    def rank(self, k: int) -> float:
        """Rank-``k`` accuracy (``k`` is 1-based: ``rank(1)`` is rank-1)."""
        if not 1 <= k <= len(self.cmc):
            raise ValueError(f"k must lie in [1, {len(self.cmc)}], got {k}")
        return float(self.cmc[k - 1])

    def __str__(self) -> str:
        ranks = " ".join(
            f"R{k} {100 * self.cmc[k - 1]:.2f}" for k in (1, 5, 10) if k <= len(self.cmc)
        )
        return (
            f"mAP {100 * self.mAP:.2f} | mINP {100 * self.mINP:.2f} | {ranks} "
            f"({self.num_valid_queries} valid queries)"
        )


def _to_label_array(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def _encode_pair(q: np.ndarray, g: np.ndarray, qname: str, gname: str) -> Tuple[np.ndarray, np.ndarray]:
    """Integer codes for query / gallery labels (any hashable dtype), equal labels equal codes."""
    if q.dtype.kind in "iub" and g.dtype.kind in "iub":
        return q.astype(np.int64), g.astype(np.int64)
    try:
        _, inv = np.unique(np.concatenate([q, g]), return_inverse=True)
    except TypeError as exc:  # e.g. mixed str / int objects
        raise TypeError(f"{qname} and {gname} must hold comparable labels: {exc}") from None
    inv = inv.reshape(-1).astype(np.int64)
    return inv[: len(q)], inv[len(q) :]


def _as_distmat(distmat: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
    if isinstance(distmat, np.ndarray):
        d = torch.from_numpy(np.ascontiguousarray(distmat))
    elif isinstance(distmat, torch.Tensor):
        d = distmat.detach()
    else:
        raise TypeError(
            f"distmat must be a torch.Tensor or numpy.ndarray, got {type(distmat).__name__}"
        )
    if d.dim() != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got {tuple(d.shape)}")
    if d.shape[0] == 0 or d.shape[1] == 0:
        raise ValueError(f"distmat is empty: shape {tuple(d.shape)}")
    if d.dtype in (torch.float16, torch.bfloat16):
        d = d.float()  # exact; numpy cannot sort these
    elif not d.is_floating_point():
        d = d.to(torch.float64)  # exact for integer distances below 2**53
    return d.contiguous()


def _sorted_rows(d: torch.Tensor, r0: int, r1: int, rows: torch.Tensor) -> torch.Tensor:
    """Rows ``rows`` (which lie in ``[r0, r1)``) of ``d``, each sorted ascending (values only)."""
    if d.device.type == "cpu":
        # numpy's sort is SIMD-accelerated and several times faster than torch's on CPU.
        dn = d.numpy()
        if rows.numel() == r1 - r0:  # contiguous: a slice copy is cheaper than fancy indexing
            blk = np.array(dn[r0:r1])
        else:
            blk = dn[rows.numpy()]
        blk.sort(axis=1)
        s = torch.from_numpy(blk)
    else:
        s = torch.sort(d[rows], dim=1).values
    if torch.isnan(s[:, -1]).any():  # NaN sorts last in numpy and torch
        raise ValueError("distmat contains NaN values")
    return s


def _padded(values: torch.Tensor, seg: torch.Tensor, pos: torch.Tensor, n_seg: int, fill: float):
    width = int(pos.max().item()) + 1 if pos.numel() else 1
    out = values.new_full((n_seg, width), fill)
    out[seg, pos] = values
    return out


def _count_before(
    d: torch.Tensor, q_idx: torch.Tensor, g_idx: torch.Tensor, dist: torch.Tensor, chunk: int
) -> torch.Tensor:
    """For each pair (q, g): #{g' : d[q, g'] < dist or (d[q, g'] == dist and g' < g)}.

    ``q_idx`` must be sorted.  Rows are sorted chunk by chunk and the pair distances are
    binary-searched in them; pairs whose distance occurs more than once in the row are
    resolved exactly (ties are ordered by gallery index).  On CPU the chunks run in a thread
    pool (numpy's sort releases the GIL).
    """
    num_q, num_g = d.shape
    out = torch.zeros_like(q_idx)
    if q_idx.numel() == 0:
        return out
    uq, inv, cnt = torch.unique_consecutive(q_idx, return_inverse=True, return_counts=True)
    pair_start = torch.cumsum(cnt, 0) - cnt
    pos_in_q = torch.arange(q_idx.numel(), device=q_idx.device) - torch.repeat_interleave(
        pair_start, cnt
    )
    uq_list = uq.tolist()
    ps_list = (pair_start).tolist()
    cnt_list = cnt.tolist()

    def sort_chunk(s: int) -> torch.Tensor:
        e = min(s + chunk, len(uq_list))
        return _sorted_rows(d, uq_list[s], uq_list[e - 1] + 1, uq[s:e])  # (rows, G)

    def search(s: int, srt: torch.Tensor) -> None:
        e = min(s + chunk, len(uq_list))
        p0, p1 = ps_list[s], ps_list[e - 1] + cnt_list[e - 1]
        seg, pq = inv[p0:p1] - s, pos_in_q[p0:p1]
        vals = _padded(dist[p0:p1], seg, pq, e - s, math.inf)
        left = torch.searchsorted(srt, vals, side="left")[seg, pq]
        right = torch.searchsorted(srt, vals, side="right")[seg, pq]
        tie = torch.nonzero(right - left > 1).flatten()
        if tie.numel():
            # Other gallery items at exactly this distance: count those with a smaller index.
            step = max(1, _EVAL_CHUNK_ELEMENTS // num_g)
            ar = torch.arange(num_g, device=d.device)
            for t in range(0, tie.numel(), step):
                tt = tie[t : t + step]
                rows = d[q_idx[tt + p0]]
                eq = (rows == dist[tt + p0].unsqueeze(1)) & (
                    ar.unsqueeze(0) < g_idx[tt + p0].unsqueeze(1)
                )
                left[tt] += eq.sum(1)
        out[p0:p1] = left

    starts = list(range(0, len(uq_list), chunk))
    workers = min(len(starts), torch.get_num_threads()) if d.device.type == "cpu" else 1
    if workers > 1:
        # One chunk per worker thread (numpy's sort releases the GIL).  torch runs single-threaded
        # meanwhile: its idle OpenMP threads would otherwise spin on the cores the sorts need.
        n_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda s: search(s, sort_chunk(s)), starts))  # re-raises errors
        finally:
            torch.set_num_threads(n_threads)
    else:
        for s in starts:
            search(s, sort_chunk(s))
    return out


def _same_pid_pairs(q_code: torch.Tensor, g_code: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """All (query, gallery) index pairs with equal identity codes, query-major, gallery ascending."""
    perm = torch.argsort(g_code, stable=True)
    uniq, counts = torch.unique_consecutive(g_code[perm], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    where = torch.searchsorted(uniq, q_code).clamp_(max=uniq.numel() - 1)
    found = uniq[where] == q_code
    n_per_q = torch.where(found, counts[where], torch.zeros_like(where))
    q_idx = torch.repeat_interleave(torch.arange(q_code.numel(), device=q_code.device), n_per_q)
    offs = torch.arange(q_idx.numel(), device=q_code.device) - torch.repeat_interleave(
        torch.cumsum(n_per_q, 0) - n_per_q, n_per_q
    )
    g_idx = perm[torch.repeat_interleave(starts[where], n_per_q) + offs]
    return q_idx, g_idx


def _segment_exclusive_cumsum(flags: torch.Tensor, seg_start: torch.Tensor) -> torch.Tensor:
    """Exclusive cumulative sum of ``flags`` restarted at every segment start."""
    inc = torch.cumsum(flags, 0)
    exc = inc - flags
    return exc - exc[seg_start]


def _warn(msg: str) -> None:
    warnings.warn(msg, UserWarning, stacklevel=3)


def evaluate_rank(
    distmat: Union[np.ndarray, torch.Tensor],
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: Optional[ArrayLike] = None,
    g_camids: Optional[ArrayLike] = None,
    max_rank: int = 50,
    ap_mode: str = "torchreid",
    protocol: str = "market",
    chunk_size: Optional[int] = None,
    num_repeats: int = 10,
    seed: int = 0,
) -> RankResult:
    """CMC, mAP and mINP of a query x gallery distance matrix (lower = more similar).

    For query :math:`q` the gallery images of the same identity *and* camera are removed
    (the standard camera-aware protocol of Market-1501, DukeMTMC-reID, CUHK03-NP, MSMT17);
    the remaining ones of the same identity are its true matches.  Queries with no true match
    left are skipped (a warning gives their number; an error if none is left).  With
    :math:`r_1 < \\dots < r_n` the 0-based positions of the :math:`n` true matches in the kept
    ranking:

    .. math::
        \\mathrm{AP} = \\frac{1}{n}\\sum_{i=1}^{n} \\frac{i}{r_i + 1}, \\qquad
        \\mathrm{INP} = \\frac{n}{r_n + 1}, \\qquad
        \\mathrm{CMC}[k] = [r_1 \\le k]

    averaged over valid queries (INP: Ye et al., "Deep Learning for Person Re-identification:
    A Survey and Outlook", as in fast-reid).  Equal distances are ranked by gallery index
    (a stable sort), so results are deterministic.

    Args:
        distmat: ``(num_query, num_gallery)`` distances (numpy array or tensor, any device).
        q_pids: ``(num_query,)`` query identities (ints, or any labels comparable with g_pids).
        g_pids: ``(num_gallery,)`` gallery identities; distractors (e.g. Market's pid 0) are
            ordinary non-matches.
        q_camids: ``(num_query,)`` query camera ids, or None together with ``g_camids``: then
            no same-camera removal is possible and a warning says the numbers are not
            comparable with published ones (default: None).
        g_camids: ``(num_gallery,)`` gallery camera ids (default: None).
        max_rank: length of the CMC curve; clipped (with a warning) to the gallery size
            (default: 50).
        ap_mode: ``"torchreid"``: non-interpolated AP as above (torchreid, fast-reid);
            ``"market_trapezoid"``: the original Market-1501 MATLAB code's trapezoidal AP,
            :math:`\\frac{1}{n}\\sum_i \\frac{1}{2}(\\frac{i-1}{r_i} + \\frac{i}{r_i+1})` with the
            first term 1 when :math:`r_i = 0` (never larger; see ``docs/evaluation.md``)
            (default: ``"torchreid"``).
        protocol: ``"market"`` (default) or ``"cuhk03_single_shot"``: the classic CUHK03
            single-gallery-shot CMC of torchreid's ``eval_cuhk03`` (per repeat, one random
            valid gallery image per identity; CMC averaged over ``num_repeats`` seeded repeats).
            mAP and mINP always use the full kept ranking, as torchreid does.
        chunk_size: queries processed at once (default: about 4M matrix entries per chunk).
        num_repeats: repeats of the single-shot sampling (default: 10).
        seed: seed of the single-shot sampling (default: 0).

    Returns:
        :class:`RankResult` with ``cmc``, ``mAP``, ``mINP``, ``num_valid_queries``, ``all_AP``
        and ``all_INP``.
    """
    if ap_mode not in AP_MODES:
        raise ValueError(f"ap_mode must be one of {AP_MODES}, got {ap_mode!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    d = _as_distmat(distmat)
    num_q, num_g = d.shape
    dev = d.device

    qp = _to_label_array(q_pids, "q_pids")
    gp = _to_label_array(g_pids, "g_pids")
    if len(qp) != num_q:
        raise ValueError(f"q_pids has {len(qp)} entries but distmat has {num_q} rows")
    if len(gp) != num_g:
        raise ValueError(f"g_pids has {len(gp)} entries but distmat has {num_g} columns")
    if (q_camids is None) != (g_camids is None):
        raise ValueError("give both q_camids and g_camids, or neither")
    qp, gp = _encode_pair(qp, gp, "q_pids", "g_pids")
    if q_camids is None:
        _warn(
            "evaluate_rank: no camera ids given, so gallery images of the query's identity taken "
            "by the query's own camera cannot be removed and count as true matches; the numbers "
            "are not comparable with published results (usually inflated). Pass q_camids and "
            "g_camids to apply the standard protocol."
        )
        qc = np.zeros(num_q, dtype=np.int64)
        gc = np.ones(num_g, dtype=np.int64)  # never equal to a query's camera
    else:
        qc = _to_label_array(q_camids, "q_camids")
        gc = _to_label_array(g_camids, "g_camids")
        if len(qc) != num_q:
            raise ValueError(f"q_camids has {len(qc)} entries but distmat has {num_q} rows")
        if len(gc) != num_g:
            raise ValueError(f"g_camids has {len(gc)} entries but distmat has {num_g} columns")
        qc, gc = _encode_pair(qc, gc, "q_camids", "g_camids")
    max_rank = int(max_rank)
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    if num_g < max_rank:
        _warn(f"evaluate_rank: the gallery has only {num_g} images; max_rank clipped to {num_g}")
        max_rank = num_g
    if chunk_size is None:
        chunk_size = max(1, _EVAL_CHUNK_ELEMENTS // num_g)
    chunk_size = int(chunk_size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    qp_t, gp_t = torch.from_numpy(qp).to(dev), torch.from_numpy(gp).to(dev)
    qc_t, gc_t = torch.from_numpy(qc).to(dev), torch.from_numpy(gc).to(dev)

    # Sparse set of same-identity pairs: the true matches and the junk of every query.
    q_idx, g_idx = _same_pid_pairs(qp_t, gp_t)
    junk = gc_t[g_idx] == qc_t[q_idx]
    good = ~junk
    npos = torch.bincount(q_idx[good], minlength=num_q)
    valid = npos > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError(
            "evaluate_rank: no query has a valid true match in the gallery (an image of its "
            "identity from another camera); check q_pids/g_pids and the camera ids"
        )
    if num_valid < num_q:
        _warn(
            f"evaluate_rank: {num_q - num_valid} of {num_q} queries have no valid true match in "
            f"the gallery and are skipped (metrics average over {num_valid} queries)"
        )

    # Pairs of skipped queries are not needed any further.
    keep_pair = valid[q_idx]
    q_idx, g_idx, junk = q_idx[keep_pair], g_idx[keep_pair], junk[keep_pair]
    # Position of each pair in the full ranking (ties by gallery index), then in the kept one.
    dist = d[q_idx, g_idx]
    before_all = _count_before(d, q_idx, g_idx, dist, chunk_size)
    # Sort pairs by (query, distance, gallery index): two stable sorts; pairs are g-ascending.
    o = torch.argsort(dist, stable=True)
    o = o[torch.argsort(q_idx[o], stable=True)]
    q_s, junk_s, before_s = q_idx[o], junk[o].long(), before_all[o]
    seg_start = torch.searchsorted(q_s, q_s)  # first pair of each pair's query
    junk_before = _segment_exclusive_cumsum(junk_s, seg_start)
    good_s = junk_s == 0
    i_good = _segment_exclusive_cumsum(1 - junk_s, seg_start)[good_s]  # 0-based match index
    rank = (before_s - junk_before)[good_s]  # 0-based position in the kept ranking
    q_good = q_s[good_s]

    r = rank.to(torch.float64)
    i = i_good.to(torch.float64)
    n = npos[q_good].to(torch.float64)
    prec = (i + 1.0) / (r + 1.0)
    if ap_mode == "torchreid":
        ap_terms = prec / n
    else:
        prev = torch.where(rank > 0, i / r.clamp(min=1.0), torch.ones_like(r))
        ap_terms = 0.5 * (prev + prec) / n
    all_ap = torch.zeros(num_q, dtype=torch.float64, device=dev).index_add_(0, q_good, ap_terms)
    last = i_good == npos[q_good] - 1
    all_inp = torch.zeros(num_q, dtype=torch.float64, device=dev)
    all_inp[q_good[last]] = n[last] / (r[last] + 1.0)
    first = i_good == 0

    if protocol == "market":
        first_rank = rank[first]
        hist = torch.bincount(first_rank.clamp(max=max_rank), minlength=max_rank + 1)
        cmc = (torch.cumsum(hist[:max_rank], 0).to(torch.float64) / num_valid).cpu().numpy()
    else:
        cmc = _single_shot_cmc(
            d, qp_t, gp_t, qc_t, gc_t, valid, max_rank, num_repeats, seed, chunk_size
        )

    all_ap_np = all_ap.cpu().numpy()
    all_inp_np = all_inp.cpu().numpy()
    valid_np = valid.cpu().numpy()
    all_ap_np[~valid_np] = np.nan
    all_inp_np[~valid_np] = np.nan
    return RankResult(
        cmc=cmc,
        mAP=float(np.mean(all_ap_np[valid_np])),
        mINP=float(np.mean(all_inp_np[valid_np])),
        num_valid_queries=num_valid,
        all_AP=all_ap_np,
        all_INP=all_inp_np,
    )


# ----------------------------------------------------------------------------------------------
# CUHK03 classic single-gallery-shot CMC
# ----------------------------------------------------------------------------------------------
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def single_shot_keys(seed: int, repeat: int, q_idx: ArrayLike, g_idx: ArrayLike) -> np.ndarray:
    """Random keys of the single-shot draw: a hash of ``(seed, repeat, query, gallery item)``.

    In repeat ``repeat``, query ``q`` keeps, for each identity, its valid gallery image with the
    smallest key: a uniform draw, independent across queries and repeats, reproducible, and
    independent of chunking.  Returned as int64 in ``[0, 2**63)`` (broadcast of the indices).
    """
    q = np.asarray(q_idx, dtype=np.uint64)
    g = np.asarray(g_idx, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = _splitmix64(np.asarray(np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF)))
        h = _splitmix64(h ^ np.uint64(int(repeat)))
        h = _splitmix64(h ^ q)
        h = _splitmix64(h ^ g)
    return (h >> np.uint64(1)).astype(np.int64)


def _single_shot_cmc(
    d: torch.Tensor,
    qp: torch.Tensor,
    gp: torch.Tensor,
    qc: torch.Tensor,
    gc: torch.Tensor,
    valid: torch.Tensor,
    max_rank: int,
    num_repeats: int,
    seed: int,
    chunk_size: int,
) -> np.ndarray:
    if int(num_repeats) < 1:
        raise ValueError(f"num_repeats must be >= 1, got {num_repeats}")
    num_g = d.shape[1]
    dev = d.device
    _, g_code = torch.unique(gp, return_inverse=True)
    n_codes = int(g_code.max()) + 1
    rows_all = torch.nonzero(valid).flatten()
    g_ar = torch.arange(num_g, device=dev)
    hist = torch.zeros(max_rank + 1, dtype=torch.float64, device=dev)
    big = torch.iinfo(torch.int64).max
    for s in range(0, rows_all.numel(), chunk_size):
        rows = rows_all[s : s + chunk_size]
        dr = d[rows]  # (R, G)
        pos = gp.unsqueeze(0) == qp[rows].unsqueeze(1)
        keep = ~(pos & (gc.unsqueeze(0) == qc[rows].unsqueeze(1)))
        code = g_code.unsqueeze(0).expand_as(dr)
        for rep in range(int(num_repeats)):
            key = torch.from_numpy(
                single_shot_keys(seed, rep, rows.cpu().numpy()[:, None], np.arange(num_g)[None, :])
            ).to(dev)
            key = torch.where(keep, key, torch.full_like(key, big))
            kmin = torch.full((rows.numel(), n_codes), big, dtype=torch.int64, device=dev)
            kmin.scatter_reduce_(1, code, key, reduce="amin")
            chosen = keep & (key == kmin.gather(1, code))  # one image per identity
            star = torch.argmax((chosen & pos).to(torch.uint8), dim=1)  # the chosen true match
            d_star = dr.gather(1, star.unsqueeze(1))
            ahead = chosen & ((dr < d_star) | ((dr == d_star) & (g_ar.unsqueeze(0) < star.unsqueeze(1))))
            rank = ahead.sum(1)
            hist += torch.bincount(rank.clamp(max=max_rank), minlength=max_rank + 1).to(hist.dtype)
    cmc = torch.cumsum(hist[:max_rank], 0) / (rows_all.numel() * int(num_repeats))
    return cmc.cpu().numpy()


__all__ = [
    "AP_MODES",
    "PROTOCOLS",
    "RankResult",
    "cosine_distance",
    "euclidean_distance",
    "evaluate_rank",
    "single_shot_keys",
    "topk_neighbours",
]
