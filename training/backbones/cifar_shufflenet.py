"""ShuffleNetV1 (g = 3) and ShuffleNetV2 (1×) for 32 px as in the CRD benchmark: `cifar_shufflev1`, `cifar_shufflev2`.

Both start with a 1×1 conv to 24 channels (BN, ReLU; no stride, no max-pool) and have three stages at strides
2/2/2 (32 px: 16, 8, 4 px maps), then a global average pool and fc.

* V1: stages of 4/8/4 units with 240/480/960 output channels. A unit is grouped 1×1 conv to a quarter of its
  output (ungrouped on the 24-channel stem output) → channel shuffle → 3×3 depthwise (stride) → grouped 1×1
  conv, BN after each, ReLU after the first two; the residual is added, or in a stride-2 unit the 3×3
  average-pooled input is concatenated; then ReLU.
* V2: stages of one down-sampling unit + 3/7/3 units with 116/232/464 channels, then a 1×1 conv to 1024.
  A unit splits the channels in half, runs 1×1 → 3×3 depthwise → 1×1 on one half, concatenates, and shuffles
  the channels with 2 groups; the down-sampling unit runs both halves (depthwise stride 2 → 1×1 on the left).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model
from torch import nn

from .base import CifarNet, build, conv_bn, default_cfg


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[N, g·c, H, W] → interleave the g groups: channel g_i·c + c_i moves to c_i·g + g_i."""
    n, chs, h, w = x.shape
    return x.view(n, groups, chs // groups, h, w).transpose(1, 2).reshape(n, chs, h, w)


# --- ShuffleNetV1 -----------------------------------------------------------------------------------------


class ShuffleV1Unit(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        branch_chs = out_chs - in_chs if stride == 2 else out_chs  # stride 2: the pooled input is concatenated
        mid = branch_chs // 4
        self.g1 = 1 if in_chs == 24 else groups
        self.conv1 = conv_bn(in_chs, mid, 1, groups=self.g1)
        self.conv2 = conv_bn(mid, mid, 3, stride, groups=mid)  # ReLU here too, as the CRD code
        self.conv3 = conv_bn(mid, branch_chs, 1, groups=groups, act=False)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.conv3(self.conv2(channel_shuffle(self.conv1(x), self.g1)))
        if self.stride == 2:
            return self.act(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1))
        return self.act(out + x)


class CifarShuffleV1(CifarNet):
    def __init__(
        self,
        widths=(240, 480, 960),
        depths=(4, 8, 4),
        groups: int = 3,
        in_chans: int = 3,
        num_classes: int = 100,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ):
        stem = conv_bn(in_chans, 24, 1)
        stages, in_chs = [], 24
        for width, depth in zip(widths, depths):
            units = []
            for j in range(depth):
                units.append(ShuffleV1Unit(in_chs, width, 2 if j == 0 else 1, groups))
                in_chs = width
            stages.append(nn.Sequential(*units))
        super().__init__(
            stem,
            stages,
            nn.Identity(),
            stem_chs=24,
            stage_chs=list(widths),
            stage_reductions=[2, 4, 8],
            num_features=widths[-1],
            num_classes=num_classes,
            drop_rate=drop_rate,
            global_pool=global_pool,
        )


# --- ShuffleNetV2 -----------------------------------------------------------------------------------------


class ShuffleV2Unit(nn.Module):
    """Stride 1: split, transform the second half, concatenate, shuffle."""

    def __init__(self, chs: int):
        super().__init__()
        half = chs // 2
        self.branch = nn.Sequential(
            conv_bn(half, half, 1), conv_bn(half, half, 3, groups=half, act=False), conv_bn(half, half, 1)
        )

    def forward(self, x):
        half = x.shape[1] // 2
        return channel_shuffle(torch.cat([x[:, :half], self.branch(x[:, half:])], 1), 2)


class ShuffleV2Down(nn.Module):
    """Stride 2: both branches see the whole input; each gives half of the output channels."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        half = out_chs // 2
        self.left = nn.Sequential(conv_bn(in_chs, in_chs, 3, 2, groups=in_chs, act=False), conv_bn(in_chs, half, 1))
        self.right = nn.Sequential(
            conv_bn(in_chs, half, 1), conv_bn(half, half, 3, 2, groups=half, act=False), conv_bn(half, half, 1)
        )

    def forward(self, x):
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)


class CifarShuffleV2(CifarNet):
    def __init__(
        self,
        widths=(116, 232, 464),
        depths=(3, 7, 3),
        last: int = 1024,
        in_chans: int = 3,
        num_classes: int = 100,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ):
        stem = conv_bn(in_chans, 24, 1)
        stages, in_chs = [], 24
        for width, depth in zip(widths, depths):
            stages.append(nn.Sequential(ShuffleV2Down(in_chs, width), *[ShuffleV2Unit(width) for _ in range(depth)]))
            in_chs = width
        super().__init__(
            stem,
            stages,
            conv_bn(in_chs, last, 1),
            stem_chs=24,
            stage_chs=list(widths),
            stage_reductions=[2, 4, 8],
            num_features=last,
            num_classes=num_classes,
            drop_rate=drop_rate,
            global_pool=global_pool,
        )


default_cfgs = generate_default_cfgs({"cifar_shufflev1": default_cfg((4, 4)), "cifar_shufflev2": default_cfg((4, 4))})


@register_model
def cifar_shufflev1(pretrained=False, **kwargs):
    return build(CifarShuffleV1, "cifar_shufflev1", pretrained, 3, **kwargs)


@register_model
def cifar_shufflev2(pretrained=False, **kwargs):
    return build(CifarShuffleV2, "cifar_shufflev2", pretrained, 3, **kwargs)
