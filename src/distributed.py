"""What running on several processes needs beyond Lightning's defaults: evaluation shards without
repeated samples, FSDP wrapping of a model's own blocks, and knowing whether a cluster launched us."""

import logging
import signal
from typing import Any

import torch
from lightning.fabric.plugins.environments import LSFEnvironment, SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from torchmetrics import Metric

from src.errors import UserError

log = logging.getLogger(__name__)

# the cluster environments Lightning detects by itself (Kubeflow and MPI need an explicit plugin)
CLUSTER_ENVIRONMENTS = {"SLURM": SLURMEnvironment, "torchrun": TorchElasticEnvironment, "LSF": LSFEnvironment}


def detected_cluster() -> str | None:
    """The name of the cluster environment that launched this process (SLURM, torchrun, ...), if any."""
    return next((name for name, env in CLUSTER_ENVIRONMENTS.items() if env.detect()), None)


def eval_sampler(dataset: Any, trainer: Any) -> UnrepeatedDistributedSampler | None:
    """Each process evaluates every ``world_size``-th sample, and no sample twice.

    Lightning's default ``DistributedSampler`` pads the last round by repeating samples so every process
    gets as many; metrics over a validation set must see each sample exactly once. Evaluation runs no
    collective per batch (torchmetrics syncs once at ``compute``), so shards one batch apart are safe.
    ``None`` on one process: the loader keeps its sequential order.
    """
    kwargs = getattr(trainer, "distributed_sampler_kwargs", None) if trainer is not None else None
    if not kwargs or kwargs.get("num_replicas", 1) <= 1:
        return None
    world = kwargs["num_replicas"]
    if len(dataset) < world:
        raise UserError(f"{len(dataset)} evaluation sample(s) for {world} processes: every process needs at least "
                        "one — evaluate more samples or use fewer devices")
    return UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=kwargs["rank"], shuffle=False)


class NoSplitModulesPolicy(ModuleWrapPolicy):
    """FSDP auto-wrap policy: one FSDP unit per block the model itself declares indivisible.

    Hugging Face models name their repeated blocks in ``_no_split_modules`` (``T5Block``, ``GPT2Block``,
    the UNet's ``BasicTransformerBlock`` ...), the same list accelerate's FSDP plugin wraps by default,
    so one policy fits every model family without naming classes in the config.
    """

    def __init__(self):
        super().__init__(set())

    @staticmethod
    def block_classes(root: torch.nn.Module) -> set[type[torch.nn.Module]]:
        names = {name for m in root.modules() for name in (getattr(m, "_no_split_modules", None) or [])}
        return {type(m) for m in root.modules() if type(m).__name__ in names}

    def _run_policy(self, root_module, ignored_modules, root_kwargs):
        self._module_classes = self.block_classes(root_module)
        if not self._module_classes:
            raise UserError(f"trainer=fsdp found no blocks to shard in {type(root_module).__name__} (no "
                            "_no_split_modules) — use trainer=ddp, or set trainer.strategy.auto_wrap_policy")
        return super()._run_policy(root_module, ignored_modules, root_kwargs)


def concatenate_list_states(metric) -> None:
    """Make torchmetrics gather each list state once, as one concatenated tensor.

    A list state registered with ``dist_reduce_fx=None`` (ROUGEScore's per-sentence scores, KID's
    features) is gathered element by element; processes holding different numbers of elements — as
    unrepeated evaluation shards do — would then wait on each other forever. ``"cat"`` gathers once.
    """
    for name, value in metric.metric_state.items():
        if isinstance(value, list):
            metric.add_state(name, [], dist_reduce_fx="cat")


def unshare_metric_states(module: torch.nn.Module) -> None:
    """Give this process its own copy of every torchmetrics state.

    ``ddp_spawn`` sends the module to its processes through ``torch.multiprocessing``, which moves every
    CPU tensor into shared memory. Lightning clones parameters and buffers back; metric states are
    neither, so two processes adding in place (FID's ``fake_features_num_samples += n``, a mean's running
    sum) would write into one tensor and every count would be summed twice at sync.
    """
    for metric in module.modules():
        if not isinstance(metric, Metric):
            continue
        for name in metric._defaults:
            value = getattr(metric, name)
            if isinstance(value, torch.Tensor) and value.is_shared():
                setattr(metric, name, value.clone())
            elif isinstance(value, list):
                setattr(metric, name, [v.clone() if isinstance(v, torch.Tensor) and v.is_shared() else v
                                       for v in value])


# -- Ctrl+C / SIGTERM: stop between training steps, every process at the same one ------------------------------
def spawns_workers(trainer: Any) -> bool:
    """``strategy=ddp_spawn``: ``fit`` runs in worker processes that the calling process starts and waits for."""
    return isinstance(getattr(trainer.strategy, "launcher", None), _MultiProcessingLauncher)


def is_spawning_parent(trainer: Any) -> bool:
    """The process that started ddp_spawn workers: it trains nothing, so it holds no state worth saving."""
    return spawns_workers(trainer) and not torch.distributed.is_initialized()


def is_spawned_worker(trainer: Any) -> bool:
    return spawns_workers(trainer) and torch.distributed.is_initialized()


class StopOnSignal:
    """Ctrl+C and SIGTERM stop training after the current optimizer step (a second Ctrl+C stops at once).

    A KeyboardInterrupt raised at an arbitrary point could land between the optimizer step and the step
    counter (the saved state would replay a step, so a resumed run would not continue the same run) or leave one
    rank inside a collective the others never join. So the handler only notes the signal, and after each
    training step every process agrees (one all-reduce) whether any got one. Lightning runs its interrupt
    handling in the process that called ``fit``; under ddp_spawn that process holds no weights, so the workers
    handle the signal here. Torch's spawn sends SIGINT to a worker whose parent dies, so a parent killed by
    SIGTERM stops them this way as well. (Not during validation: ranks may hold different numbers of batches.)
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM), again_stops_now: bool = True):
        # not in ddp_spawn workers: the launcher passes the Ctrl+C that already reached them on once more
        self.signals, self.again_stops_now = signals, again_stops_now
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._note)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            if signal.getsignal(signum) == self._note:  # never over a handler installed after ours
                signal.signal(signum, handler)
        self._previous = {}

    def _note(self, signum: int, frame: Any) -> None:
        if self.again_stops_now and self.signum == signal.SIGINT and signum == signal.SIGINT:
            self.uninstall()
            raise KeyboardInterrupt  # pressed again: now
        if not self.signum and signum == signal.SIGINT:
            log.warning("Ctrl+C: stopping after the current training step (press again to stop now)")
        self.signum = self.signum or signum

    def agreed_signal(self, trainer: Any) -> int:
        """The signal any process got (0: none); a collective, so every process must call it at the same step."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()
                and torch.distributed.get_world_size() > 1):
            return self.signum
        flag = torch.tensor([int(self.signum)], device=trainer.strategy.root_device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item())

    @staticmethod
    def exception_for(signum: int) -> BaseException:
        """What Lightning raises for the signal in a single process (the run report names the stop after it)."""
        return SIGTERMException() if signum == signal.SIGTERM else KeyboardInterrupt()


def forward_interrupt_to_workers(trainer: Any) -> None:
    """From the spawning parent: pass Ctrl+C on to the workers (a ``kill -INT`` of the parent reaches no one else);
    they stop after their current step, save, and the parent's exit waits for them."""
    trainer.strategy.launcher.kill(signal.SIGINT)
