"""What the entry points share: user errors as one line, library warnings, hardware and launcher checks."""

import importlib.util
import logging
import os
import signal
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from src import distributed
from src.errors import UserError, find_user_error
from src.modules.attention import check_attention
from src.pretrained.loading import check_attn_implementation
from src.pretrained.quantization import check_quantization

log = logging.getLogger(__name__)

HALF_PRECISIONS = {"16-mixed", "16-true", "16", "bf16-mixed", "bf16-true", "bf16"}


# (message, category, module) of warnings raised inside libraries by other libraries' calls: nothing a user of
# this framework can act on, so they stay off the run's console. Each names its message and category exactly.
LIBRARY_DEPRECATIONS = (
    # peft → transformers
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning, ""),
    (r"`gradient_checkpointing_enable` is deprecated", FutureWarning, ""),
    # ours as well (and preflight's disable): their activation_checkpointing_* successors are not in transformers 5.0
    (r"`gradient_checkpointing_disable` is deprecated", FutureWarning, ""),
    # datasets' Dataset.sort always passes null_placement to pyarrow (our length-sorted evaluation splits)
    (r"Specifying null_placement in SortOptions", FutureWarning, r"pyarrow"),
    # Lightning 2.6's pytree helper still builds torch's deprecated LeafSpec
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning"),
    # the diffusion family keeps its frozen VAE and text encoder in eval mode on purpose
    (r"Found \d+ module\(s\) in eval mode at the start of training", PossibleUserWarning, r"lightning"),
)


