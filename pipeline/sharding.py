"""Which samples one rank reads in one epoch, and in what order: shuffling and sharding live here, not in DALI.

Train: one permutation of the whole list per epoch, drawn from ``default_rng([seed, epoch])`` and so the
same on every rank; rank ``r`` takes every ``num_shards``-th entry from ``r``, cut to a whole number of
batches that is the same on every rank (the remainder is dropped, and changes with the permutation).
Val: no shuffle; rank ``r`` takes one contiguous slice, the slices are disjoint and cover the list once.
A resume at batch ``s`` reads the same order from position ``s * batch_size`` (see ``DaliLoader.set_epoch``).
"""

from __future__ import annotations

import numpy as np


def train_batches_per_rank(num_files: int, batch_size: int, num_shards: int) -> int:
    """Full batches every rank gets per train epoch: ``floor((num_files // num_shards) / batch_size)``."""
    return (num_files // num_shards) // batch_size


def batches_per_epoch(num_files: int, *, train: bool, batch_size: int, num_shards: int, shard_id: int) -> int:
    """Batches rank ``shard_id`` yields in a whole epoch: full ones only for train, a short last one for val."""
    if train:
        return train_batches_per_rank(num_files, batch_size, num_shards)
    rank_files = (shard_id + 1) * num_files // num_shards - shard_id * num_files // num_shards
    return -(-rank_files // batch_size)


def epoch_indices(
    num_files: int, *, train: bool, batch_size: int, num_shards: int, shard_id: int, seed: int, epoch: int
) -> np.ndarray:
    """Indices into the file list that rank ``shard_id`` reads in ``epoch``, in reading order, from batch 0."""
    if train:
        order = np.random.default_rng([seed, epoch]).permutation(num_files)  # identical on all ranks
        keep = train_batches_per_rank(num_files, batch_size, num_shards) * batch_size
        return order[shard_id::num_shards][:keep]
    lo = shard_id * num_files // num_shards
    hi = (shard_id + 1) * num_files // num_shards
    return np.arange(lo, hi)


def augmentation_seed(seed: int, shard_id: int, epoch: int, start_batch: int) -> int:
    """DALI pipeline seed: a fixed (hash-free) mix of run seed, rank, epoch and the batch the epoch starts at."""
    return (seed * 1000003 + shard_id * 10007 + epoch * 101 + start_batch) % 2**31


def check_epoch_start(epoch: int, start_batch: int, batches: int) -> None:
    """`set_epoch` arguments of a loader with `batches` per epoch: one-line ValueErrors."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if not 0 <= start_batch <= batches:
        raise ValueError(f"start_batch must be in [0, {batches}] (batches per epoch), got {start_batch}")
