"""No hidden host-device syncs in the training step: between two log boundaries the host only queues work.

On a GPU, `torch.cuda.set_sync_debug_mode("error")` raises at any synchronizing CUDA call: that is the real test.
Off a GPU, `HostReads` stands in for it, so that a new `.item()` fails on every machine: a TorchDispatchMode that
records each aten op which, on a CUDA tensor, makes the host wait (a value read back: `.item()`, `bool()`,
`float()`, `int()`, an f-string; or an output sized by the data: nonzero, boolean masks, unique, bincount), plus
the conversions the dispatcher does not see on a CPU tensor (`.tolist()`, `.numpy()`, `.cpu()`). On a CPU run
every tensor is a host tensor, so HostReads counts all of them; none is needed in a step. What it cannot see on a
CPU: blocking host -> device copies (`torch.as_tensor(numpy, device="cuda")`); only the GPU test covers those.
"""

from __future__ import annotations

import copy
import traceback
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from unixkd.selection import METHODS
from unixkd.training.analytics import SamplingLog
from unixkd.training.build import make_selector
from unixkd.training.distributed import make_accelerator
from unixkd.training.evaluate import evaluate
from unixkd.training.measure.timing import build_timed_run, load_timing_config, synthetic_batch

REPO = Path(__file__).resolve().parent.parent
DEMO = str(REPO / "configs" / "demo.yaml")
N, K, C = 8, 4, 10
WARMUP, STEPS = 2, 3

aten = torch.ops.aten
READ_BACK = {aten._local_scalar_dense, aten.equal}  # .item(), bool(), float(), int(), f"{t:.3f}", torch.equal
DATA_SIZED = {
    aten.nonzero,
    aten.masked_select,
    aten.bincount,
    aten._unique,
    aten._unique2,
    aten.unique_dim,
    aten.unique_consecutive,
    aten.unique_dim_consecutive,
}  # the host must read the output's size
INDEXING = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}  # a boolean mask: nonzero inside
HOST_COPIES = ("tolist", "numpy", "cpu")  # Tensor methods that do not reach the dispatcher on a CPU tensor


class HostReads(TorchDispatchMode):
    """`with HostReads() as reads: ...` -> reads.found: one "op at file:line" per op that would sync on CUDA.

    `reads.tag` is stored with each read (`reads.tagged`), for a caller that wants to say when it happened.
    """

    def __init__(self):
        super().__init__()
        self.tag = None
        self.tagged: list[tuple[object, str]] = []
        self._patches = [
            mock.patch.object(torch.Tensor, name, self._recording(name, getattr(torch.Tensor, name)))
            for name in HOST_COPIES
        ]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        op = func.overloadpacket
        if (
            op in READ_BACK
            or op in DATA_SIZED
            or (op in INDEXING and any(t is not None and t.dtype in (torch.bool, torch.uint8) for t in args[1]))
            or (
                op is aten.repeat_interleave and isinstance(args[0], torch.Tensor) and kwargs.get("output_size") is None
            )
        ):
            self._record(str(func))
        return func(*args, **kwargs)

    def __enter__(self):
        for p in self._patches:
            p.start()
        return super().__enter__()

    def __exit__(self, *exc):
        for p in self._patches:
            p.stop()
        return super().__exit__(*exc)

    def _recording(self, name, method):
        def wrapper(tensor, *args, **kwargs):
            self._record(f"Tensor.{name}")
            return method(tensor, *args, **kwargs)

        return wrapper

    @property
    def found(self) -> list[str]:
        return [what for _, what in self.tagged]

    def _record(self, what: str) -> None:
        """The op and the innermost line of this project's code that ran it (not tests/, not a venv in the repo)."""
        where = "?"
        for frame in reversed(traceback.extract_stack()[:-2]):
            path = Path(frame.filename)
            if REPO in path.parents and REPO / "tests" not in path.parents and "site-packages" not in path.parts:
                where = f"{path.relative_to(REPO)}:{frame.lineno}"
                break
        self.tagged.append((self.tag, f"{what} at {where}"))


@pytest.mark.parametrize(
    "form, expected",
    [
        (lambda t: t.sum().item(), "aten._local_scalar_dense.default"),
        (lambda t: bool(t.sum() > 0), "aten._local_scalar_dense.default"),
        (lambda t: float(t.sum()), "aten._local_scalar_dense.default"),
        (lambda t: f"{t.sum():.3f}", "aten._local_scalar_dense.default"),
        (lambda t: [0, 1, 2][t.argmax()], "aten._local_scalar_dense.default"),
        (lambda t: t[t > 0], "aten.index.Tensor"),
        (lambda t: torch.bincount(t.argsort(), minlength=8), "aten.bincount.default"),
        (lambda t: t.nonzero(), "aten.nonzero.default"),
        (lambda t: t.round().unique(), "aten._unique2.default"),
        (lambda t: t.tolist(), "Tensor.tolist"),
        (lambda t: t.numpy(), "Tensor.numpy"),
        (lambda t: t.cpu(), "Tensor.cpu"),
    ],
)
def test_host_reads_sees_each_form_of_host_read(form, expected):
    t = torch.randn(3)
    with HostReads() as reads:
        form(t)
        t.argsort(descending=True, stable=True)[:2] * 2  # ordinary device work: not recorded
    t.tolist()  # after the block: not recorded (the patches are gone)
    assert [r.split(" at ")[0] for r in reads.found] == [expected]


