"""training.features: AT and SP against hand-computed values, gradients, layer defaults and the forward taps."""

import math

import pytest
import torch
import torch.nn.functional as F

from unixkd.training.features import at_loss, capture, default_layers, feature_loss, resolve_layers, sp_loss
from unixkd.training.models import create_model


def test_at_hand_values():
    # a(f) = normalize(mean_c f²): f_s -> [1, 0], f_t -> [0, 4] -> [0, 1]; mean of (1, -1)² = 1
    f_s = torch.tensor([[[[1.0, 0.0]]]])
    f_t = torch.tensor([[[[0.0, 2.0]]]])
    assert at_loss(f_s, f_t).item() == pytest.approx(1.0)
    # two channels, two images: image 0 maps [(1+1)/2, (0+4)/2] = [1, 2] -> [1, 2]/√5; image 1 equal to the teacher
    f_s = torch.tensor([[[[1.0, 0.0]], [[1.0, 2.0]]], [[[3.0, 1.0]], [[0.0, 0.0]]]])
    f_t = torch.tensor([[[[1.0, 1.0]], [[1.0, 1.0]]], [[[3.0, 1.0]], [[0.0, 0.0]]]])
    a = torch.tensor([1.0, 2.0]) / math.sqrt(5)
    b = torch.tensor([1.0, 1.0]) / math.sqrt(2)
    assert at_loss(f_s, f_t).item() == pytest.approx(((a - b) ** 2).sum().item() / 4, rel=1e-6)


def test_sp_hand_value():
    # student rows orthogonal: G_s = I; teacher rows equal: G_t rows [1, 1]/√2
    f_s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    f_t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert sp_loss(f_s, f_t).item() == pytest.approx(1 - math.sqrt(2) / 2, rel=1e-6)


def test_zero_for_identical_features_and_scale_free():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(4, 6, 5, 5, generator=g)
    assert at_loss(f, f.clone()).item() == 0.0
    assert sp_loss(f, f.clone()).item() == pytest.approx(0.0, abs=1e-12)
    assert at_loss(3 * f, f).item() == pytest.approx(0.0, abs=1e-12)  # both normalize away the scale
    assert sp_loss(3 * f, f).item() == pytest.approx(0.0, abs=1e-12)
    assert at_loss(f, torch.randn(4, 6, 5, 5, generator=g)).item() > 0


def test_at_pools_the_larger_map_to_the_smaller():
    g = torch.Generator().manual_seed(1)
    f_s, f_t = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 8, 2, 2, generator=g)
    assert at_loss(f_s, f_t).item() == pytest.approx(at_loss(F.avg_pool2d(f_s, 2), f_t).item(), rel=1e-6)
    assert at_loss(f_t, f_s).item() == pytest.approx(at_loss(f_t, F.avg_pool2d(f_s, 2)).item(), rel=1e-6)


@pytest.mark.parametrize("kind", ["at", "sp"])
def test_gradient_reaches_the_student_only(kind):
    g = torch.Generator().manual_seed(2)
    s = [torch.randn(3, 4, 4, 4, generator=g, requires_grad=True) for _ in range(2)]
    t = [torch.randn(3, 5, 4, 4, generator=g, requires_grad=True) for _ in range(2)]
    feature_loss(kind, s, t).backward()
    assert all(f.grad is None for f in t)
    used = s if kind == "at" else s[-1:]  # SP: the last layer only
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in used)
    if kind == "sp":
        assert s[0].grad is None


def test_at_sums_the_layers_and_sp_takes_the_last():
    g = torch.Generator().manual_seed(3)
    s = [torch.randn(2, 3, 4, 4, generator=g) for _ in range(3)]
    t = [torch.randn(2, 3, 4, 4, generator=g) for _ in range(3)]
    assert feature_loss("at", s, t).item() == pytest.approx(sum(at_loss(a, b).item() for a, b in zip(s, t)), rel=1e-6)
    assert feature_loss("sp", s, t).item() == pytest.approx(sp_loss(s[2], t[2]).item(), rel=1e-6)


def test_at_refuses_token_features():
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        at_loss(torch.zeros(2, 5, 8), torch.zeros(2, 5, 8))


# ---- which layers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,want",
    [
        ("tv/resnet18", ["layer2", "layer3", "layer4"]),
        ("tv/shufflenet_v2_x0_5", ["stage2", "stage3", "stage4"]),
        ("test_resnet", ["layer2", "layer3", "layer4"]),  # timm feature_info
        ("test_convnext", ["stages.1", "stages.2", "stages.3"]),
    ],
)
def test_default_layers_are_the_last_three_stages(name, want):
    assert default_layers(name, create_model(name, 10)) == want


