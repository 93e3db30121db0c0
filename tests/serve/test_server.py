"""The server on loopback through our PolicyClient: equality with in-process inference, bad input,
batching statistics, health, auth, reconnects, and `vla serve` with a graceful SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import msgpack
import numpy as np
import pytest
import websockets
from serve_clients import infer_concurrently
from websockets.sync.client import connect

from vla.serve import PolicyClient, ServerError, protocol
from vla.serve.batcher import DynamicBatcher
from vla.serve.bench import bench_serve
from vla.serve.obs_mapping import IMAGE_LAYOUT, MAX_PROMPT_BYTES
from vla.serve.server import PolicyServer, ServeConfig, ServerThread
from vla.utils.net import free_port

API_KEY = "test-key"


def _http(url: str, api_key: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=protocol.api_key_header(api_key) if api_key else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(scope="module")
def client(server):
    with PolicyClient(server.url, api_key=API_KEY) as c:
        yield c


def test_metadata_first(client, policy):
    meta = client.get_server_metadata()
    assert meta["protocol"] == protocol.PROTOCOL and meta["cameras"] == ["image", "wrist"]
    assert (meta["state_dim"], meta["action_dim"], meta["chunk_size"], meta["action_horizon"]) == (8, 7, 8, 4)
    assert meta["max_message_bytes"] == 4 * 2**20 and "batch_stats" in meta
    assert meta["expected_keys"]["observation/image"] == IMAGE_LAYOUT  # from the checkpoint's obs_map.json


def test_seeded_reply_equals_in_process(client, policy, make_obs, in_process):
    obs = make_obs(1)
    reply = client.infer({**obs, "seed": 7})
    assert reply["actions"].shape == (8, 7) and reply["actions"].dtype == np.float32
    np.testing.assert_allclose(reply["actions"], in_process(policy, obs, seed=7), rtol=1e-5, atol=1e-5)
    timing = reply["server_timing"]
    assert timing["batch_size"] == 1 and timing["infer_ms"] > 0 and isinstance(timing["total_ms"], float)
    # the robot's own keys (through the obs map) give the same answer
    libero = make_obs(1, canonical=False)
    np.testing.assert_array_equal(client.infer({**libero, "seed": 7})["actions"], reply["actions"])
    # without a seed the flow head samples fresh noise
    a, b = client.infer(obs)["actions"], client.infer(obs)["actions"]
    assert not np.allclose(a, b)


def test_two_large_cameras_of_different_sizes(client, make_obs):
    rng = np.random.default_rng(0)
    obs = make_obs(2)
    obs["observation.images.image"] = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    obs["observation.images.wrist"] = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert len(protocol.pack(obs)) > 2**20  # beyond websockets' default limit
    assert client.infer(obs)["actions"].shape == (8, 7)


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda o: o.pop("observation.state"), "missing key.*observation.state"),
        (lambda o: o.update({"observation.state": np.zeros(5, np.float32)}), r"expected \(S=8,\), got \(5,\)"),
        (lambda o: o.update({"observation.images.wrist": np.zeros((3, 64, 3), np.uint8)}), "ambiguous image shape"),
        (lambda o: o.update({"observation.images.wrist": np.zeros((64, 64, 4), np.uint8)}), "3 channels first or last"),
        (
            lambda o: o.update({"observation.images.image": np.full((64, 64, 3), 255.0, np.float32)}),
            r"float image values must lie in \[0, 1\]",
        ),
        (lambda o: o.update({"observation.images.image": np.zeros((64, 64, 3), np.int16)}), "uint8 or float.*<i2"),
        (lambda o: o.update({"observation.state": np.array(["a"] * 8)}), "real numeric dtype"),
        (lambda o: o.update({"prompt": 3}), "prompt: expected a string"),
        (lambda o: o.update({"observation.state": [[1.0], [1.0, 2.0]]}), "bad_request: ValueError"),
        (
            lambda o: o.update({"observation.images.image": np.zeros((1200, 1200, 3), np.uint8)}),
            "message_too_large.*exceeds the server's cap",
        ),
    ],
)
def test_bad_request_then_good_request_on_same_connection(client, make_obs, mutate, words):
    obs = make_obs(3)
    mutate(obs)
    with pytest.raises(ServerError, match=words):
        client.infer(obs)
    assert client.infer(make_obs(3))["actions"].shape == (8, 7)


def test_garbage_bytes_text_frames_and_hard_limit(server, make_obs):
    with connect(server.url, additional_headers=protocol.api_key_header(API_KEY), max_size=None) as ws:
        protocol.unpack(ws.recv())  # metadata
        for bad, words in [
            (b"\xc1\xff\x00garbage", "not valid msgpack"),
            ("hello", "text frame"),
            (msgpack.packb([1, 2]), "expected a dict"),
        ]:
            ws.send(bad)
            reply = ws.recv()
            assert isinstance(reply, str) and words in reply
            ws.send(protocol.pack(make_obs(4)))
            assert protocol.unpack(ws.recv())["actions"].shape == (8, 7)
        # past 4x the cap websockets refuses the frame: the connection closes with 1009
        ws.send(b"\x00" * (17 * 2**20))
        with pytest.raises(websockets.ConnectionClosed) as info:
            ws.recv()
        assert info.value.rcvd.code == 1009
    assert server.server.batcher.stats.bad_requests >= 3
    with PolicyClient(server.url, api_key=API_KEY) as c:  # everyone else is still served
        assert c.infer(make_obs(4))["actions"].shape == (8, 7)


def test_batcher_groups_by_key_caps_size_and_runs_keyless_items_alone():
    batches: list[list[int]] = []

    def run_batch(items):
        batches.append(list(items))
        return [10 * x for x in items]

    async def main():
        batcher = DynamicBatcher(run_batch, max_batch=3, max_wait_ms=50, key=lambda x: None if x < 0 else x % 2)
        batcher.start()
        out = await asyncio.gather(*(batcher.submit(x) for x in [0, 1, 2, 3, 4, 5, 6, -1, -2]))
        await batcher.stop()
        return out, batcher.stats.as_dict()

    out, stats = asyncio.run(main())
    assert [r for r, _ in out] == [0, 10, 20, 30, 40, 50, 60, -10, -20]
    assert sorted(map(sorted, batches)) == [[-2], [-1], [0, 2, 4], [1, 3, 5], [6]]
    assert stats["max_batch_size"] == 3 and stats["requests"] == 9 and stats["batches"] == 5
    assert all(
        info.batch_size == len(next(b for b in batches if x in b))
        for x, (_, info) in zip([0, 1, 2, 3, 4, 5, 6, -1, -2], out, strict=True)
    )


def test_a_failing_request_fails_alone_not_its_batch():
    """run_batch raises for a batch holding a bad item: the others are retried alone and answered."""
    calls: list[list[str]] = []

    def run_batch(items):
        calls.append(list(items))
        if "bad" in items:
            raise ValueError("bad item")
        return [x.upper() for x in items]

    async def main():
        batcher = DynamicBatcher(run_batch, max_batch=3, max_wait_ms=200)
        batcher.start()
        out = await asyncio.gather(*(batcher.submit(x) for x in ["a", "bad", "c"]), return_exceptions=True)
        await batcher.stop()
        return out, batcher.stats.as_dict()

    (a, bad, c), stats = asyncio.run(main())
    assert calls[0] == ["a", "bad", "c"]
    assert a[0] == "A" and c[0] == "C" and a[1].batch_size == 1
    assert isinstance(bad, ValueError) and stats["errors"] == 1


def test_special_tokens_in_a_prompt_are_text_and_never_fail_a_batch(server, make_obs, policy, in_process):
    """A prompt that spells the image placeholder would change the number of image tokens: read as text, it
    is answered like any prompt, and so are the 7 requests batched with it."""
    tricky = {**make_obs(20), "prompt": "<image> put the <fake_token_around_image> bowl <image><image>"}
    replies = infer_concurrently(server.url, [tricky] + [make_obs(21 + i) for i in range(7)], API_KEY)
    assert all(isinstance(r, dict) for r in replies), replies
    assert max(r["server_timing"]["batch_size"] for r in replies) > 1
    assert np.isfinite(in_process(policy, tricky, seed=1)).all()


def test_an_inference_error_reaches_its_client_alone_and_without_the_servers_traceback(
    server, make_obs, policy, monkeypatch
):
    real = policy.predict_chunk

    def predict_chunk(obs, **kw):
        if any("explode" in text for text in obs["instruction"]):
            raise RuntimeError("the model refused this one")
        return real(obs, **kw)

    monkeypatch.setattr(policy, "predict_chunk", predict_chunk)
    replies = infer_concurrently(
        server.url, [{**make_obs(30), "prompt": "explode"}] + [make_obs(31 + i) for i in range(3)], API_KEY
    )
    assert isinstance(replies[0], ServerError) and "the model refused this one" in str(replies[0])
    assert "Traceback" not in str(replies[0]) and ".py" not in str(replies[0])
    assert all(isinstance(r, dict) for r in replies[1:]), replies


def test_an_overlong_prompt_is_refused_by_size_without_stalling_other_clients(policy, checkpoint, make_obs):
    """A 4 MiB prompt is refused (naming the limit) before it is tokenized: a client beside it keeps its
    latency (before the limit, tokenizing it stalled every client for seconds)."""
    cfg = ServeConfig(checkpoint=str(checkpoint), port=0, max_message_mb=16.0, max_batch=8, max_wait_ms=5.0)
    with ServerThread(PolicyServer(policy, cfg)) as srv, PolicyClient(srv.url) as other:

        def p99_ms(n: int = 15) -> float:
            times = []
            for i in range(n):
                t = time.perf_counter()
                other.infer(make_obs(40 + i))
                times.append(1000 * (time.perf_counter() - t))
            return float(np.percentile(times, 99))

        normal = p99_ms()
        errors: list[Exception] = []

        def flood():
            with PolicyClient(srv.url) as big:
                for _ in range(4):
                    try:
                        big.infer({**make_obs(50), "prompt": "pick " * (2**20)})  # 5 MiB of text
                    except ServerError as e:
                        errors.append(e)

        thread = threading.Thread(target=flood)
        thread.start()
        during = p99_ms()
        thread.join(120)
    assert len(errors) == 4 and all(f"exceeds the limit of {MAX_PROMPT_BYTES} bytes" in str(e) for e in errors)
    # Within 2x its normal p99, with 0.5 s for a busy 2-core runner: tokenizing these prompts took seconds each.
    assert during < 2 * normal + 500, (normal, during)


def test_auth(server, make_obs):
    for key in (None, "wrong-key"):
        with pytest.raises(PermissionError, match="401"):
            PolicyClient(server.url, api_key=key, connect_timeout_s=2)
    assert _http(f"http://127.0.0.1:{server.port}/stats")[0] == 401
    with PolicyClient(server.url, api_key=API_KEY) as c:
        assert c.infer(make_obs(5))["actions"].shape == (8, 7)


def test_reconnects_after_the_link_drops(server, make_obs):
    c = PolicyClient(server.url, api_key=API_KEY)
    c._ws.socket.shutdown(socket.SHUT_RDWR)  # the link dies under the client
    assert c.infer(make_obs(6))["actions"].shape == (8, 7)
    assert c.reconnects == 1
    c.close()


def test_concurrent_clients_are_batched(server, make_obs):
    replies = [
        r for _ in range(2) for r in infer_concurrently(server.url, [make_obs(10 + i) for i in range(8)], API_KEY)
    ]
    assert all(isinstance(r, dict) for r in replies), replies
    assert max(r["server_timing"]["batch_size"] for r in replies) > 1
    status, body = _http(f"http://127.0.0.1:{server.port}/healthz")
    stats = json.loads(body)["batch_stats"]
    assert status == 200 and stats["max_batch_size"] > 1 and stats["mean_batch_size"] > 1.0
    assert json.loads(_http(f"http://127.0.0.1:{server.port}/stats", API_KEY)[1])["batch_stats"] == stats


def test_bench_serve_reports_latency_and_throughput(policy):
    report = bench_serve(policy, clients=(1, 3), requests=2, warmup=1, image_size=(32, 32), max_wait_ms=20)
    one, three = report["results"]
    assert (one["clients"], one["requests"], three["clients"], three["requests"]) == (1, 2, 3, 6)
    for r in (one, three):
        assert 0 < r["p50_ms"] <= r["p99_ms"] and r["throughput_rps"] > 0 and r["max_batch_size"] >= 1
    assert one["max_batch_size"] == 1 and report["request_bytes"] > 2 * 32 * 32 * 3
    assert report["in_process_batch1"]["p50_ms"] > 0


@pytest.mark.slow  # a fresh interpreter imports torch and transformers: ~40 s on 2 busy cores
def test_cli_serve_and_graceful_sigterm(checkpoint, make_obs, in_process, policy):
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vla",
            "serve",
            "--checkpoint",
            str(checkpoint),
            "--port",
            str(port),
            "--max-wait-ms",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 180
        while not any('"event": "listening"' in line for line in lines):
            assert proc.poll() is None, "vla serve exited early:\n" + "".join(lines)
            assert time.monotonic() < deadline, "vla serve did not start:\n" + "".join(lines)
            time.sleep(0.2)
        with PolicyClient(f"ws://127.0.0.1:{port}") as c:
            reply = c.infer({**make_obs(9, canonical=False), "seed": 1})
        np.testing.assert_allclose(reply["actions"], in_process(policy, make_obs(9), seed=1), rtol=1e-5, atol=1e-5)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    assert proc.returncode == 0, out
    events = [json.loads(line.split(": ", 1)[1]) for line in lines if ': {"event"' in line]
    infer = [e for e in events if e["event"] == "infer"]
    assert len(infer) == 1 and infer[0]["total_ms"] > 0 and infer[0]["batch_size"] == 1
    assert any(e["event"] == "shutdown" and e["batch_stats"]["requests"] == 1 for e in events), out


@pytest.mark.parametrize("busy", [True, False], ids=["port-in-use", "port-out-of-range"])
def test_a_bad_or_busy_port_is_one_line(checkpoint, busy):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1] if busy else 70000
        r = subprocess.run(
            [sys.executable, "-m", "vla", "serve", "--checkpoint", str(checkpoint), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=300,
            env=dict(os.environ, HF_HUB_OFFLINE="1"),
        )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    words = f"cannot listen on 127.0.0.1:{port}" if busy else "port must be in 0..65535"
    assert words in r.stderr.splitlines()[0], r.stderr


def test_served_checkpoint_advertises_ensembled_play(checkpoint):
    """`vla serve --adaptive-ensemble-alpha A`: the metadata tells clients (ChunkExecutor, `vla eval --server`)
    to request a chunk every step and blend them with CogACT's weights; the weights are the checkpoint's."""
    server = PolicyServer.from_checkpoint(ServeConfig(checkpoint=str(checkpoint), adaptive_ensemble_alpha=0.1))
    meta = server.metadata()
    assert meta["action_horizon"] == 1 and meta["adaptive_ensemble_alpha"] == 0.1
    assert meta["temporal_ensemble_coeff"] is None


def test_rtc_keys_guide_the_reply_and_malformed_ones_are_refused(client, policy, make_obs):
    """prev_chunk_left_over / inference_delay (real-time chunking): a seeded request equals in-process
    predict_chunk with the same remainder and delay, and differs from the plain reply; malformed keys get a clear
    error and the connection keeps serving; the metadata says how to send them."""
    import torch

    meta = client.get_server_metadata()
    assert meta["rtc"] == {"keys": [protocol.PREV_CHUNK, protocol.INFERENCE_DELAY], "mode": "guided"}
    obs = make_obs(5)
    plain = client.infer({**obs, "seed": 3})["actions"]
    prev = (plain[2:] + 0.05).astype(np.float32)  # a remainder of 6 actions in raw units
    reply = client.infer({**obs, "seed": 3, protocol.PREV_CHUNK: prev, protocol.INFERENCE_DELAY: 2})["actions"]
    assert reply.shape == (8, 7) and not np.allclose(reply, plain)
    images = torch.stack(
        [torch.from_numpy(obs[f"observation.images.{c}"]).permute(2, 0, 1) for c in policy.config.cameras]
    )
    batch = {
        "images": images[None],
        "state": torch.from_numpy(obs["observation.state"])[None],
        "instruction": [obs["prompt"]],
    }
    expected = policy.predict_chunk(batch, seed=3, prev_chunk=[prev], inference_delay=[2])[0].numpy()
    np.testing.assert_allclose(reply, expected, rtol=1e-5, atol=1e-5)
    bad = [
        (
            {protocol.PREV_CHUNK: np.zeros((9, 7), np.float32)},
            r"prev_chunk_left_over: expected \(K <= 8, D=7\), got \(9, 7\)",
        ),
        ({protocol.PREV_CHUNK: np.zeros((4, 6), np.float32)}, r"expected \(K <= 8, D=7\), got \(4, 6\)"),
        ({protocol.PREV_CHUNK: np.full((4, 7), np.nan, np.float32)}, "NaN or inf"),
        ({protocol.PREV_CHUNK: prev, protocol.INFERENCE_DELAY: 7}, r"inference_delay: expected 0..6"),
        ({protocol.PREV_CHUNK: prev, protocol.INFERENCE_DELAY: 1.5}, "inference_delay: expected an integer"),
        ({protocol.INFERENCE_DELAY: 2}, "inference_delay needs prev_chunk_left_over"),
    ]
    for extra, words in bad:
        with pytest.raises(ServerError, match=words):
            client.infer({**obs, **extra})
    assert client.infer(obs)["actions"].shape == (8, 7)


def test_serve_rtc_options_override_the_checkpoints(checkpoint):
    """vla serve --rtc-mode/--rtc-schedule/--rtc-beta set how RTC requests are sampled (the metadata says the
    mode); inpainting a head not trained for it is refused at start-up, not on a client's request."""
    server = PolicyServer.from_checkpoint(ServeConfig(checkpoint=str(checkpoint), port=0, rtc_beta=2.0))
    assert server.policy.config.rtc.max_guidance_weight == 2.0 and server.metadata()["rtc"]["mode"] == "guided"
    with pytest.raises(ValueError, match="rtc_training_max_delay"):
        PolicyServer.from_checkpoint(ServeConfig(checkpoint=str(checkpoint), port=0, rtc_mode="inpaint"))
