"""Graph construction for the two relationship modules (Sec. 3.2): plain functions, nothing learnable.

* :func:`knn_edges` -- the locally-connected graph :math:`C` of Eq. 1 (k nearest neighbours in
  Euclidean distance), with a pure-torch backend and the compiled PyG / torch-cluster ones.
* :func:`full_edges` -- the fully-connected graph (the IR* ablation row of Table 1).
* :func:`individual_graph` -- a :class:`~torch_geometric.data.Data` for the individual module.
* :func:`hybrid_graph` -- the whole hybrid graph of Fig. 2 as one
  :class:`~torch_geometric.data.HeteroData` (:class:`HybridGraph`): the individual kNN graph of
  Eq. 1, the N complete graphs over difference nodes :math:`u_{n,i} = f_n - f_i` of Eq. 6 and the
  inter-graph links of Eq. 7-9 (its node and edge types: ``"image"``, ``"pair"``, :data:`KNN`,
  :data:`INTRA`, :data:`LEFT`, :data:`RIGHT`).
* :func:`pair_mask` -- the (N, N) neighbour mask of the pair graphs when they are not complete
  (Fig. 4 sweep), used by :func:`hybrid_graph` and by the dense path.

Every ``edge_index`` follows PyG's ``source_to_target`` flow: ``edge_index[0]`` is the neighbour
:math:`j` (source), ``edge_index[1]`` the centre :math:`i` (target) whose update aggregates it.
"""
from __future__ import annotations

import importlib.util

import torch
from torch import Tensor
from torch_geometric.data import Data, HeteroData
from torch_geometric.data.storage import NodeStorage
from torch_geometric.utils import to_dense_batch

from hrnet_pyg.topk import k_smallest_mask

# Entries of the dense distance block computed at once by the pure-torch path (2**24 floats = 64 MiB
# in fp32). A re-ID batch (66^2) and a re-ranking graph (121^2) are far below it.
DEFAULT_DENSE_BUDGET = 1 << 24

_BACKENDS = ("auto", "torch", "pyg", "cluster")

# The edge types of a hybrid graph (source node type, relation, target node type).
KNN = ("image", "knn", "image")  # C of Eq. 1: v_j -> v_i
INTRA = ("pair", "intra", "pair")  # Eq. 6: u_{n,j} -> u_{n,i} inside graph n
LEFT = ("image", "left", "pair")  # Eq. 7-9: v_n -> u_{n,i}
RIGHT = ("image", "right", "pair")  # Eq. 7-9: v_i -> u_{n,i}


def _has_torch_cluster() -> bool:
    return importlib.util.find_spec("torch_cluster") is not None


def _pyg_has_knn() -> bool:
    import torch_geometric.typing

    return bool(getattr(torch_geometric.typing, "WITH_KNN", False))


def _check_batch(batch: Tensor | None, num_nodes: int, where: str) -> Tensor | None:
    if batch is None:
        return None
    if not isinstance(batch, Tensor) or batch.dim() != 1 or batch.numel() != num_nodes:
        shape = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
        raise ValueError(
            f"{where}: batch must be a 1-D LongTensor with one entry per node "
            f"({num_nodes}), got {shape}"
        )
    if batch.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{where}: batch must hold integer graph ids, got dtype {batch.dtype}")
    if num_nodes > 0 and int(batch.min()) < 0:
        raise ValueError(f"{where}: batch holds negative graph ids")
    return batch.long()


def _group(batch: Tensor | None, num_nodes: int, device) -> tuple[Tensor | None, Tensor, Tensor]:
    """Nodes grouped by graph: (perm or None if already sorted, counts per graph, ptr).

    ``perm`` lists node ids so that ``batch[perm]`` is sorted (stable); graphs are then contiguous.
    """
    if batch is None:
        counts = torch.tensor([num_nodes], device=device)
        return None, counts, torch.tensor([0, num_nodes], device=device)
    perm: Tensor | None = None
    if num_nodes > 1 and bool((batch[1:] < batch[:-1]).any()):
        perm = torch.argsort(batch, stable=True)
    counts = torch.bincount(batch) if num_nodes > 0 else batch.new_zeros(0)
    ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    return perm, counts, ptr


