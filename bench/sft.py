"""Row k: chat SFT training tokens/s, the framework against TRL's ``SFTTrainer`` + peft, packing off and on.

Both sides train the same model — Qwen2.5-0.5B-Instruct's layer shape (hidden 896, 14 query / 2 key-value heads,
MLP 4864) at ``LAYERS`` layers and 1000 embedding rows, random weights, float32 (bfloat16 matmuls are ~5x slower
than float32 on this CPU), the byte-level BPE and ChatML template of ``src.pretrained.random_init.random_chat`` —
on the same conversations (the first N of the chat quickstart's training split, ``data/samples/chat``), with
LoRA r=16 on every linear projection, torch's AdamW, the same learning rate, a linear schedule without warm-up,
clipping at 1.0, batch size, maximum length and threads. Packing: the framework's best-fit-decreasing rows of
``data.max_length`` tokens with restarting position ids; TRL's ``packing=True`` (its "bfd" strategy, padding-free
rows with position ids). Without packing each side pads a batch to its longest sample. TRL's own defaults of
bf16 autocast and gradient checkpointing are turned off, as the framework's settings here have them. The loss masks
differ (the framework's on the assistant turns; TRL's ``assistant_only_loss`` needs a template with generation
tags, which ChatML lacks, so TRL's covers every token): the FLOPs do not.

Each side runs in its own fresh interpreter (``python -m bench.sft <spec>``) for its own peak RSS, three epochs,
the first one warm-up; a side's figure is its best later epoch: the real (non-pad) tokens of the epoch's samples
over its seconds. Two rounds, in the order framework off, TRL off, framework on, TRL on, then the reverse.
"""

import json
import sys

from bench.common import THREADS, WORK, compose, row, run_side

ARCHITECTURE = "Qwen/Qwen2.5-0.5B-Instruct"
LAYERS = 2
MAX_LENGTH = 512


def chat_model_dir() -> str:
    from src.pretrained.random_init import random_chat
    from bench.common import ROOT

    return random_chat(str(WORK / "cache/models"), ARCHITECTURE, [str(ROOT / "data/samples/chat/conversations.jsonl")],
                       num_hidden_layers=LAYERS, embedding_rows=1000)


def training_config(samples: int, epochs: int, run: str, packing: bool):
    return compose("train", ["experiment=quickstart_chat", "model=qwen2_5_0_5b", f"model.pretrained={chat_model_dir()}",
                             "model.dtype=null", "model.lora.lora_dropout=0.0", "trainer=cpu",
                             "trainer.enable_progress_bar=false", "+trainer.limit_val_batches=0", "test=false",
                             f"data.limit_train_samples={samples}", f"trainer.max_epochs={epochs}",
                             "trainer.max_steps=-1", f"data.max_length={MAX_LENGTH}", f"data.packing={packing}",
                             "data.batch_size=8"], WORK / "runs" / run)


def epoch_tokens(samples: int) -> tuple[int, list]:
    """The real tokens of an epoch (the same for both sides: one tokenizer, one template) and the samples."""
    from src.building import build_data
    from src.families.chat import CHAT
    from transformers import AutoTokenizer

    cfg = training_config(samples, 1, "k_data", packing=False)
    datamodule = build_data(cfg)
    CHAT.connect(datamodule, AutoTokenizer.from_pretrained(chat_model_dir()), cfg.model)
    datamodule.prepare_data()
    datamodule.setup("fit")
    train = datamodule.splits["train"]
    return sum(len(ids) for ids in train["input_ids"]), [list(m) for m in train["messages"]]


# -- one side per process ---------------------------------------------------------------------------------
def framework_side(spec: dict) -> dict:
    from bench.hf_trainer import fit_timed

    cfg = training_config(spec["samples"], spec["epochs"], f"k_framework_{spec['packing']}", spec["packing"])
    epochs, steps = fit_timed(cfg)
    return {"epoch_seconds": epochs, "steps": steps}


