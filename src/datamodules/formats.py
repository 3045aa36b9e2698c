"""Data formats: how the records of a file become conversations (``src/conversation.py``), and how what a user
types becomes the request a model of that data is asked.

A format names the record fields it reads (``fields``: field → type, text or messages) and turns a batch of
cleaned records into samples (``samples``: ``messages`` per record, or why a record is skipped). ``request`` is the
same formatting for one input typed by a user (serving, generate.py, the playground), so a request is formatted
exactly as the training prompts were, without reading any data.

Formats are registered by name (``register_format``, or a package's entry points in the group
``lorafit.formats``); ``data=pairs`` (and the datamodules built on it) pick one with ``data.format``. A format class
is built by ``from_config(columns, prompt_template, system_prompt)`` from the data config: ``columns`` maps the
format's ``roles`` to the file's columns.
"""

import string
import unicodedata
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar, Protocol

from src.conversation import Conversation, one_turn, order_problem
from src.dataio.cleaning import clean_text
from src.dataio.fields import OPTIONAL_TEXT, TEXT
from src.dataio.fields import messages as messages_type
from src.errors import UserError


class RecordFormat(Protocol):
    roles: ClassVar[tuple[str, ...]]  # what data.columns may map (besides id and group)
    can_skip: ClassVar[bool]  # whether ``samples`` may skip records that reading kept

    @classmethod
    def from_config(cls, columns: dict[str, Any], prompt_template: str, system_prompt: str | None) -> "RecordFormat":
        """The format for a data config (``columns`` may leave roles out: their defaults apply)."""

    def role_columns(self) -> dict[str, str]:
        """Each role's column in the file."""

    def fields(self) -> dict[str, str]:
        """The record keys read, each with its type (``src.dataio.fields``: text, optional text, messages)."""

    def samples(self, batch: dict[str, list]) -> tuple[list[Conversation | None], list[str]]:
        """The conversation of each cleaned record of ``batch`` (None when skipped) and its skip reason ("")."""

    def request(self, text: str) -> Conversation:
        """What a user types, formatted as the training prompts were (no answer)."""


def fill_template(template: str, placeholder: str, source: str) -> str:
    """``{source}`` (or ``{<the source column>}``) in ``template`` replaced by the source text.

    >>> fill_template("Question: {question}\\nAnswer:", "question", "Why?")
    'Question: Why?\\nAnswer:'
    """
    return template.format(**{"source": source, placeholder: source})


def check_template(template: str, placeholder: str) -> None:
    """One line when ``template`` uses another placeholder than ``{source}`` / ``{<placeholder>}``, or none."""
    allowed = {"source", placeholder}
    names = f"'{{{placeholder}}}'" + (" or '{source}'" if placeholder != "source" else "")
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise UserError(f"data.prompt_template={template!r}: {err} — write a literal brace as {{{{ or }}}}") from None
    if used - allowed:
        raise UserError(f"data.prompt_template={template!r} uses {{{sorted(used - allowed)[0]}}}: its "
                        f"only placeholder is {names} (write a literal brace as {{{{ or }}}})")
    if not used:
        raise UserError(f"data.prompt_template must contain {names}")


@dataclass(frozen=True)
class PairFormat:
    """A source column and a target column: ``[user: template(source), assistant: target]`` (after an optional
    system prompt)."""

    source: str
    target: str
    prompt_template: str = "{source}"
    system_prompt: str | None = None
    roles: ClassVar[tuple[str, ...]] = ("source", "target")
    can_skip: ClassVar[bool] = False

    @classmethod
    def from_config(cls, columns: dict[str, Any], prompt_template: str = "{source}",
                    system_prompt: str | None = None) -> "PairFormat":
        source, target = columns.get("source") or "source", columns.get("target") or "target"
        if source == target:
            raise UserError(f"data.columns.source={source!r} and data.columns.target={target!r}: name two different "
                            "columns of your file")
        return cls(source, target, prompt_template, system_prompt)

    def __post_init__(self):
        check_template(self.prompt_template, self.source)

    def role_columns(self) -> dict[str, str]:
        return {"source": self.source, "target": self.target}

    def fields(self) -> dict[str, str]:
        return {self.source: TEXT, self.target: TEXT}

    def prompt(self, source: str) -> str:
        return fill_template(self.prompt_template, self.source, source)

    def samples(self, batch: dict[str, list]) -> tuple[list[Conversation | None], list[str]]:
        messages = [one_turn(self.prompt(s), t, self.system_prompt) for s, t in zip(batch[self.source],
                                                                                    batch[self.target])]
        return messages, [""] * len(messages)

    def request(self, text: str) -> Conversation:
        """What a user types, cleaned like the training sources and put in the prompt template."""
        return one_turn(self.prompt(clean_text(text)), system=self.system_prompt)


