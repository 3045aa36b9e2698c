"""Causal-LM family: loss only on target tokens, left-padded batched generation, end to end."""

import pytest
import torch
from hydra.utils import instantiate
from transformers import AutoTokenizer

from src.conversation import one_turn
from src.encoders.causal import CausalEncoder as CausalPairEncoder
from tests.conftest import QUICK, compose_config, read_json, run_cli


def pairs(source: list[str], target: list[str]) -> dict[str, list]:
    """A datasets.map batch of one-turn samples."""
    return {"messages": [one_turn(s, t) for s, t in zip(source, target)]}


@pytest.fixture(scope="module")
def causal_module(cache_dir, tmp_path_factory):
    cfg = compose_config("train", ["experiment=quickstart_causal"], tmp_path_factory.mktemp("causal"))
    return instantiate(cfg.model)


def test_loss_is_masked_on_prompt_tokens(causal_module):
    tok = causal_module.tokenizer
    enc = CausalPairEncoder(tok, max_source_length=32, max_target_length=16)
    rows = enc(pairs(["Title: Acme Lamp\nDescription:", "Title: X\nDescription:"],
                     ["A bright desk lamp.", "Soft blanket for cold nights and long winters."]))
    for prompt, ids, labels in zip(rows["prompt_ids"], rows["input_ids"], rows["labels"]):
        assert ids[:len(prompt)] == prompt
        assert labels[:len(prompt)] == [-100] * len(prompt)  # no loss on the prompt
        assert labels[len(prompt):] == ids[len(prompt):]  # loss on every target token ...
        assert ids[-1] == tok.eos_token_id and len(ids) - len(prompt) <= 16  # ... ending in eos, truncated
    assert tok.decode(rows["input_ids"][0][len(rows["prompt_ids"][0]):-1]).strip() == "A bright desk lamp."


def test_long_prompts_keep_their_end(causal_module):
    tok = causal_module.tokenizer
    enc = CausalPairEncoder(tok, max_source_length=6, max_target_length=8)
    rows = enc(pairs(["Title: a very long product title with many words\nDescription:"], ["x"]))
    assert len(rows["prompt_ids"][0]) == 6
    assert tok.decode(rows["prompt_ids"][0]).endswith("Description:")  # the cue survives truncation


def test_batches_pad_training_right_and_prompts_left(causal_module):
    tok = causal_module.tokenizer
    enc = CausalPairEncoder(tok, max_source_length=32, max_target_length=16)
    rows = enc(pairs(["Title: A much longer product title here\nDescription:", "Title: X\nDescription:"],
                     ["One.", "Two."]))
    features = [{k: rows[k][i] for k in rows} | {"uid": str(i), "messages": one_turn("s", "t")} for i in range(2)]
    batch = enc.collate(features)
    short = 1
    n = len(rows["input_ids"][short])
    assert batch["attention_mask"][short, :n].all() and not batch["attention_mask"][short, n:].any()
    assert (batch["labels"][short, n:] == -100).all()
    p = len(rows["prompt_ids"][short])
    width = batch["prompt_input_ids"].shape[1]
    assert batch["prompt_input_ids"][short, width - p:].tolist() == rows["prompt_ids"][short]
    assert not batch["prompt_attention_mask"][short, :width - p].any()


def test_batched_generation_equals_one_at_a_time(causal_module):
    tok = causal_module.tokenizer
    causal_module.eval()
    causal_module.generation = {"max_new_tokens": 12, "do_sample": False}
    enc = CausalPairEncoder(tok, max_source_length=32, max_target_length=16)
    sources = ["Title: Acme Running Shoes - Red, Small\nDescription:", "Title: Kitchenly Chef Knife\nDescription:",
               "Title: X\nDescription:"]
    rows = enc(pairs(sources, ["a", "b", "c"]))
    features = [{k: rows[k][i] for k in rows} | {"uid": str(i), "messages": one_turn(s, "t")}
                for i, s in enumerate(sources)]
    with torch.no_grad():
        batched = causal_module.generate_texts(enc.collate(features))
        single = [causal_module.generate_texts(enc.collate([f]))[0] for f in features]
    assert batched == single
    assert not any(text.startswith("Title:") for text in batched)  # only the continuation is returned


@pytest.mark.slow
def test_quickstart_causal_trains_exports_and_evaluates(cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_cli("train.py", "experiment=quickstart_causal", *QUICK[1:], "trainer.max_epochs=4", f"hydra.run.dir={run_dir}")
    report = read_json(run_dir / "metrics.json")
    assert report["model"]["family"] == "causal" and report["training"]["stop_reason"] == "max_epochs"
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert AutoTokenizer.from_pretrained(run_dir / "adapter").eos_token == "<|endoftext|>"
    run_cli("evaluate.py", f"ckpt={run_dir}", "split=val", f"hydra.run.dir={tmp_path / 'eval'}")
    evaluated = read_json(tmp_path / "eval" / "metrics.json")["metrics"]["val/rougeL"]
    assert evaluated == pytest.approx(report["best_checkpoint"]["score"], abs=1e-5)
    run_cli("evaluate.py", "ckpt=base", f"config_from={run_dir}", "split=val", f"hydra.run.dir={tmp_path / 'base'}")
    assert read_json(tmp_path / "base" / "metrics.json")["metrics"]["val/rougeL"] < evaluated
