"""The evaluation runner on real simulators: reference policies, a tiny checkpoint, resume, determinism.

Images are rendered at 64 px where the test allows it (rendering dominates on CPU).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tiny_policies import random_tiny_policy

import vla.models.heads.regression  # noqa: F401  (registers "regression" even before heads/__init__ does)
from eval.report import EPISODES_FILE
from eval.runner import EvalConfig, episode_seed, evaluate, evaluate_policy, select_tasks
from eval.suites import get_suite
from vla.models.policy import Policy, checkpoint_hash

REPO = Path(__file__).resolve().parents[2]


def _strip(results: dict) -> dict:
    """results.json minus what may differ between identical runs (the timestamp)."""
    out = json.loads(json.dumps(results))
    out["protocol"].pop("timestamp")
    return out


def _read(out: Path) -> dict:
    return _strip(json.loads((out / "results.json").read_text()))


@pytest.fixture(scope="module")
def tiny_policy() -> Policy:
    """SmolVLM tiny + regression head with mw-easy's cameras and dims, random weights."""
    stats = {"state": {"mean": [0.0] * 4, "std": [1.0] * 4}, "actions": {"mean": [0.0] * 4, "std": [0.5] * 4}}
    # image_size: as if trained on 48 px images
    return random_tiny_policy(
        "regression", ["image", "wrist"], 4, 4, stats, chunk_size=8, n_action_steps=4, image_size=48
    )


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_policy, tmp_path_factory) -> Path:
    return tiny_policy.save(tmp_path_factory.mktemp("ckpt") / "policy")


# ---- pure parts -------------------------------------------------------------------------------
def test_task_selection_seeds_and_config_checks():
    suite = get_suite("mw-easy")
    assert select_tasks(suite, None) == [0, 1, 2, 3, 4]
    assert select_tasks(suite, "3,reach-v3, 3") == [0, 3]
    with pytest.raises(IndexError, match="tasks 0..4"):
        select_tasks(suite, "7")
    with pytest.raises(KeyError, match="no task 'nope'"):
        select_tasks(suite, "nope")
    seeds = {episode_seed(0, t, i) for t in range(5) for i in range(50)}
    assert len(seeds) == 250 and episode_seed(0, 1, 2) == episode_seed(0, 1, 2) != episode_seed(1, 1, 2)
    with pytest.raises(ValueError, match="exactly one of"):
        evaluate(EvalConfig(policy="random", checkpoint="x"))
    with pytest.raises(ValueError, match="known reference policies"):
        evaluate(EvalConfig(policy="expert"))
    with pytest.raises(ValueError, match="only 50 fixed init states"):
        evaluate(EvalConfig(policy="random", episodes_per_task=51, out="/nonexistent/never-written"))


@pytest.mark.sim
def test_eval_time_adaptive_ensembling_of_a_checkpoint(tiny_checkpoint, tmp_path):
    """--adaptive-ensemble-alpha: the checkpoint (trained with 4 actions per chunk) plays a new chunk every
    step, blended, and the protocol says so; it is refused where it cannot apply."""
    kw = dict(suite="mw-easy", tasks="reach-v3", episodes_per_task=1, max_steps=6, image_size=64, progress=False)
    cfg = EvalConfig(checkpoint=str(tiny_checkpoint), adaptive_ensemble_alpha=0.1, out=str(tmp_path / "a"), **kw)
    proto = evaluate(cfg)["protocol"]
    assert proto["n_action_steps"] == 1 and proto["policy"]["adaptive_ensemble_alpha"] == 0.1
    with pytest.raises(ValueError, match="evaluation-time ensembling is for --checkpoint"):
        evaluate(EvalConfig(policy="random", adaptive_ensemble_alpha=0.1))
    with pytest.raises(ValueError, match="drop --n-action-steps"):
        evaluate(EvalConfig(checkpoint="x", adaptive_ensemble_alpha=0.1, n_action_steps=4))


def test_oracle_refused_on_libero(tmp_path):
    with pytest.raises(ValueError, match="no scripted experts"):
        evaluate(EvalConfig(policy="oracle", suite="libero_spatial", tasks="0", episodes_per_task=1, out=str(tmp_path)))