# -- tarot readings: a card (and a question) asked for a reading ---------------------------------------------------
MAJOR_ARCANA = (
    "O Louco", "O Mago", "A Sacerdotisa", "A Imperatriz", "O Imperador", "O Hierofante", "Os Enamorados",
    "O Carro", "A Força", "O Eremita", "A Roda da Fortuna", "A Justiça", "O Enforcado", "A Morte", "A Temperança",
    "O Diabo", "A Torre", "A Estrela", "A Lua", "O Sol", "O Julgamento", "O Mundo",
)


def card_key(name: str) -> str:
    """Case-, accent- and space-insensitive key, so "a forca" and "A Força" are the same card.

    >>> card_key("  A   FORÇA ") == card_key("a forca")
    True
    """
    decomposed = unicodedata.normalize("NFKD", name.casefold())
    return " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).split())


CANONICAL = {card_key(name): name for name in MAJOR_ARCANA}


@dataclass(frozen=True)
class TarotFormat:
    """A card and an optional question in the prompt template (``{card}``, ``{question}``), the reading as the
    answer."""

    prompt_template: str
    default_question: str

    def __post_init__(self):
        if "{card}" not in self.prompt_template:
            raise UserError("data.prompt_template must contain '{card}'")

    def prompt(self, card: str, question: str) -> str:
        """The model input for a card and question (training, evaluation and serving all format it here)."""
        return self.prompt_template.format(card=card, question=question or self.default_question)

    def samples(self, cards: list[str], questions: list[str], readings: list[str]) -> list[Conversation]:
        return [one_turn(self.prompt(c, q), r) for c, q, r in zip(cards, questions, readings)]

    def request(self, text: str) -> Conversation:
        """``"<card>"`` or ``"<card>: <question>"`` (any case, accents optional) as the model sees it."""
        card, _, question = text.partition(":")
        canonical = CANONICAL.get(card_key(card))
        if canonical is None:
            raise UserError(f"unknown card {card.strip()!r}: type one of the 22 Major Arcana (e.g. 'A Torre'), "
                            "optionally followed by ': <question>'")
        return one_turn(self.prompt(canonical, " ".join(question.split())))


# -- conversations: OpenAI messages, ShareGPT, Alpaca -------------------------------------------------------------
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def conversation_problem(messages: Conversation) -> str:
    """The skip reason of a conversation a model cannot learn from ("" when it can): roles out of order (see
    ``src.conversation.order_problem``) or an assistant turn with nothing in it."""
    if order_problem(messages):
        return "bad_roles"
    if any(m["role"] == "assistant" and not m["content"] for m in messages):
        return "empty:assistant"
    return ""


def _with_system(messages: Conversation, system_prompt: str | None) -> Conversation:
    if system_prompt and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


