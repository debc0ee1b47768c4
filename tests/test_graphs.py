import itertools
import math

import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.testing import withPackage

from hrnet_pyg.graphs import (
    _has_torch_cluster,
    _pyg_has_knn,
    full_edges,
    individual_graph,
    knn_adjacency,
    knn_edges,
    pair_mask,
)


def edge_set(edge_index):
    return set(zip(edge_index[0].tolist(), edge_index[1].tolist(), strict=False))


def brute_knn(x, k, batch=None, loop=False):
    """Independent reference: for each node, sort the nodes of its graph by (distance, index)."""
    n = x.size(0)
    batch = [0] * n if batch is None else batch.tolist()
    pts = x.tolist()
    edges = set()
    for i in range(n):
        cands = [j for j in range(n) if batch[j] == batch[i] and j != i]
        cands.sort(key=lambda j: (math.dist(pts[i], pts[j]), j))
        chosen = ([i] + cands[: k - 1]) if loop else cands[:k]
        edges.update((j, i) for j in chosen)
    return edges


@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_knn_torch_matches_brute_force(k, loop):
    torch.manual_seed(k)
    x = torch.randn(12, 4, dtype=torch.float64)
    out = knn_edges(x, k, loop=loop, backend="torch")
    assert out.dtype == torch.long and out.shape == (2, 12 * k)
    assert edge_set(out) == brute_knn(x, k, loop=loop)
    # every target has exactly k incoming edges
    assert torch.bincount(out[1], minlength=12).eq(k).all()
    assert bool((out[0] == out[1]).any()) == loop


def test_knn_batch_unsorted_and_uneven_graphs():
    torch.manual_seed(0)
    x = torch.randn(17, 3)
    batch = torch.tensor([2, 0, 1, 1, 2, 0, 0, 2, 1, 0, 2, 2, 1, 0, 2, 1, 0])  # sizes 6, 5, 6
    out = knn_edges(x, 3, batch=batch)
    assert edge_set(out) == brute_knn(x, 3, batch)
    assert bool((batch[out[0]] == batch[out[1]]).all())


def test_knn_ties_are_broken_by_index():
    # Integer points on a line: many exactly equal distances, exactly representable.
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [2.0], [6.0], [5.0]])
    for k in (1, 2, 3, 4):
        assert edge_set(knn_edges(x, k, backend="torch")) == brute_knn(x, k)
    # node 2 and node 5 coincide: without loops each is the other's nearest neighbour,
    # and a node never counts itself even at distance 0
    out = knn_edges(x, 1)
    assert (5, 2) in edge_set(out) and (2, 5) in edge_set(out)
    assert edge_set(knn_edges(x, 1, loop=True)) == {(i, i) for i in range(8)}


@pytest.mark.parametrize("loop", [False, True])
def test_knn_chunked_path_matches(loop):
    torch.manual_seed(1)
    x = torch.randn(23, 5, dtype=torch.float64)
    batch = torch.tensor([0] * 15 + [1] * 8)
    ref = brute_knn(x, 4, batch, loop=loop)
    # budget below 15^2 forces the per-graph row-chunked path (chunks of 2 rows)
    small = knn_edges(x, 4, batch=batch, loop=loop, backend="torch", dense_budget=30)
    # budget of one 15x15 block per group forces several groups in the padded path
    grouped = knn_edges(x, 4, batch=batch, loop=loop, backend="torch", dense_budget=15 * 15)
    auto = knn_edges(x, 4, batch=batch, loop=loop)
    assert edge_set(small) == edge_set(grouped) == edge_set(auto) == ref


def test_knn_many_graphs_vectorised_groups():
    torch.manual_seed(2)
    x = torch.randn(40 * 7, 6)
    batch = torch.arange(40).repeat_interleave(7)
    out = knn_edges(x, 2, batch=batch, dense_budget=49 * 3)  # 14 groups of 3 graphs
    assert edge_set(out) == brute_knn(x, 2, batch)


def test_knn_no_gradient_and_dtypes():
    x = torch.randn(9, 3, requires_grad=True)
    out = knn_edges(x, 2)
    assert not out.requires_grad
    assert edge_set(knn_edges(x.detach().double(), 2)) == edge_set(out)


