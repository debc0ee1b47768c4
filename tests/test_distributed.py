"""hrnet_pyg.distributed: DDP training, the global graph, sharded evaluation.

Two CPU processes on the gloo backend over the loopback interface (127.0.0.1, ``lo``), started
once for the whole module with torch.multiprocessing (spawn); each runs every scenario and
saves what it saw, and the tests compare it with a single-process run in the pytest process.
One more test launches ``torchrun --nproc_per_node=2 -m hrnet_pyg train`` end to end.
"""
from __future__ import annotations

import functools
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from hrnet_pyg.config import HRNetConfig
from hrnet_pyg.data import FeatureDataset, PKSampler
from hrnet_pyg.distributed import (
    ShardSampler,
    all_gather_cat,
    all_gather_with_grad,
    check_graph_scope,
    graph_scope_of,
    init_distributed,
    loader_is_sharded,
    prepare_for_training,
    set_graph_scope,
)
from hrnet_pyg.engine import evaluate, extract, fit
from hrnet_pyg.losses import hrnet_total_loss
from hrnet_pyg.model import HRNetModule as HRNet
from hrnet_pyg.protocol import RerankConfig

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
DIM = 16
GRAPH_PARTS = ("head",)  # the modules that only see the graph batch: the relation head
GRAPH_TERMS = ("tr", "in", "c_pos", "c_neg", "pa")  # Eq. 14 terms computed on the graph batch


# ---------------------------------------------------------------------------- shared fixtures
def _cfg(**kw: Any) -> HRNetConfig:
    base = dict(backbone=None, feat_dim=DIM, k=3, num_identities=4, num_instances=3, lr=1e-2)
    return HRNetConfig(**{**base, **kw})


def _model(seed: int = 0, **kw: Any) -> HRNet:
    torch.manual_seed(seed)
    return HRNet(_cfg(**kw), num_classes=8, rerank_config=RerankConfig(shortlist=6))


def _train_data() -> FeatureDataset:
    """8 identities x 6 images around random centres (the same in every process)."""
    g = torch.Generator().manual_seed(1)
    pids = torch.arange(8).repeat_interleave(6)
    feats = 3 * torch.randn(8, DIM, generator=g)[pids] + torch.randn(len(pids), DIM, generator=g)
    return FeatureDataset(feats, pids)


def _graph_batch() -> tuple:
    """15 features of 5 identities, split unevenly: rank 0 holds 3 identities, rank 1 two."""
    g = torch.Generator().manual_seed(2)
    pids = torch.tensor([4, 4, 4, 0, 0, 0, 7, 7, 7, 2, 2, 2, 5, 5, 5])
    feats = 2 * torch.randn(8, DIM, generator=g)[pids] + torch.randn(15, DIM, generator=g)
    return feats, pids, [slice(0, 9), slice(9, 15)]


def _test_split() -> tuple:
    """Query (7) and gallery (23) features; sizes odd so the shards differ in length."""
    g = torch.Generator().manual_seed(3)
    centres = 2 * torch.randn(5, DIM, generator=g)
    qp = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    gp = torch.arange(5).repeat(5)[:23]
    q = FeatureDataset(centres[qp] + torch.randn(7, DIM, generator=g), qp, torch.zeros(7, dtype=torch.long))
    gal = FeatureDataset(centres[gp] + torch.randn(23, DIM, generator=g), gp, torch.ones(23, dtype=torch.long))
    return q, gal


class _Recording(torch.utils.data.Dataset):
    """Records the indices a (single-process) loader reads, to see what each rank trained on."""

    def __init__(self, base: FeatureDataset) -> None:
        self.base = base
        self.seen: list[int] = []

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Any:
        self.seen.append(int(i))
        return self.base[i]


def _graph_losses(out: Any, lambda_cnc: float) -> torch.Tensor:
    return hrnet_total_loss({k: v for k, v in out.losses.items() if k != "cl"}, lambda_cnc)


# ---------------------------------------------------------------------------- the scenarios
def _scenario_fit(ctx: Any, out_dir: str, scope: str) -> dict[str, Any]:
    """A few DDP steps from deliberately different initial weights per rank."""
    model = _model(seed=100 + ctx.rank)
    data = _Recording(_train_data())
    sampler = PKSampler(data.base.pids, P=4, K=3, seed=0, num_replicas=ctx.world_size, rank=ctx.rank)
    loader = DataLoader(data, batch_sampler=sampler)
    res = fit(model, loader, epochs=2, device="cpu", progress=False, max_steps_per_epoch=3,
              output_dir=Path(out_dir) / f"{scope}_rank{ctx.rank}", graph_scope=scope)
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "init": {k: v.clone() for k, v in _model(seed=100).state_dict().items()},
        "history": res.history,
        "seen": data.seen,
        "scope": graph_scope_of(model),
    }


