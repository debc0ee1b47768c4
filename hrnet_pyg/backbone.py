"""The CNN of HRNet (Sec. 3.1): a torchvision ResNet trunk with last stride 1, GAP, and BNNeck.

Sec. 3.1 follows Luo et al. 2019 (Bag of Tricks, "BoT"): ResNet-50 pre-trained on ImageNet, the
FC-1000 layer removed, the stride of conv5_1 set to 1 (a 256x128 image gives 2048x16x8 maps), and
global average pooling giving f_n in R^2048. The BNNeck of BoT (the triplet loss on f, the ID
classifier on BN(f)) is :class:`BNNeck`.

Besides the ResNets: torchvision's MobileNetV2 (:class:`MobileNetV2Backbone`, 1280-d, the
backbone whose ImageNet weights ``../shared/data/weights`` holds for offline studies) and any
timm model (:class:`TimmBackbone`). The graph modules size themselves from ``out_channels``.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from hrnet_pyg.pretrained import PretrainedWeightsError, read_weights_file, strip_prefix, weights_report

# depth -> (torchvision constructor, weights enum member used for ``pretrained=True``).
# IMAGENET1K_V1 are the weights BoT (and so the paper) started from.
_RESNETS = {
    18: (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    34: (torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1),
    50: (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
    101: (torchvision.models.resnet101, torchvision.models.ResNet101_Weights.IMAGENET1K_V1),
}
# Every torchvision architecture of this module by name: (constructor, default weights).
_TORCHVISION = {f"resnet{d}": entry for d, entry in _RESNETS.items()}
_TORCHVISION["mobilenet_v2"] = (torchvision.models.mobilenet_v2, torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1)


def _arch(depth: int | str) -> str:
    """The torchvision name of a ResNet depth (``50`` -> ``resnet50``) or an architecture name."""
    return f"resnet{depth}" if isinstance(depth, int) else str(depth)

# The torchvision children kept, in forward order (fc and avgpool are dropped).
def _check_trunk_args(pretrained: object, last_stride: object) -> None:
    """The arguments every torchvision trunk takes, checked the same way."""
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}")
    if not isinstance(pretrained, (bool, str, os.PathLike)):
        raise TypeError(f"pretrained must be True, False or a path to a .pth file, got {type(pretrained).__name__}")


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
            ``ResNet<depth>_Weights.IMAGENET1K_V1`` (downloaded by torchvision); a torchvision
            weight name (``IMAGENET1K_V1``, ``IMAGENET1K_V2``, ``DEFAULT``) loads those; any
            other string is a local file in one of the layouts of :func:`read_pretrained`
            (torchvision, torchreid, fast-reid, ``.safetensors``, this project's checkpoint);
            :obj:`False` keeps the random init. Loading prints one line with the number of
            backbone tensors loaded and the key groups skipped. (default: :obj:`False`)
        last_stride (int, optional): stride of conv5_1 (``layer4[0]``); 1 as in the paper,
            2 gives torchvision's original trunk. (default: :obj:`1`)

    Shapes:
        - **input:** images :math:`(N, 3, H, W)` (contiguous or ``channels_last``)
        - **output:** features :math:`(N, C)`, :math:`C` = ``out_channels`` (2048 for depth
          50/101, 512 for 18/34)
    """

    def __init__(self, depth: int = 50, pretrained: bool | str = False,
                 last_stride: int = 1) -> None:
        super().__init__()
        if depth not in _RESNETS:
            raise ValueError(
                f"depth must be one of {', '.join(map(str, _RESNETS))}, got {depth!r}")
        _check_trunk_args(pretrained, last_stride)
        self.depth = depth
        self.last_stride = last_stride
        self.pretrained = pretrained

        build, _ = _RESNETS[depth]
        net = build(weights=None)
        for name in _TRUNK:
            self.add_module(name, getattr(net, name))
        self.out_channels: int = net.fc.in_features
        self._set_last_stride(last_stride)

        if pretrained is not False:
            state, source, skipped = read_pretrained(pretrained, depth, trunk=_TRUNK)
            loaded = self.load_trunk_state_dict(state, source=source)
            print(weights_report(loaded, source, skipped))

    def _set_last_stride(self, stride: int) -> None:
        # conv5_1 = layer4[0]: the stride sits on conv2 (Bottleneck, torchvision's "ResNet v1.5")
        # or conv1 (BasicBlock), and on the 1x1 projection of the shortcut.
        layer4 = self.get_submodule("layer4")
        assert isinstance(layer4, nn.Sequential)
        block = layer4[0]
        if isinstance(block, torchvision.models.resnet.Bottleneck):
            conv = block.conv2
        else:
            assert isinstance(block, torchvision.models.resnet.BasicBlock)
            conv = block.conv1
        conv.stride = (stride, stride)
        block.downsample[0].stride = (stride, stride)
        block.stride = stride

    def load_trunk_state_dict(self, state_dict: Mapping[str, Tensor], source: str = "state dict") -> int:
        """Load a torchvision ResNet state dict (``fc.*`` ignored) and return how many tensors it
        gave; a missing or unexpected trunk key, or a shape mismatch, raises
        :class:`PretrainedWeightsError` naming the keys and ``source``."""
        return _load_trunk(self, state_dict, f"resnet{self.depth}", head="fc.", source=source)

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


