"""``cleaning.clean_column`` in two passes over a block's UTF-8 bytes, with the same result on every row.

``clean_column`` runs eight steps over a column, among them Python's ``html.unescape`` on every row with an
``&`` and Arrow's NFKC, which decomposes and recomposes every row. Here numpy finds what each step would change,
and two passes make the changes:

1. ``_decode`` (tags, entities, NFKC, invisible characters) as one splice of the bytes:
   - a tag is where ``<[^>]*>`` matches, found as the regular expression scans, and becomes a space;
   - an ``&`` that starts ``&name;``, ``&#digits;`` or ``&#xhex;`` becomes what ``html.unescape`` makes of that
     entity alone (its match ends at the ``;``, so it is the same in context); an ``&`` followed by neither a
     letter nor ``#`` (every HTML5 name starts with a letter), or ending the text, stays;
   - NFKC works character by character when each character has a normalization boundary before it (a starter
     that never combines with what precedes it, whose decomposition starts with one: ICU's hasBoundaryBefore).
     Each character then becomes its own NFKC form, taken from Arrow, less the invisible characters, with
     whitespace that is not ASCII made a space (pass 2 treats all whitespace alike).
   A row holding anything else (an ``&`` of another kind, a combining mark, a character Python's Unicode tables
   do not know, one whose NFKC differs between Python and Arrow) takes ``clean_column``'s own steps.
2. ``_collapse`` (repeated marks, rules, whitespace): they touch disjoint runs of one character, so one pass
   drops each byte that repeats the one before it and is a space, a mark, or the fourth of a rule character.
"""

import html
import re
import unicodedata
from functools import cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from src.dataio import cleaning

_ENTITY = re.compile(r"&(?:[A-Za-z0-9]+|#[0-9]+|#[xX][0-9a-fA-F]+);")
_ENTITY_WIDTHS = (12, 34)  # "&", a name, ";": the longest HTML5 name has 32 characters
_WIDE_SPACE = re.compile("[" + "".join(c for c in cleaning.WHITESPACE if c > "\x7f") + "]")  # not ASCII
_INVISIBLE_BYTES = np.array([c for c in range(128) if cleaning._INVISIBLE.fullmatch(chr(c))], np.uint8)
_MARK_BYTES = np.frombuffer(cleaning._MARKS.encode(), np.uint8)
_RULE_BYTES = np.frombuffer(cleaning._RULE_CHARS.encode(), np.uint8)


def clean_column(texts: pa.Array) -> pa.Array:
    """``cleaning.clean_column(texts)``, row for row (nulls stay null)."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if texts.null_count:
        return pc.if_else(pc.is_valid(texts), clean_column(pc.fill_null(texts, "")), pa.scalar(None, texts.type))
    return pc.utf8_trim(_collapse(_decode(texts)), " ")


def utf8_buffers(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes of a string array without nulls and its row offsets (int64), both starting at 0."""
    if not len(texts):
        return np.zeros(0, np.uint8), np.zeros(1, np.int64)
    wide = pa.types.is_large_string(texts.type)
    size = 8 if wide else 4
    offsets = np.frombuffer(texts.buffers()[1], np.int64 if wide else np.int32, len(texts) + 1, texts.offset * size)
    offsets = offsets.astype(np.int64)
    data = texts.buffers()[2]
    data = np.frombuffer(data, np.uint8)[offsets[0]:offsets[-1]] if data is not None else np.zeros(0, np.uint8)
    return data, offsets - offsets[0]


def _string_array(data: np.ndarray, offsets: np.ndarray, type_: pa.DataType) -> pa.Array:
    width = np.int64 if pa.types.is_large_string(type_) else np.int32
    return pa.Array.from_buffers(type_, len(offsets) - 1, [None, pa.py_buffer(offsets.astype(width)),
                                                           pa.py_buffer(data)])


