"""Tiny models for offline runs and tests.

A tiny model is built from a small config with a tokenizer trained locally (``tokenizers``) on
the bundled sample text, saved once as an ordinary Hugging Face directory under the cache, and
then loaded through the same ``from_pretrained`` path as a real model. The config resolves to
that directory, so exported adapters name it as their ``base_model_name_or_path``.
"""

import hashlib
import json
import math
import os
import re
import shutil
import string
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from filelock import FileLock
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTokenizer, GPT2Config, GPT2LMHeadModel,
                          PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, T5Config, T5ForConditionalGeneration)

from src.errors import UserError
from src.pretrained.chat_templates import CHATML, CHATML_TOKENS

SPECIAL_T5 = ["<pad>", "</s>", "<unk>"]


def iter_corpus(files: list[str]) -> Iterator[str]:
    """Every string value of every JSON line (or every plain line) of the corpus files."""
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise UserError(f"tiny-model corpus file not found: {path} — point corpus_files at the bundled sample")
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    yield line.strip()
                    continue
                if isinstance(record, dict):
                    yield from _strings(record)


def _strings(value) -> Iterator[str]:
    """The strings of a JSON value: a record's text fields, and the contents of a conversation's messages."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _fingerprint(spec: dict, files: list[str]) -> str:
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    for file in files:
        digest.update(Path(file).read_bytes())
    return digest.hexdigest()[:12]


def cached_build(cache_dir: str, name: str, spec: dict, corpus_files: list[str],
                 build: Callable[[Path], None]) -> str:
    """Build into ``cache_dir/<name>-<hash>`` once (atomically, under a lock); return the directory."""
    files = [str(f) for f in corpus_files]
    target = Path(cache_dir).expanduser().resolve() / f"{name}-{_fingerprint(spec, files)}"
    done = target / ".complete"  # written last, inside the temporary directory, then renamed with it
    if done.exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not done.exists():
            shutil.rmtree(target, ignore_errors=True)  # a half-built directory from an older version
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
            try:
                with torch.random.fork_rng(devices=[]):  # builds seed torch; the run's seeded RNG stays as it was
                    build(tmp)
                (tmp / ".complete").touch()
                os.replace(tmp, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def train_unigram_tokenizer(texts: Iterator[str], vocab_size: int, model_max_length: int) -> PreTrainedTokenizerFast:
    """A T5-style (SentencePiece Unigram, Metaspace) tokenizer that appends ``</s>``.

    The same corpus gives the same tokenizer in every process: the ``tokenizers`` trainer picks a stable set
    of pieces but its scores (and so the piece order, the token ids) vary slightly between processes, so the
    scores are re-estimated here deterministically (``canonical_unigram``) and the pieces put in their order.
    """
    texts = list(texts)  # read twice: training, then re-estimation
    tok = _unigram_pipeline(models.Unigram())
    tok.train_from_iterator(texts, trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_T5, unk_token="<unk>", show_progress=False,
        # every printable ASCII character, so prompts and user input outside the corpus stay readable
        initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation)))
    pieces = [piece for piece, _ in json.loads(tok.to_str())["model"]["vocab"]]
    tok = canonical_unigram(pieces, texts)
    eos_id = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=model_max_length)


def _unigram_pipeline(model) -> Tokenizer:
    tok = Tokenizer(model)
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    return tok


def canonical_unigram(pieces: list[str], texts: list[str], rounds: int = 3) -> Tokenizer:
    """A Unigram tokenizer over ``pieces`` whose scores depend only on the pieces and the corpus.

    Hard EM from equal scores: segment the corpus (Viterbi, deterministic), score each piece by the log of
    its smoothed frequency in that segmentation, repeat. Special tokens keep ids 0, 1, 2; the other pieces
    follow by score, then alphabetically.
    """
    normal = sorted({p for p in pieces if p not in SPECIAL_T5})
    scores = {p: -1.0 for p in normal}  # equal scores: the segmentation with the fewest pieces
    unk = SPECIAL_T5.index("<unk>")
    for _ in range(rounds):
        vocab = [(p, 0.0) for p in SPECIAL_T5] + [(p, scores[p]) for p in normal]
        tok = _unigram_pipeline(models.Unigram(vocab, unk_id=unk, byte_fallback=False))
        counts = dict.fromkeys(normal, 0)
        for enc in tok.encode_batch(texts, add_special_tokens=False):
            for token in enc.tokens:
                if token in counts:
                    counts[token] += 1
        total = sum(counts.values()) + len(normal)
        scores = {p: round(math.log((counts[p] + 1) / total), 6) for p in normal}
    ordered = sorted(normal, key=lambda p: (-scores[p], p))
    vocab = [(p, 0.0) for p in SPECIAL_T5] + [(p, scores[p]) for p in ordered]
    return _unigram_pipeline(models.Unigram(vocab, unk_id=unk, byte_fallback=False))


def tiny_t5(cache_dir: str, corpus_files: list[str], vocab_size: int = 1000, d_model: int = 64,
            d_ff: int = 128, num_layers: int = 2, num_heads: int = 4, d_kv: int = 16, seed: int = 0) -> str:
    """Directory of a tiny T5 (random weights, locally trained tokenizer), built on first use."""
    spec = dict(vocab_size=vocab_size, d_model=d_model, d_ff=d_ff, num_layers=num_layers,
                num_heads=num_heads, d_kv=d_kv, seed=seed, version=4)

    def build(out: Path) -> None:
        tokenizer = train_unigram_tokenizer(iter_corpus(corpus_files), vocab_size, model_max_length=512)
        config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_ff=d_ff, num_layers=num_layers,
                          num_heads=num_heads, d_kv=d_kv, dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
        torch.manual_seed(seed)
        T5ForConditionalGeneration(config).save_pretrained(out)
        tokenizer.save_pretrained(out)

    return cached_build(cache_dir, "tiny_t5", spec, corpus_files, build)


def train_byte_bpe_tokenizer(texts: Iterator[str], vocab_size: int, model_max_length: int) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE tokenizer whose only special token is ``<|endoftext|>``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", model_max_length=model_max_length)


def tiny_gpt2(cache_dir: str, corpus_files: list[str], vocab_size: int = 1000, n_embd: int = 64, n_layer: int = 2,
              n_head: int = 4, n_positions: int = 512, seed: int = 0) -> str:
    """Directory of a tiny GPT-2 (random weights, locally trained byte-level BPE), built on first use."""
    spec = dict(vocab_size=vocab_size, n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_positions=n_positions,
                seed=seed, version=1)

    def build(out: Path) -> None:
        tokenizer = train_byte_bpe_tokenizer(iter_corpus(corpus_files), vocab_size, model_max_length=n_positions)
        config = GPT2Config(vocab_size=len(tokenizer), n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                            n_positions=n_positions, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                            bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
        torch.manual_seed(seed)
        GPT2LMHeadModel(config).save_pretrained(out)
        tokenizer.save_pretrained(out)

    return cached_build(cache_dir, "tiny_gpt2", spec, corpus_files, build)


def train_chat_tokenizer(texts: Iterator[str], vocab_size: int, model_max_length: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with ChatML's turn tokens and template, laid out like Qwen 2.5's: ``<|endoftext|>``
    pads, ``<|im_end|>`` ends a turn and is the eos token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>", *CHATML_TOKENS], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", model_max_length=model_max_length,
                                   chat_template=CHATML)


def tiny_chat(cache_dir: str, corpus_files: list[str], vocab_size: int = 1000, hidden_size: int = 64,
              num_layers: int = 2, num_heads: int = 4, num_kv_heads: int = 2, intermediate_size: int = 128,
              max_positions: int = 1024, seed: int = 0) -> str:
    """Directory of a tiny instruct model: the Qwen 2 architecture (grouped-query attention, RoPE, SwiGLU, tied
    embeddings) at random weights, with a ChatML tokenizer trained locally; built on first use."""
    spec = dict(vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                num_kv_heads=num_kv_heads, intermediate_size=intermediate_size, max_positions=max_positions,
                seed=seed, version=1)

    def build(out: Path) -> None:
        tokenizer = train_chat_tokenizer(iter_corpus(corpus_files), vocab_size, model_max_length=max_positions)
        config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
                             num_hidden_layers=num_layers, num_attention_heads=num_heads,
                             num_key_value_heads=num_kv_heads, max_position_embeddings=max_positions,
                             tie_word_embeddings=True, bos_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(seed)
        Qwen2ForCausalLM(config).save_pretrained(out)
        tokenizer.save_pretrained(out)

    return cached_build(cache_dir, "tiny_chat", spec, corpus_files, build)


def learn_bpe_merges(texts: Iterator[str], num_merges: int) -> list[tuple[str, str]]:
    """BPE merges over lower-cased words (``\\w+`` or runs of punctuation) ending in ``</w>``.

    Plain Python rather than ``tokenizers``' BpeTrainer, whose order among equally frequent pairs changes
    from process to process: here a tie goes to the alphabetically first pair, so a corpus has one result.

    >>> learn_bpe_merges(["low lower lowest"], 2)
    [('l', 'o'), ('lo', 'w')]
    """
    words = Counter(w for text in texts for w in re.findall(r"\w+|[^\w\s]+", text.lower()))
    splits = {w: [*w[:-1], w[-1] + "</w>"] for w in words}
    merges: list[tuple[str, str]] = []
    while len(merges) < num_merges:
        pairs: Counter = Counter()
        for word, n in words.items():
            symbols = splits[word]
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for word, symbols in splits.items():
            i, merged = 0, []
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            splits[word] = merged
    return merges


def train_clip_tokenizer(texts: Iterator[str], num_merges: int = 300, model_max_length: int = 77):
    """A CLIP tokenizer (lower-case BPE with ``</w>`` word ends) whose merges are learned on ``texts``.

    Built as ``CLIPTokenizer(vocab=dict, merges=pairs)``: in transformers 5 the file-path constructor
    silently yields a 2-token tokenizer. Every byte-level character stays in the vocabulary, so no
    input is unknown.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = learn_bpe_merges(texts, num_merges)
    vocab: dict[str, int] = {}
    for token in [*alphabet, *(c + "</w>" for c in alphabet), *("".join(m) for m in merges),
                  "<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def tiny_sd(cache_dir: str, corpus_files: list[str], latent_channels: int = 4, seed: int = 0) -> str:
    """Directory of a tiny Stable Diffusion pipeline (UNet, VAE with 4x downsampling, CLIP text
    encoder, a CLIP tokenizer learned on the captions, DDPM scheduler), built on first use and
    loaded with ``StableDiffusionPipeline.from_pretrained`` / ``subfolder=`` like a real one."""
    spec = dict(latent_channels=latent_channels, seed=seed, version=2)

    def build(out: Path) -> None:
        tokenizer = train_clip_tokenizer(iter_corpus(corpus_files), num_merges=300)
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id))
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels, norm_num_groups=8,
                            block_out_channels=(16, 32, 32), layers_per_block=1,
                            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)
        unet = UNet2DConditionModel(
            sample_size=16, in_channels=latent_channels, out_channels=latent_channels, layers_per_block=1,
            block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=32, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
        scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                  beta_end=0.012, prediction_type="epsilon", clip_sample=False,
                                  steps_offset=1)
        StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                requires_safety_checker=False).save_pretrained(out)

    return cached_build(cache_dir, "tiny_sd", spec, corpus_files, build)
