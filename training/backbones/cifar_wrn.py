"""Wide ResNets WRN-d-w (Zagoruyko & Komodakis) as in the CRD benchmark: `cifar_wrn_{16,40}_{1,2}`.

3×3 stem conv with 16 channels (no BN), three stages of n = (d − 4) / 6 pre-activation blocks
(BN-ReLU-conv-BN-ReLU-conv) with 16w/32w/64w channels at strides 1/2/2, a final BN-ReLU, global average
pool, fc. Where the width changes, the block's pre-activation feeds both its conv and a 1×1 conv shortcut.
Stage outputs (the AT/SP features) are the blocks' raw sums, before the next BN-ReLU, as in the CRD code.
"""

from __future__ import annotations

import math

from timm.models import generate_default_cfgs, register_model
from torch import nn

from .base import CifarNet, build, default_cfg


class PreActBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.bn1, self.act1 = nn.BatchNorm2d(in_chs), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False)
        self.bn2, self.act2 = nn.BatchNorm2d(out_chs), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, 1, 1, bias=False)
        self.shortcut = None if in_chs == out_chs else nn.Conv2d(in_chs, out_chs, 1, stride, 0, bias=False)

    def forward(self, x):
        pre = self.act1(self.bn1(x))
        out = self.conv2(self.act2(self.bn2(self.conv1(pre))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(CifarNet):
    def __init__(
        self,
        depth: int = 16,
        width: int = 1,
        in_chans: int = 3,
        num_classes: int = 100,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ):
        assert (depth - 4) % 6 == 0, depth
        n = (depth - 4) // 6
        chs = [16 * width, 32 * width, 64 * width]
        stem = nn.Sequential(nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False))
        stages, in_chs = [], 16
        for i, out_chs in enumerate(chs):
            stride = 1 if i == 0 else 2
            stages.append(
                nn.Sequential(
                    *[PreActBlock(in_chs if j == 0 else out_chs, out_chs, stride if j == 0 else 1) for j in range(n)]
                )
            )
            in_chs = out_chs
        final = nn.Sequential(nn.BatchNorm2d(chs[-1]), nn.ReLU(inplace=True))
        super().__init__(
            stem,
            stages,
            final,
            stem_chs=16,
            stage_chs=chs,
            stage_reductions=[1, 2, 4],
            num_features=chs[-1],
            num_classes=num_classes,
            drop_rate=drop_rate,
            global_pool=global_pool,
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # He init with fan-out, as the WRN authors
                m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)


def _create(variant: str, pretrained: bool, **kwargs):
    return build(WideResNet, variant, pretrained, 3, **dict(MODEL_ARGS[variant], **kwargs))


MODEL_ARGS = {f"cifar_wrn_{d}_{w}": dict(depth=d, width=w) for d in (16, 40) for w in (1, 2)}

default_cfgs = generate_default_cfgs({name: default_cfg((8, 8)) for name in MODEL_ARGS})


@register_model
def cifar_wrn_16_1(pretrained=False, **kwargs):
    return _create("cifar_wrn_16_1", pretrained, **kwargs)


@register_model
def cifar_wrn_16_2(pretrained=False, **kwargs):
    return _create("cifar_wrn_16_2", pretrained, **kwargs)


@register_model
def cifar_wrn_40_1(pretrained=False, **kwargs):
    return _create("cifar_wrn_40_1", pretrained, **kwargs)


@register_model
def cifar_wrn_40_2(pretrained=False, **kwargs):
    return _create("cifar_wrn_40_2", pretrained, **kwargs)
