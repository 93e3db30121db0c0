"""A client written only from the protocol description (no vla.serve, no openpi_client import):
websockets + msgpack, arrays as {b"__ndarray__", b"data", b"dtype", b"shape"} maps."""

from __future__ import annotations

import http.client
import json

import msgpack
import numpy as np
import pytest
import websockets
from websockets.sync.client import connect

API_KEY = "test-key"


def encode(obj):
    if isinstance(obj, np.ndarray):
        return {
            b"__ndarray__": True,
            b"data": np.ascontiguousarray(obj).tobytes(),
            b"dtype": obj.dtype.str,
            b"shape": list(obj.shape),
        }
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(type(obj))


def decode(obj):
    if b"__ndarray__" in obj:
        return np.frombuffer(obj[b"data"], dtype=np.dtype(obj[b"dtype"])).reshape(obj[b"shape"])
    if b"__npgeneric__" in obj:
        return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


def pack(obj) -> bytes:
    return msgpack.packb(obj, default=encode)


def unpack(data: bytes):
    return msgpack.unpackb(data, object_hook=decode, strict_map_key=False)


def test_raw_websocket_msgpack_client(server, policy, make_obs, in_process):
    url = f"ws://127.0.0.1:{server.port}"
    with connect(
        url, additional_headers={"Authorization": f"Api-Key {API_KEY}"}, max_size=None, compression=None
    ) as ws:
        first = ws.recv(timeout=30)
        assert isinstance(first, bytes)  # the server speaks first, binary
        meta = unpack(first)
        assert meta["cameras"] == ["image", "wrist"] and meta["chunk_size"] == 8

        obs = make_obs(21)
        ws.send(pack({**obs, "seed": np.int64(3)}))  # the seed as a numpy scalar (__npgeneric__)
        reply = unpack(ws.recv(timeout=60))
        assert reply["actions"].shape == (8, 7) and reply["actions"].dtype == np.float32
        np.testing.assert_allclose(reply["actions"], in_process(policy, obs, seed=3), rtol=1e-5, atol=1e-5)
        assert all(isinstance(v, int | float) for v in reply["server_timing"].values())  # plain numbers

        ws.send(pack({k: v for k, v in obs.items() if k != "prompt"}))
        error = ws.recv(timeout=60)
        assert isinstance(error, str) and "prompt" in error  # errors come back as text frames
        ws.send(pack(obs))
        assert unpack(ws.recv(timeout=60))["actions"].shape == (8, 7)

    with pytest.raises(websockets.InvalidStatus) as info:
        connect(url, additional_headers={"Authorization": "Api-Key nope"}).close()
    assert info.value.response.status_code == 401

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/healthz")
    resp = conn.getresponse()
    body = json.loads(resp.read())
    assert resp.status == 200 and body["status"] == "ok" and body["batch_stats"]["requests"] >= 1
