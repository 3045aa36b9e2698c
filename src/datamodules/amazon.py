"""Amazon product title → description, from LF-AmazonTitles JSON-lines files (``uid``, ``title``, ``content``)."""

from functools import cached_property

import datasets

from src.datamodules.cleaning import clean_text
from src.datamodules.records import load_jsonl_records, skip_counts, with_skip_reason
from src.datamodules.text_pairs import TextPairDataModule
from src.errors import UserError

DEFAULT_PROMPT = "Given a product title, generate its product description.\nTitle: {title}\nDescription:"


def title_prompt(template: str, title: str) -> str:
    """The model input for a product title (training, evaluation and serving all format it here)."""
    return template.format(title=title)


class AmazonTitlesDataModule(TextPairDataModule):
    """``trn.json`` and ``tst.json`` are pooled, cleaned, filtered, deduplicated and split 80/10/10 by seed.

    The quality filters (``min_/max_title_words``, ``min_/max_content_words``,
    ``drop_title_equals_content``) are off here; ``conf/data/amazon.yaml`` turns two of them on.

    The full ~2M-record dump streams through ``datasets`` into Arrow once and is cached; nothing
    holds it in Python lists.
    """

    FIELDS = ("title", "content")

    def __init__(self, train_file: str, test_file: str | None = None, prompt_template: str = DEFAULT_PROMPT,
                 on_bad_record: str = "skip", min_title_words: int = 0, max_title_words: int | None = None,
                 min_content_words: int = 0, max_content_words: int | None = None,
                 drop_title_equals_content: bool = False, **kwargs):
        super().__init__(**kwargs)
        if "{title}" not in prompt_template:
            raise UserError("data.prompt_template must contain '{title}'")
        self.files = [f for f in (train_file, test_file) if f]
        self.prompt_template = prompt_template
        self.on_bad_record = on_bad_record
        self.filters = dict(min_words={"title": min_title_words, "content": min_content_words},
                            max_words={"title": max_title_words, "content": max_content_words},
                            distinct=self.FIELDS if drop_title_equals_content else ())

    def load_records(self, progress: bool = False) -> datasets.Dataset:
        """Every input line as a row, with cleaned fields and its ``skip_reason`` (empty if usable)."""
        return load_jsonl_records(self.files, list(self.FIELDS), self.cache_dir, self.on_bad_record,
                                  progress=progress, **self.filters)

    @cached_property
    def records(self) -> datasets.Dataset:
        return self.load_records()

    def skipped(self) -> dict[str, int]:
        return skip_counts(self.records)

    def format_source(self, text: str) -> str:
        """A product title as the model sees it: cleaned like the training titles, in ``data.prompt_template``."""
        return title_prompt(self.prompt_template, clean_text(text))

    def load_pairs(self) -> datasets.Dataset:
        template = self.prompt_template

        def to_pair(batch):
            return {"source": [title_prompt(template, t) for t in batch["title"]], "target": batch["content"]}

        return with_skip_reason(self.records).map(to_pair, batched=True, remove_columns=["title", "content", "skip_reason"],
                        desc="apply prompt template")
