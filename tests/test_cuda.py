"""The GPU paths: bf16 autocast with channels_last, fit + resume, torch.compile, re-ranking,
evaluation, k-reciprocal and export on a CUDA device; and the device handling around them.

Each device-dependent test runs once per device of ``DEVICES``: ``cpu`` (always, CI included) and
``cuda`` (marked ``cuda`` and skipped without a GPU; ``pytest -m cuda`` runs exactly those, as
``benchmarks/gpu_check.sh`` does). On the CPU the same code runs at tiny sizes (autocast has a bf16
CPU mode), so every path is exercised without a GPU; where a test compares a device with the CPU,
the CPU variant compares the CPU with itself and its other checks carry the weight.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from hrnet_pyg.config import TABLE1_ROWS, HRNetConfig
from hrnet_pyg.data import FeatureDataset, PKSampler
from hrnet_pyg.engine import evaluate, evaluate_features, fit, load_model
from hrnet_pyg.engine.hooks import rng_state, set_rng_state
from hrnet_pyg.evaluation import euclidean_distance
from hrnet_pyg.model import HRNetModule as HRNet
from hrnet_pyg.protocol import RerankConfig
from hrnet_pyg.runtime import autocast_context, load_checkpoint, resolve_device

CUDA = torch.cuda.is_available()
_ON_GPU = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")]
DEVICES = ["cpu", pytest.param("cuda", marks=_ON_GPU)]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture
def no_tf32() -> Iterator[None]:
    """Full fp32 matmuls and convolutions on the GPU (cuDNN allows TF32 convolutions by default),
    so that device-vs-CPU comparisons measure the code, not TF32's 10-bit mantissa."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _image_config(device: torch.device, row: str = "HRNet", **kw) -> HRNetConfig:
    """ResNet-50 at 128 x 64 on a GPU; ResNet-18 at 32 x 16 on the CPU (seconds per step there)."""
    if device.type == "cuda":
        size = dict(backbone="resnet50", image_size=(128, 64), num_identities=4, num_instances=4)
    else:
        size = dict(backbone="resnet18", image_size=(32, 16), num_identities=4, num_instances=2)
    return HRNetConfig.from_row(row, **{**size, "pretrained": False, "k": 3, **kw})


