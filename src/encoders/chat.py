"""Instruct decoder LLMs: a conversation through the model's chat template (``apply_chat_template``) is one
sequence; labels cover the assistant turns only (``train_on``).

The template is rendered to text once per conversation and tokenized with character offsets. Each assistant
turn's characters are the difference between the rendering of the conversation up to that turn with the
generation prompt and the rendering through that turn, so the end-of-turn token the template writes (Qwen's and
SmolLM's ``<|im_end|>``, Llama 3's ``<|eot_id|>``, Gemma's ``<end_of_turn>``) is a label too: a fine-tuned model
learns to stop. A template that does not render a conversation as a prefix of its continuation is refused.

``train_on``: ``assistant`` (every assistant turn), ``last_assistant`` (only the answer evaluation scores), or
``all`` (every token). A conversation longer than ``max_length`` tokens after templating is not truncated (a
truncated answer teaches a model to stop mid-sentence): ``skip`` names it, and the datamodule drops and counts it.
"""

import hashlib
from typing import Any

from src.conversation import Conversation, prompt_messages
from src.encoders.common import decoder_collate, label_tokens, request_batch
from src.errors import UserError

TRAIN_ON = ("assistant", "last_assistant", "all")
TOO_LONG = "too_long:tokens"


class ChatEncoder:
    packable = True

    def __init__(self, tokenizer, max_source_length: int, max_target_length: int, max_length: int | None = None,
                 train_on: str = "assistant", chat_template: str | None = None):
        if train_on not in TRAIN_ON:
            raise UserError(f"model.train_on={train_on!r}: use one of {', '.join(TRAIN_ON)}")
        self.template = chat_template or getattr(tokenizer, "chat_template", None)
        if not self.template:
            raise UserError(f"tokenizer {tokenizer.name_or_path} has no chat template — use an instruct model, or set "
                            "model.chat_template (a Jinja template string, or chatml)")
        if tokenizer.eos_token_id is None and tokenizer.pad_token_id is None:
            raise UserError(f"tokenizer {tokenizer.name_or_path} has neither an eos nor a pad token to pad with")
        self.tokenizer = tokenizer
        self.max_length = int(max_length or max_source_length + max_target_length)
        self.max_prompt_length = max_source_length
        self.train_on = train_on
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def fingerprint(self) -> str:
        template = hashlib.sha256(self.template.encode()).hexdigest()[:12]  # hash() differs between processes
        return f"chat|{self.tokenizer.name_or_path}|{len(self.tokenizer)}|{self.max_length}|{self.train_on}|{template}"

    def longest_row(self, packing: bool) -> int:
        return self.max_length  # longer conversations are refused, not truncated

    def render(self, messages: Conversation, generation_prompt: bool = False) -> str:
        try:
            return self.tokenizer.apply_chat_template(list(messages), chat_template=self.template, tokenize=False,
                                                      add_generation_prompt=generation_prompt)
        except Exception as err:  # a template that refuses a role (Gemma 2 has no system role), a Jinja error
            raise UserError(f"the chat template of {self.tokenizer.name_or_path} cannot render this conversation: "
                            f"{str(err).splitlines()[0]} — drop the system prompt (data.system_prompt=null) or set "
                            "model.chat_template") from None

    def answer_spans(self, messages: Conversation, text: str) -> list[tuple[int, int]]:
        """Character spans of the assistant turns ``train_on`` trains on, in ``text`` (the whole rendering)."""
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if self.train_on == "last_assistant":
            turns = turns[-1:]
        spans = []
        for i in turns:
            before = self.render(messages[:i], generation_prompt=True)
            through = self.render(messages[:i + 1])
            if not (text.startswith(through) and through.startswith(before)):
                raise UserError(f"the chat template of {self.tokenizer.name_or_path} does not render a conversation "
                                "as the start of its continuation, so its answers cannot be told from its prompts — "
                                "set model.chat_template to one that does (e.g. chatml)")
            spans.append((len(before), len(through)))
        return spans

    def encode(self, messages: Conversation) -> tuple[list[int], list[int]]:
        """Token ids of the whole conversation and their labels (-100 outside the trained turns)."""
        text = self.render(messages)
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = encoded["input_ids"]
        if self.train_on == "all":
            return ids, list(ids)
        spans = self.answer_spans(messages, text)
        labels = [token if any(a <= start < b for a, b in spans) else -100
                  for token, (start, _) in zip(ids, encoded["offset_mapping"])]
        return ids, labels

    def prompt_ids(self, messages: Conversation) -> list[int]:
        """The generation prompt: everything before the last answer, with the template's assistant header. Long
        prompts lose their beginning (the question is at their end)."""
        ids = self.tokenizer(self.render(prompt_messages(messages), generation_prompt=True),
                             add_special_tokens=False)["input_ids"]
        return ids[-self.max_prompt_length:]

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"input_ids": [], "labels": [], "prompt_ids": [], "length": [], "label_tokens": [],
                                "skip": []}
        for messages in batch["messages"]:
            ids, labels = self.encode(messages)
            prompt = self.prompt_ids(messages)
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["prompt_ids"].append(prompt)
            out["length"].append(len(prompt))
            out["label_tokens"].append(label_tokens(labels, shifted=True))
            out["skip"].append(TOO_LONG if len(ids) > self.max_length else "")
        return out

    def lengths(self, batch: dict[str, list]) -> tuple[list[int], list[int]]:
        prompts, answers = [], []
        for messages in batch["messages"]:
            ids, labels = self.encode(messages)
            answer = sum(1 for label in labels if label != -100)
            prompts.append(len(ids) - answer)
            answers.append(answer)
        return prompts, answers

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        return decoder_collate(features, self.pad_id)

    def prompt_batch(self, requests) -> dict[str, Any]:
        return request_batch(self, requests)

    def stop_token_ids(self) -> list[int]:
        """The template's end-of-turn token (found by rendering a one-turn conversation) and the eos token: what
        ends a generated answer."""
        probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "lorafit"}]
        text = self.render(probe)
        end = text.rfind("lorafit") + len("lorafit")
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        special = set(self.tokenizer.all_special_ids) | set(getattr(self.tokenizer, "added_tokens_decoder", {}))
        after = [t for t, (start, _) in zip(encoded["input_ids"], encoded["offset_mapping"]) if start >= end]
        stops = [t for t in after[:2] if t in special][:1]
        if self.tokenizer.eos_token_id is not None:
            stops.append(self.tokenizer.eos_token_id)
        return list(dict.fromkeys(stops))
