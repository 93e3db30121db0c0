"""LeRobot's pi0, pi0.5 and SmolVLA checkpoints <-> ours: what each model is in our plug-ins, and its keys.

A LeRobot checkpoint of these models is ``config.json`` (LeRobot's policy config), ``model.safetensors``
and the pre/post-processor pipelines (``policy_preprocessor*.json`` with the normalization statistics
in ``*normalizer_processor.safetensors``). Each model is one combination of our options
(``ARCHITECTURES``: backbone prompt, image resizing, positions, state placement; flow-head expert
style, time conditioning, action mask); the recipes ``configs/experiments/{pi0,pi05,smolvla}_finetune.yaml``
say the same and a test keeps them equal.

Import reads every dimension from tensor shapes (a small test checkpoint's config still says
``gemma_2b``), keys with or without the ``model.`` prefix (LeRobot's local ``save_pretrained`` layout
and the hub/openpi layout, which also lacks ``embed_tokens``). What shapes cannot tell (the
tokenizer and processor, the vision tower's head count, norm epsilons) comes from ``--processor
DIR``: the VLM's own folder (``google/paligemma-3b-pt-224``, ``HuggingFaceTB/SmolVLM2-500M-Video-Instruct``).
Export goes the other way with LeRobot's own config classes and processor factories, so the files
are the ones LeRobot writes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vla.config import from_dict, to_dict
from vla.models.policy import Policy, PolicyConfig
from vla.utils.atomic import atomic_dir

TYPES = ("pi0", "pi05", "smolvla")
PALIGEMMA_TOKENIZER = "google/paligemma-3b-pt-224"  # what LeRobot's pi0/pi0.5 processors load
SMOLVLM = "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"
PI0_HEADS = 8  # LeRobot's pi0/pi0.5 reshape attention with a literal 8 query heads (modeling_pi0.py:124)

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
            "image_special_tokens": False,
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


def _layers(tensors: dict, prefix: str) -> int:
    idx = {int(m.group(1)) for k in tensors if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def _need(tensors: dict, key: str, source) -> torch.Tensor:
    if key not in tensors:
        raise KeyError(f"{source}: missing tensor {key!r}")
    return tensors[key]


# ----------------------------------------------------------------------------- import


def read_lerobot_config(src: Path):
    """LeRobot's own config class parses ``config.json`` (pi0, pi05 or smolvla)."""
    import lerobot.policies.pi0.configuration_pi0  # noqa: F401  (registers the config types)
    import lerobot.policies.pi05.configuration_pi05  # noqa: F401
    import lerobot.policies.smolvla.configuration_smolvla  # noqa: F401
    from lerobot.configs import PreTrainedConfig

    if not (src / "config.json").is_file() or not (src / "model.safetensors").is_file():
        raise FileNotFoundError(f"{src} is not a LeRobot policy checkpoint: it needs config.json and model.safetensors")
    kind = json.loads((src / "config.json").read_text()).get("type")
    if kind not in TYPES:
        raise ValueError(f"{src / 'config.json'}: type {kind!r}; vla import lerobot reads {', '.join(TYPES)}")
    return kind, PreTrainedConfig.from_pretrained(src, local_files_only=True)


def read_stats(src: Path) -> dict | None:
    """Normalization statistics of the preprocessor (``observation.state.*``, ``action.*``) as ours."""
    files = sorted(src.glob("policy_preprocessor*normalizer*.safetensors")) or sorted(
        src.glob("policy_preprocessor*.safetensors")
    )
    if not files:
        return None
    raw = load_file(str(files[0]))
    stats: dict[str, dict] = {"state": {}, "actions": {}}
    for key, value in raw.items():
        for theirs, ours in (("observation.state.", "state"), ("action.", "actions")):
            if key.startswith(theirs):
                stats[ours][key[len(theirs) :]] = value.double().flatten().tolist()
    return {k: v for k, v in stats.items() if v} or None


def fix_keys(kind: str, tensors: dict) -> dict:
    """openpi/hub layouts: ``time_mlp`` names swapped between pi0 and pi0.5, ``embed_tokens`` left out
    (LeRobot's ``_fix_pytorch_state_dict_keys`` and ``from_pretrained`` do the same)."""
    swap = {"pi0": ("time_mlp_", "action_time_mlp_"), "pi05": ("action_time_mlp_", "time_mlp_")}.get(kind)
    out = {}
    for key, value in tensors.items():
        if swap and key.startswith(swap[0]):
            key = swap[1] + key[len(swap[0]) :]
        if kind == "pi05" and key.startswith("state_proj."):
            continue  # pi0.5 has no state projection (its state is in the prompt)
        out[key] = value
    embed = "paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"
    head = "paligemma_with_expert.paligemma.lm_head.weight"
    if kind != "smolvla" and embed not in out and head in out:
        out[embed] = out[head].clone()
    return out


