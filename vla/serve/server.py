"""Websocket policy server: openpi wire format -> canonical observation -> batched ``Policy.predict_chunk``.

    vla serve --checkpoint CKPT --host 0.0.0.0 --port 8000 [--api-key KEY] [--max-batch 8] \\
              [--max-wait-ms 5] [--max-message-mb 64] [--obs-map map.json] [--device cuda]
    vla serve --onnx DIR ...      (a `vla export --format onnx` folder, run by onnxruntime: same protocol)

Per connection: metadata first (``protocol.py``), then one reply per request. A bad
request (missing key, wrong shape or dtype, garbage bytes, a message over the cap) gets
a text frame naming the problem and the connection stays usable; only frames over the
hard limit (4x the cap) make websockets close the connection (code 1009).

Determinism: a request carrying an integer ``seed`` runs in a forward pass of its own with
that seed, so its actions equal ``policy.predict_chunk(obs, seed=seed)`` in process.
Without a seed, each forward pass draws a fresh seed from the server's own entropy, so
stochastic heads (flow, diffusion) give a different chunk on every call.

Batching: requests whose images end up the same size share a forward pass (cameras of one
request are resized to its largest camera first); different sizes run in separate passes.

HTTP on the same port: ``GET /healthz`` (no key needed) and ``GET /stats`` (key needed
when one is configured) answer JSON with the batch-size statistics.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import http
import json
import logging
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import websockets
from einops import rearrange
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from vla.models.heads.rtc import resolve_mode, with_overrides
from vla.serve import protocol
from vla.serve.batcher import DynamicBatcher
from vla.serve.obs_mapping import MAX_PROMPT_BYTES, CanonicalObs, ObservationError, ObsMapping

log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    checkpoint: str = ""  # policy checkpoint directory (Policy.save)
    onnx: str = ""  # or an ONNX policy directory (vla export --format onnx), run by onnxruntime on the CPU
    host: str = "127.0.0.1"
    port: int = 8000  # 0 picks a free port (tests)
    api_key: str | None = None  # when set, clients must send "Authorization: Api-Key <key>"
    max_batch: int = 8  # requests from different clients merged into one forward pass
    max_wait_ms: float = 5.0  # longest a request waits for others to join its batch
    max_message_mb: float = protocol.DEFAULT_MAX_MESSAGE_MB  # larger requests get an error reply
    obs_map: str | None = None  # JSON/YAML client key -> canonical key; overrides the checkpoint's obs_map.json
    device: str = "auto"  # the GPU when there is one
    compile: bool = False  # regional torch.compile (CUDA graphs for the head on a GPU); compiled before serving
    # Advertise ensembled play (a new chunk every step, blended by the client's ActionQueue) instead of the
    # checkpoint's: ACT's temporal coefficient or CogACT's adaptive alpha
    temporal_ensemble_coeff: float | None = None
    adaptive_ensemble_alpha: float | None = None
    # Real-time chunking of requests that carry prev_chunk_left_over (flow/diffusion checkpoints; None: the
    # checkpoint's policy.rtc): guided | inpaint | auto, the soft mask (exp | linear | ones | zeros), beta
    rtc_mode: str | None = None
    rtc_schedule: str | None = None
    rtc_beta: float | None = None

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535 (0 picks a free one), got {self.port}")
        if self.max_message_mb <= 0:
            raise ValueError(f"max_message_mb must be > 0, got {self.max_message_mb}")

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * 2**20)


def _to_images(obs: CanonicalObs, device: torch.device) -> torch.Tensor:
    """N x (Hi, Wi, 3) uint8 -> (N, 3, Hi, Wi) float in [0, 1]; cameras of other sizes resized to the largest."""
    h = max(im.shape[0] for im in obs.images)
    w = max(im.shape[1] for im in obs.images)
    out = []
    for im in obs.images:
        x = rearrange(torch.from_numpy(np.array(im, copy=True)).to(device), "h w c -> 1 c h w").float() / 255.0
        if x.shape[-2:] != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        out.append(x[0])
    return torch.stack(out)  # (N, 3, Hi, Wi)


def _batch_key(obs: CanonicalObs):
    """Seeded requests run alone; others batch with requests whose images end up the same size."""
    if obs.seed is not None:
        return None
    return (max(im.shape[0] for im in obs.images), max(im.shape[1] for im in obs.images))


def _worker_init(config: ServeConfig):
    """With ``--compile``, the inference thread replays the CUDA graphs the warm-up recorded in this thread."""
    if not config.compile:
        return None
    from vla.models.compile import share_cudagraphs_with_threads

    try:
        return share_cudagraphs_with_threads()
    except (ImportError, AttributeError) as e:  # torch's private CUDA-graph module moved: serve without sharing
        log.warning("cannot share CUDA graphs with the inference thread (%s); use --device cpu or no --compile", e)
        return None


def load_onnx_policy(config: ServeConfig):
    """``--onnx DIR``: the exported policy under onnxruntime (CPU; PyTorch-only options are refused)."""
    from vla.serve.onnx_runner import OnnxPolicy

    if config.compile:
        raise ValueError("serve: --compile is torch.compile; an --onnx policy runs in onnxruntime")
    policy = OnnxPolicy(config.onnx)
    if config.temporal_ensemble_coeff is not None or config.adaptive_ensemble_alpha is not None:
        policy.use_ensembling(config.temporal_ensemble_coeff, config.adaptive_ensemble_alpha)
    return policy


class PolicyServer:
    """Owns the policy, the batcher and the websocket handlers; ``serve()`` runs it on the current loop."""

    def __init__(self, policy, config: ServeConfig, obs_mapping: ObsMapping | None = None):
        """``policy``: a ``Policy``, or an ``OnnxPolicy`` (vla/serve/onnx_runner.py: the same ``config`` fields and
        ``predict_chunk``, numpy out, on the CPU)."""
        torch_policy = isinstance(policy, torch.nn.Module)
        self.policy = policy.eval() if torch_policy else policy
        self.config = config
        self.mapping = obs_mapping or ObsMapping.for_checkpoint(
            config.checkpoint or config.onnx or None, config.obs_map
        )
        self.device = next(policy.parameters()).device if torch_policy else torch.device("cpu")
        pc = policy.config
        self.cameras, self.state_dim = list(pc.cameras), int(pc.state_dim)
        # (H, D) the real-time chunking keys are checked against; None: the head cannot use them (refused)
        self._rtc_chunk = (int(pc.chunk_size), int(pc.action_dim)) if policy.supports_rtc else None
        self.batcher: DynamicBatcher[CanonicalObs, np.ndarray] = DynamicBatcher(
            self._run_batch, config.max_batch, config.max_wait_ms, key=_batch_key, worker_init=_worker_init(config)
        )
        self.port: int | None = None
        self._connections = 0
        self._rng = np.random.default_rng()  # OS entropy: unseeded requests differ between calls and restarts

    @classmethod
    def from_checkpoint(cls, config: ServeConfig) -> PolicyServer:
        if config.onnx:
            return cls(load_onnx_policy(config), config)
        from vla.models.policy import Policy

        policy = Policy.load(config.checkpoint, config.device)
        if config.temporal_ensemble_coeff is not None or config.adaptive_ensemble_alpha is not None:
            policy.use_ensembling(config.temporal_ensemble_coeff, config.adaptive_ensemble_alpha)
        rtc = with_overrides(policy.config.rtc, config.rtc_mode, config.rtc_schedule, config.rtc_beta)
        if policy.head.supports_rtc:
            resolve_mode(rtc, policy.head.rtc_trained)  # an impossible mode fails here, not on a client's request
        policy.config = dataclasses.replace(policy.config, rtc=rtc)
        if config.compile:
            from vla.models.compile import compile_for_inference

            compile_for_inference(policy)  # compiled and warmed up here, not on the first client's request
        return cls(policy, config)

    # ---- inference (worker thread) -----------------------------------------------------------
    def _run_batch(self, items: Sequence[CanonicalObs]) -> list[np.ndarray]:
        images = torch.stack([_to_images(o, self.device) for o in items])  # (B, N, 3, Hi, Wi)
        state = torch.from_numpy(np.stack([o.state for o in items])).to(self.device)  # (B, S)
        obs = {"images": images, "state": state, "instruction": [o.instruction for o in items]}
        seed = items[0].seed if len(items) == 1 else None
        if seed is None:
            # predict_chunk restores the global RNG after sampling, so seed=None would replay the same noise
            # on every call: unseeded requests get a fresh seed from the server's own entropy instead.
            seed = int(self._rng.integers(2**31))
        rtc = {}
        if any(o.prev_chunk is not None for o in items):  # real-time chunking: rows without a remainder sample plain
            rtc = {"prev_chunk": [o.prev_chunk for o in items], "inference_delay": [o.inference_delay for o in items]}
        chunk = self.policy.predict_chunk(obs, seed=seed, **rtc)  # (B, H, D) raw units
        if isinstance(chunk, torch.Tensor):  # an OnnxPolicy answers numpy
            chunk = chunk.float().cpu().numpy()  # sync point: once per batch
        return list(chunk)

    # ---- protocol ----------------------------------------------------------------------------
    def metadata(self) -> dict:
        pc = self.policy.config
        return {
            "protocol": protocol.PROTOCOL,
            "protocol_version": protocol.PROTOCOL_VERSION,
            "cameras": self.cameras,
            "state_dim": self.state_dim,
            "action_dim": int(pc.action_dim),
            "chunk_size": int(pc.chunk_size),  # H of every reply's actions (H, D)
            "action_horizon": int(pc.n_action_steps),  # what ActionChunkBroker should play per chunk
            # ACT temporal ensembling the checkpoint was configured with (ExecutorConfig.ensemble_coeff); None: off
            "temporal_ensemble_coeff": pc.temporal_ensemble_coeff,
            "adaptive_ensemble_alpha": pc.adaptive_ensemble_alpha,  # CogACT adaptive ensembling (ExecutorConfig.adaptive_alpha)
            "fps": float(pc.fps),
            "head": pc.head if isinstance(pc.head, str) else getattr(pc.head, "type", type(pc.head).__name__),
            "expected_keys": self.expected_keys(),
            "obs_map": dict(self.mapping.keys),
            "seed": "send an integer 'seed' for a deterministic reply (the request then runs unbatched)",
            # real-time chunking: send the previous chunk's unexecuted remainder and the measured delay
            "rtc": None
            if self._rtc_chunk is None
            else {
                "keys": [protocol.PREV_CHUNK, protocol.INFERENCE_DELAY],
                "mode": resolve_mode(pc.rtc, self.policy.head.rtc_trained),
            },
            "max_batch": self.config.max_batch,
            "max_wait_ms": self.config.max_wait_ms,
            "max_message_bytes": self.config.max_message_bytes,
            "max_prompt_bytes": MAX_PROMPT_BYTES,
            "batch_stats": self.batcher.stats.as_dict(),
        }

    def expected_keys(self) -> dict[str, str]:
        from vla.serve.obs_mapping import IMAGE_LAYOUT, IMAGE_PREFIX, PROMPT_KEY, STATE_KEY

        keys = {self.mapping.client_key(IMAGE_PREFIX + c): IMAGE_LAYOUT for c in self.cameras}
        keys[self.mapping.client_key(STATE_KEY)] = f"({self.state_dim},) float"
        keys[self.mapping.client_key(PROMPT_KEY)] = "str"
        return keys

    def health(self) -> dict:
        return {"status": "ok", "connections": self._connections, "batch_stats": self.batcher.stats.as_dict()}

    def _authorized(self, request: Request) -> bool:
        if not self.config.api_key:
            return True
        given = protocol.parse_api_key(request.headers.get(protocol.API_KEY_HEADER))
        return given is not None and hmac.compare_digest(given.encode(), self.config.api_key.encode())

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path in ("/healthz", "/stats"):
            if path == "/stats" and not self._authorized(request):
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or invalid Api-Key\n")
            response = connection.respond(http.HTTPStatus.OK, json.dumps(self.health()) + "\n")
            response.headers["Content-Type"] = "application/json"
            return response
        if not self._authorized(request):
            log.warning(json.dumps({"event": "auth_refused", "client": _peer(connection)}))
            return connection.respond(
                http.HTTPStatus.UNAUTHORIZED, "missing or invalid API key: send 'Authorization: Api-Key <key>'\n"
            )
        return None

    async def _send_error(self, ws: ServerConnection, kind: str, detail: str, started: float) -> None:
        if kind != "inference_error":  # the batcher counts failed forward passes itself
            self.batcher.stats.bad_requests += 1
        text = protocol.error_text(kind, detail)
        log.warning(
            json.dumps(
                {
                    "event": "bad_request",
                    "client": _peer(ws),
                    "kind": kind,
                    "detail": detail[:300],
                    "total_ms": round((time.perf_counter() - started) * 1000, 2),
                }
            )
        )
        await ws.send(text)

    async def _handler(self, ws: ServerConnection) -> None:
        peer = _peer(ws)
        self._connections += 1
        log.info(json.dumps({"event": "connect", "client": peer}))
        try:
            await ws.send(protocol.pack(self.metadata()))
            async for message in ws:
                started = time.perf_counter()
                if isinstance(message, str):
                    await self._send_error(
                        ws, "bad_request", "expected a binary msgpack message, got a text frame", started
                    )
                    continue
                if len(message) > self.config.max_message_bytes:
                    await self._send_error(
                        ws,
                        "message_too_large",
                        f"{len(message)} bytes exceeds the server's cap of "
                        f"{self.config.max_message_bytes} bytes (--max-message-mb "
                        f"{self.config.max_message_mb}); send smaller images",
                        started,
                    )
                    continue
                try:
                    obs = self.mapping.to_canonical(
                        protocol.unpack(message), self.cameras, self.state_dim, self._rtc_chunk
                    )
                except (protocol.ProtocolError, ObservationError) as e:
                    await self._send_error(ws, "bad_request", str(e), started)
                    continue
                except Exception as e:  # noqa: BLE001  any undecodable request is the client's problem, not fatal
                    await self._send_error(ws, "bad_request", f"{type(e).__name__}: {e}", started)
                    continue
                try:
                    actions, info = await self.batcher.submit(obs)
                except Exception as e:  # noqa: BLE001  reported to this client, the server keeps serving
                    # the client learns what failed; the traceback stays in the server's log (the batcher logged it)
                    await self._send_error(ws, "inference_error", f"{type(e).__name__}: {e}", started)
                    continue
                total_ms = (time.perf_counter() - started) * 1000.0
                timing = {
                    "infer_ms": info.infer_ms,
                    "queue_ms": info.queue_ms,
                    "total_ms": total_ms,
                    "batch_size": info.batch_size,
                }
                await ws.send(protocol.pack({protocol.ACTIONS: actions, protocol.SERVER_TIMING: timing}))
                log.info(
                    json.dumps(
                        {
                            "event": "infer",
                            "client": peer,
                            "bytes": len(message),
                            **{k: round(float(v), 2) for k, v in timing.items()},
                        }
                    )
                )
        except websockets.ConnectionClosed as e:
            log.info(
                json.dumps(
                    {
                        "event": "connection_closed",
                        "client": peer,
                        "code": e.rcvd.code if e.rcvd else None,
                        "reason": e.rcvd.reason if e.rcvd else "",
                    }
                )
            )
        finally:
            self._connections -= 1
            log.info(json.dumps({"event": "disconnect", "client": peer}))

    # ---- lifecycle ---------------------------------------------------------------------------
    async def serve(self, stop: asyncio.Event, ready: threading.Event | None = None) -> None:
        """Serve until ``stop`` is set; then close connections (code 1001) and finish the batch in flight."""
        self.batcher.start()
        hard_limit = self.config.max_message_bytes * protocol.HARD_LIMIT_FACTOR
        try:
            async with serve(
                self._handler,
                self.config.host,
                self.config.port,
                process_request=self._process_request,
                max_size=hard_limit,
                compression=None,
            ) as server:
                self.port = server.sockets[0].getsockname()[1]
                log.info(
                    json.dumps(
                        {
                            "event": "listening",
                            "host": self.config.host,
                            "port": self.port,
                            "cameras": self.cameras,
                            "max_batch": self.config.max_batch,
                            "max_wait_ms": self.config.max_wait_ms,
                            "max_message_bytes": self.config.max_message_bytes,
                            "max_prompt_bytes": MAX_PROMPT_BYTES,
                            "auth": bool(self.config.api_key),
                        }
                    )
                )
                if ready is not None:
                    ready.set()
                await stop.wait()
                log.info(json.dumps({"event": "shutdown", "batch_stats": self.batcher.stats.as_dict()}))
        except OSError as e:  # the address: a port in use, a host this machine does not have
            await self.batcher.stop()
            raise RuntimeError(
                f"cannot listen on {self.config.host}:{self.config.port}: {e.strerror or e}; "
                "pick another --port (0 picks a free one) or --host"
            ) from None
        await self.batcher.stop()

    def run(self) -> None:
        """Blocking entry point for ``vla serve``: SIGINT and SIGTERM shut down gracefully."""

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await self.serve(stop)

        asyncio.run(main())


class ServerThread:
    """A PolicyServer on its own event loop in a background thread (tests, benchmarks)."""

    def __init__(self, server: PolicyServer):
        self.server = server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="vla-serve", daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            await self.server.serve(self._stop, self._ready)

        try:
            asyncio.run(main())
        except BaseException as e:  # noqa: BLE001  surfaced by start()
            self._error = e
            self._ready.set()

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"ws://{self.server.config.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"policy server did not start within {timeout} s")
        if self._error is not None:
            raise RuntimeError(f"policy server failed to start: {self._error}") from self._error
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _peer(ws: ServerConnection) -> str:
    with contextlib.suppress(Exception):
        host, port = ws.remote_address[:2]
        return f"{host}:{port}"
    return "?"


def serve_checkpoint(config: ServeConfig) -> None:
    """``vla serve``: load the checkpoint, then serve until SIGINT/SIGTERM."""
    if bool(config.checkpoint) == bool(config.onnx):
        raise ValueError(
            "serve: give --checkpoint (a directory written by Policy.save) or --onnx (vla export --format onnx)"
        )
    what, path = ("checkpoint", config.checkpoint) if config.checkpoint else ("ONNX export", config.onnx)
    if not Path(path).is_dir():
        raise FileNotFoundError(f"serve: {what} {path} is not a directory")
    PolicyServer.from_checkpoint(config).run()
