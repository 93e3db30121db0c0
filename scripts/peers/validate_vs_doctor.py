"""Peer comparison: `vla data validate` against lerobot-doctor on faults real pipelines produce.

One small sound LeRobot v3 dataset (2 video cameras at 32x32, 7-dim state, 14-dim action, episodes of 30, 20
and 36 frames at 10 fps, 2 tasks) is written through our DatasetWriter, then copied once per fault, each
copy broken the way a real pipeline breaks it (the same edits as tests/data/test_validate.py, "what real
pipelines break"). On every copy we run

* our validator, ``validate_dataset(root)`` (what `vla data validate` runs: videos decoded),
* the check `vla train` runs before its first step (``vla.train.data.refuse_unsound``: any error of
  ``validate_dataset(root, decode_videos=False)`` refuses),
* lerobot-doctor (``load_dataset`` + ``run_checks``, every check: what ``lerobot-doctor check DIR`` runs),

and record whether each REFUSED (an error / a FAIL), WARNED or said nothing. lerobot-doctor is not one of
our dependencies: point ``--doctor-path`` at an unpacked wheel (``pip install --no-deps --target DIR
lerobot-doctor==0.2.0``; it needs pyarrow, huggingface-hub, av, rich and numpy, which our venv has).
Without it only our side runs.

    python -m scripts.peers.validate_vs_doctor --out DIR [--doctor-path /tmp/ld_x]

Writes DIR/validate_vs_doctor.json (one row per fault, plus the sound dataset) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CAMERAS = {"overhead": (32, 32), "wrist": (32, 32)}
STATE_DIM, ACTION_DIM = 7, 14
LENGTHS = [30, 20, 36]  # rows 0..29, 30..49, 50..85
TASKS = ["fold the towel", "stack the cups"]
FPS = 10
DATA = "data/chunk-000/file-000.parquet"
EPISODES = "meta/episodes/chunk-000/file-000.parquet"
CAM = "observation.images.overhead"
VIDEO = f"videos/{CAM}/chunk-000/file-000.mp4"

REFUSE, WARN, SILENT = "REFUSED", "WARNED", "silent"


# ---- the sound dataset ------------------------------------------------------------------------------------------
def write_sound(out: Path, seed: int = 0) -> Path:
    """The dataset every fault starts from, with our exact statistics merged into meta/stats.json."""
    from data_pipelines.stats import compute_stats, save_stats
    from data_pipelines.writer import DatasetWriter, make_features

    rng = np.random.default_rng(seed)
    feats = make_features(CAMERAS, STATE_DIM, ACTION_DIM)
    with DatasetWriter(out, fps=FPS, features=feats, robot_type="synthetic") as w:
        for i, n in enumerate(LENGTHS):
            frames = {}
            for name, (h, wd) in CAMERAS.items():
                base = np.linspace(0, 200, n, dtype=np.float32)[:, None, None, None]
                noise = rng.integers(0, 40, size=(n, h, wd, 3))
                frames[f"observation.images.{name}"] = np.clip(base + noise, 0, 255).astype(np.uint8)
            frames["observation.state"] = np.cumsum(rng.normal(size=(n, STATE_DIM)), 0).astype(np.float32)
            frames["action"] = rng.normal(size=(n, ACTION_DIM)).astype(np.float32)
            w.add_episode(frames, task=TASKS[i % len(TASKS)])
    save_stats(compute_stats(out), out / "meta" / "stats.json")
    return out


# ---- editing helpers (as in tests/data/test_validate.py) -------------------------------------------------------
def _rewrite(path: Path, edit: Callable[[dict[str, list]], None]) -> None:
    """Apply ``edit(columns)`` to a parquet file, keeping its schema."""
    table = pq.read_table(path)
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    edit(columns)
    pq.write_table(pa.table({k: pa.array(v, type=table.schema.field(k).type) for k, v in columns.items()}), path)


def _json(path: Path, edit: Callable[[dict], None]) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc, indent=2))


# ---- the faults: each edits a copy of the sound dataset in place -------------------------------------------------
def timestamp_gap(root: Path) -> None:
    """A recorder stall: episode 1 (rows 30..49) jumps 0.5 s before its frame 10."""

    def edit(c):
        for row in range(40, 50):
            c["timestamp"][row] += 0.5

    _rewrite(root / DATA, edit)


def timestamps_backwards(root: Path) -> None:
    """Episode 2 (rows 50..85): frames 5 and 6 swapped."""

    def edit(c):
        c["timestamp"][55], c["timestamp"][56] = c["timestamp"][56], c["timestamp"][55]

    _rewrite(root / DATA, edit)


def fps_disagrees(root: Path) -> None:
    """meta/info.json says 30 fps; the timestamps advance by 0.1 s."""
    _json(root / "meta" / "info.json", lambda info: info.update(fps=30))


def episode_index_disagrees(root: Path) -> None:
    """Episode 2's rows are labelled 7; meta/episodes still lists 0, 1, 2."""
    _rewrite(root / DATA, lambda c: c["episode_index"].__setitem__(slice(50, 86), [7] * 36))


