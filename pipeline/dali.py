"""DaliLoader: a plain iterable of ``(images, labels)`` torch batches for one rank, one epoch at a time.

Each ``__iter__`` builds a fresh DALI pipeline over this rank's files for the current epoch, in the order
that ``pipeline.sharding`` fixes, and releases it (threads and buffers) when the epoch ends, when the
loop breaks out early, or when the next epoch starts.

Resume, exact: ``state_dict()`` holds the epoch and DALI's own checkpoint of the running pipeline (reader
position and every random generator, taken with the batches the iterator has prefetched accounted for);
after ``load_state_dict(state)`` the next ``__iter__`` rebuilds that epoch's pipeline from the checkpoint
and yields exactly the batches, crops and flips the interrupted run would have seen next.

A file DALI cannot read or decode mid-epoch (corrupt inside, or changed after the pre-flight) kills the
pipeline; the iterator then finds the file (``_FaultFinder``: the one DALI's error names, else the first of the
batches in flight that PIL, then DALI alone, cannot decode) and raises ``pipeline.BadImageError``, one line
with the path and the ``scan`` command, instead of DALI's traceback.

``set_epoch(e, start_batch=s)`` is the cheap positional variant: it starts epoch ``e`` at batch ``s`` by
slicing the file list (nothing is decoded and thrown away) — the same samples, but fresh augmentation draws.

Output: ``dtype`` float32 or float16 (written by DALI's normalize, no extra cast), and with ``channels_last`` the
batch is DALI's HWC output viewed as NCHW (``pipeline.output_format``): no copy, no transpose kernel.

Overlap: DALI runs asynchronously (``exec_async``, pipelined, the default executor) with ``prefetch`` batches
queued: the iterator schedules the next run before it hands batch i over, so reading and decoding batch i+1
(on the CPU threads and the hardware decoder) proceed while the training step consumes batch i (CPU mode, 32
photos at 224 px on 2 cores: ~100 ms per batch back to back, ~5 ms wait after a 200 ms step). The handover is
zero-copy (DLPack, DALI's default dynamic executor), and in GPU mode images and labels are already on the device
(labels move inside DALI), so no host-device copy or sync sits between the steps. CPU mode with a CUDA
``target_device`` copies each batch from pageable memory (a host stall per batch): the fallback, not the fast path.
"""

from __future__ import annotations

import base64
import re
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .errors import DaliMissingError, DataError
from .folder import FolderIndex
from .output_format import dtype_name, nchw_view
from .scan import BadFile, BadImageError, dali_reason, find_bad_file
from .sharding import augmentation_seed, batches_per_epoch, check_epoch_start, epoch_indices, train_batches_per_rank

# NVIDIA DALI is imported on first need (a loader built, a DALI decode), never by `import unixkd.pipeline`: what reads
# no image files (synthetic bench/profile, cost, the fast-path tests) runs where DALI is absent or broken, e.g. a
# GPU machine without it. `dali_import_error()` does the import once and remembers the outcome.
DALIGenericIterator = LastBatchPolicy = Recipe = build_pipeline = None
_DALI_IMPORT_ERROR: ImportError | None = None
_DALI_TRIED = False


def dali_import_error() -> ImportError | None:
    """None once NVIDIA DALI (and this package's graphs on it) imported; else the ImportError, each call the same."""
    global DALIGenericIterator, LastBatchPolicy, Recipe, build_pipeline, _DALI_IMPORT_ERROR, _DALI_TRIED
    if not _DALI_TRIED:
        _DALI_TRIED = True
        try:
            from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

            from .graphs import Recipe, build_pipeline
        except ImportError as err:
            _DALI_IMPORT_ERROR = err
    return _DALI_IMPORT_ERROR


def require_dali(what: str, fix: str = "install it: pip install nvidia-dali-cuda130 (CUDA 12: nvidia-dali-cuda120)"):
    """Import DALI for `what`, or raise the one-line DaliMissingError saying what to do."""
    err = dali_import_error()
    if err is not None:
        raise DaliMissingError(f"NVIDIA DALI is needed for {what} ({err}); {fix}")