# ---- reference policies on MetaWorld ----------------------------------------------------------
@pytest.mark.sim
def test_oracle_solves_and_random_fails_mw_easy(tmp_path):
    oracle = evaluate(
        EvalConfig(
            policy="oracle",
            suite="mw-easy",
            episodes_per_task=3,
            image_size=64,
            out=str(tmp_path / "oracle"),
            progress=False,
        )
    )
    assert oracle["average_success"] >= 0.9, oracle["tasks"]
    assert all(t["episodes"] == 3 for t in oracle["tasks"].values()) and len(oracle["tasks"]) == 5
    rand = evaluate(
        EvalConfig(
            policy="random",
            suite="mw-easy",
            episodes_per_task=3,
            image_size=64,
            out=str(tmp_path / "random"),
            progress=False,
        )
    )
    assert rand["average_success"] <= 0.1, rand["tasks"]
    # the oracle finishes early, random runs to the step limit
    assert all(t["mean_length"] < 150 for t in oracle["tasks"].values())
    assert all(t["mean_length"] == 150 for t in rand["tasks"].values() if t["successes"] == 0)


@pytest.mark.sim
@pytest.mark.slow
def test_oracle_and_random_mw_easy_full(tmp_path):
    kw = dict(suite="mw-easy", episodes_per_task=5, image_size=64, num_envs=2, progress=False)
    assert evaluate(EvalConfig(policy="oracle", out=str(tmp_path / "o"), **kw))["average_success"] >= 0.9
    assert evaluate(EvalConfig(policy="random", out=str(tmp_path / "r"), **kw))["average_success"] <= 0.1


# ---- determinism and resume -------------------------------------------------------------------
@pytest.mark.sim
def test_repeatable_across_runs_and_num_envs_and_resumes(tmp_path):
    kw = dict(
        policy="random", suite="mw-easy", tasks="0,1", episodes_per_task=3, max_steps=30, image_size=64, progress=False
    )
    a = _strip(evaluate(EvalConfig(out=str(tmp_path / "a"), **kw)))
    b = _strip(evaluate(EvalConfig(out=str(tmp_path / "b"), **kw)))
    c = _strip(evaluate(EvalConfig(out=str(tmp_path / "c"), num_envs=2, **kw)))  # spawn workers
    assert a == b == c == _read(tmp_path / "a")
    lines = (tmp_path / "a" / EPISODES_FILE).read_text().splitlines()
    assert len(lines) == 6

    # An interrupted run: two finished episodes and a line cut short by the kill.
    shutil.copytree(tmp_path / "a", tmp_path / "d")
    (tmp_path / "d" / "results.json").unlink()
    (tmp_path / "d" / EPISODES_FILE).write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:25])
    d = _strip(evaluate(EvalConfig(out=str(tmp_path / "d"), **kw)))
    assert d == a
    resumed = (tmp_path / "d" / EPISODES_FILE).read_text().splitlines()
    assert resumed[:2] == lines[:2] and len(resumed) == 6  # nothing redone, nothing duplicated
    assert sorted(resumed) == sorted(lines)

    with pytest.raises(ValueError, match="different evaluation protocol.*seed"):
        evaluate(EvalConfig(out=str(tmp_path / "d"), **(kw | {"seed": 1})))


@pytest.mark.sim
def test_killed_cli_run_resumes_to_the_same_results(tmp_path):
    args = [
        "--policy",
        "random",
        "--suite",
        "mw-easy",
        "--tasks",
        "0",
        "--episodes-per-task",
        "4",
        "--image-size",
        "64",
        "--progress",
        "false",
    ]
    ref = evaluate(
        EvalConfig(
            policy="random",
            suite="mw-easy",
            tasks="0",
            episodes_per_task=4,
            image_size=64,
            out=str(tmp_path / "ref"),
            progress=False,
        )
    )
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "vla", "eval", *args, "--out", str(out)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    log = out / EPISODES_FILE
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = log.read_text().count("\n")
    assert 1 <= done < 4, f"the run was not interrupted mid-way ({done} episodes done)"
    from vla.cli.main import main

    assert main(["eval", *args, "--out", str(out)]) == 0
    assert _read(out) == _strip(ref)  # same numbers and protocol as an uninterrupted run
    assert len(log.read_text().splitlines()) == 4


