"""Source → target text pairs: split, tokenize, and collate with padding to each batch's own length.

Dataset-specific modules only turn their raw files into a ``datasets.Dataset`` with ``uid``,
``source`` and ``target`` columns (``load_pairs``); splitting, limits, tokenization through the
model family's encoder, length-sorted evaluation loaders and the data report live here once.
"""

import hashlib
from typing import Any

import datasets
import lightning as L
import pyarrow.compute as pc
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader
from transformers import DataCollatorForSeq2Seq

from src.datamodules.sampling import resumable_loader
from src.distributed import eval_sampler
from src.errors import UserError

TEXT_COLUMNS = ("uid", "source", "target")


class Seq2SeqPairEncoder:
    """Encoder-decoder models: the source is the encoder input, the target the labels."""

    def __init__(self, tokenizer, max_source_length: int, max_target_length: int):
        self.tokenizer = tokenizer
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length
        self._pad = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)

    def fingerprint(self) -> str:
        return f"seq2seq|{self.tokenizer.name_or_path}|{len(self.tokenizer)}|{self.max_source_length}|{self.max_target_length}"

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        enc = self.tokenizer(batch["source"], truncation=True, max_length=self.max_source_length)
        labels = self.tokenizer(text_target=batch["target"], truncation=True, max_length=self.max_target_length)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "labels": labels["input_ids"], "length": [len(ids) for ids in enc["input_ids"]]}

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        """Pad to the longest sequence of this batch (labels with -100); keep the texts alongside."""
        texts = {col: [f[col] for f in features] for col in TEXT_COLUMNS}
        batch = dict(self._pad([{k: f[k] for k in ("input_ids", "attention_mask", "labels")} for f in features]))
        return {**batch, **texts}


class CausalPairEncoder:
    """Decoder-only models: ``prompt + target + eos`` is one sequence and only target tokens carry a loss.

    Training batches are right-padded; each batch also carries the prompts alone, left-padded, so
    batched generation continues every prompt from the same position.
    """

    def __init__(self, tokenizer, max_source_length: int, max_target_length: int):
        if tokenizer.eos_token_id is None:
            raise UserError(f"tokenizer {tokenizer.name_or_path} has no eos token; a causal LM needs one to end targets")
        self.tokenizer = tokenizer
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def fingerprint(self) -> str:
        return f"causal|{self.tokenizer.name_or_path}|{len(self.tokenizer)}|{self.max_source_length}|{self.max_target_length}"

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        tok = self.tokenizer
        # long prompts lose their beginning, not the cue at their end ("\nDescription:")
        prompts = [ids[-self.max_source_length:] for ids in tok(batch["source"], add_special_tokens=False)["input_ids"]]
        # a leading space so the target's first word is tokenized as it is inside running text
        targets = tok([" " + t for t in batch["target"]], truncation=True, max_length=self.max_target_length - 1,
                      add_special_tokens=False)["input_ids"]
        input_ids = [p + t + [tok.eos_token_id] for p, t in zip(prompts, targets)]
        labels = [[-100] * len(p) + t + [tok.eos_token_id] for p, t in zip(prompts, targets)]
        return {"input_ids": input_ids, "labels": labels, "prompt_ids": prompts,
                "length": [len(p) for p in prompts]}

    def _pad(self, seqs: list[list[int]], value: int, side: str) -> torch.Tensor:
        return pad_sequence([torch.tensor(s, dtype=torch.long) for s in seqs], batch_first=True,
                            padding_value=value, padding_side=side)

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        texts = {col: [f[col] for f in features] for col in TEXT_COLUMNS}
        ids = [f["input_ids"] for f in features]
        prompts = [f["prompt_ids"] for f in features]
        ones = [[1] * len(s) for s in ids]
        return {"input_ids": self._pad(ids, self.pad_id, "right"),
                "attention_mask": self._pad(ones, 0, "right"),
                "labels": self._pad([f["labels"] for f in features], -100, "right"),
                "prompt_input_ids": self._pad(prompts, self.pad_id, "left"),
                "prompt_attention_mask": self._pad([[1] * len(p) for p in prompts], 0, "left"),
                **texts}


ENCODERS = {"seq2seq": Seq2SeqPairEncoder, "causal": CausalPairEncoder}