def dali_version() -> str | None:
    """The version of the DALI that imports here (None where it does not): for the records of result files."""
    if dali_import_error() is not None:
        return None
    import nvidia.dali

    return nvidia.dali.__version__


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEVICES = ("auto", "cpu", "gpu")
INTERPOLATIONS = ("bilinear", "bicubic")  # the val resize filters (graphs.INTERP_TYPES), named as timm/torchvision do
VAL_CROP_MODES = ("center", "squash")  # timm's eval crop modes that the val graph implements ("border" is not)
# The largest image in ImageNet's train set (width, height). DALI's ResNet-50 examples pass it as the decoder's
# preallocate hints "to make sure that the out of the box performance is good" (NVIDIA/DALI#3029): the hardware
# decoder's buffers are sized once up front instead of being reallocated mid-epoch when a bigger photo arrives.
IMAGENET_LARGEST = (5980, 6430)


def _check_recipe_args(
    val_resize_ratio: float, val_interpolation: str, val_crop_mode: str, pad: int | None, hw_decoder_load: float
) -> None:
    """DaliLoader's augmentation and decoder options, checked before DALI is needed."""
    if not 0.0 < val_resize_ratio <= 1.0:
        raise ValueError(f"val_resize_ratio must be in (0, 1], got {val_resize_ratio}")
    if val_interpolation not in INTERPOLATIONS:
        raise ValueError(f"val_interpolation must be one of {', '.join(INTERPOLATIONS)}, got {val_interpolation!r}")
    if val_crop_mode not in VAL_CROP_MODES:
        raise ValueError(f"val_crop_mode must be one of {', '.join(VAL_CROP_MODES)}, got {val_crop_mode!r}")
    if pad is not None and pad < 0:
        raise ValueError(f"pad must be >= 0 or None, got {pad}")
    if not 0.0 <= hw_decoder_load <= 1.0:
        raise ValueError(f"hw_decoder_load must be in [0, 1], got {hw_decoder_load}")


def _check_train_size(train: bool, n_files: int, batch_size: int, num_shards: int) -> None:
    """A train loader needs at least one full batch per rank (train drops the last partial batch)."""
    if train and train_batches_per_rank(n_files, batch_size, num_shards) == 0:
        raise DataError(
            f"train set too small: {n_files} images over {num_shards} shard(s) "
            f"give no full batch of {batch_size}; lower the batch size"
        )


