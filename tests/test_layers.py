import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch_geometric.data import Batch, Data
from torch_geometric.nn import global_mean_pool

from hrnet_pyg.graphs import INTRA, LEFT, RIGHT, hybrid_graph, knn_edges, pair_mask
from hrnet_pyg.layers import (
    IndividualRelationConv,
    PairwiseRelationConv,
    VerificationHead,
    all_node_logsumexp,
)


def leaky(z, slope=0.2):
    return z if z >= 0 else slope * z


def adjacency(edge_index, n):
    """C[i, j] = 1 for an edge j -> i."""
    c = torch.zeros(n, n, dtype=torch.float64)
    for j, i in edge_index.t().tolist():
        c[i, j] += 1.0
    return c


# ---------------------------------------------------------------------------------------------
# IndividualRelationConv: plain re-statement of Eq. 2-3
# ---------------------------------------------------------------------------------------------
def ref_individual(x, edge_index, conv, batch=None):
    """Returns (X', A) with A the (N, N) attention matrix of Eq. 2 (or its GAT variant)."""
    n = x.size(0)
    hd, hs = conv.att_dst, conv.att_src  # H_s[:d], H_s[d:]
    ws = conv.lin.weight.t()  # W_s, (d, d')
    batch = [0] * n if batch is None else batch.tolist()
    c = adjacency(edge_index, n).to(x.dtype)
    logit = torch.zeros(n, n, dtype=x.dtype)
    for i in range(n):
        for j in range(n):
            z = x[i] @ hd + x[j] @ hs  # [x_i || x_j]^T H_s
            logit[i, j] = z if z >= 0 else conv.negative_slope * z
    a = torch.zeros(n, n, dtype=x.dtype)
    for i in range(n):
        if conv.normalize == "all":  # denominator over all nodes n of i's graph (Eq. 2)
            others = [m for m in range(n) if batch[m] == batch[i]]
        else:  # over i's neighbours only
            others = [m for m in range(n) if c[i, m] > 0]
        den = sum(torch.exp(logit[i, m]) for m in others)
        for j in range(n):
            a[i, j] = torch.exp(logit[i, j]) / den
    eye = torch.eye(n, dtype=x.dtype) if conv.add_identity else 0.0
    out = (a * c + eye) @ x @ ws  # Eq. 3
    if conv.act:
        out = torch.relu(out)
    return out, a


@pytest.mark.parametrize("normalize", ["all", "neighbors"])
@pytest.mark.parametrize("add_identity,act", [(True, True), (False, False)])
def test_individual_matches_dense_reference(normalize, add_identity, act):
    torch.manual_seed(0)
    x = torch.randn(9, 6, dtype=torch.float64)
    edge_index = knn_edges(x, 3)
    conv = IndividualRelationConv(6, 5, normalize=normalize, add_identity=add_identity,
                                  act=act).double()
    out, (ei, alpha) = conv(x, edge_index, return_attention_weights=True)
    ref, a = ref_individual(x, edge_index, conv)
    assert out.shape == (9, 5)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    assert ei is edge_index
    torch.testing.assert_close(alpha, a[edge_index[1], edge_index[0]])
    assert alpha.min() >= 0 and alpha.max() <= 1
    row_sum = torch.zeros(9, dtype=x.dtype).index_add_(0, edge_index[1], alpha)
    if normalize == "neighbors":
        torch.testing.assert_close(row_sum, torch.ones(9, dtype=x.dtype))
    else:  # Eq. 2 normalises over all N nodes, then C masks: strictly less than 1 per row
        assert bool((row_sum < 1).all())


def test_individual_gradients_match_reference():
    torch.manual_seed(1)
    x = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    edge_index = knn_edges(x, 3)
    conv = IndividualRelationConv(4, 4).double()
    w = torch.randn(8, 4, dtype=torch.float64)
    (conv(x, edge_index) * w).sum().backward()
    got = [x.grad.clone()] + [p.grad.clone() for p in conv.parameters()]
    x.grad = None
    conv.zero_grad()
    (ref_individual(x, edge_index, conv)[0] * w).sum().backward()
    want = [x.grad] + [p.grad for p in conv.parameters()]
    for g, r in zip(got, want, strict=False):
        torch.testing.assert_close(g, r)


def test_individual_self_loops_are_plain_edges():
    torch.manual_seed(2)
    x = torch.randn(5, 3, dtype=torch.float64)
    edge_index = torch.tensor([[0, 1, 2, 2, 3, 4, 1], [0, 0, 1, 2, 2, 3, 4]])  # self loops on 0, 2
    conv = IndividualRelationConv(3, 3, act=False).double()
    out, (_, alpha) = conv(x, edge_index, return_attention_weights=True)
    ref, a = ref_individual(x, edge_index, conv)
    torch.testing.assert_close(out, ref)
    # node 0 receives (a_00 + 1) x_0 W + a_01 x_1 W
    h = conv.lin(x)
    torch.testing.assert_close(out[0], (a[0, 0] + 1) * h[0] + a[0, 1] * h[1])


def test_individual_empty_graph_and_single_node():
    conv = IndividualRelationConv(4, 3)
    x = torch.randn(6, 4)
    empty = torch.empty(2, 0, dtype=torch.long)
    for norm in ("all", "neighbors"):
        conv.normalize = norm
        out, (_, alpha) = conv(x, empty, return_attention_weights=True)
        torch.testing.assert_close(out, torch.relu(conv.lin(x)))  # only the identity remains
        assert alpha.numel() == 0
        assert conv(x[:1], empty).shape == (1, 3)
        assert conv(x[:0], empty).shape == (0, 3)


@pytest.mark.parametrize("normalize", ["all", "neighbors"])
def test_individual_permutation_equivariance(normalize):
    torch.manual_seed(3)
    x = torch.randn(10, 5)
    conv = IndividualRelationConv(5, 7, normalize=normalize)
    edge_index = knn_edges(x, 4)
    perm = torch.randperm(10)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(10)
    out = conv(x, edge_index)
    out_p = conv(x[perm], inv[edge_index])
    torch.testing.assert_close(out_p, out[perm])
    # the kNN graph of the permuted features is the permuted graph
    out_p2 = conv(x[perm], knn_edges(x[perm], 4))
    torch.testing.assert_close(out_p2, out[perm])


