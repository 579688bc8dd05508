"""Top-1 / top-5 accuracy (and, if asked, per-class top-1) on the val loader, reduced across processes once."""

from __future__ import annotations

import torch


@torch.no_grad()
def evaluate(model, loader, accelerator, num_classes: int | None = None) -> dict:
    """Each process evaluates its shard (disjoint, covering the val set once); one all-reduce at the end.

    With `num_classes`, also `per_class_correct` / `per_class_total` (lists of C ints: top-1 hits and images
    per true class), for the sampling analytics.
    """
    was_training = model.training
    model.eval()
    C = num_classes or 0
    # correct@1, correct@5, seen, then C per-class hits, then C per-class totals: one tensor, one reduce
    counts = torch.zeros(3 + 2 * C, device=accelerator.device, dtype=torch.float64)
    loader.set_epoch(0)
    for images, labels in loader:
        with accelerator.autocast():
            logits = model(images)
        top = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
        hit = top == labels[:, None]
        counts[0] += hit[:, 0].sum()
        counts[1] += hit.any(dim=1).sum()
        counts[2] += labels.numel()
        if C:  # index_add_: bincount and a boolean mask would each read back to the host, every batch on CUDA
            counts[3 : 3 + C].index_add_(0, labels, hit[:, 0].to(counts.dtype))
            counts[3 + C :].index_add_(0, labels, torch.ones_like(labels, dtype=counts.dtype))
    model.train(was_training)
    counts = accelerator.reduce(counts, reduction="sum").tolist()  # sync: once per evaluation
    c1, c5, n = counts[:3]
    result = {"top1": 100.0 * c1 / max(n, 1), "top5": 100.0 * c5 / max(n, 1), "val_images": int(n)}
    if C:
        result["per_class_correct"] = [int(v) for v in counts[3 : 3 + C]]
        result["per_class_total"] = [int(v) for v in counts[3 + C :]]
    return result
