"""dataset.streaming: a local dataset streamed as if remote (a ``file://`` URL, read through fsspec as ``s3://``
or ``hf://`` would be): LeRobotSource's samples, disjoint rank shares, a mixing buffer, exact resume, training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from data_pipelines.lerobot_source import LeRobotSource, LeRobotSourceConfig
from data_pipelines.streaming import ShuffleBuffer, StreamSource, StreamSourceConfig

REPO = Path(__file__).resolve().parents[2]


def stream(root: Path, **kw) -> StreamSource:
    cfg = {"chunk": 6, "shuffle_buffer": 8, **kw}
    return StreamSource(StreamSourceConfig(root=root.as_uri(), **cfg))


def take(source: StreamSource, n: int, rank: int = 0, world: int = 1, start: int = 0) -> list[tuple[int, dict]]:
    it = source.entries(rank, world, start=start)
    return [next(it) for _ in range(n)]


def same_rows(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("fixture", ["multi_file_dataset", "metaworld_layout_dataset"])
def test_streamed_samples_are_lerobot_sources(fixture, request):
    """Every frame of a pass, video (a data file per episode) or images in parquet, is LeRobotSource's sample
    of that frame: images, state, the action chunk and its padding past the episode end, the instruction."""
    root = request.getfixturevalue(fixture)
    source = stream(root)
    reference = LeRobotSource(LeRobotSourceConfig(root=str(root), chunk=6))
    assert len(source) == len(reference)
    seen = []
    for frame, row in take(source, len(source)):
        ours, theirs = source.decode(row), reference[frame]
        assert ours.keys() == theirs.keys()
        for key, value in ours.items():
            if isinstance(value, torch.Tensor):
                assert value.dtype == theirs[key].dtype and torch.equal(value, theirs[key]), (key, frame)
            else:
                assert value == theirs[key], (key, frame)
        seen.append(frame)
    assert sorted(seen) == list(range(len(source)))  # each frame once per pass
    assert any(reference[f]["action_pad"].any() for f in seen)  # the padding was compared too
    assert torch.equal(source[7]["images"], reference[7]["images"])  # random access, for the trainer's probes


def test_two_ranks_read_disjoint_shares_that_cover_the_data_file_by_file(multi_file_dataset, monkeypatch):
    source = stream(multi_file_dataset)
    reads = []
    real = StreamSource._read_file
    monkeypatch.setattr(StreamSource, "_read_file", lambda self, eps: reads.append(tuple(eps)) or real(self, eps))
    n = len(source)
    for world in (2, 3):
        for pass_ in (0, 1):
            shares = []
            for rank in range(world):
                size = source.share_size(rank, world)
                reads.clear()
                frames = [f for f, _ in take(source, size, rank, world, start=pass_ * size)]
                shares.append(set(frames))
                assert len(frames) == len(set(frames)) == size
                # File by file: each data file of the share opened once (here a file is an episode).
                segments = source.plan.segments(pass_, rank, world)
                assert sorted(reads) == sorted({(s.episode,) for s in segments})
            assert sum(len(s) for s in shares) == n and set().union(*shares) == set(range(n))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
    # Another pass, another cut: the shares differ between passes.
    first = [f for f, _ in take(source, source.share_size(0, 2), 0, 2)]
    second = [f for f, _ in take(source, source.share_size(0, 2), 0, 2, start=source.share_size(0, 2))]
    assert set(first) != set(second)


def test_episode_subset_streams_only_those_episodes(multi_file_dataset):
    source = stream(multi_file_dataset, episodes=[1, 4])
    assert len(source) == 9 + 8
    episodes = {int(row["episode_index"]) for _, row in take(source, 2 * len(source))}
    assert episodes == {1, 4}


def test_the_shuffle_buffer_mixes(multi_file_dataset):
    """Buffer 1 keeps the read order (episode after episode); a buffer of 16 mixes episodes and frames."""
    n = 68

    def adjacency(buffer: int) -> tuple[float, int]:
        rows = take(stream(multi_file_dataset, shuffle_buffer=buffer), n)
        frames = [f for f, _ in rows]
        assert sorted(frames) == list(range(n))
        consecutive = np.mean(np.diff(frames) == 1)
        first_ten = len({int(row["episode_index"]) for _, row in rows[:10]})
        return float(consecutive), first_ten

    in_order, episodes_in_order = adjacency(1)
    mixed, episodes_mixed = adjacency(16)
    assert in_order > 0.9 and episodes_in_order <= 2
    assert mixed < 0.3 and episodes_mixed >= 2

    counts = Counter(next(iter(ShuffleBuffer(range(10), 4, np.random.default_rng(s)))) for s in range(400))
    assert set(counts) == {0, 1, 2, 3}  # the first item is any of the first `size`, uniformly
    assert min(counts.values()) > 60


def test_resume_continues_at_the_position(multi_file_dataset, monkeypatch):
    """Starting at sample k gives exactly the uninterrupted stream from k (frames and rows): inside the buffer's
    fill, mid-pass, at a pass boundary, in the second pass; and it opens no data file wholly before k."""
    source = stream(multi_file_dataset, shuffle_buffer=5)
    rank, world = 1, 2
    size = source.share_size(rank, world)
    full = take(source, 3 * size, rank, world)
    for k in (1, 3, size // 2, size - 1, size, size + 7, 2 * size + 2):
        resumed = take(source, 12, rank, world, start=k)
        assert [f for f, _ in resumed] == [f for f, _ in full[k : k + 12]], k
        assert all(same_rows(a, b) for (_, a), (_, b) in zip(resumed, full[k : k + 12], strict=True)), k

    reads = []
    real = StreamSource._read_file
    monkeypatch.setattr(StreamSource, "_read_file", lambda self, eps: reads.append(eps) or real(self, eps))
    take(source, 1, rank, world, start=size - 1)  # the last sample of pass 0
    assert len(reads) <= 5  # at most the episodes the buffer holds, not all that came before


def test_statistics_of_a_streamed_dataset(multi_file_dataset):
    """Computed from the URL's columns as from the local root; dataset.stats=URL: its meta/stats.json."""
    from data_pipelines.stats import compute_stats, load_stats
    from vla.train.data import _stats

    source = stream(multi_file_dataset, episodes=[0, 2, 3])
    keys = source.feature_map.stats_keys
    local = compute_stats(multi_file_dataset, keys, episodes=[0, 2, 3])
    assert _stats(source) == source.feature_map.stats_for(local)
    own = _stats(source, multi_file_dataset.as_uri())
    expected = source.feature_map.stats_for(load_stats(multi_file_dataset))
    assert json.dumps(own, default=np.ndarray.tolist) == json.dumps(expected, default=np.ndarray.tolist)


