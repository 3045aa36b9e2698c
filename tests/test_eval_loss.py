"""Text evaluation computes the teacher-forced loss only when something reads it (``model.eval_loss``).

Each test fits a tiny model for a few steps in-process with the default callbacks (epoch summary, run report,
checkpoints), tests the best checkpoint as train.py does, and counts per evaluation stage the forward passes
that carry labels: the loss pass (generation never passes labels).
"""

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping

from src.errors import UserError
from src.building import build_model_and_data
from src.instantiation import instantiate_group
from tests.conftest import compose_config

SMALL = ["logger=csv", "trainer.enable_progress_bar=false", "trainer.max_steps=2", "data.limit_train_samples=8",
         "data.batch_size=4", "data.limit_val_samples=8", "data.eval_batch_size=4", "data.limit_test_samples=8",
         "model.generation.max_new_tokens=4"]
EVAL_BATCHES = 2  # 8 validation (and 8 test) samples in batches of 4
EARLY_STOPPING_ON_LOSS = ["callbacks=[default,early_stopping]", "callbacks.early_stopping.monitor=val/loss",
                          "callbacks.early_stopping.mode=min"]


class LabelledForwards(L.Callback):
    """Counts the model forwards that carry labels (the loss pass) in each evaluation stage."""

    def __init__(self):
        self.counts = {"val": 0, "test": 0}
        self._hook = None

    def _start(self, pl_module, stage):
        def count(module, args, kwargs):
            self.counts[stage] += kwargs.get("labels") is not None

        self._hook = pl_module.model.get_base_model().register_forward_pre_hook(count, with_kwargs=True)

    def on_validation_epoch_start(self, trainer, pl_module):
        self._start(pl_module, "val")

    def on_test_epoch_start(self, trainer, pl_module):
        self._start(pl_module, "test")

    def on_validation_epoch_end(self, trainer, pl_module):
        self._hook.remove()

    on_test_epoch_end = on_validation_epoch_end


@dataclass
class Run:
    fitted: dict[str, Any]  # callback metrics after fit
    tested: dict[str, Any]  # and after testing the best checkpoint
    counts: dict[str, int]  # loss forwards per stage
    report: dict[str, Any]  # metrics.json
    weights: dict[str, torch.Tensor]  # trainable weights at the end of fit
    trainer: L.Trainer


def fit_and_test(tmp_path, *overrides: str, experiment: str = "quickstart") -> Run:
    cfg = compose_config("train", [f"experiment={experiment}", *SMALL, *overrides], tmp_path)
    L.seed_everything(cfg.seed, workers=True)
    module, datamodule = build_model_and_data(cfg)
    datamodule.prepare_data()
    counter = LabelledForwards()
    trainer = instantiate(cfg.trainer, callbacks=[*instantiate_group(cfg.get("callbacks")), counter],
                          logger=instantiate_group(cfg.get("logger")))
    trainer.fit(module, datamodule=datamodule)
    fitted = dict(trainer.callback_metrics)
    weights = {k: v.clone() for k, v in module.state_dict().items()}
    trainer.test(module, datamodule=datamodule, ckpt_path=trainer.checkpoint_callback.best_model_path)
    return Run(fitted, dict(trainer.callback_metrics), counter.counts,
               json.loads((tmp_path / "metrics.json").read_text()), weights, trainer)


def epoch_summary(caplog) -> str:
    lines = [r.getMessage() for r in caplog.records if r.name == "src.callbacks.epoch_summary"]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["quickstart", "quickstart_causal"], ids=["seq2seq", "causal"])
def test_a_rouge_monitor_skips_the_loss_and_shows_none(cache_dir, tmp_path, caplog, experiment):
    caplog.set_level(logging.INFO, logger="src.callbacks.epoch_summary")
    run = fit_and_test(tmp_path, experiment=experiment)  # model.monitor=val/rougeL, model.eval_loss=null
    assert run.counts == {"val": 0, "test": 0}
    assert "val/rougeL" in run.fitted and "val/loss" not in run.fitted
    assert "test/rougeL" in run.tested and "test/loss" not in run.tested
    assert not {"val/loss", "test/loss"} & set(run.report["final_metrics"])
    line = epoch_summary(caplog)
    assert "val/rougeL" in line and "val/loss" not in line


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [("model.monitor=val/loss", "model.mode=min"), ("model.eval_loss=true",)],
                         ids=["monitor", "forced"])
def test_the_loss_is_computed_when_monitored_or_forced(cache_dir, tmp_path, caplog, overrides):
    caplog.set_level(logging.INFO, logger="src.callbacks.epoch_summary")
    run = fit_and_test(tmp_path, *overrides)
    assert run.counts == {"val": EVAL_BATCHES, "test": EVAL_BATCHES}
    assert math.isfinite(float(run.fitted["val/loss"])) and math.isfinite(float(run.tested["test/loss"]))
    assert {"val/loss", "test/loss"} <= set(run.report["final_metrics"])
    assert "val/loss" in epoch_summary(caplog)


