"""How far our DALI val pipeline is from the eval transform a pretrained teacher was evaluated with, on real photos.

    python benchmarks/preprocess_parity.py [--device cpu|gpu] [--size 224] [--teacher NAME] [--photos DIR]
        [--json PATH]

Reference: torchvision's ImageNet eval transform on PIL images (``Resize(floor(S / 0.875))`` → ``CenterCrop(S)`` →
``ToTensor`` → ``Normalize``, bilinear, ImageNet mean/std), the way torchvision's ``ImageFolder`` loads them
(``Image.open(f).convert("RGB")``, EXIF orientation ignored); with ``--teacher NAME`` (a timm model) timm's own
``create_transform(**resolve_data_config(...), is_training=False)`` for that model's pretrained cfg at ``--size``.
Ours: ``DaliLoader(train=False)`` with what ``training.preprocess`` resolves for such a teacher (torchvision's
defaults for no teacher); on a checkout older than ``training/preprocess.py`` the loader's defaults, which is what
that code used for every teacher.

The photos are scikit-learn's two sample photos (china.jpg, flower.jpg, 640×427, the only real photos a dependency
ships), as shipped and re-cut into the shapes that stress the geometry (``PHOTOS``): portrait and landscape,
ImageNet's typical 500×375 / 500×333, sizes whose crop anchor lands on .5 (where rounding half to even and half
away from zero disagree), resized long sides that floor and round differently, very wide and very tall, smaller
than the crop, grayscale, progressive, 4:4:4 chroma, CMYK, PNG with alpha, and one with an EXIF orientation tag.
``PROBES`` are files measured and reported but left out of the totals (a 16-bit PNG: PIL's ``convert("RGB")``
saturates it to white, DALI scales it to 8 bits).

Prints one line per photo (mean and max absolute difference in normalized units, share of values off by > 0.1) and
the totals; ``--json`` writes them with the device, library versions and git commit.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere: the checkout's pipeline/ and training/
    sys.path.insert(0, str(REPO))

# (file name, source photo 0 = china / 1 = flower, width, height, kind); kind "original": the shipped file as is
PHOTOS = [
    ("china_original.jpg", 0, 640, 427, "original"),  # long side 383.7 after the resize: floored 383, rounded 384
    ("flower_original.jpg", 1, 640, 427, "original"),
    ("landscape_500x375.jpg", 0, 500, 375, "jpeg"),  # ImageNet's most common shape; anchor 58.5 → 58
    ("portrait_375x500.jpg", 1, 375, 500, "jpeg"),
    ("landscape_500x333.jpg", 1, 500, 333, "jpeg"),
    ("portrait_333x500.jpg", 0, 333, 500, "jpeg"),
    ("anchor_half_341x256.jpg", 0, 341, 256, "jpeg"),  # resized 341×256: anchor 58.5 (tie to even 58; DALI 59)
    ("anchor_half_256x343.jpg", 1, 256, 343, "jpeg"),  # 59.5: both round up to 60
    ("floor_597x448.jpg", 1, 597, 448, "jpeg"),  # 341.14 → 341, anchor 58.5
    ("odd_511x383.jpg", 0, 511, 383, "jpeg"),
    ("odd_383x511.jpg", 1, 383, 511, "jpeg"),
    ("wide_1000x150.jpg", 0, 1000, 150, "jpeg"),  # panorama: 1706×256
    ("tall_150x900.jpg", 1, 150, 900, "jpeg"),
    ("tall_300x800.jpg", 0, 300, 800, "jpeg"),  # shrinks 118 rows, 44 columns: Pillow >= 13 resamples rows first
    ("square_257x257.jpg", 0, 257, 257, "jpeg"),
    ("near_square_300x301.jpg", 1, 300, 301, "jpeg"),
    ("small_100x80.jpg", 0, 100, 80, "jpeg"),  # smaller than the crop: upscaled
    ("tiny_16x12.jpg", 1, 16, 12, "jpeg"),
    ("gray_480x360.jpg", 0, 480, 360, "gray"),  # grayscale JPEG: one channel, replicated to RGB by both
    ("progressive_500x375.jpg", 1, 500, 375, "progressive"),
    ("chroma444_450x300.jpg", 0, 450, 300, "444"),
    ("cmyk_400x300.jpg", 1, 400, 300, "cmyk"),
    ("alpha_320x240.png", 0, 320, 240, "alpha"),  # RGBA PNG: both drop the alpha channel
    ("exif_rotate90_400x300.jpg", 1, 400, 300, "exif6"),  # EXIF orientation 6: PIL ignores it, so must we
]
PROBES = [
    ("gray16_320x240.png", 0, 320, 240, "gray16"),
]
EXIF_ORIENTATION = 0x0112


SOURCES = ("china.jpg", "flower.jpg")


def source_files(photos_dir: Path | None = None) -> list[Path]:
    """scikit-learn's sample photos as shipped in its wheel, or the same files copied to ``photos_dir`` (a GPU
    machine without scikit-learn: a copy of its two sample photos)."""
    if photos_dir is not None:
        files = [Path(photos_dir) / name for name in SOURCES]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"--sources {photos_dir}: missing {', '.join(missing)}")
        return files
    from sklearn.datasets import load_sample_images

    by_name = {Path(f).name: Path(f) for f in load_sample_images().filenames}
    return [by_name[name] for name in SOURCES]


def make_photos(out: Path, specs=PHOTOS, photos_dir: Path | None = None) -> list[Path]:
    """Write ``specs`` into ``out`` (deterministic for a given Pillow); returns the paths in order."""
    out.mkdir(parents=True, exist_ok=True)
    shipped = source_files(photos_dir)
    sources = [Image.open(f).convert("RGB") for f in shipped]
    paths = []
    for name, src, w, h, kind in specs:
        path = out / name
        paths.append(path)
        if kind == "original":
            shutil.copyfile(shipped[src], path)
            continue
        photo = sources[src]
        W, H = photo.size
        aspect = w / h  # the largest crop of this aspect, a little off centre, resized with Lanczos
        cw, ch = (W, W / aspect) if aspect > W / H else (H * aspect, H)
        x0, y0 = (W - cw) * 0.4, (H - ch) * 0.6
        image = photo.resize((w, h), Image.LANCZOS, box=(x0, y0, x0 + cw, y0 + ch))
        if kind == "gray":
            image.convert("L").save(path, quality=90)
        elif kind == "progressive":
            image.save(path, quality=90, progressive=True)
        elif kind == "444":
            image.save(path, quality=90, subsampling=0)
        elif kind == "cmyk":
            image.convert("CMYK").save(path, quality=90)
        elif kind == "alpha":
            rgba = np.asarray(image.convert("RGBA")).copy()
            rgba[..., 3] = np.linspace(0, 255, w).astype(np.uint8)[None]
            Image.fromarray(rgba).save(path)
        elif kind == "gray16":
            Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257).save(path)
        elif kind == "exif6":
            exif = Image.Exif()
            exif[EXIF_ORIENTATION] = 6  # "rotate 90° clockwise to display"
            image.save(path, quality=90, exif=exif)
        else:
            image.save(path, quality=90)
    return paths


def torchvision_settings() -> dict:
    return {
        "val_resize_ratio": 0.875,
        "val_interpolation": "bilinear",
        "val_crop_mode": "center",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
    }


def torchvision_reference(size: int):
    """torchvision's ImageNet eval transform for PIL images."""
    from torchvision import transforms as T

    s = torchvision_settings()
    return T.Compose(
        [
            T.Resize(math.floor(size / s["val_resize_ratio"])),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(s["mean"], s["std"]),
        ]
    )


