"""The block-wise JSON-lines reader (Arrow parse, line-by-line fallback, column cleaning) gives the
same rows as cleaning and checking every line on its own."""

import json
import random
import sys

import pyarrow as pa
import pytest

from src.dataio import records
from src.dataio.cleaning import WHITESPACE, clean_column, clean_text, word_count, word_count_column
from src.dataio.records import load_jsonl_records, skip_counts
from src.errors import UserError

PIECES = list("ab C!?,;:.-=*_~#&<>/\t\n\r\x00\x0b\x1c\x85\xa0\u200b\u2028\u3000\ufeff\u00ad…ﬁＷéß½") + [
    "&amp;", "&nbsp;", "&#8230;", "&lt;b&gt;", "<p>", "</b>", "&amp", "&#x41;", "&bogus;", "!!!", "....", "-----",
    "\u0301", "\U0001F600", "&#1114111;"]


def random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 30))) for _ in range(n)]


def test_clean_column_is_clean_text_on_every_row():
    texts = random_texts(20_000) + ["<p>Soft&nbsp;fleece &amp; warm</p>  <br/>blanket", ""]
    assert clean_column(pa.array(texts)).to_pylist() == [clean_text(t) for t in texts]
    cleaned = [clean_text(t) for t in texts]
    assert word_count_column(pa.array(cleaned)).to_pylist() == [word_count(t) for t in cleaned]


def test_whitespace_class_is_what_str_split_splits_on():
    expanded = {c for c in WHITESPACE if c != "-"} | {chr(c) for c in range(0x2000, 0x200B)}
    assert expanded == {chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()}


def messy_lines(n: int, seed: int = 1) -> list[str]:
    """Good records mixed with every kind of bad line, duplicates and filtered records."""
    rng = random.Random(seed)
    texts = random_texts(n, seed)
    lines = []
    for i in range(n):
        record = {"uid": f"u{i}", "title": f"Lamp {i % 50} {texts[i][:8]}", "content": f"{texts[i]} shade bright"}
        roll = rng.random()
        if roll < 0.03:
            record["title"] = 5  # not a string: Arrow rejects the block
        elif roll < 0.06:
            record["content"] = None
        elif roll < 0.08:
            del record["uid"]
        elif roll < 0.10:
            record["uid"] = 17
        elif roll < 0.12:
            record["content"] = record["title"].upper()
        line = json.dumps(record, ensure_ascii=rng.random() < 0.5)
        if roll > 0.98:
            line = line[:-3]  # invalid JSON
        elif roll > 0.96:
            line = "[1, 2]"
        elif roll > 0.95:
            line = ""  # a blank line: no row
        elif roll > 0.90 and lines:
            line = rng.choice(lines)  # an exact duplicate
        lines.append(line)
    return lines


def reference_rows(path: str, fields=("title", "content"), min_words=(("content", 3),), distinct=("title", "content")):
    """Every line checked and cleaned on its own, as the reader promises."""
    rows, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            empty = {k: "" for k in fields}
            try:
                raw = json.loads(line)
                assert isinstance(raw, dict)
            except (json.JSONDecodeError, AssertionError):
                rows.append({**empty, "uid": "", "skip_reason": "invalid_json"})
                continue
            uid = str(raw["uid"]) if raw.get("uid") is not None else f"trn.json:{line_no}"
            bad = next((k for k in fields if not isinstance(raw.get(k), str)), None)
            if bad:
                rows.append({**empty, "uid": uid, "skip_reason": f"bad_field:{bad}"})
                continue
            rec = {k: clean_text(raw[k]) for k in fields}
            reason = next((f"empty:{k}" for k in fields if not rec[k]), None)
            reason = reason or next((f"too_short:{k}" for k, n in min_words if word_count(rec[k]) < n), None)
            if not reason and rec[distinct[0]].casefold() == rec[distinct[1]].casefold():
                reason = "title_equals_content"
            if not reason and tuple(rec.values()) in seen:
                reason = "duplicate"
            if reason:
                rows.append({**empty, "uid": uid, "skip_reason": reason})
                continue
            seen.add(tuple(rec.values()))
            rows.append({**rec, "uid": uid, "skip_reason": ""})
    return rows


