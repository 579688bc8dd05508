"""Build the DALI graph for one epoch: read the given files in the given order, decode, augment, normalize.

Train: decode a random-area crop (RandomResizedCrop semantics) → resize to S×S → random flip → normalize.
Val:   decode → resize → crop S×S → normalize, giving the pixels of torchvision's eval transform on a PIL image
       (``Resize(R)`` → ``CenterCrop(S)`` → ``ToTensor`` → ``Normalize``; timm's eval transform is the same with
       ``R = floor(S / crop_pct)``), which is what a pretrained teacher was evaluated on:
       - size, per image from its header: ``R = floor(S / val_resize_ratio)``; crop mode ``center``: the shorter side
         becomes R and the longer ``floor(R · long / short)`` (torchvision floors it; DALI's ``resize_shorter``
         rounds it); ``squash`` (timm's): R×R, the aspect ratio not kept;
       - filter ``val_interpolation`` (``bilinear`` or ``bicubic``), antialiased when shrinking, applied as PIL applies
         it: one axis, rounded to uint8, then the other (``pil_first_pass`` says which first). One 2-D DALI resize
         keeps the intermediate in float: up to ~9 levels off where bicubic overshoots. Where the crop keeps pixels
         next to the image border (``exact_borders``: a ratio near 1), each pass also reproduces PIL's border
         treatment (taps outside the image dropped, the filter renormalized) at ~3× the CPU cost of a plain pass;
       - crop corner ``round((R_side - S) / 2)`` with Python's round half to even, as torchvision's ``center_crop``
         (DALI's centred crop rounds 58.5 up to 59, torchvision down to 58);
       - EXIF orientation ignored, as PIL's ``Image.open`` (torchvision's and timm's loaders) ignores it.
       Measured on scikit-learn's photos cut to 24 shapes and formats (``benchmarks/preprocess_parity.py``, CPU):
       at most 1 level off (0.0175 normalized) for torchvision's transform, at most 2 for timm's bicubic ones.
With ``Recipe.pad`` set (small images already S×S, e.g. Tiny-ImageNet): train decodes, zero-pads ``pad`` pixels,
crops S×S at a random offset, flips, normalizes (CIFAR-style); val decodes, center-crops S×S, normalizes.
Every decoder ignores EXIF orientation (train too: the student sees one convention, and torchvision's does the same).
GPU mode decodes with ``device="mixed"`` (nvJPEG + the hardware decoder, with ``jpeg_fancy_upsampling`` so chroma is
upsampled as libjpeg-turbo, hence PIL, does) and runs the rest on the GPU;
CPU mode (pipeline ``device_id=None``) runs every operator on the CPU. Both give normalized images and int32
labels of shape [B, 1]; the images are float32 or float16 (``output_dtype``), [B, 3, S, S] (CHW) or, with
``channels_last``, [B, S, S, 3] (HWC), which the loader views as NCHW without a copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import nvidia.dali.math as dmath
from nvidia.dali import Pipeline, fn, types

# crop_mirror_normalize writes the requested type itself (no extra cast operator). DALI has no bfloat16, so float16 is
# the half type; it keeps every 8-bit level apart after normalizing (one level is 1/(255·std) ≈ 0.017, fp16's spacing
# is ≤ 0.002 for |x| < 4), and autocast casts to the compute type at the first layer.
OUTPUT_DTYPES = {"float32": types.FLOAT, "float16": types.FLOAT16}
# PIL's filters and DALI's: PIL's BILINEAR is a triangle (tent) filter and BICUBIC the cubic with a = -0.5, both with
# the support widened by the scale factor when downscaling; DALI's linear and cubic with antialias are the same filters.
INTERP_TYPES = {"bilinear": types.INTERP_LINEAR, "bicubic": types.INTERP_CUBIC}


@dataclass(frozen=True)
class Recipe:
    """What happens to each image; the same in GPU and CPU mode."""

    train: bool
    image_size: int
    crop_scale: tuple[float, float]  # RandomResizedCrop area range, fraction of the image
    crop_ratio: tuple[float, float]  # RandomResizedCrop aspect-ratio range (width / height)
    hflip: bool
    mean: tuple[float, float, float]  # per RGB channel, 0..1 units like torchvision
    std: tuple[float, float, float]
    val_resize_ratio: float  # val: crop size / resize target, timm's crop_pct (0.875: 224 from floor(224/0.875) = 256)
    pad: int | None = None  # None: the recipe above; n: pad-and-crop (images are expected at S×S)
    val_interpolation: str = "bilinear"  # val resize filter: a key of INTERP_TYPES
    val_crop_mode: str = "center"  # val: "center" (keep the aspect, shorter side to R) | "squash" (R×R)


def half_even_half(d):
    """``round(d / 2)`` with ties to even, for an integer d >= 0 (torchvision's ``int(round((h - crop_h) / 2.0))``),
    in integer arithmetic that works the same on Python ints and on DALI data nodes."""
    q = d // 2
    return q + (d - 2 * q) * (q - 2 * (q // 2))  # d odd and q odd: the tie q + 0.5 goes up to the even q + 1


def val_window(h, w, size: int, val_resize_ratio: float, crop_mode: str = "center", minimum=min):
    """The val geometry of an h×w image: (resized height, resized width, crop top, crop left).

    Python ints or DALI data nodes (pass ``minimum=nvidia.dali.math.min``); the graph uses exactly this code, the
    tests check it against torchvision's own functions. R = floor(size / ratio) is timm's ``scale_size``.
    """
    resize = math.floor(size / val_resize_ratio)
    if crop_mode == "squash":
        new_h = new_w = resize
    else:  # torchvision Resize(int): the shorter side becomes R, the longer int(R * long / short) (floored)
        short = minimum(h, w)
        new_h, new_w = (resize * h) // short, (resize * w) // short  # the shorter one is exactly R
    return new_h, new_w, half_even_half(new_h - size), half_even_half(new_w - size)


def pil_first_pass(h, w, new_h, new_w):
    """The size after the first of PIL's two resampling passes, (height, width); ints or DALI data nodes.

    Pillow resamples horizontally, then vertically, except (Pillow >= 13, python-pillow/Pillow#9549) when the
    height shrinks by more than twice as many pixels as the width: then vertically first. Checked against Pillow on
    random shapes in tests/test_preprocess.py. (Pillow < 13 always went horizontally first; the order changes the
    result by a level or two in a few pixels, more where bicubic overshoots.)
    """
    vertical_first = (new_h < h) & (h - new_h > 2 * (w - new_w))
    return h + vertical_first * (new_h - h), new_w + vertical_first * (w - new_w)


def build_pipeline(
    files: list[str],
    labels: list[int],
    recipe: Recipe,
    *,
    gpu: bool,
    device_id: int | None,
    batch_size: int,
    num_threads: int,
    seed: int,
    prefetch: int,
    hw_decoder_load: float,
    checkpoint: str | None = None,
    output_dtype: str = "float32",
    channels_last: bool = False,
    preallocate_hint: tuple[int, int] | None = None,
) -> Pipeline:
    """A DALI pipeline that reads ``files`` once through in exactly this order (no DALI-side shuffling).

    ``output_dtype``: "float32" or "float16". ``channels_last``: HWC output (NHWC batches) instead of CHW.
    ``preallocate_hint``: (width, height) of the largest image expected, for the hardware decoder (GPU mode only).
    """
    pipe = Pipeline(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id if gpu else None,  # None: CPU-only pipeline, no CUDA needed
        seed=seed,
        prefetch_queue_depth=prefetch,
        enable_checkpointing=True,  # reader position + RNG states can be saved; no cost per DALI's docs
        checkpoint=checkpoint,  # restore a saved state: the outputs continue exactly where they stopped
    )
    op_device = "gpu" if gpu else "cpu"
    decoder_args = _decoder_args(gpu, hw_decoder_load, preallocate_hint)

    with pipe:
        jpegs, label = fn.readers.file(files=files, labels=labels, random_shuffle=False, name="Reader")
        if recipe.pad is not None:
            images, mirror, crop = _pad_and_shift(jpegs, decoder_args, recipe, op_device)
        elif recipe.train:
            images, mirror, crop = _random_resized_crop(jpegs, decoder_args, recipe, op_device)
        else:
            images = _val_resize_and_crop(jpegs, fn.decoders.image(jpegs, **decoder_args), recipe, op_device)
            mirror = 0
            crop = None  # already S×S
        images = fn.crop_mirror_normalize(
            images,
            device=op_device,
            dtype=OUTPUT_DTYPES[output_dtype],
            output_layout="HWC" if channels_last else "CHW",
            crop=crop,
            mirror=mirror,
            mean=[255.0 * m for m in recipe.mean],  # DALI works in 0..255 pixel units
            std=[255.0 * s for s in recipe.std],
        )
        if gpu:  # labels cross to the device inside DALI's pipelined stages, not as a torch copy per step
            label = label.gpu()
        pipe.set_outputs(images, label)
    return pipe


def _decoder_args(gpu: bool, hw_decoder_load: float, preallocate_hint: tuple[int, int] | None) -> dict:
    """The image decoder's arguments: mixed (nvJPEG) on the GPU, else the CPU decoder."""
    decoder_device = "mixed" if gpu else "cpu"
    # RGB: grayscale becomes 3 channels. adjust_orientation off: PIL (torchvision's loader, timm's) ignores EXIF.
    decoder_args = {"device": decoder_device, "output_type": types.RGB, "adjust_orientation": False}
    if gpu:
        decoder_args["hw_decoder_load"] = hw_decoder_load
        decoder_args["jpeg_fancy_upsampling"] = True  # nvJPEG upsamples chroma as libjpeg-turbo (CPU, PIL) does
        if preallocate_hint is not None:
            decoder_args["preallocate_width_hint"], decoder_args["preallocate_height_hint"] = preallocate_hint
    return decoder_args


def _pad_and_shift(jpegs, decoder_args: dict, recipe: Recipe, op_device: str):
    """recipe.pad set: decode; train shifts the image by -pad..pad (zero fill) and may flip it, val crops the
    centre. Returns (images, mirror, crop) for crop_mirror_normalize."""
    size = recipe.image_size
    images = fn.decoders.image(jpegs, **decoder_args)
    mirror = 0
    crop = (size, size)  # val: centered
    if recipe.train:  # anchor relative to the image: -pad..pad in rows and columns
        anchor = fn.random.uniform(values=list(range(-recipe.pad, recipe.pad + 1)), shape=[2], dtype=types.INT32)
        images = fn.slice(
            images,
            start=anchor,
            shape=[size, size],
            axes=[0, 1],
            out_of_bounds_policy="pad",
            fill_values=0,
            device=op_device,
        )
        mirror = fn.random.coin_flip(probability=0.5) if recipe.hflip else 0
        crop = None
    return images, mirror, crop


def _random_resized_crop(jpegs, decoder_args: dict, recipe: Recipe, op_device: str):
    """Train without pad: a random area and aspect crop fused into the decode, resized to S×S, maybe flipped.
    Returns (images, mirror, crop) for crop_mirror_normalize."""
    size = recipe.image_size
    images = fn.decoders.image_random_crop(
        jpegs,
        random_area=list(recipe.crop_scale),
        random_aspect_ratio=list(recipe.crop_ratio),
        **decoder_args,
    )
    images = fn.resize(images, device=op_device, resize_x=size, resize_y=size)
    mirror = fn.random.coin_flip(probability=0.5) if recipe.hflip else 0
    crop = None  # already S×S
    return images, mirror, crop


def _val_resize_and_crop(jpegs, images, recipe: Recipe, op_device: str):
    """torchvision's Resize + CenterCrop on PIL images, per image (see the module docstring)."""
    if recipe.val_interpolation not in INTERP_TYPES:
        raise ValueError(
            f"val_interpolation must be one of {', '.join(INTERP_TYPES)}, got {recipe.val_interpolation!r}"
        )
    size = recipe.image_size
    # the decoded shape without decoding (header only, CPU); orientation ignored like the decoder
    shape = fn.peek_image_shape(jpegs, adjust_orientation=False, dtype=types.INT64)  # [H, W, C]
    h, w = shape[0], shape[1]
    new_h, new_w, top, left = val_window(h, w, size, recipe.val_resize_ratio, recipe.val_crop_mode, minimum=dmath.min)
    interp = INTERP_TYPES[recipe.val_interpolation]
    # PIL resamples one axis into a uint8 image, then the other: two passes, rounded to uint8 in between
    first_h, first_w = pil_first_pass(h, w, new_h, new_w)
    if exact_borders(size, recipe.val_resize_ratio, recipe.val_interpolation):
        images = _pil_resample(images, (h, w), (first_h, first_w), interp, op_device)
        images = _pil_resample(images, (first_h, first_w), (new_h, new_w), interp, op_device)
    else:  # the crop drops every pixel that the border treatment touches (for all but tiny, upscaled images)
        resize = dict(interp_type=interp, antialias=True, device=op_device)
        images = fn.resize(images, size=_as_float(first_h, first_w), **resize)
        images = fn.resize(images, size=_as_float(new_h, new_w), **resize)
    start = fn.cast(fn.stack(top, left), dtype=types.INT32)  # slice takes int32 (or float) anchors
    return fn.slice(images, start=start, shape=[size, size], axes=[0, 1], device=op_device)


FILTER_SUPPORT = {"bilinear": 1, "bicubic": 2}  # PIL's filter radius, in output pixels when shrinking


def exact_borders(size: int, val_resize_ratio: float, interpolation: str) -> bool:
    """Whether the val crop may keep pixels that PIL's border treatment changes: then the graph reproduces it (see
    ``_pil_resample``; ~3× the CPU time of a plain pass), otherwise the crop removes them and a plain DALI resize
    gives the same pixels. The crop's margin on the shorter side is ``(R - size) // 2``, R = floor(size / ratio);
    a shrunk image's first ``support`` output pixels (1 bilinear, 2 bicubic) see the border, an upscaled one's more
    (bicubic: ~2 × the factor). Twice the support is the margin asked for: e.g. at 224 px, bicubic ratios up to 0.95
    (margin 5) and bilinear up to 0.97 take the plain path. Tiny images upscaled more than ~2× keep a level-or-two
    difference next to the crop's edge there."""
    margin = (math.floor(size / val_resize_ratio) - size) // 2
    return margin <= 2 * FILTER_SUPPORT[interpolation]


def _as_float(*values):
    return fn.cast(fn.stack(*values), dtype=types.FLOAT)


def _pil_resample(images, in_hw, out_hw, interp, op_device: str):
    """Resize uint8 ``images`` from ``in_hw`` to ``out_hw`` (one axis, or neither, changes) as PIL resamples: the
    filter (antialiased: widened by the scale factor when shrinking) drops its taps that fall outside the image and
    is renormalized over the rest, the result rounded to uint8. DALI repeats the edge pixel instead, which changes
    the outermost pixels (by up to ~10 levels after a large shrink; over ~2 × the factor pixels after a large
    upscale). So: zero-pad the resampled axis, resample the image and a 1-pixel-thick mask of ones over the original
    region (the ROI) into float, and divide (broadcast over the other axis)."""
    (in_h, in_w), (out_h, out_w) = in_hw, out_hw
    rows, cols = in_h != out_h, in_w != out_w  # which axis this pass resamples (bool nodes)
    pad_h, pad_w = rows * ((2 * in_h) // out_h + 3), cols * ((2 * in_w) // out_w + 3)  # > the filter's reach
    start = fn.cast(fn.stack(-pad_h, -pad_w), dtype=types.INT32)
    roi_start = _as_float(pad_h, pad_w)

    def resample(x, x_h, x_w, to_h, to_w):
        padded = fn.slice(
            x,
            start=start,
            shape=fn.cast(fn.stack(x_h + 2 * pad_h, x_w + 2 * pad_w), dtype=types.INT32),
            axes=[0, 1],
            out_of_bounds_policy="pad",
            fill_values=0,
            device=op_device,
        )
        return fn.resize(
            padded,
            size=_as_float(to_h, to_w),
            roi_start=roi_start,
            roi_end=roi_start + _as_float(x_h, x_w),
            interp_type=interp,
            antialias=True,
            dtype=types.FLOAT,
            device=op_device,
        )

    weighted = resample(images, in_h, in_w, out_h, out_w)  # per output pixel: Σ weight × pixel over in-image taps
    # the same weights over a mask of ones: one row (or column) is enough, the other axis is not resampled
    mask_h, mask_w = 1 + rows * (in_h - 1), 1 + cols * (in_w - 1)
    corner = fn.slice(
        images, start=[0, 0], shape=fn.cast(fn.stack(mask_h, mask_w), dtype=types.INT32), axes=[0, 1], device=op_device
    )
    ones = fn.cast(corner[:, :, 0:1] * 0 + 1, dtype=types.UINT8)
    weight = resample(ones, mask_h, mask_w, 1 + rows * (out_h - 1), 1 + cols * (out_w - 1))
    return fn.cast(weighted / weight, dtype=types.UINT8)  # DALI's cast rounds to nearest and saturates, like PIL
