"""Wire format: byte-compatible with openpi-client's msgpack_numpy, and strict on bad input."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from openpi_client import msgpack_numpy

from vla.serve import protocol
from vla.serve.obs_mapping import ObservationError, ObsMapping, flatten


def _sample() -> dict:
    return {
        "observation/image": np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3),
        "observation/state": np.linspace(-1, 1, 8, dtype=np.float32),
        "nested": {"f64": np.eye(2), "i16": np.array([1, -2], dtype=np.int16)},
        "scalar": np.float32(1.5),
        "prompt": "pick up the cup",
        "seed": 3,
    }


def test_same_bytes_as_openpi_and_round_trip():
    obs = _sample()
    ours = protocol.pack(obs)
    assert ours == msgpack_numpy.packb(obs)
    back = protocol.unpack(msgpack_numpy.packb(obs))
    theirs = msgpack_numpy.unpackb(ours)
    for decoded in (back, theirs):
        np.testing.assert_array_equal(decoded["observation/image"], obs["observation/image"])
        assert decoded["observation/state"].dtype == np.float32
        np.testing.assert_array_equal(decoded["nested"]["f64"], np.eye(2))
        assert decoded["nested"]["i16"].dtype == np.int16
        assert decoded["scalar"] == np.float32(1.5) and isinstance(decoded["scalar"], np.float32)
        assert decoded["prompt"] == "pick up the cup" and decoded["seed"] == 3


def test_array_layout_is_the_documented_one():
    raw = msgpack.unpackb(protocol.pack({"a": np.zeros((2, 3), np.float32)}), strict_map_key=False)
    arr = raw["a"]
    assert arr[b"__ndarray__"] is True and arr[b"dtype"] == "<f4" and list(arr[b"shape"]) == [2, 3]
    assert len(arr[b"data"]) == 24
    fortran = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(protocol.unpack(protocol.pack(fortran)), fortran)  # sent C-order


@pytest.mark.parametrize(
    "payload, words",
    [
        (b"\xc1\xc1garbage", "not valid msgpack"),
        (
            msgpack.packb({"a": {b"__ndarray__": True, b"data": b"\x00" * 3, b"dtype": "<f4", b"shape": [2]}}),
            "needs 8 bytes, got 3",
        ),
        (msgpack.packb({"a": {b"__ndarray__": True, b"data": b"", b"dtype": "|O", b"shape": [0]}}), "refused"),
        (msgpack.packb({"a": {b"__ndarray__": True, b"dtype": "<f4", b"shape": [1]}}), "malformed"),
        (msgpack.packb({"a": 1}) + b"\x01", "not valid msgpack"),
    ],
)
def test_bad_messages_raise_protocol_error(payload, words):
    with pytest.raises(protocol.ProtocolError, match=words):
        protocol.unpack(payload)


def test_refuses_to_send_object_arrays():
    with pytest.raises(protocol.ProtocolError, match="object"):
        protocol.pack({"x": np.array([object()], dtype=object)})


def test_api_key_header_round_trip():
    assert protocol.parse_api_key(protocol.api_key_header("k1")[protocol.API_KEY_HEADER]) == "k1"
    assert protocol.parse_api_key("Bearer k1") is None and protocol.parse_api_key(None) is None


def test_obs_mapping_renames_and_checks():
    mapping = ObsMapping({"observation/image": "observation.images.top", "observation/state": "observation.state"})
    img = np.zeros((48, 64, 3), np.uint8)
    obs = {
        "observation/image": img,
        "images": {"wrist": img},
        "observation/state": np.ones(4, np.float64),
        "prompt": "go",
        "extra": 1,
    }
    with pytest.raises(ObservationError, match=r"observation.images.wrist"):
        mapping.to_canonical(obs, ["top", "wrist"], 4)
    nested = ObsMapping({**mapping.keys, "images/wrist": "observation.images.wrist"})
    out = nested.to_canonical(obs, ["top", "wrist"], 4)
    assert out.state.dtype == np.float32 and out.instruction == "go" and out.seed is None
    assert [im.shape for im in out.images] == [(48, 64, 3), (48, 64, 3)]
    assert flatten({"a": {"b": {"c": 1}}}) == {"a/b/c": 1}

    with pytest.raises(ObservationError, match=r"observation/state \(-> observation.state\): expected \(S=5,\)"):
        nested.to_canonical(obs, ["top", "wrist"], 5)
    bad = dict(obs, **{"observation/image": img.astype(np.int32)})
    with pytest.raises(ObservationError, match="observation/image .*expected dtype uint8 or float"):
        nested.to_canonical(bad, ["top", "wrist"], 4)
    # channels first (openpi's ALOHA client), float in [0, 1]: the same image as channels-last uint8
    picture = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    for sent in (picture.transpose(2, 0, 1), picture / 255.0, (picture / 255.0).astype(np.float32).transpose(2, 0, 1)):
        got = nested.to_canonical(dict(obs, **{"observation/image": sent}), ["top", "wrist"], 4).images[0]
        assert got.dtype == np.uint8 and got.shape == (48, 64, 3)
        np.testing.assert_array_equal(got, picture)
    for shape, words in [((3, 48, 3), "ambiguous"), ((48, 64), "3 channels first or last"), ((3, 0, 64), "empty")]:
        with pytest.raises(ObservationError, match=f"observation/image .*{words}"):
            nested.to_canonical(dict(obs, **{"observation/image": np.zeros(shape, np.uint8)}), ["top", "wrist"], 4)
    for value, words in [(1.5, r"must lie in \[0, 1\]"), (np.nan, "NaN or inf")]:
        with pytest.raises(ObservationError, match=words):
            nested.to_canonical(dict(obs, **{"observation/image": np.full((48, 64, 3), value)}), ["top", "wrist"], 4)
    with pytest.raises(ObservationError, match="seed: expected an integer"):
        nested.to_canonical(dict(obs, seed="1"), ["top", "wrist"], 4)
    with pytest.raises(ValueError, match="targets must be"):
        ObsMapping({"x": "observation.image"})
    # camera names: what a mapped camera stands for, unmapped names as they are
    assert [nested.camera(c) for c in ("wrist", "other")] == ["wrist", "other"]
    assert ObsMapping({"observation.images.image2": "observation.images.wrist"}).camera("image2") == "wrist"
    with pytest.raises(ValueError, match="not a camera"):
        ObsMapping({"observation.images.s": "observation.state"}).camera("s")


def test_obs_mapping_files(tmp_path):
    (tmp_path / "m.yaml").write_text("observation/image: observation.images.image\n")
    assert ObsMapping.load(tmp_path / "m.yaml").keys == {"observation/image": "observation.images.image"}
    ObsMapping({"a": "prompt"}).save(tmp_path)
    assert ObsMapping.for_checkpoint(tmp_path).keys == {"a": "prompt"}
    assert ObsMapping.for_checkpoint(tmp_path, tmp_path / "m.yaml").keys == {
        "observation/image": "observation.images.image"
    }
    with pytest.raises(FileNotFoundError, match="nope.json"):
        ObsMapping.load(tmp_path / "nope.json")
