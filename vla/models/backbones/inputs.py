"""What a VLM is fed: images resized its way, the attention mask of a prefix (and suffix), the tokenizer's own ids.

Pure functions of tensors and tokenizers, shared by every backbone family (``common.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGE_RESIZE_MODES = ("stretch", "pad", "pad_top_left")


def resize_images(images: torch.Tensor, size: int, mode: str = "stretch") -> torch.Tensor:
    """(M, 3, Hi, Wi) in [0, 1] -> (M, 3, size, size) in [0, 1]; images already at that size pass unchanged.

    ``stretch``: bicubic with antialiasing, what the torchvision backends of the HF image processors
    do (the clamp mimics their uint8 round trip: bicubic overshoots). ``pad``: openpi's
    ``resize_with_pad`` (pi0, pi0.5): bilinear to fit, aspect kept, black padding centred.
    ``pad_top_left``: SmolVLA's variant, padding on the top and left.
    """
    if images.shape[-2:] == (size, size):
        return images
    dtype = images.dtype  # antialiased bicubic has no bf16 kernel on CPU: resize in fp32
    images = images.float()
    if mode == "stretch":
        out = F.interpolate(images, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        return out.clamp(0.0, 1.0).to(dtype)
    h, w = images.shape[-2:]
    ratio = max(w / size, h / size)
    rh, rw = int(h / ratio), int(w / ratio)
    out = F.interpolate(images, size=(rh, rw), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    if mode == "pad":
        top, left = (size - rh) // 2, (size - rw) // 2
        pad = (left, size - rw - left, top, size - rh - top)
    else:
        pad = (size - rw, 0, size - rh, 0)
    return F.pad(out, pad, value=0.0).to(dtype)


def build_attention_mask(
    prefix_mask: torch.Tensor,
    suffix_mask: torch.Tensor | None,
    bidirectional: bool,
    dtype: torch.dtype,
    causal_tail: int = 0,
    suffix_block: int = 0,
) -> torch.Tensor:
    """Additive mask (B, 1, T, T), T = Tp + Ts: 0 where attention is allowed, dtype-min elsewhere.

    Prefix queries see real prefix keys (all of them if ``bidirectional``, else earlier ones);
    the last ``causal_tail`` prefix tokens (the state token) are not seen by the tokens before
    them but see them all, as pi0 and SmolVLA make the state a block of its own. Suffix
    query i sees every real prefix key, earlier real suffix keys and itself; the last
    ``suffix_block`` suffix tokens also see each other both ways (a bidirectional block after a
    causal suffix: the action block of discrete diffusion), and no earlier token sees them.
    Every token sees itself, so padded rows stay finite. Additive (not bool) so eager and sdpa agree.
    """
    B, Tp = prefix_mask.shape
    Ts = 0 if suffix_mask is None else suffix_mask.shape[1]
    T = Tp + Ts
    idx = torch.arange(T, device=prefix_mask.device)
    causal = idx[None, :] <= idx[:, None]  # (T, T) key j <= query i
    key_real = prefix_mask if suffix_mask is None else torch.cat([prefix_mask, suffix_mask], 1)  # (B, T)
    allowed = key_real[:, None, :] & causal[None]  # (B, T, T)
    if bidirectional:
        head = Tp - causal_tail
        allowed[:, :head, :head] = prefix_mask[:, None, :head].expand(B, head, head)
    if not 0 <= suffix_block <= Ts:
        raise ValueError(f"suffix_block={suffix_block} must lie in [0, {Ts}] (the suffix length)")
    if suffix_block:
        allowed[:, T - suffix_block :, T - suffix_block :] = key_real[:, None, T - suffix_block :]
    allowed |= torch.eye(T, dtype=torch.bool, device=prefix_mask.device)[None]
    out = torch.zeros(B, 1, T, T, dtype=dtype, device=prefix_mask.device)
    return out.masked_fill(~allowed[:, None], torch.finfo(dtype).min)


def leading_special_ids(tokenizer) -> list[int]:
    """The ids a tokenizer puts before any text by itself (a BOS), which LeRobot's processors keep:
    they tokenize with ``add_special_tokens=True``."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    return full[: len(full) - len(plain)] if full[len(full) - len(plain) :] == plain else []
