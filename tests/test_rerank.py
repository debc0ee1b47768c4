"""Fast relational re-ranking (per-image projections, dense batched graphs) against a plain
per-query reference: shortlist by cosine, kNN edges by a brute-force loop, the IR layer through
message passing, the PR layer through message passing on the pair part of ``hybrid_graph``."""
import pytest
import torch
import torch.nn.functional as Fn

from hrnet_pyg.config import HRNetConfig
from hrnet_pyg.graphs import INTRA, LEFT, RIGHT, hybrid_graph, knn_edges
from hrnet_pyg.model import HRNetModule
from hrnet_pyg.protocol import RerankConfig
from hrnet_pyg.rerank import relational_rerank
from hrnet_pyg.scoring import fuse_scores, project_images, relational_scores, score_query_graphs, similarity_terms

D = 16


def make_model(row: str, seed: int = 0, rerank: dict | None = None, **overrides) -> HRNetModule:
    """A model of ``row`` with ``overrides``; it carries the test protocol ``RerankConfig(**rerank)``."""
    torch.manual_seed(seed)
    cfg = HRNetConfig.from_row(row, backbone=None, feat_dim=D, k=3, pretrained=False, **overrides)
    model = HRNetModule(cfg, num_classes=5, rerank_config=RerankConfig(**(rerank or {})))
    # Non-trivial BatchNorm statistics (BNNeck and verifier), as after training.
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)):
        bn.running_mean.normal_(0.0, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.2)
    return model.eval()


def brute_force_knn(f: torch.Tensor, k: int, loop: bool, full: bool) -> torch.Tensor:
    """edge_index of C (Eq. 1): for each i its k nearest j (Euclidean), plain loops."""
    m = f.size(0)
    src, dst = [], []
    for i in range(m):
        cand = [j for j in range(m) if j != i or loop]
        if not full:
            cand = sorted(cand, key=lambda j: float(((f[i] - f[j]) ** 2).sum()))[:k]
        for j in cand:
            src.append(j)
            dst.append(i)
    return torch.tensor([src, dst], dtype=torch.long)


def reference_normalise(s: torch.Tensor, norm: str) -> torch.Tensor:
    """Normalisation of one query's shortlist scores (K,), written plainly."""
    if norm == "none":
        return s
    k = s.numel()
    if norm == "zscore":
        mean = sum(float(x) for x in s) / k
        std = max((sum((float(x) - mean) ** 2 for x in s) / k) ** 0.5, 1e-12)
        return torch.tensor([(float(x) - mean) / std for x in s])
    order = sorted(range(k), key=lambda j: (-float(s[j]), j))  # best first, ties by position
    out = torch.empty(k)
    for rank, j in enumerate(order):
        out[j] = 1.0 - rank / k
    return out


def reference_graph_scores(model: HRNetModule, f: torch.Tensor) -> torch.Tensor:
    """Score of node 0 (query) against nodes 1..M-1 of one graph f (M, d), written plainly, under
    the model's test protocol."""
    cfg, protocol = model.config, model.rerank_config
    m = f.size(0)
    if model.ir is None and model.pr is None:
        r = Fn.normalize(model.bnneck.bn(f), dim=1)
        return r[1:] @ r[0]
    score = torch.zeros(m - 1)
    v = f
    if model.ir is not None:
        edges = brute_force_knn(f, min(cfg.k, m - 1), cfg.ir_self_in_knn, cfg.ir_graph == "full")
        v = model.ir(f, edges)  # message passing; one graph: Eq. 2 denominator over its M nodes
        w = model.ir_neck.bn(v) if protocol.ir_score == "ir_bn_cosine" else v
        ir = torch.stack([Fn.cosine_similarity(w[0], w[i], dim=0) for i in range(1, m)])
        score = score + reference_normalise(ir, protocol.norm)
    if model.pr is not None:
        edges = cfg.pr_edges
        if edges is not None and cfg.pr_edges_relative:  # the same share of a P x K graph
            edges = max(1, min(m, round(edges * m / (cfg.num_identities * cfg.num_instances))))
        data = hybrid_graph(f, 1, full=True, pr_edges=edges)  # its pair part: the M pair graphs
        igp = dict(x_image=v, left_index=data[LEFT].edge_index, right_index=data[RIGHT].edge_index)
        u = model.pr(data["pair"].x, data[INTRA].edge_index, **(igp if cfg.use_igp else {}))
        u = u.view(m, m, -1)  # row n*M + i is u'_{n,i}
        logit = model.verifier(u[0, 1:])  # graph n = the query
        pr = logit if protocol.pr_score == "pr_logit" else torch.sigmoid(logit)
        weight = protocol.pr_weight if model.ir is not None else 1.0  # one module: its own order
        score = score + weight * reference_normalise(pr, protocol.norm)
    return score


