"""The training loss is the token mean over the whole optimizer step: batch size x accumulation x processes does not
change what a step learns (transformers' ``num_items_in_batch``), for every text family. The evaluation loss is
token-weighted too."""

import lightning as L
import pytest
import torch

from src.building import build_model_and_data
from src.modules.text_lora import TextLoRAModule
from tests.conftest import compose_config, run_cli
from src.targets import state_dict_of

# one SGD step over the same 16 samples; no dropout, no schedule, no validation
STEP = ["data.limit_train_samples=16", "model.optimizer._target_=torch.optim.SGD", "model.optimizer.lr=0.5",
        "model.scheduler=null", "model.lora.lora_dropout=0.0", "data.group_by_length=false"]
EXPERIMENTS = ["quickstart_chat", "quickstart_causal", "quickstart"]


def lora_update(tmp_path, experiment: str, batch: int, accumulate: int) -> dict[str, torch.Tensor]:
    """What one optimizer step changes in the trainable weights, trained in this process."""
    cfg = compose_config("train", [f"experiment={experiment}", *STEP, f"data.batch_size={batch}"], tmp_path)
    L.seed_everything(0, verbose=False)
    module, datamodule = build_model_and_data(cfg)
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, accumulate_grad_batches=accumulate,
                        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 1
    return {k: v.detach() - before[k] for k, v in module.state_dict().items()}


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a)) / torch.sqrt(sum((a[k] ** 2).sum()
                                                                                        for k in a)))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_one_step_learns_the_same_at_16x1_and_1x16(cache_dir, tmp_path, experiment, monkeypatch):
    whole = lora_update(tmp_path, experiment, batch=16, accumulate=1)
    accumulated = lora_update(tmp_path, experiment, batch=1, accumulate=16)
    assert relative_difference(whole, accumulated) < 1e-6
    # a mean per micro-batch (what each step learned before) weights a short sample's tokens more
    monkeypatch.setattr(TextLoRAModule, "step_share", lambda self, batch: 1.0)
    per_batch_means = lora_update(tmp_path, experiment, batch=1, accumulate=16)
    assert relative_difference(whole, per_batch_means) > 1e-3


def test_the_evaluation_loss_is_the_token_mean_of_the_round(cache_dir, tmp_path):
    cfg = compose_config("train", ["experiment=quickstart_chat", "data.limit_val_samples=12", "data.eval_batch_size=5",
                                   "model.eval_loss=true"], tmp_path)
    L.seed_everything(0, verbose=False)
    module, datamodule = build_model_and_data(cfg)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    module.generation = {"max_new_tokens": 1}
    logged = trainer.validate(module, datamodule=datamodule, verbose=False)[0]["val/loss"]
    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            n = int(batch["label_tokens"].sum())
            total += float(module(batch).loss) * n
            tokens += n
    sizes = [len(b["uid"]) for b in datamodule.val_dataloader()]
    assert sizes == [5, 5, 2] and logged == pytest.approx(total / tokens, rel=1e-5)


@pytest.mark.slow
def test_a_step_on_two_processes_learns_what_one_process_learns(cache_dir, tmp_path):
    """trainer=ddp_sim (2 processes, batch 4 x accumulation 2 each) against one process with the 16 samples in one
    batch: the LoRA weights after the step agree to 1e-6 of the step."""
    def run(name: str, *overrides: str) -> dict[str, torch.Tensor]:
        run_dir = tmp_path / name
        run_cli("train.py", "experiment=quickstart_chat", "logger=csv", "trainer.enable_progress_bar=false", *STEP,
                "trainer.max_steps=1", "trainer.max_epochs=-1", "val_every_n_steps=1", "data.limit_val_samples=2",
                "test=false", *overrides, f"hydra.run.dir={run_dir}")
        return state_dict_of(str(run_dir / "checkpoints" / "last.ckpt"))

    one = run("one", "data.batch_size=16")
    two = run("two", "trainer=ddp_sim", "data.batch_size=4", "trainer.accumulate_grad_batches=2")
    cfg = compose_config("train", ["experiment=quickstart_chat", *STEP], tmp_path / "init")
    L.seed_everything(42, verbose=False)  # train.py seeds with the run's seed before building the model
    initial = build_model_and_data(cfg)[0].state_dict()
    assert relative_difference({k: one[k] - initial[k] for k in one}, {k: two[k] - initial[k] for k in one}) < 1e-6
