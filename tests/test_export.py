"""Export of the feature extractor (hrnet_pyg/export.py, ``hrnet-pyg export``) and the versioned
checkpoint format of hrnet_pyg/engine.py (save/load of the whole HRNet)."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

import hrnet_pyg.export as export_mod
from hrnet_pyg import HRNet
from hrnet_pyg.cli import main
from hrnet_pyg.config import HRNetConfig
from hrnet_pyg.engine import CHECKPOINT_FORMAT_VERSION, load_checkpoint, load_model
from hrnet_pyg.export import FeatureExtractor, export_model, load_exported
from hrnet_pyg.scoring import score_query_graphs


def tiny_model(seed: int = 0) -> HRNet:
    torch.manual_seed(seed)
    model = HRNet(
        HRNetConfig(backbone="resnet18", pretrained=False, image_size=(64, 32), k=3, num_identities=2,
                    num_instances=2),
        num_classes=2,
    )
    # Non-trivial BN statistics everywhere (as after training), so eval-mode BN matters.
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> HRNet:
    return tiny_model()


def images(n: int, h: int = 64, w: int = 32, seed: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def eager(model: HRNet, x: torch.Tensor):
    """The eager model's (BN(F), F), through HRNet's own methods."""
    model.eval()
    f = model.extract_features(x)
    return model.retrieval_features(f), f


# ---------------------------------------------------------------------------- the module exported
def test_feature_extractor_equals_model_and_leaves_it_untouched(model):
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ext = FeatureExtractor.from_model(model, with_feats=True)
    assert model.training and not ext.training  # the source keeps its mode
    x = images(4)
    with torch.no_grad():
        bn, f = ext(x)
        only_bn = FeatureExtractor.from_model(model)(x)
    ref_bn, ref_f = eager(model, x)
    torch.testing.assert_close(bn, ref_bn, rtol=0, atol=0)
    torch.testing.assert_close(f, ref_f, rtol=0, atol=0)
    torch.testing.assert_close(only_bn, ref_bn, rtol=0, atol=0)
    with torch.no_grad():  # a copy: changing the extractor does not change the model
        ext.bn.running_mean.add_(1.0)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert "FeatureExtractor" in repr(ext) and "with_feats=True" in repr(ext)


def test_export_rejects_bad_requests(model, tmp_path):
    with pytest.raises(ValueError, match="unknown export format 'tflite'; valid formats: torchscript, onnx"):
        export_model(model, tmp_path / "m", "tflite")
    no_backbone = HRNet(HRNetConfig(backbone=None, feat_dim=8, k=3), num_classes=2)
    with pytest.raises(ValueError, match="no backbone"):
        export_model(no_backbone, tmp_path / "m.pt")


# ---------------------------------------------------------------------------- TorchScript, torch.export
def test_torchscript_export_equals_eager_for_any_batch_and_image_size(model, tmp_path):
    res = export_model(model, tmp_path / "m.pt", "torchscript", with_feats=True)
    assert res.path.is_file() and res.max_abs_diff is not None and res.max_abs_diff <= 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, still supported
        loaded = torch.jit.load(str(res.path))
    for x in (images(1), images(5, seed=4), images(2, 96, 48, seed=5)):
        with torch.no_grad():
            bn, f = loaded(x)
        ref_bn, ref_f = eager(model, x)
        torch.testing.assert_close(bn, ref_bn, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(f, ref_f, atol=1e-5, rtol=1e-5)
    meta = json.loads(res.metadata_path.read_text())
    assert res.metadata_path.name == "m.pt.json"
    assert meta["inputs"]["images"] == ["batch", 3, 64, 32]
    assert meta["outputs"] == {"bn_feats": ["batch", 512], "feats": ["batch", 512]}
    assert meta["preprocessing"]["mean"] == [0.485, 0.456, 0.406] and meta["config"]["backbone"] == "resnet18"
    assert meta["verification"].startswith("verified with torch.jit.load")


def test_torch_export_program_equals_eager(model, tmp_path):
    res = export_model(model, tmp_path / "m.pt2", "torch.export")
    program = torch.export.load(str(res.path)).module()
    for x in (images(1), images(4, seed=6)):
        with torch.no_grad():
            out = program(x)
        torch.testing.assert_close(out, eager(model, x)[0], atol=1e-5, rtol=1e-5)


def test_verification_catches_a_wrong_export(model, tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "load_exported", lambda path: (lambda x: (torch.zeros(x.size(0), 512),)))
    with pytest.raises(RuntimeError, match="differs from the eager model"):
        export_model(model, tmp_path / "m.pt", "torchscript")


# ---------------------------------------------------------------------------- ONNX
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript_exporter", "dynamo_exporter"])
def test_onnx_export_equals_eager_with_dynamic_batch(model, tmp_path, dynamo):
    pytest.importorskip("onnx", reason="ONNX export needs the optional 'onnx' package (pip install hrnet_pyg[export])")
    ort = pytest.importorskip(
        "onnxruntime", reason="checking an ONNX export needs 'onnxruntime' (pip install hrnet_pyg[export])"
    )
    if dynamo:
        pytest.importorskip("onnxscript", reason="the torch.export-based ONNX exporter needs 'onnxscript'")
    res = export_model(model, tmp_path / "m.onnx", "onnx", with_feats=True, dynamo=dynamo)
    assert res.verify_note.startswith("verified with onnxruntime")
    session = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["bn_feats", "feats"]
    assert not isinstance(session.get_inputs()[0].shape[0], int)  # symbolic batch axis
    for x in (images(1), images(5, seed=7)):
        bn, f = session.run(None, {"images": x.numpy()})
        ref_bn, ref_f = eager(model, x)
        torch.testing.assert_close(torch.from_numpy(bn), ref_bn, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(torch.from_numpy(f), ref_f, atol=1e-4, rtol=1e-4)
    bn, f = load_exported(res.path)(images(2))  # the runtime-agnostic loader gives the same
    torch.testing.assert_close(bn, eager(model, images(2))[0], atol=1e-4, rtol=1e-4)


def test_onnx_without_onnx_package_says_what_to_install(model, tmp_path, monkeypatch, capsys):
    real = export_mod._has_module
    monkeypatch.setattr(export_mod, "_has_module", lambda name: False if name == "onnx" else real(name))
    with pytest.raises(ImportError, match=r"pip install 'hrnet_pyg\[export\]'"):
        export_model(model, tmp_path / "m.onnx", "onnx")
    ckpt = tmp_path / "model.pth"
    model.save(ckpt)
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "needs the 'onnx' package" in err and "Traceback" not in err


def test_onnx_export_without_onnxruntime_is_reported_unverified(model, tmp_path, monkeypatch):
    pytest.importorskip("onnx", reason="ONNX export needs the optional 'onnx' package (pip install hrnet_pyg[export])")
    real = export_mod._has_module
    monkeypatch.setattr(export_mod, "_has_module", lambda name: False if name == "onnxruntime" else real(name))
    res = export_model(model, tmp_path / "m.onnx", "onnx", dynamo=False)
    assert res.path.is_file() and res.max_abs_diff is None
    assert "onnxruntime is not installed" in res.verify_note


# ---------------------------------------------------------------------------- CLI
def test_cli_export(model, tmp_path, capsys):
    ckpt = tmp_path / "model.pth"
    model.save(ckpt)
    out = tmp_path / "out" / "extractor.pt"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--with-feats"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} (torchscript)" in printed and "verified with torch.jit.load" in printed
    assert out.is_file() and out.with_name("extractor.pt.json").is_file()
    assert main(["export", "--checkpoint", str(tmp_path / "missing.pth"), "--out", str(out), "--overwrite"]) == 2
    assert "missing.pth does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse lists the valid choices
        main(["export", "--checkpoint", str(ckpt), "--format", "tflite", "--out", str(out)])
    assert exc.value.code == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- checkpoint format
def test_save_load_roundtrip_of_the_whole_hrnet(model, tmp_path):
    path = tmp_path / "hrnet.pth"
    model.save(path)
    loaded = HRNet.load(path).eval()
    own, back = model.state_dict(), loaded.state_dict()
    assert set(own) == set(back)
    for prefix in ("backbone.", "bnneck.", "head.ir.", "head.ir_neck.", "head.pr.", "head.verifier."):
        assert any(k.startswith(prefix) for k in own), prefix  # graph modules are part of it
    assert all(torch.equal(own[k], back[k]) for k in own)
    assert loaded.config == model.config and loaded.num_classes == model.num_classes
    # identical outputs: the CNN, the test-time graph scores, and a training step's losses
    x = images(4)
    torch.testing.assert_close(loaded(x).bn_feats, model.eval()(x).bn_feats, rtol=0, atol=0)
    graphs = torch.randn(2, 5, model.feat_dim, generator=torch.Generator().manual_seed(8)).relu()
    with torch.no_grad():
        torch.testing.assert_close(score_query_graphs(loaded, graphs), score_query_graphs(model, graphs),
                                   rtol=0, atol=0)
    pids = torch.tensor([0, 0, 1, 1])
    a, b = tiny_model(), HRNet.load(path)  # a fresh copy of the saved weights, and the loaded one
    a.train()
    b.train()
    out_a, out_b = a(x, pids), b(x, pids)
    assert set(out_a.losses) == {"cl", "tr", "in", "c_pos", "c_neg", "pa"}
    for name in out_a.losses:
        torch.testing.assert_close(out_a.losses[name], out_b.losses[name], rtol=0, atol=0)


@pytest.mark.parametrize("version", [0, CHECKPOINT_FORMAT_VERSION + 1, None])
def test_checkpoint_of_another_format_version_is_refused_clearly(model, tmp_path, version):
    path = tmp_path / "hrnet.pth"
    model.save(path)
    ckpt = load_checkpoint(path)
    if version is None:
        del ckpt["format_version"]
    else:
        ckpt["format_version"] = version
    torch.save(ckpt, path)
    with pytest.raises(ValueError) as exc:
        load_model(path)
    msg = str(exc.value)
    assert str(path) in msg and f"format version {version}" in msg
    assert f"reads version {CHECKPOINT_FORMAT_VERSION}" in msg


def test_cli_export_never_replaces_an_earlier_export_silently(model, tmp_path, capsys):
    ckpt = tmp_path / "model.pth"
    model.save(ckpt)
    out = tmp_path / "extractor.pt"
    out.write_bytes(b"the user's file")
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--no-verify"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--out {out} exists" in err[0] and "--overwrite" in err[0]
    assert out.read_bytes() == b"the user's file"
    out.unlink()
    meta = tmp_path / "extractor.pt.json"
    meta.write_text("{}")  # the metadata of an earlier export whose model file was moved away
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--no-verify"]) == 2
    assert f"{meta} exists" in capsys.readouterr().err and meta.read_text() == "{}" and not out.exists()
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--no-verify", "--overwrite"]) == 0
    assert out.is_file() and meta.read_text() != "{}"
