"""Request bodies of the OpenAI-compatible endpoints, bounded by the server's ``limits`` like the native ones.

Fields the OpenAI API defines and this server cannot honour (``logprobs``, ``tools``, penalties other than 0, ...)
are refused by name with a 422, never silently ignored; ``user`` and ``metadata`` are accepted and unused.
"""

from types import SimpleNamespace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from src.serving.schemas import SEED


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


def openai_request_models(limits: Any) -> SimpleNamespace:
    """``ChatCompletionRequest`` and ``CompletionRequest`` bounded by ``limits``."""
    max_chars = int(limits.max_prompt_chars)

    class ChatMessage(BaseModel):
        model_config = ConfigDict(extra="forbid")
        role: Literal["system", "developer", "user", "assistant"]
        content: str | list[ContentPart]
        name: str | None = None

        def as_turn(self) -> dict[str, str]:
            text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
            return {"role": "system" if self.role == "developer" else self.role, "content": text}

        @field_validator("content")
        @classmethod
        def bounded(cls, content):
            text = content if isinstance(content, str) else "".join(p.text for p in content)
            if not text:
                raise ValueError("a message's content is empty")
            if len(text) > max_chars:
                raise ValueError(f"a message is longer than max_prompt_chars={max_chars}")
            return content

    class Common(BaseModel):
        """What both endpoints take. Left out, a setting keeps the model's configured value (``model.generation``);
        ``temperature: 0`` is greedy decoding, above 0 samples."""

        model_config = ConfigDict(extra="forbid")
        model: str = Field(min_length=1, max_length=500, description="a name GET /v1/models lists")
        temperature: float | None = Field(None, ge=0, le=2)
        top_p: float | None = Field(None, gt=0, le=1)
        n: int = Field(1, ge=1, le=int(limits.get("max_choices", 8)))
        seed: int | None = SEED
        stop: str | list[str] | None = Field(None, description="up to 4 strings; the text ends before the first")
        stream: bool = False
        stream_options: StreamOptions | None = None
        frequency_penalty: float = Field(0, description="not supported: 0 only")
        presence_penalty: float = Field(0, description="not supported: 0 only")
        user: str | None = Field(None, max_length=256)
        metadata: dict[str, str] | None = None

        @field_validator("frequency_penalty", "presence_penalty")
        @classmethod
        def no_penalty(cls, value):
            if value:
                raise ValueError("not supported by this server — leave it out (or 0)")
            return value

        @field_validator("stop")
        @classmethod
        def few_stops(cls, stop):
            stops = [stop] if isinstance(stop, str) else list(stop or [])
            if len(stops) > 4 or any(not s or len(s) > 100 for s in stops):
                raise ValueError("give at most 4 stop strings of 1 to 100 characters")
            return stops

        def stops(self) -> list[str]:
            return list(self.stop or [])

        def new_tokens(self) -> int | None:
            raise NotImplementedError

    class ChatCompletionRequest(Common):
        messages: list[ChatMessage] = Field(min_length=1, max_length=int(limits.get("max_messages", 64)))
        max_tokens: int | None = Field(None, ge=1, le=int(limits.max_new_tokens))
        max_completion_tokens: int | None = Field(None, ge=1, le=int(limits.max_new_tokens))

        def new_tokens(self) -> int | None:
            return self.max_completion_tokens or self.max_tokens

    class CompletionRequest(Common):
        prompt: str = Field(min_length=1, max_length=max_chars, description="given to the model as is")
        max_tokens: int | None = Field(None, ge=1, le=int(limits.max_new_tokens))
        echo: bool = Field(False, description="not supported: false only")

        @field_validator("echo")
        @classmethod
        def no_echo(cls, value):
            if value:
                raise ValueError("not supported by this server — leave it out (or false)")
            return value

        def new_tokens(self) -> int | None:
            return self.max_tokens

    return SimpleNamespace(ChatCompletionRequest=ChatCompletionRequest, CompletionRequest=CompletionRequest)


def generation_settings(body) -> dict[str, Any]:
    """The request's sampling fields as ``generate`` settings; one beam always (the OpenAI API has no beams, and
    tokens cannot stream from a beam search).

    >>> class B: temperature, top_p, new_tokens = 0.0, None, (lambda self: 8)
    >>> generation_settings(B())
    {'num_beams': 1, 'do_sample': False, 'max_new_tokens': 8}
    """
    settings: dict[str, Any] = {"num_beams": 1}
    if body.temperature is not None:
        settings.update({"do_sample": False} if body.temperature == 0
                        else {"do_sample": True, "temperature": body.temperature})
    if body.top_p is not None:
        settings["top_p"] = body.top_p
    if body.new_tokens() is not None:
        settings["max_new_tokens"] = body.new_tokens()
    return settings
