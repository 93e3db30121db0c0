"""Discrete diffusion over action tokens (the bins head's ``decoding="diffusion"``, vla/models/heads/masked_diffusion.py).

The contract, padding and state tests run on it through the ``bins-diffusion`` variant of test_heads.py;
here: the bidirectional action block (backbone and head), its cached decoding, the schedule, the
equivalence of T = L rounds with one-token-at-a-time greedy decoding, overfitting, and config errors.
"""

from __future__ import annotations

import pytest
import torch
from test_heads import FAMILIES, D, H, build_head, demo, make_prefix_fn, tiny_backbone, train

from vla.models.heads import BinsHeadConfig, FastHeadConfig
from vla.models.heads.discrete import reserved_token_ids
from vla.models.heads.masked_diffusion import MASKED, training_mask, unmask_schedule

L = H * D  # tokens per chunk


def diffusion_head(backbone, **overrides):
    return build_head("bins", backbone, decoding="diffusion", **overrides)


def test_unmask_schedule():
    assert unmask_schedule(12, 12) == list(range(11, -1, -1))  # T = L: one token per round
    assert unmask_schedule(12, 40) == list(range(11, -1, -1))  # T is capped at L
    assert unmask_schedule(12, 1) == [0]
    # the cosine rule itself where no clamp applies: floor(L * cos(pi/2 * k/T))
    assert unmask_schedule(350, 12) == [347, 338, 323, 303, 277, 247, 213, 175, 133, 90, 45, 0]
    for length, rounds in ((7, 3), (12, 5), (50, 12)):
        s = unmask_schedule(length, rounds)
        assert s[-1] == 0 and all(a > b for a, b in zip([length, *s], s, strict=False)), s


def test_training_mask_per_sample_and_never_padding():
    real = torch.ones(3, L, dtype=torch.bool)
    real[1, -4:] = False  # padded tokens
    gens = [torch.Generator().manual_seed(s) for s in (4, 5, 6)]
    masked = training_mask(real, gens)
    assert not (masked & ~real).any() and (masked.sum(1) >= 1).all()
    # row 1 drawn from its own generator alone: the same mask whatever shares its batch
    alone = training_mask(real[1:2], [torch.Generator().manual_seed(5)])
    assert torch.equal(alone[0], masked[1])
    # the ratios cover (0, 1]: over many rows, from one masked token to all of them
    many = training_mask(torch.ones(400, L, dtype=torch.bool), torch.Generator().manual_seed(0)).sum(1)
    assert many.min() <= 2 and many.max() == L and 0.55 * L < many.float().mean() < 0.75 * L  # E[cos] = 2/pi


@pytest.mark.parametrize("family", FAMILIES)
def test_decode_block_equals_bidirectional_suffix(family):
    """decode_block against the cached prefix gives the numbers of one full pass with suffix_block, leaves the
    cache as it was, and the block is bidirectional (suffix_block=0 keeps it causal)."""
    bb = tiny_backbone(family)
    batch = demo(2)
    inputs = bb.prepare_inputs(batch["images"], batch["image_mask"], batch["instruction"])
    g = torch.Generator().manual_seed(0)
    head_tok, block = torch.randn(2, 1, bb.width, generator=g), torch.randn(2, 5, bb.width, generator=g)
    with torch.no_grad():
        full = bb.encode(inputs, batch["state"], suffix_embeds=torch.cat([head_tok, block], 1), suffix_block=5).hidden
        prefix = bb.encode(inputs, batch["state"], suffix_embeds=head_tok, use_cache=True)
        cached = prefix.extras["cache"].get_seq_length()
        first = bb.decode_block(prefix, block)
        again = bb.decode_block(prefix, block)
    torch.testing.assert_close(first, full[:, -5:], atol=1e-5, rtol=1e-5)
    assert torch.equal(first, again) and prefix.extras["cache"].get_seq_length() == cached
    changed = block.clone()
    changed[:, -1] += 1.0
    with torch.no_grad():
        both_ways = bb.encode(inputs, batch["state"], suffix_embeds=torch.cat([head_tok, changed], 1), suffix_block=5)
        causal = bb.encode(inputs, batch["state"], suffix_embeds=torch.cat([head_tok, changed], 1)).hidden
        causal_before = bb.encode(inputs, batch["state"], suffix_embeds=torch.cat([head_tok, block], 1)).hidden
    assert not torch.allclose(both_ways.hidden[:, -5], full[:, -5])  # the first block token sees the last
    torch.testing.assert_close(both_ways.hidden[:, :-5], full[:, :-5])  # nothing before the block sees it
    torch.testing.assert_close(causal[:, -5], causal_before[:, -5])  # a causal suffix: it does not


