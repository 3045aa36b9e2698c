"""Training memory and compute, measured on the meta device.

Nothing is guessed per architecture: two training steps of the real architecture (forward, backward, AdamW
step) run on the meta device at the configured batch size and maximum lengths (or resolution) while a
dispatch mode follows every tensor the steps create until it is freed. Its high-water mark is what a
caching allocator must hold beyond the weights: activations saved for the backward pass, the transients of
forward and backward, LoRA gradients and AdamW states. Meta tensors are freed exactly where real ones are
(the same measurement on real CPU tensors gave the same bytes; README "Preflight"). The first forward,
under ``FlopCounterMode``, gives the FLOPs.
"""

import weakref
from functools import partial
from typing import Any

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from transformers.pytorch_utils import Conv1D

from src.families.protocol import ModelPlan

HALF = ("16-mixed", "bf16-mixed", "16", "bf16")
QUANTIZED_BYTES = {"4bit": 0.5 + 0.016, "8bit": 1.0 + 0.016}  # + block constants (NF4 double quantization)
ADAPTER_BYTES = 4 + 4 + 8  # fp32 weight, its gradient, AdamW's two moments
# the two common single-GPU sizes, at the memory nvidia-smi reports on an RTX 4090 and an H100 80GB
GPU_BYTES = {"24 GB": 24_564 * 2**20, "80 GB": 81_559 * 2**20}
CUDA_CONTEXT_BYTES = 2**30  # left free for the CUDA context and fragmentation


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of the tensor storages created inside the mode and still alive, and their high-water mark."""

    def __init__(self, existing: list[torch.Tensor]):
        """``existing``: tensors allocated before (weights), whose in-place updates allocate nothing."""
        super().__init__()
        self.live = self.peak = 0
        self._known = {t.untyped_storage()._cdata for t in existing}
        self._sizes: dict[int, int] = {}
        self._refs: dict[int, weakref.ref] = {}

    def _freed(self, key: int, _ref) -> None:
        self.live -= self._sizes.pop(key, 0)
        self._refs.pop(key, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and args[0].is_meta:
            # a meta tensor has no value; transformers reads one to ask whether a full mask or packed position ids
            # can be skipped ((mask == 1).all()): answer as an unpadded, unpacked batch of the maximum length would
            return True if args[0].dtype == torch.bool else 1
        out = func(*args, **(kwargs or {}))
        for tensor in pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and not tensor._is_view():  # a view allocates nothing
                storage = tensor.untyped_storage()
                key = storage._cdata
                if key not in self._sizes and key not in self._known:  # a new storage (not an in-place result)
                    self._sizes[key] = storage.nbytes()
                    self.live += self._sizes[key]
                    self.peak = max(self.peak, self.live)
                    self._refs[key] = weakref.ref(storage, partial(self._freed, key))
        return out


def measure_training(module: torch.nn.Module, loss_fn, count_flops: bool) -> tuple[int, int | None]:
    """(peak bytes beyond the weights over two AdamW steps, FLOPs of one forward if counted) on the meta device."""
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad])
    counter = FlopCounterMode(display=False)
    with LiveTensorBytes([*module.parameters(), *module.buffers()]) as live:
        for step in range(2):  # the second step holds the AdamW states the first one created
            with counter if step == 0 and count_flops else torch.enable_grad():
                loss = loss_fn()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            del loss
    return live.peak, counter.get_total_flops() if count_flops else None


def meta_tensor(*shape: int, dtype=torch.long) -> torch.Tensor:
    return torch.zeros(*shape, dtype=dtype, device="meta")


def quantized_base_bytes(plan: ModelPlan, mode: str) -> int:
    """k-bit QLoRA: the base Linear/Conv1D weights quantized; lm_head and the architecture's fp32 modules
    (T5's ``wo``) and everything else kept in float32 by peft's k-bit preparation."""
    base = plan.network.get_base_model()
    keep = set(getattr(base, "_keep_in_fp32_modules", None) or [])
    total, seen = 0.0, set()
    for name, module in base.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if p.requires_grad or id(p) in seen:  # tied weights (embeddings and LM head) are held once
                continue
            seen.add(id(p))
            quantized = (isinstance(module, (torch.nn.Linear, Conv1D)) and pname == "weight"
                         and "lm_head" not in name and not keep & set(name.split(".")) and "lora_" not in name)
            total += p.numel() * (QUANTIZED_BYTES[mode] if quantized else 4)
    return int(total)


def frozen_dtype(plan: ModelPlan) -> torch.dtype:
    """The base weights' dtype on the meta network (``model.dtype``)."""
    return next(p for p in plan.network.parameters() if not p.requires_grad).dtype


def probe(plan: ModelPlan, cfg, data: dict[str, Any], gradient_checkpointing: bool,
          count_flops: bool = True) -> dict[str, Any]:
    """Two training steps of the network on the meta device at the run's batch and maximum lengths."""
    plan.network.train()
    loss_fn, shape = plan.family.memory_probe(plan, int(cfg.data.batch_size), data, gradient_checkpointing)
    step_bytes, flops = measure_training(plan.network, loss_fn, count_flops)
    return {"gradient_checkpointing": gradient_checkpointing, "shape": shape, "step_bytes": step_bytes,
            "flops": flops}


def estimate(plan: ModelPlan, cfg, probed: dict[str, Any], quantization: str | None) -> dict[str, Any]:
    """The training peak from a probe: frozen weights (as ``quantization`` stores them), LoRA weights and their
    optimizer, and the probe's activations."""
    precision = str(cfg.trainer.get("precision", "32-true"))
    adapter_bytes = ADAPTER_BYTES * plan.trainable  # LoRA weights; their gradients and AdamW states
    activations = max(0, probed["step_bytes"] - (adapter_bytes - 4 * plan.trainable))  # activations, transients
    if frozen_dtype(plan) == torch.float32 and (precision in HALF or quantization):
        activations //= 2  # autocast (or k-bit's 16-bit compute dtype) computes, and so keeps, them in 16 bits
    base_bytes = plan.family.base_weight_bytes(plan, quantization)
    peak = base_bytes + adapter_bytes + activations
    return {
        "precision": precision, "quantization": quantization,
        "gradient_checkpointing": probed["gradient_checkpointing"],
        "activation_shape": probed["shape"], "base_weights_bytes": base_bytes,
        "adapter_and_optimizer_bytes": adapter_bytes, "activations_bytes": activations,
        "estimated_peak_bytes": peak, "forward_flops_per_batch": probed["flops"],
        "counts": ("frozen base weights (in model.dtype, or k-bit where quantized, with what k-bit preparation keeps "
                   "in float32), LoRA weights + gradients + AdamW states (float32), and the high-water mark of "
                   "activations and transients over two training steps at the maximum lengths (16-bit where the "
                   "weights or the autocast are); not counted: the CUDA context (~0.3-1 GB) and allocator "
                   "fragmentation"),
    }


def gpu_fits(plan: ModelPlan, cfg, data: dict[str, Any], configured: dict[str, Any],
             probed: dict[str, Any]) -> list[dict[str, Any]]:
    """The estimated peak with and without 4-bit and gradient checkpointing (the run's own setting is one of the
    four), and whether each fits a 24 GB and an 80 GB GPU with room for the CUDA context. Quantization changes
    the stored weights, not the probe: one more probe, with checkpointing switched."""
    probes = {probed["gradient_checkpointing"]: probed}
    dtype = frozen_dtype(plan)
    rows = []
    for quantization in (None, "4bit"):
        for checkpointing in (False, True):
            if checkpointing not in probes:
                probes[checkpointing] = probe(plan, cfg, data, checkpointing, count_flops=False)
            peak = estimate(plan, cfg, probes[checkpointing], quantization)["estimated_peak_bytes"]
            rows.append({"weights": quantization or str(dtype).removeprefix("torch."),
                         "quantization": quantization, "gradient_checkpointing": checkpointing,
                         "configured": (quantization, checkpointing) == (configured["quantization"],
                                                                         configured["gradient_checkpointing"]),
                         "estimated_peak_bytes": peak,
                         "fits": {gpu: peak + CUDA_CONTEXT_BYTES <= size for gpu, size in GPU_BYTES.items()}})
    return rows
