"""The evaluation runner: a policy, a suite, N fixed episodes per task -> success rates with CIs.

    vla eval --checkpoint CKPT --suite mw10 --episodes-per-task 50 --num-envs 4 --out DIR
    vla eval --policy oracle --suite mw-easy --episodes-per-task 5 --out DIR
    vla eval --policy lerobot:DIR --suite mw-easy --episodes-per-task 10 --out DIR   # LeRobot's own policies

Design, and why:

* **Fixed episodes.** Episode ``i`` of task ``t`` starts from the suite's init state
  ``i`` and has seed ``episode_seed(seed, t, i)``. A run plays init states
  ``first_episode .. first_episode + episodes_per_task - 1`` of every task (``vla eval-sweep``
  chooses a checkpoint on one block and reports it on another); reference policies draw from that
  seed alone, so their numbers do not depend on ``--num-envs`` or on scheduling. A
  model policy is queried for all envs that need a new chunk at once with one
  ``predict_chunk`` call, seeded from the (episode seed, step) pairs in the batch:
  identical commands give identical numbers; a different ``--num-envs`` changes batch
  composition, which only matters for stochastic heads (their noise is drawn per batch).
  Through ``--server`` every request carries its own (episode seed, step) seed.
* **Actions as deployed.** Each env plays its episode from an ``ActionQueue`` built by the
  policy (``Policy.action_queue``, what ``select_action`` plays from): a new chunk every
  ``n_action_steps``, merged with the earlier ones by ACT temporal ensembling when the
  checkpoint sets ``temporal_ensemble_coeff``. A new queue starts with every episode.
* **Latency** (``--latency-steps d``, eval/latency.py): a chunk requested at step t becomes available at t + d;
  meanwhile the env keeps playing the previous chunk, as a real robot does while the model runs. With ``--rtc``
  each request carries the previous chunk's unexecuted remainder and d (real-time chunking,
  vla/models/heads/rtc.py). results.json reports the mean absolute action change at chunk seams and within
  chunks (``smoothness``).
* **Render only what is used**: once per ``n_action_steps`` (the policy's new
  observation), plus every step of the episodes recorded on video. Only the policy's
  cameras are rendered.
* **Shards.** ``num_shards``/``shard_index`` (``vla eval --shard K/N``) play one contiguous,
  balanced share of the (task, episode) list into ``OUT/shard_<index>``, each episode with its
  unsharded seed and init state (the trainer's ranks each play theirs; SLURM array tasks, see
  scripts/slurm_eval.sbatch). ``combine_shards`` checks that the shares are one protocol and
  play every episode once and summarizes them as one run: ``merge_shards`` (the trainer, from
  the shares' results) and ``merge_dirs`` (``vla eval merge``, from their episode logs).
* **Protocols by name.** ``--protocol lerobot`` (default) or ``openpi``: for LIBERO the scene seed of
  every episode and the step limits that LeRobot's lerobot-eval or openpi's LIBERO client use
  (eval/suites/libero.py ``PROTOCOLS``), written into protocol.json and results.json with the
  episodes' scene seeds, so a number says which protocol it follows.
* **Resumable.** Each finished episode is appended to ``DIR/episodes.jsonl``; a rerun
  with the same protocol skips them, a rerun with another protocol is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from eval import report
from eval.latency import DelayedPlay, smoothness_summary
from eval.lerobot_policy import LEROBOT_PREFIX, evaluate_lerobot, is_lerobot_policy
from eval.reference_policies import REFERENCE_POLICIES, ReferencePolicy
from eval.suites import Suite, SuiteConfig, get_suite
from eval.vector_env import EpisodeResult, EpisodeSpec, NeedsChunk, make_vector_env
from vla.action_queue import ActionQueue
from vla.registry import lookup
from vla.utils.atomic import atomic_file
from vla.utils.jsonl import read_records

log = logging.getLogger(__name__)


class ChunkSource(Protocol):
    """Where a model's actions come from: a policy in process or a policy server."""

    # True: each chunk is already cut to the actions the policy chose to execute (MoH consensus, (K, D)),
    # and the queue plays all K before asking again; False: the queue's replan_every decides.
    executes_prefix: bool

    def __call__(self, items: list[NeedsChunk], **rtc) -> list[np.ndarray]:
        """One (H, D) action chunk per waiting env's observation (its executed prefix with ``executes_prefix``).

        ``rtc`` (real-time chunking, only when asked): ``prev_chunk``, one remainder (K, D) or None per item, and
        ``inference_delay`` (int)."""

    def action_queue(self) -> ActionQueue:
        """A fresh queue for one episode: how the policy plays its chunks."""


