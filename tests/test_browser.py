"""The web UI (``src/serving/static``) in a real headless Chromium, against ``python serve.py`` on loopback over
the quickstart runs: the runs and a run's curves, a compare report computed from the page, a description beside
the base model's, two images from each of two checkpoints, a 422's message; and on a server with an API key, the
key box and a training run's curves refreshing while watched.

Each step writes a 1280x800 PNG to $LORAFIT_SCREENSHOT_DIR (the README's are taken so), else to the test's
tmp_path. The browser is $LORAFIT_BROWSER, else /usr/bin/chromium, else ``chromium`` on PATH, driven by Playwright
for Python (its own browser download is not used). Without a browser or Playwright the tests are skipped, unless
LORAFIT_REQUIRE_BROWSER=1 (CI), where they fail.
"""

import csv
import json
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import requests

from src.callbacks.run_report import RUNNING_MARKER
from tests.test_serving import running_server

pytestmark = pytest.mark.slow  # the session fixtures train the quickstart runs

BROWSER_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HOW_TO_INSTALL = ("no Chromium for the browser tests — run scripts/install_browser.sh (Debian: apt-get install "
                  "chromium) or set LORAFIT_BROWSER=/path/to/chromium")
VIEWPORT = {"width": 1280, "height": 800}
TEXT_RUN, IMAGE_RUN, CHAT_RUN = "train/runs/text", "train/runs/shoes", "train/runs/chat"
TITLE = "Stainless Steel Insulated Water Bottle"
GENERATION_MS = 300_000  # a first request loads its model
COMPARE_MS = 900_000  # compare=all evaluates every checkpoint and the base model


def unavailable(why: str):
    if os.environ.get("LORAFIT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{why} (LORAFIT_REQUIRE_BROWSER=1)")
    pytest.skip(why)


def find_browser() -> str:
    given = os.environ.get("LORAFIT_BROWSER")
    if given:
        if not Path(given).is_file():
            unavailable(f"LORAFIT_BROWSER={given} is not a file — point it at a Chromium executable")
        return given
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    unavailable(HOW_TO_INSTALL)


