"""Run the CLI scripts (``train.py``, ``evaluate.py``) as forks of one process that imported their libraries once.

Each ``python train.py`` pays several seconds of imports (torch, Lightning, transformers, peft, diffusers) before
it does anything; a test file that starts a dozen runs pays them a dozen times. ``PreloadedCli`` starts one server
process that imports those libraries and does nothing else (no tensor op, no Python thread), then forks it per
run: the child sets its argv, working directory and environment, executes the script as ``__main__`` as
``python <script> <args>`` would, and exits as the interpreter does (threads joined, atexit handlers run). Each run
is a separate process with its own pid, exit status and signal handling, so a test can Ctrl+C it.

What a fork does not give, a fresh interpreter does: runs forked from one server share its hash seed and its
unseeded random states. A test that compares two runs for equality should fork them from two servers (or start one
as a fresh process) so that such a dependence still shows.
"""

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# what a run imports before it trains or evaluates anything: the libraries and the project's own entry code
PRELOAD = ("hydra", "omegaconf", "src.resolvers", "torch", "lightning", "transformers", "peft", "diffusers",
           "datasets", "torchmetrics", "src.runtime", "src.training", "src.evaluation", "src.comparison.runner",
           "src.preflight")


class Run:
    """A forked run, with the part of ``subprocess.Popen`` the tests use."""

    def __init__(self, cli: "PreloadedCli", pid: int, out: Path, err: Path):
        self.cli, self.pid, self.out, self.err = cli, pid, out, err
        self.returncode: int | None = None
        self.rusage: dict = {}

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def poll(self) -> int | None:
        if self.returncode is None:
            self._finish(timeout=0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._finish(timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
        return self.returncode

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
        self.wait()

    def _finish(self, timeout: float | None) -> None:
        reply = self.cli.reply(timeout)
        if reply is not None:
            assert reply["pid"] == self.pid, reply
            self.returncode, self.rusage = reply["returncode"], reply["rusage"]
            self.cli.running = None


class PreloadedCli:
    """One server process; ``run``/``popen`` fork it, one run at a time."""

    def __init__(self, env: dict[str, str], scratch: Path):
        self.env, self.scratch, self.count, self.running = dict(env), scratch, 0, None
        scratch.mkdir(parents=True, exist_ok=True)
        self.server = subprocess.Popen([sys.executable, __file__, *PRELOAD], cwd=ROOT, env=self.env,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.buffer = b""
        ready = self.reply(timeout=None)
        # a fork keeps only the forking thread, so no Python thread may run then (the native pools of OpenBLAS and
        # jemalloc, which numpy, scipy and pyarrow start on import, have their own fork handlers)
        if ready.get("python_threads") != 1:
            self.close()
            raise RuntimeError(f"the preload server did not start with one Python thread: {ready}")
        # resident sets of the last run and the largest of any run so far (pages shared with the server included)
        self.last_rss_gb = self.peak_rss_gb = 0.0

    def popen(self, script: str, *args: str, env: dict[str, str] | None = None) -> Run:
        env = self.env if env is None else env
        if env != self.env:  # libraries read some variables once, when imported: fork only the same environment
            raise ValueError("a forked run has the server's environment; start a fresh process for another one")
        if self.running is not None:  # left by a test that failed before it ended: one run at a time
            self.running.kill()
        self.count += 1
        out, err = self.scratch / f"{self.count}.out", self.scratch / f"{self.count}.err"
        request = {"argv": [str(ROOT / script), *args], "cwd": str(ROOT), "env": env, "out": str(out),
                   "err": str(err)}
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        self.running = Run(self, self.reply(timeout=None)["pid"], out, err)
        return self.running

    def reply(self, timeout: float | None) -> dict | None:
        """The server's next reply line, or None when none came within ``timeout`` seconds (None: no limit)."""
        fd = self.server.stdout.fileno()  # read unbuffered, so that select() sees every byte not yet taken
        while b"\n" not in self.buffer:
            if not select.select([fd], [], [], timeout)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise RuntimeError(f"the preload server ended (exit status {self.server.wait()})")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def run(self, script: str, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
        run = self.popen(script, *args)
        try:
            run.wait(timeout)
        except subprocess.TimeoutExpired:
            run.kill()
            raise
        self.last_rss_gb = run.rusage.get("maxrss_kb", 0) / 2**20  # Linux reports kilobytes
        self.peak_rss_gb = max(self.peak_rss_gb, self.last_rss_gb)
        return subprocess.CompletedProcess([script, *args], run.returncode, run.out.read_text(), run.err.read_text())

    def close(self) -> None:
        if self.running is not None:
            self.running.kill()
        self.server.stdin.close()
        self.server.wait(timeout=60)


# -- the server (this file run as a script) -------------------------------------------------------------------
def _serve(preload: list[str]) -> None:
    import importlib
    import threading

    requests, replies = os.fdopen(os.dup(0), "r"), os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)  # what anything prints goes to stderr, not into the replies
    base_path = list(sys.path)
    sys.path.insert(0, str(ROOT))
    for name in preload:
        importlib.import_module(name)
    sys.path[:] = base_path
    replies.write(json.dumps({"python_threads": threading.active_count()}) + "\n")
    for line in requests:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            requests.close()
            replies.close()
            _child(request)  # never returns
        replies.write(json.dumps({"pid": pid}) + "\n")
        _, status, usage = os.wait4(pid, 0)
        replies.write(json.dumps({"pid": pid, "returncode": os.waitstatus_to_exitcode(status), "rusage": {
            "utime": usage.ru_utime, "stime": usage.ru_stime, "maxrss_kb": usage.ru_maxrss}}) + "\n")
    os._exit(0)  # nothing to clean up: skip the seconds an interpreter with these libraries takes to shut down


def _child(request: dict) -> None:
    """Become ``python <argv>``: execute the script as ``__main__`` and exit the way the interpreter exits."""
    import atexit
    import runpy
    import signal
    import threading
    import traceback

    code = 1
    try:
        for fd, path in ((1, request["out"]), (2, request["err"])):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        script = request["argv"][0]
        sys.argv = list(request["argv"])
        sys.path[0] = os.path.dirname(script)  # as for `python <script>`
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        if not isinstance(exit_.code, (int, type(None))):
            print(exit_.code, file=sys.stderr)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = -signal.SIGINT  # the interpreter ends by the signal itself, below
    except BaseException:  # noqa: BLE001  (whatever a script raises ends it as the interpreter would: status 1)
        traceback.print_exc()
    try:
        threading._shutdown()  # as interpreter shutdown: wait for non-daemon threads, then the atexit handlers
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        if code == -signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(code)


if __name__ == "__main__":
    _serve(sys.argv[1:])
