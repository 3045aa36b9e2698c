"""prepare_data.py and its pieces: cleaning, quality filters, report numbers, plots, the CLI."""

import json

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from src.datamodules.amazon import AmazonTitlesDataModule
from src.dataio.cleaning import clean_text
from src.dataio.records import load_jsonl_records, skip_counts
from src.datatools.plots import length_histogram, word_cloud
from src.datatools.prepare import to_markdown
from src.datatools.stats import record_stats
from src.errors import UserError
from tests.conftest import compose_config, read_json, run_cli

FIELDS = ["title", "content"]
PNG = b"\x89PNG\r\n\x1a\n"


def rec(title, content, uid="u"):
    return json.dumps({"uid": uid, "title": title, "content": content})


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("raw, cleaned", [
    ("<p>Soft&nbsp;fleece &amp; warm</p>", "Soft fleece & warm"),
    ("zero\u200bwidth\u200d joiner\ufeff", "zerowidth joiner"),  # zero-width and BOM dropped
    ("bell\x07 and\x00 nul", "bell and nul"),  # control characters dropped
    ("tab\tand\r\nnewline\x0cform feed", "tab and newline form feed"),  # whitespace controls become spaces
    ("Ｆｕｌｌ ｗｉｄｔｈ ﬁ ½", "Full width fi 1⁄2"),  # NFKC
    ("Wow!!!! Really??? Yes,, no;; a::b", "Wow! Really? Yes, no; a:b"),
    ("wait..... ok… ------- ===== ***", "wait... ok... --- === ***"),  # ellipses and short runs kept
    ("soft\u00adhyphen &#8230; &lt;b&gt;", "softhyphen ... <b>"),
])
def test_special_character_cleaning(raw, cleaned):
    assert clean_text(raw) == cleaned


@pytest.mark.parametrize("options, line, reason", [
    ({"min_words": {"content": 3}}, rec("Lamp", "Too short."), "too_short:content"),
    ({"min_words": {"title": 2}}, rec("Lamp", "A good lamp for the desk."), "too_short:title"),
    ({"max_words": {"content": 8}}, rec("Lamp", "A good lamp for the desk in the study room."), "too_long:content"),
    ({"max_words": {"title": 2}}, rec("Big Desk Lamp", "A good lamp for the desk."), "too_long:title"),
    ({"distinct": ("title", "content")}, rec("Desk <b>Lamp</b>", "desk lamp"), "title_equals_content"),
])
def test_each_quality_filter_has_its_skip_reason(tmp_path, options, line, reason):
    good = rec("Table Lamp", "A bright lamp with a long neck.", "g")  # 2 and 7 words: passes every case
    path = write_lines(tmp_path / "trn.json", [good, line])
    assert skip_counts(load_jsonl_records([path], FIELDS, str(tmp_path / "ds"), **options)) == {reason: 1}
    # off by default, and the settings are part of the cache key: same files, no filter, nothing skipped
    assert skip_counts(load_jsonl_records([path], FIELDS, str(tmp_path / "ds"))) == {}


def test_filters_reach_the_datamodule_and_progress_keeps_the_cache(tmp_path):
    lines = [rec("Desk Lamp", "A good lamp for the desk.", "a"), rec("Desk Lamp Set", "desk lamp set", "b"),
             rec("Mat", "Mat, green.", "c")]
    path = write_lines(tmp_path / "trn.json", lines)
    dm = AmazonTitlesDataModule(train_file=path, cache_dir=str(tmp_path / "ds"), min_content_words=3,
                                drop_title_equals_content=True)
    assert dm.skipped() == {"title_equals_content": 1, "too_short:content": 1}
    assert dm.load_records(progress=True).cache_files == dm.records.cache_files
    with pytest.raises(UserError, match="quality filters"):
        load_jsonl_records([path], FIELDS, str(tmp_path / "ds"), min_words={"price": 2})


CRAFTED = [
    rec("Red Lamp", "A bright red lamp.", "1"),
    rec("<b>Blue Desk Lamp</b>", "Tall&nbsp;blue lamp for desks, very bright.", "2"),
    rec("Chair", "Wooden chair!!!  With   arms.", "3"),
    rec("Red Lamp", "A bright red lamp.", "4"),  # duplicate of 1
    '{"uid": "5", "title": "cut',  # invalid JSON
    rec("Sofa", "<p> </p>", "6"),  # empty after cleaning
    rec("Rug", "Nice.", "7"),  # too short (min 3 words)
    rec("Desk Lamp Set", "DESK LAMP SET", "8"),  # title equals content
    rec("Sofa", "One two three four five six seven eight nine.", "9"),  # too long (max 8 words)
]


