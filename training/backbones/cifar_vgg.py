"""VGG with BatchNorm for 32 px as in the CRD benchmark: `cifar_vgg{8,11,13,16,19}`.

Five blocks of 3×3 conv (with bias) → BN → ReLU, with 64/128/256/512/512 channels; 2×2 max-pools between
blocks 0-1, 1-2 and 2-3, and between 3-4 only while the map is larger than 4×4 (so 32 px input runs the
last two blocks at 4×4, and 64 px input at 4×4 too, as in the CRD code); global average pool; one fc layer
(no VGG classifier MLP). vgg8 has one conv per block; vgg11/13/16/19 follow VGG's A/B/D/E configurations.
Block 0 is the stem; blocks 1-4 are the four stages whose outputs AT/SP use.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model
from torch import nn

from .base import CifarNet, build, default_cfg


def _block(in_chs: int, widths) -> nn.Sequential:
    layers = []
    for w in widths:
        layers += [nn.Conv2d(in_chs, w, 3, 1, 1, bias=True), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        in_chs = w
    return nn.Sequential(*layers)


class MaxPoolAbove(nn.Module):
    """2×2 max-pool while the feature map is larger than `size`×`size`; identity otherwise.

    Written without a Python `if` on the shape, which torch.fx cannot trace: the kernel (= stride) is computed
    in integer arithmetic, 2 when the width W > size and 1 otherwise (W // (size + 1) is 0 exactly when W ≤ size,
    so 1 // (W // (size + 1) + 1) is 1 then and 0 above), and a 1×1 max-pool gives its input's values unchanged.
    The traced graph keeps the arithmetic, so it serves every input size, as the eager module does.
    """

    def __init__(self, size: int = 4):
        super().__init__()
        self.size = size

    def forward(self, x):
        k = 2 - 1 // (x.shape[-1] // (self.size + 1) + 1)
        return F.max_pool2d(x, k, k)


class CifarVGG(CifarNet):
    def __init__(
        self,
        blocks=((64,), (128,), (256,), (512,), (512,)),
        in_chans: int = 3,
        num_classes: int = 100,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ):
        stem = _block(in_chans, blocks[0])
        stages, in_chs = [], blocks[0][-1]
        for i, widths in enumerate(blocks[1:]):
            pool = MaxPoolAbove(4) if i == 3 else nn.MaxPool2d(2)
            stages.append(nn.Sequential(pool, *_block(in_chs, widths)))
            in_chs = widths[-1]
        super().__init__(
            stem,
            stages,
            nn.Identity(),
            stem_chs=blocks[0][-1],
            stage_chs=[b[-1] for b in blocks[1:]],
            stage_reductions=[2, 4, 8, 8],
            num_features=in_chs,
            num_classes=num_classes,
            drop_rate=drop_rate,
            global_pool=global_pool,
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                m.weight.data.normal_(0, 0.01)
                nn.init.zeros_(m.bias)


def _create(variant: str, pretrained: bool, **kwargs):
    return build(CifarVGG, variant, pretrained, 4, **dict(MODEL_ARGS[variant], **kwargs))


MODEL_ARGS = {  # channels of the convs in each of the five blocks
    "cifar_vgg8": dict(blocks=((64,), (128,), (256,), (512,), (512,))),
    "cifar_vgg11": dict(blocks=((64,), (128,), (256,) * 2, (512,) * 2, (512,) * 2)),
    "cifar_vgg13": dict(blocks=((64,) * 2, (128,) * 2, (256,) * 2, (512,) * 2, (512,) * 2)),
    "cifar_vgg16": dict(blocks=((64,) * 2, (128,) * 2, (256,) * 3, (512,) * 3, (512,) * 3)),
    "cifar_vgg19": dict(blocks=((64,) * 2, (128,) * 2, (256,) * 4, (512,) * 4, (512,) * 4)),
}

default_cfgs = generate_default_cfgs({name: default_cfg((4, 4)) for name in MODEL_ARGS})


@register_model
def cifar_vgg8(pretrained=False, **kwargs):
    return _create("cifar_vgg8", pretrained, **kwargs)


@register_model
def cifar_vgg11(pretrained=False, **kwargs):
    return _create("cifar_vgg11", pretrained, **kwargs)


@register_model
def cifar_vgg13(pretrained=False, **kwargs):
    return _create("cifar_vgg13", pretrained, **kwargs)


@register_model
def cifar_vgg16(pretrained=False, **kwargs):
    return _create("cifar_vgg16", pretrained, **kwargs)


@register_model
def cifar_vgg19(pretrained=False, **kwargs):
    return _create("cifar_vgg19", pretrained, **kwargs)
