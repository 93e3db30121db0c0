"""Changes to a loaded VLM that training options ask for: fewer layers, LoRA, activation checkpointing,
another rotary base, a convolutional stem; and a parameter count. Each works on transformers' own modules and
configs."""

from __future__ import annotations

from torch import nn

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def truncate_layers(lm: nn.Module, text_configs: list, num_layers: int) -> None:
    """Keep the first ``num_layers`` decoder layers (SmolVLA-style) and say so in the configs.

    The configs matter: DynamicCache sizes itself from ``num_hidden_layers``/``layer_types``
    and Gemma's forward slices ``layers[: num_hidden_layers]``.
    """
    have = len(lm.layers)
    if num_layers > have:
        raise ValueError(f"num_layers={num_layers} but the language model has only {have} layers")
    lm.layers = nn.ModuleList(list(lm.layers)[:num_layers])
    for cfg in text_configs:
        cfg.num_hidden_layers = num_layers
        if getattr(cfg, "layer_types", None) is not None:
            cfg.layer_types = list(cfg.layer_types)[:num_layers]
        if getattr(cfg, "max_window_layers", None) is not None:
            cfg.max_window_layers = min(cfg.max_window_layers, num_layers)


def add_lora(lm: nn.Module, rank: int, alpha: int) -> None:
    """peft LoRA on the language model's attention and MLP projections; the LM's own weights freeze."""
    from peft import LoraConfig, inject_adapter_in_model

    for p in lm.parameters():
        p.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=LORA_TARGETS), lm)
    for name, p in lm.named_parameters():
        p.requires_grad_("lora_" in name)


def enable_checkpointing(model: nn.Module) -> None:
    """Activation checkpointing on every decoder/vision layer; non-reentrant so frozen inputs still backprop."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def rope_theta_of(text_config) -> float:
    """The rotary base of a language-model config (transformers 5 keeps it in ``rope_parameters``)."""
    params = getattr(text_config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(text_config, "rope_theta", 10_000.0)))


def set_rope_theta(lm: nn.Module, text_config, theta: float) -> None:
    """Give the language model another rotary base: the configs say so and the rotary module is rebuilt."""
    for cfg in {id(c): c for c in (text_config, lm.config)}.values():
        params = dict(getattr(cfg, "rope_parameters", None) or {"rope_type": "default"})
        params["rope_theta"] = float(theta)
        cfg.rope_parameters = params
    device = lm.rotary_emb.inv_freq.device
    lm.rotary_emb = type(lm.rotary_emb)(config=lm.config).to(device)


def conv_stem(patchify: nn.Conv2d) -> nn.Sequential:
    """A small CNN in place of a ViT's patchify convolution ("Early convolutions help transformers see
    better", Xiao et al. 2021), with its contract: (B, C, H, W) -> (B, width, H/patch, W/patch).

    log2(patch) stages of 3x3 stride-2 convolution + GroupNorm(1, c) + GELU, channels doubling up to the
    width (tiny SmolVLM, patch 8, width 64: 16, 32, 64), then a 1x1 convolution to the width. GroupNorm,
    not BatchNorm: training and inference batches differ. Created on the patchify conv's device and dtype.
    """
    patch, width = patchify.kernel_size[0], patchify.out_channels
    if patchify.kernel_size != patchify.stride or patch < 2 or patch & (patch - 1):
        raise ValueError(
            "policy.backbone.conv_stem halves the image once per stage: patch_size must be a power of two "
            f"(2, 4, 8 ...), got {patch}"
        )
    stages = patch.bit_length() - 1
    factory = {"device": patchify.weight.device, "dtype": patchify.weight.dtype}
    layers, c_in = [], patchify.in_channels
    for i in range(stages):
        c = max(width >> (stages - 1 - i), 8)
        layers += [
            nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False, **factory),
            nn.GroupNorm(1, c, **factory),
            nn.GELU(),
        ]
        c_in = c
    return nn.Sequential(*layers, nn.Conv2d(c_in, width, 1, **factory))


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