@pytest.fixture(scope="session", autouse=True)
def chromium() -> str:
    """Checked before the session fixtures train, so a missing browser costs no training."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        unavailable("the playwright package is missing — pip install playwright (no `playwright install` needed: "
                    "the tests drive the system's Chromium)")
    return find_browser()


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=chromium, args=BROWSER_ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def ui_logs(trained_run, trained_shoes_run, trained_chat_run, tmp_path_factory) -> Path:
    """Copies of the quickstart runs (no compare report yet: the page computes it)."""
    logs = tmp_path_factory.mktemp("ui_logs") / "logs"
    shutil.copytree(trained_run, logs / TEXT_RUN)
    shutil.copytree(trained_shoes_run, logs / IMAGE_RUN)
    shutil.copytree(trained_chat_run, logs / CHAT_RUN)
    return logs


@pytest.fixture(scope="module")
def server(ui_logs, tmp_path_factory):
    out = tmp_path_factory.mktemp("ui_served")
    with running_server(out, f"logs_dir={ui_logs}", f"output_dir={out / 'images'}", "model_wait_seconds=600") as srv:
        yield srv


@pytest.fixture(scope="module")
def listed(server) -> dict[str, dict]:
    return {m["name"]: m for m in requests.get(f"{server.url}/api/models", timeout=120).json()["models"]}


def best_of(listed: dict[str, dict], run: str) -> str:
    return next(name for name, m in listed.items() if m["run"] == run and m["recommended"])


@dataclass
class UI:
    page: object
    url: str
    shots: Path
    page_errors: list = field(default_factory=list)

    def open(self, tab: str):
        self.page.goto(f"{self.url}/#{tab}")

    def screenshot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path))
        assert path.stat().st_size > 0
        return path


def open_ui(browser, url: str, shots: Path):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(60_000)
    ui = UI(page, url, shots)
    page.on("pageerror", lambda err: ui.page_errors.append(str(err)))  # an uncaught exception in app.js
    return context, ui


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("LORAFIT_SCREENSHOT_DIR") or tmp_path).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def ui(browser, server, shots):
    context, opened = open_ui(browser, server.url, shots)
    yield opened
    context.close()
    assert opened.page_errors == []


def test_runs_are_listed_and_a_run_shows_its_training_curves(ui, server):
    from playwright.sync_api import expect

    runs = requests.get(f"{server.url}/api/runs", timeout=60).json()["runs"]
    assert {r["name"] for r in runs} == {TEXT_RUN, IMAGE_RUN, CHAT_RUN}
    ui.open("runs")
    rows = ui.page.get_by_test_id("run-row")
    expect(rows).to_have_count(len(runs))
    for run in runs:
        row = ui.page.locator(f'tr[data-run="{run["name"]}"]')
        for shown in (run["experiment"], run["model"], run["data"], run["status"]):
            expect(row).to_contain_text(shown)

    ui.page.locator(f'tr[data-run="{TEXT_RUN}"]').click()
    monitor = next(r["monitor"] for r in runs if r["name"] == TEXT_RUN)
    expect(ui.page.locator("#curves-chart canvas")).to_be_visible()
    legend = ui.page.locator("#curves-chart .u-legend")
    expect(legend).to_contain_text("train/loss")
    expect(legend).to_contain_text(monitor)
    assert int(ui.page.get_by_test_id("curves-chart").get_attribute("data-points")) > 0
    ui.screenshot("runs")


def test_a_missing_compare_report_is_computed_from_the_page_and_shown(ui, server):
    from playwright.sync_api import expect

    ui.open("compare")
    ui.page.get_by_test_id("compare-run").select_option(TEXT_RUN)
    expect(ui.page.get_by_test_id("compare-missing")).to_be_visible()
    ui.page.get_by_test_id("compare-compute").click()
    expect(ui.page.get_by_test_id("compare-progress")).to_be_visible()  # shown until a poll answers "done"
    expect(ui.page.get_by_test_id("compare-report")).to_be_visible(timeout=COMPARE_MS)

    state = requests.get(f"{server.url}/api/runs/{TEXT_RUN}/compare", timeout=60).json()
    assert state["status"] == "done"
    report = state["report"]
    expect(ui.page.get_by_test_id("compare-recommended")).to_contain_text(report["recommended"]["name"])
    expect(ui.page.get_by_test_id("compare-reason")).to_have_text(report["recommended"]["reason"])
    expect(ui.page.get_by_test_id("compare-row")).to_have_count(len(report["rows"]))
    expect(ui.page.get_by_test_id("compare-notes").locator("li")).to_have_count(len(report["notes"]))
    ui.page.wait_for_function("document.getElementById('compare-plot').naturalWidth > 0")
    ui.screenshot("compare")


def test_a_description_is_generated_beside_the_base_model_with_the_same_seed(ui, listed):
    from playwright.sync_api import expect

    page, best = ui.page, best_of(listed, TEXT_RUN)
    ui.open("text")
    expect(page.get_by_test_id("text-model")).to_have_value(best)  # the recommended checkpoint comes first
    expect(page.get_by_test_id("text-compare-model")).to_have_value(f"{TEXT_RUN}/base")
    page.get_by_test_id("text-input").fill(TITLE)
    page.get_by_test_id("text-preset-reference").click()
    expect(page.get_by_test_id("text-preset-note")).to_contain_text("128 tokens")
    for field_id, value in {"text-num-beams": "2", "text-temperature": "0.9", "text-top-p": "0.9",
                            "text-repetition-penalty": "1.8", "text-no-repeat": "3", "text-max-new-tokens": "224",
                            "text-do-sample": "true"}.items():
        expect(page.get_by_test_id(field_id)).to_have_value(value)
    page.get_by_test_id("text-seed").fill("7")

    # hold the requests until the progress state is seen, so seeing it does not depend on how fast the server is
    held, released, answers = [], [], []

    def hold(route):
        if released:
            route.continue_()
        else:
            held.append(route)

    page.route("**/api/generate_text", hold)
    page.on("response", lambda r: answers.append(r) if r.url.endswith("/api/generate_text") else None)
    page.get_by_test_id("text-generate").click()
    expect(page.get_by_test_id("text-generate")).to_be_disabled()
    expect(page.get_by_test_id("text-busy")).to_contain_text("generating")
    released.append(True)
    for route in held:
        route.continue_()

    expect(page.get_by_test_id("text-card")).to_have_count(2, timeout=GENERATION_MS)
    expect(page.get_by_test_id("text-busy")).to_be_hidden(timeout=GENERATION_MS)
    expect(page.get_by_test_id("text-generate")).to_be_enabled()
    bodies = {r.request.post_data_json["model_name"]: r.json() for r in answers}
    assert set(bodies) == {best, f"{TEXT_RUN}/base"}
    assert bodies[best]["text"].strip() and {b["seed"] for b in bodies.values()} == {7}
    for name, body in bodies.items():
        card = page.locator(f'[data-testid="text-card"][data-model="{name}"]')
        expect(card.get_by_test_id("text-output")).to_have_text(body["text"])
    ui.screenshot("text_playground")


def stream_events(response) -> list[dict]:
    """The server-sent events of a streamed /api/generate_text response."""
    assert response.headers["content-type"].startswith("text/event-stream")
    return [json.loads(line[len("data: "):]) for line in response.text().split("\n\n") if line.startswith("data: ")]


def answer_of(response) -> dict:
    """A text response's body, streamed (its last event) or not."""
    if response.headers["content-type"].startswith("text/event-stream"):
        return stream_events(response)[-1]["done"]
    return response.json()