def timm_reference(teacher: str, size: int):
    """timm's eval transform for ``teacher``'s pretrained cfg at ``size``, and the settings it resolved."""
    from timm.data import create_transform, resolve_data_config
    from timm.models import get_pretrained_cfg

    cfg = resolve_data_config({"input_size": (3, size, size)}, pretrained_cfg=get_pretrained_cfg(teacher).to_dict())
    transform = create_transform(**cfg, is_training=False)
    return transform, cfg


def our_settings(teacher: str | None) -> tuple[dict, str]:
    """What the trainer's val loader uses for this teacher on a folder dataset, and which code decided it."""
    try:
        from unixkd.training.preprocess import TORCHVISION_DEFAULTS, teacher_data_config
    except ImportError:  # a checkout from before the teacher's preprocessing was followed
        return {}, "DaliLoader defaults (no training/preprocess.py)"
    settings = dict(TORCHVISION_DEFAULTS)
    cfg = teacher_data_config(teacher) if teacher else None
    if cfg is not None:
        settings.update(
            val_resize_ratio=cfg["crop_pct"],
            val_interpolation=cfg["interpolation"],
            val_crop_mode=cfg["crop_mode"],
            mean=tuple(cfg["mean"]),
            std=tuple(cfg["std"]),
        )
    return settings, "training.preprocess"


def dali_val(paths: list[Path], size: int, settings: dict, device: str, **loader_kwargs) -> list[np.ndarray]:
    """Our val pipeline's output for each path (normalized CHW float32), in order."""
    import torch

    from unixkd.pipeline import DaliLoader, FolderIndex

    kwargs = dict(loader_kwargs)
    if settings:
        kwargs.update(
            val_resize_ratio=settings["val_resize_ratio"], mean=tuple(settings["mean"]), std=tuple(settings["std"])
        )
        if settings["val_interpolation"] != "bilinear" or settings["val_crop_mode"] != "center":
            kwargs.update(val_interpolation=settings["val_interpolation"], val_crop_mode=settings["val_crop_mode"])
    index = FolderIndex(files=[str(p) for p in paths], labels=list(range(len(paths))), classes=[p.name for p in paths])
    loader = DaliLoader(
        index,
        train=False,
        batch_size=len(paths),
        image_size=size,
        device=device,
        device_id=0 if device == "gpu" else None,
        num_threads=2,
        **kwargs,
    )
    out: dict[int, np.ndarray] = {}
    for images, labels in loader:
        for image, label in zip(images.to("cpu", torch.float32), labels.tolist()):
            out[label] = image.numpy()
    return [out[i] for i in range(len(paths))]