# The authors' AT layers: `feat[1:-1]` of `model(x, is_feat=True)` (UNIXKD student_v0.py, CRD helper/loops.py
# and train_student.py), read off their model code at 32 px (RepDistiller models/*.py forward, identical in
# UNIXKD/models): (channels, H, W) of each map, i.e. every stage output between the stem f0 and the pooled vector.
AUTHORS_FEAT_1_TO_MINUS_1 = {
    "cifar_vgg8": [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)],  # vgg.py f1..f4 (no pool3 at 32 px)
    "cifar_vgg13": [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)],
    "cifar_mobilenetv2": [(12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)],  # after blocks[1], [2], [4], [6]
    "cifar_resnet50": [(256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4)],  # resnetv2.py layer1..4
    "cifar_resnet8x4": [(64, 32, 32), (128, 16, 16), (256, 8, 8)],  # resnet.py layer1..3
    "cifar_resnet32x4": [(64, 32, 32), (128, 16, 16), (256, 8, 8)],
    "cifar_resnet56": [(16, 32, 32), (32, 16, 16), (64, 8, 8)],
    "cifar_resnet20": [(16, 32, 32), (32, 16, 16), (64, 8, 8)],
    "cifar_wrn_16_2": [(32, 32, 32), (64, 16, 16), (128, 8, 8)],  # wrn.py block1..3
    "cifar_wrn_40_2": [(32, 32, 32), (64, 16, 16), (128, 8, 8)],
    "cifar_shufflev1": [(240, 16, 16), (480, 8, 8), (960, 4, 4)],  # ShuffleNetv1.py layer1..3
    "cifar_shufflev2": [(116, 16, 16), (232, 8, 8), (464, 4, 4)],  # ShuffleNetv2.py layer1..3
}


@pytest.mark.parametrize("name", list(AUTHORS_FEAT_1_TO_MINUS_1))
def test_cifar_backbone_default_layers_are_the_authors_feat_1_to_minus_1(name):
    model = create_model(name, 100).eval()
    layers = default_layers(name, model)
    want = AUTHORS_FEAT_1_TO_MINUS_1[name]
    assert len(layers) == len(want)
    with torch.no_grad(), capture(model, layers) as feats:
        model(torch.randn(2, 3, 32, 32))
    assert [tuple(f.shape[1:]) for f in feats] == want


def test_cross_architecture_defaults_pair_the_first_stages_as_the_authors_zip():
    r32x4, vgg8 = create_model("cifar_resnet32x4", 100), create_model("cifar_vgg8", 100)
    vgg13, mnv2 = create_model("cifar_vgg13", 100), create_model("cifar_mobilenetv2", 100)
    # 3 teacher maps, 4 student maps: zip(g_s, g_t) pairs f1..f3 of both, the student's f4 takes no part
    assert resolve_layers("cifar_resnet32x4", r32x4, "cifar_vgg8", vgg8, [], []) == (
        ["stages.0", "stages.1", "stages.2"],
        ["stages.0", "stages.1", "stages.2"],
    )
    assert resolve_layers("cifar_vgg8", vgg8, "cifar_resnet32x4", r32x4, [], [])[0] == [
        "stages.0",
        "stages.1",
        "stages.2",
    ]
    # the published cross-architecture pairs have equal counts: all four maps of each
    assert resolve_layers("cifar_vgg13", vgg13, "cifar_mobilenetv2", mnv2, [], []) == (
        ["stages.0", "stages.1", "stages.2", "stages.3"],
        ["stages.0", "stages.1", "stages.2", "stages.3"],
    )
    with pytest.raises(ValueError, match="teacher cifar_resnet32x4 has 3"):  # a given list must match
        resolve_layers("cifar_resnet32x4", r32x4, "cifar_vgg8", vgg8, [], ["stages.0", "stages.1"])


def test_unknown_torchvision_family_asks_for_names():
    with pytest.raises(ValueError, match="loss.teacher_layers / loss.student_layers"):
        default_layers("tv/mobilenet_v2", create_model("tv/mobilenet_v2", 10))


def test_stage_count_mismatch_and_unknown_names_are_one_line():
    t, s = create_model("test_resnet", 10), create_model("tv/shufflenet_v2_x0_5", 10)
    assert resolve_layers("test_resnet", t, "tv/shufflenet_v2_x0_5", s, [], []) == (
        ["layer2", "layer3", "layer4"],
        ["stage2", "stage3", "stage4"],
    )
    with pytest.raises(
        ValueError,
        match=r"teacher test_resnet has 2 \(layer3, layer4\) but student "
        r"tv/shufflenet_v2_x0_5 has 3",
    ) as e:
        resolve_layers("test_resnet", t, "tv/shufflenet_v2_x0_5", s, ["layer3", "layer4"], [])
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="loss.student_layers: model 'tv/shufflenet_v2_x0_5' has no module 'layer9'"):
        resolve_layers("test_resnet", t, "tv/shufflenet_v2_x0_5", s, ["layer4"], ["layer9"])


def test_capture_returns_the_stage_outputs_of_the_ordinary_forward():
    model = create_model("test_resnet", 10).eval()  # timm ResNet: conv1 bn1 act1 maxpool layer1..4 head
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        with capture(model, ["layer4", "layer2"]) as feats:
            logits = model(x)
        h = model.maxpool(model.act1(model.bn1(model.conv1(x))))
        l2 = model.layer2(model.layer1(h))
        l4 = model.layer4(model.layer3(l2))
        torch.testing.assert_close(feats[1], l2)
        torch.testing.assert_close(feats[0], l4)
        torch.testing.assert_close(logits, model(x))
    assert not model.layer4._forward_hooks and not model.layer2._forward_hooks  # removed on exit
