"""Re-ID evaluation: the field's ranking metrics (CMC, mAP, mINP) of a distance matrix.

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
it, and subtract the junk images that precede each match.  The bookkeeping is vectorised over
all (query, true match) pairs; the only per-query Python work is one ``searchsorted`` call on
its ~10-20 match distances, and nothing loops over gallery items.

The distance matrices themselves (:func:`cosine_distance`, :func:`euclidean_distance`,
:func:`topk_neighbours`) are :mod:`hrnet_pyg.distances`, re-exported here.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from hrnet_pyg.distances import cosine_distance, euclidean_distance, topk_neighbours

ArrayLike = np.ndarray | torch.Tensor | Sequence

AP_MODES = ("torchreid", "market_trapezoid")
PROTOCOLS = ("market", "cuhk03_single_shot")

# Rows of the distance matrix sorted at once; 256 x 15,913 float32 is 16 MB.
_EVAL_CHUNK_ELEMENTS = 1 << 22


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

    def keys(self) -> tuple[str, ...]:
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


def _encode_pair(
    q: np.ndarray, g: np.ndarray, qname: str, gname: str
) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes for query / gallery labels (any hashable dtype), equal labels equal codes."""
    if q.dtype.kind in "iub" and g.dtype.kind in "iub":
        return q.astype(np.int64), g.astype(np.int64)
    try:
        _, inv = np.unique(np.concatenate([q, g]), return_inverse=True)
    except TypeError as exc:  # e.g. mixed str / int objects
        raise TypeError(f"{qname} and {gname} must hold comparable labels: {exc}") from None
    inv = inv.reshape(-1).astype(np.int64)
    return inv[: len(q)], inv[len(q) :]


