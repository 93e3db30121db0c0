"""Many clients at once against a policy server (the serving tests, CPU and GPU).

Imported by name (``from serve_clients import infer_concurrently``): tests/ is on sys.path through the root
conftest, and test folders have no packages (see tiny_policies.py).
"""

from __future__ import annotations

import threading

from vla.serve import PolicyClient


def infer_concurrently(url: str, observations: list[dict], api_key: str | None = None, timeout_s: float = 300) -> list:
    """Send each observation from its own client at the same moment; per client, its reply or the exception."""
    n = len(observations)
    clients = [PolicyClient(url, api_key=api_key) for _ in range(n)]
    barrier, out = threading.Barrier(n), [None] * n

    def work(i: int) -> None:
        barrier.wait()
        try:
            out[i] = clients[i].infer(observations[i])
        except Exception as e:  # noqa: BLE001  returned to the test
            out[i] = e

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s)
    for c in clients:
        c.close()
    return out
