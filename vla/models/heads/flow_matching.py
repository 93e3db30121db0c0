"""Flow matching (pi0, pi0.5, SmolVLA): an action expert that reads the VLM layer by layer.

The expert (a registered style, ``expert.type``: ``dit``, ``gemma``, ``smolvla``; see
``heads/experts``) has as many layers as the backbone's language model; expert layer i reads
VLM layer i's keys/values over the prefix. Its query heads, kv heads and head_dim equal the
VLM's while its width is its own (``expert_width``, half the VLM's by default; pi0: 1024 vs 2048).

Time convention (openpi's code, the reverse of the pi0 paper): t = 1 is pure noise,
t = 0 is data. x_t = t * noise + (1 - t) * actions, the target velocity is
u = dx_t/dt = noise - actions, and sampling integrates from t = 1 to t = 0 with Euler
steps of dt = -1 / num_steps. Training times follow 0.001 + 0.999 Beta(1.5, 1) (noisier
times more often). Time enters in one of two ways (``time_conditioning``):

- ``concat`` (pi0, SmolVLA): a sinusoidal embedding concatenated to each action token's
  embedding, mixed by an MLP (``time_mlp_in`` on 2W, SiLU, ``time_mlp_out``);
- ``adaptive`` (pi0.5): the action tokens are ``action_in(x_t)`` alone and the embedding goes
  through ``time_mlp_in``, SiLU, ``time_mlp_out``, SiLU into a conditioning vector that drives
  the expert's adaptive norms.

The prefix (and its per-layer K/V) is computed once per ``sample`` call and reused at
every integration step; all loop state lives in local variables.

MeanFlow (``mean_flow``, as in DM1): the same expert learns the *average* velocity
u(x_t, r, t) = 1/(t - r) * integral_r^t v(x_s, s) ds over an interval r <= t, so one step from
noise, ``x_0 = x_1 - u(x_1, 0, 1)``, is a whole sample (k steps: jumps of 1/k). Training uses the
MeanFlow identity u = v - (t - r) du/dt with du/dt = v . d_x u + d_t u: one forward-mode JVP
(``torch.func.jvp``, tangent (v, 1) on (x_t, t)) through the head only, the prefix held constant
and the target stop-gradient, so no double backward is needed. The interval t - r enters through
a second sinusoidal embedding added to the time embedding (zero-initialized, so r = t starts as
plain flow matching). An optional dispersive term (``dispersive_weight``, "Diffuse and Disperse")
spreads the expert's output features across the batch: log mean_ij exp(-||h_i - h_j||^2 / tau).

Mixture of horizons (``moh.horizons``, see ``horizons.py``): the expert runs N truncated copies of the
chunk in one batch over the repeated prefix K/V, with the same noise and time in every copy; a learned
gate fuses their velocities step by step and is re-evaluated at every Euler step. Not combined with
``mean_flow`` (its JVP target would have to run through the fused mixture).

State: when the backbone hands the state to the head (``state_mode="head"``, pi0) one state
token precedes the action tokens, as a block of its own (it does not see the actions). The
actions attend to each other bidirectionally (pi0) or causally (``action_attention=causal``,
SmolVLA).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from vla import types as T
from vla.models.compile import mark_step
from vla.models.heads import rtc
from vla.models.heads.action_expert import (
    StateToken,
    action_weights,
    head_state_dim,
    masked_mean,
    per_sample_mean,
    prepend_state,
)
from vla.models.heads.base import Head, HeadConfig
from vla.models.heads.experts import ExpertConfig, suffix_self_mask
from vla.models.heads.horizons import (
    HorizonSample,
    HorizonsPlanMixin,
    MixtureOfHorizons,
    MixtureOfHorizonsConfig,
    disagreement,
    repeat_prefix,
)
from vla.models.heads.timesteps import sample_beta_time, sample_mean_flow_times, sinusoidal_embedding
from vla.shapes import check_shape
from vla.types import Prefix
from vla.utils import sample_rng


def _default_expert() -> ExpertConfig:
    return ExpertConfig.get_choice_class("dit")()


@HeadConfig.register_subclass("flow")
@dataclass
class FlowMatchingConfig(HeadConfig):
    expert: ExpertConfig = field(default_factory=_default_expert)  # dit | gemma (pi0, pi0.5) | smolvla
    expert_width: int | None = None  # None: half the backbone's width
    expert_ffn: int | None = (
        None  # the expert's MLP width; None: the style's default (mlp_ratio x width for dit, gemma)
    )
    mlp_ratio: float = 4.0
    time_conditioning: str = "concat"  # concat (pi0, SmolVLA) | adaptive (pi0.5: adaptive norms)
    action_attention: str = "bidirectional"  # among action tokens: bidirectional (pi0) | causal (SmolVLA)
    num_steps: int = 10  # Euler steps at sampling
    time_alpha: float = 1.5  # training times ~ 0.001 + 0.999 Beta(time_alpha, time_beta)
    time_beta: float = 1.0
    # MeanFlow (DM1): learn the average velocity over [r, t] so that 1 step samples (set num_steps=1)
    mean_flow: bool = False
    mean_flow_equal_fraction: float = 0.5  # share of samples with r = t (plain flow-matching target)
    mean_flow_time_mu: float = -0.4  # t, r ~ sigmoid(N(mu, sigma)), sorted
    mean_flow_time_sigma: float = 1.0
    # MeanFlow's adaptive loss weight sg(1 / (err + c)^p) per sample (0: plain MSE; 0.5: about the error's
    # square root), which keeps the early, large JVP targets from dominating.
    mean_flow_adaptive_p: float = 0.5
    # Shortest period of the time embeddings under MeanFlow (pi0's 4e-3 otherwise): the target holds du/dt,
    # and pi0's periods put derivatives of ~1,500 into it. Measured on a bimodal toy (400 steps), mean
    # distance of 1-step samples to the nearest mode: 0.38 at 4e-3, 0.18 at 0.5, 0.10 at 2 (Euler 1-step: 0.40)
    mean_flow_min_period: float = 2.0
    dispersive_weight: float = 0.0  # >0: add the dispersive (InfoNCE-L2) term on the expert's features
    dispersive_temperature: float = 0.5
    # Training-time RTC (heads/rtc.py): each sample's first d ~ U{0..max} actions enter clean (time 0) without
    # loss, so that inference with a previous chunk can hard-inpaint them (no backward pass); 0: off
    rtc_training_max_delay: int = 0
    moh: MixtureOfHorizonsConfig = field(default_factory=MixtureOfHorizonsConfig)  # mixture of horizons (off)

    def __post_init__(self):
        if self.rtc_training_max_delay and (
            self.rtc_training_max_delay < 0 or self.mean_flow or self.moh.enabled or self.time_conditioning != "concat"
        ):
            raise ValueError(
                "flow head: rtc_training_max_delay needs a per-token time: it must be >= 0, with "
                f"time_conditioning='concat' (got {self.time_conditioning!r}; adaptive norms take one time per "
                f"sample) and without mean_flow or moh (got {self.mean_flow}, {self.moh.horizons}); got "
                f"{self.rtc_training_max_delay}"
            )
        if self.mean_flow and self.moh.enabled:
            raise ValueError(
                "flow head: mean_flow and moh.horizons do not combine (MeanFlow's JVP target would have to run "
                "through the fused mixture of horizons); choose one"
            )
        if self.dispersive_weight < 0 or self.dispersive_temperature <= 0:
            raise ValueError(
                "flow head: dispersive_weight must be >= 0 and dispersive_temperature > 0, got "
                f"{self.dispersive_weight} and {self.dispersive_temperature}"
            )
        if self.time_conditioning not in ("concat", "adaptive"):
            raise ValueError(
                f"flow head: time_conditioning must be 'concat' or 'adaptive', got {self.time_conditioning!r}"
            )
        if self.action_attention not in ("bidirectional", "causal"):
            raise ValueError(
                f"flow head: action_attention must be 'bidirectional' or 'causal', got {self.action_attention!r}"
            )

    def build(self, backbone, horizon: int, action_dim: int) -> FlowMatchingHead:
        return FlowMatchingHead(self, backbone, horizon, action_dim)


class FlowMatchingHead(HorizonsPlanMixin, Head):
    needs_kv = True

    def __init__(self, cfg: FlowMatchingConfig, backbone, horizon: int, action_dim: int):
        super().__init__()
        self.cfg, self.horizon, self.action_dim = cfg, horizon, action_dim
        cfg.moh.check("flow", horizon)
        width = cfg.expert_width or max(backbone.width // 2, 8)
        if width % 2:
            raise ValueError(f"flow head: expert_width must be even (sinusoidal time features), got {width}")
        self.width = width
        self.adaptive = cfg.time_conditioning == "adaptive"
        state_dim = head_state_dim(backbone)
        self.expert = cfg.expert.build(
            backbone,
            width=width,
            ffn=cfg.expert_ffn or cfg.expert.default_ffn(width, cfg.mlp_ratio),
            max_tokens=horizon + (1 if state_dim else 0),
            adaptive=self.adaptive,
        )
        self.state_token = StateToken(state_dim, width) if state_dim else None
        self.action_in = nn.Linear(action_dim, width)
        # concat: pi0's action_time_mlp_in on [action ; time]; adaptive: pi0.5's time_mlp_in on time alone
        self.time_mlp_in = nn.Linear(width if self.adaptive else 2 * width, width)
        self.time_mlp_out = nn.Linear(width, width)
        self.action_out = nn.Linear(width, action_dim)
        # MeanFlow: the interval t - r embedded and added to the time embedding; zero at init (r = t: plain flow)
        self.interval_in = nn.Linear(width, width) if cfg.mean_flow else None
        if self.interval_in is not None:
            nn.init.zeros_(self.interval_in.weight)
            nn.init.zeros_(self.interval_in.bias)
        self.register_buffer(
            "self_mask",
            suffix_self_mask(1 if state_dim else 0, horizon, cfg.action_attention == "causal"),
            persistent=False,
        )
        self.moh = MixtureOfHorizons(cfg.moh, width, horizon) if cfg.moh.enabled else None

    @property
    def supports_rtc(self) -> bool:
        return not (self.cfg.mean_flow or self.cfg.moh.enabled)  # one Euler loop of the instantaneous velocity

    @property
    def rtc_trained(self) -> bool:
        return self.cfg.rtc_training_max_delay > 0

    def velocity(
        self,
        prefix: Prefix,
        x_t: torch.Tensor,
        t: torch.Tensor,
        r: torch.Tensor | None = None,
        features: bool = False,
        self_mask: torch.Tensor | None = None,
    ):
        """Noisy chunk (B, H, D) at times t (B,), or per action token (B, H) -> predicted velocity (B, H, D).

        With ``mean_flow``, the average velocity over [r, t] (r (B,), None: r = t, the instantaneous
        velocity). ``features=True`` also returns the expert's output tokens (B, [1+]H, We).
        ``self_mask``: who sees whom in the suffix, (A, A) or per sample (B, A, A); None: the head's own.
        """
        dtype = self.action_in.weight.dtype
        tokens = self.action_in(x_t.to(dtype))  # (B, H, We)
        periods = {} if self.interval_in is None else {"min_period": self.cfg.mean_flow_min_period}
        t_emb = sinusoidal_embedding(t, self.width, **periods).to(dtype).reshape(*t.shape, -1)  # (B[, H], We)
        if self.interval_in is not None:
            interval = torch.zeros_like(t) if r is None else t - r  # (B,)
            t_emb = t_emb + self.interval_in(sinusoidal_embedding(interval, self.width, **periods).to(dtype))
        cond = None
        if self.adaptive:
            cond = F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(t_emb))))  # (B, We)
        else:
            t_emb = t_emb.reshape(t.shape[0], -1, self.width).expand_as(tokens)  # (B, H, We); t may be per token
            tokens = self.time_mlp_out(F.silu(self.time_mlp_in(torch.cat([tokens, t_emb], dim=-1))))  # (B, H, We)
        tokens = prepend_state(self.state_token, prefix, tokens)
        self_mask = self.self_mask if self_mask is None else self_mask
        out = self.expert.run_suffix(tokens, prefix, self_mask, cond)  # (B, [1+]H, We)
        velocity = self.action_out(out[:, -self.horizon :].to(self.action_out.weight.dtype)).float()  # (B, H, D)
        return (velocity, out) if features else velocity

    def mixed_velocity(
        self, prefix: Prefix, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The horizon mixture at (x_t (B, H, D), t (B,)) -> fused velocity (B, H, D), per-horizon velocities
        (B, N, H, D), gates (B, H, N). ``prefix`` is already repeated N times (``repeat_prefix``, once per
        chunk). Every copy gets the same x_t and t; copy h's steps past h keep their values, hidden from
        attention by the self mask (not zeroed), so what they hold cannot matter."""
        n, b = self.moh.n, x_t.shape[0]
        mask = self.moh.self_mask(self.self_mask, 1 if self.state_token is not None else 0, b)  # (B*N, A, A)
        v, out = self.velocity(
            prefix, x_t.repeat_interleave(n, 0), t.repeat_interleave(n, 0), features=True, self_mask=mask
        )  # (B*N, H, D), (B*N, [1+]H, We)
        return self.moh.mix(out[:, -self.horizon :], v)

    def loss(self, prefix_fn, batch: dict) -> tuple[torch.Tensor, dict]:
        actions = batch["actions"].float()
        b = check_shape("actions", actions, "B H D", H=self.horizon, D=self.action_dim)["B"]
        weights = action_weights(batch, actions)
        actions = actions * weights  # padded entries -> 0, so their values never reach the expert's input
        prefix = prefix_fn(with_kv=True)
        # Each sample's noise, then its time, from its own generator when the trainer gives them (see
        # vla.utils.sample_rng); given (B, H, D) noise and (B,) times reproduce a loss exactly.
        gens = batch.get(T.GENERATORS)
        noise = batch.get("noise")
        noise = sample_rng.randn(actions.shape, gens, actions.device) if noise is None else check_noise(noise, actions)
        if self.cfg.mean_flow:
            return self.mean_flow_loss(prefix, actions, noise, weights, gens)
        t = batch.get("time")  # (B,)
        if t is None:
            t = sample_beta_time(b, self.cfg.time_alpha, self.cfg.time_beta, device=actions.device, generator=gens)
        t = t.to(actions.device, torch.float32)
        check_shape("time", t, "B", B=b)
        if self.cfg.rtc_training_max_delay:  # clean prefix at time 0 (per token), loss on the rest only
            clean = rtc.clean_prefix(
                rtc.training_delays(b, self.cfg.rtc_training_max_delay, self.horizon, gens, t.device), self.horizon
            )
            t, weights = torch.where(clean, 0.0, t[:, None]), weights * ~clean[..., None]  # (B, H), (B, H, D)
        tt = t.reshape(b, -1)[..., None]  # (B, 1 or H, 1)
        x_t = tt * noise + (1 - tt) * actions  # (B, H, D)
        target = noise - actions  # velocity dx_t/dt
        if self.moh is not None:
            v, per, alpha = self.mixed_velocity(repeat_prefix(prefix, self.moh.n), x_t, t)
            loss, metrics = self.moh.loss((v - target) ** 2, (per - target[:, None]) ** 2, weights, alpha)
            return loss, {"loss": loss.detach(), **metrics}
        err = (self.velocity(prefix, x_t, t) - target) ** 2
        loss = masked_mean(err, weights)
        return loss, {"loss": loss.detach()}  # tensors: the trainer decides when to sync

    def mean_flow_loss(self, prefix: Prefix, actions, noise, weights, gens) -> tuple[torch.Tensor, dict]:
        """MeanFlow: regress u(x_t, r, t) onto sg(v - (t - r) du/dt), du/dt by one forward-mode JVP."""
        cfg = self.cfg
        t, r = sample_mean_flow_times(
            actions.shape[0],
            mu=cfg.mean_flow_time_mu,
            sigma=cfg.mean_flow_time_sigma,
            equal_fraction=cfg.mean_flow_equal_fraction,
            device=actions.device,
            generator=gens,
        )
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * actions  # (B, H, D)
        v = noise - actions  # the instantaneous velocity at x_t

        def average_velocity(x, time):  # the prefix and r are constants: no tangent flows into them
            u, feats = self.velocity(prefix, x, time, r, features=True)
            return u, feats

        # Forward-mode AD has no rule for the fused/flash attention kernels: the math kernel here only.
        with sdpa_kernel(SDPBackend.MATH):
            u, dudt, feats = torch.func.jvp(average_velocity, (x_t, t), (v, torch.ones_like(t)), has_aux=True)
        target = (v - (t - r)[:, None, None] * dudt).detach()
        err = (u - target) ** 2
        per_sample = per_sample_mean(err, weights)  # (B,)
        mean_flow = per_sample.mean()
        metrics = {"mean_flow": mean_flow.detach()}
        scale = (per_sample.detach() + 1e-3) ** cfg.mean_flow_adaptive_p  # MeanFlow's adaptive weighting
        loss = (per_sample / scale).mean()
        if cfg.dispersive_weight > 0:
            dispersive = dispersive_loss(feats, cfg.dispersive_temperature)
            loss = loss + cfg.dispersive_weight * dispersive
            metrics["dispersive"] = dispersive.detach()
        metrics["loss"] = loss.detach()
        return loss, metrics

    def _start(self, prefix_fn, batch: dict, num_steps: int | None) -> tuple[int, Prefix, torch.Tensor]:
        """Sampling's start: the step count, the prefix (once; reused by every Euler step), x (B, H, D) at t = 1."""
        steps = num_steps or self.cfg.num_steps
        if steps < 1:
            raise ValueError(f"flow head: num_steps must be >= 1, got {steps}")
        prefix = prefix_fn(with_kv=True)
        b, device = prefix.hidden.shape[0], prefix.hidden.device
        x = batch.get("noise")  # (B, H, D) given per sample by the caller, or drawn here
        if x is None:
            x = torch.randn(b, self.horizon, self.action_dim, device=device)  # t = 1: noise
        return steps, prefix, x.to(device, torch.float32)

    @torch.no_grad()
    def sample(self, prefix_fn, batch: dict, num_steps: int | None = None) -> torch.Tensor:
        if self.moh is not None:
            return self.sample_details(prefix_fn, batch, num_steps).chunk
        steps, prefix, x = self._start(prefix_fn, batch, num_steps)
        b, device = x.shape[0], x.device
        dt = -1.0 / steps
        guide = batch.get(rtc.GUIDANCE)  # an rtc.RTCGuidance when the previous chunk's remainder is given
        for i in range(steps):
            mark_step()  # compiled with CUDA graphs: the previous step's block outputs are dead
            t = torch.full((b,), 1.0 + i * dt, device=device)
            if self.cfg.mean_flow:  # jump over [r, t] with the average velocity
                r = torch.full((b,), max(1.0 + (i + 1) * dt, 0.0), device=device)
                x = x + dt * self.velocity(prefix, x, t, r)
            elif guide is not None:  # real-time chunking (heads/rtc.py): guided or inpainted velocity
                x, v = guide.flow_step(lambda x_, t_: self.velocity(prefix, x_, t_), x, t)
                x = x + dt * v
            else:  # Euler step with the instantaneous velocity
                x = x + dt * self.velocity(prefix, x, t)
        return x  # t = 0: actions (B, H, D)

    @torch.no_grad()
    def sample_details(self, prefix_fn, batch: dict, num_steps: int | None = None) -> HorizonSample:
        """Euler integration of the fused velocity, the gate re-evaluated at every step. The disagreement is
        summed over the steps in update space (dt * v, as the reference code does); each horizon's chunk is
        the last step taken with its own velocity, so the gate-weighted sum of them is the fused chunk."""
        if self.moh is None:
            raise ValueError("flow head: sample_details needs policy.head.moh.horizons")
        steps, prefix, x = self._start(prefix_fn, batch, num_steps)
        prefix = repeat_prefix(prefix, self.moh.n)  # once: every step reuses the repeated K/V
        b, device = x.shape[0], x.device
        dt = -1.0 / steps
        dis = torch.zeros(b, self.horizon, device=device)
        for i in range(steps):
            mark_step()  # compiled with CUDA graphs: the previous step's block outputs are dead
            t = torch.full((b,), 1.0 + i * dt, device=device)
            v, per, alpha = self.mixed_velocity(prefix, x, t)  # (B, H, D), (B, N, H, D), (B, H, N)
            dis = dis + disagreement(dt * v, dt * per, alpha, batch.get("action_dim_mask"))
            last, x = x, x + dt * v
        chunks = (last[:, None] + dt * per) * self.moh.valid[None, :, :, None].to(x.dtype)  # (B, N, H, D)
        return HorizonSample(x, chunks, alpha, dis, self.moh.execute(dis))


