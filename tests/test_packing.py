"""Packing (data.packing=true): several conversations per training row, attention kept inside each one."""

import lightning as L
import pytest
import torch

from src.building import build_model_and_data
from src.datamodules.packing import pack, pack_plan
from src.encoders.common import packed_collate
from src.errors import UserError
from tests.conftest import compose_config


@pytest.fixture(scope="module")
def chat(cache_dir, tmp_path_factory):
    cfg = compose_config("train", ["experiment=quickstart_chat", "data.limit_train_samples=12"],
                         tmp_path_factory.mktemp("packing"))
    L.seed_everything(0, verbose=False)
    module, datamodule = build_model_and_data(cfg)
    datamodule.setup("fit")
    module.eval()
    return module, datamodule


def test_best_fit_decreasing_fills_rows_and_keeps_every_sample_once():
    lengths = [7, 3, 9, 2, 5, 5, 1, 8]
    rows = pack_plan(lengths, max_length=10)
    assert sorted(i for row in rows for i in row) == list(range(8))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows) and len(rows) == 4  # 40 tokens, rows of 10
    assert pack_plan([12, 3], max_length=10) == [[0], [1]]  # longer than a row: a row of its own


def test_a_packed_batch_has_the_loss_of_its_samples_unpacked(chat):
    module, datamodule = chat
    samples = datamodule.splits["train"].select(range(6))
    unpacked = datamodule.encoder.collate([samples[i] for i in range(6)])
    rows = pack(samples, max_length=max(len(ids) for ids in samples["input_ids"]) * 3)
    assert len(rows) < 6 and sum(rows["samples"]) == 6
    packed = packed_collate([rows[i] for i in range(len(rows))], datamodule.encoder.pad_id)
    assert int(packed["label_tokens"].sum()) == int(unpacked["label_tokens"].sum())
    with torch.no_grad():
        assert float(module(packed).loss) == pytest.approx(float(module(unpacked).loss), rel=1e-5)


def test_changing_one_packed_sample_leaves_the_others_logits_alone(chat):
    """The second conversation of a row: what comes before it in the row (the first) must not reach it."""
    module, datamodule = chat
    samples = datamodule.splits["train"].select(range(2))
    second, first = (list(samples[i]["input_ids"]) for i in range(2))
    row = {"input_ids": second + first, "labels": [-100] * (len(first) + len(second)),
           "position_ids": list(range(len(second))) + list(range(len(first))), "label_tokens": 0, "uid": "b+a"}
    changed = {**row, "input_ids": [(t + 7) % 900 + 3 for t in second] + first}
    with torch.no_grad():
        def logits(features):
            batch = packed_collate([features], datamodule.encoder.pad_id)
            return module.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                use_cache=False).logits[0]

        a, b = logits(row), logits(changed)
        alone = module.model(input_ids=torch.tensor([first])).logits[0]
    n = len(second)
    assert torch.allclose(a[n:], b[n:], atol=1e-5)  # the later conversation does not see the earlier one
    assert not torch.allclose(a[:n], b[:n], atol=1e-3)  # (the earlier one did change)
    assert torch.allclose(a[n:], alone, atol=1e-5)  # as if it were alone: positions restart at 0


def test_packing_trains_and_reports_its_rows(cache_dir, tmp_path):
    cfg = compose_config("train", ["experiment=quickstart_chat", "data.packing=true", "data.limit_train_samples=40"],
                         tmp_path)
    module, datamodule = build_model_and_data(cfg)
    datamodule.setup("fit")
    report = datamodule.report()
    assert report["packed_samples"] == 40 and report["packed_rows"] < 40
    batch = next(iter(datamodule.train_dataloader()))
    assert "attention_mask" not in batch and batch["position_ids"].shape == batch["input_ids"].shape
    trainer = L.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 2


def test_an_encoder_decoder_cannot_pack(cache_dir, tmp_path):
    cfg = compose_config("train", ["experiment=quickstart", "data.packing=true"], tmp_path)
    with pytest.raises(UserError, match="data.packing=true packs conversations into one sequence"):
        build_model_and_data(cfg)
