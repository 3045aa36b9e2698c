"""What validation costs: its size (samples x beams x new tokens, or prompts x images x steps) and its
share of the run, from FLOPs counted on the meta device.

The share is a FLOP ratio. Token-by-token generation and denoising loops run at a lower utilisation than
training's large matrix products, so on a GPU validation usually takes a larger share of the time than this.
"""

from typing import Any

from src.preflight.model import ModelPlan


def _generating_parameters(plan: ModelPlan) -> int:
    """Parameters each generated token passes through: the decoder and LM head of a seq2seq model."""
    if plan.family != "seq2seq":
        return plan.total
    base = plan.network.get_base_model()
    return sum(p.numel() for n, p in base.named_parameters() if n.startswith(("decoder.", "lm_head.")))


def computes_eval_loss(cfg) -> bool:
    """Whether text evaluation will run its teacher-forced loss pass (``model.eval_loss``; null: when the monitor,
    a callback or the sweep's objective reads val/loss)."""
    forced = cfg.model.get("eval_loss")
    if forced is not None:
        return bool(forced)
    callbacks = cfg.get("callbacks") or {}
    readers = [cfg.model.get("monitor", ""), cfg.get("optimized_metric") or "",
               *(c.get("monitor") or "" for c in callbacks.values() if hasattr(c, "get"))]
    return any(r.partition("/")[2] == "loss" for r in readers if r.startswith(("val/", "test/")))


def validation_cost(plan: ModelPlan, cfg, data: dict[str, Any], schedule: dict[str, Any],
                    memory: dict[str, Any]) -> dict[str, Any]:
    generation = dict(cfg.model.get("generation") or {})
    rounds = len(schedule["validation_steps"])
    forward = memory["forward_flops_per_batch"]  # one training batch, at the maximum lengths / resolution
    batch = schedule["batch_size"]
    recompute = 1 if memory["gradient_checkpointing"] else 0
    # validation is sharded across processes without repeats; training FLOPs are per process too
    samples = data["splits_used"]["val"]
    val = -(-samples // (schedule["devices"] * schedule["num_nodes"]))
    if plan.family == "diffusion":
        steps = int(generation.get("num_inference_steps", 30))
        guided = 2 if float(generation.get("guidance_scale", 7.5)) > 1 else 1  # classifier-free guidance
        train_step = forward * (2 + recompute) * schedule["accumulate_grad_batches"]
        per_round = forward / batch * val * steps * guided
        size = {"prompts": samples, "images_per_prompt": 1, "inference_steps": steps,
                "unet_forwards_per_round": samples * steps * guided}
    else:
        shape = memory["activation_shape"]
        src, tgt = data["source_tokens"]["mean"], data["target_tokens"]["mean"]
        fill = min(1.0, (src + tgt) / (shape["source_tokens"] + shape["target_tokens"]))  # batches pad to their own length
        per_sample = forward / batch * fill
        train_step = per_sample * batch * (2 + recompute) * schedule["accumulate_grad_batches"]
        beams = int(generation.get("num_beams", 1))
        new_tokens = int(generation.get("max_new_tokens", 20))
        generate = 2 * _generating_parameters(plan) * val * beams * new_tokens
        eval_loss = computes_eval_loss(cfg)
        per_round = per_sample * val * eval_loss + generate  # the teacher-forced val/loss if read, then generation
        size = {"samples": samples, "beams": beams, "max_new_tokens": new_tokens,
                "generated_tokens_per_round": samples * beams * new_tokens, "eval_loss": eval_loss}
    train_total = train_step * schedule["optimizer_steps_total"]
    val_total = per_round * rounds
    share = val_total / (train_total + val_total) if train_total + val_total else 0.0
    return {**size, "rounds": rounds, "train_flops": train_total, "validation_flops": val_total,
            "validation_share_by_flops": round(share, 4),
            "note": "a FLOP ratio: generation runs at lower utilisation, so its share of wall time is larger"}
