"""Post-training quantization of a policy with torchao: which linear layers, which scheme, and how a
quantized checkpoint is stored and loaded.

Layout (QuantVLA, METHODS.md section 7, without its DuQuant rotations or ATM/OHB rescaling): the VLM's
language-model and vision linear layers are quantized, the action head's MLPs too, and the head's
attention projections (q/k/v/o, and the cross-attention's ctx_k/ctx_v) stay in floating point by
default: QuantVLA found that quantizing the whole action head breaks long-horizon tasks. Every other
linear layer stays in floating point: the LM head (often tied to the token embeddings, and the token
heads decode through it), our state projection and the head's input/output/time/adaLN projections
(small, and at the boundary where the actions enter and leave).

Schemes are a registry (``QuantSchemeConfig``), each a torchao config: ``int8-weight`` (weight-only),
``int8-dynamic`` (int8 weights, int8 activations with per-token scales computed at each call) and
``fp8`` (float8 weights and activations, dynamic per-row scales; needs a CUDA GPU with compute
capability >= 8.9). All three compute their activation scales on the fly, so none needs a calibration
pass: none is run (a static-activation scheme would add one over a few training batches).

Checkpoint: the usual files plus ``quantization.json`` (this config and the quantized layers); the
quantized weights are stored as torchao writes tensor subclasses to safetensors (int8/float8 data and
scales as plain tensors, each subclass's metadata in the file header), so the file holds the quantized
weights themselves and its size on disk is the real one. ``Policy.load`` sees ``quantization.json`` and
calls ``load_quantized``: the float model is built, the plain tensors are loaded into it, and each
quantized weight replaces its float parameter.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import draccus
import torch
from torch import nn

from vla.config import from_dict, to_dict
from vla.registry import lookup

log = logging.getLogger(__name__)

QUANT_FILE = "quantization.json"
GROUPS = ("lm", "vision", "head_mlp", "head_attention", "float")
# Head linear layers that are attention projections: the action expert's (ExpertBlock q/k/v/o and the
# cross-attention's ctx_k/ctx_v) and the layer-wise experts' (transformers' self_attn.*_proj).
ATTENTION_NAMES = {"q", "k", "v", "o", "ctx_k", "ctx_v", "q_proj", "k_proj", "v_proj", "o_proj"}


class QuantSchemeConfig(draccus.ChoiceRegistry):
    """A quantization scheme: the torchao config it applies, and whether it runs on a device."""

    @property
    def type(self) -> str:
        return self.get_choice_name(self.__class__)

    def torchao_config(self):
        raise TypeError(f"{type(self).__name__} must implement torchao_config()")

    def unavailable(self, device: torch.device) -> str | None:
        """Why this scheme cannot run on ``device``, or None when it can."""
        return None


@QuantSchemeConfig.register_subclass("int8-weight")
@dataclass
class Int8WeightScheme(QuantSchemeConfig):
    """int8 weights, one scale per output channel; activations stay float (the matmul dequantizes):
    a quarter of the fp32 weight memory, speed depends on whether the kernel beats the float one."""

    def torchao_config(self):
        from torchao.quantization import Int8WeightOnlyConfig

        return Int8WeightOnlyConfig(version=2)


@QuantSchemeConfig.register_subclass("int8-dynamic")
@dataclass
class Int8DynamicScheme(QuantSchemeConfig):
    """int8 weights per output channel and int8 activations per token, the activation scales computed
    at each call (dynamic: no calibration); the matmul runs in int8."""

    def torchao_config(self):
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig

        return Int8DynamicActivationInt8WeightConfig(version=2)


@QuantSchemeConfig.register_subclass("fp8")
@dataclass
class Fp8Scheme(QuantSchemeConfig):
    """float8 (e4m3) weights and activations with dynamic per-row scales, on fp8 tensor cores."""

    def torchao_config(self):
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

        return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())

    def unavailable(self, device: torch.device) -> str | None:
        if device.type != "cuda":
            return "fp8 needs a CUDA GPU with fp8 support (compute capability >= 8.9: L4, H100, H200); this is a CPU"
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            name = torch.cuda.get_device_name(device)
            return f"fp8 needs compute capability >= 8.9 (L4, H100, H200); {name} has {major}.{minor}"
        return None


def scheme(name: str) -> QuantSchemeConfig:
    """The scheme registered as ``name`` (an unknown name lists the known ones)."""
    return lookup(QuantSchemeConfig, name, "quantization scheme")()


def known_schemes() -> list[str]:
    return sorted(QuantSchemeConfig.get_known_choices())


@dataclass
class QuantizeConfig:
    scheme: QuantSchemeConfig = field(default_factory=Int8DynamicScheme)
    lm: bool = True  # the language model's linear layers (QuantVLA: every LLM linear layer)
    vision: bool = True  # the vision tower's and projector's (QuantVLA keeps them float; they are half a small VLM)
    head_mlp: bool = True  # the action head's MLPs (QuantVLA quantizes them)
    head_attention: bool = False  # the action head's attention projections: float by default (QuantVLA)

    def groups(self) -> list[str]:
        return [g for g in GROUPS if g != "float" and getattr(self, g)]


class SchemeUnavailable(RuntimeError):
    """A scheme that cannot run on this device (fp8 on a CPU): callers skip it and say why."""


# ---- which layers --------------------------------------------------------------------------------
def linear_groups(policy: nn.Module) -> dict[str, list[str]]:
    """Every nn.Linear of the policy by group (see GROUPS), each module under its first name.

    The backbone's language model is ``backbone.lm`` and its vision side ``backbone.vision_modules()``
    (the same modules ``freeze_vision`` freezes); a head layer is attention when its name is a projection
    (ATTENTION_NAMES) or it sits under an ``*attn*`` module, MLP when it sits under a module named ``mlp``.
    """
    backbone = policy.backbone
    lm = {id(m) for m in backbone.lm.modules()}
    vision = {id(m) for v in backbone.vision_modules() for m in v.modules()}
    out: dict[str, list[str]] = {g: [] for g in GROUPS}
    for name, module in policy.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        parts = name.split(".")
        if parts[0] == "backbone":
            group = "lm" if id(module) in lm else "vision" if id(module) in vision else "float"
        elif parts[0] == "head" and (parts[-1] in ATTENTION_NAMES or any("attn" in p for p in parts[:-1])):
            group = "head_attention"
        elif parts[0] == "head" and "mlp" in parts[:-1]:
            group = "head_mlp"
        else:
            group = "float"
        out[group].append(name)
    return out


def _is_quantized(t: torch.Tensor) -> bool:
    from torchao.utils import TorchAOBaseTensor

    return isinstance(t, TorchAOBaseTensor)


def quantize_policy(policy: nn.Module, cfg: QuantizeConfig) -> list[str]:
    """Quantize ``policy`` in place (on the device it is on); return the quantized layers' names."""
    from torchao.quantization import quantize_

    device = next(policy.parameters()).device
    reason = cfg.scheme.unavailable(device)
    if reason:
        raise SchemeUnavailable(f"scheme {cfg.scheme.type}: {reason}")
    groups = linear_groups(policy)
    chosen = [name for g in cfg.groups() for name in groups[g]]
    targets = {id(policy.get_submodule(name)) for name in chosen}
    # quantize_ walks children, so a module reachable under two names (backbone.lm aliases the VLM's
    # text model) is offered twice: quantize it once
    quantize_(
        policy,
        cfg.scheme.torchao_config(),
        filter_fn=lambda m, fqn: id(m) in targets and not _is_quantized(m.weight),
    )
    missed = [n for n in chosen if not _is_quantized(policy.get_submodule(n).weight)]
    if missed:
        raise RuntimeError(f"scheme {cfg.scheme.type}: torchao left {missed[:4]} unquantized")
    return chosen


