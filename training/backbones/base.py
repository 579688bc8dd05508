"""The shape every CIFAR backbone shares: stem → stages → final → global average pool → fc.

Each architecture module builds its stem, stages and final block and hands them to `CifarNet`, which gives
them timm's model interface, so the same code serves these nets and timm's own:

* `forward(x)` → logits; `forward_features(x)` → the last feature map (before pooling);
  `forward_head(x, pre_logits=False)` → pooled features or logits; `get_classifier` / `reset_classifier`.
* `forward_intermediates(x, indices=None, intermediates_only=False)` → `(last feature map, [features])`
  exactly as timm's ResNet: feature 0 is the stem's output, features 1..S the stages' outputs, each as the
  CRD / UNIX code returns them with `is_feat=True` (after the block's ReLU; WRN: the pre-activation block
  output). AT (attention transfer) in those papers uses every stage output (`indices=[1, ..., S]`), SP
  (similarity preserving) the last one (`indices=[S]` or `indices=1`). `feature_info` describes each
  feature (channels, stride, module name), so `timm.create_model(name, features_only=True)` works too.
* the rest of timm's model interface, held to timm's own model tests (see tests/test_backbones.py):
  `global_pool` (any of timm's `SelectAdaptivePool2d` types, `''` for none) at construction and in
  `reset_classifier`, `set_grad_checkpointing`, `group_matcher`, and forwards that `torch.fx` traces and
  TorchScript compiles (also after tracing), giving the eager outputs bitwise.

No `from __future__ import annotations` here: an FX-traced graph copies `forward`'s annotations into its code,
and TorchScript cannot read them back as strings.
"""

import torch
import torch.utils.checkpoint
from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg
from timm.models._features import feature_take_indices
from torch import nn

from unixkd.pipeline.cifar import CIFAR100_MEAN, CIFAR100_STD


def conv_bn(
    in_chs: int, out_chs: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    """conv (no bias) → BatchNorm → ReLU (optional): the unit most of these nets are made of."""
    layers = [
        nn.Conv2d(in_chs, out_chs, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_chs),
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class CifarNet(nn.Module):
    """stem → stages[0..S-1] → final → global pool → (dropout) → fc."""

    def __init__(
        self,
        stem: nn.Module,
        stages: list[nn.Module],
        final: nn.Module,
        *,
        stem_chs: int,
        stage_chs: list[int],
        stage_reductions: list[int],
        num_features: int,
        num_classes: int = 100,
        stem_reduction: int = 1,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.final = final  # e.g. WRN's BN-ReLU, ShuffleNetV2's 1x1 conv; nn.Identity() when there is none
        self.num_features = num_features
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.feature_info = [dict(num_chs=stem_chs, reduction=stem_reduction, module="stem")] + [
            dict(num_chs=c, reduction=r, module=f"stages.{i}")
            for i, (c, r) in enumerate(zip(stage_chs, stage_reductions))
        ]
        # global_pool and fc, made last as before: the fc's init draws from the RNG after the body's
        self.reset_classifier(num_classes, "avg" if global_pool is None else global_pool)

    # --- timm's classifier interface ------------------------------------------------------------------
    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new fc for `num_classes` (0: none, forward gives the pooled features); `global_pool` None keeps the
        pooling, '' removes it (then only with num_classes 0: forward gives the last feature map)."""
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        if not global_pool and num_classes > 0:
            raise ValueError("global_pool='' (no pooling) needs num_classes=0: the fc takes pooled features")
        self.num_classes = num_classes
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))  # '': NCHW out
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        like = next(self.parameters(), None)
        factory = dict(device=like.device, dtype=like.dtype) if like is not None else {}
        self.fc = nn.Linear(self.head_hidden_size, num_classes, **factory) if num_classes > 0 else nn.Identity()

    # --- timm's training helpers ----------------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, object]:
        """Parameter groups for timm's layer-wise lr decay: stem, then each stage (coarse) or each module of a
        stage's Sequential (fine), then `final`; the fc goes last."""
        return dict(
            stem=r"^stem",
            blocks=[(r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)", None), (r"^final", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage in the backward pass instead of keeping its activations.

        Non-reentrant checkpointing whatever timm's global setting: the stage module still runs through its
        `__call__`, so forward hooks on `stages.i` (the AT/SP taps) see the stage output with its autograd graph
        (the reentrant kind would hand them a tensor without one). As with timm's own nets, BatchNorm's running
        statistics are updated again when a stage is recomputed.
        """
        self.grad_checkpointing = enable

    # --- forward ---------------------------------------------------------------------------------------
    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Last feature map and the features at `indices` (None: all; int n: the last n; list: those)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be NCHW, got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        intermediates = []
        x = self.stem(x)
        if 0 in take:
            intermediates.append(x)
        stages = self.stages[:max_index] if stop_early else self.stages
        for i, stage in enumerate(stages, start=1):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
            if i in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        if stop_early and max_index < len(self.stages):
            return x, intermediates
        return self.final(x), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop what the features at `indices` do not need (timm's features_only calls this); returns the indices."""
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        if max_index < len(self.stages):
            self.stages = self.stages[:max_index]
            self.final = nn.Identity()
            self.num_features = self.feature_info[max_index]["num_chs"]
            prune_head = True  # the head was sized for the last stage
        if prune_head:
            self.reset_classifier(0)
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:  # inline, not a helper: TorchScript takes no module as an argument
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
        return self.final(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate > 0:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def default_cfg(pool_size: tuple[int, int], **overrides) -> dict:
    """timm pretrained-cfg for a CIFAR net: no weights to download, 32×32 input, CIFAR-100 statistics.

    `pool_size`: the last feature map at 32 px (forward_features' H×W). Not fixed-size: the same nets run the
    Tiny-ImageNet benchmark at 64 px. No `license`: in timm it is the license of the weights, and there are none;
    a user's trained weights carry whatever license the user gives them.
    """
    return dict(
        url="",
        num_classes=100,
        input_size=(3, 32, 32),
        pool_size=pool_size,
        fixed_input_size=False,
        crop_pct=1.0,
        interpolation="bilinear",
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        first_conv="stem.0",
        classifier="fc",
        paper_name="Contrastive Representation Distillation",
        paper_ids="arXiv:1910.10699",
        origin_url="https://github.com/HobbitLong/RepDistiller",
        **overrides,
    )


def build(model_cls, variant: str, pretrained: bool, num_stages: int, **kwargs) -> nn.Module:
    """timm's builder; `features_only=True` is served by `forward_intermediates` (stem + every stage by default)."""
    if pretrained:
        raise ValueError(
            f"{variant}: there are no published pretrained weights; train a teacher "
            "(selection.method=none) and pass model.teacher_checkpoint"
        )
    return build_model_with_cfg(
        model_cls,
        variant,
        pretrained=False,
        feature_cfg=dict(feature_cls="getter", out_indices=tuple(range(num_stages + 1))),
        **kwargs,
    )
