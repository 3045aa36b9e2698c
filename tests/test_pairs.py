"""data=pairs: every input format, column mapping, split files with a fixed validation subset, the seeded
split stratified by group, both model families, and the bundled quickstart end to end."""

import csv
import json
from collections import Counter

import datasets
import pytest
from hydra.utils import instantiate
from transformers import AutoTokenizer

from src.datamodules.amazon import DEFAULT_PROMPT, AmazonTitlesDataModule
from src.datamodules.pairs import PairsDataModule
from src.errors import UserError
from src.modality import check_model_fits_data
from src.pretrained.tiny import tiny_gpt2, tiny_t5
from tests.conftest import QUICK, ROOT, compose_config, connect, read_json, run_cli, texts

SAMPLE = ROOT / "data/samples/pairs/qa.csv"
AMAZON = [str(ROOT / "data/samples/amazon/trn.json"), str(ROOT / "data/samples/amazon/tst.json")]
COLUMNS = {"source": "question", "target": "answer", "id": "qid"}
# what cleaning and skipping act on: tags and entities, doubled spaces, an empty answer, a repeated record
RECORDS = [{"qid": f"q{i}", "question": f"What  is item {i}?", "answer": f"Item {i} is a <b>thing</b>&amp;more."}
           for i in range(12)]
RECORDS += [{"qid": "e1", "question": "Empty?", "answer": "  "}, {**RECORDS[3], "qid": "d1"}]