# ---- sizes ---------------------------------------------------------------------------------------
def _tensor_bytes(t: torch.Tensor) -> int:
    if _is_quantized(t):  # the inner tensors it stores (int8/float8 data, scales, zero points)
        names, _ = t.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(t, n)) for n in names if getattr(t, n) is not None)
    return t.numel() * t.element_size()


def model_bytes(module: nn.Module) -> int:
    """Bytes of the parameters and buffers held in memory, each tensor once (aliases and ties counted once)."""
    seen, total = set(), 0
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += _tensor_bytes(t)
    return total


# ---- checkpoints ---------------------------------------------------------------------------------
def _unique_state_dict(policy: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with every tensor under its first name only (aliased modules appear twice)."""
    seen, out = set(), {}
    for k, v in policy.state_dict(keep_vars=True).items():
        if id(v) not in seen:
            seen.add(id(v))
            out[k] = v.detach()
    return out


def save_quantized(policy, cfg: QuantizeConfig, layers: list[str], out: str | Path) -> Path:
    """A policy checkpoint whose model.safetensors holds the quantized weights (torchao's safetensors
    layout), with ``quantization.json``; written atomically."""
    import torchao
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    from vla.utils.atomic import atomic_dir

    tensors, metadata = flatten_tensor_state_dict(_unique_state_dict(policy))
    with atomic_dir(out) as tmp:
        policy.write_checkpoint(tmp, state_dict=tensors, metadata=metadata)
        record = {"config": to_dict(cfg), "layers": layers, "torchao": torchao.__version__}
        (tmp / QUANT_FILE).write_text(json.dumps(record, indent=2))
    return Path(out)


def read_quantization(path: str | Path) -> tuple[QuantizeConfig, list[str]] | None:
    """The quantization config and layers of a checkpoint, or None for a float checkpoint."""
    file = Path(path) / QUANT_FILE
    if not file.is_file():
        return None
    record = json.loads(file.read_text())
    return from_dict(QuantizeConfig, record["config"]), record["layers"]


def load_quantized(policy, weights_file: Path, cfg: QuantizeConfig, device: torch.device) -> None:
    """Load a quantized checkpoint's weights into the float ``policy`` just built: plain tensors as usual
    (strictly), and each quantized weight in place of its float parameter (same shape)."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

    reason = cfg.scheme.unavailable(device)
    if reason:
        raise SchemeUnavailable(f"{weights_file.parent} is quantized with {cfg.scheme.type}: {reason}")
    with safe_open(str(weights_file), "pt") as f:
        metadata = f.metadata()
    restored, leftover = unflatten_tensor_state_dict(load_file(str(weights_file)), metadata)
    if leftover:
        raise ValueError(f"{weights_file}: tensors outside torchao's metadata: {sorted(leftover)[:8]}")
    quantized = {k: v for k, v in restored.items() if _is_quantized(v)}
    plain = {k: v for k, v in restored.items() if not _is_quantized(v)}
    report = policy.load_weights(plain, source=weights_file, strict=False)
    for key, value in quantized.items():
        module_name, attr = key.rsplit(".", 1)
        current = getattr(policy.get_submodule(module_name), attr)
        if current.shape != value.shape:
            raise ValueError(f"{weights_file}: {key} is {tuple(value.shape)}, the policy's {tuple(current.shape)}")
        setattr(policy.get_submodule(module_name), attr, nn.Parameter(value, requires_grad=False))
    own = policy.state_dict(keep_vars=True)
    missing = [k for k in report["reinitialized"] if not _is_quantized(own[k])]
    if missing or report["unexpected"]:
        raise ValueError(
            f"{weights_file}: weights do not match the policy: missing {missing[:8]}, "
            f"unexpected {report['unexpected'][:8]}"
        )
    log.info("%s: %d layers quantized with %s", weights_file.parent, len(quantized), cfg.scheme.type)
