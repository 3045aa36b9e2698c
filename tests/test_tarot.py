"""Tarot datamodule: formats and column mapping, cleaning, unknown cards, stratified split, report."""

import csv
import json
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from src.datamodules.tarot import MAJOR_ARCANA, TarotDataModule
from src.errors import UserError
from src.pretrained.tiny import tiny_t5
from tests.conftest import ROOT, QUICK, connect, read_json, run_cli, texts

SAMPLE = ROOT / "data/samples/tarot/readings.jsonl"


@pytest.fixture(scope="module")
def tokenizer(cache_dir):
    return AutoTokenizer.from_pretrained(tiny_t5(str(cache_dir / "models"), [str(SAMPLE)]))


def make_dm(tmp_path, tokenizer, data_file, **kwargs):
    return connect(TarotDataModule(data_file=str(data_file), cache_dir=str(tmp_path / "ds"), max_source_length=64,
                                   max_target_length=64, **kwargs), tokenizer)


def test_bundled_sample_covers_all_cards_in_portuguese():
    records = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
    counts = Counter(r["card"] for r in records)
    assert len(records) >= 400 and set(MAJOR_ARCANA) <= set(counts)
    assert min(counts[c] for c in MAJOR_ARCANA) >= 18
    assert any("ç" in r["reading"] or "ã" in r["reading"] for r in records)


def test_split_is_stratified_85_15_by_card(tmp_path, tokenizer):
    dm = make_dm(tmp_path, tokenizer, SAMPLE)
    dm.setup()
    stats = dm.statistics()
    assert stats["unique_cards"] == 22
    train, val = stats["per_card"]["train"], stats["per_card"]["val"]
    assert set(train) == set(val) == set(MAJOR_ARCANA)  # every card in both splits
    for card in MAJOR_ARCANA:
        share = val[card] / (train[card] + val[card])
        assert 0.09 <= share <= 0.2, (card, share)  # 15% of ~21 readings is 3 (±1 by rounding)
    assert abs(sum(val.values()) / stats["records"] - 0.15) < 0.01
    assert dm.splits["test"]["uid"] == dm.splits["val"]["uid"]  # test_fraction=0: test is the val split
    uids = dm.splits["train"]["uid"]
    dm2 = make_dm(tmp_path, tokenizer, SAMPLE)
    dm2.setup()
    assert dm2.splits["train"]["uid"] == uids  # deterministic from the seed


def test_cleaning_and_unknown_cards_are_reported(tmp_path, tokenizer):
    rows = [{"id": f"r{i}", "card": card, "question": "", "reading": f"  Leitura   {i} sobre {card}.  "}
            for i, card in enumerate(MAJOR_ARCANA * 7)]
    rows += [{"id": "u1", "card": "Ás de Copas", "question": "", "reading": "x"},
             {"id": "u2", "card": "Ás de Copas", "question": "", "reading": "y"},
             {"id": "e1", "card": "O Sol", "question": "", "reading": "   "},
             {"id": "a1", "card": "  a forca ", "question": "Amor?", "reading": "Coragem."}]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    dm = make_dm(tmp_path, tokenizer, path)
    dm.setup()
    assert dm.skipped() == {"unknown_card": 2, "empty:reading": 1}
    report = dm.report()
    assert report["unknown_cards"] == {"Ás de Copas": 2}
    assert report["records"] == 155 and report["skipped"] == {"unknown_card": 2, "empty:reading": 1}
    all_rows = [r for s in ("train", "val") for r in dm.splits[s]]
    forca = next(r for r in all_rows if r["uid"] == "a1")
    assert "Carta: A Força\nPergunta: Amor?" in texts(forca)[0]  # canonical name, question kept
    r0 = next(r for r in all_rows if r["uid"] == "r0")
    assert texts(r0)[1] == "Leitura 0 sobre O Louco." and "Pergunta: Leitura geral" in texts(r0)[0]


def test_too_few_readings_to_stratify_is_a_user_error(tmp_path, tokenizer):
    path = tmp_path / "few.jsonl"
    path.write_text("".join(json.dumps({"card": c, "reading": f"Texto {i}."}, ensure_ascii=False) + "\n"
                            for i in range(2) for c in MAJOR_ARCANA), encoding="utf-8")
    with pytest.raises(UserError, match="cannot split 44 records stratified by card"):
        make_dm(tmp_path, tokenizer, path).setup()


def test_csv_with_column_mapping(tmp_path, tokenizer):
    path = tmp_path / "r.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["carta", "texto"])
        writer.writerows([(card, f"Texto da carta {card} número {i}.") for i in range(7) for card in MAJOR_ARCANA])
    dm = make_dm(tmp_path, tokenizer, path, columns={"card": "carta", "reading": "texto"})
    dm.setup()
    assert dm.statistics()["records"] == 154
    with pytest.raises(UserError, match=r"^data\.columns\.card='card' is not a column of \S*r\.csv; columns are: "
                                        r"carta, texto — set data\.columns\.card to one of them$"):
        make_dm(tmp_path, tokenizer, path).setup()


def test_data_mistakes_are_one_line_errors(tmp_path, tokenizer):
    with pytest.raises(UserError, match="data file not found"):
        make_dm(tmp_path, tokenizer, tmp_path / "missing.jsonl").setup()
    with pytest.raises(UserError, match=r"use a \.jsonl, \.json, \.csv, \.tsv or \.parquet file"):
        make_dm(tmp_path, tokenizer, tmp_path / "readings.txt").setup()


@pytest.mark.slow
def test_quickstart_tarot_writes_statistics_into_the_run_report(cache_dir, tmp_path):
    run_cli("train.py", "experiment=quickstart_tarot", *QUICK[1:], "trainer.max_epochs=2", f"hydra.run.dir={tmp_path}")
    report = read_json(tmp_path / "metrics.json")
    assert report["data"]["unique_cards"] == 22 and report["data"]["sizes"]["val"] == 70
    assert report["data"]["unknown_cards"] == {"Ás de Copas": 1, "Rainha de Espadas": 1}
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert "test/rougeL" in report["final_metrics"]


def test_reading_the_file_does_not_hash_the_attached_trainer(tmp_path, tokenizer):
    """datasets fingerprints a map function by pickling what it references: a closure over the datamodule
    pickled the trainer and its model too (evaluate.py on PTT5-base: +1.5 GB peak memory)."""
    fingerprints = []
    for value in (0.0, 1.0):
        dm = make_dm(tmp_path / str(value), tokenizer, SAMPLE)
        dm.trainer = SimpleNamespace(model=torch.full((4,), value))  # what Lightning attaches before setup
        fingerprints.append(dm.raw._fingerprint)
    assert fingerprints[0] == fingerprints[1]