def _scenario_global_graph(ctx: Any) -> dict[str, Any]:
    feats, pids, parts = _graph_batch()
    rows = parts[ctx.rank]
    out: dict[str, Any] = {}
    # 1) plain module, graph over all ranks: losses and the gradient reaching this rank's features
    model = _model().train()
    set_graph_scope(model, "global")
    x = feats[rows].clone().requires_grad_(True)
    res = model(x, pids[rows])
    _graph_losses(res, model.config.lambda_cnc).backward()
    out["losses"] = {k: float(v.detach()) for k, v in res.losses.items() if k != "cl"}
    out["feat_grad"] = x.grad.clone()
    out["graph_grads"] = {n: p.grad.clone() for n, p in model.named_parameters()
                          if n.split(".")[0] in GRAPH_PARTS and p.grad is not None}
    out["pair_logits"] = res.pair_logits.detach().clone()
    # 2) under DDP with the full loss (Eq. 14): the averaged gradients of every parameter. The
    # BNNeck's BatchNorm runs on its running statistics so that L_cl of an image does not depend
    # on which rank holds it (per-rank batch statistics are what SyncBatchNorm is for).
    ddp = prepare_for_training(_model().train(), torch.device("cpu"), graph_scope="global")
    assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel)
    ddp.module.bnneck.bn.eval()
    x = feats[rows].clone().requires_grad_(True)
    res = ddp(x, pids[rows])
    res.loss.backward()
    out["ddp_cl"] = float(res.losses["cl"].detach())
    out["ddp_feat_grad"] = x.grad.clone()
    out["ddp_grads"] = {n.removeprefix("module."): p.grad.clone() for n, p in ddp.named_parameters()
                        if p.grad is not None}
    # 3) default scope: no communication, the graph is this rank's batch
    local = _model().train()
    out["local_losses"] = {k: float(v.detach()) for k, v in local(feats[rows], pids[rows]).losses.items()}
    # 4) bare gathers with uneven sizes
    y = torch.full((ctx.rank + 2, 3), float(ctx.rank), requires_grad=True)
    gathered = all_gather_with_grad(y)
    (gathered * torch.arange(1.0, gathered.size(0) + 1)[:, None]).sum().backward()
    out["gathered"], out["gathered_grad"] = gathered.detach(), y.grad.clone()
    out["gathered_ids"] = all_gather_cat(torch.arange(ctx.rank + 1) + 10 * ctx.rank)
    # 5) a training sampler that does not split the batches over the ranks is pointed out
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("hrnet_pyg").addHandler(handler)
    unsplit = DataLoader(_train_data(), batch_sampler=PKSampler(_train_data().pids, P=4, K=3))
    prepare_for_training(_model(), torch.device("cpu"), unsplit)
    logging.getLogger("hrnet_pyg").removeHandler(handler)
    out["sampler_warning"] = records
    # 6) SyncBatchNorm cannot run on the CPU: a clear error, before any step
    try:
        prepare_for_training(_model(), torch.device("cpu"), sync_bn=True)
        out["sync_bn_error"] = None
    except ValueError as exc:
        out["sync_bn_error"] = str(exc)
    return out


def _scenario_evaluate(ctx: Any) -> dict[str, Any]:
    model = _model().eval()
    q, gal = _test_split()
    ql = DataLoader(q, batch_size=2, sampler=ShardSampler(q))
    gl = DataLoader(gal, batch_size=4, sampler=ShardSampler(gal))
    assert loader_is_sharded(ql) and loader_is_sharded(gl)
    feats, pids, camids = extract(model, gl, device="cpu", progress=False)
    report = evaluate(model, ql, gl, device="cpu", progress=False, k_reciprocal=True)
    return {
        "shard": len(ShardSampler(gal)),
        "extract": (feats, pids, camids),
        "report": None if report is None else _report_numbers(report),
    }


