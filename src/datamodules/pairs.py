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

from collections import Counter
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import datasets

from src.conversation import MESSAGES_FEATURE
from src.dataio.records import load_jsonl_records, load_table_records, skip_counts, with_skip_reason
from src.dataio.tables import check_columns, files_under, is_json_file, json_columns, read_table
from src.datamodules.formats import RecordFormat, format_class
from src.datamodules.text import TextDataModule
from src.errors import UserError

OTHER_ROLES = ("id", "group")  # roles every format's data.columns has beside its own


class PairsDataModule(TextDataModule):
    """Records of the user's own files as conversations; see the module's docstring for inputs and splits.

    ``format`` names the record format (``src/datamodules/formats.py``; default ``pairs``: a source and a target
    column). ``columns`` maps the format's roles (for pairs ``source`` and ``target``), ``id`` (the record's uid;
    default: file and line or row) and ``group`` (stratifies the seeded split) to the file's columns.
    ``prompt_template`` formats the source (``{source}``, or the source column's own name); ``system_prompt``
    starts every conversation. The quality filters (on the source and target roles) are off by default. Every
    mapped column is required: a record without a group is skipped (``empty:<group>``; in JSON a group must be a
    string, else ``bad_field:<group>``).
    """

    MISSING_HINT = "set data.data_file, or data.train_file and data.val_file"

    def __init__(self, data_file: str | list[str] | None = None, train_file: str | None = None,
                 val_file: str | None = None, test_file: str | None = None, columns: dict[str, str] | None = None,
                 format: str = "pairs", prompt_template: str = "{source}", system_prompt: str | None = None,
                 on_bad_record: str = "skip", dedupe: bool = True, min_source_words: int = 0,
                 max_source_words: int | None = None, min_target_words: int = 0, max_target_words: int | None = None,
                 drop_source_equals_target: bool = False, cleaning: str = "full", **kwargs):
        # plain types before save_hyperparameters records them (checkpoints load them)
        columns = dict(columns or {})
        if data_file is not None:  # one path, or a list (a ListConfig from Hydra)
            data_file = str(data_file) if isinstance(data_file, (str, Path)) else [str(f) for f in data_file]
        super().__init__(**kwargs)
        self.inputs = self._inputs(data_file, train_file, val_file, test_file)
        self.files = [f for files in self.inputs.values() for f in files]
        record_format = format_class(format)
        roles = (*record_format.roles, *OTHER_ROLES)
        unknown = sorted(k for k, v in columns.items() if k not in roles and v is not None)
        if unknown:
            raise UserError(f"data.columns.{unknown[0]} is not a column role — use {', '.join(roles)}")
        columns = {k: v for k, v in columns.items() if k in roles}  # another format's roles, set to null
        self.format: RecordFormat = record_format.from_config(columns, prompt_template, system_prompt)
        self.columns = {**self.format.role_columns(), "id": columns.get("id"), "group": columns.get("group")}
        id_column, group = self.columns["id"], self.columns["group"]
        if id_column and id_column in (*self.format.fields(), group):
            raise UserError(f"data.columns.id={id_column!r} is also a column the records are read from — name the "
                            "id column, or set data.columns.id=null (records are then named by file and line)")
        self.field_types = {**self.format.fields(), **({group: "text"} if group else {})}
        self.fields = list(self.field_types)
        self.prompt_template = prompt_template
        self.on_bad_record = on_bad_record
        self.dedupe = dedupe
        self.cleaning = cleaning
        self.filters = self._filters(min_source_words, max_source_words, min_target_words, max_target_words,
                                     drop_source_equals_target)
        self.stratify_column = "group" if group and "all" in self.inputs else None

    def _filters(self, min_source: int, max_source: int | None, min_target: int, max_target: int | None,
                 distinct: bool) -> dict[str, Any]:
        """The quality filters, on the columns of the format's source and target roles."""
        source, target = self.columns.get("source"), self.columns.get("target")
        if not (source and target) and (min_source or min_target or max_source is not None
                                        or max_target is not None or distinct):
            raise UserError("the data.min_/max_*_words and drop_source_equals_target filters need a format with a "
                            "source and a target (data.format=pairs) — remove them")
        if not (source and target):
            return {}
        return dict(min_words={source: min_source, target: min_target},
                    max_words={source: max_source, target: max_target},
                    distinct=(source, target) if distinct else ())

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

    @property
    def FIELDS(self) -> tuple[str, ...]:  # noqa: N802 — the name prepare_data.py reads
        """The record fields the format reads (for pairs: the source and target columns)."""
        return tuple(self.format.fields())

    # -- records -----------------------------------------------------------------------------
    def _load(self, role: str, files: list[str], progress: bool) -> datasets.Dataset:
        for file in files:
            if not Path(file).exists():
                raise UserError(f"data file not found: {file} — {self.MISSING_HINT}")
        wanted = {role: column for role, column in self.columns.items()}
        options = dict(dedupe=list(self.FIELDS) if self.dedupe else False, progress=progress,
                       id_field=self.columns["id"], field_types=self.field_types, cleaning=self.cleaning, **self.filters)
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
        table_files = [p for f in files for p in files_under(f)]
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
        """Records skipped while reading, and (by formats that check conversations) while making samples."""
        total: Counter = Counter()
        for records in self.record_sets.values():
            total.update(skip_counts(records))
        if self.format.can_skip:
            for role in self.inputs:
                total.update(self.format_skips[role])
        return dict(total)

    # -- samples -----------------------------------------------------------------------------
    def _to_samples(self, role: str) -> tuple[datasets.Dataset, dict[str, int]]:
        """The usable records of ``role`` as samples (``uid``, ``messages``, ``group``), and what the format
        skipped."""
        records, files, group = self.record_sets[role], self.inputs[role], self.columns["group"]
        record_format = self.format

        on_bad_record = self.on_bad_record

        def to_samples(batch: dict[str, list]) -> dict[str, list]:
            messages, reasons = record_format.samples(batch)
            bad = next((i for i, reason in enumerate(reasons) if reason), None)
            if bad is not None and on_bad_record == "error":
                raise UserError(f"{batch['uid'][bad]}: bad record ({reasons[bad]}) — fix or remove that record, or set "
                                "data.on_bad_record=skip to skip and count such records")
            out = {"messages": [m or [] for m in messages], "format_skip": reasons}
            return {**out, "group": batch[group]} if group else out

        usable = with_skip_reason(records)
        if not len(usable):
            raise UserError(f"no usable records in {', '.join(files)} (skipped: {skip_counts(records) or 'none read'}) "
                            "— check the file and data.columns")
        features = datasets.Features({"uid": usable.features["uid"], "messages": MESSAGES_FEATURE,
                                      "format_skip": datasets.Value("string"),
                                      **({"group": datasets.Value("string")} if group else {})})
        samples = usable.map(to_samples, batched=True, features=features,
                             remove_columns=[c for c in usable.column_names if c != "uid"], desc="make conversations")
        skips: dict[str, int] = {}
        if record_format.can_skip:
            skips = {reason: n for reason, n in Counter(samples["format_skip"]).items() if reason}
            samples = samples.filter(lambda reasons: [not r for r in reasons], input_columns="format_skip",
                                     batched=True, desc="drop skipped conversations")
            if not len(samples):
                raise UserError(f"no usable conversations in {', '.join(files)} (skipped: {skips}) — check the file "
                                "and data.format")
        return samples.remove_columns("format_skip"), skips

    @cached_property
    def _sample_results(self) -> dict[str, tuple[datasets.Dataset, dict[str, int]]]:
        return {role: self._to_samples(role) for role in self.inputs}

    @property
    def format_skips(self) -> dict[str, dict[str, int]]:
        return {role: skips for role, (_, skips) in self._sample_results.items()}

    @cached_property
    def sample_sets(self) -> dict[str, datasets.Dataset]:
        sets = {role: samples for role, (samples, _) in self._sample_results.items()}
        if self.stratify_column:  # the seeded split stratifies a class column
            sets["all"] = sets["all"].class_encode_column("group")
        return sets

    def load_samples(self) -> datasets.Dataset:
        """All usable samples; with split files, their concatenation (``split`` then uses the files' own split)."""
        sets = list(self.sample_sets.values())
        return sets[0] if len(sets) == 1 else datasets.concatenate_datasets(sets)

    def split(self, samples: datasets.Dataset) -> dict[str, datasets.Dataset]:
        if "all" in self.inputs:
            return super().split(samples)
        own = self.sample_sets
        return {"train": own["train"], "val": own["val"], "test": own.get("test", own["val"])}

    def report(self) -> dict[str, Any]:
        return {**super().report(), "inputs": self.inputs}
