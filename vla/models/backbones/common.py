"""What the three VLM families share: config options and the encode/decode machinery (inputs.py: images, masks; options.py: LoRA, layer cuts).

Every family runs the same way: the vision tower's features are scattered into the
image-placeholder embeddings, an optional state token is appended, and the *text
model* (not the HF ``forward`` of the whole VLM) runs over these embeddings with a
4-D attention mask and position ids we build ourselves. Owning mask and positions
is what lets one code path do a bidirectional prefix, a causal suffix for teacher
forcing, padding anywhere, missing cameras, and a KV-cached ``decode_step`` whose
positions continue exactly where the one-pass forward would have put them.

A family file only says how its pixels are laid out (``pixel_inputs``), how its
vision tower is called (``image_features``), what the token layout of one camera is
and, for Qwen, how 3-D rotary positions are computed (``position_ids``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from transformers import DynamicCache

from vla.models.backbones.base import Backbone, BackboneConfig
from vla.models.backbones.inputs import IMAGE_RESIZE_MODES, build_attention_mask, resize_images
from vla.models.backbones.options import (
    add_lora,
    enable_checkpointing,
    rope_theta_of,
    set_rope_theta,
    truncate_layers,
)
from vla.models.backbones.prompt import discretize_state, lookup_prompt
from vla.shapes import check_shape
from vla.types import Prefix

# token: one prefix token projected from the state; head: the head reads it; prompt: written into the text (pi0.5)
STATE_MODES = ("token", "head", "prompt")
MAX_CHARS_PER_TOKEN = 16  # instructions are cut to this many characters per text token before tokenizing


@dataclass
class VLMConfig(BackboneConfig):
    """Options every family adds to ``BackboneConfig``.

    ``init_device``: where a preset's random weights are created (``meta``: no memory, for
    parameter counts); by default the ambient device, so building inside
    ``with torch.device("cuda"):`` creates a 3B model on the GPU in seconds, not minutes on the CPU.
    ``prefix_attention``: ``bidirectional`` or ``causal`` among prefix tokens; empty means the
    family default (PaliGemma bidirectional as in its prefix-LM pretraining, the others causal).
    ``image_size``: overrides the preset's square input resolution (Qwen accepts any multiple of 28).
    """

    init_device: str | None = None
    prefix_attention: str = ""
    image_size: int | None = None
    dtype: str | None = None  # "bfloat16", "float16", "float32"; None: float32 (presets) or the checkpoint's
    # How the model sees its inputs. The defaults are the family's own; the pi0, pi0.5 and SmolVLA
    # recipes set them to what LeRobot's ports of those models do (configs/experiments/*_finetune.yaml).
    prompt: str = ""  # prompt format (vla/models/backbones/prompt.py): task | newline | pi05; "" = the family's
    image_resize: str = (
        "stretch"  # stretch (bicubic, antialiased) | pad (keep aspect, centred: pi0) | pad_top_left (SmolVLA)
    )
    position_offset: int | None = None  # rotary position of the first token; None = the family's (PaliGemma 1, else 0)
    scale_embeddings: bool = False  # image features and text embeddings times sqrt(width), as SmolVLA feeds SmolVLM
    rope_theta: float | None = None  # override the language model's rotary base (SmolVLA rotates with 10,000)

    def __post_init__(self):
        if self.dtype is not None and not isinstance(getattr(torch, self.dtype, None), torch.dtype):
            raise ValueError(f"dtype must name a torch dtype (e.g. 'bfloat16'), got {self.dtype!r}")
        if self.state_mode not in STATE_MODES:
            raise ValueError(f"state_mode must be one of {', '.join(STATE_MODES)}, got {self.state_mode!r}")
        if self.prefix_attention not in ("", "bidirectional", "causal"):
            raise ValueError(f"prefix_attention must be '', 'bidirectional' or 'causal', got {self.prefix_attention!r}")
        if self.num_layers is not None and self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1 or None, got {self.num_layers}")
        if self.image_resize not in IMAGE_RESIZE_MODES:
            raise ValueError(f"image_resize must be one of {', '.join(IMAGE_RESIZE_MODES)}, got {self.image_resize!r}")
        if self.prompt:
            fmt = lookup_prompt(self.prompt)
            if fmt.uses_state != (self.state_mode == "prompt"):
                raise ValueError(
                    f"prompt={self.prompt!r} {'writes' if fmt.uses_state else 'does not write'} the state into the "
                    f"text, but state_mode={self.state_mode!r}: use state_mode='prompt' with a prompt that reads "
                    "the state (pi05), and another state_mode otherwise"
                )
        elif self.state_mode == "prompt":
            raise ValueError("state_mode='prompt' needs a prompt format that writes the state, e.g. prompt='pi05'")


# ----------------------------------------------------------------------------- building


def instantiate(cfg: VLMConfig, model_cls: type, config, dtype: str | None = None) -> nn.Module:
    """Random-weight model from a config, on ``init_device`` or else the ambient default device.

    (Scale presets once defaulted to ``meta``, which made ``vla bench --scale pi0`` and training
    from a scale preset fail with "Cannot copy out of meta tensor" when the policy moved to its device.)
    """
    device = cfg.init_device or torch.get_default_device()
    with torch.device(device):
        return model_cls._from_config(
            config, attn_implementation=cfg.attn_implementation, dtype=getattr(torch, cfg.dtype or dtype or "float32")
        )


def load_pretrained(cfg: VLMConfig, model_cls: type, architecture: str | None = None, **processor_kwargs):
    """(model, processor) from a directory or hub id.

    ``architecture`` (a checkpoint's ``backbone/`` folder, written by ``save_architecture``): the
    saved model config built with random weights, which the checkpoint's own weights then replace;
    nothing is fetched. Otherwise ``cfg.pretrained``: real ``from_pretrained`` of model and processor.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    if architecture is not None:
        config = AutoConfig.from_pretrained(architecture)
        saved = str(getattr(config, "dtype", None) or "float32").removeprefix("torch.")  # the dtype it was saved in
        model = instantiate(cfg, model_cls, config, dtype=saved)
        return model, AutoProcessor.from_pretrained(architecture, **processor_kwargs)
    kwargs = {"attn_implementation": cfg.attn_implementation}
    if cfg.dtype is not None:
        kwargs["dtype"] = getattr(torch, cfg.dtype)
    model = AutoModelForImageTextToText.from_pretrained(cfg.pretrained, **kwargs)
    return model, AutoProcessor.from_pretrained(cfg.pretrained, **processor_kwargs)


# ----------------------------------------------------------------------------- the shared wrapper


class VLMBackbone(Backbone):
    """A transformers VLM behind the Backbone contract. Family subclasses fill the hooks at the bottom.

    Token layout of one sample (T0 = N * len(camera block) + max_text_tokens, plus 1 with a state token):
    ``[camera block] * N  [text prefix ids, instruction, text suffix ids, pad ...]  [state]``.
    Padding sits inside the sequence; the mask and the positions (which skip masked tokens) make
    that equivalent to left-packed sequences.
    """

    def __init__(
        self,
        cfg: VLMConfig,
        model: nn.Module,
        processor,
        *,
        lm: nn.Module,
        text_config,
        state_dim: int,
        num_cameras: int,
        image_size: int,
        image_mean: list[float],
        image_std: list[float],
        image_token_id: int,
        camera_ids: list[int],
        text_prefix_ids: list[int],
        default_prompt: str,
        bidirectional_default: bool,
        position_offset: int = 0,
    ):
        super().__init__()
        self.cfg = cfg
        self.model = model
        self.processor = processor  # kept for save_pretrained and the tokenizer
        self.tokenizer = processor.tokenizer
        self.lm = lm
        self.state_dim = state_dim
        self.num_cameras = num_cameras
        self.image_size = image_size
        self.image_token_id = image_token_id
        self.camera_ids = list(camera_ids)
        self.text_prefix_ids = list(text_prefix_ids)  # tokens the tokenizer itself would add (PaliGemma's BOS)
        self.prompt = lookup_prompt(cfg.prompt or default_prompt)
        self.position_offset = position_offset if cfg.position_offset is None else cfg.position_offset
        self.bidirectional_prefix = (
            bidirectional_default if not cfg.prefix_attention else cfg.prefix_attention == "bidirectional"
        )
        if cfg.max_text_tokens - len(self.text_prefix_ids) < 1:
            raise ValueError(f"max_text_tokens={cfg.max_text_tokens} leaves no room for the instruction")
        if cfg.rope_theta is not None:
            set_rope_theta(lm, text_config, cfg.rope_theta)
        self.rope_theta = rope_theta_of(lm.config)
        self.width = text_config.hidden_size
        self.num_heads = text_config.num_attention_heads
        self.num_kv_heads = text_config.num_key_value_heads
        self.head_dim = getattr(text_config, "head_dim", None) or self.width // self.num_heads
        # some checkpoints ship no pad token; padded slots are masked, so any id works
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        device = next(model.parameters()).device
        self.register_buffer("image_mean", torch.tensor(image_mean, device=device), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std, device=device), persistent=False)
        dtype = next(model.parameters()).dtype
        self.state_proj = (
            nn.Linear(state_dim, self.width, device=device, dtype=dtype) if cfg.state_mode == "token" else None
        )

        if cfg.num_layers is not None:
            truncate_layers(lm, [text_config, lm.config], cfg.num_layers)
        self.num_layers = len(lm.layers)
        if cfg.freeze_vlm:
            model.requires_grad_(False)
        elif cfg.freeze_vision:
            for m in self.vision_modules():
                m.requires_grad_(False)
        if cfg.lora_rank > 0:
            add_lora(lm, cfg.lora_rank, cfg.lora_alpha)
            model.lm_head.requires_grad_(False)  # an untied head (SmolVLM) is base weight too
        if cfg.gradient_checkpointing:
            enable_checkpointing(model)

    # ------------------------------------------------------------------ contract

    def prepare_inputs(self, images, image_mask, instruction, state=None, state_mask=None):
        dims = check_shape("images", images, "B N 3 Hi Wi")
        check_shape("image_mask", image_mask, "B N", B=dims["B"], N=dims["N"])
        if len(instruction) != dims["B"]:
            raise ValueError(f"instruction: expected {dims['B']} strings, got {len(instruction)}")
        text_ids, text_mask = self.text_ids(self.prompts(instruction, state, state_mask))
        device = images.device
        return self.assemble_inputs(
            images, image_mask, torch.tensor(text_ids, device=device), torch.tensor(text_mask, device=device)
        )

    def text_ids(self, prompts: list[str]) -> tuple[list[list[int]], list[list[bool]]]:
        """Prompts -> token ids and mask, each ``max_text_tokens`` long (the tokenizer's leading ids first)."""
        text_ids, text_mask = [], []
        # split_special_tokens: an instruction that spells a special token ("<image>") is read as text; as a
        # token it would change the number of image placeholders and break the whole batch it is in.
        tokens = self.tokenizer(prompts, add_special_tokens=False, split_special_tokens=True)
        for words in tokens["input_ids"]:
            text = (self.text_prefix_ids + words)[: self.cfg.max_text_tokens]
            pad = self.cfg.max_text_tokens - len(text)
            text_ids.append(text + [self.pad_id] * pad)
            text_mask.append([True] * len(text) + [False] * pad)
        return text_ids, text_mask

    def assemble_inputs(self, images, image_mask, text_ids, text_mask) -> dict[str, torch.Tensor]:
        """Tensors only (what an exported graph runs): images (B, N, 3, Hi, Wi) in [0, 1], image_mask (B, N),
        the text's ids and mask (B, max_text_tokens) -> the model's inputs (pixels, ids, attention mask)."""
        B, N = image_mask.shape
        image_mask = image_mask.bool()
        images = images * image_mask[:, :, None, None, None].to(images.dtype)  # missing camera -> black image
        flat = rearrange(images, "b n c h w -> (b n) c h w")
        flat = resize_images(flat, self.image_size, self.cfg.image_resize)
        pixels = (flat - self.image_mean.view(1, -1, 1, 1)) / self.image_std.view(1, -1, 1, 1)  # (B*N, 3, S, S)
        inputs = self.pixel_inputs(pixels)
        cam_ids = torch.tensor(self.camera_ids * N, device=images.device).expand(B, -1)  # (B, N*C)
        cam_mask = image_mask.repeat_interleave(len(self.camera_ids), dim=1)  # (B, N*C)
        inputs["input_ids"] = torch.cat([cam_ids, text_ids.to(cam_ids.dtype)], 1)  # (B, T0)
        inputs["attention_mask"] = torch.cat([cam_mask, text_mask.bool()], 1)  # (B, T0)
        return inputs

    def prompts(self, instruction: list[str], state=None, state_mask=None) -> list[str]:
        """The text of each sample, in the backbone's prompt format (the state, normalized, if it reads it).

        Each instruction is cut to ``MAX_CHARS_PER_TOKEN`` characters per text token first: only the first
        ``max_text_tokens`` tokens are read, and tokenizing a megabyte to keep 48 tokens would stall a batch."""
        limit = MAX_CHARS_PER_TOKEN * self.cfg.max_text_tokens
        instruction = [task[:limit] for task in instruction]
        if not self.prompt.uses_state:
            return [self.prompt.render(task, None) for task in instruction]
        if state is None:
            raise ValueError(f"state_mode='prompt' ({self.cfg.prompt}): prepare_inputs needs the normalized state")
        check_shape("state", state, "B S", B=len(instruction))
        states = discretize_state(state, state_mask)
        return [self.prompt.render(task, s) for task, s in zip(instruction, states, strict=True)]

    def encode(
        self,
        inputs,
        state=None,
        *,
        with_kv=False,
        suffix_embeds=None,
        suffix_mask=None,
        use_cache=False,
        state_mask=None,
        suffix_block=0,
    ):
        ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
        B = ids.shape[0]
        x = self.embed_tokens(ids)  # (B, T0, W)
        feats = self.image_features(inputs).to(x.dtype)  # (B*N, n, W)
        num_cams = (ids.shape[1] - self.cfg.max_text_tokens) // len(self.camera_ids)
        per_cam = self.camera_ids.count(self.image_token_id)
        if feats.shape[:2] != (B * num_cams, per_cam):  # checked from shapes: no host sync
            raise ValueError(
                f"input_ids (B={B}, T0={ids.shape[1]}) hold {num_cams} camera(s) x {per_cam} image tokens, "
                f"but the vision tower gave {tuple(feats.shape)}"
            )
        x = x.masked_scatter((ids == self.image_token_id)[..., None], feats)  # camera-major, token order
        if self.cfg.scale_embeddings:
            x = x * math.sqrt(self.width)

        if state is not None:
            check_shape("state", state, "B S", B=B, S=self.state_dim)
            state_mask = torch.ones_like(state, dtype=torch.bool) if state_mask is None else state_mask.bool()
        if self.state_proj is not None:
            if state is None:
                raise ValueError("state_mode='token' needs the state (B, S); got None")
            token = self.state_proj((state * state_mask).to(x.dtype))[:, None]  # (B, 1, W)
            x = torch.cat([x, token], 1)
            ids = torch.cat([ids, ids.new_full((B, 1), self.pad_id)], 1)
            mask = torch.cat([mask, mask.new_ones(B, 1)], 1)
        pos = self.position_ids(ids, mask, inputs)  # (B, Tp) or (3, B, Tp)
        next_pos = pos.masked_fill(~mask, 0).amax(-1) + 1  # (B,) or (3, B)
        if next_pos.ndim == 2:
            next_pos = next_pos.amax(0)  # Qwen: text after vision continues after the largest of t/h/w

        full_mask, s_mask = mask, None
        if suffix_embeds is not None:
            Ts = check_shape("suffix_embeds", suffix_embeds, "B Ts W", B=B, W=self.width)["Ts"]
            s_mask = torch.ones(B, Ts, dtype=torch.bool, device=x.device) if suffix_mask is None else suffix_mask
            check_shape("suffix_mask", s_mask, "B Ts", B=B, Ts=Ts)
            s_mask = s_mask.bool()
            x = torch.cat([x, suffix_embeds.to(x.dtype)], 1)
            s_pos = next_pos[:, None] + torch.arange(Ts, device=x.device)  # (B, Ts)
            pos = torch.cat([pos, s_pos.expand(pos.shape[:-1] + (Ts,))], -1)
            next_pos = next_pos + Ts
            full_mask = torch.cat([mask, s_mask], 1)

        state_tokens = 1 if self.state_proj is not None else 0
        attn = build_attention_mask(
            mask, s_mask, self.bidirectional_prefix, x.dtype, causal_tail=state_tokens, suffix_block=suffix_block
        )
        checkpointing = self.training and any(
            getattr(layer, "gradient_checkpointing", False) for layer in self.lm.layers
        )
        if use_cache and checkpointing:
            raise RuntimeError("use_cache is for inference: transformers drops the cache under gradient checkpointing")
        keys = values = None
        if with_kv and checkpointing:  # no cache under checkpointing: recompute K/V from each layer's input
            out, keys, values = self._forward_recording_kv(x, attn, pos)
        else:
            need_cache = with_kv or use_cache
            cache = DynamicCache(config=self.lm.config) if need_cache else None
            out = self.lm(
                inputs_embeds=x, attention_mask=attn, position_ids=pos, past_key_values=cache, use_cache=need_cache
            )
            if with_kv:
                keys = [layer.keys for layer in cache.layers]  # L x (B, K, T, Dh)
                values = [layer.values for layer in cache.layers]
        extras = {"cache": cache, "kv_mask": full_mask, "next_pos": next_pos} if use_cache else {}
        return Prefix(out.last_hidden_state, full_mask, keys, values, state, state_mask, extras, next_pos=next_pos)

    def camera_features(self, prefix, num_cameras):
        C = len(self.camera_ids)  # the prefix starts with the cameras: N blocks of camera_ids, camera-major
        tokens = rearrange(prefix.hidden[:, : num_cameras * C], "b (n c) w -> b n c w", n=num_cameras)
        at = [j for j, i in enumerate(self.camera_ids) if i == self.image_token_id]
        if at != list(range(at[0], at[-1] + 1)):  # one run of image tokens per camera in every family so far
            raise NotImplementedError(f"{type(self).__name__}: a camera's image tokens are not one run")
        present = prefix.mask[:, : num_cameras * C].view(-1, num_cameras, C)[..., 0, None]  # (B, N, 1)
        return tokens[:, :, at[0] : at[-1] + 1].mean(2) * present.to(tokens.dtype)  # (B, N, W)

    def _forward_recording_kv(self, x, attn, pos):
        """LM forward that also returns per-layer K/V (after rotary), without a cache.

        Under gradient checkpointing transformers disables the KV cache, yet a pi0-style head
        needs K/V with gradients in training. Each decoder layer's input is recorded by a
        pre-hook (removed before backward), and K/V are recomputed from it outside the
        checkpointed region exactly as the attention module does: k_proj(input_layernorm(h)),
        then the standard rotate-half rotary with the LM's own cos/sin (3-D for Qwen).
        """
        inputs: dict[int, torch.Tensor] = {}

        def record(i):
            def hook(module, args, kwargs):
                inputs[i] = args[0] if args else kwargs["hidden_states"]

            return hook

        hooks = [layer.register_forward_pre_hook(record(i), with_kwargs=True) for i, layer in enumerate(self.lm.layers)]
        try:
            out = self.lm(inputs_embeds=x, attention_mask=attn, position_ids=pos, use_cache=False)
        finally:
            for h in hooks:
                h.remove()
        cos, sin = self.lm.rotary_emb(x, pos)  # (B, T, Dh) each
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, Dh)
        keys, values = [], []
        for i, layer in enumerate(self.lm.layers):
            h = layer.input_layernorm(inputs[i])
            k = rearrange(layer.self_attn.k_proj(h), "b t (k d) -> b k t d", d=self.head_dim)
            v = rearrange(layer.self_attn.v_proj(h), "b t (k d) -> b k t d", d=self.head_dim)
            k1, k2 = k.chunk(2, dim=-1)
            keys.append(k * cos + torch.cat([-k2, k1], -1) * sin)  # (B, K, T, Dh)
            values.append(v)
        return out, keys, values

    def decode_step(self, prefix, token_embeds, step_mask):
        check_shape("token_embeds", token_embeds, "B 1 W", W=self.width)
        return self.decode_block(prefix, token_embeds, step_mask, keep=True)

    def decode_block(self, prefix, block_embeds, block_mask=None, *, keep=False):
        if "cache" not in prefix.extras:
            raise KeyError("decode_block needs a Prefix from encode(..., use_cache=True); extras has no 'cache'")
        dims = check_shape("block_embeds", block_embeds, "B Tb W", W=self.width)
        B, Tb = dims["B"], dims["Tb"]
        block_mask = block_embeds.new_ones(B, Tb, dtype=torch.bool) if block_mask is None else block_mask.bool()
        check_shape("block_mask", block_mask, "B Tb", B=B, Tb=Tb)
        kv_mask, next_pos, cache = prefix.extras["kv_mask"], prefix.extras["next_pos"], prefix.extras["cache"]
        if not keep and not cache.is_croppable:
            raise RuntimeError(
                f"{type(self).__name__}: this cache cannot be rolled back, so decode_block needs keep=True"
            )
        # each block query sees the real cached keys, the block's real keys both ways, and itself
        keys_real = torch.cat([kv_mask[:, None, :].expand(B, Tb, -1), block_mask[:, None, :].expand(B, Tb, Tb)], 2)
        keys_real[:, :, kv_mask.shape[1] :] |= torch.eye(Tb, dtype=torch.bool, device=block_mask.device)
        attn = torch.zeros(B, 1, Tb, keys_real.shape[2], dtype=block_embeds.dtype, device=block_embeds.device)
        attn = attn.masked_fill(~keys_real[:, None], torch.finfo(block_embeds.dtype).min)
        pos = self.step_positions(next_pos) + torch.arange(Tb, device=block_embeds.device)  # (B, Tb) or (3, B, Tb)
        out = self.lm(
            inputs_embeds=block_embeds, attention_mask=attn, position_ids=pos, past_key_values=cache, use_cache=True
        )
        if keep:
            prefix.extras["kv_mask"] = torch.cat([kv_mask, block_mask], 1)
            prefix.extras["next_pos"] = next_pos + Tb
        else:
            cache.crop(-Tb)  # the cache as it was: the next round scores another block against the same prefix
        return out.last_hidden_state  # (B, Tb, W)

    def embed_tokens(self, ids):
        return self.lm.get_input_embeddings()(ids)

    def lm_logits(self, hidden, ids: torch.Tensor | None = None):
        """(B, T, W) -> (B, T, V) logits, or (B, T, len(ids)) over the given vocabulary rows only.

        ``ids`` saves the full-vocabulary product when a head reads a few hundred action tokens
        out of a 257k vocabulary (PaliGemma: ~2.9 GB of float32 logits at batch 8, chunk 50).
        """
        head = self.model.lm_head
        if ids is None:
            return head(hidden)
        bias = head.bias.index_select(0, ids) if getattr(head, "bias", None) is not None else None
        return F.linear(hidden, head.weight.index_select(0, ids), bias)

    @property
    def vocab_size(self) -> int:
        weight = self.model.lm_head.weight
        return getattr(weight, "ds_shape", weight.shape)[0]  # under ZeRO-3 init the tensor itself is empty

    def save_pretrained(self, path) -> None:
        """Model + processor in HF format, loadable through ``pretrained=path`` (the state token is not included)."""
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)

    def save_architecture(self, path) -> None:
        """Model config and processor, no weights: what ``build(..., architecture=path)`` needs offline."""
        self.model.config.save_pretrained(path)
        self.processor.save_pretrained(path)

    # ------------------------------------------------------------------ family hooks

    def vision_modules(self) -> list[nn.Module]:
        """Vision tower and projector: what ``freeze_vision`` freezes."""
        raise TypeError(f"{type(self).__name__} must implement vision_modules()")

    def pixel_inputs(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B*N, 3, S, S) normalized -> the model's pixel inputs (default: as they are)."""
        return {"pixel_values": pixels}

    def image_features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pixel inputs -> (B*N, n, W) features in the LM's width, one row block per camera."""
        raise TypeError(f"{type(self).__name__} must implement image_features()")

    def position_ids(self, ids: torch.Tensor, mask: torch.Tensor, inputs: dict) -> torch.Tensor:
        """1-D rotary positions that skip masked tokens: (B, T)."""
        return (mask.long().cumsum(-1) - 1).clamp(min=0) + self.position_offset

    def step_positions(self, next_pos: torch.Tensor) -> torch.Tensor:
        return next_pos[:, None]  # (B, 1)
