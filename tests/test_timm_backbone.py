"""timm backbones (``backbone: timm:<name>``), on small models without weights: timm's weight
loading is never called here."""
import pytest
import torch

timm = pytest.importorskip("timm")

from hrnet_pyg import HRNet, HRNetConfig  # noqa: E402
from hrnet_pyg.backbone import PretrainedWeightsError, ResNetBackbone, TimmBackbone, build_backbone  # noqa: E402


@pytest.fixture(autouse=True)
def no_timm_weights(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("timm's weight loading was called")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", refuse)


def test_timm_resnet18_equals_torchvision_trunk():
    torch.manual_seed(0)
    ours = TimmBackbone("resnet18", last_stride=1).eval()
    assert ours.out_channels == 512
    assert ours.strided_modules == ["layer4.0.conv1", "layer4.0.downsample.0"]
    ref = ResNetBackbone(18, last_stride=1)  # timm's resnet18 uses torchvision's key names
    ref.load_state_dict(ours.net.state_dict())
    ref.eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-4)
        assert ours.feature_map(x).shape == (2, 512, 4, 2)  # stride 16
    plain = TimmBackbone("resnet18", last_stride=2).eval()
    assert plain.strided_modules == []
    timm_own = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    timm_own.load_state_dict(plain.net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain(x), timm_own(x))
        assert plain.feature_map(x).shape == (2, 512, 2, 1)  # stride 32


def test_timm_resnet_d_shortcut_pool_and_hrnet_training_step():
    cfg = HRNetConfig(backbone="timm:resnet10t", pretrained=False, image_size=(64, 32), k=3,
                      num_identities=2, num_instances=2)
    model = HRNet(cfg, num_classes=2)
    bb = model.backbone
    assert isinstance(bb, TimmBackbone) and model.feat_dim == bb.out_channels == 512
    assert "layer4.0.downsample.0" in bb.strided_modules  # the AvgPool2d(2, 2) of ResNet-D
    assert isinstance(bb.net.layer4[0].downsample[0], torch.nn.Identity)
    x = torch.randn(4, 3, 64, 32)
    with torch.no_grad():
        assert bb.feature_map(x).shape[-2:] == (4, 2)
    model.train()
    out = model(x, torch.tensor([0, 0, 1, 1]))
    assert out.feats.shape == (4, 512) and out.bn_feats.shape == (4, 512)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert bb.net.conv1[0].weight.grad is not None


def test_timm_model_without_strides_is_left_alone():
    bb = TimmBackbone("vit_tiny_patch16_224", last_stride=1)
    assert bb.strided_modules == [] and bb.out_channels == 192


def test_timm_pretrained_true_goes_through_timm_api(monkeypatch):
    seen = {}
    real = timm.create_model

    def spy(name, pretrained=False, **kwargs):
        seen.update(name=name, pretrained=pretrained, **kwargs)
        return real(name, pretrained=False, **kwargs)  # the weights themselves are never fetched here

    monkeypatch.setattr(timm, "create_model", spy)
    TimmBackbone("resnet10t", pretrained=True)
    assert seen == {"name": "resnet10t", "pretrained": True, "num_classes": 0}


def test_timm_local_weights_file(tmp_path, capsys):
    torch.manual_seed(1)
    src = timm.create_model("resnet10t", pretrained=False).eval()  # with its 1000-class fc
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "r10t.pth")
    bb = TimmBackbone("resnet10t", pretrained=str(tmp_path / "r10t.pth"), last_stride=2).eval()
    line = capsys.readouterr().out.strip()
    n = len([k for k in src.state_dict() if not k.startswith("fc.")])
    assert line.startswith(f"pretrained weights: loaded {n} backbone tensors from ")
    assert line.endswith("(torchreid checkpoint); skipped: fc (2 tensors)")
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(bb(x), src.forward_head(src.forward_features(x), pre_logits=True))
    sd = src.state_dict()
    del sd["layer2.0.bn1.weight"]
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(PretrainedWeightsError, match=r"missing key\(s\) \['layer2\.0\.bn1\.weight'\]"):
        TimmBackbone("resnet10t", pretrained=str(tmp_path / "missing.pth"))


def test_bad_names():
    with pytest.raises(ValueError, match="timm has no model 'no_such_net'"):
        build_backbone("timm:no_such_net")
    with pytest.raises(
        ValueError,
        match=r"unknown backbone 'resnet9'; valid: resnet18, resnet34, resnet50, resnet101, mobilenet_v2, "
        r"timm:<name> or None",
    ):
        HRNet(HRNetConfig(backbone="resnet9", pretrained=False), num_classes=2)
