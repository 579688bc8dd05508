"""training.analytics, per-class evaluation and training.measure.report: counts against hand-made selections, PNGs drawn."""

import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from unixkd import launch
from unixkd.training.analytics import SamplingLog, load_sampling
from unixkd.training.evaluate import evaluate
from unixkd.training.measure.report import draw_report

C = 4


class OneProcess:
    """What the analytics and evaluate use of an Accelerator: one CPU process, reduce = identity."""

    device = torch.device("cpu")

    def reduce(self, tensor, reduction="sum"):
        return tensor.clone()

    def autocast(self):
        return contextlib.nullcontext()


def sel(index, extra_index=None):
    return SimpleNamespace(
        index=torch.tensor(index), extra_index=None if extra_index is None else torch.tensor(extra_index)
    )


class Loader:
    """Stands in for DaliLoader: 10 files, a fixed order per epoch."""

    index = SimpleNamespace(files=[f"f{i}" for i in range(10)])

    def sample_order(self, epoch):
        return np.array([9, 8, 7, 6, 5, 4, 3, 2] if epoch == 0 else [0, 1, 2, 3, 4, 5, 6, 7])


def test_counts_per_epoch_with_extra_rows_and_images(tmp_path):
    log = SamplingLog(tmp_path, ["a", "b", "c", "d"], "cpu", write=True, loader=Loader(), count_images=True)
    acc = OneProcess()
    labels = torch.tensor([0, 1, 1, 2])  # N = 4
    log.set_epoch(0, 0)
    log.observe(labels, sel([2, 0]))  # batch 0: files 9 8 7 6; rows 2, 0 -> files 7, 9
    log.observe(labels, sel([3], extra_index=[1, 1, 3]))  # batch 1: files 5 4 3 2; row 3 -> 2, extra 4 4 2
    log.end_epoch(acc)
    log.set_epoch(1, 0)
    log.observe(torch.tensor([3, 3, 0, 1]), sel([0, 1, 2, 3]))  # files 0 1 2 3
    log.end_epoch(acc)

    h = load_sampling(tmp_path)
    assert h["epochs"] == [0, 1] and h["classes"] == ["a", "b", "c", "d"]
    assert h["seen"] == [[2, 4, 2, 0], [1, 1, 0, 2]]
    assert h["selected"] == [[1, 1, 1, 0], [1, 1, 0, 2]]  # epoch 0: labels of rows 2, 0 and 3 -> 1, 0, 2
    assert h["extra"] == [[0, 2, 1, 0], [0, 0, 0, 0]]
    e0 = np.load(tmp_path / "sampling_images" / "epoch-0000.npy")
    want = np.zeros(10, dtype=int)
    for f in [7, 9, 2, 4, 4, 2]:
        want[f] += 1
    assert e0.tolist() == want.tolist()
    assert np.load(tmp_path / "sampling_images" / "epoch-0001.npy").tolist() == [1, 1, 1, 1] + [0] * 6


def test_counts_match_a_bincount_reference(tmp_path):
    # observe counts with index_add_ (torch.bincount syncs on CUDA); torch.bincount is the reference here,
    # over random batches with repeated rows, a class absent from a batch and empty extra views.
    classes = 7
    g = torch.Generator().manual_seed(0)
    log = SamplingLog(tmp_path, [str(c) for c in range(classes)], "cpu", write=False)
    log.set_epoch(0, 0)
    want = torch.zeros(3, classes, dtype=torch.int64)
    for step in range(20):
        N = int(torch.randint(1, 12, (), generator=g))
        labels = torch.randint(0, classes - 1, (N,), generator=g)  # the last class never occurs
        index = torch.randint(0, N, (int(torch.randint(1, N + 1, (), generator=g)),), generator=g)
        extra = None if step % 3 == 0 else torch.randint(0, N, (step % 4,), generator=g)
        log.observe(labels, SimpleNamespace(index=index, extra_index=extra))
        want[0] += torch.bincount(labels, minlength=classes)
        want[1] += torch.bincount(labels[index], minlength=classes)
        if extra is not None:
            want[2] += torch.bincount(labels[extra], minlength=classes)
    assert log.counts.dtype == torch.int64 and log.counts.tolist() == want.tolist()
    assert want[2].sum() > 0 and want[0, -1] == 0


