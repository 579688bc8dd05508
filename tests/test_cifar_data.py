"""CIFAR in memory: the python-format reader, the augmentation plan, and the two loaders (tensor ops, DALI).

References are written here independently: pixel positions from the format's definition, and the papers'
augmentation (pad 4 with zeros, crop 32, mirror, normalize) with numpy slicing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthetic_data import write_cifar
from unixkd.pipeline.array_dali import ArrayDaliLoader
from unixkd.pipeline.arrays import ImageArrays, crop_plan, pad_crop_flip
from unixkd.pipeline.cifar import CIFAR100_MEAN, CIFAR100_STD, read_cifar
from unixkd.pipeline.tensor_loader import TensorLoader
from unixkd.training.config import ConfigError, load_config

MEAN, STD = np.array(CIFAR100_MEAN), np.array(CIFAR100_STD)
LOADERS = {"tensor": TensorLoader, "dali": lambda arrays, **kw: ArrayDaliLoader(arrays, device="cpu", **kw)}


# --- the reader ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar100_reader_puts_each_byte_where_the_format_says(tmp_path, bytes_keys):
    written = write_cifar(tmp_path, "cifar100", n_train=50, n_test=20, bytes_keys=bytes_keys)
    train = read_cifar(tmp_path, "cifar100", "train")
    assert train.images.shape == (50, 3, 32, 32) and train.images.dtype == np.uint8
    # row layout: the 1024 red values, then green, then blue; each plane row-major
    for i, c, h, w in [(0, 0, 0, 0), (7, 1, 2, 3), (49, 2, 31, 30)]:
        assert train.images[i, c, h, w] == written["train"][i, c * 1024 + h * 32 + w]
    assert train.labels.tolist() == written["y_train"] and train.labels.dtype == np.int64
    assert train.classes == written["names"] and len(train.classes) == 100
    test = read_cifar(written["folder"], "cifar100", "test")  # the pickle folder itself works too
    assert np.array_equal(test.images.reshape(20, -1), written["test"])
    assert test.labels.tolist() == written["y_test"]


def test_cifar10_reader_joins_the_five_batches_in_order(tmp_path):
    written = write_cifar(tmp_path, "cifar10", n_train=53, n_test=11)
    train = read_cifar(tmp_path, "cifar10", "train")
    assert np.array_equal(train.images.reshape(53, -1), written["train"])
    assert train.labels.tolist() == written["y_train"] and len(train.classes) == 10
    assert read_cifar(tmp_path, "cifar10", "test").labels.tolist() == written["y_test"]


def test_reader_errors_are_one_line(tmp_path):
    def message(fn):
        with pytest.raises(ValueError) as info:
            fn()
        assert "\n" not in str(info.value)
        return str(info.value)

    assert "cifar-100-python" in message(lambda: read_cifar(tmp_path, "cifar100", "train"))
    written = write_cifar(tmp_path, "cifar100", n_train=10, n_test=5)
    (written["folder"] / "test").write_bytes(b"not a pickle")
    assert "test" in message(lambda: read_cifar(tmp_path, "cifar100", "test"))
    import pickle

    with (written["folder"] / "test").open("wb") as f:
        pickle.dump({"data": np.zeros((5, 100), np.uint8), "fine_labels": [0] * 5}, f)
    assert "3072" in message(lambda: read_cifar(tmp_path, "cifar100", "test"))


# --- the augmentation plan and the crop ----------------------------------------------------------------------


def test_crop_plan_draws_offsets_in_range_and_fair_flips():
    offsets, flips = crop_plan(20000, seed=3, epoch=5, pad=4, hflip=True)
    assert offsets.min() == 0 and offsets.max() == 8 and offsets.shape == (20000, 2)
    assert 0.48 < flips.mean() < 0.52
    again = crop_plan(20000, seed=3, epoch=5, pad=4, hflip=True)
    assert np.array_equal(offsets, again[0]) and np.array_equal(flips, again[1])
    other_epoch = crop_plan(20000, seed=3, epoch=6, pad=4, hflip=True)
    assert (offsets != other_epoch[0]).any()
    assert not crop_plan(100, seed=3, epoch=5, pad=4, hflip=False)[1].any()


def reference_crop(image: np.ndarray, offset, flip: bool, pad: int) -> np.ndarray:
    """The papers' RandomCrop(32, padding=4) then RandomHorizontalFlip, on one uint8 [3, H, W] image."""
    padded = np.pad(image, ((0, 0), (pad, pad), (pad, pad)))
    dy, dx = int(offset[0]), int(offset[1])
    crop = padded[:, dy : dy + image.shape[1], dx : dx + image.shape[2]]
    return crop[:, :, ::-1] if flip else crop


def test_pad_crop_flip_matches_numpy_slicing():
    rng = np.random.default_rng(0)
    x = rng.integers(1, 256, (6, 3, 32, 32), dtype=np.uint8)  # no zeros: the padding is recognisable
    offsets = np.array([[0, 0], [8, 8], [0, 8], [4, 4], [3, 7], [8, 1]])
    flips = np.array([False, True, False, True, True, False])
    out = pad_crop_flip(torch.from_numpy(x), torch.from_numpy(offsets), torch.from_numpy(flips), 4).numpy()
    for i in range(6):
        assert np.array_equal(out[i], reference_crop(x[i], offsets[i], flips[i], 4)), i
    assert (out[0, :, :4, :] == 0).all() and (out[0, :, 4:, 4:] == x[0, :, :28, :28]).all()  # top-left corner crop