def test_report_numbers_match_a_hand_calculation(tmp_path):
    path = write_lines(tmp_path / "trn.json", CRAFTED)
    records = load_jsonl_records([path], FIELDS, str(tmp_path / "ds"), min_words={"content": 3},
                                 max_words={"content": 8}, distinct=FIELDS)
    report, lengths, words = record_stats(records, FIELDS, "title")
    assert report["records_read"] == 9 and report["kept"] == 3 and report["skipped_total"] == 6
    assert report["duplicates"] == 1
    assert report["skipped"] == {"duplicate": 1, "invalid_json": 1, "empty:content": 1, "too_short:content": 1,
                                 "title_equals_content": 1, "too_long:content": 1}
    # kept: "Red Lamp" / "A bright red lamp." (8, 2 / 18, 4), "Blue Desk Lamp" /
    # "Tall blue lamp for desks, very bright." (14, 3 / 38, 7), "Chair" / "Wooden chair! With arms." (5, 1 / 24, 4)
    assert report["lengths"] == {
        "title": {"chars": {"mean": 9.0, "median": 8.0, "p5": 5.3, "p95": 13.4, "max": 14},
                  "words": {"mean": 2.0, "median": 2.0, "p5": 1.1, "p95": 2.9, "max": 3}},
        "content": {"chars": {"mean": 26.67, "median": 24.0, "p5": 18.6, "p95": 36.6, "max": 38},
                    "words": {"mean": 5.0, "median": 4.0, "p5": 4.0, "p95": 6.7, "max": 7}},
    }
    assert sorted(lengths["content"]["chars"]) == [18, 24, 38]
    assert report["top_words"]["title"][0] == ("lamp", 2) and words["chair"] == 1 and "sofa" not in words
    md = to_markdown({**report, "files": [path], "filters": {}, "plots": []})
    assert "| 9 | 3 | 6 | 1 |" in md and "| content | chars | 26.67 | 24.0 | 18.6 | 36.6 | 38 |" in md
    assert "| too_long:content | 1 |" in md


def test_word_counts_stay_bounded(tmp_path):
    lines = [rec(f"{w} item", "A plain test description.", str(i)) for i, w in enumerate(["alpha", "beta", "gamma",
                                                                                          "delta", "omega"] * 3)]
    path = write_lines(tmp_path / "trn.json", lines + [rec("item item", "Another plain description.", "x")])
    records = load_jsonl_records([path], FIELDS, str(tmp_path / "ds"), dedupe=False)
    _, _, words = record_stats(records, FIELDS, "title", stopwords={"alpha"}, vocab_limit=2)
    assert len(words) <= 4 and words.most_common(1) == [("item", 17)] and "alpha" not in words


def test_plots_are_valid_pngs(tmp_path):
    lengths = {"chars": np.array([5, 8, 14, 300], np.int32), "words": np.array([1, 2, 3, 40], np.int32)}
    hist = length_histogram(lengths, "title", tmp_path / "title_lengths.png")
    cloud = word_cloud({"lamp": 5, "desk": 3, "chair": 1}, tmp_path / "cloud.png", max_words=10)
    for path, size in [(hist, (1000, 380)), (cloud, (1200, 600))]:
        assert path.read_bytes()[:8] == PNG
        with Image.open(path) as image:
            image.verify()
            assert image.size == size


def test_cli_on_the_bundled_sample_reports_and_fills_the_cache_train_uses(cache_dir, tmp_path):
    run_dir, own_cache = tmp_path / "run", tmp_path / "cache"  # its own cache: other tests may have filled the shared one
    proc = run_cli("prepare_data.py", "data=amazon_sample", f"paths.cache_dir={own_cache}", f"hydra.run.dir={run_dir}")
    report = read_json(run_dir / "data_report.json")
    # conf/data/amazon.yaml's quality filters leave the sample's result as it was
    assert (report["records_read"], report["kept"]) == (602, 598)
    assert report["skipped"] == {"empty:content": 2, "duplicate": 2} and report["duplicates"] == 2
    assert report["lengths"]["content"]["words"]["max"] == 37 and report["lengths"]["title"]["words"]["max"] == 6
    assert set(report["plots"]) == {"title_lengths.png", "content_lengths.png", "title_wordcloud.png"}
    for name in report["plots"]:
        assert (run_dir / name).read_bytes()[:8] == PNG
    md = (run_dir / "data_report.md").read_text()
    assert "| 602 | 598 | 4 | 2 |" in md and "![title_wordcloud.png](title_wordcloud.png)" in md
    assert "prepare records" in proc.stderr  # the progress bar
    assert str(own_cache) in report["cache_files"][0]
    cfg = compose_config("train", ["data=amazon_sample", f"paths.cache_dir={own_cache}"], tmp_path / "train")
    datamodule = instantiate(cfg.data)
    assert [c["filename"] for c in datamodule.records.cache_files] == report["cache_files"]


def test_cli_missing_file_is_one_line_and_exit_2(tmp_path):
    proc = run_cli("prepare_data.py", f"data.train_file={tmp_path}/nope.json", "data.test_file=null",
                   f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: data file not found: {tmp_path}/nope.json — put the files there, set data.train_file / "
        "data.test_file, or use the bundled sample (data=amazon_sample)"]
