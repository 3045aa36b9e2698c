"""Atomic file writes: a reader (or the next run) sees the old file or the new one, never half of one.

Write a temporary file in the target's own directory (a rename is atomic only within one filesystem), fsync it,
``os.replace`` it over the target, then fsync the directory so the rename itself survives a power cut.
Temporary names are ``.<name>.<pid>.tmp``: a process killed mid-write leaves one behind, and
``remove_orphan_temp_files`` clears those of processes that no longer run.

>>> import tempfile, pathlib
>>> target = pathlib.Path(tempfile.mkdtemp()) / "report.json"
>>> atomic_write_json(target, {"step": 3})
>>> target.read_text()
'{\\n  "step": 3\\n}\\n'
"""

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")


def temp_path_for(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def fsync_dir(path: str | Path) -> None:
    """Make the entries of directory ``path`` (a rename into it) durable. A no-op where directories cannot be
    opened for fsync (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (and Windows) refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    """Flush a file's data to disk, whoever wrote it (an fsync through any descriptor flushes the file)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; once the block has written it and returned, it replaces ``path``.
    If the block raises, the temporary file is removed and ``path`` is untouched.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "weights.bin"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_bytes(b"new")
    >>> target.read_bytes()
    b'new'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | Path, payload: Any) -> None:
    """``payload`` as indented JSON; values JSON cannot hold are written as ``str(value)``."""
    atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


def pid_is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_orphan_temp_files(directory: str | Path) -> list[Path]:
    """Delete ``.<name>.<pid>.tmp`` files in ``directory`` whose writer is no longer running (killed mid-write);
    those of this process and of running processes stay. Returns what was removed.

    A pid is checked on this machine only: do not share one run directory between jobs on several machines.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for entry in directory.iterdir():
        match = TEMP_NAME.match(entry.name)
        if not match or not entry.is_file():
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or pid_is_running(pid):
            continue
        entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
