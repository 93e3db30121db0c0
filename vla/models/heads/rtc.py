"""Real-time chunking (RTC, Black, Galliker & Levine, arXiv 2506.07339): sample the next chunk consistent with the
actions the robot will still play from the previous one.

While the robot executes the previous chunk, the next one is sampled; the first ``d`` actions (the inference
delay, in control steps) will be played from the old chunk anyway, and the overlap after them should not jump.
``Y`` is the previous chunk's unexecuted remainder, aligned so that ``Y[k]`` is the action for the same step
as the new chunk's ``k``, in the model's **normalized** action space, right-padded to H.

Two modes, one hook (``RTCGuidance.step``) called by the flow head's and the diffusion head's sampling loops:

- ``guided`` (the paper's inference-time method, PiGDM inpainting): at every denoising step the velocity is
  corrected towards ``Y`` through the data estimate, weighted by a soft mask ``W`` over the overlap::

      A1 = A + (1 - tau) v(A)                            (the data estimate; tau: 0 noise -> 1 data)
      v* = v + min(beta, (1 - tau) / (tau r2)) J^T [W * (Y - A1)],  r2 = (1 - tau)^2 / (tau^2 + (1 - tau)^2)

  ``J = dA1/dA``, so each step costs one vector-Jacobian product through the head: sampling runs under
  ``torch.enable_grad`` in this mode only (never under ``torch.inference_mode``). The weight diverges as
  tau -> 0, hence the clip at beta.
- ``inpaint`` (training-time RTC, LeRobot's ``trained`` mode for pi0.5): a head trained with clean prefixes
  (``rtc_training_max_delay``) gets the first d actions clean with their time set to data, and they stay
  exactly ``Y``'s: no backward pass.

Time convention: ours is openpi's, t = 1 noise, t = 0 data (``flow_matching.py``); the paper's tau = 1 - t. Our
velocity is dx/dt = -(the paper's), so the data estimate is ``x - t v`` and the corrected velocity ``v - w g``.

The soft mask (the paper's exponential schedule): ``W_i = 1`` for i < d; ``c_i (e^{c_i} - 1) / (e - 1)`` with
``c_i = (E - i) / (E - d + 1)`` for d <= i < E; 0 from E on. E, the soft region's end (the paper's H - s,
LeRobot's ``execution_horizon``), defaults to Y's length: the whole remainder guides.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

GUIDANCE = "rtc"  # the sampling batch's key holding an RTCGuidance
SCHEDULES = ("exp", "linear", "ones", "zeros")
MODES = ("auto", "guided", "inpaint")


@dataclass
class RTCConfig:
    """How a chunk is sampled when a previous chunk's remainder comes with the request (inference only)."""

    mode: str = "auto"  # guided | inpaint (heads trained with rtc_training_max_delay) | auto: inpaint if trained
    schedule: str = "exp"  # soft mask over the overlap: exp (the paper's) | linear | ones | zeros (hard prefix)
    max_guidance_weight: float = 5.0  # beta, the clip of the guidance weight (the paper: 5 for 5 steps)
    soft_end: int | None = None  # E, where the soft region ends (the paper's H - s); None: Y's length

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"rtc.mode must be one of {list(MODES)}, got {self.mode!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"rtc.schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if self.max_guidance_weight < 0:
            raise ValueError(f"rtc.max_guidance_weight must be >= 0, got {self.max_guidance_weight}")
        if self.soft_end is not None and self.soft_end < 0:
            raise ValueError(f"rtc.soft_end must be >= 0 or None, got {self.soft_end}")


def with_overrides(
    config: RTCConfig, mode: str | None = None, schedule: str | None = None, max_guidance_weight: float | None = None
) -> RTCConfig:
    """``config`` with the options given (not None) replaced: an evaluation's or a server's choice over a
    checkpoint's ``policy.rtc`` (the weights are the same: RTC is a choice of inference)."""
    changes = {"mode": mode, "schedule": schedule, "max_guidance_weight": max_guidance_weight}
    return dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})


