"""The sampling engine over the fused ops, the pipeline's backends and the DPIR_FAST_BACKEND override."""
import pytest
import torch

from dpir_fast import DPIR, engine as engine_module, ops
from dpir_fast.engine import Bucket, Engine, Plan
from dpir_fast.models import FusionNet
from dpir_fast.pipeline import run_network
from dpir_fast.reference import dpir_sample_ref, jump_ref
from dpir_fast.schedule import Schedule

from .conftest import requires_cuda
from .helpers import tiny_denoiser_fusion, tiny_pipeline

pytest.importorskip("triton")
SCHEDULE = Schedule.linear()


def pair(device, **settings):
    """The same tiny pipeline with backend "triton" and "reference"."""
    fast = tiny_pipeline(backend="triton", **settings).to(device)
    ref = tiny_pipeline(backend="reference", **settings).to(device)
    ref.load_state_dict(fast.state_dict())
    return fast, ref


@pytest.mark.parametrize("settings", [dict(tau=3), dict(tau=40, tail="ddim", tail_steps=2, start="forward", eta=0.8)],
                         ids=["ancestral", "ddim"])
def test_triton_pipeline_matches_the_reference_with_the_same_seed(settings, device):
    fast, ref = pair(device, **settings)
    y = torch.rand(2, 3, 5, 4, device=device)
    torch.testing.assert_close(fast(y, seed=11), ref(y, seed=11), rtol=0, atol=1e-4)


def test_bf16_triton_pipeline_stays_close_to_the_reference(device):
    fast, ref = pair(device, tau=2, dtype="bf16")
    y = torch.rand(1, 3, 6, 5, device=device)
    assert (fast(y, seed=3) - ref(y, seed=3)).abs().max() < 0.05


def test_engine_steps_call_the_denoiser_once_each_and_fuse_the_fusion_net(device):
    pipe = tiny_pipeline(tau=3).to(device)
    calls = {"denoise": 0, "fusion": 0}
    pipe.fusion.register_forward_hook(lambda *a: calls.__setitem__("fusion", calls["fusion"] + 1))

    def denoise(inp):
        calls["denoise"] += 1
        assert inp.shape == (1, 4, 6, 5) and inp.dtype == torch.float32
        return run_network(pipe.denoiser, inp)

    plan = Plan.make(SCHEDULE, 3)
    x_ir = torch.rand(1, 3, 6, 5, device=device)
    with torch.no_grad():
        out = Engine(plan, denoise, pipe.fusion, backend="triton").run(x_ir, [5])
        assert calls == {"denoise": 3, "fusion": 0}
        ref = dpir_sample_ref(x_ir, lambda inp: run_network(pipe.denoiser, inp), pipe.fusion, SCHEDULE, 3, [5])
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)


def test_a_user_fusion_module_runs_unfused_with_the_fast_sampler(device):
    class Average(torch.nn.Module):
        def forward(self, x_ir, x_den, t):
            return 0.5 * (x_ir + x_den)

    x_ir = torch.rand(2, 3, 5, 4, device=device)
    denoise = lambda inp: inp[:, :3] * 0.9   # noqa: E731
    out = Engine(Plan.make(SCHEDULE, 20, "ddim", 3), denoise, Average(), backend="triton").run(x_ir, [1, 2])
    ref = dpir_sample_ref(x_ir, denoise, Average(), SCHEDULE, 20, [1, 2], "ddim", 3)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_plan_ends_on_x0_hat():
    plan = Plan.make(SCHEDULE, 250, "ddim", 50)
    assert plan.timesteps[:2] == (250, 245) and plan.timesteps[-1] == 5
    last = plan.updates[-1]
    assert (last.a, last.b, last.sigma) == (1.0, 0.0, 0.0)
    assert Plan.make(SCHEDULE, 5).updates[-1].sigma == 0.0


