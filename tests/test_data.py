"""Amazon datamodule: cleaning, bad records, deterministic split, per-batch padding, caching."""

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from src.dataio import cleaning
from src.datamodules.amazon import AmazonTitlesDataModule
from src.dataio.records import load_jsonl_records, skip_counts
from src.errors import UserError
from src.pretrained.tiny import tiny_t5
from tests.conftest import ROOT, connect, texts

SAMPLE = [str(ROOT / "data/samples/amazon/trn.json"), str(ROOT / "data/samples/amazon/tst.json")]


@pytest.fixture(scope="module")
def tokenizer(cache_dir):
    return AutoTokenizer.from_pretrained(tiny_t5(str(cache_dir / "models"), SAMPLE))


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


GOOD = [json.dumps({"uid": f"u{i}", "title": f"<b>Lamp {i}</b>", "content": f"A lamp&amp;shade {i}.  <br/>Bright."})
        for i in range(30)]
BAD = ['{"uid": "x1", "title": "Cut off', json.dumps({"uid": "x2", "title": None, "content": "c"}),
       json.dumps({"uid": "x3", "title": "t", "content": 5}), json.dumps(["not", "an", "object"]),
       json.dumps({"uid": "x4", "title": "Lamp", "content": "<p> </p>"}), GOOD[0]]


def make_dm(tmp_path, tokenizer, files, **kwargs):
    return connect(AmazonTitlesDataModule(train_file=files[0], test_file=files[1] if len(files) > 1 else None,
                                          cache_dir=str(tmp_path / "ds"), **kwargs), tokenizer)


def test_bad_records_are_skipped_and_counted(tmp_path):
    path = write_lines(tmp_path / "trn.json", GOOD + BAD)
    records = load_jsonl_records([path], ["title", "content"], str(tmp_path / "ds"))
    assert skip_counts(records) == {"invalid_json": 2, "bad_field:title": 1, "bad_field:content": 1,
                                    "empty:content": 1, "duplicate": 1}
    good = records.filter(lambda r: r == "", input_columns="skip_reason")
    assert len(good) == 30
    assert good[0]["title"] == "Lamp 0" and good[0]["content"] == "A lamp&shade 0. Bright."


def test_on_bad_record_error_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "trn.json", GOOD[:3] + BAD)
    with pytest.raises(UserError, match=r"trn\.json:4: bad record \(invalid JSON\).*on_bad_record=skip"):
        load_jsonl_records([path], ["title", "content"], str(tmp_path / "ds"), on_bad_record="error")
    clean = write_lines(tmp_path / "clean.json", GOOD)
    assert len(load_jsonl_records([clean], ["title", "content"], str(tmp_path / "ds"), on_bad_record="error")) == 30


def test_prepared_records_are_cached_and_invalidated_by_edits(tmp_path):
    path = write_lines(tmp_path / "trn.json", GOOD)
    first = load_jsonl_records([path], ["title", "content"], str(tmp_path / "ds"))
    again = load_jsonl_records([path], ["title", "content"], str(tmp_path / "ds"))
    assert again.cache_files == first.cache_files  # second load reads the Arrow cache
    write_lines(tmp_path / "trn.json", GOOD[:10])
    assert len(load_jsonl_records([path], ["title", "content"], str(tmp_path / "ds"))) == 10


def test_invalid_utf8_and_repeated_keys_are_counted_and_named(tmp_path):
    path = tmp_path / "trn.json"
    lines = [line.encode() for line in GOOD[:3]] + [GOOD[3].replace("Lamp", "L\xe4mp").encode("latin-1"),
                                                   GOOD[4].replace('"title"', '"title": "x", "title"').encode()]
    path.write_bytes(b"\n".join(lines) + b"\n")
    records = load_jsonl_records([str(path)], ["title", "content"], str(tmp_path / "ds"))
    assert skip_counts(records) == {"invalid_utf8": 1, "duplicate_key": 1}
    with pytest.raises(UserError, match=r"^[^\n]*trn\.json:4: bad record \(invalid UTF-8 at byte \d+ of the line\)"):
        load_jsonl_records([str(path)], ["title", "content"], str(tmp_path / "ds"), on_bad_record="error")
    path.write_bytes(b"\n".join(lines[:3] + lines[4:]) + b"\n")
    with pytest.raises(UserError, match=r"trn\.json:4: bad record \(key 'title' given twice\)"):
        load_jsonl_records([str(path)], ["title", "content"], str(tmp_path / "ds"), on_bad_record="error")


