"""The hybrid graph (one HeteroData) and HybridRelationBlock (message passing) against the model.

* ``hybrid_graph``'s nodes and edges against a re-statement written as loops over n, i, j.
* The block on ``hybrid_graph`` against HRNet's dense training path (IR by message passing on the
  kNN edges, PR by ``forward_dense``): outputs and gradients w.r.t. inputs and parameters, in
  float64 and through ``HRNet.forward`` itself (its loss terms), for the HRNet and CNN+PR+IGP rows.
* A PyG ``DataLoader`` batch of hybrid graphs of different sizes against the graphs one by one.
"""
import pytest
import torch
from torch_geometric.loader import DataLoader

from hrnet_pyg.config import HRNetConfig
from hrnet_pyg.graphs import HybridGraph, hybrid_graph, pair_mask
from hrnet_pyg.hybrid import HybridOutput, HybridRelationBlock, hybrid_graph_for
from hrnet_pyg.layers import IndividualRelationConv, PairwiseRelationConv, VerificationHead
from hrnet_pyg.losses import consistent_node_loss, cross_entropy_label_smooth, verification_loss
from hrnet_pyg.model import HRNetModule

D = 6


def edge_set(edge_index):
    return set(zip(edge_index[0].tolist(), edge_index[1].tolist(), strict=True))


def make_model(row: str, seed: int = 0, **overrides) -> HRNetModule:
    torch.manual_seed(seed)
    cfg = HRNetConfig.from_row(row, backbone=None, feat_dim=D, k=3, pretrained=False,
                               num_identities=3, num_instances=2, **overrides)
    model = HRNetModule(cfg, num_classes=4)
    with torch.no_grad():  # a head that is not at its symmetric "distance" start
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.train()


def features(n: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g, dtype=dtype)


def dense_path(model: HRNetModule, f: torch.Tensor) -> tuple:
    """What HRNet.forward computes for the graph modules: C (Eq. 1), V' by the IR layer, U' by the
    PR layer's dense factorised path (IGP from V', or F without IR), t_hat's logits on U'."""
    cfg = model.config
    n = f.size(0)
    v = f
    if model.ir is not None:
        v = model.ir(f, model.individual_edges(f))
    mask = pair_mask(f.detach(), model.pr_edges_for(n)) if cfg.pr_edges else None
    u = model.pr.forward_dense(f, v if cfg.use_igp else None, mask=mask)  # (N, N, d)
    return (v if model.ir is not None else None), u, model.verifier(u)


# ------------------------------------------------------------------------------ hybrid_graph
@pytest.mark.parametrize("k,full,loop,pr_edges,rows", [
    (2, False, False, None, None),
    (3, False, True, 3, None),
    (2, True, False, None, [3, 0]),
    (1, False, False, 2, [4]),
])
def test_hybrid_graph_matches_loops(k, full, loop, pr_edges, rows):
    n = 5
    f = features(n, 1)
    y = torch.tensor([0, 1, 0, 2, 1])
    rows_t = None if rows is None else torch.tensor(rows)
    data = hybrid_graph(f, k, full=full, loop=loop, pr_edges=pr_edges, rows=rows_t, y=y)
    assert isinstance(data, HybridGraph)
    assert set(data.node_types) == {"image", "pair"}
    assert set(data.edge_types) == {("image", "knn", "image"), ("pair", "intra", "pair"),
                                    ("image", "left", "pair"), ("image", "right", "pair")}
    assert data["image"].x is f and data["image"].y is y
    graphs = list(range(n)) if rows is None else rows

    # Eq. 1: for each i its k nearest j (Euclidean), itself only with loop; every j with full.
    knn = set()
    for i in range(n):
        cand = [j for j in range(n) if j != i or loop]
        if not full:
            cand = sorted(cand, key=lambda j: (float((f[i] - f[j]).norm()), j != i, j))[:k]
        knn.update((j, i) for j in cand)
    assert edge_set(data["image", "knn", "image"].edge_index) == knn

    # Eq. 6: pair node r*N + i is u_{n,i} = f_n - f_i of graph n = graphs[r].
    assert data["pair"].x.shape == (len(graphs) * n, D)
    intra, left, right = set(), set(), set()
    for r, g in enumerate(graphs):
        u = [f[g] - f[i] for i in range(n)]
        for i in range(n):
            p = r * n + i
            assert torch.equal(data["pair"].x[p], u[i])
            assert int(data["pair"].n[p]) == g and int(data["pair"].i[p]) == i
            near = sorted(range(n), key=lambda j: (float((u[i] - u[j]).norm()), j))
            if pr_edges is not None:
                near = near[:pr_edges]  # the pr_edges nearest difference nodes, u_{n,i} included
            intra.update((r * n + j, p) for j in near)
            left.add((g, p))  # v_n -> u_{n,i}
            right.add((i, p))  # v_i -> u_{n,i}
    assert edge_set(data["pair", "intra", "pair"].edge_index) == intra
    assert edge_set(data["image", "left", "pair"].edge_index) == left
    assert edge_set(data["image", "right", "pair"].edge_index) == right