def test_the_text_playground_streams_the_answer_as_it_is_generated(ui, listed):
    from playwright.sync_api import expect

    page, best = ui.page, best_of(listed, TEXT_RUN)
    ui.open("text")
    page.get_by_test_id("text-compare-model").select_option("")
    page.get_by_test_id("text-input").fill(TITLE)
    page.get_by_test_id("text-max-new-tokens").fill("24")
    expect(page.get_by_test_id("text-stream")).to_be_checked()
    # every change the page makes to the results while the answer arrives (records are kept, none coalesced)
    page.evaluate("""() => { window.changes = 0; new MutationObserver((records) => { window.changes += records.length; })
        .observe(document.getElementById('text-results'), { childList: true, subtree: true, characterData: true }); }""")
    answers = []
    page.on("response", lambda r: answers.append(r) if r.url.endswith("/api/generate_text") else None)
    page.get_by_test_id("text-generate").click()
    expect(page.locator('[data-testid="text-card"]:not([data-streaming])')).to_have_count(1, timeout=GENERATION_MS)
    (response,) = answers
    assert response.request.post_data_json["stream"] is True
    events = stream_events(response)
    pieces = [e["text"] for e in events if "text" in e]
    assert len(pieces) > 1 and "".join(pieces).strip() == events[-1]["done"]["text"]
    assert page.evaluate("window.changes") > len(pieces)  # the live card showed each piece, then the final card
    expect(page.get_by_test_id("text-output")).to_have_text(events[-1]["done"]["text"])

    page.get_by_test_id("text-stream").uncheck()  # unticked: one plain JSON answer, the same text
    with page.expect_response(lambda r: r.url.endswith("/api/generate_text"), timeout=GENERATION_MS) as plain:
        page.get_by_test_id("text-generate").click()
    assert plain.value.headers["content-type"] == "application/json"
    assert plain.value.json()["text"] == events[-1]["done"]["text"]
    expect(page.get_by_test_id("text-generate")).to_be_enabled(timeout=GENERATION_MS)