def test_settings_that_cannot_stream_are_refused(multi_file_dataset):
    from vla.train.config import DatasetConfig
    from vla.train.data import _source

    url = multi_file_dataset.as_uri()
    with pytest.raises(ValueError, match="is a URL: it is read incrementally, add --dataset.streaming=true"):
        _source(url, None, DatasetConfig(root=url), chunk=4)
    with pytest.raises(ValueError, match="dataset.shuffle_buffer must be >= 1"):
        DatasetConfig(root=url, streaming=True, shuffle_buffer=0)
    with pytest.raises(FileNotFoundError, match="meta/info.json does not exist"):
        StreamSource(StreamSourceConfig(root=(multi_file_dataset / "data").as_uri()))


TINY = [
    "--policy.backbone.preset=tiny-smolvlm",
    "--policy.head.type=flow",  # noise and time drawn per sample: resumed exactly only if sample numbers are
    "--policy.chunk_size=4",
    "--policy.n_action_steps=2",
    "--train.log_every=1",
    "--optim.warmup_steps=2",
    "--optim.lr=1e-3",
    "--train.batch_size=2",
    "--train.steps=4",
    "--train.save_every=2",
    "--dataset.streaming=true",
    "--dataset.shuffle_buffer=6",
]


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_streamed_training_resumes_exactly(multi_file_dataset, tmp_path, monkeypatch, request):
    """`vla train --dataset.streaming=true` from a file:// URL with 2 DataLoader workers; then the same run in
    process with none, killed after its step-2 checkpoint and resumed: the same losses and the same weights."""
    url = multi_file_dataset.as_uri()
    full = tmp_path / "full"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    args = ["train", f"--dataset.root={url}", *TINY, f"--output_dir={full}", "--train.num_workers=2"]
    r = subprocess.run([sys.executable, "-m", "vla", *args], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [row["step"] for row in metrics(full)] == [1, 2, 3, 4]

    from safetensors.torch import load_file

    from vla.config import parse_config
    from vla.train.checkpoint import CheckpointManager
    from vla.train.config import TrainConfig
    from vla.train.trainer import run_training

    class Killed(Exception):
        pass

    real = CheckpointManager.save

    def save_then_die(self, step, *a, **kw):
        out = real(self, step, *a, **kw)
        if step == 2:
            raise Killed
        return out

    crashed = tmp_path / "crashed"
    cfg = [f"--dataset.root={url}", *TINY, f"--output_dir={crashed}", "--train.num_workers=0"]
    # one thread, as the subprocess above (OMP_NUM_THREADS=1): another count sums in another order, and the
    # weights would differ in their last bits for that reason alone
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    monkeypatch.setattr(CheckpointManager, "save", save_then_die)
    with pytest.raises(Killed):
        run_training(parse_config(TrainConfig, cfg))
    monkeypatch.undo()
    state = json.loads((crashed / "checkpoints" / "last" / "stream_state.json").read_text())
    assert state["ranks"] == [{"rank": 0, "samples": 4, "pass": 0, "offset": 4}]
    assert state["world_size"] == 1 and state["shuffle_buffer"] == 6 and state["frames"] == 68
    run_training(parse_config(TrainConfig, [*cfg, "--resume=true"]))

    a, b = metrics(full), metrics(crashed)
    assert [row["step"] for row in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b, strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-6, abs=1e-8), (ra, rb)
    wa = load_file(str(full / "checkpoints" / "last" / "model.safetensors"))
    wb = load_file(str(crashed / "checkpoints" / "last" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_two_process_streamed_training(multi_file_dataset, tmp_path):
    """torchrun --nproc_per_node 2: each rank streams its share; the checkpoint records both positions."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "-m"]
    args = ["vla", "train", f"--dataset.root={multi_file_dataset.as_uri()}", *TINY, f"--output_dir={out}"]
    r = subprocess.run([*launcher, *args, "--train.num_workers=0"], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    state = json.loads((out / "checkpoints" / "last" / "stream_state.json").read_text())
    assert state["world_size"] == 2 and [p["samples"] for p in state["ranks"]] == [8, 8]
