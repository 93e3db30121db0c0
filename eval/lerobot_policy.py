"""A LeRobot policy in our evaluation runner: ``vla eval --policy lerobot:DIR``.

DIR is a LeRobot pretrained-model folder (config.json, model.safetensors, the policy pre- and
post-processors with their statistics): what ``lerobot-train`` and ``vla peer train`` leave in
``OUT/checkpoints/last/pretrained_model``. LeRobot loads it (``PreTrainedConfig.from_pretrained``, the
policy class's ``from_pretrained``, ``make_pre_post_processors`` on the saved processors) and it is played
the way ``lerobot-eval`` plays it, on our suites' fixed init states, so its rows compare with our
checkpoints' row by row:

* **Every step**, the suite's observation becomes what a LeRobot gym env returns (``pixels`` per camera,
  ``agent_pos``), then goes through ``lerobot.envs.utils.preprocess_observation`` (uint8 HWC to float CHW
  in [0, 1]), the preprocessor (normalization), ``select_action`` and the postprocessor
  (unnormalization), giving one action. The runner receives chunks of one action and asks again at the
  next step; the policy's own queues decide when it predicts (ACT's chunk and temporal ensembling,
  Diffusion Policy's observation history and ``n_action_steps``).
* **One policy state per episode.** A LeRobot policy keeps its queues in the policy object and plays one
  batch in lock step, while our envs start and end episodes at different times. Each playing episode gets
  its own copy of the policy sharing the weights (a deepcopy whose memo holds every parameter and
  buffer), reset at the episode's first step. Because each chunk is one action, the runner asks for every
  playing episode in every round, so a copy whose episode is not asked for has finished and is reused.
* **Only what the policy reads.** Its input features name the cameras (rendered at the resolution it
  trained on) and the states; the suite's privileged ``env_state`` goes in only for a policy trained on
  ``observation.environment_state``, and the protocol lists the inputs.
* **Seeds.** Each step runs under torch's RNG seeded from (episode seed, step), so stochastic policies
  (Diffusion Policy's noise) repeat exactly, whatever ``--num-envs``.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eval.suites.base import Observation
from eval.vector_env import EpisodeSpec, NeedsChunk
from vla.action_queue import ActionQueue

LEROBOT_PREFIX = "lerobot:"  # --policy lerobot:DIR


def is_lerobot_policy(spec: str | None) -> bool:
    """``--policy lerobot:DIR`` (a LeRobot policy) rather than a reference policy's name."""
    return bool(spec) and spec.startswith(LEROBOT_PREFIX)


def policy_dir(spec: str) -> Path:
    """The folder of ``lerobot:DIR``; an error naming it when it is not a LeRobot pretrained model."""
    from vla.peers.lerobot_train import pretrained_model_dir

    path = Path(spec[len(LEROBOT_PREFIX) :]).expanduser()
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return path
    nested = pretrained_model_dir(path)
    hint = f"; the final policy of that training run is {nested}" if nested.is_dir() else ""
    raise FileNotFoundError(
        f"--policy {spec}: {path} is not a LeRobot pretrained-model folder (config.json and model.safetensors){hint}"
    )


@dataclass(frozen=True)
class PolicyInputs:
    """What a LeRobot policy reads, in our suites' terms."""

    keys: tuple[str, ...]  # its input features, as LeRobot names them
    cameras: tuple[str, ...]  # suite cameras, from observation.images.<camera>
    image_size: int  # the square resolution it trained on
    state: bool  # observation.state: the suite's proprioceptive state
    env_state: bool  # observation.environment_state: the suite's privileged env_state (MetaWorld)

    @classmethod
    def of(cls, config) -> PolicyInputs:
        """Read a LeRobot policy config's ``input_features``; an error names any input no suite gives."""
        from lerobot.configs.types import FeatureType
        from lerobot.utils.constants import OBS_ENV_STATE, OBS_IMAGES, OBS_STATE

        cameras, sizes, unknown = [], set(), []
        for key, feature in config.input_features.items():
            if feature.type is FeatureType.VISUAL and key.startswith(OBS_IMAGES + "."):
                cameras.append(key[len(OBS_IMAGES) + 1 :])
                sizes.add(tuple(feature.shape[1:]))
            elif (feature.type, key) not in ((FeatureType.STATE, OBS_STATE), (FeatureType.ENV, OBS_ENV_STATE)):
                unknown.append(f"{key} ({feature.type.value})")
        if unknown:
            raise ValueError(
                f"the LeRobot policy reads {unknown}, which no suite gives; suites give "
                f"{OBS_IMAGES}.<camera>, {OBS_STATE} and (MetaWorld) {OBS_ENV_STATE}"
            )
        if not cameras:
            raise ValueError(
                f"the LeRobot policy reads no camera ({OBS_IMAGES}.<camera>); inputs {list(config.input_features)}"
            )
        if len(sizes) != 1 or len({*next(iter(sizes))}) != 1:
            raise ValueError(
                f"the LeRobot policy's cameras must share one square size to be rendered; got {sorted(sizes)}"
            )
        keys = tuple(config.input_features)
        return cls(keys, tuple(cameras), next(iter(sizes))[0], OBS_STATE in keys, OBS_ENV_STATE in keys)

    def env_observation(self, obs: Observation) -> dict[str, Any]:
        """One suite observation as a LeRobot gym env returns it (a batch of one), holding only these inputs."""
        missing = [c for c in self.cameras if c not in obs["images"]]
        if missing:
            raise KeyError(f"the LeRobot policy needs cameras {missing}; the suite gives {list(obs['images'])}")
        raw: dict[str, Any] = {"pixels": {c: obs["images"][c][None] for c in self.cameras}}
        if self.state:
            raw["agent_pos"] = np.asarray(obs["state"], dtype=np.float32)[None]
        if self.env_state:
            if "env_state" not in obs:
                raise KeyError("the LeRobot policy reads observation.environment_state; this suite has no env_state")
            raw["environment_state"] = np.asarray(obs["env_state"], dtype=np.float32)[None]
        return raw


