"""training.config: YAML + dotted overrides, type coercion, round trip, and one-line errors that name the key."""

from pathlib import Path

import pytest

from unixkd.training.config import Config, ConfigError, apply_override, load_config, save_config, validate

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "configs" / "demo.yaml"
IMAGENET = sorted((REPO / "configs" / "imagenet").glob("*.yaml"))
NEEDED = ["data.root=/tmp", "model.teacher_checkpoint=x.pth"]  # what the ImageNet recipes leave to the user


# ---------------------------------------------------------------------------------------------------------
# overrides parse into the annotated types


def test_demo_loads_as_written():
    cfg = load_config(str(DEMO))
    assert (cfg.data.dataset, cfg.data.batch_size, cfg.selection.k) == ("digits", 64, 48)
    assert cfg.data.crop_scale == [0.5, 1.0] and cfg.data.hflip is False
    assert cfg.mixed_precision == "no"  # unquoted in the file: YAML 1.1 reads it as false, the loader maps it back


def test_k_fraction_and_count_keep_their_type():
    frac = load_config(str(DEMO), ["selection.k=0.75"]).selection.k
    count = load_config(str(DEMO), ["selection.k=48"]).selection.k
    assert type(frac) is float and frac == 0.75
    assert type(count) is int and count == 48


def test_bool_list_and_int_to_float_coercion():
    cfg = load_config(
        str(DEMO), ["data.hflip=true", "data.crop_scale=[0.25,1.0]", "optim.lr=1", "data.crop_ratio=[1, 2]", "seed=7"]
    )
    assert cfg.data.hflip is True
    assert cfg.data.crop_scale == [0.25, 1.0]
    assert type(cfg.optim.lr) is float and cfg.optim.lr == 1.0
    assert [type(v) for v in cfg.data.crop_ratio] == [float, float] and cfg.data.crop_ratio == [1.0, 2.0]
    assert cfg.seed == 7
    assert load_config(str(DEMO), ["data.hflip=false"]).data.hflip is False


def test_exponent_floats_and_bare_no():
    # PyYAML (YAML 1.1) reads `1e-3` as a string and `no` as false; both are ordinary command-line values
    cfg = load_config(str(DEMO), ["optim.lr=1e-3", "optim.weight_decay=5E-4", "mixed_precision=no"])
    assert cfg.optim.lr == pytest.approx(0.001) and cfg.optim.weight_decay == pytest.approx(0.0005)
    assert cfg.mixed_precision == "no"


def test_overrides_win_over_file_and_apply_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "data: {dataset: digits, batch_size: 32}\nmodel: {teacher_checkpoint: t.pth}\n"
        "selection: {k: 16}\noptim: {lr: 2}\n"
    )
    cfg = load_config(str(path), ["selection.k=8", "selection.k=24"])
    assert cfg.selection.k == 24 and cfg.data.batch_size == 32
    assert type(cfg.optim.lr) is float and cfg.optim.lr == 2.0  # int in the file -> float


def test_apply_override_then_validate():
    cfg = load_config(str(DEMO))
    apply_override(cfg, "selection.criterion=margin")
    assert cfg.selection.criterion == "margin"
    validate(cfg)
    apply_override(cfg, "selection.k=65")  # types are checked here, ranges by validate
    with pytest.raises(ConfigError, match="selection.k"):
        validate(cfg)


def test_round_trip_through_save_config(tmp_path):
    cfg = load_config(
        str(DEMO),
        [
            "selection.k=0.5",
            "selection.b=20",
            "data.crop_scale=[0.3,0.9]",
            "optim.milestones=[5,10]",
            "optim.nesterov=true",
            "loss.ce_weight=0.1",
        ],
    )
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(str(tmp_path / "resolved.yaml"))
    assert again == cfg
    assert type(again.selection.k) is float and type(again.selection.b) is int
    assert again.selection.b == 20 and again.data.crop_scale == [0.3, 0.9]


# ---------------------------------------------------------------------------------------------------------
# the shipped recipes