def test_blocks_give_the_rows_of_a_line_by_line_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "BLOCK_BYTES", 4096)  # many blocks, most of them rejected by Arrow and halved
    path = tmp_path / "trn.json"
    path.write_text("\n".join(messy_lines(3000)), encoding="utf-8")  # no newline at the end
    dataset = load_jsonl_records([str(path)], ["title", "content"], str(tmp_path / "ds"), min_words={"content": 3},
                                 distinct=("title", "content"))
    expected = reference_rows(str(path))
    assert dataset.to_list() == expected
    reasons = skip_counts(dataset)
    assert {"invalid_json", "bad_field:title", "bad_field:content", "duplicate", "title_equals_content"} <= set(reasons)


def test_first_bad_record_is_named_with_its_line_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "BLOCK_BYTES", 256)
    good = [json.dumps({"uid": f"u{i}", "title": f"Lamp {i}", "content": f"A bright lamp number {i}"})
            for i in range(400)]
    lines = good[:250] + [json.dumps({"uid": "x", "title": None, "content": "c"})] + good[250:] + ["{oops"]
    path = tmp_path / "trn.json"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"trn\.json:251: bad record \(field 'title' is missing"):
        load_jsonl_records([str(path)], ["title", "content"], str(tmp_path / "ds"), on_bad_record="error")


def good_record(i: int, content_words: int = 4) -> bytes:
    words = " ".join(f"w{i}x{j}" for j in range(content_words))
    return json.dumps({"uid": f"u{i}", "title": f"Lamp {i}", "content": f"Bright {words}", "label": [i]}).encode()


# every kind of dirty line, what it should count as (None: a usable record, "": no row at all)
DIRTY = [
    (lambda i: good_record(i).replace(b'"title"', b'"title": "first", "title"'), "duplicate_key"),
    (lambda i: good_record(i).replace(b'"uid"', b'"uid": "a", "uid"'), "duplicate_key"),
    (lambda i: good_record(i).replace(b'"label"', b'"label": 0, "label"'), None),  # a key the reader ignores
    (lambda i: good_record(i) + b" " + good_record(i + 10**6), "invalid_json"),  # two objects on a line
    (lambda i: good_record(i) + good_record(i + 10**6), "invalid_json"),
    (lambda i: good_record(i).replace(b"Lamp", b"L\xe4mp"), "invalid_utf8"),  # Latin-1, in a field
    (lambda i: good_record(i).replace(b'"label"', b'"l\xc3(bel"'), "invalid_utf8"),  # in a key the reader ignores
    (lambda i: b"\xef\xbb\xbf" + good_record(i), "invalid_json"),  # a byte-order mark in the middle of the file
    (lambda i: b"", ""), (lambda i: b"  \t ", ""),
    (lambda i: b"  " + good_record(i) + b" ", None),  # spacing around the object
    (lambda i: good_record(i, content_words=400), None),  # ~3 KB: spans several 1 KB blocks
    (lambda i: good_record(i).replace(b'"Lamp', b'"Lamp \\u00e9\\ud83d\\ude00'), None),  # escapes, a surrogate pair
    (lambda i: good_record(i).replace(b'"u', b'"x').replace(b'"xid"', b'"uid"'), None),
    (lambda i: good_record(i).replace(b'"Lamp %d"' % i, b"null"), "bad_field:title"),
    (lambda i: good_record(i).replace(b'"u%d"' % i, b"%d" % i), None),  # a numeric uid
    (lambda i: b"[1, 2]", "invalid_json"),
    (lambda i: good_record(i)[:-1] + b"\n}", "invalid_json"),  # an object across two lines: both halves bad
]
SEPARATORS = [b"\n", b"\r\n", b"\n", b"\r", b"\n\n", b"\r\n\r\n", b"\n"]