def _as_distmat(distmat: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """A C-contiguous float32/float64 numpy array (CPU data) or tensor (other devices)."""
    if isinstance(distmat, torch.Tensor):
        d = distmat.detach()
        if d.dim() != 2:
            raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got {tuple(d.shape)}")
        if d.dtype in (torch.float16, torch.bfloat16):
            d = d.float()  # exact
        elif not d.is_floating_point():
            d = d.double()  # exact for integer distances below 2**53
        if d.device.type == "cpu":
            return np.ascontiguousarray(d.numpy())
        return d.contiguous()
    if not isinstance(distmat, np.ndarray):
        raise TypeError(
            f"distmat must be a torch.Tensor or numpy.ndarray, got {type(distmat).__name__}"
        )
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got {distmat.shape}")
    if distmat.dtype.kind != "f" or distmat.dtype.itemsize < 4:
        distmat = distmat.astype(np.float32 if distmat.dtype == np.float16 else np.float64)
    return np.ascontiguousarray(distmat)


def _rows_numpy(d: np.ndarray | torch.Tensor, rows: np.ndarray) -> np.ndarray:
    if isinstance(d, np.ndarray):
        return d[rows]
    return d[torch.from_numpy(rows).to(d.device)].cpu().numpy()


def _count_before(
    d: np.ndarray | torch.Tensor,
    q_idx: np.ndarray,
    g_idx: np.ndarray,
    dist: np.ndarray,
    chunk: int,
) -> np.ndarray:
    """For each pair (q, g): #{g' : d[q, g'] < dist or (d[q, g'] == dist and g' < g)}.

    ``q_idx`` must be sorted.  The rows of a chunk of queries are sorted (values only) and the
    few pair distances of each row are binary-searched in it; pairs whose distance occurs more
    than once in the row are resolved exactly (ties are ordered by gallery index).  On CPU the
    chunks run in a thread pool: numpy's SIMD sort releases the GIL.  Bookkeeping stays in
    numpy, whose small operations start no OpenMP teams (costly on a busy machine).
    """
    num_g = d.shape[1]
    out = np.zeros(len(q_idx), dtype=np.int64)
    if len(q_idx) == 0:
        return out
    uq, first, cnt = np.unique(q_idx, return_index=True, return_counts=True)
    on_cpu = isinstance(d, np.ndarray)

    def work(s: int) -> None:
        e = min(s + chunk, len(uq))
        rows = uq[s:e]
        p0, p1 = int(first[s]), int(first[e - 1] + cnt[e - 1])
        vals = dist[p0:p1]
        if isinstance(d, np.ndarray):
            if rows[-1] - rows[0] + 1 == len(rows):  # contiguous: a slice copy is cheapest
                srt = np.array(d[rows[0] : rows[-1] + 1])
            else:
                srt = d[rows]
            srt.sort(axis=1)
            if np.isnan(srt[:, -1]).any():  # NaN sorts last
                raise ValueError("distmat contains NaN values")
            left = np.empty(p1 - p0, dtype=np.int64)
            right = np.empty(p1 - p0, dtype=np.int64)
            # One binary search per query for its ~10-20 pair distances (O(1) calls per query).
            for k in range(e - s):
                a, b = int(first[s + k]) - p0, int(first[s + k] + cnt[s + k]) - p0
                left[a:b] = np.searchsorted(srt[k], vals[a:b], side="left")
                right[a:b] = np.searchsorted(srt[k], vals[a:b], side="right")
        else:
            rows_t = torch.from_numpy(rows).to(d.device)
            srt_t = torch.sort(d[rows_t], dim=1).values
            if torch.isnan(srt_t[:, -1]).any():
                raise ValueError("distmat contains NaN values")
            seg = np.repeat(np.arange(e - s), cnt[s:e])
            pos = np.arange(p1 - p0) - np.repeat(first[s:e] - p0, cnt[s:e])
            pad = np.full((e - s, int(cnt[s:e].max())), np.inf, dtype=vals.dtype)
            pad[seg, pos] = vals
            pad_t = torch.from_numpy(pad).to(device=d.device, dtype=srt_t.dtype)
            left = torch.searchsorted(srt_t, pad_t, side="left").cpu().numpy()[seg, pos]
            right = torch.searchsorted(srt_t, pad_t, side="right").cpu().numpy()[seg, pos]
        tie = np.flatnonzero(right - left > 1)
        if len(tie):
            # Other gallery items at exactly this distance: count those with a smaller index.
            step = max(1, _EVAL_CHUNK_ELEMENTS // num_g)
            ar = np.arange(num_g)
            for t in range(0, len(tie), step):
                tt = tie[t : t + step] + p0
                eq = (_rows_numpy(d, q_idx[tt]) == dist[tt, None]) & (ar[None, :] < g_idx[tt, None])
                left[tt - p0] += eq.sum(1)
        out[p0:p1] = left

    starts = list(range(0, len(uq), chunk))
    workers = min(len(starts), max(1, torch.get_num_threads())) if on_cpu else 1
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, starts))  # list(): re-raises a worker's error here
    else:
        for s in starts:
            work(s)
    return out


