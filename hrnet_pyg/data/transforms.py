"""Image transforms of the paper (Sec. 3.1, 4.2): resize to 256x128, random horizontal flip and
random cropping (zero-pad 10 px, crop back, as in the BoT baseline), ImageNet normalisation; random
erasing is optional and off by default (the paper does not use it)."""
from __future__ import annotations

from collections.abc import Sequence

import torchvision.transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transforms(
    height: int = 256,
    width: int = 128,
    is_train: bool = True,
    flip_p: float = 0.5,
    pad: int = 10,
    random_erasing: float = 0.0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """The train or test transform: PIL image -> normalised ``(3, height, width)`` tensor.

    Args:
        height, width: output size. (default: ``256``, ``128``)
        is_train: add the augmentations (flip, pad + random crop, erasing). (default: ``True``)
        flip_p: horizontal flip probability. (default: ``0.5``)
        pad: zero padding before the random crop back to ``(height, width)``; 0 disables the
            crop. (default: ``10``)
        random_erasing: probability of erasing one rectangle (area 2-40 %, aspect 0.3-3.3, as
            in BoT). It runs after normalisation and fills with 0, i.e. the ImageNet mean
            colour. (BoT fills the normalised tensor with the raw mean values 0.485/0.456/0.406,
            which is not the mean colour; torchvision's ``value=0`` is what was meant.)
            (default: ``0.0``, off)
        mean, std: normalisation. (default: ImageNet)
    """
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height}x{width}")
    for name, p in (("flip_p", flip_p), ("random_erasing", random_erasing)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    steps = [T.Resize((height, width), interpolation=T.InterpolationMode.BILINEAR)]
    if is_train:
        if flip_p > 0:
            steps.append(T.RandomHorizontalFlip(p=flip_p))
        if pad > 0:
            steps += [T.Pad(pad, fill=0), T.RandomCrop((height, width))]
    steps += [T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]
    if is_train and random_erasing > 0:
        steps.append(
            T.RandomErasing(p=random_erasing, scale=(0.02, 0.4), ratio=(0.3, 1 / 0.3), value=0)
        )
    return T.Compose(steps)


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "build_transforms"]
