"""Read records into a cached Arrow dataset: one pass, bounded memory, column-at-a-time.

``load_jsonl_records`` reads JSON lines (or one JSON array); ``load_table_records`` takes tables that ``datasets``
already read (CSV, Parquet, a saved dataset) through the same cleaning, filters, deduplication and cache.

Every input line becomes one row: good records carry their cleaned fields and an empty
``skip_reason``; skipped ones carry the reason (``invalid_utf8``, ``invalid_json``, ``duplicate_key``,
``bad_field:<name>``, ``empty:<name>``, the optional quality filters ``too_short:<name>``, ``too_long:<name>``
and ``<a>_equals_<b>``, then ``duplicate``) so the data report can be recomputed from the cached dataset.

What a line is does not depend on how the file is cut into blocks:
- line breaks are ``\n``, ``\r\n`` or a lone ``\r`` (Python's universal newlines); blank lines give no row;
- a UTF-8 byte-order mark is dropped at the file's start; anywhere else it is not JSON (``invalid_json``);
- a line that is not UTF-8 is ``invalid_utf8``; a line that is not exactly one JSON object (two objects, an
  array, a cut-off object) is ``invalid_json``;
- a key the reader reads (the id key, ``uid`` by default, or a field) given twice in one object is
  ``duplicate_key`` (Arrow refuses such a row, and ``json.loads`` would silently keep the last value); repeated
  other keys are ignored;
- a file whose first character is ``[`` is one JSON array: it is streamed item by item (each item counts as a
  line, and messages name the item); a line over ``MAX_LINE_BYTES`` is refused in one line.

The files are read in blocks of whole lines. Arrow's JSON reader parses a block when every line in it is one
``{...}`` with nothing around it; when it refuses a row it names (a number where text is wanted), that line is
read alone and the rest goes back to Arrow; any other block it rejects is halved until the halves parse, and the
last few lines are parsed one at a time with ``json.loads``, which names the reason and the line. Cleaning,
filters and the reasons are then computed per column (``column_cleaning.clean_column``: numpy over the UTF-8 bytes,
Arrow's kernels); only deduplication walks the kept rows in Python, hashing each row's bytes.

The cache is keyed by the files' bytes (an xxHash of each), the options and the hash of this code and of the
cleaning code, and is written atomically (``src.atomic``: a temporary file, synced, renamed, directory synced).
"""

import codecs
import hashlib
import io
import json
import os
import re
import unicodedata
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from itertools import pairwise
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import xxhash  # a dependency of datasets
from datasets.arrow_writer import ArrowWriter
from filelock import FileLock
from tqdm.auto import tqdm

from src.atomic import atomic_path, remove_orphan_temp_files
from src.dataio import cleaning, column_cleaning
from src.dataio import fields as record_fields
from src.dataio.cleaning import light_clean_column, word_count_column
from src.dataio.column_cleaning import clean_column
from src.errors import UserError

ON_BAD_RECORD = ("skip", "error")
BLOCK_BYTES = 4 << 20  # about 6,000 LF-AmazonTitles lines: Arrow parses it in milliseconds
LINE_BY_LINE = 16  # a rejected block of at most this many lines is parsed line by line
ROW_CUTS = 8  # times in a row a rejected block is cut around the row Arrow names, before it is halved instead
PIECE_LINES = 1024  # after a line Arrow refused, the rest of the block goes back to Arrow in pieces of this many lines
MAX_LINE_BYTES = 64 << 20  # a longer line (or JSON array item) is not a record: the file is refused
BOM = b"\xef\xbb\xbf"
HASH_READ_BYTES = 8 << 20
CLEANERS = {"full": clean_column, "light": light_clean_column, "none": lambda texts: texts}


def _bad(where: str, reason: str, on_bad_record: str) -> None:
    if on_bad_record == "error":
        raise UserError(f"{where}: bad record ({reason}) — fix or remove that line, "
                        "or set data.on_bad_record=skip to skip and count bad records")


def _too_long(path: str, where: str) -> UserError:
    return UserError(f"{path}: {where} is over {MAX_LINE_BYTES >> 20} MB, so this is not JSON lines — write one "
                     "JSON object per line (a file holding one top-level JSON array of objects is read too)")


def _universal_newlines(block: bytes) -> bytes:
    return block.replace(b"\r\n", b"\n").replace(b"\r", b"\n") if b"\r" in block else block


def _check_line_lengths(path: str, first_line: int, block: bytes) -> None:
    """Refuse a line over MAX_LINE_BYTES in a block that could hold one (only blocks larger than the limit)."""
    if len(block) <= MAX_LINE_BYTES:
        return
    start = 0
    for line_no in range(first_line, first_line + _line_count(block)):
        end = block.find(b"\n", start)
        end = len(block) if end < 0 else end
        if end - start > MAX_LINE_BYTES:
            raise _too_long(path, f"line {line_no}")
        start = end + 1


