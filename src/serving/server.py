"""``serve.py``: scan the logs directory, then run the API with uvicorn until stopped."""

import logging
import os
import socket
from pathlib import Path

import uvicorn
from omegaconf import DictConfig

from src.errors import UserError
from src.serving.app import create_app
from src.serving.bases import base_model_entries
from src.serving.guards import exposure_warning
from src.serving.images import ImageStore
from src.serving.loading import ModelCache, check_device
from src.serving.registry import ModelRegistry
from src.serving.resident import Residents

log = logging.getLogger(__name__)


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as err:
            raise UserError(f"cannot listen on {host}:{port} ({err.strerror}) "
                            "— stop what uses it or pass port=<another>") from None


def build_app(cfg: DictConfig):
    logs_dir = Path(cfg.logs_dir).expanduser()
    if not logs_dir.is_dir():
        raise UserError(f"logs_dir={cfg.logs_dir} is not a directory — train first (python train.py "
                        "experiment=quickstart) or point logs_dir at the logs to serve")
    check_device(cfg.device)
    config_dir = Path(cfg.paths.root_dir) / "conf"
    bases = base_model_entries("serve", config_dir, cfg.base_data) if cfg.list_base_models else []
    registry = ModelRegistry(logs_dir, bases)
    residents = Residents(cfg, cfg.device, cfg.max_adapters_per_base)
    cache = ModelCache(residents.load, cfg.max_loaded_models)
    if cfg.max_body_bytes < 1024 or cfg.model_wait_seconds <= 0:
        raise UserError(f"max_body_bytes={cfg.max_body_bytes} must be at least 1024 and model_wait_seconds="
                        f"{cfg.model_wait_seconds} above 0 — fix them in conf/serve.yaml or on the command line")
    app = create_app(registry, cache, ImageStore(cfg.output_dir, cfg.max_saved_images), cfg.limits,
                     max_body_bytes=cfg.max_body_bytes, model_wait_seconds=cfg.model_wait_seconds,
                     api_key=api_key_of(cfg), project_root=cfg.paths.root_dir, resident_key=residents.key)
    return app, registry


def api_key_of(cfg: DictConfig) -> str | None:
    """``api_key=`` or else the LORAFIT_API_KEY environment variable (which stays out of the run's saved config)."""
    return str(cfg.get("api_key") or os.environ.get("LORAFIT_API_KEY") or "") or None


def serve(cfg: DictConfig) -> None:
    check_port_free(cfg.host, cfg.port)
    app, registry = build_app(cfg)
    entries = registry.list()
    url = f"http://{cfg.host}:{cfg.port}"
    log.info("serving %d models (%d runs) from %s at %s — dashboard at %s/, API docs at %s/docs; images saved (on "
             "request) to %s", len(entries), len({e.run for e in entries if e.run}), registry.logs_dir, url, url, url,
             cfg.output_dir)
    warning = exposure_warning(cfg.host, api_key_of(cfg))
    if warning:
        log.warning(warning)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_config=None, log_level=cfg.log_level)
