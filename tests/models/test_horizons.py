"""Mixture of Horizons (vla/models/heads/horizons.py) on the flow and regression heads.

The gate, the balance loss and the consensus rule as pure functions on hand-built inputs; on the heads:
a single horizon [H] is the plain head, padded steps never reach a shorter horizon through attention,
the loss falls, and a consensus prefix reaches the action queue.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_heads import D, H, build_head, demo, make_prefix_fn, tiny_backbone, train

from vla.action_queue import ActionQueue
from vla.models.backbones import BackboneConfig
from vla.models.heads import HeadConfig
from vla.models.heads.experts import ExpertConfig
from vla.models.heads.horizons import (
    MixtureOfHorizonsConfig,
    balance_loss,
    consensus_length,
    disagreement,
    fuse,
    gate_weights,
    repeat_prefix,
    truncated_self_mask,
)
from vla.models.policy import Policy, PolicyConfig

MOH_HEADS = ["regression", "flow"]


def moh(horizons, **kw) -> MixtureOfHorizonsConfig:
    return MixtureOfHorizonsConfig(horizons=horizons, **kw)


def test_gate_weights_sum_to_one_over_the_horizons_reaching_each_step():
    horizons = [1, 3, 4]
    valid = torch.arange(4)[None, :] < torch.tensor(horizons)[:, None]  # (N, H)
    alpha = gate_weights(torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(0)) * 3, valid)  # (B, H, N)
    assert alpha.shape == (5, 4, 3)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(5, 4))
    assert (alpha[:, 1:, 0] == 0).all() and (alpha[:, 3:, 1] == 0).all()  # horizon 1 stops at step 1, 3 at step 3
    assert (alpha[:, :1] > 0).all() and (alpha[:, 3, 2] == 1).all()  # step 4: only horizon 4 reaches it
    per = torch.randn(5, 3, 4, 2)
    torch.testing.assert_close(fuse(per, alpha)[:, 3], per[:, 2, 3])


def test_balance_loss_is_the_cv2_of_gate_usage():
    horizons = [2, 4]
    steps = torch.ones(3, 4)
    collapsed = torch.zeros(3, 4, 2)
    collapsed[..., 1] = 1.0  # every step on horizon 4
    # interval (0, 2]: usage (0, 1): var 0.25 / mean^2 0.25 = 1; interval (2, 4] has one horizon: skipped
    assert balance_loss(collapsed, horizons, steps).item() == pytest.approx(1.0)
    even = torch.full((3, 4, 2), 0.5)
    assert balance_loss(even, horizons, steps).item() == pytest.approx(0.0)
    # usage (0.25, 0.75): var 0.0625 / 0.25 = 0.25; padded steps carry no usage
    mixed = torch.tensor([0.25, 0.75]).expand(3, 4, 2).clone()
    mixed[0, :2] = torch.tensor([1.0, 0.0])
    pad = steps.clone()
    pad[0, :2] = 0
    assert balance_loss(mixed, horizons, pad).item() == pytest.approx(0.25)
    assert balance_loss(collapsed[..., 1:], [4], steps).item() == 0.0


def test_consensus_rule_on_a_hand_built_disagreement_profile():
    horizons = [2, 4, 6, 8]  # steps 1-2 reached by 4 horizons, 3-4 by 3, 5-6 by 2, 7-8 by 1
    dis = torch.tensor(
        [
            [1.0, 1.0, 1.0, 1.0, 1.05, 1.2, 0.1, 0.1],  # thr = 1.1 * 1 = 1.1: step 6 (1.2) stops it -> 5
            [1.0, 1.0, 1.0, 0.9, 0.9, 0.9, 0.9, 0.9],  # agreement to the end, but step 7 has 1 horizon < m=2 -> 6
            [1.0, 1.0, 1.0, 5.0, 0.1, 0.1, 0.1, 0.1],  # step 4 disagrees: only the first n=3 run
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # perfect agreement: as far as m allows
        ]
    )
    k = consensus_length(dis, horizons, ratio=1.1, min_horizons=2, min_steps=3)
    assert k.tolist() == [5, 6, 3, 6]
    assert consensus_length(dis, horizons, 1.1, 1, 3).tolist() == [5, 8, 3, 8]  # m = 1: every step reachable
    assert consensus_length(dis, horizons, 1.1, 1, 3, max_steps=4).tolist() == [4, 4, 3, 4]
    assert consensus_length(dis, horizons, 2.0, 2, 3).tolist()[0] == 6  # r = 2: 1.2 is within 2.2
    assert consensus_length(dis, horizons, 1.1, 2, 12).tolist() == [8] * 4  # n past H: the whole chunk


def test_disagreement_counts_only_reaching_horizons_and_real_dims():
    per = torch.zeros(1, 2, 2, 2)  # (B, N=2, H=2, D=2), horizons [1, 2]
    per[0, 1] = torch.tensor([[1.0, 3.0], [2.0, 5.0]])
    alpha = torch.tensor([[[0.5, 0.5], [0.0, 1.0]]])  # (B, H, N)
    fused = fuse(per, alpha)
    # step 1: fused (0.5, 1.5); |.|_1 to horizon 1: 2, to horizon 2: 2 -> 0.5 * 2 + 0.5 * 2; step 2: one horizon -> 0
    torch.testing.assert_close(disagreement(fused, per, alpha), torch.tensor([[2.0, 0.0]]))
    torch.testing.assert_close(
        disagreement(fused, per, alpha, torch.tensor([[True, False]])), torch.tensor([[0.5, 0.0]])
    )


def test_truncated_mask_hides_padded_steps_as_keys():
    base = torch.ones(5, 5, dtype=torch.bool)  # one state token + H = 4 actions
    mask = truncated_self_mask(base, [2, 4], num_state=1, batch=3)
    assert mask.shape == (6, 5, 5)
    assert mask[0, :, :3].all() and not mask[0, :, 3:].any()  # copy h=2: state + steps 1-2 visible to everyone
    assert mask[1].all() and torch.equal(mask[2], mask[0])  # copy h=4 sees all; sample 1 repeats sample 0


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="strictly increasing"):
        moh([4, 2])
    with pytest.raises(ValueError, match="must equal policy.chunk_size=4"):
        build_head("regression", tiny_backbone("smolvlm"), moh=moh([2, 3]))
    with pytest.raises(ValueError, match="consensus_min_horizons=5 exceeds the 2 horizons"):
        build_head("regression", tiny_backbone("smolvlm"), moh=moh([2, 4], consensus=True, consensus_min_steps=2))
    with pytest.raises(ValueError, match="mean_flow and moh.horizons do not combine"):
        build_head("flow", tiny_backbone("smolvlm"), moh=moh([2, 4]), mean_flow=True)
    with pytest.raises(ValueError, match="consensus needs moh.horizons"):
        build_head("regression", tiny_backbone("smolvlm"), moh=MixtureOfHorizonsConfig(consensus=True))


@pytest.mark.parametrize("head_type", MOH_HEADS)
def test_single_horizon_is_the_plain_head(head_type):
    """Horizons [H]: the gate has one choice, so the fused chunk is the plain head's with the same weights, and
    the loss is the plain loss times (1 + individual_weight) (L_mix and L^(H) both equal it; L_bal = 0)."""
    torch.manual_seed(0)
    backbone = tiny_backbone("smolvlm")
    batch = demo(2)
    batch["action_pad"][0, -1] = True
    plain = build_head(head_type, backbone)
    single = build_head(head_type, backbone, moh=moh([H], individual_weight=0.5))
    missing = single.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["moh.gate.weight", "moh.gate.bias"]
    with torch.no_grad():
        single.moh.gate.weight.normal_()  # any gate: softmax over one horizon is 1
    prefix_fn = make_prefix_fn(backbone, batch)
    noise = torch.randn(2, H, D)
    torch.testing.assert_close(
        single.sample(prefix_fn, {"noise": noise}), plain.sample(prefix_fn, {"noise": noise}), atol=1e-5, rtol=1e-5
    )
    fixed = dict(batch, noise=noise, time=torch.tensor([0.3, 0.8]))
    plain_loss, _ = plain.loss(prefix_fn, fixed)
    loss, metrics = single.loss(prefix_fn, fixed)
    torch.testing.assert_close(loss, 1.5 * plain_loss, atol=1e-6, rtol=1e-5)
    assert metrics["moh_balance"] == 0
    details = single.sample_details(prefix_fn, {"noise": noise})
    assert details.horizon_chunks.shape == (2, 1, H, D) and (details.gates == 1).all()


@pytest.mark.parametrize(("head_type", "expert"), [("regression", None), ("flow", "dit"), ("flow", "gemma")])
def test_padded_steps_never_reach_a_shorter_horizon(head_type, expert):
    """Copy h=2 of a [2, 4] mixture: what sits in its steps 3-4 (the regression queries, the flow head's noisy
    actions, which are not zeroed) changes nothing it predicts for steps 1-2 (they are hidden from attention),
    while the full horizon does see them."""
    torch.manual_seed(0)
    backbone = tiny_backbone("smolvlm")
    batch = demo(2)
    extra = {} if expert is None else {"expert": ExpertConfig.get_choice_class(expert)()}
    head = build_head(head_type, backbone, moh=moh([2, 4]), **extra).eval()
    prefix = make_prefix_fn(backbone, batch)(with_kv=head.needs_kv)
    before = horizon_outputs(head_type, head, prefix, perturb=False)
    after = horizon_outputs(head_type, head, prefix, perturb=True)
    assert torch.equal(before[:, 0, :2], after[:, 0, :2])
    assert not torch.allclose(before[:, 1, :2], after[:, 1, :2])


@torch.no_grad()
def horizon_outputs(head_type: str, head, prefix, perturb: bool) -> torch.Tensor:
    """Per-horizon outputs (B, N, H, D) of an MoH head on a fixed input; ``perturb`` changes steps 3-4 of it."""
    g = torch.Generator().manual_seed(0)
    if head_type == "regression":
        if perturb:
            head.queries[2:] += torch.randn(head.queries[2:].shape, generator=g)
        return head.predict_horizons(prefix)[1]
    x = torch.randn(2, H, D, generator=g)
    if perturb:
        x[:, 2:] += torch.randn(2, H - 2, D, generator=g)
    return head.mixed_velocity(repeat_prefix(prefix, head.moh.n), x, torch.tensor([0.4, 0.9]))[1]


@pytest.mark.parametrize("head_type", MOH_HEADS)
def test_moh_overfit_loss_falls(head_type):
    """60 Adam steps on one demo (frozen backbone): the total, fused and every horizon's loss fall (first and
    last measured on the same noise and times)."""
    torch.manual_seed(0)
    backbone = tiny_backbone("smolvlm")
    batch = {k: (v * 4 if isinstance(v, list) else v.repeat(4, *[1] * (v.ndim - 1))) for k, v in demo(2).items()}
    head = build_head(head_type, backbone, moh=moh([1, 2, 4]))
    with torch.no_grad():
        prefix = make_prefix_fn(backbone, batch)(with_kv=head.needs_kv)
    fixed = dict(batch, noise=torch.randn(8, H, D), time=torch.rand(8))
    _, first = head.loss(lambda **kw: prefix, fixed)
    losses = train(head, backbone, lambda **kw: prefix, batch, steps=60, lr=2e-3, params=list(head.parameters()))
    _, last = head.loss(lambda **kw: prefix, fixed)
    print(head_type, {k: (round(float(first[k]), 4), round(float(last[k]), 4)) for k in first})
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    for key in ("moh_mix", "moh_h1", "moh_h2", "moh_h4"):
        assert last[key] < 0.5 * first[key], (key, first[key], last[key])
    details = head.sample_details(lambda **kw: prefix, batch)
    torch.testing.assert_close(details.gates.sum(-1), torch.ones(8, H))
    torch.testing.assert_close(fuse(details.horizon_chunks, details.gates), details.chunk)
    assert (details.gates[:, 1:, 0] == 0).all() and (details.gates[:, 2:, 1] == 0).all()


def test_action_queue_plays_only_the_executed_prefix():
    q = ActionQueue(replan_every=3)
    q.add_chunk(np.arange(6.0)[:, None], 0)  # (H=6, D=1): plays 0, 1, 2 then wants a chunk
    assert [q.pop().item() for _ in range(3)] == [0, 1, 2] and q.needs_chunk
    q.add_chunk(np.arange(10.0, 16.0)[:, None], 3, execute=2)  # consensus: 2 actions, the old tail (3-5) dropped
    assert q.queued == 2 and not q.needs_chunk
    assert [q.pop().item() for _ in range(2)] == [10, 11] and q.needs_chunk
    q.add_chunk(np.arange(20.0, 26.0)[:, None], 5, execute=5)  # more than replan_every: all 5 play
    played = []
    while not q.needs_chunk:
        played.append(q.pop().item())
    assert played == [20, 21, 22, 23, 24]
    with pytest.raises(ValueError, match="temporal ensembling"):
        ActionQueue(ensemble_coeff=0.1, replan_every=1).add_chunk(np.zeros((4, 1)), 0, execute=2)


@pytest.mark.parametrize("head_type", MOH_HEADS)
def test_policy_plays_the_consensus_prefix(head_type, monkeypatch):
    """select_action with moh.consensus: a new chunk once the shortest agreed prefix of the batch is played
    (not after n_action_steps); predict_plan gives each sample's length within [n, H]."""
    torch.manual_seed(0)
    consensus = moh([2, 4, 6], consensus=True, consensus_min_steps=2, consensus_min_horizons=1)
    cfg = PolicyConfig(
        backbone=BackboneConfig.get_choice_class("smolvlm")(preset="tiny"),
        head=HeadConfig.get_choice_class(head_type)(moh=consensus),
        chunk_size=6,
        n_action_steps=3,
        cameras=["image"],
        state_dim=4,
        action_dim=3,
    )
    policy = Policy(cfg).eval()
    assert policy.head.chooses_execute
    g = torch.Generator().manual_seed(1)
    obs = {"images": torch.rand(2, 1, 3, 32, 32, generator=g), "state": torch.randn(2, 4), "instruction": ["a", "b"]}
    chunk, execute = policy.predict_plan(obs, seed=0)
    assert chunk.shape == (2, 6, 3) and execute.shape == (2,) and ((execute >= 2) & (execute <= 6)).all()
    torch.testing.assert_close(chunk, policy.predict_chunk(obs, seed=0))

    plans = iter([(torch.zeros(2, 6, 3), torch.tensor([5, 4])), (torch.ones(2, 6, 3), torch.tensor([2, 6]))])
    calls = []
    monkeypatch.setattr(policy, "predict_plan", lambda observation, **kw: calls.append(1) or next(plans))
    played = [policy.select_action(obs)[0, 0].item() for _ in range(6)]
    assert played == [0, 0, 0, 0, 1, 1] and len(calls) == 2  # 4 steps (min of 5, 4), then 2 (min of 2, 6)
