"""Training memory and compute, estimated on the meta device.

Activation memory is measured, not guessed: one training forward of the real architecture runs on the
meta device at the configured batch size and maximum lengths (or resolution) under a saved-tensors hook,
which adds up every tensor autograd keeps for the backward pass (parameters excluded). The same forward
under ``FlopCounterMode`` gives its FLOPs.
"""

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from src.preflight.model import ModelPlan

HALF = ("16-mixed", "bf16-mixed", "16", "bf16")
QUANTIZED_BYTES = {"4bit": 0.5 + 0.016, "8bit": 1.0 + 0.016}  # + block constants (NF4 double quantization)
ADAPTER_BYTES = 4 + 4 + 8  # fp32 weight, its gradient, AdamW's two moments


def _storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata


def measure_forward(module: torch.nn.Module, forward) -> tuple[int, int]:
    """(bytes autograd saves for the backward pass, FLOPs) of one forward on the meta device."""
    own = {_storage_key(t) for t in [*module.parameters(), *module.buffers()]}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key not in own:
            saved[key] = tensor.untyped_storage().nbytes()
        return tensor

    counter = FlopCounterMode(display=False)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), counter:
        forward()
    return sum(saved.values()), counter.get_total_flops()


def _meta(*shape: int, dtype=torch.long) -> torch.Tensor:
    return torch.zeros(*shape, dtype=dtype, device="meta")


def text_forward(plan: ModelPlan, batch: int, source: int, target: int):
    model = plan.network
    if plan.family == "seq2seq":
        # no attention mask: on meta, the mask helpers would read its values (all ones: same memory)
        return lambda: model(input_ids=_meta(batch, source), labels=_meta(batch, target))
    ids = _meta(batch, source + target)
    return lambda: model(input_ids=ids, labels=ids)


def unet_forward(plan: ModelPlan, batch: int, resolution: int):
    unet, config = plan.network, plan.network.config
    side = resolution // 8  # the SD VAE downsamples 8x
    latents = _meta(batch, config.in_channels, side, side, dtype=torch.float32)
    text = _meta(batch, 77, config.cross_attention_dim, dtype=torch.float32)
    return lambda: unet(latents, _meta(batch), text)


def quantized_base_bytes(plan: ModelPlan, mode: str) -> int:
    """k-bit QLoRA: the base Linear/Conv1D weights quantized; lm_head and the architecture's fp32 modules
    (T5's ``wo``) and everything else kept in float32 by peft's k-bit preparation."""
    from transformers.pytorch_utils import Conv1D

    base = plan.network.get_base_model()
    keep = set(getattr(base, "_keep_in_fp32_modules", None) or [])
    total = 0.0
    for name, module in base.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                continue
            quantized = (isinstance(module, (torch.nn.Linear, Conv1D)) and pname == "weight"
                         and "lm_head" not in name and not keep & set(name.split(".")) and "lora_" not in name)
            total += p.numel() * (QUANTIZED_BYTES[mode] if quantized else 4)
    return int(total)


def estimate(plan: ModelPlan, cfg, data: dict[str, Any], gradient_checkpointing: bool) -> dict[str, Any]:
    precision = str(cfg.trainer.get("precision", "32-true"))
    quantization = cfg.model.get("quantization")
    batch = int(cfg.data.batch_size)
    network = plan.network
    network.train()
    if plan.family == "diffusion":
        if gradient_checkpointing:
            network.enable_gradient_checkpointing()
        resolution = int(data["resolution"])
        forward = unet_forward(plan, batch, resolution)
        shape = {"batch": batch, "resolution": resolution}
    else:
        if gradient_checkpointing:
            base = network.get_base_model()
            base.gradient_checkpointing_enable()
            base.enable_input_require_grads()
        source = int(data["source_tokens"].get("max_length") or data["source_tokens"]["max"])
        target = int(data["target_tokens"].get("max_length") or data["target_tokens"]["max"])
        forward = text_forward(plan, batch, source, target)
        shape = {"batch": batch, "source_tokens": source, "target_tokens": target}
    activations, flops = measure_forward(network, forward)
    if precision in HALF:  # autocast keeps most saved activations in 16 bits
        activations //= 2
    if plan.family == "diffusion" or not quantization:
        base_bytes = 4 * (plan.total - plan.trainable)  # frozen weights stay float32 (mixed precision too)
    else:
        base_bytes = quantized_base_bytes(plan, quantization)
    adapter_bytes = ADAPTER_BYTES * plan.trainable
    peak = base_bytes + adapter_bytes + activations
    return {
        "precision": precision, "quantization": quantization, "gradient_checkpointing": gradient_checkpointing,
        "activation_shape": shape, "base_weights_bytes": base_bytes, "adapter_and_optimizer_bytes": adapter_bytes,
        "activations_bytes": activations, "estimated_peak_bytes": peak, "forward_flops_per_batch": flops,
        "counts": ("frozen base weights (float32, or k-bit where quantized), LoRA weights + gradients + AdamW "
                   "states (float32), activations saved for the backward pass at the maximum lengths; "
                   "not counted: the CUDA context (~0.3-1 GB) and allocator fragmentation"),
    }
