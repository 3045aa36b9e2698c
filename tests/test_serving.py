"""The generation API against a real uvicorn server on loopback (``python serve.py``), with ``requests``.

The server scans a logs directory holding a copy of the session's quickstart text run and a short
quickstart_shoes run. Text outputs are checked against plain peft generation from the exported adapter.
"""

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from omegaconf import OmegaConf
from PIL import Image

from src.serving.loading import ModelCache
from src.serving.registry import ModelRegistry
from tests.conftest import ROOT, read_json

IMAGE_BODY = {"prompt": "a photo of a red casual sneaker", "num_images": 2, "num_inference_steps": 4,
              "guidance_scale": 3.0}


def plain_peft_texts(adapter: Path, sources: list[str], max_new_tokens: int) -> list[str]:
    """Greedy generations from the exported adapter through plain transformers + peft (no lorafit code)."""
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter)
    base = AutoModelForSeq2SeqLM.from_pretrained(PeftConfig.from_pretrained(adapter).base_model_name_or_path)
    model = PeftModel.from_pretrained(base, adapter).eval()
    inputs = tokenizer(sources, return_tensors="pt", padding=True)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=1, do_sample=False)
    return [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]


def prompt_template(run_dir: Path) -> str:
    return OmegaConf.load(run_dir / ".hydra" / "config.yaml").data.prompt_template


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def logs_dir(trained_run, trained_shoes_run, tmp_path_factory) -> Path:
    """Both runs copied under one logs directory (as moved runs), plus a symlink that points outside it."""
    root = tmp_path_factory.mktemp("serve_logs")
    logs = root / "logs"
    shutil.copytree(trained_run, logs / "train" / "runs" / "text")
    shutil.copytree(trained_shoes_run, logs / "train" / "runs" / "shoes")
    (root / "secret.ckpt").write_text("outside the logs directory")
    os.symlink(root / "secret.ckpt", logs / "train" / "runs" / "text" / "checkpoints" / "checkpoint-999.ckpt")
    return logs


@pytest.fixture(scope="module")
def server(logs_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("served")
    port = free_port()
    log_file = open(out / "server.out", "w")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "serve.py"), f"logs_dir={logs_dir}", f"port={port}", "max_loaded_models=3",
         f"output_dir={out / 'images'}", f"hydra.run.dir={out}"],
        cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"}, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"serve.py exited {proc.returncode}:\n{(out / 'server.out').read_text()[-4000:]}")
        try:
            if requests.get(f"{url}/api/models", timeout=5).ok:
                break
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("serve.py did not answer within 300 s")
        time.sleep(0.5)
    yield type("Server", (), {"url": url, "out": out})
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log_file.close()


def models(server) -> dict[str, dict]:
    response = requests.get(f"{server.url}/api/models", timeout=30)
    assert response.status_code == 200
    return {m["name"]: m for m in response.json()["models"]}


def generate_images(server, name: str, **body) -> requests.Response:
    return requests.post(f"{server.url}/api/generate", json={"model_name": name, **IMAGE_BODY, **body}, timeout=300)


def generate_text(server, name: str, **body) -> requests.Response:
    return requests.post(f"{server.url}/api/generate_text", json={"model_name": name, **body}, timeout=300)


# -- listing -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_lists_every_checkpoint_adapter_and_base(server, logs_dir, trained_run):
    listed = models(server)
    run = logs_dir / "train" / "runs" / "text"
    steps = sorted(int(p.stem.split("-")[1]) for p in (trained_run / "checkpoints").glob("checkpoint-*.ckpt"))
    assert steps
    for step in steps:
        entry = listed[f"train/runs/text/checkpoint-{step}"]
        assert (entry["kind"], entry["family"], entry["source"], entry["step"]) == ("text", "seq2seq", "checkpoint",
                                                                                 step)
    best = Path(read_json(run / "metrics.json")["best_checkpoint"]["path"]).stem
    recommended = [n for n, m in listed.items() if m["recommended"] and m["run"] == "train/runs/text"]
    assert recommended == [f"train/runs/text/{best}"]
    assert listed["train/runs/text/adapter"]["step"] == int(best.split("-")[1])
    assert listed["train/runs/text/last"]["source"] == "last"
    assert listed["train/runs/text/base"]["source"] == "base"
    shoes = [m for m in listed.values() if m["run"] == "train/runs/shoes"]
    assert {m["kind"] for m in shoes} == {"image"} and any(m["recommended"] for m in shoes)
    assert {"base/tiny_t5", "base/tiny_gpt2", "base/tiny_sd"} <= set(listed)  # built locally: always offered
    assert "base/flan_t5" not in listed  # a hub id that is not downloaded here
    assert not [n for n in listed if "999" in n]  # the symlink that leaves the logs directory
    assert requests.get(f"{server.url}/docs", timeout=30).status_code == 200
    assert "/api/generate" in requests.get(f"{server.url}/openapi.json", timeout=30).json()["paths"]


