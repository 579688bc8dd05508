"""Feature losses on intermediate layers: AT (attention transfer) and SP (similarity-preserving), and the taps.

Layers are modules named as in `model.named_modules()`. Default for the CIFAR backbones of the CRD
benchmark (`training/backbones/`): every stage output, which is what the authors' code takes (CRD's
`feat[1:-1]`, reused by UNIX: 3 maps for ResNets, WRNs and ShuffleNets, 4 for VGG, MobileNetV2 and
ResNet50). Other models: the outputs of the last three stages — timm models list their stages in
`model.feature_info` (timm's feature-extraction table, the one `features_only` uses); torchvision models
(`tv/` names) by family below. When both sides take their defaults and the counts differ, the first
min(n_t, n_s) of each are paired, as the authors' `zip(g_s, g_t)` does. Features are captured with forward
hooks during the ordinary forward, so the logits and the features come from ONE pass (and the
DDP-wrapped student is called as usual).

    AT (Zagoruyko & Komodakis; weight 1000):  a(f) = normalize(mean_c f², flattened per image);
        loss = Σ_layers mean((a(f_s) − a(f_t))²), the larger map average-pooled to the smaller.
    SP (Tung & Mori; weight 3000):  G = normalize_rows(f f^T) over the batch (f flattened per image);
        loss = ‖G_t − G_s‖²_F / B², on the last chosen layer (as in the CRD code both papers used).
"""

from __future__ import annotations

import contextlib
import re

import torch.nn.functional as F
from torch import Tensor, nn

from .backbones.base import CifarNet
from .errors import UserError

FEATURE_LOSSES = ("none", "at", "sp")

# torchvision families: their stage modules, in order (the default takes the last three)
TV_STAGES = [
    (re.compile(r"^(resnet|resnext|wide_resnet)"), ["layer1", "layer2", "layer3", "layer4"]),
    (re.compile(r"^shufflenet_v2"), ["stage2", "stage3", "stage4"]),
    (
        re.compile(r"^regnet"),
        ["trunk_output.block1", "trunk_output.block2", "trunk_output.block3", "trunk_output.block4"],
    ),
]


def default_layers(name: str, model: nn.Module, count: int = 3) -> list[str]:
    """The default feature layers of `model` (config name `name`).

    A CIFAR backbone (CifarNet): every stage module, as the authors' AT takes `feat[1:-1]` of the model's
    `is_feat=True` list (stem and pooled vector left out). Otherwise the last `count` stage modules:
    timm's feature_info or the tv table.
    """
    if isinstance(model, CifarNet):
        return [f["module"] for f in model.feature_info[1:]]  # feature_info[0] is the stem (the authors' f0)
    if name.startswith("tv/"):
        for pattern, stages in TV_STAGES:
            if pattern.match(name[3:]):
                return stages[-count:]
        raise UserError(
            f"model '{name}': no default feature layers for this torchvision family; "
            "set loss.teacher_layers / loss.student_layers to module names"
        )
    info = getattr(model, "feature_info", None)
    if not info:
        raise UserError(
            f"model '{name}' has no timm feature_info; set loss.teacher_layers / loss.student_layers to module names"
        )
    modules = [f["module"] for f in (info.info if hasattr(info, "info") else info)]
    return modules[-count:]


def resolve_layers(
    teacher_name: str,
    teacher: nn.Module,
    student_name: str,
    student: nn.Module,
    teacher_layers: list[str],
    student_layers: list[str],
) -> tuple[list[str], list[str]]:
    """The (teacher, student) layer lists: given ones or defaults; same count on both sides, names that exist.

    Both defaults with different counts (e.g. a 3-stage ResNet teacher, a 4-stage VGG student): the first
    min(n_t, n_s) of each, pairing the earliest stages as the authors' `zip(g_s, g_t)` does. A given list
    must match the other side's count.
    """
    t = list(teacher_layers) or default_layers(teacher_name, teacher)
    s = list(student_layers) or default_layers(student_name, student)
    if not teacher_layers and not student_layers:
        t, s = t[: len(s)], s[: len(t)]
    if len(t) != len(s):
        raise UserError(
            f"feature layers: teacher {teacher_name} has {len(t)} ({', '.join(t)}) but student "
            f"{student_name} has {len(s)} ({', '.join(s)}); set loss.teacher_layers and "
            "loss.student_layers to lists of the same length"
        )
    for key, name, model, layers in (
        ("loss.teacher_layers", teacher_name, teacher, t),
        ("loss.student_layers", student_name, student, s),
    ):
        known = dict(model.named_modules())
        for layer in layers:
            if layer not in known or layer == "":
                raise UserError(f"{key}: model '{name}' has no module '{layer}'")
    return t, s


