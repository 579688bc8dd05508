"""How a loader hands images over: float32 or float16, NCHW-contiguous or channels_last (NHWC in memory).

Every loader yields logically NCHW batches ``[B, 3, S, S]``; with ``channels_last`` their memory is NHWC
(``x.is_contiguous(memory_format=torch.channels_last)``), the layout cuDNN's tensor-core convolutions prefer, so
the first convolution of a channels_last model does not start with a transposing copy.
"""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16}


def dtype_name(dtype) -> str:
    """ "float32" or "float16" from that name or the torch dtype; anything else is a one-line ValueError."""
    for name, torch_dtype in DTYPES.items():
        if dtype == name or dtype is torch_dtype:
            return name
    raise ValueError(f"dtype must be float32 or float16 (a name or a torch dtype), got {dtype!r}")


def nchw_view(images: torch.Tensor) -> torch.Tensor:
    """A dense ``[B, H, W, C]`` batch as ``[B, C, H, W]``: a view (no copy) that is channels_last in memory."""
    return images.permute(0, 3, 1, 2)
