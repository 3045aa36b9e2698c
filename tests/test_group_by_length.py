"""``data.group_by_length``: training batches of similar length (Hugging Face's ``group_by_length``), in an order
that still comes from ``(seed, epoch)`` only, resumes mid-epoch and shards under ddp."""

import pytest
import torch

from src.datamodules.sampling import ResumableShuffle, resumable_loader
from src.errors import UserError

# lengths that vary a lot, as product descriptions do
LENGTHS = [int(x) for x in torch.randint(4, 200, (960,), generator=torch.Generator().manual_seed(0))]


def padded_tokens(order: list[int], batch_size: int, lengths=LENGTHS) -> int:
    """What a batch padded to its longest item costs, summed over the epoch."""
    return sum(max(lengths[i] for i in order[k:k + batch_size]) * len(order[k:k + batch_size])
               for k in range(0, len(order), batch_size))


def epoch(sampler: ResumableShuffle, n: int) -> list[int]:
    sampler.set_epoch(n)
    return list(sampler)


def test_grouped_order_pads_less_and_comes_from_seed_and_epoch():
    grouped = ResumableShuffle(len(LENGTHS), seed=7, lengths=LENGTHS, batch_size=8)
    plain = ResumableShuffle(len(LENGTHS), seed=7)
    first = epoch(grouped, 1)
    assert sorted(first) == list(range(len(LENGTHS)))
    assert padded_tokens(first, 8) < 0.8 * padded_tokens(epoch(plain, 1), 8)
    # the first batch holds the longest item (an out-of-memory shows at the first step, not hours later)
    assert max(LENGTHS) in [LENGTHS[i] for i in first[:8]]
    torch.manual_seed(123)  # the global RNG plays no part
    assert epoch(ResumableShuffle(len(LENGTHS), seed=7, lengths=LENGTHS, batch_size=8), 1) == first
    assert epoch(grouped, 2) != first  # a new order every epoch


def test_grouped_order_resumes_mid_epoch_and_shards():
    data = list(range(len(LENGTHS)))
    loader = resumable_loader(data, batch_size=8, seed=3, lengths=LENGTHS)
    loader.sampler.set_epoch(2)
    whole = [b.tolist() for b in loader]
    loader.sampler.set_epoch(2)
    it = iter(loader)
    [next(it) for _ in range(3)]
    state = loader.state_dict()
    resumed = resumable_loader(data, batch_size=8, seed=3, lengths=LENGTHS)
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(2)
    assert [b.tolist() for b in resumed] == whole[3:]

    shards = [ResumableShuffle(len(LENGTHS), seed=3, num_replicas=2, rank=r, lengths=LENGTHS, batch_size=8)
              for r in (0, 1)]
    orders = [epoch(s, 4) for s in shards]
    assert sorted(orders[0] + orders[1]) == data
    for order in orders:  # each process's own batches are grouped too
        shuffled = epoch(ResumableShuffle(len(LENGTHS), seed=3, num_replicas=2, rank=0), 4)
        assert padded_tokens(order, 8) < 0.8 * padded_tokens(shuffled, 8)


def test_resuming_with_another_grouping_is_refused():
    data = list(range(len(LENGTHS)))
    grouped = resumable_loader(data, batch_size=8, seed=3, lengths=LENGTHS)
    grouped.sampler.set_epoch(1)
    next(iter(grouped))
    state = grouped.state_dict()
    with pytest.raises(UserError, match="data.group_by_length=true, this run has false"):
        resumable_loader(data, batch_size=8, seed=3).load_state_dict(state)
    # a checkpoint from before the option existed trained ungrouped
    with pytest.raises(UserError, match="data.group_by_length=false, this run has true"):
        resumable_loader(data, batch_size=8, seed=3, lengths=LENGTHS).load_state_dict({"epoch": 1, "samples": 8})


@pytest.mark.parametrize("data", ["amazon_sample", "tarot", "pairs"])
def test_text_datamodules_group_their_training_batches(tmp_path, cache_dir, data):
    from hydra.utils import instantiate
    from transformers import AutoTokenizer

    from tests.conftest import compose_config, connect

    def train_batches(grouped: bool) -> list[dict]:
        cfg = compose_config("train", ["model=tiny_t5", f"data={data}", f"data.group_by_length={grouped}"],
                             tmp_path)
        tokenizer = AutoTokenizer.from_pretrained(instantiate(cfg.model.pretrained))
        dm = connect(instantiate(cfg.data), tokenizer)
        dm.setup("fit")
        return list(dm.train_dataloader())

    def padding(batches: list[dict]) -> int:  # padded positions the encoder and decoder compute for nothing
        return sum(int((b["attention_mask"] == 0).sum() + (b["labels"] == -100).sum()) for b in batches)

    plain, grouped = train_batches(False), train_batches(True)
    assert sorted(u for b in grouped for u in b["uid"]) == sorted(u for b in plain for u in b["uid"])
    # the bundled samples: Amazon's lengths vary little (1,787 padded positions → 1,067), tarot's much
    # (23,264 → 8,177)
    assert padding(grouped) < 0.7 * padding(plain)
    assert [b["uid"] for b in train_batches(True)] == [b["uid"] for b in grouped]


@pytest.mark.slow
def test_resume_under_the_other_grouping_stops_before_training(tmp_path):
    from tests.conftest import run_cli

    common = ["experiment=quickstart", "logger=csv", "trainer.enable_progress_bar=false", "test=false",
              "data.limit_train_samples=48", "data.limit_val_samples=8", "model.generation.max_new_tokens=4"]
    run_cli("train.py", *common, "data.group_by_length=true", "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'a'}")
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    refused = run_cli("train.py", *common, "trainer.max_epochs=2", f"ckpt_path={last}",
                      f"hydra.run.dir={tmp_path / 'b'}", check=False)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: ckpt_path={last} was trained with data.group_by_length=true, this run has false — resume with the "
        "settings it was trained with, or start a new run without ckpt_path")
    assert not (tmp_path / "b" / "checkpoints").exists()  # refused before training: no checkpoint of a mixed run
    run_cli("train.py", *common, "data.group_by_length=true", "trainer.max_epochs=2", f"ckpt_path={last}",
            f"hydra.run.dir={tmp_path / 'c'}")
    assert torch.load(tmp_path / "c" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6