def _duplicate_frame(c: dict[str, list]) -> None:
    for values in c.values():
        values.insert(36, values[35])  # episode 1, frame 5 written twice


def duplicate_frame_stale(root: Path) -> None:
    """A frame of episode 1 written twice; meta/episodes and info.json left as they were."""
    _rewrite(root / DATA, _duplicate_frame)


def duplicate_frame_consistent(root: Path) -> None:
    """A frame of episode 1 written twice, and every count updated to match (length, dataset_from/to_index,
    total_frames, ``index`` renumbered): only frame_index and timestamp repeat."""

    def edit(c):
        _duplicate_frame(c)
        c["index"] = list(range(len(c["index"])))

    def shift(c):
        c["length"][1] += 1
        c["dataset_to_index"][1] += 1
        c["dataset_from_index"][2] += 1
        c["dataset_to_index"][2] += 1

    _rewrite(root / DATA, edit)
    _rewrite(root / EPISODES, shift)
    _json(root / "meta" / "info.json", lambda info: info.update(total_frames=87))


def task_index_dangles(root: Path) -> None:
    """Episode 1's rows point to task 5; meta/tasks.parquet has 2 tasks."""
    _rewrite(root / DATA, lambda c: c["task_index"].__setitem__(slice(30, 50), [5] * 20))


def video_truncated(root: Path, drop: int = 10) -> None:
    """The overhead camera's video re-encoded without its last ``drop`` frames (an encoder killed before the
    end): episode 2 (8.6 s in the file) loses 8.6..9.5 s; the metadata still says 5.0..8.6 s. Same codec,
    size and pixel format as the original; frame times kept."""
    import av

    path = root / VIDEO
    with av.open(str(path)) as src:
        stream = src.streams.video[0]
        pix_fmt = stream.codec_context.pix_fmt
        frames = [f.to_ndarray(format="rgb24") for f in src.decode(stream)]
    keep = frames[: len(frames) - drop]
    spec = json.loads((root / "meta" / "info.json").read_text())["features"][CAM]["info"]
    codec = {"av1": "libsvtav1"}.get(spec["video.codec"], spec["video.codec"])  # the decoder is libdav1d
    tmp = path.with_name("truncated.mp4")
    with av.open(str(tmp), "w") as dst:
        out = dst.add_stream(codec, rate=FPS, options={"g": str(spec["video.g"]), "crf": str(spec["video.crf"])})
        out.width, out.height, out.pix_fmt = keep[0].shape[1], keep[0].shape[0], pix_fmt
        out.time_base = Fraction(1, FPS)
        for i, img in enumerate(keep):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            dst.mux(out.encode(frame))
        dst.mux(out.encode())
    tmp.replace(path)


def video_shorter_in_metadata(root: Path) -> None:
    """meta/episodes says the overhead video holds the last episode until 9.1 s; the file ends at 8.6 s."""
    key = f"videos/{CAM}/to_timestamp"
    _rewrite(root / EPISODES, lambda c: c[key].__setitem__(2, c[key][2] + 0.5))


def frozen_action(root: Path) -> None:
    """Episode 0's action is its first value for all 30 frames (a teleop stream that stopped updating)."""
    _rewrite(root / DATA, lambda c: c["action"].__setitem__(slice(0, 30), [c["action"][0]] * 30))


