"""Eq. 4-5 and 10-14 against plain loop re-statements of the paper's equations."""
import math

import pytest
import torch
import torch.nn.functional as F

from hrnet_pyg.losses import (
    LOSS_TERMS,
    batch_hard_triplet_loss,
    consistent_node_loss,
    cross_entropy_label_smooth,
    hrnet_total_loss,
    pairwise_euclidean,
    verification_loss,
)


def pk_pids(p: int, k: int) -> torch.Tensor:
    return torch.arange(p).repeat_interleave(k)


def dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # m(a, b) written directly from the definition (no expansion trick)
    return ((a - b) ** 2).sum().sqrt()


# ----------------------------------------------------------------------------- Eq. 10-11
def ref_label_smooth_ce(logits, targets, eps):
    n, s_count = logits.shape
    total = 0.0
    for n_i in range(n):
        z = logits[n_i].double()
        y_hat = torch.exp(z) / torch.exp(z).sum()
        for s in range(s_count):
            p_s = 1 - (s_count - 1) / s_count * eps if s == int(targets[n_i]) else eps / s_count
            total += -p_s * math.log(float(y_hat[s]))
    return total / n


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_label_smooth_ce_matches_equation(eps):
    torch.manual_seed(0)
    logits = torch.randn(7, 5) * 3
    targets = torch.randint(0, 5, (7,))
    out = cross_entropy_label_smooth(logits, targets, epsilon=eps)
    assert out.dim() == 0
    assert out.item() == pytest.approx(ref_label_smooth_ce(logits, targets, eps), abs=1e-5)
    torch.testing.assert_close(out, F.cross_entropy(logits, targets, label_smoothing=eps))


def test_label_smooth_ce_gradient_matches_torch():
    torch.manual_seed(1)
    logits = torch.randn(6, 4, requires_grad=True)
    targets = torch.tensor([0, 3, 1, 1, 2, 0])
    (g_ours,) = torch.autograd.grad(cross_entropy_label_smooth(logits, targets), logits)
    (g_ref,) = torch.autograd.grad(F.cross_entropy(logits, targets, label_smoothing=0.1), logits)
    torch.testing.assert_close(g_ours, g_ref)


def _hand_written_label_smooth_ce(logits, targets, eps):
    """The package's former vectorised Eq. 10-11: an explicit smoothed target times log-softmax."""
    num_classes = logits.size(1)
    log_prob = F.log_softmax(logits, dim=1)
    p = log_prob.new_full(log_prob.shape, eps / num_classes)
    p.scatter_(1, targets.long().unsqueeze(1), 1.0 - (num_classes - 1) / num_classes * eps)
    return (-p * log_prob).sum(dim=1).mean()


@pytest.mark.parametrize("shape, eps", [((1, 2), 0.1), ((9, 3), 0.0), ((33, 751), 0.1), ((16, 7), 1.0)])
def test_label_smooth_ce_equals_the_hand_written_formula_with_gradients(shape, eps):
    gen = torch.Generator().manual_seed(shape[0])
    logits = (torch.randn(*shape, generator=gen, dtype=torch.float64) * 4).requires_grad_()
    targets = torch.randint(0, shape[1], (shape[0],), generator=gen)
    ours = cross_entropy_label_smooth(logits, targets, epsilon=eps)
    ref = _hand_written_label_smooth_ce(logits, targets, eps)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-12, atol=1e-12)
    # float32, the training dtype: equal to rounding
    l32 = logits.detach().float().requires_grad_()
    o32, r32 = cross_entropy_label_smooth(l32, targets, eps), _hand_written_label_smooth_ce(l32, targets, eps)
    torch.testing.assert_close(o32, r32)
    torch.testing.assert_close(torch.autograd.grad(o32, l32)[0], torch.autograd.grad(r32, l32)[0])


def test_label_smooth_ce_bad_input():
    logits = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 4\)"):
        cross_entropy_label_smooth(logits, torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match="targets must have shape"):
        cross_entropy_label_smooth(logits, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="epsilon"):
        cross_entropy_label_smooth(logits, torch.tensor([0, 1, 2]), epsilon=1.5)
    with pytest.raises(ValueError, match="integer"):
        cross_entropy_label_smooth(logits, torch.tensor([0.0, 1.0, 2.0]))


# ----------------------------------------------------------------------------- distances
def test_pairwise_euclidean_matches_definition_and_has_finite_gradients():
    torch.manual_seed(0)
    x = torch.randn(5, 3, dtype=torch.float64)
    y = torch.randn(4, 3, dtype=torch.float64)
    d = pairwise_euclidean(x, y)
    ref = torch.stack([torch.stack([dist(a, b) for b in y]) for a in x])
    torch.testing.assert_close(d, ref)
    x = x.clone().requires_grad_(True)
    dxx = pairwise_euclidean(torch.cat([x, x[:1]]))  # diagonal and a duplicated point
    assert dxx.diagonal().max() < 1e-5
    (g,) = torch.autograd.grad(dxx.sum(), x)
    assert torch.isfinite(g).all()