def _report_numbers(report: Any) -> dict[str, Any]:
    return {name: (float(r.mAP), [float(c) for c in r.cmc], float(r.mINP))
            for name, r in (("cnn", report.cnn), ("hrnet", report.hrnet), ("kr", report.kreciprocal))}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.initialized_here) == (rank, world, "gloo", True)
    try:
        result = {
            "fit_local": _scenario_fit(ctx, out_dir, "local"),
            "fit_global": _scenario_fit(ctx, out_dir, "global"),
            "graph": _scenario_global_graph(ctx),
            "eval": _scenario_evaluate(ctx),
        }
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        ctx.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    out = tmp_path_factory.mktemp("ddp")
    procs = mp.start_processes(_worker, args=(WORLD, _free_port(), str(out)), nprocs=WORLD, join=False,
                               start_method="spawn")
    deadline = time.monotonic() + 180
    while not procs.join(timeout=1):
        if time.monotonic() > deadline:
            for p in procs.processes:
                p.kill()
            pytest.fail("the distributed workers did not finish within 180 s")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)], out


# ---------------------------------------------------------------------------- training
@pytest.mark.parametrize("scope", ["local", "global"])
def test_parameters_identical_across_ranks_after_steps(ranks, scope):
    results, out = ranks
    r0, r1 = (r[f"fit_{scope}"] for r in results)
    assert r0["scope"] == r1["scope"] == scope
    for name, value in r0["state"].items():
        assert torch.equal(value, r1["state"][name]), name  # started from different weights
    # (BatchNorm running statistics included: fit ends by broadcasting rank 0's buffers)
    moved = [n for n, v in r0["state"].items() if v.is_floating_point() and not torch.equal(v, r0["init"][n])]
    assert any(n.startswith("head.ir.") for n in moved) and any(n.startswith("head.pr.") for n in moved)
    # epoch rows are reduced over the ranks: every rank logs the same numbers
    assert len(r0["history"]) == 2
    def timeless(row):
        return {k: v for k, v in row.items() if k != "images_per_s"}

    for a, b in zip(r0["history"], r1["history"], strict=True):
        assert timeless(a) == timeless(b)
    # only rank 0 writes checkpoints and logs
    assert (out / f"{scope}_rank0" / "last.pth").is_file() and (out / f"{scope}_rank0" / "metrics.csv").is_file()
    assert not (out / f"{scope}_rank1").exists()


def test_sampler_gives_each_rank_whole_disjoint_identities(ranks):
    results, _ = ranks
    pids = _train_data().pids
    single = PKSampler(pids, P=4, K=3, seed=0)  # the global plan, one process
    plan = single.batches(0)[:3] + single.batches(1)[:3]  # fit ran 2 epochs x 3 steps
    seen = [r["fit_local"]["seen"] for r in results]
    assert all(len(s) == 6 * 6 for s in seen)  # 6 steps of 2 identities x 3 images per rank
    for step, global_batch in enumerate(plan):
        b0, b1 = (s[6 * step : 6 * step + 6] for s in seen)
        ids0, ids1 = {pids[i] for i in b0}, {pids[i] for i in b1}
        assert len(ids0) == len(ids1) == 2 and not ids0 & ids1  # whole, disjoint identities
        for ids, batch in ((ids0, b0), (ids1, b1)):
            assert all(sum(pids[i] == p for i in batch) == 3 for p in ids)  # K images each
        assert sorted(b0 + b1) == sorted(global_batch)  # together: the single-process batch
    # the plan depends on seed and world size only: both scopes trained on the same batches
    assert [r["fit_global"]["seen"] for r in results] == seen


