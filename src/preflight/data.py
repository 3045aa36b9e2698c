"""The data as training would see it: records read, kept and skipped, split sizes, token lengths.

Large files are read through a bounded head sample (the first ``SAMPLE_RECORDS`` records of each); counts are
then scaled by the files' sizes and the summary says so. Token lengths are the family's encoder's, with the
model's own tokenizer when it is on this machine (a local directory or the Hugging Face cache), else a stand-in
of the family's kind trained here on the data itself, named in the report.
"""

import itertools
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, open_dict

from src.dataio.records import array_blocks, is_json_array
from src.encoders.common import texts_of
from src.errors import UserError
from src.instantiation import instantiate_config
from src.pretrained.loading import load_tokenizer

SAMPLE_BYTES = 64 * 2**20  # files above this are sampled
SAMPLE_RECORDS = 20_000
LENGTH_SAMPLE = 2_000      # rows tokenized for the length percentiles
STANDIN_VOCAB = 8_000
PERCENTILES = (50, 90, 95, 99)


def _head(path: Path, records: int, into: Path) -> Path:
    """The first ``records`` records as JSON lines (a JSON array's head would be a truncated array)."""
    out = into / path.name
    with open(out, "wb") as dst:
        if not is_json_array(str(path)):
            with open(path, "rb") as src:
                dst.writelines(itertools.islice(src, records))
            return out
        for _, block in array_blocks(str(path)):  # one item per line
            lines = block.splitlines(keepends=True)[:records]
            dst.writelines(lines)
            records -= len(lines)
            if records <= 0:
                break
    return out


def sampled_data_config(data_cfg: DictConfig, workdir: Path) -> tuple[DictConfig, float | None]:
    """``data_cfg`` with every ``*_file`` larger than SAMPLE_BYTES replaced by its head; the scale factor."""
    sampled = data_cfg.copy()
    full = part = 0
    for key, value in data_cfg.items():
        path = Path(str(value)) if key.endswith("_file") and value else None
        if path is None or not path.is_file():
            continue
        size = path.stat().st_size
        full += size
        if size <= SAMPLE_BYTES:
            part += size
            continue
        head = _head(path, SAMPLE_RECORDS, workdir)
        part += head.stat().st_size
        with open_dict(sampled):
            sampled[key] = str(head)
    if part == full:
        return data_cfg, None
    with open_dict(sampled):
        sampled.cache_dir = str(workdir / "cache")
    return sampled, full / part


def model_tokenizer(pretrained: str, subfolder: str | None = None):
    """The model's own tokenizer if it is on this machine, without reaching the network; else None."""
    try:
        return load_tokenizer(pretrained, local_files_only=True, **({"subfolder": subfolder} if subfolder else {}))
    except UserError:  # absent offline: a stand-in is used and named
        return None


def tokenizer_for(family, pretrained: str, texts: list[str]) -> tuple[Any, str]:
    """The model's own tokenizer, or a stand-in of its family's kind trained on ``texts``, and a note on which."""
    tokenizer = model_tokenizer(pretrained, family.tokenizer_subfolder)
    if tokenizer is not None:
        return tokenizer, f"the model's own ({pretrained})"
    tokenizer, note = family.train_tokenizer(texts)
    return tokenizer, f"stand-in: {note} ({pretrained}'s tokenizer is not on this machine)"


def length_stats(lengths: list[int], limit: int | None) -> dict[str, Any]:
    values = np.asarray(lengths)
    stats = {f"p{p}": int(np.percentile(values, p)) for p in PERCENTILES}
    stats.update(max=int(values.max()), mean=round(float(values.mean()), 1))
    if limit:
        stats.update(max_length=int(limit), truncated_share=round(float((values > limit).mean()), 4))
    return stats


def refused_share(encoder, part, used: int) -> float:
    """The share of a split's first ``used`` samples that the encoder refuses (its ``skip`` column)."""
    rows = part.select(range(min(used, LENGTH_SAMPLE, len(part))))
    if not len(rows):
        return 0.0
    skips = encoder({"messages": list(rows["messages"])}).get("skip") or []
    return sum(bool(s) for s in skips) / len(rows)


