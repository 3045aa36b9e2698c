"""Real architectures offline: bundled published configs, meta-device builds, random-init directories."""

import json
import shutil

import pytest
from huggingface_hub import constants
from peft import LoraConfig, get_peft_model

from src.errors import UserError
from src.families.registry import FAMILIES
from src.pretrained.architecture import BUNDLED_DIR, architecture_config
from tests.conftest import ROOT


def meta_model(family: str, pretrained: str):
    return FAMILIES.get(family).meta_model(pretrained)


FLAN, PTT5, DIALOGPT = "google/flan-t5-base", "unicamp-dl/ptt5-base-portuguese-vocab", "microsoft/DialoGPT-medium"
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD_PARTS = ["unet", "vae", "text_encoder", "scheduler", "tokenizer"]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No hub, and an empty Hugging Face cache, whatever the machine has."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def n_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("hub_id, subfolder, key, value", [
    (FLAN, None, "feed_forward_proj", "gated-gelu"),
    (PTT5, None, "d_ff", 3072),
    (DIALOGPT, None, "n_embd", 1024),
    (SD15, None, "_class_name", "StableDiffusionPipeline"),
    (SD15, "unet", "cross_attention_dim", 768),
    (SD15, "vae", "latent_channels", 4),
    (SD15, "text_encoder", "vocab_size", 49408),
    (SD15, "scheduler", "beta_schedule", "scaled_linear"),
    (SD15, "tokenizer", "model_max_length", 77),
    ("runwayml/stable-diffusion-v1-5", "unet", "sample_size", 64),  # the model's former name
])
def test_bundled_configs_load_offline(offline, hub_id, subfolder, key, value):
    config, source = architecture_config(hub_id, subfolder)
    assert source == "bundled copy"
    assert config[key] == value


def test_real_architectures_on_meta_count_the_published_lora_sizes(offline):
    flan = meta_model("seq2seq", FLAN)
    assert next(flan.parameters()).device.type == "meta"
    assert n_parameters(flan) == 247_577_856  # FLAN-T5 keeps an lm_head of its own, as its checkpoint does
    assert get_peft_model(flan, LoraConfig(r=16, target_modules=["q", "v"])).get_nb_trainable_parameters()[0] \
        == 1_769_472
    assert n_parameters(meta_model("seq2seq", PTT5)) == 222_903_552  # original T5: lm_head tied to the embedding
    gpt2 = meta_model("causal", DIALOGPT)
    assert n_parameters(gpt2) == 354_823_168
    lora = LoraConfig(r=16, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)
    assert get_peft_model(gpt2, lora).get_nb_trainable_parameters()[0] == 6_291_456
    sd = meta_model("diffusion", SD15)
    assert (n_parameters(sd.unet), n_parameters(sd.vae), n_parameters(sd.text_encoder)) \
        == (859_520_964, 83_653_863, 123_060_480)
    sd.unet.requires_grad_(False)
    sd.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    assert sum(p.numel() for p in sd.unet.parameters() if p.requires_grad) == 797_184


def test_a_local_directory_wins_over_cache_and_bundled_copy(offline, tmp_path, monkeypatch):
    # a directory spelled like the hub id, holding its own (smaller) config, as transformers would read it
    local = tmp_path / "google" / "flan-t5-base"
    local.mkdir(parents=True)
    config = {**json.loads((BUNDLED_DIR / "google--flan-t5-base" / "config.json").read_text()), "num_layers": 2}
    (local / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    assert architecture_config(FLAN) == (config, "local directory")
    unet = tmp_path / "pipeline" / "unet"
    unet.mkdir(parents=True)
    shutil.copy(BUNDLED_DIR / "stable-diffusion-v1-5--stable-diffusion-v1-5" / "unet" / "config.json", unet)
    assert architecture_config(str(tmp_path / "pipeline"), "unet")[1] == "local directory"


def test_the_hugging_face_cache_comes_before_the_bundled_copy(offline, tmp_path):
    repo = tmp_path / "hf-cache" / "models--microsoft--DialoGPT-medium"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 3}))
    config, source = architecture_config(DIALOGPT)
    assert (config["n_layer"], source) == (3, "Hugging Face cache")


def test_unknown_model_offline_is_one_line_saying_how_to_fix_it(offline):
    with pytest.raises(UserError) as err:
        architecture_config("nobody/no-such-model")
    message = str(err.value)
    assert "\n" not in message
    assert "nobody/no-such-model" in message and "local model directory" in message


def test_a_local_directory_without_config_is_a_user_error(offline, tmp_path):
    with pytest.raises(UserError, match="no config.json or model_index.json in local directory"):
        architecture_config(str(tmp_path))


def test_unknown_family_is_a_user_error(offline):
    with pytest.raises(UserError, match="unknown model family 'vision'"):
        meta_model("vision", FLAN)


@pytest.mark.slow
def test_random_flan_t5_loads_with_the_real_parameter_count(offline, cache_dir):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from src.pretrained.random_init import random_seq2seq

    directory = random_seq2seq(str(cache_dir / "models"), FLAN, [str(ROOT / "data/samples/amazon/trn.json")])
    model = AutoModelForSeq2SeqLM.from_pretrained(directory)
    assert n_parameters(model) == n_parameters(meta_model("seq2seq", FLAN))
    assert model.config.vocab_size == 32128  # the real vocabulary: every id of the local tokenizer fits
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert (model.config.pad_token_id, model.config.eos_token_id) == (tokenizer.pad_token_id, tokenizer.eos_token_id)


# the parameter counts the model cards and transformers report for the published instruct checkpoints
INSTRUCT_PARAMETERS = {
    "Qwen/Qwen2.5-0.5B-Instruct": 494_032_768, "Qwen/Qwen2.5-1.5B-Instruct": 1_543_714_304,
    "Qwen/Qwen2.5-7B-Instruct": 7_615_616_512, "meta-llama/Llama-3.2-1B-Instruct": 1_235_814_400,
    "meta-llama/Llama-3.2-3B-Instruct": 3_212_749_824, "meta-llama/Llama-3.1-8B-Instruct": 8_030_261_248,
    "google/gemma-2-2b-it": 2_614_341_888, "HuggingFaceTB/SmolLM2-135M-Instruct": 134_515_008,
    "HuggingFaceTB/SmolLM2-360M-Instruct": 361_821_120, "HuggingFaceTB/SmolLM2-1.7B-Instruct": 1_711_376_384,
}


@pytest.mark.parametrize("hub_id", sorted(INSTRUCT_PARAMETERS))
def test_bundled_instruct_architectures_have_the_published_size(hub_id, offline):
    assert n_parameters(meta_model("chat", hub_id)) == INSTRUCT_PARAMETERS[hub_id]


def test_every_chat_model_config_names_a_bundled_architecture():
    named = {line.split(":", 1)[1].split("#")[0].strip() for path in (ROOT / "conf/model").glob("*.yaml")
             for line in path.read_text().splitlines() if line.startswith("pretrained:") and "/" in line}
    assert set(INSTRUCT_PARAMETERS) <= named | {"HuggingFaceTB/SmolLM2-135M-Instruct"}
    assert all(architecture_config(hub_id)[1] for hub_id in named)