def test_pk_sampler_shards_in_process():
    pids = _train_data().pids
    full = PKSampler(pids, P=4, K=3, seed=5).batches(2)
    parts = [PKSampler(pids, P=4, K=3, seed=5, num_replicas=2, rank=r).batches(2) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(full)
    for whole, a, b in zip(full, *parts, strict=False):
        assert a + b == whole and not {pids[i] for i in a} & {pids[i] for i in b}


# ---------------------------------------------------------------------------- the global graph
@functools.cache
def _single_process_reference() -> dict[str, Any]:
    feats, pids, _ = _graph_batch()
    model = _model().train()
    x = feats.clone().requires_grad_(True)
    res = model(x, pids)
    _graph_losses(res, model.config.lambda_cnc).backward()
    full = _model().train()
    full.bnneck.bn.eval()
    xf = feats.clone().requires_grad_(True)
    res_full = full(xf, pids)
    res_full.loss.backward()
    return {
        "losses": {k: float(v.detach()) for k, v in res.losses.items() if k != "cl"},
        "feat_grad": x.grad,
        "graph_grads": {
            n: p.grad for n, p in model.named_parameters() if n.split(".")[0] in GRAPH_PARTS and p.grad is not None
        },
        "full_cl": float(res_full.losses["cl"].detach()),
        "full_feat_grad": xf.grad,
        "full_grads": {n: p.grad for n, p in full.named_parameters() if p.grad is not None},
        "pair_logits": res.pair_logits.detach(),
    }


def test_global_graph_losses_and_feature_gradients_equal_single_process(ranks):
    results, _ = ranks
    ref = _single_process_reference()
    _, _, parts = _graph_batch()
    assert set(ref["losses"]) == set(GRAPH_TERMS)
    for r, res in enumerate(results):
        g = res["graph"]
        for term in GRAPH_TERMS:
            assert g["losses"][term] == pytest.approx(ref["losses"][term], abs=1e-5), term
        torch.testing.assert_close(g["pair_logits"], ref["pair_logits"], atol=1e-5, rtol=0)  # (15, 15)
        # every rank's copy of L_g sends its gradient to the owner: WORLD x the single-process
        # gradient, which DDP's 1/WORLD averaging of the parameter gradients cancels
        torch.testing.assert_close(g["feat_grad"], WORLD * ref["feat_grad"][parts[r]], atol=1e-5, rtol=0)
        assert g["feat_grad"].abs().sum() > 0
        assert set(g["graph_grads"]) == set(ref["graph_grads"]) != set()
        for name, grad in ref["graph_grads"].items():
            torch.testing.assert_close(g["graph_grads"][name], grad, atol=1e-5, rtol=0)


def test_global_graph_under_ddp_gives_single_process_gradients(ranks):
    """Eq. 14 on 9 + 6 images over two ranks = Eq. 14 on the 15 images in one process."""
    results, _ = ranks
    ref = _single_process_reference()
    _, _, parts = _graph_batch()
    # L_cl is weighted per rank (9/7.5 and 6/7.5) so that its mean over the ranks is the global mean
    assert sum(r["graph"]["ddp_cl"] for r in results) / WORLD == pytest.approx(ref["full_cl"], abs=1e-6)
    for r, res in enumerate(results):
        got = res["graph"]["ddp_grads"]
        assert set(got) == set(ref["full_grads"]) and any(n.startswith("bnneck.") for n in got)
        for name, grad in ref["full_grads"].items():
            torch.testing.assert_close(got[name], grad, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            res["graph"]["ddp_feat_grad"], WORLD * ref["full_feat_grad"][parts[r]], atol=1e-5, rtol=0
        )


def test_local_scope_is_a_graph_per_rank(ranks):
    results, _ = ranks
    feats, pids, parts = _graph_batch()
    for r, res in enumerate(results):
        expected = _model().train()(feats[parts[r]], pids[parts[r]]).losses
        assert set(res["graph"]["local_losses"]) == set(expected)
        for k, v in expected.items():
            assert res["graph"]["local_losses"][k] == pytest.approx(float(v), abs=1e-6), k


def test_all_gather_with_uneven_sizes(ranks):
    results, _ = ranks
    # rank 0 holds 2 rows of 0s, rank 1 three rows of 1s; loss = sum_i (i + 1) * row_i on each rank
    expected = torch.tensor([0.0] * 2 + [1.0] * 3)[:, None].expand(5, 3)
    weights = torch.arange(1.0, 6.0)[:, None].expand(5, 3)
    for r, res in enumerate(results):
        g = res["graph"]
        torch.testing.assert_close(g["gathered"], expected)
        rows = slice(0, 2) if r == 0 else slice(2, 5)
        torch.testing.assert_close(g["gathered_grad"], WORLD * weights[rows])  # summed over ranks
        assert g["gathered_ids"].tolist() == [0, 10, 11]


def test_sync_bn_on_cpu_is_refused_clearly(ranks):
    for res in ranks[0]:
        assert "sync_bn needs CUDA" in res["graph"]["sync_bn_error"]


def test_unsplit_training_sampler_is_pointed_out(ranks):
    for res in ranks[0]:
        assert any("num_replicas=1 but 2 ranks are running" in m for m in res["graph"]["sampler_warning"])


# ---------------------------------------------------------------------------- evaluation
def test_sharded_evaluation_equals_single_process(ranks):
    results, _ = ranks
    model = _model().eval()
    q, gal = _test_split()
    feats, pids, camids = extract(model, DataLoader(gal, batch_size=4), device="cpu", progress=False)
    report = evaluate(
        model,
        DataLoader(q, batch_size=2),
        DataLoader(gal, batch_size=4),
        device="cpu",
        progress=False,
        k_reciprocal=True,
    )
    assert [r["eval"]["shard"] for r in results] == [11, 12]
    for res in results:  # every rank gets the whole gallery, in order
        f, p, c = res["eval"]["extract"]
        assert torch.equal(f, feats) and torch.equal(p, pids) and torch.equal(c, camids)
    assert results[1]["eval"]["report"] is None  # rank 0 computes the metrics
    got, want = results[0]["eval"]["report"], _report_numbers(report)
    for name in want:
        assert got[name][0] == pytest.approx(want[name][0], abs=1e-6)
        assert got[name][1] == pytest.approx(want[name][1], abs=1e-6)
        assert got[name][2] == pytest.approx(want[name][2], abs=1e-6)


# ---------------------------------------------------------------------------- single process
def test_shard_sampler_covers_range_in_order():
    for n, world in ((7, 2), (23, 3), (5, 5)):
        shards = [list(ShardSampler(n, num_replicas=world, rank=r)) for r in range(world)]
        assert sum(shards, []) == list(range(n))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert list(ShardSampler(4)) == [0, 1, 2, 3]  # no process group: the whole range
    with pytest.raises(ValueError, match="cannot shard 2 items over 3 ranks"):
        ShardSampler(2, num_replicas=3, rank=0)
    with pytest.raises(ValueError, match="0 <= rank < num_replicas"):
        ShardSampler(4, num_replicas=2, rank=2)
    assert not loader_is_sharded(DataLoader(list(range(4)), sampler=ShardSampler(4, num_replicas=1, rank=0)))


def test_without_process_group_everything_is_local(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.initialized_here, ctx.is_main) == (0, 1, None, False, True)
    x = torch.randn(3, 2)
    assert all_gather_with_grad(x) is x and all_gather_cat(x) is x
    model = _model()
    assert prepare_for_training(model, torch.device("cpu"), graph_scope="global") is model
    assert graph_scope_of(model) == "global"


def test_init_distributed_names_missing_launcher_variables(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="RANK is not set.*torchrun"):
        init_distributed("cpu")
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ValueError, match="RANK='one' is not an integer"):
        init_distributed("cpu")


