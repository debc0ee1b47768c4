"""fit / checkpoints / resume / extract / evaluate, end to end on tiny data."""
import math

import pytest
import torch
from torch.utils.data import DataLoader

from hrnet_pyg import HRNet
from hrnet_pyg.config import HRNetConfig
from hrnet_pyg.data import FeatureDataset, PKSampler
from hrnet_pyg.engine import (
    CHECKPOINT_FORMAT_VERSION,
    atomic_save,
    evaluate_features,
    fit,
    load_checkpoint,
    load_model,
    lr_at_epoch,
)
from hrnet_pyg.protocol import RerankConfig
from hrnet_pyg.scoring import score_query_graphs

D = 16


def _features(num_ids=8, per_id=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    pids = torch.arange(num_ids).repeat_interleave(per_id)
    centres = torch.randn(num_ids, D, generator=g) * 2
    feats = (centres[pids] + torch.randn(len(pids), D, generator=g)).relu()
    camids = torch.arange(len(pids)) % 3
    return feats, pids, camids


def _cfg(**kw):
    return HRNetConfig(
        **{**dict(backbone=None, pretrained=False, feat_dim=D, k=3, num_identities=4, num_instances=3, epochs=3), **kw}
    )


def _loader(cfg, seed=0):
    feats, pids, camids = _features()
    return DataLoader(
        FeatureDataset(feats, pids, camids),
        batch_sampler=PKSampler(pids.tolist(), P=cfg.num_identities, K=cfg.num_instances, seed=seed),
    )


def test_lr_schedule_is_the_papers():
    cfg = HRNetConfig()
    assert lr_at_epoch(cfg, 0) == pytest.approx(3.5e-4)
    assert lr_at_epoch(cfg, 39) == pytest.approx(3.5e-4)
    assert lr_at_epoch(cfg, 40) == pytest.approx(3.5e-5)
    assert lr_at_epoch(cfg, 119) == pytest.approx(3.5e-5)
    assert lr_at_epoch(cfg, 120) == pytest.approx(3.5e-6)
    warm = HRNetConfig(warmup_epochs=10)
    assert lr_at_epoch(warm, 0) == pytest.approx(3.5e-5)
    assert lr_at_epoch(warm, 10) == pytest.approx(3.5e-4)


def test_fit_writes_checkpoint_and_csv_and_history(tmp_path):
    torch.manual_seed(0)
    cfg = _cfg()
    model = HRNet(cfg, num_classes=8)
    result = fit(model, _loader(cfg), epochs=2, output_dir=tmp_path, progress=False)
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert all(math.isfinite(row["loss_total"]) for row in result.history)
    assert (tmp_path / "last.pth").is_file()
    lines = (tmp_path / "metrics.csv").read_text().strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("epoch,lr")
    ckpt = load_checkpoint(tmp_path / "last.pth")
    assert ckpt["epoch"] == 1 and ckpt["format_version"] == CHECKPOINT_FORMAT_VERSION
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporary file


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    cfg = _cfg(epochs=3, milestones=(2,))
    torch.manual_seed(0)
    straight = HRNet(cfg, num_classes=8)
    fit(straight, _loader(cfg), epochs=3, output_dir=tmp_path / "a", progress=False)

    torch.manual_seed(0)
    first = HRNet(cfg, num_classes=8)
    fit(first, _loader(cfg), epochs=1, output_dir=tmp_path / "b", progress=False)  # "interrupted"
    torch.manual_seed(123)  # a different process state: resume must restore it
    resumed = HRNet(cfg, num_classes=8)
    result = fit(
        resumed, _loader(cfg), epochs=3, output_dir=tmp_path / "b", resume=tmp_path / "b" / "last.pth", progress=False
    )
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=False):
        torch.testing.assert_close(a, b, msg=f"parameter {name} differs after resume")


def test_save_load_roundtrip_keeps_graph_modules(tmp_path):
    torch.manual_seed(0)
    model = HRNet(_cfg(), num_classes=8)
    fit(model, _loader(model.config), epochs=1, progress=False)
    model.save(tmp_path / "m.pth")
    loaded = HRNet.load(tmp_path / "m.pth").eval()
    assert loaded.config == model.config  # backbone-free: pretrained=False already
    feats, _, _ = _features(num_ids=4, per_id=3, seed=5)
    model.eval()
    torch.testing.assert_close(score_query_graphs(loaded, feats[None]), score_query_graphs(model, feats[None]))


def test_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_model(tmp_path / "nope.pth")
    atomic_save({"weights": torch.zeros(2)}, tmp_path / "plain.pth")
    with pytest.raises(ValueError, match="not an hrnet_pyg checkpoint"):
        load_model(tmp_path / "plain.pth")
    atomic_save({"kind": "hrnet_pyg.checkpoint", "format_version": 0}, tmp_path / "old.pth")
    with pytest.raises(ValueError, match="format version 0"):
        load_model(tmp_path / "old.pth")
    (tmp_path / "torn.pth").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="torn.pth could not be read"):
        load_model(tmp_path / "torn.pth")


