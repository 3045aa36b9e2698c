"""Shared by the bench rows: config composition as the entry points do it, locally built T5 models of
real sizes (random weights), and small timing helpers."""

import json
import logging
import os
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("LORAFIT_BENCH_DIR", "/tmp/lorafit_bench"))  # models, data, runs: never in the repo

os.environ.setdefault("PROJECT_ROOT", str(ROOT))
os.environ.setdefault("LORAFIT_CACHE", str(WORK / "cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import src.resolvers  # noqa: E402,F401  (resolvers used by conf/)

THREADS = 2  # torch threads in every row (set before anything runs)


def quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "src", "datasets", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()


def compose(name: str, overrides: list[str], output_dir: Path):
    """``conf/<name>.yaml`` composed as the CLI would (Hydra's compose API), run directory ``output_dir``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = hydra_compose(config_name=name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def tiny_tokenizer_dir() -> str:
    """The tiny T5's directory (its tokenizer, trained on the bundled Amazon sample, serves the big models)."""
    from src.pretrained.tiny import tiny_t5

    sample = ROOT / "data/samples/amazon"
    return tiny_t5(str(WORK / "cache/models"), [str(sample / "trn.json"), str(sample / "tst.json")])


def t5_dir(name: str, **config) -> str:
    """A T5 of the given shape with random weights and the tiny tokenizer, saved once under WORK."""
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    out = WORK / "models" / name
    if (out / "config.json").is_file():
        return str(out)
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir())
    tie = config.pop("tie_word_embeddings", True)
    config = T5Config(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **config)
    config.decoder_start_token_id = tokenizer.pad_token_id
    config.tie_word_embeddings = tie  # transformers 5's T5Config ignores both as constructor arguments
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config)
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, out)
    return str(out)


def t5_small_dir() -> str:
    """t5-small's shape (T5Config defaults: d_model 512, 6 layers, 8 heads, d_ff 2048, vocab 32128)."""
    return t5_dir("t5-small-random")


def flan_t5_base_dir() -> str:
    """flan-t5-base's shape: d_model 768, 12 layers, 12 heads, d_ff 2048, gated-gelu, vocab 32128."""
    return t5_dir("flan-t5-base-random", d_model=768, d_ff=2048, num_layers=12, num_heads=12, d_kv=64,
                  feed_forward_proj="gated-gelu", tie_word_embeddings=False)


@contextmanager
def stopwatch(into: dict, key: str):
    start = time.perf_counter()
    yield
    into[key] = into.get(key, 0.0) + time.perf_counter() - start


def row(name: str, what: str, framework: float, alternative: float, unit: str, ratio: float, target: str,
        met: bool | None, **details) -> dict:
    """One figure side by side; ``met=None`` for a figure reported beside a row's target, not held to one."""
    return {"row": name, "what": what, "framework": framework, "alternative": alternative, "unit": unit,
            "ratio": ratio, "target": target, "met": None if met is None else bool(met), "details": details}


def run_side(module: str, row: str, spec: dict) -> dict:
    """One side of a row in its own process (``python -m <module> <spec>``), so its peak RSS is its own; the
    side prints its figures as JSON on its last line."""
    import subprocess

    proc = subprocess.run([sys.executable, "-m", module, json.dumps(spec)], cwd=ROOT, capture_output=True, text=True,
                          check=False)
    if proc.returncode:
        raise RuntimeError(f"row {row}, {spec['side']} side failed: {proc.stderr[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