def test_hybrid_graph_bad_input():
    f = features(4, 0)
    with pytest.raises(ValueError, match=r"hybrid_graph: f must be a 2-D tensor"):
        hybrid_graph(f[0], 2)
    with pytest.raises(ValueError, match=r"hybrid_graph: y must have one label per image"):
        hybrid_graph(f, 2, y=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"hybrid_graph: rows must be a 1-D LongTensor"):
        hybrid_graph(f, 2, rows=torch.tensor([4]))
    with pytest.raises(ValueError, match="knn_edges: the graph has N=4 nodes"):
        hybrid_graph(f, 4)


# ------------------------------------------------------------------------------ block == dense path
ROWS = [
    ("HRNet", {}),
    ("HRNet", {"ir_attention_norm": "all", "pr_edges": 4}),
    ("HRNet", {"ir_self_in_knn": True, "pr_head": "diagonal"}),
    ("CNN+PR+IGP", {}),
    ("CNN+PR+IGP", {"pr_edges": 3, "pr_edges_relative": False}),
]


@pytest.mark.parametrize("row,overrides", ROWS)
def test_block_equals_dense_path_outputs_and_gradients(row, overrides):
    model = make_model(row, **overrides).double()
    block = HybridRelationBlock.from_model(model)
    assert (block.ir is None) == (row == "CNN+PR+IGP")
    n = 7
    f = features(n, 2).requires_grad_()
    v_ref, u_ref, logit_ref = dense_path(model, f)
    out = block(hybrid_graph_for(model, f))
    assert isinstance(out, HybridOutput) and out.feats is f
    if v_ref is None:
        assert out.ir_feats is None and out.ir_attention is None
    else:
        torch.testing.assert_close(out.ir_feats, v_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.pair_feats.view(n, n, D), u_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.pair_logits.view(n, n), logit_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.t_hat, torch.sigmoid(out.pair_logits))

    # Gradients of one random linear read-out of every output, w.r.t. F and every parameter.
    g = torch.Generator().manual_seed(3)
    w_v, w_u, w_t = (torch.randn(s, generator=g, dtype=torch.float64) for s in ((n, D), (n, n, D), (n, n)))
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(v, u, logit):
        loss = (u * w_u).sum() + (logit * w_t).sum() + (0.0 if v is None else (v * w_v).sum())
        return torch.autograd.grad(loss, [f] + params, allow_unused=True)

    ref = grads(v_ref, u_ref, logit_ref)
    got = grads(out.ir_feats, out.pair_feats.view(n, n, D), out.pair_logits.view(n, n))
    used = 0
    for a, b in zip(got, ref, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            used += 1
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert used > 10  # F, W_p, H_p, ..., the head: the comparison covers the parameters


@pytest.mark.parametrize("row", ["HRNet", "CNN+PR+IGP"])
def test_block_equals_hrnet_forward_loss_terms(row):
    """Against HRNet.forward itself (float32, its autocast-free graph part): the outputs and the
    graph loss terms of Eq. 14 (L_in, L_c+, L_c-, L_pa), and their gradients."""
    model = make_model(row)
    n = 6
    f = features(n, 4, torch.float32).requires_grad_()
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    res = model(f, pids)
    block = HybridRelationBlock.from_model(model)
    out = block(hybrid_graph_for(model, f, y=pids))
    torch.testing.assert_close(out.pair_logits.view(n, n), res.pair_logits, rtol=1e-5, atol=1e-5)
    names = ["pa"]
    ours = {"pa": verification_loss(out.pair_logits.view(n, n), pids)}
    if model.ir is not None:
        torch.testing.assert_close(out.ir_feats, res.ir_feats, rtol=1e-5, atol=1e-5)
        assert torch.equal(out.ir_attention[0], res.ir_attention[0])
        torch.testing.assert_close(out.ir_attention[1], res.ir_attention[1], rtol=1e-5, atol=1e-5)
        cfg = model.config
        ours["in"] = cross_entropy_label_smooth(model.ir_neck(out.ir_feats)[1], pids, cfg.label_smoothing)
        ours["c_pos"], ours["c_neg"] = consistent_node_loss(out.feats, out.ir_feats, pids, cfg.cnc_margin,
                                                            mining=cfg.cnc_mining)
        names += ["in", "c_pos", "c_neg"]
    params = [p for p in model.parameters() if p.requires_grad]
    for name in names:
        torch.testing.assert_close(ours[name], res.losses[name], rtol=1e-5, atol=1e-6)
    total_ref = sum(res.losses[name] for name in names)
    total = sum(ours[name] for name in names)
    ref = torch.autograd.grad(total_ref, [f] + params, allow_unused=True)
    got = torch.autograd.grad(total, [f] + params, allow_unused=True)
    for a, b in zip(got, ref, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_block_rows_equal_dense_rows():
    model = make_model("HRNet").double()
    f = features(6, 5)
    rows = torch.tensor([4, 1])
    out = HybridRelationBlock.from_model(model)(hybrid_graph_for(model, f, rows=rows))
    v = model.ir(f, model.individual_edges(f))
    u = model.pr.forward_dense(f, v, rows=rows)  # (2, N, d)
    torch.testing.assert_close(out.pair_feats.view(2, 6, D), u, rtol=0, atol=1e-10)


# ------------------------------------------------------------------------------ DataLoader batches
@pytest.mark.parametrize("norm", ["all", "neighbors"])
def test_block_on_dataloader_batch_equals_graphs_one_by_one(norm):
    model = make_model("HRNet", ir_attention_norm=norm).double()
    block = HybridRelationBlock.from_model(model)
    sizes = [5, 7, 6]
    graphs = [hybrid_graph_for(model, features(s, 10 + s), y=torch.arange(s) % 3) for s in sizes]
    batch = next(iter(DataLoader(graphs, batch_size=len(graphs))))
    assert batch.num_graphs == 3
    # n and i are shifted like edge indices: they keep naming the images of the batch.
    torch.testing.assert_close(batch["pair"].x, batch["image"].x[batch["pair"].n] - batch["image"].x[batch["pair"].i])
    offsets = [0, 5, 12]
    assert torch.equal(batch["pair"].n, torch.cat([g["pair"].n + o for g, o in zip(graphs, offsets, strict=True)]))
    assert torch.equal(batch["pair"].i, torch.cat([g["pair"].i + o for g, o in zip(graphs, offsets, strict=True)]))

    params = [p for p in model.parameters() if p.requires_grad]
    for mode in ("train", "eval"):
        block.train(mode == "train")
        got = block(batch)
        alone = [block(g) for g in graphs]
        torch.testing.assert_close(got.ir_feats, torch.cat([a.ir_feats for a in alone]), rtol=0, atol=1e-10)
        torch.testing.assert_close(got.pair_feats, torch.cat([a.pair_feats for a in alone]), rtol=0, atol=1e-10)
        if mode == "eval":  # BatchNorm with running statistics: graph by graph
            logits = torch.cat([a.pair_logits for a in alone])
            torch.testing.assert_close(got.pair_logits, logits, rtol=0, atol=1e-10)
            g_batch = torch.autograd.grad(got.pair_logits.sum() + got.ir_feats.sum(), params, allow_unused=True)
            g_alone = torch.autograd.grad(logits.sum() + sum(a.ir_feats.sum() for a in alone), params,
                                          allow_unused=True)
            for a, b in zip(g_batch, g_alone, strict=True):
                if a is not None:
                    torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


# ------------------------------------------------------------------------------ module conventions
def test_block_shares_weights_repr_reset_and_errors():
    model = make_model("HRNet")
    block = HybridRelationBlock.from_model(model)
    assert block.pr.lin_p.weight is model.pr.lin_p.weight and block.verifier is model.verifier
    assert {id(p) for p in block.parameters()} <= {id(p) for p in model.parameters()}
    assert str(block) == (f"HybridRelationBlock(ir=IndividualRelationConv({D}, {D}, normalize='neighbors'), "
                          f"pr=PairwiseRelationConv({D}, alpha=0.9, beta=0.8, igp=True), "
                          f"verifier=VerificationHead({D}, projection=True, hidden_channels={D}, init='distance'))")
    before = model.pr.lin_p.weight.detach().clone()
    torch.manual_seed(1)
    block.reset_parameters()
    assert not torch.equal(before, model.pr.lin_p.weight)

    assert str(HybridRelationBlock(pr=PairwiseRelationConv(4, igp=False))) == (
        "HybridRelationBlock(pr=PairwiseRelationConv(4, alpha=0.9, beta=0.8, igp=False))")
    with pytest.raises(ValueError, match="needs an individual"):
        HybridRelationBlock()
    with pytest.raises(ValueError, match="reads V' with 4 channels, but ir gives 3"):
        HybridRelationBlock(IndividualRelationConv(4, 3), PairwiseRelationConv(4))
    with pytest.raises(ValueError, match="pass pr= too"):
        HybridRelationBlock(IndividualRelationConv(4, 4), verifier=VerificationHead(4))
    with pytest.raises(ValueError, match="has no ir, pr, verifier"):
        HybridRelationBlock.from_model(torch.nn.Linear(2, 2))
    data = hybrid_graph(features(5, 0), 2)
    del data["image", "left", "pair"]
    with pytest.raises(ValueError, match=r"data lacks \('image', 'left', 'pair'\)\.edge_index"):
        block(data)


def test_readme_example_runs():
    """The README's hybrid-graph example, executed as written."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("### The whole relation step on one hybrid graph", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert torch.isfinite(scope["loss"]) and scope["t_hat"].shape == (36 + 64 + 49,)
