"""Run under `accelerate launch` (2 CPU processes, gloo) by tests/test_distributed.py: TL steps through DDP
against the authors' two-forward loop with DDP's semantics written out by hand.

Each rank trains the DDP-wrapped student with our DistillStep on its own batches, and a plain copy with the
reference of tests/test_views.py (clean forward, view forward, one backward), doing by hand what DDP does:
rank 0's buffers broadcast at the start of each training forward, gradients averaged over the ranks. Same
loss, gradients, weights and BN running statistics, or this rank reports the first mismatch.
Usage: mp_views.py <out dir>; rank r writes <out dir>/views_rank<r>.json.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, as for launch.py
sys.path.insert(0, str(Path(__file__).resolve().parent))

from accelerate import Accelerator  # noqa: E402

from test_views import batches, build, reference_loss, select  # noqa: E402


def check(accelerator, method, at, options) -> dict:
    rank, world = accelerator.process_index, accelerator.num_processes
    step, student, teacher, ref, ref_selector, ref_opt, layers = build(method, at=at, seed=100 + rank, **options)
    ddp, step.optimizer = accelerator.prepare(student, step.optimizer)
    step.accelerator, step.student, step.student_call = accelerator, ddp, ddp
    assert isinstance(ddp, DistributedDataParallel) and accelerator.unwrap_model(ddp) is student
    worst = 0.0
    for i, (images, labels) in enumerate(batches(10 + rank)):
        with torch.no_grad():
            for p, q in zip(ref.parameters(), student.parameters()):
                p.copy_(q)
        sel = step.select(images, labels)
        loss = step.student_loss(sel, step.teacher_forward(sel))
        step.backward(loss)
        grads = {n: p.grad.clone() for n, p in student.named_parameters()}
        step.optimizer_step(loss)

        ref_sel = select(ref_selector, images, labels, ref, teacher)
        assert torch.equal(ref_sel.extra, sel.extra)
        with torch.no_grad():
            for b in ref.buffers():  # DDP's broadcast_buffers: rank 0's running stats at the forward's start
                dist.broadcast(b, 0)
        ref_opt.zero_grad()
        want = reference_loss(ref, teacher, ref_sel, labels, layers if at else None)
        want.backward()
        for p in ref.parameters():  # DDP's all-reduce: the mean gradient
            dist.all_reduce(p.grad)
            p.grad /= world
        torch.testing.assert_close(loss.detach(), want.detach(), rtol=1e-5, atol=1e-6)
        for n, p in ref.named_parameters():
            torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-6, msg=f"step {i} grad {n}")
            worst = max(worst, (grads[n] - p.grad).abs().max().item())
        ref_opt.step()
    ours, theirs = student.state_dict(), ref.state_dict()
    for n in ours:
        torch.testing.assert_close(ours[n], theirs[n], rtol=1e-4, atol=1e-6, msg=f"state {n}")
    return {
        "method": method,
        "at": at,
        "loss": loss.item(),
        "max_grad_diff": worst,
        "num_batches_tracked": int(student.stem[1].num_batches_tracked),
    }


def main(out: str) -> None:
    accelerator = Accelerator(cpu=True)
    record = {"rank": accelerator.process_index, "world_size": accelerator.num_processes, "runs": []}
    for method, at, options in (("tlmixup", True, {}), ("tlcutmix_pick", False, {})):
        record["runs"].append(check(accelerator, method, at, options))
    Path(out, f"views_rank{accelerator.process_index}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1])
