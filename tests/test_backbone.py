"""ResNetBackbone and MobileNetV2Backbone against torchvision's own trunks (minGPT-style reference
tests), and BNNeck."""
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from hrnet_pyg.backbone import BNNeck, MobileNetV2Backbone, ResNetBackbone, build_backbone


def torchvision_trunk(depth: int, seed: int = 0) -> nn.Module:
    """torchvision's ResNet with fc -> Identity: conv1 ... layer4, avgpool, flatten."""
    torch.manual_seed(seed)
    net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    net.fc = nn.Identity()
    return net.eval()


def copy_into(ours: ResNetBackbone, ref: nn.Module) -> ResNetBackbone:
    ours.load_trunk_state_dict(ref.state_dict())
    return ours.eval()


@pytest.mark.parametrize("depth", [50, 18])
def test_last_stride_2_equals_torchvision_trunk(depth):
    ref = torchvision_trunk(depth)
    ours = copy_into(ResNetBackbone(depth, last_stride=2), ref)
    # BN running stats away from (0, 1) so eval-mode BN is not the identity
    with torch.no_grad():
        for (_, a), (_, b) in zip(ours.named_buffers(), ref.named_buffers(), strict=False):
            if a.is_floating_point():
                a.uniform_(0.5, 1.5)
                b.copy_(a)
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        f, f_ref = ours(x), ref(x)
    assert f.shape == (2, ours.out_channels)
    torch.testing.assert_close(f, f_ref, atol=1e-5, rtol=1e-4)
    assert set(ours.state_dict()) == {k for k in ref.state_dict()}


