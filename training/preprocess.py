"""The preprocessing the teacher expects: the val resize/crop/filter and the normalization, resolved from the config.

One pipeline feeds both networks (the same normalized images go to the student and, for the selected rows, to the
teacher), so on an ImageNet-style folder the images follow the *teacher's* expectation:

- a timm teacher with a pretrained config (``crop_pct``, ``interpolation``, ``crop_mode``, ``mean``, ``std``) gets
  what ``timm.data.resolve_data_config`` resolves from it, i.e. what timm's own eval transform would feed it;
- any other teacher (``tv/<name>``, or no teacher: ``selection.method=none``) gets torchvision's ImageNet eval
  transform: ``Resize(256)`` / ``CenterCrop(224)`` (ratio 0.875), bilinear, ImageNet mean/std.

Each of ``data.val_resize_ratio``, ``data.val_interpolation``, ``data.val_crop_mode``, ``data.mean``, ``data.std``
is ``auto`` by default (the rule above); an explicit value wins. Only the ``folder`` dataset follows a teacher:
digits, CIFAR and Tiny-ImageNet teachers are trained here, and keep their dataset's fixed statistics (ImageNet's for
digits and Tiny-ImageNet, CIFAR's own for CIFAR) unless ``data.mean``/``data.std`` are set. ``data.mean``/``data.std``
apply to the train pipeline as well (the student sees one normalization); the others shape the val pipeline only.
The crop size is always ``data.image_size``: the teacher's own ``input_size`` is not imposed on the student.
"""

from __future__ import annotations

from dataclasses import dataclass

from unixkd.pipeline.dali import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, VAL_CROP_MODES

from .config import Config, ConfigError
from .models import TV_PREFIX

# torchvision's ImageNet eval transform (its reference scripts and the weights' transforms()): the fallback
TORCHVISION_DEFAULTS = {
    "val_resize_ratio": 0.875,
    "val_interpolation": "bilinear",
    "val_crop_mode": "center",
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
}
KEYS = tuple(TORCHVISION_DEFAULTS)
_TIMM_KEYS = {
    "val_resize_ratio": "crop_pct",
    "val_interpolation": "interpolation",
    "val_crop_mode": "crop_mode",
    "mean": "mean",
    "std": "std",
}


@dataclass(frozen=True)
class Preprocess:
    """Resolved settings; ``sources[key]`` says where each came from ("config", "teacher <name>'s timm pretrained
    cfg", "torchvision default", "<dataset> default")."""

    val_resize_ratio: float
    val_interpolation: str
    val_crop_mode: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    sources: dict

    def loader_kwargs(self) -> dict:
        """The DaliLoader arguments these settings become."""
        return {
            "val_resize_ratio": self.val_resize_ratio,
            "val_interpolation": self.val_interpolation,
            "val_crop_mode": self.val_crop_mode,
            "mean": self.mean,
            "std": self.std,
        }

    def describe(self, image_size: int) -> str:
        """One line for the log."""
        import math

        resize = math.floor(image_size / self.val_resize_ratio)
        origin = sorted(set(self.sources.values()))
        return (
            f"val preprocessing: resize to {resize} ({self.val_crop_mode}, ratio {self.val_resize_ratio:g}, "
            f"{self.val_interpolation}), crop {image_size}; mean {_fmt(self.mean)} std {_fmt(self.std)} "
            f"(from {', '.join(origin)})"
        )


def teacher_data_config(name: str) -> dict | None:
    """What timm resolves for a timm model name's pretrained config (``resolve_data_config``), or None for a
    torchvision name or a model without one. Builds no model: the registry's config is the model's."""
    if not name or name.startswith(TV_PREFIX):
        return None
    import timm
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    if not timm.is_model(name):
        return None
    pretrained = get_pretrained_cfg(name, allow_unregistered=True)
    if pretrained is None:
        return None
    return resolve_data_config(pretrained_cfg=pretrained.to_dict())


def resolve_preprocess(cfg: Config) -> Preprocess:
    """The settings the loaders use (see the module docstring); a teacher config the val graph cannot reproduce
    while its key is ``auto`` is one ConfigError line naming the key to set."""
    d = cfg.data
    explicit = {
        "val_resize_ratio": d.val_resize_ratio,
        "val_interpolation": d.val_interpolation,
        "val_crop_mode": d.val_crop_mode,
        "mean": d.mean,
        "std": d.std,
    }
    follow = d.dataset == "folder" and cfg.selection.method != "none"
    timm_cfg = teacher_data_config(cfg.model.teacher) if follow else None
    fallback = dict(TORCHVISION_DEFAULTS)
    fallback_source = "torchvision default" if d.dataset in ("folder", "digits") else f"{d.dataset} default"
    if d.dataset in ("cifar10", "cifar100"):
        from unixkd.pipeline.cifar import STATS

        fallback["mean"], fallback["std"] = STATS[d.dataset]
    values, sources = {}, {}
    for key in KEYS:
        if explicit[key] != "auto":
            values[key], sources[key] = explicit[key], "config"
        elif timm_cfg is not None:
            values[key] = timm_cfg[_TIMM_KEYS[key]]
            sources[key] = f"teacher {cfg.model.teacher}'s timm pretrained cfg"
        else:
            values[key], sources[key] = fallback[key], fallback_source
    teacher = f"the teacher {cfg.model.teacher}'s timm pretrained cfg"
    if sources["val_resize_ratio"] != "config" and not 0 < values["val_resize_ratio"] <= 1:
        raise ConfigError(
            f"{teacher} has crop_pct {values['val_resize_ratio']} (> 1: pad around the image), which the "
            "val pipeline does not do; set data.val_resize_ratio in (0, 1]"
        )
    if values["val_interpolation"] not in INTERPOLATIONS:
        raise ConfigError(
            f"{teacher} uses interpolation {values['val_interpolation']!r}; the val pipeline has "
            f"{', '.join(INTERPOLATIONS)}: set data.val_interpolation"
        )
    if values["val_crop_mode"] not in VAL_CROP_MODES:
        raise ConfigError(
            f"{teacher} uses crop_mode {values['val_crop_mode']!r}; the val pipeline has "
            f"{', '.join(VAL_CROP_MODES)}: set data.val_crop_mode"
        )
    return Preprocess(
        val_resize_ratio=float(values["val_resize_ratio"]),
        val_interpolation=values["val_interpolation"],
        val_crop_mode=values["val_crop_mode"],
        mean=tuple(float(x) for x in values["mean"]),
        std=tuple(float(x) for x in values["std"]),
        sources=sources,
    )


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