def line_blocks(path: str, block_bytes: int | None = None) -> Iterator[tuple[int, bytes]]:
    """``(number of the first line, bytes of whole lines)`` covering the file, every line break as ``\\n``.

    Linear in the file's size whatever its line lengths: an unfinished line is kept as a list of pieces, never
    re-joined per read. A ``\\r`` at the end of a read waits for the next one, which may start with its ``\\n``.
    """
    block_bytes = block_bytes or BLOCK_BYTES
    line_no, rest, rest_bytes = 1, [], 0  # rest: the pieces of the unfinished line
    with open(path, "rb") as f:
        head = f.read(len(BOM))
        pending = b"" if head == BOM else head
        while data := f.read(block_bytes):
            chunk, pending = pending + data if pending else data, b""
            if chunk.endswith(b"\r"):
                chunk, pending = chunk[:-1], b"\r"
            cut = chunk.rfind(b"\n") + 1
            cut = chunk.rfind(b"\r", cut) + 1 or cut  # a lone \r after the last \n: only the tail is searched
            if not cut:
                rest.append(chunk)
                rest_bytes += len(chunk)
                if rest_bytes > MAX_LINE_BYTES:
                    raise _too_long(path, f"line {line_no}")
                continue
            block = _universal_newlines(b"".join([*rest, chunk[:cut]]))
            _check_line_lengths(path, line_no, block)
            yield line_no, block
            line_no += _line_breaks(block)
            rest = [chunk[cut:]]
            rest_bytes = len(rest[0])
    block = _universal_newlines(b"".join([*rest, pending]))
    if block:
        _check_line_lengths(path, line_no, block)
        yield line_no, block


def is_json_array(path: str, probe_bytes: int = 1 << 20) -> bool:
    """A file whose first non-blank character is ``[`` holds one JSON array — unless its first line is a whole
    JSON value and more follows (JSON lines whose first record is an array: that line is ``invalid_json``)."""
    with open(path, "rb") as f:
        head = f.read(probe_bytes).removeprefix(BOM).lstrip(b" \t\r\n")
    if not head.startswith(b"["):
        return False
    end = min((i for i in (head.find(b"\n"), head.find(b"\r")) if i >= 0), default=-1)
    if end < 0:
        return True
    try:
        json.loads(head[:end])
    except ValueError:  # the array goes on over the next lines
        return True
    return not head[end:].strip()


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def array_blocks(path: str, block_bytes: int | None = None) -> Iterator[tuple[int, bytes]]:
    """``(number of the first item, one item per line)`` from a file holding one top-level JSON array.

    Streamed: ``raw_decode`` finds each item in a window of the file, which grows (doubling) only while an
    item is cut by its end, so time is linear and memory bounded by the largest item. Each item's own bytes
    are passed on (line breaks, which can only be spacing, become spaces), so an item is checked exactly like
    a line of JSON lines; the text is decoded with ``surrogateescape`` so invalid UTF-8 reaches that check.
    """
    block_bytes = block_bytes or BLOCK_BYTES
    scan = json.JSONDecoder().raw_decode
    decode = codecs.getincrementaldecoder("utf-8")("surrogateescape").decode
    window, pos, eof = "", 0, False
    items, size, item_no, first_item = [], 0, 1, 1

    def refuse(what: str) -> UserError:
        return UserError(f"{path}: {what} — fix the file, or write one JSON object per line")

    with open(path, "rb") as f:
        def read_more(at_least: int = 0) -> None:
            nonlocal window, pos, eof
            data = f.read(max(block_bytes, at_least))
            eof = not data
            window, pos = window[pos:] + decode(data, final=eof), 0

        def skip_space() -> str:
            """The next character that is not spacing ('' at the end of the file)."""
            nonlocal pos
            while (pos := _JSON_SPACE.match(window, pos).end()) == len(window) and not eof:
                read_more()
            return window[pos:pos + 1]

        read_more()
        pos = int(window.startswith("\ufeff"))
        if skip_space() != "[":
            raise refuse("not a JSON array")
        pos += 1
        if skip_space() == "]":
            pos += 1
        else:
            while True:
                while True:
                    try:
                        _, end = scan(window, pos)
                        if end < len(window) or eof:  # a number at the window's end may go on: read on
                            break
                    except json.JSONDecodeError as e:
                        if eof:
                            raise refuse(f"item {item_no} of the JSON array is not valid JSON ({e.msg})") from None
                    if len(window) - pos > MAX_LINE_BYTES:
                        raise _too_long(path, f"item {item_no} of the JSON array") from None
                    read_more(len(window) - pos)
                item = window[pos:end]
                if "\n" in item or "\r" in item:
                    item = item.replace("\n", " ").replace("\r", " ")
                items.append(item.encode("utf-8", "surrogateescape"))
                size += len(items[-1])
                if size >= block_bytes:
                    yield first_item, b"\n".join(items) + b"\n"
                    items, size, first_item = [], 0, item_no + 1
                item_no, pos = item_no + 1, end
                separator = skip_space()
                if separator == "]":
                    pos += 1
                    break
                if separator != ",":
                    raise refuse(f"',' or ']' expected after item {item_no - 1} of the JSON array")
                pos += 1
                skip_space()  # raw_decode wants the item's first character
        if skip_space():
            raise refuse("more data after the JSON array's closing ']'")
    if items:
        yield first_item, b"\n".join(items) + b"\n"


