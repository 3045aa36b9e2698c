"""Amazon product title → description, from LF-AmazonTitles JSON-lines files (``uid``, ``title``, ``content``)."""

from src.datamodules.pairs import PairsDataModule

DEFAULT_PROMPT = "Given a product title, generate its product description.\nTitle: {title}\nDescription:"


class AmazonTitlesDataModule(PairsDataModule):
    """``data=pairs`` with LF-AmazonTitles' columns: ``trn.json`` and ``tst.json`` are pooled, cleaned, filtered,
    deduplicated and split 80/10/10 by seed.

    The quality filters (``min_/max_title_words``, ``min_/max_content_words``,
    ``drop_title_equals_content``) are off here; ``conf/data/amazon.yaml`` turns two of them on.

    The full ~2M-record dump streams through ``datasets`` into Arrow once and is cached; nothing
    holds it in Python lists.
    """

    MISSING_HINT = "put the files there, set data.train_file / data.test_file, or use the bundled sample " \
                   "(data=amazon_sample)"

    def __init__(self, train_file: str, test_file: str | None = None, prompt_template: str = DEFAULT_PROMPT,
                 on_bad_record: str = "skip", min_title_words: int = 0, max_title_words: int | None = None,
                 min_content_words: int = 0, max_content_words: int | None = None,
                 drop_title_equals_content: bool = False, **kwargs):
        super().__init__(data_file=[f for f in (train_file, test_file) if f],
                         columns={"source": "title", "target": "content", "id": "uid"},
                         prompt_template=prompt_template, on_bad_record=on_bad_record,
                         min_source_words=min_title_words, max_source_words=max_title_words,
                         min_target_words=min_content_words, max_target_words=max_content_words,
                         drop_source_equals_target=drop_title_equals_content, **kwargs)