def resolve_mode(config: RTCConfig, trained: bool) -> str:
    """``guided`` or ``inpaint``: ``auto`` inpaints on heads trained with clean prefixes; inpainting an untrained
    head is refused (its prefix would enter at a time it never saw)."""
    mode = config.mode if config.mode != "auto" else ("inpaint" if trained else "guided")
    if mode == "inpaint" and not trained:
        raise ValueError(
            "rtc.mode=inpaint needs a head trained with clean prefixes (policy.head.rtc_training_max_delay > 0); "
            "use rtc.mode=guided"
        )
    return mode


def prefix_weights(delay: torch.Tensor, end: torch.Tensor, horizon: int, schedule: str = "exp") -> torch.Tensor:
    """The soft mask W (B, H) for delays d (B,) and soft-region ends E (B,) (see the module docstring).

    ``ones``: 1 before E; ``zeros``: 1 before d only (hard masking); ``linear``: c_i itself. d is capped at E.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"rtc: unknown schedule {schedule!r}; known: {list(SCHEDULES)}")
    i = torch.arange(horizon, device=delay.device, dtype=torch.float32)[None, :]  # (1, H)
    end = end.float()[:, None]  # (B, 1)
    d = torch.minimum(delay.float()[:, None], end)  # (B, 1)
    if schedule == "ones":
        w = torch.ones_like(i).expand(d.shape[0], -1)
    elif schedule == "zeros":
        w = (i < d).float()
    else:
        c = ((end - i) / (end - d + 1)).clamp(0.0, 1.0)  # 1 on the frozen prefix after the clamp
        w = c if schedule == "linear" else c * torch.expm1(c) / (math.e - 1)
        w = torch.where(i < d, torch.ones_like(w), w)
    return torch.where(i < end, w, torch.zeros_like(w))  # (B, H)


def guidance_weight(tau: float, beta: float) -> float:
    """min(beta, (1 - tau) / (tau r2_tau)) at the paper's time tau (0 noise, 1 data); beta at both ends."""
    if tau <= 0.0 or tau >= 1.0:
        return beta
    r2 = (1 - tau) ** 2 / (tau**2 + (1 - tau) ** 2)
    return min(beta, (1 - tau) / (tau * r2))


def flow_tau(t: float) -> float:
    """The paper's tau of our flow time t (t = 1 noise): tau = 1 - t."""
    return 1.0 - t


def diffusion_tau(alpha_bar: float) -> float:
    """The paper's tau of a DDPM noise level: x_k = sqrt(ab) x0 + sqrt(1 - ab) eps is the flow state
    tau x0 + (1 - tau) eps up to the scale sqrt(ab) + sqrt(1 - ab), so tau = sqrt(ab) / (sqrt(ab) + sqrt(1 - ab))."""
    a, s = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    return a / (a + s)


Estimate = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # x -> (data estimate, model output)