def record_blocks(path: str, block_bytes: int | None = None) -> tuple[str, Iterator[tuple[int, bytes]]]:
    """What a record is in this file (``line`` or ``item`` of a JSON array) and its blocks of one record per line."""
    if is_json_array(path):
        return "item", array_blocks(path, block_bytes)
    return "line", line_blocks(path, block_bytes)


def _line_breaks(block: bytes) -> int:
    return int(np.count_nonzero(np.frombuffer(block, np.uint8) == ord("\n")))  # 3x faster than bytes.count


def _line_count(block: bytes) -> int:
    return _line_breaks(block) + (not block.endswith(b"\n"))


def _bare_object_lines(block: bytes) -> int:
    """The number of lines when every line is ``{...}`` with nothing around it, else 0. Then, if Arrow parses the
    block, every line break lies between two top-level values (inside a value ``}`` is never followed by ``{``,
    and strings hold no raw line breaks), so when it finds as many rows as lines, each line is one object."""
    data = np.frombuffer(block, np.uint8)  # numpy, not bytes.count: 3x faster, and without the GIL
    end = len(data) - block.endswith(b"\n")
    if not end or data[0] != ord("{") or data[end - 1] != ord("}"):
        return 0
    breaks = np.flatnonzero(data[:end] == ord("\n"))
    bare = (data[breaks - 1] == ord("}")).all() and (data[breaks + 1] == ord("{")).all()
    return len(breaks) + 1 if bare else 0


_ARROW_ROW = re.compile(r" in row (\d+)\b")


def _is_utf8(block: bytes) -> bool:
    """Arrow's UTF-8 check of the whole block (its JSON reader checks only the fields it reads): 6x faster than
    ``bytes.decode``."""
    offsets = pa.py_buffer(np.array([0, len(block)], np.int64))
    try:
        pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(block)]).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


class _Object(dict):
    """A decoded JSON object that remembers the keys it was given more than once."""
    repeated: frozenset = frozenset()


