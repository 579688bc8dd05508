"""The loaders' fast-path output: float16 and channels_last batches, checked against the float32 NCHW batches of the
same seed (CPU mode here; GPU mode and DALI's mixed decoder where CUDA is present), and the config rule that picks
them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from unixkd.pipeline import (
    IMAGENET_LARGEST,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ArrayDaliLoader,
    DaliLoader,
    ImageArrays,
    TensorLoader,
    scan_folder,
)
from unixkd.training.config import ConfigError, load_config

DEMO = "configs/demo.yaml"
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def epoch(loader, epoch: int = 1) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    loader.set_epoch(epoch)
    images, labels = [], []
    for x, y in loader:
        images.append(x)
        labels.append(y)
    return images, labels


def dali(index, **kwargs) -> DaliLoader:
    return DaliLoader(index, **{"batch_size": 8, "image_size": 24, "device": "cpu", "seed": 3, **kwargs})


def arrays(n: int = 40) -> ImageArrays:
    rng = np.random.default_rng(0)
    return ImageArrays(
        rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n), [f"c{i}" for i in range(10)]
    )


ARRAY_LOADERS = {
    "tensor": lambda a, **kw: TensorLoader(a, **kw),
    "dali": lambda a, **kw: ArrayDaliLoader(a, device="cpu", **kw),
}


def assert_half_of(half: torch.Tensor, full: torch.Tensor) -> None:
    """``half`` is ``full`` rounded to float16: equal within one fp16 step (DALI rounds its own float result)."""
    assert half.dtype == torch.float16 and full.dtype == torch.float32
    torch.testing.assert_close(half.float(), full.half().float(), rtol=2**-10, atol=2**-24)


# ---------------------------------------------------------------- float16


@pytest.mark.parametrize("train", [True, False])
def test_dali_float16_is_the_float32_output_rounded(digits_root, train):
    index = scan_folder(digits_root, "train")
    full, labels_full = epoch(dali(index, train=train))
    half, labels_half = epoch(dali(index, train=train, dtype=torch.float16))  # a torch dtype works as well as a name
    assert len(full) == len(half) > 1
    for f, h, yf, yh in zip(full, half, labels_full, labels_half):
        assert h.shape == f.shape and h.is_contiguous()
        assert_half_of(h, f)
        assert torch.equal(yf, yh) and yh.dtype == torch.int64


@pytest.mark.parametrize("kind", list(ARRAY_LOADERS))
def test_array_loaders_float16_is_the_float32_output_rounded(kind):
    kw = dict(train=True, batch_size=16, seed=5)
    full, _ = epoch(ARRAY_LOADERS[kind](arrays(), **kw))
    half, _ = epoch(ARRAY_LOADERS[kind](arrays(), dtype="float16", **kw))
    for f, h in zip(full, half):
        assert_half_of(h, f)


# ---------------------------------------------------------------- channels_last


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_dali_channels_last_is_the_same_batch_in_nhwc_memory(digits_root, train, dtype):
    index = scan_folder(digits_root, "train")
    nchw, _ = epoch(dali(index, train=train, dtype=dtype))
    nhwc, _ = epoch(dali(index, train=train, dtype=dtype, channels_last=True))
    for a, b in zip(nchw, nhwc):
        assert b.shape == a.shape == (a.shape[0], 3, 24, 24) and b.dtype == a.dtype
        assert b.is_contiguous(memory_format=torch.channels_last) and not b.is_contiguous()
        assert torch.equal(a, b)  # same seed, same pixels: only the memory order differs


@pytest.mark.parametrize("kind", list(ARRAY_LOADERS))
def test_array_loaders_channels_last_is_the_same_batch_in_nhwc_memory(kind):
    kw = dict(train=True, batch_size=16, seed=5, dtype="float16")
    nchw, _ = epoch(ARRAY_LOADERS[kind](arrays(), **kw))
    nhwc, _ = epoch(ARRAY_LOADERS[kind](arrays(), channels_last=True, **kw))
    for a, b in zip(nchw, nhwc):
        assert b.is_contiguous(memory_format=torch.channels_last) and torch.equal(a, b)


def test_default_output_is_contiguous_float32(digits_root):
    x, _ = next(iter(dali(scan_folder(digits_root, "train"), train=True)))
    assert x.dtype == torch.float32 and x.is_contiguous()


@pytest.mark.parametrize("dtype", ["bfloat16", torch.bfloat16, "fp16", None])
def test_bad_dtype_is_a_one_line_error(digits_root, dtype):
    index = scan_folder(digits_root, "train")
    for make in (
        lambda: dali(index, train=True, dtype=dtype),
        lambda: TensorLoader(arrays(), train=True, batch_size=8, dtype=dtype),
        lambda: ArrayDaliLoader(arrays(), train=True, batch_size=8, device="cpu", dtype=dtype),
    ):
        with pytest.raises(ValueError, match="dtype must be float32 or float16") as err:
            make()
        assert "\n" not in str(err.value)


# ---------------------------------------------------------------- config


def test_float16_without_mixed_precision_is_refused_in_one_line():
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, ["data.output_dtype=float16"])
    assert str(err.value) == "data.output_dtype=float16 needs mixed_precision bf16 or fp16"
    assert load_config(DEMO, ["data.output_dtype=float16", "mixed_precision=bf16"]).data.output_dtype == "float16"
    with pytest.raises(ConfigError, match="data.output_dtype"):
        load_config(DEMO, ["data.output_dtype=bfloat16"])


@pytest.mark.parametrize(
    "setting, precision, device, expected",
    [
        ("auto", "no", "cuda", "float32"),
        ("auto", "bf16", "cuda", "float16"),
        ("auto", "fp16", "cuda:1", "float16"),
        ("auto", "bf16", "cpu", "float32"),  # CPU autocast: the batch stays where it is, nothing to save
        ("float32", "bf16", "cuda", "float32"),
        ("float16", "bf16", "cpu", "float16"),  # asked for explicitly
    ],
)
def test_output_dtype_auto_rule(setting, precision, device, expected):
    from unixkd.training.data import output_dtype

    cfg = load_config(DEMO, [f"data.output_dtype={setting}", f"mixed_precision={precision}"])
    assert output_dtype(cfg, torch.device(device)) == expected


def test_build_data_hands_the_format_to_both_loaders(tmp_path):
    from accelerate import Accelerator

    from unixkd.training.data import build_data

    cfg = load_config(
        DEMO,
        [
            f"data.root={tmp_path / 'digits'}",
            "mixed_precision=bf16",
            "data.output_dtype=float16",
            "train.channels_last=true",
            "data.batch_size=16",
            "selection.k=12",
        ],
    )
    data = build_data(cfg, Accelerator(cpu=True))
    for loader in (data.train, data.val):
        assert (loader.dtype, loader.channels_last, loader.preallocate_hint) == ("float16", True, None)
        x, _ = next(iter(loader))
        assert x.dtype == torch.float16 and x.is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------- GPU mode (DALI mixed decoding)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def photos(tmp_path_factory, jpeg_folder_script):
    """256 train + 16 val ImageNet-like JPEGs (500 px, ~110 KB, baseline 4:2:0: what the hardware decoder takes)."""
    root = tmp_path_factory.mktemp("photos")
    copied = Path(__file__).resolve().parent.parent / ".gpu" / "photos"  # where scikit-learn is missing
    jpeg_folder_script.build(
        root,
        classes=4,
        train_per_class=64,
        val_per_class=4,
        seed=0,
        size=500,
        quality=90,
        photos_dir=copied if copied.is_dir() else None,
    )
    return root


def pixels(batches: list[torch.Tensor]) -> torch.Tensor:
    """Back to 0..255 units, float32 NCHW on the CPU."""
    return (torch.cat([b.float().cpu() for b in batches]) * STD + MEAN) * 255


def run_mode(index, device: str, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    loader = DaliLoader(
        index,
        device=device,
        device_id=0,
        target_device="cuda:0",
        seed=1,
        image_size=224,
        batch_size=32,
        num_threads=4,
        **kwargs,
    )
    images, labels = epoch(loader)
    for x, y in zip(images, labels):
        assert x.device.type == y.device.type == "cuda"
    return pixels(images), torch.cat(labels).cpu()


@pytest.mark.gpu
@needs_cuda
def test_gpu_mixed_decoding_matches_cpu_mode_on_the_val_recipe(photos):
    """Same files, resize and centre crop: the only difference is nvJPEG/hardware decoding vs libjpeg-turbo.

    Their IDCTs round differently (±1 level) and nvJPEG's default chroma upsampling is not libjpeg's "fancy"
    one, which moves colours at edges by a few levels; the 256→224 resize averages both. A crop or resize that
    differed by even one pixel would show: the files carry luminance grain (σ = 10 levels), so a one-pixel shift
    alone gives a mean absolute difference near 10 levels.
    """
    index = scan_folder(photos, "val")
    gpu, labels_gpu = run_mode(index, "gpu", train=False)
    cpu, labels_cpu = run_mode(index, "cpu", train=False)
    assert torch.equal(labels_gpu, labels_cpu) and gpu.shape == cpu.shape == (16, 3, 224, 224)
    diff = (gpu - cpu).abs()
    assert diff.mean() < 3.0, f"mean |gpu - cpu| = {diff.mean():.2f} levels"
    channel_means = (gpu.mean(dim=(0, 2, 3)) - cpu.mean(dim=(0, 2, 3))).abs()
    assert torch.all(channel_means < 1.0), f"per-channel mean differences {channel_means.tolist()}"


@pytest.mark.gpu
@needs_cuda
def test_gpu_mixed_decoding_matches_cpu_mode_statistically_on_the_train_recipe(photos):
    """Random crops (RandomResizedCrop, flips): the two modes need not draw the same windows, so compare the
    per-channel mean and std of 256 decoded, augmented images.

    Tolerance from CPU mode alone (this folder, 256 images at 224 px, seeds 0-5): per-channel means varied with
    an s.d. of 1.8-1.9 levels between seeds and stds with 0.3-0.8 levels, so two independent draws differ by
    s.d. ≈ 2.7 (means) and ≤ 1.1 (stds); the bounds below are about 3 of those, plus the val test's decoder
    allowance. A swapped channel order (R and B means differ by ~30 levels) or a missed normalization fails.
    """
    index = scan_folder(photos, "train")
    gpu, labels_gpu = run_mode(index, "gpu", train=True)
    cpu, labels_cpu = run_mode(index, "cpu", train=True)
    assert torch.equal(labels_gpu, labels_cpu) and gpu.shape == cpu.shape == (256, 3, 224, 224)
    d_mean = (gpu.mean(dim=(0, 2, 3)) - cpu.mean(dim=(0, 2, 3))).abs()
    d_std = (gpu.std(dim=(0, 2, 3)) - cpu.std(dim=(0, 2, 3))).abs()
    assert torch.all(d_mean < 8.0), f"per-channel mean differences {d_mean.tolist()} levels"
    assert torch.all(d_std < 3.5), f"per-channel std differences {d_std.tolist()} levels"


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("train", [True, False])
def test_gpu_float16_channels_last_batches_arrive_on_the_device(photos, train):
    index = scan_folder(photos, "val")
    kw = dict(train=train, device="gpu", device_id=0, target_device="cuda:0", seed=2, image_size=224, batch_size=8)
    full, _ = epoch(DaliLoader(index, **kw))
    fast, labels = epoch(DaliLoader(index, dtype="float16", channels_last=True, **kw))
    for f, h, y in zip(full, fast, labels):
        assert h.device == torch.device("cuda", 0) and y.device == h.device and y.dtype == torch.int64
        assert h.dtype == torch.float16 and h.shape == f.shape
        assert h.is_contiguous(memory_format=torch.channels_last)
        assert_half_of(h.cpu(), f.cpu())  # same seed and mode: the same crops, only rounded and laid out NHWC


@pytest.mark.gpu
@needs_cuda
def test_gpu_array_loader_float16_channels_last_on_the_device():
    loader = ArrayDaliLoader(
        arrays(),
        train=True,
        batch_size=16,
        device="gpu",
        device_id=0,
        target_device="cuda:0",
        dtype="float16",
        channels_last=True,
    )
    x, y = next(iter(loader))
    assert x.device.type == y.device.type == "cuda" and x.dtype == torch.float16
    assert x.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.gpu
@needs_cuda
def test_gpu_preallocate_hint_does_not_reserve_a_batch_of_giant_images(photos):
    """The ImageNet-style folders pass the hardware decoder a hint of the largest ImageNet photo (5980×6430).
    nvImageCodec preallocates for the whole batch (N = 256 here); if that meant N full-size RGB buffers it would
    take ~30 GB. Guard: less than 4 GiB more device memory than without the hint (DALI keeps freed memory in its
    pools, so the run without the hint goes first and the difference is what the hint added)."""
    index = scan_folder(photos, "train")

    def free_after_one_batch(hint) -> int:
        loader = DaliLoader(
            index,
            train=True,
            batch_size=256,
            image_size=224,
            device="gpu",
            device_id=0,
            target_device="cuda:0",
            preallocate_hint=hint,
        )
        x, _ = next(iter(loader))
        torch.cuda.synchronize()
        return torch.cuda.mem_get_info(0)[0]

    without = free_after_one_batch(None)
    extra = without - free_after_one_batch(IMAGENET_LARGEST)
    assert extra < 4 * 2**30, f"the preallocate hint took {extra / 2**30:.1f} GiB more device memory"