class DaliLoader:
    """Batches of normalized NCHW images (float32 or float16, optionally channels_last) and int64 labels from a
    FolderIndex, for one rank."""

    def __init__(
        self,
        index: FolderIndex,
        *,
        train: bool,
        batch_size: int,
        image_size: int,
        num_shards: int = 1,
        shard_id: int = 0,
        seed: int = 0,
        device: str = "auto",  # DALI mode: "gpu" (mixed decoders), "cpu", or "auto" = gpu if CUDA is available
        device_id: int | None = None,  # CUDA device of gpu mode (the local rank); None: the current device
        target_device: torch.device | str = "cpu",  # where yielded tensors live
        num_threads: int = 2,
        hw_decoder_load: float = 0.65,  # share of JPEGs for the hardware decoder; see DataConfig.hw_decoder_load
        preallocate_hint: tuple[int, int] | None = None,  # gpu mode: (width, height) of the largest image expected
        crop_scale: tuple[float, float] = (0.08, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        val_resize_ratio: float = 0.875,  # timm's crop_pct: resize to floor(image_size / ratio), then crop
        val_interpolation: str = "bilinear",  # val resize filter, one of INTERPOLATIONS
        val_crop_mode: str = "center",  # one of VAL_CROP_MODES
        prefetch: int = 2,
        pad: int | None = None,  # pad-and-crop recipe for small S×S images (Tiny-ImageNet); see graphs.py
        dtype: str | torch.dtype = "float32",  # of the yielded images: float32 or float16
        channels_last: bool = False,  # yielded images NHWC in memory (logically still [B, 3, S, S])
    ):
        _check_args(len(index.files), batch_size, image_size, num_shards, shard_id, seed, num_threads, prefetch)
        _check_recipe_args(val_resize_ratio, val_interpolation, val_crop_mode, pad, hw_decoder_load)
        self.dtype = dtype_name(dtype)
        self.channels_last = bool(channels_last)
        self.gpu = _use_gpu(device)  # checks the device string and CUDA before DALI is needed
        require_dali("DaliLoader")
        _check_train_size(train, len(index.files), batch_size, num_shards)
        self.index, self.train, self.batch_size = index, train, batch_size
        self.num_shards, self.shard_id, self.seed = num_shards, shard_id, seed
        self.device_id = (device_id if device_id is not None else torch.cuda.current_device()) if self.gpu else None
        self.target_device = torch.device(target_device)
        self.num_threads, self.hw_decoder_load, self.prefetch = num_threads, hw_decoder_load, prefetch
        self.preallocate_hint = tuple(preallocate_hint) if preallocate_hint is not None else None
        self.recipe = Recipe(
            train=train,
            image_size=image_size,
            crop_scale=tuple(crop_scale),
            crop_ratio=tuple(crop_ratio),
            hflip=hflip,
            mean=tuple(mean),
            std=tuple(std),
            val_resize_ratio=val_resize_ratio,
            pad=pad,
            val_interpolation=val_interpolation,
            val_crop_mode=val_crop_mode,
        )
        self.epoch = 0
        self.start_batch = 0  # applies to the next __iter__ only, then back to 0
        self._running: weakref.ref | None = None  # the epoch being iterated, closed when the next starts
        self._restore: bytes | None = None  # a DALI checkpoint for the next __iter__ (load_state_dict)
        self._restore_batch: int | None = None  # the batch of the epoch that checkpoint continues from

    def __len__(self) -> int:
        """Batches in a whole epoch on this rank (also after ``set_epoch(e, start_batch=s)``)."""
        return batches_per_epoch(
            len(self.index.files),
            train=self.train,
            batch_size=self.batch_size,
            num_shards=self.num_shards,
            shard_id=self.shard_id,
        )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """The next ``__iter__`` yields epoch ``epoch`` from batch ``start_batch`` (0 ≤ start_batch ≤ len).

        The epoch sticks until changed (like DistributedSampler); ``start_batch`` is used by one pass only.
        """
        check_epoch_start(epoch, start_batch, len(self))
        self.epoch, self.start_batch = epoch, start_batch

    def state_dict(self) -> dict:
        """Where the running epoch stands: the epoch, DALI's checkpoint (base64 text, JSON-safe; None when
        no epoch is running), the batch of the epoch it continues from (None when unknown) and the size of the
        file list it indexes."""
        running = self._running() if self._running is not None else None
        cpt = running.checkpoint() if running is not None else None
        return {
            "epoch": self.epoch,
            "dali": base64.b64encode(cpt).decode() if cpt is not None else None,
            "batch": running.position if running is not None else None,
            "files": len(self.index.files),
        }

    def load_state_dict(self, state: dict) -> None:
        """The next ``__iter__`` continues the saved epoch exactly (or starts it, if nothing was running)."""
        self.set_epoch(state["epoch"])
        self._restore = base64.b64decode(state["dali"]) if state["dali"] is not None else None
        self._restore_batch = state.get("batch")  # absent in checkpoints written before it was saved
        saved = state.get("files")
        if self._restore is not None and saved is not None and saved != len(self.index.files):
            warnings.warn(
                f"the file list has {len(self.index.files)} files, {saved} when this epoch was saved (the "
                f"folder or data.file_list changed): the rest of epoch {self.epoch} follows another order, "
                "not the one the interrupted run would have read",
                stacklevel=2,
            )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch: ``(images [B,3,S,S] of ``dtype``, labels [B] int64)`` on ``target_device``."""
        previous = self._running() if self._running is not None else None
        if previous is not None:
            previous.close()  # one live DALI pipeline per loader
        start, self.start_batch = self.start_batch, 0
        restore, self._restore = self._restore, None
        restore_batch, self._restore_batch = self._restore_batch, None
        first = 0  # the batch of `files` that DALI reads first
        if restore is not None:
            start, first = 0, restore_batch  # the checkpoint knows the reader's position in the full file list
        order = self._indices()[start * self.batch_size :]
        if len(order) == 0:  # resumed at the very end, or a val shard with no files
            return iter(())
        files = [self.index.files[i] for i in order]
        pipe = build_pipeline(
            files,
            [self.index.labels[i] for i in order],
            self.recipe,
            gpu=self.gpu,
            device_id=self.device_id,
            batch_size=self.batch_size,
            num_threads=self.num_threads,
            seed=augmentation_seed(self.seed, self.shard_id, self.epoch, start),
            prefetch=self.prefetch,
            hw_decoder_load=self.hw_decoder_load,
            checkpoint=restore,
            output_dtype=self.dtype,
            channels_last=self.channels_last,
            preallocate_hint=self.preallocate_hint,
        )
        finder = _FaultFinder(files, self.batch_size, self.prefetch, self.epoch, start, self.index.root)
        epoch = _Epoch(pipe, self.target_device, channels_last=self.channels_last, faults=finder, first_batch=first)
        self._running = weakref.ref(epoch)
        return epoch

    def _indices(self):
        return self.sample_order(self.epoch)

    def sample_order(self, epoch: int):
        """Indices into ``index.files`` that this rank reads in ``epoch``, in order from batch 0 (batch ``b`` is
        ``[b * batch_size, (b + 1) * batch_size)`` of it, also after a mid-epoch resume)."""
        return epoch_indices(
            len(self.index.files),
            train=self.train,
            batch_size=self.batch_size,
            num_shards=self.num_shards,
            shard_id=self.shard_id,
            seed=self.seed,
            epoch=epoch,
        )


class _Epoch:
    """Iterator over one epoch's batches; ``close()`` (or being dropped) shuts its DALI pipeline down."""

    def __init__(
        self,
        pipe,
        target_device: torch.device,
        reader_name: str | None = "Reader",
        channels_last: bool = False,
        faults: _FaultFinder | None = None,
        first_batch: int | None = 0,
    ):
        # Every file list holds exactly the samples to yield, so PARTIAL only trims a short last val batch.
        # reader_name=None: an external source that stops at the end of the epoch (pipeline.array_dali).
        # channels_last: the pipeline outputs HWC images, yielded as NCHW views.
        # faults: turns a DALI read/decode error into a BadImageError naming the file; first_batch: the batch of
        # its file list the pipeline starts at (a restored checkpoint's; None: unknown).
        self._faults, self._next = faults, first_batch
        self._dali = DALIGenericIterator(
            pipe,
            ["images", "labels"],
            reader_name=reader_name,
            last_batch_policy=LastBatchPolicy.PARTIAL,
            auto_reset=False,
        )
        self._pipe = pipe
        self._target = target_device
        self._channels_last = channels_last

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._dali is None:
            raise StopIteration
        try:
            batch = next(self._dali)[0]
        except StopIteration:
            self.close()
            raise
        except RuntimeError as err:
            if self._faults is None or not _FaultFinder.is_file_error(err):
                raise
            self.close()  # the pipeline is dead after a critical error; free it before decoding candidates
            raise self._faults.error(self._next, str(err)) from err
        if self._next is not None:
            self._next += 1
        images, labels = batch["images"], batch["labels"].squeeze(-1).long()  # DALI labels: int32 [B, 1]
        images, labels = self._to_target(images), self._to_target(labels)
        if self._channels_last:  # after the copy: pinning a permuted view could make it contiguous NCHW
            images = nchw_view(images)  # [B,H,W,C] → [B,C,H,W], channels_last in memory, no copy
        return images, labels

    def _to_target(self, t: torch.Tensor) -> torch.Tensor:
        # DALI hands CPU outputs (the labels; the images in cpu mode) over in pageable memory, from which
        # even a non_blocking copy to the GPU may wait for the stream. Pinned first, the copy is truly queued.
        if self._target.type == "cuda" and t.device.type == "cpu":
            return t.pin_memory().to(self._target, non_blocking=True)
        return t.to(self._target)

    @property
    def position(self) -> int | None:
        """The batch of the epoch the next ``__next__`` yields (None: unknown, an old checkpoint's epoch)."""
        if self._next is None or self._faults is None:
            return self._next
        return self._faults.offset + self._next

    def checkpoint(self) -> bytes | None:
        """DALI's serialized state after the batches yielded so far (None once the epoch is closed)."""
        return self._dali.checkpoints()[0] if self._dali is not None else None

    def close(self) -> None:
        """Stop the pipeline and free its threads and buffers; later ``next()`` calls raise StopIteration."""
        if getattr(self, "_dali", None) is None:  # closed, or __init__ failed
            return
        pipe, self._dali, self._pipe = self._pipe, None, None
        shutdown = getattr(pipe, "_shutdown", None)  # what Pipeline.__del__ calls; explicit in case
        if shutdown is not None:  # something (a traceback, a debugger) still holds the pipeline
            shutdown()

    def __del__(self):
        self.close()


@dataclass
class _FaultFinder:
    """What one epoch's pipeline reads, to name the file behind a DALI error (a dead pipeline cannot tell)."""

    files: list[str]  # in reading order; batch b is files[b * batch_size : (b + 1) * batch_size]
    batch_size: int
    prefetch: int
    epoch: int
    offset: int  # the epoch's batch that files[0] starts (set_epoch's start_batch)
    root: str | None  # the dataset root, for the scan command

    _FILE_ERROR = re.compile(r"fn\.(?:decoders|readers)\.|Failed to decode|nvImageCodec")

    @classmethod
    def is_file_error(cls, err: RuntimeError) -> bool:
        """A read or decode failure (not, say, an out-of-memory in a resize)."""
        return bool(cls._FILE_ERROR.search(str(err)))

    def error(self, batch: int | None, message: str) -> BadImageError:
        """The one-line error for a DALI failure while batch ``batch`` of ``files`` was next (None: unknown).

        Candidates: that batch and the ones DALI may already be working on (its prefetch queue and the next);
        the file DALI's message names, else the first PIL cannot decode, else the first DALI alone cannot decode.
        """
        root = self.root or "<data.root>"
        scan = (
            f"run `python launch.py scan {root} --write-clean-list clean.txt` and train with data.file_list=clean.txt"
        )
        if batch is None:
            candidates, where = [], f"epoch {self.epoch}"
        else:
            lo = batch * self.batch_size
            candidates = self.files[lo : lo + (self.prefetch + 2) * self.batch_size]
            where = f"epoch {self.epoch}, batch {self.offset + batch}"
        bad = find_bad_file(candidates, message) or _dali_decode_problem(candidates)
        if bad is None:  # e.g. a file only the GPU decoder rejects, or a position unknown after an old checkpoint
            tried = f"none of the {len(candidates)} files it was reading fails to decode alone; " if candidates else ""
            return BadImageError(
                f"DALI failed reading {where}: {dali_reason(message)}; {tried}if it is a broken "
                f"file, {scan} (UNIXKD_DEBUG=1 shows DALI's traceback)"
            )
        if bad.problem.startswith("DALI cannot decode it"):
            fix = (
                f"PIL reads it, so only `python launch.py scan {root} --dali --write-clean-list clean.txt` lists "
                "it: delete or replace the file, or train with that clean list"
            )
        elif bad.problem.startswith("missing"):
            fix = f"the folder changed after the pre-flight; restore the file or {scan}"
        else:
            fix = scan
        return BadImageError(
            f"{bad.path}: {bad.problem} (DALI stopped on it in {where}); {fix}", path=bad.path, problem=bad.problem
        )


def _dali_decode_problem(files: list[str]) -> BadFile | None:
    """The first of ``files`` DALI's CPU decoder fails on, each decoded alone (files PIL reads but DALI does not:
    e.g. a damaged Huffman-table marker that libjpeg papers over)."""
    if not files or dali_import_error() is not None:
        return None
    from nvidia.dali import Pipeline, fn, types

    pipe = Pipeline(
        batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1, exec_async=False, exec_pipelined=False
    )
    with pipe:
        data, _ = fn.readers.file(files=files, labels=[0] * len(files), random_shuffle=False)
        pipe.set_outputs(fn.decoders.image(data, device="cpu", output_type=types.RGB))
    try:
        pipe.build()
        for path in files:  # one sample per run, in order: the run that fails is the file
            try:
                pipe.run()
            except RuntimeError as err:
                return BadFile(path, f"DALI cannot decode it (PIL can): {dali_reason(str(err))}")
    finally:
        getattr(pipe, "_shutdown", lambda: None)()
    return None


def _use_gpu(device: str) -> bool:
    if device not in DEVICES:
        raise ValueError(f"data.dali_device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "gpu" and not torch.cuda.is_available():
        raise DataError("data.dali_device=gpu but CUDA is not available")
    return device == "gpu" or (device == "auto" and torch.cuda.is_available())


def _check_args(num_files, batch_size, image_size, num_shards, shard_id, seed, num_threads, prefetch) -> None:
    if num_files == 0:
        raise DataError("DaliLoader needs at least one file, the index is empty")
    for name, value in [("batch_size", batch_size), ("image_size", image_size), ("num_shards", num_shards),
                        ("num_threads", num_threads), ("prefetch", prefetch)]:  # fmt: skip
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id must be in [0, {num_shards}), got {shard_id}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
