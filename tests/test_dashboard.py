"""The dashboard's API (``/api/runs...``) and page serving, with FastAPI's TestClient over the real app.

Fast tests build runs by hand (a trusted config, a report, logger files, a running marker) and stand a small
evaluate.py in for the real one to drive compare jobs; the slow ones use the session's quickstart runs and a
real ``compare=all``.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import torch
import yaml
from fastapi.testclient import TestClient
from omegaconf import OmegaConf

from src.callbacks.run_report import RUNNING_MARKER, RunReport
from src.serving.app import STATIC_DIR, create_app
from src.serving.images import ImageStore
from src.serving.loading import ModelCache
from src.serving.registry import ModelRegistry

LIMITS = OmegaConf.create({"max_prompt_chars": 1000, "max_num_images": 8, "max_inference_steps": 100,
                           "max_guidance_scale": 30, "max_new_tokens": 512, "max_num_beams": 8})
CONTRACT_FIELDS = {"name", "experiment", "model", "data", "kind", "status", "stop_reason", "monitor", "mode",
                   "best_checkpoint", "best_score", "started", "finished", "has_compare"}
COMPARE_FIELDS = {"status", "progress", "error", "report", "markdown", "plot"}
TEXT_CONFIG = {"model": {"_target_": "src.modules.seq2seq_lora.Seq2SeqLoRAModule", "pretrained": "t5-small",
                         "monitor": "val/rougeL", "mode": "max"},
               "data": {"_target_": "src.datamodules.amazon.AmazonTitlesDataModule"}, "callbacks": {}, "seed": 1}
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


def app_over(logs: Path, project_root: Path | None = None, **options):
    registry = ModelRegistry(logs)
    cache = ModelCache(lambda entry: None, 1)  # nothing generates here
    return create_app(registry, cache, ImageStore(logs.parent / "images", 10), LIMITS, project_root=project_root,
                      **options)


@pytest.fixture
def client_of():
    """``client_of(logs, ...)``: a TestClient over a new app; its compare jobs are stopped at the end."""
    apps = []

    def make(logs: Path, project_root: Path | None = None, **options) -> TestClient:
        apps.append(app_over(logs, project_root, **options))
        return TestClient(apps[-1])

    yield make
    for app in apps:
        app.state.compare_jobs.close()


def write_run(run_dir: Path, *, config: dict = TEXT_CONFIG, job: str = "train", steps=(5, 10),
              stop_reason: str | None = "max_epochs", best_step: int | None = 5, cwd: Path | None = None) -> Path:
    """A run as train.py leaves it: config, hydra.yaml (job name, group choices), checkpoints, metrics.json."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    choices = {"experiment": "quickstart", "model": "tiny_t5", "data": "amazon_sample"}
    (run_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
        {"hydra": {"job": {"name": job}, "runtime": {"cwd": str(cwd or run_dir), "choices": choices}}}))
    (run_dir / "checkpoints").mkdir()
    for step in steps:
        torch.save({"global_step": step, "state_dict": {}}, run_dir / "checkpoints" / f"checkpoint-{step}.ckpt")
    if stop_reason is not None:
        best = str(run_dir / "checkpoints" / f"checkpoint-{best_step}.ckpt") if best_step else None
        (run_dir / "metrics.json").write_text(json.dumps({
            "timestamp": {"start": "2026-11-30T10:00:00+00:00", "end": "2026-11-30T10:05:00+00:00"},
            "training": {"stop_reason": stop_reason},
            "best_checkpoint": {"path": best, "monitor": "val/rougeL", "score": 0.25}}))
    return run_dir


def age(run_dir: Path, seconds: int) -> None:
    """Make the run ``seconds`` older (runs are listed newest first by their config's time)."""
    config = run_dir / ".hydra" / "config.yaml"
    stamp = config.stat().st_mtime - seconds
    os.utime(config, (stamp, stamp))


def mark_running(run_dir: Path, pid: int, create_time: float | None) -> None:
    (run_dir / RUNNING_MARKER).write_text(json.dumps({"pid": pid, "hostname": socket.gethostname(),
                                                      "create_time": create_time, "started": "2026-11-30T11:00:00"}))


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def one_line(response) -> str:
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail, detail
    return detail


def assert_increasing(points: list) -> None:
    steps = [step for step, _ in points]
    assert points and steps == sorted(set(steps)), steps


