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
from pathlib import Path

from data_pipelines.faults import FAULTS, REFUSE, SILENT, WARN, build_corrupted, write_sound


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
