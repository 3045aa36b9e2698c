"""Training order that a resumed run replays exactly: shuffled by ``(seed, epoch)`` only, sharded across
processes, and resumable mid-epoch (the batches a checkpoint has already trained on are skipped).

Lightning saves the ``state_dict()`` of a training loader that has one (``fit_loop`` → ``combined_loader``)
and hands it back to ``load_state_dict()`` on resume; a plain ``DataLoader`` with ``shuffle=True`` would
draw a new order from the global RNG instead.
"""

import math
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler
from transformers.trainer_pt_utils import get_length_grouped_indices

from src.errors import UserError


class ResumableShuffle(DistributedSampler):
    """This process's share of a permutation drawn from ``(seed, epoch)``, optionally with one seed per item.

    Several processes: the permutation is padded by repeating its start to a multiple of ``num_replicas``
    and process ``rank`` takes every ``num_replicas``-th index, as ``DistributedSampler`` does (so every
    process runs as many steps). Being a ``DistributedSampler``, Lightning keeps it instead of wrapping it.
    ``item_seeds=True`` yields ``(index, seed)`` pairs: an item's augmentation draws from its own seed,
    never from the global RNG the training step uses, whatever the number of workers.
    ``lengths`` (one per item) groups the permutation as Hugging Face's ``group_by_length`` does (its own
    ``get_length_grouped_indices``): megabatches of up to 50 batches, each sorted by length, the longest item
    in the first batch; so batches pad little and an out-of-memory shows at the first step.

    >>> s = ResumableShuffle(5, seed=1); s.set_epoch(3); first = list(s); s.set_epoch(3)
    >>> list(s) == first, sorted(first)
    (True, [0, 1, 2, 3, 4])
    """

    def __init__(self, size: int, seed: int, num_replicas: int = 1, rank: int = 0, item_seeds: bool = False,
                 lengths: list[int] | None = None, batch_size: int = 1):
        # no super().__init__: it reads the process group; the attributes Lightning looks at are set here
        self.size, self.seed, self.item_seeds = size, seed, item_seeds
        self.lengths, self.batch_size = lengths, batch_size
        self.num_replicas, self.rank, self.shuffle, self.drop_last = num_replicas, rank, True, False
        self.num_samples = math.ceil(size / num_replicas)
        self.total_size = self.num_samples * num_replicas
        self.epoch = 0
        self.start = 0  # items of this epoch's share already trained on (set on resume)

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this before every epoch (and on resume)
        if epoch != self.epoch:
            self.start = 0
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def share(self, epoch: int, rank: int | None = None) -> list:
        """This process's (or ``rank``'s) items for ``epoch``, in order."""
        rank = self.rank if rank is None else rank
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.lengths is None:
            order = torch.randperm(self.size, generator=g).tolist()
        else:  # grouped across all processes' batches of a step, so that every process's batch is grouped
            order = get_length_grouped_indices(self.lengths, self.batch_size * self.num_replicas, generator=g)
        items = list(zip(order, torch.randint(2**31 - 1, (self.size,), generator=g).tolist())) \
            if self.item_seeds else order
        items += items[:self.total_size - self.size]
        return items[rank:self.total_size:self.num_replicas]

    def __iter__(self):
        start, self.start = self.start, 0
        items = self.share(self.epoch)[start:]
        self.epoch += 1  # outside Lightning (no set_epoch), the next pass still gets a new order
        return iter(items)


