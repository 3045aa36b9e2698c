"""A load test against a real uvicorn on loopback (``python serve.py``): 64 mixed concurrent requests over
more distinct models (seq2seq, causal, diffusion) than ``max_loaded_models``.

Every request must succeed (the wait for a model is sized so that none gets a 503) and answer exactly
what the same request answers when sent alone (greedy text, seeded sampling and seeded images); the
server must never hold more than ``max_loaded_models`` models, which it records itself (``/api/health``)
and which is also sampled after every answer. Latencies are printed, not asserted.
"""

import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import logs_holding
from tests.test_serving import running_server

MAX_LOADED = 2
TITLES = ("Stainless Steel Insulated Water Bottle", "Leather Wallet", "Yoga Mat")


@pytest.fixture(scope="module")
def load_logs(trained_run, trained_shoes_run, tmp_path_factory):
    return logs_holding(tmp_path_factory, "load_logs", text=trained_run, shoes=trained_shoes_run)


def distinct_requests(image_model: str) -> list[tuple[str, dict]]:
    """15 requests over 6 models: two runs' seq2seq adapters/checkpoints, base seq2seq and causal, two
    diffusion models."""
    text = [("train/runs/text/adapter", {"title": t}) for t in TITLES]
    text += [("train/runs/text/last", {"title": TITLES[1]}),
             ("train/runs/text/adapter", {"title": TITLES[2], "do_sample": True, "temperature": 1.3, "seed": 7})]
    text += [("base/tiny_t5", {"title": t, "max_new_tokens": 8}) for t in TITLES[:2]]
    text += [("base/tiny_gpt2", {"title": t, "max_new_tokens": 8}) for t in TITLES]
    text += [("base/tiny_gpt2", {"prompt": "A soft cotton", "do_sample": True, "top_p": 0.9, "seed": 3,
                                 "max_new_tokens": 8})]
    images = [(name, {"prompt": p, "seed": s, "num_images": 1, "num_inference_steps": 3})
              for name in (image_model, "base/tiny_sd") for p, s in (("a red sneaker", 1), ("a leather boot", 2))]
    return [("/api/generate_text", n, b) for n, b in text] + [("/api/generate", n, b) for n, b in images]


def answer_of(path: str, response: requests.Response):
    body = response.json()
    return body["images"] if path == "/api/generate" else body["text"]


@pytest.mark.slow
def test_64_mixed_concurrent_requests_answer_as_if_alone_within_the_model_limit(load_logs, tmp_path):
    overrides = [f"logs_dir={load_logs}", f"max_loaded_models={MAX_LOADED}", "model_wait_seconds=900",
                 f"output_dir={tmp_path / 'images'}"]
    with running_server(tmp_path / "served", *overrides) as server:
        listed = {m["name"]: m for m in requests.get(f"{server.url}/api/models", timeout=60).json()["models"]}
        image_model = next(n for n, m in listed.items() if m["run"] == "train/runs/shoes" and m["recommended"])
        distinct = distinct_requests(image_model)
        assert len({name for _, name, _ in distinct}) == 6 > MAX_LOADED
        assert {listed[name]["family"] for _, name, _ in distinct} == {"seq2seq", "causal", "diffusion"}

        def send(job):
            path, name, body = job
            started = time.monotonic()
            response = requests.post(f"{server.url}{path}", json={"model_name": name, **body}, timeout=900)
            latency = time.monotonic() - started
            resident = requests.get(f"{server.url}/api/health", timeout=60).json()["resident_models"]
            return response, latency, resident

        alone = []
        for job in sorted(distinct, key=lambda j: j[1]):  # one model after another: few loads
            response, _, _ = send(job)
            assert response.status_code == 200, (job, response.text)
            alone.append((job, answer_of(job[0], response)))
        expected = {repr(job): answer for job, answer in alone}

        jobs = [distinct[i % len(distinct)] for i in range(64)]
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            results = list(pool.map(send, jobs))
        wall = time.monotonic() - started
        health = requests.get(f"{server.url}/api/health", timeout=60).json()

    statuses = [r.status_code for r, _, _ in results]
    assert not [s for s in statuses if s >= 500], [(j, r.text) for j, (r, _, _) in zip(jobs, results)
                                                   if r.status_code >= 500][:3]
    assert statuses == [200] * len(jobs), [(j, r.text) for j, (r, _, _) in zip(jobs, results) if not r.ok][:3]
    mismatched = [job for job, (r, _, _) in zip(jobs, results) if answer_of(job[0], r) != expected[repr(job)]]
    assert mismatched == []
    sampled = [resident for _, _, resident in results]
    assert max(sampled) <= MAX_LOADED and health["max_resident_models"] <= MAX_LOADED, (sampled, health)
    assert health["evictions"] > 0  # more models than the limit really went through memory
    latencies = sorted(latency for _, latency, _ in results)
    p50, p95 = statistics.median(latencies), latencies[int(0.95 * (len(latencies) - 1))]
    print(f"\n64 concurrent requests over {len(distinct)} distinct ones, 6 models, max_loaded_models={MAX_LOADED}: "
          f"wall {wall:.1f} s, p50 {p50:.2f} s, p95 {p95:.2f} s, max {latencies[-1]:.2f} s; loads "
          f"{health['loads']}, evictions {health['evictions']}, max resident {health['max_resident_models']}")