def trl_side(spec: dict) -> dict:
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from bench.hf_trainer import hf_epoch_clock

    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype="float32")
    train = datasets.Dataset.from_dict({"messages": spec["messages"]})
    args = SFTConfig(
        output_dir=str(WORK / "runs" / f"k_trl_{spec['packing']}"), per_device_train_batch_size=spec["batch_size"],
        num_train_epochs=spec["epochs"], learning_rate=spec["lr"], weight_decay=spec["weight_decay"],
        lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0, optim="adamw_torch", seed=spec["seed"],
        use_cpu=True, report_to="none", save_strategy="no", eval_strategy="no", disable_tqdm=True,
        max_length=spec["max_length"], packing=spec["packing"], dataset_num_proc=1,
        # TRL's defaults are bf16 autocast and gradient checkpointing; the framework's run here is float32 without
        # checkpointing (bf16 without hardware support took 25x longer per step on this CPU)
        bf16=False, gradient_checkpointing=False)
    clock = hf_epoch_clock()
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                         peft_config=LoraConfig(**spec["lora"], task_type="CAUSAL_LM"), callbacks=[clock])
    trainer.train()
    return {"epoch_seconds": clock.epochs, "steps": trainer.state.global_step}


def side_main(spec: dict) -> None:
    import torch

    from bench.common import quiet
    from bench.hf_trainer import peak_rss_mb

    quiet()
    torch.set_num_threads(THREADS)
    figures = (framework_side if spec["side"] == "framework" else trl_side)(spec)
    figures.update(seconds=min(figures["epoch_seconds"][1:]), peak_rss_mb=peak_rss_mb(),
                   threads=torch.get_num_threads())
    print(json.dumps(figures))


def sft_rows(samples: int, rounds: int) -> list[dict]:
    from bench.hf_trainer import lora_settings

    epochs = 3
    tokens, messages = epoch_tokens(samples)
    cfg = training_config(samples, epochs, "k_config", packing=False)
    lora = {**lora_settings(cfg), "target_modules": "all-linear"}
    trl = {"side": "trl", "model_dir": chat_model_dir(), "messages": messages, "lora": lora, "epochs": epochs,
           "lr": cfg.model.optimizer.lr, "weight_decay": cfg.model.optimizer.weight_decay,
           "batch_size": cfg.data.batch_size, "seed": cfg.seed, "max_length": MAX_LENGTH}
    specs = {}
    for packing in (False, True):
        specs[f"framework_{packing}"] = {"side": "framework", "samples": samples, "epochs": epochs, "packing": packing}
        specs[f"trl_{packing}"] = {**trl, "packing": packing}
    runs = {k: [] for k in specs}
    for i in range(rounds):
        for name in (list(specs) if i % 2 == 0 else list(specs)[::-1]):
            runs[name].append(run_side("bench.sft", "k", specs[name]))
    best = {k: min(r, key=lambda f: f["seconds"]) for k, r in runs.items()}
    rate = {k: tokens / f["seconds"] for k, f in best.items()}
    rows = []
    for packing in (False, True):
        ours, theirs = f"framework_{packing}", f"trl_{packing}"
        ratio = rate[ours] / rate[theirs]
        rows.append(row(f"k.packing_{'on' if packing else 'off'}",
                        f"chat SFT training tokens/s, framework vs TRL SFTTrainer+peft, packing "
                        f"{'on' if packing else 'off'} both sides (Qwen2.5-0.5B shape at {LAYERS} layers, {samples} "
                        "conversations, best of epochs 2-3)", round(rate[ours], 1), round(rate[theirs], 1),
                        "tokens/s", round(ratio, 3), ">= 1.0x", ratio >= 1.0,
                        peak_rss_mb={"framework": best[ours]["peak_rss_mb"], "trl": best[theirs]["peak_rss_mb"]},
                        epoch_seconds={"framework": [r["epoch_seconds"] for r in runs[ours]],
                                       "trl": [r["epoch_seconds"] for r in runs[theirs]]},
                        steps={"framework": best[ours]["steps"], "trl": best[theirs]["steps"]},
                        tokens_per_epoch=tokens, batch_size=cfg.data.batch_size, max_length=MAX_LENGTH, rounds=rounds))
    return rows


def bench_sft_vs_trl(quick: bool) -> list[dict]:
    return sft_rows(32, 1) if quick else sft_rows(96, 2)


if __name__ == "__main__":
    side_main(json.loads(sys.argv[1]))
