"""Pretrained weights in every layout users bring: torchvision, torchreid, fast-reid,
safetensors, this project's checkpoint, and torchvision weight names (never downloaded here);
the offline ImageNet MobileNetV2 of ../shared/data/weights when it is present."""
import os
from pathlib import Path

import pytest
import torch
import torchvision

from hrnet_pyg import HRNet, HRNetConfig
from hrnet_pyg.backbone import MobileNetV2Backbone, PretrainedWeightsError, ResNetBackbone, torchvision_weights
from hrnet_pyg.engine import save_model


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(3)
    net = torchvision.models.resnet18(weights=None)
    with torch.no_grad():  # non-default BN statistics, so that buffers are checked too
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def _trunk(net):
    return {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}


def _reference(net, x):
    """torchvision's own trunk (last stride 2) through avgpool: the independent reference."""
    with torch.no_grad():
        m = torch.nn.Sequential(*list(net.children())[:-1])
        return m(x).flatten(1)


def _check(path, net, capsys, skipped):
    ours = ResNetBackbone(18, pretrained=str(path), last_stride=2).eval()
    line = capsys.readouterr().out.strip().splitlines()
    assert len(line) == 1, line
    n = len(_trunk(net))
    assert line[0].startswith(f"pretrained weights: loaded {n} backbone tensors from {path}")
    assert line[0].endswith("skipped: " + skipped), line[0]
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), _reference(net, x), atol=1e-5, rtol=1e-4)


def test_torchvision_state_dict(tmp_path, resnet18, capsys):
    torch.save(resnet18.state_dict(), tmp_path / "tv.pth")
    _check(tmp_path / "tv.pth", resnet18, capsys, "fc (2 tensors)")


def test_torchreid_checkpoint(tmp_path, resnet18, capsys):
    # torchreid's save_checkpoint: {'state_dict', 'epoch', 'rank1', 'optimizer'}, keys under
    # module. when trained with DataParallel, an ID classifier named classifier
    sd = {f"module.{k}": v for k, v in _trunk(resnet18).items()}
    sd["module.classifier.weight"] = torch.randn(751, 512)
    sd["module.classifier.bias"] = torch.zeros(751)
    ckpt = {"state_dict": sd, "epoch": 60, "rank1": 0.87,
            "optimizer": {"state": {}, "param_groups": [{"lr": 3e-4, "params": [0, 1]}]}}
    torch.save(ckpt, tmp_path / "model.pth.tar-60")
    _check(tmp_path / "model.pth.tar-60", resnet18, capsys, "classifier (2 tensors)")


def test_fastreid_checkpoint(tmp_path, resnet18, capsys):
    # fast-reid's Checkpointer: {'model', 'optimizer', 'scheduler', 'iteration'}; the trunk under
    # backbone., the BNNeck and classifier under heads., normalisation buffers at top level
    sd = {f"backbone.{k}": v for k, v in _trunk(resnet18).items()}
    sd.update({"heads.bottleneck.0.weight": torch.ones(512), "heads.bottleneck.0.bias": torch.zeros(512),
               "heads.weight": torch.randn(702, 512), "pixel_mean": torch.zeros(1, 3, 1, 1),
               "pixel_std": torch.ones(1, 3, 1, 1)})
    torch.save({"model": sd, "iteration": 1200, "optimizer": {}, "scheduler": {}}, tmp_path / "model_final.pth")
    _check(tmp_path / "model_final.pth", resnet18, capsys,
           "heads (3 tensors), pixel_mean (1 tensor), pixel_std (1 tensor)")


def test_safetensors_file(tmp_path, resnet18, capsys):
    st = pytest.importorskip("safetensors.torch")
    st.save_file({k: v.contiguous() for k, v in resnet18.state_dict().items()}, str(tmp_path / "r18.safetensors"))
    _check(tmp_path / "r18.safetensors", resnet18, capsys, "fc (2 tensors)")


def test_own_checkpoint(tmp_path, resnet18, capsys):
    cfg = HRNetConfig(backbone="resnet18", pretrained=False, last_stride=2, feat_dim=512)
    model = HRNet(cfg, num_classes=5)
    model.backbone.load_state_dict(_trunk(resnet18))
    save_model(model, tmp_path / "hrnet.pth")
    skipped = {k.split(".", 1)[0] for k in model.state_dict() if not k.startswith("backbone.")}
    assert {"bnneck", "head"} <= skipped
    ours = ResNetBackbone(18, pretrained=str(tmp_path / "hrnet.pth"), last_stride=2).eval()
    line = capsys.readouterr().out
    assert "(hrnet_pyg checkpoint)" in line and "bnneck (" in line and "head (" in line
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), _reference(resnet18, x), atol=1e-5, rtol=1e-4)


