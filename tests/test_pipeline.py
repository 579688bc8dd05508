"""pipeline/: folder listing, and the DALI loader in CPU mode (GPU mode where CUDA is present).

Most tests read a folder of solid-colour images: image ``i`` has red level ``8 + 10 * i``, so every
yielded sample can be traced back to its file, whatever crop or flip DALI applied.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unixkd.pipeline import IMAGENET_MEAN, IMAGENET_STD, DaliLoader, FolderIndex, scan_folder
from unixkd.pipeline.sharding import batches_per_epoch, epoch_indices

CLASSES = ["c0", "c1", "c2"]
PER_CLASS = 7
N = len(CLASSES) * PER_CLASS  # 21 images, ids 0..20; id // PER_CLASS is the label
# (width, height, how it is saved) per image within a class: odd sizes, grayscale, png, upper-case suffix
SHAPES = [(40, 30, "rgb.jpg"), (30, 40, "rgb.JPEG"), (64, 64, "gray.jpg"), (50, 20, "rgb.png"),
          (33, 77, "rgb.jpeg"), (100, 60, "gray.JPG"), (41, 41, "rgb.PNG")]  # fmt: skip
MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def level(i: int) -> int:
    return 8 + 10 * i


@pytest.fixture(scope="module")
def solid(tmp_path_factory) -> FolderIndex:
    root = tmp_path_factory.mktemp("solid")
    for i in range(N):
        label, k = divmod(i, PER_CLASS)
        w, h, kind = SHAPES[k]
        mode, suffix = kind.split(".")
        folder = root / "train" / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        colour = level(i) if mode == "gray" else (level(i), 255 - level(i), 128)
        Image.new("L" if mode == "gray" else "RGB", (w, h), colour).save(folder / f"{i:02d}.{suffix}", quality=95)
    (root / "train" / "c0" / "notes.txt").write_text("not an image")
    return scan_folder(root, "train")


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """Undo the normalization: [B,3,S,S] in 0..255 units."""
    return (images * STD + MEAN) * 255


def sample_ids(images: torch.Tensor) -> list[int]:
    red = to_pixels(images)[:, 0].mean(dim=(1, 2))
    ids = torch.round((red - 8) / 10)
    assert torch.all((red - (8 + 10 * ids)).abs() < 3), "an image is not the solid colour it was saved with"
    return [int(i) for i in ids]


def run_epoch(loader) -> tuple[list[int], list[torch.Tensor]]:
    """All sample ids of one pass (checking each label against its image) and the raw image batches."""
    ids, batches = [], []
    for images, labels in loader:
        batch_ids = sample_ids(images)
        assert labels.tolist() == [i // PER_CLASS for i in batch_ids]
        ids += batch_ids
        batches.append(images)
    return ids, batches


def cpu_loader(index, **kwargs) -> DaliLoader:
    kwargs = {"batch_size": 4, "image_size": 16, "device": "cpu", **kwargs}
    return DaliLoader(index, **kwargs)


# ---------------------------------------------------------------- scan_folder


def test_scan_folder_lists_classes_labels_and_every_image_suffix(solid):
    assert solid.classes == CLASSES
    assert len(solid.files) == N and len(solid.labels) == N
    for path, label in zip(solid.files, solid.labels):
        assert os.path.isabs(path)
        assert os.path.basename(os.path.dirname(path)) == CLASSES[label]
        assert int(os.path.basename(path).split(".")[0]) // PER_CLASS == label  # notes.txt is not listed
    assert solid.files == sorted(solid.files)


def test_scan_folder_errors_name_the_path(tmp_path):
    with pytest.raises(ValueError, match=f"not found: {tmp_path / 'train'}"):
        scan_folder(tmp_path, "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        scan_folder(tmp_path, "train")
    (tmp_path / "train" / "cat").mkdir()
    (tmp_path / "train" / "cat" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=f"no images .* {tmp_path / 'train'}"):
        scan_folder(tmp_path, "train")


# ---------------------------------------------------------------- sharding (no DALI)


@pytest.mark.parametrize("num_files, batch_size, num_shards", [(21, 4, 1), (21, 4, 2), (100, 3, 8), (1001, 16, 3)])
def test_shards_are_disjoint_and_lengths_agree(num_files, batch_size, num_shards):
    for train in (True, False):
        shards = [
            epoch_indices(
                num_files, train=train, batch_size=batch_size, num_shards=num_shards, shard_id=r, seed=0, epoch=3
            )  # fmt: skip
            for r in range(num_shards)
        ]
        joined = np.concatenate(shards)
        assert len(set(joined.tolist())) == len(joined)
        for r, shard in enumerate(shards):
            batches = batches_per_epoch(num_files, train=train, batch_size=batch_size, num_shards=num_shards,
                                        shard_id=r)  # fmt: skip
            assert batches == (len(shard) // batch_size if train else -(-len(shard) // batch_size))
        if train:
            assert {len(shard) for shard in shards} == {(num_files // num_shards) // batch_size * batch_size}
        else:
            assert joined.tolist() == list(range(num_files))


# ---------------------------------------------------------------- train


def test_train_batches_shapes_labels_and_value_range(solid):
    loader = cpu_loader(solid, train=True)
    ids, batches = run_epoch(loader)
    assert len(loader) == len(batches) == N // 4  # 5 full batches; the 21st image is dropped
    assert len(ids) == len(set(ids)) == 20 and set(ids) <= set(range(N))
    images, labels = next(iter(loader))
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
    assert labels.shape == (4,) and labels.dtype == torch.int64
    low, high = (0 - MEAN) / STD, (1 - MEAN) / STD
    for images in batches:
        assert torch.all(images >= low - 1e-4) and torch.all(images <= high + 1e-4)


def test_train_order_is_seeded_per_epoch(solid):
    a, b = cpu_loader(solid, train=True, seed=3), cpu_loader(solid, train=True, seed=3)
    a.set_epoch(1)
    b.set_epoch(1)
    ids_a, batches_a = run_epoch(a)
    ids_b, batches_b = run_epoch(b)
    assert ids_a == ids_b
    assert all(torch.equal(x, y) for x, y in zip(batches_a, batches_b))  # augmentation is seeded too
    b.set_epoch(2)
    assert run_epoch(b)[0] != ids_a


@pytest.mark.parametrize("train", [True, False])
def test_sample_order_is_what_the_loader_yields(solid, train):
    """`sample_order(epoch)` (what the per-image sampling analytics index with) names exactly the images each
    rank yields, in order: solid colours identify the images, whatever their labels."""
    for shard in range(2):
        loader = cpu_loader(solid, train=train, num_shards=2, shard_id=shard, seed=5)
        for epoch in (0, 3):
            loader.set_epoch(epoch)
            named = [int(Path(solid.files[j]).stem) for j in loader.sample_order(epoch)]
            assert run_epoch(loader)[0] == named
        loader.set_epoch(3, start_batch=1)  # a mid-epoch restart yields the tail of the same order
        assert run_epoch(loader)[0] == named[4:]


def test_train_shards_have_equal_length_and_disjoint_samples(solid):
    shards = [cpu_loader(solid, train=True, num_shards=2, shard_id=r, seed=5) for r in range(2)]
    ids = [run_epoch(loader)[0] for loader in shards]
    assert len(shards[0]) == len(shards[1]) == (N // 2) // 4 == 2
    assert len(ids[0]) == len(ids[1]) == 8
    assert not set(ids[0]) & set(ids[1])


def test_flip_happens_only_when_asked(tmp_path):
    # Square images, dark left half and bright right half; a full-image crop keeps the halves visible.
    for i in range(8):
        pixels = np.zeros((32, 32, 3), np.uint8)
        pixels[:, 16:] = 255
        (tmp_path / "train" / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(tmp_path / "train" / "a" / f"{i}.png")
    index = scan_folder(tmp_path, "train")

    def flipped(hflip: bool) -> list[bool]:
        loader = cpu_loader(index, train=True, hflip=hflip, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
        loader.set_epoch(0)
        pixels = torch.cat([to_pixels(images) for images, _ in loader])
        return (pixels[..., :8].mean(dim=(1, 2, 3)) > pixels[..., 8:].mean(dim=(1, 2, 3))).tolist()

    assert not any(flipped(hflip=False))
    assert 0 < sum(flipped(hflip=True)) < 8  # p=0.5 each: some flipped, some not (seed 0)


# ---------------------------------------------------------------- val


def test_val_shards_cover_every_image_once_and_repeat(solid):
    shards = [cpu_loader(solid, train=False, num_shards=2, shard_id=r) for r in range(2)]
    ids = [run_epoch(loader)[0] for loader in shards]
    assert sorted(ids[0] + ids[1]) == list(range(N))
    assert ids[0] + ids[1] == list(range(N))  # no shuffle: file order, rank 0 first
    assert [len(loader) for loader in shards] == [3, 3]  # 10 and 11 images in batches of 4
    assert [len(labels) for _, labels in shards[1]] == [4, 4, 3]  # a short last batch is kept
    assert run_epoch(shards[1])[0] == ids[1]


def test_val_resizes_shorter_side_then_crops_the_centre(tmp_path):
    # A smooth gradient: misplacing the crop by a pixel shifts red by ~5 levels.
    h, w = 64, 96
    y, x = np.mgrid[0:h, 0:w]
    pixels = np.stack([x * 255 / (w - 1), y * 255 / (h - 1), np.full_like(x, 60.0)], axis=-1).astype(np.uint8)
    (tmp_path / "val" / "a").mkdir(parents=True)
    Image.fromarray(pixels).save(tmp_path / "val" / "a" / "grad.png")
    loader = cpu_loader(scan_folder(tmp_path, "val"), train=False, image_size=16, val_resize_ratio=0.5)
    images, _ = next(iter(loader))

    # Reference: shorter side 64 → 32 (so 96 → 48), then the centred 16×16 window.
    reference = Image.fromarray(pixels).resize((48, 32), Image.Resampling.BILINEAR).crop((16, 8, 32, 24))
    reference = torch.from_numpy(np.asarray(reference, np.float32)).permute(2, 0, 1)
    assert (to_pixels(images)[0] - reference).abs().mean() < 0.5  # one pixel off: ~1.8


def test_val_grayscale_becomes_three_equal_channels(solid):
    loader = cpu_loader(solid, train=False, batch_size=N)
    pixels = to_pixels(next(iter(loader))[0])
    gray = pixels[2]  # id 2 was saved as a grayscale JPEG
    assert gray.shape[0] == 3
    assert (gray - level(2)).abs().max() < 2


# ---------------------------------------------------------------- resume and early exit


@pytest.mark.parametrize("train", [True, False])
def test_set_epoch_start_batch_yields_the_tail_of_the_epoch(solid, train):
    full = cpu_loader(solid, train=train, seed=7)
    full.set_epoch(4)
    everything = run_epoch(full)[0]
    resumed = cpu_loader(solid, train=train, seed=7)
    resumed.set_epoch(4, start_batch=2)
    assert len(resumed) == len(full)  # len is the whole epoch
    assert run_epoch(resumed)[0] == everything[2 * 4 :]
    assert run_epoch(resumed)[0] == everything  # start_batch applies once; the next pass is whole
    resumed.set_epoch(4, start_batch=len(resumed))
    assert list(resumed) == []
    with pytest.raises(ValueError, match="start_batch"):
        resumed.set_epoch(4, start_batch=len(resumed) + 1)


def test_state_dict_resumes_the_epoch_bit_for_bit_with_random_augmentation(digits_root):
    """DALI's checkpoint carries the reader position and the crop/flip generators: a loader rebuilt from
    state_dict() yields exactly the batches the uninterrupted one yields next (random crops included)."""
    index = scan_folder(digits_root, "val")  # real, textured images: different crops give different pixels
    kwargs = dict(train=True, seed=3, batch_size=32, crop_scale=(0.08, 1.0), hflip=True)
    full = cpu_loader(index, **kwargs)
    full.set_epoch(2)
    it = iter(full)
    for _ in range(3):
        next(it)
    state = full.state_dict()
    tail = list(it)
    assert state["epoch"] == 2 and isinstance(state["dali"], str) and len(tail) == len(full) - 3

    resumed = cpu_loader(index, **kwargs)
    resumed.load_state_dict(state)
    again = list(resumed)
    assert len(again) == len(tail)
    for (x1, y1), (x2, y2) in zip(again, tail):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # and the augmentation really is random: a positional restart reads the same samples with other crops
    positional = cpu_loader(index, **kwargs)
    positional.set_epoch(2, start_batch=3)
    other = list(positional)
    assert [y.tolist() for _, y in other] == [y.tolist() for _, y in tail]
    assert not any(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(other, tail))


def test_breaking_out_early_releases_the_pipeline(solid):
    def threads() -> int:
        return len(os.listdir("/proc/self/task"))

    loader = cpu_loader(solid, train=True, num_threads=2)
    before = threads()
    for _ in range(4):
        for step, _batch in enumerate(loader):
            if step == 1:
                break  # like train.max_steps stopping mid-epoch
    held = iter(loader)
    next(held)
    assert threads() > before  # a live epoch has DALI worker threads ...
    assert len(run_epoch(loader)[0]) == 20  # ... a new pass closes it and still reads a whole epoch
    assert list(held) == []
    assert threads() == before


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size must be"),
        ({"image_size": 0}, "image_size must be"),
        ({"num_shards": 2, "shard_id": 2}, "shard_id must be in"),
        ({"shard_id": -1}, "shard_id must be in"),
        ({"device": "tpu"}, "data.dali_device must be one of auto, cpu, gpu"),
        ({"batch_size": 22}, "train set too small"),
        ({"num_shards": 6}, "train set too small"),  # 3 images per shard < batch of 4
        ({"val_resize_ratio": 1.5}, "val_resize_ratio"),
    ],
)
def test_bad_arguments_are_one_line_errors(solid, kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        cpu_loader(solid, train=True, **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_gpu_mode_without_cuda_says_so(solid):
    with pytest.raises(ValueError, match="data.dali_device=gpu but CUDA is not available"):
        cpu_loader(solid, train=True, device="gpu")
    assert not cpu_loader(solid, train=True, device="auto").gpu


# ---------------------------------------------------------------- GPU mode


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("train", [True, False])
def test_gpu_mode_matches_cpu_mode(solid, train):
    def epoch(device: str) -> tuple[list[int], torch.Tensor]:
        loader = cpu_loader(solid, train=train, device=device, device_id=0, target_device="cuda:0", seed=1)
        loader.set_epoch(1)
        batches = list(loader)
        for images, labels in batches:
            assert images.device.type == labels.device.type == "cuda"
            assert images.dtype == torch.float32 and labels.dtype == torch.int64
            assert images.shape[1:] == (3, 16, 16)
        return [i for images, _ in batches for i in sample_ids(images.cpu())], torch.cat([x for x, _ in batches])

    ids_gpu, gpu = epoch("gpu")
    ids_cpu, cpu = epoch("cpu")
    assert ids_gpu == ids_cpu  # same files in the same order, labels checked in sample_ids
    assert gpu.shape == cpu.shape
    # nvJPEG and libjpeg-turbo may round differently: compare per-channel statistics.
    assert torch.allclose(gpu.mean(dim=(0, 2, 3)), cpu.mean(dim=(0, 2, 3)), atol=0.03)
    assert torch.allclose(gpu.std(dim=(0, 2, 3)), cpu.std(dim=(0, 2, 3)), atol=0.03)
    if not train:
        assert (gpu - cpu).abs().mean() < 0.03  # same crop and resize: near-identical pixels


def test_import_works_without_dali_and_the_loader_says_what_to_install(solid):
    root = Path(solid.files[0]).parents[2]
    code = (
        "import sys; sys.modules['nvidia.dali'] = sys.modules['nvidia.dali.plugin.pytorch'] = None\n"
        "from unixkd import pipeline\n"
        f"index = pipeline.scan_folder({str(root)!r}, 'train')\n"
        "try:\n"
        "    pipeline.DaliLoader(index, train=True, batch_size=4, image_size=16, device='cpu')\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo, check=True)
    assert "pip install nvidia-dali" in out.stdout and out.stdout.count("\n") == 1
