"""val_every_n_steps: validation and checkpoints at multiples of optimizer steps, and the reference recipes."""

import csv
from pathlib import Path

import lightning as L
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from src.callbacks.validation_interval import ValidationInterval
from src.errors import UserError, find_user_error
from tests.conftest import ROOT, compose_config, run_cli

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))

# Tiny T5: 28 training samples in batches of 4 = 7 batches per epoch, accumulated by 3, so Lightning steps
# after batches 3, 6 and 7 (an epoch's last batch steps too): 3 optimizer steps per epoch.
ACCUMULATED = ["experiment=quickstart", "logger=csv", "trainer.enable_progress_bar=false", "test=false",
               "data.limit_train_samples=28", "data.batch_size=4", "trainer.accumulate_grad_batches=3",
               "data.limit_val_samples=4", "data.eval_batch_size=4", "model.generation.max_new_tokens=4",
               "trainer.max_epochs=-1", "callbacks.model_checkpoint.save_top_k=-1", "val_every_n_steps=2"]


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps of the checkpoint-{step}.ckpt files (a second save at one step would be checkpoint-4-v1.ckpt)."""
    names = sorted(p.stem for p in (run_dir / "checkpoints").glob("checkpoint-*.ckpt"))
    assert all(name.removeprefix("checkpoint-").isdigit() for name in names), names
    return sorted(int(name.removeprefix("checkpoint-")) for name in names)


def validations(run_dir: Path) -> int:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return sum(1 for row in csv.DictReader(f) if row.get("val/rougeL"))


def train(run_dir: Path, *overrides: str) -> Path:
    run_cli("train.py", *ACCUMULATED, *overrides, f"hydra.run.dir={run_dir}")
    return run_dir


@pytest.mark.slow
def test_checkpoints_at_step_multiples_across_uneven_epochs(cache_dir, tmp_path):
    # a batch count (val_check_interval=6 across epochs) validates at steps 2, 4, 7 here
    run_dir = train(tmp_path, "trainer.max_steps=8")
    assert checkpoint_steps(run_dir) == [2, 4, 6, 8]  # step 6 ends epoch 2, step 3 (epoch 1's end) has none
    assert validations(run_dir) == 4
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_resume_continues_with_the_next_multiples(cache_dir, tmp_path):
    first = train(tmp_path / "first", "trainer.max_steps=4")  # last.ckpt at step 4, mid-epoch 2
    assert checkpoint_steps(first) == [2, 4]
    # from a mid-epoch last.ckpt to step 6 (the end of epoch 2), then from that epoch-end last.ckpt on
    second = train(tmp_path / "second", "trainer.max_steps=6", f"ckpt_path={first}/checkpoints/last.ckpt")
    third = train(tmp_path / "third", "trainer.max_steps=10", f"ckpt_path={second}/checkpoints/last.ckpt")
    assert checkpoint_steps(second) == [6] and validations(second) == 1  # no second validation at step 4
    assert checkpoint_steps(third) == [8, 10] and validations(third) == 2


def test_a_batch_interval_beside_it_is_refused(tmp_path):
    cfg = compose_config("train", ["experiment=quickstart", "val_every_n_steps=2", "trainer.val_check_interval=6",
                                   "trainer.check_val_every_n_epoch=null"], tmp_path)
    with pytest.raises(Exception) as info:  # when the callbacks are built, before any process is started
        instantiate(cfg.callbacks.validation_interval)
    assert str(find_user_error(info.value)).startswith("val_every_n_steps=2 and trainer.val_check_interval=6 both "
                                                       "say when to validate — keep one")
    # a Trainer built in Python is checked when fit starts
    trainer = L.Trainer(val_check_interval=6, logger=False, enable_checkpointing=False)
    with pytest.raises(UserError, match="keep one"):
        ValidationInterval(every_n_steps=2).setup(trainer, None, "fit")
    with pytest.raises(UserError, match="not a positive number"):
        ValidationInterval(every_n_steps=0)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_builds_its_validation_interval(experiment, tmp_path):
    cfg = compose_config("train", [f"experiment={experiment}"], tmp_path)
    callback = instantiate(cfg.callbacks.validation_interval)
    assert callback.every_n_steps == cfg.val_every_n_steps


def test_reference_recipes_in_optimizer_steps(tmp_path):
    expected = {"shoes_sd15": 500, "amazon_flan_t5": 200, "amazon_dialogpt": 500, "quickstart_shoes": 30}
    for experiment, every_n_steps in expected.items():
        cfg = compose_config("train", [f"experiment={experiment}"], tmp_path)
        assert cfg.val_every_n_steps == every_n_steps, experiment
        assert cfg.trainer.val_check_interval == 1.0 and cfg.trainer.check_val_every_n_epoch == 1, experiment

    flan = compose_config("train", ["experiment=amazon_flan_t5"], tmp_path)
    assert flan.data.limit_train_samples == 48512 == 3032 * flan.data.batch_size * flan.trainer.accumulate_grad_batches
    assert flan.trainer.max_epochs == 3
    tarot = compose_config("train", ["experiment=tarot_ptt5"], tmp_path)
    assert (tarot.data.batch_size, tarot.trainer.accumulate_grad_batches) == (4, 2)  # effective batch 8


def test_shoes_sd15_takes_the_trainers_precision(tmp_path):
    mps = compose_config("train", ["experiment=shoes_sd15", "trainer=mps"], tmp_path)
    assert mps.trainer.precision == "32-true"
    gpu = compose_config("train", ["experiment=shoes_sd15", "trainer=gpu"], tmp_path)
    assert OmegaConf.to_container(gpu.trainer)["precision"] == "${cuda_mixed_precision:}"