def reference_rerank(model: HRNetModule, qf: torch.Tensor, gf: torch.Tensor, top_k: int) -> torch.Tensor:
    qb = Fn.normalize(model.bnneck.bn(qf), dim=1)
    gb = Fn.normalize(model.bnneck.bn(gf), dim=1)
    k = min(top_k, gf.size(0))
    dist = torch.empty(qf.size(0), gf.size(0))
    for q in range(qf.size(0)):
        cos = gb @ qb[q]
        short = sorted(range(gf.size(0)), key=lambda j: -float(cos[j]))[:k]
        dist[q] = 1.0 - cos  # items outside the shortlist keep cosine order
        scores = reference_graph_scores(model, torch.cat([qf[q : q + 1], gf[short]]))
        lowest = float(scores.min())
        for a, j in enumerate(short):  # below every cosine distance, best score first
            dist[q, j] = -1.0 - (float(scores[a]) - lowest)
    return dist


def features(num: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num, D, generator=g).relu_() + 0.1 * torch.rand(num, D, generator=g)


VARIANTS = [
    ("HRNet", {}),
    ("CNN+IR", {}),
    ("CNN+PR+IGP", {}),
    ("CNN+PR", {}),
    ("CNN", {}),
    ("CNN+IR*", {}),
    ("HRNet", {"ir_attention_norm": "neighbors"}),
    ("HRNet", {"ir_self_in_knn": True}),
    ("HRNet", {"pr_edges": 40}),
    ("HRNet", {"pr_edges": 4, "pr_edges_relative": False}),
    ("CNN+PR+IGP", {"pr_edges": 3, "pr_edges_relative": False}),
    ("HRNet", {"ir_attention_norm": "all"}),
    ("HRNet", {"rerank": dict(norm="zscore")}),
    ("HRNet", {"rerank": dict(norm="rank", ir_score="ir_bn_cosine", pr_score="pr_logit")}),
    ("CNN+IR+CNC", {"rerank": dict(norm="zscore", ir_score="ir_bn_cosine")}),
    ("CNN+PR+IGP", {"rerank": dict(norm="rank", pr_score="pr_logit")}),
    ("HRNet", {"rerank": dict(pr_weight=1.0)}),
    ("HRNet", {"rerank": dict(pr_weight=0.0)}),
    ("HRNet", {"rerank": dict(pr_weight=2.5, norm="rank")}),
    ("CNN+PR+IGP", {"rerank": dict(pr_weight=0.0)}),
    ("HRNet", {"rerank": RerankConfig.paper_literal().to_dict()}),
    ("CNN+IR", {"rerank": RerankConfig.paper_literal().to_dict()}),
]


@pytest.mark.parametrize("row,overrides", VARIANTS)
@pytest.mark.parametrize("num_g,top_k", [(30, 8), (6, 10)])  # second: gallery smaller than top_k
def test_fast_rerank_matches_per_query_reference(row, overrides, num_g, top_k):
    model = make_model(row, **overrides)
    qf, gf = features(5, seed=1), features(num_g, seed=2)
    with torch.no_grad():
        ref = reference_rerank(model, qf, gf, top_k)
    protocol = model.rerank_config.replace(shortlist=top_k)
    fast = relational_rerank(model, qf, gf, protocol, queries_per_pass=2, device="cpu", progress=False)
    assert fast.shape == (5, num_g) and fast.dtype == torch.float32
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)
    # The protocol passed in, to a model that carries another, ranks exactly as the model carrying it.
    other = make_model(row, **{k: v for k, v in overrides.items() if k != "rerank"},
                       rerank=dict(norm="rank", pr_weight=3.0, shortlist=2))
    assert other.rerank_config != protocol
    explicit = relational_rerank(other, qf, gf, protocol, queries_per_pass=2, device="cpu", progress=False)
    assert torch.equal(explicit, fast)
    # The same ordering: re-scored shortlist first, then the rest by cosine (the reference's
    # distances, read in the fast ranking's order, never decrease; ties may come in either order).
    in_fast_order = ref.gather(1, fast.argsort(dim=1, stable=True))
    assert bool((in_fast_order.diff(dim=1) >= -1e-6).all())


@pytest.mark.parametrize("row,overrides", [("HRNet", {}), ("CNN+PR+IGP", {}), ("CNN", {}),
                                           ("HRNet", {"rerank": dict(norm="none")})])
def test_score_query_graphs_match_reference(row, overrides):
    model = make_model(row, seed=3, **overrides)
    graphs = features(3 * 7, seed=4).view(3, 7, D)
    with torch.no_grad():
        ref = torch.stack([reference_graph_scores(model, g) for g in graphs])
    torch.testing.assert_close(score_query_graphs(model, graphs), ref, atol=1e-5, rtol=0)


