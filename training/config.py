"""Typed run configuration: nested dataclasses loaded from YAML, with dotted `key=value` overrides.

Every mistake a user can make in a config (an unknown key, a wrong type, an out-of-range value) becomes one
`ConfigError` line that names the key and what is allowed; `launch.py` prints it and exits with code 2.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from unixkd.pipeline.dali import DEVICES, INTERPOLATIONS, VAL_CROP_MODES
from unixkd.selection import CRITERIA, PICK_CRITERIA, SCORE_MODES, SELECTORS
from unixkd.selection.tl import TLSelector

from .budget import CONVENTIONS
from .errors import UserError
from .features import FEATURE_LOSSES
from .models import WEIGHTS


class ConfigError(UserError):
    """A config problem, worded as one line that names the key."""


# The choices of the keys that take one of a few names: each from the module that implements them, where there is
# one (a value there is a value here), else defined here. A Literal field is checked when it is read, like a type.
Dataset = Literal["folder", "digits", "cifar10", "cifar100", "tinyimagenet"]
CifarLoader = Literal["dali", "tensor"]
DaliDevice = Literal[DEVICES]
ValInterpolation = Literal[("auto", *INTERPOLATIONS)]
ValCropMode = Literal[("auto", *VAL_CROP_MODES)]
OutputDtype = Literal["auto", "float32", "float16"]
TeacherWeights = Literal[WEIGHTS]
Criterion = Literal[CRITERIA]
ScoreMode = Literal[SCORE_MODES]
PickCriterion = Literal[PICK_CRITERIA]
BudgetConvention = Literal[(*CONVENTIONS, "wallclock")]  # wallclock: training/wallclock.py
FeatureLoss = Literal[FEATURE_LOSSES]
Schedule = Literal["step", "cosine", "constant"]
NonFinite = Literal["stop", "skip", "off"]
CudaGraph = Literal["auto", "on", "off"]
TeacherMode = Literal["auto", "eager", "graph", "compile"]
CompileStudent = Literal["none", "default", "max-autotune-no-cudagraphs"]
MixedPrecision = Literal["no", "bf16", "fp16"]


@dataclass
class DataConfig:
    dataset: Dataset = "folder"  # "folder": <root>/{train,val}/<class>/*.jpg; "digits": the embedded demo set;
    # cifar10/cifar100: the python-format pickles; tinyimagenet: its distributed layout (val_annotations.txt)
    root: str = ""
    image_size: int = 224
    batch_size: int = 256  # N, per process
    val_batch_size: int = 0  # 0: same as batch_size
    num_threads: int = 4  # DALI worker threads per process
    dali_device: DaliDevice = "auto"  # auto | cpu | gpu
    # share of JPEGs sent to the hardware JPEG decoder (A100/H100), the rest to nvJPEG's CUDA/hybrid path. DALI's docs
    # give no per-GPU value ("depends on the number of threads ... should be found empirically"); 0.65 is DALI's own
    # default, kept by its maintainers after measuring ImageNet training (NVIDIA/DALI#6366: 0.9 gave +1.8% iters/s
    # but a 40% worse p99 decode time). Tune per machine with benchmarks/make_jpeg_folder.py data.
    hw_decoder_load: float = 0.65
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: bool = True
    # The val transform and the normalization the teacher expects (training/preprocess.py). "auto": on a folder
    # dataset, what timm resolves from a timm teacher's pretrained cfg (crop_pct, interpolation, crop_mode, mean, std),
    # else torchvision's ImageNet eval transform (Resize 256 / CenterCrop 224 = 0.875, bilinear, ImageNet mean/std);
    # digits, CIFAR and Tiny-ImageNet keep their fixed stats. An explicit value wins.
    val_resize_ratio: float | str = "auto"  # timm's crop_pct: val resizes to floor(image_size / ratio), in (0, 1]
    val_interpolation: ValInterpolation = "auto"  # auto | bilinear | bicubic (val resize filter, antialiased like PIL)
    val_crop_mode: ValCropMode = "auto"  # auto | center (shorter side to the resize target) | squash (both sides to it)
    mean: list[float] | str = "auto"  # per RGB channel in 0..1; train and val (one normalization for both)
    std: list[float] | str = "auto"
    file_list: str = ""  # optional: only these files (paths relative to root, e.g. from `launch.py scan`)
    preflight: bool = True  # check every file before training (exists, non-empty, JPEG/PNG start and end markers)
    skip_bad_files: bool = False  # on a failed pre-flight: leave the bad files out instead of refusing
    crop_padding: int = 4  # cifar*/tinyimagenet: zero padding (px) before the random crop (folder sets: crop_scale)
    cifar_loader: CifarLoader = "dali"  # cifar*: dali (external source) | tensor (whole set on the device, tensor ops)
    # images as the loader hands them over. auto: float16 when mixed_precision is bf16/fp16 on a GPU (half the
    # bytes, exact for normalized pixels; autocast casts at the first layer), else float32
    output_dtype: OutputDtype = "auto"  # auto | float32 | float16


@dataclass
class ModelConfig:
    teacher: str = "tv/resnet18"
    student: str = "tv/shufflenet_v2_x0_5"
    teacher_checkpoint: str = ""  # local weights: a file or a folder (what loads: training/models.py)
    teacher_weights: TeacherWeights = "auto"  # a checkpoint with EMA weights too: auto (EMA, as timm) | ema | plain
    # torch.load without weights_only for teacher_checkpoint (and eval's checkpoint=): a pickled file can run any
    # code when loaded. Only for a file you trust that holds more than weights (e.g. a whole pickled model)
    trust_checkpoint: bool = False
    pretrained_teacher: bool = False  # timm's own pretrained weights (needs network)
    num_classes: int = 0  # 0: the number of class folders in the training set


@dataclass
class TeacherTrainConfig:
    """Demo only: train the teacher with plain CE when `model.teacher_checkpoint` does not exist yet."""

    train_if_missing: bool = False
    epochs: int = 10
    lr: float = 0.1


@dataclass
class SelectionConfig:
    method: str = "unix"  # none (plain CE, no teacher) | one of METHODS below (selection/)
    k: int | float = 0.75  # count of the N images, or a fraction of N
    alpha: float = 0.2  # lam ~ Beta(alpha, alpha), for every mixing method (TL paper: 1.0)
    w: float = 10.0  # correction-factor slope
    b: int | float | None = None  # how many images get c < 0.5; None: N // 2
    criterion: Criterion = "entropy"  # entropy | confidence | margin
    score_mode: ScoreMode = "train"  # BatchNorm mode of the scoring forward: train (authors) | eval
    # TL-augmentation (tlmixup, tlcutmix, tlcutmix_pick): these replace loss.ce_weight / loss.kd_weight
    tl_alpha: float = 0.9  # clean batch (1 - a)·CE + a·KD; extra view a·KL
    pool: int = 2  # pick: CutMix views per image
    n_pick: int | float = 1.0  # pick: pool rows trained on, a count or a fraction of N
    pick_criterion: PickCriterion = "kl"  # kl | teacher_entropy | student_entropy
    # compute-budget mode: choose k so a run spends this share of conventional KD's FLOPs (replaces k)
    budget: float | None = None
    budget_convention: BudgetConvention = "paper"  # paper (B_s = F_s) | measured | wallclock (share of KD's step time)
    # wallclock: the calibration at the start of the run (training/wallclock.py), timed rounds and warm-up rounds
    calibration_steps: int = 6
    calibration_warmup: int = 2


@dataclass
class LossConfig:
    temperature: float = 4.0
    kd_weight: float = 1.0
    ce_weight: float = 0.0  # label-free by default; CIFAR "+label" 0.1/0.9, ImageNet "+label" 1.0/0.9
    feature: FeatureLoss = "none"  # none | at | sp: a feature loss on the same rows as KD
    at_weight: float = 1000.0
    sp_weight: float = 3000.0
    # module names; []: the CIFAR backbones' every stage (the authors' feat[1:-1]; unequal counts pair the first
    # stages, as their zip), other models the last three stages
    teacher_layers: list[str] = field(default_factory=list)
    student_layers: list[str] = field(default_factory=list)


@dataclass
class OptimConfig:
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    # weight decay on biases and norm weights (1-d tensors) too: true is the authors' SGD (UNIX, TL, CRD code:
    # every parameter decayed) and what the paper configs set; false (default) skips them, as timm does
    decay_norm_and_bias: bool = False
    schedule: Schedule = "step"  # step | cosine | constant
    milestones: list[int] = field(default_factory=lambda: [30, 60])  # epochs, for "step"
    gamma: float = 0.1
    warmup_epochs: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 90
    max_steps: int = 0  # 0: no limit; otherwise stop after this many steps (smoke runs)
    log_every: int = 50  # steps between metrics.jsonl rows (each costs one host-device sync)
    eval_every: int = 1  # epochs between evaluations; 0: only at the end
    checkpoint_every: int = 0  # steps between checkpoints; 0: at the end of every epoch
    keep_checkpoints: int = 2
    nonfinite: NonFinite = "stop"  # NaN/inf loss or gradient: stop (weights untouched) | skip the step | off
    preempt_check_every: int = 10  # steps between the ranks' agreement on a SIGTERM/SIGUSR1 (one all-reduce)
    progress: bool = True
    count_images: bool = False  # sampling analytics per dataset image too (sampling_images/epoch-N.npy)
    # the GPU fast path (no effect on a CPU unless stated)
    channels_last: bool = False  # models and loader images in NHWC memory (faster convolutions on tensor cores)
    cuda_graph: CudaGraph = "auto"  # UNIX scoring + selection replayed from one CUDA graph: auto (on CUDA) | on | off
    teacher_mode: TeacherMode = "auto"  # teacher forward on the k rows: auto (graph on CUDA) | eager | graph | compile
    # the student's training forward/backward through torch.compile (inductor): fuses BatchNorm/ReLU/adds,
    # fewer launches for a small student. none | default | max-autotune-no-cudagraphs (longer compile)
    compile_student: CompileStudent = "none"
    # collective timeouts (several processes): the step's (DDP all-reduce, metrics, evaluation) end a job whose
    # peer hangs or died within minutes; setup (pre-flight of a large dataset on the main process, resume checks)
    # and checkpoint saves may keep the processes apart for longer
    step_timeout_min: float = 10.0
    setup_timeout_min: float = 60.0
    # experiment trackers beside metrics.jsonl, through Accelerate (training/trackers.py): none | a name | names
    # (tensorboard, wandb, ...: "tensorboard,wandb" or a list) | all (every installed one); they write under
    # <out_dir>/trackers/. tracker_project: the W&B / Comet project, MLflow experiment, TensorBoard subfolder
    log_with: str | list[str] = "none"
    tracker_project: str = "unixkd"


@dataclass
class Config:
    out_dir: str = "runs/default"
    seed: int = 0
    resume: str = "none"  # auto | none | path to a checkpoint folder
    resume_force: bool = False  # resume even if world size, batch size, seed, method, student or data differ
    overwrite: bool = False  # a new run in an out_dir that holds another: move the old run's files aside
    mixed_precision: MixedPrecision = "no"  # no | bf16 | fp16
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher_train: TeacherTrainConfig = field(default_factory=TeacherTrainConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def method_choices() -> tuple[str, ...]:
    """selection.method: none (plain CE, no teacher) or any registered selector (a method registered with
    `selection.register` after import counts too)."""
    return ("none", *SELECTORS)


# the methods that keep k rows (their selector takes k; a budget chooses it), and the TL-augmentation ones
BUDGET_METHODS = tuple(n for n, c in SELECTORS.items() if "k" in inspect.signature(c.__init__).parameters)
TL_METHODS = tuple(n for n, c in SELECTORS.items() if issubclass(c, TLSelector))


# --------------------------------------------------------------------------------------------------------
# loading


def load_config(
    path: str | None = None,
    overrides: list[str] = (),
    *,
    need_data_root: bool = True,
    need_teacher_weights: bool = True,
) -> Config:
    """Config from defaults <- YAML file <- `key=value` overrides, then validated (the switches: `validate`)."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--config {path}: no such file")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"--config {path}: expected a mapping of keys at the top level")
    cfg = _build(Config, raw, prefix="")
    for item in overrides:
        apply_override(cfg, item)
    validate(cfg, need_data_root=need_data_root, need_teacher_weights=need_teacher_weights)
    return cfg


