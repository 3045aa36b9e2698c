"""The chat family: conversations through the model's chat template, labels on the assistant turns, data=chat's
formats and skip reasons, and generation that stops at the end of a turn."""

import functools
import json
import shutil
from pathlib import Path

import datasets
import pytest
import requests
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from src.building import build_data, build_model_and_data
from src.encoders.chat import ChatEncoder
from src.errors import UserError
from src.pretrained.tiny import tiny_chat
from tests.conftest import ROOT, compose_config, connect, read_json, run_cli, texts

SAMPLE = ROOT / "data/samples/chat/conversations.jsonl"
MULTI = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "A lamp?"},
         {"role": "assistant", "content": "A desk lamp."}, {"role": "user", "content": "And a mat?"},
         {"role": "assistant", "content": "A yoga mat."}]


@pytest.fixture(scope="module")
def tokenizer(cache_dir):
    return AutoTokenizer.from_pretrained(tiny_chat(str(cache_dir / "models"), [str(SAMPLE)]))


def trained_text(tokenizer, ids, labels) -> str:
    return tokenizer.decode([t for t, label in zip(ids, labels) if label != -100])


def test_labels_cover_the_assistant_turns_only(tokenizer):
    ids, labels = ChatEncoder(tokenizer, 256, 256).encode(MULTI)
    assert trained_text(tokenizer, ids, labels) == "A desk lamp.<|im_end|>\nA yoga mat.<|im_end|>\n"
    text = tokenizer.decode(ids)
    for prompt in ("<|im_start|>system\nBe brief.", "A lamp?", "<|im_start|>user\nAnd a mat?",
                   "<|im_start|>assistant\n"):
        assert prompt in text and prompt not in trained_text(tokenizer, ids, labels)
    # every label is its token or -100: nothing shifted, nothing invented
    assert all(label in (-100, token) for token, label in zip(ids, labels))
    last_ids, last = ChatEncoder(tokenizer, 256, 256, train_on="last_assistant").encode(MULTI)
    assert trained_text(tokenizer, last_ids, last) == "A yoga mat.<|im_end|>\n"
    assert ChatEncoder(tokenizer, 256, 256, train_on="all").encode(MULTI)[1] == ids


def test_the_prompt_is_everything_before_the_last_answer_with_the_assistant_header(tokenizer):
    encoder = ChatEncoder(tokenizer, 256, 256)
    prompt = tokenizer.decode(encoder.prompt_ids(MULTI))
    assert prompt.endswith("<|im_start|>user\nAnd a mat?<|im_end|>\n<|im_start|>assistant\n")
    assert "A yoga mat" not in prompt and "A desk lamp." in prompt
    assert encoder.stop_token_ids() == [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    # a base model's tokenizer (Qwen2.5 base: eos <|endoftext|>) still stops at the template's end of turn
    base = AutoTokenizer.from_pretrained(tokenizer.name_or_path, eos_token="<|endoftext|>")
    assert ChatEncoder(base, 256, 256).stop_token_ids() == [base.convert_tokens_to_ids(t)
                                                           for t in ("<|im_end|>", "<|endoftext|>")]


def test_templates_that_cannot_be_used_are_one_line(tokenizer):
    bare = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    bare.chat_template = None
    with pytest.raises(UserError, match=r"has no chat template — use an instruct model, or set model.chat_template"):
        ChatEncoder(bare, 8, 8)
    # a template that adds text after the last turn only when it is last (not a prefix of its continuation)
    suffix = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
              "{% if add_generation_prompt %}assistant:{% else %}[end]{% endif %}")
    with pytest.raises(UserError, match="does not render a conversation as the start of its continuation"):
        ChatEncoder(tokenizer, 64, 64, chat_template=suffix).encode(MULTI)
    with pytest.raises(UserError, match="model.train_on='answers'"):
        ChatEncoder(tokenizer, 8, 8, train_on="answers")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def chat_dm(tmp_path, tokenizer, **data):
    cfg = compose_config("train", ["experiment=quickstart_chat", *(f"data.{k}={v}" for k, v in data.items())], tmp_path)
    return connect(build_data(cfg), tokenizer, "chat")


def conversation(i: int, answer: str | None = None) -> list[dict]:
    return [{"role": "user", "content": f"Question {i}?\n  indented line"},
            {"role": "assistant", "content": f"Answer {i}." if answer is None else answer}]


