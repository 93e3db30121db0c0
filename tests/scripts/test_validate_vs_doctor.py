"""The faults of scripts/peers/validate_vs_doctor.py, on our side only (lerobot-doctor is no dependency): each
builder still breaks the dataset, `vla data validate` refuses the ones that train wrong and warns for the rest,
and `vla train`'s fast check (no decoding: a video's header says how many frames it holds) refuses the same."""

from scripts.peers.validate_vs_doctor import FAULTS, REFUSE, SILENT, build_corrupted, run_ours, run_training_gate


def test_every_fault_gets_the_right_answer(three_cam_dataset, tmp_path):
    assert run_ours(three_cam_dataset)["verdict"] == SILENT
    roots = build_corrupted(three_cam_dataset, tmp_path)
    got = {fid: run_ours(roots[fid])["verdict"] for fid, *_ in FAULTS}
    assert got == {fid: right for fid, _, _, right in FAULTS}
    gate = {fid: run_training_gate(roots[fid])["refused"] for fid, *_ in FAULTS}
    assert gate == {fid: right == REFUSE for fid, _, _, right in FAULTS}  # short videos too: their headers tell
