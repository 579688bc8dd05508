"""Top-1 / top-5 accuracy on the val loader, counted on device and reduced across processes once."""

from __future__ import annotations

import torch


@torch.no_grad()
def evaluate(model, loader, accelerator) -> dict:
    """Each process evaluates its shard (disjoint, covering the val set once); one all-reduce at the end."""
    was_training = model.training
    model.eval()
    counts = torch.zeros(3, device=accelerator.device, dtype=torch.float64)  # correct@1, correct@5, seen
    loader.set_epoch(0)
    for images, labels in loader:
        with accelerator.autocast():
            logits = model(images)
        top = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
        hit = top == labels[:, None]
        counts[0] += hit[:, 0].sum()
        counts[1] += hit.any(dim=1).sum()
        counts[2] += labels.numel()
    model.train(was_training)
    counts = accelerator.reduce(counts, reduction="sum")
    c1, c5, n = counts.tolist()  # sync: once per evaluation
    return {"top1": 100.0 * c1 / max(n, 1), "top5": 100.0 * c5 / max(n, 1), "val_images": int(n)}
