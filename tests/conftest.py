"""Shared fixtures: a per-session cache for tiny models and prepared data, config composition,
and one short quickstart training run (through the real CLI) reused by the end-to-end tests."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test that reaches for the hub fails instead of downloading
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import src.resolvers  # noqa: E402,F401  (resolvers used by conf/)
from tests.preloaded_cli import PreloadedCli  # noqa: E402
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cache")
    os.environ["LORAFIT_CACHE"] = str(path)
    return path


def compose_config(name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``conf/<name>.yaml`` as the CLI would, with the run directory set to ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


_preloaded: PreloadedCli | None = None


def cli_env() -> dict[str, str]:
    """The environment of every CLI run a test starts."""
    return {**os.environ, "PYTHONWARNINGS": "ignore"}


def preloaded_cli() -> PreloadedCli:
    """The session's preload server for the current environment (a new one when a test changed the environment:
    libraries read some variables once, when imported)."""
    global _preloaded
    env = cli_env()
    if _preloaded is None or _preloaded.env != env:
        if _preloaded is not None:
            _preloaded.close()
        _preloaded = PreloadedCli(env, Path(tempfile.mkdtemp(prefix="lorafit_cli_")))
    return _preloaded


def pytest_sessionfinish(session, exitstatus):
    if _preloaded is not None:
        _preloaded.close()
        shutil.rmtree(_preloaded.scratch, ignore_errors=True)


def run_cli(script: str, *overrides: str, check: bool = True, timeout: int = 600, fresh: bool = False,
            cli: PreloadedCli | None = None) -> subprocess.CompletedProcess:
    """``python <script> <overrides>`` in ROOT: forked from a process that imported the libraries once
    (tests/preloaded_cli.py; the session's, or ``cli``), which saves seconds of imports per run; ``fresh`` starts
    a new interpreter."""
    if fresh:
        proc = subprocess.run([sys.executable, str(ROOT / script), *overrides], cwd=ROOT, text=True, check=False,
                              env=cli_env(), capture_output=True, timeout=timeout)
    else:
        proc = (cli or preloaded_cli()).run(script, *overrides, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(overrides)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


QUICK = ["experiment=quickstart", "logger=csv", "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="session")
def trained_run(cache_dir, tmp_path_factory) -> Path:
    """A short quickstart run (6 epochs, 2 checkpoints kept + last) through ``python train.py``."""
    run_dir = tmp_path_factory.mktemp("run")
    run_cli("train.py", *QUICK, "trainer.max_epochs=6", f"hydra.run.dir={run_dir}")
    return run_dir


@pytest.fixture(scope="session")
def trained_chat_run(cache_dir, tmp_path_factory) -> Path:
    """``experiment=quickstart_chat`` as the README runs it (20 epochs: its answers have learned to end)."""
    run_dir = tmp_path_factory.mktemp("chat")
    run_cli("train.py", "experiment=quickstart_chat", "logger=csv", "trainer.enable_progress_bar=false",
            f"hydra.run.dir={run_dir}")
    return run_dir


def logs_holding(tmp_path_factory, prefix: str, **runs: Path) -> Path:
    """A logs directory holding a copy of each run as ``train/runs/<name>`` (as a server's ``logs_dir``)."""
    logs = tmp_path_factory.mktemp(prefix) / "logs"
    for name, run in runs.items():
        shutil.copytree(run, logs / "train" / "runs" / name)
    return logs


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def connect(datamodule, tokenizer=None, family: str = "seq2seq", **model_cfg):
    """A datamodule built from config, connected the way a run connects it (the family's ``connect``)."""
    from omegaconf import OmegaConf

    from src.families.registry import FAMILIES

    FAMILIES.get(family).connect(datamodule, tokenizer, OmegaConf.create(model_cfg))
    return datamodule


def texts(row: dict) -> tuple[str, str]:
    """A sample's prompt (as one text) and reference."""
    from src.conversation import prompt_text, reference

    return prompt_text(row["messages"]), reference(row["messages"])


@pytest.fixture(scope="session")
def trained_shoes_run(cache_dir, tmp_path_factory) -> Path:
    """A short quickstart_shoes run for serving and export tests: 10 steps, one validation, one checkpoint."""
    run_dir = tmp_path_factory.mktemp("shoes_session")
    run_cli("train.py", "experiment=quickstart_shoes", "logger=csv", "trainer.enable_progress_bar=false",
            "data.batch_size=4", "trainer.max_steps=10", "val_every_n_steps=10", "data.limit_val_prompts=4",
            "test=false", f"hydra.run.dir={run_dir}")
    return run_dir
