"""UNIX selection as one CUDA graph: scoring forward, uncertainty, sort, partner gather, c_r, mix, top-k gather.

Eager UNIX launches a few hundred small kernels per step from Python (the student's layers, then softmax,
entropy, argsort, gathers, the blend); on a fast GPU the launches, not the math, set the pace. Here the whole
of docs/algorithms.md §2 steps 1-8 is captured once into a CUDA graph over static buffers and replayed each step: one
launch. The eager code is the graph's body, so `unix_mix` stays the single definition of the math.

Randomness stays on the host, in the selector's seeded numpy Generator, exactly as eager UNIX draws it: λ and
the permutation are written into static device tensors before each replay (two tiny copies from pinned
memory, queued on the stream, no host sync). So a replay draws fresh values every step, a graphed run resumes from
`state_dict()` like an eager one, and the graph and eager paths can be compared on the very same λ/perm.

Static buffers have a lifetime: the Selection a replay returns (x, rank, partner, m) lives in the graph's
output buffers and is overwritten by the next `select`. The training step consumes it before then (stream
order); anything kept longer must be cloned.

Modes: "graph" (CUDA only) captures and replays; "static" runs the same body over the same static buffers
without capturing: the CPU twin that CI tests. A batch of any other shape than the first one seen (a short
last batch) takes the eager path, never a wrong answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .selectors import UnixSelector, resolve_b, resolve_k, score
from .unix import unix_mix

MODES = ("graph", "static")


class StaticGraph:
    """`fn(*inputs)` over static input buffers: captured once as a CUDA graph and replayed, or (capture=False)
    called eagerly on the same buffers.

    `inputs` are example tensors; the buffers are device copies of them (same shape, dtype and memory
    format), so the first capture and warm-up run on real values. `preserve`: tensors the warm-up calls may
    change (BatchNorm running statistics) that are put back afterwards, so capturing leaves no trace.
    Capture uses thread-local error mode: DALI's worker threads keep issuing CUDA calls meanwhile.
    """

    def __init__(
        self,
        fn: Callable[..., tuple[Tensor, ...]],
        inputs: Sequence[Tensor],
        *,
        device: torch.device,
        capture: bool,
        warmup: int = 3,
        preserve: Sequence[Tensor] = (),
    ):
        self.fn = fn
        self.inputs = [torch.empty_like(t, device=device) for t in inputs]
        for buf, t in zip(self.inputs, inputs):
            buf.copy_(t)
        self.graph = None
        self.outputs: tuple[Tensor, ...] = ()
        if capture:
            self.warm_up(warmup, preserve)
            # A weight cast cached by autocast during the warm-up would be read, not recomputed, by every
            # replay (stale weights, in memory the graph does not own): capture from an empty cache. Casts
            # cached during the capture itself are recorded in the graph, so each replay recasts the weights.
            # (The bodies turn caching off; Accelerate's autocast around a prepared model's forward does not.)
            torch.clear_autocast_cache()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.outputs = self.fn(*self.inputs)  # recorded, not run
            self.graph = graph

    def warm_up(self, calls: int, preserve: Sequence[Tensor] = ()) -> None:
        """Run `fn` `calls` times (lazy init: cuDNN plans, workspaces, before capture), then put `preserve` back.

        On CUDA off the default stream, as torch.cuda.graphs asks.
        """
        saved = [t.detach().clone() for t in preserve]
        cuda = self.inputs[0].is_cuda
        if cuda:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(calls):
                    self.fn(*self.inputs)
            torch.cuda.current_stream().wait_stream(side)
        else:
            for _ in range(calls):
                self.fn(*self.inputs)
        with torch.no_grad():
            for t, value in zip(preserve, saved):
                t.copy_(value)

    def __call__(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        for buf, t in zip(self.inputs, inputs):
            if t is not buf:  # host values go through pinned memory: queued on the stream, no host sync
                buf.copy_(t.pin_memory() if buf.is_cuda and not t.is_cuda else t, non_blocking=True)
        if self.graph is None:  # the twin keeps the graph's output lifetime: the same buffers, overwritten
            results = self.fn(*self.inputs)
            if not self.outputs:
                self.outputs = results
            for out, value in zip(self.outputs, results):
                if out is not value:
                    out.copy_(value)
        else:
            self.graph.replay()
        return self.outputs


class GraphedUnixSelector(UnixSelector):
    """UNIX with steps 1-8 replayed from one CUDA graph (see the module docstring); same draws, same state.

    The graph is captured on the first batch, in the autocast state `select` is called in (the training step's
    mixed precision). The autocast cache is emptied before capture, so every weight cast is recorded in the
    graph and each replay reads the current weights. `fallbacks` counts batches that took the eager path
    (another shape).
    """

    def __init__(
        self,
        k,
        alpha,
        w: float = 10.0,
        b=None,
        criterion: str = "entropy",
        score_mode: str = "train",
        *,
        seed: int = 0,
        mode: str = "graph",
        warmup: int = 3,
    ):
        super().__init__(k, alpha, w, b, criterion, score_mode, seed=seed)
        if mode not in MODES:
            raise ValueError(f"GraphedUnixSelector mode={mode!r} is not one of {', '.join(MODES)}")
        if mode == "graph" and not torch.cuda.is_available():
            raise ValueError("train.cuda_graph=on needs CUDA; this machine has none (use auto or off)")
        self.mode, self.warmup = mode, warmup
        self.fallbacks = 0
        self._graph: StaticGraph | None = None
        self._key = None

    @classmethod
    def from_selector(cls, sel: UnixSelector, *, mode: str = "graph", warmup: int = 3) -> GraphedUnixSelector:
        """The graphed twin of `sel`, drawing from the same Generator (state included)."""
        new = cls(sel.k, sel.alpha, sel.w, sel.b, sel.criterion, sel.score_mode, mode=mode, warmup=warmup)
        new.rng = sel.rng
        return new

    def __repr__(self) -> str:
        return f"GraphedUnixSelector(mode={self.mode!r}, k={self.k!r}, alpha={self.alpha!r}, w={self.w!r})"

    def select(self, images, labels, student):
        N = images.shape[0]
        k, b = resolve_k(self.k, N), resolve_b(self.b, N)
        lam, perm = self.draw(N)  # the same draws, in the same order, as eager UNIX
        key = (tuple(images.shape), images.dtype, images.device, k, b, id(student))
        if self._graph is None:
            self._capture(images, lam, perm, student, k, b)
            self._key = key
        if key != self._key:  # a short last batch, another student: eager, exactly the reference
            self.fallbacks += 1
            return self.select_drawn(images, labels, student, k, b, lam, perm)
        x, rank, partner, m = self._graph(images, _host_scalar(lam), torch.from_numpy(perm))
        mix = _Mix(x, rank, partner, m)
        return self.selection(mix, labels, N)

    def _capture(self, images: Tensor, lam: float, perm, student, k: int, b: int) -> None:
        device = images.device
        amp = torch.is_autocast_enabled(device.type)
        amp_dtype = torch.get_autocast_dtype(device.type)

        def body(x: Tensor, lam_t: Tensor, perm_t: Tensor) -> tuple[Tensor, ...]:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp, cache_enabled=False):
                logits = score(student, x, self.score_mode)  # step 1 (no grad, the configured BN mode)
                mix = unix_mix(x, logits, k=k, lam=lam_t, perm=perm_t, w=self.w, b=b, criterion=self.criterion)
            return mix.x, mix.rank, mix.partner, mix.m

        preserve = list(student.buffers()) if isinstance(student, torch.nn.Module) else []
        self._graph = StaticGraph(
            body,
            [images, _host_scalar(lam), torch.from_numpy(perm)],
            device=device,
            capture=self.mode == "graph",
            warmup=self.warmup,
            preserve=preserve,
        )


class _Mix:
    """What `UnixSelector.selection` reads from a UnixMix, from the graph's output buffers."""

    __slots__ = ("x", "rank", "partner", "m")

    def __init__(self, x: Tensor, rank: Tensor, partner: Tensor, m: Tensor):
        self.x, self.rank, self.partner, self.m = x, rank, partner, m


def _host_scalar(value: float) -> Tensor:
    return torch.tensor(value, dtype=torch.float32)


def graphed(selector, *, mode: str = "graph", warmup: int = 3):
    """`selector` with its selection captured in a CUDA graph when the method supports it (UNIX), else as is."""
    if type(selector) is UnixSelector:
        return GraphedUnixSelector.from_selector(selector, mode=mode, warmup=warmup)
    return selector