def _sq_norms(x: Tensor) -> Tensor:
    """Row sums of squares (exact sums, unlike ``vector_norm(x) ** 2``, so exactly tied distances
    stay tied), in row chunks of ~1 MiB temporaries: one big ``x * x`` would cost a page-faulting
    allocation of x's size, slower than the arithmetic."""
    rows = max(1, (1 << 18) // max(1, x.size(1)))
    if x.size(0) <= rows:
        return (x * x).sum(-1)
    return torch.cat([(c * c).sum(-1) for c in x.split(rows)])


def _rank_scores(xq: Tensor, xk: Tensor, sq_k: Tensor) -> Tensor:
    """||x_j||^2 - 2 x_i.x_j for query rows i and key rows j (batched or not), in one fused
    baddbmm/addmm: the squared distance minus ||x_i||^2, which is constant per row i and therefore
    irrelevant to the ranking of row i (no sqrt, no extra pass)."""
    if xq.dim() == 2:
        return torch.addmm(sq_k.unsqueeze(0), xq, xk.t(), alpha=-2.0)
    return torch.baddbmm(sq_k.unsqueeze(-2), xq, xk.transpose(-1, -2), alpha=-2.0)


def _knn_torch(
    x: Tensor,
    sq: Tensor,
    kk_graph: Tensor,
    perm: Tensor | None,
    counts: Tensor,
    ptr: Tensor,
    loop: bool,
    budget: int,
) -> Tensor:
    """Pure-torch kNN on graph-contiguous nodes; returns edge_index in the caller's node ids.

    ``sq`` holds the squared norms of the rows of ``x``."""
    xs, sqs = (x, sq) if perm is None else (x[perm], sq[perm])
    device = x.device
    num_graphs = counts.numel()
    nmax = int(counts.max()) if num_graphs > 0 else 0
    self_fill = float("-inf") if loop else float("inf")  # loop: self always chosen; else never
    srcs: list[Tensor] = []
    dsts: list[Tensor] = []
    if nmax * nmax <= budget:
        # (G, nmax, nmax) blocks, a group of graphs at a time. Graphs of equal size (a single
        # graph, re-ranking batches) are a free view of x; otherwise rows are padded to nmax.
        equal = bool((counts == nmax).all())
        batch_sorted = None
        if not equal:
            batch_sorted = torch.repeat_interleave(torch.arange(num_graphs, device=device), counts)
        per_group = max(1, budget // max(1, nmax * nmax))
        ar = torch.arange(nmax, device=device)
        for g0 in range(0, num_graphs, per_group):
            g1 = min(num_graphs, g0 + per_group)
            if equal:
                dense = xs[g0 * nmax:g1 * nmax].view(g1 - g0, nmax, xs.size(1))
                dsq = sqs[g0 * nmax:g1 * nmax].view(g1 - g0, nmax)
            else:
                assert batch_sorted is not None
                sel = (batch_sorted >= g0) & (batch_sorted < g1)
                bsel = batch_sorted[sel] - g0
                dense, _ = to_dense_batch(xs[sel], bsel, fill_value=0.0, max_num_nodes=nmax, batch_size=g1 - g0)
                dsq, _ = to_dense_batch(sqs[sel], bsel, fill_value=float("inf"), max_num_nodes=nmax,
                                        batch_size=g1 - g0)
            score = _rank_scores(dense, dense, dsq)  # (G, nmax, nmax); padding columns: +inf
            score.diagonal(dim1=-2, dim2=-1).fill_(self_fill)
            kk = kk_graph[g0:g1].unsqueeze(1).expand(-1, nmax)
            if not equal:
                kk = kk * (ar.unsqueeze(0) < counts[g0:g1].unsqueeze(1))  # padding rows: k = 0
            grp, i, j = k_smallest_mask(score, kk).nonzero(as_tuple=True)
            base = ptr[g0:g1][grp]
            dsts.append(base + i)
            srcs.append(base + j)
    else:
        # A graph too large for one dense block: chunks of target rows against its whole node set.
        for g in range(num_graphs):
            start, n = int(ptr[g]), int(counts[g])
            if n == 0 or int(kk_graph[g]) == 0:
                continue
            xg, sqg = xs[start:start + n], sqs[start:start + n]
            rows = max(1, budget // n)
            for r0 in range(0, n, rows):
                r1 = min(n, r0 + rows)
                score = _rank_scores(xg[r0:r1], xg, sqg)  # (r, n)
                r_ar = torch.arange(r1 - r0, device=device)
                score[r_ar, r_ar + r0] = self_fill
                kk = kk_graph[g].expand(r1 - r0)
                i, j = k_smallest_mask(score, kk).nonzero(as_tuple=True)
                dsts.append(start + r0 + i)
                srcs.append(start + j)
    if not srcs:
        return torch.empty(2, 0, dtype=torch.long, device=device)
    src, dst = torch.cat(srcs), torch.cat(dsts)
    if perm is not None:
        src, dst = perm[src], perm[dst]
    return torch.stack([src, dst])


def knn_edges(
    x: Tensor,
    k: int,
    batch: Tensor | None = None,
    loop: bool = False,
    backend: str = "auto",
    clamp: bool = False,
    dense_budget: int = DEFAULT_DENSE_BUDGET,
) -> Tensor:
    r"""Edges of the k-nearest-neighbour graph of Eq. 1 (Euclidean distance).

    .. math::
        c_{i,j} = 1 \iff r(m(v_i, v_j)) \le k

    For every node :math:`i` (target) the :math:`k` nearest nodes :math:`j` of the same graph
    (source) are returned as edges :math:`j \rightarrow i`. With ``loop=False`` (the default, and the
    project's reading of Eq. 1 because Eq. 3 adds the node itself through :math:`+I`) a node is never
    its own neighbour, even when another node sits at distance 0; with ``loop=True`` the node itself
    always counts as one of its :math:`k` neighbours. Ties are broken towards the lower node index
    (the pure-torch path; the compiled backends use their own order).

    Args:
        x (torch.Tensor): Node features :math:`(N, d)`.
        k (int): Number of neighbours per node (:math:`k \ge 1`).
        batch (torch.Tensor, optional): Graph id of every node :math:`(N,)`; neighbours are searched
            within each graph only. Need not be sorted. (default: :obj:`None`, one graph)
        loop (bool, optional): Count each node among its own neighbours. (default: :obj:`False`)
        backend (str, optional): ``"torch"`` (dense blocks of squared distances + a deterministic
            top-k, chunked for large graphs), ``"pyg"`` (:func:`torch_geometric.nn.knn_graph`, needs
            pyg-lib), ``"cluster"`` (:func:`torch_cluster.knn_graph`), or ``"auto"``: ``"torch"``
            when every graph's :math:`n^2` distance block fits ``dense_budget`` (re-ID batches and
            re-ranking graphs always do; at 66 x 2048 cdist-style blocks took 0.3 ms against 5 ms for
            torch-cluster in the team's measurement), otherwise
            torch-cluster or pyg-lib when installed, otherwise the chunked ``"torch"`` path.
            (default: :obj:`"auto"`)
        clamp (bool, optional): A graph with :math:`n < k + 1` nodes (:math:`n < k` with ``loop``)
            raises a :class:`ValueError` unless ``clamp=True``, which gives each of its nodes
            :math:`\min(k, n - 1)` (resp. :math:`\min(k, n)`) neighbours instead. (default: :obj:`False`)
        dense_budget (int, optional): Largest number of distance entries the pure-torch path
            computes at once. (default: :obj:`2**24`)

    Returns:
        torch.Tensor: ``edge_index`` :math:`(2, E)`, ``edge_index[0]`` = neighbour :math:`j`,
        ``edge_index[1]`` = centre :math:`i`. The pure-torch path orders edges by target, then source
        index; compare edge *sets* across backends, not orders.
    """
    where = "knn_edges"
    if backend not in _BACKENDS:
        raise ValueError(f"{where}: unknown backend {backend!r}; valid: {', '.join(_BACKENDS)}")
    if not isinstance(x, Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{where}: x must be a 2-D tensor (num_nodes, channels), got {shape}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{where}: k must be a positive integer, got k={k!r}")
    num_nodes = x.size(0)
    batch = _check_batch(batch, num_nodes, where)
    if num_nodes == 0:
        return torch.empty(2, 0, dtype=torch.long, device=x.device)
    if not x.is_floating_point():
        x = x.float()
    x = x.detach()  # the graph is discrete: no gradient flows through it
    # A non-finite squared norm means NaN/inf features (or norms overflowing the dtype), for
    # which distances are undefined.
    sq = _sq_norms(x)
    if not bool(torch.isfinite(sq).all()):
        raise ValueError(f"{where}: x holds NaN or infinite values (or rows whose squared norm "
                         f"overflows {x.dtype}); Euclidean distances are undefined")

    perm, counts, ptr = _group(batch, num_nodes, x.device)
    # Neighbours available per graph: n - 1 without self loops, n with them.
    avail = counts if loop else (counts - 1).clamp(min=0)
    nonempty = counts > 0
    short = nonempty & (avail < k)
    if bool(short.any()):
        if not clamp:
            g = int(short.nonzero()[0])
            n = int(counts[g])
            need = f"k={k}" if loop else f"k+1={k + 1} (k={k} neighbours plus the node itself)"
            graph = "the graph" if batch is None else f"graph {g} of the batch"
            raise ValueError(
                f"{where}: {graph} has N={n} nodes, fewer than {need}; use a smaller k, "
                f"or pass clamp=True to give each node min(k, N{'' if loop else ' - 1'}) neighbours"
            )
    kk_graph = torch.minimum(avail, avail.new_full((), k))

    if backend == "auto":
        backend = _auto_backend(int(counts.max()), dense_budget)
    with torch.no_grad():
        if backend == "torch":
            return _knn_torch(x, sq, kk_graph, perm, counts, ptr, loop, dense_budget)
        xs = x if perm is None else x[perm]
        bs = None
        if batch is not None:
            bs = torch.repeat_interleave(torch.arange(counts.numel(), device=x.device), counts)
        edge_index = _knn_compiled(xs, k, bs, loop, backend, where)
        return edge_index if perm is None else perm[edge_index]


def _auto_backend(nmax: int, dense_budget: int) -> str:
    """``backend="auto"`` of :func:`knn_edges` for a largest graph of ``nmax`` nodes."""
    if nmax * nmax <= dense_budget:
        return "torch"
    if _has_torch_cluster():
        return "cluster"
    return "pyg" if _pyg_has_knn() else "torch"


def _knn_compiled(xs: Tensor, k: int, bs: Tensor | None, loop: bool, backend: str, where: str) -> Tensor:
    """pyg-lib's or torch-cluster's kNN graph of graph-contiguous nodes ``xs`` (``bs``: their graphs)."""
    if backend == "pyg":
        if not _pyg_has_knn():
            raise ImportError(f"{where}: backend='pyg' needs pyg-lib>=0.6 (torch_geometric.nn.knn_graph); "
                              f"install it or use backend='torch'")
        from torch_geometric.nn import knn_graph

        return knn_graph(xs, k, bs, loop=loop, flow="source_to_target")
    if not _has_torch_cluster():
        raise ImportError(f"{where}: backend='cluster' needs torch-cluster (pip install torch-cluster); "
                          f"or use backend='torch'")
    import torch_cluster

    return torch_cluster.knn_graph(xs, k, bs, loop=loop, flow="source_to_target")


def knn_adjacency(x: Tensor, k: int, loop: bool = False, sq_norms: Tensor | None = None) -> Tensor:
    r"""Dense kNN adjacency :math:`C` (Eq. 1) of a batch of equal-sized graphs.

    The edges of :func:`knn_edges` (same ranking scores
    :math:`\lVert x_j \rVert^2 - 2 x_i^\top x_j`, same tie rule: lower index first) as a mask,
    computed in a few whole-batch ops: what the test-time re-ranking needs for many small graphs.

    Args:
        x (torch.Tensor): Node features :math:`(B, M, d)` (or :math:`(M, d)`); must be finite.
        k (int): Neighbours per node, clipped to :math:`M - 1`.
        loop (bool, optional): Count a node among its own :math:`k` neighbours.
            (default: :obj:`False`)
        sq_norms (torch.Tensor, optional): :math:`\lVert x \rVert^2` of the rows, :math:`(B, M)`,
            if already known.

    Returns:
        torch.BoolTensor: :math:`(B, M, M)` (or :math:`(M, M)`); ``[b, i, j]`` is the edge j -> i.
    """
    single = x.dim() == 2
    xb = x.detach().float().unsqueeze(0) if single else x.detach().float()
    b, m, _ = xb.shape
    eye = torch.eye(m, dtype=torch.bool, device=xb.device)
    sq = (xb * xb).sum(-1) if sq_norms is None else sq_norms.reshape(b, m)  # (B, M)
    score = torch.baddbmm(sq.unsqueeze(-2), xb, xb.transpose(-1, -2), alpha=-2.0)  # (B, M, M)
    score.masked_fill_(eye, float("-inf") if loop else float("inf"))  # self: always / never
    kmax = max(0, min(k, m - 1))
    kk = torch.full((b, m), kmax, dtype=torch.long, device=xb.device)
    adj = k_smallest_mask(score, kk, kmax)  # (B, M, M), the tie rule of knn_edges
    return adj[0] if single else adj


def full_edges(
    num_nodes: int,
    batch: Tensor | None = None,
    loop: bool = False,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""Edges of the fully-connected graph (the IR* row of Table 1): every :math:`j \rightarrow i`
    with :math:`i, j` in the same graph, :math:`j \ne i` unless ``loop=True``.

    Args:
        num_nodes (int): Number of nodes :math:`N`.
        batch (torch.Tensor, optional): Graph id of every node :math:`(N,)`; each graph is complete
            on its own, no edge crosses graphs. (default: :obj:`None`, one graph)
        loop (bool, optional): Include the self loops :math:`i \rightarrow i`. (default: :obj:`False`)
        device (torch.device, optional): Device of the result (default: that of ``batch``, else CPU).

    Returns:
        torch.Tensor: ``edge_index`` :math:`(2, \sum_g n_g^2)` (minus :math:`N` without loops),
        ordered by target, then source.
    """
    where = "full_edges"
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 0:
        raise ValueError(f"{where}: num_nodes must be a non-negative integer, got {num_nodes!r}")
    if device is None:
        device = batch.device if isinstance(batch, Tensor) else torch.device("cpu")
    batch = _check_batch(batch, num_nodes, where)
    if batch is not None:
        batch = batch.to(device)
    perm, counts, ptr = _group(batch, num_nodes, device)
    if num_nodes == 0:
        return torch.empty(2, 0, dtype=torch.long, device=device)
    graph = (
        torch.zeros(num_nodes, dtype=torch.long, device=device)
        if batch is None
        else torch.repeat_interleave(torch.arange(counts.numel(), device=device), counts)
    )
    deg = counts[graph]  # sources per target = size of its graph
    dst = torch.repeat_interleave(torch.arange(num_nodes, device=device), deg)
    first_edge = torch.repeat_interleave(deg.cumsum(0) - deg, deg)
    src = ptr[graph][dst] + (torch.arange(dst.numel(), device=device) - first_edge)
    if not loop:
        keep = src != dst
        src, dst = src[keep], dst[keep]
    if perm is not None:
        src, dst = perm[src], perm[dst]
    return torch.stack([src, dst])


def individual_graph(
    x: Tensor,
    k: int,
    batch: Tensor | None = None,
    full: bool = False,
    y: Tensor | None = None,
    loop: bool = False,
    clamp: bool = False,
    backend: str = "auto",
) -> Data:
    r"""The graph of the individual relationship module (Eq. 1) as a :class:`~torch_geometric.data.Data`.

    Args:
        x (torch.Tensor): Image features :math:`(N, d)`, the nodes :math:`v_n`.
        k (int): Neighbours per node of the locally-connected graph.
        batch (torch.Tensor, optional): Graph id per node. (default: :obj:`None`)
        full (bool, optional): Fully-connected instead of kNN (IR*). (default: :obj:`False`)
        y (torch.Tensor, optional): Node labels, stored as ``data.y``. (default: :obj:`None`)
        loop, clamp, backend: As in :func:`knn_edges` (``loop`` also applies to ``full``).

    Returns:
        Data: ``x``, ``edge_index`` (and ``y``, ``batch`` when given).
    """
    if full:
        edge_index = full_edges(x.size(0), batch=batch, loop=loop, device=x.device)
    else:
        edge_index = knn_edges(x, k, batch=batch, loop=loop, backend=backend, clamp=clamp)
    data = Data(x=x, edge_index=edge_index)
    if y is not None:
        data.y = y
    if batch is not None:
        data.batch = batch
    return data


def pair_mask(f: Tensor, num_edges: int | None) -> Tensor | None:
    r"""Which difference nodes feed which in the pair graphs when they are not complete (Fig. 4).

    ``mask[i, j]`` is ``True`` when :math:`j` is among the ``num_edges`` nearest images of
    :math:`i` (Euclidean, :math:`i` itself included and counted). Because
    :math:`\lVert u_{n,i} - u_{n,j} \rVert = \lVert f_i - f_j \rVert`, nearest difference nodes are
    the same in every graph :math:`n`, so one :math:`(N, N)` mask serves all :math:`N` graphs.

    Args:
        f (torch.Tensor): Image features :math:`(N, d)` or a batch :math:`(B, N, d)`.
        num_edges (int, optional): Incoming edges per difference node, self loop included.
            :obj:`None` or :math:`\ge N` means the complete graph (the paper's setting).

    Returns:
        torch.BoolTensor or None: :math:`(N, N)` (or :math:`(B, N, N)`); :obj:`None` for complete.
    """
    where = "pair_mask"
    if not isinstance(f, Tensor) or f.dim() not in (2, 3):
        shape = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
        raise ValueError(f"{where}: f must be (N, d) or (B, N, d), got {shape}")
    if num_edges is None:
        return None
    if isinstance(num_edges, bool) or not isinstance(num_edges, int) or num_edges < 1:
        raise ValueError(f"{where}: num_edges must be a positive integer or None, got {num_edges!r}")
    n = f.size(-2)
    if num_edges >= n:
        return None
    batched = f.dim() == 3
    ff = f.reshape(-1, f.size(-1))
    bvec = None
    if batched:
        bvec = torch.arange(f.size(0), device=f.device).repeat_interleave(n)
    src, dst = knn_edges(ff, num_edges, batch=bvec, loop=True)
    mask = torch.zeros(ff.size(0), n, dtype=torch.bool, device=f.device)
    mask[dst, src % n] = True
    return mask.view(f.size(0), n, n) if batched else mask


class HybridGraph(HeteroData):
    r"""The :class:`~torch_geometric.data.HeteroData` of :func:`hybrid_graph`.

    It differs from a plain :class:`HeteroData` only in how it batches: the pair-node attributes
    ``n`` and ``i`` are image-node indices, so :class:`torch_geometric.loader.DataLoader` shifts
    them by the number of image nodes of the graphs before (as it shifts ``edge_index``), and they
    keep pointing at the right rows of the batch's ``data["image"]``.
    """

    def __inc__(self, key: str, value, store=None, *args, **kwargs):
        if key in ("n", "i") and isinstance(store, NodeStorage) and store._key == "pair":
            return self["image"].num_nodes
        return super().__inc__(key, value, store, *args, **kwargs)


def _check_rows(rows: Tensor | None, n: int, device, where: str) -> Tensor:
    if rows is None:
        return torch.arange(n, device=device)
    if (not isinstance(rows, Tensor) or rows.dim() != 1 or rows.dtype != torch.long
            or (rows.numel() > 0 and (int(rows.min()) < 0 or int(rows.max()) >= n))):
        raise ValueError(f"{where}: rows must be a 1-D LongTensor of image indices in [0, {n}), got {rows!r}")
    return rows.to(device)


def _add_pair_part(data: HeteroData, f: Tensor, num_edges: int | None, rows: Tensor) -> None:
    """The pair nodes of the graphs ``rows`` of Eq. 6 and their intra / left / right edges."""
    n, device = f.size(0), f.device
    r = rows.numel()
    ar = torch.arange(n, device=device)
    pn = rows.repeat_interleave(n)  # graph n of pair node r*N + i
    pi = ar.repeat(r)  # image i of pair node r*N + i
    data["pair"].x = f[pn] - f[pi]  # (R N, d): u_{n,i} = f_n - f_i
    data["pair"].n = pn
    data["pair"].i = pi

    mask = pair_mask(f, num_edges)
    if mask is None:
        tgt_i = ar.repeat_interleave(n)  # (N^2,) base pairs (i, j) of one graph
        src_j = ar.repeat(n)
    else:
        # ||u_{n,i} - u_{n,j}|| = ||f_i - f_j||: the same neighbour pattern in every graph
        tgt_i, src_j = mask.nonzero(as_tuple=True)
    offset = (torch.arange(r, device=device) * n).repeat_interleave(tgt_i.numel())
    data[INTRA].edge_index = torch.stack([src_j.repeat(r) + offset, tgt_i.repeat(r) + offset])
    pair_ids = torch.arange(r * n, device=device)
    data[LEFT].edge_index = torch.stack([pn, pair_ids])
    data[RIGHT].edge_index = torch.stack([pi, pair_ids])


def hybrid_graph(
    f: Tensor,
    k: int,
    *,
    full: bool = False,
    loop: bool = False,
    pr_edges: int | None = None,
    rows: Tensor | None = None,
    y: Tensor | None = None,
    clamp: bool = False,
    backend: str = "auto",
) -> HybridGraph:
    r"""The hybrid graph of one batch of :math:`N` images (Fig. 2) as one
    :class:`~torch_geometric.data.HeteroData`: the individual graph of Eq. 1, the :math:`N`
    complete graphs over difference nodes of Eq. 6, and the inter-graph links of Eq. 7-9 between
    them. :class:`hrnet_pyg.hybrid.HybridRelationBlock` runs the whole relation step on it.

    Node types:

    * ``"image"``: ``x`` = :math:`\mathbf{f}_n` :math:`(N, d)` (and ``y`` when given).
    * ``"pair"``: the difference nodes of the graphs :math:`n` in ``rows`` (all :math:`N` by
      default); node :math:`rN + i` is :math:`\mathbf{u}_{n,i} = \mathbf{f}_n - \mathbf{f}_i`
      with :math:`n` = ``rows[r]`` (``x``, :math:`(RN, d)`), and ``n``, ``i`` hold the two image
      indices (they batch as image indices, see :class:`HybridGraph`). :math:`\mathbf{u}_{n,n} =
      \mathbf{0}` is a node of graph :math:`n`: Eq. 6 sums over :math:`j = 1..N`.

    Edge types (source -> target, PyG's ``source_to_target`` flow):

    * ``("image", "knn", "image")``: :math:`\mathbf{C}` of Eq. 1, :math:`v_j \rightarrow v_i`
      for the :math:`k` nearest :math:`j` of :math:`i` (:func:`knn_edges`, the edges
      :class:`~hrnet_pyg.model.HRNetModule` trains on), or every :math:`j` with ``full=True`` (IR*).
    * ``("pair", "intra", "pair")``: inside graph :math:`n`, :math:`u_{n,j} \rightarrow u_{n,i}`
      for all :math:`i, j` including :math:`j = i` (:math:`RN^2` edges), or only the
      ``pr_edges`` nearest :math:`j` of each :math:`i` (:func:`pair_mask`, Fig. 4).
    * ``("image", "left", "pair")``: :math:`v_n \rightarrow u_{n,i}` (the :math:`q^n_{i,n}` link).
    * ``("image", "right", "pair")``: :math:`v_i \rightarrow u_{n,i}` (the :math:`q^n_{i,i}` link).

    The pair part materialises :math:`R N d` features and :math:`R N^2` edges: this is the general,
    readable message-passing representation. :class:`~hrnet_pyg.model.HRNetModule` trains on the dense
    factorised path (:meth:`~hrnet_pyg.nn.PairwiseRelationConv.forward_dense`) instead, which
    gives the same result.

    Args:
        f (torch.Tensor): Image features :math:`(N, d)`.
        k (int): Neighbours per image node of the individual graph (``HRNetConfig.k``).
        full (bool, optional): Fully-connected individual graph instead of kNN (the IR* row).
            (default: :obj:`False`)
        loop (bool, optional): Count a node among its own :math:`k` neighbours
            (``HRNetConfig.ir_self_in_knn``); with ``full``, add self loops. (default: :obj:`False`)
        pr_edges (int, optional): Incoming edges per difference node, itself included
            (:meth:`RelationHead.pr_edges_for(N) <hrnet_pyg.head.RelationHead.pr_edges_for>`); :obj:`None` or
            :math:`\ge N`: complete graphs. (default: :obj:`None`)
        rows (torch.LongTensor, optional): The graphs :math:`n` to build, :math:`(R,)` (e.g. only
            the query's graph at test time). (default: all :math:`N`)
        y (torch.Tensor, optional): Identity labels :math:`(N,)`, stored as ``data["image"].y``.
            (default: :obj:`None`)
        clamp, backend: As in :func:`knn_edges`.

    Returns:
        HybridGraph: the graph; ``torch_geometric.loader.DataLoader`` batches several of them.
    """
    where = "hybrid_graph"
    if not isinstance(f, Tensor) or f.dim() != 2:
        shape = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
        raise ValueError(f"{where}: f must be a 2-D tensor (N, d), got {shape}")
    if y is not None and (not isinstance(y, Tensor) or y.shape != f.shape[:1]):
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"{where}: y must have one label per image ({f.size(0)},), got {shape}")
    rows = _check_rows(rows, f.size(0), f.device, where)
    if full:
        knn = full_edges(f.size(0), loop=loop, device=f.device)
    else:
        knn = knn_edges(f, k, loop=loop, backend=backend, clamp=clamp)
    data = HybridGraph()
    data["image"].x = f
    if y is not None:
        data["image"].y = y
    data[KNN].edge_index = knn
    _add_pair_part(data, f, pr_edges, rows)
    return data


__all__ = [
    "INTRA",
    "KNN",
    "LEFT",
    "RIGHT",
    "HybridGraph",
    "full_edges",
    "hybrid_graph",
    "individual_graph",
    "knn_adjacency",
    "knn_edges",
    "pair_mask",
]