@pytest.mark.parametrize("decoding", ["autoregressive", "diffusion"])
def test_action_block_is_bidirectional(decoding):
    """Through the head's loss: changing a later action token changes the logits of earlier positions with
    decoding=diffusion, and leaves them alone with autoregressive teacher forcing."""
    bb = tiny_backbone("smolvlm")
    batch = demo(2)
    head = build_head("bins", bb, decoding=decoding)
    later = L - 2  # token (step H-1, dim D-2)
    real = torch.ones(2, L, dtype=torch.bool)
    seed = next(s for s in range(100) if not training_mask(real, generators(s))[:, later].any())  # it is visible

    def logits(actions):
        recorded = []
        prefix_fn = make_prefix_fn(bb, batch)
        head.loss(
            lambda **kw: recorded.append(prefix_fn(**kw)) or recorded[-1],
            dict(batch, actions=actions, generators=generators(seed)),
        )
        return head._action_logits(recorded[0].hidden[:, -L:])  # (B, L, n_bins)

    changed = batch["actions"].clone()
    changed[:, H - 1, D - 2] = -0.95  # another bin than the demo's (within +-0.6)
    with torch.no_grad():
        before, after = logits(batch["actions"]), logits(changed)
    if decoding == "diffusion":
        assert not torch.allclose(before[:, 0], after[:, 0], atol=1e-4)
    else:  # position p predicts token p from tokens < p: positions <= later never read token `later`
        torch.testing.assert_close(before[:, : later + 1], after[:, : later + 1])
        assert not torch.allclose(before[:, later + 1], after[:, later + 1], atol=1e-4)


def generators(seed: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed * 10 + i) for i in range(2)]


def greedy_one_at_a_time(head, prefix_fn, batch) -> list[torch.Tensor]:
    """The reference: L full passes (no cache), each committing the single most confident masked position's
    argmax. Returns the committed tokens after each commit."""
    start = head._start_embeds(batch["state"] if head.state_token is not None else None, batch["state_mask"], 2)
    tokens = torch.full((2, L), MASKED, dtype=torch.long)
    out = []
    for _ in range(L):
        ids = torch.where(tokens == MASKED, head.mask_id, head.action_ids[tokens.clamp(min=0)])
        hidden = prefix_fn(suffix_embeds=torch.cat([start, head._embed(ids)], 1), suffix_block=L).hidden[:, -L:]
        confidence, guess = head._action_logits(hidden).softmax(-1).max(-1)  # (B, L)
        pos = confidence.masked_fill(tokens != MASKED, -1.0).argmax(1)  # (B,)
        rows = torch.arange(2)
        tokens = tokens.clone()
        tokens[rows, pos] = guess[rows, pos]
        out.append(tokens)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_T_equals_L_without_remasking_is_greedy_one_at_a_time(family):
    """T = L rounds and no re-masking = sequential greedy decoding, most confident position first: the same
    token committed at the same position after every round (so also the same order and final chunk), the
    parallel decoder on the cached prefix against the reference on full uncached passes."""
    torch.manual_seed(0)
    bb = tiny_backbone(family)
    batch = demo(2)
    head = diffusion_head(bb)
    prefix_fn = make_prefix_fn(bb, batch)
    train(head, bb, prefix_fn, batch, steps=5, lr=2e-3)  # a few steps: confidences no longer near-uniform
    with torch.no_grad():
        tokens, history = head.decode_tokens(prefix_fn, batch, rounds=L)
        reference = greedy_one_at_a_time(head, prefix_fn, batch)
    assert history.shape == (2, L, L)
    for k, expected in enumerate(reference):
        assert torch.equal(history[:, k], expected), f"round {k + 1}: {history[:, k]} != {expected}"
    assert torch.equal(tokens, reference[-1])
    torch.testing.assert_close(head.sample(prefix_fn, batch, num_steps=L), head._detokenize(tokens.numpy()))


@pytest.mark.parametrize("remask", ["none", "soft"])
def test_diffusion_overfit(remask):
    """A trained demo decodes back within half a bin at T = 12 (capped at L), 4 and 1 rounds."""
    torch.manual_seed(0)
    bb = tiny_backbone("smolvlm")
    demo_batch = demo(2)
    # 4 copies of the 2 demos: 4 mask draws per demo and step. Measured: 60 steps at 1 copy leave bins wrong,
    # 60 steps at 4 copies one bin in 1 seed of 5, 100 steps at 4 copies none in 6 seeds
    batch = {k: (v * 4 if isinstance(v, list) else v.repeat(4, *[1] * (v.ndim - 1))) for k, v in demo_batch.items()}
    head = diffusion_head(bb, remask=remask)
    train(head, bb, make_prefix_fn(bb, batch), batch, steps=100, lr=2e-3)
    prefix_fn = make_prefix_fn(bb, demo_batch)
    for rounds in (12, 4, 1):
        err = (head.sample(prefix_fn, demo_batch, num_steps=rounds) - demo_batch["actions"]).abs()
        assert err.max() <= head.tokenizer.bin_width / 2 + 1e-6, (rounds, err.max())


def test_mask_token_is_reserved_and_action_ids_unchanged():
    for family in FAMILIES:
        bb = tiny_backbone(family)
        ar, dd = build_head("bins", bb), diffusion_head(bb)
        assert torch.equal(ar.action_ids, dd.action_ids) and torch.equal(ar.start_id, dd.start_id)
        mask_id = int(dd.mask_id)
        assert mask_id not in reserved_token_ids(bb) and mask_id not in set(dd.action_ids.tolist()) | {int(dd.start_id)}


def test_config_errors_name_the_option():
    with pytest.raises(ValueError, match=r"decoding='diffusion' is not supported by the fast head"):
        FastHeadConfig(decoding="diffusion")
    with pytest.raises(ValueError, match="decoding must be"):
        BinsHeadConfig(decoding="masked")
    with pytest.raises(ValueError, match="remask must be"):
        BinsHeadConfig(decoding="diffusion", remask="threshold")
    with pytest.raises(ValueError, match="diffusion_steps must be >= 1"):
        BinsHeadConfig(decoding="diffusion", diffusion_steps=0)
    FastHeadConfig(decoding="autoregressive")  # the default stays valid
