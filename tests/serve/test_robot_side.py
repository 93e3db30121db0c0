"""What robots send and how they wait: openpi's ALOHA client (four CHW cameras, 14-dim state) through the
real openpi client against our server, and our PolicyClient's reply timeout against a stuck server."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor

import einops
import numpy as np
import pytest
import torch
from openpi_client import image_tools
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from tiny_policies import random_tiny_policy
from websockets.sync.server import serve

from vla.models.policy import Policy
from vla.serve import PolicyClient, protocol
from vla.serve.obs_mapping import ObsMapping
from vla.serve.server import PolicyServer, ServeConfig, ServerThread

ALOHA_CAMERAS = ["cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"]
ALOHA_DIM = 14
PROMPT = "fold the towel"

pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")


@pytest.fixture(scope="module")
def aloha_policy() -> Policy:
    stats = {
        "state": {"mean": [0.1] * ALOHA_DIM, "std": [0.5] * ALOHA_DIM},
        "actions": {"mean": [0.0] * ALOHA_DIM, "std": [0.2] * ALOHA_DIM},
    }
    return random_tiny_policy("flow", ALOHA_CAMERAS, ALOHA_DIM, ALOHA_DIM, stats, chunk_size=6, n_action_steps=3)


@pytest.fixture(scope="module")
def aloha_server(aloha_policy):
    """openpi's ALOHA keys ({"images": {cam: ...}, "state": ...}, flattened with '/') onto the policy's."""
    mapping = ObsMapping(
        {f"images/{c}": f"observation.images.{c}" for c in ALOHA_CAMERAS} | {"state": "observation.state"}
    )
    cfg = ServeConfig(host="127.0.0.1", port=0, device="cpu", max_batch=4, max_wait_ms=20.0)
    with ServerThread(PolicyServer(aloha_policy, cfg, mapping)) as thread:
        yield thread


def _aloha_frames(seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Four 480x640 camera frames resized with padding to 224x224 as openpi's ALOHA runtime does (HWC uint8),
    and a 14-dim joint state."""
    rng = np.random.default_rng(seed)
    frames = {c: rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for c in ALOHA_CAMERAS}
    hwc = {c: image_tools.convert_to_uint8(image_tools.resize_with_pad(f, 224, 224)) for c, f in frames.items()}
    return hwc, rng.normal(size=ALOHA_DIM).astype(np.float32)


def _aloha_obs(hwc: dict[str, np.ndarray], state: np.ndarray, to_float: bool = False) -> dict:
    """What openpi's ALOHA client sends: each camera channel-first, (3, 224, 224)."""
    images = {c: einops.rearrange(im, "h w c -> c h w") for c, im in hwc.items()}
    if to_float:
        images = {c: im.astype(np.float32) / 255.0 for c, im in images.items()}
    return {"state": state, "images": images, "prompt": PROMPT}


def _expected(policy: Policy, hwc: dict[str, np.ndarray], state: np.ndarray, seed: int) -> np.ndarray:
    images = torch.stack([torch.from_numpy(hwc[c]).permute(2, 0, 1) for c in ALOHA_CAMERAS])[None]
    batch = {"images": images, "state": torch.from_numpy(state)[None], "instruction": [PROMPT]}
    return policy.predict_chunk(batch, seed=seed)[0].numpy()


def test_openpi_aloha_client_sends_chw_images(aloha_server, aloha_policy):
    hwc, state = _aloha_frames(0)
    obs = _aloha_obs(hwc, state)
    assert obs["images"]["cam_high"].shape == (3, 224, 224) and obs["images"]["cam_high"].dtype == np.uint8
    client = WebsocketClientPolicy(host="127.0.0.1", port=aloha_server.port)
    expected = _expected(aloha_policy, hwc, state, seed=5)
    reply = client.infer({**obs, "seed": 5})["actions"]
    assert reply.shape == (6, ALOHA_DIM)
    np.testing.assert_allclose(reply, expected, rtol=1e-5, atol=1e-5)
    # float images in [0, 1], channel-first too (what openpi's convert_to_uint8 would have turned into uint8)
    floats = client.infer({**_aloha_obs(hwc, state, to_float=True), "seed": 5})["actions"]
    np.testing.assert_allclose(floats, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("image", "words"),
    [
        (np.zeros((3, 224, 3), np.uint8), r"images/cam_low \(-> observation.images.cam_low\): ambiguous"),
        (np.zeros((4, 224, 224), np.uint8), r"expected .*3 channels.*got \(4, 224, 224\)"),
        (np.full((3, 224, 224), 255.0, np.float32), r"float image values must lie in \[0, 1\]"),
    ],
)
def test_bad_images_are_named_and_never_hurt_another_client(aloha_server, aloha_policy, image, words):
    hwc, state = _aloha_frames(1)
    good = _aloha_obs(hwc, state)
    bad = _aloha_obs(hwc, state)
    bad["images"]["cam_low"] = image
    expected = _expected(aloha_policy, hwc, state, seed=9)
    clients = [WebsocketClientPolicy(host="127.0.0.1", port=aloha_server.port) for _ in range(4)]

    def ask(i: int):
        obs = bad if i % 2 else {**good, "seed": 9}
        try:
            return clients[i].infer(obs)["actions"]
        except RuntimeError as e:  # openpi's client raises the server's error text
            return str(e)

    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(ask, range(4)))
    for i, reply in enumerate(replies):
        if i % 2:
            assert isinstance(reply, str) and re.search(words, reply), reply
        else:
            np.testing.assert_allclose(reply, expected, rtol=1e-5, atol=1e-5)
    # the clients that erred are still served on the same connection
    assert clients[1].infer(good)["actions"].shape == (6, ALOHA_DIM)


@pytest.fixture
def stuck_server():
    """A websocket server that speaks first (metadata), then never answers: a stuck policy server."""
    connections = []

    def handler(ws):
        connections.append(ws)
        ws.send(protocol.pack({"protocol": protocol.PROTOCOL, "cameras": ["image"]}))
        for _ in ws:
            pass  # swallow every request

    with serve(handler, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}", connections
        server.shutdown()
    thread.join(10)


def test_client_reply_timeout_names_the_server_and_the_limit(stuck_server):
    url, connections = stuck_server
    obs = {"observation.state": np.zeros(3, np.float32), "prompt": "wait"}
    client = PolicyClient(url, reply_timeout_s=0.3)
    with pytest.raises(TimeoutError, match=rf"{url}: no reply within 0.3 s"):
        client.infer(obs)
    # a late reply must not be taken for the next request's: the next request goes over a fresh connection
    with pytest.raises(TimeoutError, match="no reply within 0.3 s"):
        client.infer(obs)
    assert len(connections) == 2 and client.reconnects == 1
    client.close()
