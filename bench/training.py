"""Rows a and j (training overhead) and b (padding), on T5-shaped models with random weights
(t5-small; flan-t5-base for j).

a. The framework as train.py builds it (Hydra compose → ``build_model_and_data`` → ``Trainer.fit`` with
   the default callbacks and the TensorBoard logger; only the progress bar is off and validation is
   skipped, ``trainer.limit_val_batches=0``) against a hand-written PyTorch + peft loop doing the same
   work per step (same LoRA config, AdamW, linear schedule, gradient clipping at 1.0, the datamodule's
   collation) on the same samples, alternated step by step in one process (see ``Interleaved``).
j. Row a's comparison at the flan-t5-base shape (d_model 768, 12+12 layers, untied lm_head), fewer steps:
   its step takes seconds on 2 cores.
b. The same hand-written step on the framework's batches (padded to their own longest sequence) against
   the same samples padded to a fixed 450 tokens (inputs and labels), as the reference scripts did,
   alternated batch by batch.
"""

import time

import lightning as L
import torch
from hydra.utils import instantiate

from bench.common import WORK, compose, flan_t5_base_dir, row, t5_small_dir

FIXED_LENGTH = 450


class Interleaved(L.Callback):
    """Runs the hand-written step right after each framework step, on the same samples fetched and
    collated again, so the two alternate step by step (ABAB...) and share whatever load the machine has.

    A framework step is the time from one ``on_train_batch_start`` to the next (Lightning's fetch and
    collation of the next batch, forward, backward, clipping, optimizer and scheduler, logging, every
    callback) minus the hand-written step that ran in between.
    """

    def __init__(self, manual: "HandWritten", datamodule, warmup: int):
        self.manual, self.warmup = manual, warmup
        split = datamodule.splits["train"]
        self.split, self.collate = split, datamodule.encoder.collate
        self.row_of = {uid: i for i, uid in enumerate(split["uid"])}
        self.framework, self.hand_written, self.samples = [], [], []
        self._start, self._manual_seconds = None, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        now = time.perf_counter()
        if self._start is not None and batch_idx > self.warmup:
            self.framework.append(now - self._start - self._manual_seconds)
        self._start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        start = time.perf_counter()
        rows = [self.row_of[u] for u in batch["uid"]]
        self.manual.step(self.collate([self.split[i] for i in rows]))  # a DataLoader's fetch + collate, then the step
        self._manual_seconds = time.perf_counter() - start
        if batch_idx >= self.warmup:
            self.hand_written.append(self._manual_seconds)
            self.samples.append(len(rows))


def train_config(run: str, steps: int, extra: list[str] = (), pretrained: str | None = None):
    return compose("train", ["model=flan_t5", f"model.pretrained={pretrained or t5_small_dir()}", "data=amazon_sample",
                             "trainer=cpu", "trainer.enable_progress_bar=false", "+trainer.limit_val_batches=0",
                             f"trainer.max_steps={steps}", "trainer.max_epochs=1", *extra], WORK / "runs" / run)