@withPackage("torch_cluster")
@pytest.mark.parametrize("loop", [False, True])
def test_knn_cluster_backend_identical_edges(loop):
    torch.manual_seed(3)
    x = torch.randn(30, 8)
    batch = torch.tensor([0] * 14 + [1] * 16)
    ref = edge_set(knn_edges(x, 5, batch=batch, loop=loop, backend="torch"))
    assert edge_set(knn_edges(x, 5, batch=batch, loop=loop, backend="cluster")) == ref
    shuffled = torch.randperm(30)
    out = knn_edges(x[shuffled], 5, batch=batch[shuffled], loop=loop, backend="cluster")
    assert {(int(shuffled[j]), int(shuffled[i])) for j, i in edge_set(out)} == ref


@pytest.mark.skipif(not _pyg_has_knn(), reason="PyG knn_graph needs pyg-lib>=0.6")
def test_knn_pyg_backend_identical_edges():
    torch.manual_seed(4)
    x = torch.randn(30, 8)
    batch = torch.tensor([0] * 14 + [1] * 16)
    ref = edge_set(knn_edges(x, 5, batch=batch, backend="torch"))
    assert edge_set(knn_edges(x, 5, batch=batch, backend="pyg")) == ref


@pytest.mark.skipif(_has_torch_cluster(), reason="torch-cluster is installed")
def test_knn_missing_cluster_backend_says_so():
    with pytest.raises(ImportError, match="torch-cluster"):
        knn_edges(torch.randn(5, 2), 2, backend="cluster")


@pytest.mark.skipif(_pyg_has_knn(), reason="pyg-lib knn is installed")
def test_knn_missing_pyg_backend_says_so():
    with pytest.raises(ImportError, match="pyg-lib"):
        knn_edges(torch.randn(5, 2), 2, backend="pyg")


def test_knn_small_graph_error_and_clamp():
    x = torch.randn(8, 3)
    batch = torch.tensor([0] * 5 + [1] * 3)
    with pytest.raises(ValueError, match=r"graph 1 of the batch has N=3 nodes.*k\+1=4"):
        knn_edges(x, 3, batch=batch)
    out = knn_edges(x, 3, batch=batch, clamp=True)
    deg = torch.bincount(out[1], minlength=8)
    assert deg.tolist() == [3] * 5 + [2] * 3  # min(k, n - 1) per graph
    assert edge_set(out) == brute_knn(x[:5], 3) | {(j + 5, i + 5) for j, i in brute_knn(x[5:], 2)}
    # with loops a graph needs only k nodes
    assert knn_edges(x[:3], 3, loop=True).size(1) == 9
    with pytest.raises(ValueError, match="N=3 nodes, fewer than k=4"):
        knn_edges(x[:3], 4, loop=True)
    # a single node: no neighbour exists
    with pytest.raises(ValueError, match="N=1"):
        knn_edges(x[:1], 1)
    assert knn_edges(x[:1], 1, clamp=True).shape == (2, 0)


