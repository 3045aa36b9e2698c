"""Training runs for the dashboard: what each run is (from its trusted config), how it is doing (its running
marker and report) and the compare=all reports made of it.

Runs are the registry's run directories (``find_run_dirs``) whose Hydra job is ``train``, named the same way
(their path relative to the logs directory). A run whose config lorafit does not trust is never listed, and
no file of a run is read when it resolves outside the logs directory (a symlink placed in a run).
"""

import json
import logging
import os
import socket
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import psutil
import yaml
from omegaconf import OmegaConf

from src.callbacks.run_report import RUNNING_MARKER
from src.serving.registry import _inside, _mtime, family_of, find_run_dirs, kind_of
from src.trust import Refused, read_run_config

log = logging.getLogger(__name__)

REPORT = "report.json"  # what evaluate.py compare=all writes in its output directory (src/comparison/runner.py)
FINISHED = ("max_steps", "max_epochs", "early_stopping")  # stop reasons of a fit that ended by its own rules


@dataclass(frozen=True)
class RunFacts:
    """What a run's config says about it."""

    experiment: str | None
    model: str | None  # config group choices: tiny_t5, amazon_sample
    data: str | None
    kind: str  # text or image
    monitor: str | None
    mode: str | None


@dataclass(frozen=True)
class Run:
    name: str
    path: Path
    facts: RunFacts


def read_inside(path: Path, root: Path) -> str | None:
    """The text of ``path`` when it is a file that resolves inside ``root``, else None."""
    try:
        return path.read_text(encoding="utf-8") if path.is_file() and _inside(path, root) else None
    except (OSError, UnicodeDecodeError):
        return None


def read_json_inside(path: Path, root: Path) -> dict[str, Any]:
    text = read_inside(path, root)
    try:
        value = json.loads(text) if text else {}
    except ValueError:  # a file being written by a process without atomic writes
        return {}
    return value if isinstance(value, dict) else {}


def hydra_runtime(run_dir: Path) -> dict[str, Any]:
    """``hydra.runtime`` and ``hydra.job.name`` of ``.hydra/hydra.yaml`` (plain YAML: nothing is resolved)."""
    try:
        hydra = (yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text()) or {}).get("hydra") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return {}
    return {**(hydra.get("runtime") or {}), "job": (hydra.get("job") or {}).get("name")}


@lru_cache(maxsize=1024)
def run_facts(run_dir: Path, config_mtime: int, hydra_mtime: int) -> RunFacts | str | None:
    """The run's facts, why its config is refused (a str), or None for anything but a readable training run;
    cached until its config changes."""
    runtime = hydra_runtime(run_dir)
    if runtime.get("job") not in ("train", None):  # evaluate.py, serve.py ... outputs
        return None
    try:
        cfg = read_run_config(run_dir)  # the trust check, before family_of imports the class it names
        if runtime.get("job") is None and "callbacks" not in cfg:  # no hydra.yaml: a training config has callbacks
            return None
        kind = kind_of(family_of(cfg.model))
    except Refused as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 (a broken or foreign config: skipped, the server keeps going)
        log.debug("not a run the dashboard lists: %s (%s)", run_dir, err)
        return None
    choices = runtime.get("choices") or {}

    def select(key: str) -> str | None:
        value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        return None if value is None else str(value)

    return RunFacts(experiment=choices.get("experiment"), model=choices.get("model"), data=choices.get("data"),
                    kind=kind, monitor=select("model.monitor"), mode=select("model.mode"))


def facts_of(run_dir: Path) -> RunFacts | str | None:
    hydra = run_dir / ".hydra"
    return run_facts(run_dir, _mtime(hydra / "config.yaml"), _mtime(hydra / "hydra.yaml"))


def name_of(run_dir: Path, logs_dir: Path) -> str:
    return run_dir.relative_to(logs_dir).as_posix()


