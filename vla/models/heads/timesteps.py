"""Pure functions for continuous heads: time embeddings and time samplers.

Kept free of modules and state so they can be tested alone and shared by the
diffusion, flow-matching and any future head.
"""

from __future__ import annotations

import math

import torch
from scipy.special import betaincinv

from vla.utils import sample_rng
from vla.utils.sample_rng import Generators


def sinusoidal_embedding(t: torch.Tensor, dim: int, min_period: float = 4e-3, max_period: float = 4.0) -> torch.Tensor:
    """(B,) times -> (B, dim) sin/cos features with geometrically spaced periods.

    The default periods (pi0's) suit t in [0, 1]; the diffusion head therefore feeds its
    integer timestep as ``t / num_train_timesteps``. (A period under 2 would alias on
    integer inputs: sin(2*pi*t) is 0 for every integer t.)

    Computed in float64 (where the device has it) and returned in float32, as openpi and LeRobot
    do: pi0's periods span three orders of magnitude, and float32 angles would differ from theirs.
    """
    if dim % 2:
        raise ValueError(f"sinusoidal_embedding: dim must be even, got {dim}")
    wide = torch.float32 if t.device.type == "mps" else torch.float64
    t = t.reshape(-1)  # (B,)
    fraction = torch.linspace(0.0, 1.0, dim // 2, device=t.device, dtype=wide)
    period = min_period * (max_period / min_period) ** fraction  # (dim/2,)
    angle = (1.0 / period * 2 * math.pi)[None, :] * t[:, None].to(wide)  # (B, dim/2)
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1).float()  # (B, dim)


def sample_beta_time(
    batch_size: int,
    alpha: float = 1.5,
    beta: float = 1.0,
    *,
    t_min: float = 1e-3,
    device: torch.device | str | None = None,
    generator: Generators = None,
) -> torch.Tensor:
    """(B,) flow-matching times in [t_min, 1], t ~ t_min + (1 - t_min) * Beta(alpha, beta).

    Convention (openpi's pi0 code, the reverse of the pi0 paper): t = 1 is pure noise and
    t = 0 is data. Beta(1.5, 1) has mean 0.6, so training sees noisier times more often,
    which is where the velocity is hardest to predict. ``t_min`` keeps t away from 0 where
    the target is trivially the data.

    Drawn by inverse CDF: one uniform per sample from ``generator`` (None, one generator, or one
    per sample: see vla.utils.sample_rng), mapped through scipy's inverse regularized incomplete
    beta function. ``torch.distributions.Beta`` cannot take a generator, and the inverse CDF
    keeps the per-sample stream at exactly one draw per time.
    """
    if alpha <= 0 or beta <= 0:
        raise ValueError(f"sample_beta_time: alpha and beta must be > 0, got {alpha}, {beta}")
    u = sample_rng.rand((batch_size,), generator).cpu()  # (B,)
    t = torch.from_numpy(betaincinv(float(alpha), float(beta), u.double().numpy())).float()
    return (t_min + (1.0 - t_min) * t).to(device)


def sample_mean_flow_times(
    batch_size: int,
    *,
    mu: float = -0.4,
    sigma: float = 1.0,
    equal_fraction: float = 0.5,
    device: torch.device | str | None = None,
    generator: Generators = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, r), each (B,), with 0 <= r <= t <= 1: the interval a MeanFlow head learns to jump.

    Two logit-normal draws ``sigmoid(N(mu, sigma))`` sorted so that r <= t (MeanFlow's and DM1's
    sampler; t = 1 is noise as everywhere here); a fraction ``equal_fraction`` of the samples get
    r = t, where the MeanFlow target reduces to plain flow matching's instantaneous velocity
    (DM1's ``flow_ratio``). Each sample draws two normals and one uniform from its own generator,
    so its times do not depend on the batch it lands in.
    """
    if not 0.0 <= equal_fraction <= 1.0:
        raise ValueError(f"sample_mean_flow_times: equal_fraction must be in [0, 1], got {equal_fraction}")
    pair = torch.sigmoid(mu + sigma * sample_rng.randn((batch_size, 2), generator))  # (B, 2)
    equal = sample_rng.rand((batch_size,), generator) < equal_fraction  # (B,)
    t, r = pair.max(dim=1).values, pair.min(dim=1).values
    r = torch.where(equal, t, r)
    return t.to(device), r.to(device)
