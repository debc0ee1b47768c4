"""FeatureExtractor: every input type gives what ``hrnet-pyg extract --images`` writes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hrnet_pyg import FeatureExtractor, HRNet, HRNetConfig
from hrnet_pyg.cli import main
from hrnet_pyg.data import DatasetNotFoundError


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("extractor")
    torch.manual_seed(0)
    cfg = HRNetConfig(backbone="resnet18", pretrained=False, image_size=(64, 32), k=3)
    model = HRNet(cfg, num_classes=3).eval()
    bn = model.bnneck.bn  # non-trivial BN statistics, so that BN(F) differs from F
    bn.running_mean.uniform_(0, 0.5)
    bn.running_var.uniform_(0.5, 1.5)
    ckpt = tmp / "model.pth"
    model.save(ckpt)
    rng = np.random.default_rng(1)
    folder = tmp / "images"
    folder.mkdir()
    paths = []
    for i, (w, h) in enumerate([(20, 40), (33, 70), (48, 96), (20, 40), (64, 128)]):
        p = folder / f"img_{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    out = tmp / "feats.npz"
    assert main(["extract", "--checkpoint", str(ckpt), "--images", str(folder), "--out", str(out),
                 "--labels", "none", "--device", "cpu", "--no-progress"]) == 0
    with np.load(out) as data:
        expected = torch.from_numpy(data["features"])
        assert [str(p) for p in data["paths"]] == [str(p.resolve()) for p in paths]
    return ckpt, model, paths, expected


def _close(a, b):
    assert a.dtype == torch.float32 and a.shape == b.shape
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_paths_match_extract(setup):
    ckpt, _, paths, expected = setup
    ex = FeatureExtractor(ckpt, device="cpu", batch_size=2)
    _close(ex([str(p) for p in paths]), expected)
    _close(ex(paths[2]), expected[2:3])  # one path alone
    assert "feat_dim=512" in repr(ex) and "image_size=64x32" in repr(ex)


def test_pil_and_arrays_match_extract(setup):
    ckpt, model, paths, expected = setup
    ex = FeatureExtractor(model, device="cpu", batch_size=3)
    pil = [Image.open(p) for p in paths]
    _close(ex(pil), expected)
    gray = pil[0].convert("L")  # converted to RGB as read_image does
    _close(ex([gray]), ex([gray.convert("RGB")]))
    arrays = [np.asarray(im.convert("RGB")) for im in pil]
    assert all(a.dtype == np.uint8 and a.ndim == 3 for a in arrays)
    _close(ex(arrays), expected)
    _close(ex(arrays[1]), expected[1:2])
    same_size = np.stack([arrays[0], arrays[3]])  # (N, H, W, 3)
    _close(ex(same_size), expected[[0, 3]])


def test_tensors_match_extract(setup):
    ckpt, _, paths, expected = setup
    ex = FeatureExtractor(ckpt, device="cpu")
    raw = torch.from_numpy(np.stack([np.asarray(Image.open(paths[i]).convert("RGB")) for i in (0, 3)]))
    _close(ex(raw.permute(0, 3, 1, 2)), expected[[0, 3]])  # uint8 (N, 3, H, W): raw images
    transformed = torch.stack([ex.transform(Image.open(p).convert("RGB")) for p in paths])
    assert transformed.shape == (5, 3, 64, 32)
    _close(ex(transformed), expected)  # float: already through the test transform
    _close(ex(transformed[4]), expected[4:5])


def test_bnneck_features(setup):
    _, model, paths, expected = setup
    ex = FeatureExtractor(model, device="cpu", bnneck=True)
    with torch.no_grad():
        _close(ex(paths), model.bnneck.bn(expected))


def test_bad_inputs(setup, tmp_path):
    ckpt, model, paths, _ = setup
    ex = FeatureExtractor(model, device="cpu")
    with pytest.raises(ValueError, match=r"must be \(N, 3, 64, 32\), the model's image_size"):
        ex(torch.zeros(2, 3, 50, 20))
    with pytest.raises(ValueError, match=r"input 1: an array must be an \(H, W, 3\) uint8 RGB image, got float32"):
        ex([np.zeros((8, 4, 3), np.uint8), np.zeros((8, 4, 3), np.float32)])
    with pytest.raises(TypeError, match="got int"):
        ex(3)
    with pytest.raises(DatasetNotFoundError, match="nowhere.png"):
        ex([tmp_path / "nowhere.png"])
    with pytest.raises(ValueError, match="batch_size"):
        FeatureExtractor(model, batch_size=0)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        FeatureExtractor(tmp_path / "missing.pth")
    assert ex([]).shape == (0, 512)
    headless = HRNet(HRNetConfig(backbone=None, feat_dim=8, k=3), num_classes=3)
    with pytest.raises(ValueError, match="no backbone"):
        FeatureExtractor(headless)


def test_float64_and_half_tensors_are_converted_and_nan_is_refused(setup):
    ckpt, _, paths, expected = setup
    ex = FeatureExtractor(ckpt, device="cpu")
    transformed = torch.stack([ex.transform(Image.open(p).convert("RGB")) for p in paths])
    _close(ex(transformed.double()), expected)  # float64 (numpy's default) used to fail inside conv.py
    half = ex(transformed.half())  # rounded inputs: close to the float32 features, not equal
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    torch.testing.assert_close(half, expected, atol=0.05, rtol=0.05)
    for value in (float("nan"), float("inf")):
        bad = transformed.clone()
        bad[3, 1, 10, 5] = value
        with pytest.raises(ValueError, match=r"NaN or infinite values in image\(s\) 3 \(of 5\)"):
            ex(bad)
    bad = transformed.double()
    bad[:] = float("nan")
    with pytest.raises(ValueError, match=r"image\(s\) 0, 1, 2, 3, 4 \(of 5\)"):
        ex(bad)
