"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017): the classic baseline users compare re-ranking methods against.

Two entry points computing the same thing:

* :func:`k_reciprocal_rerank` takes the three distance matrices of the widely used reference
  function ``re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)`` and builds the
  dense ``(Q+G) x (Q+G)`` matrix as it does (memory grows with ``(Q+G)^2``).
* :func:`k_reciprocal_rerank_features` starts from features and never builds that matrix: one
  blocked pass over the pairs keeps each image's ``k1 + 1`` nearest neighbours and its largest
  distance; the encoding ``V`` is sparse; the Jaccard distance is computed query chunk by query
  chunk through an inverted index over ``V``'s columns.  Memory: the ``(Q, G)`` float32 output,
  the features and ``O((Q+G) k1^2)`` for the sparse parts.  An MSMT17-sized test set
  (11,659 x 82,161, d=2048) needs about 5 GB (see ``benchmarks/bench_kreciprocal_memory.py``).

Notation of the reference code (kept so the two can be read side by side):
``d2 = dist**2`` (float32); ``od[i, j] = d2[j, i] / max_k d2[k, i]`` (per-column max, transposed);
``initial_rank[i]`` = neighbours of ``i`` by increasing ``od[i]``;
``R(i, k)`` = k-reciprocal neighbours ``{j in initial_rank[i, :k+1] : i in initial_rank[j, :k+1]}``;
``R*(i)`` = ``R(i, k1)`` plus ``R(c, round(k1/2))`` for each ``c in R(i, k1)`` sharing more than
2/3 of its elements with ``R(i, k1)``;
``V[i, j] = exp(-od[i, j]) / sum_{j' in R*(i)} exp(-od[i, j'])`` on ``R*(i)``;
local query expansion ``V[i] <- mean(V[initial_rank[i, :k2]])`` (if ``k2 != 1``);
``jaccard[i, j] = 1 - m / (2 - m)`` with ``m = sum_k min(V[i, k], V[j, k])``;
``final = (1 - lambda) * jaccard + lambda * od``, query rows x gallery columns.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from hrnet_pyg.runtime import Progress
from hrnet_pyg.runtime import progress as progress_of
from hrnet_pyg.topk import merge_topk, stable_k_smallest

TensorLike = np.ndarray | torch.Tensor

# Work sizes of the chunked steps (entries of the largest temporary per chunk).
_ROW_CHUNK = 2048
_TRIPLE_BUDGET = 1 << 23


def _check_params(k1: int, k2: int, lambda_value: float) -> None:
    if int(k1) < 1:
        raise ValueError(f"k1 must be >= 1, got {k1}")
    if int(k2) < 1:
        raise ValueError(f"k2 must be >= 1, got {k2}")
    if not 0.0 <= float(lambda_value) <= 1.0:
        raise ValueError(f"lambda_value must lie in [0, 1], got {lambda_value}")


def _to_tensor(x: TensorLike, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(x.shape)}")
    x = x.detach()
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if x.numel() and not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return x


# ----------------------------------------------------------------------------------------------
# Shared core: from neighbour lists and an `od` oracle to the final (Q, G) distances
# ----------------------------------------------------------------------------------------------
def _reciprocal(nbr: torch.Tensor, k: int) -> torch.Tensor:
    """``(N, k)`` mask: ``nbr[i, a]`` is k-reciprocal, i.e. ``i in nbr[nbr[i, a], :k]``."""
    n = nbr.shape[0]
    out = torch.empty(n, k, dtype=torch.bool, device=nbr.device)
    for s in range(0, n, _ROW_CHUNK):
        f = nbr[s : s + _ROW_CHUNK, :k]  # (R, k)
        back = nbr[f, :k]  # (R, k, k)
        me = torch.arange(s, s + f.shape[0], device=nbr.device).view(-1, 1, 1)
        out[s : s + f.shape[0]] = (back == me).any(-1)
    return out