def test_nan_loss_stops_with_the_term_and_step(tmp_path):
    cfg = _cfg()
    feats, pids, camids = _features()
    feats[5] = float("nan")
    loader = DataLoader(FeatureDataset(feats, pids, camids), batch_sampler=PKSampler(pids.tolist(), P=4, K=3))
    with pytest.raises(FloatingPointError, match=r"non-finite CNN features.*epoch 1, step \d+"):
        fit(HRNet(cfg, num_classes=8), loader, epochs=1, progress=False)
    # A loss term that overflows is named.
    model = HRNet(cfg, num_classes=8)
    with torch.no_grad():
        model.bnneck.classifier.weight.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match=r"non-finite loss term.*'cl'.*epoch 1, step 1"):
        fit(model, _loader(cfg), epochs=1, progress=False)


def test_empty_loader_is_a_clear_error():
    cfg = _cfg()
    with pytest.raises(ValueError, match="yielded no batch"):
        fit(HRNet(cfg, num_classes=8), [], epochs=1, progress=False)


def test_evaluate_features_reports_cnn_and_reranked_metrics():
    torch.manual_seed(0)
    cfg = _cfg()
    model = HRNet(cfg, num_classes=8)
    fit(model, _loader(cfg), epochs=2, progress=False)
    qf, qp, qc = _features(num_ids=5, per_id=2, seed=11)
    gf, gp, gc = _features(num_ids=5, per_id=6, seed=11)
    report = evaluate_features(model, qf, qp, qc + 1, gf, gp, gc, rerank_config=RerankConfig(shortlist=20),
                               progress=False)
    assert 0.0 <= report.cnn.mAP <= 1.0 and 0.0 <= report.hrnet.mAP <= 1.0
    assert "relational re-ranking" in report.table()


def test_evaluation_without_camera_ids_warns_instead_of_dropping_every_match():
    torch.manual_seed(0)
    model = HRNet(_cfg(), num_classes=8)
    qf, qp, _ = _features(num_ids=5, per_id=2, seed=11)
    gf, gp, _ = _features(num_ids=5, per_id=6, seed=11)
    zeros_q, zeros_g = torch.zeros_like(qp), torch.zeros_like(gp)
    with pytest.warns(UserWarning, match="camera"):
        report = evaluate_features(model, qf, qp, zeros_q, gf, gp, zeros_g, use_camids=False,
                                   rerank_config=RerankConfig(shortlist=20), progress=False)
    assert report.cnn.num_valid_queries == len(qp)


def test_distributed_ranks_draw_different_augmentation_but_resume_exactly(monkeypatch):
    """Each rank reseeds per epoch from (seed, epoch, rank): decorrelated, yet reproducible."""
    import hrnet_pyg.engine.hooks as hooks

    feats, pids, camids = _features()

    class Noisy(FeatureDataset):  # stands in for random augmentation
        draws: list = []

        def __getitem__(self, i):
            f, p, c, idx = super().__getitem__(i)
            Noisy.draws.append(float(torch.rand(())))
            return f, p, c, idx

    def draws_on(rank):
        monkeypatch.setattr(hooks, "get_world_size", lambda: 2)
        monkeypatch.setattr(hooks, "get_rank", lambda: rank)
        Noisy.draws = []
        torch.manual_seed(0)
        cfg = _cfg()
        loader = DataLoader(Noisy(feats, pids, camids), batch_sampler=PKSampler(pids.tolist(), P=4, K=3))
        fit(HRNet(cfg, num_classes=8), loader, epochs=1, progress=False)
        return list(Noisy.draws)

    r0, r1, r0_again = draws_on(0), draws_on(1), draws_on(0)
    assert r0 != r1 and r0 == r0_again


def test_fit_with_its_hooks_trains_like_a_hand_written_loop(tmp_path):
    """``fit`` with checkpoints, CSV, evaluation and progress lines changes nothing in the
    training: the epochs' mean losses and the final weights of Adam written out by hand."""
    cfg = _cfg(milestones=(1,))
    feats, pids, _ = _features()
    batches = [(feats[pids < 4][i::2], pids[pids < 4][i::2]) for i in range(2)]  # 2 steps of 4 ids x 3
    torch.manual_seed(0)
    ref = HRNet(cfg, num_classes=8)
    opt = torch.optim.Adam(ref.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    means = []
    for epoch in range(2):
        for group in opt.param_groups:
            group["lr"] = lr_at_epoch(cfg, epoch)
        losses = []
        for x, p in batches:
            out = ref(x, p)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            losses.append(out.loss.item())
        means.append(sum(losses) / len(losses))

    torch.manual_seed(0)
    model = HRNet(cfg, num_classes=8)
    result = fit(
        model, batches, epochs=2, output_dir=tmp_path, print_freq=1, eval_fn=lambda m: {"mAP": 0.5}, eval_freq=1,
    )
    assert [r["loss_total"] for r in result.history] == pytest.approx(means, rel=1e-6)
    saved = load_checkpoint(tmp_path / "last.pth")["model"]
    for (name, a), b in zip(ref.state_dict().items(), saved.values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert (tmp_path / "best.pth").is_file() and (tmp_path / "metrics.csv").read_text().count("\n") == 3
