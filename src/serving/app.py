"""The HTTP API: ``GET /api/models``, ``POST /api/generate`` (images), ``POST /api/generate_text``,
``GET /api/health``, the dashboard's ``/api/runs...`` (``dashboard.py``), and the page itself: ``GET /`` and
``/static/*`` (``static/``; no API key needed for the page, its /api calls send one).

Generation endpoints are plain ``def`` functions, so FastAPI runs them in its thread pool: a long
generation on one model does not block generation on another. Listing runs on threads of its own and
health on the event loop, so neither waits behind generations. Error bodies are one line without the
server's absolute paths; unexpected errors name an error id whose trace is in the server log.
"""

import functools
import logging
import time
import uuid
from contextlib import ExitStack, asynccontextmanager
from datetime import datetime
from pathlib import Path

import anyio
import anyio.to_thread
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from src.conversation import Conversation, one_turn, prompt_text, request_problem
from src.errors import UserError
from src.serving import generation as gen
from src.serving.compare_jobs import CompareJobs
from src.serving.dashboard import dashboard_router
from src.serving.access import ModelAccess, error_id, left
from src.serving.guards import ApiKey, BodyLimit, error_response, is_openai, openai_error, scrub_paths
from src.serving.images import ImageStore
from src.serving.loading import LoadedModel, ModelBusy, ModelCache
from src.serving.openai_api import openai_router
from src.serving.streaming import Answer, sse_event, start_generation
from src.serving.registry import ModelEntry, ModelRegistry
from src.serving.schemas import Health, ImageResponse, ModelInfo, ModelList, TextResponse, request_models

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # evaluate.py, for the dashboard's compare=all jobs


def validation_message(errors: list[dict]) -> str:
    """FastAPI's error list as one readable line: ``num_images: Input should be less than or equal to 8``."""
    parts = []
    for err in errors:
        where = ".".join(str(p)[:40] for p in err.get("loc", ()) if p != "body")  # a key is echoed, cut short
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(parts)


def requested_conversation(body, loaded: LoadedModel) -> Conversation:
    """What the model is asked: the conversation so far, a raw prompt as one user turn, or a title (a card) in the
    run's own prompt format."""
    if body.messages is not None:
        messages = [m.model_dump() for m in body.messages]
        if problem := request_problem(messages):
            raise UserError(f"messages: {problem}")
        return messages
    return one_turn(body.prompt) if body.prompt is not None else loaded.request(body.title)


