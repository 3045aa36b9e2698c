"""Stream JSON-lines records into an Arrow dataset, one pass, bounded memory.

Every input line becomes one row: good records carry their cleaned fields and an empty
``skip_reason``; skipped ones carry the reason (``invalid_json``, ``bad_field:<name>``,
``empty:<name>``, the optional quality filters ``too_short:<name>``, ``too_long:<name>`` and
``<a>_equals_<b>``, then ``duplicate``) so the data report can be recomputed from the cached dataset.
"""

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import datasets
import pyarrow.compute as pc
from tqdm.auto import tqdm

from src.datamodules.cleaning import clean_text, word_count
from src.errors import UserError, find_user_error

ON_BAD_RECORD = ("skip", "error")


def _bad(path: str, line_no: int, reason: str, on_bad_record: str) -> None:
    if on_bad_record == "error":
        raise UserError(f"{path}:{line_no}: bad record ({reason}) — fix or remove that line, "
                        "or set data.on_bad_record=skip to skip and count bad records")


def record_issue(record: dict[str, str], min_words: dict[str, int], max_words: dict[str, int],
                 distinct: tuple[str, ...]) -> str | None:
    """Why a cleaned record is unusable, as a skip reason, or None. Quality filters are off when empty."""
    for field, text in record.items():
        if not text:
            return f"empty:{field}"
    for field, limit in min_words.items():
        if word_count(record[field]) < limit:
            return f"too_short:{field}"
    for field, limit in max_words.items():
        if word_count(record[field]) > limit:
            return f"too_long:{field}"
    if distinct and record[distinct[0]].casefold() == record[distinct[1]].casefold():
        return f"{distinct[0]}_equals_{distinct[1]}"
    return None


def iter_jsonl_records(files: list[str], fields: list[str], on_bad_record: str, dedupe: bool,
                       min_words: tuple = (), max_words: tuple = (), distinct: tuple = (),
                       progress: bool = False) -> Iterator[dict]:
    seen: set[bytes] = set()  # 16-byte digests, not the texts, so 2M records stay small
    empty = {f: "" for f in fields}
    min_words, max_words = dict(min_words), dict(max_words)
    with tqdm(total=sum(os.path.getsize(p) for p in files), unit="B", unit_scale=True, desc="prepare records",
              disable=not progress) as bar:
        for path in files:
            start = bar.n
            with open(path, encoding="utf-8", errors="replace") as f:
                for line_no, line in enumerate(f, start=1):
                    if progress and line_no % 10_000 == 0:  # the binary offset is one read buffer ahead: fine
                        bar.update(start + f.buffer.tell() - bar.n)
                    if not line.strip():
                        continue
                    try:
                        raw = json.loads(line)
                    except json.JSONDecodeError:
                        _bad(path, line_no, "invalid JSON", on_bad_record)
                        yield {**empty, "uid": "", "skip_reason": "invalid_json"}
                        continue
                    if not isinstance(raw, dict):
                        _bad(path, line_no, "not a JSON object", on_bad_record)
                        yield {**empty, "uid": "", "skip_reason": "invalid_json"}
                        continue
                    bad_field = next((k for k in fields if not isinstance(raw.get(k), str)), None)
                    uid = str(raw.get("uid", f"{Path(path).name}:{line_no}"))
                    if bad_field is not None:
                        _bad(path, line_no, f"field '{bad_field}' is missing, null or not a string", on_bad_record)
                        yield {**empty, "uid": uid, "skip_reason": f"bad_field:{bad_field}"}
                        continue
                    record = {k: clean_text(raw[k]) for k in fields}
                    issue = record_issue(record, min_words, max_words, distinct)
                    if issue is not None:
                        yield {**empty, "uid": uid, "skip_reason": issue}
                        continue
                    if dedupe:
                        key = hashlib.blake2b("\x1f".join(record[k] for k in fields).encode(), digest_size=16).digest()
                        if key in seen:
                            yield {**empty, "uid": uid, "skip_reason": "duplicate"}
                            continue
                        seen.add(key)
                    yield {**record, "uid": uid, "skip_reason": ""}
            bar.update(start + os.path.getsize(path) - bar.n)