# ---- LIBERO smoke -----------------------------------------------------------------------------
@pytest.mark.sim
def test_libero_random_cli_and_api(tmp_path):
    from vla.cli.main import main

    cli_out = tmp_path / "cli"
    rc = main(
        [
            "eval",
            "--policy",
            "random",
            "--suite",
            "libero_spatial",
            "--tasks",
            "0",
            "--episodes-per-task",
            "1",
            "--max-steps",
            "20",
            "--num-envs",
            "1",
            "--out",
            str(cli_out),
        ]
    )
    assert rc == 0
    res = json.loads((cli_out / "results.json").read_text())
    (task,) = res["tasks"].values()
    assert task["episodes"] == 1 and task["mean_length"] <= 20 and 0.0 <= res["average_success"] <= 1.0
    proto = res["protocol"]
    assert proto["suite"] == "libero_spatial" and proto["tasks"][0]["init_state_indices"] == [0]
    assert proto["step_limits"] == {task_name: 20 for task_name in res["tasks"]}
    assert set(proto["versions"]) >= {"torch", "transformers", "mujoco", "metaworld", "libero"}
    api = evaluate(
        EvalConfig(
            policy="random",
            suite="libero_spatial",
            tasks="0",
            episodes_per_task=1,
            max_steps=20,
            out=str(tmp_path / "api"),
            progress=False,
        )
    )
    assert _strip(api) == _strip(res)


# ---- a model policy -----------------------------------------------------------------------------
@pytest.mark.sim
def test_tiny_checkpoint_end_to_end(tiny_policy, tiny_checkpoint, tmp_path):
    kw = dict(suite="mw-easy", tasks="reach-v3", episodes_per_task=2, max_steps=12, image_size=64, progress=False)
    res = evaluate(EvalConfig(checkpoint=str(tiny_checkpoint), video_episodes=1, out=str(tmp_path / "ckpt"), **kw))
    task = res["tasks"]["reach-v3"]
    assert task["episodes"] == 2 and task["mean_length"] <= 12
    proto = res["protocol"]
    assert proto["policy"]["checkpoint_hash"] == checkpoint_hash(tiny_checkpoint)
    assert proto["n_action_steps"] == 4 and proto["cameras"] == ["image", "wrist"]
    (video,) = res["videos"]
    assert video.startswith("reach-v3_ep000_") and video.endswith(("_success.mp4", "_failure.mp4"))
    assert (tmp_path / "ckpt" / "videos" / video).stat().st_size > 0
    assert (tmp_path / "ckpt" / "success.png").exists() and (tmp_path / "ckpt" / "results.md").exists()
    # The same weights in memory (the trainer's path) score the same episodes the same way.
    mem = evaluate_policy(
        tiny_policy, "mw-easy", 2, tmp_path / "mem", tasks="reach-v3", max_steps=12, image_size=64, progress=False
    )
    assert mem["tasks"] == res["tasks"]
    # Without --image-size the suite renders at the policy's training resolution.
    own = evaluate_policy(tiny_policy, "mw-easy", 1, tmp_path / "own", tasks="reach-v3", max_steps=4, progress=False)
    assert own["protocol"]["image_size"] == 48 and proto["image_size"] == 64


@pytest.mark.sim
def test_a_checkpoint_trained_with_an_auxiliary_target_plays_without_it(tiny_policy, tmp_path):
    """policy.auxiliary is training only: the runner plays from the cameras and proprioception as always (the
    suite's env_state stays unread) and the protocol records what training used beside the inputs."""
    from vla.models.auxiliary import AuxiliaryConfig

    aux = AuxiliaryConfig(key="observation.environment_state", dim=39)
    cfg = dataclasses.replace(tiny_policy.config, auxiliary=aux)
    stats = {**tiny_policy.stats, "aux_target": {"mean": [0.0] * 39, "std": [1.0] * 39}}
    ckpt = Policy(cfg, stats).save(tmp_path / "policy")
    kw = dict(suite="mw-easy", tasks="reach-v3", episodes_per_task=1, max_steps=4, progress=False)
    res = evaluate(EvalConfig(checkpoint=str(ckpt), out=str(tmp_path / "eval"), **kw))
    assert res["tasks"]["reach-v3"]["episodes"] == 1
    assert res["protocol"]["policy"]["training_auxiliary_target"] == "observation.environment_state"
    assert res["protocol"]["policy"]["state_key"] == "observation.state"


