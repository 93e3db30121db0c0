"""A training-only auxiliary target: a small probe on the image features predicts a dataset feature.

``--policy.auxiliary.key=observation.environment_state`` (MetaWorld's object and goal positions): a probe
reads each camera's image features (the backbone's last-layer hidden states, averaged over that camera's
image tokens) and predicts the feature's value at the current frame, normalized with the dataset's mean and
std; its MSE, times ``weight``, is added to the head's loss. The gradient asks the image features to encode
where things are. The backbone runs once per step: the probe reads the Prefix the head computed.

Inference never reads the key: only ``Policy.compute_loss`` calls the probe, so ``predict_chunk``, the server
and the evaluation runner take images, instruction and proprioception alone. The probe's weights are saved
with the checkpoint (it loads strictly) and do nothing after training. Reports say the run used the target
(``PolicyConfig.inputs_description``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vla import types as T
from vla.shapes import check_shape
from vla.types import Prefix

EPS = 1e-6  # a dim whose std is below this is constant (the Normalizer's own threshold)


@dataclass
class AuxiliaryConfig:
    key: str | None = None  # dataset feature to predict (None: off), e.g. observation.environment_state
    # The target is normalized to unit variance per dim, so the probe's MSE starts near 1, the scale of the
    # action losses (flow MSE, regression L1, in normalized units): 0.1 lets it shape the image features
    # without outweighing the actions. 0 still trains the probe (a readout of what the features hold)
    # and reports aux_loss, but leaves the backbone's gradient to the actions alone.
    weight: float = 0.1
    hidden_dim: int = 256  # the probe's hidden width (0: a linear probe)
    dim: int = 0  # filled from the dataset by the trainer (the feature's width)

    def __post_init__(self):
        if self.weight < 0:
            raise ValueError(f"policy.auxiliary.weight must be >= 0, got {self.weight}")
        if self.hidden_dim < 0:
            raise ValueError(f"policy.auxiliary.hidden_dim must be >= 0, got {self.hidden_dim}")

    @property
    def enabled(self) -> bool:
        return bool(self.key)


class AuxiliaryProbe(nn.Module):
    """Per-camera image features (B, N, W) -> the normalized target (B, A), and its MSE.

    The MSE averages over the target's dims that vary in the training data: a constant dim (MetaWorld's
    environment_state pads one-object tasks with zeros: 14 of its 39 dims on mw-easy) normalizes to 0 and
    would only dilute the loss. ``varies`` is a buffer, saved with the weights."""

    def __init__(self, cfg: AuxiliaryConfig, width: int, num_cameras: int, std: list[float] | None = None):
        super().__init__()
        d = width * num_cameras
        self.norm = nn.LayerNorm(d)  # VLM hidden states can be large; the probe sees unit-scale features
        if cfg.hidden_dim:
            self.net = nn.Sequential(nn.Linear(d, cfg.hidden_dim), nn.GELU(), nn.Linear(cfg.hidden_dim, cfg.dim))
        else:
            self.net = nn.Linear(d, cfg.dim)
        varies = torch.ones(cfg.dim, dtype=torch.bool) if std is None else torch.as_tensor(std).reshape(-1) > EPS
        if varies.shape != (cfg.dim,):
            raise ValueError(f"policy.auxiliary: statistics of width {varies.numel()} for a {cfg.dim}-dim target")
        self.register_buffer("varies", varies if varies.any() else torch.ones_like(varies))  # (A,)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features.flatten(1).to(self.norm.weight.dtype)  # (B, N*W)
        return self.net(self.norm(x))  # (B, A)

    def loss(self, features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """MSE against the normalized target (B, A) over the dims that vary."""
        err = (self(features).float() - target.float()) ** 2 * self.varies  # (B, A); a weight, not a mask: no sync
        return err.sum() / (self.varies.sum() * err.shape[0])


def build_probe(cfg: AuxiliaryConfig, width: int, num_cameras: int, stats: dict | None) -> AuxiliaryProbe | None:
    """The probe when the option is on (None when off); the statistics must cover the target."""
    if not cfg.enabled:
        return None
    if cfg.dim <= 0:
        raise ValueError(f"policy.auxiliary.key={cfg.key!r} needs auxiliary.dim (the trainer fills it from the data)")
    stats = ((stats or {}).get("members") or [stats or {}])[0]
    if stats and T.AUX_TARGET not in stats:
        raise KeyError(f"policy.auxiliary.key={cfg.key!r}: the statistics have no {T.AUX_TARGET!r} entry")
    return AuxiliaryProbe(cfg, width, num_cameras, std=stats.get(T.AUX_TARGET, {}).get("std"))


class RecordingPrefixFn:
    """A head's ``prefix_fn`` that keeps the Prefix it returns, so the probe reads the same backbone pass."""

    def __init__(self, fn):
        self.fn = fn
        self.prefix: Prefix | None = None

    def __call__(self, **kwargs) -> Prefix:
        self.prefix = self.fn(**kwargs)
        return self.prefix

    @property
    def recorded(self) -> Prefix:
        if self.prefix is None:
            raise RuntimeError("the head's loss never ran the backbone: the auxiliary probe has no image features")
        return self.prefix


def auxiliary_target(batch: dict, cfg: AuxiliaryConfig) -> torch.Tensor:
    """The batch's raw auxiliary target (B, A), checked; the error names the option and the canonical key."""
    if batch.get(T.AUX_TARGET) is None:
        raise KeyError(
            f"policy.auxiliary.key={cfg.key!r}: the training batch has no {T.AUX_TARGET!r} "
            "(the trainer's data carries it when policy.auxiliary.key is set)"
        )
    check_shape(T.AUX_TARGET, batch[T.AUX_TARGET], "B A", B=batch["images"].shape[0], A=cfg.dim)
    return batch[T.AUX_TARGET].float()


def add_auxiliary_loss(
    loss: torch.Tensor, metrics: dict, aux: torch.Tensor, weight: float
) -> tuple[torch.Tensor, dict]:
    """The head's loss plus ``weight`` x the probe's loss; the metrics report both and the total."""
    total = loss + weight * aux
    return total, {**metrics, "action_loss": loss.detach(), "aux_loss": aux.detach(), "loss": total.detach()}