def test_last_stride_1_gives_16x8_maps_for_256x128():
    ours = ResNetBackbone(50).eval()
    assert ours.out_channels == 2048
    x = torch.randn(1, 3, 256, 128)
    seen = {}
    ours.layer4.register_forward_hook(lambda m, i, o: seen.update(layer4=o.shape))
    with torch.no_grad():
        f = ours(x)
    assert seen["layer4"] == (1, 2048, 16, 8)
    assert f.shape == (1, 2048)
    with torch.no_grad():
        torch.testing.assert_close(f, ours.feature_map(x).mean(dim=(2, 3)), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("depth", [18, 50])
def test_last_stride_1_equals_torchvision_with_conv5_1_stride_edited(depth):
    # Reference: torchvision's net with the stride-2 convs of layer4[0] edited by hand.
    ref = torchvision_trunk(depth, seed=3)
    block = ref.layer4[0]
    (block.conv2 if depth >= 50 else block.conv1).stride = (1, 1)
    block.downsample[0].stride = (1, 1)
    ours = copy_into(ResNetBackbone(depth), ref)  # last_stride=1 (default)
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        fmap, f, f_ref = ours.feature_map(x), ours(x), ref(x)
    channels = 512 if depth == 18 else 2048
    assert ours.out_channels == channels and f.shape == (2, channels)
    assert fmap.shape == (2, channels, 4, 2)  # H/16 x W/16
    torch.testing.assert_close(f, f_ref, atol=1e-5, rtol=1e-4)


def test_bottleneck_stride_moved_to_conv2_and_shortcut():
    ours = ResNetBackbone(50)
    block = ours.layer4[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (1, 1)
    assert block.downsample[0].stride == (1, 1)
    assert ours.layer3[0].conv2.stride == (2, 2)  # earlier stages untouched
    assert not hasattr(ours, "fc") and not hasattr(ours, "avgpool")


def test_channels_last_input():
    ours = ResNetBackbone(18).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        f = ours(x)
        f_cl = ours(x.contiguous(memory_format=torch.channels_last))
        ours_cl = ours.to(memory_format=torch.channels_last)
        f_both = ours_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(f_cl, f, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(f_both, f, atol=1e-5, rtol=1e-4)


def test_local_pth_resnet50_gives_identical_outputs(tmp_path):
    ref = torchvision_trunk(50, seed=7)
    full = torchvision.models.resnet50(weights=None)
    full.load_state_dict({**ref.state_dict(), "fc.weight": full.fc.weight, "fc.bias": full.fc.bias})
    path = tmp_path / "resnet50.pth"
    torch.save(full.state_dict(), path)  # a plain torchvision state dict, fc.* included
    ours = ResNetBackbone(50, pretrained=str(path), last_stride=2).eval()
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-4)


def test_local_pth_wrappers_and_old_files(tmp_path):
    ref = torchvision_trunk(18, seed=5)
    sd = ref.state_dict()
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        expected = ref(x)
    variants = {
        "state_dict.pth": {"state_dict": sd, "epoch": 3},
        "model.pth": {"model": sd},
        "ddp.pth": {f"module.{k}": v for k, v in sd.items()},
        # files from PyTorch < 0.4.1 (torchvision's V1 weights) lack the BN counters
        "old.pth": {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")},
    }
    for name, obj in variants.items():
        torch.save(obj, tmp_path / name)
        ours = ResNetBackbone(18, pretrained=tmp_path / name, last_stride=2).eval()
        with torch.no_grad():
            torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-4, msg=name)


def test_bad_weight_files(tmp_path):
    missing = tmp_path / "nowhere" / "resnet50.pth"
    with pytest.raises(FileNotFoundError, match="nowhere/resnet50.pth"):
        ResNetBackbone(18, pretrained=str(missing))
    # a resnet18 file for a resnet34 trunk: names the keys
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(RuntimeError, match=r"resnet34 trunk: .*missing key\(s\) \['layer1\.2"):
        ResNetBackbone(34, pretrained=str(tmp_path / "r18.pth"))
    sd = torchvision.models.resnet18(weights=None).state_dict()
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "extra.pth")
    with pytest.raises(RuntimeError, match=r"unexpected key\(s\) \['extra.weight'\]"):
        ResNetBackbone(18, pretrained=str(tmp_path / "extra.pth"))
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(RuntimeError, match="must hold a state dict"):
        ResNetBackbone(18, pretrained=str(tmp_path / "list.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="could not read pretrained weights file"):
        ResNetBackbone(18, pretrained=str(tmp_path / "junk.pth"))


def test_offline_download_gives_clear_message(monkeypatch):
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    # the function torchvision's WeightsEnum.get_state_dict calls: nothing is downloaded
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError) as info:
        ResNetBackbone(50, pretrained=True)
    msg = str(info.value)
    assert calls == [torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url]
    assert 'pretrained="/path/resnet50.pth"' in msg and "pretrained=False" in msg
    assert "URLError" in msg


def test_bad_arguments():
    with pytest.raises(ValueError, match="depth must be one of 18, 34, 50, 101"):
        ResNetBackbone(152)
    with pytest.raises(ValueError, match="last_stride"):
        ResNetBackbone(18, last_stride=3)
    with pytest.raises(TypeError, match="pretrained"):
        ResNetBackbone(18, pretrained=1.0)
    with pytest.raises(ValueError, match=r"images must have shape \(N, 3, H, W\)"):
        ResNetBackbone(18)(torch.randn(3, 64, 32))


# ----------------------------------------------------------------------------- BNNeck
def test_bnneck_matches_formula_and_init():
    torch.manual_seed(0)
    neck = BNNeck(8, 5)
    assert str(neck) == "BNNeck(8, 5)"
    assert torch.equal(neck.bn.weight, torch.ones(8)) and torch.equal(neck.bn.bias, torch.zeros(8))
    assert not neck.bn.bias.requires_grad and neck.bn.weight.requires_grad
    assert neck.classifier.bias is None
    assert 0.0005 < neck.classifier.weight.std().item() < 0.002
    with torch.no_grad():
        neck.bn.weight.uniform_(0.5, 2.0)
    f = torch.randn(6, 8) * 3 + 1
    bn_feat, logits = neck(f)  # training mode: batch statistics
    ref = (f - f.mean(0)) / torch.sqrt(f.var(0, unbiased=False) + neck.bn.eps) * neck.bn.weight
    torch.testing.assert_close(bn_feat, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, ref @ neck.classifier.weight.t(), atol=1e-6, rtol=1e-5)
    neck.eval()  # eval mode: running statistics, same return type
    bn_eval, logits_eval = neck(f)
    ref = ((f - neck.bn.running_mean) / torch.sqrt(neck.bn.running_var + neck.bn.eps)
           * neck.bn.weight)
    torch.testing.assert_close(bn_eval, ref, atol=1e-5, rtol=1e-5)
    assert logits_eval.shape == (6, 5)


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_bnneck_bias_not_updated_by_optimizer(opt):
    torch.manual_seed(0)
    neck = BNNeck(4, 3)
    params = list(neck.parameters())
    optim = (torch.optim.Adam(params, lr=0.1, weight_decay=5e-4) if opt == "adam"
             else torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4))
    w0 = neck.bn.weight.detach().clone()
    for _ in range(3):
        bn_feat, logits = neck(torch.randn(6, 4))
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0, 1, 2])) \
            + (bn_feat * torch.randn(6, 4)).sum()
        optim.zero_grad()
        loss.backward()
        optim.step()
    assert torch.equal(neck.bn.bias, torch.zeros(4))
    assert not torch.equal(neck.bn.weight, w0)


def test_bnneck_bad_input():
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        BNNeck(8, 3)(torch.randn(4, 7))


# ----------------------------------------------------------------------------- MobileNetV2
def torchvision_mobilenet(seed: int = 0, last_stride: int = 2) -> nn.Module:
    """torchvision's mobilenet_v2 with classifier -> Identity (features, GAP, flatten), BN
    statistics away from (0, 1); at ``last_stride=1`` the depthwise conv of features[14] edited
    by hand."""
    torch.manual_seed(seed)
    net = torchvision.models.mobilenet_v2(weights=None)
    net.classifier = nn.Identity()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    if last_stride == 1:
        net.features[14].conv[1][0].stride = (1, 1)
    return net.eval()


