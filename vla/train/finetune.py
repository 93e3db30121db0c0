"""Start from a trained policy, possibly on a new robot (other action/state dims, other cameras).

The architecture (backbone, head, chunk) comes from the checkpoint; the robot's shapes
and normalization statistics come from the new dataset. Tensors whose shape no longer
fits (state projection, action in/out projections) keep a fresh initialization; all
others are loaded. The returned plan says which is which.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from vla.models.policy import WEIGHTS_FILE, Policy, PolicyConfig, architecture_of

# Training-side options the user may change when fine-tuning; everything else is architecture.
USER_BACKBONE_OPTIONS = ("freeze_vision", "freeze_vlm", "lora_rank", "lora_alpha", "gradient_checkpointing")
# chunk_size too: a flow expert has no per-step weights (pi0_base's 50 fits any horizon); heads that do
# (learned positions or queries) re-initialize those, and the plan says so.
# auxiliary: a training-only target of this run (its probe is new when the base had none, dropped when unset).
USER_POLICY_OPTIONS = ("chunk_size", "n_action_steps", "temporal_ensemble_coeff", "inference_steps", "auxiliary")


def init_from_checkpoint(path: str | Path, user_cfg: PolicyConfig, stats: dict) -> tuple[Policy, dict]:
    path = Path(path)
    cfg = Policy.load_config(path)
    same_robot = (cfg.state_dim, cfg.action_dim, len(cfg.cameras), cfg.chunk_size) == (
        user_cfg.state_dim,
        user_cfg.action_dim,
        len(user_cfg.cameras),
        user_cfg.chunk_size,
    )
    for key in ("cameras", "state_dim", "action_dim", "fps", "image_size", "state_key", *USER_POLICY_OPTIONS):
        setattr(cfg, key, getattr(user_cfg, key))
    for key in USER_BACKBONE_OPTIONS:
        setattr(cfg.backbone, key, getattr(user_cfg.backbone, key))
    policy = Policy(cfg, stats, architecture=architecture_of(path))
    if same_robot and (path / "head").is_dir():  # FAST: the action space is unchanged, keep its tokenizer
        policy.head.load_tokenizer(path / "head")
    # The normalizers' buffers are the base dataset's statistics, not weights: with the same widths they would
    # load over the new dataset's and the policy would train and act in the base's units.
    weights = {k: v for k, v in load_file(str(path / WEIGHTS_FILE)).items() if not k.startswith("normalizers.")}
    report = policy.load_weights(weights, source=path, strict=False)
    plan = {
        "source": str(path),
        "loaded": len(report["loaded"]),
        "reinitialized": [k for k in report["reinitialized"] if not k.startswith("normalizers.")],
        "stats": "computed from the new dataset",
    }
    return policy, plan
