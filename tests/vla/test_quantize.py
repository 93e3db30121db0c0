"""Post-training quantization (vla/models/quantize.py, `vla quantize`): the right layers are quantized, the
checkpoint stores the quantized weights and loads through Policy.load, and its chunks stay close to the float
policy's without being equal to them; fp8 is refused on a CPU with the reason."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_policies import random_tiny_policy

from vla.models.policy import WEIGHTS_FILE, Policy
from vla.models.quantize import (
    QuantizeConfig,
    SchemeUnavailable,
    _is_quantized,
    linear_groups,
    model_bytes,
    quantize_policy,
    save_quantized,
    scheme,
)

CPU_SCHEMES = ["int8-weight", "int8-dynamic"]
STATS = {"state": {"mean": [0.0] * 4, "std": [1.0] * 4}, "actions": {"mean": [0.0] * 3, "std": [1.0] * 3}}
OBS = {"images": torch.rand(2, 1, 3, 64, 64), "state": torch.randn(2, 4), "instruction": ["pick it up", "push"]}
# Largest |quantized - float| over a chunk of the random tiny flow policy (actions ~N(0, 1) units):
# measured 0.004 (int8-weight) and 0.007 (int8-dynamic); 0.05 leaves room across platforms.
TOLERANCE = 0.05


def _float_policy():
    return random_tiny_policy("flow", ["cam0"], 4, 3, STATS, chunk_size=4, n_action_steps=2)


def _quantized_weights(policy, names):
    return {n: _is_quantized(policy.get_submodule(n).weight) for n in names}


@pytest.mark.parametrize("name", CPU_SCHEMES)
def test_scheme_quantizes_the_vlm_and_keeps_head_attention_float(name, tmp_path):
    policy = _float_policy()
    policy.save(tmp_path / "float")
    reference = policy.predict_chunk(OBS, seed=[1, 2])  # (2, 4, 3)
    groups = linear_groups(policy)
    assert groups["lm"] and groups["vision"] and groups["head_mlp"] and groups["head_attention"]
    layers = quantize_policy(policy, QuantizeConfig(scheme=scheme(name)))
    assert sorted(layers) == sorted(groups["lm"] + groups["vision"] + groups["head_mlp"])
    for group, expected in (("lm", True), ("vision", True), ("head_mlp", True), ("head_attention", False)):
        assert set(_quantized_weights(policy, groups[group]).values()) == {expected}, group
    assert not any(_quantized_weights(policy, groups["float"]).values())  # lm_head, state_proj, head in/out
    quantized = policy.predict_chunk(OBS, seed=[1, 2])

    out = save_quantized(policy, QuantizeConfig(scheme=scheme(name)), layers, tmp_path / "q")
    loaded = Policy.load(out)
    assert all(_quantized_weights(loaded, layers).values())
    assert not any(_quantized_weights(loaded, groups["head_attention"]).values())
    chunk = loaded.predict_chunk(OBS, seed=[1, 2])
    assert torch.equal(chunk, quantized)  # the stored int8 weights are the ones quantized in memory
    gap = (chunk - reference).abs().max().item()
    assert 0 < gap < TOLERANCE, gap  # close to the float policy, and quantization really happened
    disk = {p: (tmp_path / p / WEIGHTS_FILE).stat().st_size for p in ("float", "q")}
    assert disk["q"] < 0.7 * disk["float"], disk  # int8 data on disk (measured 0.60: embeddings stay float)
    assert model_bytes(loaded) < 0.7 * model_bytes(_float_policy())


def test_head_attention_is_quantized_on_request():
    policy = _float_policy()
    groups = linear_groups(policy)
    layers = quantize_policy(policy, QuantizeConfig(scheme=scheme("int8-weight"), head_attention=True, vision=False))
    assert all(_quantized_weights(policy, groups["head_attention"]).values())
    assert not any(_quantized_weights(policy, groups["vision"]).values())
    assert set(groups["head_attention"]) <= set(layers)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_fp8_is_refused_on_cpu(tmp_path, capsys):
    with pytest.raises(SchemeUnavailable, match="fp8 needs a CUDA GPU"):
        quantize_policy(_float_policy(), QuantizeConfig(scheme=scheme("fp8")))
    from vla.cli.quantize import main

    _float_policy().save(tmp_path / "float")
    assert main([str(tmp_path / "float"), "--out", str(tmp_path / "q"), "--scheme", "fp8"]) == 2
    assert "skipped: scheme fp8: fp8 needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_cli_writes_the_report_with_the_action_error(metaworld_layout_dataset, tmp_path):
    from vla.cli.quantize import REPORT_FILE, main
    from vla.train.config import DatasetConfig
    from vla.train.data import _source, _stats

    src = _source(str(metaworld_layout_dataset), None, DatasetConfig(root=str(metaworld_layout_dataset)), 4)
    policy = random_tiny_policy("flow", src.feature_map.camera_names, 4, 4, _stats(src), chunk_size=4, n_action_steps=2)
    policy.save(tmp_path / "float")
    args = [str(tmp_path / "float"), "--out", str(tmp_path / "q"), "--scheme", "int8-dynamic"]
    assert main([*args, "--dataset", str(metaworld_layout_dataset), "--frames", "8"]) == 0
    report = json.loads((tmp_path / "q" / REPORT_FILE).read_text())
    error = report["action_error"]
    assert error["frames"] == 8 and 0 < error["mae_vs_float"] < 0.1 * error["mae_float_vs_data"], error
    assert report["size_mb"]["disk_quantized"] < report["size_mb"]["disk_float"]
    assert report["size_mb"]["memory_quantized"] < report["size_mb"]["memory_float"]
    assert report["config"]["head_attention"] is False and report["quantized_layers"] > 0
    if not torch.cuda.is_available():
        assert "fp8" in report["unavailable_here"]
    assert Policy.load(tmp_path / "q").config == policy.config


def test_bench_infer_runs_a_quantized_policy(tmp_path):
    from vla.bench.model import ModelBenchConfig, bench_infer

    cfg = dict(scale="tiny", head="regression", infer_iters=2, chunk=4, image_size=32, cameras=1)
    plain = bench_infer(ModelBenchConfig(**cfg))
    quantized = bench_infer(ModelBenchConfig(**cfg, quantize="int8-dynamic"))
    assert plain["quantize"] is None and quantized["quantize"] == "int8-dynamic"
    assert quantized["model_mb"] < plain["model_mb"] and quantized["p50_ms"] > 0