def load_jsonl_records(files: list[str], fields: list[str], cache_dir: str, on_bad_record: str = "skip",
                       dedupe: bool = True, min_words: Mapping[str, int | None] | None = None,
                       max_words: Mapping[str, int | None] | None = None, distinct: Sequence[str] = (),
                       progress: bool = False) -> datasets.Dataset:
    """Parse, validate, clean, filter and dedupe once; later calls reuse the Arrow cache.

    Optional quality filters skip a record when a field has fewer than ``min_words[field]`` words
    (``too_short:<field>``) or more than ``max_words[field]`` (``too_long:<field>``), or when the two
    ``distinct`` fields are equal ignoring case (``<a>_equals_<b>``). ``progress`` shows a bar over the
    bytes read; it does not change the cache.
    """
    if on_bad_record not in ON_BAD_RECORD:
        raise UserError(f"data.on_bad_record={on_bad_record!r} is not one of {ON_BAD_RECORD}")
    # 0 / None mean "off"; sorted tuples, so equal settings give equal fingerprints
    min_words = tuple(sorted((k, int(v)) for k, v in (min_words or {}).items() if v))
    max_words = tuple(sorted((k, int(v)) for k, v in (max_words or {}).items() if v is not None))
    distinct = tuple(distinct)
    if not {k for k, _ in min_words + max_words} | set(distinct) <= set(fields) or len(distinct) not in (0, 2):
        raise UserError(f"quality filters must name the fields {list(fields)} (and distinct exactly two of them)")
    stamps = []
    for file in files:
        if not Path(file).is_file():
            raise UserError(f"data file not found: {file} — put the files there, set data.train_file / data.test_file, "
                            "or use the bundled sample (data=amazon_sample)")
        st = os.stat(file)
        stamps.append((str(Path(file).resolve()), st.st_size, st.st_mtime_ns))
    features = datasets.Features({k: datasets.Value("string") for k in [*fields, "uid", "skip_reason"]})
    try:
        return datasets.Dataset.from_generator(
            iter_jsonl_records, features=features, cache_dir=cache_dir,
            # tuples, not lists: datasets shards list-valued gen_kwargs across workers, and dedupe
            # must see every file in one pass
            gen_kwargs=dict(files=tuple(s[0] for s in stamps), fields=tuple(fields), on_bad_record=on_bad_record,
                            dedupe=dedupe, min_words=min_words, max_words=max_words, distinct=distinct,
                            progress=progress),
            # the fingerprint is what makes the cache trustworthy: file identity + options (+ a version
            # of the cleaning code: 2 added unicode normalisation and quality filters)
            fingerprint=hashlib.sha256(repr((stamps, fields, on_bad_record, dedupe, min_words, max_words, distinct,
                                             2)).encode()).hexdigest()[:16],
        )
    except datasets.exceptions.DatasetGenerationError as err:
        raise (find_user_error(err) or err) from None


def value_counts(dataset: datasets.Dataset, column: str) -> dict:
    """How often each value of ``column`` occurs, computed in Arrow (no Python list of 2M strings)."""
    if not len(dataset):
        return {}
    counts = pc.value_counts(dataset.with_format("arrow")[column]).to_pylist()  # respects filter/select
    return {c["values"]: c["counts"] for c in counts}


def skip_counts(dataset: datasets.Dataset) -> dict[str, int]:
    """Records skipped, by reason."""
    return {reason: n for reason, n in value_counts(dataset, "skip_reason").items() if reason}


def with_skip_reason(dataset: datasets.Dataset, reason: str = "") -> datasets.Dataset:
    """The rows skipped for ``reason``; the default, "", gives the usable ones."""
    return dataset.filter(lambda reasons: [r == reason for r in reasons], input_columns="skip_reason",
                          batched=True, desc=f"rows with skip_reason={reason!r}")