def wait_for(client: TestClient, path: str, until, polls: int = 1200, every: float = 0.25) -> dict:
    """GET ``path`` until ``until(body)``; a bounded loop with a short wait between polls."""
    for _ in range(polls):
        body = client.get(path).json()
        if until(body):
            return body
        threading.Event().wait(every)
    raise AssertionError(f"{path} never got there: {body}")


# -- runs and their status -------------------------------------------------------------------------------------


def test_runs_are_listed_newest_first_with_status_and_the_best_checkpoint(tmp_path, client_of):
    logs = tmp_path / "logs"
    runs = logs / "train" / "runs"
    for seconds, (name, reason) in enumerate([("done", "max_epochs"), ("early", "early_stopping: patience"),
                                              ("ctrl_c", "interrupted: Ctrl+C"), ("nan", "non_finite_loss"),
                                              ("crashed", "error: RuntimeError: boom"), ("no_report", None)]):
        age(write_run(runs / name, stop_reason=reason), 100 * (seconds + 1))
    age(write_run(runs / "killed", stop_reason=None), 1000)
    mark_running(runs / "killed", dead_pid(), None)  # a marker left by a process that is gone
    write_run(logs / "evaluate" / "runs" / "e", job="evaluate", steps=())  # not a training run
    evil = {**TEXT_CONFIG, "model": {**TEXT_CONFIG["model"], "pretrained": {"_target_": "os.system"}}}
    write_run(runs / "evil", config=evil)
    outside = write_run(tmp_path / "elsewhere" / "run")
    os.symlink(outside, runs / "linked")

    client = client_of(logs)
    response = client.get("/api/runs")
    assert response.status_code == 200
    listed = response.json()["runs"]
    by_name = {run["name"]: run for run in listed}
    assert [run["name"] for run in listed] == [f"train/runs/{n}" for n in
                                              ("done", "early", "ctrl_c", "nan", "crashed", "no_report", "killed")]
    assert {n: r["status"] for n, r in by_name.items()} == {
        "train/runs/done": "finished", "train/runs/early": "finished", "train/runs/ctrl_c": "stopped",
        "train/runs/nan": "failed", "train/runs/crashed": "failed", "train/runs/no_report": "unknown",
        "train/runs/killed": "stopped"}
    done = by_name["train/runs/done"]
    assert CONTRACT_FIELDS <= done.keys()
    assert {k: done[k] for k in CONTRACT_FIELDS} == {
        "name": "train/runs/done", "experiment": "quickstart", "model": "tiny_t5", "data": "amazon_sample",
        "kind": "text", "status": "finished", "stop_reason": "max_epochs", "monitor": "val/rougeL", "mode": "max",
        "best_checkpoint": "train/runs/done/checkpoint-5", "best_score": 0.25, "started": "2026-11-30T10:00:00+00:00",
        "finished": "2026-11-30T10:05:00+00:00", "has_compare": False}
    models = {m["name"] for m in client.get("/api/models").json()["models"]}
    assert done["best_checkpoint"] in models
    assert by_name["train/runs/no_report"]["best_checkpoint"] is None


