"""`vla eval --shard K/N` and `vla eval merge`: shards merged equal the unsharded run, on MetaWorld and LIBERO.

Every run goes through the CLI (`vla.cli.main.main`, in process) with the random reference policy and a few
short episodes; the merge is compared with an unsharded run of the same protocol: the same per-episode
records (task, init state, seed, success, length) and the same results.json (timestamp aside).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from eval.report import EPISODES_FILE, PROTOCOL_FILE, RESULTS_JSON, RESULTS_MD
from eval.runner import merge_dirs, parse_shard, shard_of
from vla.cli.eval import shard_to_index_and_count
from vla.cli.main import main


def _eval(out: Path, *args: str) -> None:
    assert main(["eval", "--policy", "random", "--progress", "false", "--out", str(out), *args]) == 0


def _results(out: Path) -> dict:
    res = json.loads((out / RESULTS_JSON).read_text())
    res["protocol"].pop("timestamp")
    return res


def _episodes(out: Path) -> list[dict]:
    lines = (out / EPISODES_FILE).read_text().splitlines()
    return sorted((json.loads(x) for x in lines), key=lambda r: (r["task_index"], r["episode_index"]))


def _sharded_equals_unsharded(tmp_path: Path, args: list[str], shares: list[set]) -> dict:
    _eval(tmp_path / "whole", *args)
    for k in (1, 0):  # any order
        _eval(tmp_path / "sharded", *args, "--shard", f"{k}/2")
    for k, share in enumerate(shares):
        shard = tmp_path / "sharded" / f"shard_{k}"
        assert json.loads((shard / PROTOCOL_FILE).read_text())["shard"] == {"index": k, "count": 2}
        assert {(r["task_index"], r["episode_index"]) for r in _episodes(shard)} == share
    whole = _results(tmp_path / "whole")
    # the folder of shards (merged into it), and the shard folders named one by one into another folder
    assert main(["eval", "merge", str(tmp_path / "sharded")]) == 0
    shard_dirs = [str(tmp_path / "sharded" / f"shard_{k}") for k in (1, 0)]
    assert main(["eval", "merge", *shard_dirs, "--out", str(tmp_path / "merged")]) == 0
    for out in (tmp_path / "sharded", tmp_path / "merged"):
        assert _results(out) == whole  # numbers, intervals, protocol (no shard label), per-episode records
        assert _episodes(out) == _episodes(tmp_path / "whole")  # success, length, seed of every episode
        assert (out / RESULTS_MD).read_text() == (tmp_path / "whole" / RESULTS_MD).read_text()
        assert (out / "success.png").exists()
        assert sorted(p.name for p in (out / "videos").glob("*.mp4")) == whole["videos"]
    # the merged folder is the unsharded run's: rerunning that command there finds every episode done
    _eval(tmp_path / "merged", *args)
    assert _results(tmp_path / "merged") == whole
    return whole


def test_shard_parsing_and_shares():
    assert parse_shard("0/2") == (0, 2) and parse_shard("3/4") == (3, 4)
    for bad in ("2/2", "1", "-1/2", "a/b", "1/0"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)
    assert shard_to_index_and_count(["--suite", "x", "--shard", "1/3", "--seed=2"]) == [
        "--suite",
        "x",
        "--shard-index=1",
        "--num-shards=3",
        "--seed=2",
    ]
    assert shard_to_index_and_count(["--shard=0/2"]) == ["--shard-index=0", "--num-shards=2"]
    items = list(range(7))
    shares = [shard_of(items, k, 3) for k in range(3)]
    assert shares == [[0, 1, 2], [3, 4], [5, 6]]  # contiguous, balanced, every item once


@pytest.mark.sim
def test_metaworld_two_shards_merge_to_the_unsharded_run(tmp_path):
    # 3 tasks x 2 episodes: the shards split task 1 between them
    args = ["--suite", "mw-easy", "--tasks", "0,1,2", "--episodes-per-task", "2", "--max-steps", "5"]
    args += ["--video-episodes", "1", "--image-size", "64"]  # the first episode of each task on video
    whole = _sharded_equals_unsharded(tmp_path, args, [{(0, 0), (0, 1), (1, 0)}, {(1, 1), (2, 0), (2, 1)}])
    assert len(whole["videos"]) == 3  # from both shards, copied into the merged folder's videos/


@pytest.mark.sim
def test_libero_two_shards_merge_to_the_unsharded_run(tmp_path):
    args = ["--suite", "libero_spatial", "--tasks", "0", "--episodes-per-task", "2", "--max-steps", "10"]
    _sharded_equals_unsharded(tmp_path, args, [{(0, 0)}, {(0, 1)}])


@pytest.mark.sim
def test_merge_refuses_what_is_not_one_run(tmp_path):
    args = ["--suite", "mw-easy", "--tasks", "0", "--episodes-per-task", "2", "--max-steps", "3"]
    for k in (0, 1):
        _eval(tmp_path / "a", *args, "--shard", f"{k}/2")
    _eval(tmp_path / "seed1", *args, "--seed", "1", "--shard", "1/2")
    _eval(tmp_path / "whole", *args)
    a0, a1 = tmp_path / "a" / "shard_0", tmp_path / "a" / "shard_1"
    out = tmp_path / "out"

    with pytest.raises(ValueError, match=r"different protocols \(differ in: seed, tasks\)"):
        merge_dirs([a0, tmp_path / "seed1" / "shard_1"], out)
    with pytest.raises(ValueError, match=r"given twice: shard \[0\]"):
        merge_dirs([a0, a0, a1], out)
    with pytest.raises(ValueError, match=r"missing: \[1\]"):
        merge_dirs([a0], out)
    with pytest.raises(ValueError, match="not the result of a shard"):
        merge_dirs([a0, tmp_path / "whole"], out)
    with pytest.raises(FileNotFoundError, match="neither a shard"):
        merge_dirs([tmp_path / "nowhere"], out)

    # a shard whose log lost an episode (unfinished), and one that also played the other's episode
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "a", cut)
    (cut / "shard_1" / EPISODES_FILE).write_text("")
    with pytest.raises(ValueError, match="1 episodes of the protocol are missing.*reach-v3 #1"):
        merge_dirs([cut])
    (cut / "shard_1" / EPISODES_FILE).write_text((a0 / EPISODES_FILE).read_text() + (a1 / EPISODES_FILE).read_text())
    with pytest.raises(ValueError, match="episodes played twice: reach-v3 #0"):
        merge_dirs([cut])
    assert not (cut / RESULTS_JSON).exists()  # nothing written by a refused merge

    # the CLI: one line and exit code 2; an --out holding another protocol's episodes is refused
    with pytest.raises(SystemExit) as e:
        main(["eval", "merge", str(a0), str(tmp_path / "seed1" / "shard_1"), "--out", str(out)])
    assert e.value.code == 2
    _eval(tmp_path / "other", *args, "--seed", "1")
    with pytest.raises(ValueError, match="different evaluation protocol"):
        merge_dirs([tmp_path / "a"], tmp_path / "other")
    merged = merge_dirs([tmp_path / "a"])
    assert merged["overall"]["episodes"] == 2 and (tmp_path / "a" / RESULTS_JSON).exists()


def test_slurm_script_submits_the_shards_then_the_merge(tmp_path):
    """scripts/slurm_eval.sbatch with a stand-in sbatch: an array of N shards, a merge that waits for all of
    them; an array task runs `vla eval ... --shard K/N`."""
    import os
    import subprocess

    script = Path(__file__).resolve().parents[2] / "scripts" / "slurm_eval.sbatch"
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> "$SBATCH_LOG"\necho "4$(wc -l < "$SBATCH_LOG")"\n')
    fake.chmod(0o755)
    env = os.environ | {"PATH": f"{fake.parent}:{os.environ['PATH']}", "SBATCH_LOG": str(tmp_path / "log")}
    env.pop("SLURM_ARRAY_TASK_ID", None)
    args = ["--policy", "random", "--suite", "mw-easy", "--out", "outputs/eval x"]
    r = subprocess.run(["bash", str(script), "3", *args], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    array, merge = (tmp_path / "log").read_text().splitlines()
    assert array == f"--parsable --array=0-2 {script} 3 {' '.join(args)}"
    assert "--dependency=afterok:41 " in merge and merge.endswith("--wrap .venv/bin/vla eval merge outputs/eval\\ x")
    task = env | {"SLURM_ARRAY_TASK_ID": "2", "VLA": "echo vla"}
    r = subprocess.run(["bash", str(script), "3", *args], cwd=tmp_path, env=task, capture_output=True, text=True)
    assert r.stdout.split() == ["vla", "eval", *args[:-1], "outputs/eval", "x", "--shard", "2/3"]
    for bad in (args[:-2], [*args, "--shard", "0/3"]):  # no --out; a shard chosen by hand
        r = subprocess.run(["bash", str(script), "3", *bad], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert r.returncode == 2


@pytest.mark.sim
def test_devices_run_one_shard_each_and_merge_into_the_unsharded_result(tmp_path):
    """`vla eval --devices cpu,cpu` (what --gpus 0,1 does on GPUs): two shard processes, merged into --out,
    equal to the unsharded run; the same command again finds every episode done."""
    args = ["--suite", "mw-easy", "--tasks", "0,1", "--episodes-per-task", "2", "--max-steps", "8"]
    _eval(tmp_path / "whole", *args)
    _eval(tmp_path / "parallel", *args, "--devices", "cpu,cpu")
    assert sorted(p.name for p in (tmp_path / "parallel" / "logs").iterdir()) == ["shard_0.log", "shard_1.log"]
    assert _results(tmp_path / "parallel") == _results(tmp_path / "whole")
    assert _episodes(tmp_path / "parallel") == _episodes(tmp_path / "whole")
    _eval(tmp_path / "parallel", *args, "--devices=cpu,cpu")
    assert _results(tmp_path / "parallel") == _results(tmp_path / "whole")


def test_device_flags_are_checked():
    from eval.parallel import run_on_devices, split_device_flag

    assert split_device_flag(["--suite", "mw10", "--gpus", "0,1"]) == (["--suite", "mw10"], ["cuda:0", "cuda:1"])
    assert split_device_flag(["--devices=cpu,cuda:1"]) == ([], ["cpu", "cuda:1"])
    assert split_device_flag(["--suite", "mw10"]) == (["--suite", "mw10"], None)
    with pytest.raises(ValueError, match="expected GPU indices"):
        split_device_flag(["--gpus", "cuda:0"])
    with pytest.raises(ValueError, match="drop --shard"):
        run_on_devices(["--shard=0/2"], ["cpu"], None)
    with pytest.raises(ValueError, match=r"CUDA device\(s\)"):
        run_on_devices(["--out", "/nonexistent/x"], ["cuda:7"], None)