@dataclass
class EvalConfig:
    suite: str = "mw-easy"  # registered suite name (mw-easy, mw10, mw50, libero_spatial, ...)
    checkpoint: str | None = None  # policy checkpoint dir; or one of:
    policy: str | None = None  # reference policy: oracle | random; or lerobot:DIR (eval/lerobot_policy.py)
    server: str | None = None  # ws://HOST:PORT of a running `vla serve`
    api_key: str | None = None  # the server's API key, if it wants one
    episodes_per_task: int = 10
    first_episode: int = 0  # play init states first_episode .. first_episode + episodes_per_task - 1 of each task
    num_shards: int = 1  # play one share of the episodes (into OUT/shard_<index>); merge_shards joins them
    shard_index: int = 0  # which share, 0 .. num_shards - 1
    num_envs: int = 1  # env worker processes (1 = in-process)
    tasks: str | None = None  # comma-separated task indices or names (default: all)
    max_steps: int | None = None  # override the suite's step limit (smoke tests)
    seed: int = 0
    protocol: str = "lerobot"  # lerobot | openpi: LIBERO's scene seeds and step limits (suites/libero.py)
    video_episodes: int = 0  # record the first K episodes of each task
    video_fps: int = 20
    device: str = "auto"  # the GPU when there is one
    compile: bool = False  # regional torch.compile of the policy (CUDA graphs for the head on a GPU)
    out: str = "outputs/eval"
    n_action_steps: int | None = None  # actions played per observation (default: the policy's own)
    # A new chunk every step, blended (instead of the checkpoint's own play): ACT's temporal ensembling with
    # this coefficient, or CogACT's adaptive ensembling with this alpha (vla.action_queue)
    temporal_ensemble_coeff: float | None = None
    adaptive_ensemble_alpha: float | None = None
    image_size: int | None = None  # render size (default: the checkpoint's training resolution, else the suite's)
    progress: bool = True
    dataset: str | None = None  # open loop instead of a suite: chunk errors on this LeRobot dataset (eval/offline.py)
    frames: int = 64  # --dataset: frames evaluated, evenly spaced
    # Inference latency: a chunk requested at step t is available at t + latency_steps; the previous one plays
    # meanwhile (eval/latency.py)
    latency_steps: int = 0
    # Real-time chunking: send each request the previous chunk's remainder and the delay (flow/diffusion heads):
    # guided | inpaint (heads trained with rtc_training_max_delay) | auto; None: off. A server uses its own mode.
    rtc: str | None = None
    rtc_schedule: str | None = None  # --checkpoint: the soft mask (exp | linear | ones | zeros); None: the policy's
    rtc_beta: float | None = None  # --checkpoint: the guidance weight's clip; None: the policy's

    def validate(self) -> None:
        """Called by the entry points (not __post_init__: draccus builds a default instance first)."""
        given = [k for k in ("checkpoint", "policy", "server") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of --checkpoint, --policy, --server; got {given or 'none'}")
        if self.policy and self.policy not in REFERENCE_POLICIES and not is_lerobot_policy(self.policy):
            raise ValueError(
                f"--policy {self.policy!r}: known reference policies: {', '.join(REFERENCE_POLICIES)}; "
                f"or {LEROBOT_PREFIX}DIR for a LeRobot policy"
            )
        for k in ("episodes_per_task", "num_envs", "num_shards"):
            if getattr(self, k) < 1:
                raise ValueError(f"--{k.replace('_', '-')} must be >= 1; got {getattr(self, k)}")
        if self.first_episode < 0:
            raise ValueError(f"--first-episode must be >= 0; got {self.first_episode}")
        if not 0 <= self.shard_index < self.num_shards:
            raise ValueError(f"--shard-index must be in [0, {self.num_shards}) for --num-shards {self.num_shards}")
        ensembles = [k for k in ("temporal_ensemble_coeff", "adaptive_ensemble_alpha") if getattr(self, k) is not None]
        if ensembles and not self.checkpoint:
            flags = ", ".join(f"--{k.replace('_', '-')}" for k in ensembles)
            raise ValueError(f"{flags}: evaluation-time ensembling is for --checkpoint (a server advertises its own)")
        if len(ensembles) > 1:
            raise ValueError("--temporal-ensemble-coeff and --adaptive-ensemble-alpha exclude each other")
        if self.latency_steps < 0:
            raise ValueError(f"--latency-steps must be >= 0; got {self.latency_steps}")
        if (self.latency_steps or self.rtc) and not (self.checkpoint or self.server):
            raise ValueError("--latency-steps and --rtc are for a model policy (--checkpoint or --server)")
        if (self.rtc_schedule is not None or self.rtc_beta is not None) and not (self.rtc and self.checkpoint):
            raise ValueError("--rtc-schedule and --rtc-beta set a checkpoint's real-time chunking: add --rtc")
        if ensembles and self.n_action_steps not in (None, 1):
            raise ValueError(f"--{ensembles[0].replace('_', '-')} plays a new chunk every step: drop --n-action-steps")

    @property
    def episodes(self) -> range:
        """The init-state indices played in every task."""
        return range(self.first_episode, self.first_episode + self.episodes_per_task)

    @property
    def out_dir(self) -> Path:
        """Where this run's episodes and report go: ``out``, or ``out/shard_<index>`` for one share."""
        return shard_dir(self.out, self.shard_index) if self.num_shards > 1 else Path(self.out)


def shard_dir(out: str | Path, shard_index: int) -> Path:
    return Path(out) / f"shard_{shard_index}"


def shard_of(items: list, shard_index: int, num_shards: int) -> list:
    """Share ``shard_index`` of ``num_shards``: contiguous (an env keeps its task, simulators are rebuilt
    rarely) and balanced (sizes differ by at most one)."""
    size, extra = divmod(len(items), num_shards)
    start = shard_index * size + min(shard_index, extra)
    return items[start : start + size + (shard_index < extra)]


def episode_seed(seed: int, task_index: int, episode_index: int) -> int:
    """A well-mixed 32-bit seed per (run seed, task, episode)."""
    return int(np.random.SeedSequence([seed, task_index, episode_index]).generate_state(1)[0])


def package_versions() -> dict[str, str | None]:
    out = {}
    for name, dist in [
        ("torch", "torch"),
        ("transformers", "transformers"),
        ("mujoco", "mujoco"),
        ("metaworld", "metaworld"),
        ("libero", "hf-libero"),
        ("vla", "vla"),
    ]:
        try:
            out[name] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def weights_hash(policy) -> str:
    """Content hash of an in-memory policy's weights (what checkpoint_hash is for a saved one)."""
    h = hashlib.sha256()
    for k, v in sorted(policy.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def select_tasks(suite: Suite, tasks: str | None) -> list[int]:
    """``"0,2"`` or ``"reach-v3,push-v3"`` (mixed is fine) -> sorted unique task indices."""
    if tasks is None or str(tasks).strip() == "":
        return list(range(len(suite.tasks)))
    out = set()
    for item in str(tasks).split(","):
        item = item.strip()
        if item.lstrip("-").isdigit():
            i = int(item)
            if not 0 <= i < len(suite.tasks):
                raise IndexError(f"--tasks {item}: suite {suite.name!r} has tasks 0..{len(suite.tasks) - 1}")
            out.add(i)
        else:
            out.add(suite.task_index(item))
    return sorted(out)


# ---- policy sources ---------------------------------------------------------------------------
class ModelChunker:
    """Batches observations of all waiting envs into one ``predict_chunk`` call."""

    def __init__(self, policy, n_action_steps: int, device: str) -> None:
        self.policy, self.n, self.device = policy, n_action_steps, device
        self.executes_prefix = policy.head.chooses_execute
        cfg = policy.config
        self.cameras = list(cfg.cameras)
        self.state_key = "env_state" if cfg.privileged_state else "state"

    def __call__(self, items: list[NeedsChunk], **rtc) -> list[np.ndarray]:
        import torch
        from einops import rearrange

        first = items[0].obs
        missing = [c for c in self.cameras if c not in first["images"]]
        if missing or self.state_key not in first:
            raise KeyError(
                f"the policy needs cameras {self.cameras} and {self.state_key!r}; the suite gives "
                f"cameras {list(first['images'])} and keys {list(first)} (missing cameras {missing})"
            )
        imgs = np.stack([np.stack([it.obs["images"][c] for c in self.cameras]) for it in items])  # (B, N, H, W, 3)
        images = rearrange(torch.from_numpy(imgs), "b n h w c -> b n c h w").to(self.device)  # uint8
        state = torch.from_numpy(np.stack([it.obs[self.state_key] for it in items])).float().to(self.device)  # (B, S)
        seeds = [it.seed for it in items]
        obs = {"images": images, "state": state, "instruction": [it.obs["instruction"] for it in items]}
        if not self.executes_prefix:
            chunk = self.policy.predict_chunk(obs, seed=seeds, **rtc)  # (B, H, D) raw units
            return list(chunk.float().cpu().numpy())  # sync point: once per batch
        chunk, execute = self.policy.predict_plan(obs, seed=seeds)  # (B, H, D), (B,) actions each env executes
        chunks = list(chunk.float().cpu().numpy())  # sync point: once per batch
        return [c[:k] for c, k in zip(chunks, execute.tolist(), strict=True)]  # each env's agreed prefix

    def action_queue(self) -> ActionQueue:
        """A fresh queue for one episode, as the policy plays its chunks."""
        return self.policy.action_queue(self.n)


class ServerChunker:
    """Asks a policy server through ``vla.serve.client.PolicyClient``, one connection per env slot.

    Each request carries a seed derived from (episode seed, step): the server then answers
    deterministically (it runs seeded requests unbatched), so server evaluations repeat
    exactly and do not depend on ``--num-envs``.
    """

    executes_prefix = False  # the wire carries whole chunks

    def __init__(self, url: str, n_action_steps: int | None, num_envs: int, api_key: str | None = None) -> None:
        from vla.serve.client import PolicyClient

        self.clients = [PolicyClient(url, api_key=api_key) for _ in range(num_envs)]
        meta = self.clients[0].get_server_metadata()
        self.n = n_action_steps or meta.get("action_horizon")
        if not self.n:
            raise ValueError(f"{url}: the server does not say its action horizon; pass --n-action-steps")
        self.n = int(self.n)
        self.ensemble_coeff = meta.get("temporal_ensemble_coeff")
        self.adaptive_alpha = meta.get("adaptive_ensemble_alpha")
        self.chunk_size = int(meta.get("chunk_size") or 0) or None
        self.rtc = meta.get("rtc")  # how the server samples with a previous chunk's remainder; None: it cannot

    def action_queue(self) -> ActionQueue:
        """A fresh queue for one episode, as the served checkpoint says to play its chunks."""
        return ActionQueue(ensemble_coeff=self.ensemble_coeff, replan_every=self.n, adaptive_alpha=self.adaptive_alpha)

    def _one(self, client, it: NeedsChunk, prev: np.ndarray | None, delay: int) -> np.ndarray:
        from vla.serve import protocol

        obs = {f"observation.images.{c}": img for c, img in it.obs["images"].items()}
        obs["observation.state"] = np.asarray(it.obs["state"], dtype=np.float32)
        obs["prompt"] = it.obs["instruction"]
        obs["seed"] = it.seed
        if prev is not None:  # real-time chunking: the previous chunk's remainder and the delay
            obs[protocol.PREV_CHUNK], obs[protocol.INFERENCE_DELAY] = prev, min(delay, len(prev))
        return np.asarray(client.infer(obs)["actions"])  # (H, D)

    def __call__(self, items: list[NeedsChunk], prev_chunk=None, inference_delay: int = 0) -> list[np.ndarray]:
        from concurrent.futures import ThreadPoolExecutor

        prev = prev_chunk if prev_chunk is not None else [None] * len(items)
        with ThreadPoolExecutor(len(items)) as pool:
            return list(pool.map(self._one, self.clients, items, prev, [inference_delay] * len(items)))

    def close(self) -> None:
        for c in self.clients:
            c.close()


# ---- the run ----------------------------------------------------------------------------------
PROTOCOLS = ("lerobot", "openpi")


def build_suite(
    name: str,
    max_steps: int | None = None,
    image_size: int | None = None,
    cameras: list[str] | None = None,
    protocol: str = "lerobot",
) -> Suite:
    """The suite with a run's overrides; ``max_steps`` is applied to the tasks when the suite has no such field.
    ``protocol`` goes to suites that have one (LIBERO); the others follow only the default ``lerobot``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
    fields = {f.name for f in dataclasses.fields(lookup(SuiteConfig, name, "suite"))}
    wanted = {"max_steps": max_steps, "image_size": image_size, "cameras": tuple(cameras) if cameras else None}
    if protocol != "lerobot":
        wanted["protocol"] = protocol
    bad = [k for k, v in wanted.items() if v is not None and k not in fields and k != "max_steps"]
    if bad:
        raise ValueError(f"suite {name!r} does not support overriding {bad}")
    suite = get_suite(name, **{k: v for k, v in wanted.items() if v is not None and k in fields})
    if max_steps is not None and "max_steps" not in fields:
        if max_steps < 1:
            raise ValueError(f"--max-steps must be >= 1; got {max_steps}")
        suite.tasks = [dataclasses.replace(t, max_steps=max_steps) for t in suite.tasks]
    return suite


def build_protocol(cfg: EvalConfig, suite: Suite, task_ids: list[int], policy_info: dict) -> dict:
    tasks = []
    eps = list(cfg.episodes)
    scene_seed = getattr(suite, "scene_seed", None)  # LIBERO: episode i's layout is seeded scene_seed + i
    for t in task_ids:
        task = suite.tasks[t]
        tasks.append(
            {
                "index": t,
                "name": task.name,
                "instruction": task.instruction,
                "max_steps": task.max_steps,
                "init_state_indices": eps,
                "seeds": [episode_seed(cfg.seed, t, i) for i in eps],
            }
            | ({"scene_seeds": [scene_seed + i for i in eps]} if scene_seed is not None else {})
        )
    shard = {"shard": {"index": cfg.shard_index, "count": cfg.num_shards}} if cfg.num_shards > 1 else {}
    named = {"protocol": suite.protocol} if hasattr(suite, "protocol") else {}
    return (
        shard
        | named
        | {
            "suite": suite.name,
            "cameras": list(suite.cameras),
            "image_size": suite.image_size,
            "episodes_per_task": cfg.episodes_per_task,
            "seed": cfg.seed,
            "tasks": tasks,
            "step_limits": {suite.tasks[t].name: suite.tasks[t].max_steps for t in task_ids},
            "policy": policy_info,
            "n_action_steps": policy_info.get("n_action_steps"),
            "versions": package_versions(),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )


def run_evaluation(
    cfg: EvalConfig,
    chunker: ChunkSource | None,
    reference: ReferencePolicy | None,
    policy_info: dict,
    cameras: list[str] | None = None,
    action_dim: int | None = None,
) -> dict:
    """Run (or resume) every episode of ``cfg`` not yet in ``cfg.out/episodes.jsonl``; write the report."""
    suite = build_suite(cfg.suite, cfg.max_steps, cfg.image_size, cameras, cfg.protocol)
    if reference is not None:
        reference.check(suite)
    if action_dim is not None and action_dim != suite.action_dim:
        raise ValueError(f"the policy predicts {action_dim}-dim actions; suite {suite.name!r} takes {suite.action_dim}")
    task_ids = select_tasks(suite, cfg.tasks)
    for t in task_ids:
        if cfg.episodes.stop > suite.tasks[t].num_episodes:
            raise ValueError(
                f"--first-episode {cfg.first_episode} --episodes-per-task {cfg.episodes_per_task}: task "
                f"{suite.tasks[t].name!r} has only {suite.tasks[t].num_episodes} fixed init states"
            )
    out = cfg.out_dir
    protocol = build_protocol(cfg, suite, task_ids, policy_info)
    episode_log = report.EpisodeLog(out, protocol)
    mine = shard_of([(t, i) for t in task_ids for i in cfg.episodes], cfg.shard_index, cfg.num_shards)
    todo = deque(
        EpisodeSpec(t, i, episode_seed(cfg.seed, t, i), record=i - cfg.first_episode < cfg.video_episodes)
        for t, i in mine
        if not episode_log.done(t, i)
    )
    total = len(mine)
    bar = tqdm(total=total, initial=total - len(todo), desc=f"eval {suite.name}", unit="ep", disable=not cfg.progress)
    if todo:
        video_dir = str(out / report.VIDEO_DIR) if cfg.video_episodes else None
        envs = make_vector_env(suite, min(cfg.num_envs, len(todo)), reference, video_dir, cfg.video_fps)
        try:
            _rollout(envs, todo, chunker, episode_log, suite, bar, cfg.latency_steps, bool(cfg.rtc))
        finally:
            envs.close()
    bar.close()
    records = [episode_log.records[key] for key in mine if key in episode_log.records]
    results = report.summarize(records, [t.name for t in suite.tasks])
    results["protocol"] = protocol
    smoothness = smoothness_summary(records)
    if smoothness is not None:
        results["smoothness"] = smoothness
    results["videos"] = sorted(r["video"] for r in records if r.get("video"))
    results["episodes"] = records  # per episode: a shard's share for merge_shards, paired comparisons
    report.write_results(out, results)
    return results


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` (``vla eval --shard K/N``) -> (shard index K, shard count N), 0 <= K < N."""
    k, sep, n = str(text).partition("/")
    if not sep or not k.strip().isdigit() or not n.strip().isdigit():
        raise ValueError(f"--shard {text!r}: expected K/N with 0 <= K < N, e.g. --shard 0/4")
    k, n = int(k), int(n)
    if not 0 <= k < n:
        raise ValueError(f"--shard {text!r}: K must be in [0, {n}) for N = {n}")
    return k, n


def combine_shards(shards: list[dict], shard_dirs: list[Path], out_dir: str | Path) -> dict:
    """The results of one run from its shares' results (``protocol``, ``episodes``, ``videos`` each),
    checked: one protocol (``report._identity``, the shard label aside; the first differing keys are
    named), every shard ``0 .. N-1`` once, and every episode of the protocol exactly once."""
    if not shards:
        raise ValueError("nothing to merge: no shards given")
    labels = [s["protocol"].get("shard") for s in shards]
    if any(not isinstance(x, dict) for x in labels):
        bad = [str(d) for d, x in zip(shard_dirs, labels, strict=True) if not isinstance(x, dict)]
        raise ValueError(f"not the result of a shard (run with --shard K/N): {', '.join(bad)}")
    identities = [report._identity({k: v for k, v in s["protocol"].items() if k != "shard"}) for s in shards]
    for d, ident in zip(shard_dirs[1:], identities[1:], strict=True):
        differ = sorted(k for k in set(ident) | set(identities[0]) if ident.get(k) != identities[0].get(k))
        if differ:
            raise ValueError(
                f"the shards were evaluated under different protocols (differ in: {', '.join(differ)}): "
                f"{d} against {shard_dirs[0]}"
            )
    counts = sorted({x["count"] for x in labels})
    if len(counts) > 1:
        raise ValueError(f"the shards split the episodes differently (differ in: shard count {counts})")
    count, indices = counts[0], [x["index"] for x in labels]
    twice = sorted({i for i in indices if indices.count(i) > 1})
    missing = sorted(set(range(count)) - set(indices))
    if twice or missing:
        raise ValueError(
            f"merging needs shards 0..{count - 1} of one run, each once: "
            + "; ".join(
                ([f"given twice: shard {twice}"] if twice else []) + ([f"missing: {missing}"] if missing else [])
            )
        )
    order = sorted(range(len(shards)), key=lambda j: indices[j])
    records = sorted(
        (r for j in order for r in shards[j]["episodes"]), key=lambda r: (r["task_index"], r["episode_index"])
    )
    keys = [(int(r["task_index"]), int(r["episode_index"])) for r in records]
    protocol = {k: v for k, v in shards[order[0]]["protocol"].items() if k != "shard"}
    names = {t["index"]: t["name"] for t in protocol["tasks"]}
    expected = {(t["index"], i) for t in protocol["tasks"] for i in t["init_state_indices"]}
    twice_eps = sorted(k for k, n in Counter(keys).items() if n > 1)  # one pass: merges may hold 10^5 episodes
    if twice_eps:
        raise ValueError(f"the shards overlap: episodes played twice: {_episode_names(twice_eps, names)}")
    unfinished = sorted(expected - set(keys))
    if unfinished:
        raise ValueError(
            f"{len(unfinished)} episodes of the protocol are missing (an unfinished shard? rerun its command to "
            f"resume it): {_episode_names(unfinished, names)}"
        )
    extra = sorted(set(keys) - expected)
    if extra:
        raise ValueError(f"episodes outside the protocol: {_episode_names(extra, names)}")
    results = report.summarize(records, names)
    results["protocol"] = protocol
    smoothness = smoothness_summary(records)
    if smoothness is not None:
        results["smoothness"] = smoothness
    results["videos"] = [  # relative to out_dir: each share keeps its videos
        Path(os.path.relpath(Path(shard_dirs[j]) / report.VIDEO_DIR / v, out_dir)).as_posix()
        for j in order
        for v in shards[j]["videos"]
    ]
    results["episodes"] = records
    return results


def _episode_names(keys: list[tuple[int, int]], names: dict) -> str:
    shown = ", ".join(f"{names.get(t, t)} #{i}" for t, i in keys[:5])
    return shown + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def merge_shards(out_dir: str | Path, shards: list[dict]) -> dict:
    """The report of a sharded evaluation: every share's episodes summarized as one run, written to
    ``out_dir``. ``shards`` are the results of shares ``0 .. num_shards - 1`` (in any order), each in
    ``out_dir/shard_<index>``; they must be of one protocol, and together play each episode once."""
    dirs = [shard_dir(out_dir, s["protocol"].get("shard", {}).get("index", "?")) for s in shards]
    results = combine_shards(shards, dirs, out_dir)
    report.write_results(out_dir, results)
    return results


def find_shard_dirs(dirs: list[str | Path]) -> list[Path]:
    """The shard directories named by ``dirs``: a directory holding a protocol.json is one; a directory
    without one stands for its ``shard_*`` subdirectories (``--out`` of the ``vla eval --shard`` runs)."""
    found: list[Path] = []
    for d in map(Path, dirs):
        if (d / report.PROTOCOL_FILE).exists():
            found.append(d)
            continue
        subs = sorted(
            (p for p in d.glob("shard_*") if (p / report.PROTOCOL_FILE).exists()),
            key=lambda p: (len(p.name), p.name),
        )
        if not subs:
            raise FileNotFoundError(f"{d}: neither a shard's output ({report.PROTOCOL_FILE}) nor a folder of shard_*")
        found += subs
    return found


def merged_out_dir(shard_dirs: list[Path], out_dir: str | Path | None) -> Path:
    """``out_dir``, or by default the one folder holding all the shard folders."""
    if out_dir is not None:
        return Path(out_dir)
    parents = {Path(d).resolve().parent for d in shard_dirs}
    if len(parents) != 1:
        raise ValueError("the shards lie in different folders; say where the merged report goes with --out")
    return parents.pop()


def merge_dirs(dirs: list[str | Path], out_dir: str | Path | None = None) -> dict:
    """``vla eval merge DIR... --out OUT``: the shards' episode logs and protocols -> the files an unsharded
    run of the protocol writes (results.json/md, success.png, its episodes.jsonl and protocol.json, so a
    later unsharded ``vla eval --out OUT`` of the protocol finds every episode done, and its videos, copied
    into OUT/videos). OUT defaults to the
    parent of the shard folders when they share one. An OUT holding episodes of another protocol is refused."""
    shard_dirs = find_shard_dirs(dirs)
    out = merged_out_dir(shard_dirs, out_dir)
    shards = []
    for d in shard_dirs:
        log_path = d / report.EPISODES_FILE
        records = read_records(log_path, check=report._episode_key) if log_path.exists() else []
        records.sort(key=report._episode_key)
        protocol = json.loads((d / report.PROTOCOL_FILE).read_text())
        shards.append(
            {"protocol": protocol, "episodes": records, "videos": sorted(r["video"] for r in records if r.get("video"))}
        )
    results = combine_shards(shards, shard_dirs, out)
    episode_log = report.EpisodeLog(out, results["protocol"])  # refuses an OUT of another protocol
    for d, s in zip(shard_dirs, shards, strict=True):  # the videos where the unsharded run has them
        for name in s["videos"]:
            src, dst = d / report.VIDEO_DIR / name, out / report.VIDEO_DIR / name
            if src.resolve() != dst.resolve():
                dst.parent.mkdir(parents=True, exist_ok=True)
                with atomic_file(dst) as tmp:
                    shutil.copyfile(src, tmp)
    results["videos"] = sorted(v for s in shards for v in s["videos"])
    report._write_text_atomic(
        episode_log.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in results["episodes"])
    )
    report.write_results(out, results)
    return results


def _rollout(
    envs, todo: deque, chunker: ChunkSource | None, episode_log, suite: Suite, bar, latency: int = 0, rtc: bool = False
) -> None:
    """Rounds: start idle envs, collect the replies of every env that is stepping and of those resetting that are
    done (``envs.ready``: a reset does not hold the others back), one batched policy call for those that need
    a chunk. Every active env always has one message in flight, and a chunk depends only on its own env's
    observation and seed, so which envs share a batch never changes a result.

    Each env plays from its own action queue (new with each episode) through a ``DelayedPlay``: the chunk
    predicted from its observation is merged in ``latency`` steps later, and the actions up to the next
    observation are sent in one message. ``rtc``: each request carries the env's planned remainder and the
    latency."""
    active: dict[int, EpisodeSpec] = {}
    queues: dict[int, DelayedPlay] = {}
    resetting: set[int] = set()  # envs sent an episode start whose first observation has not come back
    n_ok = sum(bool(r["success"]) for r in episode_log.records.values())
    while todo or active:
        for i in range(envs.num_envs):
            if i not in active and todo:
                active[i] = todo.popleft()
                if chunker is not None:
                    queues[i] = DelayedPlay(chunker.action_queue(), latency)
                envs.send(i, "start", active[i])
                resetting.add(i)
        waiting: list[tuple[int, NeedsChunk]] = []
        for i in envs.ready(sorted(active), wait_for=sorted(set(active) - resetting)):
            resetting.discard(i)
            reply = envs.recv(i)
            if isinstance(reply, EpisodeResult):
                del active[i]
                rec = dataclasses.asdict(reply) | {"task": suite.tasks[reply.task_index].name}
                if i in queues:
                    rec["smoothness"] = queues[i].smoothness()
                episode_log.append(rec)
                n_ok += reply.success
                bar.update(1)
                bar.set_postfix(success=f"{n_ok / max(bar.n, 1):.2f}")
            else:
                waiting.append((i, reply))
        if waiting:
            if chunker is None:
                raise RuntimeError("an env asked for actions but this evaluation has no model policy")
            items = [r for _, r in waiting]
            if rtc:
                prev = [queues[i].remainder() for i, _ in waiting]
                chunks = chunker(items, prev_chunk=prev, inference_delay=latency)
            else:
                chunks = chunker(items)
            for (i, need), chunk in zip(waiting, chunks, strict=True):
                chunk = np.asarray(chunk, dtype=np.float32)
                envs.send(i, "act", queues[i].play(chunk, need.step, len(chunk) if chunker.executes_prefix else None))


# ---- entry points -----------------------------------------------------------------------------
def evaluate_policy(policy, suite_name: str, episodes_per_task: int, out_dir: str | Path, **kw) -> dict:
    """Evaluate an in-memory ``Policy`` (the trainer's periodic evaluation); kw are EvalConfig fields."""
    digest = kw.pop("policy_hash", None) or weights_hash(policy)
    kw.setdefault("device", str(next(policy.parameters()).device))
    cfg = EvalConfig(
        suite=suite_name,
        episodes_per_task=episodes_per_task,
        out=str(out_dir),
        checkpoint=kw.pop("checkpoint", None) or "<in-memory>",
        **kw,
    )
    cfg.validate()
    return _evaluate_model(cfg, policy, digest)


def render_as_trained(
    cfg: EvalConfig, cameras: list[str], image_size: int | None
) -> tuple[EvalConfig, list[str] | None]:
    """Render only the cameras a policy reads, at the resolution it trained on (unless --image-size says
    otherwise), where the suite lets both be chosen: the run's config and the cameras for ``run_evaluation``."""
    suite_fields = {f.name for f in dataclasses.fields(lookup(SuiteConfig, cfg.suite, "suite"))}
    if cfg.image_size is None and image_size and "image_size" in suite_fields:
        cfg = dataclasses.replace(cfg, image_size=image_size)
    return cfg, (cameras if "cameras" in suite_fields else None)


def check_latency(cfg: EvalConfig, n_action_steps: int, chunk_size: int | None) -> None:
    """A chunk must still hold actions when the next one lands: n_action_steps + latency_steps <= chunk_size.
    With --rtc the previous chunk's remainder must cover the delay: latency_steps <= n_action_steps (d <= s)."""
    d = cfg.latency_steps
    if chunk_size is not None and n_action_steps + d > chunk_size:
        raise ValueError(
            f"--latency-steps {d} with n_action_steps={n_action_steps}: a chunk of {chunk_size} actions runs out "
            f"before the next one lands; lower one of them (n_action_steps + latency_steps <= {chunk_size})"
        )
    if cfg.rtc and d > n_action_steps:
        raise ValueError(
            f"--rtc with --latency-steps {d} > n_action_steps={n_action_steps}: the paper's d <= s (a request is "
            "sent every n_action_steps and answered before the next)"
        )


def _evaluate_model(cfg: EvalConfig, policy, digest: str) -> dict:
    pc = policy.config
    n = cfg.n_action_steps or pc.n_action_steps
    if not 1 <= n <= pc.chunk_size:
        raise ValueError(f"n_action_steps={n} must be in [1, chunk_size={pc.chunk_size}]")
    info = {
        "name": cfg.checkpoint,
        "kind": "checkpoint",
        "checkpoint_hash": digest,
        "chunk_size": pc.chunk_size,
        "n_action_steps": n,
        "cameras": list(pc.cameras),
        "state_key": pc.state_key,
    }
    for key in ("temporal_ensemble_coeff", "adaptive_ensemble_alpha"):  # recorded only when set: earlier
        if getattr(pc, key) is not None:  # protocols stay resumable
            info[key] = getattr(pc, key)
    if cfg.latency_steps:  # likewise
        info["latency_steps"] = cfg.latency_steps
    if policy.head.chooses_execute:  # MoH consensus: chunks play their agreed prefix, not n_action_steps
        info["executes_consensus_prefix"] = True
    check_latency(cfg, n, pc.chunk_size)
    if cfg.rtc:
        if not policy.head.supports_rtc:
            raise ValueError(f"--rtc: real-time chunking needs a flow or diffusion head, not {pc.head.type!r}")
        from vla.models.heads.rtc import resolve_mode, with_overrides

        rtc = with_overrides(pc.rtc, cfg.rtc, cfg.rtc_schedule, cfg.rtc_beta)
        resolve_mode(rtc, policy.head.rtc_trained)  # inpainting an untrained head fails before any episode
        policy.config = pc = dataclasses.replace(pc, rtc=rtc)
        info["rtc"] = dataclasses.asdict(rtc) | {"trained": policy.head.rtc_trained}
    if pc.auxiliary.enabled:  # what training used beside the inputs (never read here); only when set, as above
        info["training_auxiliary_target"] = pc.auxiliary.key
    cfg, cams = render_as_trained(cfg, list(pc.cameras), pc.image_size)
    return run_evaluation(
        cfg, ModelChunker(policy, n, next(policy.parameters()).device), None, info, cams, action_dim=pc.action_dim
    )


def evaluate(cfg: EvalConfig) -> dict:
    """``vla eval``: a checkpoint, a reference policy, a LeRobot policy or a policy server."""
    cfg.validate()
    if is_lerobot_policy(cfg.policy):
        return evaluate_lerobot(cfg)
    if cfg.policy:
        info = {"name": cfg.policy, "kind": "reference", "n_action_steps": 1}
        return run_evaluation(cfg, None, ReferencePolicy(cfg.policy), info)
    if cfg.server:
        chunker = ServerChunker(cfg.server, cfg.n_action_steps, cfg.num_envs, cfg.api_key)
        info = {"name": cfg.server, "kind": "server", "n_action_steps": chunker.n}
        if chunker.ensemble_coeff is not None:
            info["temporal_ensemble_coeff"] = chunker.ensemble_coeff
        if chunker.adaptive_alpha is not None:
            info["adaptive_ensemble_alpha"] = chunker.adaptive_alpha
        check_latency(cfg, chunker.n, chunker.chunk_size)
        if cfg.latency_steps:
            info["latency_steps"] = cfg.latency_steps
        if cfg.rtc:
            if not chunker.rtc:
                raise ValueError(f"--rtc: the server at {cfg.server} does not take real-time chunking inputs")
            info["rtc"] = chunker.rtc
        try:
            return run_evaluation(cfg, chunker, None, info)
        finally:
            chunker.close()
    from vla.models.policy import Policy, checkpoint_hash

    policy = Policy.load(cfg.checkpoint, device=cfg.device)
    if cfg.temporal_ensemble_coeff is not None or cfg.adaptive_ensemble_alpha is not None:
        policy.use_ensembling(cfg.temporal_ensemble_coeff, cfg.adaptive_ensemble_alpha)
    if cfg.compile:
        from vla.models.compile import compile_for_inference

        compile_for_inference(policy)
    return _evaluate_model(cfg, policy, checkpoint_hash(cfg.checkpoint))