def _load_trunk(module: nn.Module, state_dict: Mapping[str, Tensor], arch: str, head: str, source: str) -> int:
    """Load a torchvision state dict into ``module`` (keys under ``head`` ignored) strictly; returns
    the number of tensors the file gave. Missing or unexpected keys and shape mismatches raise
    :class:`PretrainedWeightsError` naming them and ``source``."""
    state = {k: v for k, v in state_dict.items() if not k.startswith(head)}
    given = len(state)
    own = module.state_dict()
    for k in own:  # files from PyTorch < 0.4.1 (torchvision's V1 weights) lack these counters
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = own[k]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise PretrainedWeightsError(
            f"{source} does not fit a torchvision {arch} trunk: "
            f"{len(missing)} missing key(s) {missing[:5]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:5]}")
    bad = [k for k in state if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise PretrainedWeightsError(
            f"{source} does not fit a torchvision {arch} trunk: shape mismatch "
            + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in bad[:5]))
    module.load_state_dict(state, strict=True)
    return given


class MobileNetV2Backbone(nn.Module):
    r"""torchvision's MobileNetV2 (Sandler et al., CVPR 2018) as the CNN of Sec. 3.1: its
    ``features`` trunk (width 1.0), global average pooling, 1280-d features; no classifier.

    .. math::
        f_n = \mathrm{GAP}(\mathrm{MobileNetV2}_{\text{features}}(I_n)) \in \mathbb{R}^{1280}

    The analogue of the paper's last stride 1: the last stride-2 block (``features[14]``, the
    depthwise 3x3 convolution of the 96 -> 160 inverted residual) runs at stride 1, so a 256x128
    image gives 1280x16x8 maps (output stride 16, as the ResNet at last stride 1) instead of 8x4.
    The block has no shortcut (its input and output widths differ), so only that convolution
    changes and the pretrained weights fit as they are.

    The module's child is named ``features`` as in torchvision, so its ``state_dict`` keys are
    torchvision's minus ``classifier.*``: a torchvision ``mobilenet_v2().state_dict()`` (with or
    without the classifier) loads as it is.

    Args:
        pretrained (bool or str, optional): :obj:`True` loads torchvision's
            ``MobileNet_V2_Weights.IMAGENET1K_V1`` (downloaded by torchvision); a weight name
            (``IMAGENET1K_V1``, ``IMAGENET1K_V2``, ``DEFAULT``) loads those; any other string is
            a local file read as :func:`read_pretrained` reads files (``weights_only=True``;
            ``classifier.*`` skipped; every ``features.*`` key required). Loading prints one
            line. :obj:`False` keeps the random init. (default: :obj:`False`)
        last_stride (int, optional): stride of the last stride-2 block; 1 as above, 2 gives
            torchvision's trunk. (default: :obj:`1`)

    Shapes:
        - **input:** images :math:`(N, 3, H, W)`
        - **output:** features :math:`(N, 1280)`
    """

    def __init__(self, pretrained: bool | str = False, last_stride: int = 1) -> None:
        super().__init__()
        _check_trunk_args(pretrained, last_stride)
        self.last_stride = last_stride
        self.pretrained = pretrained
        net = torchvision.models.mobilenet_v2(weights=None)
        self.features = net.features
        self.out_channels: int = int(net.last_channel)
        self._set_last_stride(last_stride)
        if pretrained is not False:
            state, source, skipped = read_pretrained(pretrained, "mobilenet_v2", trunk=("features",))
            loaded = self.load_trunk_state_dict(state, source=source)
            print(weights_report(loaded, source, skipped))

    def _set_last_stride(self, stride: int) -> None:
        blocks = [m for m in self.features if isinstance(m, torchvision.models.mobilenetv2.InvertedResidual)]
        last = [b for b in blocks if b.stride == 2][-1]
        depthwise = last.conv[1][0]  # Conv2dNormActivation(3x3 depthwise) -> its Conv2d
        assert isinstance(depthwise, nn.Conv2d) and depthwise.groups == depthwise.in_channels
        depthwise.stride = (stride, stride)
        last.stride = stride
        assert not last.use_res_connect  # widths differ: no shortcut to re-stride

    def load_trunk_state_dict(self, state_dict: Mapping[str, Tensor], source: str = "state dict") -> int:
        """Load a torchvision MobileNetV2 state dict (``classifier.*`` ignored) and return how
        many tensors it gave; a missing or unexpected ``features`` key, or a shape mismatch,
        raises :class:`PretrainedWeightsError` naming the keys and ``source``."""
        return _load_trunk(self, state_dict, "mobilenet_v2", head="classifier.", source=source)

    def feature_map(self, images: Tensor) -> Tensor:
        """Activation maps before pooling: :math:`(N, 1280, H/16, W/16)` at ``last_stride=1``."""
        if images.dim() != 4 or images.size(1) != 3:
            raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}")
        return self.features(images)

    def forward(self, images: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(self.feature_map(images), 1).flatten(1)  # (N, 1280)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(out_channels={self.out_channels}, last_stride={self.last_stride})"


# Top-level key groups of the checkpoint layouts this module reads that are not the trunk:
# torchvision's ImageNet classifier (fc), torchreid's ID classifier (classifier) and its optional
# embedding layer (fc), fast-reid's heads and input normalisation buffers, and this project's
# BNNecks and relation head (and the head's modules at the top level: the flat layout of older
# checkpoints). Anything else outside the trunk is an unexpected key.
_HEAD_GROUPS = frozenset({
    "fc", "classifier", "heads", "pixel_mean", "pixel_std",
    "bnneck", "head", "ir", "ir_neck", "pr", "verifier",
})

def torchvision_weights(depth: int | str, name: bool | str = True) -> Any:
    """The torchvision ``Weights`` enum member for ``pretrained=name`` on a resnet ``depth`` (or
    an architecture name: ``"mobilenet_v2"``).

    :obj:`True` is ``IMAGENET1K_V1``, the weights BoT (and so the paper) started from; a string
    is a member name of ``ResNet<depth>_Weights`` / ``MobileNet_V2_Weights`` (``IMAGENET1K_V1``,
    ``IMAGENET1K_V2``, ``DEFAULT``), case-insensitive.
    """
    if _arch(depth) not in _TORCHVISION:
        raise ValueError(f"depth must be one of {', '.join(map(str, _RESNETS))}, got {depth!r}")
    _, default = _TORCHVISION[_arch(depth)]
    enum = type(default)
    if name is True:
        return default
    key = str(name).strip().upper()
    if key not in enum.__members__:
        raise PretrainedWeightsError(
            f"pretrained={name!r}: {enum.__name__} has no such weights; valid names: "
            f"{', '.join(enum.__members__)} (or a path to a local weights file)")
    return enum[key]


def _is_weight_name(value: str) -> bool:
    # A weight name has no folder and no suffix (IMAGENET1K_V2, DEFAULT); a path has either.
    p = str(value)
    return (os.sep not in p and "/" not in p and "." not in p
            and (p.upper() == "DEFAULT" or p.upper().startswith("IMAGENET")))


def read_pretrained(
    pretrained: bool | str | os.PathLike[str], depth: int | str, trunk: tuple[str, ...] = (),
) -> tuple[dict[str, Tensor], str, dict[str, int]]:
    """The trunk state dict that ``pretrained`` names, where it came from, and what was skipped.

    Args:
        pretrained: :obj:`True` or a torchvision weight name (downloaded by torchvision), or a
            local file: a torchvision state dict, a torchreid checkpoint (``{'state_dict': ...}``,
            ``module.`` prefix, ``classifier.*``), a fast-reid checkpoint (``{'model': ...}``,
            ``backbone.`` prefix, ``heads.*``), a ``.safetensors`` file, or this project's own
            checkpoint (``backbone.*`` of its model). Files are read with ``weights_only=True``.
        depth: ResNet depth, or an architecture name (``"mobilenet_v2"``), for weight names and
            messages.
        trunk: the trunk's top-level module names; keys under them are the backbone's.

    Returns:
        ``(state, source, skipped)``: trunk keys -> tensors, a description of the source for
        messages, and the skipped key groups with their tensor counts.
    """
    if pretrained is True or (isinstance(pretrained, str) and _is_weight_name(pretrained)):
        weights = torchvision_weights(depth, pretrained if isinstance(pretrained, str) else True)
        state = _download_imagenet_state_dict(depth, weights)
        head = "classifier" if _arch(depth) == "mobilenet_v2" else "fc"
        heads = {head: sum(1 for k in state if k.startswith(head + "."))}
        return ({k: v for k, v in state.items() if not k.startswith(head + ".")},
                f"torchvision {type(weights).__name__}.{weights.name}", heads)
    path = os.fspath(pretrained)  # type: ignore[arg-type]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights file {path!r} does not exist")
    obj, layout = read_weights_file(path)
    state = strip_prefix(obj, "module.")  # nn.DataParallel / DistributedDataParallel wrappers
    skipped: dict[str, int] = {}
    if any(k.startswith("backbone.") for k in state):
        # fast-reid and this project: the trunk sits under backbone., everything else is heads
        backbone = {}
        for k, v in state.items():
            if k.startswith("backbone."):
                backbone[k[len("backbone."):]] = v
            else:
                group = k.split(".", 1)[0]
                skipped[group] = skipped.get(group, 0) + 1
    else:
        backbone, unexpected = {}, []
        for k, v in state.items():
            group = k.split(".", 1)[0]
            if not trunk or group in trunk:
                backbone[k] = v
            elif group in _HEAD_GROUPS:
                skipped[group] = skipped.get(group, 0) + 1
            else:
                unexpected.append(k)
        if unexpected:
            raise PretrainedWeightsError(
                f"pretrained weights file {path!r} ({layout}) does not fit a torchvision "
                f"{_arch(depth)} trunk: {len(unexpected)} unexpected key(s) {sorted(unexpected)[:5]}")
    if not backbone:
        raise PretrainedWeightsError(
            f"pretrained weights file {path!r} ({layout}) holds no backbone tensor; found key "
            f"groups {sorted(skipped)[:8]}")
    return backbone, f"{path} ({layout})", skipped


def _download_imagenet_state_dict(depth: int | str, weights: Any) -> dict[str, Tensor]:
    arch = _arch(depth)
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as err:  # offline, proxy, corrupt cache: all need the same advice
        raise PretrainedWeightsError(
            f"could not fetch torchvision's ImageNet weights {weights} for {arch} "
            f"({type(err).__name__}: {err}). If this machine is offline, download "
            f"{weights.url} elsewhere and pass the local file, e.g. "
            f"pretrained=\"/path/{arch}.pth\" "
            f"(config: pretrained: /path/{arch}.pth), "
            "or train from scratch with pretrained=False (docs/ecosystem.md lists what works offline)."
        ) from err


#: Backbone names of :func:`build_backbone` besides ``timm:<name>``.
RESNET_NAMES = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}
MOBILENET_NAME = "mobilenet_v2"
TIMM_PREFIX = "timm:"


