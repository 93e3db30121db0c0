"""Peer anchor: LeRobot's own VLA policies (pi0 / pi05), random init, timed on one GPU.

Measures one training step (forward+backward+AdamW) and one inference call
(predict_action_chunk) with the same inputs our stack is asked to beat:
N cameras at 224x224, 8-dim state, 7-dim action, 50-step chunks, 48 language tokens.
Prints one JSON line per measurement.
"""

import argparse
import json
import time

import torch


def build(policy_name: str, cams: int, dtype: str, grad_ckpt: bool, compile_model: bool, compile_mode: str):
    from lerobot.configs.types import FeatureType, PolicyFeature

    if policy_name == "pi0":
        from lerobot.policies.pi0.configuration_pi0 import PI0Config as Cfg
        from lerobot.policies.pi0.modeling_pi0 import PI0Policy as Pol
    else:
        from lerobot.policies.pi05.configuration_pi05 import PI05Config as Cfg
        from lerobot.policies.pi05.modeling_pi05 import PI05Policy as Pol
    inputs = {
        f"observation.images.cam{i}": PolicyFeature(type=FeatureType.VISUAL, shape=(3, 224, 224)) for i in range(cams)
    }
    inputs["observation.state"] = PolicyFeature(type=FeatureType.STATE, shape=(8,))
    outputs = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(7,))}
    cfg = Cfg(
        input_features=inputs,
        output_features=outputs,
        dtype=dtype,
        device="cuda",
        gradient_checkpointing=grad_ckpt,
        compile_model=compile_model,
    )
    if compile_mode:
        cfg.compile_mode = compile_mode
    with torch.device("cuda"):  # random init straight on the GPU: minutes faster than on the CPU
        pol = Pol(cfg)
    pol.to("cuda")
    return cfg, pol


def make_batch(b: int, cams: int, cfg):
    d = "cuda"
    batch = {f"observation.images.cam{i}": torch.rand(b, 3, 224, 224, device=d) for i in range(cams)}
    batch["observation.state"] = torch.randn(b, 8, device=d)
    batch["action"] = torch.randn(b, cfg.chunk_size, 7, device=d)
    batch["action_is_pad"] = torch.zeros(b, cfg.chunk_size, dtype=torch.bool, device=d)
    batch["observation.language.tokens"] = torch.randint(0, 250000, (b, cfg.tokenizer_max_length), device=d)
    batch["observation.language.attention_mask"] = torch.ones(b, cfg.tokenizer_max_length, dtype=torch.bool, device=d)
    return batch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", default="pi0")
    ap.add_argument("--batches", default="8,16")
    ap.add_argument("--cams", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--grad-ckpt", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--compile-mode", default="", help="override LeRobot's compile_mode (default max-autotune)")
    ap.add_argument("--infer-only", action="store_true")
    ap.add_argument("--save-to", default="", help="save the freshly built policy here (save_pretrained)")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    t_build = time.perf_counter()
    cfg, pol = build(a.policy, a.cams, a.dtype, a.grad_ckpt, a.compile, a.compile_mode)
    print(json.dumps(dict(what="build", seconds=round(time.perf_counter() - t_build, 1))), flush=True)
    if a.save_to:  # the same weights for the other stack (vla bench --same-weights)
        pol.save_pretrained(a.save_to)
        print(json.dumps(dict(what="saved", path=a.save_to)), flush=True)
    n_params = sum(p.numel() for p in pol.parameters())
    res = dict(
        peer=f"lerobot-{a.policy}",
        params_b=round(n_params / 1e9, 3),
        dtype=a.dtype,
        cams=a.cams,
        gpu=torch.cuda.get_device_name(),
        compile=a.compile and (cfg.compile_mode or True),
        grad_ckpt=a.grad_ckpt,
    )
    for bs in [] if a.infer_only else [int(x) for x in a.batches.split(",")]:
        pol.train()
        opt = torch.optim.AdamW([p for p in pol.parameters() if p.requires_grad], lr=1e-5, fused=True)
        batch = make_batch(bs, a.cams, cfg)
        torch.cuda.reset_peak_memory_stats()
        try:
            for i in range(3 + a.steps):
                if i == 3:
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                loss, _ = pol.forward(batch)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(pol.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) / a.steps
            print(
                json.dumps(
                    dict(
                        res,
                        what="train_step",
                        batch=bs,
                        step_s=round(dt, 4),
                        samples_per_s=round(bs / dt, 2),
                        peak_mem_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                    )
                ),
                flush=True,
            )
        except torch.OutOfMemoryError:
            print(json.dumps(dict(res, what="train_step", batch=bs, oom=True)), flush=True)
        opt.zero_grad(set_to_none=True)
        del opt, batch
        torch.cuda.empty_cache()
    pol.eval()
    batch = make_batch(1, a.cams, cfg)
    lat = []
    t_first = time.perf_counter()
    with torch.no_grad():
        pol.predict_action_chunk(batch)  # first call: compilation when --compile
        torch.cuda.synchronize()
        print(json.dumps(dict(what="first_infer_call", seconds=round(time.perf_counter() - t_first, 1))), flush=True)
        for i in range(25):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            pol.predict_action_chunk(batch)
            torch.cuda.synchronize()
            if i >= 5:
                lat.append(time.perf_counter() - t0)
    lat.sort()
    print(
        json.dumps(
            dict(
                res,
                what="infer_chunk_b1",
                steps=cfg.num_inference_steps,
                chunk=cfg.chunk_size,
                p50_ms=round(1000 * lat[len(lat) // 2], 2),
                p90_ms=round(1000 * lat[int(len(lat) * 0.9)], 2),
            )
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
