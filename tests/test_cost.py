"""training.cost: the docs/algorithms.md §1 cost model against the published table, hand FLOP formulas (forward and the
grouped-convolution backward fix) and torchvision's own per-model operation counts; `launch.py cost`."""

import json

import pytest
import torch
import torchvision
from torch import nn

from unixkd import launch
from unixkd.training.budget import cost_fraction, k_for_budget
from unixkd.training.cost import CostLedger, backward_flops, forward_flops, measure_pair
from unixkd.training.models import create_model


def unix_cost_ratio(ft_over_fs: float, N: int, k: int, bs_over_fs: float = 1.0) -> float:
    """UNIX's share of KD from training.budget, the one module with the cost arithmetic, given per-F_s ratios."""
    return cost_fraction(k, N=N, Ft=ft_over_fs, Fs=1.0, Bs=bs_over_fs, scores_batch=True)


def unix_k_for_budget(budget: float, N: int, ft_over_fs: float, bs_over_fs: float = 1.0) -> int:
    return k_for_budget(budget, N=N, Ft=ft_over_fs, Fs=1.0, Bs=bs_over_fs, scores_batch=True, method="unix")


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


@pytest.mark.parametrize(
    "conv,size,in_chans,flops",
    [
        (nn.Conv2d(3, 8, 3, padding=1), 16, 3, 2 * (8 * 16 * 16) * (3 * 3 * 3)),
        (nn.Conv2d(3, 4, 3, stride=2, padding=1), 16, 3, 2 * (4 * 8 * 8) * (3 * 3 * 3)),
        (nn.Conv2d(3, 5, 1, bias=False), 10, 3, 2 * (5 * 10 * 10) * 3),
        (nn.Conv2d(8, 8, 3, padding=1, groups=8), 16, 8, 2 * (8 * 16 * 16) * (1 * 3 * 3)),  # depthwise
        (nn.Conv2d(8, 16, 3, groups=4), 12, 8, 2 * (16 * 10 * 10) * (2 * 3 * 3)),
    ],
)
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
    assert Fs == pytest.approx(
        2 * torchvision.models.ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1.meta["_ops"] * 1e9, rel=0.05
    )
    assert abs(100 * unix_cost_ratio(Ft / Fs, 256, 192) - 77.2) < 0.1  # docs/algorithms.md §1 / the paper's 77.23 %


# ---------------------------------------------------------------------------------------------------------
# measured backward FLOPs, grouped convolutions fixed (torch counts their weight gradient as dense: 64x too
# much for a 64-channel depthwise conv)


def test_depthwise_backward_without_input_gradient():
    dw = nn.Conv2d(64, 64, 3, padding=1, groups=64)
    F = 2 * (64 * 16 * 16) * (1 * 3 * 3)  # one multiply-add per output element and filter tap
    assert forward_flops(dw, 16, in_chans=64) == F
    assert backward_flops(dw, 16, in_chans=64) == F  # the image needs no gradient: the weight gradient only


@pytest.mark.parametrize(
    "layer,size,F",
    [
        (nn.Conv2d(64, 64, 3, padding=1, groups=64), 16, 2 * (64 * 16 * 16) * 9),  # depthwise
        (nn.Conv2d(8, 16, 3, groups=4), 12, 2 * (16 * 10 * 10) * (2 * 3 * 3)),  # 4 groups, 10x10 out
        (nn.Conv2d(8, 16, 3, padding=1), 12, 2 * (16 * 12 * 12) * (8 * 3 * 3)),  # dense
        (nn.ConvTranspose2d(8, 16, 3, stride=2, groups=4), 5, 2 * (5 * 5) * (8 * 4 * 9)),  # each input meets w once
    ],
)
def test_conv_backward_is_twice_its_forward(layer, size, F):
    """After a 1x1 conv the layer's input needs a gradient: backward = grad_input (F) + grad_weight (F)."""
    C = layer.in_channels
    pre = nn.Conv2d(C, C, 1, bias=False)
    P = 2 * (C * size * size) * C  # the 1x1 conv: weight gradient only
    model = nn.Sequential(pre, layer)
    assert forward_flops(model, size, in_chans=C) == P + F
    assert backward_flops(model, size, in_chans=C) == P + 2 * F


def test_small_net_backward_by_hand_and_no_grad_left_behind():
    S = 6
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.BatchNorm2d(8),
        nn.Flatten(),
        nn.Linear(8 * S * S, 10),
    )
    F1, F2, F3 = 2 * 8 * S * S * 27, 2 * 8 * S * S * 9, 2 * (8 * S * S) * 10
    running = model[3].running_mean.clone()
    model.train()
    assert measure_pair(None, model, S) == (0.0, F1 + F2 + F3, F1 + 2 * F2 + 2 * F3)  # stem: no input gradient
    assert all(p.grad is None for p in model.parameters()) and model.training
    assert torch.equal(model[3].running_mean, running)  # BatchNorm statistics untouched


