"""Dependency-light policy client for a robot PC: numpy, msgpack and websockets only.

    client = PolicyClient("ws://gpu-box:8000", api_key="...")
    reply = client.infer({"observation.images.image": img, "observation.state": s, "prompt": "pick"})
    reply["actions"]  # (H, D) float32

Speaks the same protocol as openpi's ``WebsocketClientPolicy`` (see ``protocol.py``), but
reconnects when the link drops: connecting retries with exponential backoff, and a
request interrupted by a dropped connection is sent again once on a fresh connection
(inference has no side effects on the server, so a retry is safe).

A reply that does not come within ``reply_timeout_s`` raises ``TimeoutError`` naming the
server and the limit, so a robot never waits forever on a stuck server. The connection is
then dropped (a late reply must not be read as the answer to the next request); the next
request opens a fresh one.
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any

import websockets
from websockets.sync.client import ClientConnection, connect

from vla.serve import protocol

log = logging.getLogger(__name__)

# websockets >= 17 warns unless a directly used connection opts into the "legacy" (plain) mode.
_LEGACY = {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}


class ServerError(RuntimeError):
    """The server answered a request with an error (a text frame); the message is its text."""


class PolicyClient:
    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        connect_timeout_s: float = 30.0,
        backoff_s: tuple[float, float] = (0.1, 2.0),
        open_timeout_s: float = 10.0,
        reply_timeout_s: float | None = 60.0,
    ):
        """``url``: ``ws://host:port``; ``connect_timeout_s``: total time to keep retrying a connection.

        ``backoff_s``: (first, longest) pause between attempts; each pause doubles.
        ``reply_timeout_s``: longest wait for one reply (None: no limit). The default leaves room for a
        large model on a slow or busy server; a robot loop would rather set a few chunk periods.
        """
        if reply_timeout_s is not None and reply_timeout_s <= 0:
            raise ValueError(f"reply_timeout_s must be > 0 or None, got {reply_timeout_s}")
        self.url = url if url.startswith(("ws://", "wss://")) else f"ws://{url}"
        self.api_key = api_key
        self.connect_timeout_s = connect_timeout_s
        self.backoff_s = backoff_s
        self.open_timeout_s = open_timeout_s
        self.reply_timeout_s = reply_timeout_s
        self.reconnects = 0
        self._ws: ClientConnection | None = None
        self._metadata: dict | None = None
        self._connect()

    def _connect(self) -> None:
        headers = protocol.api_key_header(self.api_key) if self.api_key else None
        deadline = time.monotonic() + self.connect_timeout_s
        pause, longest = self.backoff_s
        while True:
            try:
                ws = connect(
                    self.url,
                    additional_headers=headers,
                    compression=None,
                    max_size=None,
                    open_timeout=self.open_timeout_s,
                    **_LEGACY,
                )
                try:
                    first = ws.recv(timeout=self.open_timeout_s)  # the server speaks first: metadata
                except BaseException:
                    ws.close()
                    raise
                if isinstance(first, str):
                    ws.close()
                    raise ServerError(f"server sent an error instead of metadata: {first}")
                self._ws, self._metadata = ws, protocol.unpack(first)
                return
            except websockets.InvalidStatus as e:
                # 401/403 will not heal by retrying: fail at once with the server's reason.
                if e.response.status_code in (401, 403):
                    body = (e.response.body or b"").decode(errors="replace").strip()
                    raise PermissionError(f"{self.url}: refused ({e.response.status_code}): {body}") from e
                err: Exception = e
            except (OSError, TimeoutError, websockets.WebSocketException) as e:
                err = e
            if time.monotonic() + pause > deadline:
                raise ConnectionError(f"could not connect to {self.url} within {self.connect_timeout_s} s: {err}")
            log.info("policy server %s not reachable (%s); retrying in %.1f s", self.url, err, pause)
            time.sleep(pause)
            pause = min(pause * 2, longest)

    def get_server_metadata(self) -> dict:
        return dict(self._metadata or {})

    def infer(self, obs: dict[str, Any]) -> dict:
        """One observation -> ``{"actions": (H, D), "server_timing": {...}}``. Raises ServerError on a bad request."""
        data = protocol.pack(obs)
        for attempt in (0, 1):
            try:
                if self._ws is None:
                    self._reconnect()
                self._ws.send(data)
                reply = self._ws.recv(timeout=self.reply_timeout_s)
                break
            except TimeoutError as e:  # before OSError, its base class: waiting again would not help
                self.close()
                raise TimeoutError(
                    f"{self.url}: no reply within {self.reply_timeout_s} s (reply_timeout_s); the server is stuck, "
                    "overloaded or too slow for this limit"
                ) from e
            except (websockets.ConnectionClosed, OSError) as e:
                self._ws = None
                rcvd = getattr(e, "rcvd", None)
                if rcvd is not None and rcvd.code == 1009:  # over the server's hard limit: a retry cannot help
                    raise ServerError(
                        f"message_too_large: {len(data)} bytes refused by the server (close 1009: {rcvd.reason})"
                    ) from e
                if attempt == 1:
                    raise ConnectionError(f"{self.url}: connection lost twice during one request: {e}") from e
                log.warning("connection to %s lost (%s); reconnecting", self.url, e)
        if isinstance(reply, str):
            raise ServerError(reply)
        return protocol.unpack(reply)

    def _reconnect(self) -> None:
        self.reconnects += 1
        self._connect()

    def reset(self) -> None:
        """openpi's BasePolicy interface: nothing is kept between episodes on the server."""

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
