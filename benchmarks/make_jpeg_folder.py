"""Build an ImageNet-like JPEG folder for the pipeline benchmarks from photos a dependency ships (no download).

    python benchmarks/make_jpeg_folder.py --out /data/fake-imagenet [--classes 1000] [--train-per-class 4]
        [--val-per-class 1] [--seed 0] [--size 500] [--quality 90] [--force] [--photos DIR]

Writes ``<out>/{train,val}/<class>/*.JPEG`` (class folders ``n00000000``, ``n00000001``, ... like ImageNet's
synset ids) and ``<out>/manifest.json`` (counts, byte and pixel sizes, source photos, seed, versions).

Decode time depends on the bytes, not on what the photo shows: pixel count, compressed size (entropy), chroma
subsampling and baseline coding (the hardware decoder takes baseline JPEGs only). So each image matches
ImageNet's typical file, not its content: 500 px on the long side (500×375, 500×333, 500×500; a quarter
portrait), 4:2:0, baseline, quality 90, about 110 KB. The only photos shipped with a dependency the project
already has are scikit-learn's two sample photos (china.jpg, flower.jpg, 640×427; scikit-image is not a
dependency, scipy's datasets download). Each image is a random crop of one of them (area ≥ 60% of the largest crop
with the target's aspect, so little upscaling), resized with Lanczos, jittered (brightness, contrast, saturation
±20%, a mirror half the time) so no two files are alike, then sharpened and given luminance grain like a camera's
(unsharp mask radius 2, 300%; σ = 10 levels): without those two, re-encoded crops of these smooth, already
compressed photos come out near 50 KB, half of ImageNet's mean.

Deterministic: image i of class c in a split draws from ``default_rng([seed, split, c, i])``, so the same
arguments give the same bytes (with the same Pillow/libjpeg).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

SPLITS = ("train", "val")
MANIFEST = "manifest.json"
GENERATOR = "benchmarks/make_jpeg_folder.py"
ASPECTS = ((4 / 3, 0.6), (3 / 2, 0.3), (1.0, 0.1))  # width / height of a landscape image, and how often
PORTRAIT = 0.25  # share of images turned upright
MIN_AREA = 0.6  # crop area as a fraction of the largest crop with the target's aspect
JITTER = 0.2  # brightness, contrast and saturation factors in [1 - JITTER, 1 + JITTER]
SHARPEN = ImageFilter.UnsharpMask(radius=2, percent=300, threshold=0)
GRAIN = 10.0  # σ of the luminance noise, in 0..255 levels


def source_photos(folder: Path | None = None) -> list[tuple[str, Image.Image]]:
    """scikit-learn's sample photos, bundled in its wheel (``load_sample_images`` reads them from disk).

    ``folder``: read the same photos from there instead (copies, for a machine that has no scikit-learn); the
    manifest's pixel hashes show they are the same.
    """
    if folder is not None:
        files = sorted(Path(folder).glob("*.jpg"))
        if not files:
            raise ValueError(f"--photos {folder}: no *.jpg files there")
        return [(f.name, Image.open(f).convert("RGB")) for f in files]
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    return [(Path(f).name, Image.fromarray(img)) for f, img in zip(bunch.filenames, bunch.images)]


def make_image(photos: list[Image.Image], rng: np.random.Generator, size: int) -> Image.Image:
    """One ImageNet-like picture: a jittered, sharpened, grainy random crop of a source photo, ``size`` px long."""
    aspect = ASPECTS[rng.choice(len(ASPECTS), p=[p for _, p in ASPECTS])][0]
    if rng.random() < PORTRAIT:
        aspect = 1 / aspect
    w, h = (size, round(size / aspect)) if aspect >= 1 else (round(size * aspect), size)
    photo = photos[rng.integers(len(photos))]
    W, H = photo.size
    cw = min(W, H * aspect)  # the largest crop with the target's aspect, then a random share of its area
    scale = np.sqrt(rng.uniform(MIN_AREA, 1.0))
    cw, ch = cw * scale, cw / aspect * scale
    x0, y0 = rng.uniform(0, W - cw), rng.uniform(0, H - ch)
    image = photo.resize((w, h), Image.LANCZOS, box=(x0, y0, x0 + cw, y0 + ch))
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhance(image).enhance(rng.uniform(1 - JITTER, 1 + JITTER))
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    image = image.filter(SHARPEN)
    grain = rng.normal(0.0, GRAIN, (h, w, 1)).astype(np.float32)  # one value for R, G, B: luminance grain
    pixels = np.asarray(image, dtype=np.float32) + grain
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def _write_images(out: Path, photos, classes: int, per_class: dict, seed: int, size: int, quality: int):
    """Every image of every split and class, each from its own seeded generator; their byte sizes and (w, h)."""
    sizes, dims = [], []
    for s, split in enumerate(SPLITS):
        for c in range(classes):
            folder = out / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class[split]):
                image = make_image(photos, np.random.default_rng([seed, s, c, i]), size)
                path = folder / f"n{c:08d}_{split}_{i}.JPEG"
                # baseline (not progressive) 4:2:0 like most of ImageNet: what the hardware decoder takes
                image.save(path, "JPEG", quality=quality, subsampling="4:2:0", optimize=False, progressive=False)
                sizes.append(path.stat().st_size)
                dims.append(image.size)
    return sizes, dims


def _byte_stats(sizes: list[int]) -> dict:
    return {
        "mean": float(np.mean(sizes)),
        "min": int(np.min(sizes)),
        "max": int(np.max(sizes)),
        "p5": float(np.percentile(sizes, 5)),
        "p95": float(np.percentile(sizes, 95)),
        "total": int(np.sum(sizes)),
    }


def build(
    out: Path,
    *,
    classes: int,
    train_per_class: int,
    val_per_class: int,
    seed: int,
    size: int,
    quality: int,
    photos_dir: Path | None = None,
) -> dict:
    """Write the folder and its manifest; return the manifest."""
    named = source_photos(photos_dir)
    per_class = {"train": train_per_class, "val": val_per_class}
    sizes, dims = _write_images(out, [image for _, image in named], classes, per_class, seed, size, quality)
    manifest = {
        "generator": GENERATOR,
        "seed": seed,
        "classes": classes,
        "per_class": per_class,
        "counts": {split: classes * per_class[split] for split in SPLITS},
        "long_side": size,
        "quality": quality,
        "bytes": _byte_stats(sizes),
        "mean_width": float(np.mean([w for w, _ in dims])),
        "mean_height": float(np.mean([h for _, h in dims])),
        "sources": [
            {
                "package": "scikit-learn",
                "file": name,
                "size": list(image.size),
                "sha256_pixels": hashlib.sha256(image.tobytes()).hexdigest(),
            }
            for name, image in named
        ],
        "recipe": {
            "aspects": ASPECTS,
            "portrait": PORTRAIT,
            "min_area": MIN_AREA,
            "jitter": JITTER,
            "unsharp": {"radius": 2, "percent": 300},
            "grain_sigma": GRAIN,
            "subsampling": "4:2:0",
        },
        "versions": _versions(),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _versions() -> dict:
    import PIL

    try:
        import sklearn
    except ImportError:  # --photos: the photos came from a copy
        sklearn = None
    return {"pillow": PIL.__version__, "scikit-learn": sklearn and sklearn.__version__, "numpy": np.__version__}


def prepare(out: Path, force: bool) -> None:
    """Refuse a non-empty folder unless --force, and then only one this script built (it deletes train/ and val/)."""
    if not out.exists() or not any(out.iterdir()):
        return
    if not force:
        raise ValueError(f"{out} is not empty; pass --force to rebuild it")
    if not (out / MANIFEST).is_file() or json.loads((out / MANIFEST).read_text()).get("generator") != GENERATOR:
        raise ValueError(f"{out} has files but no {MANIFEST} from {GENERATOR}; not deleting it, even with --force")
    for split in SPLITS:
        shutil.rmtree(out / split, ignore_errors=True)
    (out / MANIFEST).unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder to create (train/, val/, manifest.json)")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--train-per-class", type=int, default=4)
    parser.add_argument("--val-per-class", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=500, help="long side in pixels (ImageNet's typical 500)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (1-95)")
    parser.add_argument("--force", action="store_true", help="rebuild a folder this script made before")
    parser.add_argument(
        "--photos",
        type=Path,
        default=None,
        help="folder with the source photos (*.jpg) instead of scikit-learn's (no scikit-learn)",
    )
    args = parser.parse_args(argv)
    for name, value, low in [("--classes", args.classes, 1), ("--train-per-class", args.train_per_class, 1),
                             ("--val-per-class", args.val_per_class, 1), ("--size", args.size, 16),
                             ("--quality", args.quality, 1), ("--seed", args.seed, 0)]:  # fmt: skip
        if value < low:
            parser.error(f"{name} must be >= {low}, got {value}")
    if args.quality > 95:
        parser.error(f"--quality must be <= 95 (Pillow's advice), got {args.quality}")
    try:
        prepare(args.out, args.force)
        source_photos(args.photos)  # a bad --photos is one line, before anything is written
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    m = build(
        args.out,
        classes=args.classes,
        train_per_class=args.train_per_class,
        val_per_class=args.val_per_class,
        seed=args.seed,
        size=args.size,
        quality=args.quality,
        photos_dir=args.photos,
    )
    print(
        f"{args.out}: {m['counts']['train']} train + {m['counts']['val']} val JPEGs, mean "
        f"{m['bytes']['mean'] / 1e3:.1f} KB (p5 {m['bytes']['p5'] / 1e3:.0f}, p95 {m['bytes']['p95'] / 1e3:.0f}), "
        f"mean {m['mean_width']:.0f}×{m['mean_height']:.0f} px"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
