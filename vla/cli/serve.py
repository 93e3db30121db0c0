"""`vla serve`: serve a policy checkpoint over websockets (openpi's wire protocol).

    vla serve --checkpoint outputs/run/checkpoints/last --host 0.0.0.0 --port 8000
    vla serve --checkpoint CKPT --port 8000 --api-key SECRET --max-batch 8 --max-wait-ms 5 \\
              --max-message-mb 64 --obs-map libero_keys.json --device cuda --compile true
    vla serve --onnx DIR --port 8000      a `vla export --format onnx` folder, run by onnxruntime (CPU)

Clients: openpi's ``WebsocketClientPolicy(host, port, api_key)`` unchanged, or
``vla.serve.PolicyClient("ws://host:port")``. ``GET /healthz`` answers JSON with batch
statistics. SIGINT/SIGTERM close connections and finish the batch in flight.
--obs-map: JSON/YAML {client_key: canonical_key}, canonical keys being
observation.images.<camera>, observation.state and prompt (default: the checkpoint's
obs_map.json, else canonical keys only).
"""

from __future__ import annotations

from vla.cli.common import friendly_errors, hyphens_to_underscores


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        import dataclasses

        from vla.serve.server import ServeConfig

        print(__doc__)
        print("options (--name VALUE or --name=VALUE; hyphens and underscores are the same):")
        for f in dataclasses.fields(ServeConfig):
            print(f"  --{f.name.replace('_', '-'):<16} default: {f.default!r}")
        return 0
    with friendly_errors("serve"):
        from vla.config import parse_config
        from vla.serve.server import ServeConfig, serve_checkpoint

        serve_checkpoint(parse_config(ServeConfig, hyphens_to_underscores(argv)))
    return 0
