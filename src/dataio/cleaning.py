"""Text cleaning shared by the text datasets: ``clean_text`` for one string, ``clean_column`` for an
Arrow column (the same steps in Arrow's compute kernels, for the ~2M-record Amazon dump)."""

import html
import re
import unicodedata

import pyarrow as pa
import pyarrow.compute as pc

_TAG = re.compile(r"<[^>]*>")
# control characters other than whitespace (tab, newlines, ... become spaces later) and invisible
# format characters: zero-width space/joiners, direction marks, word joiner, soft hyphen, byte-order mark
_INVISIBLE = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\u00ad\u200b-\u200f\u202a-\u202e"
                        "\u2060-\u2064\ufeff]")
_MARKS, _RULE_CHARS = "!?,;:", ".-=*_~#"
_REPEATED_MARK = re.compile(f"([{re.escape(_MARKS)}])\\1+")  # "Great!!!" → "Great!"
_RULE = re.compile(f"([{re.escape(_RULE_CHARS)}])\\1{{3,}}")  # "....." → "...", "-------" → "---": keeps ellipses and dashes


def clean_text(text: str) -> str:
    """Strip HTML tags, decode entities, normalise unicode (NFKC), drop control and zero-width
    characters, collapse repeated punctuation and whitespace.

    >>> clean_text("<p>Soft&nbsp;fleece &amp; warm</p>  <br/>blanket")
    'Soft fleece & warm blanket'
    >>> clean_text("Ｗｉ-Ｆｉ\\u200b ready!!!  Fits\\x00 all…… ﬁne ------- ½")
    'Wi-Fi ready! Fits all... fine --- 1⁄2'
    """
    text = _TAG.sub(" ", text)
    text = html.unescape(text)  # after tag removal, so an escaped "&lt;b&gt;" stays as text
    text = unicodedata.normalize("NFKC", text)  # full-width letters, ligatures, "…" → "...", nbsp → space
    text = _INVISIBLE.sub("", text)
    text = _RULE.sub(r"\1\1\1", _REPEATED_MARK.sub(r"\1", text))
    return " ".join(text.split())  # collapses any unicode whitespace; 3x faster than a regex


def word_count(text: str) -> int:
    """Words in a ``clean_text`` result, whose only whitespace is single spaces.

    >>> word_count("Soft fleece & warm"), word_count("")
    (4, 0)
    """
    return text.count(" ") + 1 if text else 0


# Arrow's regular expressions (RE2) have no backreferences: one alternative per character, each
# capturing itself, and the replacement names every group (the groups that did not match are empty).
_MARK_RE2 = ("|".join(f"({re.escape(c)}){re.escape(c)}+" for c in _MARKS),
             "".join(f"\\{i + 1}" for i in range(len(_MARKS))))
_RULE_RE2 = ("|".join(f"({re.escape(c)}){re.escape(c)}{{3,}}" for c in _RULE_CHARS),
             "".join(f"\\{i + 1}" * 3 for i in range(len(_RULE_CHARS))))
# what str.split() splits on (str.isspace), so the collapse below matches " ".join(text.split())
WHITESPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


def _python_where(texts: pa.Array, mask: pa.Array, fn) -> pa.Array:
    """``fn`` applied in Python to the rows where ``mask`` is true; the others are left as they are."""
    mask = pc.fill_null(mask, False)
    rows = pc.indices_nonzero(mask)
    if not len(rows):
        return texts
    return pc.replace_with_mask(texts, mask, pa.array([fn(t) for t in texts.take(rows).to_pylist()], pa.string()))


def clean_column(texts: pa.Array) -> pa.Array:
    """``clean_text`` over a whole Arrow string array (nulls stay null).

    The same steps in the same order, run by Arrow's kernels; only entity decoding stays Python's
    ``html.unescape``, on the rows that hold an ``&``. NFKC uses Arrow's Unicode tables, which may
    be newer than Python's: characters Python does not know yet can differ.
    """
    texts = pc.replace_substring_regex(texts, _TAG.pattern, " ")
    texts = _python_where(texts, pc.match_substring(texts, "&"), html.unescape)
    texts = pc.utf8_normalize(texts, "NFKC")
    texts = pc.replace_substring_regex(texts, _INVISIBLE.pattern, "")
    texts = pc.replace_substring_regex(texts, *_MARK_RE2)
    texts = pc.replace_substring_regex(texts, *_RULE_RE2)
    # runs of whitespace other than one plain space: far fewer matches than every space
    texts = pc.replace_substring_regex(texts, f"[{WHITESPACE}]{{2,}}|[{WHITESPACE.replace(' ', '')}]", " ")
    return pc.utf8_trim(texts, " ")


def word_count_column(texts: pa.Array) -> pa.Array:
    """``word_count`` of every row of a ``clean_column`` result."""
    return pc.if_else(pc.equal(pc.binary_length(texts), 0), 0, pc.add(pc.count_substring(texts, " "), 1))


# -- light cleaning: conversations keep their line breaks, indentation and markup -----------------------------
_LINE_ENDS = "\r\n|\r"


def light_clean_text(text: str) -> str:
    """NFKC and invisible characters dropped, line endings as ``\\n``, the ends trimmed; nothing else (code,
    markdown and ``<tags>`` in a conversation mean what they say).

    >>> light_clean_text("  def f():\\r\\n    return '<b>'\\u200b  ")
    "def f():\\n    return '<b>'"
    """
    text = unicodedata.normalize("NFKC", re.sub(_LINE_ENDS, "\\n", text))
    return _INVISIBLE.sub("", text).strip()


def light_clean_column(texts: pa.Array) -> pa.Array:
    """``light_clean_text`` over an Arrow string array (nulls stay null)."""
    texts = pc.replace_substring_regex(texts, _LINE_ENDS, "\n")
    texts = pc.utf8_normalize(texts, "NFKC")
    texts = pc.replace_substring_regex(texts, _INVISIBLE.pattern, "")
    return pc.utf8_trim_whitespace(texts)
