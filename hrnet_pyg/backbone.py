"""The CNN of HRNet (Sec. 3.1): a torchvision ResNet trunk with last stride 1, GAP, and BNNeck.

Sec. 3.1 follows Luo et al. 2019 (Bag of Tricks, "BoT"): ResNet-50 pre-trained on ImageNet, the
FC-1000 layer removed, the stride of conv5_1 set to 1 (a 256x128 image gives 2048x16x8 maps), and
global average pooling giving f_n in R^2048. The BNNeck of BoT (the triplet loss on f, the ID
classifier on BN(f)) is :class:`BNNeck`.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Dict, Union

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

# depth -> (torchvision constructor, weights enum member used for ``pretrained=True``).
# IMAGENET1K_V1 are the weights BoT (and so the paper) started from.
_RESNETS = {
    18: (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    34: (torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1),
    50: (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
    101: (torchvision.models.resnet101, torchvision.models.ResNet101_Weights.IMAGENET1K_V1),
}

# The torchvision children kept, in forward order (fc and avgpool are dropped).
_TRUNK = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


class ResNetBackbone(nn.Module):
    r"""ResNet trunk of Sec. 3.1: torchvision ResNet without avgpool/FC, conv5_1 stride
    ``last_stride``, then global average pooling.

    .. math::
        f_n = \mathrm{GAP}(\mathrm{ResNet}_{\text{conv1..conv5}}(I_n)) \in \mathbb{R}^{C}

    The module's children carry torchvision's names (``conv1``, ``bn1``, ``layer1`` ... ``layer4``),
    so its ``state_dict`` keys are exactly torchvision's minus ``fc.*``.

    Args:
        depth (int, optional): ResNet depth, one of 18, 34, 50, 101. The paper uses 50; the small
            depths exist for CPU demos. (default: :obj:`50`)
        pretrained (bool or str, optional): :obj:`True` loads torchvision's ImageNet weights
            (``ResNet50_Weights.IMAGENET1K_V1`` etc., downloaded by torchvision); a string is a
            path to a local ``.pth`` holding a torchvision state dict (``fc.*`` keys optional,
            or a dict with a ``state_dict``/``model`` entry); :obj:`False` keeps the random
            init. (default: :obj:`False`)
        last_stride (int, optional): stride of conv5_1 (``layer4[0]``); 1 as in the paper,
            2 gives torchvision's original trunk. (default: :obj:`1`)

    Shapes:
        - **input:** images :math:`(N, 3, H, W)` (contiguous or ``channels_last``)
        - **output:** features :math:`(N, C)`, :math:`C` = ``out_channels`` (2048 for depth
          50/101, 512 for 18/34)
    """

    def __init__(self, depth: int = 50, pretrained: Union[bool, str] = False,
                 last_stride: int = 1) -> None:
        super().__init__()
        if depth not in _RESNETS:
            raise ValueError(
                f"depth must be one of {', '.join(map(str, _RESNETS))}, got {depth!r}")
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}")
        if not isinstance(pretrained, (bool, str, os.PathLike)):
            raise TypeError(
                "pretrained must be True, False or a path to a .pth file, "
                f"got {type(pretrained).__name__}")
        self.depth = depth
        self.last_stride = last_stride
        self.pretrained = pretrained

        build, _ = _RESNETS[depth]
        net = build(weights=None)
        for name in _TRUNK:
            self.add_module(name, getattr(net, name))
        self.out_channels: int = net.fc.in_features
        self._set_last_stride(last_stride)

        if pretrained is True:
            self.load_trunk_state_dict(_download_imagenet_state_dict(depth))
        elif pretrained is not False:
            self.load_trunk_state_dict(_read_state_dict_file(pretrained))

    def _set_last_stride(self, stride: int) -> None:
        # conv5_1 = layer4[0]: the stride sits on conv2 (Bottleneck, torchvision's "ResNet v1.5")
        # or conv1 (BasicBlock), and on the 1x1 projection of the shortcut.
        block = self.layer4[0]
        is_bottleneck = isinstance(block, torchvision.models.resnet.Bottleneck)
        conv = block.conv2 if is_bottleneck else block.conv1
        conv.stride = (stride, stride)
        block.downsample[0].stride = (stride, stride)
        block.stride = stride

    def load_trunk_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load a torchvision ResNet state dict, ignoring ``fc.*``; missing or unexpected trunk
        keys raise a ``RuntimeError`` listing a few of them."""
        state = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        own = self.state_dict()
        for k in own:  # files from PyTorch < 0.4.1 (torchvision's V1 weights) lack these counters
            if k.endswith("num_batches_tracked") and k not in state:
                state[k] = own[k]
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise RuntimeError(
                f"state dict does not fit a torchvision resnet{self.depth} trunk: "
                f"{len(missing)} missing key(s) {missing[:5]}, "
                f"{len(unexpected)} unexpected key(s) {unexpected[:5]}")
        bad = [k for k in state if tuple(state[k].shape) != tuple(own[k].shape)]
        if bad:
            raise RuntimeError(
                f"state dict does not fit a torchvision resnet{self.depth} trunk: shape mismatch "
                + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                            for k in bad[:5]))
        self.load_state_dict(state, strict=True)

    def feature_map(self, images: Tensor) -> Tensor:
        """Convolutional activation maps before pooling: :math:`(N, C, H/16, W/16)` at
        ``last_stride=1`` (2048x16x8 for a 256x128 ResNet-50 input, Sec. 3.1)."""
        if images.dim() != 4 or images.size(1) != 3:
            raise ValueError(
                f"images must have shape (N, 3, H, W), got {tuple(images.shape)}")
        x = images
        for name in _TRUNK:
            x = getattr(self, name)(x)
        return x

    def forward(self, images: Tensor) -> Tensor:
        # adaptive_avg_pool2d + flatten is torchvision's own head; works on channels_last too.
        return F.adaptive_avg_pool2d(self.feature_map(images), 1).flatten(1)  # (N, C)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(depth={self.depth}, "
                f"out_channels={self.out_channels}, last_stride={self.last_stride})")