def dispersive_loss(features: torch.Tensor, temperature: float) -> torch.Tensor:
    """log mean_ij exp(-||h_i - h_j||^2 / (tau * F)) over the batch, h_i sample i's features flattened (F values).

    The InfoNCE-L2 form of "Diffuse and Disperse" (no positive pairs): lower when the samples' features
    are spread apart. Squared distances are divided by the feature size F so that tau does not depend on
    the expert's width; the diagonal (i = j, distance 0) stays in the mean as in the formula. A batch of
    one has nothing to disperse: 0.
    """
    h = features.flatten(1).float()  # (B, F)
    b = h.shape[0]
    if b < 2:
        return h.sum() * 0.0
    norms = h.pow(2).sum(1)  # (B,); no sqrt, whose gradient at the zero diagonal would be NaN
    sq = (norms[:, None] + norms[None, :] - 2 * h @ h.T).clamp(min=0) / h.shape[1]  # (B, B)
    return torch.logsumexp(-sq.flatten() / temperature, dim=0) - 2 * torch.log(torch.tensor(float(b)))


def check_noise(noise: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    if noise.shape != actions.shape:
        raise ValueError(
            f"noise: expected the shape of the (padded) actions {tuple(actions.shape)}, got {tuple(noise.shape)}"
        )
    return noise.to(actions.device, actions.dtype)