def test_knn_bad_input():
    x = torch.randn(6, 2)
    with pytest.raises(ValueError, match="k must be a positive integer, got k=0"):
        knn_edges(x, 0)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        knn_edges(x, True)
    with pytest.raises(ValueError, match="x must be a 2-D tensor"):
        knn_edges(x[0], 2)
    with pytest.raises(ValueError, match="unknown backend 'faiss'"):
        knn_edges(x, 2, backend="faiss")
    with pytest.raises(ValueError, match="batch must be a 1-D"):
        knn_edges(x, 2, batch=torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        knn_edges(torch.full((6, 2), float("nan")), 2)
    assert knn_edges(x[:0], 2).shape == (2, 0)


def test_full_edges():
    out = full_edges(4)
    assert edge_set(out) == {(j, i) for i in range(4) for j in range(4) if i != j}
    assert edge_set(full_edges(4, loop=True)) == set(itertools.product(range(4), range(4)))
    batch = torch.tensor([1, 0, 1, 1, 0])
    out = full_edges(5, batch=batch)
    ref = {(j, i) for i in range(5) for j in range(5) if i != j and batch[i] == batch[j]}
    assert edge_set(out) == ref and out.size(1) == len(ref)
    assert full_edges(0).shape == (2, 0)
    assert full_edges(1).shape == (2, 0)
    with pytest.raises(ValueError, match="num_nodes"):
        full_edges(-1)
    with pytest.raises(ValueError, match="one entry per node"):
        full_edges(3, batch=batch)


def test_individual_graph():
    torch.manual_seed(5)
    x = torch.randn(10, 4)
    y = torch.arange(10) // 2
    data = individual_graph(x, 3, y=y)
    assert isinstance(data, Data)
    assert data.num_nodes == 10 and torch.equal(data.y, y) and data.x is x
    assert edge_set(data.edge_index) == brute_knn(x, 3)
    full = individual_graph(x, 3, full=True)
    assert full.edge_index.size(1) == 90
    batch = torch.tensor([0] * 5 + [1] * 5)
    data = individual_graph(x, 2, batch=batch)
    assert torch.equal(data.batch, batch)
    assert edge_set(data.edge_index) == brute_knn(x, 2, batch)


def test_pair_mask():
    torch.manual_seed(6)
    f = torch.randn(7, 5, dtype=torch.float64)
    mask = pair_mask(f, 3)
    assert mask.dtype == torch.bool and mask.shape == (7, 7)
    ref = torch.zeros(7, 7, dtype=torch.bool)
    for j, i in brute_knn(f, 3, loop=True):
        ref[i, j] = True
    assert torch.equal(mask, ref)
    assert mask.diagonal().all() and mask.sum(1).eq(3).all()
    assert pair_mask(f, None) is None and pair_mask(f, 7) is None and pair_mask(f, 70) is None
    fb = torch.randn(3, 7, 5)
    mb = pair_mask(fb, 2)
    assert mb.shape == (3, 7, 7)
    for b in range(3):
        assert torch.equal(mb[b], pair_mask(fb[b], 2))
    with pytest.raises(ValueError, match="num_edges must be a positive integer"):
        pair_mask(f, 0)
    with pytest.raises(ValueError, match=r"f must be \(N, d\)"):
        pair_mask(f[0], 2)


def test_sq_norms_chunked_and_wide_features():
    from hrnet_pyg.graphs import _sq_norms

    torch.manual_seed(8)
    x = torch.randn(200, 4096, dtype=torch.float64)  # 64-row chunks
    torch.testing.assert_close(_sq_norms(x), (x * x).sum(-1))
    # wide features through the whole torch path, against a float64 cdist + stable sort
    x = torch.randn(150, 2048, dtype=torch.float64)
    order = torch.cdist(x, x).fill_diagonal_(float("inf")).argsort(dim=1, stable=True)[:, :5]
    ref = {(int(j), i) for i in range(150) for j in order[i]}
    assert edge_set(knn_edges(x, 5)) == ref


def test_knn_adjacency_equals_knn_edges_on_a_batch_of_graphs():
    torch.manual_seed(7)
    x = torch.randn(3, 9, 5)
    x[1, 4] = x[1, 2]  # an exact tie: lower index first in both
    for loop in (False, True):
        adj = knn_adjacency(x, 3, loop=loop)
        batch = torch.arange(3).repeat_interleave(9)
        src, dst = knn_edges(x.reshape(27, 5), 3, batch=batch, loop=loop)
        ref = torch.zeros(3, 9, 9, dtype=torch.bool)
        ref[dst // 9, dst % 9, src % 9] = True
        assert torch.equal(adj, ref)
        assert torch.equal(knn_adjacency(x[0], 3, loop=loop), ref[0])


def test_knn_padded_path_ties_and_an_empty_graph_id():
    # Uneven graphs (padded blocks), integer features (exact ties) and graph id 1 unused.
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 3, (19, 2), generator=g).float()
    batch = torch.tensor([0] * 7 + [2] * 4 + [3] * 8)
    for loop in (False, True):
        out = knn_edges(x, 3, batch=batch, loop=loop, backend="torch")
        assert edge_set(out) == brute_knn(x, 3, batch, loop=loop)


def test_knn_adjacency_ties_clipping_and_single_nodes():
    g = torch.Generator().manual_seed(4)
    x = torch.randint(0, 3, (4, 6, 2), generator=g).float()  # many exactly equal distances
    for k, loop in ((2, False), (2, True), (9, False)):  # k = 9 is clipped to M - 1 = 5
        adj = knn_adjacency(x, k, loop=loop)
        for b in range(4):
            kk = min(k, 5)
            ref = brute_knn(x[b], kk, loop=loop)
            assert {(int(j), int(i)) for i, j in adj[b].nonzero().tolist()} == ref
    assert not knn_adjacency(torch.randn(3, 1, 4), 2).any()  # one node: no neighbour
    assert knn_adjacency(torch.randn(0, 5, 4), 2).shape == (0, 5, 5)
