"""Shoe product images with captions, for text-to-image (Stable Diffusion) LoRA training.

Training images follow the Hugging Face imagefolder layout: a folder of images plus
``metadata.jsonl`` or ``metadata.csv`` with ``file_name`` and ``text`` columns; without a metadata
file every image is captioned from its file name. Validation and test iterate over a fixed prompt
library (each prompt with its index as seed, so every validation draws the same noise); the
held-out real images for FID/KID come from ``real_images()``.

The listing is read with the standard library and images are decoded lazily with PIL, so a bad
file is reported by name, with one line, when it is first read.
"""

import csv
import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from src.datamodules.sampling import resumable_loader
from src.distributed import eval_sampler
from src.errors import UserError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
DEFAULT_PROMPTS = (
    "a photo of a red casual sneaker with white laces on a white background",
    "a photo of a black high-top sneaker with white laces on a light grey background",
    "a photo of a brown loafer with a black sole on a white background",
    "a photo of a blue canvas shoe with a white sole on a cream background",
)
HELD_OUT_FRACTION = 0.2  # of the training listing, when there is no real_dir


def unreadable(path: Path, reason: str) -> UserError:
    return UserError(f"cannot read image {path}: {reason} — fix or remove it (and its metadata row)")


def caption_from_name(path: Path, template: str) -> str:
    """The caption of an image without metadata: its file stem with ``_`` and ``-`` as spaces.

    >>> caption_from_name(Path("red_suede-loafer.png"), "a photo of {name}")
    'a photo of red suede loafer'
    """
    name = " ".join(path.stem.replace("_", " ").replace("-", " ").split())
    try:
        return template.format(name=name)
    except (KeyError, IndexError, ValueError) as err:
        raise UserError(f"data.caption_template={template!r} cannot be filled: use '{{name}}' as the only "
                        f"placeholder ({err!r})") from err


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def read_metadata(folder: Path) -> list[dict[str, str]] | None:
    """Rows of ``metadata.jsonl`` or ``metadata.csv`` (``file_name`` and optional ``text``), or None."""
    found = [folder / n for n in ("metadata.jsonl", "metadata.csv") if (folder / n).is_file()]
    if not found:
        return None
    if len(found) > 1:
        raise UserError(f"{folder} has both metadata.jsonl and metadata.csv — keep one")
    meta = found[0]
    rows = []
    with open(meta, encoding="utf-8", newline="") as f:
        if meta.suffix == ".csv":
            rows = [(i + 2, row) for i, row in enumerate(csv.DictReader(f))]  # line 1 is the header
        else:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append((lineno, json.loads(line)))
                    except json.JSONDecodeError as err:
                        raise UserError(f"{meta}:{lineno}: not valid JSON ({err.msg}) — fix the line") from err
    for lineno, row in rows:
        if not isinstance(row, dict) or not row.get("file_name"):
            raise UserError(f"{meta}:{lineno}: no 'file_name' — every metadata row names its image")
    return [{"file_name": str(row["file_name"]), "text": str(row.get("text") or "")} for _, row in rows]