def _row_of(offsets: np.ndarray, positions: np.ndarray) -> np.ndarray:
    return np.searchsorted(offsets, positions, side="right") - 1


# -- pass 1: tags, entities, NFKC, invisible characters ----------------------------------------------------------
def _old_decode(texts: pa.Array) -> pa.Array:
    """``clean_column``'s own first steps: tags, html.unescape where there is an ``&``, NFKC, invisible characters
    deleted (and wide whitespace made a space, as ``_decode`` does)."""
    texts = pc.replace_substring_regex(texts, cleaning._TAG.pattern, " ")
    texts = cleaning._python_where(texts, pc.match_substring(texts, "&"), html.unescape)
    texts = pc.replace_substring_regex(pc.utf8_normalize(texts, "NFKC"), cleaning._INVISIBLE.pattern, "")
    return pc.replace_substring_regex(texts, _WIDE_SPACE.pattern, " ")


def _decode(texts: pa.Array) -> pa.Array:
    """Tags made a space, entities decoded, NFKC, invisible characters deleted and wide whitespace made a space
    (see the module), as one splice of the bytes."""
    data, offsets = utf8_buffers(texts)
    # controls, 127 and bytes of characters that are not ASCII; "&"; "<" and ">" (x | 2 == ">": "<" or ">")
    special = np.flatnonzero(((data - np.uint8(32)) >= 95) | (data == ord("&")) | ((data | 2) == ord(">")))
    if not len(special):
        return texts
    byte = data[special]
    tag_starts, tag_cuts = _tags(offsets, special[byte == ord("<")], special[byte == ord(">")])
    found = [_invisible_edits(data, special[(byte < 32) | (byte == 127)]),
             _character_edits(data, special[byte >= 0xC0]),
             _entity_edits(data, offsets, special[byte == ord("&")])]
    positions = np.concatenate([f[0] for f in found])
    first_kind = np.cumsum([0] + [len(f[2]) for f in found])
    kind = np.concatenate([f[1] + first for f, first in zip(found, first_kind)])
    kinds = [k for f in found for k in f[2]] + [(0, b" ")]  # the last: a tag, its cut given per tag
    if len(tag_starts):  # what lies in a tag goes with it
        before = np.searchsorted(tag_starts, positions, side="right") - 1
        outside = (before < 0) | (positions >= tag_starts[before] + tag_cuts[before])
        positions, kind = positions[outside], kind[outside]
    unknown = np.array([k is None for k in kinds], bool)[kind]
    old_rows = np.unique(_row_of(offsets, positions[unknown]))
    positions, kind = positions[~unknown], kind[~unknown]
    cuts = np.array([k[0] if k else 0 for k in kinds], np.int64)[kind]
    out = _splice(data, offsets, np.concatenate([positions, tag_starts]), np.concatenate([cuts, tag_cuts]),
                  np.concatenate([kind, np.full(len(tag_starts), len(kinds) - 1)]), [k[1] if k else b"" for k in kinds],
                  texts.type)
    out = texts if out is None else out
    if not len(old_rows):
        return out
    mask = np.zeros(len(texts), bool)
    mask[old_rows] = True
    return pc.replace_with_mask(out, pa.array(mask), _old_decode(texts.take(pa.array(old_rows))))


