"""LeRobot's own ACT and Diffusion Policy as peers: trained by `vla peer train` (LeRobot's training entry point)
and evaluated by `vla eval --policy lerobot:DIR` (LeRobot's from_pretrained and processors in our runner).

Real LeRobot classes at tiny sizes, a handful of steps, on a dataset in MetaWorld's layout that also holds
MetaWorld's privileged observation.environment_state, which the peers must never read.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from eval.lerobot_policy import LeRobotChunker, PolicyInputs
from eval.vector_env import EpisodeSpec, NeedsChunk
from vla.cli.main import main as vla
from vla.peers.lerobot_train import SUMMARY_FILE, pretrained_model_dir, privileged_inputs, seconds_per_step

ENV_STATE = "observation.environment_state"
CAMERA_KEYS = {"observation.images.image", "observation.images.wrist"}
# LeRobot overrides of the CPU recipes: the smallest models these policies build (ResNet-18 stays whole)
TINY = {
    "act": [
        "--policy.dim_model=32",
        "--policy.dim_feedforward=64",
        "--policy.n_encoder_layers=1",
        "--policy.n_vae_encoder_layers=1",
        "--policy.chunk_size=5",
        "--policy.n_action_steps=5",
    ],
    "diffusion": [
        "--policy.down_dims=[16,32]",
        "--policy.horizon=8",
        "--policy.n_action_steps=4",
        "--policy.drop_n_last_frames=3",
        "--policy.crop_shape=[28,28]",
        "--policy.spatial_softmax_num_keypoints=8",
        "--policy.diffusion_step_embed_dim=16",
    ],
}
STEPS = 4  # diffusion; ACT trains for --minutes


@pytest.fixture(scope="module")
def peers(metaworld_env_state_dataset, tmp_path_factory) -> dict[str, Path]:
    """ACT trained for a few seconds (--minutes: calibrated), Diffusion Policy for a few steps (--steps)."""
    root = tmp_path_factory.mktemp("peers")
    budget = {"act": ["--minutes", "0.05", "--calibration-steps", "5"], "diffusion": ["--steps", str(STEPS)]}
    root_logger = logging.getLogger()
    logging_before = (root_logger.level, list(root_logger.handlers))
    for name, args in budget.items():
        recipe = Path(__file__).resolve().parents[2] / "configs" / "peers" / f"lerobot_{name}_cpu.yaml"
        argv = ["peer", "train", "--recipe", str(recipe), "--dataset", str(metaworld_env_state_dataset)]
        argv += ["--out", str(root / name), *args, "--batch_size=4", "--num_workers=0", *TINY[name]]
        assert vla(argv) == 0
    # LeRobot's init_logging clears the root logger and sets it to NOTSET; the rest of the process keeps ours
    assert (root_logger.level, root_logger.handlers) == logging_before
    return {name: root / name for name in budget}


def test_peers_train_on_cameras_and_state_only(peers, metaworld_env_state_dataset):
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    info = json.loads((metaworld_env_state_dataset / "meta" / "info.json").read_text())
    assert ENV_STATE in info["features"]  # there to be left out
    for name, out in peers.items():
        summary = json.loads((out / SUMMARY_FILE).read_text())
        policy_dir = pretrained_model_dir(out)
        config = PreTrainedConfig.from_pretrained(policy_dir)  # LeRobot reads what LeRobot wrote
        assert config.type == summary["policy_type"] == name
        assert set(config.input_features) == CAMERA_KEYS | {"observation.state"} == set(summary["input_features"])
        assert privileged_inputs(config) == []
        policy = get_policy_class(config.type).from_pretrained(policy_dir)
        assert ENV_STATE not in policy.config.input_features
        preprocessor, _ = make_pre_post_processors(config, pretrained_path=str(policy_dir))
        assert preprocessor is not None
        assert summary["steps"] >= 1 and summary["loss_curve"][-1]["step"] == summary["steps"]
        assert np.isfinite([summary["first_loss"], summary["final_loss"]]).all()
    act, diffusion = (json.loads((peers[n] / SUMMARY_FILE).read_text()) for n in ("act", "diffusion"))
    assert diffusion["steps"] == STEPS and diffusion["calibration"] is None
    calibration = act["calibration"]
    assert calibration["steps"] == 5 and act["steps"] == calibration["chosen_steps"]
    assert act["steps"] == max(1, int(0.05 * 60 / calibration["seconds_per_step"]))


def test_privileged_inputs_are_named():
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig

    inputs = {"observation.images.image": PolicyFeature(FeatureType.VISUAL, (3, 32, 32))}
    inputs[ENV_STATE] = PolicyFeature(FeatureType.ENV, (39,))
    config = ACTConfig(input_features=inputs, pretrained_backbone_weights=None, device="cpu")
    assert privileged_inputs(config) == [ENV_STATE]
    assert PolicyInputs.of(config).env_state  # such a policy would be handed the suite's env_state


def test_seconds_per_step_leaves_out_the_warmup():
    times = [0.0, 5.0, 5.5, 6.0, 6.5, 7.0]  # the first step waits for the loader
    assert seconds_per_step(times, warmup=1) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least 3"):
        seconds_per_step([0.0, 1.0], warmup=1)


def _observation(rng: np.random.Generator, size: int = 32) -> dict:
    """A MetaWorld-like suite observation, privileged env_state included."""
    images = {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in ("image", "wrist")}
    return {
        "images": images,
        "state": rng.normal(size=4).astype(np.float32),
        "instruction": "reach the goal",
        "env_state": rng.normal(size=39).astype(np.float32),
    }


def test_the_policy_is_fed_only_its_inputs(peers):
    from lerobot.envs.utils import preprocess_observation

    chunker = LeRobotChunker(pretrained_model_dir(peers["act"]), "cpu")
    assert chunker.inputs.cameras == ("image", "wrist") and chunker.inputs.image_size == 32
    assert not chunker.inputs.env_state
    batch = preprocess_observation(chunker.inputs.env_observation(_observation(np.random.default_rng(0))))
    assert set(batch) == CAMERA_KEYS | {"observation.state"}
    assert batch["observation.images.image"].shape == (1, 3, 32, 32) and batch["observation.images.image"].max() <= 1


def test_each_episode_plays_its_own_policy_state(peers):
    """Diffusion Policy keeps an observation history and an action queue: two interleaved episodes must
    play exactly what each plays alone, and a finished episode's copy is reused, reset, for the next."""
    chunker, solo = (LeRobotChunker(pretrained_model_dir(peers["diffusion"]), "cpu") for _ in range(2))
    rng = np.random.default_rng(1)
    a, b, c = EpisodeSpec(0, 0, seed=11), EpisodeSpec(0, 1, seed=12), EpisodeSpec(1, 0, seed=13)
    obs_a, obs_b = [_observation(rng) for _ in range(6)], [_observation(rng) for _ in range(6)]

    def alone(spec: EpisodeSpec, observations: list[dict]) -> np.ndarray:
        """One episode after another through ``solo``: each takes over the previous one's copy, reset."""
        return np.stack([solo([NeedsChunk(spec, o, t)])[0] for t, o in enumerate(observations)])

    together = [
        chunker([NeedsChunk(a, oa, t), NeedsChunk(b, ob, t)])
        for t, (oa, ob) in enumerate(zip(obs_a, obs_b, strict=True))
    ]
    assert all(chunk.shape == (1, 4) for pair in together for chunk in pair)
    np.testing.assert_array_equal(np.stack([p[0] for p in together]), alone(a, obs_a))
    np.testing.assert_array_equal(np.stack([p[1] for p in together]), alone(b, obs_b))
    copy_of_a = chunker._playing[a]
    assert next(copy_of_a.parameters()) is next(chunker.policy.parameters())  # weights shared, not copied

    chunker([NeedsChunk(b, obs_b[0], 6), NeedsChunk(c, obs_a[0], 0)])  # a ended; b goes on; c starts
    assert chunker._playing[c] is copy_of_a and a not in chunker._playing
    np.testing.assert_array_equal(chunker([NeedsChunk(c, obs_a[1], 1)])[0], alone(c, obs_a[:2])[1])


