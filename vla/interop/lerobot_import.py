"""LeRobot pi0 / pi0.5 / SmolVLA checkpoint -> ours: every dimension from tensor shapes, the rest from the VLM's folder.

See ``lerobot.py`` for what each model is in our plug-ins and how keys map.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from safetensors.torch import load_file

from vla.config import from_dict
from vla.interop.lerobot import (
    ARCHITECTURES,
    FEATURES,
    NORM_MODES,
    PALIGEMMA_TOKENIZER,
    PI0_HEADS,
    SMOLVLM,
    TYPES,
    count_layers,
    need,
    strip_prefix,
    to_ours,
)
from vla.models.policy import Policy, PolicyConfig


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
        for ours, theirs in FEATURES.items():
            if key.startswith(theirs + "."):
                stats[ours][key[len(theirs) + 1 :]] = value.double().flatten().tolist()
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
    embed = need(tensors, p + "language_model.embed_tokens.weight", source)
    layer0 = p + "language_model.layers.0."
    q, k = (
        need(tensors, layer0 + "self_attn.q_proj.weight", source),
        need(tensors, layer0 + "self_attn.k_proj.weight", source),
    )
    head_dim = q.shape[0] // PI0_HEADS
    patch = need(tensors, vt + "embeddings.patch_embedding.weight", source)
    positions = need(tensors, vt + "embeddings.position_embedding.weight", source).shape[0]
    vision_heads = 16
    hub = processor_dir / "config.json"
    if hub.is_file():
        vision_heads = json.loads(hub.read_text()).get("vision_config", {}).get("num_attention_heads", vision_heads)
    config = paligemma_model_config(
        text_width=embed.shape[1],
        text_layers=count_layers(tensors, p + "language_model.layers."),
        text_ffn=need(tensors, layer0 + "mlp.gate_proj.weight", source).shape[0],
        text_heads=PI0_HEADS,
        text_kv_heads=k.shape[0] // head_dim,
        head_dim=head_dim,
        vision_width=patch.shape[0],
        vision_layers=count_layers(tensors, vt + "encoder.layers."),
        vision_ffn=need(tensors, vt + "encoder.layers.0.mlp.fc1.weight", source).shape[0],
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
    layers = count_layers(tensors, "vlm_with_expert.vlm.model.text_model.layers.")
    embed = need(tensors, "vlm_with_expert.vlm.model.text_model.embed_tokens.weight", source)
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
    q = need(tensors, prefix + "layers.0.self_attn.q_proj.weight", source)
    width = q.shape[1]
    layers = count_layers(tensors, prefix + "layers.")
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
        "expert_ffn": need(tensors, prefix + "layers.0.mlp.gate_proj.weight", source).shape[0],
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
    backbone = dict(ARCHITECTURES[kind]["backbone"])
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
        "max_action_dim": need(tensors, "action_in_proj.weight", source).shape[1],
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
