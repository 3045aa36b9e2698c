"""The HTTP API: ``GET /api/models``, ``POST /api/generate`` (images), ``POST /api/generate_text``.

Endpoints are plain ``def`` functions, so FastAPI runs them in its thread pool: a long generation
on one model does not block listing, or generation on another model.
"""

import logging
import uuid
from datetime import datetime
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from src.errors import UserError
from src.serving import generation as gen
from src.serving.loading import LoadedModel, ModelCache
from src.serving.registry import ModelEntry, ModelRegistry
from src.serving.schemas import ImageResponse, ModelInfo, ModelList, TextResponse, request_models

log = logging.getLogger(__name__)


def validation_message(errors: list[dict]) -> str:
    """FastAPI's error list as one readable line: ``num_images: Input should be less than or equal to 8``."""
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(parts)


def create_app(registry: ModelRegistry, cache: ModelCache, output_dir: str | Path, limits) -> FastAPI:
    output_dir = Path(output_dir)
    bodies = request_models(limits)
    ImageRequest, TextRequest = bodies.ImageRequest, bodies.TextRequest  # noqa: N806 (classes)
    app = FastAPI(title="lorafit", summary="Generate with base models, checkpoints and adapters found in the logs "
                  "directory", version="1")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        return JSONResponse(status_code=422, content={"message": validation_message(errors),
                                                      "detail": jsonable(errors)})

    def entry_of(name: str, kind: str) -> ModelEntry:
        entry = registry.get(name)  # only names from the scanned listing: never a path
        if entry is None:
            raise HTTPException(404, f"unknown model {name!r} — GET /api/models lists the available names")
        if entry.kind != kind:
            other = "/api/generate" if entry.kind == "image" else "/api/generate_text"
            raise HTTPException(400, f"{name} is a {entry.kind} model — use POST {other}")
        return entry

    def model_for(entry: ModelEntry) -> LoadedModel:
        try:
            return cache.get((entry.name, entry.version), entry)
        except UserError as err:
            raise HTTPException(500, f"cannot load {entry.name}: {err}") from err

    @app.get("/api/models", response_model=ModelList, summary="Every model that can generate")
    def list_models() -> ModelList:
        return ModelList(models=[ModelInfo(**e.info()) for e in registry.list()])

    @app.post("/api/generate", response_model=ImageResponse, summary="Generate images (image models)")
    def generate_images(body: ImageRequest) -> ImageResponse:
        loaded = model_for(entry_of(body.model_name, "image"))
        first = gen.new_seed() if body.seed is None else body.seed
        seeds = [first + i for i in range(body.num_images)]
        settings = {"num_inference_steps": body.num_inference_steps, "guidance_scale": body.guidance_scale}
        try:
            images = gen.generate_images(loaded, [body.prompt] * body.num_images, seeds, settings)
        except ValueError as err:  # settings the pipeline rejects
            raise HTTPException(422, f"cannot generate with these settings: {err}") from err
        stamp = f"{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}"
        encoded, files = [], []
        for image, seed in zip(images, seeds):
            data = gen.png_bytes(image)
            encoded.append(gen.png_base64(data))
            files.append(str(gen.save_png(data, output_dir / f"{stamp}-seed{seed}.png")))
        return ImageResponse(model_name=body.model_name, prompt=body.prompt, images=encoded, seeds=seeds, files=files)

    @app.post("/api/generate_text", response_model=TextResponse, summary="Generate text (text models)")
    def generate_text(body: TextRequest) -> TextResponse:
        loaded = model_for(entry_of(body.model_name, "text"))
        try:
            source = body.prompt if body.prompt is not None else loaded.datamodule.format_source(body.title)
        except UserError as err:  # e.g. an unknown tarot card
            raise HTTPException(422, str(err)) from err
        settings = body.model_dump(include=set(gen.TEXT_SETTINGS), exclude_none=True)
        try:
            (text,), seed = gen.generate_texts(loaded, [source], settings, body.seed)
        except ValueError as err:  # transformers rejects combinations (e.g. beams with groups)
            raise HTTPException(422, f"cannot generate with these settings: {err}") from err
        return TextResponse(model_name=body.model_name, input=source, text=text,
                            settings=gen.text_settings(loaded, settings), seed=seed)

    return app


def jsonable(errors: list[dict]) -> list[dict]:
    """Pydantic errors may carry exceptions in ``ctx``; keep them printable."""
    return [{k: (str(v) if k == "ctx" else v) for k, v in err.items() if k != "url"} for err in errors]