def _same_pid_pairs(q_code: np.ndarray, g_code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (query, gallery) pairs of equal identity codes; query-major, gallery ascending."""
    perm = np.argsort(g_code, kind="stable")
    uniq, starts, counts = np.unique(g_code[perm], return_index=True, return_counts=True)
    where = np.minimum(np.searchsorted(uniq, q_code), len(uniq) - 1)
    n_per_q = np.where(uniq[where] == q_code, counts[where], 0)
    q_idx = np.repeat(np.arange(len(q_code)), n_per_q)
    offs = np.arange(len(q_idx)) - np.repeat(np.cumsum(n_per_q) - n_per_q, n_per_q)
    g_idx = perm[np.repeat(starts[where], n_per_q) + offs]
    return q_idx, g_idx


def _segment_exclusive_cumsum(flags: np.ndarray, seg_start: np.ndarray) -> np.ndarray:
    """Exclusive cumulative sum of ``flags`` restarted at every segment start."""
    exc = np.cumsum(flags) - flags
    return exc - exc[seg_start]


def _warn(msg: str, stacklevel: int = 3) -> None:
    """A warning that points at the caller of :func:`evaluate_rank` (``stacklevel``: from here)."""
    warnings.warn(msg, UserWarning, stacklevel=stacklevel)


def evaluate_rank(
    distmat: np.ndarray | torch.Tensor,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike | None = None,
    g_camids: ArrayLike | None = None,
    max_rank: int = 50,
    ap_mode: str = "torchreid",
    protocol: str = "market",
    chunk_size: int | None = None,
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
    if num_q == 0 or num_g == 0:
        raise ValueError(f"distmat is empty: shape {tuple(d.shape)}")
    qp, gp, qc, gc = _checked_labels(q_pids, g_pids, q_camids, g_camids, num_q, num_g)
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

    q_idx, g_idx, junk, npos, valid = _true_match_pairs(qp, gp, qc, gc)
    num_valid = int(valid.sum())
    rank, i_good, q_good = _kept_positions(d, q_idx, g_idx, junk, chunk_size)
    all_ap, all_inp = _ap_and_inp(rank, i_good, q_good, npos, num_q, ap_mode)
    if protocol == "market":
        first_rank = rank[i_good == 0]
        hist = np.bincount(np.minimum(first_rank, max_rank), minlength=max_rank + 1)
        cmc = np.cumsum(hist[:max_rank]) / num_valid
    else:
        cmc = _single_shot_cmc(d, qp, gp, qc, gc, valid, max_rank, num_repeats, seed, chunk_size)

    all_ap[~valid] = np.nan
    all_inp[~valid] = np.nan
    return RankResult(
        cmc=cmc.astype(np.float64),
        mAP=float(np.mean(all_ap[valid])),
        mINP=float(np.mean(all_inp[valid])),
        num_valid_queries=num_valid,
        all_AP=all_ap,
        all_INP=all_inp,
    )


def _checked_labels(
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike | None,
    g_camids: ArrayLike | None,
    num_q: int,
    num_g: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Identity and camera codes of :func:`evaluate_rank`'s queries and gallery, checked.

    Without camera ids (a warning says what that means) every query gets camera 0 and every
    gallery image camera 1, so that no image counts as junk.
    """
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
            "g_camids to apply the standard protocol.",
            stacklevel=4,
        )
        qc = np.zeros(num_q, dtype=np.int64)
        gc = np.ones(num_g, dtype=np.int64)  # never equal to a query's camera
    else:
        assert g_camids is not None  # both or neither, checked above
        qc = _to_label_array(q_camids, "q_camids")
        gc = _to_label_array(g_camids, "g_camids")
        if len(qc) != num_q:
            raise ValueError(f"q_camids has {len(qc)} entries but distmat has {num_q} rows")
        if len(gc) != num_g:
            raise ValueError(f"g_camids has {len(gc)} entries but distmat has {num_g} columns")
        qc, gc = _encode_pair(qc, gc, "q_camids", "g_camids")
    return qp, gp, qc, gc


