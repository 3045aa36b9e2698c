"""The block-wise JSON-lines reader (Arrow parse, line-by-line fallback, column cleaning) gives the
same rows as cleaning and checking every line on its own."""

import json
import random
import sys

import pyarrow as pa
import pytest

from src.datamodules import records
from src.datamodules.cleaning import WHITESPACE, clean_column, clean_text, word_count, word_count_column
from src.datamodules.records import load_jsonl_records, skip_counts
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