def _expansion_sets(nbr: torch.Tensor, k1: int) -> torch.Tensor:
    """``R*(i)`` for every ``i`` as sorted index rows padded with ``N`` (``(N, L)`` int64)."""
    n = nbr.shape[0]
    kf = min(k1 + 1, n)
    kh = min(int(round(k1 / 2.0)) + 1, n)  # round() is banker's rounding, like np.around
    rec = torch.where(_reciprocal(nbr, kf), nbr[:, :kf], n)  # R(i, k1), padded with n
    rech = torch.where(_reciprocal(nbr, kh), nbr[:, :kh], n)  # R(i, k1/2)
    len_h = (rech < n).sum(1)
    rech_pad = torch.cat([rech, rech.new_full((1, kh), n)])  # row n: the empty set
    len_h_pad = torch.cat([len_h, len_h.new_zeros(1)])
    pieces = []
    width = 1
    for s in range(0, n, _ROW_CHUNK):
        r = rec[s : s + _ROW_CHUNK]  # (R, kf)
        cand = rech_pad[r]  # (R, kf, kh): R(c, k1/2) of each candidate c in R(i, k1)
        # |R(c, k1/2) & R(i, k1)| by binary search in the sorted R(i, k1) (padding n sorts last).
        r_sorted = torch.sort(r, dim=1).values
        flat = cand.flatten(1)  # (R, kf * kh)
        at = torch.searchsorted(r_sorted, flat).clamp_(max=kf - 1)
        hit = (r_sorted.gather(1, at) == flat) & (flat < n)
        inter = hit.view_as(cand).sum(-1)
        # Same float expression as the reference: len(intersection) > 2/3 * len(candidate set).
        accept = inter.double() > (2.0 / 3.0) * len_h_pad[r].double()
        accept &= r < n
        grown = torch.where(accept.unsqueeze(-1), cand, n).flatten(1)
        sets = torch.sort(torch.cat([r, grown], 1), dim=1).values
        dup = torch.zeros_like(sets, dtype=torch.bool)
        dup[:, 1:] = sets[:, 1:] == sets[:, :-1]
        sets = torch.sort(sets.masked_fill(dup, n), dim=1).values  # unique, padding last
        w = int((sets < n).sum(1).max())
        width = max(width, w)
        pieces.append(sets[:, :w])
    return torch.cat([F.pad(p, (0, width - p.shape[1]), value=n) for p in pieces])