def load_image(path: Path, resolution: int, center_crop: bool = True, flip: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """RGB uint8 CHW: shorter side resized to ``resolution`` (bicubic), cropped square, optionally mirrored.

    ``generator`` draws the random crop offset and the flip (p=0.5) when ``center_crop`` is off or
    ``flip`` is on.
    """
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")  # decodes the whole file: truncation shows up here
    except FileNotFoundError as err:
        raise unreadable(path, "file not found") from err
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise unreadable(path, str(err).splitlines()[0] if str(err) else type(err).__name__) from err
    w, h = img.size
    scale = resolution / min(w, h)
    w, h = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    img = img.resize((w, h), Image.BICUBIC)
    if center_crop:
        left, top = round((w - resolution) / 2), round((h - resolution) / 2)
    else:
        left = int(torch.randint(w - resolution + 1, (1,), generator=generator))
        top = int(torch.randint(h - resolution + 1, (1,), generator=generator))
    img = img.crop((left, top, left + resolution, top + resolution))
    if flip and torch.rand(1, generator=generator).item() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


class CaptionedImages(Dataset):
    """(image, caption) pairs; an item is an index, or ``(index, seed)`` from the training sampler
    (``ResumableShuffle(item_seeds=True)``: crop and flip from the item's seed, never the global RNG)."""

    def __init__(self, items: list[tuple[Path, str]], resolution: int, center_crop: bool, random_flip: bool,
                 seed: int):
        self.items, self.resolution, self.seed = items, resolution, seed
        self.center_crop, self.random_flip = center_crop, random_flip

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        # a plain index (e.g. Lightning's overfit_batches swaps in a sequential sampler) gets a fixed seed
        index, item_seed = key if isinstance(key, tuple) else (key, self.seed * 100_003 + key)
        path, caption = self.items[index]
        generator = torch.Generator().manual_seed(item_seed)
        pixels = load_image(path, self.resolution, self.center_crop, self.random_flip, generator)
        return {"pixel_values": pixels.float() / 127.5 - 1.0, "caption": caption}


class Prompts(Dataset):
    def __init__(self, prompts: list[str]):
        self.prompts = prompts

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"prompt": self.prompts[index], "seed": index}  # fixed seed: the same noise every validation


def collate_images(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"pixel_values": torch.stack([i["pixel_values"] for i in items]), "caption": [i["caption"] for i in items]}


def collate_prompts(items: list[dict[str, Any]]) -> dict[str, list]:
    return {"prompt": [i["prompt"] for i in items], "seed": [i["seed"] for i in items]}


