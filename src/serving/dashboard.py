"""The dashboard's API: training runs, their curves, and compare=all reports started in the background.

``GET /api/runs``, ``GET /api/runs/{name}/curves``, ``GET|POST /api/runs/{name}/compare`` and
``GET /api/runs/{name}/compare/plot.png`` (the contract is /work/notes/ui_contract.md; README "Dashboard").
A run is named by its path relative to the logs directory and looked up in the scanned listing, never joined
onto a path. File reading runs on threads of its own, so the dashboard never waits behind generations.
Report text is sent with paths under the logs directory made relative and other absolute paths cut to a name.
"""

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

import anyio
import anyio.to_thread
from fastapi import APIRouter, Body, HTTPException
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel

from src.comparison.runner import PLOT
from src.serving import runs as run_scan
from src.serving.compare_jobs import CompareJob, CompareJobs
from src.serving.curves import read_series
from src.serving.guards import scrub_paths
from src.serving.registry import ModelRegistry, _inside
from src.serving.runs import REPORT, Run


class CompareRequest(BaseModel):
    split: Literal["val", "test"] = "val"


def scrubbed(value: Any, roots: list[Path]) -> Any:
    """``value`` (a report) with every string's server paths scrubbed (``scrub_paths``)."""
    if isinstance(value, str):
        return scrub_paths(value, roots)
    if isinstance(value, dict):
        return {k: scrubbed(v, roots) for k, v in value.items()}
    if isinstance(value, list):
        return [scrubbed(v, roots) for v in value]
    return value


def dashboard_router(registry: ModelRegistry, jobs: CompareJobs) -> APIRouter:
    logs_dir = registry.logs_dir
    router = APIRouter(prefix="/api/runs", tags=["dashboard"])
    threads: list[anyio.CapacityLimiter] = []  # made in the event loop, on first use

    async def off_loop(function, *args):
        if not threads:
            threads.append(anyio.CapacityLimiter(2))
        return await anyio.to_thread.run_sync(function, *args, limiter=threads[0])

    def find_run(name: str) -> tuple[Run, list[Path]]:
        """The listed run named ``name`` and every compare report directory; 404/403 in one line otherwise."""
        runs, refused, reports = run_scan.scan(logs_dir)
        run = next((r for r in runs if r.name == name), None)
        if run is None:
            if name in refused:
                raise HTTPException(403, f"{name} is not listed: {refused[name]}")
            raise HTTPException(404, f"unknown run {name[:200]!r} — GET /api/runs lists the available names")
        return run, reports

    def list_runs() -> dict[str, Any]:
        best = {e.run: e.name for e in registry.scan() if e.recommended}  # names /api/models lists
        runs, _, reports = run_scan.scan(logs_dir)
        compared = run_scan.compared_runs(runs, reports, logs_dir)
        return {"runs": [run_scan.describe(run, logs_dir, best, compared) for run in runs]}

    def curves(name: str) -> dict[str, Any]:
        run, _ = find_run(name)
        report = run_scan.read_json_inside(run.path / "metrics.json", logs_dir)
        monitor = run.facts.monitor or (report.get("best_checkpoint") or {}).get("monitor")
        tags = ["train/loss"] + ([monitor] if monitor and monitor != "train/loss" else [])
        source, series = read_series(run.path, logs_dir, tags)
        status, _ = run_scan.run_status(run.path, logs_dir, report)
        return {"monitor": monitor, "mode": run.facts.mode, "series": series, "status": status, "source": source}

    def report_state(report_dir: Path | None) -> dict[str, Any]:
        if report_dir is None:
            return {"report": None, "markdown": None, "plot": None, "report_dir": None}
        roots = [logs_dir]
        markdown = run_scan.read_inside(report_dir / "report.md", logs_dir)
        plot = report_dir / PLOT
        return {"report": scrubbed(run_scan.read_json_inside(report_dir / REPORT, logs_dir), roots),
                "markdown": scrub_paths(markdown, roots) if markdown is not None else None,
                "plot": None, "has_plot": plot.is_file() and _inside(plot, logs_dir),
                "report_dir": run_scan.name_of(report_dir, logs_dir)}

    def compare_state(run: Run, reports: list[Path]) -> dict[str, Any]:
        """The run's job while it is queued or running; else its newest report (done), unless a job failed
        after it was written (failed, with that report still attached); else missing."""
        job: CompareJob | None = jobs.get(run.name)
        if job is not None and job.active:
            waiting = jobs.waiting_for() if job.state == "queued" else None
            return {"status": "running", "progress": job.progress(waiting), "error": None,
                    **report_state(None), "split": job.split}
        found = run_scan.reports_of(run, reports, logs_dir)
        newest = found[0] if found else None
        state = report_state(newest)
        failed_later = job is not None and job.state == "failed" and (
            newest is None or (job.ended or 0) * 1e9 > run_scan._mtime(newest / REPORT))
        status = "failed" if failed_later else "done" if newest else "missing"
        if state.pop("has_plot", False):
            state["plot"] = f"/api/runs/{quote(run.name, safe='/')}/compare/plot.png"
        return {"status": status, "progress": job.progress() if failed_later else None,
                "error": scrub_paths(job.error or "", [logs_dir]) if failed_later else None, **state,
                "split": (state["report"] or {}).get("split")}

    def get_compare(name: str) -> dict[str, Any]:
        return compare_state(*find_run(name))

    def post_compare(name: str, split: str) -> dict[str, Any]:
        run, reports = find_run(name)
        jobs.start(run.name, run.path, split, run.facts.kind)
        return compare_state(run, reports)

    def plot_path(name: str) -> Path:
        run, reports = find_run(name)
        found = run_scan.reports_of(run, reports, logs_dir)
        plot = found[0] / PLOT if found else None
        if plot is None or not plot.is_file() or not _inside(plot, logs_dir):
            raise HTTPException(404, f"{name} has no comparison plot — POST /api/runs/{name}/compare makes one")
        return plot

    @router.get("", summary="Training runs under the logs directory, newest first")
    async def get_runs() -> dict[str, Any]:
        return await off_loop(list_runs)

    @router.get("/{name:path}/curves", summary="A run's train/loss and monitored metric by step (live runs too)")
    async def get_curves(name: str) -> dict[str, Any]:
        return await off_loop(curves, name)

    @router.get("/{name:path}/compare/plot.png", summary="The newest comparison's metrics-by-step plot",
                response_class=FileResponse)
    async def get_plot(name: str) -> FileResponse:
        path = await off_loop(plot_path, name)
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-cache"})

    @router.get("/{name:path}/compare", summary="The run's newest compare=all report, or the running job")
    async def get_compare_state(name: str) -> dict[str, Any]:
        return await off_loop(get_compare, name)

    @router.post("/{name:path}/compare", status_code=202, summary="Start compare=all for the run (one at a time)")
    async def start_compare(name: str, body: Annotated[CompareRequest | None, Body()] = None) -> JSONResponse:
        state = await off_loop(post_compare, name, (body or CompareRequest()).split)
        return JSONResponse(state, status_code=202)

    return router
