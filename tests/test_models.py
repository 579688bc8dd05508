"""training.models: names -> classifiers with the requested head; checkpoints in every common layout."""

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from unixkd.training.models import ModelError, create_model, load_checkpoint

TINY = "test_resnet"  # timm's smallest ResNet, built in milliseconds


def one_line_error(fn, *needles):
    with pytest.raises(ModelError) as info:
        fn()
    message = str(info.value)
    assert message and "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


def saved_state(num_classes=5, seed=1):
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in create_model(TINY, num_classes).state_dict().items()}


def assert_holds(model, state):
    own = model.state_dict()
    assert own.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(own[key], value), key


# ---------------------------------------------------------------------------------------------------------
# names


@pytest.mark.parametrize("num_classes", [3, 17])
def test_timm_name_has_the_requested_head(num_classes):
    model = create_model(TINY, num_classes).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, num_classes)


def test_tv_prefix_builds_a_torchvision_model():
    model = create_model("tv/resnet18", 7).eval()
    assert type(model) is torchvision.models.ResNet and model.fc.out_features == 7
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 7)
    assert type(create_model("tv/shufflenet_v2_x0_5", 4)) is torchvision.models.ShuffleNetV2


@pytest.mark.parametrize(
    "name,needle",
    [("no_such_net", "no_such_net"), ("tv/no_such_net", "no_such_net"), ("resnet_18", "resnet_18"), ("tv/", "tv/")],
)
def test_unknown_name_is_one_line(name, needle):
    one_line_error(lambda: create_model(name, 10), needle)


def test_tv_pretrained_is_refused():
    one_line_error(lambda: create_model("tv/resnet18", 10, pretrained=True), "tv/resnet18")


# ---------------------------------------------------------------------------------------------------------
# checkpoint layouts: the loaded weights are the saved ones


LAYOUTS = {
    "plain": lambda s: s,
    "state_dict": lambda s: {"state_dict": s, "epoch": 3},
    "model": lambda s: {"model": s, "optimizer": {}},
    "module_prefix": lambda s: {"module." + k: v for k, v in s.items()},
    "nested_state_dict_module": lambda s: {"state_dict": {"module." + k: v for k, v in s.items()}},
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_pth_layouts_load_the_saved_weights(tmp_path, layout):
    state = saved_state(seed=1)
    path = tmp_path / "w.pth"
    torch.save(LAYOUTS[layout](state), path)
    torch.manual_seed(2)
    model = create_model(TINY, 5)
    assert not all(torch.equal(model.state_dict()[k], v) for k, v in state.items())  # differs before loading
    load_checkpoint(model, str(path))
    assert_holds(model, state)


def test_safetensors_through_create_model(tmp_path):
    state = saved_state(seed=3)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    torch.manual_seed(4)
    assert_holds(create_model(TINY, 5, checkpoint=str(path)), state)


def test_torchvision_model_from_pth(tmp_path):
    torch.manual_seed(5)
    state = {k: v.clone() for k, v in create_model("tv/shufflenet_v2_x0_5", 6).state_dict().items()}
    torch.save(state, tmp_path / "tv.pth")
    torch.manual_seed(6)
    assert_holds(create_model("tv/shufflenet_v2_x0_5", 6, checkpoint=str(tmp_path / "tv.pth")), state)


# ---------------------------------------------------------------------------------------------------------
# bad checkpoints: one line that names the file, and the model keeps its weights


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pth"
    one_line_error(lambda: create_model(TINY, 5, checkpoint=str(path)), str(path))


@pytest.mark.parametrize(
    "name,content",
    [
        ("garbage.pth", b"this is not a checkpoint"),
        ("empty.pth", b""),
        ("zip.pth", b"PK\x03\x04 truncated"),
        ("garbage.safetensors", b"\x00" * 3),
        ("empty.safetensors", b""),
    ],
)
def test_unreadable_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    one_line_error(lambda: load_checkpoint(create_model(TINY, 5), str(path)), str(path), "could not be read")


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    one_line_error(lambda: load_checkpoint(create_model(TINY, 5), str(path)), str(path))


def test_wrong_num_classes_is_a_shape_mismatch(tmp_path):
    path = tmp_path / "seven.safetensors"
    save_file({k: v.contiguous() for k, v in saved_state(num_classes=7).items()}, str(path))
    torch.manual_seed(0)
    model = create_model(TINY, 5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    one_line_error(lambda: load_checkpoint(model, str(path)), str(path), "shape", "(7,")
    assert_holds(model, before)  # nothing half-loaded


def test_missing_and_unexpected_keys(tmp_path):
    state = saved_state()
    dropped = sorted(state)[0]
    missing = {k: v for k, v in state.items() if k != dropped}
    torch.save(missing, tmp_path / "missing.pth")
    one_line_error(
        lambda: load_checkpoint(create_model(TINY, 5), str(tmp_path / "missing.pth"), name="teacher"),
        str(tmp_path / "missing.pth"),
        "missing",
        dropped,
        "teacher",
    )
    torch.save({**state, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    one_line_error(
        lambda: load_checkpoint(create_model(TINY, 5), str(tmp_path / "extra.pth")),
        str(tmp_path / "extra.pth"),
        "unexpected",
        "extra.weight",
    )
