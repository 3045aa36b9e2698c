"""Scale-out: trainer and launcher configs, hardware refusals before loading, unrepeated evaluation shards,
FSDP wrapping, diffusion memory switches, and 2-process runs that match 1-process scores."""

import inspect
import json
import math

import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf, open_dict

from src.distributed import NoSplitModulesPolicy, eval_sampler
from src.errors import UserError
from src.resolvers import cuda_mixed_precision
from src.building import build_model_and_data
from src.runtime import check_hardware, check_trainer_config
from tests.conftest import QUICK, ROOT, compose_config, connect, read_json, run_cli

QUICKSTARTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("quickstart*.yaml"))
LAUNCHERS = {"slurm": "SlurmLauncher", "submitit_slurm": "SlurmLauncher", "parallel": "JoblibLauncher",
             "joblib": "JoblibLauncher"}


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr("torch.backends.mps.is_available", lambda: False)


def one_error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[0]


# -- configs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("experiment", QUICKSTARTS)
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_launchers_compose_with_every_quickstart(experiment, launcher, tmp_path):
    cfg = compose_config("train", [f"experiment={experiment}", f"hydra/launcher={launcher}", "hydra.mode=MULTIRUN",
                                   "hparams_search=rouge_optuna"], tmp_path)
    assert cfg.hydra.launcher._target_.endswith(LAUNCHERS[launcher])
    assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"] == "${hydra.job.num}"  # one run directory per job
    if launcher == "slurm":  # our extension keeps the plugin's schema and sets its documented keys
        assert cfg.hydra.launcher.gpus_per_node == cfg.hydra.launcher.tasks_per_node == 1
        assert {"partition", "timeout_min", "nodes", "mem_gb", "cpus_per_task"} <= set(cfg.hydra.launcher)


def test_cfg_hydra_prints_the_slurm_launcher():
    # Hydra refuses -m together with --cfg; hydra.mode=MULTIRUN composes the multirun config instead
    proc = run_cli("train.py", "hydra.mode=MULTIRUN", "experiment=quickstart", "hydra/launcher=slurm",
                   "hydra.launcher.partition=gpu", "--cfg", "hydra", "-p", "hydra.launcher")
    launcher = OmegaConf.create(proc.stdout.split("\n", 1)[1])
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"


@pytest.mark.parametrize("trainer", ["fsdp", "deepspeed"])
def test_strategy_configs_name_real_arguments(trainer, tmp_path):
    strategy = compose_config("train", [f"trainer={trainer}"], tmp_path).trainer.strategy
    accepted = set(inspect.signature(get_class(strategy._target_).__init__).parameters)
    if trainer == "fsdp":  # FSDPStrategy passes other keywords on to torch's FullyShardedDataParallel
        from torch.distributed.fsdp import FullyShardedDataParallel
        accepted |= set(inspect.signature(FullyShardedDataParallel.__init__).parameters)
    assert set(strategy) - {"_target_"} <= accepted


def test_cuda_precision_follows_bfloat16_support(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda: False)
    assert cuda_mixed_precision() == "16-mixed"
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda: True)
    assert cuda_mixed_precision() == "bf16-mixed"