@pytest.mark.parametrize("last_stride", [2, 1])
def test_mobilenet_v2_equals_torchvision_trunk(last_stride):
    ref = torchvision_mobilenet(seed=last_stride, last_stride=last_stride)
    ours = MobileNetV2Backbone(last_stride=last_stride)
    assert ours.load_trunk_state_dict(ref.state_dict()) == 312
    ours.eval()
    assert set(ours.state_dict()) == set(ref.state_dict())  # torchvision's names, no classifier
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        f, f_ref, fmap = ours(x), ref(x), ours.feature_map(x)
    assert f.shape == (2, 1280) and ours.out_channels == 1280
    assert fmap.shape == ((2, 1280, 4, 2) if last_stride == 1 else (2, 1280, 2, 1))
    torch.testing.assert_close(f, f_ref, atol=1e-5, rtol=1e-4)


def test_mobilenet_v2_last_stride_1_gives_16x8_maps_for_256x128():
    ours = MobileNetV2Backbone().eval()
    with torch.no_grad():
        assert ours.feature_map(torch.randn(1, 3, 256, 128)).shape == (1, 1280, 16, 8)
    strided = [n for n, m in ours.named_modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    assert strided == ["features.0.0", "features.2.conv.1.0", "features.4.conv.1.0", "features.7.conv.1.0"]
    assert str(ours) == "MobileNetV2Backbone(out_channels=1280, last_stride=1)"


def test_mobilenet_v2_from_a_torchvision_file(tmp_path, capsys):
    ref = torchvision_mobilenet(seed=4)
    full = torchvision.models.mobilenet_v2(weights=None)  # with its ImageNet classifier
    full.load_state_dict({**ref.state_dict(), **{k: v for k, v in full.state_dict().items()
                                                 if k.startswith("classifier.")}})
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        expected = ref(x)
    for name, state, skipped in (
        ("full.pth", full.state_dict(), "classifier (2 tensors)"),
        ("trunk.pth", ref.state_dict(), "nothing"),  # the layout of ../shared/data/weights
    ):
        torch.save(state, tmp_path / name)
        ours = MobileNetV2Backbone(pretrained=str(tmp_path / name), last_stride=2).eval()
        lines = capsys.readouterr().out.strip().splitlines()
        assert lines == [f"pretrained weights: loaded 312 backbone tensors from {tmp_path / name} "
                         f"(torchvision state dict); skipped: {skipped}"]
        with torch.no_grad():
            torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-4)


def test_mobilenet_v2_bad_files_name_the_keys(tmp_path, monkeypatch):
    sd = torchvision.models.mobilenet_v2(weights=None).state_dict()
    torch.save({k: v for k, v in sd.items() if k != "features.3.conv.2.weight"}, tmp_path / "missing.pth")
    with pytest.raises(RuntimeError, match=r"mobilenet_v2 trunk: 1 missing key\(s\) \['features.3.conv.2.weight'\]"):
        MobileNetV2Backbone(pretrained=str(tmp_path / "missing.pth"))
    torch.save({**sd, "features.0.0.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "shape.pth")
    with pytest.raises(RuntimeError, match=r"shape mismatch features.0.0.weight \(8, 3, 3, 3\) vs \(32, 3, 3, 3\)"):
        MobileNetV2Backbone(pretrained=str(tmp_path / "shape.pth"))
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(RuntimeError, match=r"does not fit a torchvision mobilenet_v2 trunk: \d+ unexpected key"):
        MobileNetV2Backbone(pretrained=str(tmp_path / "r18.pth"))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match=r'MobileNet_V2_Weights.IMAGENET1K_V1 for mobilenet_v2 .*'
                                           r'pretrained="/path/mobilenet_v2.pth"'):
        MobileNetV2Backbone(pretrained=True)
    with pytest.raises(RuntimeError, match="MobileNet_V2_Weights has no such weights; valid names: IMAGENET1K_V1"):
        MobileNetV2Backbone(pretrained="IMAGENET1K_V3")


def test_mobilenet_v2_sizes_the_graph_modules_and_trains():
    from hrnet_pyg import HRNet, HRNetConfig

    torch.manual_seed(0)
    cfg = HRNetConfig(backbone="mobilenet_v2", pretrained=False, k=4, num_identities=4, num_instances=3,
                      image_size=(64, 32))
    model = HRNet(cfg, num_classes=4)
    assert model.feat_dim == 1280 and model.bnneck.in_features == 1280
    assert model.ir.in_channels == model.ir.out_channels == 1280 and model.pr.channels == 1280
    out = model(torch.randn(12, 3, 64, 32), torch.arange(4).repeat_interleave(3))
    assert out.feats.shape == out.ir_feats.shape == (12, 1280) and out.pair_logits.shape == (12, 12)
    assert set(out.losses) == {"cl", "tr", "in", "c_pos", "c_neg", "pa"} and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.backbone.features[0][0].weight.grad is not None
    with pytest.raises(ValueError, match="valid: resnet18, resnet34, resnet50, resnet101, mobilenet_v2, timm"):
        build_backbone("mobilenet_v3")
