"""A model family and a dataset of another modality are refused in one line, before any model loads."""

import pytest
from omegaconf import open_dict

import src.building
from src.errors import UserError
from src.building import build_model_and_data
from tests.conftest import ROOT, compose_config, run_cli

MODELS = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml") if not p.stem.startswith("_"))
DATASETS = sorted(p.stem for p in (ROOT / "conf" / "data").glob("*.yaml"))
# what each config is, stated here rather than read from the code under test: a new config must be added
CHAT_MODELS = ("gemma2_2b", "llama3_1b", "llama3_3b", "llama3_8b", "qwen2_5_0_5b", "qwen2_5_1_5b", "qwen2_5_7b",
               "smollm2_360m", "smollm2_1_7b", "tiny_chat")
MODEL_KIND = {"dialogpt": "text", "flan_t5": "text", "ptt5": "text", "tiny_gpt2": "text", "tiny_t5": "text",
              "sd15": "image", "tiny_sd": "image", **dict.fromkeys(CHAT_MODELS, "text")}
DATA_KIND = {"amazon": "text", "amazon_sample": "text", "chat": "text", "pairs": "text", "pairs_description": "text",
             "tarot": "text", "shoes": "image"}
MODEL_DESCRIPTION = {"dialogpt": "a causal text model", "tiny_gpt2": "a causal text model",
                     "flan_t5": "a seq2seq text model", "ptt5": "a seq2seq text model",
                     "tiny_t5": "a seq2seq text model", "sd15": "a diffusion model", "tiny_sd": "a diffusion model",
                     **dict.fromkeys(CHAT_MODELS, "a chat model")}
DATA_DESCRIPTION = {"text": "text pairs", "image": "images"}


class ModelLoading(Exception):
    """Raised instead of instantiating anything: the pair got past the check."""


@pytest.fixture
def no_loading(monkeypatch):
    def refuse(node, **kwargs):
        raise ModelLoading(node.get("_target_"))

    monkeypatch.setattr(src.building, "instantiate_config", refuse)


def test_every_config_has_a_stated_kind():
    assert set(MODELS) == set(MODEL_KIND) and set(DATASETS) == set(DATA_KIND)


@pytest.mark.parametrize("data", DATASETS)
@pytest.mark.parametrize("model", MODELS)
def test_model_and_data_of_other_modalities_are_refused_before_loading(model, data, no_loading, tmp_path):
    cfg = compose_config("train", [f"model={model}", f"data={data}"], tmp_path)
    if MODEL_KIND[model] == DATA_KIND[data]:
        with pytest.raises(ModelLoading):  # the check passed and the model would load next
            build_model_and_data(cfg)
        return
    with pytest.raises(UserError) as err:
        build_model_and_data(cfg)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"model={model} ({MODEL_DESCRIPTION[model]}) cannot train on "
                              f"data={data} ({DATA_DESCRIPTION[DATA_KIND[data]]}) — pick ")
    fitting_models = [m for m in MODELS if MODEL_KIND[m] == DATA_KIND[data]]
    fitting_data = [d for d in DATASETS if DATA_KIND[d] == MODEL_KIND[model]]
    listed = message.split("(model=")[1].split(")")[0]
    assert all(m in listed for m in fitting_models if m.startswith("tiny_"))  # the offline ones, and a count
    assert len(fitting_models) <= 5 or f"... ({len(fitting_models)} in conf/" in message
    assert all(f"{d}" in message.split("(data=")[1].split(")")[0] for d in fitting_data)


def test_the_exact_line_for_a_diffusion_model_on_text_pairs(no_loading, tmp_path):
    cfg = compose_config("train", ["experiment=quickstart", "model=tiny_sd"], tmp_path)
    with pytest.raises(UserError) as err:
        build_model_and_data(cfg)
    assert str(err.value) == ("model=tiny_sd (a diffusion model) cannot train on data=amazon_sample (text pairs) — "
                              "pick a text model (model=tiny_chat, tiny_gpt2, tiny_t5, dialogpt, flan_t5, ... (15 in "
                              "conf/)) "
                              "or image data (data=shoes)")


def test_a_reused_run_config_is_named_by_its_class(no_loading, tmp_path):
    """evaluate.py on a diffusion run with data=amazon_sample: the command line chose no diffusion model."""
    run_model = compose_config("train", ["model=tiny_sd"], tmp_path).model
    cfg = compose_config("evaluate", ["ckpt=base", "data=amazon_sample"], tmp_path)  # the choice: model=tiny_t5
    with open_dict(cfg):
        cfg.model = run_model
    with pytest.raises(UserError, match=r"^the model DiffusionLoRAModule \(a diffusion model\) cannot be used with "
                                        r"data=amazon_sample \(text pairs\) — pick a text model"):
        build_model_and_data(cfg)


def test_the_cli_ends_with_one_line_and_status_2(cache_dir, tmp_path):
    proc = run_cli("train.py", "experiment=quickstart", "model=tiny_sd", f"hydra.run.dir={tmp_path}", check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: model=tiny_sd (a diffusion model) cannot train on data=amazon_sample")
