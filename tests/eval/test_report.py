import json

import imageio.v2 as imageio
import numpy as np
import pytest

from eval import report
from eval.sweep import find_checkpoints


def _records():
    # task 0: 3/4 successes, task 2: 0/2
    out = []
    for i, (ok, n) in enumerate([(True, 40), (True, 60), (False, 150), (True, 50)]):
        out.append({"task_index": 0, "episode_index": i, "success": ok, "length": n, "seed": i})
    for i in range(2):
        out.append({"task_index": 2, "episode_index": i, "success": False, "length": 150, "seed": 10 + i})
    return out


def test_summarize_rates_cis_and_lengths():
    res = report.summarize(_records(), ["a", "b", "c"])
    assert list(res["tasks"]) == ["a", "c"]
    a, c = res["tasks"]["a"], res["tasks"]["c"]
    assert a["success_rate"] == 0.75 and a["episodes"] == 4 and a["successes"] == 3
    assert a["mean_length"] == pytest.approx(75.0)
    assert a["mean_length_success"] == pytest.approx(50.0)
    assert a["ci95"][0] == pytest.approx(0.3006, abs=1e-4) and a["ci95"][1] == pytest.approx(0.9544, abs=1e-4)
    assert c["success_rate"] == 0.0 and c["ci95"][0] == 0.0 and c["mean_length_success"] is None
    assert res["average_success"] == pytest.approx(0.375)  # mean of per-task rates, not pooled (3/6)
    assert res["overall"] == {"successes": 3, "episodes": 6, "ci95": pytest.approx([0.1876, 0.8124], abs=1e-4)}


def test_write_results_table_and_chart(tmp_path):
    res = report.summarize(_records(), ["a", "b", "c"])
    res["protocol"] = {"suite": "mw-easy", "policy": {"name": "oracle"}}
    paths = report.write_results(tmp_path, res)
    assert json.loads(paths["json"].read_text())["average_success"] == pytest.approx(0.375)
    md = paths["md"].read_text()
    assert "| a | 0.750 | [0.301, 0.954] | 4 | 75.0 |" in md
    assert "| c | 0.000 | [0.000, 0.658] | 2 | 150.0 |" in md
    png = imageio.imread(paths["chart"])
    assert png.ndim == 3 and png.shape[0] > 100
    assert not list(tmp_path.glob(".*partial*"))  # temporaries renamed away


def test_write_video_roundtrip(tmp_path):
    frames = [np.full((32, 48, 3), 10 * i, dtype=np.uint8) for i in range(12)]
    path = report.write_video(tmp_path / "v" / "task_ep000_success.mp4", frames, fps=10)
    import av  # decode independently of the writer (imageio's ffmpeg reader chokes on tiny frames)

    with av.open(str(path)) as container:
        back = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(back) == 12 and back[0].shape == (32, 48, 3)
    assert abs(float(back[-1].mean()) - 110) < 5  # lossy, but brightness survives


def test_episode_log_resume_and_protocol_guard(tmp_path):
    proto = {"suite": "s", "seed": 0, "timestamp": "t0"}
    log = report.EpisodeLog(tmp_path, proto)
    log.append({"task_index": 0, "episode_index": 0, "success": True, "length": 5})
    log.append({"task_index": 0, "episode_index": 1, "success": False, "length": 9})
    with open(tmp_path / report.EPISODES_FILE, "a") as f:
        f.write('{"task_index": 0, "episode_ind')  # killed mid-write
    again = report.EpisodeLog(tmp_path, dict(proto, timestamp="t1"))  # timestamp does not matter
    assert again.done(0, 0) and again.done(0, 1) and not again.done(0, 2)
    assert len((tmp_path / report.EPISODES_FILE).read_text().splitlines()) == 2  # cut line dropped
    with pytest.raises(ValueError, match="different evaluation protocol .*seed"):
        report.EpisodeLog(tmp_path, dict(proto, seed=1))


def test_episode_log_knows_a_checkpoint_by_its_hash_not_its_path(tmp_path):
    """Resuming with the same checkpoint given as another path (relative, absolute, moved) continues;
    other weights under the same path do not."""
    proto = {"suite": "s", "policy": {"name": "outputs/run/last", "checkpoint_hash": "abc"}}
    report.EpisodeLog(tmp_path, proto).append({"task_index": 0, "episode_index": 0, "success": True, "length": 5})
    moved = dict(proto, policy={"name": "/work/outputs/run/last", "checkpoint_hash": "abc"})
    assert report.EpisodeLog(tmp_path, moved).done(0, 0)
    with pytest.raises(ValueError, match="different evaluation protocol .*policy"):
        report.EpisodeLog(tmp_path, dict(proto, policy={"name": "outputs/run/last", "checkpoint_hash": "def"}))
    named_only = {"suite": "s", "policy": {"name": "scripted"}}  # a policy without a hash is its name
    report.EpisodeLog(tmp_path / "ref", named_only).append(
        {"task_index": 0, "episode_index": 0, "success": True, "length": 5}
    )
    with pytest.raises(ValueError, match="different evaluation protocol .*policy"):
        report.EpisodeLog(tmp_path / "ref", {"suite": "s", "policy": {"name": "random"}})


def test_find_checkpoints(tmp_path):
    ck = tmp_path / "checkpoints"
    for name in ["step_0000200", "step_0000010", ".step_0000300.partial"]:
        (ck / name).mkdir(parents=True)
        (ck / name / "model.safetensors").write_bytes(b"")
    (ck / "last").symlink_to(ck / "step_0000200")
    assert [s for s, _ in find_checkpoints(tmp_path)] == [10, 200]
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        find_checkpoints(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="training output dir"):
        find_checkpoints(tmp_path / "nowhere")
