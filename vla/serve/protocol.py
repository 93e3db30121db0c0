"""Wire format of the policy server: openpi's msgpack-numpy over websockets.

Existing robot clients (``openpi_client.websocket_client_policy``) must work unchanged,
so every rule here copies what openpi-client 0.1.2 does:

- The server speaks first: one binary msgpack message of metadata right after the
  websocket handshake (the client blocks until it arrives).
- Each request is one binary message (an observation dict); each reply is one binary
  message ``{"actions": (H, D) float32, "server_timing": {name: float ms}}``.
- Numpy arrays travel as msgpack maps with bytes keys ``b"__ndarray__"``, ``b"data"``
  (C-order bytes), ``b"dtype"`` (``np.dtype.str``: ``<f4``, ``|u1``) and ``b"shape"``;
  numpy scalars as ``b"__npgeneric__"`` maps. msgpack rather than pickle: decoding a
  message must never run code.
- An error is a text frame whose text the client raises (``RuntimeError`` in openpi).
- ``ActionChunkBroker`` slices every array of a reply along its first axis, so any array
  in a reply must be chunk-shaped (H, ...) and timings go as plain Python numbers.
- An API key, when the server has one, comes as the header ``Authorization: Api-Key <key>``.

No torch import here: the client side (a robot PC) needs only numpy, msgpack, websockets.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

PROTOCOL = "openpi-msgpack-numpy"
PROTOCOL_VERSION = 1

# Reply and request keys shared by the server and our client.
ACTIONS = "actions"  # reply: (H, D) float32 raw robot units
SERVER_TIMING = "server_timing"  # reply: {name: milliseconds} plain floats
SEED = "seed"  # request (optional): int, makes stochastic heads deterministic
# Real-time chunking (optional request keys, LeRobot's names): the previous chunk's unexecuted remainder, aligned
# with the chunk requested (its action k is for the same step as the reply's k), and how many of its actions the
# robot plays while this request is served (the delay it measured, in control steps). Plain clients send neither.
PREV_CHUNK = "prev_chunk_left_over"  # request (optional): (K, D) float, K <= H, raw robot units
INFERENCE_DELAY = "inference_delay"  # request (optional): int in [0, K]

API_KEY_HEADER = "Authorization"
API_KEY_SCHEME = "Api-Key"

# Two 480x640 RGB cameras are 1.8 MB, above websockets' default 1 MiB frame limit, so the
# server accepts much larger messages. Past this cap a request gets an error reply and the
# connection stays open; past ``HARD_LIMIT_FACTOR`` x the cap websockets itself refuses the
# frame (close code 1009) so a runaway client cannot make the server buffer unbounded data.
DEFAULT_MAX_MESSAGE_MB = 64.0
HARD_LIMIT_FACTOR = 4

_BAD_KINDS = ("V", "O", "c")  # void/structured, object (pickle), complex: refused both ways


class ProtocolError(ValueError):
    """A message that cannot be decoded or does not follow the wire format."""


def api_key_header(api_key: str) -> dict[str, str]:
    return {API_KEY_HEADER: f"{API_KEY_SCHEME} {api_key}"}


def parse_api_key(header_value: str | None) -> str | None:
    """``"Api-Key abc"`` -> ``"abc"``; anything else -> None."""
    if not header_value:
        return None
    scheme, _, key = header_value.strip().partition(" ")
    return key.strip() or None if scheme == API_KEY_SCHEME else None


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic) and obj.dtype.kind in _BAD_KINDS:
        raise ProtocolError(f"cannot send numpy dtype {obj.dtype} (structured, object and complex are refused)")
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        return {b"__ndarray__": True, b"data": arr.tobytes(), b"dtype": arr.dtype.str, b"shape": arr.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot encode {type(obj).__name__} in a message")


def _decode(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        try:
            dtype = np.dtype(obj[b"dtype"])
            shape = tuple(int(s) for s in obj[b"shape"])
            data = obj[b"data"]
            if dtype.kind in _BAD_KINDS:
                raise ProtocolError(f"array dtype {dtype} is refused (structured, object and complex)")
            expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if not isinstance(data, bytes | bytearray) or len(data) != expected:
                raise ProtocolError(
                    f"array of dtype {dtype.str} and shape {shape} needs {expected} bytes, got "
                    f"{len(data) if isinstance(data, bytes | bytearray) else type(data).__name__}"
                )
            return np.frombuffer(data, dtype=dtype).reshape(shape)
        except ProtocolError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"malformed __ndarray__ map: {e}") from e
    if b"__npgeneric__" in obj:
        try:
            dtype = np.dtype(obj[b"dtype"])
            if dtype.kind in _BAD_KINDS:
                raise ProtocolError(f"scalar dtype {dtype} is refused")
            return dtype.type(obj[b"data"])
        except ProtocolError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"malformed __npgeneric__ map: {e}") from e
    return obj


def pack(obj: Any) -> bytes:
    """Python/numpy structure -> one binary message (same bytes as openpi's ``packb``)."""
    return msgpack.packb(obj, default=_encode)


def unpack(data: bytes) -> Any:
    """One binary message -> Python/numpy structure. Raises ProtocolError naming the problem.

    Arrays are read-only views on the message buffer (no copy); copy before writing.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"expected a binary message, got {type(data).__name__}")
    try:
        return msgpack.unpackb(data, object_hook=_decode, strict_map_key=False)
    except ProtocolError:
        raise
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as e:
        raise ProtocolError(f"message is not valid msgpack ({len(data)} bytes): {type(e).__name__}: {e}") from e


def error_text(kind: str, detail: str) -> str:
    """The text frame of an error reply: one line naming the kind, then the detail."""
    return f"{kind}: {detail}"
