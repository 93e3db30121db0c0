"""The trainer: accelerate (DDP or DeepSpeed ZeRO) around ``Policy.compute_loss``.

    trainer = Trainer(cfg); trainer.setup(); trainer.train(); trainer.cleanup()

It never reaches inside a head. One process or many (``accelerate launch -m vla train``)
run the same code; the data order comes from ``ShardedStepSampler`` so that a run
with N processes at batch B sees the same samples as one process at batch N*B, and a
resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vla.models.compile import compile_regions
from vla.models.policy import STATS_FILE, Policy
from vla.serve.obs_mapping import ObsMapping
from vla.train.checkpoint import CheckpointManager
from vla.train.config import TrainConfig
from vla.train.data import TrainingData, build_training_data, normalized_action_chunks
from vla.train.ema import EMA
from vla.train.finetune import init_from_checkpoint
from vla.train.metrics import MetricsLogger, estimate_flops_per_sample, peak_memory_gb
from vla.train.optim import build_optimizer
from vla.train.sampler import ShardedStepSampler
from vla.train.stats_check import check_training_statistics, refuse_wrong_statistics
from vla.train.streaming import stream_loader

log = logging.getLogger(__name__)


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.step = 0
        self._eval_group = None  # the periodic evaluation's gloo group (several processes only)

    # ---- setup ----------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
        launched = int(os.environ.get("LOCAL_RANK", -1)) != -1  # by torchrun / accelerate launch
        self.accelerator = Accelerator(
            mixed_precision=cfg.train.mixed_precision,
            gradient_accumulation_steps=cfg.train.grad_accum,
            step_scheduler_with_optimizer=False,  # the schedule is a function of the optimizer step, not of ranks
            # Without a GPU, several processes (torchrun --nproc_per_node N -m vla train) train with gloo DDP;
            # with a DeepSpeed config (ACCELERATE_USE_DEEPSPEED), DeepSpeed's own CPU accelerator runs instead.
            cpu=not torch.cuda.is_available() and not deepspeed,
            # Several such processes need the gloo backend named: accelerate finds none for a CPU outside cpu
            # mode, lets DeepSpeed start torch.distributed all the same, then takes "no backend" for a single
            # process and counts every rank as rank 0 of 1 (accelerate/state.py, PartialState.__init__), and
            # DeepSpeed refuses the batch (train_batch_size B != B * 1 * world_size). Named, it goes to
            # deepspeed.init_distributed and accelerate reads the ranks from torch.distributed.
            kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")]
            if deepspeed and launched and not torch.cuda.is_available()
            else None,
        )
        acc = self.accelerator
        # The same seed on every rank: the model initializes identically everywhere. Nothing per-sample
        # comes from this global RNG: each sample's augmentation, noise and time come from its own
        # generator, keyed by (seed, step, sample number) in TrainingData.to_device.
        set_seed(cfg.train.seed, device_specific=False)
        self.is_main = acc.is_main_process
        self.data: TrainingData = build_training_data(cfg.dataset, cfg.policy, cfg.augment, seed=cfg.train.seed)
        self.ckpt = CheckpointManager(
            self.out / "checkpoints", cfg.train.keep_last, acc, obs_mapping=dataset_obs_mapping(self.data.dataset)
        )
        cfg.policy.cameras = self.data.cameras
        cfg.policy.state_dim = self.data.state_dim
        cfg.policy.action_dim = self.data.action_dim
        cfg.policy.fps = self.data.fps
        cfg.policy.image_size = self.data.image_size
        cfg.policy.state_key = cfg.dataset.state_key
        cfg.policy.auxiliary.dim = self.data.aux_dim  # training-only target (policy.auxiliary.key; 0: none)

        # Built straight on this process's GPU: random init of a 3B model takes seconds there, minutes on the CPU.
        with torch.device(acc.device):
            if cfg.init_from:
                self.policy, plan = init_from_checkpoint(cfg.init_from, cfg.policy, self.data.stats)
            else:
                self.policy, plan = Policy(cfg.policy, self.data.stats), None
        tokenizer = getattr(self.policy.head, "tokenizer", None)
        if tokenizer is not None and not tokenizer.is_fitted:  # FAST, VQ: fit on this dataset's action chunks
            chunks = normalized_action_chunks(self.data, self.policy)
            report = self.policy.head.fit_tokenizer(chunks, normalization=self.policy.config.action_norm)
            if self.is_main:
                print(f"fitted the {tokenizer.name} tokenizer on the dataset: {report}", flush=True)
        # From here on the global RNG differs per rank: what still draws from it in training (dropout, in a
        # backbone that has it) must not drop the same units on every rank.
        set_seed(cfg.train.seed, device_specific=True)
        self.unused = []
        if acc.distributed_type.name in ("MULTI_GPU", "MULTI_CPU"):
            self.unused = freeze_unused_parameters(self.policy, self.data, acc.device)
        self._print_plan(plan)

        if cfg.train.compile:
            self._compile(acc)
        self.optimizer, self.scheduler = build_optimizer(self.policy, cfg.optim, cfg.train.steps)
        ds = acc.state.deepspeed_plugin
        if ds is not None and ds.zero_stage == 3 and cfg.train.ema_decay:
            raise ValueError(
                "train.ema_decay with DeepSpeed ZeRO-3: each rank holds only a shard of every weight, so an EMA "
                "of the local tensors would be empty; use ZeRO-2 (configs/accelerate/zero2.yaml) or train.ema_decay=null"
            )
        if ds is not None and ds.zero_stage == 3 and cfg.train.eval_every:
            raise ValueError(
                "train.eval_every with DeepSpeed ZeRO-3: every forward pass gathers each layer from all ranks, so "
                "ranks playing their own evaluation episodes would wait on each other; use ZeRO-2 or DDP for "
                "periodic evaluation, or evaluate the saved checkpoints with `vla eval-sweep`"
            )
        if ds is not None:  # we feed our own sampler, so DeepSpeed's "auto" batch sizes are filled here
            ds.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.train.batch_size
            ds.deepspeed_config["train_batch_size"] = cfg.train.batch_size * cfg.train.grad_accum * acc.num_processes
            ds.deepspeed_config["gradient_clipping"] = cfg.optim.grad_clip
        self.policy, self.optimizer = acc.prepare(self.policy, self.optimizer)
        acc.register_for_checkpointing(self.scheduler)
        self.ema = None
        if cfg.train.ema_decay:
            self.ema = EMA(acc.unwrap_model(self.policy), cfg.train.ema_decay)
            acc.register_for_checkpointing(self.ema)

        if cfg.resume:
            self.step = self.ckpt.resume()
            if self.is_main:
                log.info("resumed from %s at step %d", self.ckpt.last, self.step)
        self._check_statistics(cfg)
        self.loader = self._make_loader(start_step=self.step)
        self.metrics = MetricsLogger(self.out, enabled=self.is_main, cfg=cfg, resume=cfg.resume, step=self.step)
        probe = self.data.to_device(self.data.collate([self.data.numbered[0, 0]]), acc.device, step=0)
        self.flops_per_sample = estimate_flops_per_sample(acc.unwrap_model(self.policy), probe)
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            from vla.config import to_dict

            (self.out / "train_config.json").write_text(json.dumps(to_dict(cfg), indent=2))

    def _check_statistics(self, cfg: TrainConfig) -> None:
        """Normalize a sample of the data with the statistics this run trains with, whatever their source,
        and refuse the run when they do not fit it (vla.train.stats_check). Every rank checks the same sample,
        so all of them stop together."""
        policy = self.accelerator.unwrap_model(self.policy)
        source = None
        if cfg.resume:  # the checkpoint's normalizer was loaded over the data's: its statistics are the run's
            saved = self.ckpt.read_extra(STATS_FILE)
            if saved is not None:
                policy.stats = saved  # so the next checkpoint saves what it normalizes with
            source = f"of the resumed checkpoint {self.ckpt.last.resolve()}"
        reports = check_training_statistics(self.data, policy, source)
        if self.is_main:
            for report in reports:
                print(report.table(), flush=True)
        refuse_wrong_statistics(reports, cfg.dataset.check_stats)

    def _compile(self, acc: Accelerator) -> None:
        """Regional compile before DDP/DeepSpeed wrap the policy (the blocks compile on first use)."""
        ds = acc.state.deepspeed_plugin
        if ds is not None and ds.zero_stage == 3:
            raise ValueError(
                "train.compile=true with DeepSpeed ZeRO-3: ZeRO-3 gathers each block's parameters in module hooks "
                "that compiled blocks would trace through; use ZeRO-2 or DDP with compile, or train.compile=false"
            )
        n = compile_regions(self.policy, training=True)
        if self.is_main:
            print(f"train.compile: {n} blocks compile on their first step (minutes at pi0 scale)", flush=True)

    def _make_loader(self, start_step: int) -> DataLoader:
        cfg, acc = self.cfg, self.accelerator
        if self.data.streaming:  # dataset.streaming: this rank's share, read incrementally (vla/train/streaming.py)
            return stream_loader(self.data, cfg, acc, start_step, self.ckpt)
        sampler = ShardedStepSampler(
            num_samples=len(self.data.dataset),
            batch_size=cfg.train.batch_size,
            total_micro_steps=cfg.train.steps * cfg.train.grad_accum,
            seed=cfg.train.seed,
            rank=acc.process_index,
            world_size=acc.num_processes,
            start_micro_step=start_step * cfg.train.grad_accum,
            weights=self.data.sample_weights,
        )
        from data_pipelines.cache import InMemoryDataset
        from data_pipelines.lerobot_source import worker_init_fn

        # An in-memory dataset is only indexed: worker processes would cost more than they save.
        workers = 0 if isinstance(self.data.dataset, InMemoryDataset) else cfg.train.num_workers
        return DataLoader(
            self.data.numbered,  # each sample carries its stream number, the key of its random draws
            batch_size=cfg.train.batch_size,
            sampler=sampler,
            num_workers=workers,
            worker_init_fn=worker_init_fn,
            collate_fn=self.data.collate,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
            # Its own generator: creating the iterator must not draw from the global RNG, or a resumed
            # run's global draws (e.g. dropout) would be shifted by one draw against the uninterrupted run.
            generator=torch.Generator().manual_seed(cfg.train.seed),
            prefetch_factor=4 if workers > 0 else None,
        )

    def _print_plan(self, plan: dict | None) -> None:
        if not self.is_main:
            return
        policy = self.policy
        total = sum(p.numel() for p in policy.parameters())
        trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
        frozen = sorted(
            {
                n.split(".")[1] if n.startswith("backbone.") else n.split(".")[0]
                for n, p in policy.named_parameters()
                if not p.requires_grad
            }
        )
        lines = [
            "training plan:",
            f"  data: {len(self.data.dataset)} samples, cameras {self.data.cameras}, "
            f"state {self.data.state_dim}, action {self.data.action_dim}, fps {self.data.fps}",
            f"  policy: backbone {policy.config.backbone.type}/{policy.config.backbone.preset}, "
            f"head {policy.config.head.type}, chunk {policy.config.chunk_size}",
            f"  parameters: {total / 1e6:.2f} M total, {trainable / 1e6:.2f} M trainable",
            f"  frozen: {frozen or 'nothing'}",
        ]
        aux = policy.config.auxiliary
        if aux.enabled:
            lines.append(
                f"  training-only auxiliary target: {aux.key} ({aux.dim} dims, weight {aux.weight:g}; not an input)"
            )
        if self.unused:
            lines.append(f"  unused by this head, frozen for DDP: {self.unused}")
        if plan:
            lines.append(f"  loaded from {plan['source']}: {plan['loaded']} tensors")
            lines.append(f"  re-initialized (shape changed or new): {plan['reinitialized'] or 'nothing'}")
            lines.append(f"  normalization statistics: {plan['stats']}")
        print("\n".join(lines), flush=True)

    # ---- the loop -------------------------------------------------------------------------------
    def train(self) -> dict:
        cfg, acc = self.cfg, self.accelerator
        total = cfg.train.steps
        global_batch = cfg.train.batch_size * cfg.train.grad_accum * acc.num_processes
        data_iter = iter(self.loader)
        bar = tqdm(total=total, initial=self.step, disable=not self.is_main, desc="train", dynamic_ncols=True)
        t_last, step_last = time.perf_counter(), self.step
        loss_sum = torch.zeros((), device=acc.device)
        aux_sum = torch.zeros((), device=acc.device)  # policy.auxiliary: the probe's loss, logged beside the total
        n_sum = 0
        self.policy.train()
        log_aux = acc.unwrap_model(self.policy).config.auxiliary.enabled
        grad_norm = None
        while self.step < total:
            for _ in range(cfg.train.grad_accum):
                batch = self.data.to_device(next(data_iter), acc.device, step=self.step)
                with acc.accumulate(self.policy):
                    with acc.autocast():
                        loss, parts = self.policy(batch)
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.optim.grad_clip > 0:
                        grad_norm = acc.clip_grad_norm_(self.policy.parameters(), cfg.optim.grad_clip)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                loss_sum += loss.detach()
                if "aux_loss" in parts:
                    aux_sum += parts["aux_loss"]
                n_sum += 1
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update(acc.unwrap_model(self.policy))
            self.step += 1
            bar.update(1)
            if self.step % cfg.train.log_every == 0 or self.step == total:
                mean_loss = acc.reduce(loss_sum / n_sum, reduction="mean").item()  # sync point, once per log
                dt = time.perf_counter() - t_last
                sps = (self.step - step_last) * global_batch / max(dt, 1e-9)
                row = {
                    "step": self.step,
                    "loss": mean_loss,
                    "lr": self.scheduler.get_last_lr()[0],
                    "grad_norm": float(grad_norm) if grad_norm is not None else None,
                    "samples_per_s": sps,
                    "epoch": self.step * global_batch / len(self.data.dataset),
                    "mfu": _mfu(self.flops_per_sample, sps, acc.num_processes),
                    "peak_mem_gb": peak_memory_gb(),
                }
                if log_aux:  # the total above includes weight x aux_loss
                    row["aux_loss"] = acc.reduce(aux_sum / n_sum, reduction="mean").item()
                if not math.isfinite(mean_loss):
                    raise FloatingPointError(
                        f"loss became {mean_loss} at step {self.step}: lower optim.lr, raise optim.warmup_steps, "
                        "or check the dataset with `vla data validate`"
                    )
                self.metrics.log(row)
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{row['lr']:.2e}", sps=f"{sps:.1f}")
                t_last, step_last = time.perf_counter(), self.step
                loss_sum.zero_()
                aux_sum.zero_()
                n_sum = 0
            if cfg.train.save_every and self.step % cfg.train.save_every == 0 and self.step < total:
                self.save()
            if cfg.train.eval_every and self.step % cfg.train.eval_every == 0:
                self._evaluate()
        bar.close()
        final = self.save()
        return self.metrics.finish(final_checkpoint=str(final), steps=self.step)

    def save(self) -> Path:
        unwrapped = self.accelerator.unwrap_model(self.policy)
        return self.ckpt.save(self.step, unwrapped, self.ema)

    def _evaluate(self) -> None:
        """Periodic simulation evaluation through the evaluation runner, shared by all ranks.

        Why shared: had rank 0 played every episode while the others waited in a barrier, a long
        evaluation (LIBERO) would outlast the collective timeout and kill the run. Each rank plays
        its own contiguous share of the episodes (into ``evals/step_*/shard_<rank>``), rank 0
        gathers the shares, writes the report of all of them to ``evals/step_*`` and logs its
        success. A rank that finishes early waits only in that gather, on a gloo group of its own
        whose timeout is ``train.eval_timeout_s``.
        """
        from eval.runner import evaluate_policy, merge_shards

        acc, lc = self.accelerator, self.cfg.train
        out = self.out / "evals" / f"step_{self.step:07d}"
        policy = acc.unwrap_model(self.policy)
        policy.eval()
        share = evaluate_policy(
            policy,
            lc.eval_suite,
            lc.eval_episodes_per_task,
            out_dir=out,
            max_steps=lc.eval_max_steps,
            num_envs=lc.eval_num_envs,
            progress=False,
            num_shards=acc.num_processes,
            shard_index=acc.process_index,
        )
        policy.train()
        if acc.num_processes == 1:
            self.metrics.log({"step": self.step, "eval_success": share["average_success"]})
            return
        shares = self._gather_to_main(share)
        if self.is_main:
            res = merge_shards(out, shares)
            self.metrics.log({"step": self.step, "eval_success": res["average_success"]})

    def _gather_to_main(self, obj) -> list | None:
        """Every rank's ``obj`` on rank 0 (None elsewhere), over the evaluation's own gloo group."""
        import torch.distributed as dist

        if self._eval_group is None:  # created by every rank at its first evaluation, as new_group requires
            timeout = datetime.timedelta(seconds=self.cfg.train.eval_timeout_s)
            self._eval_group = dist.new_group(backend="gloo", timeout=timeout)
        gathered = [None] * self.accelerator.num_processes if self.is_main else None
        dist.gather_object(obj, gathered, dst=0, group=self._eval_group)
        return gathered

    def cleanup(self) -> None:
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()


def freeze_unused_parameters(policy, data: TrainingData, device) -> list[str]:
    """Freeze trainable parameters the loss never reaches (DDP requires every one to get a gradient).

    E.g. the pi0-style flow expert reads only the keys/values of the VLM's last layer, so that
    layer's MLP and the final norm get no gradient; an untied LM head is unused by continuous
    heads. One forward/backward on a real batch finds them exactly.
    """
    policy.to(device)
    batch = data.to_device(
        data.collate([data.numbered[i, i] for i in range(min(2, len(data.dataset)))]), device, step=0
    )
    loss, _ = policy(batch)
    loss.backward()
    unused = [n for n, p in policy.named_parameters() if p.requires_grad and p.grad is None]
    for n, p in policy.named_parameters():
        p.grad = None
        if n in unused:
            p.requires_grad_(False)
    return unused


def _mfu(flops_per_sample: float, samples_per_s: float, num_processes: int) -> float | None:
    """Model FLOPs utilization against the GPU's dense bf16 peak (None on CPU)."""
    if not torch.cuda.is_available() or not flops_per_sample:
        return None
    name = torch.cuda.get_device_name()
    peak = 989e12 if ("H100" in name or "H200" in name) else 312e12  # H100/H200 SXM dense bf16; else A100
    return flops_per_sample * samples_per_s / (peak * num_processes)


def run_training(cfg: TrainConfig) -> dict:
    trainer = Trainer(cfg)
    trainer.setup()
    try:
        return trainer.train()
    finally:
        trainer.cleanup()


def dataset_obs_mapping(dataset) -> ObsMapping | None:
    """The training dataset's keys as a server mapping; None for mixtures (their members differ)."""
    fmap = getattr(dataset, "feature_map", None)
    return ObsMapping.from_dataset(fmap.cameras, fmap.state) if fmap is not None else None
