"""CIFAR ResNets as in the CRD benchmark both papers use: resnet-d (d = 6n+2), its ×4-wide twins, and ResNet50.

* `cifar_resnet{8,14,20,32,44,56,110}`: 3×3 stem with 16 channels, three stages of n basic blocks with
  16/32/64 channels at strides 1/2/2 (32→32→16→8 px), global average pool, fc.
* `cifar_resnet8x4`, `cifar_resnet32x4`: the same with 32 stem channels and 64/128/256 in the stages.
* `cifar_resnet50`: the bottleneck ResNet50 adapted to 32 px (3×3 stem with 64 channels and no max-pool,
  stages of 3/4/6/3 bottlenecks with 64/128/256/512 planes ×4, strides 1/2/2/2).
Blocks are post-activation (conv-BN-ReLU-conv-BN, + shortcut, ReLU); a 1×1 conv + BN shortcut wherever the
shape changes.
"""

from __future__ import annotations

from timm.models import generate_default_cfgs, register_model
from torch import nn

from .base import CifarNet, build, conv_bn, default_cfg


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_chs: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = conv_bn(in_chs, planes, 3, stride)
        self.conv2 = conv_bn(planes, planes, 3, act=False)
        self.shortcut = _shortcut(in_chs, planes, stride)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_chs: int, planes: int, stride: int):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = conv_bn(in_chs, planes, 1)
        self.conv2 = conv_bn(planes, planes, 3, stride)
        self.conv3 = conv_bn(planes, out, 1, act=False)
        self.shortcut = _shortcut(in_chs, out, stride)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.conv3(self.conv2(self.conv1(x))) + self.shortcut(x))


def _shortcut(in_chs: int, out_chs: int, stride: int) -> nn.Module:
    if stride == 1 and in_chs == out_chs:
        return nn.Identity()
    return conv_bn(in_chs, out_chs, 1, stride, act=False)


class CifarResNet(CifarNet):
    def __init__(
        self,
        block: str = "basic",
        depths=(3, 3, 3),
        stem_width: int = 16,
        widths=(16, 32, 64),
        in_chans: int = 3,
        num_classes: int = 100,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ):
        block_cls = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]
        stem = conv_bn(in_chans, stem_width, 3)
        stages, chs, reductions, in_chs, reduction = [], [], [], stem_width, 1
        for i, (depth, planes) in enumerate(zip(depths, widths)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(depth):
                blocks.append(block_cls(in_chs, planes, stride if j == 0 else 1))
                in_chs = planes * block_cls.expansion
            reduction *= stride
            stages.append(nn.Sequential(*blocks))
            chs.append(in_chs)
            reductions.append(reduction)
        super().__init__(
            stem,
            stages,
            nn.Identity(),
            stem_chs=stem_width,
            stage_chs=chs,
            stage_reductions=reductions,
            num_features=in_chs,
            num_classes=num_classes,
            drop_rate=drop_rate,
            global_pool=global_pool,
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def _resnet_d(depth: int) -> int:
    """Blocks per stage of the CIFAR resnet-d: d = 6n + 2."""
    assert (depth - 2) % 6 == 0, depth
    return (depth - 2) // 6


def _create(variant: str, pretrained: bool, **kwargs):
    model_args = dict(MODEL_ARGS[variant], **kwargs)
    return build(CifarResNet, variant, pretrained, len(MODEL_ARGS[variant]["depths"]), **model_args)


MODEL_ARGS = {
    **{f"cifar_resnet{d}": dict(depths=(_resnet_d(d),) * 3) for d in (8, 14, 20, 32, 44, 56, 110)},
    "cifar_resnet8x4": dict(depths=(1, 1, 1), stem_width=32, widths=(64, 128, 256)),
    "cifar_resnet32x4": dict(depths=(5, 5, 5), stem_width=32, widths=(64, 128, 256)),
    "cifar_resnet50": dict(block="bottleneck", depths=(3, 4, 6, 3), stem_width=64, widths=(64, 128, 256, 512)),
}

# last feature map at 32 px: 8×8 after strides 1/2/2; ResNet50's fourth stage halves it again
default_cfgs = generate_default_cfgs(
    {name: default_cfg((4, 4) if name == "cifar_resnet50" else (8, 8)) for name in MODEL_ARGS}
)


@register_model
def cifar_resnet8(pretrained=False, **kwargs):
    return _create("cifar_resnet8", pretrained, **kwargs)


@register_model
def cifar_resnet14(pretrained=False, **kwargs):
    return _create("cifar_resnet14", pretrained, **kwargs)


@register_model
def cifar_resnet20(pretrained=False, **kwargs):
    return _create("cifar_resnet20", pretrained, **kwargs)


@register_model
def cifar_resnet32(pretrained=False, **kwargs):
    return _create("cifar_resnet32", pretrained, **kwargs)


@register_model
def cifar_resnet44(pretrained=False, **kwargs):
    return _create("cifar_resnet44", pretrained, **kwargs)


@register_model
def cifar_resnet56(pretrained=False, **kwargs):
    return _create("cifar_resnet56", pretrained, **kwargs)


@register_model
def cifar_resnet110(pretrained=False, **kwargs):
    return _create("cifar_resnet110", pretrained, **kwargs)


@register_model
def cifar_resnet8x4(pretrained=False, **kwargs):
    return _create("cifar_resnet8x4", pretrained, **kwargs)


@register_model
def cifar_resnet32x4(pretrained=False, **kwargs):
    return _create("cifar_resnet32x4", pretrained, **kwargs)


@register_model
def cifar_resnet50(pretrained=False, **kwargs):
    return _create("cifar_resnet50", pretrained, **kwargs)
