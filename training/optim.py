"""SGD and the learning-rate schedule (step decay or cosine, optional linear warmup), stepped per iteration."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.SGD:
    """SGD with momentum. Two parameter groups: weights (≥ 2-d) and biases / norm parameters (1-d tensors).

    The 1-d group is decayed only with `optim.decay_norm_and_bias` (the authors' `optim.SGD(model.parameters(),
    weight_decay=wd)`, as the paper configs set it); by default it is not, as timm does. Both settings keep the
    same two groups, so the optimizer's state has one layout whatever the setting.
    """
    decay, one_d = [], []
    for p in model.parameters():
        if p.requires_grad:
            (one_d if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": one_d, "weight_decay": cfg.weight_decay if cfg.decay_norm_and_bias else 0.0},
    ]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def lr_factor(step: int, steps_per_epoch: int, total_epochs: int, cfg: OptimConfig) -> float:
    """Multiplier of the base lr at iteration `step` (0-based)."""
    epoch = step / steps_per_epoch  # fractional epoch
    if cfg.warmup_epochs > 0 and epoch < cfg.warmup_epochs:
        return (step + 1) / (cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "step":
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    if cfg.schedule == "cosine":
        t = (epoch - cfg.warmup_epochs) / max(total_epochs - cfg.warmup_epochs, 1e-8)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return 1.0


def build_scheduler(optimizer, cfg: OptimConfig, steps_per_epoch: int, total_epochs: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, total_epochs, cfg)
    )