def test_a_chat_model_keeps_the_conversation_and_sends_it_whole_each_turn(ui, listed):
    from playwright.sync_api import expect

    page, best = ui.page, best_of(listed, CHAT_RUN)
    ui.open("text")
    page.get_by_test_id("text-model").select_option(best)
    expect(page.get_by_test_id("text-mode-chat")).to_be_checked()  # a chat model opens in chat mode
    expect(page.get_by_test_id("text-compare-model")).to_be_disabled()
    answers = []
    page.on("response", lambda r: answers.append(r) if r.url.endswith("/api/generate_text") else None)
    questions = ["Bamboo Cutting Board", "Stainless Steel Insulated Water Bottle"]
    turns = page.get_by_test_id("chat-turn")
    for i, question in enumerate(questions):
        page.get_by_test_id("text-input").fill(question)
        page.get_by_test_id("text-generate").click()
        expect(page.get_by_test_id("text-input")).to_have_value("")  # sent: the box is free for the next one
        expect(turns).to_have_count(2 * (i + 1), timeout=GENERATION_MS)
        expect(page.get_by_test_id("text-busy")).to_be_hidden(timeout=GENERATION_MS)  # the answer has ended
    sent = [r.request.post_data_json["messages"] for r in answers]
    replies = [answer_of(r)["text"] for r in answers]
    assert sent == [[{"role": "user", "content": questions[0]}],
                    [{"role": "user", "content": questions[0]}, {"role": "assistant", "content": replies[0]},
                     {"role": "user", "content": questions[1]}]]
    expect(turns.nth(1)).to_contain_text(replies[0])
    expect(turns.nth(3)).to_contain_text(replies[1])
    ui.screenshot("chat_playground")
    page.get_by_test_id("chat-new").click()
    expect(turns).to_have_count(0)


def test_two_images_from_each_of_two_checkpoints_are_rendered_with_the_same_seeds(ui, listed):
    from playwright.sync_api import expect

    page, best = ui.page, best_of(listed, IMAGE_RUN)
    ui.open("image")
    checked = page.locator('[data-testid="image-model"]:checked')
    expect(checked).to_have_count(2)  # by default the best checkpoint beside its run's base model
    assert {checked.nth(i).get_attribute("value") for i in range(2)} == {best, f"{IMAGE_RUN}/base"}
    page.get_by_test_id("image-prompt").fill("a red running shoe")
    page.get_by_test_id("image-num").fill("2")
    page.get_by_test_id("image-steps").fill("2")
    page.get_by_test_id("image-seed").fill("11")
    page.get_by_test_id("image-generate").click()
    page.wait_for_function(
        "[...document.querySelectorAll('[data-testid=generated-image]')].filter(i => i.complete && i.naturalWidth > 0)"
        ".length === 4", timeout=GENERATION_MS)
    expect(page.get_by_test_id("image-busy")).to_be_hidden()
    for name in (best, f"{IMAGE_RUN}/base"):
        card = page.locator(f'[data-testid="image-card"][data-model="{name}"]')
        expect(card.get_by_test_id("generated-image")).to_have_count(2)
        expect(card.locator("figcaption")).to_contain_text(["seed 11", "seed 12"])
        links = card.get_by_test_id("image-download")
        expect(links).to_have_count(2)
        assert all(links.nth(i).get_attribute("download").endswith(f"-seed{11 + i}.png") for i in range(2))
        assert all(links.nth(i).get_attribute("href").startswith("data:image/png;base64,") for i in range(2))
    ui.screenshot("image_playground")


def test_an_invalid_setting_shows_the_apis_one_line_message(ui, server, listed):
    from playwright.sync_api import expect

    page, best = ui.page, best_of(listed, TEXT_RUN)
    request = {"model_name": best, "title": TITLE, "do_sample": True, "temperature": 0}
    direct = requests.post(f"{server.url}/api/generate_text", json=request, timeout=60)
    assert direct.status_code == 422
    ui.open("text")
    expect(page.get_by_test_id("text-model")).to_have_value(best)
    page.get_by_test_id("text-input").fill(TITLE)
    page.get_by_test_id("text-do-sample").select_option("true")
    page.get_by_test_id("text-temperature").fill("0")
    page.get_by_test_id("text-generate").click()
    alert = page.locator(".error[role=alert]:visible")
    expect(alert).to_have_text(direct.json()["message"])
    expect(page.get_by_test_id("text-card")).to_have_count(0)
    ui.screenshot("error_422")


