"""The OpenAI API on the same app: ``GET /v1/models``, ``POST /v1/chat/completions`` (chat runs: messages through
the model's chat template) and ``POST /v1/completions`` (seq2seq and causal runs: the prompt as is), plain or
streamed as server-sent events ending in ``data: [DONE]``.

Same names, key, body limit, model cache, waits and trust checks as the native endpoints; errors in OpenAI's
shape (``{"error": {"message", "type", "param", "code"}}``) with the native status codes and one-line messages.
"""

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from src.conversation import Conversation, one_turn, request_problem
from src.families.registry import FAMILIES
from src.serving.access import ApiError, ModelAccess
from src.serving.openai_schemas import generation_settings, openai_request_models
from src.serving.registry import ModelEntry
from src.serving.streaming import SSE_DONE, Answer, Generation, sse_event, start_generation

log = logging.getLogger(__name__)


def is_chat(entry: ModelEntry) -> bool:
    return entry.kind == "text" and getattr(FAMILIES.get(entry.family), "answers_conversations", False)


def is_completion(entry: ModelEntry) -> bool:
    return entry.kind == "text" and not is_chat(entry)


def elsewhere(entry: ModelEntry) -> str:
    if entry.kind != "text":
        return "it generates images: use POST /api/generate"
    return "use POST /v1/chat/completions" if is_chat(entry) else "use POST /v1/completions (it has no chat template)"


def model_object(entry: ModelEntry) -> dict[str, Any]:
    """An OpenAI model object, with lorafit's details beside its fields."""
    return {"id": entry.name, "object": "model", "created": int(entry.version // 1_000_000_000),
            "owned_by": entry.run or "lorafit", **{k: v for k, v in entry.info().items() if k != "name"}}


def listing_order(entries: list[ModelEntry]) -> list[ModelEntry]:
    """Each run's recommended checkpoint first, then the other checkpoints and adapters, then base models."""
    return sorted(entries, key=lambda e: (not e.recommended, e.source == "base", e.run is None))


def openai_router(access: ModelAccess, limits, guarded: Callable) -> APIRouter:
    bodies = openai_request_models(limits)
    ChatCompletionRequest, CompletionRequest = bodies.ChatCompletionRequest, bodies.CompletionRequest  # noqa: N806
    router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])
    @router.get("/models", summary="Every servable model: recommended checkpoints first, then the rest, then bases")
    async def list_models() -> dict:
        return {"object": "list", "data": [model_object(e) for e in listing_order(await access.listed())]}

    @router.get("/models/{model_id:path}", summary="One model")
    async def get_model(model_id: str) -> dict:
        entry = next((e for e in await access.listed() if e.name == model_id), None)
        if entry is None:
            raise ApiError(404, f"unknown model {model_id!r} — GET /v1/models lists the available names", "model",
                           "model_not_found")
        return model_object(entry)

    def find(name: str, fits) -> ModelEntry:
        return access.entry(name, fits, elsewhere, listing="GET /v1/models", param="model")

    @router.post("/chat/completions", summary="Answer a conversation (chat models)")
    @guarded
    def chat_completions(body: ChatCompletionRequest):
        entry = find(body.model, is_chat)
        messages = [m.as_turn() for m in body.messages]
        if problem := request_problem(messages):
            raise ApiError(400, f"messages: {problem}", "messages", "invalid_messages")
        return respond(access, entry, body, messages, ChatShape(body.model))

    @router.post("/completions", summary="Continue a prompt (seq2seq and causal models)")
    @guarded
    def completions(body: CompletionRequest):
        entry = find(body.model, is_completion)
        return respond(access, entry, body, one_turn(body.prompt), CompletionShape(body.model))

    return router