# -- hardware refusals, before any model is loaded ---------------------------------------------------
@pytest.mark.parametrize("trainer,message", [
    ({"strategy": "deepspeed_stage_2"}, r'needs the deepspeed package and a CUDA GPU .* pip install -e "\.\[deepspeed\]"'),
    ({"strategy": {"_target_": "lightning.pytorch.strategies.FSDPStrategy"}}, "fsdp needs CUDA GPUs"),
    ({"accelerator": "cpu", "num_nodes": 2}, "num_nodes=2 needs a cluster launcher"),
    ({"accelerator": "mps", "precision": "bf16-mixed"}, "trainer=mps needs Apple silicon"),
])
def test_strategies_and_nodes_the_machine_cannot_run(trainer, message, no_gpu, monkeypatch):
    for var in ("SLURM_NTASKS", "TORCHELASTIC_RUN_ID", "LSB_JOBID"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(UserError, match=message):
        check_trainer_config(OmegaConf.create(trainer))


def test_precision_a_gpu_cannot_do(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda: False)
    with pytest.raises(UserError, match="needs a GPU with bfloat16 .*precision=16-mixed"):
        check_trainer_config(OmegaConf.create({"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed"}))
    check_trainer_config(OmegaConf.create({"accelerator": "gpu", "devices": 1, "precision": "16-mixed"}))


def test_slurm_allocation_must_match_devices_and_nodes(monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    monkeypatch.setenv("SLURM_NNODES", "2")
    with pytest.raises(UserError, match="trainer.devices=2 but SLURM starts 4 task"):
        check_trainer_config(OmegaConf.create({"accelerator": "cpu", "devices": 2, "num_nodes": 2}))
    with pytest.raises(UserError, match="the SLURM job has 2 node"):
        check_trainer_config(OmegaConf.create({"accelerator": "cpu", "devices": 4, "num_nodes": 1}))
    check_trainer_config(OmegaConf.create({"accelerator": "cpu", "devices": 4, "num_nodes": 2}))


def test_cli_refusals_are_one_line_before_loading(cache_dir):
    line = one_error_line(run_cli("train.py", "experiment=quickstart", "trainer=deepspeed", check=False))
    assert line == ('error: trainer=deepspeed needs the deepspeed package and a CUDA GPU — on a CUDA machine run '
                    'pip install -e ".[deepspeed]" (or use trainer=ddp)')
    line = one_error_line(run_cli("train.py", "experiment=quickstart", "trainer=fsdp", check=False))
    assert line.startswith("error: trainer.strategy=fsdp needs CUDA GPUs")
    line = one_error_line(run_cli("train.py", "experiment=quickstart", "trainer=ddp_sim", "trainer.num_nodes=2",
                                  check=False))
    assert "needs a cluster launcher" in line
    line = one_error_line(run_cli("train.py", "experiment=quickstart_shoes", "model.attention=xformers", check=False))
    assert "needs the xformers package" in line and "model.attention=sdpa" in line


def test_attention_choice_is_checked_with_the_hardware(tmp_path, no_gpu):
    cfg = compose_config("train", ["experiment=quickstart_shoes", "model.attention=flash"], tmp_path)
    with pytest.raises(UserError, match="model.attention='flash': use one of sdpa, xformers, default"):
        check_hardware(cfg)


# -- evaluation shards ---------------------------------------------------------------------------------
class FakeTrainer:
    def __init__(self, rank: int, world: int):
        self.distributed_sampler_kwargs = {"num_replicas": world, "rank": rank} if world > 1 else None


def shard_uids(loader) -> list:
    return [uid for batch in loader for uid in batch["uid"]]


def test_eval_shards_cover_every_sample_exactly_once(cache_dir, tmp_path):
    cfg = compose_config("train", [*QUICK, "data.limit_val_samples=25", "data.eval_batch_size=4"], tmp_path)
    _, data = build_model_and_data(cfg)
    data.setup("fit")
    data.trainer = FakeTrainer(0, 1)
    single = shard_uids(data.val_dataloader())
    shards = []
    for rank in range(2):
        data.trainer = FakeTrainer(rank, 2)
        shards.append(shard_uids(data.val_dataloader()))
    assert len(single) == 25 and sorted(shards[0] + shards[1]) == sorted(single)
    assert len(shards[0]) == 13 and len(shards[1]) == 12  # one sample apart, none repeated
    # training: each process gets its own shard of the (seed, epoch) order, together every sample once
    train_shards = []
    for rank in range(2):
        data.trainer = FakeTrainer(rank, 2)
        train_shards.append(list(data.train_dataloader().sampler))
    assert len(train_shards[0]) == len(train_shards[1]) == math.ceil(len(data.splits["train"]) / 2)
    assert set(train_shards[0]).isdisjoint(train_shards[1])
    assert set(train_shards[0]) | set(train_shards[1]) == set(range(len(data.splits["train"])))


def test_prompt_shards_and_too_few_samples(tmp_path):
    cfg = compose_config("train", ["experiment=quickstart_shoes", "+data.limit_val_prompts=5"], tmp_path)
    from hydra.utils import instantiate
    data = connect(instantiate(cfg.data), family="diffusion", resolution=cfg.model.resolution)
    data.setup("fit")
    shards = []
    for rank in range(2):
        data.trainer = FakeTrainer(rank, 2)
        shards.append([p for batch in data.val_dataloader() for p in batch["seed"]])
    assert sorted(shards[0] + shards[1]) == list(range(5)) and len(shards[0]) == 3
    with pytest.raises(UserError, match="1 evaluation sample.* for 2 processes"):
        eval_sampler([0], FakeTrainer(0, 2))


# -- FSDP wrapping and diffusion memory switches -------------------------------------------------------
def test_fsdp_policy_wraps_the_blocks_each_family_declares(cache_dir, tmp_path):
    module, _ = build_model_and_data(compose_config("train", QUICK, tmp_path))
    wrapped = NoSplitModulesPolicy()._run_policy(module, set(), {})
    assert {type(m).__name__ for m in wrapped} == {"T5Block"} and len(wrapped) == 4  # 2 encoder + 2 decoder
    with pytest.raises(UserError, match="no blocks to shard"):
        NoSplitModulesPolicy()._run_policy(torch.nn.Linear(2, 2), set(), {})


@pytest.fixture(scope="module")
def shoes_cfg(cache_dir, tmp_path_factory):
    return compose_config("train", ["experiment=quickstart_shoes", "data.batch_size=2"],
                          tmp_path_factory.mktemp("shoes_cfg"))


@pytest.mark.parametrize("attention,processor", [("sdpa", "AttnProcessor2_0"), ("default", "AttnProcessor")])
def test_attention_switch_sets_every_processor(shoes_cfg, attention, processor):
    cfg = shoes_cfg.copy()
    cfg.model.attention = attention
    module, _ = build_model_and_data(cfg)
    assert {type(p).__name__ for p in module.unet.attn_processors.values()} == {processor}


def test_runs_saved_with_the_earlier_enable_xformers_switch_still_build(shoes_cfg):
    cfg = shoes_cfg.copy()
    with open_dict(cfg):
        cfg.model.enable_xformers = False  # what runs saved before model.attention existed hold
    module, _ = build_model_and_data(cfg)
    assert {type(p).__name__ for p in module.unet.attn_processors.values()} == {"AttnProcessor2_0"}


def test_gradient_checkpointing_trains_the_unet_lora_on_cpu(shoes_cfg):
    cfg = shoes_cfg.copy()
    cfg.model.gradient_checkpointing = True
    module, data = build_model_and_data(cfg)
    assert module.unet.is_gradient_checkpointing
    data.setup("fit")
    module.train()
    module.log_train_loss = lambda loss: None  # no trainer attached
    loss = module.training_step(next(iter(data.train_dataloader())), 0)
    loss.backward()
    lora = [p for n, p in module.named_parameters() if "lora_" in n]
    assert torch.isfinite(loss) and lora and all(p.grad is not None for p in lora)
    assert any(p.grad.abs().sum() > 0 for p in lora)


# -- two processes (ddp_spawn on CPU) ----------------------------------------------------------------
def rank_zero_lines(run_dir, last_epoch: str = "") -> dict[str, int]:
    log = (run_dir / "train.log").read_text()
    return {"summary": log.count(f"] - epoch {last_epoch}"), "report": log.count("run report written to"),
            "export": log.count("exported adapter from")}


@pytest.mark.slow
def test_ddp_sim_seq2seq_validates_like_one_process(trained_run, tmp_path):
    """One more epoch of the trained quickstart on 2 processes over 25 (odd) validation samples: the
    2-process val/rougeL equals a 1-process evaluation of the same weights (last.ckpt) on the same samples."""
    run_dir = tmp_path / "ddp"
    run_cli("train.py", *QUICK, "trainer=ddp_sim", "trainer.max_epochs=7", "test=false",
            "data.limit_val_samples=25", f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}",
            f"hydra.run.dir={run_dir}")
    report = read_json(run_dir / "metrics.json")
    assert report["training"]["world_size"] == 2 and report["data"]["sizes"]["val"] == 25
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert rank_zero_lines(run_dir, "7/7 ") == {"summary": 1, "report": 1, "export": 1}
    run_cli("evaluate.py", f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", "split=val",
            f"hydra.run.dir={tmp_path / 'eval'}")
    single = read_json(tmp_path / "eval" / "metrics.json")
    predictions = (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 25
    two = report["final_metrics"]
    assert two["val/rougeL"] > 0.1  # trained weights, so agreement is not two zeros
    assert two["val/rougeL"] == pytest.approx(single["metrics"]["val/rougeL"], abs=1e-4)
    assert two["val/bleu"] == pytest.approx(single["metrics"]["val/bleu"], abs=1e-2)


@pytest.mark.slow
def test_ddp_sim_diffusion_shards_prompts_and_matches_one_process(cache_dir, tmp_path):
    run_dir = tmp_path / "ddp"
    run_cli("train.py", "experiment=quickstart_shoes", "logger=csv", "trainer.enable_progress_bar=false",
            "trainer=ddp_sim", "trainer.max_steps=4", "val_every_n_steps=2", "data.limit_val_prompts=5",
            "test=false", f"hydra.run.dir={run_dir}")
    report = read_json(run_dir / "metrics.json")
    assert report["training"]["world_size"] == 2 and report["training"]["global_step"] == 4
    assert (run_dir / "adapter" / "pytorch_lora_weights.safetensors").is_file()
    assert len(list((run_dir / "checkpoints").glob("checkpoint-*.ckpt"))) == 2
    assert rank_zero_lines(run_dir)["report"] == 1 and rank_zero_lines(run_dir)["export"] == 1
    run_cli("evaluate.py", f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", "split=val",
            f"hydra.run.dir={tmp_path / 'eval'}")
    single = read_json(tmp_path / "eval" / "metrics.json")
    assert len((tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()) == 5
    for key in ("val/fid", "val/clip_mean"):
        assert report["final_metrics"][key] == pytest.approx(single["metrics"][key], rel=1e-3, abs=1e-5), key


@pytest.mark.slow
def test_parallel_launcher_runs_two_jobs_in_their_own_directories(cache_dir, tmp_path):
    run_cli("train.py", "-m", *QUICK, "hydra/launcher=parallel", "model.lora.r=4,8", "debug=limit",
            "trainer.max_epochs=1", "test=false", f"hydra.sweep.dir={tmp_path}")
    for job, rank in ((0, 4), (1, 8)):
        assert read_json(tmp_path / str(job) / "metrics.json")["model"]["lora"]["r"] == rank
        assert json.loads((tmp_path / str(job) / "adapter" / "adapter_config.json").read_text())["r"] == rank
        assert list((tmp_path / str(job) / "checkpoints").glob("checkpoint-*.ckpt"))
