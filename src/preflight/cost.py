"""What validation costs: its size (samples x beams x new tokens, or prompts x images x steps) and its
share of the run, from FLOPs counted on the meta device.

The share is a FLOP ratio. Token-by-token generation and denoising loops run at a lower utilisation than
training's large matrix products, so on a GPU validation usually takes a larger share of the time than this.
"""

from typing import Any



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


def _rounds_and_samples(data: dict[str, Any], schedule: dict[str, Any]) -> tuple[int, int, int]:
    """Validation rounds, samples, and samples per process (sharded without repeats, as training FLOPs are per
    process too)."""
    samples = data["splits_used"]["val"]
    return len(schedule["validation_steps"]), samples, -(-samples // (schedule["devices"] * schedule["num_nodes"]))


def _share(size: dict[str, Any], train_step: float, per_round: float, rounds: int,
           schedule: dict[str, Any]) -> dict[str, Any]:
    train_total = train_step * schedule["optimizer_steps_total"]
    val_total = per_round * rounds
    share = val_total / (train_total + val_total) if train_total + val_total else 0.0
    return {**size, "rounds": rounds, "train_flops": train_total, "validation_flops": val_total,
            "validation_share_by_flops": round(share, 4),
            "note": "a FLOP ratio: generation runs at lower utilisation, so its share of wall time is larger"}


def text_validation_cost(plan, cfg, data: dict[str, Any], schedule: dict[str, Any], memory: dict[str, Any],
                         generating_parameters: int) -> dict[str, Any]:
    """Generation of every validation sample (``generating_parameters`` per new token), plus the teacher-forced
    loss pass when something reads it."""
    generation = dict(cfg.model.get("generation") or {})
    rounds, samples, val = _rounds_and_samples(data, schedule)
    forward, batch = memory["forward_flops_per_batch"], schedule["batch_size"]  # one batch at the maximum lengths
    recompute = 1 if memory["gradient_checkpointing"] else 0
    shape = memory["activation_shape"]
    src, tgt = data["source_tokens"]["mean"], data["target_tokens"]["mean"]
    probed = shape.get("row_tokens") or shape["source_tokens"] + shape["target_tokens"]
    fill = min(1.0, (src + tgt) / probed)  # batches pad to their own length
    per_sample = forward / batch * fill
    train_step = per_sample * batch * (2 + recompute) * schedule["accumulate_grad_batches"]
    beams = int(generation.get("num_beams", 1))
    new_tokens = int(generation.get("max_new_tokens", 20))
    generate = 2 * generating_parameters * val * beams * new_tokens
    eval_loss = computes_eval_loss(cfg)
    per_round = per_sample * val * eval_loss + generate  # the teacher-forced val/loss if read, then generation
    size = {"samples": samples, "beams": beams, "max_new_tokens": new_tokens,
            "generated_tokens_per_round": samples * beams * new_tokens, "eval_loss": eval_loss}
    return _share(size, train_step, per_round, rounds, schedule)


def image_validation_cost(cfg, data: dict[str, Any], schedule: dict[str, Any], memory: dict[str, Any]
                          ) -> dict[str, Any]:
    """One image per validation prompt, each ``num_inference_steps`` UNet forwards (two with guidance)."""
    generation = dict(cfg.model.get("generation") or {})
    rounds, samples, val = _rounds_and_samples(data, schedule)
    forward, batch = memory["forward_flops_per_batch"], schedule["batch_size"]
    recompute = 1 if memory["gradient_checkpointing"] else 0
    steps = int(generation.get("num_inference_steps", 30))
    guided = 2 if float(generation.get("guidance_scale", 7.5)) > 1 else 1  # classifier-free guidance
    train_step = forward * (2 + recompute) * schedule["accumulate_grad_batches"]
    per_round = forward / batch * val * steps * guided
    size = {"prompts": samples, "images_per_prompt": 1, "inference_steps": steps,
            "unet_forwards_per_round": samples * steps * guided}
    return _share(size, train_step, per_round, rounds, schedule)
