"""Diffusion head: a DiT-style denoiser trained with DDPM, sampled with DDIM or DPM-Solver.

The denoiser is the shared action expert with adaLN-Zero conditioning on the timestep
(DiT), cross-attending to the VLM's last hidden states (masked by ``prefix.mask``).
Noise schedules and update rules are diffusers' schedulers, not our own.

diffusers schedulers keep mutable loop state (``set_timesteps``, ``_step_index``, the
multistep solver's history), so ``sample`` builds a fresh scheduler from this head's
config on every call: concurrent requests on one head never share one. Training only
uses ``add_noise``, which reads fixed buffers, so one DDPM scheduler is kept for it.

State: when the backbone hands the state to the head (``state_mode="head"``) one extra
state token precedes the action tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from torch import nn

from vla import types as T
from vla.models.compile import mark_step
from vla.models.heads import rtc
from vla.models.heads.action_expert import (
    ActionExpert,
    ActionExpertConfig,
    StateToken,
    action_weights,
    head_state_dim,
    masked_mean,
    prepend_state,
)
from vla.models.heads.base import Head, HeadConfig
from vla.models.heads.timesteps import sinusoidal_embedding
from vla.shapes import check_shape
from vla.types import Prefix
from vla.utils import sample_rng


@HeadConfig.register_subclass("diffusion")
@dataclass
class DiffusionConfig(HeadConfig):
    width: int = 256
    num_layers: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    # "sample" (predict the clean chunk x0): with a tiny denoiser it overfits a demo in a few hundred
    # steps (chunk MAE ~0.02) where epsilon prediction stayed at ~0.3, and it needs no clipping.
    prediction_type: Literal["epsilon", "sample", "v_prediction"] = "sample"
    sampler: Literal["ddim", "dpmsolver", "ddpm"] = "ddim"
    num_inference_steps: int = 10
    # Clip the predicted x0 at every sampling step. Turn it on with epsilon prediction: at the
    # last training step of the cosine schedule alpha_bar ~ 2e-7, so x0 = (x - sqrt(1-ab) eps) / sqrt(ab)
    # amplifies any epsilon error ~2000x. Set the range to cover your normalized actions.
    clip_sample: bool = False
    clip_sample_range: float = 1.5

    def build(self, backbone, horizon: int, action_dim: int) -> DiffusionHead:
        return DiffusionHead(self, backbone, horizon, action_dim)

    def make_scheduler(self, kind: str):
        """A fresh scheduler of ``kind`` ("ddpm", "ddim", "dpmsolver") sharing this noise schedule."""
        common = {
            "num_train_timesteps": self.num_train_timesteps,
            "beta_schedule": self.beta_schedule,
            "prediction_type": self.prediction_type,
        }
        clip = {"clip_sample": self.clip_sample, "clip_sample_range": self.clip_sample_range}
        if kind == "ddpm":
            return DDPMScheduler(**common, **clip)
        if kind == "ddim":
            # "trailing" starts at the last training step (pure noise) whatever the step count
            return DDIMScheduler(**common, **clip, timestep_spacing="trailing")
        if kind == "dpmsolver":
            # DPM-Solver has no clip_sample; its thresholding clamps x0 to at most sample_max_value
            return DPMSolverMultistepScheduler(
                **common, thresholding=self.clip_sample, sample_max_value=self.clip_sample_range
            )
        raise ValueError(f"diffusion head: unknown sampler {kind!r}; known: ddim, dpmsolver, ddpm")


class DiffusionHead(Head):
    def __init__(self, cfg: DiffusionConfig, backbone, horizon: int, action_dim: int):
        super().__init__()
        cfg.make_scheduler(cfg.sampler)  # fail at build time on a bad sampler name
        self.cfg, self.horizon, self.action_dim = cfg, horizon, action_dim
        self.train_scheduler = cfg.make_scheduler("ddpm")
        self.expert = ActionExpert(  # a DiT: the timestep modulates every block (adaLN-Zero)
            ActionExpertConfig.cross_attention(
                "diffusion",
                cfg.width,
                cfg.num_layers,
                cfg.num_heads,
                cfg.mlp_ratio,
                horizon,
                backbone.width,
                adaln=True,
                cond_dim=cfg.width,
            )
        )
        state_dim = head_state_dim(backbone)
        self.state_token = StateToken(state_dim, cfg.width) if state_dim else None
        self.action_in = nn.Linear(action_dim, cfg.width)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.width, cfg.width), nn.SiLU(), nn.Linear(cfg.width, cfg.width))
        self.action_out = nn.Linear(cfg.width, action_dim)

    def denoise(self, prefix: Prefix, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Noisy chunk (B, H, D) at integer timesteps (B,) -> model output (B, H, D) (epsilon/x0/v)."""
        dtype = self.action_in.weight.dtype
        t_emb = sinusoidal_embedding(timesteps.float() / self.cfg.num_train_timesteps, self.cfg.width)  # (B, We)
        cond = self.time_mlp(t_emb.to(dtype))  # (B, We)
        tokens = self.action_in(x_t.to(dtype))  # (B, H, We)
        tokens = prepend_state(self.state_token, prefix, tokens)
        out = self.expert(tokens, prefix.mask, context=prefix.hidden, cond=cond)  # (B, [1+]H, We)
        return self.action_out(out[:, -self.horizon :]).float()  # (B, H, D)

    supports_rtc = True

    def x0_of(self, out: torch.Tensor, x: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        """The clean-chunk estimate of a model output at x_k = sqrt(ab) x0 + sqrt(1 - ab) eps."""
        a, s = alpha_bar**0.5, (1 - alpha_bar) ** 0.5
        if self.cfg.prediction_type == "sample":
            return out
        if self.cfg.prediction_type == "epsilon":
            return (x - s * out) / a
        return a * x - s * out  # v = a eps - s x0

    def output_shift(self, x0_shift: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        """How the model output (of ``prediction_type``) moves when its x0 estimate moves by ``x0_shift`` at a
        fixed x_k (``x0_of`` is linear in the output); a zero shift leaves the output bit for bit."""
        a, s = alpha_bar**0.5, (1 - alpha_bar) ** 0.5
        if self.cfg.prediction_type == "sample":
            return x0_shift
        if self.cfg.prediction_type == "epsilon":
            return -(a / s) * x0_shift
        return -x0_shift / s

    def loss(self, prefix_fn, batch: dict) -> tuple[torch.Tensor, dict]:
        actions = batch["actions"].float()
        b = check_shape("actions", actions, "B H D", H=self.horizon, D=self.action_dim)["B"]
        weights = action_weights(batch, actions)
        actions = actions * weights  # padded entries -> 0, so their values never reach the denoiser's input
        prefix = prefix_fn()
        gens = batch.get(T.GENERATORS)  # one per sample from the trainer (vla.utils.sample_rng), else global
        noise = sample_rng.randn(actions.shape, gens, actions.device)
        timesteps = sample_rng.randint(self.cfg.num_train_timesteps, (b,), gens, actions.device)
        x_t = self.train_scheduler.add_noise(actions, noise, timesteps)  # (B, H, D)
        if self.cfg.prediction_type == "epsilon":
            target = noise
        elif self.cfg.prediction_type == "sample":
            target = actions
        else:
            target = self.train_scheduler.get_velocity(actions, noise, timesteps)
        err = (self.denoise(prefix, x_t, timesteps) - target) ** 2
        loss = masked_mean(err, weights)
        return loss, {"loss": loss.detach()}  # tensors: the trainer decides when to sync

    @torch.no_grad()
    def sample(self, prefix_fn, batch: dict, num_steps: int | None = None) -> torch.Tensor:
        steps = num_steps or self.cfg.num_inference_steps
        prefix = prefix_fn()
        b, device = prefix.hidden.shape[0], prefix.hidden.device
        scheduler = self.cfg.make_scheduler(self.cfg.sampler)  # fresh per call: its step state is local
        scheduler.set_timesteps(steps, device=device)
        noise = batch.get("noise")  # (B, H, D) given per sample by the caller, or drawn here
        if noise is None:
            noise = torch.randn(b, self.horizon, self.action_dim, device=device)
        x = noise * scheduler.init_noise_sigma
        guide = batch.get(rtc.GUIDANCE)  # an rtc.RTCGuidance when the previous chunk's remainder is given
        for t in scheduler.timesteps:
            mark_step()  # compiled with CUDA graphs: the previous step's block outputs are dead
            x_in = scheduler.scale_model_input(x, t)
            if guide is None:
                model_out = self.denoise(prefix, x_in, t.expand(b))
            else:  # real-time chunking: the x0 estimate guided towards the previous chunk (heads/rtc.py)
                ab = float(scheduler.alphas_cumprod[int(t)])

                def estimate(x_, t=t, ab=ab):
                    out = self.denoise(prefix, x_, t.expand(b))
                    return self.x0_of(out, x_, ab), out

                model_out, shift = guide.diffusion_x0(estimate, x_in, ab)
                model_out = model_out + self.output_shift(shift, ab)
            x = scheduler.step(model_out, t, x).prev_sample
        return x  # (B, H, D)
