"""What stands between the network and the API: an optional API key, a request body limit, and error
bodies that never show the server's absolute paths.

Both middlewares are plain ASGI, so they act before FastAPI parses (or echoes) anything.
"""

import hmac
import ipaddress
import re
from pathlib import Path

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

OPEN_PATHS = ("/api/health",)  # answered without a key: load balancers and the tests poll it
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s'\"(),:;/]+/)*([^\s'\"(),:;/]+)")
KEYED_PREFIXES = ("/api/", "/v1/")
OPENAI_PREFIX = "/v1/"
# an OpenAI error body's "type" by status, as the OpenAI API (and so its clients) name them
OPENAI_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                      404: "not_found_error", 413: "invalid_request_error", 422: "invalid_request_error",
                      429: "rate_limit_error"}


def is_openai(path: str) -> bool:
    return path.startswith(OPENAI_PREFIX)


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None) -> JSONResponse:
    """``{"error": {"message", "type", "param", "code"}}``, the shape OpenAI clients read their errors from."""
    kind = OPENAI_ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


def error_response(path: str, status: int, message, code: str | None = None, headers: dict | None = None,
                   param: str | None = None) -> JSONResponse:
    """An error in the shape the path's clients read: OpenAI's under /v1/, ``{"detail": ...}`` elsewhere."""
    if is_openai(path):
        return openai_error(status, str(message), param, code, headers)
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


class ApiKey:
    """Every ``/api/*`` and ``/v1/*`` request but ``/api/health`` carries ``X-API-Key: <key>`` or
    ``Authorization: Bearer <key>``; others get a 401."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith(KEYED_PREFIXES) and path not in OPEN_PATHS:
            headers = Headers(scope=scope)
            given = headers.get("x-api-key") or bearer_token(headers.get("authorization"))
            if not given or not hmac.compare_digest(given.encode(), self.key):
                response = error_response(path, 401, "missing or wrong API key — send the header X-API-Key: <key> "
                                          "or Authorization: Bearer <key>", code="invalid_api_key",
                                          headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def bearer_token(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class BodyLimit:
    """A request body over ``max_bytes`` gets a 413 before anything reads it: the declared length is checked
    first, and a chunked body is counted as it arrives (then replayed to the app)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._too_large(scope, receive, send)
            if not message.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send):
        message = f"request body is larger than max_body_bytes={self.max_bytes} — send a shorter request"
        response = error_response(scope.get("path", ""), 413, message, code="request_too_large",
                                  headers={"Connection": "close"})
        await response(scope, receive, send)


def is_loopback(host: str) -> bool:
    """
    >>> [is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "192.168.1.5")]
    [True, True, True, False, False]
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """One line when the API is reachable from other machines without authentication."""
    if is_loopback(host) or api_key:
        return None
    return (f"host={host} exposes the API to the network with no authentication: anyone who reaches this port can "
            "generate and read your model names — set LORAFIT_API_KEY (or api_key=...) or serve on host=127.0.0.1")


def scrub_paths(text: str, roots: list[Path]) -> str:
    """``text`` with paths under ``roots`` made relative to them and any other absolute path on this machine
    cut to its name.

    >>> scrub_paths("cannot read /srv/logs/runs/a/last.ckpt: see /usr/lib/x.py, GET /api/models", [Path("/srv/logs")])
    'cannot read runs/a/last.ckpt: see x.py, GET /api/models'
    """
    for root in roots:
        for form in {str(root), str(Path(root).resolve())}:
            text = text.replace(form.rstrip("/") + "/", "")
    return ABSOLUTE_PATH.sub(lambda m: m[1] if _on_this_machine(m[0]) else m[0], text)


def _on_this_machine(path: str) -> bool:
    """Whether ``path`` starts in an existing top-level directory: ``/tmp/...``, not an API route (``/api/models``)."""
    top = path.lstrip("/").split("/", 1)[0]
    return "/" in path.lstrip("/") and Path("/", top).is_dir()