def test_individual_batch_keeps_denominator_within_graph():
    torch.manual_seed(4)
    x = torch.randn(11, 4, dtype=torch.float64)
    batch = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 1])  # unsorted on purpose
    edge_index = knn_edges(x, 3, batch=batch)
    conv = IndividualRelationConv(4, 4).double()
    out = conv(x, edge_index, batch=batch)
    ref, _ = ref_individual(x, edge_index, conv, batch=batch)
    torch.testing.assert_close(out, ref)
    # without the batch vector all 11 nodes would share one denominator: a different result
    assert not torch.allclose(conv(x, edge_index), out)


def test_all_node_logsumexp_chunks():
    torch.manual_seed(5)
    s_dst, s_src = torch.randn(37, dtype=torch.float64), torch.randn(37, dtype=torch.float64)
    batch = torch.randint(0, 3, (37,))  # unsorted graph ids
    for b in (None, batch, 2 * batch):  # 2 * batch: graph ids 1 and 3 hold no node
        full = all_node_logsumexp(s_dst, s_src, b)
        chunked = all_node_logsumexp(s_dst, s_src, b, budget=20)  # chunks of one target
        ref = torch.stack([
            torch.logsumexp(torch.stack([torch.tensor(leaky(float(s_dst[i] + s_src[m])),
                                                      dtype=torch.float64)
                                         for m in range(37) if b is None or b[m] == b[i]]), 0)
            for i in range(37)])
        torch.testing.assert_close(full, ref)
        torch.testing.assert_close(chunked, ref)


