"""`vla data <verb>`: dataset tools (validate, stats, convert, inspect, fit-tokenizer, generate).

Every verb is a thin shell over one library function, so everything here is also
usable from Python. A user error (missing path, bad dataset, wrong flag) prints one
line and exits 2, never a traceback; ``validate`` exits 1 when it finds problems.
"""

from __future__ import annotations

import argparse
import inspect as pyinspect
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from vla.cli.common import FailureLog, report_failure

SUMMARY = "generate, validate, inspect, convert datasets; compute statistics; fit an action tokenizer (FAST or VQ)"
USER_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, KeyError, ValueError, TypeError, ImportError)


class CliError(Exception):
    """An error to print as one line (exit 2)."""


# ── verbs ─────────────────────────────────────────────────────────────


def cmd_validate(args: argparse.Namespace) -> int:
    from data_pipelines.validate import validate_dataset

    problems = validate_dataset(args.path, chunk=args.chunk, decode_videos=not args.no_decode)
    errors = sum(p.level == "error" for p in problems)
    if args.json:  # for CI: one JSON document on stdout
        report = {"path": str(args.path), "errors": errors, "warnings": len(problems) - errors}
        print(json.dumps(report | {"problems": [p.as_dict() for p in problems]}, indent=2))
        return 1 if errors else 0
    for p in problems:
        print(p)
    if errors:
        print(
            f"{args.path}: {errors} problem(s)"
            + (f", {len(problems) - errors} warning(s)" if len(problems) > errors else "")
        )
        return 1
    print(f"{args.path}: OK" + (f" ({len(problems)} warning(s))" if problems else ""))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from data_pipelines.legacy import legacy_hint
    from data_pipelines.stats import compute_stats, save_stats

    root = Path(args.path)
    if not (root / "meta" / "info.json").is_file():
        raise CliError(f"{root} is not a LeRobot dataset (no meta/info.json)")
    hint = legacy_hint(root)  # a v2.x root: its files are not where v3 readers look
    if hint:
        raise CliError(hint)
    stats = compute_stats(root)
    out = save_stats(stats, Path(args.out) if args.out else root / "meta" / "stats.json")
    for key, s in stats.items():
        mean, std = np.asarray(s["mean"]), np.asarray(s["std"])
        print(
            f"{key}: dims={mean.size} frames={s['count'][0]} "
            f"mean in [{mean.min():.4g}, {mean.max():.4g}] std in [{std.min():.4g}, {std.max():.4g}] "
            f"min={np.min(s['min']):.4g} max={np.max(s['max']):.4g} zero-spread dims={int((std < 1e-8).sum())}"
        )
    print(f"wrote {out}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    if (Path(args.src) / "meta" / "info.json").is_file():
        return convert_lerobot(args)
    from data_pipelines.convert import convert

    out = convert(
        args.src,
        args.out,
        fps=10 if args.fps is None else args.fps,
        robot_type=args.robot_type or "unknown",
        use_videos=not args.no_videos,
        overwrite=args.overwrite,
    )
    print(f"wrote {out}")
    return 0


def convert_lerobot(args: argparse.Namespace) -> int:
    """A LeRobot v2.0/v2.1 dataset -> v3, with LeRobot's own converter (data_pipelines.legacy)."""
    from data_pipelines.legacy import codebase_version, convert_to_v3

    given = [flag for flag, value in (("--fps", args.fps), ("--robot-type", args.robot_type)) if value is not None]
    if given or args.no_videos:
        flags = ", ".join(given + (["--no-videos"] if args.no_videos else []))
        raise CliError(f"{flags}: for raw episode files; a LeRobot dataset keeps its own fps, robot type and videos")
    version = codebase_version(args.src)
    out = convert_to_v3(args.src, args.out, overwrite=args.overwrite)
    print(f"wrote {out} (LeRobot {version} -> v3.0)")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from data_pipelines.lerobot_source import open_meta

    meta = open_meta(args.path)
    tasks = list(meta.tasks.index) if meta.tasks is not None else []
    report = {
        "root": str(meta.root),
        "codebase_version": meta.info.codebase_version,
        "robot_type": meta.robot_type,
        "episodes": meta.total_episodes,
        "frames": meta.total_frames,
        "fps": meta.fps,
        "features": {k: {"dtype": v["dtype"], "shape": list(v["shape"])} for k, v in meta.features.items()},
        "tasks": tasks,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for key in ("root", "codebase_version", "robot_type", "episodes", "frames", "fps"):
        print(f"{key}: {report[key]}")
    print("features:")
    for k, v in report["features"].items():
        print(f"  {k}: {v['dtype']} {tuple(v['shape'])}")
    print(f"tasks ({len(tasks)}):")
    for t in tasks:
        print(f"  {t}")
    return 0


def action_chunks(root: Path, horizon: int, max_chunks: int, seed: int) -> np.ndarray:
    """Every action window of H steps inside an episode (the last action repeated past its end): (N, H, D)."""
    from data_pipelines.feature_map import FeatureMap
    from data_pipelines.lerobot_source import open_meta
    from data_pipelines.stats import column_to_numpy

    fm = FeatureMap.infer(open_meta(root))

    actions, episodes = [], []
    for f in sorted((root / "data").rglob("*.parquet")):
        t = pq.read_table(f, columns=[fm.action, "episode_index"])
        actions.append(column_to_numpy(t.column(fm.action), fm.action, fm.action_dim))
        episodes.append(t.column("episode_index").to_numpy())
    a = np.concatenate(actions)  # (F, D)
    ep = np.concatenate(episodes)  # (F,)
    rng = np.random.default_rng(seed)
    starts = np.arange(len(a))
    if len(starts) > max_chunks:
        starts = np.sort(rng.choice(starts, size=max_chunks, replace=False))
    # Index of the last frame of each frame's episode, to clamp windows at the episode end.
    last = np.zeros(len(a), dtype=np.int64)
    bounds = np.flatnonzero(np.diff(ep)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(a)], strict=True):
        last[lo:hi] = hi - 1
    idx = np.minimum(starts[:, None] + np.arange(horizon)[None], last[starts][:, None])  # (N, H)
    return a[idx]  # (N, H, D)


def cmd_fit_tokenizer(args: argparse.Namespace) -> int:
    import torch

    from data_pipelines.feature_map import FeatureMap
    from data_pipelines.lerobot_source import open_meta
    from data_pipelines.stats import compute_stats, load_stats
    from vla.models.heads.tokenizers.fast import fit_fast_tokenizer
    from vla.models.heads.tokenizers.vq import VQTokenizerConfig
    from vla.models.normalizer import Normalizer

    if args.type == "vq":  # a chunk length the window does not divide is refused before reading the data
        vq = VQTokenizerConfig(
            window=args.window, levels=args.levels, codes=args.codes, fit_steps=args.fit_steps, seed=args.seed
        ).build()
        vq.check_horizon(args.chunk)
    root = Path(args.path)
    fm = FeatureMap.infer(open_meta(root))
    # The statistics training uses (vla.train.data): exact ones computed from the data unless a file is given.
    # Not meta/stats.json: LeRobot writes it with per-episode quantiles averaged over episodes (on mw10 the
    # gripper's q01/q99 read 0.27/0.61 where the data's are -1/1), so a tokenizer fitted on them would see
    # other numbers than the policy feeds it.
    stats = load_stats(args.stats) if args.stats else compute_stats(root, fm.stats_keys)
    norm = Normalizer({"actions": fm.stats_for(stats)["actions"]}, {"actions": args.norm})
    chunks = action_chunks(root, args.chunk, args.max_chunks, args.seed)
    normed = norm.normalize("actions", torch.as_tensor(chunks, dtype=torch.float32)).numpy()  # (N, H, D)
    if args.type == "vq":
        tok = vq.fit(normed)
        tok.normalization = args.norm
    else:
        tok = fit_fast_tokenizer(normed, vocab_size=args.vocab_size, scale=args.scale, normalization=args.norm)
    path = tok.save(args.out)
    report = tok.report(normed)
    print(
        f"fitted on {len(normed)} chunks of H={args.chunk}, D={normed.shape[-1]} ({args.norm} normalized): "
        f"{args.type} tokenizer"
    )
    print(f"reconstruction MAE: {report['reconstruction_mae']:.5f} (worst chunk {report['max_chunk_mae']:.5f})")
    print(f"mean tokens per chunk: {report['mean_tokens_per_chunk']:.2f} (max {report['max_tokens_per_chunk']:.0f})")
    print(f"vocab size: {int(report['vocab_size'])}")
    print(f"wrote {path}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    try:
        from data_pipelines.demos.metaworld import generate
    except ImportError as e:
        raise CliError(f"MetaWorld demo generator unavailable: {e}") from e
    kwargs = {
        "suite": args.suite,
        "episodes_per_task": args.episodes_per_task,
        "out": args.out,
        "cameras": args.cameras,
        "image_size": args.image_size,
        "workers": args.workers,
        "seed": args.seed,
        "keep_failures": args.keep_failures,
        "fps": args.fps,
        "use_videos": False if args.no_videos else None,
        "overwrite": args.overwrite,
    }
    sig = pyinspect.signature(generate)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    kwargs = {k: v for k, v in kwargs.items() if v is not None and (accepts_any or k in sig.parameters)}
    try:
        sig.bind(**kwargs)
    except TypeError as e:
        raise CliError(f"data_pipelines.demos.metaworld.generate{sig}: {e}") from e
    result = generate(**kwargs)  # prints its own per-task report
    if args.json and result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


# ── parser ────────────────────────────────────────────────────────────


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vla data", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    v = sub.add_parser(
        "validate",
        help="check a dataset; list every problem with its file/episode/frame",
        description="Check a LeRobot v3 dataset: metadata, parquet files, videos (the last frame of every episode), "
        "NaN/inf, shapes, episode lengths, frame/episode/task indices, timestamps against fps; warn about frozen "
        "actions and zero std. Exit 0 when sound (warnings allowed), 1 with errors.",
    )
    v.add_argument("path")
    v.add_argument("--chunk", type=int, default=None, help="flag episodes shorter than this action chunk length")
    v.add_argument("--no-decode", action="store_true", help="only check that video files exist, do not decode them")
    v.add_argument(
        "--json", action="store_true", help="print one JSON report (level, kind, where, message per problem)"
    )
    v.set_defaults(fn=cmd_validate)

    s = sub.add_parser(
        "stats",
        help="exact per-dim state/action statistics (mean std min max q01 q99)",
        description="Compute exact per-dimension statistics of every numeric feature over the whole dataset and merge them into meta/stats.json (or --out).",
    )
    s.add_argument("path")
    s.add_argument("--out", default=None, help="stats file to write (default: PATH/meta/stats.json, merged)")
    s.set_defaults(fn=cmd_stats)

    c = sub.add_parser(
        "convert",
        help="raw per-episode .npz/.hdf5 files, or a LeRobot v2.0/v2.1 dataset -> LeRobot v3 dataset",
        description="Convert a folder of per-episode .npz/.hdf5 files (images/<cam>, state, action, instruction; see "
        "data_pipelines/convert.py) into a LeRobot v3 dataset. A SRC with meta/info.json is a LeRobot v2.0/v2.1 "
        "dataset: it is converted with LeRobot's own v2.1 -> v3.0 converter (data_pipelines/legacy.py) and left as "
        "it was.",
    )
    c.add_argument("src", help="folder of raw episode files, or a LeRobot v2.0/v2.1 dataset root")
    c.add_argument("--out", required=True)
    c.add_argument("--fps", type=int, default=None, help="frame rate of raw episodes (default 10)")
    c.add_argument("--robot-type", default=None, help="robot type of raw episodes (default unknown)")
    c.add_argument("--no-videos", action="store_true", help="store images as PNG in parquet instead of AV1 videos")
    c.add_argument("--overwrite", action="store_true")
    c.set_defaults(fn=cmd_convert)

    i = sub.add_parser(
        "inspect",
        help="episodes, frames, fps, features and tasks of a dataset",
        description="Print a dataset's episodes, frames, fps, features and tasks.",
    )
    i.add_argument("path")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(fn=cmd_inspect)

    f = sub.add_parser(
        "fit-tokenizer",
        help="fit an action tokenizer (FAST or residual VQ) on normalized action chunks",
        description="Fit an action tokenizer (FAST: DCT + BPE; vq: residual VQ) on normalized action chunks of a dataset; print reconstruction error and tokens per chunk.",
    )
    f.add_argument("path")
    f.add_argument("--out", required=True, help="directory for action_tokenizer.json")
    f.add_argument("--chunk", type=int, default=50, help="action chunk length H")
    f.add_argument("--type", default="fast", choices=["fast", "vq"], help="FAST (DCT + BPE) or residual VQ")
    f.add_argument("--vocab-size", type=int, default=1024, help="fast: BPE vocabulary")
    f.add_argument("--scale", type=float, default=10.0, help="fast: DCT coefficient scale (precision vs length)")
    f.add_argument("--window", type=int, default=5, help="vq: steps per window W (must divide --chunk)")
    f.add_argument("--levels", type=int, default=4, help="vq: residual levels L (tokens per window)")
    f.add_argument("--codes", type=int, default=256, help="vq: codes per level K")
    f.add_argument("--fit-steps", type=int, default=3000, help="vq: Adam steps of the encoder/decoder/codebooks")
    f.add_argument(
        "--norm",
        default="quantile",
        choices=["quantile", "min_max"],
        help="action normalization (recorded in the tokenizer; training must use the same policy.action_norm)",
    )
    f.add_argument(
        "--stats", default=None, help="stats file, as --dataset.stats in training (default: exact, from the data)"
    )
    f.add_argument("--max-chunks", type=int, default=5000, help="fit on at most this many chunks (random)")
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(fn=cmd_fit_tokenizer)

    g = sub.add_parser(
        "generate",
        help="scripted MetaWorld demonstrations as a LeRobot dataset",
        description="Roll out MetaWorld's scripted experts and write the episodes as a LeRobot v3 dataset.",
    )
    g.add_argument("--suite", required=True, help="suite name, e.g. mw10")
    g.add_argument("--episodes-per-task", type=int, required=True)
    g.add_argument("--out", required=True)
    g.add_argument("--cameras", nargs="+", default=None)
    g.add_argument("--image-size", type=int, default=None)
    g.add_argument("--workers", type=int, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--keep-failures", action="store_true", default=None, help="also write episodes the expert failed")
    g.add_argument("--fps", type=int, default=None)
    g.add_argument("--no-videos", action="store_true", help="store images as PNG in parquet instead of AV1 videos")
    g.add_argument("--overwrite", action="store_true", default=None)
    g.add_argument("--json", action="store_true", help="print the generator's result as JSON")
    g.set_defaults(fn=cmd_generate)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already printed by argparse)
        return int(e.code or 0)
    try:
        return int(args.fn(args) or 0)
    except (CliError, *USER_ERRORS, OSError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        # The traceback goes to the cache's log, never into a dataset folder.
        report_failure(f"vla data {args.verb}: error: {msg}", FailureLog(f"data-{args.verb}"))
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