def _images(cfg: HRNetConfig, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.image_size
    x = torch.randn(cfg.batch_size, 3, h, w, generator=g)
    pids = torch.arange(cfg.num_identities).repeat_interleave(cfg.num_instances)
    return x.to(device), pids.to(device)


def _randomise_bn(model: torch.nn.Module, seed: int = 1) -> None:
    """Non-trivial running statistics (as after training), so that eval-mode BN matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


# ---------------------------------------------------------------------------- bf16 + channels_last
def _step(model: HRNet, x: torch.Tensor, pids: torch.Tensor, amp) -> tuple[dict[str, float], torch.Tensor]:
    model.zero_grad(set_to_none=True)
    with autocast_context(x.device, amp):  # the engine's own autocast choice
        out = model(x, pids)
    out.loss.backward()
    losses = {k: float(v.detach()) for k, v in out.losses.items()} | {"total": float(out.loss.detach())}
    grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
    return losses, grads


@pytest.mark.parametrize("row", list(TABLE1_ROWS))
def test_bf16_channels_last_step_is_finite_and_matches_fp32(row, device, no_tf32):
    """One training step of a Table 1 row under bf16 autocast with NHWC tensors against the fp32 one.

    Tolerance: each loss term within 0.02 + 5% of the fp32 value, and the gradient (all parameters
    as one vector) at cosine similarity >= 0.9 to the fp32 gradient. bf16 keeps 8 mantissa bits
    (0.4% per rounding) through the backbone; the CPU variant measured 0.4-4% on the loss terms
    (the largest on L_tr, whose hardest pairs shift with the rounding) and a cosine of 0.93.
    """
    torch.manual_seed(0)
    cfg = _image_config(device, row)
    model = HRNet(cfg, num_classes=cfg.num_identities).to(device).train()
    x, pids = _images(cfg, device)
    ref_losses, ref_grads = _step(model, x, pids, amp=False)
    model.to(memory_format=torch.channels_last)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)
    losses, grads = _step(model, x.contiguous(memory_format=torch.channels_last), pids, amp="bf16")
    assert set(losses) == set(ref_losses)
    assert all(math.isfinite(v) for v in losses.values()), losses
    assert bool(torch.isfinite(grads).all()), "non-finite gradient under bf16 autocast"
    for name, ref in ref_losses.items():
        assert abs(losses[name] - ref) <= 0.02 + 0.05 * abs(ref), (
            f"{row} L_{name}: bf16 {losses[name]:.4f} vs fp32 {ref:.4f}"
        )
    cos = float(torch.nn.functional.cosine_similarity(grads, ref_grads, dim=0))
    assert cos >= 0.9, f"{row}: gradient cosine bf16 vs fp32 = {cos:.3f}"


# ---------------------------------------------------------------------------- fit on images + resume
_SYNTH = dict(
    num_train_ids=6,
    num_test_ids=4,
    num_cams=2,
    imgs_per_id=4,
    min_cams_per_id=2,
    max_cams_per_id=2,
    queries_per_id=1,
    num_distractors=2,
    num_junk=0,
    height=32,
    width=16,
    progress=False,
)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    from hrnet_pyg.data import build_dataset

    root = tmp_path_factory.mktemp("synthetic")
    build_dataset("synthetic", root, **_SYNTH)  # generated once for the module
    return root


def _amp(device: torch.device):
    """bf16 on the GPU; on the CPU the bf16 step is the row test's, and fp32 keeps this one fast."""
    return "bf16" if device.type == "cuda" else False


def _experiment(root: Path, device: torch.device, out: Path):
    from hrnet_pyg.experiment import load_experiment

    cfg = _image_config(device, backbone="resnet18", image_size=(32, 16), num_identities=3, num_instances=2, epochs=2)
    over = {
        "data": {"name": "synthetic", "root": str(root), "kwargs": dict(_SYNTH)},
        "model": cfg.to_dict(),
        "run": {
            "output_dir": str(out),
            "device": str(device),
            "amp": _amp(device),
            "channels_last": True,
            "num_workers": 0,
            "max_steps_per_epoch": 1,
            "eval_batch_size": 16,
        },
    }
    return load_experiment(None, over)


def test_fit_two_epochs_on_generated_images_with_resume(synthetic_root, device, tmp_path, monkeypatch):
    """Training with channels_last (and bf16 on CUDA) on JPEGs through the experiment's loaders
    (pinned memory on CUDA), 2 epochs straight vs 1 epoch + resume; then evaluation there.

    The loaders decode in the main process (``num_workers=0``): augmentation then draws from the
    RNG that the checkpoint carries (worker processes have their own). The CPU run is
    deterministic, so the weights must agree to float32 rounding; on CUDA, scatter kernels
    accumulate with atomics (the summation order varies run to run), so 1e-3.
    """
    from hrnet_pyg.experiment import build_loaders

    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    exp = _experiment(synthetic_root, device, tmp_path / "a")
    dataset, train, query, gallery = build_loaders(exp)
    assert train.pin_memory == (device.type == "cuda") and query.pin_memory == (device.type == "cuda")
    kw = dict(device=device, amp=_amp(device), channels_last=True, max_steps_per_epoch=1, progress=False)

    torch.manual_seed(0)
    straight = HRNet(exp.model, num_classes=dataset.num_train_pids)
    res_a = fit(straight, train, epochs=2, output_dir=tmp_path / "a", **kw)

    torch.manual_seed(0)
    first = HRNet(exp.model, num_classes=dataset.num_train_pids)
    fit(first, train, epochs=1, output_dir=tmp_path / "b", **kw)
    ckpt = load_checkpoint(tmp_path / "b" / "last.pth")
    assert ("cuda" in ckpt["rng"]) == CUDA  # every GPU's RNG travels with the resume state
    torch.manual_seed(123)  # another process state: resume must restore it
    resumed = HRNet(exp.model, num_classes=dataset.num_train_pids)
    res_b = fit(resumed, train, epochs=2, output_dir=tmp_path / "b", resume=tmp_path / "b" / "last.pth", **kw)

    assert [r["epoch"] for r in res_b.history] == [1, 2]
    assert all(math.isfinite(r["loss_total"]) for r in res_a.history + res_b.history)
    tol = dict(atol=1e-3, rtol=1e-3) if device.type == "cuda" else {}
    assert res_b.history[1]["loss_total"] == pytest.approx(res_a.history[1]["loss_total"], rel=1e-3 if tol else 1e-6)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=False):
        torch.testing.assert_close(a, b, **tol, msg=f"parameter {name} differs after resume on {device}")
    # The checkpoint is device-free: it loads on the CPU.
    assert next(load_model(tmp_path / "b" / "last.pth").parameters()).device.type == "cpu"
    report = evaluate(resumed, query, gallery, device=device, progress=False)
    assert 0.0 <= report.cnn.mAP <= 1.0 and 0.0 <= report.hrnet.mAP <= 1.0


