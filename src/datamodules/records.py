"""Read JSON-lines records into a cached Arrow dataset: one pass, bounded memory, column-at-a-time.

Every input line becomes one row: good records carry their cleaned fields and an empty
``skip_reason``; skipped ones carry the reason (``invalid_json``, ``bad_field:<name>``,
``empty:<name>``, the optional quality filters ``too_short:<name>``, ``too_long:<name>`` and
``<a>_equals_<b>``, then ``duplicate``) so the data report can be recomputed from the cached dataset.

The files are read in blocks of whole lines. Arrow's JSON reader parses a block; a block it
rejects (a line that is not JSON, not an object, or has a number where a string belongs) is halved
until the halves parse, and the last few lines are parsed one at a time with ``json.loads``, which
names the reason and the line. Cleaning, filters and the reasons are then computed per column in
Arrow's kernels (``clean_column``); only deduplication walks the kept rows in Python.
"""

import hashlib
import io
import json
import os
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
from datasets.arrow_writer import ArrowWriter
from filelock import FileLock
from tqdm.auto import tqdm

from src.datamodules.cleaning import clean_column, word_count_column
from src.errors import UserError

ON_BAD_RECORD = ("skip", "error")
BLOCK_BYTES = 4 << 20  # about 6,000 LF-AmazonTitles lines: Arrow parses it in milliseconds
LINE_BY_LINE = 16  # a rejected block of at most this many lines is parsed line by line
# the cached rows' layout and the cleaning code: bump to invalidate caches written by older versions
# (3: Arrow-kernel cleaning, a null uid counts as missing)
CACHE_VERSION = 3


def _bad(path: str, line_no: int, reason: str, on_bad_record: str) -> None:
    if on_bad_record == "error":
        raise UserError(f"{path}:{line_no}: bad record ({reason}) — fix or remove that line, "
                        "or set data.on_bad_record=skip to skip and count bad records")


def line_blocks(path: str, block_bytes: int | None = None) -> Iterator[tuple[int, bytes]]:
    """``(number of the first line, bytes of whole lines)`` covering the file; lines end at ``\\n``."""
    block_bytes = block_bytes or BLOCK_BYTES
    line_no, rest = 1, b""
    with open(path, "rb") as f:
        while chunk := f.read(block_bytes):
            chunk = rest + chunk
            cut = chunk.rfind(b"\n") + 1
            if not cut:  # one line longer than a block: keep reading
                rest = chunk
                continue
            block, rest = chunk[:cut], chunk[cut:]
            yield line_no, block
            line_no += block.count(b"\n")
    if rest:
        yield line_no, rest


def _line_count(block: bytes) -> int:
    return block.count(b"\n") + (not block.endswith(b"\n"))