def dirty_file(path, n: int = 2500):
    """A BOM, mixed line breaks, every kind of DIRTY line among good ones, no newline at the end; and the
    skip counts it must give."""
    rng = random.Random(3)
    out, expected, kept = [b"\xef\xbb\xbf"], {}, 0
    for i in range(n):
        make, reason = DIRTY[i % len(DIRTY)] if rng.random() < 0.2 else (good_record, None)
        line = make(i)
        if line.endswith(b"\n}"):
            expected["invalid_json"] = expected.get("invalid_json", 0) + 1  # the second half counts too
        if reason:
            expected[reason] = expected.get(reason, 0) + 1
        kept += reason is None
        out += [line, rng.choice(SEPARATORS) if i < n - 1 else b""]
    path.write_bytes(b"".join(out))
    return expected, kept


def test_dirty_file_gives_the_same_rows_for_every_block_size(tmp_path):
    path = tmp_path / "trn.json"
    expected, kept = dirty_file(path)
    assert 300_000 < path.stat().st_size < 1_000_000
    results = {}
    for block_bytes in (1000, 1 << 10, 4 << 10, 64 << 10, 1 << 20, 64 << 20):
        dataset = load_jsonl_records([str(path)], ["title", "content"], str(tmp_path / f"ds{block_bytes}"),
                                     block_bytes=block_bytes)
        results[block_bytes] = dataset.to_list()
        assert skip_counts(dataset) == expected, block_bytes
        assert len(dataset) - sum(expected.values()) == kept
    first = results.pop(1000)
    assert all(rows == first for rows in results.values())
    assert first[0]["uid"] == "u0"  # the byte-order mark at the start is not part of the first record