def test_pairwise_euclidean_low_precision_and_autocast():
    torch.manual_seed(0)
    x = torch.randn(6, 16)
    ref = pairwise_euclidean(x.double())
    xh = x.half().requires_grad_(True)
    d = pairwise_euclidean(xh)  # fp16 input: computed in float32
    assert d.dtype == torch.float32
    (g,) = torch.autograd.grad(d.sum(), xh)
    assert torch.isfinite(g).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = pairwise_euclidean(x)  # autocast would run addmm in bf16 (~1e-2 error)
    assert d.dtype == torch.float32
    torch.testing.assert_close(d, pairwise_euclidean(x), atol=0, rtol=0)
    off = ~torch.eye(6, dtype=torch.bool)  # the diagonal is ~1e-3 from float32 cancellation
    torch.testing.assert_close(d.double()[off], ref[off], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- Eq. 12
def ref_batch_hard_triplet(feats, pids, margin):
    losses = []
    for a in range(len(pids)):
        pos = [dist(feats[a], feats[p]) for p in range(len(pids)) if p != a and pids[p] == pids[a]]
        neg = [dist(feats[a], feats[n]) for n in range(len(pids)) if pids[n] != pids[a]]
        if not pos or not neg:
            continue
        losses.append(torch.clamp(max(pos) - min(neg) + margin, min=0))
    return torch.stack(losses).mean() if losses else feats.sum() * 0


@pytest.mark.parametrize("margin", [0.3, 5.0])
def test_triplet_matches_loop(margin):
    torch.manual_seed(0)
    feats = torch.randn(12, 6, dtype=torch.float64, requires_grad=True)
    pids = pk_pids(4, 3)
    out = batch_hard_triplet_loss(feats, pids, margin)
    ref = ref_batch_hard_triplet(feats, pids, margin)
    torch.testing.assert_close(out, ref)
    assert out.item() > 0
    g_out, = torch.autograd.grad(out, feats)
    g_ref, = torch.autograd.grad(ref, feats)
    torch.testing.assert_close(g_out, g_ref)


def test_triplet_one_image_identities_are_excluded_as_anchors():
    torch.manual_seed(0)
    feats = torch.randn(8, 4, dtype=torch.float64)
    pids = torch.tensor([0, 0, 0, 1, 1, 2, 3, 4])  # ids 2, 3, 4 have one image each
    out = batch_hard_triplet_loss(feats, pids, 1.0)
    torch.testing.assert_close(out, ref_batch_hard_triplet(feats, pids, 1.0))
    # they still act as negatives: moving one image of id 2 onto anchor 0 raises the loss
    feats2 = feats.clone()
    feats2[5] = feats[0] + 1e-3
    assert batch_hard_triplet_loss(feats2, pids, 1.0) > out


def test_triplet_no_valid_anchor_is_zero_with_graph():
    feats = torch.randn(4, 3, requires_grad=True)
    for pids in (torch.tensor([0, 1, 2, 3]), torch.tensor([5, 5, 5, 5])):
        out = batch_hard_triplet_loss(feats, pids)
        assert out.item() == 0.0 and out.requires_grad
        (g,) = torch.autograd.grad(out, feats)
        assert torch.equal(g, torch.zeros_like(g))


def test_triplet_permutation_invariant():
    torch.manual_seed(3)
    feats, pids = torch.randn(12, 5), pk_pids(3, 4)
    perm = torch.randperm(12)
    torch.testing.assert_close(batch_hard_triplet_loss(feats, pids),
                               batch_hard_triplet_loss(feats[perm], pids[perm]))


def test_triplet_bad_input():
    with pytest.raises(ValueError, match="pids must have shape"):
        batch_hard_triplet_loss(torch.randn(4, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="feats must have shape"):
        batch_hard_triplet_loss(torch.randn(4), torch.tensor([0, 1, 0, 1]))


# ----------------------------------------------------------------------------- Eq. 4-5
def ref_cnc(v_in, v_out, pids, margin, mining):
    n = len(pids)
    m_in = [[dist(v_in[i], v_in[j]).detach() for j in range(n)] for i in range(n)]  # z(m(v_i, v_j))
    m_out = [[dist(v_out[i], v_out[j]) for j in range(n)] for i in range(n)]
    l_pos, l_neg = [], []
    for i in range(n):
        pos = [j for j in range(n) if j != i and pids[j] == pids[i]]
        neg = [j for j in range(n) if pids[j] != pids[i]]
        if pos:
            if mining == "violation":
                jp = max(pos, key=lambda j: (m_out[i][j] - m_in[i][j]).item())
            else:
                jp = max(pos, key=lambda j: m_out[i][j].item())
            l_pos.append(torch.clamp(m_out[i][jp] - m_in[i][jp] + margin, min=0))  # Eq. 4
        if neg:
            if mining == "violation":
                jn = max(neg, key=lambda j: (m_in[i][j] - m_out[i][j]).item())
            else:
                jn = min(neg, key=lambda j: m_out[i][j].item())
            l_neg.append(torch.clamp(m_in[i][jn] - m_out[i][jn] + margin, min=0))  # Eq. 5
    zero = v_out.sum() * 0
    return (torch.stack(l_pos).mean() if l_pos else zero,
            torch.stack(l_neg).mean() if l_neg else zero)


@pytest.mark.parametrize("mining", ["violation", "output", "batch_hard"])
@pytest.mark.parametrize("pids", [pk_pids(3, 3), torch.tensor([0, 0, 1, 2, 2, 2, 3])])
def test_cnc_matches_loop(mining, pids):
    torch.manual_seed(0)
    n = len(pids)
    v_in = torch.randn(n, 5, dtype=torch.float64)
    v_out = (v_in + 0.5 * torch.randn(n, 5, dtype=torch.float64)).requires_grad_(True)
    lp, ln = consistent_node_loss(v_in, v_out, pids, margin=0.3, mining=mining)
    rp, rn = ref_cnc(v_in, v_out, pids, 0.3, mining)
    torch.testing.assert_close(lp, rp)
    torch.testing.assert_close(ln, rn)
    assert lp.item() > 0 and ln.item() > 0
    g, = torch.autograd.grad(lp + 2 * ln, v_out)
    g_ref, = torch.autograd.grad(rp + 2 * rn, v_out)
    torch.testing.assert_close(g, g_ref)


def test_cnc_mining_modes_differ():
    # A positive pair whose output distance is small but grew a lot vs one far apart that shrank:
    # "violation" picks the first, "output" the second.
    v_in = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [20.0, 20.0]], dtype=torch.float64)
    v_out = torch.tensor([[0.0, 0.0], [2.0, 0.0], [4.0, 0.0], [20.0, 20.0]], dtype=torch.float64)
    pids = torch.tensor([0, 0, 0, 1])
    lv, _ = consistent_node_loss(v_in, v_out, pids, margin=0.0, mining="violation")
    lo, _ = consistent_node_loss(v_in, v_out, pids, margin=0.0, mining="output")
    torch.testing.assert_close(lv, ref_cnc(v_in, v_out, pids, 0.0, "violation")[0])
    torch.testing.assert_close(lo, ref_cnc(v_in, v_out, pids, 0.0, "output")[0])
    assert lv > lo


