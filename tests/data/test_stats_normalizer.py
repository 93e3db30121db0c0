import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from data_pipelines.feature_map import FeatureMap
from data_pipelines.lerobot_source import default_video_backend, open_meta
from data_pipelines.stats import compute_stats, load_stats, save_stats
from vla.models.heads.discrete import FastHeadConfig
from vla.models.normalizer import Normalizer
from vla.models.policy import PolicyConfig


def all_rows(root, key):
    table = pq.read_table(sorted((root / "data").rglob("*.parquet"))[0], columns=[key])
    return np.stack(table.column(key).to_pylist())


def test_stats_exact_and_round_trip(metaworld_layout_dataset, copy_dataset):
    root = copy_dataset(metaworld_layout_dataset)
    stats = compute_stats(root)
    assert set(stats) == {"observation.state", "action"}
    actions = all_rows(root, "action").astype(np.float64)  # (44, 4), frame by frame
    np.testing.assert_allclose(stats["action"]["mean"], actions.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["action"]["std"], actions.std(0), rtol=1e-6)
    np.testing.assert_allclose(stats["action"]["q01"], np.quantile(actions, 0.01, axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats["action"]["max"], actions.max(0))
    assert stats["action"]["count"] == [44]

    save_stats(stats, root / "meta" / "stats.json")
    raw = json.loads((root / "meta" / "stats.json").read_text())
    assert "observation.images.image" in raw  # lerobot's image stats are kept
    back = load_stats(root)
    for stat in ("mean", "std", "min", "max", "q01", "q99"):
        np.testing.assert_array_equal(back["action"][stat], np.asarray(stats["action"][stat]))
    # lerobot still opens the dataset with our stats file in place
    ds = LeRobotDataset("local/mw", root=root, video_backend=default_video_backend())
    np.testing.assert_allclose(ds.meta.stats["action"]["q99"], stats["action"]["q99"])

    canon = FeatureMap.infer(open_meta(root)).stats_for(back)
    assert set(canon) == {"state", "actions"} and canon["actions"]["mean"].shape == (4,)


@pytest.mark.parametrize("mode", ["mean_std", "min_max", "quantile", "identity"])
def test_normalizer_exact_round_trip_with_zero_spread(mode):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 10, 5, generator=gen) * torch.tensor([1.0, 10.0, 0.01, 100.0, 1.0]) + 3.0
    x[..., 4] = 0.25  # a dimension that never changes
    flat = x.reshape(-1, 5).double().numpy()
    stats = {
        "actions": {
            "mean": flat.mean(0),
            "std": flat.std(0),
            "min": flat.min(0),
            "max": flat.max(0),
            "q01": np.quantile(flat, 0.01, axis=0),
            "q99": np.quantile(flat, 0.99, axis=0),
        }
    }
    norm = Normalizer(stats, {"actions": mode})
    y = norm.normalize("actions", x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(norm.unnormalize("actions", y), x, atol=1e-5, rtol=1e-5)
    if mode == "min_max":
        assert y[..., :4].min() >= -1 - 1e-4 and y[..., :4].max() <= 1 + 1e-4
    if mode == "mean_std":
        torch.testing.assert_close(y[..., :4].reshape(-1, 4).mean(0), torch.zeros(4), atol=1e-4, rtol=0)
    if mode != "identity":
        assert (y[..., 4] == 0).all()  # zero spread: shifted to the center, never divided by ~0


def test_normalizer_state_dict_masks_and_padding():
    stats = {"state": {"mean": [1.0, 2.0], "std": [2.0, 4.0]}, "actions": {"min": [0.0, -1.0], "max": [2.0, 3.0]}}
    norm = Normalizer(stats, {"state": "mean_std", "actions": "min_max"})
    loaded = Normalizer.empty({"state": 2, "actions": 2}, {"state": "mean_std", "actions": "min_max"})
    loaded.load_state_dict(norm.state_dict())
    assert loaded.modes() == {"state": "mean_std", "actions": "min_max"}
    assert "features.state.offset" in norm.state_dict()

    a = torch.tensor([[[2.0, 1.0, 7.0]]])  # (B=1, H=1, D=3): third dim is mixture padding
    y = loaded.normalize("actions", a)
    torch.testing.assert_close(y, torch.tensor([[[1.0, 0.0, 7.0]]]))
    mask = torch.tensor([[True, False, False]])  # (B, D)
    torch.testing.assert_close(loaded.normalize("actions", a, mask), torch.tensor([[[1.0, 1.0, 7.0]]]))
    with pytest.raises(ValueError, match="state: expected last dim >= 2"):
        loaded.normalize("state", torch.zeros(3, 1))
    with pytest.raises(KeyError, match="'q01', 'q99'"):
        Normalizer(stats, {"state": "quantile"})


def test_cli_stats_and_fit_tokenizer(metaworld_layout_dataset, copy_dataset, tmp_path, capsys):
    from vla.cli.data import main
    from vla.models.heads.tokenizers.base import load_tokenizer

    root = copy_dataset(metaworld_layout_dataset)
    assert main(["stats", str(root)]) == 0
    out = capsys.readouterr().out
    assert "action: dims=4 frames=44" in out and "meta/stats.json" in out
    np.testing.assert_allclose(load_stats(root)["action"]["q01"], compute_stats(root)["action"]["q01"])
    assert (
        main(["fit-tokenizer", str(root), "--out", str(tmp_path / "tok"), "--chunk", "8", "--vocab-size", "256"]) == 0
    )
    out = capsys.readouterr().out
    assert "fitted on 44 chunks of H=8, D=4" in out and "mean tokens per chunk" in out
    mae = float(out.split("reconstruction MAE: ")[1].split()[0])
    assert mae < 0.1
    tok = load_tokenizer(tmp_path / "tok")
    assert tok.is_fitted and tok.normalization == "quantile"
    # The tokenizer is fitted on the actions normalized as training normalizes them (exact statistics from the
    # data), not by whatever meta/stats.json says: a copy whose file has LeRobot-style averaged quantiles fits
    # the same tokenizer.
    skewed = copy_dataset(metaworld_layout_dataset, "skewed_stats")
    meta = json.loads((skewed / "meta" / "stats.json").read_text())
    meta["action"]["q01"] = [q + 0.3 for q in meta["action"]["q01"]]
    meta["action"]["q99"] = [q - 0.3 for q in meta["action"]["q99"]]
    (skewed / "meta" / "stats.json").write_text(json.dumps(meta))
    args = ["--chunk", "8", "--vocab-size", "256"]
    assert main(["fit-tokenizer", str(skewed), "--out", str(tmp_path / "skewed"), *args]) == 0
    tok_state = json.loads((tmp_path / "tok" / "action_tokenizer.json").read_text())
    assert json.loads((tmp_path / "skewed" / "action_tokenizer.json").read_text()) == tok_state
    # A policy normalizing its actions otherwise than the tokenizer was fitted is refused, naming both.
    fast = FastHeadConfig(tokenizer_path=str(tmp_path / "tok"), vocab_size=256)
    assert PolicyConfig(head=fast).action_norm == "quantile"
    with pytest.raises(ValueError, match=r"fitted on 'quantile'-normalized actions but policy.action_norm='min_max'"):
        PolicyConfig(head=fast, action_norm="min_max")
