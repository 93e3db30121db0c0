"""Ours -> a folder LeRobot 0.6.1's ``from_pretrained`` loads, written with LeRobot's own config classes and
processor factories (so the JSON is the JSON LeRobot writes). The policy must be one of pi0, pi0.5, SmolVLA.
"""

from __future__ import annotations

import contextlib
import inspect
from pathlib import Path

import torch
from safetensors.torch import save_file

from vla.interop.lerobot import (
    FEATURES,
    NORM_MODES,
    PALIGEMMA_TOKENIZER,
    PI0_EXPERT_VOCAB,
    SMOLVLM,
    lerobot_classes,
    lerobot_type,
    merged_state_dict,
    to_lerobot,
)
from vla.models.policy import Policy, architecture_of
from vla.utils.atomic import atomic_dir


def lerobot_config_for(kind: str, policy: Policy, vlm_model_name: str | None):
    """LeRobot's config object describing ``policy`` (its own class, so its own JSON)."""
    from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature

    cfg = policy.config
    bb, head = cfg.backbone, cfg.head
    side = bb.image_size
    inputs = {f"observation.images.{c}": PolicyFeature(FeatureType.VISUAL, (3, side, side)) for c in cfg.cameras}
    inputs["observation.state"] = PolicyFeature(FeatureType.STATE, (cfg.state_dim,))
    outputs = {"action": PolicyFeature(FeatureType.ACTION, (cfg.action_dim,))}
    modes = {v: k for k, v in NORM_MODES.items()}
    mapping = {
        "VISUAL": NormalizationMode.IDENTITY,
        "STATE": NormalizationMode(modes[cfg.state_norm]),
        "ACTION": NormalizationMode(modes[cfg.action_norm]),
    }
    common = dict(
        input_features=inputs, output_features=outputs, chunk_size=cfg.chunk_size, n_action_steps=cfg.n_action_steps,
        max_state_dim=cfg.model_state_dim, max_action_dim=cfg.model_action_dim, tokenizer_max_length=bb.max_text_tokens,
        normalization_mapping=mapping, push_to_hub=False,
    )  # fmt: skip
    config_cls, _ = lerobot_classes(kind)
    if kind == "smolvla":
        width = policy.backbone.width
        return config_cls(
            **common, num_steps=head.num_steps, resize_imgs_with_padding=(side, side),
            vlm_model_name=vlm_model_name or bb.pretrained or SMOLVLM, load_vlm_weights=False,
            num_vlm_layers=policy.backbone.num_layers, expert_width_multiplier=head.expert_width / width,
            self_attn_every_n_layers=head.expert.self_attn_every,
            attention_mode="cross_attn" if head.expert.self_attn_every > 1 else "self_attn",
        )  # fmt: skip
    return config_cls(
        **common, num_inference_steps=head.num_steps, image_resolution=(side, side), dtype="float32",
        time_sampling_beta_alpha=head.time_alpha, time_sampling_beta_beta=head.time_beta,
    )  # fmt: skip


@contextlib.contextmanager
def local_tokenizer(name: str, folder: Path):
    """Within the block, ``AutoTokenizer.from_pretrained(name)`` reads ``folder`` instead of the hub:
    LeRobot's processor factories load the tokenizer by its hub name, which stays in the JSON they write."""
    from transformers import AutoTokenizer

    saved = inspect.getattr_static(AutoTokenizer, "from_pretrained")
    load = AutoTokenizer.from_pretrained.__func__
    AutoTokenizer.from_pretrained = classmethod(
        lambda cls, n, *a, **kw: load(cls, str(folder) if n == name else n, *a, **kw)
    )
    try:
        yield
    finally:
        AutoTokenizer.from_pretrained = saved


def export_lerobot(ckpt: str | Path, out: str | Path, vlm_model_name: str | None = None) -> dict:
    """One of our pi0/pi0.5/SmolVLA policies -> a folder LeRobot 0.6.1's ``from_pretrained`` loads."""
    ckpt, out = Path(ckpt), Path(out)
    policy = Policy.load(ckpt)
    kind = lerobot_type(policy.config)
    lr = lerobot_config_for(kind, policy, vlm_model_name)
    tensors = {k: v.detach().contiguous().cpu() for k, v in to_lerobot(kind, merged_state_dict(policy)).items()}
    if kind != "smolvla":  # LeRobot's loader is strict: its expert's (unused) LM head must be there
        width = policy.head.width
        tensors["model.paligemma_with_expert.gemma_expert.lm_head.weight"] = torch.zeros(PI0_EXPERT_VOCAB, width)
    seen, unique = set(), {}
    for k, v in tensors.items():  # tied tables are one storage; safetensors wants separate tensors
        unique[k] = v.clone() if v.data_ptr() in seen else v
        seen.add(v.data_ptr())
    stats = {
        FEATURES[name]: {s: torch.tensor(v, dtype=torch.float32) for s, v in d.items()}
        for name, d in policy.stats.items()
        if name in FEATURES
    }
    _, processors = lerobot_classes(kind)
    tokenizer_name = lr.vlm_model_name if kind == "smolvla" else PALIGEMMA_TOKENIZER
    with atomic_dir(out) as tmp:
        lr._save_pretrained(Path(tmp))
        save_file(unique, str(Path(tmp) / "model.safetensors"))
        with local_tokenizer(tokenizer_name, architecture_of(ckpt)):
            pre, post = processors(lr, dataset_stats=stats)
        pre.save_pretrained(tmp)
        post.save_pretrained(tmp)
    return {"type": kind, "out": str(out), "tensors": len(unique)}
