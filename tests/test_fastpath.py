"""The GPU fast path's selection graph and teacher graph against their eager references.

CPU (CI): the "static" twin runs the graph's body over the graph's static buffers, without capture; it must
equal eager UNIX (`UnixSelector` / `unix_mix`) exactly, fall back to eager for a short last batch, and resume.
GPU: the captured graph, replayed, against eager on the same λ/perm (bf16 tolerance), fresh draws per replay,
BatchNorm running statistics, and the teacher graph. Skipped without CUDA.
"""

import copy

import numpy as np
import pytest
import torch

from unixkd.selection import build_selector, score, unix_mix
from unixkd.selection.graphed import GraphedUnixSelector, StaticGraph, graphed
from unixkd.training.config import ConfigError, load_config
from unixkd.training.fastpath import TeacherForward, selection_graph_mode, teacher_mode
from unixkd.training.models import create_model


def cuda(test):
    """Needs a CUDA device: marked `gpu` (what benchmarks/gpu_session.sh runs), skipped elsewhere."""
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(test))


N, C, S = 16, 10, 32


def student(seed=0):
    torch.manual_seed(seed)
    return create_model("test_resnet", C).train()  # has BatchNorm: the scoring forward updates running stats


def batch(gen, n=N, device="cpu"):
    x = torch.randn(n, 3, S, S, generator=gen).to(device)
    return x, torch.randint(0, C, (n,), generator=gen).to(device)


def pair(k=0.75, mode="static", seed=3, **options):
    """An eager UNIX selector and its graphed twin, drawing the same λ/perm."""
    ref = build_selector("unix", k=k, alpha=0.2, seed=seed, **options)
    return ref, GraphedUnixSelector.from_selector(
        build_selector("unix", k=k, alpha=0.2, seed=seed, **options), mode=mode
    )