@pytest.mark.sim
@pytest.mark.parametrize(("name", "num_envs"), [("act", 2), ("diffusion", 1)])
def test_vla_eval_plays_a_lerobot_policy(peers, tmp_path, capsys, name, num_envs):
    out = tmp_path / "eval"
    spec = f"lerobot:{pretrained_model_dir(peers[name])}"
    argv = ["eval", "--policy", spec, "--suite", "mw-easy", "--tasks", "0", "--episodes-per-task", "2"]
    argv += ["--max-steps", "6", "--num-envs", str(num_envs), "--device", "cpu", "--out", str(out)]
    assert vla(argv) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{") :])["out"] == str(out)
    results = json.loads((out / "results.json").read_text())
    policy = results["protocol"]["policy"]
    assert policy["kind"] == "lerobot" and policy["policy_type"] == name and policy["name"] == spec
    assert set(policy["inputs"]) == CAMERA_KEYS | {"observation.state"}  # no observation.environment_state
    assert results["protocol"]["image_size"] == 32 and results["protocol"]["cameras"] == ["image", "wrist"]
    assert [(e["task"], e["episode_index"]) for e in results["episodes"]] == [("reach-v3", 0), ("reach-v3", 1)]
    assert all(1 <= e["length"] <= 6 for e in results["episodes"])
    assert set(results["tasks"]) == {"reach-v3"} and 0.0 <= results["average_success"] <= 1.0


def test_a_bad_lerobot_path_is_named(peers, tmp_path, capsys):
    missing = tmp_path / "no_such_policy"
    with pytest.raises(SystemExit) as e:
        vla(["eval", "--policy", f"lerobot:{missing}", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and str(missing) in err and "not a LeRobot pretrained-model folder" in err
    with pytest.raises(SystemExit):  # the training run's folder: the error points at the policy inside it
        vla(["eval", "--policy", f"lerobot:{peers['act']}", "--out", str(tmp_path / "o")])
    assert str(pretrained_model_dir(peers["act"])) in capsys.readouterr().err
    with pytest.raises(SystemExit):
        vla(["eval", "--policy", f"lerobot:{pretrained_model_dir(peers['act'])}", "--n-action-steps", "2"])
    assert "do not apply to a LeRobot policy" in capsys.readouterr().err
