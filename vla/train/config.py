"""TrainConfig: what `vla train` parses from a YAML recipe plus dotted overrides.

vla train --config configs/experiments/tiny_cpu.yaml --train.steps=200 --policy.head.type=diffusion
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data_pipelines.augment import AugmentConfig
from vla.config import at_least
from vla.models.policy import PolicyConfig
from vla.train.optim import OptimConfig


@dataclass
class DatasetConfig:
    """Where the data is and how its keys map to the canonical names.

    ``root`` is a local LeRobot v3 dataset (a v2.0/v2.1 one is read through a cached v3 copy,
    data_pipelines.legacy); ``repo_id`` a hub id (or the name under root).
    ``mixture`` lists more datasets, as "root[:weight]" strings, sampled with those weights.
    """

    root: str | None = None
    repo_id: str | None = None
    cameras: list[str] | None = None  # dataset keys used as cameras (default: every observation.images.*)
    state_key: str = "observation.state"  # "observation.environment_state": MetaWorld's privileged 39-dim state
    action_key: str = "action"
    mixture: list[str] = field(default_factory=list)
    weight: float = 1.0  # sampling weight of `root` within a mixture
    camera_layout: str = "union"  # mixtures: "union" of camera names, or "max" (slots by position)
    episodes: list[int] | None = None  # a subset of dataset.root's episodes (default: all; mixture members: all)
    image_size: int | None = None  # resize on load (None: keep; the backbone resizes anyway)
    cache: bool = False  # decode every sample once into memory (small datasets: removes the decoding bottleneck)
    cache_max_gb: float = 8.0
    cache_persist: bool = True  # keep the decoded samples on disk; the next run with the same data loads them
    cache_dir: str | None = None  # where (None: $VLA_CACHE_DIR/samples, else ~/.cache/vla/samples)
    validate: bool = True  # run vla data validate's fast checks first and refuse data with errors
    # Statistics to normalize state and actions with. None: computed exactly over the episodes trained on.
    # A path: a stats file in LeRobot's meta/stats.json schema (`vla data stats` writes one; a dataset root or a
    # streamed dataset's URL means its meta/stats.json), or a checkpoint folder (a fine-tuning base's or another
    # run's stats.json).
    stats: str | None = None
    # Before the first step, normalize a sample of the data with the run's statistics (whatever their source,
    # a resumed checkpoint's included) and refuse the run if some dimension lands far from where they put it.
    check_stats: bool = True
    # Read the dataset incrementally instead of opening it whole (datasets larger than the disk): root is a path or
    # a URL (s3://, gs://, hf://datasets/ID, file://), its data files are read one at a time, each rank reads its
    # own share, shuffle_buffer frames mix it, and --resume=true continues where the stream was
    # (data_pipelines/streaming.py).
    streaming: bool = False
    shuffle_buffer: int = 1000

    def __post_init__(self):
        at_least("dataset.shuffle_buffer", self.shuffle_buffer, 1)


@dataclass
class LoopConfig:
    steps: int = 1000  # optimizer steps
    batch_size: int = 8  # per process, per micro-step
    grad_accum: int = 1
    mixed_precision: str = "no"  # no | bf16 | fp16
    seed: int = 0
    num_workers: int = 2
    log_every: int = 10
    save_every: int = 500  # 0: only the final checkpoint
    keep_last: int = 3
    ema_decay: float | None = None  # e.g. 0.999; evaluation/export can use the EMA weights
    eval_every: int = 0  # >0: simulation evaluation during training (needs eval_suite)
    eval_suite: str | None = None
    eval_episodes_per_task: int = 2
    eval_max_steps: int | None = None  # override the suite's step limit (quick checks)
    eval_num_envs: int = 1  # per process: under DDP every rank plays its share of the episodes
    eval_timeout_s: float = 4 * 3600  # DDP: how long ranks that finished their share wait for the others
    compile: bool = (
        False  # regional torch.compile of the VLM's MLPs, vision layers and head blocks (vla/models/compile.py)
    )

    def __post_init__(self):
        for name, low in (
            ("steps", 1),
            ("batch_size", 1),
            ("num_workers", 0),
            ("log_every", 1),
            ("save_every", 0),
            ("keep_last", 1),
            ("eval_every", 0),
            ("eval_episodes_per_task", 1),
            ("eval_num_envs", 1),
        ):
            at_least(f"train.{name}", getattr(self, name), low)


@dataclass
class TrainConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    output_dir: str = "outputs/train"
    resume: bool = False  # continue from output_dir/checkpoints/last (exactly: model, optimizer, RNG, data)
    init_from: str | None = None  # start from a trained policy checkpoint (fine-tuning)
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "vla"

    def __post_init__(self):
        if self.train.grad_accum < 1:
            raise ValueError(f"train.grad_accum must be >= 1, got {self.train.grad_accum}")
        if str(self.train.mixed_precision).lower() in ("false", "none"):  # YAML reads a bare `no` as false
            self.train.mixed_precision = "no"
        if self.train.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"train.mixed_precision must be no|bf16|fp16, got {self.train.mixed_precision!r}")
        if self.train.eval_every and not self.train.eval_suite:
            raise ValueError("train.eval_every > 0 needs train.eval_suite (e.g. mw-easy)")
        if self.train.eval_timeout_s <= 0:
            raise ValueError(f"train.eval_timeout_s must be > 0 seconds, got {self.train.eval_timeout_s}")
