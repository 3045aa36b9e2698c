"""A run's logged scalars as ``[[step, value], ...]`` series, from its TensorBoard event files or else its CSV
logger's ``metrics.csv``. Both are read while the run writes them: a half-written last record is skipped.

A file is parsed once per version (size and mtime), every scalar at once, so a page polling a live run
re-reads only the files that grew.
"""

import csv
import io
import logging
import math
from functools import lru_cache
from pathlib import Path

from src.serving.registry import _inside
from tensorboard.backend.event_processing import event_accumulator as ea

log = logging.getLogger(__name__)

MAX_POINTS = 2000  # per series: enough for a plot, bounded for a long run
EVENTS = "events.out.tfevents.*"
Series = dict[str, list[tuple[int, float]]]


def downsample(points: list[tuple[int, float]], limit: int = MAX_POINTS) -> list[tuple[int, float]]:
    """At most ``limit`` points, evenly spaced, keeping the first and the last.

    >>> downsample([(i, float(i)) for i in range(10)], 4)
    [(0, 0.0), (3, 3.0), (6, 6.0), (9, 9.0)]
    """
    if len(points) <= limit:
        return points
    if limit < 2:
        return points[-limit:] if limit else []
    return [points[round(i * (len(points) - 1) / (limit - 1))] for i in range(limit)]


def by_step(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Sorted by step, one point per step (the last one logged), finite values only."""
    latest = {int(step): float(value) for step, value in points if math.isfinite(value)}
    return sorted(latest.items())


def file_version(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


@lru_cache(maxsize=64)
def event_file_scalars(path: Path, version: tuple[int, int]) -> Series:
    """Every scalar of one event file, in the order written."""
    accumulator = ea.EventAccumulator(str(path), size_guidance={ea.SCALARS: 0})  # 0: keep every point
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


@lru_cache(maxsize=64)
def csv_scalars(path: Path, version: tuple[int, int]) -> Series:
    """Every numeric column of a CSV logger's ``metrics.csv`` against its ``step`` column."""
    series: Series = {}
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.endswith("\n"):  # the logger is writing its last row
        text = text[:text.rfind("\n") + 1]
    for row in csv.DictReader(io.StringIO(text)):
        try:
            step = int(float(row.get("step") or ""))
        except ValueError:
            continue
        for key, cell in row.items():
            if key in (None, "step", "epoch") or not cell:
                continue
            try:
                series.setdefault(key, []).append((step, float(cell)))
            except ValueError:
                continue
    return series


def logged_files(run_dir: Path, logs_dir: Path) -> tuple[str, list[Path]]:
    """("tensorboard", event files) when the run has any, else ("csv", metrics.csv files), oldest first."""
    for source, pattern in (("tensorboard", f"tensorboard/**/{EVENTS}"), ("csv", "csv/**/metrics.csv")):
        files = sorted(p for p in run_dir.glob(pattern) if p.is_file() and _inside(p, logs_dir))
        if files:
            return source, sorted(files, key=lambda p: p.stat().st_mtime_ns)
    return "none", []


def read_series(run_dir: Path, logs_dir: Path, tags: list[str]) -> tuple[str, Series]:
    """(where they came from, ``tags``' series): sorted by step, at most ``MAX_POINTS`` each, empty when not
    logged (yet)."""
    source, files = logged_files(run_dir, logs_dir)
    read = event_file_scalars if source == "tensorboard" else csv_scalars
    merged: Series = {tag: [] for tag in tags}
    for path in files:
        try:
            scalars = read(path, file_version(path))
        except Exception as err:  # noqa: BLE001 (a damaged file: the other files still plot)
            log.warning("cannot read %s: %s", path, err)
            continue
        for tag in tags:
            merged[tag] += scalars.get(tag, [])
    return source, {tag: [list(p) for p in downsample(by_step(points))] for tag, points in merged.items()}