def _download_imagenet_state_dict(depth: int) -> Dict[str, Tensor]:
    _, weights = _RESNETS[depth]
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as err:  # offline, proxy, corrupt cache: all need the same advice
        raise RuntimeError(
            f"could not fetch torchvision's ImageNet weights {weights} for resnet{depth} "
            f"({type(err).__name__}: {err}). If this machine is offline, download "
            f"{weights.url} elsewhere and pass the local file, e.g. "
            f"pretrained=\"/path/resnet{depth}.pth\" "
            f"(config: pretrained: /path/resnet{depth}.pth), "
            "or train from scratch with pretrained=False."
        ) from err


def _read_state_dict_file(path: Union[str, "os.PathLike[str]"]) -> Dict[str, Tensor]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights file {path!r} does not exist")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RuntimeError(
            f"could not read pretrained weights file {path!r} as a torch state dict "
            f"({type(err).__name__}: {err})") from err
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):  # common checkpoint wrappers
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise RuntimeError(
            f"pretrained weights file {path!r} must hold a state dict (name -> tensor), "
            f"or a dict with a 'state_dict' or 'model' entry; got {type(obj).__name__}")
    # strip the prefix nn.DataParallel / DistributedDataParallel put on every key
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


class BNNeck(nn.Module):
    r"""BNNeck of Luo et al. 2019 (BoT): a BatchNorm1d with frozen bias, then a bias-free
    linear ID classifier. The triplet loss (Eq. 12) uses :math:`f`, the label-smoothed
    classification loss (Eq. 10-11) uses the logits of :math:`\mathrm{BN}(f)`.

    .. math::
        \hat f = \gamma \odot \frac{f - \mu}{\sqrt{\sigma^2 + \epsilon}}, \qquad
        \mathrm{logits} = \hat f\, W^\top

    BoT initialisation: BN weight 1 and bias 0 (the bias then stays 0: ``requires_grad=False``),
    classifier weights :math:`\mathcal N(0, 0.001^2)`.

    Args:
        in_features (int): feature size :math:`d`.
        num_classes (int): number of training identities :math:`S`.

    Shapes:
        - **input:** :math:`(N, d)`
        - **output:** ``(bn_feat, logits)`` of shapes :math:`(N, d)` and :math:`(N, S)`, in
          training and in eval mode alike.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 1:
            raise ValueError(
                f"in_features and num_classes must be >= 1, got {in_features}, {num_classes}")
        self.in_features = in_features
        self.num_classes = num_classes
        self.bn = nn.BatchNorm1d(in_features)
        self.bn.bias.requires_grad_(False)  # BoT: no shift, so BN(f) stays centred
        self.classifier = nn.Linear(in_features, num_classes, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.bn.reset_running_stats()
        nn.init.ones_(self.bn.weight)
        with torch.no_grad():
            self.bn.bias.zero_()
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, f: Tensor) -> tuple[Tensor, Tensor]:
        if f.dim() != 2 or f.size(1) != self.in_features:
            raise ValueError(
                f"BNNeck expects features of shape (N, {self.in_features}), "
                f"got {tuple(f.shape)}")
        bn_feat = self.bn(f)  # (N, d)
        return bn_feat, self.classifier(bn_feat)  # (N, d), (N, S)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_features}, {self.num_classes})"


__all__ = ["BNNeck", "ResNetBackbone"]
