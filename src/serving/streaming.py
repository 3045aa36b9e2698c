"""One answer generated in a thread of its own, its text read piece by piece as the tokens come (transformers'
``TextIteratorStreamer``), cut at the request's stop strings.

A streamed answer and a plain one are the same code path (the plain one joins the pieces), so at temperature 0
they are the same text. The thread owns what the request holds (the model's lease and lock, in an ``ExitStack``)
and closes it when its last answer is done: a client that goes away mid-stream never keeps a model locked longer
than that generation (``cancel`` stops it at the next token).
"""

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from transformers import StoppingCriteria, TextIteratorStreamer

from src.conversation import Conversation
from src.errors import UserError
from src.serving import generation as gen
from src.serving.access import ApiError, ModelAccess, left
from src.serving.loading import LoadedModel, ModelBusy
from src.serving.registry import ModelEntry


SSE_DONE = "data: [DONE]\n\n"  # the OpenAI API's last event


def sse_event(payload: dict) -> str:
    """One server-sent event carrying ``payload`` as JSON."""
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class StopFilter:
    """Text pieces in, the text before the first stop string out; a piece that may begin a stop string is held back
    until the next one tells.

    >>> f = StopFilter(["\\nUser:"])
    >>> [f.feed("Hello"), f.feed(" there\\nUs"), f.feed("er: hi"), f.stopped]
    ['Hello', ' there', '', True]
    """

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending, self.stopped = "", False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        text = self.pending + piece
        cuts = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if cuts:
            self.stopped, self.pending = True, ""
            return text[:min(cuts)]
        keep = max((n for s in self.stops for n in range(1, min(len(s), len(text) + 1))
                    if text.endswith(s[:n])), default=0)
        self.pending = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def flush(self) -> str:
        text, self.pending = ("" if self.stopped else self.pending), ""
        return text


class Cancelled(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


@dataclass
class Answer:
    """One finished answer: its text (before any stop string), why it ended and its token count."""

    text: str
    finish_reason: str  # "stop" (an end token or a stop string) or "length" (max tokens)
    completion_tokens: int


class _Streamer(TextIteratorStreamer):
    """A ``TextIteratorStreamer`` whose reader also learns of a failed generation (else it would wait forever)."""

    failed: BaseException | None = None

    def fail(self, err: BaseException) -> None:
        self.failed = err
        self.text_queue.put(self.stop_signal)


def count_completion(ids: list[int], end_ids: set[int], pad_id: int | None) -> tuple[int, bool]:
    """(tokens generated, whether an end token ended them): up to the first end token, which counts.

    >>> count_completion([5, 6, 2, 0, 0], {2}, 0), count_completion([5, 6, 7], {2}, 0)
    ((3, True), (3, False))
    """
    for i, token in enumerate(ids):
        if token in end_ids:
            return i + 1, True
        if token == pad_id:
            return i, True
    return len(ids), False


class Generation:
    """``n`` answers to one request, generated one after another in a thread that owns ``stack`` (the lease and
    locks, already held) and closes it at the end. ``answers()`` yields ``(index, piece)`` as text arrives and
    ``(index, Answer)`` when each ends."""

    def __init__(self, loaded: LoadedModel, batch: dict[str, Any], settings: dict[str, Any], seeds: list[int | None],
                 stops: list[str], stack: ExitStack):
        self.loaded, self.batch, self.settings, self.seeds, self.stops = loaded, batch, settings, seeds, stops
        self.stack, self.cancel = stack, threading.Event()
        tokenizer = loaded.module.tokenizer
        self.streamers = [_Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True) for _ in seeds]
        self.results: list[list[int] | None] = [None] * len(seeds)
        # set once answer i's tokens are in ``results`` (or it failed): the streamer ends inside generate, before
        # generate returns them
        self.finished = [threading.Event() for _ in seeds]
        self.thread = threading.Thread(target=self._run, daemon=True, name="generation")

    def start(self) -> "Generation":
        self.thread.start()
        return self

    def _run(self) -> None:
        module = self.loaded.module
        try:
            with self.stack, self.loaded.adapters():
                for i, (seed, streamer) in enumerate(zip(self.seeds, self.streamers)):
                    if self.cancel.is_set():
                        streamer.fail(RuntimeError("cancelled"))
                        self.finished[i].set()
                        continue
                    extra = {"streamer": streamer, "stopping_criteria": [Cancelled(self.cancel)]}
                    if self.stops:  # generation halts at a stop string; the text is cut before it (StopFilter)
                        extra.update(stop_strings=self.stops, tokenizer=module.tokenizer)
                    try:
                        with gen.seeded(seed):
                            out = module.generate_tokens(self.batch, {**self.settings, **extra})
                        self.results[i] = out[0].tolist()
                    except BaseException as err:  # noqa: BLE001 (the reader re-raises it)
                        streamer.fail(err)
                    self.finished[i].set()
        except BaseException as err:  # noqa: BLE001 (entering the adapters failed: every reader learns it)
            for streamer, finished in zip(self.streamers, self.finished):
                if not finished.is_set():
                    streamer.fail(err)
                    finished.set()

    def answers(self) -> Iterator[tuple[int, str | Answer]]:
        end_ids, pad_id = set(self.loaded.module.end_token_ids()), self.loaded.module.tokenizer.pad_token_id
        try:
            for i, streamer in enumerate(self.streamers):
                cut, text = StopFilter(self.stops), []
                for piece in streamer:
                    if (shown := cut.feed(piece)):
                        text.append(shown)
                        yield i, shown
                self.finished[i].wait()
                if streamer.failed is not None:
                    raise streamer.failed
                if (rest := cut.flush()):
                    text.append(rest)
                    yield i, rest
                tokens, ended = count_completion(self.results[i], end_ids, pad_id)
                yield i, Answer("".join(text), "stop" if ended or cut.stopped else "length", tokens)
        finally:
            self.cancel.set()  # a reader that stops early (a client gone) ends the generation at its next token


def start_generation(access: ModelAccess, entry: ModelEntry, request_of: Callable[[LoadedModel], Conversation],
                     settings: dict[str, Any], n: int = 1, seed: int | None = None, stops: list[str] | None = None
                     ) -> tuple[Generation, int, LoadedModel, Conversation]:
    """``n`` answers to ``request_of(model)`` generating in their own thread, which holds the model until they end;
    and the prompt's token count. Unknown or busy models and requests the encoder rejects fail here, before any
    byte of a response is sent. Sampled answers use ``seed + i`` (a fresh seed each without one)."""
    deadline = access.deadline()
    with ExitStack() as stack:
        loaded = access.lease(stack, entry, deadline)
        used = gen.text_settings(loaded, settings)
        sampling = bool(used.get("do_sample"))
        if used.get("num_beams", 1) > 1:
            raise ApiError(422, "tokens cannot stream from a beam search — set num_beams=1", "num_beams")
        seeds = [None if not sampling else gen.new_seed() if seed is None else seed + i for i in range(n)]
        try:
            request = request_of(loaded)
            batch = gen.to_device(loaded.encoder.prompt_batch([request]), loaded.device)
        except (UserError, ValueError) as err:  # e.g. an unknown tarot card
            raise ApiError(422, str(err)) from err
        try:
            stack.enter_context(gen.holding(gen.locks_for(loaded, sampling), left(deadline)))
        except ModelBusy as err:
            raise access.busy(entry.name, str(err)) from None
        prompt_tokens = int(loaded.module.prompt_tokens(batch)[0])
        generation = Generation(loaded, batch, settings, seeds, list(stops or []), stack.pop_all()).start()
        return generation, prompt_tokens, loaded, request
