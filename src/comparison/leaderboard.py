"""A multirun sweep's leaderboard: each run's best checkpoint, ranked by the monitored score recorded in its
``metrics.json``, with the overrides that set the runs apart, and the retrieval baseline's score on the same
metric and data as a reference line (text runs sharing their data). With ``reevaluate=true`` each best checkpoint
is also evaluated here on the same samples, with paired bootstrap intervals against the top one."""

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from src.building import build_model_and_data
from src.comparison.checkpoints import checkpoint_step
from src.comparison.report import build_report, finite, fmt
from src.comparison.retrieval import sweep_reference
from src.comparison.rows import bootstrap_settings, evaluate_row, write_report
from src.errors import UserError
from src.outputs import write_json
from src.runtime import check_hardware
from src.targets import best_checkpoint_of, run_dir_of, state_dict_of, with_run_config

log = logging.getLogger(__name__)


def is_sweep_dir(path: Path) -> bool:
    """Hydra's multirun directory: ``multirun.yaml`` and one run directory per job (0/, 1/, ...)."""
    if run_dir_of(path) is not None:
        return False
    return (path / "multirun.yaml").is_file() or any(run_dir_of(p) for p in path.iterdir() if p.is_dir())


def sweep_runs(sweep_dir: Path) -> list[Path]:
    runs = [p for p in sweep_dir.iterdir() if p.is_dir() and run_dir_of(p)]
    return sorted(runs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def run_overrides(run_dir: Path) -> dict[str, str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    overrides = OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else []
    return dict(o.split("=", 1) if "=" in o else (o, "") for o in overrides)


def distinguishing(all_overrides: list[dict[str, str]]) -> list[str]:
    """Override keys whose value is not the same in every run (the sweep's axes)."""
    keys = dict.fromkeys(k for o in all_overrides for k in o)
    return [k for k in keys if len({o.get(k) for o in all_overrides}) > 1]


def read_run(run_dir: Path) -> dict[str, Any]:
    report_path = run_dir / "metrics.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    best = report.get("best_checkpoint") or {}
    path = best_checkpoint_of(run_dir)
    final = report.get("final_metrics") or {}
    return {"run": run_dir.name, "run_dir": str(run_dir), "monitor": best.get("monitor"),
            "mode": (report.get("model") or {}).get("mode"), "score": best.get("score"),
            "best_checkpoint": str(path) if path else None,
            "test_metrics": {k: v for k, v in final.items() if k.startswith("test/")},
            "stop_reason": (report.get("training") or {}).get("stop_reason"),
            "overrides": run_overrides(run_dir)}


def rank_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Scored runs best first by their monitor's mode; runs without a best score last."""
    scored = [r for r in runs if finite(r["score"]) and r["best_checkpoint"]]
    monitors = {(r["monitor"], r["mode"]) for r in scored}
    if len(monitors) > 1:
        raise UserError(f"the runs of this sweep monitor different metrics {sorted(map(str, monitors))} — "
                        "their scores do not rank against each other; compare the runs separately")
    sign = -1 if scored and scored[0]["mode"] == "max" else 1
    ranked = sorted(scored, key=lambda r: sign * r["score"])
    for rank, run in enumerate(ranked, 1):
        run["rank"] = rank
    unscored = [r | {"rank": None} for r in runs if r not in scored]
    return ranked + unscored


def leaderboard(cfg: DictConfig, sweep_dir: Path) -> dict[str, Any]:
    runs = [read_run(p) for p in sweep_runs(sweep_dir)]
    if not runs:
        raise UserError(f"{sweep_dir} holds no run directories (<n>/.hydra/config.yaml) — pass a multirun sweep "
                        "directory (logs/train/multiruns/<time>) or a run directory")
    ranked = rank_runs(runs)
    if ranked[0]["rank"] is None:
        raise UserError(f"no run in {sweep_dir} has a best checkpoint with a score in its metrics.json — did the "
                        "runs fail before their first validation?")
    axes = distinguishing([r["overrides"] for r in runs])
    for run in ranked:
        run["distinguishing"] = {k: run["overrides"].get(k, "(default)") for k in axes}
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    board = {"sweep": str(sweep_dir), "monitor": ranked[0]["monitor"], "mode": ranked[0]["mode"],
             "axes": axes, "runs": ranked}
    if cfg.get("retrieval", True):
        board["retrieval"] = sweep_reference(cfg, ranked, board["monitor"], out)
        if "score" in board["retrieval"]:
            board["retrieval"]["beaten_by"] = beaten_by(ranked, board["retrieval"]["score"], board["mode"])
    if cfg.get("reevaluate"):
        board["reevaluated"] = reevaluate(cfg, ranked, out)
    write_json(out / "report.json", board)
    (out / "report.md").write_text(leaderboard_markdown(board), encoding="utf-8")
    top = ranked[0]
    log.info("best run: %s (%s %s=%s) %s\nwritten to %s: report.md, report.json", top["run"],
             " ".join(f"{k}={v}" for k, v in top["distinguishing"].items()), top["monitor"], fmt(top["score"]),
             top["best_checkpoint"], out)
    return {"best_run": top["run_dir"], "best_checkpoint": top["best_checkpoint"], "report": str(out / "report.md")}


def reevaluate(cfg: DictConfig, ranked: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """Each run's best checkpoint on this command's split, with its own config; intervals against the best."""
    rows, monitor, mode = [], None, None
    for run in (r for r in ranked if r["rank"] is not None):
        run_cfg = with_run_config(cfg, Path(run["run_dir"]))
        check_hardware(run_cfg)
        L.seed_everything(run_cfg.seed, workers=True)
        module, datamodule = build_model_and_data(run_cfg)  # runs may differ in model settings: one build each
        module.load_state_dict(state_dict_of(run["best_checkpoint"]))
        path = Path(run["best_checkpoint"])
        rows.append(evaluate_row(run_cfg, module, datamodule, out / "reevaluated", f"run-{run['run']}",
                                 step=checkpoint_step(path), path=str(path)))
        monitor, mode = module.monitor, module.mode
        del module, datamodule
    report = build_report(rows, monitor=monitor, mode=mode, split=cfg.split, settings=bootstrap_settings(cfg),
                          source=board_source(ranked), across_runs=True)
    write_report(out / "reevaluated", report, plot=False)
    return {"recommended": report["recommended"], "file": "reevaluated/report.md"}


def beaten_by(ranked: list[dict[str, Any]], score: float, mode: str) -> list[str]:
    """The runs whose best score is better than ``score``."""
    return [r["run"] for r in ranked if r["rank"] is not None and (r["score"] > score if mode == "max"
                                                                   else r["score"] < score)]


def board_source(ranked: list[dict[str, Any]]) -> str:
    return str(Path(ranked[0]["run_dir"]).parent)


def leaderboard_markdown(board: dict[str, Any]) -> str:
    test_keys = list(dict.fromkeys(k for r in board["runs"] for k in r["test_metrics"]))
    monitor = board["monitor"]
    lines = ["# Sweep leaderboard", "",
             f"Sweep: `{board['sweep']}` · {len(board['runs'])} runs · ranked by each run's best {monitor} "
             f"({board['mode']}) from its metrics.json"
             + (f" · axes: {', '.join(board['axes'])}" if board["axes"] else ""),
             "",
             "| rank | run | " + " | ".join(board["axes"] or ["overrides"]) + f" | best {monitor} | "
             + " | ".join(test_keys) + (" | " if test_keys else "") + "best checkpoint |",
             "|---|---|" + "---|" * (len(board["axes"] or [1]) + 1 + len(test_keys) + 1)]
    reference = board.get("retrieval") or {}
    line_at = reference_position(board["runs"], reference, board["mode"]) if "score" in reference else None
    for position, run in enumerate(board["runs"]):
        if position == line_at:
            lines.append(reference_line(board, test_keys))
        axes = [run["distinguishing"][k] for k in board["axes"]] or [" ".join(f"{k}={v}" for k, v in
                                                                      run["overrides"].items()) or "–"]
        tests = [fmt(run["test_metrics"].get(k)) for k in test_keys]
        where = (f"`{run['best_checkpoint']}`" if run["best_checkpoint"]
                 else f"none ({run['stop_reason'] or 'no report'})")
        rank = "–" if run["rank"] is None else str(run["rank"])
        lines.append(f"| {rank} | {run['run']} | " + " | ".join(axes) + f" | {fmt(run['score'])} | "
                     + " | ".join(tests) + (" | " if tests else "") + where + " |")
    if line_at == len(board["runs"]):
        lines.append(reference_line(board, test_keys))
    lines += ["", "Scores are each run's own validation; differences between runs of a few hundred samples may be "
              "noise: `reevaluate=true` scores every best checkpoint on the same samples with paired intervals."]
    if "score" in reference:
        beaten, scored = reference["beaten_by"], [r for r in board["runs"] if r["rank"] is not None]
        lines += ["", f"Retrieval (reference line): for each of the {reference['samples']} validation inputs, the "
                  f"target of the most similar of the {reference['training_inputs']} training inputs (BM25+), scored "
                  f"{monitor} {fmt(reference['score'])}; {len(beaten)} of {len(scored)} runs score above it "
                  f"(outputs: `{reference['outputs']}/predictions.jsonl`)."]
    elif "note" in reference:
        lines += ["", f"Note: {reference['note']}."]
    if "reevaluated" in board:
        rec = board["reevaluated"]["recommended"]
        lines += ["", f"Re-evaluated here ({board['reevaluated']['file']}): best is {rec['name']} — {rec['reason']}."]
    return "\n".join(lines) + "\n"



def reference_position(runs: list[dict[str, Any]], reference: dict[str, Any], mode: str) -> int:
    """Where the retrieval line goes in the table: after the scored runs that beat it."""
    beaten = set(reference["beaten_by"])
    scored = [r for r in runs if r["rank"] is not None]
    return next((i for i, r in enumerate(scored) if r["run"] not in beaten), len(scored))


def reference_line(board: dict[str, Any], test_keys: list[str]) -> str:
    """The retrieval baseline as a table row: no rank, no axes, its score on the monitored metric."""
    axes = ["–"] * (len(board["axes"]) or 1)
    tests = ["–"] * len(test_keys)
    return ("| – | **retrieval** (reference) | " + " | ".join(axes) + f" | {fmt(board['retrieval']['score'])} | "
            + " | ".join(tests) + (" | " if tests else "") + "– |")
