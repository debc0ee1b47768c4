"""Gallery-graph relational re-ranking (hrnet_pyg.gallery) and its blocked kNN tables
(hrnet_pyg.neighbours) against dense re-statements on small sets: the whole-set V' is the IR layer
on the explicit kNN graph and Eq. 3 written densely; the blocked kNN is the dense one (edge sets,
ties included); the inductive form is the transductive one when the queries' edges are the same."""
import pytest
import torch
import torch.nn.functional as Fn
from torch.utils._python_dispatch import TorchDispatchMode

from hrnet_pyg import gallery, neighbours
from hrnet_pyg.config import HRNetConfig
from hrnet_pyg.gallery import (
    GalleryRanking,
    attach_queries,
    gallery_rerank,
    gallery_state,
    relational_features,
    retrieval_of,
    search_state,
)
from hrnet_pyg.graphs import knn_edges
from hrnet_pyg.kreciprocal import k_reciprocal_rerank_features
from hrnet_pyg.model import HRNetModule
from hrnet_pyg.neighbours import knn_table, table_edges
from hrnet_pyg.scoring import fuse_scores

D = 8


def make_model(row: str = "HRNet", seed: int = 0, **overrides) -> HRNetModule:
    torch.manual_seed(seed)
    cfg = HRNetConfig.from_row(row, backbone=None, feat_dim=D, k=3, pretrained=False, **overrides)
    model = HRNetModule(cfg, num_classes=5)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)):  # as after training
        bn.running_mean.normal_(0.0, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.2)
    return model.eval()


def features(n: int, seed: int, d: int = D) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)).relu_()


def edge_set(edge_index: torch.Tensor) -> set:
    return set(map(tuple, edge_index.t().tolist()))


def dense_knn(x: torch.Tensor, k: int, sources: list[int], loop: bool = False, src: torch.Tensor | None = None):
    """{(j, i)}: for each row i of x its k nearest rows j of ``src`` (x itself by default) among
    ``sources``, by the full squared distance, ties by index; i itself never (always with loop)."""
    src = x if src is None else src
    d2 = ((x[:, None, :].double() - src[None, :, :].double()) ** 2).sum(-1)
    edges = set()
    for i in range(x.size(0)):
        cand = [j for j in sources if src is not x or j != i]
        chosen = sorted(cand, key=lambda j: (float(d2[i, j]), j))
        if loop and src is x and i in sources:
            chosen = [i] + [j for j in chosen if j != i]
        edges |= {(j, i) for j in chosen[:k]}
    return edges


# ---------------------------------------------------------------------------- the blocked kNN
@pytest.mark.parametrize("loop", [False, True])
def test_blocked_knn_equals_dense_knn_with_ties(loop):
    gen = torch.Generator().manual_seed(1)
    for n, k, block in ((23, 4, 5), (40, 7, 16), (17, 16, 3), (12, 2, 64)):
        x = torch.randint(0, 3, (n, 4), generator=gen).float()  # many exact ties, exact arithmetic
        x[5] = x[2]  # duplicate rows: distance 0 to another node
        table = knn_table(x, k, loop=loop, block_size=block)
        assert table.shape == (n, k)
        edges = edge_set(table_edges(table))
        assert edges == dense_knn(x, k, list(range(n)), loop=loop)
        assert edges == edge_set(knn_edges(x, k, loop=loop, backend="torch"))
        assert all((i in row) == loop for i, row in enumerate(table.tolist()))


def test_blocked_knn_nearest_first_and_sources():
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(0, 4, (30, 3), generator=gen).float()
    table = knn_table(x, 5, block_size=7)
    d2 = torch.cdist(x.double(), x.double()) ** 2
    dists = d2.gather(1, table)
    assert bool((dists[:, 1:] >= dists[:, :-1]).all())  # nearest first
    # one set, sources from row 12: every node's neighbours among rows 12.. only
    part = knn_table(x, 4, sources_from=12, block_size=5)
    assert edge_set(table_edges(part)) == dense_knn(x, 4, list(range(12, 30)))
    # two sets: targets against a separate source set
    q = torch.randint(0, 4, (9, 3), generator=gen).float()
    two = knn_table(q, 4, x, block_size=4)
    assert edge_set(table_edges(two)) == dense_knn(q, 4, list(range(30)), src=x)


