"""``generate.py``: a prompts file (one per line) through a checkpoint, to images or texts plus an index.

Writes ``images/<line>_<i>_seed<s>.png`` or ``texts/<line>.txt`` and ``predictions.jsonl`` (one row per
output: line number, input, what the model saw, seed, file, and the text itself) to ``output_dir``.
"""

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from src.conversation import one_turn, prompt_text
from src.errors import UserError
from src.serving import generation as gen
from src.serving.loading import LoadedModel, load_from_command_line

log = logging.getLogger(__name__)


def read_prompts(path: str) -> list[tuple[int, str]]:
    """(line number, text) of every non-blank line."""
    file = Path(str(path)).expanduser()
    if not file.is_file():
        raise UserError(f"prompts={path} is not a file — pass a text file with one prompt per line")
    lines = [(n, line.strip()) for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1)]
    prompts = [(n, line) for n, line in lines if line]
    if not prompts:
        raise UserError(f"prompts={path} has no prompts — write one prompt per line")
    return prompts


def generate_batch(cfg: DictConfig) -> Path:
    prompts = read_prompts(cfg.prompts)  # before loading a model: a typo costs no time
    if cfg.batch_size < 1 or cfg.num_images < 1:
        raise UserError("batch_size and num_images must be at least 1")
    target, loaded = load_from_command_line(cfg)
    out = Path(cfg.output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    settings = OmegaConf.to_container(cfg.generation, resolve=True) or {}
    write = write_images if loaded.kind == "image" else write_texts
    rows = write(cfg, loaded, prompts, settings, out)
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    log.info("generated %d %s for %d prompts with %s (%s)\nwritten to %s: predictions.jsonl, %s/",
             len(rows), "images" if loaded.kind == "image" else "texts", len(prompts),
             target.path or "the base model", target.kind, out, "images" if loaded.kind == "image" else "texts")
    return out


def batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield start, items[start:start + size]


def write_texts(cfg: DictConfig, loaded: LoadedModel, prompts: list[tuple[int, str]], settings: dict,
                out: Path) -> list[dict]:
    requests = []
    for n, text in prompts:
        try:
            requests.append(one_turn(text) if cfg.raw else loaded.request(text))
        except UserError as err:
            raise UserError(f"{cfg.prompts}:{n}: {err}") from err
    (out / "texts").mkdir(exist_ok=True)
    rows = []
    with tqdm(total=len(prompts), desc="generating", unit="prompt") as bar:
        for start, chunk in batches(requests, cfg.batch_size):
            texts, seed = gen.generate_texts(loaded, chunk, settings, seed=cfg.seed + start)
            for (n, line), request, text in zip(prompts[start:start + len(chunk)], chunk, texts):
                name = f"texts/{n:05d}.txt"
                (out / name).write_text(text + "\n", encoding="utf-8")
                rows.append({"line": n, "input": line, "prompt": prompt_text(request), "seed": seed, "file": name,
                             "text": text})
            bar.update(len(chunk))
    return rows


def write_images(cfg: DictConfig, loaded: LoadedModel, prompts: list[tuple[int, str]], settings: dict,
                 out: Path) -> list[dict]:
    # prompt k's image i uses seed + k * num_images + i: any image can be regenerated alone
    jobs = [(n, text, cfg.seed + k * cfg.num_images + i) for k, (n, text) in enumerate(prompts)
            for i in range(cfg.num_images)]
    (out / "images").mkdir(exist_ok=True)
    rows = []
    with tqdm(total=len(jobs), desc="generating", unit="image") as bar:
        for _, chunk in batches(jobs, cfg.batch_size):
            images = gen.generate_images(loaded, [t for _, t, _ in chunk], [s for _, _, s in chunk], settings)
            for (n, text, seed), image in zip(chunk, images):
                name = f"images/{n:05d}_seed{seed}.png"
                gen.save_png(gen.png_bytes(image), out / name)
                rows.append({"line": n, "input": text, "prompt": text, "seed": seed, "file": name})
            bar.update(len(chunk))
    return rows