# -- images ------------------------------------------------------------------------------------------

def shoes_checkpoint(server) -> str:
    return next(n for n, m in models(server).items() if m["run"] == "train/runs/shoes" and m["recommended"])


@pytest.mark.slow
def test_generates_images_from_the_reference_body(server):
    name = shoes_checkpoint(server)
    response = generate_images(server, name, seed=5)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["seeds"] == [5, 6] and len(body["images"]) == len(body["files"]) == 2
    for encoded, file in zip(body["images"], body["files"]):
        data = base64.b64decode(encoded)
        assert Image.open(io.BytesIO(data)).size == (64, 64)
        assert Path(file).parent == server.out / "images" and Path(file).read_bytes() == data
    assert body["images"][0] != body["images"][1]  # each image its own noise
    again = generate_images(server, name, seed=5).json()
    assert again["images"] == body["images"]
    unseeded = generate_images(server, name, num_images=1).json()
    replay = generate_images(server, name, num_images=1, seed=unseeded["seeds"][0]).json()
    assert replay["images"] == unseeded["images"]  # the returned seed reproduces an unseeded request


# -- text --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_generates_text_formatted_like_training(server, logs_dir):
    run = logs_dir / "train" / "runs" / "text"
    title = "Stainless Steel Insulated Water Bottle"
    response = generate_text(server, "train/runs/text/adapter", title=title)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["input"] == prompt_template(run).format(title=title)
    assert body["text"] == plain_peft_texts(run / "adapter", [body["input"]], body["settings"]["max_new_tokens"])[0]
    short = generate_text(server, "train/runs/text/adapter", title=title, max_new_tokens=3).json()
    assert short["settings"]["max_new_tokens"] == 3
    assert len(short["text"].split()) < len(body["text"].split())
    raw = generate_text(server, "train/runs/text/adapter", prompt=body["input"]).json()
    assert raw["input"] == body["input"] and raw["text"] == body["text"]
    sampled = [generate_text(server, "train/runs/text/adapter", title=title, do_sample=True, top_p=0.9,
                             temperature=1.5, seed=seed).json() for seed in (1, 1, 2)]
    assert sampled[0]["text"] == sampled[1]["text"] and sampled[0]["seed"] == 1


