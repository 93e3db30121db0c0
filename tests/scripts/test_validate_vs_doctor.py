"""The faults of scripts/peers/validate_vs_doctor.py, on our side only (lerobot-doctor is no dependency): each
builder still breaks the dataset, `vla data validate` refuses the ones that train wrong and warns for the rest,
and `vla train`'s fast check refuses all it can see without decoding videos."""

from scripts.peers.validate_vs_doctor import FAULTS, REFUSE, SILENT, build_corrupted, run_ours, run_training_gate

DECODE_ONLY = {"8", "8b"}  # a short video: only decoding tells, which the check before training skips


def test_every_fault_gets_the_right_answer(three_cam_dataset, tmp_path):
    assert run_ours(three_cam_dataset)["verdict"] == SILENT
    roots = build_corrupted(three_cam_dataset, tmp_path)
    got = {fid: run_ours(roots[fid])["verdict"] for fid, *_ in FAULTS}
    assert got == {fid: right for fid, _, _, right in FAULTS}
    gate = {fid: run_training_gate(roots[fid])["refused"] for fid, *_ in FAULTS}
    assert gate == {fid: right == REFUSE and fid not in DECODE_ONLY for fid, _, _, right in FAULTS}