def _object(pairs: list[tuple[str, object]]) -> _Object:
    obj = _Object(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        obj.repeated = frozenset(k for k, _ in pairs if k in seen or seen.add(k))
    return obj


class _BlockParser:
    """One block of lines → a table of raw ``uid`` and field values (null when unusable) and a parse
    ``skip_reason`` per line, in line order; raises at the first bad line when ``on_bad_record=error``."""

    def __init__(self, path: str, fields: tuple[str, ...], on_bad_record: str, unit: str = "line",
                 id_field: str | None = "uid", types: Mapping[str, str] | None = None):
        self.path, self.fields, self.on_bad_record, self.id_field = path, fields, on_bad_record, id_field
        self.types = {k: (types or {}).get(k, record_fields.TEXT) for k in fields}
        name = Path(path).name
        # where a record is, in messages and as the uid of a record without one
        self.where = (lambda n: f"{path}:{n}") if unit == "line" else (lambda n: f"{path}: item {n}")
        self.uid_prefix = f"{name}:" if unit == "line" else f"{name}:item"
        keys = (id_field, *fields) if id_field else fields
        self.read_keys = frozenset(keys)
        self.schema = pa.schema([(id_field, pa.string())] * bool(id_field)
                                + [(k, record_fields.parse_type(self.types[k])) for k in fields])
        # extra fields (LF-AmazonTitles' target_ind, ...) are skipped, not converted
        self.options = pj.ParseOptions(explicit_schema=self.schema, unexpected_field_behavior="ignore")

    def __call__(self, first_line: int, block: bytes, row_cuts: int = ROW_CUTS) -> pa.Table:
        lines = _bare_object_lines(block)
        if lines and _is_utf8(block):
            return self._bare_lines(first_line, block, lines, row_cuts)
        return self._halves(first_line, block, row_cuts)

    def _halves(self, first_line: int, block: bytes, row_cuts: int) -> pa.Table:
        """A block Arrow cannot take whole: line by line when it is small, else each half on its own."""
        if _line_count(block) <= LINE_BY_LINE:
            return self._line_by_line(first_line, block)
        middle = block.find(b"\n", len(block) // 2) + 1
        if not middle or middle == len(block):  # the second half of the block is one line
            middle = block.rfind(b"\n", 0, len(block) - 1) + 1
        return pa.concat_tables([self(first_line, block[:middle], row_cuts),
                                 self(first_line + block.count(b"\n", 0, middle), block[middle:], row_cuts)])

    def _bare_lines(self, first_line: int, block: bytes, lines: int, row_cuts: int) -> pa.Table:
        """``lines`` lines that are each one ``{...}`` in UTF-8, through Arrow's parse.

        When Arrow refuses a row it names (a field of another type: ``... in row 12``), that line is read line by
        line and the others go back to Arrow: those before it in one piece, those after it in pieces of
        ``PIECE_LINES``, so that each further refusal costs a piece, not the rest of the block. The number is
        only a hint, as every piece is parsed again; ``row_cuts`` bounds the hints followed in a row (then
        halving takes over), so a block of bad lines costs at most that many parses more than halving.
        """
        table, refused = self._arrow(block, lines)
        if table is not None:
            return self._with_reasons(first_line, table)
        if refused is None or not row_cuts or not 0 <= refused < lines:
            return self._halves(first_line, block, 0)
        breaks = np.flatnonzero(np.frombuffer(block, np.uint8) == ord("\n"))
        starts = [0, *(breaks[:lines - 1] + 1).tolist(), len(block)]  # where each line starts, and the end
        cuts = sorted({0, refused, *range(refused + 1, lines, PIECE_LINES), lines})
        parts = []
        for a, b in pairwise(cuts):
            piece = block[starts[a]:starts[b]]
            parts.append(self._line_by_line(first_line + a, piece) if a == refused
                         else self._bare_lines(first_line + a, piece, b - a, row_cuts - 1))
        return pa.concat_tables(parts)

    def _arrow(self, block: bytes, lines: int) -> tuple[pa.Table | None, int | None]:
        """Arrow's parse of bare-object lines, or None when the line-by-line path must decide: a repeated field
        (Arrow refuses it), a field of another type, or anything else Arrow rejects; then also the row Arrow's
        message names, if any."""
        try:
            table = pj.read_json(io.BytesIO(block), parse_options=self.options,
                                 read_options=pj.ReadOptions(block_size=len(block) + 1))
            table.validate(full=True)  # a lone surrogate escape would make invalid UTF-8
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
            row = _ARROW_ROW.search(str(e))
            return None, int(row[1]) if row else None
        return (table.combine_chunks(), None) if table.num_rows == lines else (None, None)

    def _with_reasons(self, first_line: int, table: pa.Table) -> pa.Table:
        """Reasons for a parsed block: ``bad_field:<name>`` where a field is missing or null."""
        reason = pa.nulls(table.num_rows, pa.string())
        values = {k: record_fields.canonical(table[k], self.types[k]) for k in self.fields}
        for field in reversed(self.fields):  # the first missing field names the reason
            reason = pc.if_else(record_fields.missing(values[field], self.types[field]), f"bad_field:{field}", reason)
        bad = pc.indices_nonzero(pc.is_valid(reason))
        if len(bad) and self.on_bad_record == "error":
            row = bad[0].as_py()
            field = reason[row].as_py().split(':')[1]
            _bad(self.where(first_line + row), f"field '{field}' is missing, null or not {_expected(self.types[field])}",
                 self.on_bad_record)
        uid = table[self.id_field] if self.id_field else pa.nulls(table.num_rows, pa.string())
        if uid.null_count:  # no id: name the line
            lines = pc.add(pa.array(range(table.num_rows), pa.int64()), first_line).cast(pa.string())
            uid = pc.coalesce(uid, pc.binary_join_element_wise(self.uid_prefix, lines, ""))
        return pa.table({"uid": uid, **values, "skip_reason": pc.fill_null(reason, "")})

    def _line_by_line(self, first_line: int, block: bytes) -> pa.Table:
        rows: dict[str, list] = {k: [] for k in ("uid", *self.fields, "skip_reason")}

        def add(uid: str, reason: str, values: dict | None = None) -> None:
            rows["uid"].append(uid)
            for k in self.fields:
                rows[k].append(values[k] if values else None)
            rows["skip_reason"].append(reason)

        for line_no, raw_line in enumerate(block.split(b"\n"), start=first_line):
            where = self.where(line_no)
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as e:
                _bad(where, f"invalid UTF-8 at byte {e.start + 1} of the line", self.on_bad_record)
                add("", "invalid_utf8")
                continue
            if not line.strip():
                continue
            try:
                raw = json.loads(line, object_pairs_hook=_object)
            except json.JSONDecodeError:
                _bad(where, "invalid JSON", self.on_bad_record)
                add("", "invalid_json")
                continue
            if not isinstance(raw, dict):
                _bad(where, "not a JSON object", self.on_bad_record)
                add("", "invalid_json")
                continue
            uid = raw.get(self.id_field) if self.id_field else None
            uid = _utf8(str(uid)) if uid is not None else f"{self.uid_prefix}{line_no}"
            repeated = sorted(raw.repeated & self.read_keys)
            if repeated:
                _bad(where, f"key '{repeated[0]}' given twice", self.on_bad_record)
                add(uid, "duplicate_key")
                continue
            values = {k: record_fields.python_value(raw.get(k), self.types[k]) for k in self.fields}
            bad_field = next((k for k in self.fields if values[k] is None), None)
            if bad_field is not None:
                _bad(where, f"field '{bad_field}' is missing, null or not {_expected(self.types[bad_field])}",
                     self.on_bad_record)
                add(uid, f"bad_field:{bad_field}")
                continue
            add(uid, "", {k: _utf8_value(v) for k, v in values.items()})
        types = {"uid": pa.string(), "skip_reason": pa.string(),
                 **{k: record_fields.arrow_type(self.types[k]) for k in self.fields}}
        return pa.table({k: pa.array(v, types[k]) for k, v in rows.items()})


def _expected(kind: str) -> str:
    keys = record_fields.message_keys(kind)
    return f"a list of {{{keys[0]}, {keys[1]}}} text objects" if keys else "a string"


def _utf8_value(value):
    """A text, or a message list's contents, without lone surrogates."""
    if isinstance(value, list):
        return [{"role": _utf8(m["role"]), "content": _utf8(m["content"])} for m in value]
    return _utf8(value)


def _utf8(text: str) -> str:
    """``text`` without lone surrogates (JSON may escape them; UTF-8 cannot hold them)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", errors="replace").decode("utf-8")


def _has_words(texts: pa.Array, n: int) -> pa.Array:
    """Whether each cleaned text has at least ``n`` words (``word_count >= n``). Words are separated by single
    spaces, so n words are n - 1 spaces: a regular expression that stops at the (n-1)th space, rather than
    counting every space of every row (the 1M descriptions' spaces took a second)."""
    if n <= 1:  # every text has 0 words or more; 1 or more when it is not empty
        return pc.greater_equal(pc.binary_length(texts), max(n, 0))
    if n - 1 > 1000:  # RE2's largest repeat count
        return pc.greater_equal(word_count_column(texts), n)
    return pc.match_substring_regex(texts, f"^(?:[^ ]* ){{{n - 1}}}")


def _first_reason(conditions: list[tuple[pa.Array, str]], reason: pa.Array) -> pa.Array:
    """Fill the rows that have no reason yet with the first condition that holds."""
    new = pa.nulls(len(reason), pa.string())
    for condition, name in reversed(conditions):
        new = pc.if_else(condition, name, new)
    return pc.if_else(pc.equal(reason, ""), pc.fill_null(new, ""), reason)


class _RecordFilter:
    """Cleaning, quality filters and deduplication of parsed blocks, in file order."""

    def __init__(self, fields: tuple[str, ...], dedupe: tuple[str, ...], min_words: dict[str, int],
                 max_words: dict[str, int], distinct: tuple[str, ...], types: Mapping[str, str] | None = None,
                 cleaning: str = "full"):
        self.fields, self.dedupe, self.distinct = fields, dedupe, distinct
        self.types = {k: (types or {}).get(k, record_fields.TEXT) for k in fields}
        self.cleaner = CLEANERS[cleaning]
        self.min_words, self.max_words = min_words, max_words
        self.seen: set[bytes] = set()  # 16-byte digests, not the texts, so 2M records stay small

    def clean(self, table: pa.Table) -> pa.Table:
        """Cleaned fields and every reason but ``duplicate``; blocks may go through this in any order."""
        reason = table["skip_reason"].combine_chunks()
        clean = {k: record_fields.clean(table[k].combine_chunks(), self.types[k], self.cleaner) for k in self.fields}
        conditions = [(record_fields.empty(clean[k], self.types[k]), f"empty:{k}") for k in self.fields
                      if self.types[k] != record_fields.OPTIONAL_TEXT]
        conditions += [(pc.invert(_has_words(clean[k], n)), f"too_short:{k}") for k, n in self.min_words.items()]
        conditions += [(_has_words(clean[k], n + 1), f"too_long:{k}") for k, n in self.max_words.items()]
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
        return pa.table({**{k: pc.if_else(usable, clean[k], record_fields.blank(self.types[k])) for k in self.fields},
                         "uid": table["uid"],
                         "skip_reason": reason})

    @staticmethod
    def _mark(reason: pa.Array, rows: list[int], name: str) -> pa.Array:
        if not rows:
            return reason
        mask = np.zeros(len(reason), bool)
        mask[rows] = True
        return pc.if_else(pa.array(mask), name, reason)

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
        """Usable rows whose cleaned ``dedupe`` fields were seen before (here or in an earlier block)."""
        rows = np.flatnonzero(np.asarray(pc.equal(reason, "")))
        joined = pc.binary_join_element_wise(*(record_fields.key_text(clean[k], self.types[k]) for k in self.dedupe),
                                             "\x1f")
        data, offsets = column_cleaning.utf8_buffers(joined)
        data, digest, repeated = memoryview(data), xxhash.xxh3_128_digest, []
        # the bytes of each row hashed where they lie: no Python string per row (xxHash: 5x blake2b's speed)
        for row, start, end in zip(rows.tolist(), offsets[rows].tolist(), offsets[rows + 1].tolist()):
            key = digest(data[start:end])
            if key in self.seen:
                repeated.append(row)
            else:
                self.seen.add(key)
        return repeated


RawTable = tuple[Callable[[], pa.Table], int]  # makes one raw table (uid, fields, skip_reason); its progress size


def _write_records(raw_tables: Iterator[RawTable], record_filter: _RecordFilter, features: datasets.Features,
                   path: Path, bar: tqdm) -> None:
    """Raw tables are made and cleaned on a few threads (Arrow's kernels release the GIL), then deduplicated
    and written in input order; a bad record raises in input order too."""
    columns = list(features)
    workers = min(4, os.cpu_count() or 1)

    def make_and_clean(make: Callable[[], pa.Table], size: int) -> tuple[pa.Table, int]:
        return record_filter.clean(make()), size

    with ArrowWriter(features=features, path=str(path)) as writer, ThreadPoolExecutor(workers) as pool:
        pending: deque[Future] = deque()

        def write_first() -> None:
            table, size = pending.popleft().result()
            writer.write_table(record_filter.finish(table).select(columns))
            bar.update(size)

        try:
            for make, size in raw_tables:
                pending.append(pool.submit(make_and_clean, make, size))
                while len(pending) > 2 * workers or (pending and pending[0].done()):  # a bounded window of blocks
                    write_first()
            while pending:
                write_first()
        finally:
            for future in pending:
                future.cancel()
        writer.finalize()


def _jsonl_raw_tables(files: Sequence[str], fields: tuple[str, ...], on_bad_record: str, id_field: str | None,
                      block_bytes: int | None, types: Mapping[str, str]) -> Iterator[RawTable]:
    for file in files:
        unit, blocks = record_blocks(file, block_bytes)
        parse = _BlockParser(file, fields, on_bad_record, unit, id_field, types)
        for first_line, block in blocks:
            yield partial(parse, first_line, block), len(block)


def _as_text(column: pa.ChunkedArray, where: str) -> pa.Array:
    """A table column as strings: numbers and booleans are written out, nulls stay null (they count as empty)."""
    column = column.combine_chunks()
    if pa.types.is_string(column.type):
        return column
    try:
        return pc.cast(column, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise UserError(f"{where} holds {column.type} values, not text — map data.columns to a text column") from None


def _raw_table(batch: pa.Table, name: str, first_row: int, fields: tuple[str, ...], id_field: str | None,
               types: Mapping[str, str]) -> pa.Table:
    """A batch of a table as a raw table: its rows are numbered from 1 in the uid of a row without an id."""
    texts = {k: record_fields.from_table(batch[k], types.get(k, record_fields.TEXT), f"{name}: column '{k}'")
             for k in fields}
    uid = (_as_text(batch[id_field], f"{name}: column '{id_field}'") if id_field
           else pa.nulls(batch.num_rows, pa.string()))
    if uid.null_count:
        rows = pc.add(pa.array(range(batch.num_rows), pa.int64()), first_row).cast(pa.string())
        uid = pc.coalesce(uid, pc.binary_join_element_wise(f"{name}:", rows, ""))
    return pa.table({"uid": uid, **texts, "skip_reason": pa.array([""] * batch.num_rows, pa.string())})


def _table_raw_tables(parts: Sequence[tuple[str, Callable[[], datasets.Dataset]]], fields: tuple[str, ...],
                      id_field: str | None, batch_rows: int, types: Mapping[str, str]) -> Iterator[RawTable]:
    for name, read in parts:
        first_row = 1
        for batch in read().with_format("arrow").iter(batch_size=batch_rows):  # memory-mapped: bounded memory
            yield partial(_raw_table, batch, name, first_row, fields, id_field, types), batch.num_rows
            first_row += batch.num_rows


def content_hash(path: str) -> str:
    """xxHash (XXH3, 128 bits) of the file's bytes: a rewrite that keeps size and mtime still changes it."""
    digest = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while data := f.read(HASH_READ_BYTES):
            digest.update(data)
    return digest.hexdigest()


def code_hash() -> str:
    """The reading and cleaning code's own hash (this file, cleaning.py, column_cleaning.py, fields.py), with the versions
    of the Unicode tables it relies on (Arrow's NFKC, Python's html and casefold): any change to them rebuilds the
    caches."""
    digest = hashlib.blake2b(digest_size=16)
    for source in (__file__, cleaning.__file__, column_cleaning.__file__, record_fields.__file__):
        digest.update(Path(source).read_bytes())
    digest.update(f"{pa.__version__} {unicodedata.unidata_version}".encode())
    return digest.hexdigest()


def _stamp(file: str, missing_hint: str) -> tuple[str, int, str]:
    if not Path(file).is_file():
        raise UserError(f"data file not found: {file} — {missing_hint}")
    return str(Path(file).resolve()), os.path.getsize(file), content_hash(file)


def _filter_options(fields: Sequence[str], on_bad_record: str, dedupe: bool | Sequence[str],
                    min_words: Mapping[str, int | None] | None, max_words: Mapping[str, int | None] | None,
                    distinct: Sequence[str], types: Mapping[str, str] | None = None, cleaning: str = "full") -> dict:
    """The options checked and normalised: 0 / None mean "off"; sorted tuples, so equal settings give equal keys."""
    if cleaning not in CLEANERS:
        raise UserError(f"data.cleaning={cleaning!r} is not one of {', '.join(CLEANERS)}")
    if on_bad_record not in ON_BAD_RECORD:
        raise UserError(f"data.on_bad_record={on_bad_record!r} is not one of {ON_BAD_RECORD}")
    reserved = {"uid", "skip_reason"} & set(fields)
    if reserved:
        raise UserError(f"a record field may not be named {sorted(reserved)[0]!r}: the records use that column")
    options = dict(min_words=tuple(sorted((k, int(v)) for k, v in (min_words or {}).items() if v)),
                   max_words=tuple(sorted((k, int(v)) for k, v in (max_words or {}).items() if v is not None)),
                   distinct=tuple(distinct),
                   dedupe=tuple(fields) if dedupe is True else tuple(dedupe or ()))
    named = {k for k, _ in options["min_words"] + options["max_words"]} | {*options["distinct"], *options["dedupe"]}
    if not named <= set(fields) or len(options["distinct"]) not in (0, 2):
        raise UserError(f"quality filters must name the fields {list(fields)} (and distinct exactly two of them)")
    types = {k: record_fields.check(v) for k, v in (types or {}).items() if v != record_fields.TEXT}
    if types:  # only what differs from all-text: the keys of existing caches stay as they were
        options["types"] = tuple(sorted(types.items()))
    if cleaning != "full":
        options["cleaning"] = cleaning
    return options


def _cached_records(key: tuple, cache_dir: str, fields: Sequence[str], options: dict,
                    write: Callable[[_RecordFilter, datasets.Features, Path], None]) -> datasets.Dataset:
    """The records cached under ``key`` (the inputs and options) and the code's hash; built once by ``write``."""
    # the fingerprint is what makes the cache trustworthy: the inputs' bytes + options + the code that made it
    fingerprint = hashlib.sha256(repr((key, list(fields), options, code_hash())).encode()).hexdigest()[:16]
    path = Path(cache_dir).expanduser() / "jsonl_records" / f"records-{fingerprint}.arrow"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{path}.lock"):  # one process writes; the others wait and then read its file
            if not path.is_file():
                types = dict(options.get("types", ()))
                features = datasets.Features({**{k: record_fields.feature(types.get(k, record_fields.TEXT))
                                                 for k in fields},
                                              "uid": datasets.Value("string"), "skip_reason": datasets.Value("string")})
                record_filter = _RecordFilter(tuple(fields), options["dedupe"], dict(options["min_words"]),
                                              dict(options["max_words"]), options["distinct"], types,
                                              options.get("cleaning", "full"))
                remove_orphan_temp_files(path.parent)  # left by a process killed while writing
                # a crash mid-write leaves no half cache behind, nor a complete-looking name over unwritten data
                with atomic_path(path) as partial_path:
                    write(record_filter, features, partial_path)
    return datasets.Dataset.from_file(str(path))


def load_jsonl_records(files: list[str], fields: list[str], cache_dir: str, on_bad_record: str = "skip",
                       dedupe: bool | Sequence[str] = True, min_words: Mapping[str, int | None] | None = None,
                       max_words: Mapping[str, int | None] | None = None, distinct: Sequence[str] = (),
                       progress: bool = False, block_bytes: int | None = None,
                       id_field: str | None = "uid", field_types: Mapping[str, str] | None = None,
                       cleaning: str = "full") -> datasets.Dataset:
    """Parse, validate, clean, filter and dedupe once; later calls reuse the Arrow cache.

    ``fields`` are the keys read, as text unless ``field_types`` says otherwise (``src.dataio.fields``: optional
    text, a list of messages); ``cleaning`` is ``full`` (``clean_column``), ``light`` (``light_clean_column``:
    line breaks and markup kept, for conversations) or ``none``. ``id_field`` is the key read as the record's ``uid``
    (None: none is, and a record is named by its file and line). Optional quality filters skip a record when a
    field has fewer than ``min_words[field]`` words (``too_short:<field>``) or more than ``max_words[field]``
    (``too_long:<field>``), or when the two ``distinct`` fields are equal ignoring case (``<a>_equals_<b>``).
    ``dedupe`` is True (a record whose fields all repeat an earlier one's is a ``duplicate``), False, or the
    fields that decide. ``progress`` shows a bar over the bytes read; ``block_bytes`` sets the size of the
    blocks read (default ``BLOCK_BYTES``). Neither changes the rows, so neither is part of the cache key.
    """
    options = _filter_options(fields, on_bad_record, dedupe, min_words, max_words, distinct, field_types, cleaning)
    types = dict(field_types or {})
    hint = "put the files there, set data.train_file / data.test_file, or use the bundled sample (data=amazon_sample)"
    stamps = [_stamp(file, hint) for file in files]

    def write(record_filter: _RecordFilter, features: datasets.Features, path: Path) -> None:
        with tqdm(total=sum(s[1] for s in stamps), unit="B", unit_scale=True, desc="prepare records",
                  disable=not progress) as bar:
            raw = _jsonl_raw_tables([s[0] for s in stamps], tuple(fields), on_bad_record, id_field, block_bytes, types)
            _write_records(raw, record_filter, features, path, bar)

    key = ("jsonl", stamps, on_bad_record) + ((id_field,) if id_field != "uid" else ())
    return _cached_records(key, cache_dir, fields, options, write)


def load_table_records(parts: Sequence[tuple[str, Callable[[], datasets.Dataset]]], files: Sequence[str],
                       fields: list[str], cache_dir: str, key: str = "", dedupe: bool | Sequence[str] = True,
                       min_words: Mapping[str, int | None] | None = None,
                       max_words: Mapping[str, int | None] | None = None, distinct: Sequence[str] = (),
                       progress: bool = False, id_field: str | None = None,
                       batch_rows: int = 10_000, field_types: Mapping[str, str] | None = None,
                       cleaning: str = "full") -> datasets.Dataset:
    """Tables that ``datasets`` reads (CSV, Parquet, a saved dataset), cleaned, filtered and deduplicated like
    ``load_jsonl_records`` and cached the same way.

    ``parts`` are ``(name, read)``: ``read()`` returns the table (called only when the cache must be built), and
    ``name`` prefixes the row numbers that name rows without an id (``qa.csv:12``). ``files`` are hashed for the
    cache key, with ``key`` (how the tables are read). Columns other than strings are written out as text (a
    nested one is refused); a null cell is empty (``empty:<field>``): a table has no malformed records.
    """
    options = _filter_options(fields, "skip", dedupe, min_words, max_words, distinct, field_types, cleaning)
    types = dict(field_types or {})
    stamps = [_stamp(file, "check the data paths") for file in files]

    def write(record_filter: _RecordFilter, features: datasets.Features, path: Path) -> None:
        with tqdm(unit=" rows", desc="prepare records", disable=not progress) as bar:
            raw = _table_raw_tables(parts, tuple(fields), id_field, batch_rows, types)
            _write_records(raw, record_filter, features, path, bar)

    return _cached_records(("table", stamps, key, [name for name, _ in parts], id_field), cache_dir, fields,
                           options, write)


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
