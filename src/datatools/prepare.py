"""``prepare_data.py``: turn a data config's JSON-lines files into the Arrow cache train.py reuses,
and report on them (``data_report.json``, ``data_report.md``, PNG plots in the run directory)."""

import json
import logging
import time
from pathlib import Path
from typing import Any

import datasets
from hydra.utils import instantiate
from omegaconf import DictConfig

from src.atomic import atomic_write_text
from src.datatools.plots import STOPWORDS, length_histogram, word_cloud
from src.datatools.stats import record_stats
from src.errors import UserError

log = logging.getLogger(__name__)


def prepare(cfg: DictConfig) -> dict[str, Any]:
    start = time.perf_counter()
    datamodule = instantiate(cfg.data)  # the same object and options train.py builds, so the same cache
    if not hasattr(datamodule, "load_records"):
        raise UserError(f"{cfg.data._target_} has no records to prepare — use data=pairs, data=amazon or "
                        "data=amazon_sample")
    datasets.disable_progress_bars()  # ours counts bytes against the file size; datasets' only counts rows
    records = datamodule.load_records(progress=True)
    log.info("prepared %d records in %.0f s; computing the report", len(records), time.perf_counter() - start)

    opts = cfg.report
    fields = list(datamodule.FIELDS)
    cloud_field = opts.wordcloud_field if opts.wordcloud_field in fields else None
    stats, lengths, words = record_stats(records, fields, cloud_field, stopwords=STOPWORDS)
    out = Path(cfg.paths.output_dir)
    plots = []
    if stats["kept"]:
        plots += [length_histogram(lengths[f], f, out / f"{f}_lengths.png", bins=opts.bins).name for f in fields]
    if words:
        plots.append(word_cloud(words, out / f"{cloud_field}_wordcloud.png", max_words=opts.cloud_words).name)
    report = {"files": datamodule.files, "cache_files": [c["filename"] for c in records.cache_files],
              "filters": datamodule.filters, **stats, "plots": plots,
              "seconds": round(time.perf_counter() - start, 1)}
    atomic_write_text(out / "data_report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out / "data_report.md", to_markdown(report))
    log.info("done\nrecords read: %d, kept: %d, skipped: %s\nreport:       %s\nArrow cache:  %s",
             report["records_read"], report["kept"], report["skipped"], out / "data_report.md",
             Path(report["cache_files"][0]).parent if report["cache_files"] else "(in memory)")
    return report


def to_markdown(report: dict[str, Any]) -> str:
    lines = ["# Data report", "", *(f"- file: `{f}`" for f in report["files"]),
             f"- quality filters: `{json.dumps(report['filters'])}`", "",
             "| records read | kept | skipped | duplicates |", "|---:|---:|---:|---:|",
             f"| {report['records_read']} | {report['kept']} | {report['skipped_total']} | {report['duplicates']} |",
             "", "## Skipped, by reason", ""]
    if report["skipped"]:
        lines += ["| reason | records |", "|---|---:|",
                  *(f"| {reason} | {n} |" for reason, n in sorted(report["skipped"].items(), key=lambda kv: -kv[1]))]
    else:
        lines.append("none")
    lines += ["", "## Lengths of the kept records", "", "| field | unit | mean | median | p5 | p95 | max |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for field, units in report["lengths"].items():
        for unit, s in units.items():
            lines.append(f"| {field} | {unit} | {s['mean']} | {s['median']} | {s['p5']} | {s['p95']} | {s['max']} |")
    for field, top in report.get("top_words", {}).items():
        lines += ["", f"## Most common {field} words", "", ", ".join(f"{w} ({n})" for w, n in top) or "none"]
    lines += ["", *(f"![{p}]({p})" for p in report["plots"])]
    return "\n".join(lines) + "\n"
