"""Row e: checkpoint size for a flan-t5-base-shaped model (random weights) with LoRA r=16 on q and v.

Both checkpoints are written by ``trainer.save_checkpoint`` after one optimizer step (so both hold the
optimizer state, which covers only the LoRA weights): the framework's module writes adapter weights
only; the same module with LightningModule's default ``state_dict`` writes every weight.
"""

import os

import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from bench.common import WORK, compose, flan_t5_base_dir, row
from src.modules.seq2seq_lora import Seq2SeqLoRAModule


class AllWeightsModule(Seq2SeqLoRAModule):
    """The framework's seq2seq module with Lightning's default checkpoint content: every weight."""

    strict_loading = True

    def state_dict(self, *args, **kwargs):
        return torch.nn.Module.state_dict(self, *args, **kwargs)


def one_step_checkpoint(cfg, target: str, path) -> int:
    from src.building import build_model_and_data

    with open_dict(cfg):
        cfg.model._target_ = target
    module, datamodule = build_model_and_data(cfg)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False)
    trainer.fit(module, datamodule=datamodule)
    trainer.save_checkpoint(path)
    size = os.path.getsize(path)
    os.remove(path)
    return size


def bench_checkpoint_size(quick: bool) -> dict:
    out = WORK / "runs" / "e_checkpoint"
    cfg = compose("train", ["model=flan_t5", f"model.pretrained={flan_t5_base_dir()}", "model.lora.r=16",
                            "data=amazon_sample", "data.batch_size=2", "data.max_source_length=32",
                            "data.max_target_length=16", "trainer=cpu", "trainer.enable_progress_bar=false",
                            "+trainer.limit_val_batches=0", "trainer.max_steps=1"], out)
    adapter = one_step_checkpoint(cfg.copy(), "src.modules.seq2seq_lora.Seq2SeqLoRAModule", out / "adapter.ckpt")
    full = one_step_checkpoint(cfg.copy(), f"{__name__}.AllWeightsModule", out / "full.ckpt")
    ratio = adapter / full
    return row("e", "checkpoint size, adapter-only vs every weight (flan-t5-base shape, LoRA r=16 on q,v)",
               round(adapter / 2**20, 1), round(full / 2**20, 1), "MiB", round(ratio, 4), "<= 3%", ratio <= 0.03,
               adapter_bytes=adapter, full_bytes=full, both_hold="weights + AdamW state (LoRA only) + loop state")