def test_individual_in_tiny_pyg_model():
    torch.manual_seed(6)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = IndividualRelationConv(4, 8)
            self.conv2 = IndividualRelationConv(8, 8, act=False)
            self.head = torch.nn.Linear(8, 2)

        def forward(self, x, edge_index, batch):
            x = self.conv1(x, edge_index, batch=batch)
            x = self.conv2(x, edge_index, batch=batch)
            return self.head(global_mean_pool(x, batch)), x

    graphs = []
    for n in (6, 9):
        x = torch.randn(n, 4)
        graphs.append(Data(x=x, edge_index=knn_edges(x, 3)))
    data = Batch.from_data_list(graphs)
    model = Net()
    logits, nodes = model(data.x, data.edge_index, data.batch)
    assert logits.shape == (2, 2)
    # each graph's nodes are the same as when the graph runs alone: denominators stay in-graph
    for g, graph in enumerate(graphs):
        _, alone = model(graph.x, graph.edge_index, torch.zeros(graph.num_nodes, dtype=torch.long))
        torch.testing.assert_close(nodes[data.batch == g], alone)
    F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_individual_repr_and_errors():
    assert str(IndividualRelationConv(2048, 2048)) == \
        "IndividualRelationConv(2048, 2048, normalize='all')"
    assert str(IndividualRelationConv(16, 8, normalize="neighbors")) == \
        "IndividualRelationConv(16, 8, normalize='neighbors')"
    with pytest.raises(ValueError, match="normalize must be 'all'"):
        IndividualRelationConv(4, 4, normalize="mean")
    conv = IndividualRelationConv(4, 4)
    with pytest.raises(ValueError, match="x must be a 2-D tensor with 4 channels"):
        conv(torch.randn(3, 5), torch.empty(2, 0, dtype=torch.long))
    # index checks are MessagePassing's: one line naming edge_index
    with pytest.raises(ValueError, match="edge_index"):
        conv(torch.randn(3, 4), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(IndexError, match="edge_index.*larger than"):  # a fresh layer: no warning first
        IndividualRelationConv(4, 4)(torch.randn(3, 4), torch.tensor([[7], [0]]))


# ---------------------------------------------------------------------------------------------
# PairwiseRelationConv: literal loops over n, i, j for Eq. 6-9
# ---------------------------------------------------------------------------------------------
def ref_pairwise(f, v, conv, mask=None):
    """Returns U' (N, N, d), G (N, N, N), Q (N, N, 2) by looping over graphs n, nodes i, j."""
    n_img, d = f.shape
    wp = conv.lin_p.weight.t()
    sl = conv.negative_slope
    out = torch.zeros(n_img, n_img, d, dtype=f.dtype)
    gs = torch.zeros(n_img, n_img, n_img, dtype=f.dtype)
    qs = torch.zeros(n_img, n_img, 2, dtype=f.dtype)
    for n in range(n_img):
        u = [f[n] - f[i] for i in range(n_img)]  # u_{n,i}
        for i in range(n_img):
            srcs = [j for j in range(n_img) if mask is None or mask[i, j]]
            # Eq. 6: g^n_ij = exp(mu([u_i||u_j]^T H_p)) / sum_b exp(mu([u_i||u_b]^T H_p))
            ex = {j: torch.exp(leaky(u[i] @ conv.att_p_dst + u[j] @ conv.att_p_src, sl))
                  for j in srcs}
            den = sum(ex.values())
            agg = torch.zeros(d, dtype=f.dtype)
            for j in srcs:
                gs[n, i, j] = ex[j] / den
                agg = agg + gs[n, i, j] * (u[j] @ wp)
            if conv.igp:
                # Eq. 8-9
                el = torch.exp(leaky(u[i] @ conv.att_l_pair + v[n] @ conv.att_l_image, sl))
                er = torch.exp(leaky(u[i] @ conv.att_r_pair + v[i] @ conv.att_r_image, sl))
                q_in, q_ii = el / (el + er), er / (el + er)
                qs[n, i, 0], qs[n, i, 1] = q_in, q_ii
                m = conv.beta * agg + (1 - conv.beta) * (
                    q_in * (v[n] @ conv.lin_l.weight.t()) + q_ii * (v[i] @ conv.lin_r.weight.t()))
            else:
                m = agg  # beta = 1: no inter-graph term
            out[n, i] = conv.alpha * u[i] + (1 - conv.alpha) * torch.relu(m)  # Eq. 7
    return out, gs, qs


def make_pr(d, igp=True, dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    return PairwiseRelationConv(d, igp=igp, **kw).to(dtype)


def pair_part(f, num_edges=None):
    """The pair part of the hybrid graph of f (N, d): pair nodes, intra / left / right edges."""
    return hybrid_graph(f, 1, full=True, pr_edges=num_edges)


def pr_args(data, v):
    """The message-passing arguments of the pair part, with image nodes v."""
    return (data["pair"].x, data[INTRA].edge_index, v, data[LEFT].edge_index, data[RIGHT].edge_index)


def mp_pairwise(conv, f, v=None, num_edges=None, **kw):
    """PairwiseRelationConv.forward on the N pair graphs of f: (N^2, d), row n*N + i = u'_{n,i}."""
    return conv(*pr_args(pair_part(f, num_edges), f if v is None else v), **kw)


@pytest.mark.parametrize("igp", [True, False])
@pytest.mark.parametrize("num_edges", [None, 3])
def test_pairwise_dense_and_mp_match_loop_reference(igp, num_edges):
    conv = make_pr(4, igp=igp)
    f = torch.randn(6, 4, dtype=torch.float64)
    v = torch.randn(6, 4, dtype=torch.float64)
    mask = pair_mask(f, num_edges)
    ref, g_ref, q_ref = ref_pairwise(f, v, conv, mask)

    out, g, q = conv.forward_dense(f, v, mask=mask, return_attention=True)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(g, g_ref)
    if igp:
        torch.testing.assert_close(q, q_ref)
    else:
        assert q is None

    res = mp_pairwise(conv, f, v, num_edges=num_edges, return_attention_weights=True)
    torch.testing.assert_close(res[0].view(6, 6, 4), ref)
    ei, g_mp = res[1]
    pn, pi, pj = ei[1] // 6, ei[1] % 6, ei[0] % 6
    torch.testing.assert_close(g_mp, g_ref[pn, pi, pj])
    assert g_mp.min() >= 0 and g_mp.max() <= 1
    sums = torch.zeros(36, dtype=torch.float64).index_add_(0, ei[1], g_mp)
    torch.testing.assert_close(sums, torch.ones(36, dtype=torch.float64))
    if igp:
        q_left, q_right = res[2]
        torch.testing.assert_close(q_left, q_ref[..., 0].reshape(-1))
        torch.testing.assert_close(q_right, q_ref[..., 1].reshape(-1))
        torch.testing.assert_close(q_left + q_right, torch.ones(36, dtype=torch.float64))


def test_pairwise_without_igp_ignores_beta():
    f = torch.randn(5, 4, dtype=torch.float64)
    a = make_pr(4, igp=False, beta=0.8, seed=1)
    b = make_pr(4, igp=False, beta=0.1, seed=1)
    torch.testing.assert_close(a.forward_dense(f), b.forward_dense(f))
    # beta = 1 of the IGP layer gives the same update (its inter-graph term has weight 0)
    c = make_pr(4, igp=True, beta=1.0, seed=1)
    c.lin_p.load_state_dict(a.lin_p.state_dict())
    c.att_p_dst.data.copy_(a.att_p_dst)
    c.att_p_src.data.copy_(a.att_p_src)
    torch.testing.assert_close(c.forward_dense(f, torch.randn(5, 4, dtype=torch.float64)),
                               a.forward_dense(f))
    assert a.lin_l is None and a.att_l_pair is None
    assert sum(p.numel() for p in a.parameters()) == 4 * 4 + 2 * 4


def test_pairwise_v_defaults_to_f():
    conv = make_pr(4, seed=2)
    f = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(conv.forward_dense(f), ref_pairwise(f, f, conv)[0])
    torch.testing.assert_close(mp_pairwise(conv, f).view(5, 5, 4), conv.forward_dense(f, f))


def _all_grads(conv, *inputs):
    return [t.grad.clone() for t in inputs] + [p.grad.clone() for p in conv.parameters()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num_edges", [None, 4])
def test_pairwise_mp_equals_dense_with_gradients(dtype, num_edges):
    n, d = 10, 16
    conv = make_pr(d, dtype=dtype, seed=3)
    f = torch.randn(n, d, dtype=dtype, requires_grad=True)
    v = torch.randn(n, d, dtype=dtype, requires_grad=True)
    w = torch.randn(n, n, d, dtype=dtype)

    dense = conv.forward_dense(f, v, mask=pair_mask(f.detach(), num_edges))
    (dense * w).sum().backward()
    g_dense = _all_grads(conv, f, v)
    f.grad = v.grad = None
    conv.zero_grad()
    mp = mp_pairwise(conv, f, v, num_edges=num_edges).view(n, n, d)
    (mp * w).sum().backward()
    g_mp = _all_grads(conv, f, v)
    torch.testing.assert_close(dense, mp, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_dense, g_mp, strict=False):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_pairwise_permutation_equivariance():
    conv = make_pr(8, dtype=torch.float32, seed=4)
    f, v = torch.randn(9, 8), torch.randn(9, 8)
    perm = torch.randperm(9)
    out = conv.forward_dense(f, v)
    torch.testing.assert_close(conv.forward_dense(f[perm], v[perm]), out[perm][:, perm])
    mp = mp_pairwise(conv, f[perm], v[perm]).view(9, 9, 8)
    torch.testing.assert_close(mp, out[perm][:, perm])
    masked = conv.forward_dense(f, v, mask=pair_mask(f, 4))
    masked_p = conv.forward_dense(f[perm], v[perm], mask=pair_mask(f[perm], 4))
    torch.testing.assert_close(masked_p, masked[perm][:, perm])


def test_pairwise_rows_subset_and_batch():
    conv = make_pr(6, seed=5)
    f = torch.randn(3, 7, 6, dtype=torch.float64)
    v = torch.randn(3, 7, 6, dtype=torch.float64)
    mask = pair_mask(f, 3)
    out, g, q = conv.forward_dense(f, v, mask=mask, return_attention=True)
    assert out.shape == (3, 7, 7, 6) and g.shape == (3, 7, 7, 7) and q.shape == (3, 7, 7, 2)
    for b in range(3):  # batched == one batch element at a time
        torch.testing.assert_close(out[b], conv.forward_dense(f[b], v[b], mask=mask[b]))
    rows = torch.tensor([4, 0])
    sub, g_sub, q_sub = conv.forward_dense(f, v, mask=mask, rows=rows, return_attention=True)
    assert sub.shape == (3, 2, 7, 6)
    torch.testing.assert_close(sub, out[:, rows])
    torch.testing.assert_close(g_sub, g[:, rows])
    torch.testing.assert_close(q_sub, q[:, rows])
    torch.testing.assert_close(conv.forward_dense(f[1], v[1], rows=torch.tensor([0])),
                               conv.forward_dense(f[1], v[1])[:1])


def test_pairwise_dense_gradcheck_batched_masked_rows():
    conv = make_pr(2, seed=10)
    f = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    mask = pair_mask(f.detach(), 2)
    rows = torch.tensor([3, 1])
    assert torch.autograd.gradcheck(lambda a, b: conv.forward_dense(a, b, mask=mask, rows=rows),
                                    (f, v))
    assert torch.autograd.gradcheck(lambda a: conv.forward_dense(a), (f[0].detach().requires_grad_(),))


def test_pairwise_batched_parameter_gradients():
    conv = make_pr(6, seed=11)
    f = torch.randn(3, 7, 6, dtype=torch.float64)
    v = torch.randn(3, 7, 6, dtype=torch.float64)
    w = torch.randn(3, 2, 7, 6, dtype=torch.float64)
    rows = torch.tensor([6, 2])
    (conv.forward_dense(f, v, rows=rows) * w).sum().backward()
    batched = [p.grad.clone() for p in conv.parameters()]
    conv.zero_grad()
    for b in range(3):
        (conv.forward_dense(f[b], v[b], rows=rows) * w[b]).sum().backward()
    for a, b in zip(batched, [p.grad for p in conv.parameters()], strict=False):
        torch.testing.assert_close(a, b)


def test_pairwise_single_image_and_empty_edges():
    conv = make_pr(4, seed=6)
    f = torch.randn(1, 4, dtype=torch.float64)
    v = torch.randn(1, 4, dtype=torch.float64)
    ref = ref_pairwise(f, v, conv)[0]
    torch.testing.assert_close(conv.forward_dense(f, v), ref)
    torch.testing.assert_close(mp_pairwise(conv, f, v).view(1, 1, 4), ref)
    # pair nodes without intra edges keep alpha * u + (1 - alpha) relu((1 - beta) * IGP)
    data = pair_part(torch.randn(3, 4, dtype=torch.float64))
    x = data["pair"].x
    empty = torch.empty(2, 0, dtype=torch.long)
    conv_no = make_pr(4, igp=False, seed=6)
    torch.testing.assert_close(conv_no(x, empty), conv_no.alpha * x)


def test_pairwise_dense_never_builds_cubic_tensor():
    """Every tensor produced by any aten op (forward and backward) is recorded; the dense path's
    largest must be the (R, N, d) output or the (R, N, N) attention, far below N^3 d."""

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

    n, d = 40, 64
    conv = make_pr(d, dtype=torch.float32, seed=7)
    f = torch.randn(n, d, requires_grad=True)
    v = torch.randn(n, d, requires_grad=True)
    with MaxNumel() as dense_mode:
        conv.forward_dense(f, v, mask=pair_mask(f.detach(), 20)).square().sum().backward()
    assert dense_mode.max <= n * n * max(n, d)  # = 102,400 here
    assert dense_mode.max < n**3 * d // 16  # N^3 d = 4,096,000

    # The monitor does see cubic tensors: the message-passing path gathers N^3 x d messages.
    with MaxNumel() as mp_mode:
        mp_pairwise(conv, f, v).square().sum().backward()
    assert mp_mode.max >= n**3 * d


def test_pairwise_repr_and_errors():
    assert str(PairwiseRelationConv(2048)) == \
        "PairwiseRelationConv(2048, alpha=0.9, beta=0.8, igp=True)"
    assert str(PairwiseRelationConv(8, igp=False)) == \
        "PairwiseRelationConv(8, alpha=0.9, beta=0.8, igp=False)"
    with pytest.raises(ValueError, match="alpha and beta must lie in"):
        PairwiseRelationConv(8, alpha=1.5)
    conv = PairwiseRelationConv(4)
    f = torch.randn(5, 4)
    with pytest.raises(ValueError, match="f must be a 2-D or 3-D tensor with 4 channels"):
        conv.forward_dense(torch.randn(5, 3))
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        conv.forward_dense(f, mask=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one True"):
        conv.forward_dense(f, mask=torch.zeros(5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="rows must be a 1-D LongTensor"):
        conv.forward_dense(f, rows=torch.tensor([0.5]))
    with pytest.raises(ValueError, match="v must have the shape of f"):
        conv.forward_dense(f, v=torch.randn(4, 4))
    with pytest.raises(ValueError, match=r"proj.dots must have shape \(5, 4\)"):
        conv.forward_dense(f, proj=conv.project(f)._replace(dots=torch.randn(5, 2)))
    with pytest.raises(ValueError, match="proj.nodes is required with igp=True"):
        conv.forward_dense(f, proj=conv.project(f, nodes=False))
    with pytest.raises(ValueError, match="igp=False"):
        PairwiseRelationConv(4, igp=False).project_nodes(f)
    data = pair_part(f)
    with pytest.raises(ValueError, match="x_image, left_index and right_index are required"):
        conv(data["pair"].x, data[INTRA].edge_index)


# ---------------------------------------------------------------------------------------------
# VerificationHead
# ---------------------------------------------------------------------------------------------
def test_verification_head_matches_formula_and_is_sign_invariant():
    torch.manual_seed(8)
    head = VerificationHead(6).double()
    u = torch.randn(5, 5, 6, dtype=torch.float64)
    logits = head(u)
    assert logits.shape == (5, 5)
    sq = (u * u).reshape(-1, 6)
    z = (sq - sq.mean(0)) / torch.sqrt(sq.var(0, unbiased=False) + head.bn.eps)  # train-mode BN
    ref = (z * head.bn.weight + head.bn.bias) @ head.lin.weight.view(-1) + head.lin.bias
    torch.testing.assert_close(logits, ref.view(5, 5))
    torch.testing.assert_close(head(-u), logits)
    # on raw differences u_{n,i} = -u_{i,n}, so the head is symmetric in (n, i)
    f = torch.randn(5, 6, dtype=torch.float64)
    head.eval()
    t = head(f[:, None] - f[None])
    torch.testing.assert_close(t, t.t())
    assert head(torch.randn(7, 6, dtype=torch.float64)).shape == (7,)
    assert str(head) == "VerificationHead(6)"
    with pytest.raises(ValueError, match="6 channels"):
        head(torch.randn(3, 5, dtype=torch.float64))


def test_projected_verification_head_matches_formula():
    torch.manual_seed(9)
    head = VerificationHead(6, projection=True, hidden_channels=4).double()
    u = torch.randn(5, 5, 6, dtype=torch.float64)
    logits = head(u)
    h = u.reshape(-1, 6) @ head.proj.weight.t()  # u W_h, (25, 4)
    sq = h * h
    z = (sq - sq.mean(0)) / torch.sqrt(sq.var(0, unbiased=False) + head.bn.eps)  # train-mode BN
    ref = (z * head.bn.weight + head.bn.bias) @ head.lin.weight.view(-1) + head.lin.bias
    torch.testing.assert_close(logits, ref.view(5, 5))
    torch.testing.assert_close(head(-u), logits)
    assert str(head) == "VerificationHead(6, projection=True, hidden_channels=4)"
    assert VerificationHead(6, projection=True).hidden_channels == 6


def test_layers_import_nothing_reid_specific():
    import ast
    from pathlib import Path

    import hrnet_pyg.nn

    for path in Path(hrnet_pyg.nn.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        mods = {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
        mods |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        # of the package only the leaf helpers and graphs (tests/test_architecture.py checks which)
        assert {m.split(".")[0] for m in mods} <= {"__future__", "math", "typing", "warnings", "torch",
                                                    "torch_geometric", "hrnet_pyg"}, path.name


def test_math_sanity_of_factorisation():
    # sum_j g_ij (f_n - f_j) W = f_n W - (G F W)_i whenever rows of G sum to 1
    torch.manual_seed(9)
    f = torch.randn(4, 3, dtype=torch.float64)
    w = torch.randn(3, 3, dtype=torch.float64)
    g = torch.softmax(torch.randn(4, 4, dtype=torch.float64), -1)
    for n in range(4):
        lhs = torch.stack([sum(g[i, j] * ((f[n] - f[j]) @ w) for j in range(4)) for i in range(4)])
        torch.testing.assert_close(lhs, (f[n] @ w).expand(4, 3) - g @ (f @ w))


# ---------------------------------------------------------------------------------------------
# PyG conventions: Adj types, size=, bipartite input, torch.compile, batch, Sequential, HeteroConv
# ---------------------------------------------------------------------------------------------
def _adj_variants(edge_index, num_src, num_dst):
    """The same edges in every form a PyG conv accepts, each with the (E,) permutation that maps
    the layer's per-edge output order back to the columns of ``edge_index``."""
    from torch_geometric import EdgeIndex
    from torch_geometric.typing import WITH_TORCH_SPARSE, SparseTensor
    from torch_geometric.utils import to_torch_coo_tensor, to_torch_csr_tensor

    ident = torch.arange(edge_index.size(1))
    # sparse layouts store the transposed adjacency in row-major order: by target, then source
    key = edge_index[1] * num_src + edge_index[0]
    by_row = key.argsort()
    out = [("int32", edge_index.int(), ident),
           ("EdgeIndex", EdgeIndex(edge_index, sparse_size=(num_src, num_dst)), ident),
           ("torch.sparse COO", to_torch_coo_tensor(edge_index.flip(0), size=(num_dst, num_src)), by_row),
           ("torch.sparse CSR", to_torch_csr_tensor(edge_index.flip(0), size=(num_dst, num_src)), by_row)]
    if WITH_TORCH_SPARSE:
        adj = SparseTensor(row=edge_index[1], col=edge_index[0], sparse_sizes=(num_dst, num_src))
        out.append(("SparseTensor", adj, by_row))
    return out


def _weights_of(att):
    """Per-edge weights of return_attention_weights, whatever the adjacency type."""
    from torch_geometric.typing import SparseTensor

    if isinstance(att, SparseTensor):
        return att.storage.value()
    return att[1]


@pytest.mark.parametrize("normalize", ["all", "neighbors"])
def test_individual_accepts_every_adj_type(normalize):
    torch.manual_seed(20)
    x = torch.randn(10, 4, dtype=torch.float64)
    edge_index = knn_edges(x, 3)
    conv = IndividualRelationConv(4, 5, normalize=normalize).double()
    ref, (_, alpha) = conv(x, edge_index, return_attention_weights=True)
    for name, adj, order in _adj_variants(edge_index, 10, 10):
        out, att = conv(x, adj, return_attention_weights=True)
        torch.testing.assert_close(out, ref, msg=name)
        torch.testing.assert_close(_weights_of(att), alpha[order], msg=name)


def test_pairwise_accepts_every_adj_type():
    conv = make_pr(4, seed=21)
    data = pair_part(torch.randn(5, 4, dtype=torch.float64), num_edges=3)
    x, ei, v, left, right = pr_args(data, torch.randn(5, 4, dtype=torch.float64))
    ref, (_, g), (ql, qr) = conv(x, ei, v, left, right, return_attention_weights=True)
    lefts = _adj_variants(left, 5, 25)
    for (name, adj, order), (_, l_adj, l_order) in zip(_adj_variants(ei, 25, 25), lefts, strict=True):
        out, att, (ql2, qr2) = conv(x, adj, v, l_adj, right.int(), return_attention_weights=True)
        torch.testing.assert_close(out, ref, msg=name)
        torch.testing.assert_close(_weights_of(att), g[order], msg=name)
        torch.testing.assert_close(ql2, ql[l_order], msg=name)
        torch.testing.assert_close(qr2, qr, msg=name)


def test_adj_errors_are_one_line():
    """Type and size errors are the layers' own; index errors MessagePassing's, naming the argument."""
    conv = IndividualRelationConv(4, 4)
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="edge_index.*integer type"):
        conv(x, torch.zeros(2, 1))
    with pytest.raises(ValueError, match=r"size=\(3, 4\) does not match"):
        conv(x, torch.tensor([[0], [1]]), size=(3, 4))
    with pytest.raises(ValueError, match="x_dst is required"):
        conv((x, None), torch.tensor([[0], [1]]))
    with pytest.raises(ValueError, match=r"batch must be a pair \(batch_src, batch_dst\)"):
        conv((x, x[:2]), torch.tensor([[0], [1]]), batch=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="batch must have one entry per node"):
        conv(x, torch.tensor([[0], [1]]), batch=torch.zeros(2, dtype=torch.long))
    pr = PairwiseRelationConv(4, igp=False)
    with pytest.raises(IndexError, match="edge_index.*larger than"):
        pr(x, torch.tensor([[5], [0]]))
    with pytest.raises(ValueError, match=r"size=\(2, 3\) does not match"):
        pr(x, torch.tensor([[0], [1]]), size=(2, 3))


def ref_individual_bipartite(x_src, x_dst, edge_index, conv, batch_src, batch_dst):
    """Eq. 2-3 on a bipartite graph, plainly: the denominator over the sources of i's graph."""
    hd, hs, ws = conv.att_dst, conv.att_src, conv.lin.weight.t()
    out = torch.zeros(x_dst.size(0), conv.out_channels, dtype=x_dst.dtype)
    for i in range(x_dst.size(0)):
        def logit(j, i=i):
            return torch.nn.functional.leaky_relu(x_dst[i] @ hd + x_src[j] @ hs, conv.negative_slope)

        nbrs = [j for j, t in edge_index.t().tolist() if t == i]
        if conv.normalize == "neighbors":
            others = nbrs
        else:
            others = [m for m in range(x_src.size(0)) if batch_src[m] == batch_dst[i]]
        den = sum(torch.exp(logit(m)) for m in others) if others else torch.tensor(1.0, dtype=x_dst.dtype)
        for j in nbrs:
            out[i] += torch.exp(logit(j)) / den * (x_src[j] @ ws)
        out[i] += x_dst[i] @ ws
    return torch.relu(out)


@pytest.mark.parametrize("normalize", ["all", "neighbors"])
def test_individual_bipartite_and_size_match_dense_restatement(normalize):
    torch.manual_seed(22)
    x_src = torch.randn(7, 4, dtype=torch.float64)
    x_dst = torch.randn(5, 4, dtype=torch.float64)
    batch_src = torch.tensor([0, 1, 1, 0, 1, 0, 1])
    batch_dst = torch.tensor([1, 0, 0, 1, 1])
    pairs = [(j, i) for i in range(5) for j in range(7) if batch_src[j] == batch_dst[i] and (i + j) % 2 == 0]
    edge_index = torch.tensor(pairs).t()
    conv = IndividualRelationConv(4, 3, normalize=normalize).double()
    out = conv((x_src, x_dst), edge_index, batch=(batch_src, batch_dst), size=(7, 5))
    assert out.shape == (5, 3)
    ref = ref_individual_bipartite(x_src, x_dst, edge_index, conv, batch_src, batch_dst)
    torch.testing.assert_close(out, ref)
    # no batch: one graph of all 7 sources
    one = torch.zeros(7, dtype=torch.long), torch.zeros(5, dtype=torch.long)
    torch.testing.assert_close(conv((x_src, x_dst), edge_index),
                               ref_individual_bipartite(x_src, x_dst, edge_index, conv, *one))
    # (x, x) and size=(N, N) are the plain layer
    x = torch.randn(6, 4, dtype=torch.float64)
    ei = knn_edges(x, 2)
    torch.testing.assert_close(conv((x, x), ei, size=(6, 6)), conv(x, ei))


@pytest.mark.parametrize("normalize", ["all", "neighbors"])
def test_individual_forward_from_given_projections(normalize):
    """forward(..., proj=project(x)) is forward(x): the per-node terms a caller computed once (e.g.
    for many target blocks of one source set); bipartite input takes one projection per side."""
    torch.manual_seed(24)
    conv = IndividualRelationConv(4, 3, normalize=normalize).double()
    x = torch.randn(9, 4, dtype=torch.float64)
    ei = knn_edges(x, 3)
    torch.testing.assert_close(conv(x, ei, proj=conv.project(x)), conv(x, ei))
    x_src, x_dst = x, torch.randn(5, 4, dtype=torch.float64)
    ei_b = torch.stack([torch.randint(0, 9, (12,)), torch.arange(5).repeat(3)[:12]])
    ref = conv((x_src, x_dst), ei_b)
    torch.testing.assert_close(conv((x_src, x_dst), ei_b, proj=(conv.project(x_src), conv.project(x_dst))), ref)
    # the projections are what is read: other projections give other outputs
    other = conv.project(x_src + 1.0)
    assert not torch.allclose(conv((x_src, x_dst), ei_b, proj=(other, conv.project(x_dst))), ref)
    with pytest.raises(ValueError, match="pair"):
        conv((x_src, x_dst), ei_b, proj=conv.project(x_src))
    with pytest.raises(ValueError, match=r"lin \(9, 3\)"):
        conv(x, ei, proj=conv.project(x[:4]))


def test_individual_log_denominator_of_a_larger_source_set():
    """Targets attached to a large source set pass only their neighbours' rows with Eq. 2's all-node
    denominator over the whole set (``log_denominator``): the same output as the whole set passed,
    checked against the dense restatement; "neighbors" takes none."""
    torch.manual_seed(25)
    conv = IndividualRelationConv(4, 3, normalize="all").double()
    x_src, x_dst = torch.randn(11, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    nbrs = torch.tensor([[2, 5, 7], [0, 5, 10], [9, 1, 3]])  # (targets, k) rows of x_src
    edge_index = torch.stack([nbrs.reshape(-1), torch.arange(3).repeat_interleave(3)])
    full = conv((x_src, x_dst), edge_index)
    torch.testing.assert_close(full, ref_individual_bipartite(x_src, x_dst, edge_index, conv,
                                                              torch.zeros(11, dtype=torch.long),
                                                              torch.zeros(3, dtype=torch.long)))
    lse = all_node_logsumexp(x_dst @ conv.att_dst, x_src @ conv.att_src, negative_slope=conv.negative_slope)
    part = torch.stack([torch.arange(9), torch.arange(3).repeat_interleave(3)])  # the gathered rows alone
    got = conv((x_src[nbrs.reshape(-1)], x_dst), part, log_denominator=lse)
    torch.testing.assert_close(got, full)
    assert not torch.allclose(conv((x_src[nbrs.reshape(-1)], x_dst), part), full)  # their own denominator differs
    with pytest.raises(ValueError, match="log_denominator is Eq. 2's all-node denominator"):
        IndividualRelationConv(4, 3, normalize="neighbors").double()((x_src, x_dst), edge_index, log_denominator=lse)


def ref_pairwise_mp(x_src, x_dst, edge_index, v, left, right, conv):
    """Eq. 6-9 by message passing on any (bipartite) pair graph, one target at a time."""
    sl = conv.negative_slope
    out = torch.zeros_like(x_dst)
    for i in range(x_dst.size(0)):
        srcs = [j for j, t in edge_index.t().tolist() if t == i]
        msg = torch.zeros(x_dst.size(1), dtype=x_dst.dtype)
        if srcs:
            e = torch.stack([F.leaky_relu(x_dst[i] @ conv.att_p_dst + x_src[j] @ conv.att_p_src, sl) for j in srcs])
            g = torch.softmax(e, 0)
            msg = sum(g[k] * conv.lin_p(x_src[j]) for k, j in enumerate(srcs))
        if conv.igp:
            ins = [(n, "l") for n, t in left.t().tolist() if t == i]
            ins += [(n, "r") for n, t in right.t().tolist() if t == i]
            z = torch.stack([F.leaky_relu(x_dst[i] @ (conv.att_l_pair if s == "l" else conv.att_r_pair)
                                          + v[n] @ (conv.att_l_image if s == "l" else conv.att_r_image), sl)
                             for n, s in ins])
            q = torch.softmax(z, 0)
            inter = sum(q[k] * (conv.lin_l if s == "l" else conv.lin_r)(v[n]) for k, (n, s) in enumerate(ins))
            msg = conv.beta * msg + (1 - conv.beta) * inter
        out[i] = conv.alpha * x_dst[i] + (1 - conv.alpha) * torch.relu(msg)
    return out


@pytest.mark.parametrize("igp", [True, False])
def test_pairwise_bipartite_and_size_match_restatement(igp):
    torch.manual_seed(23)
    conv = make_pr(4, igp=igp, seed=23)
    x_src = torch.randn(6, 4, dtype=torch.float64)
    x_dst = torch.randn(4, 4, dtype=torch.float64)
    v = torch.randn(3, 4, dtype=torch.float64)
    edge_index = torch.tensor([[0, 1, 2, 5, 3, 4, 0], [0, 0, 1, 1, 2, 3, 3]])
    left = torch.tensor([[0, 1, 2, 0], [0, 1, 2, 3]])
    right = torch.tensor([[1, 2, 0, 2], [0, 1, 2, 3]])
    kw = dict(x_image=v, left_index=left, right_index=right) if igp else {}
    out = conv((x_src, x_dst), edge_index, size=(6, 4), **kw)
    torch.testing.assert_close(out, ref_pairwise_mp(x_src, x_dst, edge_index, v, left, right, conv))
    x = torch.randn(4, 4, dtype=torch.float64)
    ei = edge_index[:, edge_index[0] < 4]
    torch.testing.assert_close(conv((x, x), ei, size=(4, 4), **kw), conv(x, ei, **kw))


def test_both_layers_compile_fullgraph():
    """torch.compile(fullgraph=True) traces both layers (no host sync, no graph break) and gives
    the eager outputs; backend "eager" keeps the test cheap (inductor needs a C++ toolchain)."""
    torch._dynamo.reset()
    torch.manual_seed(24)
    x = torch.randn(12, 4)
    batch = torch.tensor([0] * 5 + [1] * 7)
    edge_index = knn_edges(x, 3, batch=batch)
    for normalize, b in (("all", None), ("all", batch), ("neighbors", None)):
        conv = IndividualRelationConv(4, 6, normalize=normalize)
        compiled = torch.compile(conv, fullgraph=True, backend="eager")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the eager call's missing-batch warning, tested below
            eager = conv(x, edge_index, batch=b)
        torch.testing.assert_close(compiled(x, edge_index, batch=b), eager)
    f, v = torch.randn(6, 4), torch.randn(6, 4)
    pr = PairwiseRelationConv(4)
    dense = torch.compile(pr.forward_dense, fullgraph=True, backend="eager")
    torch.testing.assert_close(dense(f, v, mask=pair_mask(f, 3)), pr.forward_dense(f, v, mask=pair_mask(f, 3)))
    args = pr_args(pair_part(f), v)
    torch.testing.assert_close(torch.compile(pr, fullgraph=True, backend="eager")(*args), pr(*args))


def test_missing_batch_warns_once_for_a_dataloader_batch():
    from torch_geometric.loader import DataLoader

    torch.manual_seed(25)
    graphs = []
    for n in (6, 8, 5):
        x = torch.randn(n, 4)
        graphs.append(Data(x=x, edge_index=knn_edges(x, 2)))
    data = next(iter(DataLoader(graphs, batch_size=3)))
    conv = IndividualRelationConv(4, 4)
    with pytest.warns(UserWarning, match="no batch vector was given"):
        conv(data.x, data.edge_index)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        conv(data.x, data.edge_index)  # once per layer
        IndividualRelationConv(4, 4)(data.x, data.edge_index, batch=data.batch)
        IndividualRelationConv(4, 4, normalize="neighbors")(data.x, data.edge_index)
        IndividualRelationConv(4, 4)(graphs[0].x, graphs[0].edge_index)  # one (connected) graph


def test_layers_inside_sequential_and_heteroconv():
    from torch_geometric.nn import HeteroConv, Sequential

    torch.manual_seed(26)
    f = torch.randn(5, 4, dtype=torch.float64)
    data = hybrid_graph(f, 2)  # the individual kNN graph and the pair graphs in one HeteroData
    ir = IndividualRelationConv(4, 4).double()
    pr = make_pr(4, seed=26)
    args = pr_args(data, f)
    seq = Sequential("x, edge_index, v, left, right", [(pr, "x, edge_index, v, left, right -> x"),
                                                       (torch.nn.Identity(), "x -> x")])
    torch.testing.assert_close(seq(*args), pr(*args))
    torch.testing.assert_close(pr(*args).view(5, 5, 4), pr.forward_dense(f))
    rel = INTRA
    conv = HeteroConv({("image", "knn", "image"): ir, rel: pr})
    out = conv({"image": f, "pair": data["pair"].x}, data.edge_index_dict,
               x_image_dict={rel: f}, left_index_dict={rel: args[3]}, right_index_dict={rel: args[4]})
    torch.testing.assert_close(out["pair"], pr(*args))
    torch.testing.assert_close(out["image"], ir(f, data["image", "knn", "image"].edge_index))


# ---------------------------------------------------------------------------------------------
# Each equation twice: the dense form against message passing (outputs and gradients), and the
# dense form fed with per-node projections gathered for a batch of graphs
# ---------------------------------------------------------------------------------------------
def _dense_adjacency(edge_index, b, m):
    """(B, M, M) bool of the edges of B graphs of M consecutive nodes: [g, i, j] = edge j -> i."""
    adj = torch.zeros(b * m, m, dtype=torch.bool)
    adj[edge_index[1], edge_index[0] % m] = True
    return adj.view(b, m, m)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("normalize", ["all", "neighbors"])
@pytest.mark.parametrize("loop", [False, True])
def test_individual_dense_equals_message_passing_with_gradients(dtype, normalize, loop):
    torch.manual_seed(30)
    conv = IndividualRelationConv(8, 6, normalize=normalize).to(dtype)
    b, m = 3, 7
    x = torch.randn(b, m, 8, dtype=dtype, requires_grad=True)
    batch = torch.arange(b).repeat_interleave(m)
    edge_index = knn_edges(x.detach().reshape(b * m, 8), 3, batch=batch, loop=loop)
    w = torch.randn(b, m, 6, dtype=dtype)

    dense = conv.forward_dense(x, _dense_adjacency(edge_index, b, m))
    (dense * w).sum().backward()
    g_dense = [x.grad.clone()] + [p.grad.clone() for p in conv.parameters()]
    x.grad = None
    conv.zero_grad()
    mp = conv(x.reshape(b * m, 8), edge_index, batch=batch).view(b, m, 6)
    (mp * w).sum().backward()
    g_mp = [x.grad.clone()] + [p.grad.clone() for p in conv.parameters()]
    torch.testing.assert_close(dense, mp, atol=1e-5, rtol=1e-5)
    for a, c in zip(g_dense, g_mp, strict=True):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)
    # one graph without a batch axis
    adj1 = _dense_adjacency(edge_index, b, m)[1]
    torch.testing.assert_close(conv.forward_dense(x[1], adj1), mp[1], atol=1e-5, rtol=1e-5)


def test_individual_dense_from_gathered_projections():
    """project() once per node, gathered per graph (nodes shared between graphs), gives what the
    graphs' own features give."""
    torch.manual_seed(31)
    conv = IndividualRelationConv(6, 5).double()
    nodes = torch.randn(10, 6, dtype=torch.float64)
    index = torch.tensor([[0, 3, 4, 9], [3, 1, 2, 0], [7, 8, 3, 5]])  # 3 graphs of 4 nodes
    x = nodes[index]
    adj = torch.rand(3, 4, 4) < 0.6
    proj = conv.project(nodes).gather(index)
    torch.testing.assert_close(proj.lin, conv.lin(x))
    torch.testing.assert_close(conv.forward_dense(x, adj, proj=proj), conv.forward_dense(x, adj))


def test_individual_dense_node_without_neighbours_gets_only_itself():
    conv = IndividualRelationConv(6, 6, normalize="neighbors").double()
    x = torch.randn(4, 6, dtype=torch.float64)
    adj = torch.zeros(4, 4, dtype=torch.bool)
    adj[0, 1] = True
    out = conv.forward_dense(x, adj)
    torch.testing.assert_close(out[2], torch.relu(conv.lin(x[2])))
    torch.testing.assert_close(out, conv(x, torch.tensor([[1], [0]])))


def test_individual_dense_errors():
    conv = IndividualRelationConv(6, 6)
    x = torch.randn(2, 5, 6)
    adj = torch.ones(2, 5, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="adj must be a bool tensor of shape"):
        conv.forward_dense(x, torch.ones(2, 5, 5))
    with pytest.raises(ValueError, match=r"proj.lin must have shape \(2, 5, 6\)"):
        conv.forward_dense(x, adj, proj=conv.project(x)._replace(lin=torch.randn(2, 5, 3)))
    with pytest.raises(ValueError, match=r"proj.dots must have shape \(2, 5, 2\)"):
        conv.forward_dense(x, adj, proj=conv.project(x)._replace(dots=torch.randn(2, 5, 3)))
    with pytest.raises(ValueError, match="x must be a 2-D or 3-D tensor with 6 channels"):
        conv.forward_dense(torch.randn(5, 3), adj[0])


@pytest.mark.parametrize("igp", [True, False])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("m", [6, 40])  # 6 < d: scalars folded into the (M, M) factors; 40 > d: into (M, d)
def test_pairwise_dense_from_gathered_projections(igp, masked, m):
    """Per-image projections gathered for B graphs of M images (images shared between graphs),
    the query graph (row 0) of each: what forward_dense computes from the graphs' own features,
    and the literal loops of ref_pairwise."""
    torch.manual_seed(32)
    d, b = 16, 2
    conv = make_pr(d, igp=igp, seed=32)
    images = torch.randn(m + 5, d, dtype=torch.float64)
    index = torch.stack([torch.randperm(m + 5)[:m] for _ in range(b)])  # (B, M)
    f = images[index]
    mask = torch.rand(b, m, m) < 0.5 if masked else None
    if mask is not None:
        mask[..., 0] = True  # every difference node keeps a source
    rows = torch.tensor([0])
    proj = conv.project(images).gather(index, rows)
    out = conv.forward_dense(f, mask=mask, rows=rows, proj=proj)[:, 0]
    torch.testing.assert_close(out, conv.forward_dense(f, mask=mask, rows=rows)[:, 0])
    for k in range(b):
        torch.testing.assert_close(out[k], ref_pairwise(f[k], f[k], conv, None if mask is None else mask[k])[0][0])
    if igp:  # image nodes of each graph's own (e.g. V' of the graph): project_nodes per graph
        v = torch.randn(b, m, d, dtype=torch.float64)
        per_graph = proj._replace(nodes=conv.project_nodes(v, rows))
        got = conv.forward_dense(f, mask=mask, rows=rows, proj=per_graph)[:, 0]
        torch.testing.assert_close(got, conv.forward_dense(f, v, mask=mask, rows=rows)[:, 0])