def test_a_running_run_is_running_and_its_partial_event_file_plots(tmp_path, client_of):
    from torch.utils.tensorboard import SummaryWriter

    logs = tmp_path / "logs"
    run = write_run(logs / "train" / "runs" / "live", steps=(), stop_reason=None)
    mark_running(run, os.getpid(), psutil.Process().create_time())
    writer = SummaryWriter(run / "tensorboard")
    for step in range(1, 301):
        writer.add_scalar("train/loss", 5.0 / step, step)
        if step % 50 == 0:
            writer.add_scalar("val/rougeL", step / 1000, step)
    writer.close()
    events = next((run / "tensorboard").glob("events.out.tfevents.*"))
    data = events.read_bytes()
    events.write_bytes(data[:len(data) // 2 + 3])  # the writer is mid-record

    client = client_of(logs)
    (listed,) = client.get("/api/runs").json()["runs"]
    assert listed["status"] == "running" and listed["started"] == "2026-11-30T11:00:00"
    curves = client.get("/api/runs/train/runs/live/curves").json()
    assert curves["status"] == "running" and curves["monitor"] == "val/rougeL" and curves["mode"] == "max"
    loss, rouge = curves["series"]["train/loss"], curves["series"]["val/rougeL"]
    assert_increasing(loss) and assert_increasing(rouge)
    assert loss[0] == [1, 5.0] and 100 < loss[-1][0] < 300 and rouge[0] == [50, pytest.approx(0.05)]

    mark_running(run, os.getpid(), psutil.Process().create_time() - 3600)  # this pid, but another process's
    assert client.get("/api/runs").json()["runs"][0]["status"] == "stopped"


def test_csv_curves_are_sorted_deduplicated_and_cut_to_2000_points(tmp_path, client_of):
    logs = tmp_path / "logs"
    run = write_run(logs / "train" / "runs" / "long")
    (run / "csv").mkdir()
    rows = ["epoch,step,train/loss,val/rougeL,val/loss"]
    rows += [f"0,{step},{1 / step},," for step in range(5000, 0, -1)]  # written out of order
    rows += ["1,2500,,0.3,1.0", "1,5000,,0.4,0.9", "1,5000,,0.5,0.8", "1,5001,,0.9"]  # the last row half-written
    (run / "csv" / "metrics.csv").write_text("\n".join(rows))

    curves = TestClient(app_over(logs)).get("/api/runs/train/runs/long/curves").json()
    loss = curves["series"]["train/loss"]
    assert len(loss) == 2000 and loss[0] == [1, 1.0] and loss[-1] == [5000, 1 / 5000]
    assert_increasing(loss)
    assert curves["series"]["val/rougeL"] == [[2500, 0.3], [5000, 0.5]]  # one point per step: the last logged
    assert set(curves["series"]) == {"train/loss", "val/rougeL"} and curves["status"] == "finished"


def test_unknown_and_untrusted_runs_get_one_line_errors(tmp_path, client_of):
    logs = tmp_path / "logs"
    write_run(logs / "train" / "runs" / "a")
    evil = {**TEXT_CONFIG, "model": {**TEXT_CONFIG["model"], "pretrained": {"_target_": "builtins.open"}}}
    write_run(logs / "train" / "runs" / "evil", config=evil)
    client = client_of(logs)
    for path in ("/api/runs/train/runs/nope/curves", "/api/runs/train/runs/a/%2E%2E/a/compare",
                 "/api/runs/train/runs/a/checkpoints/compare/plot.png"):
        response = client.get(path)
        assert response.status_code == 404 and "GET /api/runs" in one_line(response), path
    response = client.post("/api/runs/train/runs/evil/compare", json={"split": "val"})
    assert response.status_code == 403 and "builtins.open" in one_line(response)
    assert str(tmp_path) not in response.text
    response = client.post("/api/runs/train/runs/a/compare", json={"split": "train"})
    assert response.status_code == 422 and "split" in response.json()["message"]
    assert client.get("/api/runs/train/runs/a/compare/plot.png").status_code == 404


def test_the_page_needs_no_key_and_the_runs_api_does(tmp_path, client_of):
    (tmp_path / "logs").mkdir()
    client = client_of(tmp_path / "logs", api_key="s3cret")
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<html" in page.text.lower()
    asset = next(p for p in sorted(STATIC_DIR.rglob("*")) if p.is_file())
    served = client.get(f"/static/{asset.relative_to(STATIC_DIR).as_posix()}")
    assert served.status_code == 200 and served.content == asset.read_bytes()
    assert client.get("/api/runs").status_code == 401
    assert client.get("/api/runs/x/curves").status_code == 401
    assert client.get("/api/runs", headers={"X-API-Key": "s3cret"}).json() == {"runs": []}


def test_run_report_marks_a_fit_running_until_its_report_is_written(tmp_path):
    report = RunReport(str(tmp_path / "metrics.json"))
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")), is_global_zero=True)
    report.on_fit_start(trainer, SimpleNamespace())
    marker = json.loads((tmp_path / RUNNING_MARKER).read_text())
    assert marker["pid"] == os.getpid() and marker["hostname"] == socket.gethostname()
    assert marker["create_time"] == psutil.Process().create_time()
    report.fit_ended()
    assert not (tmp_path / RUNNING_MARKER).exists()


# -- compare jobs, with a stand-in evaluate.py -----------------------------------------------------------------

FAKE_EVALUATE = r'''
import json, sys, time
from pathlib import Path

args = dict(a.split("=", 1) for a in sys.argv[1:])
run, out = Path(args["ckpt"].strip("'")), Path(args["hydra.run.dir"].strip("'"))
if "broken" in run.name:
    print("a traceback would be in the log", flush=True)
    print("error: run directory holds no data — fix the data config", file=sys.stderr, flush=True)
    sys.exit(2)
(out / ".hydra").mkdir(parents=True)  # as Hydra makes it
(out / ".hydra" / "config.yaml").write_text(f"ckpt: {run}\ncompare: all\n")
(out / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  job:\n    name: evaluate\n  runtime:\n    cwd: {Path.cwd()}\n")
(out / "base").mkdir()
(out / "base" / "metrics.json").write_text("{}")
gate = run.parent / (run.name + ".go")
for _ in range(2400):  # the test opens the gate once it has seen this job's progress
    if gate.exists():
        break
    time.sleep(0.05)
for step in (5, 10):
    (out / f"checkpoint-{step}").mkdir()
    (out / f"checkpoint-{step}" / "metrics.json").write_text("{}")
(out / "report.json").write_text(json.dumps({"source": str(run), "split": args["split"], "rows": [],
                                             "recommended": {"name": "checkpoint-5", "path": str(run) + "/x.ckpt"}}))
(out / "report.md").write_text(f"# Checkpoint comparison\n\nSource: `{run}`\n")
(out / "metrics_by_step.png").write_bytes(PNG)
'''


@pytest.fixture
def fake_root(tmp_path) -> Path:
    root = tmp_path / "checkout"
    root.mkdir()
    (root / "evaluate.py").write_text(f"PNG = {PNG!r}\n" + FAKE_EVALUATE)
    return root


def test_compare_runs_in_the_background_one_job_per_run_and_one_at_a_time(tmp_path, client_of, fake_root):
    logs = tmp_path / "logs"
    runs = logs / "train" / "runs"
    write_run(runs / "a")
    write_run(runs / "b")
    client = client_of(logs, fake_root)
    assert client.get("/api/runs/train/runs/a/compare").json() == {
        "status": "missing", "progress": None, "error": None, "report": None, "markdown": None, "plot": None,
        "report_dir": None, "split": None}

    started = client.post("/api/runs/train/runs/a/compare", json={"split": "test"})
    assert started.status_code == 202 and started.json()["status"] == "running"
    assert COMPARE_FIELDS <= started.json().keys()
    again = client.post("/api/runs/train/runs/a/compare")  # while it runs: the same job
    assert again.status_code == 202 and again.json()["status"] == "running"
    queued = client.post("/api/runs/train/runs/b/compare").json()  # a second run waits for the first
    assert queued["status"] == "running" and queued["progress"]["message"].startswith("queued")
    assert "train/runs/a" in queued["progress"]["message"]

    state = wait_for(client, "/api/runs/train/runs/a/compare", lambda b: b["progress"]["done"] == 1)
    assert state["status"] == "running" and state["progress"]["total"] == 3
    assert "checkpoint-5" in state["progress"]["message"]
    assert client.get("/api/runs/train/runs/b/compare").json()["progress"]["message"].startswith("queued")
    (runs / "a.go").touch()

    done = wait_for(client, "/api/runs/train/runs/a/compare", lambda b: b["status"] != "running")
    assert done["status"] == "done" and done["error"] is None and done["progress"] is None
    assert done["report"]["split"] == "test" and done["report"]["recommended"]["name"] == "checkpoint-5"
    assert done["markdown"].startswith("# Checkpoint comparison") and str(tmp_path) not in json.dumps(done)
    assert done["report"]["source"] == "train/runs/a"  # server paths relative to the logs directory
    assert done["plot"] == "/api/runs/train/runs/a/compare/plot.png"
    plot = client.get(done["plot"])
    assert plot.status_code == 200 and plot.headers["content-type"] == "image/png" and plot.content == PNG
    assert done["report_dir"].startswith("evaluate/runs/")

    wait_for(client, "/api/runs/train/runs/b/compare", lambda b: b["progress"] and b["progress"]["done"] == 1)
    (runs / "b.go").touch()
    assert wait_for(client, "/api/runs/train/runs/b/compare", lambda b: b["status"] != "running")["status"] == "done"
    listed = {r["name"]: r["has_compare"] for r in client.get("/api/runs").json()["runs"]}
    assert listed == {"train/runs/a": True, "train/runs/b": True}


def test_a_failed_compare_says_why_in_one_line(tmp_path, client_of, fake_root):
    logs = tmp_path / "logs"
    write_run(logs / "train" / "runs" / "broken")
    write_run(logs / "train" / "runs" / "empty", steps=())
    client = client_of(logs, fake_root)
    client.post("/api/runs/train/runs/broken/compare")
    failed = wait_for(client, "/api/runs/train/runs/broken/compare", lambda b: b["status"] != "running")
    assert failed["status"] == "failed" and failed["report"] is None
    assert failed["error"] == "compare=all exited with status 2: run directory holds no data — fix the data config"
    client.post("/api/runs/train/runs/empty/compare")
    failed = wait_for(client, "/api/runs/train/runs/empty/compare", lambda b: b["status"] != "running")
    assert failed["status"] == "failed" and "holds no checkpoints" in failed["error"] and "\n" not in failed["error"]


def test_a_report_made_from_the_command_line_is_found(tmp_path, client_of):
    """``python evaluate.py ckpt=logs/train/runs/a compare=all`` run from the checkout: a relative ckpt, resolved
    against the directory evaluate.py ran in (hydra.yaml's runtime.cwd)."""
    logs = tmp_path / "logs"
    write_run(logs / "train" / "runs" / "a")
    write_run(logs / "train" / "runs" / "other")
    for name, source in (("old", "logs/train/runs/a"), ("new", "logs/train/runs/a"),
                         ("theirs", "/old/place/logs/train/runs/other")):
        report_dir = write_run(logs / "evaluate" / "runs" / name, job="evaluate", steps=(), stop_reason=None,
                               cwd=tmp_path)
        (report_dir / "report.json").write_text(json.dumps({"source": source, "split": "val", "from": name}))
        (report_dir / "report.md").write_text(f"# {name}\n`{tmp_path}/private/x.txt`\n")
        if name == "old":
            os.utime(report_dir / "report.json", (1, 1))
    client = client_of(logs)
    state = client.get("/api/runs/train/runs/a/compare").json()
    assert state["status"] == "done" and state["report"]["from"] == "new" and state["plot"] is None
    assert state["markdown"] == "# new\n`x.txt`\n"
    assert client.get("/api/runs/train/runs/other/compare").json()["report"]["from"] == "theirs"  # moved logs


# -- end to end over the session's quickstart runs -------------------------------------------------------------


@pytest.fixture(scope="module")
def session_logs(trained_run, trained_shoes_run, tmp_path_factory) -> Path:
    logs = tmp_path_factory.mktemp("dashboard_logs") / "logs"
    shutil.copytree(trained_run, logs / "train" / "runs" / "text")
    shutil.copytree(trained_shoes_run, logs / "train" / "runs" / "shoes")
    return logs


@pytest.mark.slow
def test_session_runs_are_finished_with_playable_best_checkpoints_and_curves(session_logs, client_of):
    client = client_of(session_logs)
    runs = {r["name"]: r for r in client.get("/api/runs").json()["runs"]}
    models = {m["name"] for m in client.get("/api/models").json()["models"]}
    assert set(runs) == {"train/runs/text", "train/runs/shoes"}
    for name, kind, monitor in (("train/runs/text", "text", "val/rougeL"), ("train/runs/shoes", "image", "val/fid")):
        run = runs[name]
        assert CONTRACT_FIELDS <= run.keys() and run["kind"] == kind and run["monitor"] == monitor
        assert run["status"] == "finished" and run["best_checkpoint"] in models and run["finished"]
        assert not (session_logs / name / RUNNING_MARKER).exists()  # removed once the report was written
        curves = client.get(f"/api/runs/{name}/curves").json()
        assert curves["monitor"] == monitor and curves["status"] == "finished"
        for series in (curves["series"]["train/loss"], curves["series"][monitor]):
            assert_increasing(series)


@pytest.mark.slow
def test_compare_all_from_the_dashboard_end_to_end(session_logs, client_of):
    client = client_of(session_logs)
    started = client.post("/api/runs/train/runs/text/compare", json={"split": "val"})
    assert started.status_code == 202 and started.json()["status"] == "running"
    done = wait_for(client, "/api/runs/train/runs/text/compare", lambda b: b["status"] != "running", every=1.0)
    assert done["status"] == "done", done
    report = done["report"]
    assert {"source", "split", "monitor", "recommended", "rows", "metrics"} <= report.keys()
    assert report["split"] == "val" and report["source"] == "train/runs/text"
    assert done["markdown"].startswith("# Checkpoint comparison")
    plot = client.get(done["plot"])
    assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert {r["name"]: r["has_compare"] for r in client.get("/api/runs").json()["runs"]} == {
        "train/runs/text": True, "train/runs/shoes": False}