API_KEY = "s3cret-key"


@pytest.fixture(scope="module")
def live_logs(trained_run, tmp_path_factory) -> Path:
    """A copy of the quickstart run that looks as if it were training: its running marker names this (live) test
    process, so the server reports it running; a test appends to its CSV log as training would."""
    logs = tmp_path_factory.mktemp("live_logs") / "logs"
    run = logs / "train" / "runs" / "live"
    shutil.copytree(trained_run, run)
    report = json.loads((run / "metrics.json").read_text())
    report.get("training", {}).pop("stop_reason", None)  # not stopped yet
    (run / "metrics.json").write_text(json.dumps(report))
    me = psutil.Process()
    (run / RUNNING_MARKER).write_text(json.dumps({"pid": me.pid, "hostname": socket.gethostname(),
                                                  "create_time": me.create_time(), "started": "2026-11-30T12:00:00"}))
    return logs


@pytest.fixture(scope="module")
def keyed_server(live_logs, tmp_path_factory):
    out = tmp_path_factory.mktemp("keyed_served")
    with running_server(out, f"logs_dir={live_logs}", f"output_dir={out / 'images'}",
                        env={"LORAFIT_API_KEY": API_KEY}) as srv:
        yield srv


@pytest.fixture
def keyed_ui(browser, keyed_server, shots):
    context, opened = open_ui(browser, keyed_server.url, shots)
    yield opened
    context.close()
    assert opened.page_errors == []


def test_a_server_with_an_api_key_asks_for_it_once_and_then_lists_the_runs(keyed_ui):
    from playwright.sync_api import expect

    page = keyed_ui.page
    keyed_ui.open("runs")  # the page itself needs no key; its /api calls do
    expect(page.get_by_test_id("api-key-box")).to_be_visible()
    expect(page.get_by_test_id("runs-error")).to_contain_text("API key")
    page.locator("#api-key").fill(API_KEY)
    page.locator("#api-key-save").click()
    expect(page.get_by_test_id("run-row")).to_have_count(1)
    expect(page.get_by_test_id("runs-error")).to_be_hidden()
    page.reload()  # the key is kept for the tab's session
    expect(page.get_by_test_id("run-row")).to_have_count(1)
    expect(page.get_by_test_id("api-key-box")).to_be_hidden()


def test_a_training_run_refreshes_its_curves_while_watched(keyed_ui, live_logs):
    from playwright.sync_api import expect

    page = keyed_ui.page
    page.add_init_script(f"sessionStorage.setItem('lorafit-api-key', {json.dumps(API_KEY)})")
    keyed_ui.open("runs")
    row = page.locator('tr[data-run="train/runs/live"]')
    expect(row).to_contain_text("running")
    expect(page.get_by_test_id("runs-status")).to_contain_text("refreshing")
    row.click()
    chart = page.get_by_test_id("curves-chart")
    expect(chart.locator("canvas")).to_be_visible()
    before = int(chart.get_attribute("data-points"))

    log = live_logs / "train" / "runs" / "live" / "csv" / "metrics.csv"
    with log.open(newline="") as handle:
        logged = csv.DictReader(handle)
        last_step = max(int(r["step"]) for r in logged if r["step"])
        header = logged.fieldnames
    new_rows = [{"step": last_step + 5, "train/loss": 1.5}, {"step": last_step + 10, "train/loss": 1.4},
                {"step": last_step + 10, "val/rougeL": 0.3}]
    with log.open("a", newline="") as handle:
        csv.DictWriter(handle, fieldnames=header).writerows(new_rows)  # as the CSV logger appends while training
    expect(chart).to_have_attribute("data-points", str(before + len(new_rows)), timeout=60_000)
    keyed_ui.screenshot("runs_live")
