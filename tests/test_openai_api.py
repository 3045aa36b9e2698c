"""The OpenAI-compatible API through the official ``openai`` client against a real ``serve.py`` on loopback, with
an API key set: the session's chat quickstart run and its seq2seq quickstart run under one logs directory.

Error shapes and key rules are also checked in process against the ASGI app (fast, no server).
"""

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

from tests.conftest import logs_holding
from tests.test_serving import FakeText, call, fake_app, running_server

KEY = "test-key-123"
CONVERSATION = [{"role": "system", "content": "You write product descriptions."},
                {"role": "user", "content": "Stainless Steel Water Bottle"}]
GREEDY = {"temperature": 0, "max_tokens": 24}


@pytest.fixture(scope="module")
def logs(trained_chat_run, trained_run, tmp_path_factory):
    return logs_holding(tmp_path_factory, "openai_logs", chat=trained_chat_run, text=trained_run)


@pytest.fixture(scope="module")
def server(logs, tmp_path_factory):
    out = tmp_path_factory.mktemp("openai_served")
    with running_server(out, f"logs_dir={logs}", "list_base_models=false", env={"LORAFIT_API_KEY": KEY}) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=300)


def health(server) -> dict:
    return requests.get(f"{server.url}/api/health", timeout=30).json()


def streamed(client, **request) -> tuple[str, list]:
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **request))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def checkpoint_names(client, run: str) -> list[str]:
    return [m.id for m in client.models.list() if m.id.startswith(f"{run}/") and not m.id.endswith("/base")]


@pytest.mark.slow
def test_three_adapters_of_one_base_answer_64_concurrent_requests_as_they_answer_alone(server, client):
    assert health(server)["resident_models"] == 0
    names = checkpoint_names(client, "train/runs/chat")[:3]
    assert len(names) == 3, names
    titles = ["Bamboo Cutting Board", "Wireless Mouse", "Wool Socks", "Ceramic Mug"]
    jobs = [(names[i % 3], titles[i % 4], i % 2 == 0) for i in range(64)]  # every adapter, streamed and plain

    def ask(job):
        name, title, stream = job
        request = {"model": name, "messages": [{"role": "user", "content": title}], **GREEDY}
        if stream:
            return streamed(client, **request)[0]
        return client.chat.completions.create(**request).choices[0].message.content

    solo = {(n, t): ask((n, t, False)) for n in names for t in titles}
    after_solo = health(server)
    assert after_solo["resident_models"] == 1 and after_solo["loads"] == 1  # one base for the three
    assert after_solo["loaded_adapters"] == 3
    assert all(solo.values())
    # the adapters are switched, not one used for all: checkpoints of different steps answer some title differently
    assert any(len({solo[(n, t)] for n in names}) > 1 for t in titles)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, jobs))
    assert answers == [solo[(n, t)] for n, t, _ in jobs]
    after = health(server)
    assert (after["resident_models"], after["loads"], after["evictions"]) == (1, 1, 0)  # no base reloaded


@pytest.mark.slow
def test_the_openai_client_lists_models_and_gets_chat_completions_plain_and_streamed(server, client):
    models = list(client.models.list())
    ids = [m.id for m in models]
    assert "train/runs/chat/adapter" in ids and "train/runs/text/adapter" in ids
    assert models[0].model_extra["recommended"]  # a run's best checkpoint comes first
    chat = next(m for m in models if m.id.startswith("train/runs/chat/") and m.model_extra["recommended"])

    plain = client.chat.completions.create(model=chat.id, messages=CONVERSATION, **GREEDY)
    text = plain.choices[0].message.content
    assert text and plain.choices[0].finish_reason in ("stop", "length") and plain.object == "chat.completion"
    assert plain.usage.prompt_tokens > 5 and 0 < plain.usage.completion_tokens <= 24
    assert plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens

    stream_text, chunks = streamed(client, model=chat.id, messages=CONVERSATION, **GREEDY)
    assert stream_text == text  # the same answer, piece by piece
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens and not chunks[-1].choices
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason

    native = requests.post(f"{server.url}/api/generate_text", headers={"X-API-Key": KEY}, timeout=300, json={
        "model_name": chat.id, "messages": CONVERSATION, "do_sample": False, "max_new_tokens": 24}).json()
    assert native["text"] == text.strip()  # the native endpoint answers the same

    cut = text.strip().split()[1] if len(text.split()) > 1 else text.strip()[-1]
    stopped = client.chat.completions.create(model=chat.id, messages=CONVERSATION, stop=[cut], **GREEDY)
    assert stopped.choices[0].message.content == text[:text.find(cut)] and stopped.choices[0].finish_reason == "stop"

    sampled = [client.chat.completions.create(model=chat.id, messages=CONVERSATION, temperature=1.0, n=2, seed=7,
                                              max_tokens=16) for _ in range(2)]
    assert [c.message.content for c in sampled[0].choices] == [c.message.content for c in sampled[1].choices]
    assert len(sampled[0].choices) == 2 and [c.index for c in sampled[0].choices] == [0, 1]


