"""Rows g and h: the framework against what its users ran before, Hugging Face's ``Seq2SeqTrainer`` + peft,
on the same model (tiny T5, flan-t5-base shape; random weights), data, LoRA, optimizer and threads.

g. Training samples/s and peak RSS. Each side trains in its own fresh interpreter (``python -m
   bench.hf_trainer <spec>``), so each one's peak RSS (VmHWM) is its own: the framework as train.py builds it
   (Hydra compose → ``Trainer.fit``, default callbacks and TensorBoard logger, no validation, as row a) against
   ``Seq2SeqTrainer`` with ``DataCollatorForSeq2Seq`` on the framework's tokenized training split, with
   ``train_sampling_strategy`` "random" (``group_by_length`` off, as the reference workflows ran) and
   "group_by_length" (transformers 5's name for ``group_by_length=True``); the framework's side of the second
   column runs with ``data.group_by_length=true`` (the same grouping: HF's own ``get_length_grouped_indices``).
   Both run three epochs over the same N samples with AdamW (torch's, the same implementation on both sides),
   the same learning rate, linear schedule without warm-up, clipping at 1.0 and batch size; the first epoch is
   warm-up, and each side's best later epoch counts (epoch start to the last step's end: the same samples
   whatever the order), over two rounds in the order framework off, HF off, framework on, HF on, then the
   reverse, so a burst of load elsewhere does not decide the row.
h. Evaluation of validation samples with generation: the framework's ``Trainer.validate`` (as row c:
   length-sorted batches, ROUGE-L/BLEU; val/loss only when something monitors it) against
   ``Seq2SeqTrainer.predict(predict_with_generate=True)`` on the same samples in the split's own order (a
   user's dataset is not length-sorted), with the same generation settings and batch size and a
   ``compute_metrics`` that decodes and scores with the same ROUGE-L/BLEU. Its dataset keeps the labels, as
   in Hugging Face's summarization recipe, so ``predict`` also runs a teacher-forced loss pass. In one
   process, in the order framework, HF, HF, framework (best of each; at the flan-t5-base shape framework,
   then HF, once each).
"""

import json
import sys
import time

from bench.common import THREADS, WORK, compose, flan_t5_base_dir, row, run_side

HF_STRATEGIES = {"off": "random", "on": "group_by_length"}


def peak_rss_mb() -> int:
    """VmHWM of this process (ru_maxrss of a child would report the forking parent's peak)."""
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM")).split()[1]) // 1024


# -- configs --------------------------------------------------------------------------------------------
def model_overrides(model: str) -> list[str]:
    if model == "tiny":  # conf/model/tiny_t5.yaml as it is: LoRA on every linear layer, lr 1e-2
        return ["model=tiny_t5"]
    return ["model=flan_t5", f"model.pretrained={flan_t5_base_dir()}"]


def training_config(model: str, samples: int, epochs: int, run: str, grouped: bool = False):
    return compose("train", [*model_overrides(model), "data=amazon_sample", "trainer=cpu",
                             "trainer.enable_progress_bar=false", "+trainer.limit_val_batches=0",
                             f"data.limit_train_samples={samples}", f"trainer.max_epochs={epochs}",
                             "trainer.max_steps=-1", f"data.group_by_length={grouped}"], WORK / "runs" / run)


def lora_settings(cfg) -> dict:
    from omegaconf import OmegaConf

    return {k: v for k, v in OmegaConf.to_container(cfg.model.lora, resolve=True).items() if not k.startswith("_")}


def model_dir(cfg) -> str:
    from hydra.utils import instantiate

    pretrained = cfg.model.pretrained
    return str(pretrained if isinstance(pretrained, str) else instantiate(pretrained))


def tokenizer_and_datamodule(cfg):
    """The framework's datamodule (same cleaning, split, limits, tokenization) without building its model."""
    from hydra.utils import instantiate
    from transformers import AutoTokenizer

    from src.families.seq2seq import SEQ2SEQ

    tokenizer = AutoTokenizer.from_pretrained(model_dir(cfg))
    datamodule = instantiate(cfg.data)
    SEQ2SEQ.connect(datamodule, tokenizer, cfg.model)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return tokenizer, datamodule


