"""The preprocessing a pretrained teacher expects: the DALI val pipeline against torchvision's and timm's own eval
transforms on real photos (CPU mode; the GPU tests where CUDA is present), the geometry against torchvision's
functions, the resize against Pillow's, and the config keys that choose the settings (training/preprocess.py).

The photos are scikit-learn's two sample photos cut into 24 shapes and formats by benchmarks/preprocess_parity.py
(where scikit-learn is missing, a copy of its two sample photos in .gpu/photos).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unixkd.training.config import ConfigError, load_config

pytest.importorskip("nvidia.dali", reason="the val graph is DALI's")
from unixkd.pipeline.graphs import exact_borders, half_even_half, pil_first_pass, val_window  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MEAN_TARGET, MAX_TARGET = 0.005, 0.05  # normalized units; one 8-bit level is 1 / (255 · std) ≈ 0.0175 for ImageNet


@pytest.fixture(scope="module")
def parity():
    """benchmarks/preprocess_parity.py as a module (benchmarks/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("preprocess_parity", REPO / "benchmarks" / "preprocess_parity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def photos(parity, tmp_path_factory) -> list[Path]:
    try:
        import sklearn  # noqa: F401

        sources = None
    except ImportError:
        sources = REPO / ".gpu" / "photos"
        if not sources.is_dir():
            pytest.skip("the photos come from scikit-learn, or a copy of its sample photos in .gpu/photos")
    paths = parity.make_photos(tmp_path_factory.mktemp("photos"), photos_dir=sources)
    import PIL

    if int(PIL.__version__.split(".")[0]) < 13:  # the one photo whose rows Pillow >= 13 resamples first
        paths = [p for p in paths if p.name != "tall_300x800.jpg"]
    return paths


def torchvision_eval(
    size: int,
    ratio: float = 0.875,
    interpolation: str = "bilinear",
    crop_mode: str = "center",
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
):
    from torchvision import transforms as T

    resize = math.floor(size / ratio)
    mode = getattr(T.InterpolationMode, interpolation.upper())
    return T.Compose(
        [
            T.Resize(resize if crop_mode == "center" else (resize, resize), interpolation=mode),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def assert_close(parity, ours, reference, names, mean_target=MEAN_TARGET, max_target=MAX_TARGET):
    result = parity.differences(ours, reference, names)
    rows = result["per_photo"]
    shown = "; ".join(
        f"{r['photo']}: " + (r["error"] if "error" in r else f"mean {r['mean_abs']:.4f} max {r['max_abs']:.3f}")
        for r in rows
    )
    assert result["total"]["shape_errors"] == 0, shown
    assert all(r["mean_abs"] <= mean_target and r["max_abs"] <= max_target for r in rows), shown
    return result


# ---------------------------------------------------------------- geometry, no DALI


def test_center_crop_anchor_rounds_half_to_even_like_torchvision():
    from torchvision.transforms import functional as F

    for d in range(0, 400):
        image = torch.arange(224 + d).view(1, 1, 224 + d).expand(1, 224, 224 + d)
        left = int(F.center_crop(image, [224, 224])[0, 0, 0])  # torchvision's int(round(d / 2.0))
        assert half_even_half(d) == left == int(round(d / 2.0)), d
    assert half_even_half(117) == 58 and half_even_half(119) == 60  # 58.5 → 58 (DALI's centred crop: 59)


@pytest.mark.parametrize("size, ratio", [(224, 0.875), (224, 0.95), (160, 0.95), (224, 1.0), (288, 0.936), (32, 1.0)])
def test_val_window_matches_torchvision_resize_and_center_crop(size, ratio):
    from timm.data import create_transform
    from torchvision.transforms.functional import _compute_resized_output_size

    resize = math.floor(size / ratio)
    timm_resize = create_transform(input_size=size, crop_pct=ratio, is_training=False).transforms[0].size
    assert timm_resize == resize  # timm's scale_size, floored (0.936 at 288 px: 307, not round's 308)
    for h in list(range(1, 40)) + list(range(40, 2100, 37)):
        for w in (1, 2, 3, 17, 150, 223, 255, 256, 257, 341, 427, 500, 640, 1000, 4000):
            new_h, new_w, top, left = val_window(h, w, size, ratio)
            assert [new_h, new_w] == _compute_resized_output_size((h, w), [resize]), (h, w)
            assert (top, left) == (int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))), (h, w)
    corner = int(round((resize - size) / 2.0))  # squash: Resize((R, R)) then CenterCrop
    assert val_window(300, 200, size, ratio, "squash") == (resize, resize, corner, corner)


def test_pass_order_matches_pillow():
    """Pillow (>= 13) resamples rows first when the height shrinks by more than twice as many pixels as the width."""
    import PIL

    if int(PIL.__version__.split(".")[0]) < 13:
        pytest.skip(f"Pillow {PIL.__version__} always resamples columns first")
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(120):
        w0, h0, w, h = (int(v) for v in rng.integers(8, 300, 4))
        if w == w0 or h == h0:
            continue
        image = Image.fromarray(rng.integers(0, 256, (h0, w0, 3), dtype=np.uint8))
        first_h, first_w = pil_first_pass(h0, w0, h, w)
        two_passes = image.resize((first_w, first_h), Image.BICUBIC).resize((w, h), Image.BICUBIC)
        assert np.array_equal(np.asarray(image.resize((w, h), Image.BICUBIC)), np.asarray(two_passes)), (w0, h0, w, h)
        seen.add(first_h == h)
    assert seen == {True, False}  # both orders were exercised


def test_exact_borders_only_where_the_crop_keeps_border_pixels():
    assert not exact_borders(224, 0.875, "bicubic") and not exact_borders(224, 0.95, "bicubic")  # margins 16, 5
    assert exact_borders(224, 0.96, "bicubic") and exact_borders(224, 1.0, "bilinear")  # 4, 0
    assert not exact_borders(224, 0.97, "bilinear") and exact_borders(224, 0.98, "bilinear")  # 3, 2


# ---------------------------------------------------------------- the DALI val pipeline, CPU mode


def dali_val(parity, paths, size, device="cpu", **kwargs):
    settings = {
        "val_resize_ratio": 0.875,
        "val_interpolation": "bilinear",
        "val_crop_mode": "center",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
    }
    settings.update(kwargs)
    return parity.dali_val(paths, size, settings, device)


def test_val_pipeline_matches_torchvision_eval_transform_on_photos(parity, photos):
    """The default val transform is torchvision's ImageNet eval transform, pixel for pixel (≤ 1 level here)."""
    ours = dali_val(parity, photos, 224)
    reference = parity.reference_outputs(photos, torchvision_eval(224))
    result = assert_close(parity, ours, reference, [p.name for p in photos])
    assert result["total"]["mean_abs"] < 0.001 and result["total"]["share_over_0.1"] == 0


def test_exif_orientation_is_ignored_like_pil(parity, photos, tmp_path):
    tagged = next(p for p in photos if p.name.startswith("exif"))
    assert Image.open(tagged).getexif().get(parity.EXIF_ORIENTATION) == 6
    plain = tmp_path / "plain.png"
    Image.open(tagged).save(plain)  # the same pixels, no tag (PNG: lossless)
    ours_tagged, ours_plain = dali_val(parity, [tagged, plain], 224)
    reference = parity.reference_outputs([plain], torchvision_eval(224))[0]
    assert np.array_equal(ours_tagged, ours_plain)  # 400×300 landscape, not turned upright
    assert np.abs(ours_tagged - reference).max() <= MAX_TARGET


@pytest.mark.parametrize(
    "size, ratio, interpolation, crop_mode",
    [
        (64, 0.875, "bilinear", "center"),
        (64, 0.95, "bicubic", "center"),  # margin 1: PIL's border treatment reproduced
        (64, 1.0, "bicubic", "center"),
        (64, 0.9, "bicubic", "squash"),
        (48, 1.0, "bilinear", "squash"),
    ],
)
def test_val_resize_matches_pillow_on_noise(parity, tmp_path, size, ratio, interpolation, crop_mode):
    """Lossless noise images of random shapes (bicubic's overshoot at its worst): ≤ 2 levels from PIL anywhere."""
    rng = np.random.default_rng(size + int(100 * ratio))
    shapes = [tuple(int(v) for v in rng.integers(12, 400, 2)) for _ in range(14)] + [(33, 300), (300, 33), (13, 9)]
    paths = []
    for i, (w, h) in enumerate(shapes):
        paths.append(tmp_path / f"{i:02d}_{w}x{h}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    levels = (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255)  # normalized = the 0..255 pixel itself
    ours = dali_val(
        parity,
        paths,
        size,
        val_resize_ratio=ratio,
        val_interpolation=interpolation,
        val_crop_mode=crop_mode,
        mean=levels[0],
        std=levels[1],
    )
    reference = parity.reference_outputs(paths, torchvision_eval(size, ratio, interpolation, crop_mode, *levels))
    diffs = np.concatenate([np.abs(a - b).ravel() for a, b in zip(ours, reference)])
    assert diffs.max() <= 2.0 + 1e-3 and (diffs > 1.0 + 1e-3).mean() < 1e-3, (diffs.max(), (diffs > 1.001).mean())


# ---------------------------------------------------------------- a timm teacher's pretrained cfg


def folder_config(root: Path, *overrides: str):
    return load_config(
        None,
        [
            f"data.root={root}",
            "data.dataset=folder",
            "data.image_size=160",
            "data.batch_size=4",
            "data.num_threads=1",
            "data.dali_device=cpu",
            "model.teacher=test_convnext",
            "model.pretrained_teacher=true",
            "selection.k=0.5",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def photo_folder(photos, tmp_path_factory) -> Path:
    """A two-class folder dataset of the photos (val/ and train/ hold the same files)."""
    root = tmp_path_factory.mktemp("folder")
    for split in ("train", "val"):
        for i, photo in enumerate(photos):
            folder = root / split / f"c{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / photo.name).write_bytes(photo.read_bytes())
    return root


def test_resolved_val_settings_are_what_timm_resolves_for_the_teacher(tmp_path):
    import timm
    from timm.data import resolve_model_data_config

    from unixkd.training.preprocess import resolve_preprocess

    model = timm.create_model("test_convnext")  # crop_pct 0.95, bicubic, mean = std = 0.5
    expected = resolve_model_data_config(model)
    assert expected["crop_pct"] == 0.95 and expected["interpolation"] == "bicubic"
    assert tuple(expected["mean"]) == (0.5, 0.5, 0.5) != (0.485, 0.456, 0.406)
    got = resolve_preprocess(folder_config(tmp_path))
    assert (got.val_resize_ratio, got.val_interpolation, got.val_crop_mode, got.mean, got.std) == (
        expected["crop_pct"],
        expected["interpolation"],
        expected["crop_mode"],
        tuple(expected["mean"]),
        tuple(expected["std"]),
    )
    assert set(got.sources.values()) == {"teacher test_convnext's timm pretrained cfg"}


def test_val_loader_follows_the_teacher_like_timms_eval_transform(parity, photos, photo_folder, capsys):
    """build_data with a timm teacher: the val batches are timm's create_transform(**cfg) eval output, and the
    train batches use the same normalization."""
    from accelerate import Accelerator
    from timm.data import create_transform, resolve_data_config
    from timm.models import get_pretrained_cfg

    from unixkd.training.data import build_data

    data = build_data(folder_config(photo_folder), Accelerator(cpu=True))
    assert "bicubic" in capsys.readouterr().out  # the resolved settings are printed
    assert data.train.recipe.mean == data.val.recipe.mean == (0.5, 0.5, 0.5) == data.preprocess.mean
    pretrained = get_pretrained_cfg("test_convnext").to_dict()
    cfg = resolve_data_config({"input_size": (3, 160, 160)}, pretrained_cfg=pretrained)
    transform = create_transform(**cfg, is_training=False)
    images = torch.cat([x for x, _ in data.val])
    files = [Path(f) for f in (data.val.index.files[i] for i in data.val.sample_order(0))]
    ours = [x.numpy() for x in images]
    assert_close(parity, ours, parity.reference_outputs(files, transform), [f.name for f in files])


def test_explicit_keys_win_over_the_teachers_cfg(tmp_path):
    from unixkd.training.preprocess import resolve_preprocess

    got = resolve_preprocess(
        folder_config(
            tmp_path, "data.val_resize_ratio=0.875", "data.val_interpolation=bilinear", "data.mean=[0.4, 0.4, 0.4]"
        )
    )
    assert (got.val_resize_ratio, got.val_interpolation, got.mean, got.std) == (
        0.875,
        "bilinear",
        (0.4,) * 3,
        (0.5,) * 3,
    )
    assert got.sources["mean"] == "config" and got.sources["std"].startswith("teacher test_convnext")


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.teacher=tv/resnet18", "model.pretrained_teacher=false", "model.teacher_checkpoint=t.pth"],
        ["selection.method=none", "loss.ce_weight=1"],  # no teacher: a teacher being trained here
        ["data.dataset=digits"],  # the digits teacher is trained here too
    ],
)
def test_torchvision_defaults_without_a_pretrained_timm_teacher(tmp_path, overrides):
    from unixkd.training.preprocess import TORCHVISION_DEFAULTS, resolve_preprocess

    got = resolve_preprocess(folder_config(tmp_path, *overrides))
    assert {k: getattr(got, k) for k in TORCHVISION_DEFAULTS} == TORCHVISION_DEFAULTS


def test_cifar_keeps_its_stats_unless_mean_std_are_set(tmp_path):
    from unixkd.pipeline.cifar import STATS
    from unixkd.training.preprocess import resolve_preprocess

    cifar = ["data.dataset=cifar100", "data.image_size=32"]
    assert (resolve_preprocess(folder_config(tmp_path, *cifar)).mean,) == (STATS["cifar100"][0],)
    assert resolve_preprocess(folder_config(tmp_path, *cifar, "data.std=[0.3, 0.3, 0.3]")).std == (0.3, 0.3, 0.3)


@pytest.mark.parametrize(
    "teacher, key",
    [
        ("volo_d4_448", "data.val_resize_ratio"),  # crop_pct 1.15: pads
        ("deepseek_vit_412m", "data.val_crop_mode"),
    ],
)  # crop_mode border
def test_a_teacher_cfg_the_graph_cannot_reproduce_is_one_line(tmp_path, teacher, key):
    from timm.models import get_pretrained_cfg

    from unixkd.training.preprocess import resolve_preprocess

    if get_pretrained_cfg(teacher) is None:
        pytest.skip(f"{teacher} is not in this timm")
    with pytest.raises(ConfigError, match=key) as err:
        resolve_preprocess(folder_config(tmp_path, f"model.teacher={teacher}"))
    assert "\n" not in str(err.value)
    fixed = {"data.val_resize_ratio": "data.val_resize_ratio=1.0", "data.val_crop_mode": "data.val_crop_mode=center"}
    resolve_preprocess(folder_config(tmp_path, f"model.teacher={teacher}", fixed[key]))  # set: accepted


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.val_interpolation=nearest", "data.val_interpolation"),
        ("data.val_crop_mode=border", "data.val_crop_mode"),
        ("data.val_resize_ratio=1.5", "data.val_resize_ratio"),
        ("data.val_resize_ratio=0", "data.val_resize_ratio"),
        ("data.val_resize_ratio=half", "data.val_resize_ratio"),
        ("data.mean=[0.5, 0.5]", "data.mean"),
        ("data.mean=0.5", "data.mean"),
        ("data.std=[0.2, 0.0, 0.2]", "data.std"),
    ],
)
def test_bad_preprocessing_keys_are_one_line_errors(tmp_path, override, key):
    with pytest.raises(ConfigError, match=key) as err:
        folder_config(tmp_path, override)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- GPU mode (mixed decode)


def decoded(paths, device: str, hw_decoder_load: float = 0.65) -> list[np.ndarray]:
    """The decoder's own output (uint8 HWC, EXIF ignored), CPU or mixed."""
    from nvidia.dali import Pipeline, fn, types

    pipe = Pipeline(batch_size=len(paths), num_threads=2, device_id=0 if device == "gpu" else None, seed=0)
    args = (
        {"device": "mixed", "hw_decoder_load": hw_decoder_load, "jpeg_fancy_upsampling": True}
        if device == "gpu"
        else {"device": "cpu"}
    )
    with pipe:
        jpegs, _ = fn.readers.file(files=[str(p) for p in paths], random_shuffle=False)
        pipe.set_outputs(fn.decoders.image(jpegs, output_type=types.RGB, adjust_orientation=False, **args))
    pipe.build()
    (out,) = pipe.run()
    out = out.as_cpu() if device == "gpu" else out
    return [np.array(out[i]) for i in range(len(paths))]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("hw_decoder_load", [0.0, 1.0])  # nvJPEG's CUDA decoder; the hardware decoder where present
def test_gpu_mixed_decode_matches_cpu_decode_on_photos(photos, hw_decoder_load):
    """With jpeg_fancy_upsampling, nvJPEG upsamples chroma as libjpeg-turbo does: the decoded pixels agree."""
    gpu, cpu = decoded(photos, "gpu", hw_decoder_load), decoded(photos, "cpu")
    report = []
    for p, a, b in zip(photos, gpu, cpu):
        assert a.shape == b.shape, (p.name, a.shape, b.shape)
        d = np.abs(a.astype(int) - b.astype(int))
        report.append((p.name, round(float(d.mean()), 4), int(d.max())))
    # libjpeg-turbo's ISLOW IDCT and nvJPEG's differ by rounding: a level here and there. Chroma upsampled without
    # interpolation (jpeg_fancy_upsampling ignored, e.g. by a hardware path) shows as tens of levels at colour edges.
    assert all(mean <= 0.5 and peak <= 8 for _, mean, peak in report), report


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("ratio, interpolation", [(0.875, "bilinear"), (1.0, "bicubic")])  # plain; PIL's borders
def test_gpu_val_pipeline_matches_cpu_and_torchvision_on_photos(parity, photos, ratio, interpolation):
    kwargs = {"val_resize_ratio": ratio, "val_interpolation": interpolation}
    gpu, cpu = dali_val(parity, photos, 224, "gpu", **kwargs), dali_val(parity, photos, 224, "cpu", **kwargs)
    reference = parity.reference_outputs(photos, torchvision_eval(224, ratio, interpolation))
    names = [p.name for p in photos]
    # the CPU-mode targets (0.005 / 0.05) leave no room for the decoders' rounding on top of the resize's: the mean
    # target holds, the max gets ~6 levels; the messages list every photo's numbers for the record
    assert_close(parity, gpu, cpu, names, max_target=0.1)  # same geometry and filters on the GPU
    assert_close(parity, gpu, reference, names, max_target=0.1)