@dataclass
class RTCGuidance:
    """One batch's RTC inputs, in the head's normalized space, and the hook the sampling loops call.

    ``prev`` (B, H, D): Y right-padded with zeros; ``weights`` (B, H): W, zero past each row's Y (a row
    without a previous chunk has W = 0 and samples as usual); ``frozen`` (B, H) bool: the first d actions
    of each row; ``dim_mask`` (B, D): the real action dims (padded ones never pull towards 0).
    """

    mode: str  # guided | inpaint
    prev: torch.Tensor
    weights: torch.Tensor
    frozen: torch.Tensor
    dim_mask: torch.Tensor
    beta: float

    @classmethod
    def build(
        cls,
        config: RTCConfig,
        prev: Sequence[torch.Tensor | None],
        delays: Sequence[int],
        horizon: int,
        dim_mask: torch.Tensor,
        trained: bool,
    ) -> RTCGuidance:
        """From per-row remainders (K_i, D) already normalized and padded to the model's D (None: none) and delays."""
        b, width = dim_mask.shape
        device = dim_mask.device
        if len(prev) != b or len(delays) != b:
            raise ValueError(f"rtc: expected {b} previous chunks and delays, got {len(prev)} and {len(delays)}")
        y = torch.zeros(b, horizon, width, device=device)
        lengths = torch.zeros(b, dtype=torch.long)
        for row, p in enumerate(prev):
            if p is None:
                continue
            if p.ndim != 2 or p.shape[1] != width or p.shape[0] > horizon:
                raise ValueError(f"rtc: previous chunk {row}: expected (K <= {horizon}, {width}), got {tuple(p.shape)}")
            y[row, : p.shape[0]] = p.to(device, torch.float32)
            lengths[row] = p.shape[0]
        d = torch.as_tensor([int(x) for x in delays], dtype=torch.long)
        if (d < 0).any() or (d > horizon).any():
            raise ValueError(f"rtc: inference delays must lie in [0, {horizon}], got {d.tolist()}")
        d = torch.minimum(d, lengths)  # only actions Y has can be frozen
        end = lengths if config.soft_end is None else lengths.clamp(max=config.soft_end)
        mode = resolve_mode(config, trained)
        frozen = torch.arange(horizon)[None, :] < d[:, None]  # (B, H)
        return cls(
            mode=mode,
            prev=y,
            weights=prefix_weights(d, end, horizon, config.schedule).to(device),
            frozen=frozen.to(device),
            dim_mask=dim_mask.to(device, torch.float32),
            beta=config.max_guidance_weight,
        )

    def correction(
        self, estimate: Estimate, x: torch.Tensor, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(data estimate, model output, scale * J^T [W * (Y - estimate)]) at x, J = d estimate / dx, by one VJP."""
        if torch.is_inference_mode_enabled():
            raise RuntimeError("rtc guided sampling needs autograd: call it under torch.no_grad, not inference_mode")
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            est, out = estimate(x)
            err = (self.prev - est) * self.weights[..., None] * self.dim_mask[:, None, :]  # (B, H, D)
            (g,) = torch.autograd.grad(est, x, grad_outputs=err.detach())
        return est.detach(), out.detach(), scale * g

    def flow_step(
        self, velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The flow head's hook: (x, v) for the Euler step ``x + dt v`` at times t (B,) (all rows alike).

        ``velocity(x, t)`` takes t (B,) or per action token (B, H) (``inpaint``)."""
        if self.mode == "inpaint":
            x = torch.where(self.frozen[..., None], self.prev, x)  # the frozen prefix enters clean, at time 0
            v = velocity(x, torch.where(self.frozen, torch.zeros_like(self.weights), t[:, None]))
            return x, torch.where(self.frozen[..., None], torch.zeros_like(v), v)  # clean tokens stay put
        time = float(t[0])
        w = guidance_weight(flow_tau(time), self.beta)

        def estimate(x_):
            v_ = velocity(x_, t)
            return x_ - t[:, None, None] * v_, v_  # the data estimate at t = 0

        _, v, g = self.correction(estimate, x, w)
        return x, v - g  # our v is dx/dt = -(the paper's): the paper's v + w g

    def diffusion_x0(self, estimate: Estimate, x: torch.Tensor, alpha_bar: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The diffusion head's hook: (model output, the shift of its x0 estimate) at a noise level alpha_bar.

        The flow correction carried into x0 space: x0* = x0 + sqrt(1 - ab) w J^T [W (Y - x0)], J = dx0/dx_k."""
        if self.mode == "inpaint":
            raise ValueError("rtc.mode=inpaint is for flow heads trained with clean prefixes; use rtc.mode=guided")
        w = guidance_weight(diffusion_tau(alpha_bar), self.beta)
        _, out, g = self.correction(estimate, x, math.sqrt(1.0 - alpha_bar) * w)
        return out, g


def training_delays(batch_size: int, max_delay: int, horizon: int, generators, device) -> torch.Tensor:
    """Training-time RTC: each sample's delay d ~ U{0..max_delay} (capped below H), from its own generator."""
    from vla.utils import sample_rng

    d = sample_rng.randint(max_delay + 1, (batch_size,), generators, device)  # (B,)
    return d.clamp(max=horizon - 1)


def clean_prefix(delays: torch.Tensor, horizon: int) -> torch.Tensor:
    """(B, H) bool: True on each sample's first d actions, which enter clean (time 0) and carry no loss."""
    return torch.arange(horizon, device=delays.device)[None, :] < delays[:, None]
