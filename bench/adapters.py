"""Row l: serving N adapters of one base — the server's way (one resident base, each adapter a named peft adapter
on it: ``src/serving/resident.py``) against N whole models (``load_model`` per adapter, what the server did before).

The model is row k's: Qwen2.5-0.5B-Instruct's layer shape at ``LAYERS`` layers, 1000 embedding rows, random
weights, float32, LoRA r=16 on every linear projection. N adapters are exported from it, each with its own random
LoRA weights. Each side runs in a fresh interpreter (``python -m bench.adapters <spec>``), puts the N adapters in
memory, answers one greedy request with each (the answers must be the same on both sides), and reports its peak RSS
and the RSS that the adapters added over the interpreter with its libraries imported.
"""

import json
import sys

import torch

from bench.common import THREADS, WORK, row, run_side
from bench.sft import LAYERS, chat_model_dir, training_config

PROMPT = [{"role": "user", "content": "Stainless Steel Water Bottle"}]


def rss_mb() -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1]) // 1024


def serving_config():
    return training_config(8, 1, "l_config", packing=False)


def export_adapters(count: int) -> list[str]:
    """``count`` adapter directories of the row's model, each with its own random LoRA weights."""
    from src.building import build_model_and_data

    module, _ = build_model_and_data(serving_config())
    directories = []
    for i in range(count):
        torch.manual_seed(i)
        with torch.no_grad():
            for name, param in module.model.named_parameters():
                if "lora_" in name:
                    param.normal_(0, 0.05)
        directory = WORK / "adapters" / f"l_{i}"
        module.export_adapter(str(directory))
        directories.append(str(directory))
    return directories


def side_main(spec: dict) -> None:
    from bench.common import quiet
    from bench.hf_trainer import peak_rss_mb
    from src.serving import generation as gen
    from src.serving.loading import load_model
    from src.serving.registry import ModelEntry
    from src.serving.resident import Residents
    from src.targets import EvalTarget

    quiet()
    torch.set_num_threads(THREADS)
    cfg = serving_config()
    before = rss_mb()
    targets = [EvalTarget("adapter", d, None) for d in spec["adapters"]]
    if spec["side"] == "shared":
        entries = [ModelEntry(name=f"a{i}", kind="text", family="chat", source="adapter", base="", target=t)
                   for i, t in enumerate(targets)]
        residents = Residents(cfg, "cpu", max_adapters=len(entries))
        shared = residents.load(entries[0])
        models = [shared.view(e, None) for e in entries]
    else:
        models = [load_model(cfg, t) for t in targets]
    answers = [gen.generate_texts(m, [PROMPT], {"max_new_tokens": 8, "do_sample": False})[0][0] for m in models]
    print(json.dumps({"answers": answers, "peak_rss_mb": peak_rss_mb(), "added_mb": rss_mb() - before}))


def bench_adapters(quick: bool) -> list[dict]:
    count = 3 if quick else 8
    chat_model_dir()
    adapters = export_adapters(count)
    shared = run_side("bench.adapters", "l", {"side": "shared", "adapters": adapters})
    whole = run_side("bench.adapters", "l", {"side": "whole", "adapters": adapters})
    if shared["answers"] != whole["answers"]:
        raise RuntimeError(f"row l: an adapter answers differently on the shared base: {shared['answers']} vs "
                           f"{whole['answers']}")
    ratio = shared["added_mb"] / whole["added_mb"]
    return [row("l", f"{count} adapters of one base in memory, RSS they added (MB): one resident base vs {count} "
                f"whole models (Qwen2.5-0.5B shape at {LAYERS} layers, float32)", shared["added_mb"],
                whole["added_mb"], "MB", round(ratio, 3), "reported", None,
                peak_rss_mb={"shared": shared["peak_rss_mb"], "whole": whole["peak_rss_mb"]}, adapters=count,
                same_answers=True)]


if __name__ == "__main__":
    side_main(json.loads(sys.argv[1]))
