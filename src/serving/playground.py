"""``playground.py``: type a title, read the generated description; change generation settings as you go.

The loop reads lines from a stream and writes to another, so it runs the same in a terminal and
under a test feeding stdin. Settings are validated by the same model as the API's request bodies.
"""

import sys
from collections.abc import Callable
from typing import Any, TextIO

from omegaconf import DictConfig
from pydantic import ValidationError

from src.conversation import one_turn, prompt_text
from src.errors import UserError
from src.serving import generation as gen
from src.serving.app import validation_message
from src.serving.loading import load_from_command_line
from src.serving.schemas import request_models

HELP = """commands:
  <text>                 generate from a title (or a card, for tarot), in the run's prompt format
  :raw <prompt>          generate from a prompt given to the model as is (\\n for a newline)
  :set key=value ...     change settings: {names}
  :seed <n>              seed for sampling (do_sample=true); :seed none draws a new one each time
  :reset                 back to the model's configured settings
  :show                  the settings in use
  :help                  this text
  :quit                  leave (Ctrl+D too)"""

# (input, raw?, settings, seed) -> (what the model saw, generated text, seed used)
Generate = Callable[[str, bool, dict[str, Any], int | None], tuple[str, str, int | None]]


class Playground:
    def __init__(self, generate: Generate, defaults: dict[str, Any], settings_model, stdin: TextIO,
                 stdout: TextIO, seed: int | None = None):
        self.generate, self.defaults, self.settings_model = generate, dict(defaults), settings_model
        self.stdin, self.stdout = stdin, stdout
        self.overrides: dict[str, Any] = {}
        self.seed = seed

    def say(self, text: str = "") -> None:
        print(text, file=self.stdout, flush=True)

    def read(self) -> str | None:
        if self.stdin.isatty():
            import readline  # noqa: F401  (line editing and history for input())

            try:
                return input("> ")
            except EOFError:
                return None
        self.stdout.write("> ")
        self.stdout.flush()
        line = self.stdin.readline()
        return line.rstrip("\n") if line else None

    def settings(self) -> dict[str, Any]:
        return {**self.defaults, **self.overrides}

    def run(self) -> None:
        self.say("type a title and press Enter; :help lists the commands")
        while (line := self.read()) is not None:
            line = line.strip()
            if not line:
                continue
            if line.startswith(":"):
                command, _, arg = line[1:].partition(" ")
                if command in ("quit", "q", "exit"):
                    break
                self.command(command, arg.strip())
            else:
                self.respond(line, raw=False)
        self.say("bye")

    def command(self, command: str, arg: str) -> None:
        if command == "set":
            self.set(arg)
        elif command == "raw" and arg:
            self.respond(arg.replace("\\n", "\n"), raw=True)  # a terminal line cannot hold a newline
        elif command == "seed":
            self.set_seed(arg)
        elif command == "reset":
            self.overrides = {}
            self.show()
        elif command == "show":
            self.show()
        elif command == "help":
            self.say(HELP.format(names=", ".join(gen.TEXT_SETTINGS)))
        else:
            self.say(f"unknown command :{command} — :help lists the commands")

    def set(self, arg: str) -> None:
        pairs = [p.partition("=") for p in arg.split()]
        if not pairs or any(not sep or not key for key, sep, _ in pairs):
            self.say("usage: :set key=value [key=value ...], e.g. :set temperature=0.7 do_sample=true")
            return
        unknown = [key for key, _, _ in pairs if key not in gen.TEXT_SETTINGS]
        if unknown:
            self.say(f"unknown setting {unknown[0]} — one of: {', '.join(gen.TEXT_SETTINGS)}")
            return
        try:
            checked = self.settings_model(**{**self.overrides, **{k: v for k, _, v in pairs}})
        except ValidationError as err:
            self.say(f"not changed: {validation_message(err.errors())}")
            return
        self.overrides = checked.model_dump(exclude_none=True)
        self.show()

    def set_seed(self, arg: str) -> None:
        if arg.lower() in ("none", "null", ""):
            self.seed = None
        elif arg.isdigit():
            self.seed = int(arg)
        else:
            self.say("usage: :seed <non-negative integer> or :seed none")
            return
        self.say(f"seed={self.seed}")

    def show(self) -> None:
        self.say(" ".join(f"{k}={v}" for k, v in self.settings().items()) + f" seed={self.seed}")

    def respond(self, text: str, raw: bool) -> None:
        try:
            source, output, seed = self.generate(text, raw, self.overrides, self.seed)
        except UserError as err:  # e.g. an unknown tarot card
            self.say(f"error: {err}")
            return
        except ValueError as err:  # a combination generate() rejects
            self.say(f"error: cannot generate with these settings: {err}")
            return
        self.say(output if seed is None or self.seed is not None else f"{output}\n(seed {seed})")


def playground(cfg: DictConfig, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
    target, loaded = load_from_command_line(cfg)
    if loaded.kind != "text":
        raise UserError(f"ckpt={cfg.ckpt} is an image model — the playground is for text models; "
                        "use python generate.py or the API's POST /api/generate for images")

    def generate(text: str, raw: bool, settings: dict[str, Any], seed: int | None):
        request = one_turn(text) if raw else loaded.request(text)
        (output,), used = gen.generate_texts(loaded, [request], settings, seed)
        return prompt_text(request), output, used

    print(f"playground: {target.path or 'the base model'} ({target.kind}, {loaded.module.family_name})", file=stdout)
    Playground(generate, gen.text_settings(loaded), request_models(cfg.limits).TextSettings, stdin, stdout,
               seed=cfg.sampling_seed).run()