class TimmBackbone(nn.Module):
    r"""A `timm <https://github.com/huggingface/pytorch-image-models>`_ model as the CNN of
    Sec. 3.1: its feature trunk, its own global pooling (``num_classes=0``), and, where the
    architecture has one, the last downsampling stage's stride set to 1 (BoT's last stride).

    Args:
        name (str): a ``timm.create_model`` name, e.g. ``"resnet50"``, ``"resnet10t"``,
            ``"efficientnet_b0"``, ``"convnext_tiny"``.
        pretrained (bool or str, optional): :obj:`True` loads timm's own pretrained weights
            through ``timm.create_model(pretrained=True)`` (timm downloads them); a string is a
            local file read as :func:`read_pretrained` reads files (``weights_only=True``; the
            classifier named by the model's ``pretrained_cfg``, and any ``fc``/``head``/
            ``classifier`` group, is skipped). (default: :obj:`False`)
        last_stride (int, optional): 1 sets every stride-2 convolution of the last stage
            (``feature_info[-1]``) to stride 1 and drops its stride-2 pooling (ResNet-D's
            average-pool shortcut); 2 keeps timm's network. Models without a stride-2 module in
            the last stage (most ViTs) are left as they are. (default: :obj:`1`)

    Shapes:
        - **input:** images :math:`(N, 3, H, W)`
        - **output:** features :math:`(N, C)`, :math:`C` = ``out_channels`` (timm's
          ``num_features``)
    """

    # Any: timm models carry attributes nn.Module does not declare (num_features,
    # pretrained_cfg, feature_info, forward_features).
    net: Any

    def __init__(self, name: str, pretrained: bool | str = False, last_stride: int = 1) -> None:
        super().__init__()
        try:
            import timm
        except ImportError as err:
            raise ImportError(
                f"backbone 'timm:{name}' needs timm: pip install timm (or pip install hrnet_pyg[timm])"
            ) from err
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}")
        if not isinstance(pretrained, (bool, str, os.PathLike)):
            raise TypeError(f"pretrained must be True, False or a path, got {type(pretrained).__name__}")
        if not timm.is_model(name):
            raise ValueError(f"timm has no model {name!r} (see timm.list_models())")
        self.name = name
        self.last_stride = last_stride
        self.pretrained = pretrained
        self.net = timm.create_model(name, pretrained=pretrained is True, num_classes=0)
        self.out_channels: int = int(self.net.num_features)
        self.strided_modules: list = []
        if last_stride == 1:
            self.strided_modules = self._set_last_stride_1()
        if pretrained is not False and pretrained is not True:
            self._load_file(os.fspath(pretrained))

    def _set_last_stride_1(self) -> list:
        info = getattr(self.net, "feature_info", None)  # timm's list of stages: num_chs, reduction, module
        if not info or info[-1].get("reduction", 1) <= info[max(len(info) - 2, 0)].get("reduction", 1):
            return []  # no last downsampling stage (a ViT: one resolution throughout)
        stage_name = str(info[-1]["module"])
        try:
            stage = self.net.get_submodule(stage_name)
        except AttributeError:  # some timm models name stages blocks_6 for blocks.6
            stage = self.net.get_submodule(stage_name.replace("_", "."))
        changed = []
        for mod_name, mod in list(stage.named_modules()):
            stride = getattr(mod, "stride", None)
            if stride in (2, (2, 2)):
                if isinstance(mod, nn.Conv2d):
                    mod.stride = (1, 1)
                    changed.append(f"{stage_name}.{mod_name}")
                elif isinstance(mod, (nn.AvgPool2d, nn.MaxPool2d)):
                    parent_name, _, child = mod_name.rpartition(".")
                    parent = stage.get_submodule(parent_name) if parent_name else stage
                    setattr(parent, child, nn.Identity())  # what timm builds at stride 1
                    changed.append(f"{stage_name}.{mod_name}")
        return changed

    def _load_file(self, path: str) -> None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"pretrained weights file {path!r} does not exist")
        obj, layout = read_weights_file(path)
        state = strip_prefix(strip_prefix(obj, "module."), "backbone.")
        own = self.net.state_dict()
        head = str(self.net.pretrained_cfg.get("classifier") or "fc")
        skipped: dict[str, int] = {}
        backbone = {}
        for k, v in state.items():
            if k in own:
                backbone[k] = v
            elif k.startswith(head + ".") or k.split(".", 1)[0] in _HEAD_GROUPS:
                group = head if k.startswith(head + ".") else k.split(".", 1)[0]
                skipped[group] = skipped.get(group, 0) + 1
            else:
                raise PretrainedWeightsError(
                    f"pretrained weights file {path!r} ({layout}) does not fit timm {self.name}: "
                    f"unexpected key {k!r}")
        missing = sorted(k for k in own if k not in backbone and not k.endswith("num_batches_tracked"))
        if missing:
            raise PretrainedWeightsError(
                f"pretrained weights file {path!r} ({layout}) does not fit timm {self.name}: "
                f"{len(missing)} missing key(s) {missing[:5]}")
        bad = [k for k in backbone if tuple(backbone[k].shape) != tuple(own[k].shape)]
        if bad:
            raise PretrainedWeightsError(
                f"pretrained weights file {path!r} ({layout}) does not fit timm {self.name}: shape "
                "mismatch " + ", ".join(f"{k} {tuple(backbone[k].shape)} vs {tuple(own[k].shape)}" for k in bad[:5]))
        loaded = len(backbone)
        for k in own:
            backbone.setdefault(k, own[k])
        self.net.load_state_dict(backbone, strict=True)
        print(weights_report(loaded, f"{path} ({layout})", skipped))

    def feature_map(self, images: Tensor) -> Tensor:
        """The trunk's output before pooling (``timm``'s ``forward_features``)."""
        return self.net.forward_features(images)

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.size(1) != 3:
            raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}")
        return self.net(images)  # (N, C): timm's own pooling, no classifier

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.name!r}, out_channels={self.out_channels}, "
                f"last_stride={self.last_stride})")


