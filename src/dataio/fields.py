"""The types a record field may have, and what reading, cleaning and deduplication do with each in Arrow.

- ``TEXT``: a string, required (missing, null or not a string: ``bad_field:<name>``; empty after cleaning:
  ``empty:<name>``).
- ``OPTIONAL_TEXT``: a string that may be missing, null or empty (Alpaca's ``input``): read as "".
- ``messages(role_key, content_key)``: a list of objects, each with a string role and a string content (OpenAI's
  ``messages`` are ``role``/``content``, ShareGPT's ``conversations`` ``from``/``value``). Read into the canonical
  ``list<struct<role, content>>``; each content is cleaned like text; an empty list is ``empty:<name>``.
"""

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from src.errors import UserError

TEXT = "text"
OPTIONAL_TEXT = "optional_text"
MESSAGES = "messages:role,content"  # OpenAI's layout
MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES_TYPE = pa.list_(MESSAGE_TYPE)
MESSAGES_FEATURE = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})


def messages(role_key: str = "role", content_key: str = "content") -> str:
    """The type of a list of messages whose objects name their role and content with these keys."""
    return f"messages:{role_key},{content_key}"


def message_keys(kind: str) -> tuple[str, str] | None:
    """``(role key, content key)`` of a messages type; None for text."""
    if not kind.startswith("messages:"):
        return None
    role, content = kind.removeprefix("messages:").split(",")
    return role, content


def check(kind: str) -> str:
    if kind in (TEXT, OPTIONAL_TEXT) or message_keys(kind):
        return kind
    raise ValueError(f"unknown record field type {kind!r}")


def parse_type(kind: str) -> pa.DataType:
    """The Arrow type its JSON is parsed as (an explicit schema: other keys of the objects are ignored)."""
    keys = message_keys(kind)
    return pa.list_(pa.struct([(keys[0], pa.string()), (keys[1], pa.string())])) if keys else pa.string()


def arrow_type(kind: str) -> pa.DataType:
    """The type of the read column."""
    return MESSAGES_TYPE if message_keys(kind) else pa.string()


def feature(kind: str):
    return MESSAGES_FEATURE if message_keys(kind) else datasets.Value("string")


def _parts(column: pa.Array) -> tuple[pa.Array, pa.Array]:
    """A list column's items (of its own rows only, also when it is a slice) and offsets into them."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
    return pc.list_flatten(column), pa.array(np.concatenate([[0], np.cumsum(lengths)]), pa.int32())


def _lists(offsets: pa.Array, items: pa.Array, column: pa.Array) -> pa.Array:
    return pa.ListArray.from_arrays(offsets, items, mask=pc.is_null(column))


def canonical(column: pa.Array, kind: str) -> pa.Array:
    """A parsed column as its canonical type: messages' structs renamed to role/content; optional text's nulls ""."""
    keys = message_keys(kind)
    if keys is None:
        return pc.fill_null(column, "") if kind == OPTIONAL_TEXT else column
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    items, offsets = _parts(column)
    structs = pa.StructArray.from_arrays([items.field(keys[0]), items.field(keys[1])], names=["role", "content"])
    return _lists(offsets, structs, column)


def missing(column: pa.Array, kind: str) -> pa.Array:
    """Rows whose value is unusable as read: null (text, messages), or a message with a null role or content."""
    if kind == OPTIONAL_TEXT:
        return pa.array([False] * len(column))
    if message_keys(kind) is None:
        return pc.is_null(column)
    items, _ = _parts(column)
    bad_item = pc.or_(pc.is_null(items.field("role")), pc.is_null(items.field("content")))
    parents = pc.list_parent_indices(column)
    bad_rows = pc.unique(pc.filter(parents, pc.fill_null(bad_item, True))).to_pylist()
    bad = pc.is_null(column).to_numpy(zero_copy_only=False).copy()
    bad[bad_rows] = True
    return pa.array(bad)


def python_value(value, kind: str):
    """A line-by-line reader's check: the value in the column's Python form, or None when it is unusable."""
    if kind == OPTIONAL_TEXT:
        return value if isinstance(value, str) else "" if value is None else None
    keys = message_keys(kind)
    if keys is None:
        return value if isinstance(value, str) else None
    if not isinstance(value, list) or not all(isinstance(m, dict) and isinstance(m.get(keys[0]), str)
                                              and isinstance(m.get(keys[1]), str) for m in value):
        return None
    return [{"role": m[keys[0]], "content": m[keys[1]]} for m in value]


def from_table(column: pa.ChunkedArray, kind: str, where: str) -> pa.Array:
    """A column of a table ``datasets`` read (CSV, Parquet, a saved dataset) as the field's canonical type."""
    column = column.combine_chunks()
    keys = message_keys(kind)
    if keys is not None:
        item = column.type.value_type if pa.types.is_list(column.type) or pa.types.is_large_list(column.type) else None
        if item is None or not pa.types.is_struct(item) or {keys[0], keys[1]} - {f.name for f in item}:
            raise UserError(f"{where} holds {column.type} values, not a list of {{{keys[0]}, {keys[1]}}} messages — "
                            "map data.columns to a messages column (JSON lines, Parquet or a datasets directory)")
        column = column.cast(pa.list_(item))
        items, offsets = _parts(column)
        return canonical(_lists(offsets, pa.StructArray.from_arrays(
            [items.field(keys[0]).cast(pa.string()), items.field(keys[1]).cast(pa.string())], names=list(keys)),
            column), kind)
    if not pa.types.is_string(column.type):
        try:
            column = pc.cast(column, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise UserError(f"{where} holds {column.type} values, not text — map data.columns to a text column") \
                from None
    return pc.fill_null(column, "") if kind == OPTIONAL_TEXT else column


def clean(column: pa.Array, kind: str, cleaner) -> pa.Array:
    """``cleaner`` (a string-column function) on the text, or on each message's content."""
    if message_keys(kind) is None:
        return pc.fill_null(cleaner(column), "")
    items, offsets = _parts(column)
    contents = pc.fill_null(cleaner(items.field("content")), "")
    structs = pa.StructArray.from_arrays([pc.fill_null(items.field("role"), ""), contents], names=["role", "content"])
    return _lists(offsets, structs, column)


def empty(column: pa.Array, kind: str) -> pa.Array:
    if message_keys(kind) is None:
        return pc.equal(pc.fill_null(column, ""), "")
    return pc.equal(pc.fill_null(pc.list_value_length(column), 0), 0)


def key_text(column: pa.Array, kind: str) -> pa.Array:
    """One string per row that equal values share, for deduplication (messages: roles and contents joined)."""
    if message_keys(kind) is None:
        return column
    items, offsets = _parts(column)
    per_message = pc.binary_join_element_wise(items.field("role"), items.field("content"), "\x1f")
    lists = pa.ListArray.from_arrays(offsets, per_message)
    return pc.fill_null(pc.binary_join(lists, "\x1e"), "")


def blank(kind: str) -> pa.Scalar:
    """The value a skipped row carries."""
    return pa.scalar([], type=MESSAGES_TYPE) if message_keys(kind) else pa.scalar("", type=pa.string())
