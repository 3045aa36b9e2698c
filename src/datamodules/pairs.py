"""Bring your own text pairs (``data=pairs``): any file of source → target records, with a column mapping.

Inputs: JSON lines or a JSON array (``.jsonl``, ``.json``, ``.ndjson``), CSV (``.csv``, ``.tsv``), Parquet, a
directory written by ``Dataset.save_to_disk`` or any directory ``datasets.load_dataset`` reads (data files
named by split). JSON goes through ``load_jsonl_records`` (streamed in blocks; malformed lines are skipped
and counted, or stop the run with ``on_bad_record=error``); the others are read by ``datasets`` into Arrow
(streamed, memory-mapped) and then go through the same cleaning, filters, deduplication, skip reasons and
cache (``load_table_records``). Skip reasons name the file's own columns (``empty:answer``).

Splits: ``data_file`` (one file or a list, pooled) is split by ``data.seed``, stratified by ``columns.group``
when it is set; or ``train_file`` + ``val_file`` (+ ``test_file``) are the user's own split, kept in file
order, so ``limit_val_samples: 200`` is the first 200 usable records of the validation file in every run.
Each split file is deduplicated on its own: a validation record is never dropped for repeating a training one.
"""

import json
import string
from collections import Counter
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import datasets
import pandas as pd

from src.datamodules.cleaning import clean_text
from src.datamodules.records import (load_jsonl_records, load_table_records, record_blocks, skip_counts,
                                     with_skip_reason)
from src.datamodules.text_pairs import TextPairDataModule
from src.errors import UserError

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
TABLE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val", "valid", "dev"), "test": ("test",)}
COLUMN_ROLES = ("source", "target", "id", "group")
SAVED_DATASET_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")


def is_json_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in JSON_SUFFIXES and not Path(path).is_dir()


def json_columns(path: str | Path, records: int = 100) -> list[str]:
    """The keys of the first ``records`` JSON objects of a JSON-lines file or JSON array, in order of appearance."""
    keys: dict[str, None] = {}
    _, blocks = record_blocks(str(path))
    for _, block in blocks:
        for line in block.splitlines()[:records]:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                keys.update(dict.fromkeys(record))
        break  # the first block is enough to know the columns
    return list(keys)


def _read(path: Path, read):
    try:
        return read()
    except UserError:
        raise
    except Exception as err:  # parser errors name the problem but not our file
        raise UserError(f"cannot read {path}: {str(err).strip().splitlines()[0]}") from err


def _one_split(loaded, path: Path, split: str | None) -> datasets.Dataset:
    """The dataset of a directory: its only split, or the one named like ``split`` (train, val, test)."""
    if isinstance(loaded, datasets.Dataset):
        return loaded
    names = list(loaded)
    if split is None:
        if len(names) == 1:
            return loaded[names[0]]
        raise UserError(f"{path} holds the splits {names}: name it as data.train_file and data.val_file "
                        "(and data.test_file), whose splits are train, validation and test, instead of data.data_file")
    found = next((name for name in SPLIT_NAMES[split] if name in loaded), None)
    if found is None:
        raise UserError(f"{path} has no {' / '.join(SPLIT_NAMES[split])} split for data.{split}_file (its splits: "
                        f"{names})")
    return loaded[found]


def read_table(path: str | Path, cache_dir: str, split: str | None = None,
               missing_hint: str = "check the data paths") -> datasets.Dataset:
    """A file or directory as a ``datasets.Dataset`` (Arrow-backed, streamed into ``cache_dir``).

    CSV cells are read as the text they hold: no type guessing ("3.50" stays "3.50") and no missing-value
    markers ("None", "NA" and empty cells stay text). ``split`` picks a directory's split.
    """
    path = Path(path)
    if path.is_dir():
        if any((path / name).is_file() for name in SAVED_DATASET_FILES):
            return _one_split(_read(path, lambda: datasets.load_from_disk(str(path))), path, split)
        return _one_split(_read(path, lambda: datasets.load_dataset(str(path), cache_dir=cache_dir)), path, split)
    suffix = path.suffix.lower()
    builder = TABLE_BUILDERS.get(suffix) or ("json" if suffix in JSON_SUFFIXES else None)
    if builder is None and (suffix or path.is_file()):
        raise UserError(f"{path}: use a .jsonl, .json, .csv, .tsv or .parquet file, or a datasets directory")
    if not path.is_file():
        raise UserError(f"data file not found: {path} — {missing_hint}")
    options: dict[str, Any] = {}
    if builder == "csv":
        sep = "\t" if suffix == ".tsv" else ","
        header = _read(path, lambda: pd.read_csv(path, sep=sep, nrows=0).columns)  # the same parser as the rows
        options = dict(sep=sep, na_filter=False,
                       features=datasets.Features({str(c): datasets.Value("string") for c in header}))
    return _read(path, lambda: datasets.load_dataset(builder, data_files=str(path), split="train",
                                                     cache_dir=cache_dir, **options))


