"""The real openpi client (WebsocketClientPolicy + ActionChunkBroker) against our server, fed a frame
read back from a real LeRobot dataset and sent under openpi's LIBERO key names."""

from __future__ import annotations

import numpy as np
import pytest
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from openpi_client.action_chunk_broker import ActionChunkBroker
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from data_pipelines.lerobot_source import default_video_backend
from data_pipelines.writer import DatasetWriter, make_features

API_KEY = "test-key"


@pytest.fixture(scope="module")
def frame(tmp_path_factory) -> dict:
    """Frame 3 of a 2-camera, 8-dim-state LeRobot dataset written by our DatasetWriter (PNG images in parquet)."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("ds") / "libero_like"
    n = 6
    with DatasetWriter(
        root,
        fps=10,
        features=make_features({"image": (48, 64), "wrist": (48, 64)}, 8, 7, use_videos=False),
        robot_type="panda",
        use_videos=False,
    ) as w:
        w.add_episode(
            {
                "observation.images.image": rng.integers(0, 256, (n, 48, 64, 3), dtype=np.uint8),
                "observation.images.wrist": rng.integers(0, 256, (n, 48, 64, 3), dtype=np.uint8),
                "observation.state": rng.normal(size=(n, 8)).astype(np.float32),
                "action": rng.normal(size=(n, 7)).astype(np.float32),
            },
            task="put the bowl on the plate",
        )
    return LeRobotDataset("local/libero_like", root=root, video_backend=default_video_backend())[3]


def _as_openpi_libero(item: dict) -> dict:
    """LeRobot's (3, H, W) float [0, 1] tensors -> what openpi's LIBERO client sends: HWC uint8 under its keys."""

    def hwc(x):
        return (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

    return {
        "observation/image": hwc(item["observation.images.image"]),
        "observation/wrist_image": hwc(item["observation.images.wrist"]),
        "observation/state": item["observation.state"].numpy().astype(np.float32),
        "prompt": item["task"],
    }


@pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")
def test_openpi_client_and_chunk_broker(server, policy, frame, in_process):
    obs = _as_openpi_libero(frame)
    assert obs["observation/image"].shape == (48, 64, 3) and obs["prompt"] == "put the bowl on the plate"
    client = WebsocketClientPolicy(host="127.0.0.1", port=server.port, api_key=API_KEY)
    meta = client.get_server_metadata()
    assert meta["chunk_size"] == 8 and meta["action_horizon"] == 4
    broker = ActionChunkBroker(client, action_horizon=meta["action_horizon"])
    expected = in_process(
        policy,
        {
            "observation.images.image": obs["observation/image"],
            "observation.images.wrist": obs["observation/wrist_image"],
            "observation.state": obs["observation/state"],
            "prompt": obs["prompt"],
        },
        seed=11,
    )
    steps = [broker.infer({**obs, "seed": 11}) for _ in range(6)]  # two chunks: steps 0-3, then 4-5
    for i, step in enumerate(steps):
        assert step["actions"].shape == (7,)
        np.testing.assert_allclose(step["actions"], expected[i % 4], rtol=1e-5, atol=1e-5)
        assert set(step["server_timing"]) >= {"infer_ms", "queue_ms", "total_ms", "batch_size"}
    # an error comes back as text, which openpi's client raises; the connection stays usable
    with pytest.raises(RuntimeError, match="observation/wrist_image"):
        client.infer({k: v for k, v in obs.items() if k != "observation/wrist_image"})
    assert client.infer(obs)["actions"].shape == (8, 7)