class TextPairDataModule(L.LightningDataModule):
    """Base for text datasets. Subclasses implement ``load_pairs`` and ``skipped``.

    ``stratify_column`` (a ClassLabel column of the pairs) keeps its class proportions in every split;
    ``test_fraction=0`` means no separate test set: the test split is the validation split.
    """

    stratify_column: str | None = None
    encodings = ("seq2seq", "causal")  # the model families this data feeds (src/modality.py checks it first)

    def __init__(self, tokenizer=None, encoding: str = "seq2seq", cache_dir: str = ".cache/datasets",
                 max_source_length: int = 128, max_target_length: int = 128, batch_size: int = 8,
                 eval_batch_size: int | None = None, num_workers: int = 0, seed: int = 42,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, limit_train_samples: int | None = None,
                 limit_val_samples: int | None = None, limit_test_samples: int | None = None,
                 group_by_length: bool = False):
        super().__init__()
        if encoding not in ENCODERS:
            raise UserError(f"{type(self).__name__} is a text dataset but the model's encoding is {encoding!r} "
                            f"(an image model?) — use a text model (model=tiny_t5, flan_t5, ptt5, tiny_gpt2, dialogpt)")
        if not (val_fraction > 0 and test_fraction >= 0 and val_fraction + test_fraction < 1):
            raise UserError(f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction}: the first "
                            "must be above 0, the second 0 or more, and together less than 1")
        self.save_hyperparameters(ignore=["tokenizer"], logger=False)
        self.tokenizer = tokenizer
        self.cache_dir = cache_dir
        self.splits: dict[str, datasets.Dataset] = {}
        self.encoder = (ENCODERS[encoding](tokenizer, max_source_length, max_target_length)
                        if tokenizer is not None else None)

    # -- to implement per dataset ------------------------------------------------------------
    def load_pairs(self) -> datasets.Dataset:
        """All usable records with ``uid``, ``source`` and ``target`` columns."""
        raise NotImplementedError

    def skipped(self) -> dict[str, int]:
        """Records dropped while loading, by reason."""
        return {}

    def format_source(self, text: str) -> str:
        """The model input for what a user types (a product title, a card), formatted as in training."""
        raise NotImplementedError

    # -- generation from raw inputs (serving, batch generation, playground) ----------------------
    def prompt_batch(self, sources: list[str]) -> dict[str, Any]:
        """A generation batch of model inputs, encoded and collated exactly like evaluation batches."""
        if self.encoder is None:
            raise RuntimeError("the datamodule needs the model's tokenizer: instantiate it with tokenizer=")
        features = self.encoder({"source": list(sources), "target": [""] * len(sources)})
        rows = [{**dict(zip(features, values)), "uid": str(i), "source": source, "target": ""}
                for i, (source, *values) in enumerate(zip(sources, *features.values()))]
        return self.encoder.collate(rows)

    # -- shared ------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        self.load_pairs()  # builds the Arrow cache once, on one process

    def split(self, pairs: datasets.Dataset) -> dict[str, datasets.Dataset]:
        """Deterministic train/val/test split from the seed."""
        hp = self.hparams
        held_out = hp.val_fraction + hp.test_fraction
        smallest = min(f for f in (hp.val_fraction, hp.test_fraction, 1 - held_out) if f > 0)
        if len(pairs) * smallest < 1:
            raise UserError(f"only {len(pairs)} usable records after cleaning: too few for a "
                            f"{1 - held_out:.0%}/{hp.val_fraction:.0%}/{hp.test_fraction:.0%} split — add data or "
                            "change data.val_fraction / data.test_fraction")
        by = dict(seed=hp.seed, shuffle=True, stratify_by_column=self.stratify_column)
        try:
            first = pairs.train_test_split(test_size=held_out, **by)
            if not hp.test_fraction:
                return {"train": first["train"], "val": first["test"], "test": first["test"]}
            second = first["test"].train_test_split(test_size=hp.test_fraction / held_out, **by)
        except ValueError as err:  # stratification needs every class in every split
            raise UserError(f"cannot split {len(pairs)} records stratified by {self.stratify_column}: "
                            f"{str(err).splitlines()[0]} — add records or raise data.val_fraction") from err
        return {"train": first["train"], "val": second["train"], "test": second["test"]}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if self.encoder is None:
            raise RuntimeError("the datamodule needs the model's tokenizer: instantiate it with tokenizer=")
        hp = self.hparams
        limits = {"train": hp.limit_train_samples, "val": hp.limit_val_samples, "test": hp.limit_test_samples}
        prepared: dict[tuple[int, int | None], datasets.Dataset] = {}
        for name, part in self.split(self.load_pairs()).items():
            key = (id(part), limits[name])  # test_fraction=0: test is the val split, tokenized once
            if name != "train" and key in prepared:
                self.splits[name] = prepared[key]
                continue
            if limits[name] is not None:
                part = part.select(range(min(limits[name], len(part))))
            part = part.map(self.encoder, batched=True, desc=f"tokenize {name}",
                            new_fingerprint=self._fingerprint(part, name))
            if name != "train":  # generation is fastest on length-sorted batches
                part = part.sort("length", reverse=True)
                prepared[key] = part
            self.splits[name] = part

    def _fingerprint(self, part: datasets.Dataset, name: str) -> str:
        return hashlib.sha256(f"{part._fingerprint}|{name}|{self.encoder.fingerprint()}".encode()).hexdigest()[:16]

    def _loader(self, name: str) -> DataLoader:
        hp = self.hparams
        common = dict(num_workers=hp.num_workers, collate_fn=self.encoder.collate,
                      persistent_workers=hp.num_workers > 0)
        if name == "train":  # an order from (seed, epoch) that a resumed run replays, sharded under ddp
            lengths = self.train_lengths() if hp.group_by_length else None
            return resumable_loader(self.splits[name], hp.batch_size, hp.seed, self.trainer, lengths=lengths, **common)
        # evaluation on several processes: each sample once (Lightning's default sampler would repeat some)
        return DataLoader(self.splits[name], batch_size=hp.eval_batch_size or hp.batch_size,
                          sampler=eval_sampler(self.splits[name], self.trainer), **common)

    def train_lengths(self) -> list[int]:
        """What a training sample costs to pad: its input plus its label tokens (both are padded per batch)."""
        table = self.splits["train"].with_format("arrow")[:]
        return pc.add(pc.list_value_length(table["input_ids"]), pc.list_value_length(table["labels"])).to_pylist()

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def report(self) -> dict[str, Any]:
        """Sizes per split, records skipped by reason, token lengths (for the run report)."""
        sizes = {name: len(part) for name, part in self.splits.items()}
        lengths = {name: round(pc.mean(part.with_format("arrow")["length"]).as_py(), 1)
                   for name, part in self.splits.items() if len(part)}
        return {"name": type(self).__name__, "sizes": sizes, "skipped": self.skipped(),
                "mean_source_tokens": lengths}
