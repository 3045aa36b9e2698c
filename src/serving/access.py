"""From a requested model name to a leased model, with the HTTP errors every endpoint answers the same way:
404 for a name not listed, 403 for a refused run, 400 for the wrong endpoint, 503 + Retry-After when busy."""

import logging
import math
import time
import uuid
from collections.abc import Callable, Hashable
from contextlib import ExitStack

import anyio
import anyio.to_thread
from fastapi import HTTPException

from src.errors import UserError
from src.serving.loading import LoadedModel, ModelBusy, ModelCache
from src.serving.registry import ModelEntry, ModelRegistry
from src.trust import Refused

log = logging.getLogger(__name__)


class ApiError(HTTPException):
    """An HTTP error that also names the request field at fault and a machine-readable code (OpenAI's shape)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(status, message, headers=headers)
        self.param, self.code = param, code


def error_id() -> str:
    return uuid.uuid4().hex[:12]


class ModelAccess:
    """``registry``'s entries, loaded through ``cache``; a request waits at most ``model_wait_seconds``."""

    def __init__(self, registry: ModelRegistry, cache: ModelCache, model_wait_seconds: float,
                 resident_key: Callable[[ModelEntry], Hashable] | None = None):
        self.registry, self.cache, self.wait = registry, cache, model_wait_seconds
        # which resident model serves an entry (serve.py: one per base model, resident.py); else one per entry
        self.resident_key = resident_key or (lambda entry: (entry.name, entry.version))
        self.retry_after = str(max(1, math.ceil(model_wait_seconds)))
        self._listing_threads: anyio.CapacityLimiter | None = None

    async def listed(self) -> list[ModelEntry]:
        """The registry's (re)scanned listing, on threads of its own (created in the event loop on first use): a
        listing never queues behind generations in the default thread pool."""
        if self._listing_threads is None:
            self._listing_threads = anyio.CapacityLimiter(2)
        return await anyio.to_thread.run_sync(self.registry.list, limiter=self._listing_threads)

    def deadline(self) -> float:
        return time.monotonic() + self.wait

    def entry(self, name: str, fits, where: str, listing: str = "GET /api/models", param: str = "model_name"
              ) -> ModelEntry:
        """The entry named ``name`` if ``fits(entry)``; else 400 saying ``where`` it is served."""
        entry = self.registry.get(name)  # only names from the scanned listing: never a path
        if entry is None:
            refused = self.registry.refusal(name)
            if refused:
                raise ApiError(403, f"{name} is not served: {refused}", param, "model_not_served")
            raise ApiError(404, f"unknown model {name!r} — {listing} lists the available names", param,
                           "model_not_found")
        if not fits(entry):
            raise ApiError(400, f"{name} is a {entry.family} model — {where(entry)}", param, "wrong_endpoint")
        return entry

    def busy(self, name: str, why: str) -> HTTPException:
        return ApiError(503, f"{name} is busy ({why}) — retry after {self.retry_after} s", code="model_busy",
                        headers={"Retry-After": self.retry_after})

    def lease(self, stack: ExitStack, entry: ModelEntry, deadline: float) -> LoadedModel:
        """The entry's model, held (never evicted) until ``stack`` closes: the entry's view of a resident base
        (``resident.py``), or the model the cache holds for it."""
        try:
            resident = stack.enter_context(self.cache.lease(self.resident_key(entry), entry, wait=left(deadline)))
            view = getattr(resident, "view", None)
            return resident if view is None else view(entry, left(deadline))
        except ModelBusy as err:
            raise self.busy(entry.name, str(err)) from None
        except Refused as err:
            raise ApiError(403, f"{entry.name} is not served: {err}", code="model_not_served") from None
        except UserError as err:  # e.g. a truncated checkpoint: the server's files, not the request
            eid = error_id()
            log.error("error %s loading %s: %s", eid, entry.name, err)
            raise HTTPException(500, f"cannot load {entry.name}: {err} (error {eid})") from None


def left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())
