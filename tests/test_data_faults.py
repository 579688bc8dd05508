"""Faults in users' data end cleanly, with one line, before the expensive work (CPU; DALI in CPU mode).

Broken files are made from the digits set with PIL and byte surgery: truncated files (caught by the pre-flight's
end-marker check), and files with an intact head and tail that DALI still cannot decode mid-epoch (a damaged PNG
stream; a JPEG frame header with zero dimensions; a JPEG whose Huffman-table marker is damaged, which PIL's
libjpeg papers over with its default tables but DALI refuses). Damage inside a JPEG's compressed data is not
among them: PIL and DALI both decode that to garbage pixels without an error.
"""

from __future__ import annotations

import faulthandler
import io
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from test_train_e2e import small_config
from unixkd import launch, pipeline
from unixkd.pipeline import BadImageError, DaliLoader, preflight, scan_folder, scan_tree
from unixkd.pipeline.scan import TAIL, preflight_problem
from unixkd.training.data import matched_file_list
from unixkd.training.trainer import train

REPO = Path(__file__).resolve().parent.parent


def copy_digits(tmp_path: Path, digits_root: Path, name: str = "digits") -> Path:
    root = tmp_path / name
    shutil.copytree(digits_root, root, ignore=shutil.ignore_patterns("MANIFEST.json"))
    return root