# -- row g: one side per process ------------------------------------------------------------------------
def fit_timed(cfg) -> tuple[list[float], int]:
    """train.py's fit of ``cfg`` (its callbacks and loggers), with every epoch's seconds (epoch start to the last
    batch's end) and the optimizer steps taken; shared by rows g and k."""
    import lightning as L
    from hydra.utils import instantiate

    from src.building import build_model_and_data
    from src.instantiation import instantiate_group

    class EpochClock(L.Callback):
        def __init__(self):
            self.epochs: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.end = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.epochs.append(self.end - self.start)

    module, datamodule = build_model_and_data(cfg)
    clock = EpochClock()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    trainer = instantiate(cfg.trainer, callbacks=[*instantiate_group(cfg.get("callbacks")), clock],
                          logger=instantiate_group(cfg.get("logger")) or False)
    trainer.fit(module, datamodule=datamodule)
    return clock.epochs, trainer.global_step


def hf_epoch_clock():
    """A transformers ``TrainerCallback`` holding every epoch's seconds (epoch start to the last step's end)."""
    from transformers import TrainerCallback

    class EpochClock(TrainerCallback):
        def __init__(self):
            self.epochs: list[float] = []

        def on_epoch_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.end = time.perf_counter()

        def on_epoch_end(self, args, state, control, **kwargs):
            self.epochs.append(self.end - self.start)

    return EpochClock()


def framework_side(spec: dict) -> dict:
    cfg = training_config(spec["model"], spec["samples"], spec["epochs"], f"g_{spec['model']}_framework",
                          spec["group_by_length"])
    return timed(*fit_timed(cfg))


def hf_side(spec: dict) -> dict:
    import datasets
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = get_peft_model(AutoModelForSeq2SeqLM.from_pretrained(spec["model_dir"]),
                           LoraConfig(**spec["lora"], task_type="SEQ_2_SEQ_LM"))
    train = datasets.load_from_disk(spec["data_dir"])
    args = Seq2SeqTrainingArguments(
        output_dir=str(WORK / "runs" / f"g_{spec['model']}_hf_{spec['strategy']}"),
        per_device_train_batch_size=spec["batch_size"], num_train_epochs=spec["epochs"],
        learning_rate=spec["lr"], weight_decay=spec["weight_decay"], lr_scheduler_type="linear", warmup_steps=0,
        max_grad_norm=1.0, optim="adamw_torch", train_sampling_strategy=spec["strategy"], seed=spec["seed"],
        use_cpu=True, report_to="none", save_strategy="no", eval_strategy="no", disable_tqdm=True)
    clock = hf_epoch_clock()
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                             data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
                             callbacks=[clock])
    trainer.train()
    return timed(clock.epochs, trainer.state.global_step)


def timed(epochs: list[float], steps: int) -> dict:
    """A side's figures: every epoch's seconds, and the best epoch after the first (warm-up)."""
    return {"seconds": min(epochs[1:]), "epoch_seconds": [round(e, 2) for e in epochs], "steps": steps}


def side_main(spec: dict) -> None:
    import torch

    from bench.common import quiet

    quiet()
    torch.set_num_threads(THREADS)
    figures = (framework_side if spec["side"] == "framework" else hf_side)(spec)
    figures.update(peak_rss_mb=peak_rss_mb(), threads=torch.get_num_threads())
    print(json.dumps(figures))