def _tags(offsets: np.ndarray, opens: np.ndarray, closes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where ``<[^>]*>`` matches (its start and length), found as a regular expression scans: each ``>`` ends a tag
    that starts at the first ``<`` after the ``>`` before it (or after the start of its text), if there is one."""
    if not len(opens) or not len(closes):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    row_start = offsets[_row_of(offsets, closes)]
    after = np.maximum(np.concatenate([[0], closes[:-1] + 1]), row_start)
    first_open = np.searchsorted(opens, after)
    found = first_open < len(opens)
    found[found] = opens[first_open[found]] < closes[found]
    starts = opens[first_open[found]]
    return starts, closes[found] - starts + 1


Edits = tuple[np.ndarray, np.ndarray, list]  # positions, the kind of edit at each, kinds: (bytes cut, bytes) or None


def _invisible_edits(data: np.ndarray, controls: np.ndarray) -> Edits:
    """ASCII control bytes: the invisible ones are deleted (tabs, line breaks... stay for ``_collapse``)."""
    byte = data[controls]
    deleted = np.isin(byte, _INVISIBLE_BYTES)
    return controls[deleted], np.zeros(int(deleted.sum()), np.int64), [(1, b"")]


def _character_edits(data: np.ndarray, leads: np.ndarray) -> Edits:
    """Characters that are not ASCII (``leads``: their first bytes) replaced by their forms (``_forms``)."""
    if not len(leads):
        return leads, leads, []
    points = _code_points(data, leads)
    distinct, kind = np.unique(points, return_inverse=True)
    kinds = []
    for point, form in zip(distinct.tolist(), _forms(distinct)):
        char = chr(point).encode()
        kinds.append(None if form is None else (len(char), form.encode()) if form != chr(point) else (0, b""))
    return leads, kind.ravel(), kinds


def _entity_edits(data: np.ndarray, offsets: np.ndarray, amps: np.ndarray) -> Edits:
    """Each ``&`` (at ``amps``) that starts an entity replaced by its decoded text in its characters' forms; one
    that stays is no edit; any other is an unknown edit (None: its row takes the old steps)."""
    if not len(amps):
        return amps, amps, []
    ends = offsets[np.searchsorted(offsets, amps, side="right")]  # where the text of each "&" ends
    after = data[np.minimum(amps + 1, len(data) - 1)]
    letter = ((after | 0x20) >= ord("a")) & ((after | 0x20) <= ord("z"))
    stays = (amps + 1 == ends) | ~(letter | (after == ord("#")))
    amps, ends = amps[~stays], ends[~stays]
    positions, kind, kinds = [], [], []
    for width in _ENTITY_WIDTHS:  # most entities are short: a narrow window first, a wide one for the rest
        length, semicolon, entity = _entity_spans(data, amps, ends, width)
        texts = data[np.minimum(amps[entity, None] + np.arange(width), len(data) - 1)]
        texts = np.where(np.arange(width) < length[entity, None], texts, 0).view(f"S{width}").ravel()
        distinct, which = np.unique(texts, return_inverse=True)
        positions.append(amps[entity])
        kind.append(which.ravel() + len(kinds))
        kinds += [_entity_edit(text.decode("ascii")) for text in distinct.tolist()]
        unknown = ~entity & (semicolon | (width == _ENTITY_WIDTHS[-1]))  # not an entity, or none found in time
        positions.append(amps[unknown])
        kind.append(np.full(int(unknown.sum()), -1))
        later = ~entity & ~unknown
        amps, ends = amps[later], ends[later]
    kind = np.concatenate(kind)
    return np.concatenate(positions), np.where(kind < 0, len(kinds), kind), kinds + [None]


def _entity_spans(data: np.ndarray, amps: np.ndarray, ends: np.ndarray, width: int) -> tuple[np.ndarray, ...]:
    """The length of the entity at each ``&`` (to its first ``;`` within ``width`` bytes), whether that ``;`` was
    found, and whether it is an entity: ``&``, letters, digits or ``#`` (the exact form is checked once per
    distinct entity), ``;``, all in the same text."""
    window = data[np.minimum(amps[:, None] + np.arange(width), len(data) - 1)]
    semicolon = window == ord(";")
    semicolon[:, 0] = False
    length = semicolon.argmax(1) + 1
    semicolon = semicolon.any(1)
    letter = window | 0x20
    inner = (((window >= ord("0")) & (window <= ord("9"))) | ((letter >= ord("a")) & (letter <= ord("z")))
             | (window == ord("#")))
    column = np.arange(width)
    inside = (column >= 1) & (column < length[:, None] - 1)
    entity = semicolon & (length >= 3) & (amps + length <= ends) & ~(inside & ~inner).any(1)
    return length, semicolon, entity


def _entity_edit(text: str) -> tuple[int, bytes] | None:
    """The edit for an entity: what ``html.unescape`` makes of it alone, each character in its form."""
    if not _ENTITY.fullmatch(text):
        return None
    value = html.unescape(text)
    forms = _forms(np.array([ord(c) for c in value if c > "\x7f"], np.int64))
    if any(form is None for form in forms):
        return None
    forms = iter(forms)
    value = "".join(next(forms) if c > "\x7f" else "" if cleaning._INVISIBLE.fullmatch(c) else c for c in value)
    return len(text), value.encode()


def _splice(data: np.ndarray, offsets: np.ndarray, positions: np.ndarray, cuts: np.ndarray, kind: np.ndarray,
            news: list[bytes], type_: pa.DataType) -> pa.Array | None:
    """The texts with ``cuts[i]`` bytes at ``positions[i]`` replaced by ``news[kind[i]]`` (the edits do not overlap);
    None when nothing changes. One copy of the bytes: each new text is written over the start of its cut, and
    the rest of the cut deleted (or the rest of the new text inserted)."""
    grow = np.array([len(n) for n in news], np.int64)[kind] - cuts
    changing = (cuts > 0) | (grow != 0)
    positions, cuts, kind, grow = positions[changing], cuts[changing], kind[changing], grow[changing]
    if not len(positions):
        return None
    out, deleted, inserted_at, inserted = data.copy(), [], [], []
    order = np.lexsort((cuts, kind))
    groups = np.split(order, np.flatnonzero(np.diff(kind[order]) | np.diff(cuts[order])) + 1)
    for group in groups:  # edits of one new text and one cut
        at, cut, new = positions[group], int(cuts[group[0]]), np.frombuffer(news[kind[group[0]]], np.uint8)
        written = min(cut, len(new))
        if written:
            out[at[:, None] + np.arange(written)] = new[:written]
        if cut > len(new):
            deleted.append((at[:, None] + np.arange(written, cut)).ravel())
        elif len(new) > cut:
            inserted_at.append(np.repeat(at + cut, len(new) - cut))
            inserted.append(np.tile(new[cut:], len(at)))
    if deleted:
        deleted = np.concatenate(deleted)
        keep = np.ones(len(out), bool)
        keep[deleted] = False
        out = out[keep]
    if inserted_at:
        at = np.concatenate(inserted_at)
        if len(deleted):  # where they are once the cuts are gone
            at = at - np.searchsorted(np.sort(deleted), at)
        out = np.insert(out, at, np.concatenate(inserted))
    change = np.bincount(_row_of(offsets, positions), weights=grow, minlength=len(offsets) - 1)
    offsets = offsets + np.concatenate([[0], np.cumsum(change.astype(np.int64))])
    return _string_array(out, offsets, type_)


def _code_points(data: np.ndarray, leads: np.ndarray) -> np.ndarray:
    """The code points of the UTF-8 characters starting at ``leads``."""
    b = data[np.minimum(leads[:, None] + np.arange(4), len(data) - 1)].astype(np.int64)  # past the end: unused
    tail = b[:, 1:] & 0x3F
    two = ((b[:, 0] & 0x1F) << 6) | tail[:, 0]
    three = ((b[:, 0] & 0x0F) << 12) | (tail[:, 0] << 6) | tail[:, 1]
    four = ((b[:, 0] & 0x07) << 18) | (tail[:, 0] << 12) | (tail[:, 1] << 6) | tail[:, 2]
    return np.where(b[:, 0] < 0xE0, two, np.where(b[:, 0] < 0xF0, three, four))


_FORMS: dict[int, str | None] = {}  # code point -> its form, or None


def _forms(points: np.ndarray) -> list[str | None]:
    """Each character's NFKC form (Arrow's) without invisible characters and with wide whitespace made a space;
    None where the character may interact with its neighbours, Python's tables do not know it, or Python's NFKC
    differs from Arrow's."""
    new = [p for p in points.tolist() if p not in _FORMS]
    if new:
        arrow = pc.utf8_normalize(pa.array([chr(p) for p in new], pa.string()), "NFKC").to_pylist()
        for point, form in zip(new, arrow):
            char = chr(point)
            alone = _boundary_before(char) and form == unicodedata.normalize("NFKC", char)
            _FORMS[point] = _WIDE_SPACE.sub(" ", cleaning._INVISIBLE.sub("", form)) if alone else None
    return [_FORMS[p] for p in points.tolist()]


