"""The CIFAR backbones: registered in timm, train at 32 px, expose stage features, and match the papers' numbers.

FLOPs are counted here directly with torch's FlopCounterMode (one eval forward of one 32×32 image), not with
training.cost. Published numbers: F_t/F_s from the UNIX paper's tables (and the authors' README), parameter
counts from the TL paper's appendix table.
"""

from __future__ import annotations

import hashlib

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from unixkd import training  # noqa: F401  (importing training registers the models)
from unixkd.pipeline.cifar import CIFAR100_MEAN, CIFAR100_STD
from unixkd.training.backbones import NAMES
from unixkd.training.models import create_model

EXPECTED = {
    "cifar_resnet8",
    "cifar_resnet14",
    "cifar_resnet20",
    "cifar_resnet32",
    "cifar_resnet44",
    "cifar_resnet56",
    "cifar_resnet110",
    "cifar_resnet8x4",
    "cifar_resnet32x4",
    "cifar_wrn_16_1",
    "cifar_wrn_16_2",
    "cifar_wrn_40_1",
    "cifar_wrn_40_2",
    "cifar_vgg8",
    "cifar_vgg11",
    "cifar_vgg13",
    "cifar_vgg16",
    "cifar_vgg19",
    "cifar_mobilenetv2",
    "cifar_shufflev1",
    "cifar_shufflev2",
    "cifar_resnet50",
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Batches of 1-3 images at 32 px gain nothing from intra-op threads, and on a shared CPU the threads' waiting
    made this file several times slower (under load: 87 s with one thread, over 6 min with two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def forward_flops(name: str) -> int:
    model = timm.create_model(name, num_classes=100).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    return counter.get_total_flops()


def params(name: str) -> int:
    return sum(p.numel() for p in timm.create_model(name, num_classes=100).parameters())


def test_every_paper_backbone_is_in_timms_registry():
    assert set(NAMES) == EXPECTED
    assert set(timm.list_models("cifar_*")) >= EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builds_and_trains_at_32px(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing[:3]

    model.eval()  # features: stem + every stage, shaped as feature_info says; the head on them gives forward()
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
        assert len(feats) == len(model.feature_info) >= 4
        for f, info in zip(feats, model.feature_info):
            assert f.shape == (2, info["num_chs"], 32 // info["reduction"], 32 // info["reduction"]), (f.shape, info)
        torch.testing.assert_close(model.forward_head(final), model(x))


def test_features_only_returns_the_intermediates():
    model = timm.create_model("cifar_wrn_16_1", num_classes=10).eval()
    features = timm.create_model("cifar_wrn_16_1", features_only=True)
    features.load_state_dict({"model." + k: v for k, v in model.state_dict().items() if not k.startswith("fc.")})
    features.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.forward_intermediates(x, intermediates_only=True)
        got = features(x)
    assert len(got) == 4 and all(torch.equal(a, b) for a, b in zip(got, expected))
    last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert all(torch.equal(a, b) for a, b in zip(last_two, expected[-2:]))
    assert features.feature_info.channels() == [16, 16, 32, 64]
    first_two = timm.create_model("cifar_wrn_16_1", features_only=True, out_indices=(0, 1))
    assert len(first_two.model.stages) == 1 and [f.shape[1] for f in first_two(x)] == [16, 16]  # pruned


def test_trainer_names_reach_them_and_pretrained_is_refused():
    assert create_model("cifar_resnet8", 10).fc.out_features == 10
    with pytest.raises(ValueError, match="pretrained"):
        create_model("cifar_resnet8", 10, pretrained=True)


@pytest.mark.parametrize(
    "teacher,student,published",
    [
        ("cifar_resnet32x4", "cifar_resnet8x4", 6.12),
        ("cifar_wrn_40_2", "cifar_wrn_16_2", 3.25),
        ("cifar_resnet56", "cifar_resnet20", 3.06),
        ("cifar_vgg13", "cifar_vgg8", 2.97),
    ],
)
def test_flop_ratios_match_the_unix_paper(teacher, student, published):
    assert forward_flops(teacher) / forward_flops(student) == pytest.approx(published, rel=0.03)


@pytest.mark.parametrize(
    "name,published_m", [("cifar_resnet32x4", 7.43), ("cifar_resnet8x4", 1.23), ("cifar_wrn_40_2", 2.25)]
)
def test_parameter_counts_match_the_tl_papers_table(name, published_m):
    assert params(name) / 1e6 == pytest.approx(published_m, rel=0.02)


def resnet_d_params(depth: int, stem: int, widths, num_classes: int = 100) -> int:
    """Hand count of the CIFAR resnet-d: 3×3 convs without bias, BN (2 per channel), 1×1 conv+BN shortcuts."""
    n = (depth - 2) // 6
    total = 3 * stem * 9 + 2 * stem
    c_in = stem
    for i, c in enumerate(widths):
        for j in range(n):
            total += c_in * c * 9 + 2 * c + c * c * 9 + 2 * c
            if c_in != c or (j == 0 and i > 0):
                total += c_in * c + 2 * c
            c_in = c
    return total + widths[-1] * num_classes + num_classes


@pytest.mark.parametrize(
    "name,depth,stem,widths",
    [
        ("cifar_resnet20", 20, 16, (16, 32, 64)),
        ("cifar_resnet110", 110, 16, (16, 32, 64)),
        ("cifar_resnet8x4", 8, 32, (64, 128, 256)),
    ],
)
def test_resnet_parameters_match_a_hand_count(name, depth, stem, widths):
    assert params(name) == resnet_d_params(depth, stem, widths)


# Recorded from the code before the backbones followed timm's model conventions: per model, the number
# of state_dict entries, of parameters, the forward FLOPs at 32 px and a digest of the state_dict's names, shapes
# and dtypes. Saved checkpoints load only while the names and shapes stay; the papers' numbers only while the
# parameters and FLOPs do. A change here is a change of the architecture, never a refactor.
STATE_DICT_SNAPSHOT = {
    "cifar_mobilenetv2": (320, 812836, 13047296, "72b8513d8815bc80"),
    "cifar_resnet110": (668, 1736564, 506311168, "9fdcf63e90f78890"),
    "cifar_resnet14": (92, 181108, 53326336, "4d77b9ab8830d062"),
    "cifar_resnet20": (128, 278324, 81637888, "863dbd1a861a0b61"),
    "cifar_resnet32": (200, 472756, 138260992, "91b2f490a7f3a7e8"),
    "cifar_resnet32x4": (206, 7433860, 2166081536, "d2c9e575a38fc72b"),
    "cifar_resnet44": (272, 667188, 194884096, "5beb65746c3b12d7"),
    "cifar_resnet50": (320, 23705252, 2596028416, "8a1a3a3779d00df6"),
    "cifar_resnet56": (344, 861620, 251507200, "d41def1ba6e7afbe"),
    "cifar_resnet8": (56, 83892, 25014784, "8ff13dc554e6c9de"),
    "cifar_resnet8x4": (62, 1233540, 354142208, "17ba242033bde220"),
    "cifar_shufflev1": (296, 949258, 77382912, "1edaea51ce90496d"),
    "cifar_shufflev2": (338, 1355528, 89008896, "f5226cf034bc9e68"),
    "cifar_vgg11": (58, 9277284, 418877440, "57045b512851a69a"),
    "cifar_vgg13": (72, 9462180, 569872384, "aaf8117c4632fd37"),
    "cifar_vgg16": (93, 14774436, 796364800, "981da62b3a84b049"),
    "cifar_vgg19": (114, 20086692, 1022857216, "2b3476b68b185bc9"),
    "cifar_vgg8": (37, 3965028, 192385024, "4de5b5e79b29c311"),
    "cifar_wrn_16_1": (82, 180916, 53326336, "389a7d083a7481fa"),
    "cifar_wrn_16_2": (83, 703284, 202236928, "6dab0d570e665497"),
    "cifar_wrn_40_1": (226, 569780, 166572544, "bd5934a3e87034f7"),
    "cifar_wrn_40_2": (227, 2255156, 655221760, "a7b207976bd9b977"),
}


def state_dict_digest(model: torch.nn.Module) -> str:
    lines = "\n".join(f"{k} {tuple(v.shape)} {v.dtype}" for k, v in model.state_dict().items())
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_state_dict_keys_params_and_flops_are_unchanged(name):
    model = timm.create_model(name, num_classes=100)
    got = (
        len(model.state_dict()),
        sum(p.numel() for p in model.parameters()),
        forward_flops(name),
        state_dict_digest(model),
    )
    assert got == STATE_DICT_SNAPSHOT[name]


# --- timm's own model tests, ported ----------------------------------------------------------------------------
# timm holds its models to tests/test_models.py of huggingface/pytorch-image-models; these follow the tests named in
# each docstring, run over all 22 backbones at their cfg's input size (32 px, what timm's _get_input_size gives),
# and compare outputs bitwise where timm does (fx) and, beyond timm, for TorchScript and grad checkpointing too.

MODELS = sorted(EXPECTED)
INPUT = (3, 32, 32)


def fx_tracer_kwargs() -> dict:
    """What timm's FX feature extraction traces with: its registered leaf modules and wrapped functions."""
    from timm.models import get_notrace_functions, get_notrace_modules

    return dict(
        leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(), param_shapes_constant=True
    )


def fx_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model's FX graph returning its last node, the fc (logits), in train and eval mode, as timm's
    _create_fx_model builds it (which looks the last node up with get_graph_node_names: two more traces)."""
    from torchvision.models.feature_extraction import create_feature_extractor

    return create_feature_extractor(model, return_nodes=["fc"], tracer_kwargs=fx_tracer_kwargs())


def only_output(out: dict) -> torch.Tensor:
    (value,) = out.values()
    return value


@pytest.mark.parametrize("name", MODELS)
def test_model_default_cfgs(name):
    """timm test_model_default_cfgs: the cfg agrees with the model (pool_size, num_features, head_hidden_size,
    classifier and first_conv names), the head can be removed with and without pooling, at construction too."""
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    assert model.num_classes == cfg["num_classes"] == 100 and model.num_features > 0 and model.head_hidden_size > 0
    assert cfg["input_size"] == INPUT and cfg["fixed_input_size"] is False and cfg["crop_pct"] == 1.0
    assert (cfg["mean"], cfg["std"]) == (CIFAR100_MEAN, CIFAR100_STD)
    state_dict = model.state_dict()
    assert cfg["classifier"] + ".weight" in state_dict and cfg["first_conv"] + ".weight" in state_dict
    assert state_dict[cfg["first_conv"] + ".weight"].shape[1] == 3
    assert tuple(state_dict[cfg["classifier"] + ".weight"].shape) == (100, model.head_hidden_size)

    x = torch.randn(1, *INPUT)
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert features.shape[1:] == (model.num_features, *cfg["pool_size"])
        assert pre_logits.shape == (1, model.head_hidden_size)
        model.reset_classifier(0)  # pooled features
        assert model.num_classes == 0 and model(x).shape == pre_logits.shape
        model.reset_classifier(0, "")  # no pooling either: the last feature map
        assert model(x).shape == features.shape
        unpooled = timm.create_model(name, num_classes=0, global_pool="").eval()
        assert unpooled(x).shape == features.shape


@pytest.mark.parametrize("name", MODELS)
def test_timm_data_config_is_cifars(name):
    """timm.data.resolve_model_data_config (what timm's train/validate scripts read): 32 px, CIFAR-100 mean/std."""
    from timm.data import resolve_model_data_config

    config = resolve_model_data_config(timm.create_model(name))
    assert config["input_size"] == INPUT and config["crop_pct"] == 1.0
    assert (config["mean"], config["std"]) == (CIFAR100_MEAN, CIFAR100_STD)


@pytest.mark.parametrize("name", MODELS)
def test_model_forward_fx(name):
    """timm test_model_forward_fx: the FX graph (timm's tracer settings) gives the eager output exactly; and so does
    a plain torch.fx.symbolic_trace, at 32 px and 64 px (the traced graph is not specialised to one size)."""
    model = timm.create_model(name).eval()
    traced, plain = fx_model(model), torch.fx.symbolic_trace(model)
    with torch.inference_mode():
        x = torch.randn(1, *INPUT)
        expected = model(x)
        assert torch.equal(only_output(traced(x)), expected) and not torch.isnan(expected).any()
        for size in (32, 64):
            x = torch.randn(1, 3, size, size)
            assert torch.equal(plain(x), model(x)), size


@pytest.mark.parametrize("name", MODELS)
def test_model_backward_fx(name):
    """timm test_model_backward_fx: the train-mode FX graph back-propagates into every parameter."""
    model = timm.create_model(name, num_classes=42).train()
    graph = fx_model(model)
    out = only_output(graph(torch.randn(2, *INPUT)))
    out.mean().backward()
    assert out.shape == (2, 42) and not torch.isnan(out).any()
    missing = [n for n, p in graph.named_parameters() if p.grad is None]
    assert not missing, missing[:3]
    assert sum(p.numel() for p in graph.parameters()) == sum(p.numel() for p in model.parameters())


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("name", MODELS)
def test_model_forward_torchscript(name):
    """timm test_model_forward_torchscript and test_model_forward_fx_torchscript: the scripted model and the
    scripted FX graph run, and give the eager output bitwise."""
    with timm.layers.set_scriptable(True):
        model = timm.create_model(name).eval()
    x = torch.randn(1, *INPUT)
    with torch.inference_mode():
        expected = model(x)
        assert torch.equal(torch.jit.script(model)(x), expected)
        assert torch.equal(only_output(torch.jit.script(fx_model(model))(x)), expected)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("name", MODELS)
def test_model_forward_torchscript_with_features_fx(name):
    """timm test_model_forward_torchscript_with_features_fx (there for regnetx_002 only): features_only with
    feature_cls="fx", scripted; its features are forward_intermediates', also for a choice of out_indices."""
    model = timm.create_model(name).eval()
    x = torch.randn(1, *INPUT)
    with torch.inference_mode():
        expected = model.forward_intermediates(x, intermediates_only=True)
        with timm.layers.set_scriptable(True):
            features = timm.create_model(name, features_only=True, feature_cls="fx")
        missing, unexpected = features.load_state_dict(  # the graph keeps the model's names, less what follows
            {"graph_module." + k: v for k, v in model.state_dict().items()}, strict=False
        )  # the last stage
        assert not missing and all(k.startswith(("graph_module.final.", "graph_module.fc.")) for k in unexpected)
        got = torch.jit.script(features.eval())(x)
        assert isinstance(got, list) and len(got) == len(expected)
        assert all(torch.equal(a, b) for a, b in zip(got, expected))
        last = len(expected) - 1
        some = timm.create_model(name, features_only=True, feature_cls="fx", out_indices=(1, last))
        assert some.feature_info.channels() == [model.feature_info[i]["num_chs"] for i in (1, last)]
        assert [f.shape for f in some(x)] == [expected[1].shape, expected[last].shape]


@pytest.mark.parametrize("name", MODELS)
def test_model_forward_features(name):
    """timm test_model_forward_features and test_model_forward_intermediates_features: features_only (default,
    feature_cls="getter" and "hook") gives >= 3 levels shaped as its feature_info says. ("list"/"dict" rebuild the
    net from its top-level children and cannot reach stages.i; timm's getter-based models, e.g. its ViTs, refuse
    them alike.)"""
    x = torch.randn(1, *INPUT)
    for kwargs in ({}, dict(feature_cls="getter"), dict(feature_cls="hook")):
        model = timm.create_model(name, features_only=True, **kwargs).eval()
        channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
        assert len(channels) >= 3
        with torch.no_grad():
            outputs = model(x)
        assert len(outputs) == len(channels)
        for c, r, o in zip(channels, reductions, outputs):
            assert o.shape == (1, c, 32 // r, 32 // r) and not torch.isnan(o).any()


@pytest.mark.parametrize("name", MODELS)
def test_model_forward_intermediates_and_grad_checkpointing(name):
    """timm test_model_forward_intermediates and the grad-checkpointing part of test_model_forward: the
    intermediates follow FeatureInfo, the last map is forward_features'; with grad checkpointing on, forward and
    forward_intermediates give the same outputs bitwise, and every parameter still gets its gradient."""
    model = timm.create_model(name).eval()
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    x = torch.randn(1, *INPUT)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        assert [f.shape[1] for f in intermediates] == info.channels()
        assert [32 // f.shape[-1] for f in intermediates] == info.reduction()
        assert torch.equal(final, model.forward_features(x))
        logits = model(x)
        model.set_grad_checkpointing()
        assert torch.equal(model(x), logits)
        final_ckpt, intermediates_ckpt = model.forward_intermediates(x)
        assert torch.equal(final_ckpt, final)
        assert all(torch.equal(a, b) for a, b in zip(intermediates_ckpt, intermediates))
    model.train()
    model(torch.randn(2, *INPUT)).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing[:3]


@pytest.mark.parametrize("name", MODELS)
def test_classifier_interface(name):
    """timm's get_classifier / reset_classifier / forward_head(pre_logits=True) / num_features / head_hidden_size:
    a new head of any size or pooling type, on the model's device and dtype."""
    model = timm.create_model(name).eval()
    assert model.get_classifier() is model.fc
    x = torch.randn(2, *INPUT)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        model.reset_classifier(5)
        assert model(x).shape == (2, 5) and model.get_classifier().out_features == 5
        assert torch.equal(model.forward_head(model.forward_features(x), pre_logits=True), pooled)  # pool kept
        model.reset_classifier(3, "catavgmax")  # timm's pool types; catavgmax doubles the features
        assert model.head_hidden_size == 2 * model.num_features and model(x).shape == (2, 3)
    with pytest.raises(ValueError, match="num_classes=0"):
        model.reset_classifier(10, "")
    double = timm.create_model(name).double()
    double.reset_classifier(4)
    assert double.fc.weight.dtype == torch.float64


@pytest.mark.parametrize("name", MODELS)
def test_group_matcher_covers_every_parameter_in_order(name):
    """timm's group_matcher, as its optimizer factory reads it (timm tests/test_optim.py): every parameter in one
    group, the stem's first and the classifier's last, coarse (per stage) and fine; layer decay builds groups."""
    from timm.models import group_parameters
    from timm.optim import param_groups_layer_decay

    model = timm.create_model(name)
    names = [n for n, _ in model.named_parameters()]
    for coarse in (True, False):
        layer_of = group_parameters(model, model.group_matcher(coarse=coarse), reverse=True)
        assert sorted(layer_of) == sorted(names)
        stem = {layer_of[n] for n in names if n.startswith("stem.")}
        fc = {layer_of[n] for n in names if n.startswith("fc.")}
        assert stem == {0} and fc == {max(layer_of.values())}
        stages = [layer_of[n] for n in names if n.startswith("stages.")]
        assert stages == sorted(stages) and min(stages) > 0 and max(stages) < min(fc)
    assert len({layer_of[n] for n in names}) > len(model.stages) + 1  # fine: finer than per stage
    groups = param_groups_layer_decay(model, weight_decay=5e-4, layer_decay=0.75)
    assert sum(len(g["params"]) for g in groups) == len(names)


@pytest.mark.parametrize("name", MODELS)
def test_at_sp_taps_are_the_stage_outputs(name):
    """features.default_layers (every stage) hooked in the ordinary forward gives forward_intermediates' stage
    outputs bitwise; with grad checkpointing on, the hooked features still carry their autograd graph (AT's
    gradient reaches the student)."""
    from unixkd.training.features import capture, default_layers

    model = timm.create_model(name).eval()
    layers = default_layers(name, model)
    assert layers == [f"stages.{i}" for i in range(len(model.stages))]
    x = torch.randn(2, *INPUT)
    with torch.no_grad(), capture(model, layers) as feats:
        model(x)
    expected = model.forward_intermediates(x, indices=list(range(1, len(layers) + 1)), intermediates_only=True)
    assert all(torch.equal(a, b) for a, b in zip(feats, expected))
    model.set_grad_checkpointing()
    with capture(model, layers) as feats:
        model(x)
    assert all(f.grad_fn is not None for f in feats)


@pytest.mark.parametrize("width", range(1, 18))
def test_vgg_pool_kernel_arithmetic_is_the_shape_test_it_replaces(width):
    """MaxPoolAbove computes its kernel without a Python if (so FX traces it); that equals the if it replaced."""
    from unixkd.training.backbones.cifar_vgg import MaxPoolAbove

    x = torch.randn(1, 2, width, width)
    before = torch.nn.functional.max_pool2d(x, 2) if width > 4 else x
    assert torch.equal(MaxPoolAbove(4)(x), before)
