"""Build the DALI graph for one epoch: read the given files in the given order, decode, augment, normalize.

Train: decode a random-area crop (RandomResizedCrop semantics) → resize to S×S → random flip → normalize.
Val:   decode → resize the shorter side to round(S / val_resize_ratio) → center crop S×S → normalize.
With ``Recipe.pad`` set (small images already S×S, e.g. Tiny-ImageNet): train decodes, zero-pads ``pad`` pixels,
crops S×S at a random offset, flips, normalizes (CIFAR-style); val decodes, center-crops S×S, normalizes.
GPU mode decodes with ``device="mixed"`` (nvJPEG + the hardware decoder) and runs the rest on the GPU;
CPU mode (pipeline ``device_id=None``) runs every operator on the CPU. Both give normalized images and int32
labels of shape [B, 1]; the images are float32 or float16 (``output_dtype``), [B, 3, S, S] (CHW) or, with
``channels_last``, [B, S, S, 3] (HWC), which the loader views as NCHW without a copy.
"""

from __future__ import annotations

from dataclasses import dataclass

from nvidia.dali import Pipeline, fn, types

# crop_mirror_normalize writes the requested type itself (no extra cast operator). DALI has no bfloat16, so float16 is
# the half type; it keeps every 8-bit level apart after normalizing (one level is 1/(255·std) ≈ 0.017, fp16's spacing
# is ≤ 0.002 for |x| < 4), and autocast casts to the compute type at the first layer.
OUTPUT_DTYPES = {"float32": types.FLOAT, "float16": types.FLOAT16}


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
    val_resize_ratio: float  # val: crop size / shorter side after resize (0.875 → 224 from 256)
    pad: int | None = None  # None: the recipe above; n: pad-and-crop (images are expected at S×S)


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
    decoder_device, op_device = ("mixed", "gpu") if gpu else ("cpu", "cpu")
    decoder_args = {"device": decoder_device, "output_type": types.RGB}  # RGB: grayscale becomes 3 channels
    if gpu:
        decoder_args["hw_decoder_load"] = hw_decoder_load
        if preallocate_hint is not None:
            decoder_args["preallocate_width_hint"], decoder_args["preallocate_height_hint"] = preallocate_hint
    size = recipe.image_size

    with pipe:
        jpegs, label = fn.readers.file(files=files, labels=labels, random_shuffle=False, name="Reader")
        if recipe.pad is not None:
            images = fn.decoders.image(jpegs, **decoder_args)
            mirror = 0
            crop = (size, size)  # val: centered
            if recipe.train:  # anchor relative to the image: -pad..pad in rows and columns
                anchor = fn.random.uniform(values=list(range(-recipe.pad, recipe.pad + 1)), shape=[2], dtype=types.INT32)
                images = fn.slice(images, start=anchor, shape=[size, size], axes=[0, 1], out_of_bounds_policy="pad",
                                  fill_values=0, device=op_device)
                mirror = fn.random.coin_flip(probability=0.5) if recipe.hflip else 0
                crop = None
        elif recipe.train:
            images = fn.decoders.image_random_crop(
                jpegs,
                random_area=list(recipe.crop_scale),
                random_aspect_ratio=list(recipe.crop_ratio),
                **decoder_args,
            )
            images = fn.resize(images, device=op_device, resize_x=size, resize_y=size)
            mirror = fn.random.coin_flip(probability=0.5) if recipe.hflip else 0
            crop = None  # already S×S
        else:
            images = fn.decoders.image(jpegs, **decoder_args)
            images = fn.resize(images, device=op_device, resize_shorter=round(size / recipe.val_resize_ratio))
            mirror = 0
            crop = (size, size)  # centered: crop_pos_x = crop_pos_y = 0.5 by default
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