def plan_text_data(cfg: DictConfig, family, pretrained: str) -> dict[str, Any]:
    """Samples read, kept and skipped, split sizes, and token lengths as the family's encoder counts them."""
    with tempfile.TemporaryDirectory(prefix="lorafit-preflight-") as tmp:
        data_cfg, scale = sampled_data_config(cfg.data, Path(tmp))
        datamodule = instantiate_config(data_cfg)
        samples = datamodule.load_samples()
        skipped = datamodule.skipped()
        splits = datamodule.split(samples)
        hp = datamodule.hparams
        rows = samples.select(range(min(LENGTH_SAMPLE, len(samples))))
        batch = {"messages": list(rows["messages"])}

        factor = scale or 1.0
        estimate = (lambda n: int(round(n * factor))) if scale else (lambda n: n)
        limits = {"train": hp.limit_train_samples, "val": hp.limit_val_samples, "test": hp.limit_test_samples}
        available = {name: estimate(len(part)) for name, part in splits.items()}
        used = {name: min(n, limits[name]) if limits[name] is not None else n for name, n in available.items()}

        prompts, answers = texts_of(batch)
        tokenizer, tokenizer_note = tokenizer_for(family, pretrained, prompts + answers)
        family.connect(datamodule, tokenizer, cfg.model)
        src, tgt = datamodule.encoder.lengths(batch)
        # what the encoder refuses (a templated conversation over data.max_length) leaves the limited splits, as in
        # setup: exact on the first LENGTH_SAMPLE samples of each split, a share beyond
        refused = {name: refused_share(datamodule.encoder, part, used[name]) for name, part in splits.items()}
    too_long = {name: round(used[name] * share) for name, share in refused.items() if round(used[name] * share)}
    used = {name: n - too_long.get(name, 0) for name, n in used.items()}
    kept = estimate(len(samples))
    return {
        "records_read": kept + estimate(sum(skipped.values())), "records_kept": kept,
        "skipped": {reason: estimate(n) for reason, n in sorted(skipped.items())},
        "sampled": (f"counts scaled from the first {SAMPLE_RECORDS:,} records of each large file (x{factor:.1f} by "
                    "file size); run prepare_data.py for exact counts") if scale else None,
        "splits_available": available, "splits_used": used, "too_long_refused": too_long,
        "tokenizer": tokenizer_note, "length_rows": len(src),
        "source_tokens": length_stats(src, hp.max_source_length),
        "target_tokens": length_stats(tgt, hp.max_target_length),
        "longest_row_tokens": datamodule.encoder.longest_row(bool(hp.packing)),
    }


def plan_image_data(cfg: DictConfig, family, pretrained: str) -> dict[str, Any]:
    datamodule = instantiate_config(cfg.data)
    family.connect(datamodule, None, cfg.model)
    datamodule.setup()
    captions = [caption for _, caption in datamodule.train_items]
    tokenizer, note = tokenizer_for(family, pretrained, captions + datamodule.prompts)
    lengths = [len(ids) for ids in tokenizer(captions)["input_ids"]]
    return {
        "records_read": len(datamodule.train_items), "records_kept": len(datamodule.train_items), "skipped": {},
        "sampled": None,
        "splits_available": {"train": len(datamodule.train_items), "real": len(datamodule.real_paths),
                             "val_prompts": len(datamodule.prompts)},
        "splits_used": {"train": len(datamodule.train_items), "val": len(datamodule.prompts),
                        "test": len(datamodule.prompts)},
        "resolution": datamodule.resolution, "tokenizer": note, "length_rows": len(lengths),
        "caption_tokens": length_stats(lengths, 77),
    }


def mean_lengths(data: dict[str, Any]) -> tuple[float, float]:
    """Mean source and target tokens after truncation (for cost estimates)."""
    def clipped(stats: dict[str, Any]) -> float:
        return min(stats["mean"], stats.get("max_length") or math.inf)
    return clipped(data["source_tokens"]), clipped(data["target_tokens"])


def require_train_samples(data: dict[str, Any]) -> int:
    n = data["splits_used"]["train"]
    if n < 1:
        raise UserError("no training samples after cleaning and splitting — add data or loosen the filters")
    return n