def test_environment_override_and_unknown_backends(monkeypatch, device):
    x = torch.rand(2, 3, 5, 4, device=device)
    monkeypatch.setenv("DPIR_FAST_BACKEND", "reference")
    monkeypatch.setattr(ops, "_kernels", lambda: pytest.fail("the reference backend launched a kernel"))
    assert torch.equal(ops.jump(x, SCHEDULE, 5, [1, 2]), jump_ref(x, SCHEDULE, 5, [1, 2]))
    net = FusionNet(n_feat=8, growth=4).to(device)
    with torch.no_grad():
        torch.testing.assert_close(ops.fusion(net, x, x, 3), net(x, x, 3))
    monkeypatch.setenv("DPIR_FAST_BACKEND", "cuda")
    with pytest.raises(ValueError, match="DPIR_FAST_BACKEND='cuda' is not a backend; valid: auto, reference, fast"):
        ops.jump(x, SCHEDULE, 5, [1, 2])
    with pytest.raises(ValueError, match="unknown backend 'gpu'; valid: auto, reference, fast, triton"):
        DPIR(torch.nn.Identity(), torch.nn.Identity(), net, backend="gpu")


def test_cpu_tensors_without_the_interpreter_use_the_reference(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("DPIR_FAST_BACKEND", raising=False)
    monkeypatch.setattr(ops, "_kernels", lambda: pytest.fail("a Triton kernel ran on a CPU tensor"))
    x = torch.rand(1, 3, 4, 4)
    assert torch.equal(ops.jump(x, SCHEDULE, 5, [1]), jump_ref(x, SCHEDULE, 5, [1]))
    with pytest.raises(RuntimeError, match="backend 'triton' was asked for"):
        ops.jump(x, SCHEDULE, 5, [1], backend="triton")


def eager_engine(tail="ancestral", start="jump", tau=4, steps=None, backend="auto", **kw):
    torch.manual_seed(0)
    denoiser, fusion = tiny_denoiser_fusion()
    plan = Plan.make(SCHEDULE, tau, tail, steps, start, eta=0.5 if tail == "ddim" else 0.0)
    return Engine(plan, lambda inp: run_network(denoiser, inp), fusion, backend=backend, **kw), denoiser, fusion


@pytest.mark.parametrize("start", ["jump", "forward"])
@pytest.mark.parametrize("tail,tau,steps", [("ancestral", 4, None), ("ddim", 60, 3)], ids=["ancestral", "ddim"])
def test_engine_eager_path_equals_the_reference_sampler(tail, tau, steps, start):
    """The static-buffer step function (CPU: the reference ops inside) against dpir_sample_ref, float32."""
    engine, denoiser, fusion = eager_engine(tail, start, tau, steps)
    x_ir = torch.rand(2, 3, 12, 8)
    with torch.no_grad():
        ref = dpir_sample_ref(x_ir, lambda inp: run_network(denoiser, inp), fusion, SCHEDULE, tau, [4, 8], tail,
                              steps, start, 0.5 if tail == "ddim" else 0.0)
    torch.testing.assert_close(engine.run(x_ir, [4, 8]), ref, rtol=0, atol=2e-6)


def test_runners_keep_their_buffers_and_results_outlive_the_next_batch():
    engine, *_ = eager_engine(max_buckets=2)
    a, b = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    out_a = engine.run(a, [1])
    runner = engine.runners[Bucket(1, 3, 8, 8, torch.device("cpu"))]
    buffers = [t.data_ptr() for t in (runner.x_ir, runner.x, runner.den, runner.keys)]
    out_b = engine.run(b, [2])
    assert [t.data_ptr() for t in (runner.x_ir, runner.x, runner.den, runner.keys)] == buffers
    torch.testing.assert_close(out_a, eager_engine()[0].run(a, [1]), rtol=0, atol=0)   # not overwritten by b
    assert not torch.equal(out_a, out_b)
    engine.run(torch.rand(2, 3, 8, 8), [1, 2])
    engine.run(torch.rand(1, 3, 12, 8), [1])
    assert list(engine.runners) == [Bucket(2, 3, 8, 8, torch.device("cpu")), Bucket(1, 3, 12, 8, torch.device("cpu"))]


def test_a_batch_of_tiles_draws_each_images_noise():
    """Per-image noise placement: tiles of two images in one batch get what each gets run alone."""
    engine, *_ = eager_engine(backend="reference")
    x_ir = torch.rand(2, 3, 8, 12)
    both = engine.run(x_ir, [3, 5], full_size=[(20, 30), (8, 12)], origin=[(4, 16), (0, 0)])
    torch.testing.assert_close(both[:1], engine.run(x_ir[:1], [3], (20, 30), (4, 16)), rtol=0, atol=1e-6)
    torch.testing.assert_close(both[1:], engine.run(x_ir[1:], [5]), rtol=0, atol=1e-6)


def test_a_failed_capture_warns_once_and_runs_eagerly(monkeypatch):
    engine, *_ = eager_engine()
    x_ir = torch.rand(1, 3, 8, 8)
    expected = engine.run(x_ir, [1])

    def broken(runner):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(engine, "_capture", broken)
    for shape in [(1, 3, 8, 8), (2, 3, 8, 8)]:   # as if on CUDA: each new bucket tries to capture
        engine.runner(Bucket(*shape, torch.device("cpu"))).eager = False
    # the first run was the bucket's first use (eager, no capture); this one tries
    with pytest.warns(RuntimeWarning, match="capture of the sampling loop failed .*running eagerly"):
        torch.testing.assert_close(engine.run(x_ir, [1]), expected, rtol=0, atol=0)
    for _ in range(2):
        engine.run(torch.rand(2, 3, 8, 8), [1, 2])   # no second warning (pytest would flag it under -W error)
    assert engine._warned and all(r.eager and r.graph is None for r in engine.runners.values())
    strict, *_ = eager_engine(graphs="on")
    monkeypatch.setattr(strict, "_capture", broken)
    strict.runner(Bucket(1, 3, 8, 8, torch.device("cpu"))).eager = False
    strict.run(x_ir, [1])
    with pytest.raises(RuntimeError, match="CUDA-graph capture of the sampling loop failed"):
        strict.run(x_ir, [1])
    with pytest.raises(ValueError, match="graphs must be one of"):
        eager_engine(graphs="yes")


@requires_cuda
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_graph_replay_equals_eager_and_draws_fresh_noise(dtype):
    torch.manual_seed(0)
    denoiser, fusion = (m.cuda() for m in tiny_denoiser_fusion())

    def denoise(inp):
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None, cache_enabled=False):
            return run_network(denoiser, inp)

    plan = Plan.make(SCHEDULE, 5)
    graph = Engine(plan, denoise, fusion, dtype, channels_last=True, backend="fast", graphs="on")
    eager = Engine(plan, denoise, fusion, dtype, channels_last=True, backend="fast", graphs="off")
    for i, seeds in enumerate(([1, 2], [3, 4], [1, 2], [5, 6])):
        x_ir = torch.rand(2, 3, 64, 48, device="cuda")
        out = graph.run(x_ir, seeds)
        assert (graph.runners[Bucket(2, 3, 64, 48, torch.device("cuda"))].graph is not None) == (i > 0)
        torch.testing.assert_close(out, eager.run(x_ir, seeds), rtol=0, atol=1e-5)