def reference_outputs(paths: list[Path], transform) -> list[np.ndarray]:
    """``transform`` on each file loaded like torchvision's ImageFolder / timm's ImageDataset do."""
    outputs = []
    for p in paths:
        with open(p, "rb") as f:
            outputs.append(transform(Image.open(f).convert("RGB")).numpy())
    return outputs


def differences(ours: list[np.ndarray], reference: list[np.ndarray], names: list[str]) -> dict:
    """Per photo and in total: mean and max |ours − reference|, and the share of values off by more than 0.1."""
    rows = []
    for name, a, b in zip(names, ours, reference):
        if a.shape != b.shape:
            rows.append({"photo": name, "error": f"shape {a.shape} vs {b.shape}"})
            continue
        d = np.abs(a.astype(np.float64) - b.astype(np.float64))
        rows.append(
            {
                "photo": name,
                "mean_abs": float(d.mean()),
                "max_abs": float(d.max()),
                "share_over_0.1": float((d > 0.1).mean()),
            }
        )
    good = [r for r in rows if "error" not in r]
    total = {
        "photos": len(rows),
        "mean_abs": float(np.mean([r["mean_abs"] for r in good])) if good else None,
        "max_abs": max((r["max_abs"] for r in good), default=None),
        "share_over_0.1": float(np.mean([r["share_over_0.1"] for r in good])) if good else None,
        "shape_errors": len(rows) - len(good),
    }
    return {"per_photo": rows, "total": total}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="DALI mode")
    parser.add_argument("--size", type=int, default=224, help="crop size (data.image_size)")
    parser.add_argument("--teacher", default=None, help="a timm model: compare with timm's eval transform for it")
    parser.add_argument(
        "--photos",
        type=Path,
        default=Path("/tmp/unixkd_parity_photos"),
        help="where to write the photo set (rebuilt each run)",
    )
    parser.add_argument(
        "--sources",
        type=Path,
        default=None,
        help="folder with china.jpg and flower.jpg (default: scikit-learn's own copies)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--label", default="", help="a note stored in the JSON (e.g. which code was measured)")
    return parser


def _print_rows(result: dict, device: str, reference: str) -> None:
    """One line per photo and probe, then the total."""
    for row in result["per_photo"] + [dict(r, photo=r["photo"] + " (probe)") for r in result["probes"]]:
        if "error" in row:
            print(f"{row['photo']:34s} {row['error']}")
        else:
            print(
                f"{row['photo']:34s} mean {row['mean_abs']:.5f}  max {row['max_abs']:.4f}  "
                f">0.1 {row['share_over_0.1']:.4f}"
            )
    t = result["total"]
    print(
        f"total over {t['photos']} photos ({device}, {reference}): mean {t['mean_abs']:.5f}  max "
        f"{t['max_abs']:.4f}  >0.1 {t['share_over_0.1']:.4f}"
        + (f"  shape errors {t['shape_errors']}" if t["shape_errors"] else "")
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    paths = make_photos(args.photos, photos_dir=args.sources)
    probes = make_photos(args.photos / "probes", PROBES, photos_dir=args.sources)
    if args.teacher:
        transform, resolved = timm_reference(args.teacher, args.size)
        reference = f"timm create_transform for {args.teacher}: " + json.dumps(
            {k: resolved[k] for k in ("crop_pct", "interpolation", "crop_mode", "mean", "std")}
        )
    else:
        transform, reference = torchvision_reference(args.size), "torchvision Resize/CenterCrop/ToTensor/Normalize"
    settings, decided_by = our_settings(args.teacher)
    ours = dali_val(paths + probes, args.size, settings, args.device)
    ref = reference_outputs(paths + probes, transform)
    result = differences(ours[: len(paths)], ref[: len(paths)], [p.name for p in paths])
    result["probes"] = differences(ours[len(paths) :], ref[len(paths) :], [p.name for p in probes])["per_photo"]

    import torch

    from unixkd.training.measure.timing import environment

    command = "python benchmarks/preprocess_parity.py " + " ".join(argv if argv is not None else sys.argv[1:])
    record = {
        "kind": "unixkd preprocess parity",
        "environment": environment(torch.device("cuda" if args.device == "gpu" else "cpu")),
        "command": command,
        "label": args.label,
        "dali_device": args.device,
        "size": args.size,
        "reference": reference,
        "ours": {"settings": settings or "DaliLoader defaults", "decided_by": decided_by},
        **result,
    }
    _print_rows(result, args.device, reference)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
