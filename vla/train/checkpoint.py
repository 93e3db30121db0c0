"""Periodic, atomic checkpoints that resume exactly.

Layout of ``OUT/checkpoints``::

    step_0000500/            a plain policy checkpoint (Policy.load works on it) plus
      obs_map.json           the dataset's observation keys -> canonical ones (when they differ), for `vla serve`
      training_state/        accelerate's state: optimizer, scheduler, RNG of every rank, EMA (the weights
                             only under DeepSpeed, which shards them; otherwise model.safetensors above)
      stream_state.json      dataset.streaming: where each rank's stream was (vla/train/streaming.py)
      trainer_state.json     the step; written last
      ema/                   the EMA weights as a plain policy checkpoint (when train.ema_decay is set)
    last -> step_0000500     symlink, replaced atomically

Each checkpoint is built in ``.step_0000500.partial`` and renamed once complete, so a
crash mid-write never leaves a directory that looks like a checkpoint. ``last`` is re-pointed
after the rename; a run killed between the two resumes from the newest complete ``step_*``
all the same (``resume`` re-points ``last`` first).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from accelerate import Accelerator

from vla.models.policy import WEIGHTS_FILE
from vla.utils.atomic import atomic_file, move_into_place

log = logging.getLogger(__name__)

STATE_DIR = "training_state"
TRAINER_STATE = "trainer_state.json"


class CheckpointManager:
    def __init__(self, root: Path, keep_last: int, accelerator: Accelerator, obs_mapping=None):
        self.root = Path(root)
        self.keep_last = keep_last
        self.acc = accelerator
        self.obs_mapping = obs_mapping  # vla.serve.obs_mapping.ObsMapping written beside the weights, for `vla serve`
        # More state of the run, as JSON files of each checkpoint: file name -> its content at a step (main process).
        self.extra_state: dict[str, Callable[[int], dict]] = {}
        if accelerator.distributed_type.name not in ("DEEPSPEED", "FSDP", "MEGATRON_LM"):  # those shard the weights
            accelerator.register_save_state_pre_hook(_weights_saved_once)
            accelerator.register_load_state_pre_hook(self._load_weights_from_checkpoint)

    def _load_weights_from_checkpoint(self, models: list, input_dir: str) -> None:
        """Resume reads the policy's weights from the checkpoint's own ``model.safetensors``."""
        from safetensors.torch import load_file

        weights = Path(input_dir).parent / WEIGHTS_FILE
        for model in models:
            self.acc.unwrap_model(model).load_weights(load_file(str(weights)), source=weights, strict=True)
        models.clear()

    @property
    def last(self) -> Path:
        return self.root / "last"

    def save(self, step: int, policy, ema=None) -> Path:
        """Collective: every rank calls it (DeepSpeed shards the optimizer across ranks)."""
        acc = self.acc
        name = f"step_{step:07d}"
        final, tmp = self.root / name, self.root / f".{name}.partial"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        try:
            acc.save_state(str(tmp / STATE_DIR))
            state_dict = acc.get_state_dict(acc._models[0]) if acc.distributed_type.name == "DEEPSPEED" else None
            if acc.is_main_process:
                policy.write_checkpoint(tmp, state_dict=state_dict)
                if ema is not None:
                    with ema.swapped_into(policy):
                        policy.write_checkpoint(tmp / "ema")
                if self.obs_mapping is not None and self.obs_mapping.keys:
                    for folder in [tmp] + ([tmp / "ema"] if ema is not None else []):
                        self.obs_mapping.save(folder)
                for file, state in self.extra_state.items():
                    (tmp / file).write_text(json.dumps(state(step), indent=1))
                (tmp / TRAINER_STATE).write_text(json.dumps({"step": step}))
                move_into_place(tmp, final)  # a checkpoint of the same step is swapped out, never half-deleted
        except Exception as e:  # a full disk raises OSError, or safetensors' own error: both leave a partial folder
            raise self._failed_save(name, tmp, e) from e
        if acc.is_main_process:
            with atomic_file(self.last) as link:
                os.symlink(name, link)
            self._prune()
        acc.wait_for_everyone()
        return final

    def _failed_save(self, name: str, tmp: Path, error: Exception) -> RuntimeError:
        """Remove the partial folder (it would fill the disk further) and say what is still there. Only the main
        process removes it: the other ranks may still be writing their shards into it."""
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        last = self.last.resolve().name if self.last.exists() else None
        free_mb = shutil.disk_usage(self.root).free / 2**20
        kept = f"the last complete checkpoint, {last}, is intact" if last else "no earlier checkpoint exists"
        return RuntimeError(
            f"checkpoint {name} could not be written in {self.root} ({type(error).__name__}: {error}); "
            f"its partial folder was removed, {kept}; {free_mb:.0f} MiB free on that disk"
        )

    def _prune(self) -> None:
        steps = sorted(p for p in self.root.glob("step_*") if p.is_dir())
        for old in steps[: max(0, len(steps) - self.keep_last)]:
            if old.resolve() != self.last.resolve():
                shutil.rmtree(old, ignore_errors=True)

    def newest_complete(self) -> Path | None:
        """The newest ``step_*`` folder (every one is complete: each is renamed into place once written)."""
        steps = sorted(p for p in self.root.glob("step_*") if (p / TRAINER_STATE).is_file())
        return steps[-1] if steps else None

    def resume(self) -> int:
        """Restore model, optimizer, scheduler, EMA and RNG states; return the step to continue from."""
        newest = self.newest_complete()
        stale = newest is not None and (not self.last.exists() or self.last.resolve() != newest.resolve())
        if stale and self.acc.is_main_process:  # killed between moving a checkpoint into place and re-pointing last
            log.warning("checkpoints/last did not point to the newest complete checkpoint; now -> %s", newest.name)
            with atomic_file(self.last) as link:
                os.symlink(newest.name, link)
        self.acc.wait_for_everyone()
        if not (self.last / TRAINER_STATE).is_file():
            raise FileNotFoundError(
                f"nothing to resume: {self.last} has no {TRAINER_STATE}. Drop --resume=true to start a new run "
                "or point output_dir at the run to continue."
            )
        self.acc.load_state(str(self.last / STATE_DIR))
        return int(json.loads((self.last / TRAINER_STATE).read_text())["step"])

    def read_extra(self, file: str) -> dict | None:
        """An ``extra_state`` file of the last checkpoint (None when it has none)."""
        path = self.last / file
        return json.loads(path.read_text()) if path.is_file() else None


def _weights_saved_once(models: list, weights: list, output_dir: str) -> None:
    """Keep the weights out of accelerate's training state: the checkpoint's ``model.safetensors``,
    one level up, already holds them in full precision, and a second copy would add 12.6 GB to
    every checkpoint at pi0 scale."""
    weights.clear()
