"""ONNX export (vla/interop/onnx_export.py) and its numpy runner (vla/serve/onnx_runner.py).

Parity: for the flow, diffusion and regression heads on the tiny backbone, the runner's chunk equals
``Policy.predict_chunk``'s for the same images (another size than the model's: the resize runs in the graph),
state, instruction and noise within 1e-4. Token heads are refused naming the head. The runner imports no torch;
``vla export --format onnx`` and ``vla serve --onnx`` work end to end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import vla.models.heads  # noqa: F401  (registers every head)
from vla.interop.onnx_export import OnnxExportError, check_exportable, export_policy
from vla.models.backbones.base import BackboneConfig
from vla.models.heads.base import HeadConfig
from vla.models.heads.experts import ExpertConfig
from vla.models.policy import Policy, PolicyConfig
from vla.serve import PolicyClient
from vla.serve.onnx_runner import OnnxPolicy
from vla.serve.server import PolicyServer, ServeConfig, ServerThread, serve_checkpoint

CAMERAS = ["image", "wrist"]
STATE_DIM, ACTION_DIM, CHUNK = 8, 7, 6
STATS = {  # far from identity, so a missing (un)normalization shows
    "state": {"mean": [0.5] * STATE_DIM, "std": [2.0] * STATE_DIM},
    "actions": {
        "mean": [float(i) for i in range(ACTION_DIM)],
        "std": [0.1 * (i + 1) for i in range(ACTION_DIM)],
        "q01": [i - 1.0 for i in range(ACTION_DIM)],  # token heads normalize by quantiles
        "q99": [i + 1.0 for i in range(ACTION_DIM)],
    },
}
# name -> (head, head config fields, PolicyConfig fields): what changes the exported path. Flow: a padded action
# width (model_action_dim > action_dim) and few steps (the loop runs in numpy); pi0.5's expert (gemma layers,
# adaptive time conditioning) with MeanFlow's interval input; diffusion: epsilon prediction with clipping.
HEADS = {
    "flow": ("flow", {}, {"max_action_dim": 10, "inference_steps": 3}),
    "flow-gemma-meanflow": (
        "flow",
        {"expert": ExpertConfig.get_choice_class("gemma")(), "time_conditioning": "adaptive", "mean_flow": True},
        {"inference_steps": 2},
    ),
    "diffusion": ("diffusion", {"prediction_type": "epsilon", "clip_sample": True}, {"inference_steps": 4}),
    "regression": ("regression", {}, {}),
}


def _policy(name: str, **head_options):
    head, options, config = HEADS.get(name, (name, {}, {}))
    options = {**options, **head_options}
    torch.manual_seed(0)
    cfg = PolicyConfig(
        backbone=BackboneConfig.get_choice_class("smolvlm")(preset="tiny"),
        head=HeadConfig.get_choice_class(head)(**options),
        cameras=CAMERAS,
        state_dim=STATE_DIM,
        action_dim=ACTION_DIM,
        chunk_size=CHUNK,
        n_action_steps=3,
        **config,
    )
    return Policy(cfg, STATS).eval()


def _observation(batch: int = 2, size: tuple[int, int] = (48, 80), seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    instructions = ["put the bowl on the plate", "open the <image> drawer\n", "stack the blocks"]
    return {
        "images": rng.integers(0, 256, (batch, len(CAMERAS), 3, *size), dtype=np.uint8),
        "state": rng.normal(size=(batch, STATE_DIM)).astype(np.float32),
        "instruction": instructions[:batch],
    }


def _torch_chunk(policy, obs: dict, noise: np.ndarray | None) -> np.ndarray:
    batch = {"images": torch.from_numpy(obs["images"]), "state": torch.from_numpy(obs["state"])}
    noise = None if noise is None else torch.from_numpy(noise)
    return policy.predict_chunk({**batch, "instruction": obs["instruction"]}, noise=noise).numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """head -> (policy, export directory), exported once per module (20-40 s each on 2 busy cores)."""
    out = {}

    def get(head: str):
        if head not in out:
            policy = _policy(head)
            out[head] = (policy, export_policy(policy, tmp_path_factory.mktemp(head) / "onnx", verify=False)["out"])
        return out[head]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("head", list(HEADS))
def test_runner_chunk_equals_pytorch(exported, head):
    """Same images (uint8, 48x80: resized inside the graph), state, instruction (one spells '<image>') and
    noise: the ONNX runner's chunk is PyTorch's within 1e-4, at batch 2 and at batch 1 (dynamic batch)."""
    policy, directory = exported(head)
    runner = OnnxPolicy(directory)
    for batch in (2, 1):
        obs = _observation(batch)
        noise = np.random.default_rng(1).standard_normal((batch, CHUNK, policy.config.model_action_dim), np.float32)
        noise = noise if policy.config.head.type != "regression" else None
        expected = _torch_chunk(policy, obs, noise)
        got = runner.predict_chunk(obs, noise=noise)
        assert got.shape == (batch, CHUNK, ACTION_DIM) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    # the tokenizer path is the backbone's own: same ids and mask
    ids, mask = runner.tokenize(_observation(3)["instruction"])
    ref_ids, ref_mask = policy.backbone.text_ids(policy.backbone.prompts(_observation(3)["instruction"]))
    np.testing.assert_array_equal(ids, np.array(ref_ids))
    np.testing.assert_array_equal(mask, np.array(ref_mask))


@pytest.mark.slow  # the module's regression export: ~25 s on 2 busy cores
def test_regression_parity_and_torch_free_runner(exported, tmp_path):
    """The regression graph (one graph) equals PyTorch within 1e-4, and the runner copied into the export
    directory runs in a process where importing torch fails, giving the same chunk."""
    policy, directory = exported("regression")
    obs = _observation(2)
    expected = _torch_chunk(policy, obs, None)
    np.testing.assert_allclose(OnnxPolicy(directory).predict_chunk(obs), expected, atol=1e-4, rtol=0)
    np.savez(tmp_path / "obs.npz", images=obs["images"], state=obs["state"])
    script = textwrap.dedent(
        f"""
        import importlib.abc, json, sys
        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "vla"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, NoTorch())
        sys.path.insert(0, {str(directory)!r})
        import numpy as np
        from onnx_runner import OnnxPolicy
        data = np.load({str(tmp_path / "obs.npz")!r})
        obs = {{"images": data["images"], "state": data["state"], "instruction": {obs["instruction"]!r}}}
        chunk = OnnxPolicy({str(directory)!r}).predict_chunk(obs)
        print(json.dumps({{"chunk": chunk.tolist(), "torch": "torch" in sys.modules}}))
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    reply = json.loads(run.stdout.strip().splitlines()[-1])
    assert reply["torch"] is False
    np.testing.assert_allclose(np.array(reply["chunk"], np.float32), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("head", ["bins", "fast"])
def test_token_heads_refused_naming_the_head(head):
    with pytest.raises(OnnxExportError, match=f"policy.head.type={head}: not exported to ONNX"):
        check_exportable(_policy(head))


def test_other_samplers_refused_naming_the_option():
    with pytest.raises(OnnxExportError, match="policy.head.sampler='dpmsolver'"):
        check_exportable(_policy("diffusion", sampler="dpmsolver"))


@pytest.mark.slow
def test_cli_export_onnx(tmp_path, capsys):
    """`vla export CKPT --format onnx --out DIR`: graphs, runner and tokenizer in DIR, parity checked on the way."""
    from vla.cli.export import main

    checkpoint = _policy("diffusion").save(tmp_path / "ckpt")
    assert main([str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "onnx"), "--inference-steps", "2"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["graphs"] == ["prefix.onnx", "step.onnx"] and report["loop"]["num_steps"] == 2
    assert report["max_abs_diff"] < 1e-4
    for name in ("onnx_runner.py", "tokenizer.json", "onnx_policy.json"):
        assert (tmp_path / "onnx" / name).is_file()


@pytest.mark.slow  # the module's regression export: ~25 s on 2 busy cores
def test_serve_onnx_same_protocol(exported):
    """`vla serve --onnx DIR`: the one server, the ONNX runner behind it; a client's seeded reply equals the
    runner's own chunk for that seed, and the metadata describes the exported policy."""
    _, directory = exported("regression")
    with pytest.raises(ValueError, match="--checkpoint .* or --onnx"):
        serve_checkpoint(ServeConfig())
    config = ServeConfig(onnx=str(directory), port=0)
    with ServerThread(PolicyServer.from_checkpoint(config)) as thread, PolicyClient(thread.url) as client:
        meta = client.get_server_metadata()
        assert meta["head"] == "regression" and meta["chunk_size"] == CHUNK and meta["cameras"] == CAMERAS
        obs = _observation(1)
        request = {f"observation.images.{c}": obs["images"][0, i].transpose(1, 2, 0) for i, c in enumerate(CAMERAS)}
        request.update({"observation.state": obs["state"][0], "prompt": obs["instruction"][0], "seed": 3})
        reply = client.infer(request)
    expected = OnnxPolicy(directory).predict_chunk(obs, seed=3)[0]
    np.testing.assert_allclose(reply["actions"], expected, atol=1e-5, rtol=0)


def test_bench_refuses_unknown_runtimes():
    from vla.bench.model import ModelBenchConfig, bench_infer_runtimes

    with pytest.raises(ValueError, match="--runtimes 'tensorrt'"):
        bench_infer_runtimes(ModelBenchConfig(), ["eager", "tensorrt"])


@pytest.mark.slow
def test_bench_infer_rows_side_by_side():
    """`vla bench infer --runtimes eager,onnx`: one row per runtime on the same tiny configuration."""
    from vla.bench.model import ModelBenchConfig, bench_infer_runtimes

    cfg = ModelBenchConfig(scale="tiny", head="regression", chunk=4, image_size=64, infer_iters=2, device="cpu")
    rows = bench_infer_runtimes(cfg, ["eager", "onnx"])
    assert [r["runtime"] for r in rows] == ["eager", "onnx"]
    assert all(r["p50_ms"] > 0 and r["head"] == "regression" for r in rows)
