"""The fast column cleaning (``column_cleaning.clean_column``) gives ``cleaning.clean_column``'s result on every row,
including the rows it hands back to the old steps: entities ``html.unescape`` reads in odd ways, characters
that combine with their neighbours under NFKC, characters Python's Unicode tables do not know."""

import html.entities
import random
import sys
import unicodedata
from pathlib import Path

import pyarrow as pa
import pytest

from src.dataio import cleaning, column_cleaning, records

PIECES = list("ab C!?,;:.-=*_~#&<>/\t\n\r\f\x00\x0b\x1c\x1f\x7f\x85\xa0\u200b\u2028\u3000\ufeff\u00ad…ﬁＷéß½") + [
    "&amp;", "&nbsp;", "&#8230;", "&lt;b&gt;", "<p>", "</b>", "<a href='&amp;x'>", "&amp", "&#x41;", "&bogus;",
    "!!!", "....", "-----", "\u0301", "\u0338", "\u0344", "\U0001F600", "&#1114111;", "&#38;", "&#x26;", "&ampx;",
    "&&", "& ", "&;", "&#;", "&#x;", "&#12a;", "&a#b;", "&#0;", "&#128;", "&#xD800;", "&nGt;", "&#38;amp;",
    "&amp;lt;", "&NotEqualTilde;", "&CounterClockwiseContourIntegral;", "&#769;", "&#x1F600;", "&#9;", "&#173;",
    "&#8203;", "&#xfb01;", "&#189;", "&#60;b&#62;", "&#133;", "&#8232;", "\u1100", "\u1161", "\u11a8", "가",
    "\u09be", "\u09c7", "\u0958", "\u337f", "\ufdfa", "\u1fee", "\u1e9b", "\U0001FAE8", "\ufdd0", "\ue000",
    "\u212b", "A\u030a", "\uff9e", "\u3099", "\u30ab", "\u2474", "\u01c4", "\u1680", "\u2029", "\u202f", "\x84",
]
NAMES = list(html.entities.html5)


def random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)

    def piece() -> str:
        roll = rng.random()
        if roll < 0.06:
            return "&" + rng.choice(NAMES)
        if roll < 0.09:
            return chr(rng.randrange(0x80, 0x3400))
        if roll < 0.1:
            return chr(rng.randrange(0x10000, 0x32000))
        return rng.choice(PIECES)

    return ["".join(piece() for _ in range(rng.randint(0, 30))) for _ in range(n)]


def assert_same(texts: pa.Array) -> None:
    old, new = cleaning.clean_column(texts).to_pylist(), column_cleaning.clean_column(texts).to_pylist()
    differ = [(t, o, n) for t, o, n in zip(texts.to_pylist(), old, new) if o != n]
    assert not differ, differ[:5]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_rows_as_clean_column_on_messy_text(seed):
    texts = random_texts(20_000, seed)
    assert_same(pa.array(texts))
    assert_same(pa.array([None, *texts[:3000], None])[1:-1])  # a slice: offsets that do not start at 0
    assert_same(pa.array([t if i % 5 else None for i, t in enumerate(texts[:3000])]))  # nulls stay null


def test_entities_read_as_html_unescape_reads_them():
    odd = ["&amp;lt;", "&&amp;", "&#38;amp;", "&amp;#38;", "&ampx;", "&#x26;#38;", "AT&T", "&", "a &", "&;", "& b",
           "&\r", "&#;", "&#x;", "&#12a;", "&amp<b>;</b>", "&<b>amp;", "<i>&amp;</i>", "&#x110000;", "&#0000065;",
           "&#65", "&copy2024", "&notit;", "&Eacute;&eacute;&#xe9;", "&#x2028;a&#133;b", "e&#769;", "&#1161;"]
    assert_same(pa.array(odd + [t + " x" for t in odd] + ["x " + t for t in odd]))
    assert_same(pa.array(["a &amp", ";b", "&lt", ";", "&#38", "; &", "amp;", "<b", ">", "x\u0301"]))  # across rows


def test_every_kind_of_character_beside_neighbours_that_could_combine_with_it():
    points = set(range(0, sys.maxunicode + 1, 61))
    points |= {p for p in range(0x30000) if unicodedata.combining(chr(p)) or unicodedata.decomposition(chr(p))}
    chars = [chr(p) for p in sorted(points) if not 0xD800 <= p <= 0xDFFF]
    assert_same(pa.array([f"{before}{c}{after}" for c in chars
                          for before, after in (("a", "b"), ("e", "\u0301"), ("\u1100", "\u1161"))]))


def test_whitespace_other_than_spaces_collapses_into_one_space():
    texts = ["a\t\tb", "a \n\r b", " \x1c\x1dx\x1e\x1f ", "a\u2028\u2029b", "x\x85\u1680y", "\u3000a\u00a0 b"]
    assert column_cleaning.clean_column(pa.array(texts)).to_pylist() == ["a b", "a b", "x", "a b", "x y", "a b"]
    assert_same(pa.array(texts))


def test_a_change_to_this_code_rebuilds_the_record_caches(tmp_path, monkeypatch):
    before = records.code_hash()
    changed = tmp_path / "column_cleaning.py"
    changed.write_text(Path(column_cleaning.__file__).read_text() + "\n# changed\n")
    monkeypatch.setattr(column_cleaning, "__file__", str(changed))
    assert records.code_hash() != before


def test_no_character_past_the_scanned_range_has_a_decomposition():
    # _combines_backward scans only up to DECOMPOSITIONS_END: a newer Unicode table with a decomposition above it
    # would make the fast path vouch for a character that can combine
    past = [hex(p) for p in range(column_cleaning.DECOMPOSITIONS_END, sys.maxunicode + 1)
            if unicodedata.decomposition(chr(p))]
    assert past == []