def _boundary_before(char: str) -> bool:
    """Nothing before ``char`` combines with it under NFKC: it is a starter that is not the second half of any
    composition, and so is the first character of its decomposition."""
    if unicodedata.category(char) == "Cn":  # unknown to Python's tables: they cannot vouch for it
        return False
    first = unicodedata.normalize("NFKD", char)[:1] or char
    return all(unicodedata.combining(c) == 0 and ord(c) not in _combines_backward() for c in {char, first})


# no character from plane 3 up has a decomposition (CJK extensions, tags, private use): a test checks Python's tables
DECOMPOSITIONS_END = 0x30000


@cache
def _combines_backward() -> frozenset[int]:
    """Characters that can be the second of a canonical composition (NFC_Quick_Check=Maybe, and more): every
    second half of a two-character canonical decomposition, and the Hangul vowel and trailing jamo."""
    seconds = set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))
    for point in range(DECOMPOSITIONS_END):  # the whole of Unicode took 0.7 s, paid by every cold data load
        parts = unicodedata.decomposition(chr(point)).split()
        if len(parts) == 2 and not parts[0].startswith("<"):
            seconds.add(int(parts[1], 16))
    return frozenset(seconds)


# -- pass 2: repeated marks, rules, whitespace --------------------------------------------------------------------
def _collapse(texts: pa.Array) -> pa.Array:
    """The marks, rule and whitespace steps of ``clean_column`` at once, on text whose only whitespace is ASCII.

    They touch disjoint runs of one character each, so a byte is dropped when it repeats the one before it in
    its row and is a space (a run of whitespace becomes one space; the other ASCII whitespace is made a space
    first), a mark (``!!!`` becomes ``!``), or the fourth or later of a rule character (``-----`` becomes ``---``).
    The regular expressions pay per match, and whitespace runs are everywhere.
    """
    data, offsets = utf8_buffers(texts)
    if not len(data):
        return texts
    spaced = bool((data < 32).any())  # tabs, line breaks...: the only control bytes left once invisible ones are gone
    if spaced:
        data = np.where(data < 32, np.uint8(32), data)
    same = data[1:] == data[:-1]  # same[i]: byte i + 1 repeats byte i
    starts = offsets[1:-1]
    same[starts[(starts > 0) & (starts < len(data))] - 1] = False  # the first byte of a row repeats nothing
    repeats = np.flatnonzero(same) + 1
    byte = data[repeats]
    drop = (byte == ord(" ")) | np.isin(byte, _MARK_BYTES)
    rule = np.flatnonzero(np.isin(byte, _RULE_BYTES) & (repeats >= 3))
    rule = rule[same[repeats[rule] - 2] & same[repeats[rule] - 3]]  # the two bytes before repeat theirs too
    drop[rule] = True
    dropped = repeats[drop]
    if not len(dropped):
        return _string_array(data, offsets, texts.type) if spaced else texts
    keep = np.ones(len(data), bool)
    keep[dropped] = False
    removed = np.bincount(_row_of(offsets, dropped), minlength=len(texts))
    offsets = offsets - np.concatenate([[0], np.cumsum(removed)])
    return _string_array(data[keep], offsets, texts.type)
