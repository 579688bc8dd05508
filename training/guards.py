"""Two things that must not cost a night: a preemption signal (save, then exit cleanly) and a non-finite
loss or gradient (caught before the optimizer touches the weights)."""

from __future__ import annotations

import signal

import torch


class NonFiniteError(RuntimeError):
    """A NaN/inf loss or gradient was found before the optimizer step."""


class PreemptionFlag:
    """SIGTERM / SIGUSR1 only set a flag; the trainer reads it at a step boundary (ranks agree there)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    def __enter__(self) -> PreemptionFlag:
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals to whoever owns them
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def agreed(self, accelerator) -> bool:
        """True on every process if any process got a signal. One all-reduce: a host-device sync on GPU."""
        if accelerator.num_processes == 1:
            return self.requested
        flag = torch.tensor([float(self.requested)], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)  # sync


def all_finite(loss: torch.Tensor, parameters) -> torch.Tensor:
    """On-device bool: the loss and every gradient are finite (after DDP's all-reduce, so ranks agree)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    finite = torch.isfinite(loss.detach()).all()
    if grads:
        norms = torch._foreach_norm(grads)  # one fused kernel per dtype/device, no host sync
        finite = finite & torch.isfinite(torch.stack(norms)).all()
    return finite