class LeRobotChunker:
    """The runner's chunk source for a LeRobot policy: one ``select_action`` per env per step."""

    executes_prefix = False  # one action per step: the queue replans every step

    def __init__(self, path: Path, device: str) -> None:
        import lerobot.policies  # noqa: F401  (registers the policy config classes)
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class, make_pre_post_processors

        from vla.utils.device import resolve_device

        self.path = path
        self.device = resolve_device(device)
        self.config = PreTrainedConfig.from_pretrained(path)
        self.config.device = self.device.type
        self.inputs = PolicyInputs.of(self.config)
        self.policy = get_policy_class(self.config.type).from_pretrained(path, config=self.config).eval()
        self.preprocessor, self.postprocessor = make_pre_post_processors(
            self.config,
            pretrained_path=str(path),
            preprocessor_overrides={"device_processor": {"device": str(self.device)}},
        )
        self._playing: dict[EpisodeSpec, Any] = {}  # episode -> its copy of the policy
        self._idle: list[Any] = []  # copies whose episode ended

    @property
    def action_dim(self) -> int:
        from lerobot.utils.constants import ACTION

        return int(self.config.output_features[ACTION].shape[0])

    def info(self, spec: str) -> dict:
        """The policy's entry in the evaluation protocol."""
        from vla.models.policy import checkpoint_hash

        info = {
            "name": spec,
            "kind": "lerobot",
            "policy_type": self.config.type,
            "checkpoint_hash": checkpoint_hash(self.path),
            "inputs": list(self.inputs.keys),
            "n_obs_steps": self.config.n_obs_steps,
            "policy_n_action_steps": getattr(self.config, "n_action_steps", None),
            "n_action_steps": 1,  # the runner observes every step; the policy's queues replan
        }
        if getattr(self.config, "temporal_ensemble_coeff", None) is not None:  # ACT's ensembled variant
            info["temporal_ensemble_coeff"] = self.config.temporal_ensemble_coeff
        return info

    def action_queue(self) -> ActionQueue:
        """A new chunk every step: the policy's own queues decide when it predicts."""
        return ActionQueue(replan_every=1)

    def _episode_policy(self, item: NeedsChunk):
        """The copy of the policy playing ``item``'s episode; a fresh (reset) one at its first step."""
        if item.step == 0:
            if item.spec in self._playing:
                raise RuntimeError(f"episode {item.spec} started twice")
            if self._idle:
                policy = self._idle.pop()
            else:  # a new copy sharing the weights: the memo maps each tensor to itself
                shared = {id(t): t for t in itertools.chain(self.policy.parameters(), self.policy.buffers())}
                policy = copy.deepcopy(self.policy, shared)
            policy.reset()
            self._playing[item.spec] = policy
        if item.spec not in self._playing:
            raise RuntimeError(f"episode {item.spec} asks for step {item.step} but never started")
        return self._playing[item.spec]

    def _act(self, policy, item: NeedsChunk) -> np.ndarray:
        import torch
        from lerobot.envs.utils import preprocess_observation

        batch = preprocess_observation(self.inputs.env_observation(item.obs))
        batch["task"] = [item.obs["instruction"]]
        batch = self.preprocessor(batch)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(item.seed)
            action = policy.select_action(batch)
        action = self.postprocessor(action)  # (1, D) in the robot's units
        return action.float().cpu().numpy()  # a chunk of one action

    def __call__(self, items: list[NeedsChunk]) -> list[np.ndarray]:
        asked = {it.spec for it in items}
        for spec in [s for s in self._playing if s not in asked]:  # ended since the last round
            self._idle.append(self._playing.pop(spec))
        return [self._act(self._episode_policy(it), it) for it in items]


def evaluate_lerobot(cfg) -> dict:
    """``vla eval --policy lerobot:DIR``: load the policy with LeRobot and run the suite (``EvalConfig`` ``cfg``)."""
    from eval.runner import render_as_trained, run_evaluation

    if cfg.n_action_steps is not None or cfg.compile:
        raise ValueError(
            "--n-action-steps and --compile do not apply to a LeRobot policy: it plays as its config says "
            "(n_action_steps, temporal_ensemble_coeff are set when training it)"
        )
    chunker = LeRobotChunker(policy_dir(cfg.policy), cfg.device)
    cfg, cameras = render_as_trained(cfg, list(chunker.inputs.cameras), chunker.inputs.image_size)
    return run_evaluation(cfg, chunker, None, chunker.info(cfg.policy), cameras, action_dim=chunker.action_dim)
