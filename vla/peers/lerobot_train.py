"""`vla peer train`: LeRobot's own policies (Diffusion Policy, ACT, ...) trained by LeRobot's own entry point.

    vla peer train --recipe configs/peers/lerobot_diffusion_cpu.yaml --dataset outputs/demo/data --minutes 4 --out OUT

The training is ``lerobot.scripts.lerobot_train.train`` itself: LeRobot's dataset and episode-aware sampler,
its processors (normalization statistics), its optimizer and scheduler presets and its checkpoints, so
``OUT/checkpoints/last/pretrained_model`` is what ``lerobot-train`` writes (config.json, model.safetensors,
train_config.json, policy_preprocessor/postprocessor with their statistics) and
``PreTrainedPolicy.from_pretrained`` loads it (``vla eval --policy lerobot:DIR`` does). The recipe is a
``lerobot-train`` config file (``TrainPipelineConfig``). This driver adds the three things a side-by-side
needs and ``lerobot-train`` does not do by itself:

* **No privileged inputs.** A fresh LeRobot policy reads every observation feature of the dataset, so
  MetaWorld's ``observation.environment_state`` (object and goal positions, LeRobot's ``FeatureType.ENV``)
  would feed it. The policy's ``input_features`` are set to the dataset's cameras and proprioception
  (``VISUAL`` and ``STATE`` features) only, and the saved config is checked for any ``ENV`` input.
* **A wall-clock budget.** ``--minutes M`` first times LeRobot's training step with a short calibration run
  of the same config (``train`` accepts the Accelerator it runs with; ours notes the time of every
  ``backward``), then trains ``M * 60 / seconds_per_step`` steps. The number of steps is fixed before
  training because the schedule depends on it (Diffusion Policy's cosine decay is laid over all steps).
  ``--steps N`` fixes the count instead.
* **A record**, ``OUT/peer_train.json``: the inputs, the calibration, the steps, the time they took and the
  loss curve.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUMMARY_FILE = "peer_train.json"
WARMUP_STEPS = 3  # calibration steps left out of the timing (loader start-up, first allocations)


@dataclass
class PeerTrainConfig:
    recipe: str  # a lerobot-train config file (configs/peers/lerobot_*_cpu.yaml)
    dataset: str  # a LeRobot v3 dataset folder (meta/info.json inside)
    out: str  # LeRobot's output_dir; must not exist yet (LeRobot does not overwrite a run)
    minutes: float | None = None  # train for this long: steps from a measured time per step
    steps: int | None = None  # or exactly this many steps
    calibration_steps: int = 20  # steps timed to turn --minutes into steps
    lerobot_args: list[str] = field(default_factory=list)  # more lerobot-train overrides, e.g. --batch_size=32

    def validate(self) -> None:
        """Bad input named before anything is built."""
        if (self.minutes is None) == (self.steps is None):
            raise ValueError(
                f"give exactly one of --minutes and --steps; got minutes={self.minutes}, steps={self.steps}"
            )
        if self.minutes is not None and self.minutes <= 0:
            raise ValueError(f"--minutes must be > 0; got {self.minutes}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"--steps must be >= 1; got {self.steps}")
        if self.calibration_steps <= WARMUP_STEPS + 1:
            raise ValueError(f"--calibration-steps must be > {WARMUP_STEPS + 1}; got {self.calibration_steps}")
        if not Path(self.recipe).is_file():
            raise FileNotFoundError(f"recipe {self.recipe} does not exist (see configs/peers/)")
        if not (Path(self.dataset) / "meta" / "info.json").is_file():
            raise FileNotFoundError(f"dataset {self.dataset} is not a LeRobot v3 dataset (no meta/info.json)")
        if Path(self.out).exists():
            raise ValueError(f"--out {self.out} already exists: LeRobot does not overwrite a run; choose a new folder")


def peer_input_features(dataset_features: dict[str, dict]) -> dict[str, Any]:
    """The policy inputs of a dataset for a peer: its cameras and proprioception, never privileged state.

    LeRobot types every feature (``dataset_to_policy_features``); ``ENV`` is the simulator's own state
    (``observation.environment_state``), which a policy deployed on images and joints does not have."""
    from lerobot.configs.types import FeatureType
    from lerobot.utils.feature_utils import dataset_to_policy_features

    features = dataset_to_policy_features(dataset_features)
    inputs = {k: f for k, f in features.items() if f.type in (FeatureType.VISUAL, FeatureType.STATE)}
    if not any(f.type is FeatureType.VISUAL for f in inputs.values()):
        raise ValueError(f"the dataset has no camera feature (observation.images.*) among {sorted(dataset_features)}")
    return inputs


def privileged_inputs(policy_config) -> list[str]:
    """The inputs of a LeRobot policy config that are simulator state (``FeatureType.ENV``)."""
    from lerobot.configs.types import FeatureType

    return sorted(k for k, f in policy_config.input_features.items() if f.type is FeatureType.ENV)


def build_train_config(cfg: PeerTrainConfig, steps: int, output_dir: Path):
    """LeRobot's ``TrainPipelineConfig``: the recipe, the command line's overrides, this dataset, these inputs."""
    import draccus
    import lerobot.policies  # noqa: F401  (registers the policy config classes the recipe names)
    from lerobot.configs.train import TrainPipelineConfig
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    from vla.config import ConfigError

    dataset = Path(cfg.dataset).resolve()
    repo_id = f"local/{dataset.name}"  # a label only: the dataset is read from root
    args = [
        f"--dataset.repo_id={repo_id}",
        f"--dataset.root={dataset}",
        f"--output_dir={output_dir}",
        f"--steps={steps}",
        *cfg.lerobot_args,
    ]
    try:
        train_cfg = draccus.parse(TrainPipelineConfig, config_path=cfg.recipe, args=args)
    except (Exception, SystemExit) as e:  # draccus: a decoding error, or argparse's exit after naming the argument
        raise ConfigError(f"recipe {cfg.recipe} with {cfg.lerobot_args}: {e}") from e
    if train_cfg.policy is None:
        raise ConfigError(f"recipe {cfg.recipe} names no policy (policy.type: act | diffusion | ...)")
    if train_cfg.policy.use_amp:
        raise ConfigError("policy.use_amp: vla peer train runs in fp32; use lerobot-train for mixed precision")
    meta = LeRobotDatasetMetadata(repo_id, root=dataset)
    train_cfg.policy.input_features = peer_input_features(meta.features)
    return train_cfg


def _step_clock(policy_device: str):
    """An ``accelerate.Accelerator`` that notes the time and loss of every ``backward`` (one per training step).

    Built as LeRobot's ``train`` builds its own for one process in fp32 (scheduler stepped by LeRobot, unused
    parameters allowed, the CPU when the policy's device is the CPU)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    class StepClock(Accelerator):
        def __init__(self) -> None:
            super().__init__(
                step_scheduler_with_optimizer=False,
                mixed_precision="no",
                kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
                cpu=policy_device == "cpu",
            )
            self.times: list[float] = []
            self.losses: list[float] = []

        def backward(self, loss, **kwargs) -> None:
            super().backward(loss, **kwargs)
            self.times.append(time.perf_counter())
            self.losses.append(float(loss.detach()))

    return StepClock()


