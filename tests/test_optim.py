"""training.optim: the lr multiplier per iteration, and SGD's parameter groups, against hand-computed values."""

import math

import pytest
import torch
from torch import nn

from unixkd.training.config import OptimConfig
from unixkd.training.optim import build_optimizer, build_scheduler, lr_factor

SPE = 10  # steps per epoch


def factors(cfg, steps, total_epochs=90):
    return [lr_factor(s, SPE, total_epochs, cfg) for s in steps]


def test_step_decay_at_the_milestones():
    cfg = OptimConfig(schedule="step", milestones=[30, 60], gamma=0.1)
    got = factors(cfg, [0, 150, 299, 300, 301, 599, 600, 899])
    assert got == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01], rel=1e-12)


def test_cosine_from_one_to_zero():
    cfg = OptimConfig(schedule="cosine")
    start, quarter, half, end = factors(cfg, [0, 225, 450, 899])
    assert start == pytest.approx(1.0)
    assert quarter == pytest.approx((1 + math.sqrt(0.5)) / 2)  # cos(pi/4) = sqrt(1/2)
    assert half == pytest.approx(0.5)
    assert 0 <= end < 1e-4
    assert lr_factor(900, SPE, 90, cfg) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(2000, SPE, 90, cfg) == pytest.approx(0.0, abs=1e-12)  # past the end: stays at 0
    curve = factors(cfg, range(900))
    assert all(a >= b for a, b in zip(curve, curve[1:]))


def test_warmup_is_a_linear_ramp_then_the_schedule():
    cfg = OptimConfig(schedule="constant", warmup_epochs=2)
    assert factors(cfg, range(20)) == pytest.approx([(s + 1) / 20 for s in range(20)])
    assert factors(cfg, [20, 500]) == [1.0, 1.0]
    cos = OptimConfig(schedule="cosine", warmup_epochs=2)
    assert lr_factor(9, SPE, 12, cos) == pytest.approx(0.5)
    assert lr_factor(20, SPE, 12, cos) == pytest.approx(1.0)  # cosine starts after the warmup ...
    assert lr_factor(70, SPE, 12, cos) == pytest.approx(0.5)  # ... and spans the remaining 10 epochs
    step = OptimConfig(schedule="step", milestones=[30, 60], warmup_epochs=5)
    assert factors(step, [0, 49, 50, 300, 600]) == pytest.approx([0.02, 1.0, 1.0, 0.1, 0.01])


def test_constant_is_one():
    assert set(factors(OptimConfig(schedule="constant"), [0, 1, 450, 899, 5000])) == {1.0}


def test_scheduler_sets_the_lr_per_iteration():
    p = nn.Parameter(torch.zeros(2))
    cfg = OptimConfig(lr=0.1, schedule="step", milestones=[1, 2])
    opt = build_optimizer(nn.ParameterList([p]), cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch=3, total_epochs=3)
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001])


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_one_d_params_get_no_weight_decay():
    net = Net()
    opt = build_optimizer(net, OptimConfig(lr=0.1, weight_decay=5e-4))
    groups = {g["weight_decay"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    assert groups == {
        5e-4: {id(net.conv.weight), id(net.fc.weight)},
        0.0: {id(net.conv.bias), id(net.bn.weight), id(net.bn.bias), id(net.fc.bias)},
    }


def test_decay_norm_and_bias_decays_every_trainable_param_in_the_same_two_groups():
    net = Net()
    default = build_optimizer(net, OptimConfig(lr=0.1, weight_decay=5e-4))
    every = build_optimizer(net, OptimConfig(lr=0.1, weight_decay=5e-4, decay_norm_and_bias=True))
    one_d = [id(net.conv.bias), id(net.bn.weight), id(net.bn.bias), id(net.fc.bias)]
    assert [[id(p) for p in g["params"]] for g in every.param_groups] == [
        [id(net.conv.weight), id(net.fc.weight)],
        one_d,
    ]  # the same layout as the default: a resume loads either
    assert [len(g["params"]) for g in every.param_groups] == [len(g["params"]) for g in default.param_groups]
    assert [g["weight_decay"] for g in every.param_groups] == [5e-4, 5e-4]
    assert [g["weight_decay"] for g in default.param_groups] == [5e-4, 0.0]
    assert id(net.frozen.weight) not in {id(p) for g in every.param_groups for p in g["params"]}


@pytest.mark.parametrize("nesterov", [False, True])
def test_decay_norm_and_bias_steps_as_plain_torch_sgd_over_model_parameters(nesterov):
    """The authors' optimizer, `optim.SGD(model.parameters(), weight_decay=wd)`, is the reference: same weights
    after several steps with momentum (BN weights and biases decayed too)."""
    torch.manual_seed(0)
    ours_net = Net()
    ref_net = Net()
    ref_net.load_state_dict(ours_net.state_dict())
    wd, lr = 5e-2, 0.1
    ours = build_optimizer(
        ours_net, OptimConfig(lr=lr, momentum=0.9, nesterov=nesterov, weight_decay=wd, decay_norm_and_bias=True)
    )
    ref = torch.optim.SGD(
        [p for p in ref_net.parameters() if p.requires_grad], lr=lr, momentum=0.9, nesterov=nesterov, weight_decay=wd
    )
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        for a, b in zip(ours_net.parameters(), ref_net.parameters()):
            if a.requires_grad:
                a.grad = torch.randn(a.shape, generator=g)
                b.grad = a.grad.clone()
        ours.step()
        ref.step()
    for (name, a), b in zip(ours_net.named_parameters(), ref_net.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert not torch.equal(ours_net.bn.weight, torch.ones(4))  # the BN weight moved (decay + gradient)


def test_weight_decay_acts_on_weights_only():
    torch.manual_seed(0)
    net = Net()
    opt = build_optimizer(net, OptimConfig(lr=0.1, momentum=0.0, weight_decay=0.5))
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in net.named_parameters():
        shrunk = before[name] * (1 - 0.1 * 0.5) if p.ndim > 1 and p.requires_grad else before[name]
        torch.testing.assert_close(p.detach(), shrunk, msg=name)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_hyperparameters_pass_through(nesterov):
    opt = build_optimizer(Net(), OptimConfig(lr=0.3, momentum=0.8, nesterov=nesterov))
    assert type(opt) is torch.optim.SGD
    for g in opt.param_groups:
        assert (g["lr"], g["momentum"], g["nesterov"]) == (0.3, 0.8, nesterov)