# ---------------------------------------------------------------------------- torch.compile
def test_compiled_fit_matches_eager(device, tmp_path, no_tf32):
    """``fit(compile=...)`` trains like the eager model and writes a checkpoint without the
    compiled wrapper's ``_orig_mod.`` prefixes. CUDA: inductor (``compile=True``); CPU: Dynamo's
    tracing with the ``eager`` backend (graph capture and graph breaks, no C++ code generation).
    The graph modules on features keep the compilation to seconds; the compiled ResNet-50 step
    is ``benchmarks/bench_train_step.py --compile``'s."""
    cfg = HRNetConfig(backbone=None, pretrained=False, feat_dim=32, k=3, num_identities=4, num_instances=3, epochs=1)
    g = torch.Generator().manual_seed(0)
    pids = torch.arange(8).repeat_interleave(6)
    inputs = ((torch.randn(8, 32, generator=g) * 2)[pids] + torch.randn(48, 32, generator=g)).relu()
    loader = DataLoader(
        FeatureDataset(inputs, pids, pids % 2),
        batch_sampler=PKSampler(pids.tolist(), P=cfg.num_identities, K=cfg.num_instances, seed=0),
    )
    results = {}
    for mode in (False, True if device.type == "cuda" else "eager"):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = HRNet(cfg, num_classes=8)
        results[mode] = fit(
            model,
            loader,
            epochs=1,
            device=device,
            amp=False,
            compile=mode,
            max_steps_per_epoch=2,
            output_dir=tmp_path / str(mode),
            progress=False,
        )
    eager, compiled = results.values()
    for row_e, row_c in zip(eager.history, compiled.history, strict=False):
        for key in (k for k in row_e if k.startswith("loss_")):
            assert row_c[key] == pytest.approx(row_e[key], rel=1e-3, abs=1e-4), key
    state = load_checkpoint(compiled.checkpoint)["model"]
    assert not any(k.startswith("_orig_mod.") for k in state)
    eager_state = load_checkpoint(eager.checkpoint)["model"]
    assert state.keys() == eager_state.keys()
    for name in state:
        torch.testing.assert_close(state[name], eager_state[name], atol=1e-3, rtol=1e-3, msg=name)