def _true_match_pairs(
    qp: np.ndarray, gp: np.ndarray, qc: np.ndarray, gc: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The sparse set of same-identity pairs of the valid queries: the true matches and the junk.

    Returns ``(q_idx, g_idx, junk, npos, valid)``: the pairs (query-major, gallery ascending),
    whether each pair is junk (same camera), the true matches per query and which queries have
    one. Queries without a true match are skipped with a warning (an error when none is left).
    """
    num_q = len(qp)
    q_idx, g_idx = _same_pid_pairs(qp, gp)
    junk = gc[g_idx] == qc[q_idx]
    npos = np.bincount(q_idx[~junk], minlength=num_q)
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
            f"the gallery and are skipped (metrics average over {num_valid} queries)",
            stacklevel=4,
        )
    keep = valid[q_idx]  # pairs of skipped queries are not needed any further
    return q_idx[keep], g_idx[keep], junk[keep], npos, valid


def _kept_positions(
    d: np.ndarray | torch.Tensor, q_idx: np.ndarray, g_idx: np.ndarray, junk: np.ndarray, chunk_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 0-based position of every true match in its query's kept ranking (junk removed).

    The position in the full ranking (ties by gallery index) less the junk ranked before it.
    Returns ``(rank, i_good, q_good)``: the position, the match's 0-based index among its
    query's matches, and its query; sorted by query, then position.
    """
    if isinstance(d, np.ndarray):
        dist = d[q_idx, g_idx]
    else:
        dist = d[torch.from_numpy(q_idx).to(d.device), torch.from_numpy(g_idx).to(d.device)]
        dist = dist.cpu().numpy()
    before_all = _count_before(d, q_idx, g_idx, dist, chunk_size)
    o = np.lexsort((g_idx, dist, q_idx))  # by query, then distance, then gallery index
    q_s, junk_s, before_s = q_idx[o], junk[o].astype(np.int64), before_all[o]
    seg_start = np.searchsorted(q_s, q_s)  # first pair of each pair's query
    junk_before = _segment_exclusive_cumsum(junk_s, seg_start)
    good_s = junk_s == 0
    i_good = _segment_exclusive_cumsum(1 - junk_s, seg_start)[good_s]  # 0-based match index
    rank = (before_s - junk_before)[good_s]  # 0-based position in the kept ranking
    return rank, i_good, q_s[good_s]


def _ap_and_inp(
    rank: np.ndarray, i_good: np.ndarray, q_good: np.ndarray, npos: np.ndarray, num_q: int, ap_mode: str
) -> tuple[np.ndarray, np.ndarray]:
    """AP and INP per query (zero for queries without a match) from the matches' kept positions."""
    r = rank.astype(np.float64)
    i = i_good.astype(np.float64)
    n = npos[q_good].astype(np.float64)
    prec = (i + 1.0) / (r + 1.0)
    if ap_mode == "torchreid":
        ap_terms = prec / n
    else:
        prev = np.where(rank > 0, i / np.maximum(r, 1.0), 1.0)
        ap_terms = 0.5 * (prev + prec) / n
    all_ap = np.bincount(q_good, weights=ap_terms, minlength=num_q)
    last = i_good == npos[q_good] - 1
    all_inp = np.zeros(num_q)
    all_inp[q_good[last]] = n[last] / (r[last] + 1.0)
    return all_ap, all_inp


# ----------------------------------------------------------------------------------------------
# CUHK03 classic single-gallery-shot CMC
# ----------------------------------------------------------------------------------------------
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
    d: np.ndarray | torch.Tensor,
    qp: np.ndarray,
    gp: np.ndarray,
    qc: np.ndarray,
    gc: np.ndarray,
    valid: np.ndarray,
    max_rank: int,
    num_repeats: int,
    seed: int,
    chunk_size: int,
) -> np.ndarray:
    if int(num_repeats) < 1:
        raise ValueError(f"num_repeats must be >= 1, got {num_repeats}")
    num_g = d.shape[1]
    _, g_code = np.unique(gp, return_inverse=True)
    g_code = g_code.reshape(-1)
    perm = np.argsort(g_code, kind="stable")  # gallery grouped by identity
    code_sorted = g_code[perm]
    seg = np.flatnonzero(np.r_[True, code_sorted[1:] != code_sorted[:-1]])
    rows_all = np.flatnonzero(valid)
    g_ar = np.arange(num_g)
    hist = np.zeros(max_rank + 1)
    big = np.iinfo(np.int64).max
    for s in range(0, len(rows_all), chunk_size):
        rows = rows_all[s : s + chunk_size]
        dr = _rows_numpy(d, rows)  # (R, G)
        pos = gp[None, :] == qp[rows, None]
        keep = ~(pos & (gc[None, :] == qc[rows, None]))
        for rep in range(int(num_repeats)):
            key = np.where(keep, single_shot_keys(seed, rep, rows[:, None], g_ar[None, :]), big)
            kmin = np.minimum.reduceat(key[:, perm], seg, axis=1)  # (R, identities)
            chosen = keep & (key == kmin[:, g_code])  # one image per identity
            star = np.argmax(chosen & pos, axis=1)  # the drawn true match
            d_star = dr[np.arange(len(rows)), star][:, None]
            ahead = chosen & ((dr < d_star) | ((dr == d_star) & (g_ar[None, :] < star[:, None])))
            hist += np.bincount(np.minimum(ahead.sum(1), max_rank), minlength=max_rank + 1)
    return np.cumsum(hist[:max_rank]) / (len(rows_all) * int(num_repeats))


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