def test_blocked_knn_merges_candidates_or_falls_back_to_a_topk(monkeypatch):
    """A block is folded either from its few entries at or below each target's current k-th score
    or, when some target has more than the limit of them (ties), by a top-k of the block: the same
    table as the dense kNN either way."""
    used = []
    real = neighbours._candidates

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        used.append(out is not None)
        return out

    monkeypatch.setattr(neighbours, "_candidates", spy)
    monkeypatch.setattr(neighbours, "_CANDIDATE_LIMIT", 0)  # the limit is then 4 k
    gen = torch.Generator().manual_seed(3)
    tied = torch.randint(0, 2, (40, 1), generator=gen).float()  # two distinct rows, ~20 copies each
    plain = torch.randn(40, 3, generator=gen)
    for x, k in ((tied, 1), (plain, 3), (tied, 3)):
        for loop in (False, True):
            table = knn_table(x, k, loop=loop, block_size=16)
            assert edge_set(table_edges(table)) == dense_knn(x, k, list(range(40)), loop=loop)
    assert True in used and False in used


def test_blocked_knn_errors():
    x = torch.randn(6, 3)
    for bad in (0, 6, 2.5, True):
        with pytest.raises(ValueError, match="k must be an integer in \\[1, 5\\]"):
            knn_table(x, bad)
    with pytest.raises(ValueError, match="k must be an integer in \\[1, 2\\]"):
        knn_table(x, 3, sources_from=3)
    x[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        knn_table(x, 2)
    with pytest.raises(ValueError, match="channels"):
        knn_table(torch.randn(4, 3), 2, torch.randn(5, 2))


# ---------------------------------------------------------------------------- the whole-set pass
def dense_eq3(conv, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
    """Eq. 2-3 as printed: X' = ReLU((A o C + I) X W_s), a_ij = exp mu(.) over all nodes (or over
    the neighbours with normalize="neighbors"); adj[i, j] = c_ij (edge j -> i)."""
    e = Fn.leaky_relu((x @ conv.att_dst)[:, None] + (x @ conv.att_src)[None, :], conv.negative_slope)
    if conv.normalize == "all":
        a = torch.softmax(e, dim=1) * adj
    else:
        a = torch.softmax(e.masked_fill(~adj, float("-inf")), dim=1)
    xw = x @ conv.lin.weight.T
    return torch.relu((a * adj + torch.eye(x.size(0))) @ xw)


@pytest.mark.parametrize("normalize", ["neighbors", "all"])
@pytest.mark.parametrize("loop", [False, True])
def test_whole_set_v_is_the_layer_on_the_knn_graph(normalize, loop):
    model = make_model(ir_attention_norm=normalize, ir_self_in_knn=loop)
    f = features(37, 3)
    v = relational_features(model, f, block_size=8)
    edges = knn_edges(f, 3, loop=loop)
    one = torch.zeros(37, dtype=torch.long)
    torch.testing.assert_close(v, model.ir(f, edges, batch=one), atol=1e-5, rtol=1e-5)
    adj = torch.zeros(37, 37, dtype=torch.bool)
    adj[edges[1], edges[0]] = True
    assert int(adj.sum(1).min()) == int(adj.sum(1).max()) == 3
    torch.testing.assert_close(v, dense_eq3(model.ir, f, adj), atol=1e-5, rtol=1e-5)
    # the normalisation option overrides the layer's own, the layer itself unchanged
    other = "all" if normalize == "neighbors" else "neighbors"
    v_other = relational_features(model, f, normalize=other, block_size=8)
    assert model.ir.normalize == normalize
    model.ir.normalize = other
    torch.testing.assert_close(v_other, dense_eq3(model.ir, f, adj), atol=1e-5, rtol=1e-5)


def test_two_rounds_and_sources_from_restated():
    model = make_model()
    f = features(30, 4)
    v1 = relational_features(model, f)
    v2 = relational_features(model, f, rounds=2)
    torch.testing.assert_close(v2, model.ir(v1, knn_edges(v1, 3)), atol=1e-5, rtol=1e-5)
    v2_same = relational_features(model, f, rounds=2, reuse_graph=True)
    torch.testing.assert_close(v2_same, model.ir(v1, knn_edges(f, 3)), atol=1e-5, rtol=1e-5)
    # sources from row 10: every node's neighbours among rows 10.. (a bipartite graph onto all rows)
    vs = relational_features(model, f, sources_from=10, k=4)
    edges = torch.tensor(sorted(dense_knn(f, 4, list(range(10, 30))))).t()
    ref = model.ir((f[10:], f), torch.stack([edges[0] - 10, edges[1]]))
    torch.testing.assert_close(vs, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("normalize", ["neighbors", "all"])
@pytest.mark.parametrize("rounds,reuse", [(1, False), (2, False), (2, True)])
def test_inductive_equals_transductive_with_the_same_edges(normalize, rounds, reuse):
    model = make_model()
    q, g = features(7, 5), features(25, 6)
    opts = dict(normalize=normalize, rounds=rounds, reuse_graph=reuse)
    v = relational_features(model, torch.cat([q, g]), sources_from=7, **opts)
    state = gallery_state(model, g, **opts)
    torch.testing.assert_close(state.feats, v[7:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attach_queries(model, state, q), v[:7], atol=1e-5, rtol=1e-5)
    # a query's V' depends on the gallery only: attached alone or with others, the same
    torch.testing.assert_close(attach_queries(model, state, q[3:4]), v[3:4], atol=1e-5, rtol=1e-5)
    ranking = search_state(model, state, q, top_k=10)
    ref = gallery_rerank(model, q, g, neighbours="gallery", top_k=10, progress=False, **opts)
    assert torch.equal(ranking.index, ref.index)
    torch.testing.assert_close(ranking.dist, ref.dist, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- the protocol
@pytest.mark.parametrize("opts", [dict(), dict(neighbours="gallery", rounds=2), dict(pr_top_k=6),
                                  dict(pr_top_k=6, pr_norm="none", pr_score="pr_logit", pr_weight=1.0),
                                  dict(kreciprocal=True, k1=4, k2=2)])
def test_distances_and_topk_agree(opts):
    model = make_model()
    q, g = features(6, 7), features(30, 8)
    dist = gallery_rerank(model, q, g, output="distances", progress=False, **opts)
    assert dist.shape == (6, 30) and dist.dtype == torch.float32
    top = gallery_rerank(model, q, g, top_k=9, progress=False, **opts)
    assert isinstance(top, GalleryRanking) and top.index.shape == (6, 9)
    torch.testing.assert_close(dist.gather(1, top.index), top.dist)
    assert bool((top.dist[:, 1:] >= top.dist[:, :-1]).all())
    worst_listed = top.dist[:, -1:]
    others = dist.scatter(1, top.index, float("inf"))
    assert bool((others >= worst_listed - 1e-6).all())  # nothing left out ranks above a listed item


def test_cosine_of_bn_v_and_kreciprocal_of_bn_v():
    model = make_model()
    q, g = features(5, 9), features(20, 10)
    dist = gallery_rerank(model, q, g, output="distances", progress=False)
    v = relational_features(model, torch.cat([q, g]))
    bn = model.ir_neck.bn(v)
    ref = 1.0 - Fn.normalize(bn[:5], dim=1) @ Fn.normalize(bn[5:], dim=1).T
    torch.testing.assert_close(dist, ref, atol=1e-6, rtol=1e-5)
    kr = gallery_rerank(model, q, g, kreciprocal=True, k1=5, k2=3, output="distances", progress=False)
    torch.testing.assert_close(kr, k_reciprocal_rerank_features(bn[:5], bn[5:], k1=5, k2=3, progress=False))


@pytest.mark.parametrize("row", ["HRNet", "CNN+IR+CNC"])
def test_pr_rescore_is_the_pair_graph_on_the_whole_set_v(row):
    """The PR re-score: each query graph (query + shortlist of BN(V')) through the PR layer with the
    whole-set V' as IGP's image nodes, computed by forward_dense from the graph's own rows."""
    model = make_model(row)
    q, g = features(4, 11), features(25, 12)
    if model.pr is None:
        with pytest.raises(ValueError, match="PR module"):
            gallery_rerank(model, q, g, pr_top_k=5, progress=False)
        return
    dist = gallery_rerank(model, q, g, pr_top_k=5, output="distances", progress=False)
    f = torch.cat([q, g])
    v = relational_features(model, f)
    r = retrieval_of(model, v)
    cos = r[:4] @ r[4:].T
    for i in range(4):
        top_s, top_i = cos[i].topk(5)
        idx = torch.cat([torch.tensor([i]), top_i + 4])
        u = model.pr.forward_dense(f[idx], v[idx], rows=torch.tensor([0]))[0]
        prob = torch.sigmoid(model.verifier(u[1:]))
        score = fuse_scores({"ir_bn_cosine": top_s[None], "pr_prob": prob[None]}, "ir_bn_cosine", "pr_prob",
                            "zscore", 0.25)[0]
        torch.testing.assert_close(dist[i, top_i], score.min() - score - 1.0, atol=1e-5, rtol=1e-5)
        rest = torch.ones(25, dtype=torch.bool)
        rest[top_i] = False
        torch.testing.assert_close(dist[i, rest], 1.0 - cos[i, rest])


@pytest.mark.parametrize("opts", [dict(), dict(pr_top_k=6)])
def test_ranking_in_tiles_is_the_one_product(monkeypatch, opts):
    """The ranking's products over tiles of gallery columns and blocks of queries (the CPU path of a
    gallery wider than a tile) give what one product of all queries and the whole gallery gives."""
    model = make_model()
    q, g = features(9, 21), features(40, 22)
    whole = gallery_rerank(model, q, g, output="distances", progress=False, **opts)
    whole_top = gallery_rerank(model, q, g, top_k=7, progress=False, **opts)
    monkeypatch.setattr(gallery, "_RANK_TILE", 7)  # 6 tiles, the last one narrower
    monkeypatch.setattr(gallery, "_RANK_BUDGET", 4 * 40)  # blocks of 4 queries
    torch.testing.assert_close(gallery_rerank(model, q, g, output="distances", progress=False, **opts), whole)
    top = gallery_rerank(model, q, g, top_k=7, progress=False, **opts)
    torch.testing.assert_close(top.dist, whole_top.dist)
    assert torch.equal(top.index, whole_top.index)


def test_permuting_the_gallery_permutes_the_result():
    model = make_model()
    q, g = features(5, 13), features(24, 14)
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(0))
    for opts in (dict(), dict(pr_top_k=6), dict(neighbours="gallery", rounds=2)):
        dist = gallery_rerank(model, q, g, output="distances", progress=False, **opts)
        dist_p = gallery_rerank(model, q, g[perm], output="distances", progress=False, **opts)
        torch.testing.assert_close(dist_p, dist[:, perm], atol=1e-5, rtol=1e-5)


def test_no_quadratic_tensor_is_ever_built(monkeypatch):
    class MaxNumel(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.max = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.max = max(self.max, t.numel())
            return out

    monkeypatch.setattr(gallery, "_RANK_BUDGET", 2000)
    monkeypatch.setattr(gallery, "_MESSAGE_BUDGET", 1000)
    model = make_model()
    q, g = features(40, 15), features(160, 16)
    with MaxNumel() as mode:
        top = gallery_rerank(model, q, g, top_k=5, block_size=50, progress=False)
    assert top.index.shape == (40, 5)
    assert mode.max < 40 * 160 // 2  # below Q x G = 6,400 and far below (Q + G)^2 = 40,000
    with MaxNumel() as dense:  # the monitor sees the (Q, G) matrix when it is asked for
        gallery_rerank(model, q, g, output="distances", block_size=50, progress=False)
    assert dense.max >= 40 * 160


def test_user_errors_are_one_line():
    q, g = features(3, 17), features(10, 18)
    with pytest.raises(ValueError, match="needs the IR module"):
        gallery_rerank(make_model("CNN+PR+IGP"), q, g)
    with pytest.raises(ValueError, match="fully-connected"):
        gallery_rerank(make_model("CNN+IR*"), q, g)
    model = make_model()
    for kwargs, msg in ((dict(k=0), "k \\(neighbours"), (dict(rounds=3), "rounds"),
                        (dict(neighbours="queries"), "neighbours"), (dict(output="dense"), "output"),
                        (dict(top_k=0), "top_k"), (dict(pr_top_k=-1), "pr_top_k"),
                        (dict(pr_top_k=3, kreciprocal=True), "choose one"), (dict(pr_norm="l2"), "pr_norm"),
                        (dict(normalize="size"), "normalize")):
        with pytest.raises(ValueError, match=msg):
            gallery_rerank(model, q, g, progress=False, **kwargs)
    with pytest.raises(ValueError, match="query_feats must be"):
        gallery_rerank(model, q[:, :4], g)
    bad = g.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="gallery_feats holds NaN"):
        gallery_rerank(model, q, bad)
