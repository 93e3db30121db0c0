"""Real-time chunking (vla/models/heads/rtc.py): the soft mask, the guided flow and diffusion samplers, and
training-time RTC (clean prefixes, hard inpainting) on the flow head. Tiny heads on the tiny SmolVLM backbone."""

from __future__ import annotations

import math

import pytest
import torch
from test_heads import demo, make_prefix_fn, tiny_backbone

from vla.models.heads import HeadConfig, rtc
from vla.models.heads.rtc import RTCConfig, RTCGuidance, prefix_weights
from vla.registry import lookup

H, D = 8, 3


def _exp(c: float) -> float:
    return c * (math.exp(c) - 1) / (math.e - 1)


def test_prefix_weights_are_the_papers_schedules():
    """H = 8, d = 2, soft region ending at E = 6: c_i = (6 - i) / 5 for i = 2..5 (hand-computed)."""
    d, end = torch.tensor([2]), torch.tensor([6])
    c = [0.8, 0.6, 0.4, 0.2]
    expected = {
        "exp": [1, 1, *map(_exp, c), 0, 0],
        "linear": [1, 1, *c, 0, 0],
        "ones": [1, 1, 1, 1, 1, 1, 0, 0],
        "zeros": [1, 1, 0, 0, 0, 0, 0, 0],
    }
    for schedule, want in expected.items():
        got = prefix_weights(d, end, H, schedule)[0]
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32), msg=schedule)
    # per row: no previous chunk (E = 0) -> nothing guided; d past E is capped at E
    w = prefix_weights(torch.tensor([0, 5]), torch.tensor([0, 3]), H, "exp")
    assert w[0].eq(0).all() and w[1].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]


def test_guidance_weight_is_clipped_at_beta():
    assert rtc.guidance_weight(0.0, 5.0) == 5.0 and rtc.guidance_weight(1.0, 5.0) == 5.0  # diverges at both ends
    # tau = 0.5: r2 = 0.25 / 0.5 = 0.5, (1 - tau) / (tau r2) = 2
    assert rtc.guidance_weight(0.5, 5.0) == pytest.approx(2.0) and rtc.guidance_weight(0.5, 1.5) == 1.5
    assert rtc.flow_tau(1.0) == 0.0  # ours: t = 1 is noise, the paper's tau = 0
    assert rtc.diffusion_tau(1.0) == 1.0 and rtc.diffusion_tau(0.0) == 0.0
    assert rtc.diffusion_tau(0.5) == pytest.approx(0.5)


def _setup(head_type: str, **cfg):
    backbone = tiny_backbone("smolvlm")
    torch.manual_seed(0)
    batch = demo(2)
    head = lookup(HeadConfig, head_type)(**cfg).build(backbone, H, D).eval()
    with torch.no_grad():
        prefix = make_prefix_fn(backbone, batch)(with_kv=head.needs_kv)
    noise = torch.randn(2, H, D, generator=torch.Generator().manual_seed(1))
    return head, (lambda **kw: prefix), noise


def _guidance(config: RTCConfig, y: torch.Tensor, delay: int, trained: bool = False) -> RTCGuidance:
    b = y.shape[0]
    return RTCGuidance.build(config, list(y), [delay] * b, H, torch.ones(b, D, dtype=torch.bool), trained)


HEADS = {
    "flow": {},
    "diffusion": {"width": 32, "num_layers": 2},
    # the guidance carried into epsilon space (x0 = (x - s eps) / a and back), with the scheduler's x0 clipping
    "diffusion-epsilon": {"width": 32, "num_layers": 2, "prediction_type": "epsilon", "clip_sample": True},
}


@pytest.mark.parametrize("head_type", HEADS)
def test_nothing_to_guide_samples_bit_for_bit(head_type):
    """d = 0 with the zeros schedule weighs every step 0: the guided loop (VJPs and all) returns the plain chunk."""
    head, prefix_fn, noise = _setup(head_type.split("-")[0], **HEADS[head_type])
    y = torch.randn(2, H, D)
    plain = head.sample(prefix_fn, {"noise": noise}, num_steps=4)
    guided = head.sample(
        prefix_fn, {"noise": noise, rtc.GUIDANCE: _guidance(RTCConfig(schedule="zeros"), y, 0)}, num_steps=4
    )
    assert torch.equal(plain, guided)


