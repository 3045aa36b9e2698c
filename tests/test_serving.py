"""The generation API against a real uvicorn server on loopback (``python serve.py``), with ``requests``.

The server scans a logs directory holding a copy of the session's quickstart text run and a short
quickstart_shoes run. Text outputs are checked against plain peft generation from the exported adapter.
The limits (trust, body size, busy models, eviction, image retention, error bodies, API key) are unit
tests against the ASGI app in process, with fake models: fast, and no server to start.
"""

import asyncio
import base64
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import torch
from omegaconf import OmegaConf
from PIL import Image

from src.errors import UserError
from src.serving.app import create_app
from src.serving.images import ImageStore
from src.serving.loading import LoadedModel, ModelBusy, ModelCache
from src.serving.registry import ModelEntry, ModelRegistry
from src.conversation import one_turn, prompt_text
from src.targets import EvalTarget
from tests.conftest import ROOT, compose_config, read_json

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


@contextmanager
def running_server(out: Path, *overrides: str, env: dict | None = None, startup_timeout: float = 300):
    """``python serve.py`` on a free loopback port, yielded once uvicorn says it is listening (read from its
    output, no polling) and ``/api/health`` answers; its output ends up in ``out/server.out``."""
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "serve.py"), f"port={port}", f"hydra.run.dir={out}", *overrides],
        cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(startup_timeout, proc.kill)  # a server that never starts ends its output
    watchdog.start()
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "Uvicorn running on" in line:
            break
    watchdog.cancel()
    if proc.poll() is not None or not lines or "Uvicorn running on" not in lines[-1]:
        proc.kill()
        raise AssertionError(f"serve.py did not start (exit {proc.wait()}):\n{''.join(lines)[-4000:]}")

    def drain():
        with open(out / "server.out", "w") as log_file:
            log_file.writelines(lines)
            for rest in proc.stdout:
                lines.append(rest)
                log_file.write(rest)

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    url = f"http://127.0.0.1:{port}"
    try:
        assert requests.get(f"{url}/api/health", timeout=30).ok
        yield SimpleNamespace(url=url, out=out, lines=lines)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        drainer.join(timeout=30)


