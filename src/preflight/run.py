"""``python train.py <composition> preflight=true``: everything up to the first optimizer step, without
reading a weight or training. Prints a summary, writes ``<run dir>/preflight.json``, exits 0, or 2 with one
line per problem found.
"""

import json
import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets
from transformers.utils import logging as hf_logging
from omegaconf import DictConfig, OmegaConf

from src.errors import UserError
from src.families.registry import FAMILIES
from src.modality import check_model_fits_data
from src.preflight import checks
from src.preflight.data import require_train_samples
from src.preflight.memory import estimate, gpu_fits, probe
from src.preflight.schedule import plan_schedule
from src.preflight.summary import summary

log = logging.getLogger(__name__)

ADAPTER_CHECKPOINT_OVERHEAD = 64 * 2**10  # loop state, hyperparameters, file structure


@contextmanager
def quiet_transformers():
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def _section(report: dict[str, Any], name: str, problems: list[str], build) -> Any:
    """Run one section; a UserError becomes a problem and the section is left out."""
    try:
        value = build()
    except UserError as err:
        problems.append(str(err))
        return None
    report[name] = value
    return value


def preflight(cfg: DictConfig) -> None:
    start = time.monotonic()
    datasets.disable_progress_bars()  # the summary counts the records; row-count bars would only add noise
    report: dict[str, Any] = {"experiment": OmegaConf.select(cfg, "tags"), "problems": [], "warnings": []}
    problems, warnings = report["problems"], report["warnings"]

    try:
        check_model_fits_data(cfg)
        family = FAMILIES.of_config(cfg.model)
    except UserError as err:
        return _finish(cfg, report, [str(err)], start)

    hw_problems, hw_warnings = checks.hardware(cfg)
    problems += hw_problems
    warnings += hw_warnings

    with quiet_transformers():  # its notes on building without weights are not this run's lines
        plan = _section({}, "model", problems, lambda: family.plan(cfg.model))
    if plan is None:
        return _finish(cfg, report, problems, start)
    report["model"] = plan.report()
    problems += checks.generation_keys(family, dict(cfg.model.get("generation") or {}))
    warnings += family.preflight_warnings(cfg.model)

    data = _section(report, "data", problems, lambda: family.plan_data(cfg, plan.pretrained))
    if data is None:
        return _finish(cfg, report, problems, start)
    schedule = _section(report, "schedule", problems, lambda: plan_schedule(cfg, require_train_samples(data)))
    gradient_checkpointing = bool(cfg.model.get("gradient_checkpointing"))
    with quiet_transformers():
        probed = probe(plan, cfg, data, gradient_checkpointing)
        memory = estimate(plan, cfg, probed, cfg.model.get("quantization"))
        if family.kind == "text":  # the k-bit and checkpointing switches are the text families'
            memory["gpu_fits"] = gpu_fits(plan, cfg, data, memory, probed)
    device_bytes, device_source = checks.device_memory(cfg.trainer, cfg.get("preflight_device_memory_gb"))
    memory.update(device_memory_bytes=device_bytes, device_memory_source=device_source)
    if device_bytes:
        use = memory["estimated_peak_bytes"] / device_bytes
        memory["device_share"] = round(use, 3)
        if use > 1.0:
            problems.append(f"the estimated training peak, {memory['estimated_peak_bytes'] / 2**30:.1f} GiB, exceeds "
                            f"the device's {device_bytes / 2**30:.1f} GiB ({device_source}) — lower data.batch_size "
                            "(raise trainer.accumulate_grad_batches), shorten max lengths, or set "
                            "model.gradient_checkpointing=true")
        elif use > 0.9:
            warnings.append(f"the estimated training peak uses {use:.0%} of the device's memory ({device_source}): "
                            "little room for fragmentation and the CUDA context")
    report["memory"] = memory

    if schedule is not None:
        report["validation"] = family.validation_cost(plan, cfg, data, schedule, memory)
        if not schedule["checkpoint_steps"] and not schedule["notes"]:
            problems.append(f"no validation falls within the run's {schedule['optimizer_steps_total']} optimizer "
                            "steps, so no checkpoint would be kept — validate more often (val_every_n_steps=N, or "
                            "trainer.check_val_every_n_epoch / val_check_interval) or train longer")
        checkpoint_bytes = plan.trainable * (4 + 8) + ADAPTER_CHECKPOINT_OVERHEAD  # weights + AdamW moments
        schedule["checkpoint_bytes"] = checkpoint_bytes
        kept = schedule["checkpoints_kept"] + 1  # and last.ckpt
        problems += checks.output_dir(cfg.paths.output_dir, kept * checkpoint_bytes + 4 * plan.trainable)
    return _finish(cfg, report, problems, start)


def _finish(cfg: DictConfig, report: dict[str, Any], problems: list[str], start: float) -> None:
    report["problems"] = problems
    report["seconds"] = round(time.monotonic() - start, 1)
    path = Path(cfg.paths.output_dir) / "preflight.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    log.info("preflight\n%s\nwritten: %s", summary(report), path)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr, flush=True)
        raise SystemExit(2)