def paligemma_config(tensors: dict, processor, processor_dir: Path, source):
    """PaliGemma of pi0/pi0.5, every dimension from shapes. LeRobot builds it from transformers' defaults
    (norm epsilons, 16 SigLIP heads); a config.json in the processor folder may say otherwise (head count)."""
    from vla.models.backbones.paligemma import paligemma_model_config

    p = "paligemma_with_expert.paligemma.model."
    vt = p + "vision_tower.vision_model."
    embed = _need(tensors, p + "language_model.embed_tokens.weight", source)
    layer0 = p + "language_model.layers.0."
    q, k = (
        _need(tensors, layer0 + "self_attn.q_proj.weight", source),
        _need(tensors, layer0 + "self_attn.k_proj.weight", source),
    )
    head_dim = q.shape[0] // PI0_HEADS
    patch = _need(tensors, vt + "embeddings.patch_embedding.weight", source)
    positions = _need(tensors, vt + "embeddings.position_embedding.weight", source).shape[0]
    vision_heads = 16
    hub = processor_dir / "config.json"
    if hub.is_file():
        vision_heads = json.loads(hub.read_text()).get("vision_config", {}).get("num_attention_heads", vision_heads)
    config = paligemma_model_config(
        text_width=embed.shape[1],
        text_layers=_layers(tensors, p + "language_model.layers."),
        text_ffn=_need(tensors, layer0 + "mlp.gate_proj.weight", source).shape[0],
        text_heads=PI0_HEADS,
        text_kv_heads=k.shape[0] // head_dim,
        head_dim=head_dim,
        vision_width=patch.shape[0],
        vision_layers=_layers(tensors, vt + "encoder.layers."),
        vision_ffn=_need(tensors, vt + "encoder.layers.0.mlp.fc1.weight", source).shape[0],
        vision_heads=vision_heads,
        patch_size=patch.shape[-1],
        image_size=round(positions**0.5) * patch.shape[-1],
        vocab_size=embed.shape[0],
        image_token_id=processor.image_token_id,
        pad_token_id=processor.tokenizer.pad_token_id,
    )
    config.tie_word_embeddings = config.text_config.tie_word_embeddings = False  # LeRobot keeps both tables
    return config


