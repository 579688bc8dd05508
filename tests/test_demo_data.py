"""pipeline/demo_data.py: the digits folder is built once, checked cheaply, and rebuilt when damaged."""

import json
import shutil
import time

import pytest
from PIL import Image

from unixkd.pipeline import DaliLoader, ensure_digits_dataset, scan_folder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One dataset built for the whole module; tests that damage it work on a copy."""
    return ensure_digits_dataset(tmp_path_factory.mktemp("digits") / "data")


@pytest.fixture
def copy(built, tmp_path):
    return shutil.copytree(built, tmp_path / "data")


def test_build_makes_a_stratified_imagenet_style_folder(built):
    manifest = json.loads((built / "MANIFEST.json").read_text())
    train, val = scan_folder(built, "train"), scan_folder(built, "val")
    assert len(train) + len(val) == 1797 == manifest["counts"]["total"] == len(manifest["files"])
    assert (len(train), len(val)) == (manifest["counts"]["train"], manifest["counts"]["val"])
    assert train.classes == val.classes == [str(d) for d in range(10)]
    for label in range(10):  # about 20% of every class is in val
        share = val.labels.count(label) / (val.labels.count(label) + train.labels.count(label))
        assert 0.17 < share < 0.23
    names = {f.rsplit("/", 1)[1] for f in train.files} | {f.rsplit("/", 1)[1] for f in val.files}
    assert len(names) == 1797  # every digit exactly once
    with Image.open(train.files[0]) as image:
        assert (image.mode, image.size) == ("RGB", (32, 32))
    assert not [p for p in built.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_second_call_returns_at_once_without_rebuilding(built, capsys):
    stamp = (built / "MANIFEST.json").stat().st_mtime_ns
    start = time.perf_counter()
    assert ensure_digits_dataset(built) == built
    assert time.perf_counter() - start < 1.0
    assert capsys.readouterr().out == ""
    assert (built / "MANIFEST.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_damaged_dataset_is_rebuilt(copy, capsys, damage):
    victim = next((copy / "val" / "3").iterdir())
    if damage == "delete":
        victim.unlink()
    else:
        victim.write_bytes(victim.read_bytes()[:100])
    ensure_digits_dataset(copy)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "rebuilding" in out
    assert victim.stat().st_size > 100
    ensure_digits_dataset(copy)  # now whole again: silent
    assert capsys.readouterr().out == ""


def tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", ["imagenet_like", "foreign_manifest", "unreadable_manifest"])
def test_a_users_dataset_is_never_replaced_by_the_demo_set(tmp_path, copy, kind):
    """data.dataset=digits pointed at a user's folder (train/ and val/ only, as ImageNet is): refused, untouched.
    Only a folder under a manifest this module wrote may be rebuilt."""
    if kind == "imagenet_like":
        root = tmp_path / "imagenet"
        for split in ("train", "val"):
            (root / split / "n01440764").mkdir(parents=True)
            Image.new("RGB", (40, 30), (200, 10, 10)).save(root / split / "n01440764" / "a.JPEG")
    elif kind == "foreign_manifest":  # e.g. benchmarks/make_jpeg_folder.py's own MANIFEST.json
        root = copy
        (root / "MANIFEST.json").write_text(json.dumps({"generator": "another tool", "files": {}}))
    else:
        root = copy
        (root / "MANIFEST.json").write_text("{not json")
    before = tree(root)
    with pytest.raises(ValueError, match=r"is not the demo set.*Not overwriting.*data.dataset=folder") as err:
        ensure_digits_dataset(root)
    assert "\n" not in str(err.value)
    assert tree(root) == before


def test_an_empty_folder_gets_the_demo_set(tmp_path):
    (tmp_path / "empty").mkdir()
    assert len(scan_folder(ensure_digits_dataset(tmp_path / "empty"), "val")) > 0


def test_other_image_size_is_rebuilt(copy, capsys):
    ensure_digits_dataset(copy, image_size=16)
    assert "image_size" in capsys.readouterr().out
    with Image.open(scan_folder(copy, "val").files[0]) as image:
        assert image.size == (16, 16)


def test_refuses_to_overwrite_a_folder_that_is_not_demo_data(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(ValueError, match="Not overwriting"):
        ensure_digits_dataset(tmp_path)  # even with no manifest at all
    assert (tmp_path / "mine.txt").exists()


def test_digits_load_through_the_cpu_loader(built):
    val = scan_folder(built, "val")
    loader = DaliLoader(val, train=False, batch_size=128, image_size=32, device="cpu")
    sizes = [len(labels) for _, labels in loader]
    assert sum(sizes) == len(val) and len(sizes) == len(loader) == -(-len(val) // 128)