def training_rows(model: str, samples: int, rounds: int) -> list[dict]:
    epochs = 3
    cfg = training_config(model, samples, epochs, f"g_{model}_data")
    _, datamodule = tokenizer_and_datamodule(cfg)
    data_dir = WORK / "data" / f"g_{model}_train"
    datamodule.splits["train"].select_columns(["input_ids", "attention_mask", "labels"]).save_to_disk(str(data_dir))
    base = {"model": model, "samples": samples, "epochs": epochs}
    hf = {**base, "model_dir": model_dir(cfg), "data_dir": str(data_dir), "lora": lora_settings(cfg),
          "lr": cfg.model.optimizer.lr, "weight_decay": cfg.model.optimizer.weight_decay,
          "batch_size": cfg.data.batch_size, "seed": cfg.seed}
    specs = {}
    for column, strategy in HF_STRATEGIES.items():
        specs[f"framework_{column}"] = {**base, "side": "framework", "group_by_length": column == "on"}
        specs[column] = {**hf, "side": "hf", "strategy": strategy}
    order = list(specs)
    runs = {k: [] for k in specs}
    for i in range(rounds):  # ABC, CBA, ...: each side sees the start and the end of the row
        for name in (order if i % 2 == 0 else order[::-1]):
            runs[name].append(run_side("bench.hf_trainer", "g", specs[name]))
    best = {k: min(r, key=lambda f: f["seconds"]) for k, r in runs.items()}
    rate = {k: samples / f["seconds"] for k, f in best.items()}
    shape = "tiny T5" if model == "tiny" else "flan-t5-base shape"
    rows = []
    for column, strategy in HF_STRATEGIES.items():
        ours = f"framework_{column}"
        ratio = rate[ours] / rate[column]
        rows.append(row(f"g.{model}.{column}", f"training samples/s, framework vs Seq2SeqTrainer+peft, "
                        f"group_by_length {column}, both sides ({shape}, {samples} samples, best of epochs 2-3)",
                        round(rate[ours], 2), round(rate[column], 2), "samples/s", round(ratio, 3),
                        ">= 1.0x", ratio >= 1.0, hf_train_sampling_strategy=strategy,
                        framework_group_by_length=column == "on",
                        framework_default_vs_this_column=round(rate["framework_off"] / rate[column], 3),
                        peak_rss_mb={"framework": best[ours]["peak_rss_mb"], "hf": best[column]["peak_rss_mb"]},
                        epoch_seconds={"framework": [r["epoch_seconds"] for r in runs[ours]],
                                       "hf": [r["epoch_seconds"] for r in runs[column]]},
                        batch_size=cfg.data.batch_size, samples_per_epoch=samples, rounds=rounds,
                        steps={"framework": best[ours]["steps"], "hf": best[column]["steps"]}))
    memory = best["framework_off"]["peak_rss_mb"] / best["off"]["peak_rss_mb"]
    rows.append(row(f"g.{model}.mem", f"training peak RSS, framework vs Seq2SeqTrainer+peft ({shape}, each side in "
                    "its own process; reported, g's target is throughput)", best["framework_off"]["peak_rss_mb"],
                    best["off"]["peak_rss_mb"], "MB", round(memory, 3), "reported", None,
                    all_runs_mb={k: [r["peak_rss_mb"] for r in v] for k, v in runs.items()}))
    return rows


def bench_training_vs_hf(quick: bool) -> list[dict]:
    if quick:
        return training_rows("tiny", 96, 1)
    # all 478 training samples of the bundled sample for the tiny model; 40 (5 steps an epoch) at the
    # flan-t5-base shape, whose step takes seconds on 2 cores; about 13 minutes in all
    return training_rows("tiny", 478, 2) + training_rows("base", 40, 2)


# -- row h ----------------------------------------------------------------------------------------------
def evaluation_config(model: str, n: int):
    # the bundled sample has ~600 records: a 34% validation split holds 200
    return compose("train", [*model_overrides(model), "data=amazon_sample", "trainer=cpu",
                             "trainer.enable_progress_bar=false", "data.val_fraction=0.34",
                             f"data.limit_val_samples={n}"], WORK / "runs" / f"h_{model}_evaluation")


