"""The cost model (docs/algorithms.md §1), measured per-image FLOPs, and the ledger of what a run actually spent.

Per-image FLOPs are counted once with torch's FlopCounterMode at the configured image size (a multiply-add
counts as 2): F_t (teacher forward), F_s (student forward), B_s (student backward: the parameters' gradients,
and the activations' gradients wherever they are needed, as in a training step). Per step of N images:

    KD:     E_kd   = N·(F_t + F_s + B_s)
    Random: E_rand = k·(F_t + F_s + B_s)
    UNIX:   E_unix = k·F_t + (N + k)·F_s + k·B_s      (the extra no-grad scoring forward on all N)

The arithmetic on these sums (each method's fraction of KD, the conventions, the k for a budget) lives in
training/budget.py. Two conventions everywhere: `paper` counts a backward as one forward (B_s := F_s), which
reproduces the published percentages; `measured` uses the counted B_s (about 2·F_s; a little less, because the
stem convolution needs no input gradient).

FlopCounterMode counts the weight gradient of a grouped convolution as if the convolution were dense (a
64-channel depthwise conv's backward comes out at 65x its forward); `conv_backward_flop` below is the
correct formula and every counter made here uses it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from .budget import backward_per_image

# ---------------------------------------------------------------------------------------------------------
# counting


def conv_backward_flop(
    grad_out_shape,
    x_shape,
    w_shape,
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed,
    _output_padding,
    groups,
    output_mask,
    out_shape=None,
    **kwargs,
) -> int:
    """FLOPs of aten.convolution_backward, grouped convolutions included.

    grad_input: a (transposed) convolution of grad_out with the same weight, as costly as the forward; torch's
    own formula is right for it. grad_weight: each of the weight's prod(w_shape) entries (w_shape already holds
    C_in/groups) meets every output position of every image once, a multiply-add each, so it also costs what
    the forward costs: 2·prod(w_shape)·batch·positions. torch multiplies the full C_in·C_out instead (dense),
    `groups` times too much. Positions: the output's for a convolution, the input's for a transposed one.
    """
    flops = 0
    if output_mask[0]:  # absent for the stem: the images need no gradient
        flops += conv_flop_count(grad_out_shape, w_shape, out_shape[0], not transposed)
    if output_mask[1]:
        positions = math.prod((x_shape if transposed else grad_out_shape)[2:])
        flops += 2 * math.prod(w_shape) * x_shape[0] * positions
    return flops


FLOP_FORMULAS = {torch.ops.aten.convolution_backward: conv_backward_flop}


def flop_counter() -> FlopCounterMode:
    """A silent FlopCounterMode with the grouped-convolution backward fixed."""
    return FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS)


def _one_image(model: nn.Module, image_size: int, in_chans: int) -> torch.Tensor:
    param = next(model.parameters())
    return torch.zeros(1, in_chans, image_size, image_size, device=param.device, dtype=param.dtype)


@torch.no_grad()
def forward_flops(model: nn.Module, image_size: int, in_chans: int = 3) -> float:
    """F: FLOPs of one eval-mode forward pass on one image."""
    was_training = model.training
    model.eval()
    counter = flop_counter()
    with counter:
        model(_one_image(model, image_size, in_chans))
    model.train(was_training)
    return float(counter.get_total_flops())


def backward_flops(model: nn.Module, image_size: int, in_chans: int = 3) -> float:
    """B: FLOPs of the backward pass of one image, as training runs it.

    Gradients of the trainable parameters only (the image needs none), through torch.autograd.grad so no
    `.grad` is written. Eval mode, so BatchNorm statistics are untouched; the counted operations (convolutions,
    matrix products) are the same in both modes.
    """
    was_training = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    out = model(_one_image(model, image_size, in_chans))
    counter = flop_counter()
    with counter:
        torch.autograd.grad(out.float().sum(), params, allow_unused=True)
    model.train(was_training)
    return float(counter.get_total_flops())


class PerImage(NamedTuple):
    """Per-image FLOPs of one teacher/student pair at one image size."""

    Ft: float
    Fs: float
    Bs: float  # measured


def measure_pair(teacher: nn.Module | None, student: nn.Module, image_size: int, in_chans: int = 3) -> PerImage:
    """F_t (0 without a teacher), F_s and B_s, counted once on the actual models."""
    Ft = forward_flops(teacher, image_size, in_chans) if teacher is not None else 0.0
    return PerImage(Ft, forward_flops(student, image_size, in_chans), backward_flops(student, image_size, in_chans))


# ---------------------------------------------------------------------------------------------------------
# the ledger


@dataclass
class CostLedger:
    """Images each network actually processed; FLOPs follow from the per-image costs.

    `kd_images` is what conventional KD would have processed on the same steps (N per step), the
    denominator of `cost_fraction`. Counts are global (all processes). `Bs` is the measured student backward
    (None: not measured, and only the paper convention can be asked for).
    """

    Ft: float
    Fs: float
    Bs: float | None = None
    teacher_images: int = 0
    student_fwd_images: int = 0
    student_bwd_images: int = 0
    kd_images: int = 0

    def add_step(self, *, batch: int, teacher: int, student_fwd: int, student_bwd: int) -> None:
        self.kd_images += batch
        self.teacher_images += teacher
        self.student_fwd_images += student_fwd
        self.student_bwd_images += student_bwd

    def backward(self, convention: str = "paper") -> float:
        if convention == "measured" and self.Bs is None:
            raise ValueError("convention='measured' needs the ledger's measured Bs (CostLedger(Bs=...))")
        return backward_per_image(convention, self.Fs, self.Bs)

    def flops(self, convention: str = "paper") -> float:
        """What the run spent: teacher forwards + student forwards (scoring included) + student backwards."""
        Bs = self.backward(convention)
        return self.teacher_images * self.Ft + self.student_fwd_images * self.Fs + self.student_bwd_images * Bs

    def kd_flops(self, convention: str = "paper") -> float:
        return self.kd_images * (self.Ft + self.Fs + self.backward(convention))

    def cost_fraction(self, convention: str = "paper") -> float:
        kd = self.kd_flops(convention)
        return self.flops(convention) / kd if kd > 0 else 0.0

    def metrics(self) -> dict:
        """The ledger's fields for metrics.jsonl: both conventions' cost fractions and cumulative FLOPs."""
        return {
            "teacher_images": self.teacher_images,
            "student_fwd_images": self.student_fwd_images,
            "student_bwd_images": self.student_bwd_images,
            "cost_fraction": self.cost_fraction("paper"),
            "cost_fraction_measured": self.cost_fraction("measured"),
            "flops_paper": self.flops("paper"),
            "flops_measured": self.flops("measured"),
        }

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
