"""Normalization statistics checked against the data before the first step (vla.train.stats_check)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_trainer import run_vla
from tiny_policies import TINY

from data_pipelines.stats import compute_stats, save_stats
from vla.models.backbones.base import BackboneConfig
from vla.models.heads.base import HeadConfig
from vla.models.normalizer import Normalizer
from vla.models.policy import Policy, PolicyConfig
from vla.train.config import AugmentConfig, DatasetConfig
from vla.train.data import build_training_data
from vla.train.stats_check import ERROR, WARNING, check_normalization, check_training_statistics, sampled_episodes


def _summary(x: np.ndarray) -> dict:
    return {
        "mean": x.mean(0),
        "std": x.std(0),
        "min": x.min(0),
        "max": x.max(0),
        "q01": np.quantile(x, 0.01, 0),
        "q99": np.quantile(x, 0.99, 0),
    }


def _check(stats: dict, sample: np.ndarray, mode: str = "mean_std"):
    norm = Normalizer({"actions": stats}, {"actions": mode})
    return check_normalization(norm, {"actions": stats}, {"actions": sample}, "test", episodes=1)


@pytest.fixture
def actions() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal([0.1, -2.0, 30.0], [0.05, 1.0, 8.0], size=(2000, 3))  # (N, 3): three unit scales


@pytest.mark.parametrize("mode", ["mean_std", "min_max", "quantile"])
def test_the_data_own_statistics_pass_in_every_mode(actions, mode):
    report = _check(_summary(actions), actions, mode)
    assert report.messages(ERROR) == [] and report.messages(WARNING) == []
    assert [d.dim for d in report.dims] == [0, 1, 2]
    assert "ok" in report.table()


def test_statistics_centered_elsewhere_are_an_error_naming_the_dimension(actions):
    stats = _summary(actions)
    stats["mean"] = stats["mean"] + np.array([0.0, 0.0, 50.0])  # dim 2's center is 6 std off
    errors = _check(stats, actions).messages(ERROR)
    assert len(errors) == 1 and errors[0].startswith("actions[2]:"), errors
    assert "lies -6.3 normalized units" in errors[0]


def test_statistics_in_other_units_are_an_error(actions):
    stats = _summary(actions * 1000)  # millimetres where the data are metres: center and spread both off
    errors = _check(stats, actions).messages(ERROR)
    assert len(errors) == 3
    stats = _summary(actions)
    stats["std"] = stats["std"] / 100  # the same center, a 100x too narrow scale
    errors = _check(stats, actions).messages(ERROR)
    assert any("spread" in e for e in errors), errors


def test_statistics_of_another_width_are_an_error(actions):
    report = _check(_summary(actions[:, :2]), actions)
    assert report.messages(ERROR) == [
        "actions: the statistics have 2 dimensions, the data 3: statistics of another robot or another feature"
    ]


def test_data_beyond_the_statistics_range_only_warn(actions):
    stats = _summary(actions[:1500])  # a few later frames go past the recorded min/max
    report = _check(stats, actions)
    assert report.messages(ERROR) == []
    warnings = report.messages(WARNING)
    assert warnings and "outside the statistics' [min, max]" in warnings[0]


def test_a_constant_dimension_is_not_a_spread_error():
    x = np.zeros((100, 1)) + 0.5
    assert _check(_summary(x), x).messages(ERROR) == []


def test_the_sample_spreads_over_the_episodes():
    assert sampled_episodes(list(range(10)), 4) == [0, 3, 6, 9]
    assert sampled_episodes([5, 7], 4) == [5, 7]


def _shift_actions(stats_file: Path, by: float) -> None:
    stats = json.loads(stats_file.read_text())
    stats["action"]["mean"] = [m + by for m in stats["action"]["mean"]]
    stats_file.write_text(json.dumps(stats))


def test_training_refuses_a_stats_file_that_does_not_fit(metaworld_layout_dataset, tmp_path):
    stats_file = save_stats(compute_stats(metaworld_layout_dataset), tmp_path / "stats.json")
    _shift_actions(stats_file, 10.0)  # the actions are ~N(0, 1): 10 std off
    args = [
        "train",
        f"--dataset.root={metaworld_layout_dataset}",
        f"--dataset.stats={stats_file}",
        "--policy.head.type=regression",
        "--train.steps=2",
        "--train.batch_size=2",
        *TINY,
    ]
    r = run_vla([*args, f"--output_dir={tmp_path / 'refused'}"])
    assert r.returncode != 0
    assert "normalization statistics do not fit the data: actions[0]" in r.stderr, r.stderr[-2000:]
    assert f"statistics from {stats_file}" in r.stdout  # the per-dimension table came first
    r = run_vla([*args, f"--output_dir={tmp_path / 'anyway'}", "--dataset.check_stats=false"])
    assert r.returncode == 0, r.stderr[-2000:]
    checkpoint = tmp_path / "anyway" / "checkpoints" / "last"
    shifted = json.loads(stats_file.read_text())["action"]["mean"]
    assert json.loads((checkpoint / "stats.json").read_text())["actions"]["mean"] == pytest.approx(shifted)
    # a checkpoint folder is a source too (a fine-tuning base's statistics), and the check judges it the same way
    dcfg = DatasetConfig(root=str(metaworld_layout_dataset), stats=str(checkpoint))
    data = build_training_data(dcfg, _policy_cfg(), AugmentConfig(enabled=False))
    assert data.stats["actions"]["mean"] == pytest.approx(shifted) and data.stats_source == f"from {checkpoint}"
    (report,) = check_training_statistics(data, _policy(data))
    assert [m.split(":")[0] for m in report.messages(ERROR)] == ["actions[0]", "actions[1]", "actions[2]", "actions[3]"]


def test_each_mixture_member_is_checked_against_its_own_statistics(metaworld_layout_dataset, three_cam_dataset):
    dcfg = DatasetConfig(root=str(metaworld_layout_dataset), mixture=[str(three_cam_dataset)])
    data = build_training_data(dcfg, _policy_cfg(), AugmentConfig(enabled=False))
    reports = check_training_statistics(data, _policy(data))
    assert [len(r.dims) for r in reports] == [4 + 4, 7 + 14]
    assert all(r.messages(ERROR) == [] for r in reports)
    assert str(three_cam_dataset) in reports[1].source
    with pytest.raises(ValueError, match="dataset.stats=.* with dataset.mixture"):
        build_training_data(
            DatasetConfig(root=str(metaworld_layout_dataset), mixture=[str(three_cam_dataset)], stats="x"),
            _policy_cfg(),
            AugmentConfig(enabled=False),
        )


def _policy_cfg() -> PolicyConfig:
    return PolicyConfig(
        backbone=BackboneConfig.get_choice_class("smolvlm")(preset="tiny"),
        head=HeadConfig.get_choice_class("regression")(),
        chunk_size=4,
        n_action_steps=2,
    )


def _policy(data) -> Policy:
    cfg = _policy_cfg()
    cfg.cameras, cfg.state_dim, cfg.action_dim = data.cameras, data.state_dim, data.action_dim
    return Policy(cfg, data.stats)


def test_resuming_onto_data_that_changed_units_is_refused(metaworld_layout_dataset, copy_dataset, tmp_path):
    data = copy_dataset(metaworld_layout_dataset)
    out = tmp_path / "run"
    args = [
        "train",
        f"--dataset.root={data}",
        "--policy.head.type=regression",
        "--train.batch_size=2",
        "--train.save_every=2",
        f"--output_dir={out}",
        *TINY,
    ]
    r = run_vla([*args, "--train.steps=2"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "statistics computed from the data" in r.stdout
    for f in sorted((data / "data").rglob("*.parquet")):  # the dataset is re-exported in millimetres
        table = pq.read_table(f)
        i = table.schema.get_field_index("action")
        field = table.schema.field(i)
        scaled = pa.array([[v * 1000 for v in row] for row in table.column(i).to_pylist()], type=field.type)
        pq.write_table(table.set_column(i, field, scaled), f)
    r = run_vla([*args, "--train.steps=4", "--resume=true"])
    assert r.returncode != 0
    assert "statistics of the resumed checkpoint" in r.stdout
    assert "do not fit the data: actions[" in r.stderr, r.stderr[-2000:]