def damaged(kind: str, jpeg: bytes) -> bytes:
    """A file with the right magic and the right end marker that DALI's decoder stops on."""
    b = bytearray(jpeg)
    if kind == "png_stream":  # the PNG's compressed stream zeroed in the middle: PIL and DALI both fail
        png = io.BytesIO()
        Image.open(io.BytesIO(jpeg)).save(png, "PNG")
        b = bytearray(png.getvalue())
        at = b.find(b"IDAT")
        n = struct.unpack(">I", b[at - 4 : at])[0]
        b[at + 4 + n // 2 : at + 4 + n // 2 + 8] = bytes(8)
    elif kind == "jpeg_frame":  # SOF0 with height = width = 0: PIL fails, DALI fails without naming the file
        at = b.find(b"\xff\xc0")
        b[at + 5 : at + 9] = bytes(4)
    elif kind == "jpeg_huffman":  # DHT marker broken: PIL decodes (libjpeg's default tables), DALI does not
        at = b.find(b"\xff\xc4")
        b[at + 1] = 0
    return bytes(b)


def first_files(loader: DaliLoader, batch: int, count: int = 1) -> list[Path]:
    order = loader.sample_order(loader.epoch)
    start = batch * loader.batch_size
    return [Path(loader.index.files[i]) for i in order[start : start + count]]


# ---------------------------------------------------------------- 1. truncation, in the pre-flight


def test_preflight_reads_both_ends_truncated_files_fail_and_trailers_pass(tmp_path):
    noise = Image.effect_noise((160, 160), 64).convert("RGB")  # a JPEG of ~10 KB: head and tail read apart
    jpeg, png = io.BytesIO(), io.BytesIO()
    noise.save(jpeg, "JPEG")
    noise.save(png, "PNG")
    jpeg, png = jpeg.getvalue(), png.getvalue()
    assert len(jpeg) > 2 * TAIL
    files = {
        "ok.jpg": jpeg,
        "ok.png": png,
        "half.jpg": jpeg[: len(jpeg) // 2],
        "half.png": png[: len(png) // 2],
        "no_eoi.jpg": jpeg[:-2],  # only the end marker missing: DALI fails on it too
        "padded.jpg": jpeg + bytes(100),  # zero padding after the marker: inside the tail window
        "trailer.jpg": jpeg + os.urandom(3 * TAIL),  # camera trailer / motion photo: decoded to tell, and fine
        "trailer.png": png + os.urandom(3 * TAIL),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    bad = {Path(b.path).name: b.problem for b in preflight([str(tmp_path / n) for n in files])}
    assert bad == {"half.jpg": "truncated", "half.png": "truncated", "no_eoi.jpg": "truncated"}


@pytest.mark.parametrize("kind", ["png_stream", "jpeg_frame", "jpeg_huffman"])
def test_the_preflight_cannot_see_damage_between_intact_ends(tmp_path, digits_root, kind):
    path = tmp_path / "x.jpg"
    path.write_bytes(damaged(kind, next((digits_root / "train" / "3").iterdir()).read_bytes()))
    assert preflight_problem(str(path)) is None  # these are what the mid-epoch error below is for


# ---------------------------------------------------------------- 2. a file DALI fails on mid-epoch


@pytest.mark.parametrize(
    "kind,problem",
    [
        ("png_stream", "corrupt (unrecognized data stream contents when reading image file)"),  # DALI names the file
        ("jpeg_frame", "corrupt (cannot identify image file)"),  # DALI does not name it: PIL finds it among the batch
        ("jpeg_huffman", "DALI cannot decode it (PIL can): nvImageCodec failure"),  # PIL reads it: DALI alone finds it
    ],
)
def test_a_file_dali_cannot_decode_mid_epoch_is_named_in_one_line(tmp_path, digits_root, kind, problem):
    root = copy_digits(tmp_path, digits_root)
    loader = DaliLoader(scan_folder(root, "train"), train=True, batch_size=16, image_size=32, device="cpu")
    victim = first_files(loader, batch=3, count=6)[5]
    victim.write_bytes(damaged(kind, victim.read_bytes()))
    seen = 0
    with pytest.raises(BadImageError) as err:
        for _ in loader:
            seen += 1
    message = str(err.value)
    assert seen == 3 and err.value.path == str(victim) and err.value.problem.startswith(problem)
    assert "\n" not in message and message.startswith(f"{victim}: ") and "epoch 0, batch 3" in message
    if kind != "jpeg_huffman":  # scan would list it: the message says how
        assert f"python launch.py scan {root} --write-clean-list clean.txt" in message
    else:  # scan's PIL decode passes it: only scan --dali lists it
        assert f"python launch.py scan {root} --dali --write-clean-list clean.txt" in message


def test_the_failing_file_is_found_after_a_resume_and_a_positional_start(tmp_path, digits_root):
    root = copy_digits(tmp_path, digits_root)
    index = scan_folder(root, "train")
    loader = DaliLoader(index, train=True, batch_size=16, image_size=32, device="cpu", seed=3)
    batches = iter(loader)
    next(batches), next(batches)
    state = loader.state_dict()
    assert state["batch"] == 2
    victim = first_files(loader, batch=7)[0]
    victim.write_bytes(damaged("jpeg_frame", victim.read_bytes()))  # unnamed by DALI: the position must be right
    del batches
    for start in ("restore", "positional"):
        fresh = DaliLoader(index, train=True, batch_size=16, image_size=32, device="cpu", seed=3)
        if start == "restore":
            fresh.load_state_dict(state)
        else:
            fresh.set_epoch(0, start_batch=5)
        with pytest.raises(BadImageError, match=r"\(DALI stopped on it in epoch 0, batch 7\)") as err:
            for _ in fresh:
                pass
        assert err.value.path == str(victim)


def test_training_stops_on_it_with_one_error_line_and_exit_2(tmp_path, digits_root, teacher_ckpt, capsys):
    from test_train_e2e import K, N, launch_config

    root = copy_digits(tmp_path, digits_root)
    loader = DaliLoader(scan_folder(root, "train"), train=True, batch_size=N, image_size=32, device="cpu", seed=0)
    victim = first_files(loader, batch=1)[0]  # the trainer's epoch 0 reads the same order (same seed and size)
    victim.write_bytes(damaged("png_stream", victim.read_bytes()))
    args = [
        "train",
        "--config",
        str(launch_config()),
        f"out_dir={tmp_path / 'run'}",
        f"data.root={root}",
        "data.dataset=folder",
        f"data.batch_size={N}",
        "model.teacher=test_resnet",
        "model.student=tv/shufflenet_v2_x0_5",
        f"model.teacher_checkpoint={teacher_ckpt}",
        "teacher_train.train_if_missing=false",
        f"selection.k={K}",
        "train.max_steps=3",
        "train.progress=false",
        "train.eval_every=0",
        "seed=0",
    ]
    assert launch.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {victim}: corrupt") and "batch 1)" in err[-1] and "launch.py scan" in err[-1]
    assert not any("Traceback" in line for line in err)


def test_scan_dali_finds_the_files_dali_rejects_or_crashes_on(tmp_path, digits_root, capsys, monkeypatch):
    """DALI 2.4 segfaults (~5 runs in 6, batch 32, 2 threads) on the damaged-Huffman JPEG that PIL reads: a training
    run then dies without a word. `scan --dali` decodes with DALI in processes it can lose; the crash is simulated
    here (the worker kills itself on one file), the rejection is real."""
    import numpy as np

    root = copy_digits(tmp_path, digits_root)
    rejected, crashes = sorted((root / "train" / "4").iterdir())[:2]
    rejected.write_bytes(damaged("jpeg_huffman", rejected.read_bytes()))
    real = np.fromfile

    def segfault_on(path, *args, **kwargs):  # runs in the forked DALI workers
        if path == str(crashes):
            faulthandler.disable()  # pytest's dump of the dying worker is noise here
            os.kill(os.getpid(), signal.SIGSEGV)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(np, "fromfile", segfault_on)
    clean = tmp_path / "clean.txt"
    assert launch.main(["scan", str(root), "--workers", "2", "--write-clean-list", str(clean)]) == 0  # PIL: fine
    assert launch.main(["scan", str(root), "--workers", "2", "--dali", "--write-clean-list", str(clean)]) == 1
    out = capsys.readouterr().out
    assert f"bad    {rejected.relative_to(root)}: DALI cannot decode it: nvImageCodec failure" in out
    assert f"bad    {crashes.relative_to(root)}: crashes DALI's decoder (signal 11)" in out
    assert "1795 good, 2 bad" in out and len(clean.read_text().splitlines()) == 1795


# ---------------------------------------------------------------- 3. an empty class folder


def test_an_empty_class_folder_is_refused_by_training_and_reported_by_scan(tmp_path, digits_root, teacher_ckpt, capsys):
    root = copy_digits(tmp_path, digits_root)
    for split in ("train", "val"):
        (root / split / "zz_empty").mkdir()
    (root / "train" / "zz_empty" / "photo.webp").write_bytes(b"RIFF")  # what is there instead is shown
    Image.new("RGB", (8, 8)).save(root / "val" / "zz_empty" / "ok.jpg")
    with pytest.raises(
        ValueError,
        match=r"1 of 11 class folder\(s\) have no images \(zz_empty\); they hold "
        r"zz_empty/photo.webp.*\(11 outputs, not 10\)",
    ) as err:
        scan_folder(root, "train")
    assert "\n" not in str(err.value) and str(root / "train") in str(err.value)
    with pytest.raises(ValueError, match="zz_empty"):  # a layout error: skipping bad files does not apply
        train(small_config(tmp_path, root, teacher_ckpt, "data.dataset=folder", "data.skip_bad_files=true"))
    assert not (tmp_path / "run" / "checkpoints").exists()

    assert launch.main(["scan", str(root), "--workers", "2"]) == 1
    out = capsys.readouterr().out
    assert "empty  train/zz_empty/ (no images)" in out and "layout: training refuses this folder" in out
    assert "ignored train/zz_empty/photo.webp" in out


# ---------------------------------------------------------------- 4. train/ and val/ classes differ


def test_a_class_in_only_one_split_is_named_by_training_and_fails_the_scan(tmp_path, digits_root, teacher_ckpt, capsys):
    root = copy_digits(tmp_path, digits_root)
    shutil.rmtree(root / "val" / "9")
    (root / "val" / "extra").mkdir()
    Image.new("RGB", (8, 8)).save(root / "val" / "extra" / "a.jpg")
    with pytest.raises(
        ValueError,
        match=r"\(10 in train/, 10 in val/\): 1 only in train/ \(9\), 1 only in "
        r"val/ \(extra\)",
    ) as err:
        train(small_config(tmp_path, root, teacher_ckpt, "data.dataset=folder"))
    assert "\n" not in str(err.value)

    assert launch.main(["scan", str(root), "--workers", "2"]) == 1  # every file decodes: still not clean
    out = capsys.readouterr().out
    assert "classes val/ and train/ have different class folders" in out and "0 bad" in out
    assert "train/val class mismatch" in out and "layout: training refuses" in out


# ---------------------------------------------------------------- 5. data.file_list


def test_a_file_list_matching_nothing_or_naming_missing_files_is_refused(tmp_path, digits_root, teacher_ckpt):
    files = scan_folder(digits_root, "train").files + scan_folder(digits_root, "val").files
    rel = [os.path.relpath(f, digits_root) for f in files]

    other_root = tmp_path / "wrong_root.txt"  # written relative to the folder above data.root
    other_root.write_text("".join(f"digits/{r}\n" for r in rel))
    with pytest.raises(
        ValueError,
        match=rf"none of its 1797 lines is an image in train/ or val/ of "
        rf"data.root={digits_root} \(first line: 'digits/{rel[0]}'\); the paths "
        r"are relative to data.root",
    ) as err:
        train(small_config(tmp_path, digits_root, teacher_ckpt, f"data.file_list={other_root}"))
    assert "\n" not in str(err.value)

    stale = tmp_path / "stale.txt"
    stale.write_text("".join(f"{r}\n" for r in rel[:100]) + "train/3/gone.jpg\n" + "train/3/gone2.jpg\n")
    with pytest.raises(
        ValueError,
        match=r"2 of its 102 lines name files that do not exist .* \(first: "
        r"'train/3/gone.jpg'\); the folder changed since the list was written",
    ):
        matched_file_list(str(stale), digits_root, files)

    # what users' editors and scripts produce: a BOM, CRLF, ./ and //, backslashes, absolute paths; plus a line
    # for a file outside train/ and val/ (a test/ split in a scan's list), left out quietly
    messy = tmp_path / "messy.txt"
    lines = [
        f"./{rel[0]}",
        rel[1].replace("/", "\\"),
        str(digits_root / rel[2]),
        rel[3].replace("/", "//"),
        *rel[4:],
        "MANIFEST.json",
    ]
    messy.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n\r\n")
    assert matched_file_list(str(messy), digits_root, files) == set(files)


# ---------------------------------------------------------------- 6. scan --write-clean-list destination


def test_scan_checks_the_clean_list_destination_before_decoding(tmp_path, digits_root, capsys, monkeypatch):
    decoded = []
    real = pipeline.scan_tree
    monkeypatch.setattr(pipeline, "scan_tree", lambda *a, **k: decoded.append(1) or real(*a, **k))
    for dest, message in [(tmp_path, "is a folder"), (tmp_path / "no" / "clean.txt", "does not exist")]:
        assert launch.main(["scan", str(digits_root), "--write-clean-list", str(dest)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --write-clean-list") and message in err and len(err.splitlines()) == 1
    assert decoded == []

    dest = tmp_path / "clean.txt"
    dest.write_text("old\n")
    assert launch.main(["scan", str(digits_root), "--write-clean-list", str(dest), "--workers", "2"]) == 0
    assert len(dest.read_text().splitlines()) == 1797 and sorted(os.listdir(tmp_path)) == ["clean.txt"]


# ---------------------------------------------------------------- 7. an interrupted scan

SLOW_SCAN = """
import sys, time
sys.path.insert(0, {repo!r})
import unixkd.pipeline.scan as scan
real = scan.decode_problem
def slow(path):  # a decode pass that is still running when the signal comes
    open({started!r}, "a").close()
    time.sleep(0.05)
    return real(path)
scan.decode_problem = slow
from unixkd import launch
sys.exit(launch.main(["scan", {root!r}, "--write-clean-list", {clean!r}, "--workers", "2"]))
"""


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, digits_root):
    """Three slow scans, signalled once decoding has started: SIGINT to the process, SIGINT to its whole process
    group (a terminal's Ctrl-C: the workers get it too), SIGTERM (a batch system)."""
    how = {"sigint": (signal.SIGINT, False), "ctrl_c": (signal.SIGINT, True), "sigterm": (signal.SIGTERM, False)}
    runs = {}
    for name in how:
        d = tmp_path_factory.mktemp(name)
        script = d / "scan.py"
        script.write_text(
            SLOW_SCAN.format(
                repo=str(REPO), started=str(d / "started"), root=str(digits_root), clean=str(d / "clean.txt")
            )
        )
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            cwd=d,
            text=True,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        runs[name] = (d, proc)
    out = {}
    for name, (d, proc) in runs.items():
        deadline = time.monotonic() + 120
        while not (d / "started").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        sig, group = how[name]
        os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
        out[name] = (proc.returncode, stdout, stderr, sorted(os.listdir(d)))
    return out


@pytest.mark.parametrize(
    "name,code,signame", [("sigint", 130, "SIGINT"), ("ctrl_c", 130, "SIGINT"), ("sigterm", 143, "SIGTERM")]
)
def test_an_interrupted_scan_ends_with_one_line_and_writes_nothing(interrupted, name, code, signame):
    rc, stdout, stderr, left = interrupted[name]
    assert rc == code, (rc, stderr)
    assert "Traceback" not in stderr and stdout == ""
    assert len(stderr.splitlines()) == 1 and stderr.startswith(f"scan: interrupted by {signame} after ")
    assert "of 1797 images; " in stderr and "clean.txt not written" in stderr
    assert left == ["scan.py", "started"]  # no clean list, no temporary file


# ---------------------------------------------------------------- 8. a large scan: progress


def test_scan_prints_progress_to_stderr_every_n_images(digits_root):
    log = io.StringIO()
    report = scan_tree(digits_root, workers=2, progress_every=500, log=log)
    lines = log.getvalue().splitlines()
    assert len(report.good) == 1797 and lines[0] == "scan: decoding 1797 images with 2 processes"
    assert [line.split()[1] for line in lines[1:]] == ["500/1797", "1000/1797", "1500/1797"]


# ---------------------------------------------------------------- probes: what new users point us at


def test_a_root_that_is_a_split_folder_asks_for_the_parent(digits_root, capsys):
    hint = rf"did you mean the parent folder {digits_root}\?"
    with pytest.raises(ValueError, match=rf"image folder not found: {digits_root}/train/train — .*{hint}"):
        scan_folder(digits_root / "train", "train")
    with pytest.raises(ValueError, match=hint):
        scan_tree(digits_root / "train")
    assert launch.main(["scan", str(digits_root / "train")]) == 2
    assert "did you mean the parent folder" in capsys.readouterr().err


def test_uppercase_hidden_symlinked_and_dangling_entries(tmp_path, digits_root, capsys):
    root = copy_digits(tmp_path, digits_root)
    three = root / "train" / "3"
    first = sorted(three.iterdir())[0]
    first.rename(three / "UPPER.JPEG")
    (three / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (three / "._UPPER.JPEG").write_bytes(b"\0\5\26\7")  # a macOS resource fork: .JPEG name, not an image
    (three / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (root / "train" / ".ipynb_checkpoints").mkdir()  # a hidden folder is not a class
    elsewhere = tmp_path / "elsewhere" / "7"
    shutil.move(str(root / "train" / "7"), str(elsewhere))
    (root / "train" / "7").symlink_to(elsewhere, target_is_directory=True)

    index = scan_folder(root, "train")
    assert index.classes == [str(c) for c in range(10)] and len(index.files) == 1438
    assert str(three / "UPPER.JPEG") in index.files and not any("._" in f or "dangling" in f for f in index.files)

    assert launch.main(["scan", str(root), "--workers", "2"]) == 1  # the dead link is reported
    out = capsys.readouterr().out
    assert "bad    train/3/dangling.jpg: missing (broken symlink)" in out and "1797 good, 1 bad" in out


def test_resuming_an_epoch_on_a_changed_file_list_warns_that_the_order_differs(digits_root):
    index = scan_folder(digits_root, "train")
    loader = DaliLoader(index, train=True, batch_size=16, image_size=32, device="cpu")
    batches = iter(loader)
    next(batches)
    state = loader.state_dict()
    assert state["files"] == 1438
    fewer = pipeline.restrict(index, set(index.files[1:]))  # e.g. a bad file deleted before the resume
    with pytest.warns(UserWarning, match=r"1437 files, 1438 when this epoch was saved"):
        DaliLoader(fewer, train=True, batch_size=16, image_size=32, device="cpu").load_state_dict(state)