@pytest.mark.parametrize("path", IMAGENET, ids=lambda p: p.stem)
def test_imagenet_recipes_load(path):
    with pytest.raises(ConfigError, match="data.root"):  # left empty on purpose
        load_config(str(path))
    cfg = load_config(str(path), NEEDED)
    assert cfg.data.dataset == "folder" and cfg.data.root == "/tmp"


@pytest.mark.parametrize("name,ce,kd", [("resnet18_shufflenetv2", 0.0, 1.0), ("resnet18_shufflenetv2_label", 1.0, 0.9)])
def test_imagenet_recipe_matches_the_paper(name, ce, kd):
    cfg = load_config(str(REPO / "configs" / "imagenet" / f"{name}.yaml"), NEEDED)
    assert (cfg.model.teacher, cfg.model.student) == ("tv/resnet18", "tv/shufflenet_v2_x0_5")
    assert (cfg.data.batch_size, cfg.selection.k, cfg.data.image_size) == (256, 192, 224)
    assert cfg.selection.method == "unix" and cfg.selection.criterion == "entropy"
    assert (cfg.selection.alpha, cfg.selection.w, cfg.loss.temperature) == (0.2, 10.0, 4.0)
    assert (cfg.train.epochs, cfg.optim.lr, cfg.optim.momentum) == (90, 0.1, 0.9)
    assert cfg.optim.schedule == "step" and cfg.optim.milestones == [30, 60] and cfg.optim.gamma == 0.1
    assert cfg.optim.weight_decay == pytest.approx(1e-4)
    assert cfg.optim.decay_norm_and_bias is True and not cfg.optim.nesterov  # torchvision's reference SGD
    assert (cfg.loss.ce_weight, cfg.loss.kd_weight) == (ce, kd)


# ---------------------------------------------------------------------------------------------------------
# every bad input is one ConfigError line that names the key

BAD_OVERRIDES = [
    # (overrides on top of demo.yaml, text the message must contain)
    (["foo=1"], "'foo'"),
    (["selection.metod=kd"], "did you mean 'method'"),
    (["selection.kk=3"], "'selection.kk'"),
    (["nosuch.k=3"], "'nosuch.k'"),
    (["data.batch_size=abc"], "'data.batch_size'"),
    (["data.batch_size=true"], "'data.batch_size'"),
    (["optim.lr=[1]"], "'optim.lr'"),
    (["data.hflip=3"], "'data.hflip'"),
    (["data.crop_scale=0.5"], "'data.crop_scale'"),
    (["selection.k=65"], "'selection.k'"),
    (["selection.k=0"], "'selection.k'"),
    (["selection.k=1.5"], "'selection.k'"),
    (["selection.b=1.5"], "'selection.b'"),
    (["optim.lr=-0.1"], "'optim.lr'"),
    (["optim.momentum=1.0"], "'optim.momentum'"),
    (["selection.alpha=0"], "'selection.alpha'"),
    (["loss.temperature=0"], "'loss.temperature'"),
    (["selection.method=bogus"], "'selection.method' must be one of none, kd, random, unix"),
    (["selection.criterion=variance"], "'selection.criterion'"),
    # an option the method does not use is still the user's mistake: refused where it enters, the config
    (["selection.method=kd", "selection.criterion=variance"], "'selection.criterion' must be one of entropy"),
    (["selection.method=kd", "selection.pool=1"], "'selection.pool'"),
    (["mixed_precision=fp8"], "'mixed_precision' must be one of no, bf16, fp16"),
    (["train.compile_student=default", "loss.feature=at"], "train.compile_student=default cannot expose"),
    (["train.teacher_mode=fast"], "'train.teacher_mode' must be one of auto, eager, graph, compile"),
    (["train.nonfinite=ignore"], "'train.nonfinite' must be one of stop, skip, off"),
    (["train.preempt_check_every=0"], "'train.preempt_check_every'"),
    (["resume_force=maybe"], "'resume_force' must be true/false"),
    (["data.skip_bad_files=2"], "'data.skip_bad_files'"),
    (["data.dataset=folder", "data.root="], "'data.root'"),
    (["model.teacher_checkpoint="], "'model.teacher_checkpoint'"),
    (["selection.method=none", "loss.ce_weight=0"], "'loss.ce_weight'"),
    (["data.crop_scale=[1.0,0.5]"], "'data.crop_scale'"),
    (["optim.milestones=[60,30]"], "'optim.milestones'"),
    (["selection.k"], "'selection.k'"),  # no '='
    (["data=3"], "'data' is a section"),
]


