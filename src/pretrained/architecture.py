"""Real architectures without weights: a model's published config, and the model built from it on "meta".

``architecture_config`` finds a model's config wherever it can, offline first: a local directory, the
Hugging Face cache, the hub (skipped when ``HF_HUB_OFFLINE=1``), and last the copies bundled under
``architectures/`` for the reference models, so a preflight can size a run on a machine with no hub.
A family's ``meta_model`` (``src/families``) builds the real architecture from it on the meta device: about a
second, no memory, and exact parameter counts for the base model and for a LoRA adapter on it.
"""

import json
from functools import cache
from pathlib import Path

import torch
from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.utils import get_session
from transformers import CONFIG_MAPPING

from src.errors import UserError
from src.pretrained.hub import hub_offline

BUNDLED_DIR = Path(__file__).parent / "architectures"
# the reference Stable Diffusion 1.5 moved from runwayml/ to its own organisation; both names mean one model
ALIASES = {"runwayml/stable-diffusion-v1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5"}
# a diffusers pipeline keeps its scheduler and tokenizer settings under their own file names
CONFIG_FILES = {"scheduler": ["scheduler_config.json"], "tokenizer": ["tokenizer_config.json"]}
ROOT_CONFIG_FILES = ["config.json", "model_index.json"]  # a transformers model, or a diffusers pipeline
HUB_TIMEOUT_S = 5.0


def _config_files(subfolder: str | None) -> list[str]:
    if subfolder is None:
        return ROOT_CONFIG_FILES
    return CONFIG_FILES.get(Path(subfolder).name, ["config.json"])


def _read(path: Path | str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _bundled_dir(hub_id: str) -> Path | None:
    """The bundled copy for a hub id (hub ids are case-insensitive), or None."""
    hub_id = ALIASES.get(hub_id.lower(), hub_id)
    wanted = hub_id.replace("/", "--").lower()
    for path in BUNDLED_DIR.iterdir() if BUNDLED_DIR.is_dir() else ():
        if path.is_dir() and path.name.lower() == wanted:
            return path
    return None


def bundled_config(hub_id: str, subfolder: str | None = None) -> dict | None:
    """The bundled published config of ``hub_id`` (``subfolder`` for a pipeline part), or None."""
    directory = _bundled_dir(hub_id)
    if directory is None:
        return None
    base = directory / subfolder if subfolder else directory
    for name in _config_files(subfolder):
        if (base / name).is_file():
            return _read(base / name)
    return None


def _from_cache(hub_id: str, subfolder: str | None) -> dict | None:
    for name in _config_files(subfolder):
        try:
            path = try_to_load_from_cache(hub_id, f"{subfolder}/{name}" if subfolder else name)
        except Exception:  # not a valid repo id, an unreadable cache: nothing cached for it
            return None
        if isinstance(path, str):
            return _read(path)
    return None


@cache
def _hub_reachable() -> bool:
    """One short request, once per process: hf_hub_download retries with backoff (~45 s) when the hub is down."""
    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_TIMEOUT_S)
    except Exception:
        return False
    return True


def _from_hub(hub_id: str, subfolder: str | None) -> dict | None:
    if not _hub_reachable():
        return None
    for name in _config_files(subfolder):
        try:
            return _read(hf_hub_download(hub_id, name, subfolder=subfolder, etag_timeout=HUB_TIMEOUT_S))
        except Exception:  # unreachable, unknown repo, no such file, gated: try the next source
            continue
    return None


def architecture_config(pretrained: str, subfolder: str | None = None) -> tuple[dict, str]:
    """The config of ``pretrained`` (a local directory or a hub id) as a dict, and where it came from.

    Sources, in order: the local directory's own file ("local directory"); the Hugging Face cache
    ("Hugging Face cache"); the hub unless ``HF_HUB_OFFLINE=1`` ("hub"); the copy bundled with lorafit
    ("bundled copy"). ``subfolder`` names a pipeline part (``unet``, ``vae``, ``text_encoder``,
    ``scheduler``, ``tokenizer``); without it a diffusers pipeline answers with its ``model_index.json``.

    >>> config, source = architecture_config("microsoft/DialoGPT-medium")
    >>> config["n_embd"], config["n_layer"]
    (1024, 24)
    """
    pretrained = str(pretrained)
    where = f"{pretrained}/{subfolder}" if subfolder else pretrained
    local = Path(pretrained).expanduser()
    if local.is_dir():
        base = local / subfolder if subfolder else local
        for name in _config_files(subfolder):
            if (base / name).is_file():
                return _read(base / name), "local directory"
        raise UserError(f"no {' or '.join(_config_files(subfolder))} in local directory {base} — point the model "
                        f"at a directory saved with save_pretrained (or a hub id)")
    config = _from_cache(pretrained, subfolder)
    if config is not None:
        return config, "Hugging Face cache"
    if not hub_offline():
        config = _from_hub(pretrained, subfolder)
        if config is not None:
            return config, "hub"
    config = bundled_config(pretrained, subfolder)
    if config is not None:
        return config, "bundled copy"
    hub = "HF_HUB_OFFLINE=1 is set" if hub_offline() else "the hub did not answer"
    raise UserError(f"no config found for model '{where}' (not a local directory, not in the Hugging Face cache, "
                    f"{hub}, no bundled copy) — pass a local model directory, or run where the hub is reachable")


def hf_config(config: dict, where: str):
    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise UserError(f"config of '{where}' has model_type={model_type!r}, which transformers does not know "
                        "— use a transformers model directory or hub id")
    return CONFIG_MAPPING[model_type].from_dict(config)


def untie_output_embeddings(model, config: dict, init_std: float | None = None) -> None:
    """Give ``model`` its own output projection when the published model has one (``config`` is its config.json).

    transformers 5 builds every T5 with ``lm_head`` tied to the shared embedding and unties it only when a
    loaded checkpoint stores a separate ``lm_head`` (FLAN-T5 and T5 v1.1 do: their config says
    ``tie_word_embeddings: false``, or ``scale_decoder_outputs: false`` once saved by transformers 5).
    Untying here makes a model built from the config count, save and reload like the real checkpoint.
    ``init_std`` draws the new weights from N(0, init_std); on "meta" they stay empty.
    """
    if config.get("tie_word_embeddings") is not False and config.get("scale_decoder_outputs") is not False:
        return
    output, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if output is None or embedding is None or output.weight is not embedding.weight:
        return
    name = next(name for name, module in model.named_modules() if module is output)
    weight = torch.empty_like(output.weight)
    if init_std is not None and weight.device.type != "meta":
        torch.nn.init.normal_(weight, std=init_std)
    output.weight = torch.nn.Parameter(weight)
    # save_pretrained skips the keys it believes tied; this one now holds weights of its own
    getattr(model, "all_tied_weights_keys", {}).pop(f"{name}.weight", None)
