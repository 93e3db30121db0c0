"""LeRobot's pi0, pi0.5 and SmolVLA checkpoints <-> ours: what each model is in our plug-ins, and its keys.

A LeRobot checkpoint of these models is ``config.json`` (LeRobot's policy config), ``model.safetensors``
and the pre/post-processor pipelines (``policy_preprocessor*.json`` with the normalization statistics
in ``*normalizer_processor.safetensors``). Each model is one combination of our options
(``ARCHITECTURES``: backbone prompt, image resizing, positions, state placement; flow-head expert
style, time conditioning, action mask); the recipes ``configs/experiments/{pi0,pi05,smolvla}_finetune.yaml``
say the same and a test keeps them equal.

Import (``lerobot_import.py``) reads every dimension from tensor shapes (a small test checkpoint's config still says
``gemma_2b``), keys with or without the ``model.`` prefix (LeRobot's local ``save_pretrained`` layout
and the hub/openpi layout, which also lacks ``embed_tokens``). What shapes cannot tell (the
tokenizer and processor, the vision tower's head count, norm epsilons) comes from ``--processor
DIR``: the VLM's own folder (``google/paligemma-3b-pt-224``, ``HuggingFaceTB/SmolVLM2-500M-Video-Instruct``).
Export (``lerobot_export.py``) goes the other way with LeRobot's own config classes and processor factories, so the files
are the ones LeRobot writes.
"""

from __future__ import annotations

import re

import torch

from vla.models.policy import Policy, PolicyConfig

TYPES = ("pi0", "pi05", "smolvla")
PALIGEMMA_TOKENIZER = "google/paligemma-3b-pt-224"  # what LeRobot's pi0/pi0.5 processors load
SMOLVLM = "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"
PI0_HEADS = 8  # LeRobot's pi0/pi0.5 reshape attention with a literal 8 query heads (modeling_pi0.py:124)
PI0_EXPERT_VOCAB = 257152  # LeRobot builds pi0's expert with PaliGemma's vocabulary (its LM head is never read)

# Our options that make each LeRobot model (everything else is dimensions, read from shapes).
_PI_BACKBONE = dict(type="paligemma", image_resize="pad", position_offset=0, prefix_attention="bidirectional")
ARCHITECTURES: dict[str, dict[str, dict]] = {
    "pi0": {
        "backbone": {**_PI_BACKBONE, "state_mode": "head", "prompt": "newline"},
        "head": {"type": "flow", "expert.type": "gemma", "time_conditioning": "concat", "action_attention": "bidirectional"},
    },
    "pi05": {
        "backbone": {**_PI_BACKBONE, "state_mode": "prompt", "prompt": "pi05"},
        "head": {"type": "flow", "expert.type": "gemma", "time_conditioning": "adaptive", "action_attention": "bidirectional"},
    },
    "smolvla": {
        "backbone": {
            "type": "smolvlm", "state_mode": "token", "prompt": "newline", "image_resize": "pad_top_left",
            "position_offset": 0, "prefix_attention": "bidirectional", "scale_embeddings": True, "rope_theta": 10_000.0,
            "image_special_tokens": False, "conv_stem": False,
        },
        "head": {"type": "flow", "expert.type": "smolvla", "time_conditioning": "concat", "action_attention": "causal"},
    },
}  # fmt: skip

# (LeRobot key prefix, our key prefix), most specific first. Our PaliGemma vision tower may or may not
# have the ``vision_model`` level (it depends on the transformers version): both are tried.
_PI_KEYS = [
    ("paligemma_with_expert.paligemma.model.vision_tower.vision_model.", "backbone.model.model.vision_tower."),
    ("paligemma_with_expert.paligemma.model.", "backbone.model.model."),
    ("paligemma_with_expert.paligemma.lm_head.", "backbone.model.lm_head."),
    ("paligemma_with_expert.gemma_expert.model.", "head.expert."),
    ("action_in_proj.", "head.action_in."),
    ("action_out_proj.", "head.action_out."),
]
KEYS = {
    "pi0": _PI_KEYS
    + [
        ("state_proj.", "head.state_token.proj."),
        ("action_time_mlp_in.", "head.time_mlp_in."),
        ("action_time_mlp_out.", "head.time_mlp_out."),
    ],
    "pi05": _PI_KEYS + [("time_mlp_in.", "head.time_mlp_in."), ("time_mlp_out.", "head.time_mlp_out.")],
    "smolvla": [
        ("vlm_with_expert.vlm.model.", "backbone.model.model."),
        ("vlm_with_expert.vlm.lm_head.", "backbone.model.lm_head."),
        ("vlm_with_expert.lm_expert.", "head.expert."),
        ("state_proj.", "backbone.state_proj."),
        ("action_in_proj.", "head.action_in."),
        ("action_out_proj.", "head.action_out."),
        ("action_time_mlp_in.", "head.time_mlp_in."),
        ("action_time_mlp_out.", "head.time_mlp_out."),
    ],
}
UNUSED = {"paligemma_with_expert.gemma_expert.lm_head.weight"}  # pi0's expert LM head: never read
FEATURES = {"state": "observation.state", "actions": "action"}  # our canonical names -> LeRobot's keys
NORM_MODES = {"MEAN_STD": "mean_std", "QUANTILES": "quantile", "MIN_MAX": "min_max", "IDENTITY": "identity"}