def zero_std(root: Path) -> None:
    """meta/stats.json: std = 0 for observation.state dim 3 (normalization would divide by ~0)."""
    _json(root / "meta" / "stats.json", lambda s: s["observation.state"]["std"].__setitem__(3, 0.0))


def nan_action(root: Path) -> None:
    """One NaN in the action column: episode 1 frame 3, dim 2."""

    def edit(c):
        c["action"][33] = [*c["action"][33][:2], float("nan"), *c["action"][33][3:]]

    _rewrite(root / DATA, edit)


# (id, name, builder, the right answer)
FAULTS: list[tuple[str, str, Callable[[Path], None], str]] = [
    ("1", "timestamp gap inside an episode (+0.5 s, episode 1)", timestamp_gap, REFUSE),
    ("2", "timestamps going backwards (2 frames swapped, episode 2)", timestamps_backwards, REFUSE),
    ("3", "fps in info.json 30, timestamps say 10", fps_disagrees, REFUSE),
    ("4", "episode_index of rows disagrees with meta/episodes (2 -> 7)", episode_index_disagrees, REFUSE),
    ("5", "duplicated frame, metadata stale", duplicate_frame_stale, REFUSE),
    ("6", "duplicated frame, metadata updated to match", duplicate_frame_consistent, REFUSE),
    ("7", "task_index pointing to no task", task_index_dangles, REFUSE),
    ("8", "video shorter than its episode (re-encoded without its last 10 frames)", video_truncated, REFUSE),
    ("8b", "video shorter than its episode (meta/episodes to_timestamp +0.5 s)", video_shorter_in_metadata, REFUSE),
    ("9", "action frozen for a whole episode (episode 0)", frozen_action, WARN),
    ("10", "std = 0 in meta/stats.json (observation.state dim 3)", zero_std, WARN),
    ("11", "NaN in the action column (episode 1 frame 3)", nan_action, REFUSE),
]


def build_corrupted(sound: Path, out: Path) -> dict[str, Path]:
    """One copy of ``sound`` per fault under ``out``; returns id -> root."""
    roots = {}
    for fid, _, build, _ in FAULTS:
        root = out / f"fault_{fid}"
        if root.exists():
            shutil.rmtree(root)
        shutil.copytree(sound, root)
        build(root)
        roots[fid] = root
    return roots


# ---- running the tools -----------------------------------------------------------------------------------------
def run_ours(root: Path) -> dict:
    from data_pipelines.validate import ERROR
    from data_pipelines.validate import validate_dataset as validate

    t0 = time.perf_counter()
    problems = validate(root)  # `vla data validate ROOT`: videos decoded
    seconds = time.perf_counter() - t0
    errors = [p for p in problems if p.level == ERROR]
    verdict = REFUSE if errors else WARN if problems else SILENT
    return {
        "verdict": verdict,
        "seconds": seconds,
        "problems": [p.as_dict() for p in problems],
        "flagged": sorted({f"{p.kind}{'' if p.level == ERROR else ' (w)'} @ {p.where}" for p in problems}),
    }


def run_training_gate(root: Path) -> dict:
    from vla.train.data import refuse_unsound

    t0 = time.perf_counter()
    try:
        refuse_unsound(str(root))
        refused, message = False, ""
    except ValueError as e:
        refused, message = True, str(e)
    return {"refused": refused, "seconds": time.perf_counter() - t0, "message": message}


def run_doctor(root: Path, baseline: dict | None) -> dict:
    """lerobot-doctor's check command, in process. A dataset it cannot load is a FAIL (the CLI exits 1)."""
    from lerobot_doctor.dataset_loader import load_dataset
    from lerobot_doctor.runner import run_checks

    t0 = time.perf_counter()
    try:
        ds = load_dataset(str(root))
        if ds.info is None:
            raise RuntimeError(ds.info_error)
        report = run_checks(ds)
    except Exception as e:
        return {
            "overall": "FAIL",
            "verdict": REFUSE,
            "seconds": time.perf_counter() - t0,
            "checks": {},
            "flagged": [f"load error: {type(e).__name__}: {e}"],
        }
    seconds = time.perf_counter() - t0
    checks = {
        r.name: {
            "severity": r.severity.value,
            "messages": [f"{m.severity.value}: {m.message}" for m in r.messages if m.severity.value != "PASS"],
        }
        for r in report.results
    }
    overall = report.overall_severity.value
    # Judged on what this dataset adds to the sound one's report: a WARN the sound dataset gets too (its
    # episodes are shorter than ACT's chunk of 50) says nothing about the fault.
    base = baseline["checks"] if baseline else {}
    flagged, new_levels = [], set()
    for name, c in checks.items():
        new = [m for m in c["messages"] if m not in base.get(name, {}).get("messages", [])]
        if new:
            flagged.append(f"{name}: " + " / ".join(new))
            new_levels |= {m.split(":", 1)[0] for m in new}
    verdict = REFUSE if "FAIL" in new_levels else WARN if new_levels else SILENT
    return {"overall": overall, "verdict": verdict, "seconds": seconds, "checks": checks, "flagged": flagged}