def exact_gaussian_denoiser(head) -> None:
    """Replace the head's network by the exact posterior mean for data ~ N(0, I): x0 = E[x0 | x]."""
    if hasattr(head, "velocity"):  # flow: x = t eps + (1 - t) x0, v = eps - x0 = (x - x0) / t

        def velocity(prefix, x, t, r=None):
            t = t.reshape(t.shape[0], -1)[..., None]
            return (x - (1 - t) * x / ((1 - t) ** 2 + t**2)) / t

        head.velocity = velocity
    else:  # diffusion: x = sqrt(ab) x0 + sqrt(1 - ab) eps, E[x0 | x] = sqrt(ab) x
        ab = head.train_scheduler.alphas_cumprod

        def denoise(prefix, x, timesteps):
            a = ab[timesteps.cpu()].sqrt().to(x)[:, None, None]
            x0 = a * x
            return x0 if head.cfg.prediction_type == "sample" else (x - a * x0) / (1 - a * a).sqrt()  # or epsilon

        head.denoise = denoise


@pytest.mark.parametrize("head_type", HEADS)
def test_guidance_reproduces_y_on_an_exact_gaussian_denoiser(head_type):
    """With the exact denoiser of N(0, I) data, W = 1 over the whole chunk and a large beta, guided sampling
    lands on Y; plain sampling from the same noise does not."""
    head, prefix_fn, noise = _setup(head_type.split("-")[0], **HEADS[head_type])
    exact_gaussian_denoiser(head)
    y = torch.randn(2, H, D, generator=torch.Generator().manual_seed(2))
    g = _guidance(RTCConfig(mode="guided", schedule="ones", max_guidance_weight=100.0), y, 0)
    plain = head.sample(prefix_fn, {"noise": noise}, num_steps=10)
    guided = head.sample(prefix_fn, {"noise": noise, rtc.GUIDANCE: g}, num_steps=10)
    assert (guided - y).abs().mean() < 0.1 < (plain - y).abs().mean()


def test_guidance_pulls_an_untrained_flow_head_towards_the_previous_chunk():
    """From the same noise, guided sampling (Y of 5 actions, d = 2, exp schedule) lands closer to Y on the frozen
    prefix and on the soft overlap than plain sampling; a larger beta pulls harder. (An untrained diffusion head
    is no test of this: its x0 estimate barely reads x_k, so its Jacobian carries little guidance.)"""
    head, prefix_fn, noise = _setup("flow")
    y = torch.randn(2, H, D, generator=torch.Generator().manual_seed(2))
    y[:, 5:] = 0.0  # Y holds 5 actions (right-padded)
    rows = [r[:5] for r in y]
    plain = head.sample(prefix_fn, {"noise": noise}, num_steps=5)

    def guided(beta: float) -> torch.Tensor:
        g = RTCGuidance.build(
            RTCConfig(mode="guided", max_guidance_weight=beta),
            rows,
            [2, 2],
            H,
            torch.ones(2, D, dtype=torch.bool),
            False,
        )
        return head.sample(prefix_fn, {"noise": noise, rtc.GUIDANCE: g}, num_steps=5)

    weak, strong = guided(1.0), guided(20.0)

    def dist(chunk, steps):
        return (chunk[:, steps] - y[:, steps]).abs().mean().item()

    assert dist(strong, slice(0, 2)) < 0.5 * dist(plain, slice(0, 2))
    assert dist(strong, slice(0, 2)) < dist(weak, slice(0, 2)) < dist(plain, slice(0, 2))
    assert dist(strong, slice(2, 5)) < dist(plain, slice(2, 5))


def test_guided_sampling_refuses_inference_mode():
    head, prefix_fn, noise = _setup("flow")
    g = _guidance(RTCConfig(), torch.zeros(2, H, D), 2)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        head.sample(prefix_fn, {"noise": noise, rtc.GUIDANCE: g}, num_steps=2)