# -- input safety ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_rejects_bad_requests_with_a_clear_message(server):
    name = shoes_checkpoint(server)
    bad_images = [({"num_images": 100}, "num_images"), ({"num_inference_steps": 0}, "num_inference_steps"),
                  ({"num_inference_steps": 10_000}, "num_inference_steps"), ({"prompt": ""}, "prompt"),
                  ({"prompt": "x" * 1001}, "prompt"), ({"guidance_scale": -1}, "guidance_scale"),
                  ({"num_image": 2}, "num_image"), ({"seed": -1}, "seed")]
    for change, field in bad_images:
        response = generate_images(server, name, **change)
        assert response.status_code == 422 and field in response.json()["message"], (change, response.text)
    bad_texts = [({"title": "a", "prompt": "b"}, "exactly one"), ({}, "exactly one"),
                 ({"title": "a", "max_new_tokens": 100_000}, "max_new_tokens"), ({"title": "a", "top_p": 1.5}, "top_p"),
                 ({"title": "a", "num_beams": 0}, "num_beams")]
    for change, words in bad_texts:
        response = generate_text(server, "train/runs/text/adapter", **change)
        assert response.status_code == 422 and words in response.json()["message"], (change, response.text)
    response = requests.post(f"{server.url}/api/generate", data="not json", timeout=30,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 422


@pytest.mark.slow
def test_unknown_models_and_paths_outside_the_logs_directory_are_404(server, logs_dir):
    outside = ["nope", "../secret.ckpt", "train/runs/text/../../../../secret.ckpt", "/etc/passwd",
               str(logs_dir / "train" / "runs" / "text" / "checkpoints" / "last.ckpt"),
               "train/runs/text/checkpoint-999", "train/runs/text/checkpoints/checkpoint-999.ckpt",
               "train/runs/text/../text/adapter"]
    for name in outside:
        response = generate_images(server, name)
        assert response.status_code == 404 and "GET /api/models" in response.json()["detail"], name
        assert generate_text(server, name, title="a").status_code == 404, name
    response = generate_images(server, "train/runs/text/adapter")
    assert response.status_code == 400 and "/api/generate_text" in response.json()["detail"]
    response = generate_text(server, shoes_checkpoint(server), title="a")
    assert response.status_code == 400 and "POST /api/generate" in response.json()["detail"]


# -- concurrency -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_concurrent_requests_give_the_sequential_outputs(server):
    image_model = shoes_checkpoint(server)
    jobs = [("image", image_model, {"seed": s, "num_images": 1}) for s in (11, 12, 13)]
    jobs += [("text", "train/runs/text/adapter", {"title": t, "do_sample": True, "temperature": 1.3, "seed": s})
             for t, s in (("Leather Wallet", 1), ("Leather Wallet", 2), ("Yoga Mat", 3))]
    jobs += [("text", "train/runs/text/last", {"title": "Yoga Mat"})]

    def run(job):
        kind, name, body = job
        response = (generate_images if kind == "image" else generate_text)(server, name, **body)
        assert response.status_code == 200, response.text
        return response.json()["images"] if kind == "image" else response.json()["text"]

    sequential = [run(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        concurrent = list(pool.map(run, jobs * 2))  # each request twice: the same model from two threads at once
    assert concurrent == sequential * 2
    assert sequential[3] != sequential[4]  # different seeds really sample differently


# -- units: registry and cache (no server) -------------------------------------------------------------

def fake_run(run_dir: Path, checkpoints: list[str], best: str | None) -> None:
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(
        "model:\n  _target_: src.modules.seq2seq_lora.Seq2SeqLoRAModule\n  pretrained: t5-small\n")
    (run_dir / "checkpoints").mkdir()
    for name in checkpoints:
        (run_dir / "checkpoints" / name).write_bytes(b"")
    if best:
        (run_dir / "metrics.json").write_text(json.dumps({"best_checkpoint": {"path": f"/elsewhere/{best}"}}))


def test_registry_names_runs_by_their_path_and_never_leaves_the_logs_dir(tmp_path):
    logs = tmp_path / "logs"
    fake_run(logs / "train" / "runs" / "a", ["checkpoint-5.ckpt", "checkpoint-10.ckpt", "last.ckpt"],
             "checkpoint-5.ckpt")
    fake_run(logs / "train" / "multiruns" / "x" / "0", ["checkpoint-3.ckpt"], None)
    fake_run(logs / "evaluate" / "runs" / "e", [], None)  # no weights: not a model
    (tmp_path / "outside.ckpt").write_bytes(b"")
    os.symlink(tmp_path / "outside.ckpt", logs / "train" / "runs" / "a" / "checkpoints" / "checkpoint-7.ckpt")
    registry = ModelRegistry(logs)
    names = [e.name for e in registry.list()]
    assert names == ["train/multiruns/x/0/base", "train/multiruns/x/0/checkpoint-3", "train/runs/a/base",
                     "train/runs/a/checkpoint-5", "train/runs/a/checkpoint-10", "train/runs/a/last"]
    assert [e.name for e in registry.list() if e.recommended] == ["train/runs/a/checkpoint-5"]
    assert registry.get("train/runs/a/checkpoint-10").target.path == str(
        logs.resolve() / "train" / "runs" / "a" / "checkpoints" / "checkpoint-10.ckpt")
    for name in ["train/runs/a/checkpoint-7", "../outside", "train/runs/a/../a/checkpoint-5",
                 "train/runs/a/checkpoints"]:
        assert registry.get(name) is None
    fake_run(logs / "train" / "runs" / "b", ["checkpoint-1.ckpt"], None)  # trained after the server started
    assert registry.get("train/runs/b/checkpoint-1") is not None
    (logs / "train" / "runs" / "b" / "checkpoints" / "checkpoint-1.ckpt").unlink()  # rotated out of the top k
    assert registry.get("train/runs/b/checkpoint-1") is None


def test_model_cache_is_bounded_least_recently_used_and_loads_once(tmp_path):
    loads = []
    gate = threading.Event()

    def load(spec):
        loads.append(spec)
        gate.wait(5)
        return f"model {spec}"

    cache = ModelCache(load, max_loaded=2)
    gate.set()
    for key in "aba":
        assert cache.get(key, key) == f"model {key}"
    cache.get("c", "c")  # evicts b, the least recently used
    assert cache.keys() == ["a", "c"] and loads == ["a", "b", "c"]
    cache.get("b", "b")
    assert loads == ["a", "b", "c", "b"]
    gate.clear()
    with ThreadPoolExecutor(4) as pool:
        results = [pool.submit(cache.get, "d", "d") for _ in range(4)]
        time.sleep(0.2)
        gate.set()
        assert {r.result() for r in results} == {"model d"}
    assert loads.count("d") == 1  # concurrent requests for a loading model share one load