# --- the loaders -----------------------------------------------------------------------------------------------


def unique_arrays(n: int = 200, seed: int = 1) -> ImageArrays:
    """Every image its own class, so a yielded label says which image the row is."""
    rng = np.random.default_rng(seed)
    return ImageArrays(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), np.arange(n), [str(i) for i in range(n)])


def collect(loader, epoch: int, start_batch: int = 0):
    loader.set_epoch(epoch, start_batch=start_batch)
    return [(x.clone(), y.clone()) for x, y in loader]


KW = dict(batch_size=32, seed=7, pad=4, hflip=True, mean=CIFAR100_MEAN, std=CIFAR100_STD)


@pytest.mark.parametrize("kind", list(LOADERS))
def test_train_batches_are_the_papers_augmentation_of_each_image(kind):
    arrays = unique_arrays()
    loader = LOADERS[kind](arrays, train=True, **KW)
    batches = collect(loader, epoch=2)
    assert len(loader) == len(batches) == 200 // 32
    offsets, flips = crop_plan(200, seed=7, epoch=2, pad=4, hflip=True)
    seen = []
    for x, y in batches:
        assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
        for row, i in zip(x.numpy(), y.tolist()):
            expect = (reference_crop(arrays.images[i], offsets[i], flips[i], 4) - 255 * MEAN[:, None, None]) / (
                255 * STD[:, None, None]
            )
            np.testing.assert_allclose(row, expect, rtol=0, atol=1e-5)
        seen += y.tolist()
    assert len(set(seen)) == len(seen) == 192  # a permutation, cut to whole batches
    assert seen != sorted(seen)  # shuffled


@pytest.mark.parametrize("train", [True, False])
def test_dali_and_tensor_loaders_yield_the_same_batches(train):
    arrays = unique_arrays(150)
    a = collect(TensorLoader(arrays, train=train, **KW), epoch=1)
    b = collect(ArrayDaliLoader(arrays, train=train, device="cpu", **KW), epoch=1)
    assert len(a) == len(b) == (4 if train else 5)  # val keeps the short last batch (150 = 4·32 + 22)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(ya, yb)
        torch.testing.assert_close(xa, xb, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", list(LOADERS))
def test_shards_split_the_train_set_evenly_and_cover_the_val_set_once(kind):
    arrays = unique_arrays(203)
    ranks = [LOADERS[kind](arrays, train=True, num_shards=2, shard_id=r, **KW) for r in range(2)]
    labels = [torch.cat([y for _, y in collect(r, epoch=0)]).tolist() for r in ranks]
    assert len(ranks[0]) == len(ranks[1]) == 3 and len(labels[0]) == len(labels[1]) == 96
    assert not set(labels[0]) & set(labels[1])
    val = [LOADERS[kind](arrays, train=False, num_shards=2, shard_id=r, **KW) for r in range(2)]
    val_labels = [y for r in val for _, y in collect(r, epoch=0)]
    assert torch.cat(val_labels).tolist() == list(range(203))


@pytest.mark.parametrize("kind", list(LOADERS))
def test_resume_mid_epoch_yields_exactly_the_rest_of_the_epoch(kind):
    arrays = unique_arrays()
    full = collect(LOADERS[kind](arrays, train=True, **KW), epoch=3)
    rest = collect(LOADERS[kind](arrays, train=True, **KW), epoch=3, start_batch=2)
    assert len(rest) == len(full) - 2
    for (xa, ya), (xb, yb) in zip(full[2:], rest):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_an_image_gets_the_same_crop_whatever_the_number_of_processes():
    arrays = unique_arrays(256)
    one = collect(TensorLoader(arrays, train=True, **KW), epoch=0)
    by_label = {int(y): x for xs, ys in one for x, y in zip(xs, ys)}
    two = collect(TensorLoader(arrays, train=True, num_shards=2, shard_id=1, **KW), epoch=0)
    for xs, ys in two:
        for x, y in zip(xs, ys):
            assert torch.equal(x, by_label[int(y)])


# --- config ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override,needle",
    [
        ("data.image_size=64", "data.image_size"),
        ("data.cifar_loader=torch", "data.cifar_loader"),
        ("data.crop_padding=-1", "data.crop_padding"),
    ],
)
def test_cifar_config_mistakes_are_one_line(override, needle):
    with pytest.raises(ConfigError) as info:
        load_config("configs/cifar100/resnet56_resnet20.yaml", [override])
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name,loader", [("cifar10", "tensor"), ("cifar100", "dali")])
def test_build_data_serves_cifar_to_the_trainer(tmp_path, name, loader):
    from accelerate import Accelerator

    from unixkd.training.data import build_data

    write_cifar(tmp_path, name, n_train=64, n_test=10)
    cfg = load_config(
        "configs/cifar100/resnet56_resnet20.yaml",
        [
            f"data.root={tmp_path}",
            f"data.dataset={name}",
            f"data.cifar_loader={loader}",
            "data.batch_size=32",
            "selection.k=24",
            "selection.b=16",
            "data.val_batch_size=8",
        ],
    )
    data = build_data(cfg, Accelerator(cpu=True))
    assert type(data.train).__name__ == {"tensor": "TensorLoader", "dali": "ArrayDaliLoader"}[loader]
    assert len(data.classes) == (10 if name == "cifar10" else 100) and len(data.train) == 2 and len(data.val) == 2
    expected_mean = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": CIFAR100_MEAN}[name]
    assert data.train.mean == expected_mean and data.train.pad == 4