@pytest.mark.slow
def test_a_seq2seq_run_gets_completions_and_the_wrong_endpoint_is_named(server, client):
    prompt = "Write a product description for: Wireless Mouse"
    completion = client.completions.create(model="train/runs/text/adapter", prompt=prompt, **GREEDY)
    native = requests.post(f"{server.url}/api/generate_text", headers={"X-API-Key": KEY}, timeout=300, json={
        "model_name": "train/runs/text/adapter", "prompt": prompt, "do_sample": False, "max_new_tokens": 24}).json()
    assert completion.choices[0].text.strip() == native["text"] and native["text"]
    assert completion.object == "text_completion" and completion.usage.completion_tokens > 0
    pieces = list(client.completions.create(model="train/runs/text/adapter", prompt=prompt, stream=True, **GREEDY))
    assert "".join(c.choices[0].text for c in pieces) == completion.choices[0].text

    with pytest.raises(openai.BadRequestError, match="use POST /v1/chat/completions"):
        client.completions.create(model="train/runs/chat/adapter", prompt=prompt, **GREEDY)
    with pytest.raises(openai.BadRequestError, match="use POST /v1/completions"):
        client.chat.completions.create(model="train/runs/text/adapter", messages=CONVERSATION, **GREEDY)


@pytest.mark.slow
def test_unknown_models_bad_requests_and_a_missing_key_get_the_clients_errors(server, client):
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="train/runs/nope/adapter", messages=CONVERSATION)
    assert missing.value.body["code"] == "model_not_found" and "GET /v1/models" in missing.value.message
    with pytest.raises(openai.UnprocessableEntityError, match="max_tokens"):
        client.chat.completions.create(model="train/runs/chat/adapter", messages=CONVERSATION, max_tokens=10**6)
    with pytest.raises(openai.BadRequestError, match="last message must be the user's"):
        client.chat.completions.create(model="train/runs/chat/adapter", messages=[
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    keyless = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        keyless.models.list()
    raw = requests.get(f"{server.url}/v1/models", timeout=30)
    assert raw.status_code == 401 and raw.json()["error"]["type"] == "authentication_error"


@pytest.mark.slow
def test_a_curl_style_stream_is_server_sent_events_ending_in_done(server, client):
    response = requests.post(f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                             json={"model": "train/runs/chat/adapter", "messages": CONVERSATION, "stream": True,
                                   **GREEDY}, stream=True, timeout=300)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in response.iter_lines(decode_unicode=True) if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"


# -- in process: the error shape and the key rule of /v1 (fake models, no server) ----------------------------

def test_v1_errors_have_openais_shape_and_the_key_covers_v1(tmp_path):
    app = fake_app(tmp_path, {"base/echo": FakeText()}, api_key="k", max_body_bytes=2048)
    status, _, body = call(app, "GET", "/v1/models")
    assert status == 401 and body["error"]["type"] == "authentication_error" and body["error"]["code"]
    status, _, body = call(app, "GET", "/v1/models", headers={"Authorization": "Bearer k"})
    assert status == 200 and [m["id"] for m in body["data"]] == ["base/echo"] and body["object"] == "list"
    status, _, body = call(app, "POST", "/v1/chat/completions", {"model": "base/nope", "messages": [
        {"role": "user", "content": "x"}]}, headers={"Authorization": "Bearer k"})
    assert status == 404 and body["error"] == {
        "message": "unknown model 'base/nope' — GET /v1/models lists the available names",
        "type": "not_found_error", "param": "model", "code": "model_not_found"}
    status, _, body = call(app, "POST", "/v1/completions", {"model": "base/echo", "prompt": "x", "n": 99},
                           headers={"Authorization": "Bearer k"})
    assert status == 422 and body["error"]["param"] == "n" and "\n" not in body["error"]["message"]
    penalised = {"model": "base/echo", "prompt": "x", "presence_penalty": 0.5}
    status, _, body = call(app, "POST", "/v1/completions", penalised, headers={"Authorization": "Bearer k"})
    assert status == 422 and "presence_penalty: Value error, not supported" in body["error"]["message"]
    status, _, body = call(app, "POST", "/v1/completions", {"model": "base/echo", "prompt": "x" * 4000},
                           headers={"Authorization": "Bearer k"})
    assert status == 413 and body["error"]["type"] == "invalid_request_error"
    status, _, body = call(app, "POST", "/api/generate_text", {"model_name": "base/nope", "prompt": "x"},
                           headers={"X-API-Key": "k"})
    assert status == 404 and set(body) == {"detail"}  # the native endpoints keep their shape