def apply_override(cfg: Config, item: str) -> None:
    """Apply one dotted `key=value` override in place; the value is parsed as YAML (`k=0.75`, `hflip=false`)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key=value (e.g. selection.k=0.75)")
    key, _, text = item.partition("=")
    key = key.strip()
    *parents, leaf = key.split(".")
    node: Any = cfg
    for part in parents:
        if not dataclasses.is_dataclass(node) or part not in _field_types(type(node)):
            raise ConfigError(f"unknown config key '{key}'" + _suggest(node, part))
        node = getattr(node, part)
    types_ = _field_types(type(node)) if dataclasses.is_dataclass(node) else {}
    if leaf not in types_:
        raise ConfigError(f"unknown config key '{key}'" + _suggest(node, leaf))
    if dataclasses.is_dataclass(types_[leaf]):
        raise ConfigError(f"config key '{key}' is a section; set one of its keys, e.g. {key}.<name>=...")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    if (types_[leaf] is str or typing.get_origin(types_[leaf]) is Literal) and not isinstance(value, str):
        value = text.strip()  # YAML 1.1 reads `no`/`off` as false: a string key takes the text as written
    setattr(node, leaf, _coerce(value, types_[leaf], key))


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: Path) -> None:
    """The resolved config as YAML, written atomically (timm writes `args.yaml` beside each run the same way)."""
    from .files import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _suggest(node, name: str) -> str:
    if not dataclasses.is_dataclass(node):
        return ""
    import difflib

    known = list(_field_types(type(node)))
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (known here: {', '.join(known)})"


def _build(cls, raw: dict, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"config key '{prefix.rstrip('.')}' must be a mapping of keys")
    types_ = _field_types(cls)
    kwargs = {}
    for name, value in raw.items():
        key = prefix + str(name)
        if name not in types_:
            raise ConfigError(f"unknown config key '{key}'" + _suggest(cls(), str(name)))
        tp = types_[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value or {}, key + ".")
        else:
            kwargs[name] = _coerce(value, tp, key)
    return cls(**kwargs)


def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(typing.get_args(tp))
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {type(None): "null", int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(
        tp, str(tp)
    )


_EXP_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value, tp, key: str):
    """Check (and lightly convert: int -> float) one value against its annotated type."""
    origin = typing.get_origin(tp)
    if origin is Literal:  # one of a few names: read as a string, then checked against them
        choices = typing.get_args(tp)
        if isinstance(value, bool):  # YAML 1.1 reads an unquoted no/off/false (yes/on/true) as a bool
            words = ("yes", "on", "true") if value else ("no", "off", "false")
            value = next((w for w in words if w in choices), value)
        text = _coerce(value, str, key)
        if text not in choices:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(choices)}, got {text!r}")
        return text
    if origin in (Union, types.UnionType):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
        for arg in typing.get_args(tp):  # first matching member wins: int before float for k and b
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, key) for v in value]
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            or isinstance(value, str)
            and _EXP_FLOAT.fullmatch(value.strip())
        ):
            number = float(value)
        if number is not None:
            if not math.isfinite(number):  # .inf, .nan, 1e999: nothing trains with them
                raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # YAML 1.1 reads an unquoted `mixed_precision: no` as false
            return "yes" if value else "no"
        if isinstance(value, (int, float)):
            return str(value)
    raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")


# --------------------------------------------------------------------------------------------------------
# validation: ranges and choices, one line each


def validate(cfg: Config, *, need_data_root: bool = True, need_teacher_weights: bool = True) -> None:
    """Ranges and the rules between keys, one section at a time (types and choices were checked on reading).

    `bench` and `profile` time a step whose numbers do not depend on the teacher's weights or, with synthetic
    batches, on a dataset: they pass `need_teacher_weights=False` (a missing checkpoint means random weights) and
    `need_data_root=False`.
    """
    _check_data(cfg, need_data_root)
    _check_model(cfg, need_teacher_weights)
    _check_selection(cfg)
    _check_loss(cfg)
    _check_optim(cfg)
    _check_train(cfg)
    _check_run(cfg)


def _need(ok: bool, key: str, allowed: str, value) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' must be {allowed}, got {value!r}")


def _check_data(cfg: Config, need_data_root: bool) -> None:
    d, t = cfg.data, cfg.train
    _need(
        d.dataset == "digits" or bool(d.root) or not need_data_root,
        "data.root",
        "the dataset folder (with train/ and val/)",
        d.root,
    )
    _need(d.image_size >= 8, "data.image_size", ">= 8", d.image_size)
    _need(d.batch_size >= 1, "data.batch_size", ">= 1", d.batch_size)
    _need(d.val_batch_size >= 0, "data.val_batch_size", ">= 0 (0: same as data.batch_size)", d.val_batch_size)
    _need(d.num_threads >= 1, "data.num_threads", ">= 1", d.num_threads)
    _need(0.0 <= d.hw_decoder_load <= 1.0, "data.hw_decoder_load", "in [0, 1]", d.hw_decoder_load)
    _need(
        len(d.crop_scale) == 2 and 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1,
        "data.crop_scale",
        "[min, max] with 0 < min <= max <= 1",
        d.crop_scale,
    )
    _need(
        len(d.crop_ratio) == 2 and 0 < d.crop_ratio[0] <= d.crop_ratio[1],
        "data.crop_ratio",
        "[min, max] with 0 < min <= max",
        d.crop_ratio,
    )
    _need(
        d.val_resize_ratio == "auto" or (isinstance(d.val_resize_ratio, float) and 0 < d.val_resize_ratio <= 1),
        "data.val_resize_ratio",
        "auto or a number in (0, 1]",
        d.val_resize_ratio,
    )
    for key, values in (("data.mean", d.mean), ("data.std", d.std)):
        _need(
            values == "auto" or (isinstance(values, list) and len(values) == 3),
            key,
            "auto or three numbers (R, G, B in 0..1 units)",
            values,
        )
    _need(d.std == "auto" or all(v > 0 for v in d.std), "data.std", "auto or three numbers > 0", d.std)
    if d.output_dtype == "float16" and cfg.mixed_precision == "no":  # fp16 inputs to fp32 weights fail at layer 1
        raise ConfigError("data.output_dtype=float16 needs mixed_precision bf16 or fp16")
    if t.compile_student != "none" and cfg.loss.feature != "none":  # AT/SP hook the student's layers each step
        raise ConfigError(
            f"train.compile_student={t.compile_student} cannot expose the student's layers that "
            f"loss.feature={cfg.loss.feature} reads; use train.compile_student=none"
        )
    _need(d.crop_padding >= 0, "data.crop_padding", ">= 0", d.crop_padding)
    native = {"cifar10": 32, "cifar100": 32, "tinyimagenet": 64}.get(d.dataset)
    _need(
        native is None or d.image_size == native,
        "data.image_size",
        f"{native} for data.dataset={d.dataset}",
        d.image_size,
    )


def _check_model(cfg: Config, need_teacher_weights: bool) -> None:
    m, s = cfg.model, cfg.selection
    _need(bool(m.student), "model.student", "a timm model name or tv/<torchvision name>", m.student)
    _need(
        s.method == "none" or bool(m.teacher), "model.teacher", "a timm model name or tv/<torchvision name>", m.teacher
    )
    _need(
        s.method == "none" or bool(m.teacher_checkpoint) or m.pretrained_teacher or not need_teacher_weights,
        "model.teacher_checkpoint",
        "a local weights file (or model.pretrained_teacher=true): a random teacher teaches nothing",
        m.teacher_checkpoint,
    )
    _need(m.num_classes >= 0, "model.num_classes", ">= 0 (0: from the dataset)", m.num_classes)


def _check_selection(cfg: Config) -> None:
    s, d = cfg.selection, cfg.data
    choices = method_choices()
    _need(s.method in choices, "selection.method", "one of " + ", ".join(choices), s.method)
    if s.budget is not None:
        pass  # the budget mode chooses k (selection.k is not used)
    elif isinstance(s.k, float):
        _need(0 < s.k <= 1, "selection.k", "a count in [1, data.batch_size] or a fraction in (0, 1]", s.k)
    else:
        _need(
            1 <= s.k <= d.batch_size,
            "selection.k",
            f"a count in [1, data.batch_size={d.batch_size}] or a fraction in (0, 1]",
            s.k,
        )
    _need(s.alpha > 0, "selection.alpha", "> 0", s.alpha)
    _need(s.w > 0, "selection.w", "> 0", s.w)
    if isinstance(s.b, float):
        _need(0 < s.b < 1, "selection.b", "a count in [0, N], a fraction in (0, 1), or null", s.b)
    elif s.b is not None:
        _need(0 <= s.b <= d.batch_size, "selection.b", f"a count in [0, data.batch_size={d.batch_size}]", s.b)

    _need(0 <= s.tl_alpha <= 1, "selection.tl_alpha", "in [0, 1]", s.tl_alpha)
    _need(s.pool >= 2, "selection.pool", ">= 2 (CutMix views per image)", s.pool)
    if isinstance(s.n_pick, float):
        _need(
            0 < s.n_pick <= s.pool,
            "selection.n_pick",
            f"a count >= 1 or a fraction of N in (0, pool={s.pool}]",
            s.n_pick,
        )
    else:
        _need(
            1 <= s.n_pick <= s.pool * d.batch_size,
            "selection.n_pick",
            f"a count in [1, pool·N = {s.pool * d.batch_size}] or a fraction of N",
            s.n_pick,
        )
    if s.budget is not None:
        _need(s.budget > 0, "selection.budget", "> 0 (a share of conventional KD's FLOPs) or null", s.budget)
        _need(
            s.method in BUDGET_METHODS,
            "selection.method",
            "one of " + ", ".join(BUDGET_METHODS) + " with selection.budget (methods that keep k rows)",
            s.method,
        )
    _need(s.calibration_steps >= 1, "selection.calibration_steps", ">= 1", s.calibration_steps)
    _need(s.calibration_warmup >= 0, "selection.calibration_warmup", ">= 0", s.calibration_warmup)


def _check_loss(cfg: Config) -> None:
    s = cfg.selection
    _need(cfg.loss.temperature > 0, "loss.temperature", "> 0", cfg.loss.temperature)
    _need(cfg.loss.at_weight >= 0, "loss.at_weight", ">= 0", cfg.loss.at_weight)
    _need(cfg.loss.sp_weight >= 0, "loss.sp_weight", ">= 0", cfg.loss.sp_weight)
    _need(
        cfg.loss.feature == "none" or s.method != "none",
        "loss.feature",
        "none when selection.method=none",
        cfg.loss.feature,
    )
    _need(cfg.loss.kd_weight >= 0, "loss.kd_weight", ">= 0", cfg.loss.kd_weight)
    _need(cfg.loss.ce_weight >= 0, "loss.ce_weight", ">= 0", cfg.loss.ce_weight)
    _need(
        s.method in ("none", *TL_METHODS) or cfg.loss.kd_weight + cfg.loss.ce_weight > 0,
        "loss.kd_weight",
        "> 0 (or loss.ce_weight > 0)",
        cfg.loss.kd_weight,
    )
    _need(
        s.method != "none" or cfg.loss.ce_weight > 0,
        "loss.ce_weight",
        "> 0 when selection.method=none (plain CE training)",
        cfg.loss.ce_weight,
    )


def _check_optim(cfg: Config) -> None:
    o = cfg.optim
    _need(o.lr > 0, "optim.lr", "> 0", o.lr)
    _need(0 <= o.momentum < 1, "optim.momentum", "in [0, 1)", o.momentum)
    _need(not o.nesterov or o.momentum > 0, "optim.nesterov", "false when optim.momentum is 0", o.nesterov)
    _need(o.weight_decay >= 0, "optim.weight_decay", ">= 0", o.weight_decay)
    _need(0 < o.gamma <= 1, "optim.gamma", "in (0, 1]", o.gamma)
    _need(o.warmup_epochs >= 0, "optim.warmup_epochs", ">= 0", o.warmup_epochs)
    _need(
        all(x > 0 for x in o.milestones) and o.milestones == sorted(o.milestones),
        "optim.milestones",
        "increasing positive epochs",
        o.milestones,
    )


def _check_train(cfg: Config) -> None:
    t = cfg.train
    _need(t.epochs >= 1, "train.epochs", ">= 1", t.epochs)
    _need(t.max_steps >= 0, "train.max_steps", ">= 0 (0: no limit)", t.max_steps)
    _need(t.log_every >= 1, "train.log_every", ">= 1", t.log_every)
    _need(t.eval_every >= 0, "train.eval_every", ">= 0", t.eval_every)
    _need(t.checkpoint_every >= 0, "train.checkpoint_every", ">= 0", t.checkpoint_every)
    _need(t.keep_checkpoints >= 1, "train.keep_checkpoints", ">= 1", t.keep_checkpoints)
    _need(t.preempt_check_every >= 1, "train.preempt_check_every", ">= 1", t.preempt_check_every)
    _need(cfg.teacher_train.epochs >= 1, "teacher_train.epochs", ">= 1", cfg.teacher_train.epochs)
    _need(cfg.teacher_train.lr > 0, "teacher_train.lr", "> 0", cfg.teacher_train.lr)


def _check_run(cfg: Config) -> None:
    t = cfg.train
    _need(bool(cfg.out_dir), "out_dir", "a folder path", cfg.out_dir)
    _need(bool(cfg.resume), "resume", "auto, none or a checkpoint folder", cfg.resume)
    _need(
        not cfg.overwrite or cfg.resume == "none",
        "overwrite",
        f"false with resume={cfg.resume} (overwrite=true starts a new run and moves the old one aside)",
        cfg.overwrite,
    )
    _need(t.step_timeout_min > 0, "train.step_timeout_min", "> 0 (minutes)", t.step_timeout_min)
    _need(
        t.setup_timeout_min >= t.step_timeout_min,
        "train.setup_timeout_min",
        f">= train.step_timeout_min={t.step_timeout_min}",
        t.setup_timeout_min,
    )
    _need(
        bool(t.tracker_project.strip()) and "/" not in t.tracker_project,
        "train.tracker_project",
        "a name (no '/')",
        t.tracker_project,
    )
    if t.log_with not in ("none", "", []):
        from .trackers import parse

        parse(t.log_with)  # unknown names: one line with Accelerate's trackers (packages: checked by train)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out
