"""What commands write: JSON reports (atomically: a kill mid-write keeps the previous file whole) and JSON-lines
rows, with tensors and non-finite floats as plain JSON values."""

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from src.atomic import atomic_write_json


def to_builtin(value: Any) -> Any:
    """Tensors and numbers to JSON-friendly floats (NaN/inf to None)."""
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | Path, payload: dict) -> None:
    atomic_write_json(path, payload)


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """One JSON object per line, non-ASCII text kept as is."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