def test_cache_is_invalidated_by_a_rewrite_that_keeps_size_and_mtime(tmp_path):
    path = tmp_path / "trn.json"
    write_lines(path, GOOD)
    before = path.stat()
    assert [r["title"] for r in load_jsonl_records([str(path)], ["title", "content"], str(tmp_path / "ds"))][:2] == \
        ["Lamp 0", "Lamp 1"]
    write_lines(path, [line.replace("Lamp", "Lump") for line in GOOD])  # what `cp -p` or `rsync -a` leave
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    records = load_jsonl_records([str(path)], ["title", "content"], str(tmp_path / "ds"))
    assert records[0]["title"] == "Lump 0"


def test_cache_is_invalidated_by_a_change_to_the_cleaning_code(tmp_path, monkeypatch):
    path = write_lines(tmp_path / "trn.json", GOOD)
    first = load_jsonl_records([path], ["title", "content"], str(tmp_path / "ds"))
    edited = tmp_path / "cleaning.py"  # the same module with one more line: its hash is all that changes
    edited.write_text(Path(cleaning.__file__).read_text() + "\n# tweaked\n")
    monkeypatch.setattr(cleaning, "__file__", str(edited))
    again = load_jsonl_records([path], ["title", "content"], str(tmp_path / "ds"))
    assert again.cache_files != first.cache_files and again.to_list() == first.to_list()


def test_sample_split_is_deterministic_disjoint_and_80_10_10(tmp_path, tokenizer):
    dm = make_dm(tmp_path, tokenizer, SAMPLE, seed=7)
    dm.setup()
    sizes = {k: len(v) for k, v in dm.splits.items()}
    total = sum(sizes.values())
    assert total == 598  # 602 lines, 2 empty descriptions, 2 duplicates
    assert dm.report()["skipped"] == {"empty:content": 2, "duplicate": 2}
    assert abs(sizes["train"] / total - 0.8) < 0.01 and abs(sizes["val"] - sizes["test"]) <= 1
    uids = {k: set(v["uid"]) for k, v in dm.splits.items()}
    assert not (uids["train"] & uids["val"] or uids["train"] & uids["test"] or uids["val"] & uids["test"])
    dm2 = make_dm(tmp_path, tokenizer, SAMPLE, seed=7)
    dm2.setup()
    assert {k: set(v["uid"]) for k, v in dm2.splits.items()} == uids
    dm3 = make_dm(tmp_path, tokenizer, SAMPLE, seed=8)
    dm3.setup()
    assert set(dm3.splits["val"]["uid"]) != uids["val"]


def test_prompt_template_and_cleaning_reach_the_model_inputs(tmp_path, tokenizer):
    dm = make_dm(tmp_path, tokenizer, SAMPLE, prompt_template="Describe: {title} =>")
    dm.setup()
    row = dm.splits["train"][0]
    source, target = texts(row)
    assert source.startswith("Describe: ") and source.endswith(" =>")
    assert "<" not in target and "&amp;" not in target and "  " not in target
    assert tokenizer.decode(row["input_ids"], skip_special_tokens=True).startswith("Describe:")


def test_batches_are_padded_to_their_own_length(tmp_path, tokenizer):
    dm = make_dm(tmp_path, tokenizer, SAMPLE, batch_size=4, eval_batch_size=4, max_source_length=128)
    dm.setup()
    for batch in list(dm.val_dataloader())[:5]:
        lengths = batch["attention_mask"].sum(dim=1)
        assert batch["input_ids"].shape[1] == int(lengths.max()) < 128
        # labels are padded with -100 (ignored by the loss) up to the batch's longest target
        label_lengths = (batch["labels"] != -100).sum(dim=1)
        assert batch["labels"].shape[1] == int(label_lengths.max())
        for row, n in zip(batch["labels"], label_lengths):
            assert (row[:n] != -100).all() and (row[n:] == -100).all()
        assert len(batch["target"]) == len(batch["uid"]) == batch["input_ids"].shape[0]
    # evaluation batches are sorted longest first, so padding inside a batch is minimal
    val_lengths = dm.splits["val"]["length"]
    assert list(val_lengths) == sorted(val_lengths, reverse=True)


def test_truncation_and_limits(tmp_path, tokenizer):
    dm = make_dm(tmp_path, tokenizer, SAMPLE, max_source_length=8, max_target_length=5, limit_train_samples=10,
                 limit_val_samples=7, limit_test_samples=3)
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 10, "val": 7, "test": 3}
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[1] <= 8 and batch["labels"].shape[1] <= 5
    assert batch["labels"].dtype == torch.long


def test_user_mistakes_in_data_config(tmp_path, tokenizer):
    with pytest.raises(UserError, match="data file not found"):
        make_dm(tmp_path, tokenizer, [str(tmp_path / "missing.json")]).setup()
    with pytest.raises(UserError, match="must contain '{title}'"):
        make_dm(tmp_path, tokenizer, SAMPLE, prompt_template="no placeholder")
    with pytest.raises(UserError, match="on_bad_record"):
        make_dm(tmp_path, tokenizer, SAMPLE, on_bad_record="ignore").setup()