def hf_predictor(cfg, module, datamodule):
    """A ``Seq2SeqTrainer`` over the same base weights and LoRA, and the validation samples in split order."""
    import numpy as np
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    from src.conversation import reference
    from src.metrics.text import TextGenerationMetrics

    tokenizer = module.tokenizer
    split = datamodule.splits["val"]  # length-sorted by the framework; back to the split's own order:
    unsorted = datamodule.split(datamodule.load_samples())["val"]["uid"][:len(split)]
    position = {u: i for i, u in enumerate(split["uid"])}
    dataset = split.select([position[u] for u in unsorted])
    targets = [reference(m) for m in dataset["messages"]]
    dataset = dataset.select_columns(["input_ids", "attention_mask", "labels"])
    model = get_peft_model(AutoModelForSeq2SeqLM.from_pretrained(module.pretrained),
                           LoraConfig(**lora_settings(cfg), task_type="SEQ_2_SEQ_LM"))
    texts: list[str] = []

    def compute_metrics(prediction) -> dict:
        ids = np.where(prediction.predictions != -100, prediction.predictions, tokenizer.pad_token_id)
        texts[:] = [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
        metrics = TextGenerationMetrics()
        metrics.update(texts, targets)
        return {k: float(v) for k, v in metrics.compute().items()}

    args = Seq2SeqTrainingArguments(output_dir=str(WORK / "runs" / "h_hf"), per_device_eval_batch_size=
                                    cfg.data.eval_batch_size, predict_with_generate=True, use_cpu=True,
                                    report_to="none", disable_tqdm=True)
    trainer = Seq2SeqTrainer(model=model, args=args, processing_class=tokenizer, compute_metrics=compute_metrics,
                             data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100))
    return trainer, dataset, unsorted, texts


def evaluation_row(model: str, n: int, both_twice: bool = True) -> dict:
    from hydra.utils import instantiate

    from src.building import build_model_and_data

    cfg = evaluation_config(model, n)
    module, datamodule = build_model_and_data(cfg)
    datamodule.prepare_data()
    datamodule.setup("validate")
    trainer = instantiate(cfg.trainer, devices=1, logger=False, callbacks=[], enable_checkpointing=False)
    hf, dataset, uids, hf_texts = hf_predictor(cfg, module, datamodule)
    seconds = {"framework": [], "hf": []}
    scores = {}

    def framework_pass():
        start = time.perf_counter()
        scores["framework"] = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
        seconds["framework"].append(time.perf_counter() - start)

    def hf_pass():
        start = time.perf_counter()
        scores["hf"] = hf.predict(dataset, **module.generation).metrics
        seconds["hf"].append(time.perf_counter() - start)

    # ABBA: drift in the load cancels; AB (flan-t5-base, ~1.5 min a pass): the framework pays the first pass
    for run in (framework_pass, hf_pass, hf_pass, framework_pass) if both_twice else (framework_pass, hf_pass):
        run()
    framework, alternative = min(seconds["framework"]), min(seconds["hf"])
    ours = {p["uid"]: p["prediction"] for p in module.predictions}
    same = sum(ours[u] == t for u, t in zip(uids, hf_texts)) / len(uids)
    ratio = alternative / framework
    shape = "tiny T5" if model == "tiny" else "flan-t5-base shape"
    return row(f"h.{model}", f"evaluation wall time over {len(uids)} validation samples (generate + ROUGE-L/BLEU), "
               f"Trainer.validate vs Seq2SeqTrainer.predict(predict_with_generate) ({shape})", round(framework, 2),
               round(alternative, 2), "s", round(ratio, 2), ">= 2x", ratio >= 2, samples=len(uids),
               eval_batch_size=cfg.data.eval_batch_size, generation=dict(module.generation),
               seconds={k: [round(s, 2) for s in v] for k, v in seconds.items()}, identical_predictions=round(same, 3),
               framework_scores={k: round(float(v), 4) for k, v in scores["framework"].items()},
               hf_scores={k: round(float(v), 4) for k, v in scores["hf"].items() if isinstance(v, float)},
               framework_computes_loss="val/loss" in scores["framework"],
               hf_computes_loss="the standard recipe: labels in the dataset, so predict() runs a teacher-forced pass")


def bench_evaluation_vs_hf(quick: bool) -> list[dict]:
    if quick:
        return [evaluation_row("tiny", 40)]
    return [evaluation_row("tiny", 200), evaluation_row("base", 200, both_twice=False)]


if __name__ == "__main__":
    side_main(json.loads(sys.argv[1]))