def test_missing_tensor_and_shape_mismatch_name_the_key(tmp_path, resnet18, capsys):
    sd = {f"backbone.{k}": v for k, v in _trunk(resnet18).items()}
    del sd["backbone.layer3.1.bn2.weight"]
    torch.save({"model": sd}, tmp_path / "missing.pth")
    with pytest.raises(
        PretrainedWeightsError,
        match=r"missing.pth \(fast-reid checkpoint\).*1 missing key\(s\) \['layer3\.1\.bn2\.weight'\]",
    ):
        ResNetBackbone(18, pretrained=str(tmp_path / "missing.pth"))
    sd = _trunk(resnet18)
    sd["layer4.0.conv1.weight"] = torch.zeros(512, 256, 1, 1)
    torch.save({"state_dict": sd}, tmp_path / "shape.pth")
    with pytest.raises(
        PretrainedWeightsError,
        match=r"shape mismatch layer4\.0\.conv1\.weight \(512, 256, 1, 1\) vs \(512, 256, 3, 3\)",
    ):
        ResNetBackbone(18, pretrained=str(tmp_path / "shape.pth"))
    torch.save({"state_dict": {"classifier.weight": torch.zeros(3, 512)}}, tmp_path / "heads_only.pth")
    with pytest.raises(PretrainedWeightsError, match="holds no backbone tensor"):
        ResNetBackbone(18, pretrained=str(tmp_path / "heads_only.pth"))
    assert capsys.readouterr().out == ""  # nothing claims success
    # a ValueError too: the CLI reports it in one line
    assert issubclass(PretrainedWeightsError, ValueError) and issubclass(PretrainedWeightsError, RuntimeError)


def test_weights_only_refuses_pickled_objects(tmp_path):
    torch.save(
        {"state_dict": _trunk(torchvision.models.resnet18(weights=None)), "cfg": object()}, tmp_path / "pickle.pth"
    )
    with pytest.raises(PretrainedWeightsError, match="pickle.pth' is not a plain state dict") as info:
        ResNetBackbone(18, pretrained=str(tmp_path / "pickle.pth"))
    assert "weights_only=False" not in str(info.value) and info.value.__cause__ is None
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(PretrainedWeightsError, match="could not read pretrained weights file .*notes.txt'"):
        ResNetBackbone(18, pretrained=str(tmp_path / "notes.txt"))


@pytest.mark.parametrize(
    "name, member",
    [
        (True, "IMAGENET1K_V1"),
        ("IMAGENET1K_V1", "IMAGENET1K_V1"),
        ("imagenet1k_v2", "IMAGENET1K_V2"),
        ("DEFAULT", "IMAGENET1K_V2"),
    ],
)
def test_torchvision_weight_names(name, member):
    assert torchvision_weights(50, name) is getattr(torchvision.models.ResNet50_Weights, member)


def test_unknown_weight_name_lists_valid_ones():
    with pytest.raises(
        PretrainedWeightsError, match=r"ResNet18_Weights has no such weights; valid names: IMAGENET1K_V1, DEFAULT"
    ):
        torchvision_weights(18, "IMAGENET1K_V2")  # resnet18 has only V1
    with pytest.raises(PretrainedWeightsError, match="valid names"):
        ResNetBackbone(18, pretrained="IMAGENET1K_V2")


def test_weight_name_through_config_downloads_that_enum(monkeypatch, capsys):
    calls = []
    net = torchvision.models.resnet50(weights=None)

    def fake_download(url, *args, **kwargs):  # what WeightsEnum.get_state_dict calls; no network
        calls.append(url)
        return net.state_dict()

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fake_download)
    cfg = HRNetConfig.from_dict({"backbone": "resnet50", "pretrained": "IMAGENET1K_V2"})
    model = HRNet(cfg, num_classes=3)
    assert calls == [torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url]
    out = capsys.readouterr().out
    n = len(_trunk(net))
    assert (
        f"loaded {n} backbone tensors from torchvision ResNet50_Weights.IMAGENET1K_V2; skipped: fc (2 tensors)" in out
    )
    torch.testing.assert_close(model.backbone.conv1.weight, net.conv1.weight)


# ../shared/data/weights beside the repository (CI), or HRNET_PYG_SHARED_DATA naming shared/data
REPO = Path(__file__).resolve().parents[1]
SHARED_WEIGHTS = Path(os.environ.get("HRNET_PYG_SHARED_DATA", REPO.parent / "shared" / "data")) / "weights"
MOBILENET_FILE = SHARED_WEIGHTS / "mobilenet_v2_imagenet_torchvision.pth"


@pytest.mark.skipif(not MOBILENET_FILE.is_file(), reason=f"offline weights absent: no {MOBILENET_FILE}")
def test_offline_imagenet_mobilenet_v2_file(capsys):
    cfg = HRNetConfig(backbone="mobilenet_v2", pretrained=str(MOBILENET_FILE), k=4)
    model = HRNet(cfg, num_classes=5)
    line = capsys.readouterr().out.strip().splitlines()
    assert line == [f"pretrained weights: loaded 312 backbone tensors from {MOBILENET_FILE} "
                    "(torchvision state dict); skipped: nothing"]
    assert model.feat_dim == 1280
    # the file's tensors, unchanged, in torchvision's layout
    state = torch.load(MOBILENET_FILE, map_location="cpu", weights_only=True)
    for k, v in state.items():
        torch.testing.assert_close(model.backbone.state_dict()[k], v, rtol=0, atol=0)
    # trained values, not an initialisation (BN variance 1, BN weight 1)
    assert state["features.0.1.running_var"].std() > 0.1 and (state["features.18.1.weight"] - 1).abs().mean() > 0.1
    # torchvision reads it the way its README says (only classifier.1.* missing)
    missing, unexpected = torchvision.models.mobilenet_v2().load_state_dict(state, strict=False)
    assert sorted(missing) == ["classifier.1.bias", "classifier.1.weight"] and unexpected == []
    ours = MobileNetV2Backbone(pretrained=MOBILENET_FILE, last_stride=2).eval()
    ref = torchvision.models.mobilenet_v2()
    ref.load_state_dict(state, strict=False)
    ref.classifier = torch.nn.Identity()
    x = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref.eval()(x), atol=1e-5, rtol=1e-4)
