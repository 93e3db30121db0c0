"""Serving: an openpi-compatible websocket policy server and a dependency-light client.

Modules: ``protocol`` (wire format), ``obs_mapping`` (client keys -> canonical observation),
``batcher`` (dynamic batching), ``server`` (websocket server, needs torch), ``client``
(``PolicyClient``), ``executor`` (``ChunkExecutor``: asynchronous action-chunk playback),
``bench`` (``bench_serve``).

Only the light client side is imported here, so a robot PC can ``from vla.serve import
PolicyClient`` with numpy, msgpack and websockets alone; import ``vla.serve.server`` for the server.
"""

from vla.serve.client import PolicyClient, ServerError
from vla.serve.executor import ChunkExecutor, ExecutorConfig, ExecutorStats

__all__ = ["ChunkExecutor", "ExecutorConfig", "ExecutorStats", "PolicyClient", "ServerError"]