def test_trained_rtc_loss_ignores_the_clean_prefix_noise():
    """Training-time RTC: sample i's first d_i actions enter clean at time 0, so their noise cannot change the
    loss; noise on the other actions does. d_i is the first draw from sample i's generator."""
    head, prefix_fn, noise = _setup("flow", rtc_training_max_delay=4)
    batch = {"actions": torch.randn(2, H, D) * 0.5, "noise": noise, "time": torch.tensor([0.7, 0.4])}

    def loss(noise_):
        gens = [torch.Generator().manual_seed(10 + i) for i in range(2)]
        return head.loss(prefix_fn, {**batch, "noise": noise_, "generators": gens})[0]

    delays = rtc.training_delays(2, 4, H, [torch.Generator().manual_seed(10 + i) for i in range(2)], None)
    assert delays.max() > 0  # the seeds give at least one clean prefix
    clean = rtc.clean_prefix(delays, H)
    moved = noise + 3.0 * clean[..., None]
    assert torch.equal(loss(moved), loss(noise))
    assert not torch.equal(loss(noise + 3.0 * ~clean[..., None]), loss(noise))
    with pytest.raises(ValueError, match="time_conditioning='concat'"):
        lookup(HeadConfig, "flow")(rtc_training_max_delay=2, time_conditioning="adaptive")


def test_trained_rtc_inpaints_the_frozen_prefix_exactly():
    """A head trained with clean prefixes samples with Y's first d actions hard-inpainted: exactly Y there (auto
    mode picks inpainting), without a backward pass; guided mode stays available, inpainting refused untrained."""
    head, prefix_fn, noise = _setup("flow", rtc_training_max_delay=3)
    y = torch.randn(2, H, D)
    g = _guidance(RTCConfig(), y, 3, trained=head.rtc_trained)
    assert g.mode == "inpaint"
    with torch.no_grad():
        chunk = head.sample(prefix_fn, {"noise": noise, rtc.GUIDANCE: g}, num_steps=4)
    assert torch.equal(chunk[:, :3], y[:, :3])
    plain = head.sample(prefix_fn, {"noise": noise}, num_steps=4)
    assert not torch.allclose(chunk[:, 3:], plain[:, 3:])  # the rest saw the clean prefix
    with pytest.raises(ValueError, match="rtc_training_max_delay"):
        _guidance(RTCConfig(mode="inpaint"), y, 3, trained=False)


def test_policy_takes_the_remainder_in_raw_units_per_row():
    """Policy.predict_chunk(prev_chunk=, inference_delay=): raw units in, normalized inside; rows without a
    remainder sample as usual; a trained head inpaints (raw actions back within float error); a head without
    RTC refuses it naming the head."""
    from tiny_policies import random_tiny_policy

    from vla.models.backbones import BackboneConfig
    from vla.models.heads import FlowMatchingConfig
    from vla.models.policy import Policy, PolicyConfig

    stats = {"state": {"mean": [0.0] * 4, "std": [1.0] * 4}, "actions": {"mean": [1.0, 2.0], "std": [0.5, 3.0]}}
    torch.manual_seed(0)
    cfg = PolicyConfig(
        backbone=BackboneConfig.get_choice_class("smolvlm")(preset="tiny"),
        head=FlowMatchingConfig(rtc_training_max_delay=3),
        cameras=["image"],
        state_dim=4,
        action_dim=2,
        chunk_size=H,
        n_action_steps=4,
        max_action_dim=4,  # padded dims: Y is padded too and never pulls on them
    )
    policy = Policy(cfg, stats).eval()
    obs = {"images": torch.rand(2, 1, 3, 32, 32), "state": torch.randn(2, 4), "instruction": ["a", "b"]}
    plain = policy.predict_chunk(obs, seed=[1, 2])
    prev = plain[0, 4:] + 0.3  # row 0: a remainder of 4 actions; row 1: none
    chunk = policy.predict_chunk(obs, seed=[1, 2], prev_chunk=[prev, None], inference_delay=2)
    torch.testing.assert_close(chunk[0, :2], prev[:2], rtol=1e-5, atol=1e-5)
    assert torch.equal(chunk[1], plain[1])
    with pytest.raises(ValueError, match=r"prev_chunk\[0\]"):
        policy.predict_chunk(obs, prev_chunk=[torch.zeros(4, 3), None], inference_delay=1)
    with pytest.raises(ValueError, match="inference_delay needs prev_chunk"):
        policy.predict_chunk(obs, inference_delay=1)
    regression = random_tiny_policy("regression", ["image"], 4, 2, stats, chunk_size=H)
    with pytest.raises(ValueError, match="'regression'"):
        regression.predict_chunk(obs, prev_chunk=[prev, None], inference_delay=1)
