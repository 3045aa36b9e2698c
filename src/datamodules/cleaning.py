"""Text cleaning shared by the text datasets."""

import html
import re

_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Strip HTML tags, decode entities (``&amp;`` → ``&``) and collapse whitespace.

    >>> clean_text("<p>Soft&nbsp;fleece &amp; warm</p>  <br/>blanket")
    'Soft fleece & warm blanket'
    """
    text = _TAG.sub(" ", text)
    text = html.unescape(text)  # after tag removal, so an escaped "&lt;b&gt;" stays as text
    return _SPACE.sub(" ", text).strip()
