"""Request and response bodies. Bounds come from the server's ``limits`` config, so the models are built
by a factory; unknown fields are rejected (a misspelt ``num_image`` is a 422, not silently ignored)."""

from types import SimpleNamespace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SEED = Field(None, ge=0, lt=2**32, description="the same seed gives the same output")


class ModelInfo(BaseModel):
    name: str = Field(description="pass this as model_name")
    kind: str = Field(description="text or image: which endpoint generates with it")
    family: str
    source: str = Field(description="base, checkpoint, last or adapter")
    base: str
    run: str | None = None
    step: int | None = None
    recommended: bool = Field(False, description="the run's best checkpoint by its monitored metric")


class ModelList(BaseModel):
    models: list[ModelInfo]


class ImageResponse(BaseModel):
    model_name: str
    prompt: str
    images: list[str] = Field(description="base64-encoded PNGs")
    seeds: list[int]
    files: list[str] = Field(description="the saved images' names in the server's image directory "
                                         "(empty unless the request said save: true)")


class Health(BaseModel):
    status: str = "ok"
    resident_models: int = Field(description="models in memory now (one being loaded included)")
    max_resident_models: int = Field(description="the most models ever in memory at once")
    max_loaded_models: int
    loads: int
    evictions: int
    loaded_adapters: int = Field(0, description="adapters put on the resident base models (one base serves many)")


class TextResponse(BaseModel):
    model_name: str
    input: str = Field(description="what the model saw: the title in the run's prompt format, or the prompt")
    text: str
    settings: dict[str, Any] = Field(description="the generation settings used")
    seed: int | None = Field(None, description="the seed used when sampling")


def request_models(limits: Any) -> SimpleNamespace:
    """``TextSettings``, ``TextRequest`` and ``ImageRequest`` bounded by ``limits`` (the ``limits`` config)."""
    text_bounds = dict(min_length=1, max_length=int(limits.max_prompt_chars))

    class TextSettings(BaseModel):
        """Generation settings; a field left out keeps the model's configured value (``model.generation``)."""

        model_config = ConfigDict(extra="forbid")
        num_beams: int | None = Field(None, ge=1, le=int(limits.max_num_beams))
        temperature: float | None = Field(None, gt=0, le=10)
        top_p: float | None = Field(None, gt=0, le=1)
        do_sample: bool | None = None
        repetition_penalty: float | None = Field(None, gt=0, le=10)
        no_repeat_ngram_size: int | None = Field(None, ge=0, le=20)
        max_new_tokens: int | None = Field(None, ge=1, le=int(limits.max_new_tokens))

    class Message(BaseModel):
        model_config = ConfigDict(extra="forbid")
        role: Literal["system", "user", "assistant"]
        content: str = Field(**text_bounds)

    class TextRequest(TextSettings):
        """Exactly one of ``title`` (formatted with the run's prompt template, as in training), ``prompt`` (given
        to the model as is) or ``messages`` (the conversation so far, ending with the user's turn: a chat model
        reads it through its chat template)."""

        model_name: str = Field(min_length=1, max_length=500)
        title: str | None = Field(None, **text_bounds)
        prompt: str | None = Field(None, **text_bounds)
        messages: list[Message] | None = Field(None, min_length=1, max_length=int(limits.get("max_messages", 64)))
        seed: int | None = SEED
        stream: bool = Field(False, description="server-sent events: {\"text\": piece} as tokens come, then "
                                                "{\"done\": <the response>} (one beam only)")

        @model_validator(mode="after")
        def one_input(self):
            if sum(x is not None for x in (self.title, self.prompt, self.messages)) != 1:
                raise ValueError("give exactly one of 'title' (formatted as in training), 'prompt' (used as is) or "
                                 "'messages' (the conversation so far)")
            return self

    class ImageRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        model_name: str = Field(min_length=1, max_length=500)
        prompt: str = Field(**text_bounds)
        num_images: int = Field(1, ge=1, le=int(limits.max_num_images))
        num_inference_steps: int | None = Field(None, ge=1, le=int(limits.max_inference_steps),
                                                description="default: the model's configured value")
        guidance_scale: float | None = Field(None, ge=0, le=float(limits.max_guidance_scale),
                                             description="default: the model's configured value")
        seed: int | None = Field(None, ge=0, lt=2**32 - int(limits.max_num_images),
                                 description="image i uses seed + i; the same seed gives the same images")
        save: bool = Field(False, description="also keep the images in the server's image directory (the oldest "
                                              "saved images are deleted past its cap)")

    return SimpleNamespace(TextSettings=TextSettings, TextRequest=TextRequest, ImageRequest=ImageRequest)
