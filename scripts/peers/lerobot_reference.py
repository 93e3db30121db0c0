"""LeRobot's own pi0, pi0.5 and SmolVLA, small and random, as the reference our ports are checked against.

Runs in a child process with LeRobot 0.6.1 and the transformers it needs (5.5.x) first on the path
(``make install`` puts that transformers in ``.peers/lerobot``), so it imports nothing of ours.
Two actions, each given as one JSON spec file::

    build  {"action": "build", "policy": "pi0|pi05|smolvla", "out": DIR, "dims": {...}, "processor_dir": DIR,
            "cameras": [...], "image_size": [H, W], "state_dim": S, "action_dim": D, "chunk_size": H,
            "stats": {"observation.state": {"mean": [...], ...}, "action": {...}}, "seed": 0}
    run    {"action": "run", "policy": ..., "ckpt": DIR, "dims": {...}, "processor_dir": DIR,
            "inputs": NPZ, "tasks": [...], "missing": [camera key, ...], "out": NPZ}

``build`` makes the policy with LeRobot's classes and saves it with ``save_pretrained`` beside
LeRobot's own pre/post-processor pipelines (its ``make_*_pre_post_processors``), as a hub
checkpoint is laid out. ``run`` loads a checkpoint with ``from_pretrained`` (ours, after
``vla export --format lerobot``, too), pushes the raw observation through LeRobot's
preprocessor (normalization, prompt, tokenization), and writes the action chunk for the given
noise (``predict_action_chunk`` then the postprocessor), the same with the ``missing`` cameras left
out of the observation (LeRobot then feeds an image of -1 with a false mask), and the training loss
for the given noise and time (``forward``).

Small and offline: pi0/pi0.5 know only the ``gemma_2b``/``gemma_300m`` variants and a So400m
SigLIP, so the module-level ``get_gemma_config`` and the PaliGemma class are replaced by small
ones (``dims``) before the policy is built, as LeRobot's own tests of these models must; the
tokenizer LeRobot would fetch from the hub (``google/paligemma-3b-pt-224``) is read from
``processor_dir`` instead. SmolVLA reads its VLM config and processor from ``processor_dir``.
Nothing in LeRobot is edited.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

PALIGEMMA_TOKENIZER = "google/paligemma-3b-pt-224"


def patch_small(policy: str, dims: dict, processor_dir: str) -> None:
    """Small Gemma variants, a small SigLIP and a local tokenizer, for LeRobot's pi0/pi0.5 (see the docstring)."""
    import transformers

    original = transformers.AutoTokenizer.from_pretrained.__func__

    def local_tokenizer(cls, name, *args, **kwargs):
        return original(cls, processor_dir if name == PALIGEMMA_TOKENIZER else name, *args, **kwargs)

    transformers.AutoTokenizer.from_pretrained = classmethod(local_tokenizer)
    if policy == "smolvla":
        return
    module = __import__(f"lerobot.policies.{policy}.modeling_{policy}", fromlist=["x"])
    small = {"gemma_2b": dims["vlm"], "gemma_300m": dims["expert"]}

    def get_gemma_config(variant):
        d = small[variant]
        return module.GemmaConfig(
            d["width"], d["depth"], d["mlp_dim"], d["num_heads"], d["num_kv_heads"], d["head_dim"]
        )

    base = module.PaliGemmaForConditionalGenerationWithPiGemma
    vision = dims["vision"]

    class SmallPaliGemma(base):
        def __init__(self, config):
            vc = config.vision_config
            vc.hidden_size, vc.intermediate_size = vision["width"], vision["ffn"]
            vc.num_hidden_layers, vc.num_attention_heads = vision["layers"], vision["heads"]
            vc.patch_size = vision["patch"]
            vc.projection_dim = config.text_config.hidden_size
            config.text_config.vocab_size = dims["vocab"]
            super().__init__(config)

    module.get_gemma_config = get_gemma_config
    module.PaliGemmaForConditionalGenerationWithPiGemma = SmallPaliGemma


def classes(policy: str):
    if policy == "pi0":
        from lerobot.policies.pi0.configuration_pi0 import PI0Config as Config
        from lerobot.policies.pi0.modeling_pi0 import PI0Policy as Policy
        from lerobot.policies.pi0.processor_pi0 import make_pi0_pre_post_processors as processors
    elif policy == "pi05":
        from lerobot.policies.pi05.configuration_pi05 import PI05Config as Config
        from lerobot.policies.pi05.modeling_pi05 import PI05Policy as Policy
        from lerobot.policies.pi05.processor_pi05 import make_pi05_pre_post_processors as processors
    elif policy == "smolvla":
        from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig as Config
        from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy as Policy
        from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors as processors
    else:
        raise ValueError(f"unknown policy {policy!r}")
    return Config, Policy, processors


