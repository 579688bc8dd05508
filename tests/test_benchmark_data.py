"""benchmarks/make_jpeg_folder.py: the ImageNet-like JPEG folder the pipeline benchmarks read, built offline from
scikit-learn's sample photos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from unixkd.pipeline import IMAGENET_LARGEST, DaliLoader, scan_folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, jpeg_folder_script):
    out = tmp_path_factory.mktemp("bench") / "jpegs"
    rc = jpeg_folder_script.main(
        ["--out", str(out), "--classes", "3", "--train-per-class", "2", "--val-per-class", "1", "--seed", "4"]
    )
    assert rc == 0
    return out


def test_layout_manifest_and_jpeg_bytes(tiny):
    classes = ["n00000000", "n00000001", "n00000002"]
    for split, n in [("train", 2), ("val", 1)]:
        assert sorted(p.name for p in (tiny / split).iterdir()) == classes
        for c in classes:
            files = sorted((tiny / split / c).iterdir())
            assert [f.name for f in files] == [f"{c}_{split}_{i}.JPEG" for i in range(n)]
            for f in files:
                with Image.open(f) as im:
                    im.load()  # decodes every byte
                    assert im.format == "JPEG" and im.mode == "RGB" and not im.info.get("progressive")
                    assert max(im.size) == 500 and 333 <= min(im.size) <= 500  # ImageNet's typical sizes
                    assert im.layer[0][1:3] == (2, 2)  # luma sampled 2×2 against chroma: 4:2:0
                assert 40_000 < f.stat().st_size < 250_000  # ImageNet's mean is ~110 KB
    m = json.loads((tiny / "manifest.json").read_text())
    assert m["counts"] == {"train": 6, "val": 3} and m["seed"] == 4 and m["quality"] == 90
    assert [s["file"] for s in m["sources"]] == ["china.jpg", "flower.jpg"]
    assert 70_000 < m["bytes"]["mean"] < 160_000
    sizes = [f.stat().st_size for f in tiny.rglob("*.JPEG")]
    assert m["bytes"]["total"] == sum(sizes) and m["bytes"]["min"] == min(sizes)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, tiny, jpeg_folder_script):
    again, other = tmp_path / "again", tmp_path / "other"
    args = ["--classes", "3", "--train-per-class", "2", "--val-per-class", "1"]
    assert jpeg_folder_script.main(["--out", str(again), "--seed", "4", *args]) == 0
    assert jpeg_folder_script.main(["--out", str(other), "--seed", "5", *args]) == 0
    name = "train/n00000001/n00000001_train_1.JPEG"
    assert (again / name).read_bytes() == (tiny / name).read_bytes()
    assert (other / name).read_bytes() != (tiny / name).read_bytes()


def test_refuses_a_non_empty_folder_in_one_line(tmp_path, tiny, jpeg_folder_script, capsys):
    args = ["--classes", "1", "--train-per-class", "1", "--val-per-class", "1"]
    capsys.readouterr()
    assert jpeg_folder_script.main(["--out", str(tiny), *args]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--force" in err and err.count("\n") == 1
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "keep.txt").write_text("not ours")
    assert jpeg_folder_script.main(["--out", str(stranger), "--force", *args]) == 2  # no manifest: never deleted
    assert (stranger / "keep.txt").exists() and "not deleting" in capsys.readouterr().err
    rebuilt = tmp_path / "rebuilt"
    assert jpeg_folder_script.main(["--out", str(rebuilt), "--classes", "2", *args[2:]]) == 0
    assert jpeg_folder_script.main(["--out", str(rebuilt), "--force", *args]) == 0  # ours: rebuilt, nothing stale
    assert sorted(p.name for p in (rebuilt / "train").iterdir()) == ["n00000000"]


def test_dali_cpu_mode_and_build_data_read_it(tiny):
    from accelerate import Accelerator

    from unixkd.training.config import load_config
    from unixkd.training.data import build_data

    loader = DaliLoader(scan_folder(tiny, "train"), train=True, batch_size=3, image_size=64, device="cpu")
    x, y = next(iter(loader))
    assert x.shape == (3, 3, 64, 64) and y.tolist() != []
    cfg = load_config(
        "configs/imagenet/resnet18_shufflenetv2.yaml",
        [
            f"data.root={tiny}",
            "model.teacher_checkpoint=unused.pth",
            "data.batch_size=2",
            "data.image_size=64",
            "selection.k=0.5",
            "data.num_threads=1",
        ],
    )
    data = build_data(cfg, Accelerator(cpu=True))
    assert len(data.classes) == 3 and len(data.train) == 3 and len(data.val) == 2
    assert data.train.preallocate_hint == IMAGENET_LARGEST  # an ImageNet-style folder: the decoder hint is set
    # the ImageNet config asks for bf16 and channels_last: on the CPU auto keeps float32, the layout still applies
    for loader in (data.train, data.val):
        images, labels = next(iter(loader))
        assert images.shape[1:] == (3, 64, 64) and labels.dtype == torch.int64
        assert images.dtype == torch.float32 and images.is_contiguous(memory_format=torch.channels_last)


def test_photos_folder_gives_the_same_bytes_as_scikit_learn(tmp_path, tiny, jpeg_folder_script, capsys):
    """--photos (a copy of scikit-learn's photos, for a machine without it) builds the very same files."""
    from sklearn.datasets import load_sample_images

    photos = tmp_path / "photos"
    photos.mkdir()
    for f in load_sample_images().filenames:
        (photos / Path(f).name).write_bytes(Path(f).read_bytes())
    copy = tmp_path / "copy"
    args = ["--classes", "3", "--train-per-class", "2", "--val-per-class", "1", "--seed", "4"]
    assert jpeg_folder_script.main(["--out", str(copy), "--photos", str(photos), *args]) == 0
    for a in sorted((tiny / "train").rglob("*.JPEG")):
        assert (copy / a.relative_to(tiny)).read_bytes() == a.read_bytes()
    capsys.readouterr()
    assert jpeg_folder_script.main(["--out", str(tmp_path / "x"), "--photos", str(tmp_path / "none"), *args]) == 2
    assert "no *.jpg files" in capsys.readouterr().err
