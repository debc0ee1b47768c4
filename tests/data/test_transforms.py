"""build_transforms: size, normalisation, flip, pad + crop, random erasing."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hrnet_pyg.data import IMAGENET_MEAN, IMAGENET_STD, build_transforms


def _gradient_image(w=40, h=90):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def test_test_transform_shape_and_normalisation():
    img = Image.new("RGB", (50, 100), (200, 100, 30))
    out = build_transforms(is_train=False)(img)
    assert out.shape == (3, 256, 128) and out.dtype == torch.float32
    for c, v in enumerate((200, 100, 30)):
        expected = (v / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        torch.testing.assert_close(out[c], torch.full((256, 128), expected), atol=1e-6, rtol=0)


def test_default_train_transform_is_random_but_shaped():
    img = _gradient_image()
    t = build_transforms()
    torch.manual_seed(0)
    outs = [t(img) for _ in range(6)]
    assert all(o.shape == (3, 256, 128) for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_flip():
    img = _gradient_image()
    plain = build_transforms(64, 32, is_train=False)(img)
    flipped = build_transforms(64, 32, is_train=True, flip_p=1.0, pad=0)(img)
    assert torch.equal(flipped, plain.flip(-1))


def test_pad_and_random_crop_is_a_shift_with_zero_fill():
    img = _gradient_image()
    h, w, pad = 64, 32, 10
    plain = build_transforms(h, w, is_train=False)(img)
    # the zero-padded image, in normalised units: padding is black (0) before normalisation
    black = ((0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD))[:, None, None]
    padded = black.repeat(1, h + 2 * pad, w + 2 * pad)
    padded[:, pad:pad + h, pad:pad + w] = plain
    t = build_transforms(h, w, is_train=True, flip_p=0.0, pad=pad)
    torch.manual_seed(1)
    offsets = set()
    for _ in range(5):
        out = t(img)
        match = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                 if torch.allclose(out, padded[:, dy:dy + h, dx:dx + w], atol=1e-6)]
        assert match, "output is not a crop of the zero-padded image"
        offsets.add(match[0])
    assert len(offsets) > 1


def test_random_erasing_fills_a_rectangle_with_the_mean():
    img = _gradient_image()
    base = build_transforms(64, 32, is_train=True, flip_p=0.0, pad=0)(img)
    t = build_transforms(64, 32, is_train=True, flip_p=0.0, pad=0, random_erasing=1.0)
    torch.manual_seed(0)
    out = t(img)
    changed = (out != base).any(0)
    ys, xs = torch.nonzero(changed, as_tuple=True)
    assert ys.numel() > 0
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    assert torch.all(out[:, box[0], box[1]] == 0)  # 0 after normalisation = the mean colour
    area = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    assert 0.02 * 64 * 32 - 1 <= area <= 0.4 * 64 * 32 + 1
    outside = ~torch.zeros_like(changed)
    outside[box] = False
    assert torch.equal(out[:, outside], base[:, outside])
    # off by default
    torch.manual_seed(0)
    assert torch.equal(build_transforms(64, 32, flip_p=0.0, pad=0)(img), base)


def test_bad_arguments():
    with pytest.raises(ValueError, match="flip_p"):
        build_transforms(flip_p=1.5)
    with pytest.raises(ValueError, match="random_erasing"):
        build_transforms(random_erasing=-0.1)
    with pytest.raises(ValueError, match="pad"):
        build_transforms(pad=-1)
