"""Inductor and CUDA graphs on the GPU give the eager chunk, and do not recompile on the next call.

The CPU suite traces the same regions with ``aot_eager`` (tests/models/test_compile.py); here the kernels are
inductor's and the head's blocks replay CUDA graphs (``reduce-overhead``), as `vla serve --compile` runs them.
"""

from __future__ import annotations

import pytest
import torch
from tiny_policies import random_tiny_policy
from torch._dynamo.utils import counters

from vla.models.compile import compile_for_inference, compile_regions
from vla.models.policy import Policy

# bf16 carries 8 bits of mantissa: inductor's fused kernels round differently from eager's separate ones,
# and the difference grows over the denoising steps. Two seeds differ by far more than this.
BF16_RELATIVE = 0.03


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def tiny_policy(head: str, dtype: torch.dtype) -> Policy:
    policy = random_tiny_policy(head, ["front", "wrist"], 5, 4, stats=None, chunk_size=8, n_action_steps=4)
    return policy.to(device="cuda", dtype=dtype)


def observation(batch: int) -> dict:
    g = torch.Generator(device="cuda").manual_seed(1)
    return {
        "images": torch.rand(batch, 2, 3, 64, 64, generator=g, device="cuda"),
        "state": torch.randn(batch, 5, generator=g, device="cuda"),
        "instruction": ["pick up the red block", "open the top drawer", "close the window", "press the button"][:batch],
    }


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-6))


@pytest.mark.parametrize("head", ["flow", "diffusion", "regression"])
@pytest.mark.parametrize("batch", [1, 4])
def test_compiled_inference_gives_the_eager_chunk_without_recompiling(head, batch):
    policy = tiny_policy(head, torch.bfloat16)
    obs, seeds = observation(batch), list(range(3, 3 + batch))
    want = policy.predict_chunk(obs, seed=seeds)
    other_noise = policy.predict_chunk(obs, seed=[s + 100 for s in seeds])

    compile_for_inference(policy, batch_size=batch)  # compiles, then records the CUDA graphs
    compiled_frames = counters["stats"]["unique_graphs"]
    assert compiled_frames > 0, "nothing was compiled"
    got = policy.predict_chunk(obs, seed=seeds)
    assert relative_error(got, want) < BF16_RELATIVE
    if head != "regression":  # the tolerance is far tighter than what the noise changes
        assert relative_error(other_noise, want) > 5 * BF16_RELATIVE

    with torch._dynamo.config.patch(error_on_recompile=True):  # later calls replay, never recompile
        for seed in (11, 12):
            again = policy.predict_chunk(observation(batch), seed=[seed] * batch)
    assert torch.isfinite(again).all()
    assert counters["stats"]["unique_graphs"] == compiled_frames


def test_compiled_training_step_matches_eager_in_fp32():
    """The training regions (inductor, default mode) on CUDA in fp32: the same loss and gradients."""
    policy = tiny_policy("flow", torch.float32).train()
    g = torch.Generator(device="cuda").manual_seed(2)
    batch = {**observation(2), "actions": torch.randn(2, 8, 4, generator=g, device="cuda")}

    def loss_and_grads():
        policy.zero_grad(set_to_none=True)
        torch.manual_seed(5)
        loss, _ = policy.compute_loss(batch)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}

    want_loss, want_grads = loss_and_grads()
    compile_regions(policy, training=True)
    got_loss, got_grads = loss_and_grads()
    torch.testing.assert_close(got_loss, want_loss, atol=1e-4, rtol=1e-4)
    assert got_grads.keys() == want_grads.keys()
    for name, grad in got_grads.items():
        torch.testing.assert_close(grad, want_grads[name], atol=1e-3, rtol=1e-2, msg=name)
