"""TensorLoader: an in-memory dataset kept whole on the training device, augmented with tensor ops.

The uint8 images go to the device once (CIFAR's 50,000 train images are 154 MB). Each batch is one index
gather, one pad-crop-flip gather (``arrays.pad_crop_flip``) and one normalize (then one cast/relayout when
float16 or channels_last is asked for): no worker threads, no host→device copy per step. The plan of crops and
flips comes from ``arrays.crop_plan``, so the batches are exactly those of ``ArrayDaliLoader`` with the same
arguments.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .arrays import ArrayLoaderBase, ImageArrays, normalize, pad_crop_flip, pixel_stats
from .output_format import DTYPES


class TensorLoader(ArrayLoaderBase):
    def __init__(self, arrays: ImageArrays, *, target_device: torch.device | str = "cpu", **kwargs):
        super().__init__(arrays, **kwargs)
        self.target_device = torch.device(target_device)
        self.images = torch.from_numpy(arrays.images).to(self.target_device)  # uint8 [n, 3, H, W], once
        self.labels = torch.from_numpy(arrays.labels).to(self.target_device)
        self.pixel_mean, self.pixel_std = pixel_stats(self.mean, self.std, self.target_device)
        # normalize in float32 (the reference arithmetic), then at most one copy into the requested dtype/layout
        self.out_format = dict(
            dtype=DTYPES[self.dtype], memory_format=torch.channels_last if self.channels_last else torch.preserve_format
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, offsets, flips = self._take_epoch()
        return self._batches(order, offsets, flips)

    def _batches(self, order, offsets, flips):
        dev = self.target_device
        order = torch.from_numpy(order).to(dev)  # sync: once per epoch, blocking uploads of the plan
        if self.train:  # one upload per epoch for the whole plan
            offsets, flips = torch.from_numpy(offsets).to(dev), torch.from_numpy(flips).to(dev)
        for lo in range(0, len(order), self.batch_size):
            idx = order[lo : lo + self.batch_size]
            x = self.images[idx]
            if self.train:
                x = pad_crop_flip(x, offsets[lo : lo + self.batch_size], flips[lo : lo + self.batch_size], self.pad)
            yield normalize(x, self.pixel_mean, self.pixel_std).to(**self.out_format), self.labels[idx]