def test_openai_records_skip_and_count_what_a_model_cannot_learn(tmp_path, tokenizer):
    rows = [{"messages": conversation(i)} for i in range(20)]
    rows += [{"messages": [{"role": "assistant", "content": "no question"}]},          # bad_roles
             {"messages": conversation(90, answer="   ")},                            # empty:assistant
             {"messages": conversation(91, answer="long " * 400)},                    # too_long:tokens
             {"messages": "not a list"}, {"other": 1},                                # bad_field:messages
             {"messages": conversation(0)}]                                           # duplicate
    path = write_jsonl(tmp_path / "chats.jsonl", rows)
    dm = chat_dm(tmp_path, tokenizer, data_file=str(path), max_length=128)
    samples = dm.load_samples()
    assert len(samples) == 21  # the too-long one is refused once tokenized
    dm.setup("fit")
    assert sum(len(part) for part in dm.splits.values()) == 20
    assert dm.report()["skipped"] == {"bad_roles": 1, "empty:assistant": 1, "too_long:tokens": 1,
                                      "bad_field:messages": 2, "duplicate": 1}
    source, _ = texts(samples[0])
    assert source == "Question 0?\n  indented line"  # light cleaning keeps line breaks and indentation


def test_in_error_mode_a_bad_conversation_names_its_file_and_line(tmp_path, tokenizer):
    rows = [{"messages": conversation(i)} for i in range(3)] + [{"messages": conversation(3, answer="")}]
    path = write_jsonl(tmp_path / "chats.jsonl", rows)
    with pytest.raises(UserError, match=r"chats\.jsonl:4: bad record \(empty:assistant\)"):
        chat_dm(tmp_path, tokenizer, data_file=str(path), on_bad_record="error").load_samples()
    long = write_jsonl(tmp_path / "long.jsonl", rows[:3] + [{"messages": conversation(4, answer="long " * 300)}])
    with pytest.raises(UserError, match=r"long\.jsonl:4: bad record \(too_long:tokens: longer than data.max_length=64"):
        chat_dm(tmp_path, tokenizer, data_file=str(long), on_bad_record="error", max_length=64,
                val_fraction=0.25, test_fraction=0.0).setup("fit")


def test_sharegpt_alpaca_and_parquet_give_the_same_conversations(tmp_path, tokenizer):
    pairs = [(f"Question {i}?", f"Answer {i}.") for i in range(12)]
    openai = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs]
    sharegpt = [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]} for q, a in pairs]
    alpaca = [{"instruction": q.split(" ")[0], "input": q.split(" ", 1)[1], "output": a} for q, a in pairs]
    datasets.Dataset.from_list(openai).to_parquet(str(tmp_path / "chats.parquet"))
    datasets.Dataset.from_list(openai).save_to_disk(str(tmp_path / "saved"))
    results = {}
    for name, fmt, path in [("openai", "openai", write_jsonl(tmp_path / "o.jsonl", openai)),
                            ("sharegpt", "sharegpt", write_jsonl(tmp_path / "s.jsonl", sharegpt)),
                            ("parquet", "openai", tmp_path / "chats.parquet"),
                            ("saved", "openai", tmp_path / "saved")]:
        samples = chat_dm(tmp_path / name, tokenizer, data_file=str(path), format=fmt).load_samples()
        results[name] = [texts(row) for row in samples]
    assert results["openai"] == results["sharegpt"] == results["parquet"] == results["saved"]
    assert results["openai"][0] == ("Question 0?", "Answer 0.")
    alpaca_rows = chat_dm(tmp_path / "a", tokenizer, data_file=str(write_jsonl(tmp_path / "a.jsonl", alpaca)),
                          format="alpaca").load_samples()
    assert texts(alpaca_rows[0]) == ("Question\n\n0?", "Answer 0.")
    with pytest.raises(UserError, match=r"a\.csv: column 'messages' holds string values, not a list"):
        (tmp_path / "a.csv").write_text("messages\nhello\n", encoding="utf-8")
        chat_dm(tmp_path / "c", tokenizer, data_file=str(tmp_path / "a.csv")).load_samples()


@pytest.mark.parametrize("data", ["amazon_sample", "tarot", "pairs"])
def test_the_one_turn_datasets_train_a_chat_model(cache_dir, tmp_path, data):
    cfg = compose_config("train", ["model=tiny_chat", f"data={data}", "data.limit_train_samples=8"], tmp_path)
    module, datamodule = build_model_and_data(cfg)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    tok = module.tokenizer
    first = tok.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()])
    assert first.startswith("<|im_start|>user\n") and first.rstrip().endswith("<|im_end|>")
    labelled = tok.decode([t for t in batch["labels"][0].tolist() if t != -100])
    assert labelled.strip().endswith("<|im_end|>") and "<|im_start|>" not in labelled


@pytest.fixture(scope="module")
def chat_run(trained_chat_run, tmp_path_factory) -> Path:
    """The chat quickstart run, copied under a logs directory as ``train/runs/chat``."""
    run_dir = tmp_path_factory.mktemp("chat_logs") / "logs" / "train" / "runs" / "chat"
    shutil.copytree(trained_chat_run, run_dir)
    return run_dir