@pytest.mark.sim
def test_eval_sweep_selects_on_other_episodes_than_it_reports(tiny_policy, tiny_checkpoint, tmp_path):
    """Checkpoints are compared on one block of init states; the chosen one is scored on a disjoint one."""
    from vla.cli.main import main

    run = tmp_path / "run"
    for step in (5, 10):
        shutil.copytree(tiny_checkpoint, run / "checkpoints" / f"step_{step:07d}")
    rc = main(
        [
            "eval-sweep",
            str(run),
            "--suite",
            "mw-easy",
            "--tasks",
            "0",
            "--episodes-per-task",
            "1",
            "--max-steps",
            "8",
            "--image-size",
            "64",
            "--progress",
            "false",
        ]
    )
    assert rc == 0
    out = run / "eval_sweep" / "mw-easy"
    summary = json.loads((out / "sweep.json").read_text())
    selection, held_out = summary["selection"], summary["held_out"]
    assert [r["step"] for r in selection["checkpoints"]] == [5, 10]
    assert summary["best"]["step"] == 10  # identical weights tie; the later step wins

    def played(results_dir: Path) -> set[int]:
        (task,) = json.loads((results_dir / "results.json").read_text())["protocol"]["tasks"]
        return set(task["init_state_indices"])

    chosen_on = set().union(*(played(out / "selection" / f"step_{s:07d}") for s in (5, 10)))
    reported_on = played(out / "held_out" / "step_0000010")
    assert chosen_on and reported_on and not chosen_on & reported_on  # the reported episodes played no part
    assert chosen_on == set(selection["init_state_indices"]) and reported_on == set(held_out["init_state_indices"])
    assert reported_on == {0}  # held-out = the episodes `vla eval --episodes-per-task 1` plays
    held = json.loads((out / "held_out" / "step_0000010" / "results.json").read_text())
    assert summary["best"]["held_out_success"] == held_out["average_success"] == held["average_success"]
    table = (out / "sweep.md").read_text()
    assert "selection" in table and "held-out" in table and "**best**" in table
    assert (out / "success_vs_step.png").exists()


@pytest.mark.sim
def test_server_eval_matches_in_process(tiny_policy, tiny_checkpoint, tmp_path):
    """`--server`: the same episodes through the websocket protocol score as in-process (deterministic head)."""
    from vla.serve.server import PolicyServer, ServeConfig, ServerThread

    kw = dict(suite="mw-easy", tasks="0", episodes_per_task=2, max_steps=8, image_size=64, progress=False)
    local = evaluate(EvalConfig(checkpoint=str(tiny_checkpoint), out=str(tmp_path / "local"), **kw))
    cfg = ServeConfig(checkpoint=str(tiny_checkpoint), host="127.0.0.1", port=0)
    with ServerThread(PolicyServer(tiny_policy, cfg)) as thread:
        remote = evaluate(EvalConfig(server=thread.url, out=str(tmp_path / "remote"), **kw))
    assert remote["protocol"]["policy"] == {"name": thread.url, "kind": "server", "n_action_steps": 4}
    assert remote["tasks"] == local["tasks"]


class InProcessEnvs:
    """``num_envs`` EnvWorkers in this process (the runner batches them as it batches worker processes),
    so a test can watch what each env is sent."""

    def __init__(self, suite, num_envs, reference, video_dir, video_fps=20) -> None:
        from eval.vector_env import EnvWorker

        self.num_envs = num_envs
        self._workers = [EnvWorker(suite, reference, video_dir, video_fps) for _ in range(num_envs)]
        self._pending: dict[int, tuple] = {}

    def send(self, i, method, arg) -> None:
        self._pending[i] = (method, arg)

    def recv(self, i):
        method, arg = self._pending.pop(i)
        return getattr(self._workers[i], method)(arg)

    def ready(self, indices, wait_for=()):
        return list(indices)  # run on recv: every env is ready

    def close(self) -> None:
        for w in self._workers:
            w.close()


def act_temporal_ensembling(chunks: dict[int, np.ndarray], t: int, horizon: int, coeff: float) -> np.ndarray:
    """ACT's rule, written out: every chunk observed at t0 in (t - H, t] predicts step t with its
    action t - t0; the oldest prediction weighs exp(0), the next exp(-coeff), ..."""
    preds = [chunks[t0][t - t0] for t0 in sorted(chunks) if 0 <= t - t0 < horizon]
    w = np.exp(-coeff * np.arange(len(preds)))
    return np.einsum("k,kd->d", w / w.sum(), np.stack(preds))