class HandWritten:
    """What one writes without a framework: PeftModel, AdamW, linear schedule, clipping, a for loop."""

    def __init__(self, cfg, total_steps: int):
        from peft import get_peft_model
        from transformers import AutoModelForSeq2SeqLM, get_scheduler

        base = AutoModelForSeq2SeqLM.from_pretrained(cfg.model.pretrained)
        self.model = get_peft_model(base, instantiate(cfg.model.lora, task_type="SEQ_2_SEQ_LM"))
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.model.optimizer.lr,
                                           weight_decay=cfg.model.optimizer.weight_decay)
        self.scheduler = get_scheduler("linear", self.optimizer, num_warmup_steps=0, num_training_steps=total_steps)

    def step(self, batch: dict) -> None:
        loss = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          labels=batch["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def timed(self, batch: dict) -> float:
        start = time.perf_counter()
        self.step(batch)
        return time.perf_counter() - start


def bench_training_overhead(quick: bool, name: str = "a", shape: str = "t5-small", pretrained: str | None = None,
                            warmup_and_steps: tuple[int, int] = (3, 24)) -> dict:
    from src.building import build_model_and_data
    from src.instantiation import instantiate_group

    warmup, steps = (2, 4) if quick else warmup_and_steps
    total = warmup + steps + 1  # the last batch only closes the previous framework step's interval
    cfg = train_config(f"{name}_training", total, pretrained=pretrained)
    module, datamodule = build_model_and_data(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    probe = Interleaved(HandWritten(cfg, total), datamodule, warmup)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    trainer = instantiate(cfg.trainer, callbacks=[*instantiate_group(cfg.get("callbacks")), probe],
                          logger=instantiate_group(cfg.get("logger")) or False)
    trainer.fit(module, datamodule=datamodule)
    pairs = list(zip(probe.framework, probe.hand_written))
    samples = sum(probe.samples[:len(pairs)])
    rate = {"framework": samples / sum(f for f, _ in pairs), "hand-written": samples / sum(h for _, h in pairs)}
    per_step = sorted(f / h for f, h in pairs)
    overhead = per_step[len(per_step) // 2] - 1  # median of the paired steps: robust to a burst of other load
    return row(name, f"training samples/s, framework vs hand-written PyTorch+peft loop ({shape} shape)",
               round(rate["framework"], 2), round(rate["hand-written"], 2), "samples/s", round(overhead, 4),
               "overhead <= 3%", overhead <= 0.03,
               overhead_percent_median_step=round(100 * overhead, 1),
               overhead_percent_total=round(100 * (rate["hand-written"] / rate["framework"] - 1), 1),
               paired_steps=len(pairs), warmup_steps=warmup, batch_size=cfg.data.batch_size,
               framework_callbacks=[type(c).__name__ for c in trainer.callbacks if c is not probe],
               framework_loggers=[type(lg).__name__ for lg in trainer.loggers], threads=torch.get_num_threads())


def bench_training_overhead_base(quick: bool) -> dict:
    """Row j: row a at the flan-t5-base shape; 2 warm-up and 10 paired steps (a pair takes ~8 s on 2 quiet cores)."""
    return bench_training_overhead(quick, "j", "flan-t5-base", flan_t5_base_dir(), warmup_and_steps=(2, 10))


def pad_to(batch: dict, length: int, pad_id: int) -> dict:
    """The same samples padded to ``length`` tokens (inputs with pad, labels with -100)."""
    def pad(t: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(t[:, :length], (0, length - min(t.shape[1], length)), value=value)

    return {"input_ids": pad(batch["input_ids"], pad_id), "attention_mask": pad(batch["attention_mask"], 0),
            "labels": pad(batch["labels"], -100), "uid": batch["uid"]}


def bench_padding(quick: bool) -> dict:
    from src.building import build_model_and_data

    n_dynamic, n_fixed = (2, 1) if quick else (8, 4)
    # the full Amazon config's length limits (128 source / 224 target tokens) on the bundled sample
    cfg = train_config("b_padding", 1, ["data.max_target_length=224"])
    module, datamodule = build_model_and_data(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    L.seed_everything(cfg.seed, verbose=False)
    loader = iter(datamodule.train_dataloader())
    batches = [next(loader) for _ in range(n_dynamic + 1)]
    pad_id = module.tokenizer.pad_token_id
    fixed = [pad_to(b, FIXED_LENGTH, pad_id) for b in batches[:n_fixed + 1]]
    manual = HandWritten(cfg, 1000)
    manual.step(batches[0])  # warm-up, one of each shape
    manual.step(fixed[0])
    totals = {"dynamic": [0.0, 0], "fixed": [0.0, 0]}
    for i, batch in enumerate(batches[1:]):  # ABAB: the two alternate batch by batch
        totals["dynamic"][0] += manual.timed(batch)
        totals["dynamic"][1] += len(batch["uid"])
        if i < n_fixed:
            totals["fixed"][0] += manual.timed(fixed[i + 1])
            totals["fixed"][1] += len(batch["uid"])
    rate = {k: s / t for k, (t, s) in totals.items()}
    ratio = rate["dynamic"] / rate["fixed"]
    lengths = [(b["input_ids"].shape[1], b["labels"].shape[1]) for b in batches[1:]]
    return row("b", "training samples/s, padding to each batch's longest vs to 450 tokens (Amazon sample)",
               round(rate["dynamic"], 2), round(rate["fixed"], 2), "samples/s", round(ratio, 2), ">= 5x",
               ratio >= 5, batch_size=cfg.data.batch_size, batch_lengths_source_target=lengths,
               fixed_length=FIXED_LENGTH, timed_batches={"dynamic": n_dynamic, "fixed": n_fixed})
