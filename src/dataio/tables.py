"""Tables from files: JSON lines / arrays (their columns), CSV, TSV, Parquet and ``datasets`` directories read
by ``datasets`` into Arrow (streamed, memory-mapped), with one-line errors that name the file."""

import json
from pathlib import Path
from typing import Any

import datasets
import pandas as pd

from src.dataio.records import record_blocks
from src.errors import UserError

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
TABLE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val", "valid", "dev"), "test": ("test",)}
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


def files_under(path: str) -> list[str]:
    """The files whose bytes make a table: the file itself, or every file under a directory."""
    root = Path(path)
    if not root.is_dir():
        return [path]
    return [str(p) for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)]
