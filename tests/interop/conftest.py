"""LeRobot's own pi0, pi0.5 and SmolVLA, small and random, built and run live in LeRobot's side environment.

``scripts/peers/lerobot_reference.py`` runs in a child process with transformers 5.5.x first on its
path (``make install`` puts it in ``.peers/lerobot``); these fixtures give it the folders LeRobot
would otherwise fetch from the hub: a PaliGemma tokenizer/processor (Gemma's tokenizer adds BOS
itself) with the small model's config.json, and a SmolVLM folder (config + processor) whose text
config says rope_theta 100000 and rms_norm_eps 1e-5 like SmolVLM2's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from lerobot_side import CAMERAS, PI_DIMS, SMOLVLA_DIMS, D, H, S, run_lerobot


@pytest.fixture(scope="session")
def paligemma_dir(tmp_path_factory) -> Path:
    from vla.models.backbones.paligemma import paligemma_model_config, paligemma_processor

    out = tmp_path_factory.mktemp("paligemma")
    processor = paligemma_processor(PI_DIMS["image"], PI_DIMS["vision"]["patch"])
    processor.tokenizer.add_bos_token = True  # as google/paligemma-3b-pt-224's tokenizer_config.json says
    processor.save_pretrained(out)
    v, t = PI_DIMS["vision"], PI_DIMS["vlm"]
    paligemma_model_config(
        text_width=t["width"], text_layers=t["depth"], text_ffn=t["mlp_dim"], text_heads=8, text_kv_heads=1,
        head_dim=t["head_dim"], vision_width=v["width"], vision_layers=v["layers"], vision_ffn=v["ffn"],
        vision_heads=v["heads"], patch_size=v["patch"], image_size=PI_DIMS["image"], vocab_size=PI_DIMS["vocab"],
        image_token_id=processor.image_token_id, pad_token_id=processor.tokenizer.pad_token_id,
    ).save_pretrained(out)  # fmt: skip
    return out


@pytest.fixture(scope="session")
def smolvlm_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import SmolVLMForConditionalGeneration

    from vla.models.backbones.smolvlm import PRESETS, smolvlm_model_config, smolvlm_processor

    out = tmp_path_factory.mktemp("smolvlm")
    dims = dict(PRESETS["tiny"])
    processor = smolvlm_processor(dims["image_size"], dims["patch_size"], dims["scale_factor"])
    dims["vocab_size"] = max(dims["vocab_size"], len(processor.tokenizer))
    config = smolvlm_model_config(
        **dims, image_token_id=processor.image_token_id, pad_token_id=processor.tokenizer.pad_token_id
    )
    config.text_config.rope_parameters = {"rope_type": "default", "rope_theta": 100000.0}  # SmolVLM2's
    config.text_config.rms_norm_eps = 1e-5
    torch.manual_seed(0)
    SmolVLMForConditionalGeneration(config).save_pretrained(out)
    processor.save_pretrained(out)
    return out


def stats() -> dict:
    """Statistics far from identity, with every kind LeRobot's normalizers read."""
    rng = np.random.default_rng(7)

    def feature(dim):
        mean, std = rng.normal(size=dim), rng.uniform(0.5, 2.0, dim)
        return {"mean": mean, "std": std, "min": mean - 3 * std, "max": mean + 3 * std,
                "q01": mean - 2 * std, "q99": mean + 2.5 * std}  # fmt: skip

    return {k: {s: v.tolist() for s, v in feature(dim).items()} for k, dim in (("observation.state", S), ("action", D))}


@pytest.fixture(scope="session")
def lerobot_checkpoint(tmp_path_factory, paligemma_dir, smolvlm_dir):
    """``lerobot_checkpoint(kind) -> (folder, spec)``: a LeRobot policy built and saved by LeRobot (cached)."""
    cache: dict[str, tuple[Path, dict]] = {}

    def build(kind: str):
        if kind not in cache:
            tmp = tmp_path_factory.mktemp(f"lerobot_{kind}")
            smol = kind == "smolvla"
            spec = {
                "action": "build", "policy": kind, "out": str(tmp / "ckpt"),
                "processor_dir": str(smolvlm_dir if smol else paligemma_dir),
                "dims": SMOLVLA_DIMS if smol else PI_DIMS, "cameras": CAMERAS,
                "image_size": [48, 64] if smol else [24, 32],  # not square: exercises the padding resize
                "state_dim": S, "action_dim": D, "chunk_size": H, "stats": stats(), "seed": 0,
            }  # fmt: skip
            run_lerobot(spec, tmp)
            cache[kind] = (tmp / "ckpt", spec)
        return cache[kind]

    return build