def assert_same(a, b):
    for name in ("x", "index", "m", "y", "y_partner"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.scored == b.scored


# ---- CPU: the static twin ----------------------------------------------------------------------------


@pytest.mark.parametrize("score_mode", ["train", "eval"])
def test_static_twin_equals_eager_unix_over_steps(score_mode):
    ref, fused = pair(score_mode=score_mode)
    a, b = student(), student()
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        x, y = batch(gen)
        assert_same(ref.select(x, y, a), fused.select(x, y, b))
    for p, q in zip(a.buffers(), b.buffers()):  # BN running stats moved the same way (or not at all: eval)
        assert torch.equal(p, q)
    assert fused.fallbacks == 0 and a.training and b.training


def test_static_twin_equals_unix_mix_on_the_same_draws():
    """The wrapper's path is exactly `score` + `unix_mix` with the λ/perm its Generator draws."""
    _, fused = pair(k=12, w=5.0, b=4, criterion="margin")
    rng = copy.deepcopy(fused.rng)
    model = student()
    reference_model = copy.deepcopy(model)
    x, y = batch(torch.Generator().manual_seed(1))
    sel = fused.select(x, y, model)
    logits = score(reference_model, x, "train")
    lam, perm = float(rng.beta(0.2, 0.2)), torch.from_numpy(rng.permutation(N))
    mix = unix_mix(x, logits, k=12, lam=lam, perm=perm, w=5.0, b=4, criterion="margin")
    assert torch.equal(sel.x, mix.x) and torch.equal(sel.index, mix.rank) and torch.equal(sel.m, mix.m)
    assert torch.equal(sel.y_partner, y[mix.partner])


def test_static_twin_under_bf16_autocast_and_channels_last():
    ref, fused = pair()
    a, b = student(), student()
    a.to(memory_format=torch.channels_last), b.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        x, y = batch(gen)
        x = x.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            s_ref, s_fused = ref.select(x, y, a), fused.select(x, y, b)
        assert_same(s_ref, s_fused)
        assert s_fused.x.is_contiguous(memory_format=torch.channels_last)


def test_short_last_batch_falls_back_to_eager_then_replays_again():
    ref, fused = pair(k=0.75)
    a, b = student(), student()
    gen = torch.Generator().manual_seed(3)
    for n in (N, N, 10, N):  # the 10-image batch is a short last batch: a different shape, k = 8
        x, y = batch(gen, n)
        s_ref, s_fused = ref.select(x, y, a), fused.select(x, y, b)
        assert_same(s_ref, s_fused)
        assert s_fused.x.shape[0] == round(0.75 * n)
    assert fused.fallbacks == 1


def test_replays_reuse_the_static_buffers_and_draw_fresh_values():
    _, fused = pair()
    model = student()
    gen = torch.Generator().manual_seed(4)
    rows = torch.arange(N)  # labels = rows, so y_partner is the permutation itself
    first = fused.select(batch(gen)[0], rows, model)
    first_m, first_partner = first.m.clone(), first.y_partner.clone()
    second = fused.select(batch(gen)[0], rows, model)
    assert second.x.data_ptr() == first.x.data_ptr()  # the documented lifetime: overwritten by the next select
    assert not torch.equal(second.m, first_m)  # a new λ
    assert not torch.equal(second.y_partner, first_partner)  # a new permutation


def test_graphed_selector_resumes_like_an_uninterrupted_one():
    _, whole = pair()
    _, first = pair()
    a, b = student(), student()
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(2):
        whole.select(*batch(gen_a), a)
        first.select(*batch(gen_b), b)
    state = first.state_dict()
    resumed = GraphedUnixSelector.from_selector(build_selector("unix", k=0.75, alpha=0.2, seed=99), mode="static")
    resumed.load_state_dict(state)
    x, y = batch(gen_a)
    assert_same(whole.select(x, y, a), resumed.select(x, y, b))


def test_graphed_wraps_unix_only_and_graph_mode_needs_cuda():
    assert isinstance(graphed(build_selector("unix", k=4, alpha=1.0), mode="static"), GraphedUnixSelector)
    for method in ("kd", "random", "uncertainty", "tlmixup"):
        sel = build_selector(method, k=4, alpha=1.0)
        assert graphed(sel, mode="static") is sel
    with pytest.raises(ValueError, match="mode="):
        GraphedUnixSelector(4, 1.0, mode="fast")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs CUDA"):
            GraphedUnixSelector(4, 1.0, mode="graph")


def test_static_graph_warm_up_leaves_no_trace():
    """Warm-up calls (before a capture) run the body, then the `preserve` tensors get their values back."""
    t, calls = torch.zeros(3), []

    def body(x):
        calls.append(1)
        t.add_(1)  # like BatchNorm's running statistics in a train-mode scoring forward
        return (x * 2,)

    g = StaticGraph(body, [torch.ones(2)], device=torch.device("cpu"), capture=False)
    g.warm_up(3, preserve=[t])
    assert len(calls) == 3 and torch.equal(t, torch.zeros(3))
    out = g(torch.full((2,), 3.0))[0]
    assert torch.equal(out, torch.full((2,), 6.0)) and torch.equal(t, torch.ones(3))


def test_teacher_forward_static_equals_eager_and_caps_its_graphs():
    teacher = student(1).eval()
    fast = TeacherForward(teacher, "static", max_graphs=2)
    gen = torch.Generator().manual_seed(6)
    for n in (12, 12, 16, 12, 7):
        x = batch(gen, n)[0]
        with torch.no_grad():
            assert torch.equal(fast(x), teacher(x))
    assert sorted(k[0][0] for k in fast.graphs) == [12, 16] and fast.eager_calls == 1
    with pytest.raises(ValueError, match="teacher mode"):
        TeacherForward(teacher, "fastest")


# ---- config switches --------------------------------------------------------------------------------


def test_fast_path_switches_resolve_per_device():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    cfg = load_config("configs/demo.yaml", ["data.root=unused"])
    assert selection_graph_mode(cfg, cpu) is None and selection_graph_mode(cfg, gpu) == "graph"
    assert teacher_mode(cfg, cpu, False) == "eager" and teacher_mode(cfg, gpu, False) == "graph"
    assert teacher_mode(cfg, gpu, True) == "eager"  # AT/SP read the teacher's layers: no replay
    cfg.train.cuda_graph = "off"
    assert selection_graph_mode(cfg, gpu) is None
    cfg.train.cuda_graph = "on"
    with pytest.raises(ConfigError, match="train.cuda_graph=on needs a CUDA device"):
        selection_graph_mode(cfg, cpu)
    cfg.train.teacher_mode = "graph"
    with pytest.raises(ConfigError, match="train.teacher_mode=graph needs a CUDA device"):
        teacher_mode(cfg, cpu, False)
    with pytest.raises(ConfigError, match="cannot expose the teacher's layers"):
        teacher_mode(cfg, gpu, True)
    with pytest.raises(ConfigError, match="train.cuda_graph"):
        load_config("configs/demo.yaml", ["data.root=unused", "train.cuda_graph=yes"])


def test_build_run_on_cpu_is_eager_and_channels_last_steps(teacher_ckpt):
    from accelerate import Accelerator

    from unixkd.training.build import build_run

    cfg = load_config(
        "configs/demo.yaml",
        [
            "data.root=unused",
            f"model.teacher_checkpoint={teacher_ckpt}",
            "model.teacher=test_resnet",
            "model.student=test_resnet",
            "data.batch_size=16",
            "selection.k=12",
            "train.channels_last=true",
        ],
    )
    run = build_run(cfg, Accelerator(cpu=True), C, steps_per_epoch=10)
    assert type(run.selector).__name__ == "UnixSelector"  # auto: no graph on a CPU
    assert isinstance(run.step.teacher_call, TeacherForward) and run.step.teacher_call.mode == "eager"
    conv = next(p for p in run.student.parameters() if p.ndim == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    x, y = batch(torch.Generator().manual_seed(7))
    loss, counts = run.step(x.to(memory_format=torch.channels_last), y)
    assert torch.isfinite(loss) and counts.teacher == 12


# ---- GPU: the captured graphs ------------------------------------------------------------------------


@cuda
@pytest.mark.parametrize("channels_last", [False, True])
def test_graph_replay_equals_eager_over_many_steps(channels_last):
    dev = torch.device("cuda")
    ref, fused = pair(k=0.75, mode="graph")
    a = student().to(dev)
    b = copy.deepcopy(a)
    if channels_last:
        a.to(memory_format=torch.channels_last), b.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(8)
    agree = []
    for _ in range(30):
        x, y = batch(gen, device=dev)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            s_ref, s_fused = ref.select(x, y, a), fused.select(x, y, b)
        torch.testing.assert_close(s_fused.m, s_ref.m)  # same λ: m = λ·c exactly up to float32 rounding
        assert torch.equal(s_fused.y_partner, s_ref.y_partner)  # same permutation
        same = s_fused.index == s_ref.index  # bf16 logits: near-ties may order differently
        agree.append(same.float().mean().item())
        torch.testing.assert_close(s_fused.x[same], s_ref.x[same], atol=1e-6, rtol=0)
        # a weight update between steps, so the replay must read the current weights, not captured ones
        with torch.no_grad():
            for p, q in zip(a.parameters(), b.parameters()):
                noise = torch.randn_like(p) * 1e-3
                p.add_(noise), q.add_(noise)
    assert fused.fallbacks == 0 and fused._graph.graph is not None
    assert np.mean(agree) > 0.97, agree
    for p, q in zip(a.buffers(), b.buffers()):  # BN running statistics after 30 graph steps = eager's
        torch.testing.assert_close(q.float(), p.float(), atol=2e-3, rtol=2e-3)


@cuda
def test_replays_draw_fresh_lambda_and_permutation():
    dev = torch.device("cuda")
    _, fused = pair(k=0.75, mode="graph")
    model = student().to(dev)
    gen = torch.Generator().manual_seed(9)
    seen_m, seen_partner = [], []
    for _ in range(5):
        x, _ = batch(gen, device=dev)
        y = torch.arange(N, device=dev)  # labels = rows, so y_partner is the permutation itself
        sel = fused.select(x, y, model)
        seen_m.append(sel.m.clone()), seen_partner.append(sel.y_partner.clone())
    assert all(not torch.equal(seen_m[i], seen_m[i + 1]) for i in range(4))
    assert all(not torch.equal(seen_partner[i], seen_partner[i + 1]) for i in range(4))


@cuda
def test_graph_short_last_batch_and_teacher_graph():
    dev = torch.device("cuda")
    ref, fused = pair(k=0.75, mode="graph")
    a = student().to(dev)
    b = copy.deepcopy(a)
    gen = torch.Generator().manual_seed(10)
    for n in (N, 10, N):
        x, y = batch(gen, n, device=dev)
        s_ref, s_fused = ref.select(x, y, a), fused.select(x, y, b)
        assert torch.equal(s_fused.y_partner, s_ref.y_partner)
        torch.testing.assert_close(s_fused.m, s_ref.m)
    assert fused.fallbacks == 1
    teacher = student(1).to(dev).eval()
    fast = TeacherForward(teacher, "graph")
    for _ in range(3):
        x = batch(gen, 12, device=dev)[0]
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            torch.testing.assert_close(fast(x).float(), teacher(x).float(), atol=2e-2, rtol=2e-2)
    assert next(iter(fast.graphs.values())).graph is not None


# ---- fp16 with a grad scaler ---------------------------------------------------------------------------


@pytest.mark.parametrize("scaler", [False, True])
def test_fp16_overflowing_gradient_is_left_to_the_grad_scaler(scaler):
    """With a scaler (fp16), an inf gradient is routine (the scaler skips the step); a NaN loss still stops."""
    from test_step import CPUAccelerator
    from unixkd.training.guards import NonFiniteError
    from unixkd.training.step import DistillStep

    acc = CPUAccelerator()
    acc.scaler = object() if scaler else None
    model = student()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    step = DistillStep(
        acc, model, None, opt, sched, build_selector("kd"), temperature=4.0, kd_weight=1.0, ce_weight=1.0
    )
    loss = model(batch(torch.Generator().manual_seed(11))[0]).logsumexp(1).mean()
    loss.backward()
    next(model.parameters()).grad[0] = float("inf")
    if scaler:
        step.optimizer_step(loss)  # the (real) scaler would skip this step; the guard does not stop the run
    else:
        with pytest.raises(NonFiniteError):
            step.optimizer_step(loss)
    with pytest.raises(NonFiniteError):
        step.optimizer_step(torch.tensor(float("nan")))


@cuda
def test_training_steps_with_graphs_track_eager_steps(teacher_ckpt, fresh_accelerator_state):
    """Whole DistillSteps (graphed selection + teacher graph, bf16, channels_last) against eager ones built
    from the same seed: the weights change every step, so a replay reading stale weights would drift."""
    from accelerate import Accelerator

    from unixkd.training.build import build_run

    def run(fast: bool):
        cfg = load_config(
            "configs/demo.yaml",
            [
                "data.root=unused",
                f"model.teacher_checkpoint={teacher_ckpt}",
                "model.teacher=test_resnet",
                "model.student=test_resnet",
                "data.batch_size=64",
                "selection.k=48",
                "mixed_precision=bf16",
                "train.channels_last=true",
                f"train.cuda_graph={'on' if fast else 'off'}",
                f"train.teacher_mode={'graph' if fast else 'eager'}",
            ],
        )
        torch.manual_seed(0)
        acc = Accelerator(mixed_precision="bf16")
        return build_run(cfg, acc, C, steps_per_epoch=100)

    eager, fast = run(False), run(True)
    assert type(fast.selector).__name__ == "GraphedUnixSelector" and fast.step.teacher_call.mode == "graph"
    gen = torch.Generator().manual_seed(12)
    for _ in range(12):
        x, y = batch(gen, 64, device="cuda")
        x = x.to(memory_format=torch.channels_last)
        loss_e, _ = eager.step(x, y)
        loss_f, _ = fast.step(x, y)
        torch.testing.assert_close(loss_f, loss_e, rtol=3e-2, atol=1e-3)
    for p, q in zip(eager.student.parameters(), fast.student.parameters()):
        torch.testing.assert_close(q, p, rtol=5e-2, atol=5e-3)
    assert fast.selector.fallbacks == 0 and fast.step.teacher_call.eager_calls == 0


@pytest.mark.slow
def test_compiled_teacher_and_student_match_eager_steps(teacher_ckpt):
    """train.teacher_mode=compile and train.compile_student=default (inductor, here on a CPU): the same losses
    and weights as eager steps, and the run's module (saved, evaluated) is not the compiled one."""
    from accelerate import Accelerator

    from unixkd.training.build import build_run

    def run(compiled: bool):
        cfg = load_config(
            "configs/demo.yaml",
            [
                "data.root=unused",
                f"model.teacher_checkpoint={teacher_ckpt}",
                "model.teacher=test_resnet",
                "model.student=test_resnet",
                "data.batch_size=16",
                "selection.k=12",
                f"train.teacher_mode={'compile' if compiled else 'eager'}",
                f"train.compile_student={'default' if compiled else 'none'}",
            ],
        )
        torch.manual_seed(0)
        return build_run(cfg, Accelerator(cpu=True), C, steps_per_epoch=100)

    eager, compiled = run(False), run(True)
    assert compiled.step.student_call is not compiled.student and compiled.step.teacher_call.mode == "compile"
    assert not hasattr(compiled.student, "_orig_mod")
    gen = torch.Generator().manual_seed(13)
    for _ in range(3):
        x, y = batch(gen)
        torch.testing.assert_close(compiled.step(x, y)[0], eager.step(x, y)[0], rtol=1e-4, atol=1e-5)
    for p, q in zip(eager.student.parameters(), compiled.student.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)


_ENV_WRITES: list | None = None  # set to a list while a test watches os.putenv/unsetenv (audit hooks stay)


def _watch_env(event, args):
    if _ENV_WRITES is not None and event in ("os.putenv", "os.unsetenv"):
        _ENV_WRITES.append(args[0])


def test_a_training_step_never_writes_the_environment(fresh_accelerator_state):
    """DALI's decoder threads call getenv while the step runs; a step that rewrites os.environ (as Accelerate's
    autocast does when given an AutocastKwargs handler) races them into a segfault. bf16: autocast is on."""
    import sys

    from unixkd.training.distributed import make_accelerator
    from unixkd.training.measure.timing import build_timed_run, load_timing_config

    global _ENV_WRITES
    cfg = load_timing_config(
        "configs/demo.yaml",
        [
            "model.teacher=test_resnet",
            "model.student=test_resnet",
            f"model.num_classes={C}",
            "data.batch_size=16",
            "selection.k=12",
            "mixed_precision=bf16",
            "model.teacher_checkpoint=",
        ],
        "synthetic",
    )
    run = build_timed_run(cfg, make_accelerator(cfg), C)
    x, y = batch(torch.Generator().manual_seed(14))
    sys.addaudithook(_watch_env)
    _ENV_WRITES = []
    try:
        for _ in range(2):
            run.step(x, y)
        writes = list(_ENV_WRITES)
    finally:
        _ENV_WRITES = None
    assert writes == [], f"the step wrote {len(writes)} environment variables, e.g. {writes[:3]}"


@pytest.mark.slow
def test_training_with_the_twins_is_bitwise_the_training_without(tmp_path, digits_root, teacher_ckpt, monkeypatch):
    """train() end to end with the graphed selection and teacher graph as their CPU twins (static buffers,
    outputs overwritten every step) logs exactly the eager run's losses and ends on the same weights: the
    trainer, the analytics and the loss consume each Selection within its step."""
    from safetensors.torch import load_file

    import unixkd.training.build as build
    import unixkd.training.trainer as trainer
    from test_train_e2e import read_rows, small_config

    made = []  # the selectors the twin run built, to check the twin was what ran

    def spy(selector, **kwargs):
        made.append(graphed(selector, **kwargs))
        return made[-1]

    def run(name: str, twins: bool):
        if twins:
            monkeypatch.setattr(build, "selection_graph_mode", lambda cfg, device: "static")
            monkeypatch.setattr(build, "teacher_mode", lambda cfg, device, features: "static")
            monkeypatch.setattr(build, "graphed", spy)
        cfg = small_config(
            tmp_path / name,
            digits_root,
            teacher_ckpt,
            "selection.method=unix",
            "train.max_steps=6",
            "train.log_every=1",
            "train.channels_last=true",
        )
        summary = trainer.train(cfg)
        monkeypatch.undo()
        return summary, read_rows(cfg.out_dir), load_file(str(tmp_path / name / "run" / "final" / "model.safetensors"))

    (s_eager, rows_eager, w_eager), (s_twin, rows_twin, w_twin) = run("eager", False), run("twin", True)
    losses = [r["loss"] for r in rows_eager if "loss" in r]
    assert len(losses) == 6 and losses == [r["loss"] for r in rows_twin if "loss" in r]
    assert s_twin["top1"] == s_eager["top1"] and s_twin["cost_fraction"] == s_eager["cost_fraction"]
    assert all(torch.equal(w_eager[k], w_twin[k]) for k in w_eager)
    assert len(made) == 1 and isinstance(made[0], GraphedUnixSelector) and made[0].mode == "static"
    assert made[0]._graph is not None and made[0].fallbacks == 0
