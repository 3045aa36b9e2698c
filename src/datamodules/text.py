"""Text samples (conversations): split, connect to a model's encoder, tokenize, and collate with padding to each
batch's own length.

Dataset-specific modules only turn their raw files into a ``datasets.Dataset`` of samples: ``uid`` and
``messages`` (``load_samples``), and say how a user's input becomes a request (``format.request``). Splitting,
limits, tokenization through the model family's encoder (given by ``connect``), length-sorted evaluation loaders
and the data report live here once. A datamodule is built from config without the model: the family connects its
tokenizer in one step (``src/families``), and only ``setup`` needs it.
"""

import hashlib
from functools import partial
from typing import Any

import datasets
import lightning as L
import pyarrow.compute as pc
from torch.utils.data import DataLoader

from src.conversation import Conversation
from src.datamodules.packing import pack
from src.datamodules.sampling import resumable_loader
from src.distributed import eval_sampler
from src.encoders.common import SampleEncoder, packed_collate
from src.errors import UserError


# part of the tokenized cache's key: raised whenever the encoders' output columns change, so a cache written by an
# older lorafit is tokenized again instead of read without them (2: label_tokens, for the token-weighted loss)
ENCODED_COLUMNS_VERSION = 2

class TextDataModule(L.LightningDataModule):
    """Base for text datasets. Subclasses implement ``load_samples``, ``skipped`` and ``format`` (a
    ``RecordFormat``, for ``request``).

    ``stratify_column`` (a ClassLabel column of the samples) keeps its class proportions in every split;
    ``test_fraction=0`` means no separate test set: the test split is the validation split.
    """

    sample_kind = "text"  # conversations: what text families train on (src/modality.py checks it first)
    stratify_column: str | None = None
    format: Any = None

    def __init__(self, cache_dir: str = ".cache/datasets",
                 max_source_length: int = 128, max_target_length: int = 128, batch_size: int = 8,
                 eval_batch_size: int | None = None, num_workers: int = 0, seed: int = 42,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, limit_train_samples: int | None = None,
                 limit_val_samples: int | None = None, limit_test_samples: int | None = None,
                 group_by_length: bool = False, max_length: int | None = None, packing: bool = False):
        super().__init__()
        if not (val_fraction > 0 and test_fraction >= 0 and val_fraction + test_fraction < 1):
            raise UserError(f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction}: the first "
                            "must be above 0, the second 0 or more, and together less than 1")
        self.save_hyperparameters(logger=False)
        self.cache_dir = cache_dir
        self.splits: dict[str, datasets.Dataset] = {}
        self.encoder: SampleEncoder | None = None
        self.encoder_skips: dict[str, int] = {}  # samples the encoder refused (too long after templating), by reason

    # -- to implement per dataset ------------------------------------------------------------
    def load_samples(self) -> datasets.Dataset:
        """All usable samples: ``uid`` and ``messages`` columns (and ``stratify_column`` when set)."""
        raise NotImplementedError

    def skipped(self) -> dict[str, int]:
        """Records dropped while loading, by reason."""
        return {}

    def request(self, text: str) -> Conversation:
        """What a user types (a product title, a card), formatted as the training prompts were."""
        return self.format.request(text)

    # -- the model side ------------------------------------------------------------------------
    @property
    def lengths(self) -> dict[str, int]:
        """The length limits an encoder truncates to (``max_length``: a whole templated conversation's)."""
        hp = self.hparams
        return {"max_source_length": hp.max_source_length, "max_target_length": hp.max_target_length,
                **({"max_length": hp.max_length} if hp.max_length else {})}

    def connect(self, encoder: SampleEncoder) -> None:
        """The model family's sample encoder (``family.connect`` builds it from the model's tokenizer)."""
        if self.hparams.packing and not getattr(encoder, "packable", False):
            raise UserError(f"data.packing=true packs conversations into one sequence, which {type(encoder).__name__} "
                            "cannot take (an encoder-decoder's inputs and labels are two sequences) — use a causal or "
                            "chat model, or data.packing=false")
        if self.encoder is not None and self.encoder.fingerprint() != encoder.fingerprint():
            self.splits = {}  # tokenized for another model: tokenize again
        self.encoder = encoder

    # -- shared ------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        self.load_samples()  # builds the Arrow cache once, on one process

    def split(self, samples: datasets.Dataset) -> dict[str, datasets.Dataset]:
        """Deterministic train/val/test split of the samples from the seed."""
        hp = self.hparams
        held_out = hp.val_fraction + hp.test_fraction
        smallest = min(f for f in (hp.val_fraction, hp.test_fraction, 1 - held_out) if f > 0)
        if len(samples) * smallest < 1:
            raise UserError(f"only {len(samples)} usable records after cleaning: too few for a "
                            f"{1 - held_out:.0%}/{hp.val_fraction:.0%}/{hp.test_fraction:.0%} split — add data or "
                            "change data.val_fraction / data.test_fraction")
        by = dict(seed=hp.seed, shuffle=True, stratify_by_column=self.stratify_column)
        try:
            first = samples.train_test_split(test_size=held_out, **by)
            if not hp.test_fraction:
                return {"train": first["train"], "val": first["test"], "test": first["test"]}
            second = first["test"].train_test_split(test_size=hp.test_fraction / held_out, **by)
        except ValueError as err:  # stratification needs every class in every split
            raise UserError(f"cannot split {len(samples)} records stratified by {self.stratify_column}: "
                            f"{str(err).splitlines()[0]} — add records or raise data.val_fraction") from err
        return {"train": first["train"], "val": second["train"], "test": second["test"]}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if self.encoder is None:
            raise RuntimeError("the datamodule is not connected to a model: call family.connect(datamodule, ...)")
        hp = self.hparams
        limits = {"train": hp.limit_train_samples, "val": hp.limit_val_samples, "test": hp.limit_test_samples}
        prepared: dict[tuple[int, int | None], datasets.Dataset] = {}
        for name, part in self.split(self.load_samples()).items():
            key = (id(part), limits[name])  # test_fraction=0: test is the val split, tokenized once
            if name != "train" and key in prepared:
                self.splits[name] = prepared[key]
                continue
            if limits[name] is not None:
                part = part.select(range(min(limits[name], len(part))))
            part = part.map(self.encoder, batched=True, desc=f"tokenize {name}",
                            new_fingerprint=self._fingerprint(part, name))
            part = self._drop_refused(part, name)
            if name == "train" and hp.packing:
                part = pack(part, self.encoder.max_length)
            if name != "train":  # generation is fastest on length-sorted batches
                part = part.sort("length", reverse=True)
                prepared[key] = part
            self.splits[name] = part

    def _drop_refused(self, part: datasets.Dataset, name: str) -> datasets.Dataset:
        """Samples the encoder refused (``skip``: a conversation over ``max_length`` tokens) are dropped and counted,
        or, with ``data.on_bad_record=error``, stop the run naming the first."""
        if "skip" not in part.column_names:
            return part
        reasons = part["skip"]
        refused = [i for i, reason in enumerate(reasons) if reason]
        if refused and getattr(self, "on_bad_record", "skip") == "error":
            raise UserError(f"{part[refused[0]]['uid']}: bad record ({reasons[refused[0]]}: longer than "
                            f"data.max_length={self.encoder.max_length} tokens after the chat template) — shorten or "
                            "remove it, raise data.max_length, or set data.on_bad_record=skip")
        for i in refused:
            self.encoder_skips[reasons[i]] = self.encoder_skips.get(reasons[i], 0) + 1
        kept = part.select([i for i, reason in enumerate(reasons) if not reason]) if refused else part
        if not len(kept):
            raise UserError(f"every {name} sample is longer than data.max_length={self.encoder.max_length} tokens "
                            "after the chat template — raise data.max_length")
        return kept.remove_columns("skip")

    def _fingerprint(self, part: datasets.Dataset, name: str) -> str:
        key = f"{part._fingerprint}|{name}|{self.encoder.fingerprint()}|{ENCODED_COLUMNS_VERSION}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def _loader(self, name: str) -> DataLoader:
        hp = self.hparams
        common = dict(num_workers=hp.num_workers, collate_fn=self.encoder.collate,
                      persistent_workers=hp.num_workers > 0)
        if name == "train":  # an order from (seed, epoch) that a resumed run replays, sharded under ddp
            lengths = self.train_lengths() if hp.group_by_length else None
            if hp.packing:
                common["collate_fn"] = partial(packed_collate, pad_id=self.encoder.pad_id)
            # each batch carries its optimizer step's label tokens: the loss is the token mean over the step
            return resumable_loader(self.splits[name], hp.batch_size, hp.seed, self.trainer, lengths=lengths,
                                    label_tokens=self.splits[name]["label_tokens"], **common)
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
        packed = {"packed_rows": len(self.splits["train"]), "packed_samples": sum(self.splits["train"]["samples"])} \
            if self.hparams.packing and "train" in self.splits else {}
        return {"name": type(self).__name__, "sizes": sizes, "skipped": {**self.skipped(), **self.encoder_skips},
                "mean_source_tokens": lengths, **packed}
