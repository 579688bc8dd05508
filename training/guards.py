"""What must not cost a night: a preemption signal or Ctrl-C (save, then exit cleanly), a non-finite loss or
gradient (caught before the optimizer touches the weights), and a run that cannot go on (a checkpoint that
cannot be written, a peer process that hangs) — each ends with one line and the last checkpoint intact."""

from __future__ import annotations

import os
import re
import signal

import torch


class RunStopped(RuntimeError):
    """The run stopped itself at a known point; its last complete checkpoint is intact (launch.py: exit 3)."""


class NonFiniteError(RunStopped):
    """A NaN/inf loss or gradient was found before the optimizer step."""


class CheckpointWriteError(RunStopped):
    """A checkpoint could not be written (disk full, permissions); the previous one is untouched."""


class PeerTimeoutError(RunStopped):
    """A collective did not complete in time: another process is stuck or died."""


_TIMEOUT = re.compile(r"tim(ed|e)[ _-]?out", re.IGNORECASE)


def is_collective_timeout(err: BaseException) -> bool:
    """A torch.distributed collective gave up waiting (gloo raises this; NCCL's watchdog aborts the process)."""
    import torch.distributed as dist

    kinds = (dist.DistError,) if hasattr(dist, "DistError") else ()
    return isinstance(err, (RuntimeError, *kinds)) and bool(_TIMEOUT.search(str(err)))


class PreemptionFlag:
    """SIGTERM / SIGUSR1 / SIGINT (Ctrl-C) only set a flag; the trainer reads it at a step boundary, where the
    ranks agree, saves a checkpoint and stops.

    A second Ctrl-C in a single process run aborts at once (KeyboardInterrupt) for a user who does not want to
    wait for the checkpoint. Under a launcher (`accelerate launch`) repeated signals are expected — the
    launcher forwards the terminal's Ctrl-C and its own — so there every signal only sets the flag.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self, *, repeat_aborts: bool = True):
        self.signal_name: str | None = None
        self.repeat_aborts = repeat_aborts
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
        if signum == signal.SIGINT and self.signal_name == "SIGINT" and self.repeat_aborts:
            raise KeyboardInterrupt  # the second Ctrl-C: the user will not wait for the checkpoint
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
            if signum == signal.SIGINT and self.repeat_aborts:  # os.write: safe inside a signal handler
                os.write(
                    2,
                    b"\ninterrupted: saving a checkpoint at the end of this step (Ctrl-C again to abort without one)\n",
                )

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def agreed(self, accelerator) -> bool:
        """True on every process if any process got a signal, and then every process knows its name (the
        highest signal number wins). One all-reduce: a host-device sync on GPU."""
        if accelerator.num_processes == 1:
            return self.requested
        number = signal.Signals[self.signal_name].value if self.requested else 0
        flag = torch.tensor([number], device=accelerator.device)
        agreed = int(accelerator.reduce(flag, reduction="max").item())  # sync
        if agreed and self.signal_name is None:
            self.signal_name = signal.Signals(agreed).name
        return agreed > 0


def all_finite(loss: torch.Tensor, parameters) -> torch.Tensor:
    """On-device bool: the loss and every gradient are finite (after DDP's all-reduce, so ranks agree)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    finite = torch.isfinite(loss.detach()).all()
    if grads:
        norms = torch._foreach_norm(grads)  # one fused kernel per dtype/device, no host sync
        finite = finite & torch.isfinite(torch.stack(norms)).all()
    return finite
