"""The GPU fast path's switches: which parts of a step run from CUDA graphs, compiled, or eagerly.

* `train.cuda_graph`: the UNIX selection (scoring forward + sort + mix) replayed from one CUDA graph
  (selection/graphed.py). auto = on when the run is on CUDA.
* `train.teacher_mode`: the teacher's no-grad forward on the selected rows, `TeacherForward` below:
  graph (one CUDA graph per input shape), compile (`torch.compile`, inductor) or eager. auto = graph on CUDA
  unless a feature loss (AT/SP) needs the teacher's intermediate layers, which a replay does not expose.
* `train.channels_last`: models in NHWC memory (`apply_channels_last`); the loaders hand over NHWC images.
* `train.compile_student`: the student's training forward/backward through torch.compile (`compile_student`).

Everything here has an eager twin that gives the same numbers; CPU runs use it unless told otherwise.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from unixkd.selection import UnixSelector
from unixkd.selection.graphed import GraphedUnixSelector, StaticGraph

from .config import Config, ConfigError

TEACHER_MODES = ("eager", "graph", "static", "compile")  # static: the graph's buffers without capture (CPU twin)


def selection_graph_mode(cfg: Config, device: torch.device) -> str | None:
    """ "graph" when the selection is to be captured, None for eager (train.cuda_graph)."""
    value = cfg.train.cuda_graph
    if value == "on" and device.type != "cuda":
        raise ConfigError(f"train.cuda_graph=on needs a CUDA device; this run is on {device.type} (use auto or off)")
    return "graph" if value == "on" or (value == "auto" and device.type == "cuda") else None


def teacher_mode(cfg: Config, device: torch.device, has_features: bool) -> str:
    """eager | graph | compile for `train.teacher_mode` on `device`; explicit choices are checked."""
    value = cfg.train.teacher_mode
    if value == "auto":
        return "graph" if device.type == "cuda" and not has_features else "eager"
    if value == "graph" and device.type != "cuda":
        raise ConfigError(
            f"train.teacher_mode=graph needs a CUDA device; this run is on {device.type} (use auto, eager or compile)"
        )
    if value in ("graph", "compile") and has_features:
        raise ConfigError(
            f"train.teacher_mode={value} cannot expose the teacher's layers that "
            f"loss.feature={cfg.loss.feature} reads; use teacher_mode=eager (or auto)"
        )
    return value


def compile_student(student: nn.Module, mode: str) -> nn.Module:
    """`train.compile_student`: the callable of the student's training forward, through torch.compile.

    Compiled after `prepare` (on the DDP wrapper, as Accelerate itself does: DDP's graph breaks split it per
    gradient bucket). Only `DistillStep.student_call` uses it: the scoring forward (and its CUDA graph),
    evaluation and checkpoints keep the eager module, whose parameters the compiled one shares.
    """
    if mode == "none":
        return student
    return torch.compile(student, mode=None if mode == "default" else mode)


def configure_backends(device: torch.device) -> None:
    """CUDA: cuDNN autotuning (every step has the same shapes; the graphs' warm-up calls tune before capture)
    and TF32 for float32 matmuls/convolutions, as timm's train script does. Nothing on a CPU."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def apply_channels_last(*models: nn.Module | None) -> None:
    """NHWC weights for convolution-heavy models (in place; parameters keep their identity)."""
    for model in models:
        if model is not None:
            model.to(memory_format=torch.channels_last)


class TeacherForward:
    """The teacher's no-grad forward on a batch of rows, in the chosen mode; the same logits as `teacher(x)`.

    graph/static: one StaticGraph per (shape, dtype) of input, at most `max_graphs` of them (UNIX needs one:
    k rows every step; TL methods two: the rows, then rows + extra view); any further shape runs eagerly.
    The graph's logits buffer is overwritten by the next replay of that shape, so the caller uses the
    logits within the step. Autocast is taken from the caller, with the weight-cast cache off in capture.
    """

    def __init__(self, teacher: nn.Module, mode: str = "eager", *, max_graphs: int = 2, warmup: int = 3):
        if mode not in TEACHER_MODES:
            raise ValueError(f"teacher mode {mode!r} is not one of {', '.join(TEACHER_MODES)}")
        self.teacher, self.mode, self.max_graphs, self.warmup = teacher, mode, max_graphs, warmup
        self.graphs: dict[tuple, StaticGraph] = {}
        self.eager_calls = 0  # calls that found no graph for their shape
        self._compiled: Callable | None = None
        if mode == "compile":
            self._compiled = torch.compile(teacher, dynamic=False)

    def __call__(self, x: Tensor) -> Tensor:
        if self.mode == "eager":
            return self.teacher(x)
        if self.mode == "compile":
            return self._compiled(x)
        key = (tuple(x.shape), x.dtype)
        graph = self.graphs.get(key)
        if graph is None and len(self.graphs) < self.max_graphs:
            graph = self.graphs[key] = self._capture(x)
        if graph is None:
            self.eager_calls += 1
            return self.teacher(x)
        return graph(x)[0]

    def _capture(self, x: Tensor) -> StaticGraph:
        device = x.device
        amp = torch.is_autocast_enabled(device.type)
        amp_dtype = torch.get_autocast_dtype(device.type)

        def body(rows: Tensor) -> tuple[Tensor]:
            with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp, cache_enabled=False):
                return (self.teacher(rows),)

        return StaticGraph(
            body,
            [x],
            device=device,
            capture=self.mode == "graph",
            warmup=self.warmup,
            preserve=list(self.teacher.buffers()),
        )


# ---------------------------------------------------------------------------------------------------------
# the eager twins, for measuring: bench times both paths, profile counts FLOPs on the eager one


def eager_selector(selector):
    """The eager reference of a graphed selector: plain UNIX with the same options, drawing from the same
    Generator (so the draws continue one stream). Any other selector is its own eager form."""
    if isinstance(selector, GraphedUnixSelector):
        twin = UnixSelector(selector.k, selector.alpha, selector.w, selector.b, selector.criterion, selector.score_mode)
        twin.rng = selector.rng
        return twin
    return selector


def eager_step(step):
    """A shallow copy of a DistillStep on the eager path: eager selector, the teacher and student modules
    called directly (no graph, no compile). Same models, optimizer and phases."""
    twin = copy.copy(step)
    twin.selector = eager_selector(step.selector)
    twin.teacher_call = step.teacher
    twin.student_call = step.student
    return twin


def step_modes(step) -> dict[str, str]:
    """How each part of `step` runs: selection graph|static|eager, teacher graph|static|compile|eager,
    student compile|eager. What a result records beside its times, so no number is mislabelled."""
    selector, teacher = step.selector, step.teacher_call
    return {
        "selection": selector.mode if isinstance(selector, GraphedUnixSelector) else "eager",
        "teacher": teacher.mode if isinstance(teacher, TeacherForward) else "eager",
        "student": "eager" if step.student_call is step.student else "compile",
    }
