"""Generated images the server keeps: only those a request asks to save (``save: true``), at most
``max_files`` of them, the oldest deleted first, so a long-running server does not fill its disk."""

import logging
import threading
from collections import deque
from pathlib import Path

from src.errors import UserError

log = logging.getLogger(__name__)


class ImageStore:
    def __init__(self, directory: str | Path, max_files: int):
        if max_files < 1:
            raise UserError(f"images.max_saved={max_files} must be at least 1 (requests save only with save: true)")
        self.directory, self.max_files = Path(directory), max_files
        self._lock = threading.Lock()
        existing = self.directory.glob("*.png") if self.directory.is_dir() else []  # a restarted server's
        self._order = deque(p.name for p in sorted(existing, key=lambda p: (p.stat().st_mtime_ns, p.name)))

    def save(self, data: bytes, name: str) -> str:
        """Write ``name`` (a PNG), delete the oldest saved files over the cap, return the name."""
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            (self.directory / name).write_bytes(data)
            self._order.append(name)
            while len(self._order) > self.max_files:
                (self.directory / self._order.popleft()).unlink(missing_ok=True)
        return name
