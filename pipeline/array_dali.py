"""ArrayDaliLoader: an in-memory dataset (CIFAR) fed to DALI through an external source, one epoch at a time.

Each epoch the host hands DALI this rank's batches of uint8 HWC images with their labels and the crop offsets
and flips of ``arrays.crop_plan``; DALI pads and crops (``fn.slice`` with out-of-bounds padding), mirrors and
normalizes (``fn.crop_mirror_normalize``, writing float32 or float16, CHW, or HWC for channels_last), on the GPU
in gpu mode (``device="gpu"``; the images cross to the device inside the pipeline) or on the CPU. Same plan as
``TensorLoader``, so the same batches.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

import numpy as np
import torch

from .arrays import ArrayLoaderBase, ImageArrays
from .dali import _Epoch, _use_gpu, require_dali


class ArrayDaliLoader(ArrayLoaderBase):
    def __init__(
        self,
        arrays: ImageArrays,
        *,
        device: str = "auto",
        device_id: int | None = None,
        target_device: torch.device | str = "cpu",
        num_threads: int = 2,
        prefetch: int = 2,
        **kwargs,
    ):
        super().__init__(arrays, **kwargs)
        self.gpu = _use_gpu(device)
        require_dali("ArrayDaliLoader", "use data.cifar_loader=tensor, or install nvidia-dali-cuda130")
        self.device_id = (device_id if device_id is not None else torch.cuda.current_device()) if self.gpu else None
        self.target_device = torch.device(target_device)
        self.num_threads, self.prefetch = num_threads, prefetch
        self.hwc = np.ascontiguousarray(arrays.images.transpose(0, 2, 3, 1))  # DALI's image layout, once
        self.labels = arrays.labels.astype(np.int32)[:, None]  # [n, 1] like DALI's file reader
        self._running: weakref.ref | None = None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        previous = self._running() if self._running is not None else None
        if previous is not None:
            previous.close()  # one live DALI pipeline per loader
        order, offsets, flips = self._take_epoch()
        if len(order) == 0:
            return iter(())
        epoch = _Epoch(
            self._pipeline(order, offsets, flips),
            self.target_device,
            reader_name=None,
            channels_last=self.channels_last,
        )
        self._running = weakref.ref(epoch)
        return epoch

    def _pipeline(self, order, offsets, flips):
        from nvidia.dali import Pipeline, fn

        from .graphs import OUTPUT_DTYPES

        B, pad = self.batch_size, self.pad
        H, W = self.hwc.shape[1:3]

        def batches():  # the host side of the external source: this epoch's batches, then StopIteration
            for lo in range(0, len(order), B):
                idx = order[lo : lo + B]
                out = [self.hwc[idx], self.labels[idx]]
                if self.train:  # DALI's slice anchor is relative to the unpadded image: offset - pad
                    out += [(offsets[lo : lo + B] - pad).astype(np.int32), flips[lo : lo + B].astype(np.int32)]
                yield out

        pipe = Pipeline(
            batch_size=B,
            num_threads=self.num_threads,
            device_id=self.device_id if self.gpu else None,
            seed=self.seed,
            prefetch_queue_depth=self.prefetch,
        )
        with pipe:
            if self.train:
                images, labels, anchors, mirror = fn.external_source(
                    source=batches, num_outputs=4, batch=True, cycle=False, layout=["HWC", "", "", ""]
                )
            else:
                images, labels = fn.external_source(
                    source=batches, num_outputs=2, batch=True, cycle=False, layout=["HWC", ""]
                )
                mirror = 0
            if self.gpu:
                images = images.gpu()
            if self.train:
                images = fn.slice(
                    images, start=anchors, shape=[H, W], axes=[0, 1], out_of_bounds_policy="pad", fill_values=0
                )
            images = fn.crop_mirror_normalize(
                images,
                dtype=OUTPUT_DTYPES[self.dtype],
                mirror=mirror,
                output_layout="HWC" if self.channels_last else "CHW",
                mean=[255.0 * m for m in self.mean],
                std=[255.0 * s for s in self.std],
            )
            if self.gpu:  # labels cross to the device inside DALI's pipelined stages, not as a torch copy per step
                labels = labels.gpu()
            pipe.set_outputs(images, labels)
        return pipe
