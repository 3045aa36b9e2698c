"""Portuguese tarot readings: card (+ optional question) → reading, split stratified by card."""

import logging
import unicodedata
from functools import cached_property
from pathlib import Path
from typing import Any

import datasets
import pyarrow.compute as pc

from src.datamodules.pairs import check_columns, read_table
from src.datamodules.records import skip_counts, value_counts, with_skip_reason
from src.datamodules.text_pairs import TextPairDataModule
from src.errors import UserError

log = logging.getLogger(__name__)

MAJOR_ARCANA = (
    "O Louco", "O Mago", "A Sacerdotisa", "A Imperatriz", "O Imperador", "O Hierofante", "Os Enamorados",
    "O Carro", "A Força", "O Eremita", "A Roda da Fortuna", "A Justiça", "O Enforcado", "A Morte", "A Temperança",
    "O Diabo", "A Torre", "A Estrela", "A Lua", "O Sol", "O Julgamento", "O Mundo",
)
DEFAULT_PROMPT = "Faça uma leitura de tarô.\nCarta: {card}\nPergunta: {question}\nLeitura:"


def card_key(name: str) -> str:
    """Case-, accent- and space-insensitive key, so "a forca" and "A Força" are the same card.

    >>> card_key("  A   FORÇA ") == card_key("a forca")
    True
    """
    decomposed = unicodedata.normalize("NFKD", name.casefold())
    return " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).split())


CANONICAL = {card_key(name): name for name in MAJOR_ARCANA}


def reading_prompt(template: str, card: str, question: str, default_question: str) -> str:
    """The model input for a card and question (training, evaluation and serving all format it here)."""
    return template.format(card=card, question=question or default_question)


class TarotDataModule(TextPairDataModule):
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
        if "{card}" not in prompt_template:
            raise UserError("data.prompt_template must contain '{card}'")
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

    def format_source(self, text: str) -> str:
        """``"<card>"`` or ``"<card>: <question>"`` (any case, accents optional) as the model sees it."""
        card, _, question = text.partition(":")
        canonical = CANONICAL.get(card_key(card))
        if canonical is None:
            raise UserError(f"unknown card {card.strip()!r}: type one of the 22 Major Arcana (e.g. 'A Torre'), "
                            "optionally followed by ': <question>'")
        return reading_prompt(self.prompt_template, canonical, " ".join(question.split()), self.default_question)

    def load_pairs(self) -> datasets.Dataset:
        template, default_question = self.prompt_template, self.default_question

        def to_pair(batch: dict[str, list]) -> dict[str, list]:
            return {"source": [reading_prompt(template, c, q, default_question)
                               for c, q in zip(batch["canonical_card"], batch["question"])],
                    "target": batch["reading"], "card": batch["canonical_card"]}

        pairs = with_skip_reason(self.checked).map(
            to_pair, batched=True, remove_columns=["canonical_card", "skip_reason", "question", "reading"],
            desc="apply prompt template")
        return pairs.cast_column("card", datasets.ClassLabel(names=list(MAJOR_ARCANA)))

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
        lengths = [pc.sum(pc.utf8_length(self.splits[s].with_format("arrow")["target"])).as_py() for s in splits]
        return {"records": kept, "unique_cards": len(set().union(*per_card.values())),
                "mean_reading_chars": round(sum(lengths) / kept, 1), "per_card": per_card,
                "unknown_cards": self.unknown_cards()}

    def report(self) -> dict[str, Any]:
        return {**super().report(), **self.statistics()}