@contextlib.contextmanager
def root_logging_restored():
    """Give the root logger back its level and handlers afterwards: LeRobot's ``train`` calls its
    ``init_logging``, which clears them and sets the level to NOTSET (every DEBUG record of every library
    is then formatted and dispatched) for the rest of the process, here ours."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        yield
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers


def run_lerobot_train(train_cfg):
    """LeRobot's own training entry point on ``train_cfg``; returns the clock that timed its steps."""
    from lerobot.scripts.lerobot_train import train

    clock = _step_clock(train_cfg.policy.device)
    with root_logging_restored():
        train(train_cfg, accelerator=clock)
    if len(clock.times) != train_cfg.steps:
        raise RuntimeError(f"LeRobot ran {len(clock.times)} training steps; {train_cfg.steps} were asked for")
    return clock


def seconds_per_step(times: list[float], warmup: int = WARMUP_STEPS) -> float:
    """Mean time between consecutive steps, leaving out the first ``warmup`` (loader start-up)."""
    if len(times) < warmup + 2:
        raise ValueError(f"need at least {warmup + 2} step times to measure; got {len(times)}")
    return (times[-1] - times[warmup]) / (len(times) - 1 - warmup)


def calibrate(cfg: PeerTrainConfig) -> float:
    """Seconds per training step of this recipe on this dataset and machine: a short run of LeRobot's
    ``train`` with the same settings, into a scratch folder, with no checkpoint."""
    with tempfile.TemporaryDirectory(prefix="vla-peer-calibration-") as tmp:
        cal = build_train_config(cfg, cfg.calibration_steps, Path(tmp) / "run")
        cal.save_checkpoint = False
        return seconds_per_step(run_lerobot_train(cal).times)


