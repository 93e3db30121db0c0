"""The `vla` command: one entry point, one module per subcommand.

Each subcommand module exposes ``main(argv) -> int`` and a one-line ``SUMMARY``;
modules are imported only when their subcommand runs, so `vla --help` is instant.
``--debug``, anywhere on the line, is ``VLA_DEBUG=1``: failures print their traceback on
the terminal too (vla/cli/common.py).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

from vla.cli.common import DEBUG_ENV

DEBUG_FLAG = "--debug"

SUBCOMMANDS = {
    "data": "vla.cli.data",
    "train": "vla.cli.train",
    "export": "vla.cli.export",
    "quantize": "vla.cli.quantize",
    "import": "vla.cli.import_cmd",
    "eval": "vla.cli.eval",
    "eval-sweep": "vla.cli.eval_sweep",
    "observability": "vla.cli.observability",
    "serve": "vla.cli.serve",
    "bench": "vla.cli.bench",
    "peer": "vla.cli.peer",
}

SUMMARIES = {
    "data": "generate, validate, inspect, convert datasets; compute statistics; fit the FAST tokenizer",
    "train": "train a policy (one process, or many under `accelerate launch -m vla train`)",
    "export": "a plain policy checkpoint (from DeepSpeed ZeRO shards too), or LeRobot's format (pi0, pi0.5, SmolVLA)",
    "quantize": "post-training quantization with torchao (int8 weights, int8 dynamic, fp8): a normal checkpoint",
    "import": "read a LeRobot pi0, pi0.5 or SmolVLA checkpoint into ours",
    "eval": "score a checkpoint (or a reference policy) on a simulated suite, or open loop on recorded episodes",
    "eval-sweep": "evaluate every checkpoint of a training run and name the best",
    "observability": "whether each MetaWorld task's objects and goal are visible in the cameras (frames, pixel counts)",
    "serve": "serve a policy over websockets (openpi-compatible protocol)",
    "bench": "benchmarks with JSON output: data, train, infer, eval, serve",
    "peer": "train LeRobot's own policies (ACT, Diffusion Policy) on a dataset for a wall-clock budget, as peers",
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [
        "usage: vla <command> [options]   (vla <command> --help for its options)",
        "",
        "Vision-language-action policies: data, training, evaluation, serving.",
        "",
        "commands:",
    ]
    lines += [f"  {name.ljust(width)}  {SUMMARIES[name]}" for name in SUBCOMMANDS]
    lines += [
        "",
        f"A failure prints one line and the log file with its traceback; {DEBUG_FLAG} (anywhere) or {DEBUG_ENV}=1",
        "prints the traceback here too.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if DEBUG_FLAG in argv:
        argv = [a for a in argv if a != DEBUG_FLAG]
        os.environ[DEBUG_ENV] = "1"  # as VLA_DEBUG=1, also for the processes this command starts
    os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering for data generation and evaluation
    os.environ.setdefault("SVT_LOG", "1")  # the AV1 encoder behind lerobot's videos prints info lines otherwise
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name = argv[0]
    if name not in SUBCOMMANDS:
        import difflib

        close = difflib.get_close_matches(name, list(SUBCOMMANDS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        print(f"vla: unknown command {name!r}.{hint}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
