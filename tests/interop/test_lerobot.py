"""Our pi0, pi0.5 and SmolVLA against LeRobot 0.6.1's own classes, run live (not golden numbers).

For each model: LeRobot builds a small random policy and saves it; ``vla import lerobot`` reads it;
for the same raw observation (two cameras at a non-square size, so the padding resize runs), the
same instruction (LeRobot's processors tokenize it) and the same noise, both stacks give the same
action chunk, also with a camera missing; for the same batch, noise and time, the same training
loss; and after ``vla export --format lerobot``, LeRobot's ``from_pretrained`` gives the chunk again.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from lerobot_side import CAMERAS, D, H, S, run_lerobot
from safetensors.torch import load_file, save_file

from vla.interop.lerobot import ARCHITECTURES, lerobot_type
from vla.interop.lerobot_export import export_lerobot
from vla.interop.lerobot_import import import_lerobot, policy_from_lerobot
from vla.models.policy import Policy

pytestmark = pytest.mark.slow
TASKS = ["pick up the cup", "open_the drawer\n"]  # a trailing newline and an underscore: the prompt rules differ


def inputs(spec: dict, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    h, w = spec["image_size"]
    data = {f"observation.images.{c}": rng.random((2, 3, h, w), dtype=np.float32) for c in CAMERAS}
    data["observation.state"] = (rng.normal(size=(2, S)) * 3).astype(np.float32)  # some beyond the quantiles
    data["action"] = rng.normal(size=(2, H, D)).astype(np.float32)
    data["noise"] = rng.normal(size=(2, H, 32)).astype(np.float32)
    data["time"] = np.array([0.3, 0.8], dtype=np.float32)
    return data


def lerobot_outputs(spec: dict, ckpt, data: dict, tmp) -> dict:
    np.savez(tmp / "inputs.npz", **data)
    run = dict(spec, action="run", ckpt=str(ckpt), inputs=str(tmp / "inputs.npz"), tasks=TASKS,
               missing=["observation.images.wrist"], out=str(tmp / "out.npz"))  # fmt: skip
    run_lerobot(run, tmp)
    return dict(np.load(tmp / "out.npz"))


def our_outputs(policy: Policy, data: dict) -> dict:
    images = torch.stack([torch.from_numpy(data[f"observation.images.{c}"]) for c in CAMERAS], 1)
    obs = {"images": images, "state": torch.from_numpy(data["observation.state"]), "instruction": TASKS}
    noise = torch.from_numpy(data["noise"])
    missing = torch.tensor([[True, False], [True, False]])  # no wrist camera
    with torch.no_grad():
        loss, _ = policy.compute_loss(
            dict(obs, actions=torch.from_numpy(data["action"]), noise=noise, time=torch.from_numpy(data["time"]))
        )
    return {
        "chunk": policy.predict_chunk(obs, noise=noise).numpy(),
        "chunk_missing": policy.predict_chunk(dict(obs, image_mask=missing), noise=noise).numpy(),
        "loss": loss.item(),
    }


@pytest.mark.parametrize("kind", ["pi0", "pi05", "smolvla"])
def test_same_chunk_loss_and_round_trip_as_lerobot(kind, lerobot_checkpoint, paligemma_dir, tmp_path):
    ckpt, spec = lerobot_checkpoint(kind)
    ours = tmp_path / "ours"
    report = import_lerobot(ckpt, ours, None if kind == "smolvla" else paligemma_dir)  # SmolVLA: its vlm_model_name
    assert report["type"] == kind and report["stats"] == "from the preprocessor"
    if kind != "smolvla":
        assert report["dropped_unused"] == ["paligemma_with_expert.gemma_expert.lm_head.weight"]
    policy = Policy.load(ours)
    assert lerobot_type(policy.config) == kind

    data = inputs(spec)
    theirs = lerobot_outputs(spec, ckpt, data, tmp_path)
    mine = our_outputs(policy, data)
    assert mine["chunk"].shape == theirs["chunk"].shape == (2, H, D)
    assert np.abs(mine["chunk"] - theirs["chunk"]).max() <= 1e-4, np.abs(mine["chunk"] - theirs["chunk"]).max()
    assert np.abs(mine["chunk_missing"] - theirs["chunk_missing"]).max() <= 1e-4
    assert not np.allclose(theirs["chunk"], theirs["chunk_missing"])  # the missing camera mattered
    assert abs(mine["loss"] - float(theirs["loss"])) <= 1e-4 * abs(float(theirs["loss"]))

    back = tmp_path / "back"
    export_lerobot(ours, back)
    again = lerobot_outputs(spec, back, data, tmp_path)
    assert np.abs(again["chunk"] - theirs["chunk"]).max() <= 1e-5
    assert float(again["loss"]) == pytest.approx(float(theirs["loss"]), rel=1e-6)


def test_hub_layout_and_named_errors(lerobot_checkpoint, paligemma_dir, tmp_path):
    """Keys without ``model.`` and without ``embed_tokens`` (hub/openpi layout) import to the same policy;
    an unknown or a missing tensor, or no processor folder, is an error that names it."""
    ckpt, spec = lerobot_checkpoint("pi0")
    tensors = load_file(str(ckpt / "model.safetensors"))
    local = import_lerobot(ckpt, tmp_path / "local", paligemma_dir)
    assert local["type"] == "pi0"

    hub = tmp_path / "hub"
    hub.mkdir()
    for f in ckpt.iterdir():
        if f.name != "model.safetensors":
            (hub / f.name).write_bytes(f.read_bytes())
    hub_tensors = {k.removeprefix("model."): v for k, v in tensors.items() if "embed_tokens" not in k}
    save_file(hub_tensors, str(hub / "model.safetensors"))
    import_lerobot(hub, tmp_path / "from_hub", paligemma_dir)
    a, b = Policy.load(tmp_path / "local"), Policy.load(tmp_path / "from_hub")
    embed = "backbone.model.model.language_model.embed_tokens.weight"
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and (torch.equal(va, vb) or ka.endswith("embed_tokens.weight")), ka
    # as LeRobot's from_pretrained does for this layout: the embedding table is the LM head's
    assert torch.equal(b.state_dict()[embed], b.state_dict()["backbone.model.lm_head.weight"])

    save_file({**hub_tensors, "paligemma_with_expert.bogus.weight": torch.zeros(2)}, str(hub / "model.safetensors"))
    with pytest.raises(ValueError, match="bogus"):
        import_lerobot(hub, tmp_path / "x", paligemma_dir)
    gone = "paligemma_with_expert.gemma_expert.model.layers.1.mlp.up_proj.weight"
    save_file({k: v for k, v in hub_tensors.items() if k != gone}, str(hub / "model.safetensors"))
    with pytest.raises(ValueError, match=r"head\.expert\.layers\.1\.mlp\.up_proj"):
        import_lerobot(hub, tmp_path / "y", paligemma_dir)

    r = subprocess.run(
        [sys.executable, "-m", "vla", "import", "lerobot", str(ckpt), "--out", str(tmp_path / "z")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2 and "--processor" in r.stderr and "google/paligemma-3b-pt-224" in r.stderr
    assert "Traceback" not in r.stderr


def test_export_refuses_what_lerobot_cannot_load(tmp_path):
    """A flow policy that is none of the three (our dit expert) is refused with the differing options named."""
    from vla.models.backbones import BackboneConfig
    from vla.models.heads import HeadConfig
    from vla.models.policy import PolicyConfig

    cfg = PolicyConfig(
        backbone=BackboneConfig.get_choice_class("paligemma")(preset="tiny", **{
            k: v for k, v in ARCHITECTURES["pi0"]["backbone"].items() if k != "type"}),
        head=HeadConfig.get_choice_class("flow")(), cameras=["a"], state_dim=3, action_dim=2,
    )  # fmt: skip
    Policy(cfg).save(tmp_path / "p")
    with pytest.raises(ValueError, match=r"closest is pi0.*expert\.type: 'dit' != 'gemma'"):
        export_lerobot(tmp_path / "p", tmp_path / "out")


def test_export_merges_lora(lerobot_checkpoint, paligemma_dir, tmp_path):
    """A LoRA fine-tune exports with its adapters merged into the VLM's layers (LeRobot has no adapters)."""
    ckpt, _ = lerobot_checkpoint("pi05")
    policy, _ = policy_from_lerobot(ckpt, paligemma_dir)
    cfg = policy.config
    cfg.backbone.lora_rank = 4
    from vla.models.backbones.options import add_lora

    add_lora(policy.backbone.lm, 4, 16)
    for name, p in policy.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)  # a trained adapter, not the zero start
    policy.save(tmp_path / "lora")
    export_lerobot(tmp_path / "lora", tmp_path / "out")
    back, _ = policy_from_lerobot(tmp_path / "out", paligemma_dir)
    obs = {"images": torch.rand(2, 2, 3, 32, 32), "state": torch.randn(2, S), "instruction": TASKS}
    a, b = policy.eval().predict_chunk(obs, seed=[1, 2]), back.eval().predict_chunk(obs, seed=[1, 2])
    assert (a - b).abs().max() < 1e-5


def test_a_conv_stem_is_not_lerobots_smolvla(lerobot_checkpoint):
    """policy.backbone.conv_stem replaces the patchify conv LeRobot's SmolVLA loads: export names the option."""
    ckpt, _ = lerobot_checkpoint("smolvla")
    policy, _ = policy_from_lerobot(ckpt, None)
    assert lerobot_type(policy.config) == "smolvla"
    policy.config.backbone.conv_stem = True
    with pytest.raises(ValueError, match=r"closest is smolvla.*policy\.backbone\.conv_stem: True != False"):
        lerobot_type(policy.config)
