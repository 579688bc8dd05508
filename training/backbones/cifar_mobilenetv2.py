"""MobileNetV2 at width 0.5 as in the CRD benchmark (its `mobile_half`): `cifar_mobilenetv2`.

3×3 stride-2 stem with 16 channels; inverted residual groups (expansion t, channels c, repeats n, stride s)
= (1,16,1,1) (6,24,2,1) (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2) (6,320,1,1) with c halved; each block is
1×1 expand → 3×3 depthwise → 1×1 project (BN after each, ReLU after the first two), residual when the shape is
kept; then a 1×1 conv to 1280 channels, global average pool, fc. The four stages end where the CRD code takes
its features: after groups 2, 3, 5 and 7 (32 px: 16, 8, 4, 2 px maps).
"""

from __future__ import annotations

import math

from timm.models import generate_default_cfgs, register_model
from torch import nn

from .base import CifarNet, build, conv_bn, default_cfg

SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
STAGE_GROUPS = [(0, 1), (2,), (3, 4), (5, 6)]  # which of the 7 groups make each stage


class InvertedResidual(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int, expand: int):
        super().__init__()
        mid = in_chs * expand
        self.use_residual = stride == 1 and in_chs == out_chs
        self.conv = nn.Sequential(
            conv_bn(in_chs, mid, 1),  # expand (also for t = 1, as the CRD code)
            conv_bn(mid, mid, 3, stride, groups=mid),  # depthwise
            conv_bn(mid, out_chs, 1, act=False),  # project, linear
        )

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


class CifarMobileNetV2(CifarNet):
    def __init__(
        self,
        width: float = 0.5,
        in_chans: int = 3,
        num_classes: int = 100,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ):
        in_chs = int(32 * width)
        stem = conv_bn(in_chans, in_chs, 3, 2)
        groups = []
        for t, c, n, s in SETTINGS:
            out_chs = int(c * width)
            blocks = []
            for j in range(n):
                blocks.append(InvertedResidual(in_chs, out_chs, s if j == 0 else 1, t))
                in_chs = out_chs
            groups.append((nn.Sequential(*blocks), out_chs, s))
        stages, chs, reductions, reduction = [], [], [], 2
        for members in STAGE_GROUPS:
            stages.append(nn.Sequential(*[groups[g][0] for g in members]))
            for g in members:
                reduction *= groups[g][2]
            chs.append(groups[members[-1]][1])
            reductions.append(reduction)
        last = int(1280 * width) if width > 1.0 else 1280
        super().__init__(
            stem,
            stages,
            conv_bn(in_chs, last, 1),
            stem_chs=int(32 * width),
            stage_chs=chs,
            stage_reductions=reductions,
            num_features=last,
            num_classes=num_classes,
            stem_reduction=2,
            drop_rate=drop_rate,
            global_pool=global_pool,
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                m.weight.data.normal_(0, 0.01)
                nn.init.zeros_(m.bias)


default_cfgs = generate_default_cfgs({"cifar_mobilenetv2": default_cfg((2, 2))})


@register_model
def cifar_mobilenetv2(pretrained=False, **kwargs):
    return build(CifarMobileNetV2, "cifar_mobilenetv2", pretrained, 4, **dict(dict(width=0.5), **kwargs))
