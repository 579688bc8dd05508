"""Tiny-ImageNet: the folder layout with val_annotations.txt, and DALI's pad-and-crop recipe on 64 px JPEGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from synthetic_data import write_tinyimagenet
from unixkd.pipeline import DaliLoader, scan_tinyimagenet
from unixkd.pipeline.dali import IMAGENET_MEAN, IMAGENET_STD


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny") / "tiny-imagenet-200"
    write_tinyimagenet(root, wnids=("n03", "n01", "n02"), n_train=4, n_val=2)
    return root


def test_train_split_labels_follow_the_sorted_wnids(tiny_root):
    index = scan_tinyimagenet(tiny_root, "train")
    assert index.classes == ["n01", "n02", "n03"]  # wnids.txt lists n03 first; labels use the sorted order
    assert len(index) == 12
    for file, label in zip(index.files, index.labels):
        assert Path(file).parent.parent.name == index.classes[label] and file.endswith(".JPEG")


def test_val_split_labels_come_from_the_annotations(tiny_root):
    index = scan_tinyimagenet(tiny_root, "val")
    truth = dict(line.split("\t")[:2] for line in (tiny_root / "val" / "val_annotations.txt").read_text().splitlines())
    assert len(index) == len(truth) == 6
    for file, label in zip(index.files, index.labels):
        assert index.classes[label] == truth[Path(file).name]


@pytest.mark.parametrize(
    "damage,needle",
    [
        (lambda r: (r / "wnids.txt").unlink(), "wnids.txt"),
        (
            lambda r: (r / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n"),
            "val_annotations.txt:1",
        ),
        (lambda r: (r / "val" / "val_annotations.txt").write_text("gone.JPEG\tn01\t0\t0\t1\t1\n"), "gone.JPEG"),
    ],
)
def test_a_broken_tree_is_one_line(tmp_path, damage, needle):
    root = tmp_path / "tiny"
    write_tinyimagenet(root, n_train=1, n_val=1)
    damage(root)
    with pytest.raises(ValueError) as info:
        scan_tinyimagenet(root, "val")
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_dali_train_images_are_padded_crops_of_the_decoded_images(tiny_root):
    """Val (pad recipe) yields each decoded 64 px image normalized; every train image must equal a zero-padded
    (8 px) 64×64 crop of its val-decoded twin, mirrored or not: found by searching all 17·17·2 placements."""
    index = scan_tinyimagenet(tiny_root, "train")
    common = dict(image_size=64, batch_size=4, device="cpu", num_threads=1, seed=0, pad=8)
    val = DaliLoader(index, train=False, **common)  # the train files, unaugmented
    decoded = {}
    for x, _labels in val:
        for img in x.numpy():
            decoded[len(decoded)] = img
    mean = np.array(IMAGENET_MEAN)[:, None, None]
    std = np.array(IMAGENET_STD)[:, None, None]
    train = DaliLoader(index, train=True, **common)
    train.set_epoch(0)
    order = train._indices()  # which file each train row is
    rows = [img for x, _ in train for img in x.numpy()]
    assert len(rows) == 12 and rows[0].shape == (3, 64, 64)
    placements_seen = set()
    for row, i in zip(rows, order):
        pixels = decoded[int(i)] * std + mean  # back to 0..1 units
        padded = np.pad(pixels, ((0, 0), (8, 8), (8, 8)))  # zero pixels, as DALI's out-of-bounds fill
        found = [
            (dy, dx, f)
            for dy in range(17)
            for dx in range(17)
            for f in (False, True)
            if np.allclose(
                (
                    (padded[:, dy : dy + 64, dx : dx + 64][:, :, ::-1] if f else padded[:, dy : dy + 64, dx : dx + 64])
                    - mean
                )
                / std,
                row,
                atol=1e-4,
            )
        ]
        assert len(found) == 1, (i, found)
        placements_seen.add(found[0])
    assert len(placements_seen) > 1  # random placements, not a fixed one


def test_build_data_reads_tinyimagenet_for_the_trainer(tiny_root):
    from accelerate import Accelerator

    from unixkd.training.config import load_config
    from unixkd.training.data import build_data

    cfg = load_config(
        "configs/tinyimagenet/resnet56_resnet20.yaml",
        [f"data.root={tiny_root}", "data.batch_size=4", "selection.k=3", "data.num_threads=1"],
    )
    data = build_data(cfg, Accelerator(cpu=True))
    assert data.classes == ["n01", "n02", "n03"] and len(data.train) == 3 and len(data.val) == 2
    data.train.set_epoch(0)
    images, labels = next(iter(data.train))
    assert images.shape == (4, 3, 64, 64) and labels.dtype.is_floating_point is False
    assert data.train.recipe.pad == 8  # the config's crop_padding reaches DALI's pad-and-crop recipe
