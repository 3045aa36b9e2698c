"""Text cleaning shared by the text datasets."""

import html
import re
import unicodedata

_TAG = re.compile(r"<[^>]*>")
# control characters other than whitespace (tab, newlines, ... become spaces later) and invisible
# format characters: zero-width space/joiners, direction marks, word joiner, soft hyphen, byte-order mark
_INVISIBLE = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\u00ad\u200b-\u200f\u202a-\u202e"
                        "\u2060-\u2064\ufeff]")
_REPEATED_MARK = re.compile(r"([!?,;:])\1+")  # "Great!!!" → "Great!"
_RULE = re.compile(r"([.\-=*_~#])\1{3,}")  # "....." → "...", "-------" → "---": keeps ellipses and dashes


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