def create_app(registry: ModelRegistry, cache: ModelCache, images: ImageStore, limits, *,
               max_body_bytes: int = 65536, model_wait_seconds: float = 60.0, api_key: str | None = None,
               project_root: str | Path | None = None, resident_key=None) -> FastAPI:
    """The API over ``registry``'s models, loaded through ``cache``; ``limits`` bound request fields.
    ``project_root`` holds evaluate.py, which the dashboard's compare jobs run (this checkout by default).

    A request waits at most ``model_wait_seconds`` for its model (a free slot among the loaded models, or
    the model's lock while other requests generate with it), then gets a 503 with Retry-After.
    """
    bodies = request_models(limits)
    ImageRequest, TextRequest = bodies.ImageRequest, bodies.TextRequest  # noqa: N806 (classes)
    jobs = CompareJobs(registry.logs_dir, Path(project_root or PROJECT_ROOT))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await anyio.to_thread.run_sync(jobs.close)  # a compare subprocess does not outlive the server

    app = FastAPI(title="lorafit", summary="Generate with base models, checkpoints and adapters found in the logs "
                  "directory; a dashboard of the training runs at /", version="1", lifespan=lifespan)
    app.state.compare_jobs = jobs
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if api_key:
        app.add_middleware(ApiKey, key=api_key)  # added last: runs first, before any body is read
    roots = [registry.logs_dir, images.directory]
    access = ModelAccess(registry, cache, model_wait_seconds, resident_key)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        errors = exc.errors()  # their "input" is the request body: never sent back
        if is_openai(request.url.path):
            first = ".".join(str(p)[:40] for p in errors[0].get("loc", ()) if p != "body") if errors else None
            return openai_error(422, validation_message(errors), param=first or None)
        return JSONResponse(status_code=422, content={"message": validation_message(errors), "detail": [
            {"loc": [str(p)[:40] for p in e.get("loc", ())], "msg": e.get("msg"), "type": e.get("type")}
            for e in errors]})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        detail = scrub_paths(exc.detail, roots) if isinstance(exc.detail, str) else exc.detail
        return error_response(request.url.path, exc.status_code, detail, getattr(exc, "code", None), exc.headers,
                              param=getattr(exc, "param", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):  # a bug: the trace goes to the log only
        eid = error_id()
        log.error("error %s on %s %s", eid, request.method, request.url.path, exc_info=exc)
        return error_response(request.url.path, 500, f"internal error {eid} — the server log has the details")

    def guarded(endpoint):
        """Unexpected errors become a 500 naming an error id; the trace goes to the server log."""
        @functools.wraps(endpoint)
        def wrapper(*args, **kwargs):
            try:
                return endpoint(*args, **kwargs)
            except HTTPException:
                raise
            except Exception as err:
                eid = error_id()
                log.exception("error %s in %s", eid, endpoint.__name__)
                raise HTTPException(500, f"internal error {eid} ({type(err).__name__}) — the server log has the "
                                         "details") from err
        return wrapper

    def entry_of(name: str, kind: str) -> ModelEntry:
        other = {"image": "use POST /api/generate", "text": "use POST /api/generate_text"}
        return access.entry(name, lambda e: e.kind == kind, lambda e: other[e.kind])

    @app.get("/api/health", response_model=Health, summary="Liveness and the model cache's counters (no key needed)")
    async def health() -> Health:
        stats = cache.stats()
        return Health(resident_models=stats.resident, max_resident_models=stats.max_resident,
                      max_loaded_models=cache.max_loaded, loads=stats.loads, evictions=stats.evictions,
                      loaded_adapters=sum(getattr(m, "adapter_count", 0) for m in cache.resident()))

    @app.get("/api/models", response_model=ModelList, summary="Every model that can generate")
    async def list_models() -> ModelList:
        entries = await access.listed()
        return ModelList(models=[ModelInfo(**e.info()) for e in entries])

    @app.post("/api/generate", response_model=ImageResponse, summary="Generate images (image models)")
    @guarded
    def generate_images(body: ImageRequest) -> ImageResponse:
        deadline = time.monotonic() + model_wait_seconds
        entry = entry_of(body.model_name, "image")
        first = gen.new_seed() if body.seed is None else body.seed
        seeds = [first + i for i in range(body.num_images)]
        settings = {"num_inference_steps": body.num_inference_steps, "guidance_scale": body.guidance_scale}
        with ExitStack() as stack:
            loaded = access.lease(stack, entry, deadline)
            try:
                pictures = gen.generate_images(loaded, [body.prompt] * body.num_images, seeds, settings,
                                               wait=left(deadline))
            except ModelBusy as err:
                raise access.busy(entry.name, str(err)) from None
            except ValueError as err:  # settings the pipeline rejects
                raise HTTPException(422, f"cannot generate with these settings: {err}") from err
        stamp = f"{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}"
        encoded, files = [], []
        for picture, seed in zip(pictures, seeds):
            data = gen.png_bytes(picture)
            encoded.append(gen.png_base64(data))
            if body.save:
                files.append(images.save(data, f"{stamp}-seed{seed}.png"))
        return ImageResponse(model_name=body.model_name, prompt=body.prompt, images=encoded, seeds=seeds, files=files)

    @app.post("/api/generate_text", response_model=TextResponse, summary="Generate text (text models)")
    @guarded
    def generate_text(body: TextRequest) -> TextResponse:
        deadline = time.monotonic() + model_wait_seconds
        entry = entry_of(body.model_name, "text")
        if body.stream:
            return stream_text(entry, body)
        with ExitStack() as stack:
            loaded = access.lease(stack, entry, deadline)
            try:
                request = requested_conversation(body, loaded)
            except UserError as err:  # e.g. an unknown tarot card
                raise HTTPException(422, str(err)) from err
            settings = body.model_dump(include=set(gen.TEXT_SETTINGS), exclude_none=True)
            try:
                (text,), seed = gen.generate_texts(loaded, [request], settings, body.seed, wait=left(deadline))
            except ModelBusy as err:
                raise access.busy(entry.name, str(err)) from None
            except ValueError as err:  # transformers rejects combinations (e.g. beams with groups)
                raise HTTPException(422, f"cannot generate with these settings: {err}") from err
            used = gen.text_settings(loaded, settings)
        return TextResponse(model_name=body.model_name, input=prompt_text(request), text=text, settings=used,
                            seed=seed)

    def stream_text(entry: ModelEntry, body) -> StreamingResponse:
        settings = body.model_dump(include=set(gen.TEXT_SETTINGS), exclude_none=True)
        generation, _, loaded, request = start_generation(
            access, entry, lambda loaded: requested_conversation(body, loaded), settings, seed=body.seed)
        used, shown = gen.text_settings(loaded, settings), prompt_text(request)

        def events():
            try:
                for _, item in generation.answers():
                    if isinstance(item, Answer):
                        done = TextResponse(model_name=body.model_name, input=shown, text=item.text.strip(),
                                            settings=used, seed=generation.seeds[0])
                        yield sse_event({"done": done.model_dump()})
                    else:
                        yield sse_event({"text": item})
            except Exception as err:  # noqa: BLE001 (the status is sent: the error is the last event)
                log.exception("error while streaming %s", entry.name)
                yield sse_event({"error": f"generation failed ({type(err).__name__}): {err}"})

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    app.include_router(dashboard_router(registry, jobs))
    app.include_router(openai_router(access, limits, guarded))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    return app