# ---------------------------------------------------------------------------- fp16 + loss scaling
def test_fp16_trains_with_loss_scaling(device, tmp_path):
    """``amp="fp16"``: fp16 autocast with a GradScaler on CUDA (its state travels with the
    checkpoint); on the CPU a clear error before any step."""
    cfg = _image_config(device, backbone="resnet18", image_size=(32, 16), epochs=1)
    x, pids = _images(cfg, device)
    torch.manual_seed(0)
    model = HRNet(cfg, num_classes=cfg.num_identities)
    with pytest.raises(ValueError, match="amp='fp17' is not an AMP mode; valid: auto, off"):
        fit(model, [(x, pids)], epochs=1, device=device, amp="fp17", progress=False)
    if device.type != "cuda":
        with pytest.raises(ValueError, match="amp='fp16' needs a CUDA device"):
            fit(model, [(x, pids)], epochs=1, device=device, amp="fp16", progress=False)
        return
    res = fit(model, [(x, pids)] * 2, epochs=1, device=device, amp="fp16", output_dir=tmp_path, progress=False)
    assert math.isfinite(res.history[0]["loss_total"])
    scaler = load_checkpoint(res.checkpoint)["scaler"]
    assert scaler and scaler["scale"] > 0
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


# ---------------------------------------------------------------------------- SyncBatchNorm
def test_sync_bn_single_device_trains_like_batchnorm_and_saves_plain_weights(device, tmp_path, no_tf32):
    """``fit(sync_bn=True)`` outside a process group: SyncBatchNorm in the backbone and BNNeck
    computes what BatchNorm computes (torch synchronises only inside a group of several ranks,
    which needs as many GPUs), and its checkpoint loads into a plain HRNet.
    """
    cfg = _image_config(device, backbone="resnet18", image_size=(32, 16), epochs=1)
    x, pids = _images(cfg, device)
    loader = [(x, pids)]
    rows = {}
    for sync in (False, True):
        torch.manual_seed(0)
        model = HRNet(cfg, num_classes=cfg.num_identities)
        rows[sync] = fit(
            model,
            loader,
            epochs=1,
            device=device,
            amp=False,
            sync_bn=sync,
            output_dir=tmp_path / str(sync),
            progress=False,
        )
        assert isinstance(model.bnneck.bn, torch.nn.SyncBatchNorm) == sync
    for key in (k for k in rows[False].history[0] if k.startswith("loss_")):
        assert rows[True].history[0][key] == pytest.approx(rows[False].history[0][key], rel=1e-5, abs=1e-6)
    plain = load_model(rows[True].checkpoint)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in plain.modules())


# ---------------------------------------------------------------------------- re-ranking, evaluation
def _feature_model(d: int = 64) -> HRNet:
    torch.manual_seed(0)
    model = HRNet(HRNetConfig(backbone=None, pretrained=False, feat_dim=d, k=5), num_classes=10)
    _randomise_bn(model)
    return model.eval()


