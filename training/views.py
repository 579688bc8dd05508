"""One call of the student, one forward per view: each view is normalized by BatchNorm with its own statistics.

The TL authors run the student on the clean batch and on the augmented view in two forwards
(Good-DA-in-KD `helper/loops.py`: `model_s(input_s)`, then `model_s(input_mix)`), so BatchNorm normalizes
each view with that view's batch statistics and updates its running statistics twice per step (clean view
first). One forward on the two views stacked would normalize them together instead.

Under DDP a backward must follow exactly ONE forward of the wrapper (its reducer is armed once per forward),
so the wrapper is still called once, on the stacked rows; inside that call the underlying module runs its own
forward on each block of rows and the outputs are stacked again:

    views = SeparateViews(module)             # `module`: the unwrapped model that DDP (or nothing) wraps
    with views.split((k, e)):
        logits = ddp_or_module(torch.cat([x, extra]))   # module.forward(x), module.forward(extra), cat

Within the context the module's instance attribute `forward` is this object, so nn.Module's call machinery
(its hooks, DDP's pre/post-forward, torch.compile's tracing) is unchanged and nothing is registered as a
parameter or buffer: state_dict keys and saved weights are the model's own. Outside the context the module is
exactly as before (it can be copied, pickled, evaluated, graph-captured). Forward hooks on submodules fire once
per view, in view order: `features.capture` keeps the first, the main rows'.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn


class SeparateViews:
    """`with views.split(sizes): model(x)`: `module`'s forward runs on each row block of x, outputs stacked."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.sizes: tuple[int, ...] | None = None
        self._inner = None  # the forward in effect before the context (the class's, or an instance override)

    @contextlib.contextmanager
    def split(self, sizes):
        """Within: the module's forward runs once per block of `sizes` rows (main rows first), in that order."""
        saved = vars(self.module).get("forward")  # an instance-level forward the module already had
        if saved is self:
            raise RuntimeError("SeparateViews.split: already active on this module")
        self._inner = saved if saved is not None else type(self.module).forward.__get__(self.module)
        self.sizes = tuple(int(n) for n in sizes)
        self.module.forward = self  # nn.Module.__setattr__: a plain attribute, not a parameter or buffer
        try:
            yield
        finally:
            if saved is None:
                del self.module.forward
            else:
                self.module.forward = saved
            self.sizes, self._inner = None, None

    def __call__(self, x: Tensor, *args, **kwargs) -> Tensor:
        """The module's forward while `split` is active: one inner forward per view, outputs stacked."""
        if sum(self.sizes) != x.shape[0]:
            raise ValueError(f"SeparateViews: views of {self.sizes} rows, got a batch of {x.shape[0]}")
        return torch.cat([self._inner(part, *args, **kwargs) for part in x.split(self.sizes)])