class _BlockParser:
    """One block of lines → a table of raw ``uid`` and field values (null when unusable) and a parse
    ``skip_reason`` per line, in line order; raises at the first bad line when ``on_bad_record=error``."""

    def __init__(self, path: str, fields: tuple[str, ...], on_bad_record: str):
        self.path, self.name, self.fields, self.on_bad_record = path, Path(path).name, fields, on_bad_record
        self.schema = pa.schema([(k, pa.string()) for k in ("uid", *fields)])
        # extra fields (LF-AmazonTitles' target_ind, ...) are skipped, not converted
        self.options = pj.ParseOptions(explicit_schema=self.schema, unexpected_field_behavior="ignore")

    def __call__(self, first_line: int, block: bytes) -> pa.Table:
        table = self._arrow(block)
        if table is not None:
            return self._with_reasons(first_line, table)
        if _line_count(block) <= LINE_BY_LINE:
            return self._line_by_line(first_line, block)
        middle = block.find(b"\n", len(block) // 2) + 1
        if not middle or middle == len(block):  # the second half of the block is one line
            middle = block.rfind(b"\n", 0, len(block) - 1) + 1
        return pa.concat_tables([self(first_line, block[:middle]),
                                 self(first_line + block.count(b"\n", 0, middle), block[middle:])])

    def _arrow(self, block: bytes) -> pa.Table | None:
        """Arrow's parse, or None when it fails or its rows do not map one to one onto the lines
        (blank lines, two objects on a line, an object across lines: the line-by-line path decides)."""
        if b"\n\n" in block or block.startswith(b"\n"):
            return None
        try:
            table = pj.read_json(io.BytesIO(block), parse_options=self.options,
                                 read_options=pj.ReadOptions(block_size=len(block) + 1))
            table.validate(full=True)  # Arrow does not check that strings are UTF-8
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return None
        return table.combine_chunks() if table.num_rows == _line_count(block) else None

    def _with_reasons(self, first_line: int, table: pa.Table) -> pa.Table:
        """Reasons for a parsed block: ``bad_field:<name>`` where a field is missing or null."""
        reason = pa.nulls(table.num_rows, pa.string())
        for field in reversed(self.fields):  # the first missing field names the reason
            reason = pc.if_else(pc.is_null(table[field]), f"bad_field:{field}", reason)
        bad = pc.indices_nonzero(pc.is_valid(reason))
        if len(bad) and self.on_bad_record == "error":
            row = bad[0].as_py()
            _bad(self.path, first_line + row, f"field '{reason[row].as_py().split(':')[1]}' is missing, null or "
                 "not a string", self.on_bad_record)
        uid = table["uid"]
        if uid.null_count:  # no uid: name the line
            lines = pc.add(pa.array(range(table.num_rows), pa.int64()), first_line).cast(pa.string())
            uid = pc.coalesce(uid, pc.binary_join_element_wise(self.name, lines, ":"))
        return pa.table({"uid": uid, **{k: table[k] for k in self.fields}, "skip_reason": pc.fill_null(reason, "")})

    def _line_by_line(self, first_line: int, block: bytes) -> pa.Table:
        rows: dict[str, list] = {k: [] for k in ("uid", *self.fields, "skip_reason")}

        def add(uid: str, reason: str, values: dict | None = None) -> None:
            rows["uid"].append(uid)
            for k in self.fields:
                rows[k].append(values[k] if values else None)
            rows["skip_reason"].append(reason)

        for line_no, raw_line in enumerate(block.split(b"\n"), start=first_line):
            line = raw_line.decode("utf-8", errors="replace")
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError:
                _bad(self.path, line_no, "invalid JSON", self.on_bad_record)
                add("", "invalid_json")
                continue
            if not isinstance(raw, dict):
                _bad(self.path, line_no, "not a JSON object", self.on_bad_record)
                add("", "invalid_json")
                continue
            uid = raw.get("uid")
            uid = _utf8(str(uid)) if uid is not None else f"{self.name}:{line_no}"
            bad_field = next((k for k in self.fields if not isinstance(raw.get(k), str)), None)
            if bad_field is not None:
                _bad(self.path, line_no, f"field '{bad_field}' is missing, null or not a string", self.on_bad_record)
                add(uid, f"bad_field:{bad_field}")
                continue
            add(uid, "", {k: _utf8(raw[k]) for k in self.fields})
        return pa.table({k: pa.array(v, pa.string()) for k, v in rows.items()})


def _utf8(text: str) -> str:
    """``text`` without lone surrogates (JSON may escape them; UTF-8 cannot hold them)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", errors="replace").decode("utf-8")


def _first_reason(conditions: list[tuple[pa.Array, str]], reason: pa.Array) -> pa.Array:
    """Fill the rows that have no reason yet with the first condition that holds."""
    new = pa.nulls(len(reason), pa.string())
    for condition, name in reversed(conditions):
        new = pc.if_else(condition, name, new)
    return pc.if_else(pc.equal(reason, ""), pc.fill_null(new, ""), reason)


class _RecordFilter:
    """Cleaning, quality filters and deduplication of parsed blocks, in file order."""

    def __init__(self, fields: tuple[str, ...], dedupe: bool, min_words: dict[str, int], max_words: dict[str, int],
                 distinct: tuple[str, ...]):
        self.fields, self.dedupe, self.distinct = fields, dedupe, distinct
        self.min_words, self.max_words = min_words, max_words
        self.seen: set[bytes] = set()  # 16-byte digests, not the texts, so 2M records stay small

    def clean(self, table: pa.Table) -> pa.Table:
        """Cleaned fields and every reason but ``duplicate``; blocks may go through this in any order."""
        reason = table["skip_reason"].combine_chunks()
        clean = {k: pc.fill_null(clean_column(table[k].combine_chunks()), "") for k in self.fields}
        words = {k: word_count_column(clean[k]) for k in {*self.min_words, *self.max_words}}
        conditions = [(pc.equal(clean[k], ""), f"empty:{k}") for k in self.fields]
        conditions += [(pc.less(words[k], limit), f"too_short:{k}") for k, limit in self.min_words.items()]
        conditions += [(pc.greater(words[k], limit), f"too_long:{k}") for k, limit in self.max_words.items()]
        reason = _first_reason(conditions, reason)
        if self.distinct:
            reason = self._mark(reason, self._equal_ignoring_case(clean, reason), "_equals_".join(self.distinct))
        return pa.table({**clean, "uid": table["uid"], "skip_reason": reason})

    def finish(self, table: pa.Table) -> pa.Table:
        """``duplicate`` (blocks must come in file order) and empty fields on every skipped row."""
        clean, reason = {k: table[k].combine_chunks() for k in self.fields}, table["skip_reason"].combine_chunks()
        if self.dedupe:
            reason = self._mark(reason, self._repeated(clean, reason), "duplicate")
        usable = pc.equal(reason, "")
        return pa.table({**{k: pc.if_else(usable, clean[k], "") for k in self.fields}, "uid": table["uid"],
                         "skip_reason": reason})

    @staticmethod
    def _mark(reason: pa.Array, rows: list[int], name: str) -> pa.Array:
        if not rows:
            return reason
        mask = pc.is_in(pa.array(range(len(reason))), pa.array(rows))
        return pc.if_else(mask, name, reason)

    def _equal_ignoring_case(self, clean: dict[str, pa.Array], reason: pa.Array) -> list[int]:
        a, b = self.distinct
        # casefold decides, in Python, for the few candidates: casefold turns one character into at most
        # three (ß → ss), so texts whose lengths differ by more than 3x are never equal
        len_a, len_b = pc.utf8_length(clean[a]), pc.utf8_length(clean[b])
        candidates = pc.and_(pc.equal(reason, ""), pc.and_(pc.less_equal(len_a, pc.multiply(len_b, 3)),
                                                           pc.less_equal(len_b, pc.multiply(len_a, 3))))
        rows = pc.indices_nonzero(candidates)
        pairs = zip(clean[a].take(rows).to_pylist(), clean[b].take(rows).to_pylist())
        return [row for row, (x, y) in zip(rows.to_pylist(), pairs) if x.casefold() == y.casefold()]

    def _repeated(self, clean: dict[str, pa.Array], reason: pa.Array) -> list[int]:
        """Usable rows whose cleaned fields were seen before (here or in an earlier block)."""
        rows = pc.indices_nonzero(pc.equal(reason, ""))
        joined = pc.binary_join_element_wise(*(clean[k].take(rows) for k in self.fields), "\x1f")
        repeated = []
        for row, text in zip(rows.to_pylist(), joined.to_pylist()):
            key = hashlib.blake2b(text.encode(), digest_size=16).digest()
            if key in self.seen:
                repeated.append(row)
            else:
                self.seen.add(key)
        return repeated


def _write_records(files: tuple[str, ...], fields: tuple[str, ...], on_bad_record: str, record_filter: _RecordFilter,
                   features: datasets.Features, path: Path, progress: bool) -> None:
    """Blocks are parsed and cleaned on a few threads (Arrow's kernels release the GIL), then
    deduplicated and written in file order; a bad record raises in file order too."""
    columns = list(features)
    workers = min(4, os.cpu_count() or 1)

    def parse_and_clean(parse: _BlockParser, first_line: int, block: bytes) -> tuple[pa.Table, int]:
        return record_filter.clean(parse(first_line, block)), len(block)

    def cleaned_blocks(pool: ThreadPoolExecutor) -> Iterator[Future]:
        for file in files:
            parse = _BlockParser(file, fields, on_bad_record)
            for first_line, block in line_blocks(file):
                yield pool.submit(parse_and_clean, parse, first_line, block)

    with tqdm(total=sum(os.path.getsize(p) for p in files), unit="B", unit_scale=True, desc="prepare records",
              disable=not progress) as bar, ArrowWriter(features=features, path=str(path)) as writer, \
            ThreadPoolExecutor(workers) as pool:
        pending: deque[Future] = deque()
        blocks = cleaned_blocks(pool)
        try:
            for future in blocks:
                pending.append(future)
                while len(pending) > 2 * workers or (pending and pending[0].done()):  # a bounded window of blocks
                    table, size = pending.popleft().result()
                    writer.write_table(record_filter.finish(table).select(columns))
                    bar.update(size)
            while pending:
                table, size = pending.popleft().result()
                writer.write_table(record_filter.finish(table).select(columns))
                bar.update(size)
        finally:
            for future in pending:
                future.cancel()
        writer.finalize()


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
    # the fingerprint is what makes the cache trustworthy: file identity + options + the code's version
    fingerprint = hashlib.sha256(repr((stamps, list(fields), on_bad_record, dedupe, min_words, max_words, distinct,
                                       CACHE_VERSION)).encode()).hexdigest()[:16]
    path = Path(cache_dir).expanduser() / "jsonl_records" / f"records-{fingerprint}.arrow"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{path}.lock"):  # one process writes; the others wait and then read its file
            if not path.is_file():
                features = datasets.Features({k: datasets.Value("string") for k in [*fields, "uid", "skip_reason"]})
                partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
                try:
                    _write_records(tuple(s[0] for s in stamps), tuple(fields), on_bad_record,
                                   _RecordFilter(tuple(fields), dedupe, dict(min_words), dict(max_words), distinct),
                                   features, partial, progress)
                    os.replace(partial, path)  # a crash mid-write never leaves a half cache behind
                finally:
                    partial.unlink(missing_ok=True)
    return datasets.Dataset.from_file(str(path))


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
