"""QLoRA switches: clear errors without CUDA, the bitsandbytes config, and k-bit preparation on CPU."""

import pytest
import torch
from hydra.utils import instantiate

import src.modules.text_lora as text_lora
from src.errors import UserError
from src.pretrained.quantization import bnb_config, check_quantization
from tests.conftest import compose_config, run_cli


def test_no_quantization_needs_nothing():
    check_quantization(None)


def test_quantization_without_cuda_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="model.quantization=4bit needs a CUDA GPU .* model.quantization=null"):
        check_quantization("4bit")
    with pytest.raises(UserError, match="is not one of"):
        check_quantization("3bit")


def test_quantization_without_bitsandbytes_says_how_to_install(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install bitsandbytes"):
        check_quantization("8bit")


def test_qlora_config():
    four = bnb_config("4bit", torch.bfloat16)
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4" and four.bnb_4bit_use_double_quant
    assert four.bnb_4bit_compute_dtype == torch.bfloat16
    assert bnb_config("8bit").load_in_8bit


def test_quantized_module_is_prepared_for_kbit_training_before_lora(cache_dir, tmp_path, monkeypatch):
    calls = []
    real_prepare = text_lora.prepare_for_kbit

    def spy(model, gradient_checkpointing):
        calls.append(gradient_checkpointing)
        return real_prepare(model, gradient_checkpointing)

    # the CPU stand-in for a k-bit load: skip the CUDA check and the bitsandbytes arguments
    monkeypatch.setattr(text_lora, "check_quantization", lambda mode: None)
    monkeypatch.setattr(text_lora, "quantized_load_kwargs", lambda mode: {})
    monkeypatch.setattr(text_lora, "prepare_for_kbit", spy)
    cfg = compose_config("train", ["experiment=quickstart", "model.quantization=4bit",
                                   "model.gradient_checkpointing=true"], tmp_path)
    module = instantiate(cfg.model)
    assert calls == [True]
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert module.report()["quantization"] == "4bit"


def test_gradient_checkpointing_switch_without_quantization(cache_dir, tmp_path):
    cfg = compose_config("train", ["experiment=quickstart", "model.gradient_checkpointing=true"], tmp_path)
    assert instantiate(cfg.model).model.base_model.model.is_gradient_checkpointing
    cfg = compose_config("train", ["experiment=quickstart"], tmp_path)
    assert not instantiate(cfg.model).model.base_model.model.is_gradient_checkpointing


def test_tarot_reference_config_and_its_cuda_error():
    shown = run_cli("train.py", "experiment=tarot_ptt5", "--cfg", "job").stdout
    for expected in ("quantization: 4bit", "unicamp-dl/ptt5-base-portuguese-vocab", "r: 16", "lora_alpha: 32",
                     "max_source_length: 450", "max_epochs: 20", "early_stopping:"):
        assert expected in shown, expected
    proc = run_cli("train.py", "experiment=tarot_ptt5", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: model.quantization=4bit needs a CUDA GPU (bitsandbytes k-bit kernels) and none is visible — "
        "set model.quantization=null to train without quantization"]
