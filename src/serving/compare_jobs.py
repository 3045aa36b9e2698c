"""``compare=all`` for a run, started from the dashboard: ``python evaluate.py ckpt=<run dir> compare=all`` in a
subprocess (its memory goes when it ends, and a crash cannot take the server down), one at a time.

A job writes where a command-line comparison would (``<logs dir>/evaluate/runs/<time>_compare``), so its report is
found afterwards the same way as one made earlier by hand. Jobs asked for while another runs wait in a queue;
a run never has two. Progress counts the rows evaluated so far: each writes ``<name>/metrics.json``.
"""

import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from src.comparison.checkpoints import list_checkpoints
from src.errors import UserError

log = logging.getLogger(__name__)

OUTPUT = "compare.out"  # the subprocess's console output, next to its report
MAX_ERROR_CHARS = 400


@dataclass
class CompareJob:
    run: str
    run_dir: Path
    split: str
    kind: str  # text runs get a base-model row too
    out: Path | None = None
    state: str = "queued"  # queued, running, done, failed
    rows: list[str] = field(default_factory=list)  # the rows compare=all evaluates, in order
    error: str | None = None
    ended: float | None = None  # time.time() at the end
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")

    def progress(self, waiting_for: str | None = None) -> dict:
        """{done, total, message}: rows evaluated so far, of all the rows."""
        if self.state == "queued":
            behind = f" for the comparison of {waiting_for}" if waiting_for else ""
            return {"done": 0, "total": len(self.rows), "message": f"queued: waiting{behind} to finish"}
        done = [name for name in self.rows if self.out and (self.out / name / "metrics.json").is_file()]
        total = len(self.rows)
        if not self.rows or self.state != "running":
            message = "listing the run's checkpoints" if self.state == "running" else self.state
        elif len(done) < total:
            message = f"evaluating {self.rows[len(done)]} ({len(done) + 1} of {total}) on {self.split}"
        else:
            message = "writing the report"
        return {"done": len(done), "total": total, "message": message}


def hydra_value(path: Path) -> str:
    """``path`` quoted for a Hydra command-line override."""
    text = str(path)
    if "'" in text or "\\" in text or "${" in text:
        raise UserError(f"{text} holds a quote, a backslash or '${{' — move the run to a plainer path to compare it "
                        "from the dashboard, or run evaluate.py compare=all by hand")
    return f"'{text}'"


def last_error_line(output: str) -> str:
    """The line that says what went wrong: run_task's ``error: ...`` line, else the traceback's last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    chosen = next((line for line in reversed(lines) if line.startswith("error: ")), None)
    if chosen is None:
        chosen = next((line for line in reversed(lines) if "Error" in line or "error" in line),
                      lines[-1] if lines else "no output")
    return chosen.removeprefix("error: ")[:MAX_ERROR_CHARS]


class CompareJobs:
    """The jobs of this server, by run name: at most ``max_running`` subprocesses at once, the rest queued."""

    def __init__(self, logs_dir: Path, project_root: Path, max_running: int = 1):
        self.logs_dir, self.project_root, self.max_running = Path(logs_dir), Path(project_root), max_running
        self._jobs: dict[str, CompareJob] = {}
        self._queue: deque[CompareJob] = deque()
        self._running: list[CompareJob] = []
        self._lock = threading.Lock()
        self._closed = False

    def get(self, run: str) -> CompareJob | None:
        with self._lock:
            return self._jobs.get(run)

    def waiting_for(self) -> str | None:
        with self._lock:
            return self._running[0].run if self._running else None

    def start(self, run: str, run_dir: Path, split: str, kind: str) -> CompareJob:
        """A new job for ``run``, or the one it already has queued or running."""
        with self._lock:
            job = self._jobs.get(run)
            if job is not None and job.active:
                return job
            job = self._jobs[run] = CompareJob(run, run_dir, split, kind)
            self._queue.append(job)
            self._start_next()
            return job

    def _start_next(self) -> None:  # with the lock held
        while self._queue and len(self._running) < self.max_running and not self._closed:
            job = self._queue.popleft()
            job.state = "running"
            self._running.append(job)
            threading.Thread(target=self._run, args=(job,), name=f"compare {job.run}", daemon=True).start()

    def _run(self, job: CompareJob) -> None:
        try:
            job.rows = (["base"] if job.kind == "text" else []) + [c.name for c in list_checkpoints(job.run_dir)]
            job.out = self.output_dir()
            returncode, output = self._subprocess(job)
            if returncode == 0 and (job.out / "report.json").is_file():
                job.state = "done"
            else:
                job.state = "failed"
                job.error = f"compare=all exited with status {returncode}: {last_error_line(output)}"
        except UserError as err:  # e.g. no checkpoints yet
            job.state, job.error = "failed", str(err).splitlines()[0]
        except Exception as err:  # a bug: the job fails, the server keeps going
            log.exception("compare=all for %s failed", job.run)
            job.state, job.error = "failed", f"{type(err).__name__}: {err}".splitlines()[0][:MAX_ERROR_CHARS]
        finally:
            job.ended = time.time()
            if job.state == "failed":
                log.warning("compare=all for %s failed: %s", job.run, job.error)
            with self._lock:
                self._running.remove(job)
                self._start_next()

    def output_dir(self) -> Path:
        """A new directory beside the command line's compare outputs (``evaluate/runs/<time>``)."""
        base = self.logs_dir / "evaluate" / "runs"
        stamp = f"{datetime.now():%Y-%m-%d_%H-%M-%S}_compare"
        for attempt in range(1000):
            out = base / (stamp if attempt == 0 else f"{stamp}-{attempt}")
            try:
                out.mkdir(parents=True)
                return out
            except FileExistsError:
                continue
        raise RuntimeError(f"no free output directory under {base}")

    def _subprocess(self, job: CompareJob) -> tuple[int, str]:
        script = self.project_root / "evaluate.py"
        if not script.is_file():
            raise UserError(f"evaluate.py is not in {self.project_root} — run serve.py from the lorafit checkout "
                            "(paths.root_dir) to compare checkpoints from the dashboard")
        command = [sys.executable, str(script), f"ckpt={hydra_value(job.run_dir)}", "compare=all",
                   f"split={job.split}", f"hydra.run.dir={hydra_value(job.out)}", "trainer.enable_progress_bar=false"]
        env = {k: v for k, v in os.environ.items() if k != "LORAFIT_API_KEY"}  # the server's secret stays here
        log.info("compare=all for %s on %s: %s", job.run, job.split, job.out)
        with open(job.out / OUTPUT, "w+", encoding="utf-8") as output:
            with self._lock:
                if self._closed:
                    return -1, "error: the server is stopping"
                job.process = subprocess.Popen(command, cwd=self.project_root, env=env, stdout=output,
                                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            returncode = job.process.wait()
            output.seek(0)
            return returncode, output.read()[-20000:]

    def close(self, timeout: float = 10.0) -> None:
        """Stop the running subprocesses (the server is shutting down) and drop the queue."""
        with self._lock:
            self._closed = True
            self._queue.clear()
            processes = [job.process for job in self._running if job.process is not None]
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
