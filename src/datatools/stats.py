"""Report numbers for prepared records, computed over the Arrow cache in bounded memory.

Texts never become Python lists of the whole dataset: lengths come from ``pyarrow.compute`` one
record batch at a time and are kept as int32 arrays (16 bytes per kept record for two fields,
32 MB for 2M records); words for the word cloud go into a Counter pruned to a fixed size.
"""

import re
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from src.dataio.records import skip_counts

WORD = re.compile(r"[^\W\d_]{2,}")  # letters only, two or more: what a word cloud should show


def record_batches(records: datasets.Dataset, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """The rows of ``load_jsonl_records``' dataset as Arrow batches, read from its cache files as streams.

    Iterating the dataset reads through a memory map, and every page it touches stays in the
    process's resident memory (1 GB of cache → 1 GB more RSS); a stream reader frees each batch.
    """
    if not records.cache_files:  # an in-memory dataset: nothing mapped
        yield from records.data.table.select(list(columns)).to_batches(max_chunksize=10_000)
    for cache in records.cache_files:
        with pa.OSFile(cache["filename"]) as f, pa.ipc.open_stream(f) as reader:
            for batch in reader:
                yield batch.select(list(columns))


def summarize(values: np.ndarray) -> dict[str, float | int | None]:
    """Mean, median, 5th/95th percentile (linear interpolation) and max.

    >>> summarize(np.array([1, 2, 3, 4, 10]))
    {'mean': 4.0, 'median': 3.0, 'p5': 1.2, 'p95': 8.8, 'max': 10}
    """
    if not len(values):
        return dict.fromkeys(("mean", "median", "p5", "p95", "max"))
    p5, median, p95 = np.percentile(values, [5, 50, 95])
    return {"mean": round(float(values.mean()), 2), "median": round(float(median), 2), "p5": round(float(p5), 2),
            "p95": round(float(p95), 2), "max": int(values.max())}


def record_stats(records: datasets.Dataset, fields: Sequence[str], cloud_field: str | None = None,
                 stopwords: Collection[str] = (), vocab_limit: int = 100_000) -> tuple[dict[str, Any], dict, Counter]:
    """Counts, skip reasons and length statistics of the kept records.

    Returns the report, the length arrays (``{field: {"chars"|"words": int32 array}}``, for plots)
    and the counts of the lower-cased words of ``cloud_field`` other than ``stopwords`` (exact unless
    the vocabulary outgrows ``2 * vocab_limit``: then only the ``vocab_limit`` most common are kept).
    """
    skipped = skip_counts(records)
    kept = len(records) - sum(skipped.values())
    lengths = {f: {"chars": np.empty(kept, np.int32), "words": np.empty(kept, np.int32)} for f in fields}
    words: Counter = Counter()
    pos = 0
    for batch in record_batches(records, [*fields, "skip_reason"]):
        batch = batch.filter(pc.equal(batch.column("skip_reason"), ""))
        end = pos + batch.num_rows
        for field in fields:
            text = batch.column(field)
            lengths[field]["chars"][pos:end] = pc.utf8_length(text).to_numpy()
            # clean_text leaves single spaces between words, and kept fields are never empty
            lengths[field]["words"][pos:end] = pc.add(pc.count_substring(text, " "), 1).to_numpy()
        if cloud_field:
            words.update(w for text in batch.column(cloud_field).to_pylist() for w in WORD.findall(text.lower())
                         if w not in stopwords)
            if len(words) > 2 * vocab_limit:
                words = Counter(dict(words.most_common(vocab_limit)))
        pos = end
    report = {
        "records_read": len(records), "kept": kept, "skipped_total": sum(skipped.values()), "skipped": skipped,
        "duplicates": skipped.get("duplicate", 0),
        "lengths": {f: {unit: summarize(v) for unit, v in units.items()} for f, units in lengths.items()},
    }
    if cloud_field:
        report["top_words"] = {cloud_field: words.most_common(20)}
    return report, lengths, words
