"""The text sample: a conversation, a list of ``{"role", "content"}`` messages (``system``, ``user``, ``assistant``).

A source → target pair is its one-turn case: ``[user: source, assistant: target]``. Data formats turn records
into conversations (``src/datamodules/formats.py``); a model family's encoder turns a conversation into model
inputs (``src/encoders/``). What a model is asked is everything before the last assistant turn; what it should
answer, the reference its outputs are scored against, is that last assistant turn.

>>> sample = one_turn("Title: Lamp\\nDescription:", "A desk lamp.")
>>> prompt_messages(sample), reference(sample)
([{'role': 'user', 'content': 'Title: Lamp\\nDescription:'}], 'A desk lamp.')
>>> prompt_text(sample)
'Title: Lamp\\nDescription:'
"""

from collections.abc import Sequence
from typing import TypedDict

import datasets

ROLES = ("system", "user", "assistant")
# the Arrow type of a ``messages`` column
MESSAGES_FEATURE = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})


class Message(TypedDict):
    role: str
    content: str


Conversation = list[Message]


def one_turn(source: str, target: str | None = None, system: str | None = None) -> Conversation:
    """A pair as a conversation; without ``target`` it is a request to answer (serving)."""
    messages: Conversation = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": source})
    if target is not None:
        messages.append({"role": "assistant", "content": target})
    return messages


def _last_assistant(messages: Sequence[Message]) -> int | None:
    return next((i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "assistant"), None)


def prompt_messages(messages: Sequence[Message]) -> Conversation:
    """What the model is asked: every message before the last assistant turn; all of a request's (a conversation
    that ends with the user's turn, earlier answers included)."""
    last = _last_assistant(messages)
    return list(messages if last is None or messages[-1]["role"] == "user" else messages[:last])


def reference(messages: Sequence[Message]) -> str:
    """The last assistant turn's content ("" for a request)."""
    last = _last_assistant(messages)
    return "" if last is None else messages[last]["content"]


def prompt_text(messages: Sequence[Message]) -> str:
    """The prompt as one text, for families without a chat template, for retrieval and for reports: its messages'
    contents, one per paragraph (a one-turn sample's is its source, unchanged)."""
    return "\n\n".join(m["content"] for m in prompt_messages(messages))


def request_problem(messages: Sequence[Message]) -> str | None:
    """Why ``messages`` cannot be a request for the next answer (the conversation so far, ending with the user's
    turn), or None."""
    if messages and messages[-1]["role"] != "user":
        return "the last message must be the user's (the conversation so far, waiting for the answer)"
    return order_problem([*messages, {"role": "assistant", "content": ""}])


def order_problem(messages: Sequence[Message]) -> str | None:
    """Why ``messages`` is not a conversation a model can learn from, or None: an unknown role, a system message
    after the start, two user or two assistant turns in a row, no user turn before the first answer, or no
    assistant turn at all."""
    if not messages:
        return "no messages"
    previous = None
    for i, message in enumerate(messages):
        role = message["role"]
        if role not in ROLES:
            return f"unknown role {role!r} (use system, user or assistant)"
        if role == "system" and i:
            return "a system message after the start"
        if role == "assistant" and previous != "user":
            return "an assistant turn that does not follow a user turn"
        if role == "user" and previous == "user":
            return "two user turns in a row"
        previous = role
    if _last_assistant(messages) is None:
        return "no assistant turn"
    return None
