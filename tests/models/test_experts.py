"""Expert styles of the flow head (dit, gemma, smolvla) on every tiny backbone: contract, masks, conditioning.

Registered styles are picked up from the registry, so a new style is tested without edits here.
Exactness against LeRobot's pi0, pi0.5 and SmolVLA is in tests/interop/.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_heads import FAMILIES, D, H, demo, make_prefix_fn, tiny_backbone, train

from vla.models.heads import HeadConfig
from vla.models.heads.experts import ExpertConfig, suffix_self_mask
from vla.registry import lookup

STYLES = sorted(ExpertConfig.get_known_choices())


def flow_head(backbone, style: str, **kw):
    cfg = lookup(HeadConfig, "flow")(expert=lookup(ExpertConfig, style)(), **kw)
    return cfg.build(backbone, H, D)


def test_styles_registered():
    assert {"dit", "gemma", "smolvla"} <= set(STYLES)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("style", STYLES)
def test_every_style_trains_on_every_backbone(style, family):
    """Loss finite, chunk (B, H, D) finite, 25 Adam steps cut the loss, with both ways time enters."""
    for conditioning in ("concat", "adaptive"):
        torch.manual_seed(0)
        backbone = tiny_backbone(family, state_mode="head")
        batch = demo(4)
        head = flow_head(backbone, style, time_conditioning=conditioning)
        prefix_fn = make_prefix_fn(backbone, batch)
        chunk = head.sample(prefix_fn, batch, num_steps=2)
        assert chunk.shape == (4, H, D) and torch.isfinite(chunk).all()
        losses = train(head, backbone, prefix_fn, batch, steps=25, lr=2e-3)
        ratio = np.mean(losses[-3:]) / np.mean(losses[:3])
        assert ratio < 0.6, (
            f"{style}/{conditioning} on {family}: {np.mean(losses[:3]):.3f} -> {np.mean(losses[-3:]):.3f}"
        )


def test_suffix_self_mask_blocks():
    m = suffix_self_mask(1, 3, causal_actions=False)
    assert m[0].tolist() == [True, False, False, False]  # the state sees only itself (and the prefix)
    assert m[1:].all()  # actions see the state and every action
    c = suffix_self_mask(0, 3, causal_actions=True)
    assert c.tolist() == [[True, False, False], [True, True, False], [True, True, True]]


@pytest.mark.parametrize("style", STYLES)
def test_state_token_never_sees_the_actions(style):
    """pi0's block mask: the state token's output does not depend on the noisy actions."""
    torch.manual_seed(0)
    backbone = tiny_backbone("paligemma", state_mode="head")
    batch = demo(2)
    head = flow_head(backbone, style).eval()
    with torch.no_grad():
        prefix = make_prefix_fn(backbone, batch)(with_kv=True)
        tokens = torch.randn(2, 1 + H, head.width)
        other = tokens.clone()
        other[:, 1:] += torch.randn_like(other[:, 1:])
        a = head.expert.run_suffix(tokens, prefix, head.self_mask)
        b = head.expert.run_suffix(other, prefix, head.self_mask)
    assert torch.allclose(a[:, 0], b[:, 0], atol=1e-6)
    assert not torch.allclose(a[:, 1:], b[:, 1:])


@pytest.mark.parametrize("style", STYLES)
def test_causal_actions(style):
    """SmolVLA's action mask: an action's output depends on earlier actions only."""
    torch.manual_seed(0)
    backbone = tiny_backbone("smolvlm")
    batch = demo(2)
    head = flow_head(backbone, style, action_attention="causal").eval()
    with torch.no_grad():
        prefix = make_prefix_fn(backbone, batch)(with_kv=True)
        tokens = torch.randn(2, H, head.width)
        other = tokens.clone()
        other[:, -1] += torch.randn_like(other[:, -1])
        a = head.expert.run_suffix(tokens, prefix, head.self_mask)
        b = head.expert.run_suffix(other, prefix, head.self_mask)
    assert torch.allclose(a[:, :-1], b[:, :-1], atol=1e-6)
    assert not torch.allclose(a[:, -1], b[:, -1])


def test_adaptive_conditioning_uses_time_only_through_the_norms():
    """pi0.5: no time MLP on [action ; time]; time changes the output through the adaptive norms."""
    torch.manual_seed(0)
    backbone = tiny_backbone("paligemma")
    head = flow_head(backbone, "gemma", time_conditioning="adaptive").eval()
    assert head.time_mlp_in.in_features == head.width  # pi0.5's time_mlp_in: width -> width
    norms = [m for m in head.expert.modules() if type(m).__name__ == "AdaptiveRMSNorm"]
    assert len(norms) == 2 * backbone.num_layers + 1
    for norm in norms:  # start from a non-trivial modulation (they start at zero weight)
        torch.nn.init.normal_(norm.dense.weight, std=0.1)
    batch = demo(2)
    with torch.no_grad():
        prefix = make_prefix_fn(backbone, batch)(with_kv=True)
        x = torch.randn(2, H, D)
        v0 = head.velocity(prefix, x, torch.full((2,), 0.2))
        v1 = head.velocity(prefix, x, torch.full((2,), 0.8))
    assert not torch.allclose(v0, v1)


def test_smolvla_style_interleaves_cross_attention():
    backbone = tiny_backbone("smolvlm")
    head = flow_head(backbone, "smolvla")
    kinds = [layer.cross for layer in head.expert.layers]
    assert kinds == [i % 2 == 1 for i in range(backbone.num_layers)]
    kv = backbone.num_kv_heads * backbone.head_dim
    assert head.expert.layers[1].self_attn.k_proj.in_features == kv  # projects the VLM's keys
    assert head.expert.layers[0].self_attn.k_proj.in_features == head.width  # projects its own tokens
    # SmolVLA's FFN rule: 4 * (2/3 width) rounded up to a multiple of 256 (720 -> 2048)
    assert lookup(ExpertConfig, "smolvla")().default_ffn(720, 4.0) == 2048