def respond(access: ModelAccess, entry: ModelEntry, body, request: Conversation, shape: "ResponseShape"):
    generation, prompt_tokens, _, _ = start_generation(access, entry, lambda loaded: request,
                                                       generation_settings(body), body.n, body.seed, body.stops())
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(stream_events(generation, shape, prompt_tokens, usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    answers: dict[int, Answer] = {}
    try:
        for index, item in generation.answers():
            if isinstance(item, Answer):
                answers[index] = item
    except ValueError as err:  # transformers rejects a combination of settings
        raise ApiError(422, f"cannot generate with these settings: {err}") from err
    done = [answers[i] for i in range(len(answers))]
    return shape.whole(done, usage_of(prompt_tokens, done))


def stream_events(generation: Generation, shape: "ResponseShape", prompt_tokens: int, with_usage: bool
                  ) -> Iterator[str]:
    done: list[Answer] = []
    started: set[int] = set()
    try:
        for index, item in generation.answers():
            if index not in started:
                started.add(index)
                yield sse_event(shape.chunk(index, first=True))
            if isinstance(item, Answer):
                done.append(item)
                yield sse_event(shape.chunk(index, finish_reason=item.finish_reason))
            else:
                yield sse_event(shape.chunk(index, piece=item))
        if with_usage:
            yield sse_event({**shape.chunk_head(), "choices": [], "usage": usage_of(prompt_tokens, done)})
    except Exception as err:  # noqa: BLE001 (the status is sent: the error becomes the stream's last event)
        log.exception("error while streaming %s", shape.model)
        message = f"cannot generate with these settings: {err}" if isinstance(err, ValueError) else \
            f"generation failed ({type(err).__name__}) — the server log has the details"
        yield sse_event({"error": {"message": message, "type": "server_error", "param": None, "code": None}})
    yield SSE_DONE


def usage_of(prompt_tokens: int, answers: list[Answer]) -> dict[str, int]:
    completion = sum(a.completion_tokens for a in answers)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion}


class ResponseShape:
    """The JSON of one response (``whole``) or of its stream's chunks (``chunk``), one id and time for all."""

    object_name = chunk_object = ""
    id_prefix = ""

    def __init__(self, model: str):
        self.model, self.id, self.created = model, f"{self.id_prefix}-{uuid.uuid4().hex[:24]}", int(time.time())

    def chunk_head(self) -> dict[str, Any]:
        return {"id": self.id, "object": self.chunk_object, "created": self.created, "model": self.model,
                "system_fingerprint": None}

    def whole(self, answers: list[Answer], usage: dict[str, int]) -> dict[str, Any]:
        return {"id": self.id, "object": self.object_name, "created": self.created, "model": self.model,
                "system_fingerprint": None, "choices": [self.choice(i, a) for i, a in enumerate(answers)],
                "usage": usage}

    def choice(self, index: int, answer: Answer) -> dict[str, Any]:
        raise NotImplementedError

    def chunk(self, index: int, piece: str | None = None, first: bool = False, finish_reason: str | None = None
              ) -> dict[str, Any]:
        raise NotImplementedError


class ChatShape(ResponseShape):
    object_name, chunk_object, id_prefix = "chat.completion", "chat.completion.chunk", "chatcmpl"

    def choice(self, index: int, answer: Answer) -> dict[str, Any]:
        return {"index": index, "message": {"role": "assistant", "content": answer.text, "refusal": None},
                "logprobs": None, "finish_reason": answer.finish_reason}

    def chunk(self, index, piece=None, first=False, finish_reason=None):
        delta = {"role": "assistant", "content": ""} if first else {} if piece is None else {"content": piece}
        return {**self.chunk_head(), "choices": [{"index": index, "delta": delta, "logprobs": None,
                                                  "finish_reason": finish_reason}]}


class CompletionShape(ResponseShape):
    object_name = chunk_object = "text_completion"
    id_prefix = "cmpl"

    def choice(self, index: int, answer: Answer) -> dict[str, Any]:
        return {"index": index, "text": answer.text, "logprobs": None, "finish_reason": answer.finish_reason}

    def chunk(self, index, piece=None, first=False, finish_reason=None):
        return {**self.chunk_head(), "choices": [{"index": index, "text": piece or "", "logprobs": None,
                                                  "finish_reason": finish_reason}]}
