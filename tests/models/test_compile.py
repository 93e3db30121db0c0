"""Regional torch.compile: which blocks compile, and compiled blocks give the eager numbers.

The tests trace with ``backend="aot_eager"`` (dynamo + AOT autograd, no kernel generation)
so they take seconds; inductor itself is exercised by `vla bench infer --compile`.
"""

from __future__ import annotations

import pytest
import torch

from vla.models.backbones.base import BackboneConfig
from vla.models.compile import compile_for_inference, compile_regions, repeated_blocks
from vla.models.heads.base import HeadConfig
from vla.models.policy import Policy, PolicyConfig


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def tiny_policy(head: str, family: str = "smolvlm") -> Policy:
    torch.manual_seed(0)
    cfg = PolicyConfig(
        backbone=BackboneConfig.get_choice_class("smolvlm")(preset=f"tiny-{family}"),
        head=HeadConfig.get_choice_class(head)(),
        chunk_size=6,
        n_action_steps=3,
        cameras=["front", "wrist"],
        state_dim=5,
        action_dim=4,
    )
    return Policy(cfg)


def batch(with_actions: bool) -> dict:
    g = torch.Generator().manual_seed(1)
    out = {
        "images": torch.rand(2, 2, 3, 48, 48, generator=g),
        "image_mask": torch.ones(2, 2, dtype=torch.bool),
        "state": torch.randn(2, 5, generator=g),
        "instruction": ["pick up the red block", "open the top drawer"],
    }
    if with_actions:
        out["actions"] = torch.randn(2, 6, 4, generator=g)
    return out


def loss_and_grads(policy: Policy) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    policy.train()
    policy.zero_grad(set_to_none=True)
    torch.manual_seed(5)  # the same noise / timesteps in both runs
    loss, _ = policy.compute_loss(batch(with_actions=True))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}


def test_repeated_blocks_finds_the_transformer_layers():
    policy = tiny_policy("flow")
    lm_layers = len(policy.backbone.lm.layers)
    head_blocks = repeated_blocks(policy.head)
    assert len(head_blocks) == len(policy.head.expert.blocks) == lm_layers  # pi0 layout: one expert block per layer
    assert repeated_blocks(policy.backbone.lm) == list(policy.backbone.lm.layers)
    assert not repeated_blocks(torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)]))
    vision = [b for m in policy.backbone.vision_modules() for b in repeated_blocks(m)]
    assert vision, "the vision encoder's layers should be found"
    n = compile_regions(policy, training=False, backend="aot_eager")
    assert n == lm_layers + len(vision) + len(head_blocks)  # each decoder layer contributes its MLP


@pytest.mark.parametrize(
    "head,family",
    [("flow", "smolvlm"), ("flow", "qwen2_5_vl"), ("diffusion", "paligemma"), ("regression", "smolvlm")],
)
def test_compiled_policy_matches_eager(head, family):
    policy = tiny_policy(head, family)
    obs = batch(with_actions=False)
    want_chunk = policy.eval().predict_chunk(obs, seed=[3, 4])
    want_loss, want_grads = loss_and_grads(policy)

    compile_regions(policy, training=False, backend="aot_eager")
    got_chunk = policy.eval().predict_chunk(obs, seed=[3, 4])
    got_loss, got_grads = loss_and_grads(policy)

    torch.testing.assert_close(got_chunk, want_chunk, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_loss, want_loss, atol=1e-6, rtol=1e-6)
    assert got_grads.keys() == want_grads.keys()
    for name, grad in got_grads.items():
        torch.testing.assert_close(grad, want_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_compile_for_inference_warms_up_and_checkpoints_keep_their_keys(tmp_path):
    policy = tiny_policy("flow").eval()
    keys = set(policy.state_dict())
    seconds = compile_for_inference(policy, backend="aot_eager")
    assert seconds > 0
    assert set(policy.state_dict()) == keys  # nn.Module.compile adds no _orig_mod prefix: checkpoints load as before
    policy.save(tmp_path / "ckpt")
    assert Policy.load(tmp_path / "ckpt").predict_chunk(batch(False), seed=0).shape == (2, 6, 4)


def test_bad_mode_is_named():
    with pytest.raises(ValueError, match="compile mode 'fastest'"):
        compile_regions(tiny_policy("regression"), training=True, mode="fastest")


def test_trainer_compiles_when_asked(metaworld_layout_dataset, tmp_path, monkeypatch):
    """train.compile=true reaches compile_regions before DDP/DeepSpeed wrap the policy, and training still learns."""
    import vla.train.trainer as trainer_module
    from vla.config import parse_config
    from vla.train.config import TrainConfig

    calls = []

    def traced(policy, **kw):
        calls.append(kw)
        return compile_regions(policy, **kw, backend="aot_eager")

    monkeypatch.setattr(trainer_module, "compile_regions", traced)
    cfg = parse_config(
        TrainConfig,
        [
            f"--dataset.root={metaworld_layout_dataset}",
            "--policy.backbone.preset=tiny-smolvlm",
            "--policy.head.type=regression",
            "--policy.chunk_size=4",
            "--policy.n_action_steps=2",
            "--train.steps=12",
            "--train.batch_size=4",
            "--train.num_workers=0",
            "--train.log_every=1",
            "--train.save_every=0",
            "--train.compile=true",
            "--optim.lr=1e-3",
            "--optim.warmup_steps=2",
            "--augment.enabled=false",
            f"--output_dir={tmp_path / 'run'}",
        ],
    )
    summary = trainer_module.run_training(cfg)
    assert calls == [{"training": True}]
    assert summary["steps"] == 12
    obs = {"images": torch.rand(1, 2, 3, 32, 32), "state": torch.randn(1, 4), "instruction": ["reach the goal"]}
    assert Policy.load(tmp_path / "run" / "checkpoints" / "last").predict_chunk(obs).shape == (1, 4, 4)


def test_worker_threads_can_reach_the_cuda_graph_trees():
    """The server runs the policy in a worker thread; torch's CUDA-graph trees live in thread-locals
    that a plain thread does not inherit (pytorch#123177). The initializer hands them over."""
    import concurrent.futures

    from torch._inductor import cudagraph_trees as trees

    from vla.models.compile import share_cudagraphs_with_threads

    def lookup():
        return trees.get_obj(trees.local, "tree_manager_containers")

    mine = lookup()
    with concurrent.futures.ThreadPoolExecutor(1) as plain:
        with pytest.raises(AssertionError):
            plain.submit(lookup).result()
    with concurrent.futures.ThreadPoolExecutor(1, initializer=share_cudagraphs_with_threads()) as shared:
        assert shared.submit(lookup).result() is mine