def smolvlm_config(tensors: dict, processor_dir: Path, source):
    """SmolVLA's VLM: the SmolVLM config it was built from (``vlm_model_name``), cut to the layers it kept."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(processor_dir)
    text = config.text_config
    layers = _layers(tensors, "vlm_with_expert.vlm.model.text_model.layers.")
    embed = _need(tensors, "vlm_with_expert.vlm.model.text_model.embed_tokens.weight", source)
    if embed.shape[1] != text.hidden_size:
        raise ValueError(
            f"{source}: text width {embed.shape[1]} but {processor_dir}/config.json says {text.hidden_size}"
        )
    text.num_hidden_layers, text.vocab_size = layers, embed.shape[0]
    if getattr(text, "layer_types", None):
        text.layer_types = list(text.layer_types)[:layers]
    return config


def expert_options(kind: str, tensors: dict, lr, vlm_layers: int, source) -> dict:
    """The flow head's options from the expert's shapes (and, for SmolVLA, its interleaving)."""
    prefix = "vlm_with_expert.lm_expert." if kind == "smolvla" else "paligemma_with_expert.gemma_expert.model."
    q = _need(tensors, prefix + "layers.0.self_attn.q_proj.weight", source)
    width = q.shape[1]
    layers = _layers(tensors, prefix + "layers.")
    if layers != vlm_layers:
        raise ValueError(
            f"{source}: the expert has {layers} layers and the VLM {vlm_layers}; only equal depths are supported"
        )
    adaptive = prefix + "layers.0.input_layernorm.dense.weight" in tensors
    if adaptive != (kind == "pi05"):
        raise ValueError(
            f"{source}: a {kind} checkpoint {'with' if adaptive else 'without'} adaptive norms in its expert"
        )
    head = {
        "type": "flow",
        "expert": {"type": ARCHITECTURES[kind]["head"]["expert.type"]},
        "expert_width": width,
        "expert_ffn": _need(tensors, prefix + "layers.0.mlp.gate_proj.weight", source).shape[0],
        "time_conditioning": ARCHITECTURES[kind]["head"]["time_conditioning"],
        "action_attention": ARCHITECTURES[kind]["head"]["action_attention"],
        "num_steps": lr.num_steps if kind == "smolvla" else lr.num_inference_steps,
    }
    if kind != "smolvla":
        head.update(time_alpha=lr.time_sampling_beta_alpha, time_beta=lr.time_sampling_beta_beta)
        return head
    cross = [tensors[f"{prefix}layers.{i}.self_attn.k_proj.weight"].shape[1] != width for i in range(layers)]
    every = lr.self_attn_every_n_layers if "cross" in lr.attention_mode and lr.self_attn_every_n_layers > 0 else 1
    if cross != [bool(i % every) for i in range(layers)]:
        raise ValueError(f"{source}: cross-attention layers {cross} do not follow self_attn_every_n_layers={every}")
    head["expert"]["self_attn_every"] = every
    return head


def policy_config(kind: str, lr, tensors: dict, vlm_layers: int, source) -> PolicyConfig:
    from lerobot.configs.types import FeatureType

    cameras = [
        k.removeprefix("observation.images.") for k, f in lr.input_features.items() if f.type is FeatureType.VISUAL
    ]
    shapes = [f.shape for f in lr.input_features.values() if f.type is FeatureType.VISUAL]
    side = lr.resize_imgs_with_padding[0] if kind == "smolvla" else lr.image_resolution[0]
    backbone = {k: v for k, v in ARCHITECTURES[kind]["backbone"].items()}
    backbone.update(preset=f"imported-{kind}", max_text_tokens=lr.tokenizer_max_length, image_size=side)
    if kind == "smolvla":
        backbone["pretrained"] = lr.vlm_model_name  # where its VLM came from (the checkpoint loads without it)
    modes = {m: NORM_MODES.get(lr.normalization_mapping[m].value) for m in ("STATE", "ACTION")}
    if None in modes.values():
        raise ValueError(f"{source}: normalization {lr.normalization_mapping} has a mode we do not implement")
    state_width = tensors["state_proj.weight"].shape[1] if "state_proj.weight" in tensors else lr.max_state_dim
    raw = {
        "backbone": backbone,
        "head": expert_options(kind, tensors, lr, vlm_layers, source),
        "chunk_size": lr.chunk_size,
        "n_action_steps": min(lr.n_action_steps, lr.chunk_size),
        "state_norm": modes["STATE"],
        "action_norm": modes["ACTION"],
        "max_state_dim": state_width,
        "max_action_dim": _need(tensors, "action_in_proj.weight", source).shape[1],
        "cameras": cameras,
        "state_dim": lr.input_features["observation.state"].shape[0],
        "action_dim": lr.output_features["action"].shape[0],
        "image_size": shapes[0][1] if shapes and shapes[0][1] == shapes[0][2] else 0,
    }
    return from_dict(PolicyConfig, raw)


def load_processor(kind: str, processor_dir: Path):
    from transformers import AutoProcessor

    kwargs = {"backend": "torchvision"} if kind == "smolvla" else {}
    try:
        return AutoProcessor.from_pretrained(processor_dir, **kwargs)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"--processor {processor_dir}: no processor there ({e}). {PROCESSOR_HELP[kind]}") from e


PROCESSOR_HELP = {
    "pi0": f"pi0 checkpoints hold no tokenizer: pass --processor DIR, a local copy of {PALIGEMMA_TOKENIZER} "
    "(its tokenizer and processor files; its config.json too, if the vision tower is not So400m's)",
    "smolvla": f"SmolVLA checkpoints hold no tokenizer or VLM config: pass --processor DIR, a local copy of {SMOLVLM} "
    "(config.json, tokenizer and processor files), the model named by vlm_model_name in config.json",
}
PROCESSOR_HELP["pi05"] = PROCESSOR_HELP["pi0"].replace("pi0 ", "pi0.5 ")


def policy_from_lerobot(src: str | Path, processor: str | Path | None = None) -> tuple[Policy, dict]:
    """A LeRobot pi0, pi0.5 or SmolVLA checkpoint as one of our policies (built on the ambient device)."""
    import tempfile

    src = Path(src)
    kind, lr = read_lerobot_config(src)
    if processor is None and kind == "smolvla" and Path(lr.vlm_model_name).is_dir():
        processor = lr.vlm_model_name
    if processor is None:
        raise FileNotFoundError(PROCESSOR_HELP[kind])
    processor_dir = Path(processor)
    tensors = fix_keys(kind, strip_prefix(load_file(str(src / "model.safetensors"))))
    source = src / "model.safetensors"
    proc = load_processor(kind, processor_dir)
    if kind == "smolvla":
        hf_config = smolvlm_config(tensors, processor_dir, source)
    else:
        hf_config = paligemma_config(tensors, proc, processor_dir, source)
    cfg = policy_config(kind, lr, tensors, hf_config.text_config.num_hidden_layers, source)
    stats = read_stats(src)
    with tempfile.TemporaryDirectory() as tmp:
        hf_config.save_pretrained(tmp)
        proc.save_pretrained(tmp)
        policy = Policy(cfg, stats, architecture=tmp)
    mapped, dropped, unknown = to_ours(kind, tensors, set(policy.state_dict()))
    if unknown:
        raise ValueError(f"{source}: tensors with no place in a {kind} policy: {unknown[:8]}")
    report = policy.load_weights(mapped, source=source, strict=False)
    missing = [k for k in report["reinitialized"] if not k.startswith("normalizers.")]
    if missing or report["unexpected"]:
        raise ValueError(
            f"{source}: missing tensors {missing[:8]}, shape or name mismatches {report['unexpected'][:8]}"
        )
    return policy, {
        "type": kind,
        "loaded": len(report["loaded"]),
        "dropped_unused": dropped,
        "stats": "from the preprocessor" if stats else "none found (identity normalization)",
        "parameters": sum(p.numel() for p in policy.parameters()),
    }


def import_lerobot(src: str | Path, out: str | Path, processor: str | Path | None = None) -> dict:
    """A LeRobot pi0, pi0.5 or SmolVLA checkpoint -> one of our checkpoints at ``out``; returns a report."""
    policy, report = policy_from_lerobot(src, processor)
    policy.save(out)
    return {**report, "out": str(out)}


# ----------------------------------------------------------------------------- export


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
    config_cls, _ = _classes(kind)
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


def _classes(kind: str):
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


class _LocalTokenizer:
    """Within the block, ``AutoTokenizer.from_pretrained(name)`` reads ``folder`` instead of the hub:
    LeRobot's processor factories load the tokenizer by its hub name, which stays in the JSON they write."""

    def __init__(self, name: str, folder: Path):
        self.name, self.folder = name, str(folder)

    def __enter__(self):
        import transformers

        self.original = transformers.AutoTokenizer.from_pretrained
        original, name, folder = self.original.__func__, self.name, self.folder
        transformers.AutoTokenizer.from_pretrained = classmethod(
            lambda cls, n, *a, **kw: original(cls, folder if n == name else n, *a, **kw)
        )

    def __exit__(self, *exc):
        import transformers

        transformers.AutoTokenizer.from_pretrained = self.original