def _clustered(num: int, ids: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(ids, d, generator=torch.Generator().manual_seed(99)) * 1.5
    pids = torch.randint(0, ids, (num,), generator=g)
    feats = (centres[pids] + torch.randn(num, d, generator=g)).relu()
    return feats, pids, torch.randint(0, 3, (num,), generator=g)


def test_relational_rerank_and_evaluate_on_device_equal_cpu(device, no_tf32):
    """Scores within 1e-4 of the CPU's, identical rankings and metrics; several passes and one."""
    from hrnet_pyg.rerank import relational_rerank

    model = _feature_model()
    qf, qp, qc = _clustered(40, 12, 64, seed=1)
    gf, gp, gc = _clustered(300, 12, 64, seed=2)
    protocol = RerankConfig(shortlist=30)
    ref = relational_rerank(model, qf, gf, protocol, device="cpu", progress=False)
    for per_pass in (7, None):
        got = relational_rerank(
            model, qf.to(device), gf.to(device), protocol, queries_per_pass=per_pass, device=device, progress=False
        )
        assert got.device.type == "cpu" and got.dtype == torch.float32
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
        order = ref.argsort(dim=1, stable=True)
        # The re-ranked shortlists are ranked identically; beyond them (cosine order) the CPU's
        # order also sorts the device's distances, up to float32 rounding of near-ties.
        assert torch.equal(got.argsort(dim=1, stable=True)[:, :30], order[:, :30])
        assert bool((got.gather(1, order).diff(dim=1) >= -1e-6).all())
    assert next(model.parameters()).device.type == device.type  # the model stays where it ran
    on_cpu = evaluate_features(model, qf, qp, qc, gf, gp, gc, rerank_config=protocol, device="cpu", progress=False)
    on_dev = evaluate_features(
        model, qf, qp, qc, gf, gp, gc, rerank_config=protocol, device=device, progress=False, k_reciprocal=True
    )
    for name in ("cnn", "hrnet"):
        a, b = getattr(on_cpu, name), getattr(on_dev, name)
        assert a.mAP == pytest.approx(b.mAP, abs=1e-6) and a.mINP == pytest.approx(b.mINP, abs=1e-6)
        np.testing.assert_allclose(a.cmc, b.cmc, atol=1e-6)
    assert 0.0 <= on_dev.kreciprocal.mAP <= 1.0


def test_k_reciprocal_on_device_equals_dense_reference(device, no_tf32):
    """The feature-based k-reciprocal re-ranking on ``device`` against the dense reference
    formulation on the CPU (the distance matrices of the reference ``re_ranking``)."""
    from hrnet_pyg.kreciprocal import k_reciprocal_rerank, k_reciprocal_rerank_features

    qf, _, _ = _clustered(30, 10, 32, seed=3)
    gf, _, _ = _clustered(200, 10, 32, seed=4)
    dense = k_reciprocal_rerank(euclidean_distance(qf, gf), euclidean_distance(qf, qf), euclidean_distance(gf, gf))
    got = k_reciprocal_rerank_features(qf.to(device), gf.to(device), chunk_size=64, progress=False)
    assert got.device.type == device.type
    torch.testing.assert_close(got.cpu(), dense, atol=1e-4, rtol=0)
    # Identical top-10 lists wherever the reference has no near-tie there.
    d_sorted = dense.sort(dim=1).values
    clear = (d_sorted[:, 1:11] - d_sorted[:, :10]).min(dim=1).values > 2e-4
    assert bool(clear.any())
    assert torch.equal(got.cpu().argsort(dim=1)[clear, :10], dense.argsort(dim=1)[clear, :10])


# ---------------------------------------------------------------------------- export
def test_export_from_a_device_model_with_channels_last(device, tmp_path, no_tf32):
    """A model that trained on ``device`` in NHWC exports on the CPU; it stays on its device, and the
    exported features equal the device model's own."""
    from hrnet_pyg.export import export_model, load_exported

    torch.manual_seed(0)
    model = HRNet(HRNetConfig(backbone="resnet18", pretrained=False, image_size=(64, 32), k=3), num_classes=4)
    _randomise_bn(model)
    model = model.to(device, memory_format=torch.channels_last).eval()
    result = export_model(model, tmp_path / "m.pt", "torchscript", with_feats=True)
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    assert next(model.parameters()).device.type == device.type
    x = torch.randn(3, 3, 64, 32, generator=torch.Generator().manual_seed(5))
    bn, f = load_exported(result.path)(x)
    with torch.no_grad():
        f_dev = model.extract_features(x.to(device).contiguous(memory_format=torch.channels_last))
        bn_dev = model.retrieval_features(f_dev)
    torch.testing.assert_close(f, f_dev.cpu(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(bn, bn_dev.cpu(), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------- host syncs
@contextlib.contextmanager
def _count_syncs(device: torch.device) -> Iterator[list[str]]:
    """Host-device synchronisations: on CUDA, the warnings of ``torch.cuda.set_sync_debug_mode``;
    on the CPU, calls of the Python-level ways to read a tensor's value (``item``, ``tolist``,
    ``bool``/``float``/``int`` of a tensor), which are what synchronise on a GPU."""
    seen: list[str] = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield seen
            finally:
                torch.cuda.set_sync_debug_mode("default")
        seen.extend(str(w.message) for w in caught if "synchroniz" in str(w.message))
        return
    cls = torch.Tensor
    names = ("item", "tolist", "__bool__", "__float__", "__int__")
    saved = {n: getattr(cls, n) for n in names}

    def counting(n):
        def wrapper(self, *a, **kw):
            seen.append(n)
            return saved[n](self, *a, **kw)

        return wrapper

    for n in names:
        setattr(cls, n, counting(n))
    try:
        yield seen
    finally:
        for n, f in saved.items():
            setattr(cls, n, f)


def test_training_loop_reads_losses_once_per_logging_interval(device):
    """``fit`` adds no host sync per step to the model's own: the loss values are read once per
    ``print_freq`` steps (here: 6 steps, print_freq 3 -> 2 reads, plus the end of the epoch)."""
    cfg = HRNetConfig(backbone=None, pretrained=False, feat_dim=16, k=3, num_identities=4, num_instances=3, epochs=1)
    g = torch.Generator().manual_seed(0)
    pids = torch.arange(8).repeat_interleave(6)
    feats = ((torch.randn(8, 16, generator=g) * 2)[pids] + torch.randn(48, 16, generator=g)).relu()
    batches = [(feats[i::4][:12].to(device), pids[i::4][:12].to(device)) for i in range(4)]
    batches = [b for b in batches if len(set(b[1].tolist())) >= 2][:2] * 3  # 6 steps, on the device

    torch.manual_seed(0)
    model = HRNet(cfg, num_classes=8).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    with _count_syncs(device) as bare:  # what the model and optimiser themselves need
        for x, p in batches:
            out = model(x, p)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
    torch.manual_seed(0)
    model = HRNet(cfg, num_classes=8)
    with _count_syncs(device) as in_fit:
        fit(model, batches, epochs=1, device=device, amp=False, print_freq=3, progress=False)
    extra = len(in_fit) - len(bare)
    assert extra <= 6 // 3 + 1, f"fit adds {extra} host syncs to 6 steps (print_freq 3)"


# ---------------------------------------------------------------------------- device handling (no GPU needed)
def test_device_names_are_checked_in_one_line(monkeypatch):
    with pytest.raises(ValueError, match=r"unknown device 'gpu'; use auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if not CUDA:
        with pytest.raises(ValueError, match="device=cuda:1 was requested but CUDA is not available"):
            resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(
        ValueError, match=r"device=cuda:2 names GPU 2, but this machine has 2 visible GPU\(s\): use cuda:0..cuda:1"
    ):
        resolve_device("cuda:2")


@pytest.mark.parametrize("name", ["gpu", "cuda:7" if not CUDA else f"cuda:{torch.cuda.device_count()}"])
def test_cli_bad_device_is_one_line(name, tmp_path, capsys):
    from hrnet_pyg.cli import main

    code = main(["train", "--device", name, "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("hrnet-pyg train: error: ")
    assert name in err[0]


def test_resume_state_cuda_entry(monkeypatch):
    """The RNG of every GPU is saved when CUDA is present; a state with a ``cuda`` entry restores on
    a CPU-only machine (the entry is skipped) and on one with fewer GPUs (those it has)."""
    assert ("cuda" in rng_state()) == CUDA
    fake = [torch.full((8,), i, dtype=torch.uint8) for i in range(3)]  # a 3-GPU run's states
    torch.manual_seed(5)
    saved = rng_state()
    saved["cuda"] = fake
    expected = torch.rand(3)
    if not CUDA:
        set_rng_state(saved)  # no GPU: the CPU streams come back, the GPU states are skipped
        torch.testing.assert_close(torch.rand(3), expected)
    restored: list[tuple[int, torch.Tensor]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: restored.append((i, s)))
    set_rng_state(saved)
    assert [i for i, _ in restored] == [0, 1] and all(torch.equal(s, fake[i]) for i, s in restored)
    torch.testing.assert_close(torch.rand(3), expected)


def test_fit_rejects_a_bad_print_freq():
    cfg = HRNetConfig(backbone=None, pretrained=False, feat_dim=8, k=3)
    with pytest.raises(ValueError, match="print_freq must be a positive number of steps, got 0"):
        fit(HRNet(cfg, num_classes=4), [], epochs=1, print_freq=0, progress=False)
