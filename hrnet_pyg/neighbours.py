"""Exact k-nearest-neighbour tables of large feature sets, in blocks (Eq. 1 over a whole gallery).

:func:`~hrnet_pyg.graphs.knn_edges` builds the kNN graph C of Eq. 1 for re-ID batches and query
graphs. Over a whole query + gallery set (19,281 images for Market-1501, 93,820 for MSMT17) the
(N, N) distance matrix must not exist, and the pairwise products dominate the cost, so
:func:`knn_table` walks square blocks of the pairs: each block is computed once and serves its rows
and, through its transpose, its columns (half the products of a row-by-row pass; a block against
itself goes as the pairs of its quarters), and each row keeps a running top-k, into which a block
brings only its entries at or below the row's current k-th score. The neighbours are exactly those
of :func:`~hrnet_pyg.graphs.knn_edges`' dense path: the same ranking score
:math:`\\lVert x_j \\rVert^2 - 2 x_i^\\top x_j` and the same tie rule (lower index first) at every
step (:func:`~hrnet_pyg.topk.k_smallest_sorted`, :func:`~hrnet_pyg.topk.merge_k_smallest`).

* :func:`knn_table` -- the (T, k) neighbour indices of every target, nearest first.
* :func:`knn_table_blocks` -- the same for targets against sources read block by block (an index).
* :func:`table_edges` -- such a table as an ``edge_index`` (neighbour -> target).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from hrnet_pyg.runtime import progress as progress_of
from hrnet_pyg.topk import k_smallest_sorted, merge_k_smallest

# Side of the square blocks of pairs: a 2048 x 2048 fp32 block (16 MiB) and its transpose. Large
# enough that each block is one efficient matrix product at d = 2048, small enough to stay below
# glibc's mmap threshold for the per-block temporaries of the top-k.
DEFAULT_BLOCK = 2048


# Entries per target below which a block's candidates are merged instead of a top-k of the block
# (:func:`_fold_block`; at least 4 k).
_CANDIDATE_LIMIT = 64


def squared_norms(x: Tensor) -> Tensor:
    """(N,) squared norms of the rows of ``x``, as every path here computes them (a store that keeps
    them for :func:`knn_table_blocks` computes them with this)."""
    rows = max(1, (1 << 18) // max(1, x.size(1)))
    return torch.cat([(c * c).sum(-1) for c in x.split(rows)]) if x.size(0) else x.new_zeros(0)


def _cuts(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(a + size, stop)) for a in range(start, stop, size)]


def _fold_block(best_v: Tensor, best_i: Tensor, sq_src: Tensor, dots: Tensor, offset: int, k: int,
                self_score: float | None = None, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    r"""The running top-k ``(best_v, best_i)`` of some targets merged with one block of sources
    (``sq_src`` their squared norms, ``dots`` the (T, B) inner products, ``offset`` the block's first
    source row), ranked by Eq. 1's :math:`\lVert x_j \rVert^2 - 2 x_i^\top x_j`; ``self_score``
    goes on the diagonal (a block of nodes against themselves). ``out``: a buffer of at least T B
    floats for the scores (a blocked pass reuses one instead of allocating a block per call).

    Once every target holds k neighbours, only the block's entries at or below a target's current
    k-th score can enter its top-k: those few are merged (:func:`_candidates`) instead of a top-k
    of the whole block, with the same result (ties are settled by the merge)."""
    if out is None:
        out = dots.new_empty(dots.numel())
    # The scores in the memory layout of ``dots`` (a block's transpose is a view): one pass, no copy.
    flip = dots.dim() == 2 and dots.size(0) > 1 and dots.size(1) > 1 and dots.stride(0) == 1
    base = dots.T if flip else dots
    bias = sq_src.unsqueeze(1) if flip else sq_src.unsqueeze(0)
    stored = torch.add(bias, base, alpha=-2.0, out=out[:base.numel()].view(base.shape))
    score = stored.T if flip else stored  # (T, B)
    if self_score is not None:
        score.diagonal().fill_(self_score)
    if best_v.size(1) == k and best_v.size(0) > 0 and bool(torch.isfinite(best_v[:, k - 1]).all()):
        found = _candidates(stored, best_v[:, k - 1], flip, offset, best_i, limit=max(4 * k, _CANDIDATE_LIMIT))
        if found is not None:
            v, i = found
            return (best_v, best_i) if v.size(1) == 0 else merge_k_smallest(best_v, best_i, v, i, k)
    v, i = k_smallest_sorted(score.contiguous(), min(k, score.size(1)))
    return merge_k_smallest(best_v, best_i, v, i + offset, k)


def _candidates(stored: Tensor, kth: Tensor, flip: bool, offset: int, index_like: Tensor,
                limit: int) -> tuple[Tensor, Tensor] | None:
    """The scores at or below each target's ``kth`` (T,): ``stored`` holds them as (T, B), or as
    (B, T) when ``flip``. Returns (T, c) values and source rows (``offset`` + column) padded with
    ``inf`` and an index that loses every tie, ``c`` the most of any target; ``None`` when some
    target has more than ``limit`` of them (a top-k of the block is then cheaper)."""
    num = kth.numel()
    pairs = (stored <= (kth.unsqueeze(0) if flip else kth.unsqueeze(1))).nonzero()  # in the stored layout
    values = stored[pairs[:, 0], pairs[:, 1]]
    rows, cols = (pairs[:, 1], pairs[:, 0]) if flip else (pairs[:, 0], pairs[:, 1])
    counts = torch.bincount(rows, minlength=num)
    width = int(counts.max()) if rows.numel() else 0
    if width > limit:
        return None
    if flip:  # nonzero lists them by source: group them by target
        order = rows.argsort(stable=True)
        rows, cols, values = rows[order], cols[order], values[order]
    slot = torch.arange(rows.numel(), device=rows.device) - (counts.cumsum(0) - counts)[rows]
    v = values.new_full((num, width), float("inf"))
    i = index_like.new_full((num, width), 1 << 62)
    v[rows, slot] = values
    i[rows, slot] = cols + offset
    return v, i


def _check(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"knn_table: {name} must be a 2-D tensor (num_nodes, channels), got {shape}")
    x = x.detach()
    return x if x.is_floating_point() and x.dtype not in (torch.float16, torch.bfloat16) else x.float()


def knn_table(
    x: Tensor,
    k: int,
    sources: Tensor | None = None,
    *,
    sources_from: int = 0,
    loop: bool = False,
    block_size: int = DEFAULT_BLOCK,
    progress: bool = False,
) -> Tensor:
    r"""The :math:`k` nearest sources (Euclidean distance) of every row of ``x``: Eq. 1's
    :math:`r(m(v_i, v_j)) \le k`, as a table.

    Two forms:

    * one node set (``sources=None``): the neighbours of each node :math:`i` of ``x`` among the
      nodes :math:`j \ge` ``sources_from`` of ``x`` (all of them by default), :math:`j \ne i` unless
      ``loop`` (then :math:`i` always counts among its own :math:`k`, as in
      :func:`~hrnet_pyg.graphs.knn_edges`). ``sources_from = Q`` on a query + gallery stack gives
      every node its neighbours in the gallery alone.
    * two sets (``sources`` given): the neighbours of each row of ``x`` (targets) among the rows of
      ``sources`` (a query attached to a stored gallery); no node is both.

    The (N, N) distance matrix is never formed: square blocks of ``block_size`` rows and columns,
    each used for its rows and its columns, and a running top-k per row (memory: the (T, k) table
    and a few blocks).

    Args:
        x (torch.Tensor): :math:`(N, d)` node features (the targets).
        k (int): Neighbours per target.
        sources (torch.Tensor, optional): :math:`(N_s, d)` source features of the two-set form.
        sources_from (int, optional): First source row of the one-set form. (default: :obj:`0`)
        loop (bool, optional): One-set form: count each node among its own neighbours.
            (default: :obj:`False`)
        block_size (int, optional): Rows (and columns) per block. (default: :obj:`2048`)
        progress (bool, optional): A progress bar or lines over the blocks. (default: :obj:`False`)

    Returns:
        torch.LongTensor: :math:`(N, k)`; row :math:`i` lists its neighbours' rows (of ``x``, or of
        ``sources``), nearest first, ties towards the lower index.
    """
    x = _check(x, "x")
    two_sets = sources is not None
    src = _check(sources, "sources").to(x.device, x.dtype) if sources is not None else x
    if two_sets and src.size(1) != x.size(1):
        raise ValueError(f"knn_table: x has {x.size(1)} channels, sources {src.size(1)}")
    num, num_src = x.size(0), src.size(0)
    first = 0 if two_sets else int(sources_from)
    if not 0 <= first <= num_src:
        raise ValueError(f"knn_table: sources_from must lie in [0, {num_src}], got {sources_from}")
    avail = num_src - first - (0 if two_sets or loop else 1)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or (num > 0 and k > avail):
        raise ValueError(f"knn_table: k must be an integer in [1, {avail}] (the sources each node can "
                         f"choose from), got k={k!r}")
    if int(block_size) < 1:
        raise ValueError(f"knn_table: block_size must be >= 1, got {block_size}")
    sq_x = squared_norms(x)
    sq_s = squared_norms(src) if two_sets else sq_x
    if not bool(torch.isfinite(sq_x).all()) or not bool(torch.isfinite(sq_s).all()):
        raise ValueError("knn_table: the features hold NaN or infinite values (or rows whose squared norm "
                         "overflows); Euclidean distances are undefined")
    best_v = x.new_full((num, k), float("inf"))
    best_i = torch.full((num, k), num_src, dtype=torch.long, device=x.device)  # index N_s: loses every tie
    # Two reused block buffers (the inner products, the scores): a fresh 16 MiB tensor per block
    # would page-fault on every block.
    side = min(int(block_size), max(num, num_src, 1))
    g_buf, s_buf = x.new_empty(side * side), x.new_empty(side * side)
    with torch.no_grad():
        for (a0, a1), (b0, b1), rows, cols in progress_of(
                _block_pairs(num, num_src, first, int(block_size), two_sets), "kNN table", show=progress,
                unit="blocks"):
            # (R, C) inner products, shared by both uses of the block
            g = torch.mm(x[a0:a1], src[b0:b1].T, out=g_buf[:(a1 - a0) * (b1 - b0)].view(a1 - a0, b1 - b0))
            if rows:  # targets a0:a1 choose among the sources b0:b1
                diag = (float("-inf") if loop else float("inf")) if not two_sets and a0 == b0 else None
                best_v[a0:a1], best_i[a0:a1] = _fold_block(best_v[a0:a1], best_i[a0:a1], sq_s[b0:b1], g, b0, k, diag,
                                                           out=s_buf)
            if cols:  # the same block, transposed: targets b0:b1 choose among the sources a0:a1
                best_v[b0:b1], best_i[b0:b1] = _fold_block(best_v[b0:b1], best_i[b0:b1], sq_x[a0:a1], g.T, a0, k,
                                                           out=s_buf)
    return best_i


def _block_pairs(num: int, num_src: int, first: int, size: int, two_sets: bool):
    """``((a0, a1), (b0, b1), rows, cols)`` for every block of pairs to compute: rows ``a0:a1`` of
    ``x`` against rows ``b0:b1`` of the sources; ``rows``: the block serves its rows as targets,
    ``cols``: its transpose serves its columns (one-set form, each unordered block pair once)."""
    if two_sets:
        return [(a, b, True, False) for a in _cuts(0, num, size) for b in _cuts(0, num_src, size)]
    # Blocks never straddle ``first``, so each block is wholly a source block or not.
    blocks = _cuts(0, first, size) + _cuts(first, num, size)
    pairs = []
    for ai, a in enumerate(blocks):
        for b in blocks[ai:]:
            # A block against itself repeats its upper triangle below the diagonal: it goes as the
            # pairs of its quarters, each unordered pair once (5/8 of its products instead of all).
            subs = _cuts(a[0], a[1], max(1, size // 4)) if a == b else [a]
            for si, sa in enumerate(subs):
                for sb in (subs[si:] if a == b else [b]):
                    rows, cols = sb[0] >= first, sa != sb and sa[0] >= first
                    if rows or cols:
                        pairs.append((sa, sb, rows, cols))
    return pairs


def knn_table_blocks(x: Tensor, k: int, blocks: Iterable[tuple[int, Tensor] | tuple[int, Tensor, Tensor]]) -> Tensor:
    r""":func:`knn_table`'s two-set form over sources that come in blocks ``(offset, rows)`` (a
    memory-mapped gallery read block by block): the :math:`k` nearest source rows of every row of
    ``x`` by the same ranking score :math:`\lVert x_j \rVert^2 - 2 x_i^\top x_j` and tie rule
    (lower index first), with only the (T, k) table and one block's scores alive.

    Args:
        x (torch.Tensor): :math:`(T, d)` targets.
        k (int): Neighbours per target; at most the number of source rows.
        blocks (iterable): ``(offset, rows)`` or ``(offset, rows, sq_norms)``: ``rows`` :math:`(B, d)`
            float tensors, ``offset`` the row of the whole source set where they start, and their
            :func:`squared_norms` :math:`(B,)` when kept (else computed: a second pass over the rows).

    Returns:
        torch.LongTensor: :math:`(T, k)` source rows, nearest first.
    """
    x = _check(x, "x")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"knn_table_blocks: k must be a positive integer, got {k!r}")
    best_v = x.new_full((x.size(0), k), float("inf"))
    best_i = torch.full((x.size(0), k), 1 << 62, dtype=torch.long, device=x.device)  # loses every tie
    seen = 0
    with torch.no_grad():
        for offset, rows, *kept in blocks:
            src = _check(rows, "rows").to(x.device, x.dtype)
            if src.size(1) != x.size(1):
                raise ValueError(f"knn_table_blocks: x has {x.size(1)} channels, the sources {src.size(1)}")
            sq = kept[0].to(x.device, x.dtype) if kept else squared_norms(src)
            best_v, best_i = _fold_block(best_v, best_i, sq, x @ src.T, int(offset), k)
            seen += src.size(0)
    if seen < k:
        raise ValueError(f"knn_table_blocks: k={k} neighbours asked of {seen} source rows")
    return best_i


def table_edges(table: Tensor) -> Tensor:
    """A :func:`knn_table` (T, k) as ``edge_index`` (2, T k): ``edge_index[0]`` the neighbour
    :math:`j` (source), ``edge_index[1]`` the target :math:`i` (PyG's ``source_to_target`` flow, as
    :func:`~hrnet_pyg.graphs.knn_edges`), ordered by target, then nearest first."""
    t, k = table.shape
    return torch.stack([table.reshape(-1), torch.arange(t, device=table.device).repeat_interleave(k)])


__all__ = ["DEFAULT_BLOCK", "knn_table", "knn_table_blocks", "squared_norms", "table_edges"]