def loss_curve(losses: list[float], every: int) -> list[dict]:
    """Mean loss over each window of ``every`` steps (LeRobot's log_freq), labelled by the window's last step."""
    every = max(1, every)
    return [
        {"step": min(i + every, len(losses)), "loss": round(statistics.fmean(losses[i : i + every]), 5)}
        for i in range(0, len(losses), every)
    ]


def pretrained_model_dir(output_dir: str | Path) -> Path:
    """Where lerobot-train leaves the final policy: ``OUT/checkpoints/last/pretrained_model``."""
    from lerobot.utils.constants import CHECKPOINTS_DIR, LAST_CHECKPOINT_LINK, PRETRAINED_MODEL_DIR

    return Path(output_dir) / CHECKPOINTS_DIR / LAST_CHECKPOINT_LINK / PRETRAINED_MODEL_DIR


def train_peer(cfg: PeerTrainConfig) -> dict:
    """Calibrate (with ``--minutes``), train with LeRobot, check the saved policy's inputs, write the record."""
    import torch
    from lerobot.configs.policies import PreTrainedConfig

    cfg.validate()
    out = Path(cfg.out).resolve()
    calibration = None
    steps = cfg.steps
    if cfg.minutes is not None:
        per_step = calibrate(cfg)
        steps = max(1, int(cfg.minutes * 60 / per_step))
        calibration = {"steps": cfg.calibration_steps, "seconds_per_step": round(per_step, 4), "chosen_steps": steps}
        print(f"vla peer train: {per_step:.3f} s per step -> {steps} steps in {cfg.minutes:g} min", flush=True)
    train_cfg = build_train_config(cfg, steps, out)
    start = time.perf_counter()
    clock = run_lerobot_train(train_cfg)
    run_wall_s = time.perf_counter() - start

    policy_dir = pretrained_model_dir(out)
    saved = PreTrainedConfig.from_pretrained(policy_dir)
    leaked = privileged_inputs(saved)
    if leaked:
        raise RuntimeError(f"{policy_dir}: the trained policy reads privileged simulator state {leaked}")
    window = max(1, steps // 10)
    summary = {
        "policy_type": saved.type,
        "pretrained_model": str(policy_dir),
        "recipe": str(cfg.recipe),
        "lerobot_args": list(cfg.lerobot_args),
        "dataset": str(Path(cfg.dataset).resolve()),
        "input_features": {k: {"type": f.type.value, "shape": list(f.shape)} for k, f in saved.input_features.items()},
        "steps": steps,
        "batch_size": train_cfg.batch_size,
        "minutes": cfg.minutes,
        "calibration": calibration,
        "train_steps_s": round(clock.times[-1] - clock.times[0], 1),
        "seconds_per_step": round(seconds_per_step(clock.times), 4) if steps >= WARMUP_STEPS + 2 else None,
        "run_wall_s": round(run_wall_s, 1),
        "first_loss": round(statistics.fmean(clock.losses[:window]), 5),
        "final_loss": round(statistics.fmean(clock.losses[-window:]), 5),
        "loss_curve": loss_curve(clock.losses, train_cfg.log_freq),
        "torch_threads": torch.get_num_threads(),
        "device": train_cfg.policy.device,
        "lerobot_version": importlib.metadata.version("lerobot"),
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary
