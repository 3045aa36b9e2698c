"""Real architectures at random initialisation, for CPU dry runs of the reference experiments.

Each model is built from its bundled published config (``architectures/``) at its real size, with a
tokenizer trained locally on the given corpus (the real vocabularies are not on this machine), then
saved once under the cache as an ordinary Hugging Face / diffusers directory (safetensors) that the
framework's own loaders read like the real model. Only what the tokenizer forces changes in the config:
the special-token ids. The vocabulary size stays the real one, so the locally trained tokenizer's ids
all fit the real embedding matrix. Weights use the libraries' own initialisation (FLAN-T5's separate lm_head
aside, see ``random_seq2seq``), drawn under a forked RNG seeded by ``seed``, so a build neither depends on
nor disturbs the caller's random state.
"""

from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel

from src.errors import UserError
from src.families.causal import CAUSAL
from src.families.chat import CHAT
from src.families.seq2seq import SEQ2SEQ
from src.families.text import TextFamily
from src.pretrained.architecture import BUNDLED_DIR, bundled_config, hf_config, untie_output_embeddings
from src.pretrained.tiny import cached_build, iter_corpus, train_clip_tokenizer

SD_PARTS = ("unet", "vae", "text_encoder", "scheduler", "tokenizer")


def _bundled(name: str, subfolder: str | None = None) -> dict:
    config = bundled_config(name, subfolder)
    if config is None:
        bundled = sorted(p.name.replace("--", "/") for p in BUNDLED_DIR.iterdir() if p.is_dir())
        raise UserError(f"no bundled architecture for '{name}' — use one of {', '.join(bundled)}")
    return config


def _seeded(seed: int, build: Callable):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _slug(name: str) -> str:
    return "random_" + name.replace("/", "--")


def _check_fits(tokenizer, vocab_size: int, name: str) -> None:
    if len(tokenizer) > vocab_size:
        raise UserError(f"a {len(tokenizer)}-token tokenizer does not fit {name}'s {vocab_size}-row embedding "
                        f"— ask for a smaller vocab_size")


def _require_corpus(corpus_files: list[str] | None, builder: str) -> list[str]:
    if not corpus_files:
        raise TypeError(f"{builder}() needs corpus_files: the text its tokenizer is trained on")
    return [str(f) for f in corpus_files]


def random_seq2seq(cache_dir: str, name: str, corpus_files: list[str], vocab_size: int = 1000, seed: int = 0) -> str:
    """Directory of ``name`` (e.g. google/flan-t5-base) at random init with a locally trained T5 tokenizer."""
    return random_text(SEQ2SEQ, cache_dir, name, _require_corpus(corpus_files, "random_seq2seq"), vocab_size, seed)


def random_causal(cache_dir: str, name: str = "microsoft/DialoGPT-medium", corpus_files: list[str] | None = None,
                  vocab_size: int = 1000, seed: int = 0) -> str:
    """Directory of ``name`` (GPT-2 medium for DialoGPT) at random init with a locally trained byte-level BPE."""
    return random_text(CAUSAL, cache_dir, name, _require_corpus(corpus_files, "random_causal"), vocab_size, seed)


def random_chat(cache_dir: str, name: str, corpus_files: list[str], vocab_size: int = 1000, seed: int = 0,
                num_hidden_layers: int | None = None, embedding_rows: int | None = None) -> str:
    """An instruct model's architecture (e.g. Qwen/Qwen2.5-0.5B-Instruct) at random init with a byte-level BPE
    and the ChatML template, at ``num_hidden_layers`` of its layers (each of the published shape) and, for the
    8B-class models whose 128k-row embeddings would dominate a CPU run, ``embedding_rows`` vocabulary rows."""
    reduced = {"num_hidden_layers": num_hidden_layers, "vocab_size": embedding_rows}
    return random_text(CHAT, cache_dir, name, _require_corpus(corpus_files, "random_chat"), vocab_size, seed,
                       {k: v for k, v in reduced.items() if v is not None})


def _reduce(config: dict, reduced: dict) -> dict:
    """The published config with fewer layers (per-layer lists cut to match) or embedding rows."""
    config = {**config, **reduced}
    layers = config.get("num_hidden_layers")
    if "layer_types" in config and layers is not None:
        config["layer_types"] = config["layer_types"][:layers]
    if "max_window_layers" in config and layers is not None:
        config["max_window_layers"] = min(config["max_window_layers"], layers)
    return config


def random_text(family: TextFamily, cache_dir: str, name: str, corpus_files: list[str], vocab_size: int,
                seed: int, reduced: dict | None = None) -> str:
    """A text family's model at random init: its kind of tokenizer, and the special ids that tokenizer dictates
    (``reduced``: config keys set smaller than published, part of the cache key)."""
    config = _reduce(_bundled(name), reduced or {})
    spec = dict(name=name, config=config, vocab_size=vocab_size, seed=seed, version=family.random_init_version)

    def build(out: Path) -> None:
        tokenizer = family.train_tokenizer_fn(iter_corpus(corpus_files), vocab_size,
                                              config.get("n_positions", family.default_max_positions))
        _check_fits(tokenizer, config["vocab_size"], name)
        model_config = hf_config({**config, **family.special_token_ids(tokenizer)}, name)

        def model():
            built = family.auto_class.from_config(model_config)
            # FLAN-T5 has an lm_head of its own. N(0, d_model^-0.5) starts its logits at unit scale (first loss
            # ~ ln(vocab)); T5's own N(0, 1) for an untied head would start the loss near 160
            untie_output_embeddings(built, config, init_std=config.get("d_model", 1) ** -0.5)
            return built

        _seeded(seed, model).save_pretrained(out)
        tokenizer.save_pretrained(out)

    return cached_build(cache_dir, _slug(name), spec, corpus_files, build)


def random_sd(cache_dir: str, name: str = "stable-diffusion-v1-5/stable-diffusion-v1-5",
              corpus_files: list[str] | None = None, num_merges: int = 300, seed: int = 0) -> str:
    """Directory of a Stable Diffusion pipeline (real UNet, VAE and CLIP text encoder) at random init, with a
    CLIP tokenizer whose merges are learned on the corpus and a DDPM scheduler from the published settings.

    Loads with ``StableDiffusionPipeline.from_pretrained(dir)`` and ``<Part>.from_pretrained(dir, subfolder=...)``.
    """
    corpus_files = _require_corpus(corpus_files, "random_sd")
    configs = {part: _bundled(name, part) for part in SD_PARTS}
    spec = dict(name=name, configs=configs, num_merges=num_merges, seed=seed, version=1)

    def build(out: Path) -> None:
        tokenizer = train_clip_tokenizer(iter_corpus(corpus_files), num_merges=num_merges,
                                         model_max_length=configs["tokenizer"].get("model_max_length", 77))
        _check_fits(tokenizer, configs["text_encoder"]["vocab_size"], name)
        ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
        text_config = hf_config({**configs["text_encoder"], **ids}, f"{name}/text_encoder")

        def parts() -> dict:
            return dict(unet=UNet2DConditionModel.from_config(configs["unet"]),
                        vae=AutoencoderKL.from_config(configs["vae"]),
                        text_encoder=CLIPTextModel(text_config))

        pipeline = StableDiffusionPipeline(**_seeded(seed, parts), tokenizer=tokenizer,
                                           scheduler=DDPMScheduler.from_config(configs["scheduler"]),
                                           safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipeline.save_pretrained(out, safe_serialization=True)

    return cached_build(cache_dir, _slug(name), spec, corpus_files, build)