def check_columns(path: str | Path, columns: dict[str, str | None], available: list[str]) -> None:
    """One line naming the first mapped column the file does not have, and the columns it has."""
    for role, column in columns.items():
        if column and column not in available:
            raise UserError(f"data.columns.{role}={column!r} is not a column of {path}; columns are: "
                            f"{', '.join(available) or '(none)'} — set data.columns.{role} to one of them")


def _files_under(path: str) -> list[str]:
    """The files whose bytes make a table: the file itself, or every file under a directory."""
    root = Path(path)
    if not root.is_dir():
        return [path]
    return [str(p) for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)]


def fill_template(template: str, placeholder: str, source: str) -> str:
    """``{source}`` (or ``{<the source column>}``) in ``template`` replaced by the source text.

    >>> fill_template("Question: {question}\\nAnswer:", "question", "Why?")
    'Question: Why?\\nAnswer:'
    """
    return template.format(**{"source": source, placeholder: source})


class PairsDataModule(TextPairDataModule):
    """Source → target pairs from the user's own files; see the module's docstring for inputs and splits.

    ``columns`` maps ``source`` and ``target`` (required), ``id`` (the record's uid; default: file and line or
    row) and ``group`` (stratifies the seeded split) to the file's columns. ``prompt_template`` formats the
    source (``{source}``, or the source column's own name). The quality filters are off by default. Every
    mapped column is required text: a record without a group is skipped (``empty:<group>``; in JSON a group
    must be a string, else ``bad_field:<group>``).
    """

    MISSING_HINT = "set data.data_file, or data.train_file and data.val_file"

    def __init__(self, data_file: str | list[str] | None = None, train_file: str | None = None,
                 val_file: str | None = None, test_file: str | None = None, columns: dict[str, str] | None = None,
                 prompt_template: str = "{source}", on_bad_record: str = "skip", dedupe: bool = True,
                 min_source_words: int = 0, max_source_words: int | None = None, min_target_words: int = 0,
                 max_target_words: int | None = None, drop_source_equals_target: bool = False, **kwargs):
        # plain types before save_hyperparameters records them (checkpoints load them)
        columns = dict(columns or {})
        if data_file is not None:  # one path, or a list (a ListConfig from Hydra)
            data_file = str(data_file) if isinstance(data_file, (str, Path)) else [str(f) for f in data_file]
        super().__init__(**kwargs)
        self.inputs = self._inputs(data_file, train_file, val_file, test_file)
        self.files = [f for files in self.inputs.values() for f in files]
        unknown = sorted(set(columns) - set(COLUMN_ROLES))
        if unknown:
            raise UserError(f"data.columns.{unknown[0]} is not a column role — use {', '.join(COLUMN_ROLES)}")
        self.columns = {"source": "source", "target": "target", "id": None, "group": None, **columns}
        source, target, id_column, group = (self.columns[r] for r in COLUMN_ROLES)
        if not source or not target or source == target:
            raise UserError(f"data.columns.source={source!r} and data.columns.target={target!r}: name two different "
                            "columns of your file")
        if id_column and id_column in (source, target, group):
            raise UserError(f"data.columns.id={id_column!r} is also the source, target or group column — name the "
                            "id column, or set data.columns.id=null (records are then named by file and line)")
        self.fields = list(dict.fromkeys(c for c in (source, target, group) if c))
        self.prompt_template = prompt_template
        self._check_template()
        self.on_bad_record = on_bad_record
        self.dedupe = dedupe
        self.filters = dict(min_words={source: min_source_words, target: min_target_words},
                            max_words={source: max_source_words, target: max_target_words},
                            distinct=(source, target) if drop_source_equals_target else ())
        self.stratify_column = "group" if group and "all" in self.inputs else None

    @staticmethod
    def _inputs(data_file, train_file, val_file, test_file) -> dict[str, list[str]]:
        """``{"all": files}`` for a seeded split, or the user's ``{"train": [...], "val": [...], ("test": [...])}``."""
        own = {"train": train_file, "val": val_file, "test": test_file}
        if data_file and any(own.values()):
            raise UserError("set either data.data_file (split by data.seed) or data.train_file and data.val_file "
                            "(your own split), not both — set the others to null")
        if data_file:
            return {"all": [data_file] if isinstance(data_file, str) else list(data_file)}
        if train_file and val_file:
            return {role: [str(f)] for role, f in own.items() if f}
        raise UserError("no data: set data.data_file (one file or a list, split by data.seed) or data.train_file and "
                        "data.val_file (your own split; without data.test_file, test uses the validation file)")

    def _check_template(self) -> None:
        placeholder = self.columns["source"]
        allowed = {"source", placeholder}
        names = f"'{{{placeholder}}}'" + (" or '{source}'" if placeholder != "source" else "")
        try:
            used = {name for _, name, _, _ in string.Formatter().parse(self.prompt_template) if name is not None}
        except ValueError as err:
            raise UserError(f"data.prompt_template={self.prompt_template!r}: {err} — write a literal brace as "
                            "{{ or }}") from None
        if used - allowed:
            raise UserError(f"data.prompt_template={self.prompt_template!r} uses {{{sorted(used - allowed)[0]}}}: its "
                            f"only placeholder is {names} (write a literal brace as {{{{ or }}}})")
        if not used:
            raise UserError(f"data.prompt_template must contain {names}")

    @property
    def FIELDS(self) -> tuple[str, str]:  # noqa: N802 — the name prepare_data.py reads
        return self.columns["source"], self.columns["target"]

    # -- records -----------------------------------------------------------------------------
    def _load(self, role: str, files: list[str], progress: bool) -> datasets.Dataset:
        for file in files:
            if not Path(file).exists():
                raise UserError(f"data file not found: {file} — {self.MISSING_HINT}")
        wanted = {role: self.columns[role] for role in COLUMN_ROLES}
        options = dict(dedupe=list(self.FIELDS) if self.dedupe else False, progress=progress,
                       id_field=self.columns["id"], **self.filters)
        json_files = [f for f in files if is_json_file(f)]
        if json_files and len(json_files) < len(files):
            raise UserError(f"data.data_file mixes JSON and other formats ({files}) — convert them to one format")
        if json_files:
            for file in files:
                available = json_columns(file)
                if available:  # an empty file has no columns to check: it gives no records
                    check_columns(file, wanted, available)
            return load_jsonl_records(files, self.fields, self.cache_dir, self.on_bad_record, **options)
        split = None if role == "all" else role
        parts = [(Path(f).name, partial(self._read_table, f, split, wanted)) for f in files]
        table_files = [p for f in files for p in _files_under(f)]
        return load_table_records(parts, table_files, self.fields, self.cache_dir, key=str(split), **options)

    def _read_table(self, file: str, split: str | None, wanted: dict[str, str | None]) -> datasets.Dataset:
        table = read_table(file, self.cache_dir, split)
        check_columns(file, wanted, table.column_names)
        return table

    def load_records(self, progress: bool = False) -> datasets.Dataset:
        """Every input record as a row, with its cleaned fields and ``skip_reason`` (empty if usable)."""
        sets = [self._load(role, files, progress) for role, files in self.inputs.items()]
        return sets[0] if len(sets) == 1 else datasets.concatenate_datasets(sets)

    @cached_property
    def record_sets(self) -> dict[str, datasets.Dataset]:
        return {role: self._load(role, files, False) for role, files in self.inputs.items()}

    @cached_property
    def records(self) -> datasets.Dataset:
        sets = list(self.record_sets.values())
        return sets[0] if len(sets) == 1 else datasets.concatenate_datasets(sets)

    def skipped(self) -> dict[str, int]:
        total: Counter = Counter()
        for records in self.record_sets.values():
            total.update(skip_counts(records))
        return dict(total)

    # -- pairs -------------------------------------------------------------------------------
    def format_source(self, text: str) -> str:
        """What a user types, cleaned like the training sources and put in ``data.prompt_template``."""
        return fill_template(self.prompt_template, self.columns["source"], clean_text(text))

    def _to_pairs(self, records: datasets.Dataset, files: list[str]) -> datasets.Dataset:
        template, (source, target, _, group) = self.prompt_template, (self.columns[r] for r in COLUMN_ROLES)

        def to_pair(batch: dict[str, list]) -> dict[str, list]:
            pair = {"source": [fill_template(template, source, s) for s in batch[source]], "target": batch[target]}
            return {**pair, "group": batch[group]} if group else pair

        usable = with_skip_reason(records)
        if not len(usable):
            raise UserError(f"no usable records in {', '.join(files)} (skipped: {skip_counts(records) or 'none read'}) "
                            "— check the file and data.columns")
        return usable.map(to_pair, batched=True, remove_columns=[c for c in usable.column_names if c != "uid"],
                          desc="apply prompt template")

    @cached_property
    def pair_sets(self) -> dict[str, datasets.Dataset]:
        sets = {role: self._to_pairs(records, self.inputs[role]) for role, records in self.record_sets.items()}
        if self.stratify_column:  # the seeded split stratifies a class column
            sets["all"] = sets["all"].class_encode_column("group")
        return sets

    def load_pairs(self) -> datasets.Dataset:
        """All usable pairs; with split files, their concatenation (``split`` then uses the files' own split)."""
        sets = list(self.pair_sets.values())
        return sets[0] if len(sets) == 1 else datasets.concatenate_datasets(sets)

    def split(self, pairs: datasets.Dataset) -> dict[str, datasets.Dataset]:
        if "all" in self.inputs:
            return super().split(pairs)
        own = self.pair_sets
        return {"train": own["train"], "val": own["val"], "test": own.get("test", own["val"])}

    def report(self) -> dict[str, Any]:
        return {**super().report(), "inputs": self.inputs}