@pytest.mark.slow
def test_early_stopping_on_the_loss_gets_it_with_a_rouge_monitor(cache_dir, tmp_path):
    run = fit_and_test(tmp_path, *EARLY_STOPPING_ON_LOSS)
    stopper = next(c for c in run.trainer.callbacks if isinstance(c, EarlyStopping))
    assert run.counts["val"] == EVAL_BATCHES and math.isfinite(float(run.fitted["val/loss"]))
    assert float(stopper.best_score) == pytest.approx(float(run.fitted["val/loss"]))
    # the test split reports what the model config asks for: early stopping only watches validation
    assert run.counts["test"] == 0 and "test/loss" not in run.tested


def test_eval_loss_false_beside_a_loss_consumer_is_refused(cache_dir, tmp_path):
    with pytest.raises(UserError, match="model.eval_loss=false but model.monitor=val/loss"):
        fit_and_test(tmp_path, "model.monitor=val/loss", "model.mode=min", "model.eval_loss=false")
    with pytest.raises(UserError, match="model.eval_loss=false but .*EarlyStopping monitors val/loss"):
        fit_and_test(tmp_path, "model.eval_loss=false", *EARLY_STOPPING_ON_LOSS)


@pytest.mark.slow
def test_skipping_the_loss_does_not_change_training_or_generation(cache_dir, tmp_path):
    # LoRA dropout draws from the RNG in training: a validation (after every step here) that drew from it too
    # would change the steps after it. Eval mode draws nothing, so both runs must match exactly.
    runs = {}
    for forced in ("true", "false"):
        (tmp_path / forced).mkdir()
        runs[forced] = fit_and_test(tmp_path / forced, f"model.eval_loss={forced}", "model.lora.lora_dropout=0.1",
                                    "trainer.val_check_interval=1", "trainer.max_steps=3",
                                    "data.limit_train_samples=16")
    with_loss, without = runs["true"], runs["false"]
    assert with_loss.counts["val"] == 3 * EVAL_BATCHES and without.counts["val"] == 0
    assert with_loss.weights.keys() == without.weights.keys()
    assert all(torch.equal(with_loss.weights[k], without.weights[k]) for k in with_loss.weights)
    assert with_loss.tested["test/rougeL"] == without.tested["test/rougeL"]


def train_with(tmp_path, *overrides: str) -> float | None:
    """train.py's own function (fit, then test when asked), returning the sweep's objective."""
    from src.training import train

    return train(compose_config("train", ["experiment=quickstart", *SMALL, *overrides], tmp_path))


@pytest.mark.slow
def test_a_sweep_optimising_the_loss_gets_it_with_a_rouge_monitor(cache_dir, tmp_path):
    objective = train_with(tmp_path, "optimized_metric=val/loss")  # model.monitor=val/rougeL
    final = json.loads((tmp_path / "metrics.json").read_text())["final_metrics"]
    assert objective is not None and math.isfinite(objective)
    assert objective == pytest.approx(final["val/loss"])


@pytest.mark.parametrize(("overrides", "message"), [
    (("optimized_metric=val/bleu_best",), (r"optimized_metric=val/bleu_best: only model.monitor \(val/rougeL\) has "
                                           r"a _best value")),
    (("optimized_metric=val/loss", "model.eval_loss=false"), "model.eval_loss=false but optimized_metric=val/loss"),
])
def test_an_objective_the_run_cannot_log_is_refused_before_training(cache_dir, tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        train_with(tmp_path, *overrides)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_an_optuna_objective_that_was_not_logged_is_one_line_after_the_run_is_saved(cache_dir, tmp_path):
    (tmp_path / "single").mkdir()
    # a single run, or a grid of Hydra's basic sweeper, only returns the objective: without a test split it has
    # none, and that is no mistake
    assert train_with(tmp_path / "single", "optimized_metric=test/rougeL", "test=false") is None
    (tmp_path / "grid").mkdir()
    assert train_with(tmp_path / "grid", "optimized_metric=test/rougeL", "test=false", "hydra.mode=MULTIRUN") is None
    with pytest.raises(UserError, match=r"optimized_metric=test/rougeL was not logged by this run \(it logged: "
                                        r".*val/rougeL.*\) — set optimized_metric to one of them"):
        train_with(tmp_path, "hparams_search=rouge_optuna", "optimized_metric=test/rougeL", "test=false")
    assert (tmp_path / "metrics.json").is_file() and list((tmp_path / "checkpoints").rglob("*.ckpt"))
