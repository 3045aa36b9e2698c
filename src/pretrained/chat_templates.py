"""Chat templates lorafit writes itself: ChatML, the format of Qwen 2.5 and SmolLM2 (``<|im_start|>role\\n...
<|im_end|>``), for models whose tokenizer has none (the tiny offline chat model, stand-in tokenizers).

``model.chat_template`` may name one of these (``chatml``), give a Jinja template string, or a path to a file
holding one; null keeps the tokenizer's own.
"""

from pathlib import Path

CHATML = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
TEMPLATES = {"chatml": CHATML}


def resolve_template(value: str | None) -> str | None:
    """A named template, the contents of a template file, or the template string itself; None stays None."""
    if not value:
        return None
    if value in TEMPLATES:
        return TEMPLATES[value]
    if "{" not in value and Path(value).expanduser().is_file():
        return Path(value).expanduser().read_text(encoding="utf-8")
    return value