# --------------------------------------------------------------------------------------------------------
# the step, as the trainer runs it between two log boundaries


class FileOrder:
    """Stands in for the train loader where SamplingLog counts images: a fixed sample order."""

    index = SimpleNamespace(files=[f"f{i}" for i in range(N * 1000)])  # more than the tests step through

    def sample_order(self, epoch):
        return list(range(len(self.index.files)))[::-1]


def timing_config(*extra: str):
    return load_timing_config(
        DEMO,
        [
            "model.teacher=test_resnet",
            "model.student=test_resnet",
            f"model.num_classes={C}",
            f"data.batch_size={N}",
            f"selection.k={K}",
            "loss.ce_weight=0.5",  # the mixed-label CE too (demo.yaml has none)
            "model.teacher_checkpoint=",
            "out_dir=unused",
            *extra,
        ],
        "synthetic",
    )  # random teacher weights


class Trainerish:
    """One run from `build_run` and what train() does around each step: SamplingLog.observe (via on_select),
    the cost ledger and the on-device loss sum. `steps(n)` is n iterations of train()'s loop body."""

    def __init__(self, cfg, tmp_path):
        self.cfg = cfg
        self.accelerator = make_accelerator(cfg)
        self.run = build_timed_run(cfg, self.accelerator, C)
        self.device = self.accelerator.device
        self.images, self.labels = synthetic_batch(cfg, C, self.device)
        self.sampling = SamplingLog(
            tmp_path, [str(c) for c in range(C)], self.device, write=False, loader=FileOrder(), count_images=True
        )
        self.sampling.set_epoch(0, 0)
        self.loss_sum = torch.zeros((), device=self.device)

    def use(self, method: str):
        step = copy.copy(self.run.step)  # the same models and optimizer, this method's selector (as bench does)
        step.selector = make_selector(self.cfg, self.accelerator, method, self.run.ledger)
        step.on_select = self.sampling.observe
        self.step = step

    def steps(self, n: int) -> None:
        for _ in range(n):
            loss, counts = self.step(self.images, self.labels)
            self.run.ledger.add_step(
                batch=counts.batch,
                teacher=counts.teacher,
                student_fwd=counts.student_fwd,
                student_bwd=counts.student_bwd,
            )
            self.loss_sum += loss