def test_cnc_no_gradient_through_detached_input_distances():
    torch.manual_seed(0)
    pids = pk_pids(3, 2)
    v_in = torch.randn(6, 4, requires_grad=True)
    v_out = torch.randn(6, 4).requires_grad_(True)  # a leaf independent of v_in
    lp, ln = consistent_node_loss(v_in, v_out, pids, margin=1.0)
    g_in, g_out = torch.autograd.grad(lp + ln, (v_in, v_out), allow_unused=True)
    assert g_in is None or torch.count_nonzero(g_in) == 0
    assert torch.count_nonzero(g_out) > 0


def test_cnc_gradient_reaches_input_through_the_layer_only():
    # v_out = v_in W: d loss / d v_in must equal (d loss / d v_out) W^T, nothing from m(v_i, v_j).
    torch.manual_seed(1)
    pids = pk_pids(3, 3)
    v_in = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 4, dtype=torch.float64)
    v_out = v_in @ w
    lp, ln = consistent_node_loss(v_in, v_out, pids, margin=1.0)
    g_in, g_out = torch.autograd.grad(lp + ln, (v_in, v_out))
    torch.testing.assert_close(g_in, g_out @ w.t())


def test_cnc_permutation_invariant_and_bad_input():
    torch.manual_seed(2)
    pids = pk_pids(4, 3)
    v_in, v_out = torch.randn(12, 5), torch.randn(12, 5)
    perm = torch.randperm(12)
    for mining in ("violation", "output"):
        a = consistent_node_loss(v_in, v_out, pids, mining=mining)
        b = consistent_node_loss(v_in[perm], v_out[perm], pids[perm], mining=mining)
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="mining"):
        consistent_node_loss(v_in, v_out, pids, mining="hard")
    with pytest.raises(ValueError, match="same number of nodes"):
        consistent_node_loss(v_in, v_out[:5], pids)