def build(spec: dict) -> None:
    from lerobot.configs.types import FeatureType, PolicyFeature

    Config, Policy, processors = classes(spec["policy"])
    h, w = spec["image_size"]
    inputs = {f"observation.images.{c}": PolicyFeature(FeatureType.VISUAL, (3, h, w)) for c in spec["cameras"]}
    inputs["observation.state"] = PolicyFeature(FeatureType.STATE, (spec["state_dim"],))
    outputs = {"action": PolicyFeature(FeatureType.ACTION, (spec["action_dim"],))}
    kwargs = dict(input_features=inputs, output_features=outputs, chunk_size=spec["chunk_size"],
                  n_action_steps=spec["chunk_size"], device="cpu", push_to_hub=False)  # fmt: skip
    side = spec["dims"]["image"]
    if spec["policy"] == "smolvla":
        kwargs.update(vlm_model_name=spec["processor_dir"], load_vlm_weights=False, resize_imgs_with_padding=(side, side),
                      num_vlm_layers=spec["dims"]["num_vlm_layers"])  # fmt: skip
    else:
        kwargs.update(image_resolution=(side, side), dtype="float32")
    config = Config(**kwargs)
    torch.manual_seed(spec.get("seed", 0))
    policy = Policy(config)
    with torch.no_grad():  # random, not zero: adaRMS dense weights start at zero and would hide the time path
        for name, p in policy.named_parameters():
            if name.endswith("dense.weight"):
                p.normal_(0.0, 0.02)
    stats = {k: {s: torch.tensor(v, dtype=torch.float32) for s, v in d.items()} for k, d in spec["stats"].items()}
    pre, post = processors(config, dataset_stats=stats)
    out = Path(spec["out"])
    policy.save_pretrained(out)
    pre.save_pretrained(out)
    post.save_pretrained(out)
    print(json.dumps({"built": str(out), "params": sum(p.numel() for p in policy.parameters())}))


def run(spec: dict) -> None:
    from lerobot.processor import PolicyProcessorPipeline
    from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action

    _, Policy, _ = classes(spec["policy"])
    ckpt = spec["ckpt"]
    policy = Policy.from_pretrained(ckpt, local_files_only=True).eval()
    pre = PolicyProcessorPipeline.from_pretrained(ckpt, config_filename="policy_preprocessor.json")
    post = PolicyProcessorPipeline.from_pretrained(
        ckpt,
        config_filename="policy_postprocessor.json",
        to_transition=policy_action_to_transition,
        to_output=transition_to_policy_action,
    )
    data = np.load(spec["inputs"])
    batch = {k: torch.from_numpy(data[k]) for k in data.files if k.startswith("observation.") or k == "action"}
    batch["task"] = list(spec["tasks"])
    noise = torch.from_numpy(data["noise"])
    time = torch.from_numpy(data["time"])
    model = policy.model
    model.sample_noise = lambda shape, device: noise.to(device)
    model.sample_time = lambda bsize, device: time.to(device)
    out = {}
    with torch.no_grad():
        obs = pre({k: v for k, v in batch.items() if k != "action"})
        out["chunk"] = post(policy.predict_action_chunk(obs)).numpy()
        partial = pre({k: v for k, v in batch.items() if k != "action" and k not in spec.get("missing", [])})
        out["chunk_missing"] = post(policy.predict_action_chunk(partial)).numpy()
        train_batch = pre(dict(batch))
        if spec["policy"] == "smolvla":
            loss, _ = policy.forward(train_batch, noise=noise, time=time)
        else:
            loss, _ = policy.forward(train_batch)
        out["loss"] = np.asarray(loss.item())
        out["tokens"] = obs["observation.language.tokens"].numpy()
    np.savez(spec["out"], **out)
    print(json.dumps({"ran": str(ckpt), "loss": float(out["loss"])}))


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(max(1, torch.get_num_threads()))
    patch_small(spec["policy"], spec["dims"], spec["processor_dir"])
    {"build": build, "run": run}[spec["action"]](spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
