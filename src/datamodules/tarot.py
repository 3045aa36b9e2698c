"""Portuguese tarot readings: card (+ optional question) → reading, split stratified by card."""

import logging
from functools import cached_property
from pathlib import Path
from typing import Any

import datasets

from src.conversation import MESSAGES_FEATURE, reference
from src.dataio.records import skip_counts, value_counts, with_skip_reason
from src.dataio.tables import check_columns, read_table
from src.datamodules.formats import CANONICAL, MAJOR_ARCANA, TarotFormat, card_key
from src.datamodules.text import TextDataModule

log = logging.getLogger(__name__)

DEFAULT_PROMPT = "Faça uma leitura de tarô.\nCarta: {card}\nPergunta: {question}\nLeitura:"


class TarotDataModule(TextDataModule):
    """Readings from JSON, JSON lines, CSV, Parquet or a datasets directory (read like ``data=pairs`` reads
    them); ``columns`` maps this module's fields to the file's.

    Cleaning trims and collapses whitespace, drops empty readings and records whose card is not one
    of the 22 Major Arcana (reported by name). The default split is 85/15 train/val stratified by
    card, with no separate test set (test evaluates the validation split).
    """

    stratify_column = "card"

    def __init__(self, data_file: str, columns: dict[str, str] | None = None,
                 prompt_template: str = DEFAULT_PROMPT, default_question: str = "Leitura geral",
                 val_fraction: float = 0.15, test_fraction: float = 0.0, **kwargs):
        columns = dict(columns or {})  # plain dict before save_hyperparameters records it (checkpoints load it)
        super().__init__(val_fraction=val_fraction, test_fraction=test_fraction, **kwargs)
        self.format = TarotFormat(prompt_template, default_question)
        self.data_file = Path(data_file)
        self.columns = {"id": "id", "card": "card", "question": "question", "reading": "reading", **columns}
        self.prompt_template = prompt_template
        self.default_question = default_question

    @cached_property
    def raw(self) -> datasets.Dataset:
        """The file with canonical column names ``uid``, ``card``, ``question``, ``reading``."""
        ds = read_table(self.data_file, self.cache_dir, missing_hint="set data.data_file")
        cols, file_name = self.columns, self.data_file.name  # not self: datasets' fingerprint would pickle the trainer
        check_columns(self.data_file, {field: cols[field] for field in ("card", "reading")}, ds.column_names)

        def canonical(batch: dict[str, list], idx: list[int]) -> dict[str, list]:
            n = len(idx)
            question = batch[cols["question"]] if cols["question"] in batch else [None] * n
            uid = batch[cols["id"]] if cols["id"] in batch else [f"{file_name}:{i + 1}" for i in idx]
            return {"uid": [str(u) for u in uid],
                    "card": [" ".join(str(c or "").split()) for c in batch[cols["card"]]],
                    "question": [" ".join(str(q or "").split()) for q in question],
                    "reading": [" ".join(str(r or "").split()) for r in batch[cols["reading"]]]}

        return ds.map(canonical, batched=True, with_indices=True, remove_columns=ds.column_names,
                      desc="read tarot readings")

    @cached_property
    def checked(self) -> datasets.Dataset:
        """Every record with its canonical card name and a ``skip_reason`` ("" when kept)."""

        def check(batch: dict[str, list]) -> dict[str, list]:
            cards = [CANONICAL.get(card_key(c), "") for c in batch["card"]]
            reasons = ["unknown_card" if not card else "empty:reading" if not reading else ""
                       for card, reading in zip(cards, batch["reading"])]
            return {"canonical_card": cards, "skip_reason": reasons}

        return self.raw.map(check, batched=True, desc="check cards")

    def skipped(self) -> dict[str, int]:
        return skip_counts(self.checked)

    def unknown_cards(self) -> dict[str, int]:
        return value_counts(with_skip_reason(self.checked, "unknown_card"), "card")

    def load_samples(self) -> datasets.Dataset:
        record_format = self.format

        def to_samples(batch: dict[str, list]) -> dict[str, list]:
            return {"messages": record_format.samples(batch["canonical_card"], batch["question"], batch["reading"]),
                    "card": batch["canonical_card"]}

        checked = with_skip_reason(self.checked)
        features = datasets.Features({"uid": checked.features["uid"], "messages": MESSAGES_FEATURE,
                                      "card": datasets.ClassLabel(names=list(MAJOR_ARCANA))})
        return checked.map(to_samples, batched=True, features=features, desc="make conversations",
                           remove_columns=["card", "canonical_card", "skip_reason", "question", "reading"])

    def setup(self, stage: str | None = None) -> None:
        first_time = not self.splits
        super().setup(stage)
        if first_time:
            stats = self.statistics()
            log.info("tarot data: %d readings, %d cards, mean reading %.0f characters; skipped %s; unknown cards %s",
                     stats["records"], stats["unique_cards"], stats["mean_reading_chars"], self.skipped(),
                     stats["unknown_cards"])

    def statistics(self) -> dict[str, Any]:
        names = self.splits["train"].features["card"].names
        # with test_fraction=0 the test split is the val split: count it once
        splits = ["train", "val"] + (["test"] if self.hparams.test_fraction else [])
        per_card = {}
        for split in splits:
            counts = value_counts(self.splits[split], "card")
            per_card[split] = {names[card]: n for card, n in sorted(counts.items())}
        kept = sum(self.splits[s].num_rows for s in splits)
        lengths = [sum(len(reference(m)) for m in self.splits[s]["messages"]) for s in splits]
        return {"records": kept, "unique_cards": len(set().union(*per_card.values())),
                "mean_reading_chars": round(sum(lengths) / kept, 1), "per_card": per_card,
                "unknown_cards": self.unknown_cards()}

    def report(self) -> dict[str, Any]:
        return {**super().report(), **self.statistics()}