def ignore_library_warnings() -> None:
    """Install the ``LIBRARY_DEPRECATIONS`` filters in this process (spawned workers start without them)."""
    for message, category, module in LIBRARY_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def run_task(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run ``task(cfg)``; a ``UserError`` becomes one line on stderr and exit status 2."""
    ignore_library_warnings()
    if logging.getLogger().handlers:  # Hydra's handlers already print Lightning's messages once
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True
    try:
        return task(cfg)
    except SIGTERMException:  # Lightning saved what it could; a plain SystemExit() would report success
        raise SystemExit(128 + signal.SIGTERM) from None
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None:
            raise
        log.debug("user error", exc_info=True)  # the traceback stays in the log file only
        print(f"error: {user_error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def check_hardware(cfg: DictConfig) -> None:
    """Everything the hardware must support, checked before any model is loaded."""
    check_quantization(cfg.model.get("quantization"))
    check_attention(cfg.model.get("attention"))
    check_attn_implementation(cfg.model.get("attn_implementation"))
    check_trainer_config(cfg.trainer)


def strategy_name(trainer_cfg: DictConfig) -> str:
    """``ddp``, ``ddp_spawn``, ``fsdp``, ``deepspeed_stage_2`` ... from a string or a ``_target_`` strategy node."""
    strategy = trainer_cfg.get("strategy", "auto")
    if isinstance(strategy, DictConfig):
        target = str(strategy.get("_target_", "")).rsplit(".", 1)[-1]
        return {"FSDPStrategy": "fsdp", "DeepSpeedStrategy": "deepspeed", "DDPStrategy": "ddp"}.get(target, target)
    return str(strategy)


def check_trainer_config(trainer_cfg: DictConfig) -> None:
    """Stop with one line, before any model is loaded, when the hardware cannot run this trainer."""
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    precision = str(trainer_cfg.get("precision", "32-true"))
    strategy = strategy_name(trainer_cfg)
    if strategy.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        raise UserError("trainer=deepspeed needs the deepspeed package and a CUDA GPU — on a CUDA machine run "
                        'pip install -e ".[deepspeed]" (or use trainer=ddp)')
    if strategy.startswith(("fsdp", "deepspeed")) and not torch.cuda.is_available():
        raise UserError(f"trainer.strategy={strategy} needs CUDA GPUs and none is visible — use trainer=ddp_sim to "
                        "try several processes on a CPU, or run on a CUDA machine")
    if precision in ("16-true", "bf16-true"):
        raise UserError(f"precision {precision} would keep the LoRA weights and optimizer state in half precision "
                        f"— use {precision.replace('-true', '-mixed')}")
    devices = trainer_cfg.get("devices", "auto")
    if accelerator == "mps":
        if not torch.backends.mps.is_available():
            raise UserError("trainer=mps needs Apple silicon with PyTorch's MPS backend, which this machine lacks "
                            "— use trainer=cpu (or trainer=gpu on a CUDA machine)")
        if precision in HALF_PRECISIONS:
            raise UserError(f"precision {precision} is not supported on MPS — use trainer.precision=32-true")
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"trainer.accelerator={accelerator} needs a CUDA GPU and none is visible "
                            "— use trainer=cpu, trainer=mps on Apple silicon, or check CUDA_VISIBLE_DEVICES")
        if isinstance(devices, int) and devices > torch.cuda.device_count():
            raise UserError(f"trainer.devices={devices} but only {torch.cuda.device_count()} GPU(s) are visible "
                            "— lower trainer.devices")
        if precision.startswith("bf16") and not torch.cuda.is_bf16_supported():
            raise UserError(f"precision {precision} needs a GPU with bfloat16 (Ampere or newer) "
                            "— use trainer.precision=16-mixed")
    if accelerator == "cpu" and precision.startswith("16"):
        raise UserError(f"precision {precision} is not supported on CPU — use 32-true or bf16-mixed")
    check_cluster(trainer_cfg)


def check_cluster(trainer_cfg: DictConfig) -> None:
    """``num_nodes > 1`` needs a launcher that started one process per device on every node (SLURM's srun,
    torchrun, ...); under SLURM, devices and nodes must match the allocation (Lightning checks it only after
    the model is loaded)."""
    num_nodes = int(trainer_cfg.get("num_nodes", 1) or 1)
    cluster = distributed.detected_cluster()
    if num_nodes > 1 and cluster is None:
        raise UserError(f"trainer.num_nodes={num_nodes} needs a cluster launcher on every node and none was detected "
                        "— start with srun (SLURM), torchrun --nnodes, or hydra/launcher=slurm; or set num_nodes=1")
    if cluster == "SLURM" and not os.environ.get("SLURM_JOB_NAME", "").startswith(("bash", "interactive")):
        devices = trainer_cfg.get("devices", "auto")
        per_node = os.environ.get("SLURM_NTASKS_PER_NODE", "")
        if isinstance(devices, int) and per_node.isdigit() and int(per_node) != devices:
            raise UserError(f"trainer.devices={devices} but SLURM starts {per_node} task(s) per node — set "
                            f"trainer.devices={per_node} (one task per GPU: --ntasks-per-node = GPUs per node)")
        nodes = os.environ.get("SLURM_NNODES", "")
        if nodes.isdigit() and int(nodes) != num_nodes:
            raise UserError(f"trainer.num_nodes={num_nodes} but the SLURM job has {nodes} node(s) — set "
                            f"trainer.num_nodes={nodes}")


def in_sweep() -> bool:
    """This job is one of a Hydra multirun's (``-m``, a sweeper such as Optuna)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweeper_reads_objective() -> bool:
    """This job's return value steers a sweeper (Optuna); Hydra's basic sweeper only runs the grid."""
    return in_sweep() and not str(HydraConfig.get().sweeper.get("_target_", "")).endswith("BasicSweeper")


def check_launcher(cfg: DictConfig) -> None:
    """Lightning's ``ddp`` re-runs the script per GPU with ``sys.argv``; under a Hydra multirun that would
    start a sweep in every child. ``ddp_spawn`` (or a Hydra launcher per job) works."""
    strategy = strategy_name(cfg.trainer)
    devices = cfg.trainer.get("devices", 1)
    multi = devices not in (1, "1") or cfg.trainer.get("num_nodes", 1) != 1
    relaunches = strategy in ("ddp", "fsdp") or strategy.startswith("deepspeed")
    # under SLURM or torchrun every process was started by the cluster, Lightning starts none
    if in_sweep() and relaunches and multi and distributed.detected_cluster() is None:
        raise UserError(f"trainer.strategy={strategy} cannot run inside a local Hydra multirun (each process would "
                        "restart the sweep) — use trainer=ddp_sim on a CPU, or hydra/launcher=slurm on a cluster")