def test_line_blocks_cut_the_same_lines_for_every_block_size(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_bytes(b"\xef\xbb\xbfa\r\nbb\r\rc\n\r\n\xef\xbb\xbfd\re\r\n" + b"f" * 40 + b"\r\ng\r")
    expected = ["a", "bb", "", "c", "", "\ufeffd", "e", "f" * 40, "g"]  # what Python's universal newlines give
    assert path.read_text(encoding="utf-8-sig").splitlines() == expected
    for block_bytes in range(1, 60):
        blocks = list(records.line_blocks(str(path), block_bytes))
        assert b"".join(b for _, b in blocks).decode().split("\n")[:-1] == expected
        for first_line, block in blocks:  # line numbers carry on across blocks
            assert block.decode().split("\n")[0] == expected[first_line - 1]


def test_json_array_files_are_streamed_item_by_item(tmp_path):
    items = [{"uid": f"u{i}", "title": f"Lamp {i}", "content": f"A bright lamp number {i}"} for i in range(50_000)]
    path = tmp_path / "array.json"
    path.write_text(json.dumps(items), encoding="utf-8")  # one line of ~4 MB: no line breaks at all
    dataset = load_jsonl_records([str(path)], ["title", "content"], str(tmp_path / "ds"), block_bytes=1 << 16)
    assert len(dataset) == 50_000 and not skip_counts(dataset)
    assert dataset[49_999] == {"title": "Lamp 49999", "content": "A bright lamp number 49999", "uid": "u49999",
                               "skip_reason": ""}

    pretty = tmp_path / "pretty.json"  # indented, a bad item, a non-object and a record without uid
    odd = [items[0], {"uid": "x", "title": None, "content": "c"}, 7, {"title": "Desk", "content": "Oak desk"}]
    pretty.write_text(json.dumps(odd, indent=2), encoding="utf-8")
    dataset = load_jsonl_records([str(pretty)], ["title", "content"], str(tmp_path / "ds"))
    assert skip_counts(dataset) == {"bad_field:title": 1, "invalid_json": 1}
    assert dataset[3]["uid"] == "pretty.json:item4"
    with pytest.raises(UserError, match=r"pretty\.json: item 2: bad record \(field 'title'"):
        load_jsonl_records([str(pretty)], ["title", "content"], str(tmp_path / "ds"), on_bad_record="error")


def test_broken_or_unbroken_files_are_refused_in_one_line(tmp_path, monkeypatch):
    cut = tmp_path / "cut.json"
    cut.write_text(json.dumps([{"uid": "a", "title": "t", "content": "c"}] * 3)[:-10], encoding="utf-8")
    with pytest.raises(UserError, match=r"^[^\n]*cut\.json: item 3 of the JSON array is not valid JSON[^\n]*$"):
        load_jsonl_records([str(cut)], ["title", "content"], str(tmp_path / "ds"))
    monkeypatch.setattr(records, "MAX_LINE_BYTES", 50_000)
    glued = tmp_path / "glued.json"  # objects one after another with no line breaks: not JSON lines
    glued.write_text("".join(json.dumps({"uid": str(i), "title": "t", "content": "c"}) for i in range(5000)))
    with pytest.raises(UserError, match=r"glued\.json: line 1 is over .* MB, so this is not JSON lines"):
        load_jsonl_records([str(glued)], ["title", "content"], str(tmp_path / "ds"), block_bytes=1 << 10)


def test_a_json_lines_file_that_starts_with_an_array_line_stays_json_lines(tmp_path):
    path = tmp_path / "trn.json"
    path.write_text('[1, 2]\n{"uid": "a", "title": "Lamp", "content": "A lamp"}\n', encoding="utf-8")
    dataset = load_jsonl_records([str(path)], ["title", "content"], str(tmp_path / "ds"))
    assert skip_counts(dataset) == {"invalid_json": 1} and dataset[1]["uid"] == "a"


def test_rows_arrow_refuses_by_number_are_read_alone_and_named_in_order(tmp_path):
    """A number where text is wanted makes Arrow refuse a block, naming the row: that line is read on its own and
    the lines around it go back to Arrow, whatever the block size, and the first bad line is the one named."""
    lines = [good_record(i).decode() for i in range(6000)]
    bad = [0, 1, 1023, 1024, 1025, 2047, 2999, 5998, 5999]
    for i in bad:
        lines[i] = lines[i].replace(f'"Lamp {i}"', str(i))
    lines[4000] = lines[4000].replace('"u4000"', "4000")  # a numeric id: a usable record named "4000"
    path = tmp_path / "trn.json"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for block_bytes in (1 << 12, 1 << 16, 64 << 20):
        dataset = load_jsonl_records([str(path)], ["title", "content"], str(tmp_path / f"ds{block_bytes}"),
                                     block_bytes=block_bytes)
        assert [i for i, r in enumerate(dataset["skip_reason"]) if r] == bad
        assert skip_counts(dataset) == {"bad_field:title": len(bad)}
        assert dataset["uid"] == [f"u{i}" if i != 4000 else "4000" for i in range(6000)]
        assert dataset[2998]["title"] == "Lamp 2998" and dataset[3000]["content"].startswith("Bright w3000x0")
    path.write_text("\n".join(good_record(i).decode() for i in range(3000)) + "\n" + lines[2999] + "\n",
                    encoding="utf-8")
    with pytest.raises(UserError, match=r"trn\.json:3001: bad record \(field 'title' is missing"):
        load_jsonl_records([str(path)], ["title", "content"], str(tmp_path / "error"), on_bad_record="error")


def test_word_limits_count_words_as_clean_text_leaves_them(tmp_path):
    texts = ["", "one", "one two", "one two three", " one  two\tthree four ", "<b>a</b> b", "a&nbsp;b c"]
    path = tmp_path / "trn.json"
    path.write_text("".join(json.dumps({"uid": f"u{i}", "title": f"t{i}", "content": t}) + "\n"
                            for i, t in enumerate(texts)), encoding="utf-8")
    dataset = load_jsonl_records([str(path)], ["title", "content"], str(tmp_path / "ds"), min_words={"content": 2},
                                 max_words={"content": 3})
    assert dataset["skip_reason"] == ["empty:content", "too_short:content", "", "", "too_long:content", "", ""]
    wide = load_jsonl_records([str(path)], ["title", "content"], str(tmp_path / "ds"), min_words={"content": 1},
                              max_words={"content": 0})
    assert wide["skip_reason"] == ["empty:content"] + ["too_long:content"] * 6