@contextlib.contextmanager
def capture(model: nn.Module, layers: list[str]):
    """`with capture(model, layers) as feats: model(x)` -> feats is the list of those modules' outputs, in order.

    A module that runs more than once in the context keeps its first output: a TL step runs the student's
    forward on the main rows first, then on the extra view (`training.views`), and the features are the main
    rows'.
    """
    found = dict(model.named_modules())
    feats: list[Tensor | None] = [None] * len(layers)
    handles = []
    for i, layer in enumerate(layers):

        def hook(module, inputs, output, i=i, layer=layer):
            if not isinstance(output, Tensor):
                raise UserError(f"feature layer '{layer}' returned {type(output).__name__}, not a tensor")
            if feats[i] is None:
                feats[i] = output

        handles.append(found[layer].register_forward_hook(hook))
    try:
        yield feats
    finally:
        for handle in handles:
            handle.remove()


# ---- the losses --------------------------------------------------------------------------------------


def attention_map(f: Tensor) -> Tensor:
    """a(f) = normalize(mean over channels of f², flattened): [B, C, H, W] -> [B, H·W], float32."""
    if f.ndim != 4:
        raise ValueError(f"AT needs [B, C, H, W] feature maps, got shape {tuple(f.shape)}")
    return F.normalize(f.float().pow(2).mean(1).flatten(1), dim=1)


def at_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """mean((a(f_s) − a(f_t))²) for one layer; the larger spatial map is average-pooled to the smaller."""
    if f_s.ndim == 4 and f_t.ndim == 4:
        hs, ht = f_s.shape[-2:], f_t.shape[-2:]
        if hs[0] * hs[1] > ht[0] * ht[1]:
            f_s = F.adaptive_avg_pool2d(f_s.float(), ht)
        elif ht[0] * ht[1] > hs[0] * hs[1]:
            f_t = F.adaptive_avg_pool2d(f_t.float(), hs)
    return (attention_map(f_s) - attention_map(f_t)).pow(2).mean()


def sp_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """‖normalize_rows(F_t F_t^T) − normalize_rows(F_s F_s^T)‖²_F / B², F = features flattened per image."""
    B = f_s.shape[0]
    a_s, a_t = f_s.float().flatten(1), f_t.float().flatten(1)
    g_s = F.normalize(a_s @ a_s.t(), dim=1)
    g_t = F.normalize(a_t @ a_t.t(), dim=1)
    return (g_t - g_s).pow(2).sum() / (B * B)


def feature_loss(kind: str, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
    """AT summed over the layer pairs, or SP on the last pair. Teacher features carry no gradient."""
    if kind == "at":
        return sum(at_loss(s, t.detach()) for s, t in zip(feats_s, feats_t, strict=True))
    if kind == "sp":
        return sp_loss(feats_s[-1], feats_t[-1].detach())
    raise ValueError(f"loss.feature={kind!r} is not one of {', '.join(FEATURE_LOSSES)}")


class FeatureDistill:
    """The feature-loss part of a run: which layers of teacher and student, which loss, what weight."""

    def __init__(self, kind: str, weight: float, teacher_layers: list[str], student_layers: list[str]):
        self.kind, self.weight = kind, weight
        self.teacher_layers, self.student_layers = teacher_layers, student_layers

    def __repr__(self) -> str:
        return (
            f"FeatureDistill({self.kind} x {self.weight:g}: teacher {self.teacher_layers} -> "
            f"student {self.student_layers})"
        )

    def loss(self, feats_s: list[Tensor], feats_t: list[Tensor], rows: int) -> Tensor:
        """weight · loss on the first `rows` rows of each feature (the main rows; an extra view gets KL only)."""
        return self.weight * feature_loss(self.kind, [f[:rows] for f in feats_s], [f[:rows] for f in feats_t])


def no_capture():
    """A stand-in for `capture` when no feature loss is configured: yields an empty list."""
    return contextlib.nullcontext([])