@pytest.mark.slow
def test_the_chat_quickstart_trains_exports_and_its_answers_stop(chat_run, tmp_path):
    report = read_json(chat_run / "metrics.json")
    assert report["model"]["family"] == "chat" and report["best_checkpoint"]["path"]
    adapter = AutoTokenizer.from_pretrained(chat_run / "adapter")
    assert adapter.chat_template and adapter.eos_token == "<|im_end|>"  # exported with its template

    def generated_tokens(ckpt: str, out) -> list[int]:
        run_cli("evaluate.py", f"ckpt={ckpt}", f"config_from={chat_run}", "split=val", f"hydra.run.dir={out}")
        rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        return [len(adapter(r["prediction"], add_special_tokens=False)["input_ids"]) for r in rows]

    limit = 64  # model.generation.max_new_tokens of tiny_chat
    trained = generated_tokens(str(chat_run), tmp_path / "trained")
    assert sum(0 < n < limit - 4 for n in trained) >= 0.8 * len(trained)  # most answers say something, then end


@pytest.mark.slow
def test_the_exported_adapter_has_the_layout_vllms_lora_loader_reads(chat_run):
    # vLLM's LoRA serving reads adapter_config.json and adapter_model.safetensors with peft's saved key names
    import re

    from safetensors.torch import load_file

    adapter = chat_run / "adapter"
    config = read_json(adapter / "adapter_config.json")
    assert config["peft_type"] == "LORA" and config["r"] and config["lora_alpha"] and config["target_modules"]
    assert Path(config["base_model_name_or_path"]).is_dir() and not config.get("modules_to_save")
    keys = load_file(adapter / "adapter_model.safetensors").keys()
    assert keys and all(re.fullmatch(r"base_model\.model\..+\.lora_[AB]\.weight", k) for k in keys)


@pytest.mark.slow
def test_a_served_conversation_is_answered_as_plain_peft_answers_it_through_the_template(chat_run, tmp_path):
    from peft import PeftModel

    from tests.test_serving import running_server

    conversation = [{"role": "user", "content": "Stainless Steel Water Bottle"},
                    {"role": "assistant", "content": "A bottle that keeps drinks cold."},
                    {"role": "user", "content": "Bamboo Cutting Board"}]
    adapter = chat_run / "adapter"
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    base = AutoModelForCausalLM.from_pretrained(read_json(adapter / "adapter_config.json")["base_model_name_or_path"])
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                             eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                             pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()

    logs = chat_run.parents[2]
    with running_server(tmp_path / "served", f"logs_dir={logs}", "list_base_models=false") as server:
        post = functools.partial(requests.post, f"{server.url}/api/generate_text", timeout=300)
        answer = post(json={"model_name": "train/runs/chat/adapter", "messages": conversation, "max_new_tokens": 24,
                            "do_sample": False, "num_beams": 1, "repetition_penalty": 1.0,
                            "no_repeat_ngram_size": 0})
        assert answer.status_code == 200, answer.text
        assert answer.json()["text"] == expected and expected
        ends_with_answer = post(json={"model_name": "train/runs/chat/adapter", "messages": conversation[:2]})
        assert ends_with_answer.status_code == 422
        assert "the last message must be the user's" in ends_with_answer.json()["detail"]


@pytest.mark.parametrize("dtype, expected", [("bfloat16", torch.bfloat16), (None, torch.float32)])
def test_model_dtype_decides_the_base_weights_whatever_the_checkpoint_stores(cache_dir, tmp_path, dtype, expected):
    # instruct checkpoints are stored in bfloat16, and transformers 5 loads them as stored unless told otherwise
    stored = tmp_path / "bf16"
    source = tiny_chat(str(cache_dir / "models"), [str(SAMPLE)])
    AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16).save_pretrained(stored)
    AutoTokenizer.from_pretrained(source).save_pretrained(stored)
    cfg = compose_config("train", ["experiment=quickstart_chat", f"model.pretrained={stored}",
                                   f"model.dtype={dtype or 'null'}"], tmp_path)
    module, _ = build_model_and_data(cfg)
    frozen = {p.dtype for p in module.model.parameters() if not p.requires_grad}
    trained = {p.dtype for p in module.model.parameters() if p.requires_grad}
    assert frozen == {expected} and trained == {torch.float32}  # LoRA weights stay float32 either way


def test_preflight_counts_the_conversations_too_long_for_max_length_as_training_drops_them(cache_dir, tmp_path):
    overrides = ["experiment=quickstart_chat", "data.max_length=80"]
    run_cli("train.py", *overrides, "preflight=true", f"hydra.run.dir={tmp_path / 'preflight'}")
    plan = read_json(tmp_path / "preflight" / "preflight.json")["data"]
    _, datamodule = build_model_and_data(compose_config("train", overrides, tmp_path))
    datamodule.setup("fit")
    assert datamodule.encoder_skips["too_long:tokens"] == sum(plan["too_long_refused"].values()) > 0
    assert plan["splits_used"] == {name: len(part) for name, part in datamodule.splits.items()}
