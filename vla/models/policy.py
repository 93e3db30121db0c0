"""Policy = backbone + head + normalizer + processor, behind one small interface.

The trainer, the evaluation runner and the server talk only to this class:
``compute_loss(batch)``, ``predict_chunk(observation)``, ``select_action(observation)``,
``save(dir)`` and ``Policy.load(dir)``.

Units: batches and observations carry raw robot units; the policy normalizes the
state and the actions on the way in and unnormalizes predicted chunks on the way out,
with the statistics saved inside every checkpoint, so a served policy unnormalizes
exactly as it trained.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from lerobot.utils.constants import OBS_ENV_STATE
from safetensors.torch import load_file, save_file
from torch import nn

import vla.models.backbones  # noqa: F401  (registers the backbone families)
import vla.models.heads  # noqa: F401  (registers the heads)
from vla import types as T
from vla.action_queue import ActionQueue
from vla.config import from_dict, to_dict
from vla.models.auxiliary import AuxiliaryConfig, RecordingPrefixFn, add_auxiliary_loss, auxiliary_target, build_probe
from vla.models.backbones.base import BackboneConfig
from vla.models.compile import mark_step
from vla.models.heads.base import HeadConfig
from vla.models.heads.rtc import GUIDANCE, RTCConfig, RTCGuidance
from vla.models.normalizer import Normalizer
from vla.shapes import check_keys, check_shape
from vla.utils import sample_rng
from vla.utils.atomic import atomic_dir
from vla.utils.device import resolve_device

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATS_FILE = "stats.json"
HEAD_DIR = "head"
BACKBONE_DIR = "backbone"  # the VLM's model config and processor: a checkpoint rebuilds offline from its own folder


def _default_backbone() -> BackboneConfig:
    return BackboneConfig.get_choice_class("smolvlm")()


def _default_head() -> HeadConfig:
    return HeadConfig.get_choice_class("flow")()


def resolve_backbone_config(cfg: BackboneConfig) -> BackboneConfig:
    """Let a preset name pick its family: ``preset=tiny-paligemma`` -> PaliGemma's ``tiny``.

    Preset names are unique across families (``tiny-<family>``, ``paligemma-3b``,
    ``smolvlm2-500m``, ``qwen2_5_vl-3b``), so ``--policy.backbone.preset=NAME`` alone is
    enough on the command line.
    """
    families = sorted(BackboneConfig.get_known_choices(), key=len, reverse=True)
    preset, family = cfg.preset, None
    if preset.startswith("tiny-"):
        family, preset = preset[len("tiny-") :], "tiny"
    else:
        family = next((f for f in families if preset.startswith(f)), None)
    if family is None:
        return cfg
    if family not in families:
        raise KeyError(f"policy.backbone.preset={cfg.preset!r}: unknown family {family!r}; known: {families}")
    if family == cfg.type:
        cfg.preset = preset
        return cfg
    target = BackboneConfig.get_choice_class(family)
    shared = set(target.__dataclass_fields__) & set(type(cfg).__dataclass_fields__)  # dtype, image_size ... too
    lost = [f"{k}={getattr(cfg, k)!r}" for k in _changed_fields(cfg) if k not in shared]
    if lost:  # e.g. --policy.backbone.conv_stem=true (SmolVLM's) then a PaliGemma preset: say so, never drop it
        raise ValueError(
            f"policy.backbone.preset={cfg.preset!r} switches the backbone to {family!r}, which has no option "
            f"{', '.join(lost)} (set for {cfg.type!r}); remove it or pick a {cfg.type!r} preset"
        )
    return target(preset=preset, **{k: getattr(cfg, k) for k in shared if k != "preset"})


def _changed_fields(cfg) -> list[str]:
    """The dataclass fields of ``cfg`` that differ from their defaults."""
    changed = []
    for f in dataclasses.fields(cfg):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if getattr(cfg, f.name) != default:
            changed.append(f.name)
    return changed


@dataclass
class PolicyConfig:
    backbone: BackboneConfig = field(default_factory=_default_backbone)
    head: HeadConfig = field(default_factory=_default_head)
    chunk_size: int = 10  # H: actions predicted per chunk
    n_action_steps: int = 5  # actions executed from each chunk before predicting again
    temporal_ensemble_coeff: float | None = None  # ACT-style: predict every step, average overlapping chunks
    # CogACT-style instead: predict every step, weigh each earlier prediction of a step by exp(alpha * cos)
    # with the newest one (0: plain average); CogACT used 0.1
    adaptive_ensemble_alpha: float | None = None
    state_norm: str = "mean_std"  # mean_std | min_max | quantile
    action_norm: str | None = None  # mean_std | min_max | quantile; None: the head's own (bounded for token heads)
    # Widths the model is built for: the robot's state and actions are zero-padded to them (0: no padding).
    # pi0, pi0.5 and SmolVLA use 32, so one checkpoint fits robots of any width up to 32 and the flow
    # noise has the same shape (B, H, 32) as in LeRobot and openpi.
    max_state_dim: int = 0
    max_action_dim: int = 0
    inference_steps: int | None = None  # denoising / integration steps at sampling (head default when None)
    # Real-time chunking when a request carries the previous chunk's remainder (flow, diffusion heads)
    rtc: RTCConfig = field(default_factory=RTCConfig)
    # Filled from the dataset by the trainer; stored so a checkpoint is self-contained.
    cameras: list[str] = field(default_factory=list)
    state_dim: int = 0
    action_dim: int = 0
    fps: float = 0.0
    image_size: int = 0  # square side of the training images (0: unknown or not square); evaluation renders at it
    state_key: str = "observation.state"  # dataset key the state came from (environment_state = privileged)
    # Training only: a probe on the image features predicts this dataset feature (vla/models/auxiliary.py).
    auxiliary: AuxiliaryConfig = field(default_factory=AuxiliaryConfig)

    def __post_init__(self):
        self.backbone = resolve_backbone_config(self.backbone)
        self.action_norm = self.action_norm or self.head.default_action_norm
        self.head.check_action_norm(self.action_norm)
        if self.n_action_steps > self.chunk_size:
            raise ValueError(f"policy.n_action_steps={self.n_action_steps} exceeds policy.chunk_size={self.chunk_size}")
        for name in ("temporal_ensemble_coeff", "adaptive_ensemble_alpha"):
            if getattr(self, name) is not None and self.n_action_steps != 1:
                raise ValueError(f"policy.{name} needs policy.n_action_steps=1 (a new chunk every step)")
        if self.temporal_ensemble_coeff is not None and self.adaptive_ensemble_alpha is not None:
            raise ValueError("policy.temporal_ensemble_coeff and policy.adaptive_ensemble_alpha exclude each other")
        for name, dim, width in (
            ("state", self.state_dim, self.max_state_dim),
            ("action", self.action_dim, self.max_action_dim),
        ):
            if width and dim > width:
                raise ValueError(f"policy.max_{name}_dim={width} is smaller than the dataset's {name} width {dim}")

    @property
    def privileged_state(self) -> bool:
        """Whether the state is the simulator's privileged one (LeRobot's ``observation.environment_state``:
        object and goal positions), which a robot with cameras and proprioception does not have."""
        return self.state_key == OBS_ENV_STATE

    def inputs_description(self) -> str:
        """What the policy sees, in words, for reports: a published result must say it."""
        cams = ", ".join(f"`{c}`" for c in self.cameras)
        size = f" at {self.image_size} px" if self.image_size else ""
        kind = (
            "**privileged** simulator state (object and goal positions; no real robot has it)"
            if self.privileged_state
            else "proprioception"
        )
        text = f"cameras {cams}{size}, the instruction, and `{self.state_key}` ({self.state_dim} dims: {kind})"
        if self.auxiliary.enabled:
            what = "privileged, not an input" if self.auxiliary.key == OBS_ENV_STATE else "not an input"
            text += (
                f"; training only: auxiliary target `{self.auxiliary.key}` ({self.auxiliary.dim} dims: {what}, "
                f"weight {self.auxiliary.weight:g})"
            )
        return text

    @property
    def model_state_dim(self) -> int:
        """The state width the backbone/head are built for (after padding)."""
        return self.max_state_dim or self.state_dim

    @property
    def model_action_dim(self) -> int:
        """The action width the head predicts (after padding); chunks are cut back to ``action_dim``."""
        return self.max_action_dim or self.action_dim


class Policy(nn.Module):
    def __init__(self, config: PolicyConfig, stats: dict | None = None, architecture: str | Path | None = None):
        """``architecture``: a checkpoint's ``backbone/`` folder to rebuild the VLM from (no hub, no preset)."""
        super().__init__()
        if not config.cameras or config.state_dim <= 0 or config.action_dim <= 0:
            raise ValueError(
                "PolicyConfig needs cameras, state_dim and action_dim (the trainer fills them from the dataset); "
                f"got cameras={config.cameras}, state_dim={config.state_dim}, action_dim={config.action_dim}"
            )
        self.config = config
        self.backbone = config.backbone.build(
            state_dim=config.model_state_dim,
            num_cameras=len(config.cameras),
            architecture=str(architecture) if architecture is not None else None,
        )
        config.backbone.image_size = self.backbone.image_size  # the config then describes the model it built
        self.head = config.head.build(self.backbone, config.chunk_size, config.model_action_dim)
        modes = {"state": config.state_norm, "actions": config.action_norm}
        dims = {"state": config.state_dim, "actions": config.action_dim}
        self.aux_probe = build_probe(config.auxiliary, self.backbone.width, len(config.cameras), stats)
        if self.aux_probe is not None:  # training only: inference never calls it
            modes[T.AUX_TARGET], dims[T.AUX_TARGET] = "mean_std", config.auxiliary.dim
        # A mixture of embodiments keeps one normalizer per member ({"members": [...]}, selected per
        # sample by dataset_index); member 0 is the primary robot that inference serves by default.
        members = (stats or {}).get("members") or [stats or {}]
        self.normalizers = nn.ModuleList(
            Normalizer(m, {k: v for k, v in modes.items() if k in m}) if m else Normalizer.empty(dims, modes)
            for m in members
        )
        self.stats = _jsonable(stats or {})
        self.reset()

    # ---- normalization --------------------------------------------------------------------------
    def _normalize(self, name: str, x: torch.Tensor, dataset_index: torch.Tensor | None) -> torch.Tensor:
        if len(self.normalizers) == 1 or dataset_index is None:
            return self.normalizers[0].normalize(name, x)
        out = x.clone()
        for i, norm in enumerate(self.normalizers):
            rows = dataset_index == i
            if rows.any():
                out[rows] = norm.normalize(name, x[rows])
        return out

    # ---- training -------------------------------------------------------------------------------
    def model_inputs(self, batch: dict) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """(backbone inputs, normalized state zero-padded to the model's width, its mask) of a batch."""
        state = self._normalize("state", batch["state"].float(), batch.get("dataset_index"))
        state_mask = batch.get("state_mask")
        if state_mask is None:
            state_mask = torch.ones_like(state, dtype=torch.bool)
        state = pad_last(state * state_mask.to(state.dtype), self.config.model_state_dim)
        state_mask = pad_last(state_mask.bool(), self.config.model_state_dim)
        image_mask = batch.get("image_mask")
        if image_mask is None:
            image_mask = torch.ones(batch["images"].shape[:2], dtype=torch.bool, device=batch["images"].device)
        if T.TEXT_IDS in batch:  # tokenized already: tensors only, as an exported graph runs it
            inputs = self.backbone.assemble_inputs(batch["images"], image_mask, batch[T.TEXT_IDS], batch[T.TEXT_MASK])
        else:
            inputs = self.backbone.prepare_inputs(
                batch["images"], image_mask, batch["instruction"], state=state, state_mask=state_mask
            )
        return inputs, state, state_mask

    def _prefix_fn(self, batch: dict) -> tuple[functools.partial, dict]:
        """Prepare inputs once; return a closure that runs the backbone (heads call it as they need)
        and the normalized state, which heads conditioning on the state directly also receive."""
        inputs, state, state_mask = self.model_inputs(batch)
        fn = functools.partial(self.backbone.encode, inputs, state, state_mask=state_mask, with_kv=self.head.needs_kv)
        return fn, {"state": state, "state_mask": state_mask}

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """Loss on a canonical batch in raw units (see vla/types.py).

        ``batch["noise"]`` (B, H, model_action_dim) and ``batch["time"]`` (B,), when given, replace the
        flow head's random draws: the same batch, noise and time give the same loss (parity tests).
        ``batch["generators"]`` (B per-sample generators, see vla.utils.sample_rng; the trainer's batches
        carry them) is where stochastic heads draw each sample's noise and time; without it, the global RNG.
        """
        self._check_batch(batch, with_actions=True)
        actions = self._normalize("actions", batch["actions"].float(), batch.get("dataset_index"))  # (B, H, D)
        b, h, d = actions.shape
        width = self.config.model_action_dim
        prefix_fn, state = self._prefix_fn(batch)
        dim_mask = batch.get("action_dim_mask", torch.ones(b, d, dtype=torch.bool, device=actions.device))
        target = {
            **state,
            "actions": pad_last(actions, width),
            "action_pad": batch.get("action_pad", torch.zeros(b, h, dtype=torch.bool, device=actions.device)),
            "action_dim_mask": pad_last(dim_mask.bool(), width),  # padded dims never reach the loss
        }
        target.update({k: batch[k] for k in ("noise", "time", T.GENERATORS) if batch.get(k) is not None})
        if self.aux_probe is None:
            return self.head.loss(prefix_fn, target)
        prefix_fn = RecordingPrefixFn(prefix_fn)  # the probe reads the head's backbone pass: no second one
        loss, metrics = self.head.loss(prefix_fn, target)
        aux = auxiliary_target(batch, self.config.auxiliary)  # (B, A) raw units
        aux = self._normalize(T.AUX_TARGET, aux, batch.get(T.DATASET_INDEX))
        features = self.backbone.camera_features(prefix_fn.recorded, len(self.config.cameras))  # (B, N, W)
        return add_auxiliary_loss(loss, metrics, self.aux_probe.loss(features, aux), self.config.auxiliary.weight)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        # DDP/DeepSpeed hook into forward(), so the trainer calls policy(batch), never compute_loss directly.
        return self.compute_loss(batch)

    # ---- inference ------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_chunk(
        self,
        observation: dict,
        num_steps: int | None = None,
        seed: int | list[int] | None = None,
        embodiment: int = 0,
        noise: torch.Tensor | None = None,
        prev_chunk: torch.Tensor | list | None = None,
        inference_delay: int | list[int] | None = None,
    ) -> torch.Tensor:
        """Observation batch -> (B, H, D) raw units; see ``predict_plan``."""
        return self.predict_plan(observation, num_steps, seed, embodiment, noise, prev_chunk, inference_delay)[0]

    @torch.no_grad()
    def predict_plan(
        self,
        observation: dict,
        num_steps: int | None = None,
        seed: int | list[int] | None = None,
        embodiment: int = 0,
        noise: torch.Tensor | None = None,
        prev_chunk: torch.Tensor | list | None = None,
        inference_delay: int | list[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The chunk and how many of its leading actions to execute, (B,) long, when the head decides that
        (MoH with ``moh.consensus``), else None: ``n_action_steps`` does.

        Observation batch (images (B,N,3,H,W) float [0,1] or uint8, state (B,S), instruction) -> (B, H, D) raw units.

        ``seed``: an int makes stochastic heads (diffusion, flow) reproducible for the whole batch; a list
        of B ints gives each row its own initial noise, so a sample's chunk does not depend on which other
        samples share its batch (the evaluation runner relies on this across --num-envs). Without a seed,
        fresh noise comes from the global RNG, as sampling should. ``noise`` (B, H, model_action_dim)
        gives the initial noise itself (the same noise as another stack, to compare chunks).

        Real-time chunking (``policy.rtc``, vla/models/heads/rtc.py): ``prev_chunk`` is the previous chunk's
        unexecuted remainder in raw units, aligned with the new chunk (row i's action k is for the same step as
        the new chunk's k): a (B, K, D) tensor, or one (K_i, D) array or None per row (K_i <= H; None or empty:
        that row has none). ``inference_delay`` (an int, or one per row): how many of its leading actions the
        robot plays while this chunk is computed; those are frozen, the rest of the overlap softly guided.
        """
        self._check_batch(observation, with_actions=False)
        obs = dict(observation)
        images = obs["images"]
        if images.dtype == torch.uint8:
            obs["images"] = images = images.float() / 255.0
        steps = num_steps or self.config.inference_steps
        rng = contextlib.nullcontext()
        if seed is not None:
            rng = torch.random.fork_rng(devices=[images.device] if images.is_cuda else [])
        with rng:
            if noise is not None:
                check_shape(
                    "noise", noise, "B H D", B=images.shape[0], H=self.config.chunk_size, D=self.config.model_action_dim
                )
                noise = noise.to(images.device, torch.float32)
            elif isinstance(seed, list | tuple):
                if len(seed) != images.shape[0]:
                    raise ValueError(f"seed: expected {images.shape[0]} per-sample seeds, got {len(seed)}")
                shape = (len(seed), self.config.chunk_size, self.config.model_action_dim)
                gens = [torch.Generator().manual_seed(int(s)) for s in seed]
                noise = sample_rng.randn(shape, gens, images.device)  # (B, H, D), row i from seed i alone
                seed = hash(tuple(int(s) for s in seed)) % 2**63
            if seed is not None:
                torch.manual_seed(seed)
            mark_step()  # a new chunk: outputs of earlier CUDA-graph replays are no longer read
            prefix_fn, state = self._prefix_fn(obs)
            b, d = images.shape[0], self.config.model_action_dim
            real_dims = pad_last(torch.ones(b, self.config.action_dim, dtype=torch.bool, device=images.device), d)
            inputs = {**state, "noise": noise, "action_dim_mask": real_dims}
            guidance = self._rtc_guidance(prev_chunk, inference_delay, real_dims, embodiment)
            if guidance is not None:
                inputs[GUIDANCE] = guidance
            chunk, execute = self.head.sample_plan(prefix_fn, inputs, num_steps=steps)  # (B, H, Dw) normalized
        chunk = chunk[..., : self.config.action_dim].float()  # padded action dims are not the robot's
        return self.normalizers[embodiment].unnormalize("actions", chunk), execute

    def _rtc_guidance(
        self, prev_chunk, inference_delay, real_dims: torch.Tensor, embodiment: int
    ) -> RTCGuidance | None:
        """The head's RTC inputs (normalized, padded to the model's widths), or None without a previous chunk."""
        if prev_chunk is None:
            if inference_delay:
                raise ValueError("inference_delay needs prev_chunk (the previous chunk's unexecuted remainder)")
            return None
        if not self.head.supports_rtc:
            raise ValueError(
                f"prev_chunk: real-time chunking needs a flow (without mean_flow or moh) or diffusion head; this "
                f"policy's head is {self.config.head.type!r}"
            )
        b = real_dims.shape[0]
        rows = list(prev_chunk)
        if len(rows) != b:
            raise ValueError(f"prev_chunk: expected one previous chunk per observation ({b}), got {len(rows)}")
        delays = list(inference_delay) if isinstance(inference_delay, list | tuple | torch.Tensor) else None
        delays = [int(d) for d in delays] if delays is not None else [int(inference_delay or 0)] * b
        normalized = []
        for i, row in enumerate(rows):
            if row is None or len(row) == 0:
                normalized.append(None)
                continue
            row = torch.as_tensor(np.asarray(row) if not torch.is_tensor(row) else row)
            check_shape(f"prev_chunk[{i}]", row, "K D", D=self.config.action_dim)
            if row.shape[0] > self.config.chunk_size:
                raise ValueError(
                    f"prev_chunk[{i}]: {row.shape[0]} actions exceed the chunk size {self.config.chunk_size}"
                )
            row = self.normalizers[embodiment].normalize("actions", row.float().to(real_dims.device))
            normalized.append(pad_last(row, self.config.model_action_dim))
        return RTCGuidance.build(
            self.config.rtc, normalized, delays, self.config.chunk_size, real_dims, self.head.rtc_trained
        )

    def action_queue(self, n_action_steps: int | None = None) -> ActionQueue:
        """How this policy turns chunks into actions, for whoever plays them (``select_action``, the
        evaluation runner, one queue per env and episode): a new chunk every ``n_action_steps`` (the
        config's unless given), merged by ACT temporal ensembling when ``temporal_ensemble_coeff`` is set."""
        return ActionQueue(
            ensemble_coeff=self.config.temporal_ensemble_coeff,
            replan_every=n_action_steps or self.config.n_action_steps,
            adaptive_alpha=self.config.adaptive_ensemble_alpha,
        )

    @property
    def supports_rtc(self) -> bool:
        """Whether requests may carry a previous chunk's remainder (real-time chunking): the head decides."""
        return self.head.supports_rtc

    def use_ensembling(self, temporal_coeff: float | None = None, adaptive_alpha: float | None = None) -> None:
        """Play a new chunk every step, blended by ACT's temporal (``temporal_coeff``) or CogACT's adaptive
        (``adaptive_alpha``) ensembling, whatever the checkpoint was trained with: ensembling is a choice of
        inference (``vla eval`` / ``vla serve`` flags), the weights are the same."""
        self.config = dataclasses.replace(
            self.config,
            n_action_steps=1,
            temporal_ensemble_coeff=temporal_coeff,
            adaptive_ensemble_alpha=adaptive_alpha,
        )
        self.reset()

    def reset(self) -> None:
        """Forget queued actions (call at every episode start)."""
        self._actions = self.action_queue()

    @torch.no_grad()
    def select_action(self, observation: dict) -> torch.Tensor:
        """One action (B, D) per call; a new chunk every ``n_action_steps`` (every step when ensembling;
        after the agreed prefix with MoH consensus)."""
        if self._actions.needs_chunk and not self.head.chooses_execute:
            self._actions.add_chunk(self.predict_chunk(observation), self._actions.t)  # (B, H, D)
        elif self._actions.needs_chunk:  # MoH consensus: play the prefix the horizons agree on
            chunk, execute = self.predict_plan(observation)  # (B, H, D), (B,)
            # the streams of a batch share one queue (lock step): the shortest agreed prefix of them all
            self._actions.add_chunk(chunk, self._actions.t, int(execute.min()))  # sync point: once per chunk
        return self._actions.pop()

    # ---- checks ---------------------------------------------------------------------------------
    def _check_batch(self, batch: dict, with_actions: bool) -> None:
        required = ["images", "state", "instruction"] + (["actions"] if with_actions else [])
        check_keys("policy input", batch, required)
        dims = check_shape("images", batch["images"], "B N 3 Hi Wi", N=len(self.config.cameras))
        check_shape("state", batch["state"], "B S", B=dims["B"], S=self.config.state_dim)
        if len(batch["instruction"]) != dims["B"]:
            raise ValueError(f"instruction: expected {dims['B']} strings, got {len(batch['instruction'])}")
        if with_actions:
            check_shape(
                "actions", batch["actions"], "B H D", B=dims["B"], H=self.config.chunk_size, D=self.config.action_dim
            )

    # ---- checkpoints ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Self-contained checkpoint dir, written atomically (see ``write_checkpoint``)."""
        with atomic_dir(path) as tmp:
            self.write_checkpoint(tmp)
        return Path(path)

    def write_checkpoint(
        self, directory: str | Path, state_dict: dict | None = None, metadata: dict[str, str] | None = None
    ) -> None:
        """Weights (safetensors), config, statistics and head extras (e.g. the FAST tokenizer).

        ``state_dict`` lets the trainer pass weights gathered from DeepSpeed ZeRO-3 shards, and
        vla/models/quantize.py quantized weights flattened to plain tensors, with ``metadata`` (the
        safetensors header) describing them. Tied tensors (shared storage) are stored once.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        sd = state_dict if state_dict is not None else self.state_dict()
        seen, tensors = set(), {}
        for k, v in sd.items():
            key = (v.data_ptr(), v.shape, v.dtype) if v.device.type != "meta" else (k,)
            if key in seen:
                continue
            seen.add(key)
            tensors[k] = v.detach().contiguous().cpu()
        save_file(tensors, str(directory / WEIGHTS_FILE), metadata=metadata)
        self.backbone.save_architecture(directory / BACKBONE_DIR)
        (directory / CONFIG_FILE).write_text(json.dumps(to_dict(self.config), indent=2))
        (directory / STATS_FILE).write_text(json.dumps(self.stats, indent=2))
        if getattr(getattr(self.head, "tokenizer", None), "is_fitted", False):  # FAST: the fitted tokenizer
            (directory / HEAD_DIR).mkdir(exist_ok=True)
            self.head.save_tokenizer(directory / HEAD_DIR)

    @staticmethod
    def load_config(path: str | Path) -> PolicyConfig:
        path = Path(path)
        for name in (CONFIG_FILE, WEIGHTS_FILE, STATS_FILE):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path} is not a policy checkpoint: missing {name}")
        return from_dict(PolicyConfig, json.loads((path / CONFIG_FILE).read_text()))

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Policy:
        """One call: config, statistics, head extras and weights; shapes must match exactly.

        Offline: the VLM is rebuilt from the checkpoint's own ``backbone/`` folder (model config and
        processor), never from the hub id or directory it was first loaded from.
        ``device="auto"``: the GPU when there is one."""
        path = Path(path)
        config = cls.load_config(path)
        stats = json.loads((path / STATS_FILE).read_text())
        device = resolve_device(device)
        with torch.device(device):  # random init straight on the GPU: a 3B model takes minutes on the CPU
            policy = cls(config, stats, architecture=architecture_of(path))
        if (path / HEAD_DIR).is_dir():
            policy.head.load_tokenizer(path / HEAD_DIR)
        quantization = _quantization_of(path)
        if quantization is not None:  # `vla quantize`: int8/fp8 weights stored as torchao writes them
            from vla.models.quantize import load_quantized

            load_quantized(policy, path / WEIGHTS_FILE, quantization, device)
        else:
            policy.load_weights(load_file(str(path / WEIGHTS_FILE)), source=path / WEIGHTS_FILE, strict=True)
        return policy.to(device).eval()

    def load_weights(self, tensors: dict, source, strict: bool = True) -> dict[str, list[str]]:
        """Copy matching tensors in; tied parameters saved once count as loaded.

        strict: any missing, unexpected or mis-shaped key is an error naming it. Otherwise
        mis-shaped and missing keys keep their fresh initialization and are reported.
        A checkpoint without LoRA loads into a policy with it: peft renames a wrapped layer's weight
        ``x.base_layer.weight``, which takes the checkpoint's ``x.weight`` (the adapters start fresh).
        """
        own = self.state_dict()
        tensors = dict(tensors)
        for key in own:
            plain = key.replace(".base_layer.", ".")
            if plain != key and key not in tensors and plain in tensors:
                tensors[key] = tensors[plain]
        consumed = {k.replace(".base_layer.", ".") for k in own if ".base_layer." in k}
        tensors = {k: v for k, v in tensors.items() if k in own or k not in consumed}
        mismatched = [k for k, v in tensors.items() if k in own and own[k].shape != v.shape]
        unexpected = [k for k in tensors if k not in own]
        usable = {k: v for k, v in tensors.items() if k in own and k not in mismatched}
        self.load_state_dict(usable, strict=False)
        loaded_ptrs = {own[k].data_ptr() for k in usable}
        missing = [k for k in own if k not in usable and own[k].data_ptr() not in loaded_ptrs]
        if strict and (missing or unexpected or mismatched):
            detail = [f"{k}: checkpoint {tuple(tensors[k].shape)} vs policy {tuple(own[k].shape)}" for k in mismatched]
            raise ValueError(
                f"{source}: weights do not match the policy: missing {missing[:8]}, unexpected {unexpected[:8]}, "
                f"shape mismatch {detail[:8]}"
            )
        return {
            "loaded": sorted(usable),
            "reinitialized": sorted(set(missing) | set(mismatched)),
            "unexpected": unexpected,
        }


def _quantization_of(checkpoint: Path):
    """A quantized checkpoint's QuantizeConfig (vla/models/quantize.py), None for a float one; torchao is
    imported only for quantized checkpoints."""
    from vla.models.quantize import QUANT_FILE, read_quantization

    return read_quantization(checkpoint)[0] if (checkpoint / QUANT_FILE).is_file() else None


def architecture_of(checkpoint: str | Path) -> Path | None:
    """A checkpoint's saved VLM architecture (``backbone/``), or None for checkpoints written before it existed."""
    path = Path(checkpoint) / BACKBONE_DIR
    return path if path.is_dir() else None


def pad_last(x: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad (False for bool) the last dim of ``x`` up to ``width`` (LeRobot's ``pad_vector``)."""
    if x.shape[-1] >= width:
        return x
    return torch.nn.functional.pad(x, (0, width - x.shape[-1]))


def _jsonable(stats: dict) -> dict:
    """Statistics as plain lists (they are saved as stats.json beside the weights)."""
    if "members" in stats:
        return {"members": [_jsonable(m) for m in stats["members"]]}
    return {k: {s: np.asarray(v, dtype=np.float64).tolist() for s, v in d.items()} for k, d in stats.items()}


def checkpoint_hash(path: str | Path) -> str:
    """Short content hash of a checkpoint's weights, recorded in evaluation protocols."""
    import hashlib

    h = hashlib.sha256()
    with open(Path(path) / WEIGHTS_FILE, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]