def test_cnc_single_identity_batch():
    v_in, v_out = torch.randn(4, 3), torch.randn(4, 3, requires_grad=True)
    lp, ln = consistent_node_loss(v_in, v_out, torch.zeros(4, dtype=torch.long))
    assert ln.item() == 0.0 and ln.requires_grad  # no negative anywhere: zero, graph kept
    torch.testing.assert_close(lp, ref_cnc(v_in, v_out, torch.zeros(4, dtype=torch.long),
                                           0.3, "violation")[0])


# ----------------------------------------------------------------------------- Eq. 13
def ref_verification(logits, row_pids, col_pids, skip):
    terms = []
    for n in range(logits.size(0)):
        for i in range(logits.size(1)):
            if (n, i) in skip:
                continue
            t = 1.0 if row_pids[n] == col_pids[i] else 0.0
            t_hat = 1 / (1 + math.exp(-float(logits[n, i])))
            terms.append(-t * math.log(t_hat) - (1 - t) * math.log(1 - t_hat))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("exclude_self", [True, False])
def test_verification_matches_equation(exclude_self):
    torch.manual_seed(0)
    pids = pk_pids(3, 3)
    logits = torch.randn(9, 9, dtype=torch.float64) * 2
    out = verification_loss(logits, pids, exclude_self=exclude_self)
    skip = {(n, n) for n in range(9)} if exclude_self else set()
    assert out.item() == pytest.approx(ref_verification(logits, pids, pids, skip), abs=1e-10)


def test_verification_row_subset():
    torch.manual_seed(0)
    pids = pk_pids(3, 3)
    full = torch.randn(9, 9, dtype=torch.float64)
    rows = torch.tensor([7, 1, 4])
    # rows of the batch itself: rows_index marks each row's own column
    out = verification_loss(full[rows], pids, rows_pids=pids[rows], rows_index=rows)
    skip = {(r, int(rows[r])) for r in range(3)}
    assert out.item() == pytest.approx(ref_verification(full[rows], pids[rows], pids, skip),
                                       abs=1e-10)
    # rows from elsewhere (e.g. queries vs. a gallery): nothing excluded
    q_pids = torch.tensor([2, 9])
    logits = torch.randn(2, 9, dtype=torch.float64)
    out = verification_loss(logits, pids, rows_pids=q_pids)
    assert out.item() == pytest.approx(ref_verification(logits, q_pids, pids, set()), abs=1e-10)


def test_verification_permutation_invariant_and_bad_input():
    torch.manual_seed(4)
    pids = pk_pids(3, 2)
    logits = torch.randn(6, 6)
    perm = torch.randperm(6)
    torch.testing.assert_close(verification_loss(logits, pids),
                               verification_loss(logits[perm][:, perm], pids[perm]))
    with pytest.raises(ValueError, match="not square"):
        verification_loss(torch.randn(3, 6), pids)
    with pytest.raises(ValueError, match="rows_pids must have shape"):
        verification_loss(torch.randn(3, 6), pids, rows_pids=torch.tensor([0, 1]))


# ----------------------------------------------------------------------------- Eq. 14
def test_total_loss_equation_and_ablation_rows():
    t = {k: torch.tensor(float(i + 1), requires_grad=True) for i, k in enumerate(LOSS_TERMS)}
    total = hrnet_total_loss(t, lambda_cnc=0.1)
    # cl=1, tr=2, in=3, pa=4, c+=5, c-=6
    assert total.item() == pytest.approx(1 + 2 + 3 + 4 + 0.1 * (5 + 6))
    total.backward()
    assert t["c_pos"].grad.item() == pytest.approx(0.1) and t["cl"].grad.item() == 1.0
    # the CNN row: only L_cl + L_tr
    assert hrnet_total_loss({"cl": torch.tensor(1.0), "tr": torch.tensor(2.0)}).item() == 3.0
    # CNN+IR+CNC row with aliases
    out = hrnet_total_loss({"loss_cl": torch.tensor(1.0), "L_in": torch.tensor(2.0),
                            "c+": torch.tensor(10.0)}, lambda_cnc=0.5)
    assert out.item() == pytest.approx(8.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_total_loss_names_non_finite_term(bad):
    terms = {"cl": torch.tensor(1.0), "pa": torch.tensor(bad), "tr": torch.tensor(0.5)}
    with pytest.raises(ValueError, match=r"'pa' \(L_pa \(Eq. 13\)\)"):
        hrnet_total_loss(terms)


def test_total_loss_bad_names():
    with pytest.raises(ValueError, match="unknown loss term 'ce'.*valid names: cl, tr"):
        hrnet_total_loss({"ce": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="both name"):
        hrnet_total_loss({"cl": torch.tensor(1.0), "loss_cl": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="'tr'.*scalar"):
        hrnet_total_loss({"tr": torch.ones(3)})
    with pytest.raises(ValueError, match="at least one"):
        hrnet_total_loss({})