CASES = [(method, ()) for method in METHODS] + [
    ("unix", ("loss.feature=at",)),
    ("kd", ("loss.feature=sp",)),  # feature taps on teacher and student
    ("unix", ("train.nonfinite=off",)),
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One Trainerish per distinct config, shared by the methods that use it (a run takes a second to build)."""
    built = {}

    def get(extra: tuple[str, ...]) -> Trainerish:
        if extra not in built:
            built[extra] = Trainerish(timing_config(*extra), tmp_path_factory.mktemp("sampling"))
        return built[extra]

    return get


@pytest.mark.parametrize("method, extra", CASES, ids=[" ".join((m, *e)) for m, e in CASES])
def test_steps_read_nothing_back_from_the_device(runs, method, extra):
    t = runs(extra)
    t.use(method)
    t.steps(WARMUP)
    before = t.sampling.counts.clone()
    with HostReads() as reads:
        t.steps(STEPS)
    assert reads.found == [], f"{method}: host reads inside the step: {reads.found}"
    # the steps did run, and the analytics counted them
    assert (t.sampling.counts - before)[0].sum() == STEPS * N and torch.isfinite(t.loss_sum)


def test_fast_path_twins_read_nothing_back(runs):
    """The CUDA-graph selection and teacher graph, as their CPU twins (same buffers and copies, no capture)."""
    from unixkd.selection.graphed import graphed
    from unixkd.training.fastpath import TeacherForward

    t = runs(("train.channels_last=true",))
    t.use("unix")
    t.step.selector = graphed(t.step.selector, mode="static")
    t.step.teacher_call = TeacherForward(t.run.teacher, "static")
    t.steps(WARMUP)  # the first step builds the static buffers
    with HostReads() as reads:
        t.steps(STEPS)
    assert reads.found == [], reads.found
    assert t.step.selector.fallbacks == 0 and t.step.teacher_call.graphs


def test_nonfinite_skip_reads_once_per_step_in_the_optimizer_step(runs):
    """The one deliberate per-step sync (train.nonfinite=skip), found where it is: the detector works on the step."""
    t = runs(("train.nonfinite=skip",))
    t.use("unix")
    t.steps(WARMUP)
    with HostReads() as reads:
        t.steps(STEPS)
    assert len(reads.found) == STEPS and len(set(reads.found)) == 1, reads.found
    assert reads.found[0].startswith("aten._local_scalar_dense.default at training/step.py:")


def test_evaluate_reads_back_once_whatever_the_number_of_batches():
    from test_analytics import OneProcess  # one CPU process: reduce = identity

    class Batches(list):
        def set_epoch(self, epoch):
            pass

    g = torch.Generator().manual_seed(0)
    loader = Batches((torch.randn(16, C, generator=g), torch.randint(0, C, (16,), generator=g)) for _ in range(4))
    with HostReads() as reads:
        result = evaluate(torch.nn.Identity(), loader, OneProcess(), num_classes=C)
    assert len(reads.found) == 1 and reads.found[0].startswith("Tensor.tolist at training/evaluate.py:")  # the reduce
    assert sum(result["per_class_total"]) == 64


# --------------------------------------------------------------------------------------------------------
# the trainer loop: host reads only at the boundaries that are meant to pay them


@pytest.mark.slow
def test_train_loop_reads_only_at_log_and_checkpoint_steps(tmp_path, digits_root, teacher_ckpt):
    """train() end to end on the digits set under HostReads: every read is attributed to the step count at that
    moment. Steps read nothing; the loop between them reads only after a log step or a checkpoint."""
    from test_train_e2e import small_config
    from unixkd.training import step as step_module
    from unixkd.training.trainer import train

    log_every, checkpoint_every, max_steps = 3, 5, 7
    cfg = small_config(
        tmp_path,
        digits_root,
        teacher_ckpt,
        "selection.method=unix",
        "model.student=test_resnet",
        f"train.max_steps={max_steps}",
        f"train.log_every={log_every}",
        f"train.checkpoint_every={checkpoint_every}",
        "train.count_images=true",
    )
    reads = HostReads()
    reads.tag = ("before", 0)
    original = step_module.DistillStep.__call__

    def tagged(self, images, labels):  # the step count at each read: ("step", s) during step s, ("after", s) after
        s = reads.tag[1]
        reads.tag = ("step", s + 1)
        out = original(self, images, labels)
        reads.tag = ("after", s + 1)
        return out

    with mock.patch.object(step_module.DistillStep, "__call__", tagged), reads:
        train(cfg)

    assert reads.tag == ("after", max_steps)
    by_phase: dict[tuple[str, int], list[str]] = {}
    for tag, what in reads.tagged:
        by_phase.setdefault(tag, []).append(what)
    in_steps = {p: r for p, r in by_phase.items() if p[0] == "step"}
    assert in_steps == {}, f"host reads inside training steps: {in_steps}"
    boundaries = {s for s in range(1, max_steps + 1) if s % log_every == 0 or s % checkpoint_every == 0}
    boundaries.add(max_steps)  # the last log row, then the end of the run (checkpoint, evaluation)
    between = {p[1] for p in by_phase if p[0] == "after"}
    assert between <= boundaries, f"host reads after steps {sorted(between - boundaries)}: " + str(
        {p: r for p, r in by_phase.items() if p[0] == "after" and p[1] not in boundaries}
    )
    assert {3, 5, 6} <= between  # the log rows' .item() and the checkpoint's counts were seen: the detector was on


# --------------------------------------------------------------------------------------------------------
# on a GPU: torch's own sync detector


# Every method and both precisions that train without a GradScaler. Not here: mixed_precision=fp16, whose
# GradScaler.step reads found_inf back to the host on every step (torch's design), and train.nonfinite=skip,
# which reads the finite flag on purpose; both are documented.
GPU_CASES = [(method, "no", ()) for method in METHODS] + [
    ("unix", "bf16", ()),
    ("kd", "bf16", ()),
    ("tlcutmix_pick", "bf16", ()),
    ("unix", "no", ("loss.feature=at",)),
]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method, precision, extra", GPU_CASES, ids=[" ".join((m, p, *e)) for m, p, e in GPU_CASES])
def test_steps_do_not_sync_on_cuda(tmp_path, fresh_accelerator_state, method, precision, extra):
    t = Trainerish(timing_config(f"mixed_precision={precision}", *extra), tmp_path)
    assert t.device.type == "cuda"
    t.use(method)
    t.steps(WARMUP)  # lazy initialisation (cuBLAS handles, momentum buffers, the pinned-memory pool) may sync
    torch.cuda.synchronize()
    before = t.sampling.counts.clone()
    torch.cuda.set_sync_debug_mode("error")  # any synchronizing CUDA call raises RuntimeError
    try:
        t.steps(STEPS)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()  # a device-side assert (non-finite loss, out-of-range index) would surface here
    assert (t.sampling.counts - before)[0].sum().item() == STEPS * N
    assert torch.isfinite(t.loss_sum).item()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sampling_counts_on_cuda_match_cpu(tmp_path):
    """index_add_ on CUDA counts what it counts on the CPU (and what torch.bincount counts)."""
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, C, (64,), generator=g)
    index = torch.randint(0, 64, (48,), generator=g)
    counts = []
    for device in ("cpu", "cuda"):
        log = SamplingLog(tmp_path / device, [str(c) for c in range(C)], device, write=False)
        log.observe(labels.to(device), SimpleNamespace(index=index.to(device), extra_index=index[:5].to(device)))
        counts.append(log.counts.cpu())
    assert torch.equal(counts[0], counts[1])
    assert counts[0][1].tolist() == torch.bincount(labels[index], minlength=C).tolist()