@pytest.mark.parametrize("name", ["tv/shufflenet_v2_x0_5", "tv/mobilenet_v3_small"])
def test_depthwise_students_backward_is_about_two_forwards(name):
    model = create_model(name, 1000)
    ratio = backward_flops(model, 224) / forward_flops(model, 224)
    assert 1.7 <= ratio <= 2.1, ratio  # below 2: the stem conv needs no input gradient


# ---------------------------------------------------------------------------------------------------------
# the measured convention and the budget


def test_measured_convention_from_the_energy_sums():
    Ft, Fs, Bs, N, k = 30.0, 1.0, 1.8, 256, 192
    e_kd = N * (Ft + Fs + Bs)
    e_unix = k * Ft + (N + k) * Fs + k * Bs
    assert unix_cost_ratio(Ft / Fs, N, k, bs_over_fs=Bs / Fs) == pytest.approx(e_unix / e_kd, rel=1e-12)


def test_k_for_budget():
    assert unix_k_for_budget(0.65, 64, 38.17) == 40  # the published k = 40 at 64.99 %
    assert unix_k_for_budget(0.7749, 64, 38.17) == 48  # k = 48 at 77.49 %
    for budget in (0.3, 0.5, 0.77, 0.9, 1.0):
        k = unix_k_for_budget(budget, 256, 44.8, bs_over_fs=1.8)
        assert unix_cost_ratio(44.8, 256, k, 1.8) <= budget + 1e-12
        assert k == 256 or unix_cost_ratio(44.8, 256, k + 1, 1.8) > budget
    with pytest.raises(ValueError, match="at or below what unix's scoring pass alone costs"):
        unix_k_for_budget(0.02, 64, 38.17)  # below the scoring forward's own cost


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


def test_ledger_both_conventions():
    Ft, Fs, Bs, N, k = 10.0, 2.0, 3.5, 64, 48
    ledger = run(CostLedger(Ft=Ft, Fs=Fs, Bs=Bs), [(N, k, N + k, k)] * 3)
    assert ledger.flops("paper") == pytest.approx(3 * (k * Ft + (N + k) * Fs + k * Fs))
    assert ledger.flops("measured") == pytest.approx(3 * (k * Ft + (N + k) * Fs + k * Bs))
    assert ledger.cost_fraction("measured") == pytest.approx(k / N + Fs / (Ft + Fs + Bs), rel=1e-12)
    m = ledger.metrics()
    assert m["cost_fraction"] == ledger.cost_fraction("paper") and m["flops_measured"] == ledger.flops("measured")
    with pytest.raises(ValueError, match="measured"):
        CostLedger(Ft=Ft, Fs=Fs).cost_fraction("measured")  # no B_s was measured


# ---------------------------------------------------------------------------------------------------------
# launch.py cost


def cost_json(capsys, *args):
    assert launch.main(["cost", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cost_command_from_a_ratio(capsys):
    r = cost_json(capsys, "--ft-over-fs", "38.17", "--batch-size", "64", "--k", "48")
    assert {"Ft", "Fs", "Bs", "ft_over_fs", "ratio_unix", "ratio_random"} <= r.keys()
    assert r["Ft"] is None and r["ratio_random"] == 0.75 and abs(100 * r["ratio_unix"] - 77.49) < 0.01
    r = cost_json(capsys, "--ft-over-fs", "38.17", "--batch-size", "64", "--k", "0.625", "--budget", "0.65")
    assert r["k"] == 40 and abs(100 * r["ratio_unix"] - 64.99) < 0.01 and r["k_unix_for_budget"] == 40


def test_cost_command_builds_the_models(capsys):
    r = cost_json(
        capsys,
        "--teacher",
        "test_resnet",
        "--student",
        "tv/shufflenet_v2_x0_5",
        "--image-size",
        "32",
        "--batch-size",
        "32",
        "--k",
        "24",
        "--num-classes",
        "10",
        "--convention",
        "measured",
    )
    student = create_model("tv/shufflenet_v2_x0_5", 10)
    Ft = forward_flops(create_model("test_resnet", 10), 32)
    Fs, Bs = forward_flops(student, 32), backward_flops(student, 32)
    assert (r["Ft"], r["Fs"], r["Bs"]) == (Ft, Fs, Bs) and r["ft_over_fs"] == pytest.approx(Ft / Fs)
    assert r["ratio_unix"] == pytest.approx(24 / 32 + Fs / (Ft + Fs + Bs), rel=1e-12)
    assert launch.main(["cost", "--ft-over-fs", "38.17", "--convention", "measured"]) == 2  # needs --bs-over-fs
    assert (
        launch.main(["cost", "--ft-over-fs", "38.17", "--convention", "meassured"]) == 2
    )  # a typo: one line, no traceback
    assert launch.main(["cost", "--ft-over-fs", "38.17", "--budget", "0.02"]) == 2  # below the scoring pass alone