@dataclass(frozen=True)
class MessagesFormat:
    """OpenAI's chat layout: a ``messages`` list of ``{"role", "content"}`` (extra keys such as ``name`` are
    ignored). ``system_prompt`` starts the conversations that have no system message of their own."""

    messages: str = "messages"
    system_prompt: str | None = None
    roles: ClassVar[tuple[str, ...]] = ("messages",)
    can_skip: ClassVar[bool] = True
    role_keys: ClassVar[tuple[str, str]] = ("role", "content")
    role_names: ClassVar[dict[str, str] | None] = None  # the file's role names → system / user / assistant

    @classmethod
    def from_config(cls, columns: dict[str, Any], prompt_template: str = "{source}",
                    system_prompt: str | None = None) -> "MessagesFormat":
        return cls(columns.get(cls.roles[0]) or cls.roles[0], system_prompt)

    def role_columns(self) -> dict[str, str]:
        return {self.roles[0]: self.messages}

    def fields(self) -> dict[str, str]:
        return {self.messages: messages_type(*self.role_keys)}

    def _conversation(self, raw: list[dict]) -> Conversation:
        names = self.role_names
        return [{"role": names.get(m["role"], m["role"]) if names else m["role"], "content": m["content"]} for m in raw]

    def samples(self, batch: dict[str, list]) -> tuple[list[Conversation | None], list[str]]:
        conversations = [_with_system(self._conversation(raw), self.system_prompt) for raw in batch[self.messages]]
        reasons = [conversation_problem(c) for c in conversations]
        return [None if r else c for c, r in zip(conversations, reasons)], reasons

    def request(self, text: str) -> Conversation:
        return one_turn(text, system=self.system_prompt)


@dataclass(frozen=True)
class ShareGPTFormat(MessagesFormat):
    """ShareGPT: a ``conversations`` list of ``{"from", "value"}``, ``from`` being human, gpt or system."""

    messages: str = "conversations"
    roles: ClassVar[tuple[str, ...]] = ("conversations",)
    role_keys: ClassVar[tuple[str, str]] = ("from", "value")
    role_names: ClassVar[dict[str, str] | None] = SHAREGPT_ROLES


@dataclass(frozen=True)
class AlpacaFormat:
    """Alpaca: ``instruction`` (with an optional ``input`` after it) asked, ``output`` answered."""

    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"
    system_prompt: str | None = None
    roles: ClassVar[tuple[str, ...]] = ("instruction", "input", "output")
    can_skip: ClassVar[bool] = False

    @classmethod
    def from_config(cls, columns: dict[str, Any], prompt_template: str = "{source}",
                    system_prompt: str | None = None) -> "AlpacaFormat":
        return cls(*(columns.get(role) or role for role in cls.roles), system_prompt)

    def role_columns(self) -> dict[str, str]:
        return {"instruction": self.instruction, "input": self.input, "output": self.output}

    def fields(self) -> dict[str, str]:
        return {self.instruction: TEXT, self.input: OPTIONAL_TEXT, self.output: TEXT}

    @staticmethod
    def question(instruction: str, extra: str) -> str:
        return f"{instruction}\n\n{extra}" if extra else instruction

    def samples(self, batch: dict[str, list]) -> tuple[list[Conversation | None], list[str]]:
        conversations = [one_turn(self.question(i, x), o, self.system_prompt)
                         for i, x, o in zip(batch[self.instruction], batch[self.input], batch[self.output])]
        return conversations, [""] * len(conversations)

    def request(self, text: str) -> Conversation:
        return one_turn(text, system=self.system_prompt)


FORMATS: dict[str, type] = {"pairs": PairFormat, "openai": MessagesFormat, "sharegpt": ShareGPTFormat,
                            "alpaca": AlpacaFormat}
FORMAT_ENTRY_POINTS = "lorafit.formats"


def register_format(name: str, cls: type) -> None:
    """Make ``data.format=<name>`` read records with ``cls`` (a ``RecordFormat``)."""
    known = FORMATS.get(name)
    if known is not None and _qualified(known) != _qualified(cls):  # the same class imported twice is one class
        raise ValueError(f"a data format named {name!r} is registered already")
    FORMATS[name] = cls


def _qualified(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def format_class(name: str) -> type:
    if name not in FORMATS:
        for entry in entry_points(group=FORMAT_ENTRY_POINTS, name=name):
            register_format(name, entry.load())
    if name not in FORMATS:
        raise UserError(f"data.format={name!r} is not a data format — use one of {', '.join(FORMATS)}")
    return FORMATS[name]
