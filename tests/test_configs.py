"""Every config composes, and trainer configs fail clearly on hardware this machine lacks."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from src.errors import UserError
from src.runtime import check_trainer_config
from tests.conftest import ROOT, compose_config, run_cli

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
TRAINERS = sorted(p.stem for p in (ROOT / "conf" / "trainer").glob("*.yaml"))
LOGGERS = sorted(p.stem for p in (ROOT / "conf" / "logger").glob("*.yaml"))
DEBUGS = sorted(p.stem for p in (ROOT / "conf" / "debug").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("trainer", TRAINERS)
def test_experiment_composes_with_every_trainer(experiment, trainer, tmp_path):
    cfg = compose_config("train", [f"experiment={experiment}", f"trainer={trainer}"], tmp_path)
    resolved = OmegaConf.to_container(cfg.model, resolve=True)  # every interpolation resolves
    assert resolved["_target_"].startswith("src.modules.")
    assert cfg.callbacks.model_checkpoint.monitor == cfg.model.monitor
    assert cfg.callbacks.model_checkpoint.mode == cfg.model.mode
    assert cfg.trainer._target_ == "lightning.pytorch.trainer.Trainer"


@pytest.mark.parametrize("group,options", [("logger", LOGGERS), ("debug", DEBUGS)])
def test_groups_compose(group, options, tmp_path):
    for option in options:
        cfg = compose_config("train", [f"{group}={option}"], tmp_path)
        # every interpolation outside Hydra's own node resolves
        OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)


def test_reference_experiment_matches_reference_setup(tmp_path):
    cfg = compose_config("train", ["experiment=amazon_flan_t5"], tmp_path)
    assert cfg.model.pretrained == "google/flan-t5-base"
    assert cfg.data.batch_size == 1 and cfg.trainer.accumulate_grad_batches == 16
    assert cfg.trainer.max_epochs == 3
    assert cfg.val_every_n_steps == 200  # a checkpoint every 200 optimizer steps
    assert cfg.data.limit_train_samples == 3032 * 16  # the reference's 3032 optimizer steps of 16 samples per epoch


def test_model_configs_name_their_module_and_source(tmp_path):
    for model, pretrained in [("flan_t5", "google/flan-t5-base"), ("ptt5", "unicamp-dl/ptt5-base-portuguese-vocab")]:
        cfg = compose_config("train", [f"model={model}", "model.pretrained=/some/local/dir"], tmp_path)
        assert cfg.model.pretrained == "/some/local/dir"  # a local directory is accepted as-is
        cfg = compose_config("train", [f"model={model}"], tmp_path)
        assert cfg.model.pretrained == pretrained


def test_optuna_sweep_composes_and_maximises_monitor(tmp_path):
    cfg = compose_config("train", ["hparams_search=rouge_optuna", "experiment=quickstart"], tmp_path)
    assert cfg.hydra.sweeper.direction == "maximize" and cfg.model.mode == "max"
    assert cfg.optimized_metric == "val/rougeL_best"
    assert "model.lora.r" in cfg.hydra.sweeper.params


def test_optuna_direction_follows_the_monitor_mode(tmp_path):
    cfg = compose_config("train", ["hparams_search=rouge_optuna", "model.monitor=val/loss", "model.mode=min"],
                         tmp_path)
    assert cfg.hydra.sweeper.direction == "minimize" and cfg.optimized_metric == "val/loss_best"


def test_optuna_minimises_a_loss_objective_whatever_the_monitor(tmp_path):
    cfg = compose_config("train", ["hparams_search=rouge_optuna", "experiment=quickstart", "optimized_metric=val/loss"],
                         tmp_path)
    assert cfg.model.mode == "max" and cfg.hydra.sweeper.direction == "minimize"


def test_monitor_with_the_wrong_direction_is_refused(cache_dir, tmp_path):
    from hydra.utils import instantiate

    from src.errors import find_user_error

    cfg = compose_config("train", ["experiment=quickstart", "model.mode=min"], tmp_path)
    with pytest.raises(Exception) as info:
        instantiate(cfg.model)
    assert "val/rougeL is better when higher — set model.mode=max" in str(find_user_error(info.value))


def test_evaluate_config_composes(tmp_path):
    cfg = compose_config("evaluate", ["ckpt=base"], tmp_path)
    assert cfg.split == "test" and cfg.ckpt == "base"


@pytest.mark.parametrize("trainer,message", [
    ({"accelerator": "mps"}, "trainer=mps needs Apple silicon"),
    ({"accelerator": "gpu", "devices": 1}, "needs a CUDA GPU"),
    ({"accelerator": "cpu", "precision": "16-mixed"}, "not supported on CPU"),
    ({"accelerator": "cpu", "precision": "bf16-true"}, "would keep the LoRA weights .* use bf16-mixed"),
])
def test_missing_hardware_is_a_user_error(trainer, message, monkeypatch):
    monkeypatch.setattr("torch.backends.mps.is_available", lambda: False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(UserError, match=message):
        check_trainer_config(OmegaConf.create(trainer))


def test_cpu_trainers_pass_the_hardware_check(tmp_path):
    for trainer in ("cpu", "ddp_sim", "default"):
        check_trainer_config(compose_config("train", [f"trainer={trainer}"], tmp_path).trainer)


def test_mps_on_this_machine_stops_with_one_line_before_loading(cache_dir):
    # a new interpreter, as a user starts it: whatever importing the libraries prints would show here too
    proc = run_cli("train.py", "model=flan_t5", "data=amazon", "trainer=mps", check=False, fresh=True)
    assert proc.returncode == 2
    error_lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert error_lines == ["error: trainer=mps needs Apple silicon with PyTorch's MPS backend, which this machine "
                           "lacks — use trainer=cpu (or trainer=gpu on a CUDA machine)"]


def test_cfg_job_prints_composed_config_without_hardware():
    proc = run_cli("train.py", "model=flan_t5", "data=amazon", "trainer=mps", "--cfg", "job")
    assert "accelerator: mps" in proc.stdout and "google/flan-t5-base" in proc.stdout


def test_project_files_exist():
    for name in ("README.md", "pyproject.toml", ".ci/run", "train.py", "evaluate.py"):
        assert Path(ROOT / name).exists(), name