def export_lerobot(ckpt: str | Path, out: str | Path, vlm_model_name: str | None = None) -> dict:
    """One of our pi0/pi0.5/SmolVLA policies -> a folder LeRobot 0.6.1's ``from_pretrained`` loads."""
    ckpt, out = Path(ckpt), Path(out)
    policy = Policy.load(ckpt)
    kind = lerobot_type(policy.config)
    lr = lerobot_config_for(kind, policy, vlm_model_name)
    tensors = {k: v.detach().contiguous().cpu() for k, v in to_lerobot(kind, merged_state_dict(policy)).items()}
    if kind != "smolvla":  # LeRobot's loader is strict: its expert's (unused) LM head must be there
        width = policy.head.width
        tensors["model.paligemma_with_expert.gemma_expert.lm_head.weight"] = torch.zeros(257152, width)
    seen, unique = set(), {}
    for k, v in tensors.items():  # tied tables are one storage; safetensors wants separate tensors
        unique[k] = v.clone() if v.data_ptr() in seen else v
        seen.add(v.data_ptr())
    stats = {
        {"state": "observation.state", "actions": "action"}[name]: {
            s: torch.tensor(v, dtype=torch.float32) for s, v in d.items()
        }
        for name, d in policy.stats.items()
        if name in ("state", "actions")
    }
    _, processors = _classes(kind)
    tokenizer_name = lr.vlm_model_name if kind == "smolvla" else PALIGEMMA_TOKENIZER
    with atomic_dir(out) as tmp:
        lr._save_pretrained(Path(tmp))
        save_file(unique, str(Path(tmp) / "model.safetensors"))
        with _LocalTokenizer(tokenizer_name, ckpt / "backbone"):
            pre, post = processors(lr, dataset_stats=stats)
        pre.save_pretrained(tmp)
        post.save_pretrained(tmp)
    return {"type": kind, "out": str(out), "tensors": len(unique), "config": to_dict(policy.config)["head"]}
