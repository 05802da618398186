"""The sampling engine over the fused ops, the pipeline's backends and the DPIR_FAST_BACKEND override."""
import pytest
import torch

from dpir_fast import DPIR, ops
from dpir_fast.engine import Engine, Plan
from dpir_fast.models import FusionNet
from dpir_fast.pipeline import run_network
from dpir_fast.reference import dpir_sample_ref, jump_ref
from dpir_fast.schedule import Schedule

from .helpers import tiny_pipeline

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