def build_backbone(
    name: str, pretrained: bool | str = False, last_stride: int = 1
) -> ResNetBackbone | MobileNetV2Backbone | TimmBackbone:
    """The CNN named by ``HRNetConfig.backbone``: ``resnet18/34/50/101`` (torchvision,
    :class:`ResNetBackbone`), ``mobilenet_v2`` (torchvision, :class:`MobileNetV2Backbone`) or
    ``timm:<name>`` (:class:`TimmBackbone`, needs ``timm``). Its ``out_channels`` is the
    feature size ``d`` of the BNNeck and the graph modules."""
    if isinstance(name, str) and name.startswith(TIMM_PREFIX):
        return TimmBackbone(name[len(TIMM_PREFIX):], pretrained=pretrained, last_stride=last_stride)
    if name == MOBILENET_NAME:
        return MobileNetV2Backbone(pretrained=pretrained, last_stride=last_stride)
    if name not in RESNET_NAMES:
        raise ValueError(
            f"unknown backbone {name!r}; valid: {', '.join(RESNET_NAMES)}, {MOBILENET_NAME}, timm:<name> or None")
    return ResNetBackbone(depth=RESNET_NAMES[name], pretrained=pretrained, last_stride=last_stride)


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


__all__ = [
    "BNNeck",
    "MobileNetV2Backbone",
    "PretrainedWeightsError",
    "RESNET_NAMES",
    "ResNetBackbone",
    "TimmBackbone",
    "build_backbone",
    "read_pretrained",
    "torchvision_weights",
    "weights_report",
]
