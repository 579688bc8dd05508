"""Teacher and student by name: any timm classifier, or a torchvision one with a `tv/` prefix.

The CIFAR backbones of both papers (`cifar_resnet8x4`, `cifar_wrn_40_2`, ...) are registered with timm by
importing `training.backbones` here, so they take the same `timm.create_model` path.

Weights never come from the network unless asked (`pretrained=True`, timm's own mechanism). A teacher's
weights usually come from a local file: a plain state dict, a timm/torchvision training checkpoint
(`{"state_dict": ...}`, `{"model": ...}`), or a safetensors file. A missing or mismatched file is one
`ModelError` line.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torchvision
from torch import nn

from . import backbones  # noqa: F401  (registers the cifar_* models in timm's registry)


class ModelError(ValueError):
    """A model name or checkpoint problem, worded as one line."""


TV_PREFIX = "tv/"


def create_model(name: str, num_classes: int, *, pretrained: bool = False, checkpoint: str = "") -> nn.Module:
    """Build `name` with a `num_classes` head; load `checkpoint` if given."""
    if name.startswith(TV_PREFIX):
        tv_name = name[len(TV_PREFIX):]
        if tv_name not in torchvision.models.list_models(module=torchvision.models):
            raise ModelError(f"unknown torchvision classifier '{tv_name}' (model name '{name}')")
        if pretrained:
            raise ModelError(f"model '{name}': pretrained=true is supported for timm names only; "
                             "pass a local checkpoint instead")
        model = torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes)
    else:
        if not timm.is_model(name):
            raise ModelError(f"unknown model '{name}': not a timm model (torchvision models take a 'tv/' prefix)")
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes)
    if checkpoint:
        load_checkpoint(model, checkpoint, name=name)
    return model


def load_checkpoint(model: nn.Module, path: str, *, name: str = "model") -> None:
    """Load weights strictly; every failure is a one-line ModelError that names the file."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"checkpoint for {name} not found: {path}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        first = (str(e).splitlines() or ["(no message)"])[0]  # an empty file raises EOFError("")
        raise ModelError(f"checkpoint {path} could not be read: {type(e).__name__}: {first}") from None
    for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ModelError(f"checkpoint {path} holds no state dict")
    state = {strip_prefixes(k): v for k, v in state.items()}
    own = model.state_dict()
    problem = state_mismatch({k: tuple(v.shape) for k, v in own.items()},
                             {k: tuple(v.shape) for k, v in state.items()})
    if problem:
        raise ModelError(f"checkpoint {path} does not match {name}: {problem}")
    model.load_state_dict(state, strict=True)


def state_mismatch(expected: dict[str, tuple], found: dict[str, tuple]) -> str | None:
    """How the tensors `found` in a file (name -> shape) differ from what a model `expected`, in one line
    naming the first mismatching keys and shapes; None if they match exactly."""
    wrong = [k for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    parts = []
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: file {tuple(found[k])} "
                     f"vs model {tuple(expected[k])})")
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    return "; ".join(parts) or None


def strip_prefixes(key: str) -> str:
    """A parameter name without the wrappers' prefixes: DDP's `module.`, torch.compile's `_orig_mod.`."""
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key
