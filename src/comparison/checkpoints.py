"""The checkpoints a run saved, with the training step each was written at."""

from dataclasses import dataclass
from pathlib import Path

from src.errors import UserError
from src.trust import read_checkpoint

LAST = "last.ckpt"


@dataclass(frozen=True)
class SavedCheckpoint:
    name: str  # the file's stem: "checkpoint-150", "last"
    path: Path
    step: int


def checkpoint_step(path: Path) -> int:
    checkpoint = read_checkpoint(path)  # weights_only: a checkpoint placed in a run cannot run code
    if not isinstance(checkpoint, dict) or "global_step" not in checkpoint:
        raise UserError(f"{path} is not a Lightning checkpoint (no global_step) — remove it from {path.parent}")
    return int(checkpoint["global_step"])


def list_checkpoints(run_dir: Path) -> list[SavedCheckpoint]:
    """Every ``checkpoints/*.ckpt`` of the run, ordered by step.

    ``last.ckpt`` (the latest state, kept for resuming) is included only when no other checkpoint
    has its step: then it is the one point of the curve after the kept top-k checkpoints, which is
    what shows overfitting; otherwise it duplicates a checkpoint already listed.
    """
    folder = run_dir / "checkpoints"
    kept = [SavedCheckpoint(p.stem, p, checkpoint_step(p)) for p in sorted(folder.glob("*.ckpt")) if p.name != LAST]
    last = folder / LAST
    if last.is_file():
        step = checkpoint_step(last)
        if step not in {c.step for c in kept}:
            kept.append(SavedCheckpoint(last.stem, last, step))
    if not kept:
        raise UserError(f"run directory {run_dir} holds no checkpoints/*.ckpt — was training interrupted before the "
                        "first validation? (compare=all compares a run's saved checkpoints)")
    return sorted(kept, key=lambda c: (c.step, c.name))