def _cell(verdict: str, flagged: list[str], limit: int = 160) -> str:
    text = verdict if not flagged else f"{verdict}: {'; '.join(flagged)}"
    text = text.replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="where the datasets and the JSON go")
    ap.add_argument("--doctor-path", default=None, help="a folder holding the lerobot_doctor package")
    args = ap.parse_args(argv)

    if args.doctor_path:
        sys.path.insert(0, args.doctor_path)
    try:
        import lerobot_doctor

        doctor_version = lerobot_doctor.__version__
    except ImportError:
        doctor_version = None
        print("lerobot-doctor not importable (--doctor-path): only our side runs", file=sys.stderr)

    out = args.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    sound = out / "sound"
    if sound.exists():
        shutil.rmtree(sound)
    write_sound(sound)
    roots = {"0": sound} | build_corrupted(sound, out)
    names = {"0": ("sound dataset (no fault)", SILENT)} | {f: (n, r) for f, n, _, r in FAULTS}

    # Imports and first-call costs are paid once on the sound dataset before anything is timed.
    run_ours(sound)
    run_training_gate(sound)
    baseline = run_doctor(sound, None) if doctor_version else None

    rows = []
    for fid, root in roots.items():
        name, right = names[fid]
        ours = run_ours(root)
        gate = run_training_gate(root)
        doctor = run_doctor(root, None if fid == "0" else baseline) if doctor_version else None
        rows.append(
            {
                "id": fid,
                "corruption": name,
                "right_answer": right,
                "ours": ours,
                "training_refused": gate,
                "doctor": doctor,
                "ours_right": ours["verdict"] == right,
                "doctor_right": None if doctor is None else doctor["verdict"] == right,
            }
        )

    result = {"lerobot_doctor_version": doctor_version, "dataset": str(sound), "rows": rows}
    result["totals_s"] = {
        "ours": sum(r["ours"]["seconds"] for r in rows),
        "training_gate": sum(r["training_refused"]["seconds"] for r in rows),
        "doctor": sum(r["doctor"]["seconds"] for r in rows) if doctor_version else None,
    }
    (out / "validate_vs_doctor.json").write_text(json.dumps(result, indent=2))

    print(
        "| # | corruption | `vla data validate` | `vla train` refuses | lerobot-doctor (overall; new findings) "
        "| right answer | ours s | doctor s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        d = r["doctor"]
        doc = "not run" if d is None else f"{d['overall']} → " + _cell(d["verdict"], d["flagged"])
        dsec = "" if d is None else f"{d['seconds']:.2f}"
        print(
            f"| {r['id']} | {r['corruption']} | {_cell(r['ours']['verdict'], r['ours']['flagged'])} "
            f"| {'yes' if r['training_refused']['refused'] else 'no'} | {doc} | {r['right_answer']} "
            f"| {r['ours']['seconds']:.2f} | {dsec} |"
        )
    t = result["totals_s"]
    doc_total = "" if t["doctor"] is None else f"{t['doctor']:.2f}"
    print(f"| | **total** | | | | | {t['ours']:.2f} | {doc_total} |")
    faults = [r for r in rows if r["id"] != "0"]
    print(
        f"\nright answers: ours {sum(r['ours_right'] for r in faults)}/{len(faults)}"
        + ("" if doctor_version is None else f", lerobot-doctor {sum(r['doctor_right'] for r in faults)}/{len(faults)}")
        + f"; training-gate time {t['training_gate']:.2f} s; JSON: {out / 'validate_vs_doctor.json'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
