"""Generation from a loaded model, shared by the API, batch generation and the playground.

Each call holds the model's lock (a pipeline's scheduler and the adapter switch are per-model
state). Images draw their noise from per-image ``torch.Generator`` seeds; sampled text draws from
torch's global RNG, so it is seeded per request under one process-wide lock (which model loading
also takes: weight initialisation draws from it) and the RNG state is restored afterwards. Same seed,
same output, however many requests run at once. ``wait`` bounds how long a call waits for those locks
(None: as long as it takes); past it, ``ModelBusy``.
"""

import base64
import io
import secrets
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from src.conversation import Conversation
from src.serving.loading import GLOBAL_RNG, LoadedModel, ModelBusy

TEXT_SETTINGS = ("num_beams", "temperature", "top_p", "do_sample", "repetition_penalty", "no_repeat_ngram_size",
                 "max_new_tokens")
IMAGE_SETTINGS = ("num_inference_steps", "guidance_scale")


def new_seed() -> int:
    return secrets.randbelow(2**31)


@contextmanager
def holding(locks: list[threading.Lock], wait: float | None):
    """All ``locks``, in order, each within what is left of ``wait`` seconds; else ``ModelBusy``."""
    deadline = None if wait is None else time.monotonic() + wait
    with ExitStack() as stack:
        for lock in locks:
            timeout = -1 if deadline is None else max(0.0, deadline - time.monotonic())
            if not lock.acquire(timeout=timeout):
                raise ModelBusy("the model is busy with other requests")
            stack.callback(lock.release)
        yield


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def text_settings(loaded: LoadedModel, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model's configured generation settings with ``overrides`` (those not None) on top."""
    return {**loaded.generation_settings(), **{k: v for k, v in (overrides or {}).items() if v is not None}}


def generate_texts(loaded: LoadedModel, requests: list[Conversation], settings: dict[str, Any] | None = None,
                   seed: int | None = None, wait: float | None = None) -> tuple[list[str], int | None]:
    """Texts for requests (conversations without the answer: ``loaded.request(text)``, or a raw prompt as one
    user turn); the seed used when sampling."""
    settings = {k: v for k, v in (settings or {}).items() if v is not None}
    sampling = bool(text_settings(loaded, settings).get("do_sample"))
    if sampling and seed is None:
        seed = new_seed()
    batch = to_device(loaded.encoder.prompt_batch(requests), loaded.device)
    with holding(locks_for(loaded, sampling), wait), loaded.adapters(), seeded(seed if sampling else None):
        texts = loaded.module.generate_texts(batch, settings)
    return texts, seed if sampling else None


def locks_for(loaded: LoadedModel, sampling: bool) -> list[threading.Lock]:
    """What a generation holds: the model's lock, and the global RNG's when it samples."""
    return [loaded.lock, GLOBAL_RNG] if sampling else [loaded.lock]


@contextmanager
def seeded(seed: int | None):
    """Torch's global RNG seeded with ``seed`` and restored afterwards (the caller holds ``GLOBAL_RNG``); nothing
    for None (greedy decoding draws nothing)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def generate_images(loaded: LoadedModel, prompts: list[str], seeds: list[int],
                    settings: dict[str, Any] | None = None, wait: float | None = None) -> list[Image.Image]:
    """One image per prompt, each from its own seed."""
    settings = {k: v for k, v in (settings or {}).items() if v is not None}
    with holding([loaded.lock], wait), loaded.adapters():
        images = loaded.module.generate_images(prompts, seeds, settings)
    return [Image.fromarray(img.permute(1, 2, 0).cpu().numpy()) for img in images]


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def save_png(data: bytes, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