# ----------------------------------------------------------------------------- which model is this


def _option(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj


def architecture_mismatches(cfg: PolicyConfig, kind: str) -> list[str]:
    """The options of ``cfg`` that differ from LeRobot's ``kind``, as ``name: ours != theirs``."""
    return [
        f"policy.{part}.{name}: {_option(getattr(cfg, part), name)!r} != {want!r}"
        for part, options in ARCHITECTURES[kind].items()
        for name, want in options.items()
        if _option(getattr(cfg, part), name) != want
    ]


def lerobot_type(cfg: PolicyConfig) -> str:
    """The LeRobot model ``cfg`` is (pi0, pi05, smolvla), or a ValueError naming what differs from the closest."""
    misses = {kind: architecture_mismatches(cfg, kind) for kind in TYPES}
    kind = min(misses, key=lambda k: len(misses[k]))
    if misses[kind]:
        raise ValueError(
            f"this policy is none of LeRobot's {', '.join(TYPES)}; closest is {kind}, which differs in: "
            + "; ".join(misses[kind])
        )
    return kind


# ----------------------------------------------------------------------------- keys


def strip_prefix(tensors: dict) -> dict:
    """LeRobot's local layout prefixes every key with ``model.``; the hub/openpi layout does not."""
    return {k.removeprefix("model."): v for k, v in tensors.items()}


def to_ours(kind: str, tensors: dict, ours: set[str]) -> tuple[dict, list[str], list[str]]:
    """LeRobot keys (no ``model.`` prefix) -> (our tensors, dropped unused keys, keys with no place in ours)."""
    mapped, dropped, unknown = {}, [], []
    for key, value in tensors.items():
        if key in UNUSED:
            dropped.append(key)
            continue
        candidates = [ours_p + key[len(theirs) :] for theirs, ours_p in KEYS[kind] if key.startswith(theirs)]
        target = next((c for c in candidates if c in ours), None)
        if target is None:
            unknown.append(key)
        else:
            mapped[target] = value
    return mapped, dropped, unknown


def merged_state_dict(policy: Policy) -> dict:
    """The state dict with LoRA adapters merged into their layers (``x.base_layer.weight`` -> ``x.weight``),
    the form a stack without our adapters loads."""
    import copy

    merged = copy.deepcopy(policy)
    for module in merged.modules():
        if hasattr(module, "base_layer") and hasattr(module, "merge"):
            module.merge()
    return {k.replace(".base_layer.", "."): v for k, v in merged.state_dict().items() if ".lora_" not in k}


def to_lerobot(kind: str, state_dict: dict) -> dict:
    """Our state dict -> LeRobot keys with the ``model.`` prefix (its local ``save_pretrained`` layout)."""
    out = {}
    for key, value in state_dict.items():
        for theirs, ours_p in KEYS[kind]:
            if key.startswith(ours_p):
                lerobot_key = theirs + key[len(ours_p) :]
                if ours_p == "backbone.model.model.vision_tower." and ".vision_model." in key:
                    lerobot_key = "paligemma_with_expert.paligemma.model." + key[len("backbone.model.model.") :]
                out.setdefault("model." + lerobot_key, value)
                break
    return out


def count_layers(tensors: dict, prefix: str) -> int:
    idx = {int(m.group(1)) for k in tensors if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def need(tensors: dict, key: str, source) -> torch.Tensor:
    if key not in tensors:
        raise KeyError(f"{source}: missing tensor {key!r}")
    return tensors[key]


def lerobot_classes(kind: str):
    """(LeRobot config class, its pre/post-processor factory)."""
    if kind == "pi0":
        from lerobot.policies.pi0.configuration_pi0 import PI0Config
        from lerobot.policies.pi0.processor_pi0 import make_pi0_pre_post_processors

        return PI0Config, make_pi0_pre_post_processors
    if kind == "pi05":
        from lerobot.policies.pi05.configuration_pi05 import PI05Config
        from lerobot.policies.pi05.processor_pi05 import make_pi05_pre_post_processors

        return PI05Config, make_pi05_pre_post_processors
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors

    return SmolVLAConfig, make_smolvla_pre_post_processors
