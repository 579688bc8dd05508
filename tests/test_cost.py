"""training.cost: the SPEC §1 cost model against the published table, hand FLOP formulas and torchvision's
own per-model operation counts."""

import pytest
import torch
import torchvision
from torch import nn

from training.cost import CostLedger, forward_flops, unix_cost_ratio
from training.models import create_model


# ---------------------------------------------------------------------------------------------------------
# the paper's convention (B_s = F_s)


@pytest.mark.parametrize("k,percent", [(48, 77.49), (40, 64.99)])
def test_published_table(k, percent):
    assert abs(100 * unix_cost_ratio(38.17, 64, k) - percent) < 0.01


def test_ratio_from_the_energy_sums():
    Ft, Fs, N, k = 7.0, 2.0, 16, 12
    e_kd = N * (Ft + Fs + Fs)
    e_unix = k * Ft + (N + k) * Fs + k * Fs
    assert unix_cost_ratio(Ft / Fs, N, k) == pytest.approx(e_unix / e_kd, rel=1e-12)


# ---------------------------------------------------------------------------------------------------------
# measured forward FLOPs (a multiply-add is 2)


@pytest.mark.parametrize("conv,size,in_chans,flops", [
    (nn.Conv2d(3, 8, 3, padding=1), 16, 3, 2 * (8 * 16 * 16) * (3 * 3 * 3)),
    (nn.Conv2d(3, 4, 3, stride=2, padding=1), 16, 3, 2 * (4 * 8 * 8) * (3 * 3 * 3)),
    (nn.Conv2d(3, 5, 1, bias=False), 10, 3, 2 * (5 * 10 * 10) * 3),
    (nn.Conv2d(8, 8, 3, padding=1, groups=8), 16, 8, 2 * (8 * 16 * 16) * (1 * 3 * 3)),  # depthwise
    (nn.Conv2d(8, 16, 3, groups=4), 12, 8, 2 * (16 * 10 * 10) * (2 * 3 * 3)),
])
def test_conv_flops(conv, size, in_chans, flops):
    assert forward_flops(conv, size, in_chans=in_chans) == flops


def test_linear_flops_and_mode_restored():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10), nn.ReLU(), nn.Linear(10, 7))
    model.train()
    assert forward_flops(model, 4) == 2 * 48 * 10 + 2 * 10 * 7
    assert model.training


def test_resnet18_to_shufflenet_at_imagenet_scale():
    Ft = forward_flops(create_model("tv/resnet18", 1000), 224)
    Fs = forward_flops(create_model("tv/shufflenet_v2_x0_5", 1000), 224)
    # torchvision's own model cards, in GMACs: ResNet18 1.814, ShuffleNetV2 x0.5 0.04 (two digits)
    assert Ft == pytest.approx(2 * torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["_ops"] * 1e9, rel=0.01)
    assert Fs == pytest.approx(2 * torchvision.models.ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1.meta["_ops"] * 1e9,
                               rel=0.05)
    assert abs(100 * unix_cost_ratio(Ft / Fs, 256, 192) - 77.2) < 0.1  # SPEC §1 / the paper's 77.23 %


# ---------------------------------------------------------------------------------------------------------
# the ledger: what a run actually processed


def run(ledger, steps):
    for batch, teacher, fwd, bwd in steps:
        ledger.add_step(batch=batch, teacher=teacher, student_fwd=fwd, student_bwd=bwd)
    return ledger


def test_unix_steps_match_the_formula():
    Ft, Fs, N, k = 38.17, 1.0, 64, 48
    ledger = run(CostLedger(Ft=Ft, Fs=Fs), [(N, k, N + k, k)] * 5)  # scoring forward on N, train on k
    assert (ledger.teacher_images, ledger.student_fwd_images, ledger.student_bwd_images) == (240, 560, 240)
    assert ledger.flops() == pytest.approx(5 * (k * Ft + (N + k) * Fs + k * Fs))
    assert ledger.cost_fraction() == pytest.approx(0.75 + 1 / 40.17, rel=1e-12)
    assert abs(100 * ledger.cost_fraction() - 77.49) < 0.01


def test_kd_costs_exactly_one_and_random_k_over_n():
    kd = run(CostLedger(Ft=5.0, Fs=0.3), [(256, 256, 256, 256)] * 3)
    assert kd.cost_fraction() == pytest.approx(1.0, rel=1e-12)  # 1 up to float summation order
    rand = run(CostLedger(Ft=5.0, Fs=0.3), [(256, 192, 192, 192)] * 3)
    assert rand.cost_fraction() == pytest.approx(0.75, rel=1e-12)


def test_uneven_steps_and_state_round_trip():
    Ft, Fs = 10.0, 2.0
    steps = [(64, 48, 112, 48), (64, 48, 112, 48), (20, 15, 35, 15)]  # a short last batch
    ledger = run(CostLedger(Ft=Ft, Fs=Fs), steps)
    spent = sum(t * Ft + f * Fs + b * Fs for _, t, f, b in steps)
    assert ledger.cost_fraction() == pytest.approx(spent / (148 * (Ft + 2 * Fs)), rel=1e-12)
    again = CostLedger(Ft=Ft, Fs=Fs)
    again.load_state_dict(ledger.state_dict())
    assert again == ledger
    assert CostLedger(Ft=Ft, Fs=Fs).cost_fraction() == 0.0  # nothing run yet
