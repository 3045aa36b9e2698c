"""Row c: generation-based ROUGE-L/BLEU over validation samples, the framework's evaluation path
(``Trainer.validate``: length-sorted batches of ``data.eval_batch_size``, loss and metrics) against a
loop that generates one sample at a time with the same model and generation settings.

The two alternate batch by batch (``OneAtATime`` runs the loop on each batch's samples right after the
framework's step for that batch), so a change in the machine's load hits both alike.
"""

import time

import lightning as L
import torch
from hydra.utils import instantiate

from bench.common import WORK, compose, row, t5_small_dir


def eval_config(n: int, extra: list[str] = ()):
    # the bundled sample has ~600 records: a 34% validation split holds 200
    return compose("train", ["model=flan_t5", f"model.pretrained={t5_small_dir()}", "data=amazon_sample",
                             "trainer=cpu", "trainer.enable_progress_bar=false", "data.val_fraction=0.34",
                             f"data.limit_val_samples={n}", *extra], WORK / "runs" / "c_evaluation")


class OneAtATime(L.Callback):
    """After each validation batch, the reference scripts' loop over the same samples: generate each
    input alone (its own tokens, no padding), collect the texts; ROUGE-L/BLEU over all of them at the end."""

    def __init__(self):
        from src.metrics.text import TextGenerationMetrics

        self.metrics = TextGenerationMetrics()
        self.seconds, self.predictions, self.scores = 0.0, {}, {}

    @torch.inference_mode()
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        start = time.perf_counter()
        for i, uid in enumerate(batch["uid"]):
            ids = batch["input_ids"][i][batch["attention_mask"][i].bool()].unsqueeze(0)
            out = pl_module.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **pl_module.generation)
            self.predictions[uid] = pl_module.tokenizer.decode(out[0], skip_special_tokens=True).strip()
            self.metrics.update([self.predictions[uid]], [batch["target"][i]])
        self.seconds += time.perf_counter() - start

    def on_validation_epoch_end(self, trainer, pl_module):
        start = time.perf_counter()
        self.scores = {k: round(float(v), 4) for k, v in self.metrics.compute().items()}
        self.seconds += time.perf_counter() - start


def bench_evaluation(quick: bool) -> dict:
    from src.building import build_model_and_data

    n = 40 if quick else 200
    cfg = eval_config(n)
    module, datamodule = build_model_and_data(cfg)
    datamodule.prepare_data()
    datamodule.setup("validate")
    alone = OneAtATime()
    trainer = instantiate(cfg.trainer, devices=1, logger=False, callbacks=[alone], enable_checkpointing=False)
    start = time.perf_counter()
    scores = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    framework = time.perf_counter() - start - alone.seconds
    batched = {p["uid"]: p["prediction"] for p in module.predictions}
    same = sum(batched[u] == p for u, p in alone.predictions.items()) / len(alone.predictions)
    ratio = alone.seconds / framework
    return row("c", f"evaluation wall time over {len(batched)} validation samples (generate + ROUGE-L/BLEU), "
               "batched length-sorted vs one at a time", round(framework, 1), round(alone.seconds, 1), "s",
               round(ratio, 2), ">= 7x", ratio >= 7, samples=len(batched), eval_batch_size=cfg.data.eval_batch_size,
               generation=dict(module.generation),
               framework_scores={k: round(float(v), 4) for k, v in scores.items()},
               one_at_a_time_scores=alone.scores, identical_predictions=round(same, 3),
               framework_also_computes="nothing: val/loss is skipped unless something reads it (model.eval_loss)")