def test_resume_mid_epoch_keeps_the_counts(tmp_path):
    acc = OneProcess()
    labels = torch.tensor([0, 1, 2, 3])
    a = SamplingLog(tmp_path / "a", list("abcd"), "cpu", write=False)
    a.set_epoch(0, 0)
    a.observe(labels, sel([0, 1]))
    state = json.loads(json.dumps(a.state_dict()))  # as the checkpoint stores it
    b = SamplingLog(tmp_path / "b", list("abcd"), "cpu", write=False)
    b.load_state_dict(state)
    b.set_epoch(0, 1)
    b.observe(labels, sel([3]))
    b.end_epoch(acc)
    assert b.history["selected"] == [[1, 1, 0, 1]] and b.history["seen"] == [[2, 2, 2, 2]]
    # a run stopped mid-epoch and resumed writes its epoch's two parts into one row
    b.set_epoch(0, 2)
    b.observe(labels, sel([2]))
    b.end_epoch(acc)
    assert b.history["epochs"] == [0] and b.history["selected"] == [[1, 1, 1, 1]]


def test_record_eval_moves_per_class_counts_out_of_the_metrics(tmp_path):
    log = SamplingLog(tmp_path, list("abcd"), "cpu", write=True)
    out = log.record_eval(5, 0, {"top1": 50.0, "per_class_correct": [1, 0, 2, 0], "per_class_total": [2, 1, 2, 3]})
    assert out == {"top1": 50.0}
    assert load_sampling(tmp_path)["eval"] == [
        {"step": 5, "epoch": 0, "top1": 50.0, "per_class_correct": [1, 0, 2, 0], "per_class_total": [2, 1, 2, 3]}
    ]


class ValLoader:
    def __init__(self, batches):
        self.batches = batches

    def set_epoch(self, epoch):
        pass

    def __iter__(self):
        return iter(self.batches)


def test_evaluate_per_class():
    # the model's logits are the inputs themselves: prediction = argmax of each row
    x1 = torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 5.0, 0, 0]])
    x2 = torch.tensor([[0, 0, 0, 5.0], [5.0, 0, 0, 0]])
    loader = ValLoader([(x1, torch.tensor([0, 1, 2])), (x2, torch.tensor([3, 2]))])
    model = torch.nn.Identity()
    result = evaluate(model, loader, OneProcess(), num_classes=C)
    assert result["per_class_correct"] == [1, 1, 0, 1] and result["per_class_total"] == [1, 1, 2, 1]
    assert result["top1"] == pytest.approx(60.0) and result["val_images"] == 5
    assert "per_class_correct" not in evaluate(model, loader, OneProcess())


def fake_run(tmp_path, extra=False):
    rows = [{"step": s, "epoch": s // 4, "loss": 3.0 / s, "cost_fraction": 0.77} for s in (2, 4, 6, 8)]
    rows.append({"step": 4, "epoch": 0, "top1": 40.0})
    rows.append({"step": 8, "epoch": 1, "final": True, "top1": 60.0, "teacher_top1": 90.0, "cost_fraction": 0.77})
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "config.yaml").write_text("selection:\n  method: unix\n")
    sampling = {
        "classes": list("abcd"),
        "epochs": [0, 1],
        "seen": [[8, 8, 8, 8], [8, 8, 8, 8]],
        "selected": [[8, 6, 4, 2], [7, 6, 5, 2]],
        "extra": [[2, 1, 0, 0], [1, 1, 1, 1]] if extra else [[0] * 4, [0] * 4],
        "eval": [
            {"step": 8, "epoch": 1, "top1": 60.0, "per_class_correct": [1, 2, 3, 4], "per_class_total": [5, 5, 5, 5]}
        ],
    }
    (tmp_path / "sampling.json").write_text(json.dumps(sampling))


@pytest.mark.parametrize("extra", [False, True])
def test_report_draws_three_pngs(tmp_path, extra, capsys):
    fake_run(tmp_path, extra)
    assert launch.main(["report", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[-1] for p in printed] == ["sampling_heatmap.png", "selected_vs_accuracy.png", "curves.png"]
    for name in printed:
        data = Path(name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_report_errors_are_one_line(tmp_path, capsys):
    assert launch.main(["report", str(tmp_path / "missing")]) == 2
    (tmp_path / "metrics.jsonl").write_text("")
    assert launch.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no such run folder" in err[0] and "sampling.json" in err[1]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no metrics.jsonl"):
        draw_report(empty)
