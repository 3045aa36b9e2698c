"""A tiny CLIP (random weights, locally trained tokenizer) for offline CLIP scores in tests and quickstarts.

Built once under the cache as an ordinary Hugging Face directory (``config.json``, weights, tokenizer
files, ``preprocessor_config.json``) that ``CLIPModel.from_pretrained``, ``AutoTokenizer.from_pretrained``
and ``CLIPProcessor.from_pretrained`` load offline, exactly like ``openai/clip-vit-large-patch14-336``.
Its scores are deterministic but meaningless (the weights are random): it exercises the code path,
not the judgement of image-text agreement.
"""

from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

from src.pretrained.tiny import cached_build, iter_corpus, train_clip_tokenizer

# used when neither corpus files nor prompts are given, so the tokenizer still learns a few merges
DEFAULT_PROMPTS = [
    "a photo of a red running shoe",
    "a black leather boot on a white background",
    "a blue sneaker with white laces",
    "a tarot card with a golden sun",
]


def tiny_clip(cache_dir: str, corpus_files: list[str] | None = None, prompts: list[str] | None = None,
              image_size: int = 32, patch_size: int = 8, hidden_size: int = 32, intermediate_size: int = 64,
              num_layers: int = 2, num_heads: int = 4, projection_dim: int = 32, num_merges: int = 300,
              max_length: int = 77, seed: int = 0) -> str:
    """Directory of a tiny ``CLIPModel`` + ``CLIPTokenizer`` + ``CLIPImageProcessor``, built on first use.

    ``corpus_files`` (plain text or JSON lines, e.g. an imagefolder's ``metadata.jsonl``) and ``prompts``
    are the text the tokenizer's BPE merges are learned on; both are part of the cache key.
    """
    corpus_files = [str(f) for f in corpus_files or []]
    prompts = list(prompts or [])
    spec = dict(prompts=prompts, image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                intermediate_size=intermediate_size, num_layers=num_layers, num_heads=num_heads,
                projection_dim=projection_dim, num_merges=num_merges, max_length=max_length, seed=seed, version=2)

    def texts() -> Iterator[str]:
        yield from iter_corpus(corpus_files)
        yield from prompts
        if not corpus_files and not prompts:
            yield from DEFAULT_PROMPTS

    def build(out: Path) -> None:
        tokenizer = train_clip_tokenizer(texts(), num_merges=num_merges, model_max_length=max_length)
        tokens = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
        config = CLIPConfig(
            text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden_size,
                             intermediate_size=intermediate_size, num_hidden_layers=num_layers,
                             num_attention_heads=num_heads, max_position_embeddings=max_length, **tokens),
            vision_config=dict(image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                               intermediate_size=intermediate_size, num_hidden_layers=num_layers,
                               num_attention_heads=num_heads, num_channels=3),
            projection_dim=projection_dim,
        )
        image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                                crop_size={"height": image_size, "width": image_size})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = CLIPModel(config)
        model.save_pretrained(out)
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)

    return cached_build(cache_dir, "tiny_clip", spec, corpus_files, build)