@pytest.fixture(scope="module")
def server(logs_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("served")
    with running_server(out, f"logs_dir={logs_dir}", "max_loaded_models=3", f"output_dir={out / 'images'}") as srv:
        yield srv


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
    response = generate_images(server, name, seed=5, save=True)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["seeds"] == [5, 6] and len(body["images"]) == len(body["files"]) == 2
    for encoded, file in zip(body["images"], body["files"]):
        data = base64.b64decode(encoded)
        assert Image.open(io.BytesIO(data)).size == (64, 64)
        assert "/" not in file and (server.out / "images" / file).read_bytes() == data
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
        gate.set()
        assert {r.result() for r in results} == {"model d"}
    assert loads.count("d") == 1  # concurrent requests for a loading model share one load


# -- units: limits and trust, against the ASGI app in process (fake models) ---------------------------------

LIMITS = OmegaConf.create({"max_prompt_chars": 1000, "max_num_images": 8, "max_inference_steps": 100,
                           "max_guidance_scale": 30, "max_new_tokens": 512, "max_num_beams": 8})


class FakeText:
    """A text 'model' that echoes its input; ``gate`` (when given) holds it mid-generation."""

    generation = {"max_new_tokens": 4}

    def __init__(self, gate: threading.Event | None = None):
        self.gate, self.started = gate, threading.Event()

    def prompt_batch(self, requests):
        return {"sources": [prompt_text(r) for r in requests]}

    def request(self, title):
        return one_turn(f"Title: {title}")

    def generate_texts(self, batch, settings):
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(60)
        return [f"echo {s}" for s in batch["sources"]]


class FakeImages:
    generation = {}

    def generate_images(self, prompts, seeds, settings):
        return [torch.full((3, 4, 4), seed % 256, dtype=torch.uint8) for seed in seeds]


def fake_entry(name: str, kind: str = "text") -> ModelEntry:
    return ModelEntry(name=name, kind=kind, family="diffusion" if kind == "image" else "seq2seq", source="base",
                      base="fake", target=EvalTarget("base", None, None))


def fake_loaded(module) -> LoadedModel:
    text = isinstance(module, FakeText)
    return LoadedModel(module, "text" if text else "image", False, torch.device("cpu"),
                       format=module if text else None, encoder=module if text else None)


def fake_app(tmp_path: Path, modules: dict, max_loaded: int = 2, max_saved: int = 100, load=None, **options):
    """The real app over fake base models ``modules`` (name → fake), an empty logs directory and ``options``."""
    (tmp_path / "logs").mkdir(parents=True, exist_ok=True)
    entries = [fake_entry(n, "image" if isinstance(m, FakeImages) else "text") for n, m in modules.items()]
    registry = ModelRegistry(tmp_path / "logs", entries)
    cache = ModelCache(load or (lambda entry: fake_loaded(modules[entry.name])), max_loaded)
    return create_app(registry, cache, ImageStore(tmp_path / "images", max_saved), LIMITS, **options)


async def asgi(app, method: str, path: str, body=None, headers: dict | None = None, chunks: int = 1):
    """One request straight into the ASGI app: (status, headers, decoded JSON or text)."""
    raw = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
    headers = {"content-type": "application/json", **(headers or {})}
    head = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    if chunks == 1:
        head.append((b"content-length", str(len(raw)).encode()))
    size = -(-len(raw) // chunks) if raw else 0
    messages = [{"type": "http.request", "body": raw[i * size:(i + 1) * size], "more_body": i < chunks - 1}
                for i in range(chunks)]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": head,
             "client": ("127.0.0.1", 5000), "server": ("testserver", 80)}
    sent = []

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # the client stays connected

    async def send(message):
        sent.append(message)

    try:
        await asyncio.wait_for(app(scope, receive, send), 60)
    except Exception:  # noqa: BLE001 (Starlette re-raises after sending its 500)
        if not sent:
            raise
    start = next(m for m in sent if m["type"] == "http.response.start")
    text = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body").decode()
    try:
        content = json.loads(text)
    except ValueError:
        content = text
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, content


def call(app, method: str, path: str, body=None, **kwargs):
    return asyncio.run(asgi(app, method, path, body, **kwargs))


def one_line(content) -> str:
    assert isinstance(content, dict) and isinstance(content["detail"], str), content
    assert "\n" not in content["detail"]
    return content["detail"]


def write_run(run_dir: Path, config: str, checkpoint: dict | None = None) -> Path:
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(config)
    (run_dir / "checkpoints").mkdir()
    torch.save(checkpoint or {"global_step": 1, "state_dict": {}}, run_dir / "checkpoints" / "last.ckpt")
    return run_dir


def assert_run_refused_and_never_loaded(tmp_path, run: Path, *named: str) -> str:
    """evaluate.py's path and the server's both refuse ``run`` with one line holding each of ``named``; returns
    the server's error detail."""
    from src.serving.resident import Residents
    from src.targets import with_run_config

    with pytest.raises(UserError) as refused:
        with_run_config(OmegaConf.create({}), run)  # evaluate.py's path
    assert "\n" not in str(refused.value) and all(n in str(refused.value) for n in named), refused.value
    registry = ModelRegistry(tmp_path / "logs")
    residents = Residents(OmegaConf.create({}), "cpu", 16)  # the real loader
    app = create_app(registry, ModelCache(residents.load, 2), ImageStore(tmp_path / "images", 10), LIMITS,
                     resident_key=residents.key)
    status, _, listed = call(app, "GET", "/api/models")
    assert status == 200 and not [m for m in listed["models"] if run.name in m["name"]]
    name = f"{run.relative_to(tmp_path / 'logs').as_posix()}/last"
    status, _, content = call(app, "POST", "/api/generate_text", {"model_name": name, "title": "a"})
    assert status == 403 and all(n in one_line(content) for n in named), content
    assert str(tmp_path) not in content["detail"]
    return content["detail"]


# Hydra's own blocklist misses builtins.open; src.atomic.atomic_write_text is lorafit code that writes any file
@pytest.mark.parametrize("target", ["os.system", "builtins.open", "src.atomic.atomic_write_text"])
def test_a_run_config_naming_an_untrusted_target_is_refused_and_never_runs(tmp_path, target):
    from src.trust import is_trusted_target

    marker = tmp_path / "pwned"
    args = [f"touch {marker}"] if target == "os.system" else [str(marker), "w"]
    run = write_run(tmp_path / "logs" / "train" / "runs" / "evil", f"""
model:
  _target_: src.modules.seq2seq_lora.Seq2SeqLoRAModule
  pretrained:
    _target_: {target}
    _args_: {json.dumps(args)}
data:
  _target_: src.datamodules.amazon.AmazonTitlesDataModule
seed: 1
""")
    assert_run_refused_and_never_loaded(tmp_path, run, f"model.pretrained._target_='{target}'")
    assert not marker.exists()
    assert not is_trusted_target("src.runtime.os.system")  # os imported into a trusted module: still os


@pytest.mark.parametrize("interpolation, resolver", [
    ("${{oc.create:{{_target_: os.system, _args_: ['touch {marker}']}}}}", "oc.create"),  # a target made late
    ("${{oc.decode:'{{_target_: os.system, _args_: [touch {marker}]}}'}}", "oc.decode"),
    ("${{oc.env:LORAFIT_API_KEY}}", "oc.env:LORAFIT_API_KEY"),  # a server secret copied into a field
    ("${{oc.env:PROJECT_ROOT,${{oc.env:LORAFIT_API_KEY}}}}", "oc.env:LORAFIT_API_KEY"),  # nested in an allowed one
    ("${{hydra:overrides.task}}", "hydra:overrides.task"),  # the server's command line (api_key=...)
], ids=["oc.create", "oc.decode", "oc.env-secret", "oc.env-nested", "hydra-overrides"])
def test_a_run_config_calling_a_resolver_conf_does_not_use_is_refused(tmp_path, monkeypatch, interpolation,
                                                                       resolver):
    monkeypatch.setenv("LORAFIT_API_KEY", "s3cret-key")
    marker = tmp_path / "pwned"
    run = write_run(tmp_path / "logs" / "train" / "runs" / "evil", f"""
model:
  _target_: src.modules.seq2seq_lora.Seq2SeqLoRAModule
  pretrained: "{interpolation.format(marker=marker)}"
data:
  _target_: src.datamodules.amazon.AmazonTitlesDataModule
seed: 1
""")
    detail = assert_run_refused_and_never_loaded(tmp_path, run, "model.pretrained=", f"the resolver '{resolver}'")
    assert "s3cret-key" not in detail and not marker.exists()


def test_a_target_that_appears_only_once_resolved_is_refused(monkeypatch):
    """Defence in depth: even a resolver on the allowed list must not smuggle in a target."""
    import src.trust
    from src.trust import check_trusted_config

    monkeypatch.setitem(src.trust.RESOLVERS, "oc.create", None)
    cfg = OmegaConf.create({"model": {"_target_": "src.modules.seq2seq_lora.Seq2SeqLoRAModule",
                                      "pretrained": "${oc.create:{_target_: os.getcwd}}", "loop": "${data}"},
                            "data": {"_target_": "src.datamodules.amazon.AmazonTitlesDataModule", "back": "${model}"}})
    with pytest.raises(UserError, match=r"model\.pretrained\._target_='os\.getcwd'"):
        check_trusted_config(cfg, "run/.hydra/config.yaml")


def test_only_the_src_targets_conf_names_are_trusted():
    from src.trust import is_trusted_target

    assert is_trusted_target("src.modules.seq2seq_lora.Seq2SeqLoRAModule")
    for target in ("src.atomic.atomic_write_text", "src.atomic.atomic_write_json", "src.training.train",
                   "src.serving.server.build_app"):
        assert not is_trusted_target(target), target


def test_every_target_and_resolver_in_conf_is_trusted(tmp_path):
    import re

    from omegaconf import open_dict

    from src.trust import check_trusted_config, is_trusted_target

    targets = {m[1] for p in (ROOT / "conf").rglob("*.yaml")
               for m in re.finditer(r"_target_:\s*([^\s#]+)", p.read_text())}
    assert len(targets) > 20 and [t for t in targets if not is_trusted_target(t)] == []
    for path in (ROOT / "conf").rglob("*.yaml"):  # targets and resolver calls (paths, trainer=gpu, sweeps)
        check_trusted_config(OmegaConf.load(path), path)
    for experiment in sorted((ROOT / "conf" / "experiment").glob("*.yaml")):  # as train.py saves a run's config
        cfg = compose_config("train", [f"experiment={experiment.stem}"], tmp_path)
        with open_dict(cfg):
            del cfg["hydra"]
        check_trusted_config(cfg, experiment.name)


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_holding_pickled_objects_is_refused(tmp_path):
    from src.comparison.checkpoints import checkpoint_step
    from src.targets import best_checkpoint_of, load_target_weights

    marker = tmp_path / "pwned"
    run = write_run(tmp_path / "run", "model: {}\n", {"global_step": 1, "state_dict": {}, "x": RunsCode(marker)})
    path = run / "checkpoints" / "last.ckpt"
    module = SimpleNamespace(load_state_dict=lambda state: None)
    for read in (lambda: load_target_weights(module, EvalTarget("checkpoint", str(path), run)),
                 lambda: checkpoint_step(path), lambda: best_checkpoint_of(run)):
        with pytest.raises(UserError, match="weights_only") as refused:
            read()
        assert "posix.system" in str(refused.value) and "\n" not in str(refused.value)
    assert not marker.exists()
    plain = write_run(tmp_path / "plain", "model: {}\n", {"global_step": 7, "state_dict": {"w": torch.ones(2)}})
    assert checkpoint_step(plain / "checkpoints" / "last.ckpt") == 7  # tensors and plain values still load


def test_bodies_over_the_limit_get_a_413_and_422s_never_echo_the_body(tmp_path):
    app = fake_app(tmp_path, {"base/fake": FakeText()}, max_body_bytes=2048)
    big = {"model_name": "base/fake", "prompt": "x" * 900 + "é" * 600}
    for chunks in (1, 3):  # declared length, and a chunked body counted as it arrives
        status, _, content = call(app, "POST", "/api/generate_text", big, chunks=chunks)
        assert status == 413 and "max_body_bytes=2048" in one_line(content), (chunks, content)
    status, _, content = call(app, "POST", "/api/generate_text", {"model_name": "base/fake", "prompt": "short"})
    assert status == 200 and content["text"] == "echo short"
    secret = "SECRET-VALUE-1234"
    status, _, content = call(app, "POST", "/api/generate_text",
                              {"model_name": "base/fake", "title": secret, "prompt": secret, "colour": secret})
    assert status == 422 and "colour" in content["message"] and secret not in json.dumps(content)


def test_a_busy_model_gets_503_with_retry_after_and_listing_never_waits(tmp_path):
    import anyio.to_thread

    gate = threading.Event()
    first, second = FakeText(gate), FakeText(gate)
    app = fake_app(tmp_path, {"base/a": first, "base/b": second}, model_wait_seconds=0.2)

    async def scenario():
        anyio.to_thread.current_default_thread_limiter().total_tokens = 2  # a full pool: both threads generate
        loop = asyncio.get_running_loop()
        held = [asyncio.create_task(asgi(app, "POST", "/api/generate_text", {"model_name": n, "prompt": "p"}))
                for n in ("base/a", "base/b")]
        try:
            for module in (first, second):
                assert await loop.run_in_executor(None, module.started.wait, 30)
            listed = await asgi(app, "GET", "/api/models")
            health = await asgi(app, "GET", "/api/health")
            anyio.to_thread.current_default_thread_limiter().total_tokens = 3
            busy = await asgi(app, "POST", "/api/generate_text", {"model_name": "base/a", "prompt": "p"})
        finally:
            gate.set()
        return listed, health, busy, await asyncio.gather(*held)

    listed, health, busy, done = asyncio.run(scenario())
    assert listed[0] == 200 and len(listed[2]["models"]) == 2
    assert health[0] == 200 and health[2]["resident_models"] == 2
    status, headers, content = busy
    assert status == 503 and int(headers["retry-after"]) >= 1 and "base/a" in one_line(content)
    assert [d[0] for d in done] == [200, 200]


def test_the_cache_evicts_before_it_loads_never_holding_limit_plus_one(tmp_path):
    alive, seen_at_load, loads = weakref.WeakSet(), [], []

    class Model:
        pass

    def load(spec):
        seen_at_load.append(len(alive))  # what is still in memory when the next one is built
        loads.append(spec)
        model = Model()
        alive.add(model)
        return model

    cache = ModelCache(load, max_loaded=2)
    for key in "abac":  # c evicts b, the least recently used
        cache.get(key, key)
    assert cache.keys() == ["a", "c"] and loads == ["a", "b", "c"]
    assert max(seen_at_load) <= 1  # never 2 resident while a third loads
    with cache.lease("a", "a"):  # a model in use is never evicted, even when least recently used
        cache.get("b", "b")
        assert cache.keys() == ["a", "b"]
        with cache.lease("b", "b"), pytest.raises(ModelBusy):
            with cache.lease("d", "d", wait=0.05):  # both in use: no slot within the wait
                pass
    stats = cache.stats()
    assert stats.max_resident == 2 and stats.resident == 2 and stats.evictions == 2
    assert max(seen_at_load) <= 1


def test_images_are_kept_only_on_request_and_capped(tmp_path):
    app = fake_app(tmp_path, {"base/img": FakeImages()}, max_saved=3)
    images = tmp_path / "images"
    status, _, content = call(app, "POST", "/api/generate", {"model_name": "base/img", "prompt": "p", "seed": 1})
    assert status == 200 and content["files"] == [] and not list(images.glob("*"))
    saved = []
    for seed in (10, 20, 30):
        status, _, content = call(app, "POST", "/api/generate", {"model_name": "base/img", "prompt": "p",
                                                                 "num_images": 2, "seed": seed, "save": True})
        assert status == 200 and len(content["files"]) == 2 and all("/" not in f for f in content["files"])
        saved += content["files"]
    assert sorted(p.name for p in images.iterdir()) == sorted(saved[-3:])  # the newest 3


def test_500_bodies_name_an_error_id_not_paths(tmp_path, caplog):
    secret_dir = tmp_path / "logs" / "train" / "runs" / "r" / "checkpoints"

    def load(entry):
        if entry.name == "base/corrupt":
            raise UserError(f"cannot read checkpoint {secret_dir}/last.ckpt: truncated — pass a .ckpt")
        raise RuntimeError(f"unexpected failure reading {tmp_path.parent}/private/weights/{entry.name}.bin")

    app = fake_app(tmp_path, {"base/corrupt": FakeText(), "base/broken": FakeText()}, load=load)
    with caplog.at_level(logging.ERROR):
        for name in ("base/corrupt", "base/broken"):
            status, _, content = call(app, "POST", "/api/generate_text", {"model_name": name, "prompt": "p"})
            detail = one_line(content)
            assert status == 500 and "error" in detail, content
            assert str(tmp_path.parent) not in detail and "/private" not in detail, detail
            error_id = detail.split("error ")[-1].split()[0].strip(")")
            assert error_id in caplog.text
    assert "train/runs/r/checkpoints/last.ckpt" in call(
        app, "POST", "/api/generate_text", {"model_name": "base/corrupt", "prompt": "p"})[2]["detail"]
    assert f"{tmp_path.parent}/private/weights/base/broken.bin" in caplog.text  # the full story is in the log


def test_an_api_key_turns_authentication_on(tmp_path, monkeypatch):
    from src.serving.server import api_key_of

    app = fake_app(tmp_path, {"base/fake": FakeText()}, api_key="s3cret")
    body = {"model_name": "base/fake", "prompt": "p"}
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        status, response_headers, content = call(app, "POST", "/api/generate_text", body, headers=headers)
        assert status == 401 and "X-API-Key" in one_line(content) and response_headers["www-authenticate"] == "Bearer"
    assert call(app, "GET", "/api/models")[0] == 401
    assert call(app, "POST", "/api/generate_text", body, headers={"X-API-Key": "s3cret"})[0] == 200
    assert call(app, "POST", "/api/generate_text", body, headers={"Authorization": "Bearer s3cret"})[0] == 200
    assert call(app, "GET", "/api/health")[0] == 200  # liveness needs no key
    assert call(fake_app(tmp_path / "open", {"base/fake": FakeText()}), "GET", "/api/models")[0] == 200
    monkeypatch.setenv("LORAFIT_API_KEY", "from-env")
    assert api_key_of(OmegaConf.create({"api_key": None})) == "from-env"


@pytest.mark.parametrize("host, key, warned", [("0.0.0.0", None, True), ("127.0.0.1", None, False),
                                               ("0.0.0.0", "s3cret", False)])
def test_serving_beyond_loopback_without_a_key_says_so(tmp_path, monkeypatch, caplog, host, key, warned):
    import src.serving.server as server_module

    (tmp_path / "logs").mkdir()
    cfg = compose_config("serve", [f"logs_dir={tmp_path / 'logs'}", f"host={host}", f"port={free_port()}",
                                   "list_base_models=false", f"output_dir={tmp_path / 'images'}"], tmp_path)
    monkeypatch.delenv("LORAFIT_API_KEY", raising=False)
    if key:
        monkeypatch.setenv("LORAFIT_API_KEY", key)
    started = []
    monkeypatch.setattr(server_module.uvicorn, "run", lambda app, **kw: started.append(kw["host"]))
    with caplog.at_level(logging.WARNING, logger="src.serving.server"):
        server_module.serve(cfg)
    lines = [r.getMessage() for r in caplog.records if "no authentication" in r.getMessage()]
    assert started == [host] and len(lines) == int(warned)
    assert all("\n" not in line and host in line for line in lines)