class ShoeImagesDataModule(L.LightningDataModule):
    """Captioned images for training, a prompt library for validation/test, real images for FID/KID.

    Train batches: ``{"pixel_values": float [B,3,R,R] in [-1,1], "caption": list[str]}``.
    Val/test batches: ``{"prompt": list[str], "seed": list[int]}``.
    ``real_dir=None`` holds out the last 20% of the training listing (by file name) as real images.
    Images are read at the model's resolution, which the family gives by ``connect`` (``model.resolution``);
    ``resolution`` here may only repeat it (runs saved before the model owned it set both). ``cache_dir`` is
    accepted and unused (images are read straight from disk).
    """

    sample_kind = "image"  # captioned images: what image families train on (src/modality.py checks it first)

    def __init__(self, data_dir: str, real_dir: str | None = None, prompts_file: str | None = None,
                 resolution: int | None = None, center_crop: bool = True, random_flip: bool = True,
                 caption_template: str = "a photo of {name}", batch_size: int = 4, eval_batch_size: int = 4,
                 num_workers: int = 0, seed: int = 42, limit_train_samples: int | None = None,
                 limit_val_prompts: int | None = None, cache_dir: str | None = None):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.resolution: int | None = None
        self.data_dir = Path(data_dir)
        self.real_dir = Path(real_dir) if real_dir else None
        self.prompts_file = Path(prompts_file) if prompts_file else None
        self.train_items: list[tuple[Path, str]] | None = None
        self.real_paths: list[Path] = []
        self.prompts: list[str] = []
        self._real: torch.Tensor | None = None

    def connect(self, resolution: int) -> None:
        """The side, in pixels, the model trains and generates at."""
        given = self.hparams.resolution
        if given is not None and int(given) != int(resolution):
            raise UserError(f"data.resolution={given} but model.resolution={resolution}: the images are read at the "
                            "model's resolution — set model.resolution, and leave data.resolution=null")
        if resolution < 8:
            raise UserError(f"model.resolution={resolution}: use at least 8 (64 for tiny_sd, 512 for sd15)")
        self.resolution = int(resolution)

    def _resolution(self) -> int:
        if self.resolution is None:
            raise RuntimeError("the datamodule is not connected to a model: call family.connect(datamodule, ...)")
        return self.resolution

    # -- listing -----------------------------------------------------------------------------
    def prepare_data(self) -> None:
        self._check_paths()

    def _check_paths(self) -> None:
        if not self.data_dir.is_dir():
            raise UserError(f"image folder not found: {self.data_dir} — set data.data_dir")
        if self.real_dir is not None and not self.real_dir.is_dir():
            raise UserError(f"real-image folder not found: {self.real_dir} — set data.real_dir "
                            "(or data.real_dir=null to hold out part of the training images)")

    def _training_listing(self) -> list[tuple[Path, str]]:
        rows = read_metadata(self.data_dir)
        if rows is None:
            items = [(p, caption_from_name(p, self.hparams.caption_template)) for p in list_images(self.data_dir)]
        else:
            items = [(self.data_dir / r["file_name"],
                      r["text"] or caption_from_name(Path(r["file_name"]), self.hparams.caption_template))
                     for r in rows]
            items.sort(key=lambda item: item[0].name)
        for path, _ in items:
            if not path.is_file():
                raise unreadable(path, "file not found")
        if not items:
            raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {self.data_dir} — set data.data_dir")
        return items

    def _read_prompts(self) -> list[str]:
        if self.prompts_file is None or not self.prompts_file.is_file():
            if self.prompts_file is not None:
                log.warning("prompts file %s not found: using the %d default shoe prompts",
                            self.prompts_file, len(DEFAULT_PROMPTS))
            return list(DEFAULT_PROMPTS)
        lines = [line.strip() for line in self.prompts_file.read_text(encoding="utf-8").splitlines()]
        prompts = [line for line in lines if line and not line.startswith("#")]
        if not prompts:
            raise UserError(f"{self.prompts_file} has no prompts — one per line (# starts a comment)")
        return prompts

    def setup(self, stage: str | None = None) -> None:
        if self.train_items is not None:
            return
        self._check_paths()
        hp = self.hparams
        items = self._training_listing()
        if self.real_dir is not None:
            self.real_paths = list_images(self.real_dir)
            if not self.real_paths:
                raise UserError(f"no images in {self.real_dir} — set data.real_dir (or null to hold out training images)")
        else:  # the last 20% by file name: deterministic, independent of the seed
            held = max(1, int(len(items) * HELD_OUT_FRACTION))
            if len(items) - held < 1:
                raise UserError(f"only {len(items)} image(s) in {self.data_dir}: too few to hold out real images "
                                "— add images or set data.real_dir")
            items, self.real_paths = items[:-held], [path for path, _ in items[-held:]]
        if hp.limit_train_samples is not None:
            items = items[:hp.limit_train_samples]
        self.prompts = self._read_prompts()[:hp.limit_val_prompts]
        self.train_items = items
        log.info("shoe images: %d training, %d real, %d prompts, %dx%d", len(items), len(self.real_paths),
                 len(self.prompts), self._resolution(), self._resolution())

    # -- loaders -----------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        data = CaptionedImages(self.train_items, self._resolution(), hp.center_crop, hp.random_flip, hp.seed)
        # an order and augmentation seeds from (seed, epoch) that a resumed run replays, sharded under ddp
        return resumable_loader(data, hp.batch_size, hp.seed, self.trainer, item_seeds=True,
                                num_workers=hp.num_workers, collate_fn=collate_images,
                                persistent_workers=hp.num_workers > 0)

    def _prompt_loader(self) -> DataLoader:
        prompts = Prompts(self.prompts)
        # several processes: each generates its own share of the prompts, none twice
        return DataLoader(prompts, batch_size=self.hparams.eval_batch_size, shuffle=False,
                          sampler=eval_sampler(prompts, self.trainer), collate_fn=collate_prompts)

    def val_dataloader(self) -> DataLoader:
        return self._prompt_loader()

    def test_dataloader(self) -> DataLoader:
        return self._prompt_loader()

    def real_images(self) -> torch.Tensor:
        """uint8 [N,3,R,R]: the held-out real images (resized, center-cropped, never flipped), read once."""
        if self._real is None:
            self.setup()
            self._real = torch.stack([load_image(p, self._resolution()) for p in self.real_paths])
        return self._real

    def report(self) -> dict[str, Any]:
        return {"name": type(self).__name__, "train_images": len(self.train_items or []),
                "real_images": len(self.real_paths), "real_source": str(self.real_dir or "held out from training"),
                "prompts": len(self.prompts), "resolution": self.resolution}