@pytest.mark.sim
def test_ensembling_checkpoint_plays_the_ensembled_actions_per_env(tiny_policy, monkeypatch, tmp_path):
    """policy.temporal_ensemble_coeff: each env plays ACT's average of its own episode's overlapping chunks
    (3 episodes on 2 batched envs: the averages are kept per env and start over with each episode)."""
    import eval.runner as runner
    from eval.vector_env import EnvWorker

    cfg = dataclasses.replace(tiny_policy.config, n_action_steps=1, temporal_ensemble_coeff=0.5)
    policy = Policy(cfg, tiny_policy.stats).eval()
    horizon = cfg.chunk_size
    batches, chunks, played = [], [], {}
    real_call, real_predict, real_act = runner.ModelChunker.__call__, policy.predict_chunk, EnvWorker.act

    def chunker_call(self, items):
        batches.append([(it.spec.episode_index, it.step) for it in items])
        return real_call(self, items)

    def predict(observation, **kw):
        chunk = real_predict(observation, **kw)
        chunks.append(chunk.float().cpu().numpy())
        return chunk

    def act(self, actions):
        played.setdefault(self._spec.episode_index, []).extend(np.asarray(actions))
        return real_act(self, actions)

    monkeypatch.setattr(runner, "make_vector_env", InProcessEnvs)
    monkeypatch.setattr(runner.ModelChunker, "__call__", chunker_call)
    monkeypatch.setattr(policy, "predict_chunk", predict)
    monkeypatch.setattr(EnvWorker, "act", act)
    res = evaluate_policy(policy, "mw-easy", 3, tmp_path, tasks="reach-v3", max_steps=5, num_envs=2, progress=False)
    assert res["tasks"]["reach-v3"]["episodes"] == 3
    assert max(len(b) for b in batches) == 2  # the two envs shared forward passes
    observed: dict[int, dict[int, np.ndarray]] = {}  # episode -> {step: (H, D) chunk from that step's observation}
    for keys, batch in zip(batches, chunks, strict=True):
        for (episode, step), chunk in zip(keys, batch, strict=True):
            observed.setdefault(episode, {})[step] = chunk
    assert sorted(observed) == sorted(played) == [0, 1, 2]
    for episode, actions in played.items():
        assert sorted(observed[episode]) == list(range(len(actions)))  # a new observation every step
        expected = [act_temporal_ensembling(observed[episode], t, horizon, 0.5) for t in range(len(actions))]
        np.testing.assert_allclose(np.stack(actions), np.stack(expected), rtol=1e-5, atol=1e-6)
        assert not np.allclose(actions[1], observed[episode][1][0])  # not simply each new chunk's first action


@pytest.mark.sim
def test_shards_merge_into_the_unsharded_evaluation(tmp_path):
    """Two shares of the episodes, merged, report what one run of all of them reports."""
    from eval.runner import merge_shards

    kw = dict(policy="random", suite="mw-easy", tasks="0", episodes_per_task=3, max_steps=5, progress=False)
    whole = evaluate(EvalConfig(out=str(tmp_path / "whole"), **kw))
    shares = [evaluate(EvalConfig(out=str(tmp_path / "sharded"), num_shards=2, shard_index=i, **kw)) for i in (1, 0)]
    played = [{r["episode_index"] for r in s["episodes"]} for s in shares]
    assert played == [{2}, {0, 1}]  # contiguous and balanced
    assert (tmp_path / "sharded" / "shard_0" / EPISODES_FILE).exists()
    merged = merge_shards(tmp_path / "sharded", shares)
    assert _strip(merged) == _strip(whole) == _read(tmp_path / "sharded")
    with pytest.raises(ValueError, match="shards 0..1 of one run"):
        merge_shards(tmp_path / "sharded", [shares[0], shares[0]])


def test_rounds_wait_for_stepping_envs_and_never_for_a_reset():
    """ProcessVectorEnv.ready: every env that is stepping is waited for (they share one policy call), an env
    still resetting is left out until its reply is there, and with none stepping any one reply ends the wait."""
    import multiprocessing
    import threading

    from eval.vector_env import ProcessVectorEnv

    pipes = [multiprocessing.Pipe() for _ in range(3)]
    envs = ProcessVectorEnv.__new__(ProcessVectorEnv)  # only the pipes: no env processes
    envs._conns = [ours for ours, _ in pipes]
    pipes[0][1].send("step reply")
    late = threading.Timer(0.2, lambda: pipes[1][1].send("late step reply"))
    late.start()
    assert envs.ready([0, 1, 2], wait_for=[0, 1]) == [0, 1]  # env 2 (resetting) does not hold the round
    late.join()
    for ours, _ in pipes[:2]:
        ours.recv()
    pipes[2][1].send("reset done")
    assert envs.ready([0, 1, 2], wait_for=[]) == [2]
