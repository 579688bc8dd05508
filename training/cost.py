"""The cost model (SPEC §1) and the ledger of what a run actually spent.

Per-image forward FLOPs F_t (teacher) and F_s (student) are measured once with torch's FlopCounterMode at
the configured image size. This module uses the paper's convention, B_s := F_s (a backward counted as one
forward), so its ratios match the published percentages:

    KD:     E_kd   = N·(F_t + F_s + B_s)
    Random: E_rand = k·(F_t + F_s + B_s)
    UNIX:   E_unix = k·F_t + (N + k)·F_s + k·B_s
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def forward_flops(model: nn.Module, image_size: int, in_chans: int = 3) -> float:
    """FLOPs of one forward pass on one image (a multiply-add counts as 2), on a CPU float32 twin of the input."""
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    x = torch.zeros(1, in_chans, image_size, image_size, device=param.device, dtype=param.dtype)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    model.train(was_training)
    return float(counter.get_total_flops())


def unix_cost_ratio(ft_over_fs: float, N: int, k: int) -> float:
    """E_unix / E_kd under the paper's convention: k/N + F_s/(F_t + 2·F_s)."""
    return k / N + 1.0 / (ft_over_fs + 2.0)


@dataclass
class CostLedger:
    """Images each network actually processed; FLOPs follow from the per-image costs.

    `kd_images` is what conventional KD would have processed on the same steps (N per step), the
    denominator of `cost_fraction`. Counts are global (all processes).
    """

    Ft: float
    Fs: float
    teacher_images: int = 0
    student_fwd_images: int = 0
    student_bwd_images: int = 0
    kd_images: int = 0

    @property
    def Bs(self) -> float:  # paper convention
        return self.Fs

    def add_step(self, *, batch: int, teacher: int, student_fwd: int, student_bwd: int) -> None:
        self.kd_images += batch
        self.teacher_images += teacher
        self.student_fwd_images += student_fwd
        self.student_bwd_images += student_bwd

    def flops(self) -> float:
        return self.teacher_images * self.Ft + self.student_fwd_images * self.Fs + self.student_bwd_images * self.Bs

    def kd_flops(self) -> float:
        return self.kd_images * (self.Ft + self.Fs + self.Bs)

    def cost_fraction(self) -> float:
        kd = self.kd_flops()
        return self.flops() / kd if kd > 0 else 0.0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
