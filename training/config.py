"""Typed run configuration: nested dataclasses loaded from YAML, with dotted `key=value` overrides.

Every mistake a user can make in a config (an unknown key, a wrong type, an out-of-range value) becomes one
`ConfigError` line that names the key and what is allowed; `launch.py` prints it and exits with code 2.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from .errors import UserError


class ConfigError(UserError):
    """A config problem, worded as one line that names the key."""


@dataclass
class DataConfig:
    dataset: str = "folder"  # "folder": <root>/{train,val}/<class>/*.jpg; "digits": the embedded demo set;
    # cifar10/cifar100: the python-format pickles; tinyimagenet: its distributed layout (val_annotations.txt)
    root: str = ""
    image_size: int = 224
    batch_size: int = 256  # N, per process
    val_batch_size: int = 0  # 0: same as batch_size
    num_threads: int = 4  # DALI worker threads per process
    dali_device: str = "auto"  # auto | cpu | gpu
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
    val_interpolation: str = "auto"  # auto | bilinear | bicubic (val resize filter, antialiased like PIL)
    val_crop_mode: str = "auto"  # auto | center (shorter side to the resize target) | squash (both sides to it)
    mean: list[float] | str = "auto"  # per RGB channel in 0..1; train and val (one normalization for both)
    std: list[float] | str = "auto"
    file_list: str = ""  # optional: only these files (paths relative to root, e.g. from `launch.py scan`)
    preflight: bool = True  # check every file before training (exists, non-empty, JPEG/PNG start and end markers)
    skip_bad_files: bool = False  # on a failed pre-flight: leave the bad files out instead of refusing
    crop_padding: int = 4  # cifar*/tinyimagenet: zero padding (px) before the random crop (folder sets: crop_scale)
    cifar_loader: str = "dali"  # cifar*: dali (external source) | tensor (whole set on the device, tensor ops)
    # images as the loader hands them over. auto: float16 when mixed_precision is bf16/fp16 on a GPU (half the
    # bytes, exact for normalized pixels; autocast casts at the first layer), else float32
    output_dtype: str = "auto"  # auto | float32 | float16


@dataclass
class ModelConfig:
    teacher: str = "tv/resnet18"
    student: str = "tv/shufflenet_v2_x0_5"
    teacher_checkpoint: str = ""  # local weights: a file or a folder (what loads: training/models.py)
    teacher_weights: str = "auto"  # a checkpoint with EMA weights too: auto (EMA, as timm) | ema | plain
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
    criterion: str = "entropy"  # entropy | confidence | margin
    score_mode: str = "train"  # BatchNorm mode of the scoring forward: train (authors) | eval
    # TL-augmentation (tlmixup, tlcutmix, tlcutmix_pick): these replace loss.ce_weight / loss.kd_weight
    tl_alpha: float = 0.9  # clean batch (1 - a)·CE + a·KD; extra view a·KL
    pool: int = 2  # pick: CutMix views per image
    n_pick: int | float = 1.0  # pick: pool rows trained on, a count or a fraction of N
    pick_criterion: str = "kl"  # kl | teacher_entropy | student_entropy
    # compute-budget mode: choose k so a run spends this share of conventional KD's FLOPs (replaces k)
    budget: float | None = None
    budget_convention: str = "paper"  # paper (B_s = F_s) | measured | wallclock (share of KD's step time)
    # wallclock: the calibration at the start of the run (training/wallclock.py), timed rounds and warm-up rounds
    calibration_steps: int = 6
    calibration_warmup: int = 2


@dataclass
class LossConfig:
    temperature: float = 4.0
    kd_weight: float = 1.0
    ce_weight: float = 0.0  # label-free by default; CIFAR "+label" 0.1/0.9, ImageNet "+label" 1.0/0.9
    feature: str = "none"  # none | at | sp: a feature loss on the same rows as KD
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
    schedule: str = "step"  # step | cosine | constant
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
    nonfinite: str = "stop"  # NaN/inf loss or gradient: stop (weights untouched) | skip the step | off
    preempt_check_every: int = 10  # steps between the ranks' agreement on a SIGTERM/SIGUSR1 (one all-reduce)
    progress: bool = True
    count_images: bool = False  # sampling analytics per dataset image too (sampling_images/epoch-N.npy)
    # the GPU fast path (no effect on a CPU unless stated)
    channels_last: bool = False  # models and loader images in NHWC memory (faster convolutions on tensor cores)
    cuda_graph: str = "auto"  # UNIX scoring + selection replayed from one CUDA graph: auto (on CUDA) | on | off
    teacher_mode: str = "auto"  # teacher forward on the k rows: auto (graph on CUDA) | eager | graph | compile
    # the student's training forward/backward through torch.compile (inductor): fuses BatchNorm/ReLU/adds,
    # fewer launches for a small student. none | default | max-autotune-no-cudagraphs (longer compile)
    compile_student: str = "none"
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
    mixed_precision: str = "no"  # no | bf16 | fp16
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher_train: TeacherTrainConfig = field(default_factory=TeacherTrainConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


CHOICES = {
    "data.dataset": ("folder", "digits", "cifar10", "cifar100", "tinyimagenet"),
    "data.cifar_loader": ("dali", "tensor"),
    "data.dali_device": ("auto", "cpu", "gpu"),
    "data.val_interpolation": ("auto", "bilinear", "bicubic"),
    "data.val_crop_mode": ("auto", "center", "squash"),
    "model.teacher_weights": ("auto", "ema", "plain"),
    "selection.method": (
        "none",
        "kd",
        "random",
        "unix",
        "uncertainty",
        "mixup",
        "nonadaptive",
        "tlmixup",
        "tlcutmix",
        "tlcutmix_pick",
    ),
    "selection.criterion": ("entropy", "confidence", "margin"),
    "selection.score_mode": ("train", "eval"),
    "selection.pick_criterion": ("kl", "teacher_entropy", "student_entropy"),
    "selection.budget_convention": ("paper", "measured", "wallclock"),
    "loss.feature": ("none", "at", "sp"),
    "optim.schedule": ("step", "cosine", "constant"),
    "train.nonfinite": ("stop", "skip", "off"),
    "train.cuda_graph": ("auto", "on", "off"),
    "train.teacher_mode": ("auto", "eager", "graph", "compile"),
    "train.compile_student": ("none", "default", "max-autotune-no-cudagraphs"),
    "data.output_dtype": ("auto", "float32", "float16"),
    "mixed_precision": ("no", "bf16", "fp16"),
}
BUDGET_METHODS = ("random", "unix", "uncertainty", "mixup", "nonadaptive")  # the methods that keep k rows
TL_METHODS = ("tlmixup", "tlcutmix", "tlcutmix_pick")


# --------------------------------------------------------------------------------------------------------
# loading


def load_config(path: str | None = None, overrides: list[str] = ()) -> Config:
    """Config from defaults <- YAML file <- `key=value` overrides, then validated."""
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
    validate(cfg)
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
    if types_[leaf] is str and not isinstance(value, str):
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


def validate(cfg: Config) -> None:
    def need(ok: bool, key: str, allowed: str, value) -> None:
        if not ok:
            raise ConfigError(f"config key '{key}' must be {allowed}, got {value!r}")

    flat = _flatten(to_dict(cfg))
    for key, choices in CHOICES.items():
        need(flat[key] in choices, key, "one of " + ", ".join(choices), flat[key])

    d, s, o, t, m = cfg.data, cfg.selection, cfg.optim, cfg.train, cfg.model
    need(d.dataset == "digits" or bool(d.root), "data.root", "the dataset folder (with train/ and val/)", d.root)
    need(d.image_size >= 8, "data.image_size", ">= 8", d.image_size)
    need(d.batch_size >= 1, "data.batch_size", ">= 1", d.batch_size)
    need(d.val_batch_size >= 0, "data.val_batch_size", ">= 0 (0: same as data.batch_size)", d.val_batch_size)
    need(d.num_threads >= 1, "data.num_threads", ">= 1", d.num_threads)
    need(0.0 <= d.hw_decoder_load <= 1.0, "data.hw_decoder_load", "in [0, 1]", d.hw_decoder_load)
    need(
        len(d.crop_scale) == 2 and 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1,
        "data.crop_scale",
        "[min, max] with 0 < min <= max <= 1",
        d.crop_scale,
    )
    need(
        len(d.crop_ratio) == 2 and 0 < d.crop_ratio[0] <= d.crop_ratio[1],
        "data.crop_ratio",
        "[min, max] with 0 < min <= max",
        d.crop_ratio,
    )
    need(
        d.val_resize_ratio == "auto" or (isinstance(d.val_resize_ratio, float) and 0 < d.val_resize_ratio <= 1),
        "data.val_resize_ratio",
        "auto or a number in (0, 1]",
        d.val_resize_ratio,
    )
    for key, values in (("data.mean", d.mean), ("data.std", d.std)):
        need(
            values == "auto" or (isinstance(values, list) and len(values) == 3),
            key,
            "auto or three numbers (R, G, B in 0..1 units)",
            values,
        )
    need(d.std == "auto" or all(v > 0 for v in d.std), "data.std", "auto or three numbers > 0", d.std)
    if d.output_dtype == "float16" and cfg.mixed_precision == "no":  # fp16 inputs to fp32 weights fail at layer 1
        raise ConfigError("data.output_dtype=float16 needs mixed_precision bf16 or fp16")
    if t.compile_student != "none" and cfg.loss.feature != "none":  # AT/SP hook the student's layers each step
        raise ConfigError(
            f"train.compile_student={t.compile_student} cannot expose the student's layers that "
            f"loss.feature={cfg.loss.feature} reads; use train.compile_student=none"
        )
    need(d.crop_padding >= 0, "data.crop_padding", ">= 0", d.crop_padding)
    native = {"cifar10": 32, "cifar100": 32, "tinyimagenet": 64}.get(d.dataset)
    need(
        native is None or d.image_size == native,
        "data.image_size",
        f"{native} for data.dataset={d.dataset}",
        d.image_size,
    )

    need(bool(m.student), "model.student", "a timm model name or tv/<torchvision name>", m.student)
    need(
        s.method == "none" or bool(m.teacher), "model.teacher", "a timm model name or tv/<torchvision name>", m.teacher
    )
    need(
        s.method == "none" or bool(m.teacher_checkpoint) or m.pretrained_teacher,
        "model.teacher_checkpoint",
        "a local weights file (or model.pretrained_teacher=true): a random teacher teaches nothing",
        m.teacher_checkpoint,
    )
    need(m.num_classes >= 0, "model.num_classes", ">= 0 (0: from the dataset)", m.num_classes)

    if s.budget is not None:
        pass  # the budget mode chooses k (selection.k is not used)
    elif isinstance(s.k, float):
        need(0 < s.k <= 1, "selection.k", "a count in [1, data.batch_size] or a fraction in (0, 1]", s.k)
    else:
        need(
            1 <= s.k <= d.batch_size,
            "selection.k",
            f"a count in [1, data.batch_size={d.batch_size}] or a fraction in (0, 1]",
            s.k,
        )
    need(s.alpha > 0, "selection.alpha", "> 0", s.alpha)
    need(s.w > 0, "selection.w", "> 0", s.w)
    if isinstance(s.b, float):
        need(0 < s.b < 1, "selection.b", "a count in [0, N], a fraction in (0, 1), or null", s.b)
    elif s.b is not None:
        need(0 <= s.b <= d.batch_size, "selection.b", f"a count in [0, data.batch_size={d.batch_size}]", s.b)

    need(0 <= s.tl_alpha <= 1, "selection.tl_alpha", "in [0, 1]", s.tl_alpha)
    need(s.pool >= 2, "selection.pool", ">= 2 (CutMix views per image)", s.pool)
    if isinstance(s.n_pick, float):
        need(
            0 < s.n_pick <= s.pool,
            "selection.n_pick",
            f"a count >= 1 or a fraction of N in (0, pool={s.pool}]",
            s.n_pick,
        )
    else:
        need(
            1 <= s.n_pick <= s.pool * d.batch_size,
            "selection.n_pick",
            f"a count in [1, pool·N = {s.pool * d.batch_size}] or a fraction of N",
            s.n_pick,
        )
    if s.budget is not None:
        need(s.budget > 0, "selection.budget", "> 0 (a share of conventional KD's FLOPs) or null", s.budget)
        need(
            s.method in BUDGET_METHODS,
            "selection.method",
            "one of " + ", ".join(BUDGET_METHODS) + " with selection.budget (methods that keep k rows)",
            s.method,
        )
    need(s.calibration_steps >= 1, "selection.calibration_steps", ">= 1", s.calibration_steps)
    need(s.calibration_warmup >= 0, "selection.calibration_warmup", ">= 0", s.calibration_warmup)

    need(cfg.loss.temperature > 0, "loss.temperature", "> 0", cfg.loss.temperature)
    need(cfg.loss.at_weight >= 0, "loss.at_weight", ">= 0", cfg.loss.at_weight)
    need(cfg.loss.sp_weight >= 0, "loss.sp_weight", ">= 0", cfg.loss.sp_weight)
    need(
        cfg.loss.feature == "none" or s.method != "none",
        "loss.feature",
        "none when selection.method=none",
        cfg.loss.feature,
    )
    need(cfg.loss.kd_weight >= 0, "loss.kd_weight", ">= 0", cfg.loss.kd_weight)
    need(cfg.loss.ce_weight >= 0, "loss.ce_weight", ">= 0", cfg.loss.ce_weight)
    need(
        s.method in ("none", *TL_METHODS) or cfg.loss.kd_weight + cfg.loss.ce_weight > 0,
        "loss.kd_weight",
        "> 0 (or loss.ce_weight > 0)",
        cfg.loss.kd_weight,
    )
    need(
        s.method != "none" or cfg.loss.ce_weight > 0,
        "loss.ce_weight",
        "> 0 when selection.method=none (plain CE training)",
        cfg.loss.ce_weight,
    )

    need(o.lr > 0, "optim.lr", "> 0", o.lr)
    need(0 <= o.momentum < 1, "optim.momentum", "in [0, 1)", o.momentum)
    need(not o.nesterov or o.momentum > 0, "optim.nesterov", "false when optim.momentum is 0", o.nesterov)
    need(o.weight_decay >= 0, "optim.weight_decay", ">= 0", o.weight_decay)
    need(0 < o.gamma <= 1, "optim.gamma", "in (0, 1]", o.gamma)
    need(o.warmup_epochs >= 0, "optim.warmup_epochs", ">= 0", o.warmup_epochs)
    need(
        all(x > 0 for x in o.milestones) and o.milestones == sorted(o.milestones),
        "optim.milestones",
        "increasing positive epochs",
        o.milestones,
    )

    need(t.epochs >= 1, "train.epochs", ">= 1", t.epochs)
    need(t.max_steps >= 0, "train.max_steps", ">= 0 (0: no limit)", t.max_steps)
    need(t.log_every >= 1, "train.log_every", ">= 1", t.log_every)
    need(t.eval_every >= 0, "train.eval_every", ">= 0", t.eval_every)
    need(t.checkpoint_every >= 0, "train.checkpoint_every", ">= 0", t.checkpoint_every)
    need(t.keep_checkpoints >= 1, "train.keep_checkpoints", ">= 1", t.keep_checkpoints)
    need(t.preempt_check_every >= 1, "train.preempt_check_every", ">= 1", t.preempt_check_every)
    need(cfg.teacher_train.epochs >= 1, "teacher_train.epochs", ">= 1", cfg.teacher_train.epochs)
    need(cfg.teacher_train.lr > 0, "teacher_train.lr", "> 0", cfg.teacher_train.lr)
    need(bool(cfg.out_dir), "out_dir", "a folder path", cfg.out_dir)
    need(bool(cfg.resume), "resume", "auto, none or a checkpoint folder", cfg.resume)
    need(
        not cfg.overwrite or cfg.resume == "none",
        "overwrite",
        f"false with resume={cfg.resume} (overwrite=true starts a new run and moves the old one aside)",
        cfg.overwrite,
    )
    need(t.step_timeout_min > 0, "train.step_timeout_min", "> 0 (minutes)", t.step_timeout_min)
    need(
        t.setup_timeout_min >= t.step_timeout_min,
        "train.setup_timeout_min",
        f">= train.step_timeout_min={t.step_timeout_min}",
        t.setup_timeout_min,
    )
    need(
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
