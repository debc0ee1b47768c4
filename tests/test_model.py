"""HRNet module: Table 1 switches, Eq. 14 wiring, and a real learning test on identity clusters."""
import pytest
import torch
import torch.nn.functional as Fn

from hrnet_pyg import HRNet
from hrnet_pyg.config import TABLE1_ROWS, HRNetConfig
from hrnet_pyg.losses import (
    batch_hard_triplet_loss,
    consistent_node_loss,
    cross_entropy_label_smooth,
    verification_loss,
)
from hrnet_pyg.protocol import RerankConfig
from hrnet_pyg.scoring import score_query_graphs

D = 16


def _cfg(row: str, **kw) -> HRNetConfig:
    base = dict(backbone=None, feat_dim=D, k=3, num_identities=4, num_instances=3)
    return HRNetConfig.from_row(row, **{**base, **kw})


def _batch(num_ids=4, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    pids = torch.arange(num_ids).repeat_interleave(k)
    centres = torch.randn(num_ids, D, generator=g) * 2
    return (centres[pids] + torch.randn(len(pids), D, generator=g)).relu(), pids


EXPECTED_TERMS = {
    "CNN": {"cl", "tr"},
    "CNN+IR": {"cl", "tr", "in"},
    "CNN+IR*": {"cl", "tr", "in"},
    "CNN+IR+CNC": {"cl", "tr", "in", "c_pos", "c_neg"},
    "CNN+PR": {"cl", "tr", "pa"},
    "CNN+PR+IGP": {"cl", "tr", "pa"},
    "HRNet": {"cl", "tr", "in", "c_pos", "c_neg", "pa"},
}


@pytest.mark.parametrize("row", list(TABLE1_ROWS))
def test_table1_rows_have_their_modules_and_losses(row):
    torch.manual_seed(0)
    model = HRNet(_cfg(row), num_classes=4).train()
    x, pids = _batch()
    out = model(x, pids)
    assert set(out.losses) == EXPECTED_TERMS[row]
    assert (model.ir is not None) == ("IR" in row or row == "HRNet")
    assert (model.pr is not None) == ("PR" in row or row == "HRNet")
    if model.pr is not None:
        assert model.pr.igp == (row in ("CNN+PR+IGP", "HRNet"))
    # Eq. 14 re-stated plainly from the named terms.
    t = out.losses
    expected = sum(t[k] for k in ("cl", "tr", "in", "pa") if k in t)
    if "c_pos" in t:
        expected = expected + 0.1 * (t["c_pos"] + t["c_neg"])
    torch.testing.assert_close(out.loss, expected)


def test_forward_terms_equal_the_loss_functions_on_the_modules_outputs():
    torch.manual_seed(1)
    model = HRNet(_cfg("HRNet"), num_classes=4).train()
    x, pids = _batch(seed=3)
    out = model(x, pids)
    torch.testing.assert_close(out.losses["cl"], cross_entropy_label_smooth(out.logits, pids, 0.1))
    torch.testing.assert_close(out.losses["tr"], batch_hard_triplet_loss(x, pids, 0.3))
    torch.testing.assert_close(out.losses["in"], cross_entropy_label_smooth(out.ir_logits, pids, 0.1))
    cp, cn = consistent_node_loss(x, out.ir_feats, pids, 0.3)
    torch.testing.assert_close(out.losses["c_pos"], cp)
    torch.testing.assert_close(out.losses["c_neg"], cn)
    torch.testing.assert_close(out.losses["pa"], verification_loss(out.pair_logits, pids))
    assert out.pair_logits.shape == (12, 12)


def test_igp_without_ir_uses_the_cnn_features():
    """Note under Table 1: without IR, v_n = f_n and v_i = f_i in Eq. 7."""
    torch.manual_seed(2)
    model = HRNet(_cfg("CNN+PR+IGP"), num_classes=4).train()
    x, pids = _batch()
    out = model(x, pids)
    u = model.pr.forward_dense(x, x)
    torch.testing.assert_close(out.pair_logits, model.verifier(u))


def test_inference_returns_features_only_and_same_type():
    model = HRNet(_cfg("HRNet"), num_classes=4).eval()
    x, pids = _batch()
    out = model(x, pids)
    assert out.loss is None and out.losses == {} and out.pair_logits is None
    assert out.feats.shape == (12, D) and out.bn_feats.shape == (12, D)


def test_batch_smaller_than_k_plus_one_is_a_clear_error():
    model = HRNet(_cfg("HRNet", k=12), num_classes=4).train()
    x, pids = _batch()
    with pytest.raises(ValueError, match="smaller than k\\+1"):
        model(x, pids)


def test_wrong_feature_shape_is_a_clear_error():
    model = HRNet(_cfg("HRNet"), num_classes=4)
    with pytest.raises(ValueError, match=r"\(N, 16\)"):
        model(torch.randn(12, 3, 8, 4))


def test_score_query_graphs_cnn_row_is_cosine_of_bnneck_features():
    model = HRNet(_cfg("CNN"), num_classes=4).eval()
    x, _ = _batch()
    s = score_query_graphs(model, x[None])
    b = Fn.normalize(model.bnneck.bn(x), dim=1)
    torch.testing.assert_close(s[0], b[1:] @ b[0])


def _auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    pos, neg = scores[labels], scores[~labels]
    return float((pos[:, None] > neg[None, :]).float().mean() + 0.5 * (pos[:, None] == neg[None, :]).float().mean())


def test_learning_on_identity_clusters_drives_losses_down_and_pr_head_separates_pairs():
    """A few hundred steps on synthetic features (identity clusters + noise), seeded.

    A linear embedding plays the CNN so that every term of Eq. 14 (L_tr included) can learn.
    """
    torch.manual_seed(0)
    d_in, num_ids, P, K = 24, 40, 6, 4
    cfg = HRNetConfig.from_row("HRNet", backbone=None, feat_dim=D, k=4, num_identities=P, num_instances=K)
    model = HRNet(cfg, num_classes=30).train()
    embed = torch.nn.Linear(d_in, D)
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(num_ids, d_in, generator=g)

    def draw(ids):
        pids = ids.repeat_interleave(K)
        return centres[pids] + 0.7 * torch.randn(len(pids), d_in, generator=g), pids

    opt = torch.optim.Adam(list(model.parameters()) + list(embed.parameters()), lr=3e-3)
    history = []
    for _step in range(300):
        x, pids = draw(torch.randperm(30, generator=g)[:P])
        out = model(embed(x), pids)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        terms = {k: float(v) for k, v in out.losses.items()}
        # Eq. 14 weighs L_c+ + L_c- as one term: starting from a random W_s, L_c- (large) falls
        # while L_c+ (near 0 at init, outputs being small) rises as the scale of V' grows.
        terms["cnc"] = terms.pop("c_pos") + terms.pop("c_neg")
        history.append(terms)
    for term in history[0]:
        first = sum(h[term] for h in history[:30]) / 30
        last = sum(h[term] for h in history[-30:]) / 30
        assert last < first, f"loss term {term} did not go down: {first:.4f} -> {last:.4f}"
    # Held-out identities 30..39: the PR head's same-identity probability separates pairs.
    model.eval()
    scores, labels = [], []
    with torch.no_grad():
        for _s in range(5):
            x, pids = draw(torch.arange(30, 40)[torch.randperm(10, generator=g)[:P]])
            f = embed(x)
            u = model.pr.forward_dense(f, model.ir(f, model.individual_edges(f)))
            logits = model.verifier(u)
            off = ~torch.eye(len(pids), dtype=torch.bool)
            scores.append(logits[off])
            labels.append((pids[:, None] == pids[None, :])[off])
    auc = _auc(torch.cat(scores), torch.cat(labels))
    assert auc > 0.9, f"held-out pair AUC {auc:.3f}"


def test_relational_reranking_beats_cosine_on_a_tiny_feature_world():
    # A learning test, not a benchmark: the efficacy study's world at a CI size, the HRNet row
    # with the default test protocol, trained through the public API. Its relational re-ranking
    # must rank the unseen test identities better than the cosine of its own features (measured
    # gains at seeds 0-2: +4.6 to +5.3 mAP points; the bar is +2).
    from torch.utils.data import DataLoader

    from hrnet_pyg.data import FeatureDataset, PKSampler
    from hrnet_pyg.data.synthetic_features import FeatureWorldConfig, generate_feature_world
    from hrnet_pyg.evaluation import cosine_distance, evaluate_rank
    from hrnet_pyg.rerank import relational_rerank

    torch.manual_seed(0)
    w = generate_feature_world(FeatureWorldConfig(dim=32, num_train_ids=200, num_test_ids=100, seed=0))
    cfg = HRNetConfig.from_row("HRNet", backbone=None, feat_dim=32, lr=1e-3, epochs=15,
                               milestones=(10, 13))
    loader = DataLoader(FeatureDataset(w.train.feats, w.train.pids),
                        batch_sampler=PKSampler(w.train.pids.tolist(), P=11, K=6, seed=0))
    model = HRNet(cfg, num_classes=w.num_train_pids)
    model.fit(loader, device="cpu", progress=False)
    model.eval()
    args = (w.query.pids.numpy(), w.gallery.pids.numpy(), w.query.camids.numpy(), w.gallery.camids.numpy())
    with torch.no_grad():
        qf, gf = w.query.feats, w.gallery.feats
        cos = evaluate_rank(cosine_distance(model.retrieval_features(qf), model.retrieval_features(gf)), *args)
        rel = evaluate_rank(relational_rerank(model, qf, gf, RerankConfig(shortlist=40), progress=False), *args)
    assert rel.mAP > cos.mAP + 0.02, (rel.mAP, cos.mAP)


# ---------------------------------------------------------------------------------------------
# Checkpoints of the flat layout (before the relation head): ir., ir_neck., pr., verifier.
# ---------------------------------------------------------------------------------------------
FIXTURES = __import__("pathlib").Path(__file__).resolve().parent / "fixtures"


def test_checkpoint_of_the_flat_layout_loads():
    """A checkpoint written by the package before the relation head (tests/fixtures, made by
    make_flat_layout_checkpoint.py at commit 3a97ed0) loads, and the model computes what the old
    package computed from it: the training losses and the test-time scores."""
    from hrnet_pyg.engine import load_model

    raw = torch.load(FIXTURES / "flat_layout_hrnet.pth", weights_only=True)["model"]
    assert any(k.startswith("ir.") for k in raw) and not any(k.startswith("head.") for k in raw)
    expected = torch.load(FIXTURES / "flat_layout_expected.pt", weights_only=True)
    for model in (HRNet.load(FIXTURES / "flat_layout_hrnet.pth"), load_model(FIXTURES / "flat_layout_hrnet.pth")):
        state = model.state_dict()
        # the same tensors in the same order (an optimizer's state, saved for resume, is by position)
        assert list(state) == [k if k.startswith(("backbone.", "bnneck.")) else f"head.{k}" for k in raw]
        for key, value in raw.items():
            assert torch.equal(state[key if key.startswith("bnneck.") else f"head.{key}"], value), key
        with torch.no_grad():
            torch.testing.assert_close(score_query_graphs(model.eval(), expected["graphs"]), expected["scores"],
                                       atol=1e-6, rtol=1e-6)
            out = model.train()(expected["x"], expected["pids"])
        assert set(out.losses) == set(expected["losses"])
        for name, value in expected["losses"].items():
            torch.testing.assert_close(out.losses[name], value, atol=1e-6, rtol=1e-6)


def test_flat_state_dict_loads_strictly_and_other_keys_still_fail():
    torch.manual_seed(5)
    model = HRNet(_cfg("HRNet"), num_classes=4)
    flat = {k.removeprefix("head."): v.clone() for k, v in model.state_dict().items()}
    assert "ir.lin.weight" in flat
    other = HRNet(_cfg("HRNet"), num_classes=4)
    other.load_state_dict(flat)  # strict: every key found after the rename
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key
    with pytest.raises(RuntimeError, match="Unexpected key"):
        other.load_state_dict({**flat, "irx.weight": torch.zeros(1)})


def test_removed_ir_attention_norm_size_is_one_clear_line(tmp_path):
    from hrnet_pyg.config import ConfigError

    with pytest.raises(ConfigError, match=r"^ir_attention_norm: 'size' is no longer available: it lost to "
                                          r"'neighbors' on both rows measured \(docs/efficacy.md\)"):
        HRNetConfig(ir_attention_norm="size")
    ckpt = torch.load(FIXTURES / "flat_layout_hrnet.pth", weights_only=True)
    ckpt["config"]["ir_attention_norm"] = "size"
    torch.save(ckpt, tmp_path / "old.pth")
    with pytest.raises(ValueError, match="ir_attention_norm: 'size' is no longer available") as err:
        HRNet.load(tmp_path / "old.pth")
    assert "\n" not in str(err.value)


def test_the_model_module_keeps_its_old_class_name_as_a_deprecated_alias():
    import hrnet_pyg.model as model_module

    with pytest.warns(DeprecationWarning, match="HRNetModule"):
        assert model_module.HRNet is model_module.HRNetModule


# ---------------------------------------------------------------------------- hard negatives
def _mined_reference(x, pids, mem_x, mem_pids, m):
    """Each batch image's ceil(m / N) nearest memory rows among identities absent from the batch
    (a plain loop over images), the union cut to the m nearest to the batch; a set of rows."""
    cand = [j for j in range(mem_x.size(0)) if int(mem_pids[j]) not in set(pids.tolist())]
    per = min(len(cand), -(-m // x.size(0)))
    chosen = set()
    for i in range(x.size(0)):
        dist = {j: float(((x[i].double() - mem_x[j].double()) ** 2).sum()) for j in cand}
        chosen |= set(sorted(cand, key=lambda j: (dist[j], j))[:per])
    nearest = {j: min(float(((x[i].double() - mem_x[j].double()) ** 2).sum()) for i in range(x.size(0)))
               for j in chosen}
    kept = sorted(chosen, key=lambda j: (nearest[j], j))[:m]
    return {tuple(mem_x[j].tolist()) for j in kept}


def test_hard_negatives_are_off_by_default_and_need_a_filled_memory():
    assert HRNetConfig().ir_hard_negatives == 0
    x, pids = _batch(seed=4)
    torch.manual_seed(5)
    plain = HRNet(_cfg("HRNet"), num_classes=4).train()
    mined = HRNet(_cfg("HRNet", ir_hard_negatives=6, ir_memory_size=30), num_classes=4).train()
    mined.load_state_dict(plain.state_dict())
    torch.testing.assert_close(mined(x, pids).loss, plain(x, pids).loss)  # empty memory: the batch alone
    assert plain.head._memory is None  # off: nothing is kept
    assert mined.head._memory_count == 12
    torch.testing.assert_close(mined.head._memory[0][:12], x)
    with pytest.raises(ValueError, match="ir_hard_negatives"):
        HRNetConfig(ir_hard_negatives=-1)
    with pytest.raises(ValueError, match="ir_memory_size"):
        HRNetConfig(ir_memory_size=0)


def test_hard_negatives_join_the_ir_graph_and_carry_no_loss():
    torch.manual_seed(6)
    m = 7
    model = HRNet(_cfg("HRNet", ir_hard_negatives=m, ir_memory_size=40), num_classes=20).train()
    head = model.head
    others, other_pids = _batch(seed=7)
    x, pids = _batch(seed=8)
    head.remember(others, other_pids + 10)  # identities absent from the next batch
    head.remember(others, other_pids + 10)  # the same images again: a duplicate is mined once
    head.remember(x[:3] + 0.01, pids[:3])  # an identity of the batch: never a negative
    mem_x, mem_pids = (t[:head._memory_count] for t in head._memory)
    rows = head.hard_negatives(x, pids)
    assert rows.size(0) <= m and not rows.requires_grad
    assert {tuple(r.tolist()) for r in rows} == _mined_reference(x, pids, mem_x, mem_pids, m)
    out = model(x, pids)
    # the IR layer on the explicit graph of the batch and its negatives (dense Eq. 1-3), batch rows kept
    graph = torch.cat([x, rows]).unsqueeze(0)
    dense = model.ir.forward_dense(graph, head.individual_adjacency(graph))[0]
    torch.testing.assert_close(out.ir_feats, dense[:12], atol=1e-5, rtol=1e-5)
    assert out.ir_logits.shape[0] == 12 and out.pair_logits.shape == (12, 12)
    cp, cn = consistent_node_loss(x, out.ir_feats, pids, 0.3)
    torch.testing.assert_close(out.losses["c_pos"], cp)
    torch.testing.assert_close(out.losses["in"], cross_entropy_label_smooth(out.ir_logits, pids, 0.1))
    # the mined rows feed the batch: without them V' differs
    alone = model.ir.forward_dense(x.unsqueeze(0), head.individual_adjacency(x.unsqueeze(0)))[0]
    assert not torch.allclose(out.ir_feats, alone, atol=1e-4)
    out.loss.backward()  # gradients reach the layer through the negatives' messages, not the memory
    assert model.ir.lin.weight.grad is not None and not head._memory[0].requires_grad


def test_feature_memory_is_a_ring_of_the_latest_batches_and_eval_leaves_it():
    model = HRNet(_cfg("CNN+IR", ir_hard_negatives=4, ir_memory_size=8), num_classes=4).train()
    head = model.head
    x, pids = _batch(seed=9)
    head.remember(x, pids)  # 12 rows into 8: the last 8
    torch.testing.assert_close(head._memory[0], x[4:])
    assert head._memory_count == 8 and head._memory_next == 0
    head.remember(x[:3] * 2, pids[:3])  # the oldest three are overwritten
    torch.testing.assert_close(head._memory[0][:3], x[:3] * 2)
    torch.testing.assert_close(head._memory[0][3:], x[7:])
    before = head._memory[0].clone()
    model.eval()(x, pids)
    torch.testing.assert_close(head._memory[0], before)