def scan(logs_dir: Path) -> tuple[list[Run], dict[str, str], list[Path]]:
    """(trusted training runs newest first, refused run name → why, directories holding a compare report)."""
    runs, refused, reports = [], {}, []
    for run_dir in find_run_dirs(logs_dir):
        if not _inside(run_dir, logs_dir):
            continue
        if (run_dir / REPORT).is_file():
            reports.append(run_dir)
            continue
        facts = facts_of(run_dir)
        if isinstance(facts, RunFacts):
            runs.append(Run(name_of(run_dir, logs_dir), run_dir, facts))
        elif isinstance(facts, str):
            refused[name_of(run_dir, logs_dir)] = facts
    runs.sort(key=lambda r: (_mtime(r.path / ".hydra" / "config.yaml"), r.name), reverse=True)
    return runs, refused, reports


# -- status --------------------------------------------------------------------------------------------------


def process_alive(pid: Any, create_time: Any) -> bool:
    """Whether process ``pid`` runs and is the one that wrote the marker (not a later process given its pid)."""
    try:
        process = psutil.Process(int(pid))
        return create_time is None or abs(process.create_time() - float(create_time)) < 1.0
    except (psutil.Error, TypeError, ValueError):
        return False


def status_of_reason(reason: str | None) -> str:
    """finished (its own stopping rule), stopped (Ctrl+C, SIGTERM), failed (an error, a non-finite loss)."""
    if not reason:
        return "unknown"
    if reason.startswith(FINISHED):
        return "finished"
    if reason.startswith("interrupted"):
        return "stopped"
    if reason.startswith("error") or reason == "non_finite_loss":
        return "failed"
    return "unknown"


def run_status(run_dir: Path, logs_dir: Path, report: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(status, the running marker's contents). A marker is written when fit starts and removed once the report
    has its stop reason: a marker whose process is gone was left by a killed run."""
    marker = read_json_inside(run_dir / RUNNING_MARKER, logs_dir)
    reason = (report.get("training") or {}).get("stop_reason")
    if not marker:
        return status_of_reason(reason), marker
    if marker.get("hostname") != socket.gethostname():
        return "unknown", marker  # trained on another machine: its process cannot be checked from here
    if process_alive(marker.get("pid"), marker.get("create_time")):
        return "running", marker
    return (status_of_reason(reason) if reason else "stopped"), marker


def describe(run: Run, logs_dir: Path, best_models: dict[str, str], compared: set[str]) -> dict[str, Any]:
    """A run as GET /api/runs lists it."""
    report = read_json_inside(run.path / "metrics.json", logs_dir)
    status, marker = run_status(run.path, logs_dir, report)
    best = report.get("best_checkpoint") or {}
    times = report.get("timestamp") or {}
    return {"name": run.name, "experiment": run.facts.experiment, "model": run.facts.model, "data": run.facts.data,
            "kind": run.facts.kind, "status": status, "stop_reason": (report.get("training") or {}).get("stop_reason"),
            "monitor": run.facts.monitor or best.get("monitor"), "mode": run.facts.mode,
            "best_checkpoint": best_models.get(run.name), "best_score": best.get("score"),
            "started": times.get("start") or marker.get("started"), "finished": times.get("end"),
            "has_compare": run.name in compared}


# -- compare reports -----------------------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def report_source(report_dir: Path, report_mtime: int, logs_dir: Path) -> str | None:
    """The run directory a compare report was made of, absolute (a relative ``ckpt=`` is taken from the
    directory evaluate.py ran in); None for a leaderboard or an unreadable report."""
    source = read_json_inside(report_dir / REPORT, logs_dir).get("source")
    if not isinstance(source, str) or not source:
        return None
    path = Path(source).expanduser()
    if not path.is_absolute():
        path = Path(hydra_runtime(report_dir).get("cwd") or "/") / path
    return os.path.normpath(path)


def reports_of(run: Run, report_dirs: list[Path], logs_dir: Path) -> list[Path]:
    """The compare reports made of ``run``, newest first. A report names the run directory it compared; logs
    moved since then still match by the run's name (``train/runs/<time>``) at the end of that path."""
    here = os.path.normpath(run.path)
    found = []
    for report_dir in report_dirs:
        source = report_source(report_dir, _mtime(report_dir / REPORT), logs_dir)
        if source and (source == here or source.endswith(f"/{run.name}")):
            found.append(report_dir)
    return sorted(found, key=lambda d: _mtime(d / REPORT), reverse=True)


def compared_runs(runs: list[Run], report_dirs: list[Path], logs_dir: Path) -> set[str]:
    return {run.name for run in runs if reports_of(run, report_dirs, logs_dir)}