def test_graph_scope_is_checked():
    with pytest.raises(ValueError, match="graph_scope must be 'local'.*got 'world'"):
        check_graph_scope("world")
    model = _model().train()
    with pytest.raises(ValueError, match="graph_scope must be"):
        set_graph_scope(model, "world")
    assert graph_scope_of(model) == "local" and model.graph_batch is None  # the model's own batch
    set_graph_scope(model, "global")
    assert graph_scope_of(model) == "global"
    set_graph_scope(model, "local")
    assert model.graph_batch is None


def test_sync_bn_converts_backbone_and_bnneck_only():
    model = _model()
    prepare_for_training(model, torch.device("cpu"), sync_bn=True)
    assert isinstance(model.bnneck.bn, torch.nn.SyncBatchNorm)
    assert not isinstance(model.ir_neck.bn, torch.nn.SyncBatchNorm)  # sees the whole graph batch
    assert not model.bnneck.bn.bias.requires_grad  # BNNeck's frozen bias survives the conversion
    # one process: SyncBatchNorm falls back to BatchNorm, and the same losses come out
    x, p = torch.randn(12, DIM), torch.arange(4).repeat_interleave(3)
    ref = _model().train()(x, p).losses
    got = model.train()(x, p).losses
    assert {k: float(v) for k, v in got.items()} == pytest.approx({k: float(v) for k, v in ref.items()}, abs=1e-6)


# ---------------------------------------------------------------------------- torchrun, end to end
TINY_EXPERIMENT = """\
_base_: {base}
data:
  name: synthetic
  root: {root}
  kwargs: {{num_train_ids: 8, num_test_ids: 4, imgs_per_id: 6, num_distractors: 2, num_junk: 1,
           height: 32, width: 16}}
model:
  backbone: resnet18
  pretrained: false
  feat_dim: 512
  image_size: [32, 16]
  k: 3
  num_identities: 4
  num_instances: 3
  epochs: 1
rerank:
  shortlist: 5
run:
  output_dir: {out}
  device: cpu
  num_workers: 0
  eval_batch_size: 8
  max_steps_per_epoch: 2
  graph_scope: global
"""


def test_torchrun_train_end_to_end(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        TINY_EXPERIMENT.format(base=ROOT / "experiments" / "base.yaml", root=tmp_path / "data", out=tmp_path / "run")
    )
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "hrnet_pyg",
        "train",
        "--config",
        str(cfg),
        "--no-progress",
        "--set",
        "run.eval_freq=1",  # the evaluation during training: every rank extracts its shard
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("| method |") == 1  # the table comes from rank 0 only
    for name in ("last.pth", "best.pth", "metrics.json"):
        assert (tmp_path / "run" / name).is_file(), name
    assert "eval_mAP" in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "relational re-ranking" in proc.stdout