def _change_in_place(module: torch.nn.Module) -> None:
    """What an optimiser step or load_state_dict does: new values in the same storages."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))


def test_engine_follows_fusion_weights_changed_in_place():
    """The fused path's time-branch weights follow the FusionNet's parameters (eager path, interpreter)."""
    engine, denoiser, fusion = eager_engine(backend="triton")
    x_ir = torch.rand(1, 3, 8, 8)
    engine.run(x_ir, [3])
    _change_in_place(fusion)
    with torch.no_grad():
        ref = dpir_sample_ref(x_ir, lambda inp: run_network(denoiser, inp), fusion, SCHEDULE, 4, [3])
    torch.testing.assert_close(engine.run(x_ir, [3]), ref, rtol=0, atol=1e-5)


class StandInGraphs:
    """capture_graph's stand-in on CPU: counts captures, records autocast's cache state while capturing,
    and replays by running the captured loop again."""

    def __init__(self):
        self.captures, self.capturing, self.cache_states = 0, False, []

    def capture(self, loop, device, pool):
        self.captures += 1
        self.capturing = True
        try:
            loop()
        finally:
            self.capturing = False
        return type("Graph", (), {"replay": staticmethod(loop)})()

    def denoiser(self, net):
        def denoise(inp):
            if self.capturing:
                self.cache_states.append(torch.is_autocast_cache_enabled())
            return run_network(net, inp).float()
        return denoise


@pytest.fixture
def stand_in(monkeypatch) -> StandInGraphs:
    graphs = StandInGraphs()
    monkeypatch.setattr(engine_module, "capture_graph", graphs.capture)
    monkeypatch.setattr(engine_module, "graph_pool", lambda device: None)
    monkeypatch.setattr(Engine, "_capturable", lambda self, bucket: True)
    return graphs


def test_a_runner_captures_again_when_the_weights_change_and_holds_what_its_graph_reads(stand_in):
    torch.manual_seed(0)
    denoiser, fusion = tiny_denoiser_fusion()
    engine = Engine(Plan.make(SCHEDULE, 3), stand_in.denoiser(denoiser), fusion, backend="triton",
                    params=list(denoiser.parameters()))
    x_ir = torch.rand(1, 3, 8, 8)
    for _ in range(3):   # eager, capture, replay
        engine.run(x_ir, [1])
    runner = engine.runners[Bucket(1, 3, 8, 8, torch.device("cpu"))]
    assert stand_in.captures == 1 and runner.held[0] is engine.time_weights()
    old_weights = runner.held[0]
    for module in (fusion, denoiser):
        _change_in_place(module)
        out = engine.run(x_ir, [1])
        with torch.no_grad():
            ref = dpir_sample_ref(x_ir, lambda inp: run_network(denoiser, inp), fusion, SCHEDULE, 3, [1])
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    assert stand_in.captures == 3 and runner.held[0] is engine.time_weights() and runner.held[0] is not old_weights
    engine.run(x_ir, [1])
    assert stand_in.captures == 3   # unchanged weights: replay


def test_capture_runs_with_the_autocast_cache_off_whatever_the_caller_asks(stand_in):
    torch.manual_seed(0)
    denoiser, fusion = tiny_denoiser_fusion()
    engine = Engine(Plan.make(SCHEDULE, 2), stand_in.denoiser(denoiser), fusion, torch.bfloat16)
    x_ir = torch.rand(1, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=True):
        for _ in range(2):
            engine.run(x_ir, [1])
        assert torch.is_autocast_cache_enabled()   # the caller's state is left as it was
    assert stand_in.captures == 1 and stand_in.cache_states and not any(stand_in.cache_states)


requires_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")


@requires_two_gpus
def test_a_bucket_on_another_device_than_the_current_one_captures_and_replays_there():
    torch.manual_seed(0)
    denoiser, fusion = (m.to("cuda:1") for m in tiny_denoiser_fusion())
    plan, denoise = Plan.make(SCHEDULE, 3), lambda inp: run_network(denoiser, inp)
    graph = Engine(plan, denoise, fusion, backend="fast", graphs="on", params=list(denoiser.parameters()))
    eager = Engine(plan, denoise, fusion, backend="fast", graphs="off")
    with torch.cuda.device(0):
        for seeds in ([1], [2], [3]):
            x_ir = torch.rand(1, 3, 16, 16, device="cuda:1")
            torch.testing.assert_close(graph.run(x_ir, seeds), eager.run(x_ir, seeds), rtol=0, atol=1e-5)
    assert graph.runners[Bucket(1, 3, 16, 16, torch.device("cuda:1"))].graph is not None


def test_compile_leaves_a_fusion_triton_runs_as_one_kernel(monkeypatch):
    """compile="all" with the Triton backend: the IR net and denoiser go through torch.compile, the FusionNet the
    engine fuses does not (compiled, it would run unfused); the result is the uncompiled pipeline's."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module: compiled.append(module) or module)
    fast, _ = pair("cpu", tau=2)
    y = torch.rand(1, 3, 5, 4)
    expected = fast(y, seed=2)
    out = fast.configure(compile="all")(y, seed=2)
    assert compiled == [fast.ir, fast.denoiser] and isinstance(fast.fusion, FusionNet)
    torch.testing.assert_close(out, expected)