class ResumableLoader(DataLoader):
    """A ``DataLoader`` whose state is where its sampler's epoch stands: ``{"epoch", "samples"}``.

    With ``label_tokens`` (one count per item) and ``accumulate``, every batch carries ``step_label_tokens``: the
    label tokens of the whole optimizer step it belongs to, over all its micro-batches and all processes. The order
    comes from ``(seed, epoch)`` alone, so every process computes it for every process, without a collective; a
    loss divided by it is the token mean over the step, whatever batch size, accumulation and process count.

    ``grouped`` records whether the order is grouped by length: resuming under the other setting would train
    on another order, so it is refused.

    It counts the batches it has handed out in the current pass (Lightning does not prefetch from a
    loader with a length), so a checkpoint written after batch ``k`` resumes at batch ``k + 1``. The pass
    starts at the first ``next()``, not at ``iter()``: Lightning calls ``iter()`` before ``set_epoch``
    when a run starts, and worker processes would fetch indices of the wrong epoch.
    """

    _pass_epoch: int = 0
    _pass_start: int = 0
    _served: int = 0
    label_tokens: list[int] | None = None
    accumulate: int = 1
    trainer: Any = None

    def __iter__(self):
        sampler = self.sampler if isinstance(self.sampler, ResumableShuffle) else None
        if sampler is not None:
            self._pass_epoch, self._pass_start = sampler.epoch, sampler.start
        self._served = 0
        steps = self.step_tokens(self._pass_epoch) if sampler is not None and self.label_tokens is not None else None
        first = self._pass_start // (self.batch_size or 1)
        for batch in super().__iter__():
            if steps is not None and isinstance(batch, dict):
                batch["step_label_tokens"] = torch.tensor(steps[first + self._served])
            self._served += 1
            yield batch

    def step_tokens(self, epoch: int) -> list[int]:
        """For each batch of ``epoch``: the label tokens of the optimizer step it is in. Lightning steps every
        ``accumulate`` batches and on the epoch's last batch (``trainer.num_training_batches`` when limited)."""
        sampler, size = self.sampler, self.batch_size or 1
        per_batch = None
        for rank in range(sampler.num_replicas):  # the same batches every process draws: all shares of the step
            share = sampler.share(epoch, rank)
            sums = [sum(self.label_tokens[i] for i in share[b:b + size]) for b in range(0, len(share), size)]
            per_batch = sums if per_batch is None else [a + b for a, b in zip(per_batch, sums)]
        batches = len(per_batch)
        limit = getattr(self.trainer, "num_training_batches", None)
        if isinstance(limit, int) and 0 < limit < batches:
            batches = limit
        steps = []
        for start in range(0, batches, self.accumulate):
            window = per_batch[start:min(start + self.accumulate, batches)]
            steps += [sum(window)] * len(window)
        return steps + per_batch[batches:]

    def state_dict(self) -> dict[str, Any]:
        if not isinstance(self.sampler, ResumableShuffle):  # e.g. overfit_batches' sequential sampler
            return {}
        samples = min(self._pass_start + self._served * (self.batch_size or 1), len(self.sampler))
        return {"epoch": self._pass_epoch, "samples": samples, "grouped": self.sampler.lengths is not None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if isinstance(self.sampler, ResumableShuffle) and state:
            difference = grouping_difference(state, self.sampler.lengths is not None)
            if difference:
                raise UserError(f"the checkpoint was trained with {difference} — resume with the settings it was "
                                "trained with (another would train on another order)")
            self.sampler.epoch, self.sampler.start = state["epoch"], state["samples"]
            self._pass_epoch, self._pass_start, self._served = state["epoch"], state["samples"], 0


def grouping_difference(state: dict[str, Any], grouped: bool) -> str | None:
    """``"data.group_by_length=true, this run has false"`` when a loader ``state`` was saved under the other
    setting (states from before the option trained ungrouped); else None."""
    saved = state.get("grouped", False)
    if saved == grouped:
        return None
    return f"data.group_by_length={str(saved).lower()}, this run has {str(grouped).lower()}"


def resumable_loader(dataset, batch_size: int, seed: int, trainer=None, item_seeds: bool = False,
                     lengths: list[int] | None = None, label_tokens: list[int] | None = None,
                     **kwargs: Any) -> ResumableLoader:
    """The training loader of a datamodule: resumable order, this process's shard under ddp; batches of
    similar ``lengths`` when given; each batch with its optimizer step's label tokens when ``label_tokens`` are
    given (``ResumableLoader``)."""
    dist = getattr(trainer, "distributed_sampler_kwargs", None) if trainer is not None else None
    world, rank = (dist["num_replicas"], dist["rank"]) if dist else (1, 0)
    sampler = ResumableShuffle(len(dataset), seed, num_replicas=world, rank=rank, item_seeds=item_seeds,
                               lengths=lengths, batch_size=batch_size)
    # its own generator: starting a pass draws the workers' base seed from it, not from the global RNG that a
    # resumed run restores (src/callbacks/resume_state.py) — else an epoch's first step would see another draw
    kwargs.setdefault("generator", torch.Generator().manual_seed(seed))
    loader = ResumableLoader(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
    if label_tokens is not None:
        loader.label_tokens, loader.trainer = list(label_tokens), trainer
        loader.accumulate = int(getattr(trainer, "accumulate_grad_batches", 1) or 1) if trainer is not None else 1
    return loader