@pytest.fixture(scope="module")
def t5_tokenizer(cache_dir):
    return AutoTokenizer.from_pretrained(tiny_t5(str(cache_dir / "models"), [str(SAMPLE)]))


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_csv(path, records, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(records)
    return path


def every_format(tmp_path, records):
    """The same records as JSON lines, a JSON array, CSV, TSV, Parquet, a saved dataset and a data-files dir."""
    table = datasets.Dataset.from_list(records)
    (tmp_path / "builder").mkdir()
    write_csv(tmp_path / "builder" / "data.csv", records)
    table.save_to_disk(str(tmp_path / "saved"))
    table.to_parquet(str(tmp_path / "qa.parquet"))
    (tmp_path / "qa.json").write_text(json.dumps(records, indent=2), encoding="utf-8")
    return [write_jsonl(tmp_path / "qa.jsonl", records), tmp_path / "qa.json", write_csv(tmp_path / "qa.csv", records),
            write_csv(tmp_path / "qa.tsv", records, "\t"), tmp_path / "qa.parquet", tmp_path / "saved",
            tmp_path / "builder"]


def make_dm(tmp_path, tokenizer=None, family="seq2seq", **kwargs):
    dm = PairsDataModule(cache_dir=str(tmp_path / "ds"), max_source_length=48, max_target_length=32, **kwargs)
    return connect(dm, tokenizer, family) if tokenizer is not None else dm


def load_pairs(dm) -> dict[str, list]:
    """The usable samples as uid / source / target columns (a one-turn sample's prompt and reference)."""
    samples = dm.load_samples()
    pairs = [texts(row) for row in samples]
    return {"uid": samples["uid"], "source": [p for p, _ in pairs], "target": [t for _, t in pairs]}


def test_every_input_format_gives_the_same_pairs(tmp_path):
    results = {}
    for path in every_format(tmp_path, RECORDS):
        dm = make_dm(tmp_path, data_file=str(path), columns=COLUMNS, prompt_template="Q: {question}\nA:")
        pairs = load_pairs(dm)
        results[path.name] = (pairs["uid"], pairs["source"], pairs["target"], dm.skipped())
    expected = results["qa.jsonl"]
    assert expected[1][0] == "Q: What is item 0?\nA:" and expected[2][0] == "Item 0 is a thing &more."
    assert expected[3] == {"empty:answer": 1, "duplicate": 1} and len(expected[0]) == 12
    assert {name: result == expected for name, result in results.items()} == dict.fromkeys(results, True)


def test_csv_cells_are_read_as_the_text_they_hold(tmp_path):
    rows = [{"question": "Price?", "answer": "3.50"}, {"question": "None", "answer": "NA"}, {"question": "x", "answer": ""}]
    path = write_csv(tmp_path / "t.csv", rows)
    dm = make_dm(tmp_path, data_file=str(path), columns={"source": "question", "target": "answer"})
    pairs = load_pairs(dm)
    assert list(zip(pairs["source"], pairs["target"])) == [("Price?", "3.50"), ("None", "NA")]
    assert pairs["uid"] == ["t.csv:1", "t.csv:2"] and dm.skipped() == {"empty:answer": 1}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_column_mapping_error_is_one_line_naming_the_columns(tmp_path, suffix):
    records = [{"prompt": f"p{i}", "answer": f"a{i}"} for i in range(3)]
    path = (write_csv if suffix == ".csv" else write_jsonl)(tmp_path / f"qa{suffix}", records)
    dm = make_dm(tmp_path, data_file=str(path), columns={"source": "question", "target": "answer"})
    with pytest.raises(UserError) as err:
        load_pairs(dm)
    assert str(err.value) == (f"data.columns.source='question' is not a column of {path}; columns are: prompt, answer "
                              "— set data.columns.source to one of them")


def test_config_mistakes_are_one_line(tmp_path):
    csv_path = str(write_csv(tmp_path / "qa.csv", RECORDS))
    cases = [
        (dict(data_file=csv_path, train_file=csv_path, val_file=csv_path), "set either data.data_file"),
        (dict(), "no data: set data.data_file"),
        (dict(train_file=csv_path), "no data: set data.data_file"),
        (dict(data_file=csv_path, columns={"source": "question", "target": "answer", "label": "x"}),
         "data.columns.label is not a column role"),
        (dict(data_file=csv_path, columns=COLUMNS, prompt_template="Q: {question} {topic}"), "uses {topic}"),
        (dict(data_file=csv_path, columns=COLUMNS, prompt_template="no placeholder"),
         "must contain '{question}' or '{source}'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(UserError, match=message) as err:
            make_dm(tmp_path, **kwargs).load_samples()
        assert "\n" not in str(err.value)
    missing = make_dm(tmp_path, data_file=str(tmp_path / "nope.csv"), columns=COLUMNS)
    with pytest.raises(UserError, match="data file not found: .*nope.csv — set data.data_file"):
        missing.load_samples()
    datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS[:6]),
                          "validation": datasets.Dataset.from_list(RECORDS[6:])}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(UserError, match=r"holds the splits \['train', 'validation'\]: name it as data.train_file"):
        make_dm(tmp_path, data_file=str(tmp_path / "dd"), columns=COLUMNS).load_samples()
    both = make_dm(tmp_path, train_file=str(tmp_path / "dd"), val_file=str(tmp_path / "dd"), columns=COLUMNS)
    assert len(both.split(both.load_samples())["val"]) == 7  # a directory's own splits, picked by name


def test_malformed_json_is_skipped_and_counted_or_stops_the_run(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n{\"qid\": \"cut\n" + json.dumps(RECORDS[1]) + "\n", encoding="utf-8")
    dm = make_dm(tmp_path, data_file=str(path), columns=COLUMNS)
    assert len(dm.load_samples()) == 2 and dm.skipped() == {"invalid_json": 1}
    with pytest.raises(UserError, match=r"qa\.jsonl:2: bad record \(invalid JSON\)"):
        make_dm(tmp_path, data_file=str(path), columns=COLUMNS, on_bad_record="error").load_samples()


def test_seeded_split_is_stratified_by_group_and_deterministic(tmp_path):
    def splits(seed):
        dm = make_dm(tmp_path, data_file=str(SAMPLE), seed=seed,
                     columns={"source": "question", "target": "answer", "group": "topic"})
        parts = dm.split(dm.load_samples())
        names = parts["train"].features["group"].names
        return {k: Counter(names[g] for g in v["group"]) for k, v in parts.items()}, {k: v["uid"] for k, v in
                                                                                       parts.items()}

    counts, uids = splits(3)
    assert set(counts["train"]) == set(counts["val"]) == set(counts["test"]) == {
        "animals", "colors", "materials", "opposites", "plurals"}
    for topic, n in counts["train"].items():  # 10% of each topic's ~60 records in val and in test (±1 by rounding)
        assert 5 <= counts["val"][topic] <= 7 and 5 <= counts["test"][topic] <= 7, (topic, counts)
    assert splits(3)[1] == uids and splits(4)[1]["val"] != uids["val"]


def test_split_files_keep_the_first_200_validation_records_in_every_run(tmp_path, t5_tokenizer):
    """The description workflow's layout through its own config: val is the first 200 records of val.jsonl."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    rows = [{"input_text": f"Title: Lamp model {i}\nDescription:", "target_text": f"A bright lamp, model {i}."}
            for i in range(400)]
    write_jsonl(data_dir / "train.jsonl", rows[:150])
    write_jsonl(data_dir / "val.jsonl", [rows[0]] + rows[150:380])  # its first record repeats a training record
    write_jsonl(data_dir / "test.jsonl", rows[380:])
    val_uids = []
    for seed in (1, 2):
        cfg = compose_config("train", ["experiment=description_workflow", f"paths.data_dir={data_dir}",
                                       f"paths.cache_dir={tmp_path / 'cache'}", f"seed={seed}"], tmp_path)
        dm = connect(instantiate(cfg.data), t5_tokenizer)
        dm.setup()
        assert {k: len(v) for k, v in dm.splits.items()} == {"train": 150, "val": 200, "test": 20}
        val_uids.append(sorted(dm.splits["val"]["uid"]))
    assert val_uids[0] == val_uids[1] == sorted(f"val.jsonl:{line}" for line in range(1, 201))


def test_causal_family_reads_pairs(tmp_path, cache_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2(str(cache_dir / "models"), [str(SAMPLE)]))
    dm = make_dm(tmp_path, tokenizer, family="causal", data_file=str(SAMPLE), batch_size=4,
                 columns={"source": "question", "target": "answer"}, prompt_template="Question: {source}\nAnswer:")
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    first = batch["labels"][0]
    prompt_length = int(batch["prompt_attention_mask"][0].sum())
    assert (first[:prompt_length] == -100).all()  # the loss is on the answer only
    answer = tokenizer.decode(first[first != -100], skip_special_tokens=True).strip()
    assert answer == batch["target"][0] and batch["source"][0].startswith("Question: ")
    cfg = compose_config("train", ["model=tiny_gpt2", "data=pairs"], tmp_path)
    check_model_fits_data(cfg)  # both text families accept data=pairs
    check_model_fits_data(compose_config("train", ["model=tiny_t5", "data=pairs_description"], tmp_path))


def test_amazon_is_data_pairs_with_its_columns(tmp_path):
    amazon = AmazonTitlesDataModule(train_file=AMAZON[0], test_file=AMAZON[1], cache_dir=str(tmp_path / "ds"))
    pairs = make_dm(tmp_path, data_file=AMAZON, prompt_template=DEFAULT_PROMPT,
                    columns={"source": "title", "target": "content", "id": "uid"})
    assert isinstance(amazon, PairsDataModule)
    assert amazon.load_samples().to_list() == pairs.load_samples().to_list()
    assert amazon.skipped() == pairs.skipped() == {"empty:content": 2, "duplicate": 2}


@pytest.mark.slow
def test_description_workflow_layout_trains_on_its_fixed_validation_subset(cache_dir, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    rows = [{"input_text": f"Title: Lamp model {i}\nDescription:", "target_text": f"A bright lamp, model {i}."}
            for i in range(280)]
    for name, part in [("train", rows[:40]), ("val", rows[40:260]), ("test", rows[260:])]:
        write_jsonl(data_dir / f"{name}.jsonl", part)
    run_dir = tmp_path / "run"
    run_cli("train.py", "experiment=description_workflow", "model=tiny_t5", "trainer=cpu", "logger=csv",
            "trainer.enable_progress_bar=false", f"paths.data_dir={data_dir}",
            f"model.pretrained.corpus_files=[{data_dir / 'train.jsonl'}]", "data.batch_size=8",
            "trainer.accumulate_grad_batches=1", "trainer.max_epochs=1", "val_every_n_steps=5",
            "model.generation.num_beams=1", "model.generation.max_new_tokens=8", "data.eval_batch_size=100",
            f"hydra.run.dir={run_dir}")
    report = read_json(run_dir / "metrics.json")
    assert report["data"]["sizes"] == {"train": 40, "val": 200, "test": 20}
    assert "test/rougeL" in report["final_metrics"]


@pytest.mark.slow
def test_pairs_quickstart_runs_end_to_end(cache_dir, tmp_path):
    run_cli("train.py", "experiment=pairs_quickstart", *QUICK[1:], "trainer.max_epochs=2", f"hydra.run.dir={tmp_path}")
    report = read_json(tmp_path / "metrics.json")
    assert report["data"]["name"] == "PairsDataModule" and report["data"]["sizes"] == {"train": 239, "val": 30,
                                                                                       "test": 30}
    assert report["data"]["skipped"] == {"empty:answer": 1, "duplicate": 2}
    assert (tmp_path / "adapter" / "adapter_config.json").is_file() and "test/rougeL" in report["final_metrics"]