def _encoding(
    sets: torch.Tensor, od_rows: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``V`` on the padded sets: Gaussian kernel of ``od`` normalised per row (float32).

    ``od_rows(rows, cols)`` returns ``od[rows[:, None], cols]`` for ``rows`` (R,), ``cols`` (R, w).
    """
    n, width = sets.shape
    vals = torch.zeros(sets.shape, dtype=torch.float32, device=sets.device)
    step = max(1, _ROW_CHUNK // 8)
    for s in range(0, n, step):
        cols = sets[s : s + step]
        w = max(1, int((cols < n).sum(1).max()))  # sets are sorted: padding is last
        cols = cols[:, :w]
        ok = cols < n
        rows = torch.arange(s, s + cols.shape[0], device=sets.device)
        wt = torch.exp(-od_rows(rows, cols.clamp(max=n - 1)).float()) * ok
        vals[s : s + cols.shape[0], :w] = wt / wt.sum(1, keepdim=True)
    return vals


def _to_csr(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, n: int):
    """Row pointers for entries already sorted by (row, col)."""
    crow = torch.zeros(n + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n), 0)
    return crow, cols, vals


def _query_expansion(sets: torch.Tensor, vals: torch.Tensor, nbr: torch.Tensor, k2: int):
    """CSR of ``V`` after local query expansion ``V[i] = mean(V[nbr[i, :k2]])``."""
    n = sets.shape[0]
    if k2 == 1:  # the reference skips the expansion
        ok = sets < n
        rows = torch.arange(n, device=sets.device).unsqueeze(1).expand_as(sets)[ok]
        return _to_csr(rows, sets[ok], vals[ok], n)
    k2 = min(k2, nbr.shape[1])
    all_rows, all_cols, all_vals = [], [], []
    step = max(1, _ROW_CHUNK // k2)
    for s in range(0, n, step):
        nb = nbr[s : s + step, :k2]  # (R, k2)
        c = sets[nb].flatten(1)  # (R, k2 * L)
        v = vals[nb].flatten(1)
        ok = c < n
        r = torch.arange(s, s + nb.shape[0], device=sets.device).unsqueeze(1).expand_as(c)
        key = r[ok] * n + c[ok]
        key, order = torch.sort(key)
        uk, inv = torch.unique_consecutive(key, return_inverse=True)
        summed = torch.zeros(uk.numel(), dtype=torch.float32, device=sets.device)
        summed.index_add_(0, inv, v[ok][order])
        all_rows.append(torch.div(uk, n, rounding_mode="floor"))
        all_cols.append(uk % n)
        all_vals.append(summed / k2)
    return _to_csr(torch.cat(all_rows), torch.cat(all_cols), torch.cat(all_vals), n)


def _jaccard_into(
    out: torch.Tensor, csr, num_q: int, lambda_value: float, progress: bool
) -> torch.Tensor:
    """``out`` holds ``od`` (query rows, gallery columns); overwritten by the final distance.

    ``m[i, j] = sum_k min(V[i, k], V[j, k])`` is accumulated only over the ``k`` where both are
    non-zero: query ``i``'s entries are joined with an inverted index (gallery rows of each
    column ``k``, the reference's ``invIndex``) and scattered into the ``(chunk, G)`` block.
    """
    crow, col, val = csr
    n = crow.numel() - 1
    num_g = n - num_q
    dev = out.device
    # Inverted index over the gallery rows: entries sorted by column.
    g0 = int(crow[num_q])
    g_rows = torch.repeat_interleave(
        torch.arange(num_q, n, device=dev), crow[num_q + 1 :] - crow[num_q:-1]
    )
    g_cols, g_vals = col[g0:], val[g0:]
    order = torch.argsort(g_cols, stable=True)
    inv_rows, inv_vals = g_rows[order] - num_q, g_vals[order]
    inv_ptr = torch.zeros(n + 1, dtype=torch.long, device=dev)
    inv_ptr[1:] = torch.cumsum(torch.bincount(g_cols, minlength=n), 0)
    col_len = inv_ptr[1:] - inv_ptr[:-1]
    # Query chunks sized by the number of (query entry, gallery entry) triples they produce.
    q_nnz_triples = torch.zeros(num_q + 1, dtype=torch.long, device=dev)
    q_entries = torch.repeat_interleave(
        torch.arange(num_q, device=dev), crow[1 : num_q + 1] - crow[:num_q]
    )
    q_nnz_triples[1:] = torch.cumsum(
        torch.zeros(num_q, dtype=torch.long, device=dev).index_add_(
            0, q_entries, col_len[col[: int(crow[num_q])]]
        ),
        0,
    )
    bounds = [0]
    cum = q_nnz_triples.cpu()
    max_rows = max(1, (1 << 24) // max(num_g, 1))
    while bounds[-1] < num_q:
        a = bounds[-1]
        b = int(torch.searchsorted(cum, cum[a] + _TRIPLE_BUDGET, side="right")) - 1
        bounds.append(min(max(b, a + 1), a + max_rows, num_q))
    with Progress(num_q, "k-reciprocal jaccard", show=progress, unit="queries") as bar:
        for a, b in zip(bounds[:-1], bounds[1:], strict=False):
            e0, e1 = int(crow[a]), int(crow[b])
            qi = q_entries[e0:e1] - a
            qk, qv = col[e0:e1], val[e0:e1]
            cnt = col_len[qk]
            ent = torch.repeat_interleave(torch.arange(e1 - e0, device=dev), cnt)
            offs = torch.arange(ent.numel(), device=dev) - torch.repeat_interleave(
                torch.cumsum(cnt, 0) - cnt, cnt
            )
            ptr = inv_ptr[qk][ent] + offs
            contrib = torch.minimum(qv[ent], inv_vals[ptr])
            m = torch.zeros((b - a) * num_g, dtype=torch.float32, device=dev)
            m.index_add_(0, qi[ent] * num_g + inv_rows[ptr], contrib)
            m = m.view(b - a, num_g)
            jac = 1.0 - m / (2.0 - m)
            blk = out[a:b]
            blk.mul_(lambda_value).add_(jac, alpha=1.0 - lambda_value)
            bar.update(b - a)
    return out


def _rerank_core(
    nbr: torch.Tensor,
    od_rows: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    od_qg: torch.Tensor,
    k1: int,
    k2: int,
    lambda_value: float,
    progress: bool,
) -> torch.Tensor:
    num_q = od_qg.shape[0]
    sets = _expansion_sets(nbr, k1)
    vals = _encoding(sets, od_rows)
    csr = _query_expansion(sets, vals, nbr, k2)
    del sets, vals
    return _jaccard_into(od_qg, csr, num_q, float(lambda_value), progress)


# ----------------------------------------------------------------------------------------------
# Classic entry point: three distance matrices, dense (Q+G)^2
# ----------------------------------------------------------------------------------------------
def k_reciprocal_rerank(
    q_g_dist: TensorLike,
    q_q_dist: TensorLike,
    g_g_dist: TensorLike,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> torch.Tensor:
    """k-reciprocal re-ranking of Zhong et al. (CVPR 2017) on distance matrices.

    Same inputs and result as the reference ``re_ranking()`` (torchreid's ``utils/rerank.py``):
    the distances are squared, normalised by the maximum of each column of the stacked
    ``(Q+G) x (Q+G)`` matrix, encoded as k-reciprocal sets, expanded, and mixed with the
    Jaccard distance (see the module docstring).  Neighbour ties are ordered by index.
    Memory grows with ``(Q+G)^2``; use :func:`k_reciprocal_rerank_features` for large sets.

    Args:
        q_g_dist: ``(Q, G)`` query-gallery distances (not squared: they are squared here).
        q_q_dist: ``(Q, Q)`` query-query distances.
        g_g_dist: ``(G, G)`` gallery-gallery distances.
        k1: size of the k-reciprocal neighbourhood (default: 20).
        k2: neighbours of the local query expansion (default: 6).
        lambda_value: weight of the original distance (default: 0.3).

    Returns:
        ``(Q, G)`` float32 tensor of re-ranked distances (lower = more similar).
    """
    _check_params(k1, k2, lambda_value)
    qg = _to_tensor(q_g_dist, "q_g_dist")
    qq = _to_tensor(q_q_dist, "q_q_dist").to(qg.device)
    gg = _to_tensor(g_g_dist, "g_g_dist").to(qg.device)
    num_q, num_g = qg.shape
    if qq.shape != (num_q, num_q):
        raise ValueError(
            f"q_q_dist must be ({num_q}, {num_q}) to match q_g_dist, got {tuple(qq.shape)}"
        )
    if gg.shape != (num_g, num_g):
        raise ValueError(
            f"g_g_dist must be ({num_g}, {num_g}) to match q_g_dist, got {tuple(gg.shape)}"
        )
    dtype = torch.promote_types(torch.promote_types(qg.dtype, qq.dtype), gg.dtype)
    full = torch.cat(
        [torch.cat([qq.to(dtype), qg.to(dtype)], 1), torch.cat([qg.t().to(dtype), gg.to(dtype)], 1)]
    )
    d2 = full.pow(2).float()
    del full
    od = (d2 / d2.amax(0, keepdim=True)).t().contiguous()  # od[i, j] = d2[j, i] / max_k d2[k, i]
    del d2
    nbr = stable_k_smallest(od, min(max(k1 + 1, k2), od.shape[0]))  # ties by column index
    od_qg = od[:num_q, num_q:].clone()
    return _rerank_core(
        nbr,
        lambda r, c: od[r.unsqueeze(1), c],
        od_qg,
        int(k1),
        int(k2),
        lambda_value,
        progress=False,
    )


# ----------------------------------------------------------------------------------------------
# Memory-bounded entry point: features, blocked pass, sparse encoding
# ----------------------------------------------------------------------------------------------
def k_reciprocal_rerank_features(
    query_feats: TensorLike,
    gallery_feats: TensorLike,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    chunk_size: int = 4096,
    metric: str = "euclidean",
    progress: bool = True,
) -> torch.Tensor:
    """k-reciprocal re-ranking from features, without any ``(Q+G) x (Q+G)`` matrix.

    Equals ``k_reciprocal_rerank(dist(q, g), dist(q, q), dist(g, g))`` (to float32 rounding,
    about 1e-5) with ``dist`` the Euclidean (default; squared inside, like the reference
    ``re_ranking(probFea, galFea)``) or cosine distance.  Memory: the ``(Q, G)`` float32 output,
    the features, two ``chunk_size``-square blocks and sparse parts of ``O((Q+G) k1^2)``.
    Exactly tied distances between neighbours are ordered arbitrarily (``torch.topk``).

    Args:
        query_feats: ``(Q, d)`` query features.
        gallery_feats: ``(G, d)`` gallery features.
        k1: size of the k-reciprocal neighbourhood (default: 20).
        k2: neighbours of the local query expansion (default: 6).
        lambda_value: weight of the original distance (default: 0.3).
        chunk_size: side of the square blocks of the pairwise pass (default: 4096).
        metric: ``"euclidean"`` (default) or ``"cosine"``.
        progress: show progress (:class:`~hrnet_pyg.runtime.Progress`: a bar on a terminal, plain
            lines otherwise). (default: True)

    Returns:
        ``(Q, G)`` float32 tensor of re-ranked distances, on the features' device.
    """
    _check_params(k1, k2, lambda_value)
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    x, num_q = _stacked_features(query_feats, gallery_feats, metric)
    n = x.shape[0]
    sq = x.pow(2).sum(1)
    k = min(max(int(k1) + 1, int(k2)), n)
    best_v, best_i, row_max, out = _pairwise_pass(x, sq, num_q, k, int(chunk_size), metric, progress)
    # od[i, j] = d2[i, j] / max_k d2[i, k]  (d2 symmetric: the reference's column max)
    step = max(1, (1 << 22) // max(n - num_q, 1))
    for s in range(0, num_q, step):
        e = min(s + step, num_q)
        out[s:e].div_(row_max[s:e].unsqueeze(1).float())
    od_rows = _od_lookup(x, sq, best_v, best_i, row_max, metric)
    return _rerank_core(best_i, od_rows, out, int(k1), int(k2), lambda_value, progress)


def _stacked_features(query_feats: TensorLike, gallery_feats: TensorLike, metric: str) -> tuple[torch.Tensor, int]:
    """Queries then gallery as one ``(N, d)`` tensor (unit rows for the cosine), and ``Q``."""
    qf = _to_tensor(query_feats, "query_feats")
    gf = _to_tensor(gallery_feats, "gallery_feats").to(qf.device)
    if qf.shape[1] != gf.shape[1]:
        raise ValueError(
            f"feature dims differ: query_feats has {qf.shape[1]}, gallery_feats has {gf.shape[1]}"
        )
    if qf.shape[0] == 0 or gf.shape[0] == 0:
        raise ValueError("query_feats and gallery_feats must both be non-empty")
    dtype = torch.promote_types(qf.dtype, gf.dtype)
    x = torch.cat([qf.to(dtype), gf.to(dtype)])  # (N, d)
    if metric == "cosine":
        x = F.normalize(x, dim=1)
    return x, qf.shape[0]


def _pairwise_pass(
    x: torch.Tensor, sq: torch.Tensor, num_q: int, k: int, bs: int, metric: str, progress: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One blocked pass over the pairs of ``x``: what the rest of the method needs of ``d2``.

    Returns ``(best_v, best_i, row_max, out)``: each image's ``k`` smallest ``d2`` and their
    columns (N, k), its largest ``d2`` (N,), and the raw query x gallery ``d2`` (Q, G) float32.
    """
    n, dev = x.shape[0], x.device
    # Two reusable block buffers: fresh 64 MB allocations would page-fault on every block.
    buf = torch.empty(min(bs, n) * min(bs, n), dtype=x.dtype, device=dev)
    tbuf = torch.empty_like(buf)

    def d2_block(r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        g = buf[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
        if metric == "euclidean":  # |x_r|^2 + |x_c|^2 - 2 x_r.x_c, clamped at 0
            torch.addmm(sq[c0:c1].unsqueeze(0), x[r0:r1], x[c0:c1].t(), alpha=-2.0, out=g)
            g.add_(sq[r0:r1].unsqueeze(1)).clamp_(min=0.0)
        else:  # cosine distance 1 - cos, squared like the reference does
            torch.addmm(torch.ones(1, 1, dtype=g.dtype, device=dev), x[r0:r1], x[c0:c1].t(),
                        alpha=-1.0, out=g)
            g.mul_(g)
        return g

    best_v = torch.full((n, k), float("inf"), dtype=x.dtype, device=dev)
    best_i = torch.zeros((n, k), dtype=torch.long, device=dev)
    row_max = torch.zeros(n, dtype=x.dtype, device=dev)
    out = torch.empty(num_q, n - num_q, dtype=torch.float32, device=dev)  # d2, then od, then final
    starts = list(range(0, n, bs))
    pairs = [(a, b) for ai, a in enumerate(starts) for b in starts[ai:]]
    for a, b in progress_of(pairs, "k-reciprocal pairwise pass", show=progress, unit="blocks"):
        a1, b1 = min(a + bs, n), min(b + bs, n)
        blk = d2_block(a, a1, b, b1)  # rows a:a1, columns b:b1; symmetric pairs computed once
        row_max[a:a1] = torch.maximum(row_max[a:a1], blk.amax(1))
        v, i = torch.topk(blk, min(k, b1 - b), dim=1, largest=False, sorted=True)
        best_v[a:a1], best_i[a:a1] = merge_topk(best_v[a:a1], best_i[a:a1], v, i + b, k)
        if b != a:  # the same block serves rows b:b1 through its transpose
            row_max[b:b1] = torch.maximum(row_max[b:b1], blk.amax(0))
            bt = tbuf[: blk.numel()].view(b1 - b, a1 - a).copy_(blk.t())
            v, i = torch.topk(bt, min(k, a1 - a), dim=1, largest=False, sorted=True)
            best_v[b:b1], best_i[b:b1] = merge_topk(best_v[b:b1], best_i[b:b1], v, i + a, k)
        # Query rows x gallery columns of this block go to the output (raw d2 for now).
        qr1, gc0 = min(a1, num_q), max(b, num_q)
        if a < qr1 and gc0 < b1:
            out[a:qr1, gc0 - num_q : b1 - num_q] = blk[: qr1 - a, gc0 - b :]
    return best_v, best_i, row_max, out  # the block buffers are freed here, before the od pass


def _od_lookup(
    x: torch.Tensor, sq: torch.Tensor, best_v: torch.Tensor, best_i: torch.Tensor, row_max: torch.Tensor,
    metric: str,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``od_rows(r, c)``: the (R, w) od from ``x[r]`` to ``x[c]``, looked up in the kept
    neighbour lists, else computed."""

    def od_rows(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        eq = c.unsqueeze(2) == best_i[r].unsqueeze(1)  # (R, w, k)
        d2 = torch.where(eq, best_v[r].unsqueeze(1), 0.0).sum(2)
        miss = torch.nonzero(~eq.any(2))  # members of R*(i) beyond i's k nearest: a minority
        if miss.numel():
            rr, cc = r[miss[:, 0]], c[miss[:, 0], miss[:, 1]]
            dot = (x[rr] * x[cc]).sum(1)
            if metric == "euclidean":
                dm = (sq[rr] + sq[cc] - 2.0 * dot).clamp(min=0.0)
            else:
                dm = (1.0 - dot) ** 2
            d2[miss[:, 0], miss[:, 1]] = dm
        return d2.float() / row_max[r].unsqueeze(1).float()

    return od_rows


__all__ = ["k_reciprocal_rerank", "k_reciprocal_rerank_features"]