def test_result_does_not_depend_on_queries_per_pass():
    model = make_model("HRNet", seed=5)
    qf, gf = features(7, seed=6), features(25, seed=7)
    runs = [relational_rerank(model, qf, gf, RerankConfig(shortlist=6), queries_per_pass=b, device="cpu",
                              progress=False)
            for b in (1, 3, 64)]
    for r in runs[1:]:
        torch.testing.assert_close(r, runs[0], atol=1e-6, rtol=0)


def test_rerank_errors_are_specific():
    model = make_model("HRNet")
    with pytest.raises(ValueError, match="same d"):
        relational_rerank(model, torch.randn(2, D), torch.randn(4, D + 1), progress=False)
    with pytest.raises(ValueError, match="rerank.shortlist: must be at least 1, got 0"):
        relational_rerank(model, torch.randn(2, D), torch.randn(4, D), RerankConfig(shortlist=0), progress=False)
    with pytest.raises(TypeError, match="rerank_config must be a RerankConfig"):
        relational_rerank(model, torch.randn(2, D), torch.randn(4, D), {"shortlist": 3}, progress=False)
    with pytest.raises(ValueError, match="empty"):
        relational_rerank(model, torch.randn(2, D), torch.randn(0, D), progress=False)
    with pytest.raises(ValueError, match="queries_per_pass"):
        relational_rerank(model, torch.randn(2, D), torch.randn(4, D), queries_per_pass=0, progress=False)
    with pytest.raises(ValueError, match=r"\(B, M, 16\)"):
        score_query_graphs(model, torch.randn(2, 1, D))
    parts = {"ir_cosine": torch.randn(2, 5), "pr_prob": torch.rand(2, 5)}
    with pytest.raises(ValueError, match="rerank.pr_weight: must be at least 0"):
        fuse_scores(parts, pr_weight=-0.5)
    with pytest.raises(ValueError, match="rerank.norm: expected one of 'none', 'zscore', 'rank', got 'z'"):
        fuse_scores(parts, norm="z")  # type: ignore[arg-type]


def test_similarity_terms_and_fusion_are_the_relational_scores():
    """relational_scores = fuse_scores(similarity_terms) under the model's protocol, on graphs
    that share images (rows of one projection), and each graph scores as it does alone."""
    model = make_model("HRNet", seed=12, rerank=dict(norm="zscore"))
    images = features(20, seed=13)
    index = torch.tensor([[0, 5, 6, 7, 8], [1, 5, 9, 0, 19], [2, 3, 4, 5, 6]])
    proj = project_images(model, images)
    parts = similarity_terms(model, proj, index)
    assert set(parts) == {"cosine", "ir_cosine", "ir_bn_cosine", "pr_logit", "pr_prob"}
    assert all(p.shape == (3, 4) for p in parts.values())
    protocol = model.rerank_config
    fused = fuse_scores(parts, protocol.ir_score, protocol.pr_score, protocol.norm, protocol.pr_weight)
    torch.testing.assert_close(relational_scores(model, proj, index), fused)
    torch.testing.assert_close(score_query_graphs(model, images[index]), fused, atol=1e-6, rtol=0)
    # another protocol passed in: the same terms, fused its way
    literal = RerankConfig.paper_literal()
    fused = fuse_scores(parts, "ir_cosine", "pr_prob", "none", 1.0)
    assert torch.equal(relational_scores(model, proj, index, literal), fused)
    torch.testing.assert_close(score_query_graphs(model, images[index], literal), fused, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"index must be \(B, M\) with M >= 2"):
        similarity_terms(model, proj, index[:, :1])


@pytest.mark.parametrize("self_in_knn", [False, True])
def test_individual_adjacency_equals_knn_edges_with_tied_distances(self_in_knn):
    """The dense kNN of re-ranking keeps knn_edges' tie rule (lower index first): duplicated
    images give exactly tied distances."""
    model = make_model("HRNet", ir_self_in_knn=self_in_knn)
    base = features(4 * 5, seed=11).view(4, 5, D)
    graphs = torch.cat([base, base[:, :3]], dim=1)  # nodes 5..7 duplicate nodes 0..2: ties
    b, m = graphs.shape[:2]
    adj = model.head.individual_adjacency(graphs)
    batch = torch.arange(b).repeat_interleave(m)
    ei = knn_edges(graphs.reshape(b * m, D), model.config.k, batch=batch, loop=self_in_knn)
    ref = torch.zeros(b * m, m, dtype=torch.bool)
    ref[ei[1], ei[0] % m] = True
    assert torch.equal(adj, ref.view(b, m, m))
    assert bool((adj.sum(-1) == model.config.k).all())