@pytest.mark.parametrize("overrides,needle", BAD_OVERRIDES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_override_is_one_line_naming_the_key(overrides, needle):
    with pytest.raises(ConfigError) as info:
        load_config(str(DEMO), overrides)
    message = str(info.value)
    assert message and "\n" not in message, message
    assert needle in message, message


BAD_FILES = [
    # (file text, text the message must contain); None: the file does not exist
    ("- a\n- b\n", "mapping"),
    ("data: 3\n", "'data'"),
    ("selection:\n  metod: kd\n", "did you mean 'method'"),
    ("data: {dataset: digits}\nbogus: 1\n", "'bogus'"),
    ("data: {dataset: digits}\noptim: {lr: fast}\n", "'optim.lr'"),
    ("data: {dataset: digits, batch_size: [64]}\n", "'data.batch_size'"),
    ("data: {dataset: digits\n", "not valid YAML"),
    (None, "no such file"),
]


@pytest.mark.parametrize("text,needle", BAD_FILES)
def test_bad_file_is_one_line(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert message and "\n" not in message, message
    assert needle in message, message
    if text is None or needle in ("mapping", "not valid YAML"):
        assert str(path) in message  # file-level problems name the file


def test_defaults_need_a_dataset_and_a_teacher():
    with pytest.raises(ConfigError, match="'data.root'"):
        load_config(None)
    cfg = load_config(None, NEEDED)
    assert isinstance(cfg, Config) and cfg.selection.method == "unix" and cfg.selection.b is None


# ---------------------------------------------------------------------------------------------------------
# the methods of both papers, TL and pick options, feature losses, the budget mode


def test_config_methods_are_the_registered_selectors():
    """selection.method's choices come from the registry, not from a table of their own: every method of
    selection/ is accepted, and a selector registered later is too (a copy of the names would refuse it)."""
    from unixkd.selection import METHODS, SELECTORS, register
    from unixkd.selection.selectors import KDSelector
    from unixkd.training.config import method_choices

    assert method_choices() == ("none", *METHODS)

    @register("my_method")
    class MyMethod(KDSelector):
        pass

    try:
        assert load_config(str(DEMO), ["selection.method=my_method"]).selection.method == "my_method"
    finally:
        SELECTORS.pop("my_method")
    with pytest.raises(ConfigError, match="'selection.method' must be one of none, kd"):
        load_config(str(DEMO), ["selection.method=my_method"])


def test_choice_keys_take_their_values_from_the_modules_that_implement_them():
    import typing

    from unixkd.pipeline.dali import DEVICES, INTERPOLATIONS
    from unixkd.selection import CRITERIA, PICK_CRITERIA, SCORE_MODES
    from unixkd.training.budget import CONVENTIONS
    from unixkd.training.config import DataConfig, LossConfig, ModelConfig, SelectionConfig
    from unixkd.training.features import FEATURE_LOSSES
    from unixkd.training.models import WEIGHTS

    def choices(cls, name):
        return typing.get_args(typing.get_type_hints(cls)[name])

    assert choices(SelectionConfig, "criterion") == CRITERIA
    assert choices(SelectionConfig, "score_mode") == SCORE_MODES
    assert choices(SelectionConfig, "pick_criterion") == PICK_CRITERIA
    assert choices(SelectionConfig, "budget_convention") == (*CONVENTIONS, "wallclock")
    assert choices(LossConfig, "feature") == FEATURE_LOSSES
    assert choices(ModelConfig, "teacher_weights") == WEIGHTS
    assert choices(DataConfig, "dali_device") == DEVICES
    assert choices(DataConfig, "val_interpolation") == ("auto", *INTERPOLATIONS)
    # read like a type: a YAML `off` (false) given as an override is the word off
    assert load_config(str(DEMO), ["train.nonfinite=off", "mixed_precision=no"]).train.nonfinite == "off"


def test_unquoted_yaml_words_that_read_as_booleans_are_the_choice_the_user_wrote(tmp_path):
    """YAML 1.1 reads `off`, `no`, `on` as booleans: a choice key takes the word among its choices."""
    path = tmp_path / "c.yaml"
    path.write_text("mixed_precision: no\ntrain: {nonfinite: off, cuda_graph: on}\n")
    cfg = load_config(str(path), ["model.teacher_checkpoint=t.pth", "data.dataset=digits"])
    assert (cfg.mixed_precision, cfg.train.nonfinite, cfg.train.cuda_graph) == ("no", "off", "on")
    path.write_text("train: {teacher_mode: off}\n")  # no such choice: named as one line, as the bool it was read
    with pytest.raises(ConfigError, match="'train.teacher_mode' must be one of auto, eager, graph, compile"):
        load_config(str(path))


def test_new_keys_load():
    cfg = load_config(
        str(DEMO),
        [
            "selection.method=tlcutmix_pick",
            "selection.pool=3",
            "selection.n_pick=96",
            "selection.pick_criterion=student_entropy",
            "selection.tl_alpha=0.5",
            "loss.feature=at",
            "loss.teacher_layers=[layer3,layer4]",
            "loss.student_layers=[stage3,stage4]",
        ],
    )
    s = cfg.selection
    assert (s.method, s.pool, s.n_pick, s.pick_criterion, s.tl_alpha) == (
        "tlcutmix_pick",
        3,
        96,
        "student_entropy",
        0.5,
    )
    assert cfg.loss.feature == "at" and cfg.loss.teacher_layers == ["layer3", "layer4"]
    assert (cfg.loss.at_weight, cfg.loss.sp_weight) == (1000.0, 3000.0)
    b = load_config(str(DEMO), ["selection.budget=0.8"]).selection
    assert b.budget == 0.8 and b.budget_convention == "paper" and load_config(str(DEMO)).selection.budget is None
    assert load_config(str(DEMO), ["selection.budget=0.8", "selection.k=500"]).selection.k == 500  # k unused


def test_tl_methods_need_no_loss_weights():
    # TL replaces loss.ce_weight / loss.kd_weight by (1 - tl_alpha, tl_alpha): zero weights are fine there
    load_config(str(DEMO), ["selection.method=tlmixup", "loss.kd_weight=0", "loss.ce_weight=0"])
    with pytest.raises(ConfigError, match="loss.kd_weight"):
        load_config(str(DEMO), ["selection.method=unix", "loss.kd_weight=0", "loss.ce_weight=0"])


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["selection.pool=1"], "selection.pool"),
        (["selection.n_pick=0"], "selection.n_pick"),
        (["selection.n_pick=200"], "pool·N = 128"),
        (["selection.n_pick=2.5"], "selection.n_pick"),
        (["selection.pick_criterion=loss"], "kl, teacher_entropy, student_entropy"),
        (["selection.tl_alpha=1.5"], "selection.tl_alpha"),
        (["selection.budget=0"], "selection.budget"),
        (["selection.budget=0.8", "selection.method=tlcutmix"], "with selection.budget"),
        (["selection.budget=0.8", "selection.method=kd"], "with selection.budget"),
        (["selection.budget_convention=flops"], "paper, measured"),
        (["loss.feature=fitnet"], "none, at, sp"),
        (["loss.at_weight=-1"], "loss.at_weight"),
        (["selection.method=none", "loss.ce_weight=1", "loss.feature=at"], "loss.feature"),
    ],
)
def test_new_keys_one_line_errors(overrides, needle):
    with pytest.raises(ConfigError, match=needle) as e:
        load_config(str(DEMO), overrides)
    assert "\n" not in str(e.value)
