"""Row c: generation-based ROUGE-L/BLEU over validation samples, the framework's evaluation path
(``Trainer.validate``: length-sorted batches of ``data.eval_batch_size``, loss and metrics) against a
loop that generates one sample at a time with the same model and generation settings.

Run A-B-A (framework, one at a time, framework) so a drift in the machine's load cancels out.
"""

import time

import torch
from hydra.utils import instantiate

from bench.common import WORK, compose, row, t5_small_dir


def eval_config(n: int, extra: list[str] = ()):
    # the bundled sample has ~600 records: a 34% validation split holds 200
    return compose("train", ["model=flan_t5", f"model.pretrained={t5_small_dir()}", "data=amazon_sample",
                             "trainer=cpu", "trainer.enable_progress_bar=false", "data.val_fraction=0.34",
                             f"data.limit_val_samples={n}", *extra], WORK / "runs" / "c_evaluation")


def framework_validate(cfg, module, datamodule) -> tuple[float, dict, dict]:
    trainer = instantiate(cfg.trainer, devices=1, logger=False, callbacks=[], enable_checkpointing=False)
    start = time.perf_counter()
    scores = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    seconds = time.perf_counter() - start
    return seconds, {k: round(float(v), 4) for k, v in scores.items()}, \
        {p["uid"]: p["prediction"] for p in module.predictions}


@torch.inference_mode()
def one_at_a_time(module, split) -> tuple[float, dict, dict]:
    """The reference scripts' loop: generate each sample alone, then score them all."""
    from src.metrics.text import TextGenerationMetrics

    model, tokenizer = module.model.eval(), module.tokenizer
    metrics = TextGenerationMetrics()
    predictions = {}
    start = time.perf_counter()
    for sample in split:
        ids = torch.tensor([sample["input_ids"]])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **module.generation)
        predictions[sample["uid"]] = tokenizer.decode(out[0], skip_special_tokens=True).strip()
        metrics.update([predictions[sample["uid"]]], [sample["target"]])
    scores = {k: round(float(v), 4) for k, v in metrics.compute().items()}
    return time.perf_counter() - start, scores, predictions


def bench_evaluation(quick: bool) -> dict:
    from src.runtime import build_model_and_data

    n = 40 if quick else 200
    cfg = eval_config(n)
    module, datamodule = build_model_and_data(cfg)
    datamodule.prepare_data()
    datamodule.setup("validate")
    split = datamodule.splits["val"]
    first, scores, batched = framework_validate(cfg, module, datamodule)
    alone, alone_scores, singles = one_at_a_time(module, split)
    second, _, _ = framework_validate(cfg, module, datamodule)
    framework = (first + second) / 2
    same = sum(batched[u] == singles[u] for u in singles) / len(singles)
    ratio = alone / framework
    return row("c", f"evaluation wall time over {len(split)} validation samples (generate + ROUGE-L/BLEU), "
               "batched length-sorted vs one at a time", round(framework, 1), round(alone, 1), "s", round(ratio, 2),
               ">= 6x", ratio >= 6, samples=len(split), eval_batch_size=cfg.data.eval_batch_size,
               generation=dict(module.generation), framework_runs_seconds=[round(first, 1), round(second, 1)],
               framework_scores=scores, one_at_a_time_scores=alone_scores, identical_predictions=round(same, 3),
               framework_also_computes="val/loss (one forward pass per batch)")
