"""The comparison report: one row per evaluated checkpoint with every metric and its bootstrap interval,
the change versus the previous checkpoint and versus the recommended one (paired intervals where the samples
have per-sample scores), a verdict per row from those intervals, the recommendation and notes (overfitting,
selection split, FID sample size, whether fine-tuning beat the retrieval baseline); as a dict (report.json) and
markdown.

Pure functions over ``Evaluated`` rows, so the verdicts are tested on synthetic per-sample scores.
"""

import math
from dataclasses import dataclass, field
from typing import Any

from src.errors import UserError
from src.metrics.bootstrap import Statistic, bootstrap_interval, paired_difference_interval
from src.metrics.directions import MONITORABLE, direction

STABLE_FID_IMAGES = 2048  # InceptionV3's feature dimension: fewer images give a singular covariance there
BEST, WITHIN_NOISE, WORSE = "best", "within noise of the best", "worse than the best"
BETTER = "better than the best"  # a reference row (base model, retrieval) can beat every checkpoint
# a percentile interval on the better side of a lower point estimate (possible for FID, whose resamples are biased)
UNCLEAR = "unclear: its interval favours it over the best"


@dataclass
class Evaluated:
    """One evaluated checkpoint (or the base model, or the retrieval baseline) and what its intervals resample."""

    name: str
    step: int | None
    metrics: dict[str, float]  # without the split prefix: {"rougeL": 0.31, "bleu": 12.0, "loss": 1.2}
    statistics: dict[str, Statistic] = field(default_factory=dict)  # metric → statistic over sample indices
    sample_ids: list | None = None  # which samples, in statistic index order (pairing needs the same list)
    path: str | None = None
    baseline: bool = False
    outputs: str | None = None  # subdirectory holding its metrics.json and predictions
    fid_samples: tuple[int, int] | None = None  # (generated images, feature dimension)
    texts: list[dict] = field(default_factory=list)  # text rows: uid, input, reference, prediction, rougeL
    retrieval: bool = False  # the retrieval baseline (src/comparison/retrieval.py): a reference, never recommended

    @property
    def reference(self) -> bool:
        """Not a checkpoint: the base model or the retrieval baseline."""
        return self.baseline or self.retrieval


@dataclass(frozen=True)
class BootstrapSettings:
    n_resamples: int = 1000
    fid_n_resamples: int = 200  # FID needs a matrix square root per resample
    confidence: float = 0.95
    seed: int = 0

    def for_metric(self, metric: str) -> dict[str, Any]:
        n = self.fid_n_resamples if metric == "fid" else self.n_resamples
        return {"n_resamples": int(n), "confidence": float(self.confidence), "seed": int(self.seed)}


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}g}" if finite(value) else "–"


def fmt_signed(value: Any) -> str:
    return f"{value:+.3g}" if finite(value) else "–"


def percent_change(value: Any, reference: Any) -> float | None:
    if not (finite(value) and finite(reference)) or reference == 0:
        return None
    return 100.0 * (value - reference) / abs(reference)


def recommend(rows: list[Evaluated], metric: str, mode: str) -> Evaluated:
    """The fine-tuned checkpoint with the best ``metric`` by ``mode``; a tie goes to the earlier step."""
    candidates = [r for r in rows if not r.reference and finite(r.metrics.get(metric))]
    if not candidates:
        raise UserError(f"no checkpoint has a finite {metric} score to choose by — check the evaluation log")
    candidates.sort(key=lambda r: (r.step if r.step is not None else math.inf))
    sign = 1 if mode == "max" else -1
    return max(candidates, key=lambda r: sign * r.metrics[metric])  # max() keeps the first of equals


def is_worse(value: float, reference: float, mode: str) -> bool:
    return value < reference if mode == "max" else value > reference


def label(row: dict) -> str:
    return row["name"] if row["step"] is None else f"{row['name']} (step {row['step']})"


def interval_text(diff: dict, verdict: bool = True) -> str:
    text = f"{fmt_signed(diff['estimate'])} [{fmt_signed(diff['low'])}, {fmt_signed(diff['high'])}]"
    return f"{text} {'significant' if diff['significant'] else 'not significant'}" if verdict else text


def build_report(rows: list[Evaluated], *, monitor: str, mode: str, split: str,
                 settings: BootstrapSettings = BootstrapSettings(), source: str = "",
                 notes: list[str] | None = None, across_runs: bool = False,
                 retrieval: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything report.json holds; ``to_markdown`` renders it. ``across_runs``: the rows are different runs
    (a sweep's best checkpoints), so their steps are no training curve and no overfitting note applies.
    ``retrieval``: how the retrieval row was made (method, training inputs), for report.json's ``retrieval``."""
    key = monitor.partition("/")[2]
    selected_by = f"{split}/{key}"
    best = recommend(rows, key, mode)
    names = [key] + [m for r in rows for m in r.metrics if m != key]
    metric_names = list(dict.fromkeys(names))

    previous = {} if across_runs else previous_checkpoints(rows)
    base = next((r for r in rows if r.baseline), None)
    table = []
    for row in rows:
        n = len(row.sample_ids or [])
        before = previous.get(row.name)
        entry = {"name": row.name, "step": row.step, "path": row.path, "baseline": row.baseline,
                 "retrieval": row.retrieval, "outputs": row.outputs, "recommended": row is best, "samples": n,
                 "metrics": row.metrics,
                 "intervals": {}, "change": {}, "change_pct": {}, "difference": {},
                 "previous": before.name if before else None, "change_previous": {}, "change_previous_pct": {},
                 "difference_previous": {}}
        if row.retrieval:  # versus the base model too: did copying beat the untuned model?
            entry.update({"change_base": {}, "change_base_pct": {}, "difference_base": {}})
        for metric in metric_names:
            if metric in row.statistics and n:
                entry["intervals"][metric] = bootstrap_interval(row.statistics[metric], n,
                                                                **settings.for_metric(metric)).to_dict()
            if row is best:  # it is the reference of every change
                entry["change"][metric] = entry["change_pct"][metric] = None
            else:
                compare_rows(entry, "", row, best, metric, settings)
            if before is not None:
                compare_rows(entry, "_previous", row, before, metric, settings)
            if row.retrieval and base is not None:
                compare_rows(entry, "_base", row, base, metric, settings)
        entry["verdict"] = verdict(entry, key, mode)
        table.append(entry)

    best_entry = next(e for e in table if e["recommended"])
    checkpoints = [e for e in table if not is_reference(e) and finite(e["metrics"].get(key))]
    versus_retrieval = retrieval_comparison(best_entry, table, key, split, mode, retrieval)
    report = {
        "source": source, "split": split, "monitor": monitor, "mode": mode, "selected_by": selected_by,
        "samples": best_entry["samples"], "metrics": metric_names,
        "bootstrap": {"n_resamples": settings.n_resamples, "fid_n_resamples": settings.fid_n_resamples,
                      "confidence": settings.confidence, "seed": settings.seed, "paired": True},
        "recommended": {"name": best.name, "step": best.step, "path": best.path,
                        "reason": recommendation_reason(best_entry, checkpoints, key, monitor, mode, split)},
        "rows": table,
        "notes": [*(notes or []),
                  *([] if across_runs else overfitting_notes(best_entry, checkpoints, key, selected_by, mode)),
                  *baseline_notes(best_entry, table, key, selected_by, mode),
                  *([versus_retrieval["sentence"]] if versus_retrieval else []),
                  *verdict_notes(table, selected_by), *fid_notes(rows), *selection_notes(split)],
    }
    if versus_retrieval:
        report["retrieval"] = versus_retrieval
    return report


def is_reference(entry: dict) -> bool:
    """A report row that is no checkpoint: the base model or the retrieval baseline."""
    return entry["baseline"] or entry.get("retrieval", False)


def previous_checkpoints(rows: list[Evaluated]) -> dict[str, Evaluated]:
    """Each checkpoint's predecessor on the training curve (by step); the first one and the base model have none."""
    curve = sorted((r for r in rows if not r.reference and r.step is not None), key=lambda r: r.step)
    return {later.name: earlier for earlier, later in zip(curve, curve[1:])}


def compare_rows(entry: dict, suffix: str, row: Evaluated, other: Evaluated, metric: str,
                 settings: BootstrapSettings) -> None:
    """``row`` minus ``other`` into ``entry[change<suffix>]`` (absolute), ``change<suffix>_pct`` and, when both
    were scored on the same samples with per-sample statistics, the paired interval ``difference<suffix>``."""
    value, reference = row.metrics.get(metric), other.metrics.get(metric)
    entry["change" + suffix][metric] = value - reference if finite(value) and finite(reference) else None
    entry["change" + suffix + "_pct"][metric] = percent_change(value, reference)
    n = len(row.sample_ids or [])
    if n and row.sample_ids == other.sample_ids and metric in row.statistics and metric in other.statistics:
        entry["difference" + suffix][metric] = paired_difference_interval(
            row.statistics[metric], other.statistics[metric], n, **settings.for_metric(metric)).to_dict()


def verdict(entry: dict, key: str, mode: str) -> str | None:
    """From the paired interval of the monitored metric versus the recommended row: zero inside it → within
    noise; outside on the worse side → worse; on the better side → better for a reference row (base model,
    retrieval), unclear for a checkpoint. None when there is no such interval (no per-sample scores, other
    samples)."""
    if entry["recommended"]:
        return BEST
    diff = entry["difference"].get(key)
    if diff is None or not (finite(diff["low"]) and finite(diff["high"])):
        return None
    if not diff["significant"]:
        return WITHIN_NOISE
    worse_side = diff["high"] < 0 if mode == "max" else diff["low"] > 0
    return WORSE if worse_side else BETTER if is_reference(entry) else UNCLEAR


def verdict_notes(table: list[dict], selected_by: str) -> list[str]:
    missing = [e["name"] for e in table if e["verdict"] is None]
    if not missing:
        return []
    return [f"no verdict for {', '.join(missing)}: verdicts come from a paired interval of {selected_by}, which "
            "needs per-sample scores (ROUGE-L, BLEU, CLIP score, FID; not loss or KID) on the same samples"]


def recommendation_reason(best: dict, checkpoints: list[dict], key: str, monitor: str, mode: str, split: str) -> str:
    better = "higher" if mode == "max" else "lower"
    reason = (f"best {split}/{key} ({fmt(best['metrics'][key])}) of {len(checkpoints)} checkpoint(s) — "
              f"the model's monitor is {monitor} ({better} is better)")
    sign = 1 if mode == "max" else -1
    others = sorted((e for e in checkpoints if not e["recommended"]), key=lambda e: -sign * e["metrics"][key])
    if others and key in others[0]["difference"]:
        runner_up, diff = others[0], others[0]["difference"][key]
        if diff["significant"]:
            reason += (f"; significantly better than the runner-up {label(runner_up)} "
                       f"({key} difference {interval_text(diff)})")
        else:
            reason += (f"; the runner-up {label(runner_up)} is within the noise "
                       f"({key} difference {interval_text(diff)}), so either would do")
    return reason


def overfitting_notes(best: dict, checkpoints: list[dict], key: str, selected_by: str, mode: str) -> list[str]:
    later = sorted((e for e in checkpoints if e["step"] is not None and best["step"] is not None
                    and e["step"] > best["step"]), key=lambda e: e["step"])
    if not later or not is_worse(later[-1]["metrics"][key], best["metrics"][key], mode):
        return []
    last = later[-1]
    change = abs(percent_change(last["metrics"][key], best["metrics"][key]) or 0.0)
    note = f"{selected_by} got {change:.0f}% worse from step {best['step']} to step {last['step']}"
    diff = last["difference"].get(key)
    if diff is None:
        return [note + ": the later checkpoints overfit (no per-sample scores to test it)"]
    if diff["significant"]:
        return [note + f": the later checkpoints overfit (difference {interval_text(diff)})"]
    return [note + f", but the difference is not significant on these {best['samples']} samples "
                   f"({interval_text(diff, verdict=False)}): no clear sign of overfitting yet"]


def baseline_notes(best: dict, table: list[dict], key: str, selected_by: str, mode: str) -> list[str]:
    notes = []
    for base in (e for e in table if e["baseline"]):
        diff = base["difference"].get(key)
        if finite(base["metrics"].get(key)) and is_worse(best["metrics"][key], base["metrics"][key], mode):
            notes.append(f"the base model scores better than every checkpoint on {selected_by}: the fine-tuning "
                         "did not help on these samples")
        elif diff is not None:
            gain = "a significant" if diff["significant"] else "a not significant"
            notes.append(f"fine-tuning gives {gain} change of {selected_by} over the base model "
                         f"({fmt_signed(-diff['estimate'])}, 95% interval [{fmt_signed(-diff['high'])}, "
                         f"{fmt_signed(-diff['low'])}])")
    return notes


def retrieval_comparison(best: dict, table: list[dict], key: str, split: str, mode: str,
                         info: dict[str, Any] | None) -> dict[str, Any] | None:
    """report.json's ``retrieval``: did fine-tuning beat the retrieval baseline, and significantly (the paired interval
    of recommended − retrieval excludes zero)? On the monitored metric; when retrieval has none (loss), on the first
    metric it has. ``sentence`` says it in the notes. None without a retrieval row."""
    row = next((e for e in table if e.get("retrieval")), None)
    if row is None:
        return None
    metric = next((m for m in [key, *row["difference"]] if m in row["difference"]), None)
    result = {**(info or {}), "row": row["name"], "metric": f"{split}/{metric}" if metric else None,
              "recommended": best["name"], "recommended_minus_retrieval": None, "fine_tuning_beat_retrieval": None,
              "significant": None,
              "retrieval_minus_base": {m: d for m, d in (row.get("difference_base") or {}).items()}}
    ours = row["difference"].get(metric) if metric else None
    if ours is None or not (finite(ours["low"]) and finite(ours["high"])):
        result["sentence"] = ("whether fine-tuning beat retrieval is not known: there is no paired interval of the "
                              "recommended checkpoint against it (no per-sample scores on the same samples)")
        return result
    # the row holds retrieval − recommended: turn it round
    diff = {**ours, "estimate": -ours["estimate"], "low": -ours["high"], "high": -ours["low"]}
    better = mode if metric == key else (direction(metric) or "max")
    beat = diff["estimate"] > 0 if better == "max" else diff["estimate"] < 0
    result.update(recommended_minus_retrieval=diff, fine_tuning_beat_retrieval=beat, significant=diff["significant"])
    name = f"{split}/{metric}"
    conf = int(round(100 * diff["confidence"]))
    numbers = (f"recommended − retrieval = {fmt_signed(diff['estimate'])}, {conf}% paired interval "
               f"[{fmt_signed(diff['low'])}, {fmt_signed(diff['high'])}]")
    lead = f"retrieval has no {split}/{key} (no model to score the references with); " if metric != key else ""
    what = f"retrieval (the target of the most similar training input) on {name}"
    zero = "excludes zero" if diff["significant"] else "contains zero"
    if beat:
        outcome = f"fine-tuning beat {what}, {'significantly' if diff['significant'] else 'but not significantly'}"
    elif diff["significant"]:
        outcome = f"fine-tuning did not beat {what}: retrieval is significantly better"
    else:
        outcome = f"fine-tuning did not beat {what}, but the difference is not significant"
    result["sentence"] = f"{lead}{outcome} ({numbers}, which {zero})"
    return result


def fid_notes(rows: list[Evaluated]) -> list[str]:
    sizes = {r.fid_samples for r in rows if r.fid_samples}
    if not sizes:
        return []
    n, dim = min(sizes)
    notes = ["FID intervals resample the generated images with the real images' statistics fixed; repeated "
             "images can make a resampled FID larger, so read the interval as a spread. KID (unbiased at "
             "any image count) is reported beside it."]
    if n < dim:
        notes.append(f"warning: FID from {n} generated images with {dim}-dimensional features is unstable: the "
                     f"generated features' covariance has rank at most {n - 1} < {dim}, so it is singular and FID is "
                     "biased upward by an amount that depends on the image count — compare FID only at equal counts, "
                     f"rely on KID and the CLIP intervals, and generate at least {dim} images "
                     f"({STABLE_FID_IMAGES}+ for InceptionV3 features)")
    elif n < STABLE_FID_IMAGES:
        notes.append(f"warning: FID from {n} generated images (< {STABLE_FID_IMAGES}) is biased upward and its bias "
                     "shrinks only as images are added — compare FID only at equal image counts and rely on KID")
    return notes


def selection_notes(split: str) -> list[str]:
    if split != "test":
        return []
    return ["the checkpoint is chosen on the test split here, which makes its test score optimistic: choose with "
            "split=val and report the test score of the chosen checkpoint alone"]


def row_name(row: dict) -> str:
    if row.get("retrieval"):
        return f"{row['name']} (baseline)"
    return f"**{row['name']}** (recommended)" if row["recommended"] else row["name"]


def step_text(row: dict) -> str:
    return "–" if row["step"] is None else str(row["step"])


def change_text(row: dict, suffix: str, metric: str) -> str:
    """A paired interval when there is one, else the plain change and its percentage."""
    diff = row["difference" + suffix].get(metric)
    if diff is not None:
        return interval_text(diff)
    change, pct = row["change" + suffix].get(metric), row["change" + suffix + "_pct"].get(metric)
    if not finite(change):
        return "–"
    return fmt_signed(change) + (f" ({pct:+.1f}%)" if finite(pct) else "")


def to_markdown(report: dict[str, Any], plot: str | None = None) -> str:
    rec = report["recommended"]
    conf = int(round(100 * report["bootstrap"]["confidence"]))
    metrics = report["metrics"]
    lines = [
        "# Checkpoint comparison", "",
        f"Source: `{report['source']}` · split: {report['split']} ({report['samples']} samples, the same for every "
        f"row) · chosen by {report['selected_by']} (the model's monitor {report['monitor']}, "
        f"mode {report['mode']})", "",
        f"Intervals: {conf}% percentile bootstrap over the samples, {report['bootstrap']['n_resamples']} resamples "
        f"({report['bootstrap']['fid_n_resamples']} for FID), seed {report['bootstrap']['seed']}; differences are "
        "paired (both rows scored on the same resampled samples).", "",
        f"## Recommended: {label(rec)}", "",
        f"`{rec['path']}` — {rec['reason']}.", "",
        "## Scores", "",
        "| checkpoint | step | verdict | " + " | ".join(metrics) + " |",
        "|---|---|---|" + "---|" * len(metrics),
    ]
    for row in report["rows"]:
        cells = []
        for m in metrics:
            value, ci = fmt(row["metrics"].get(m)), row["intervals"].get(m)
            cells.append(f"{value} [{fmt(ci['low'])}, {fmt(ci['high'])}]" if ci else value)
        lines.append(f"| {row_name(row)} | {step_text(row)} | {row.get('verdict') or '–'} | " + " | ".join(cells)
                     + " |")
    lines += ["", f"Brackets: each score's own {conf}% interval. Verdict: from the paired interval of "
              f"{report['selected_by']} versus the recommended checkpoint (below): \"{WITHIN_NOISE}\" when it "
              f"contains zero, \"{WORSE}\" when it excludes zero on the worse side (\"{BETTER}\" on the better side, "
              "for the base model and retrieval).", ""]
    changed = [m for m in metrics if m in MONITORABLE]
    if changed:
        with_previous = any(r.get("previous") for r in report["rows"])  # a sweep's runs are no curve
        headers = [h for m in changed for h in ([f"{m} Δ vs previous"] if with_previous else []) + [f"{m} Δ vs best"]]
        lines += [f"## Changes (paired bootstrap, {conf}%)", "",
                  "| checkpoint | step | " + " | ".join(headers) + " |", "|---|---|" + "---|" * len(headers)]
        for row in report["rows"]:
            cells = []
            for m in changed:
                if with_previous:
                    cells.append(change_text(row, "_previous", m) if row.get("previous") else "–")
                cells.append("best" if row["recommended"] else change_text(row, "", m))
            lines.append(f"| {row_name(row)} | {step_text(row)} | " + " | ".join(cells) + " |")
        lines += ["", ("Δ vs previous: that row minus the checkpoint saved before it; " if with_previous else "")
                  + "Δ vs best: that row minus the recommended one. With brackets, a paired interval (both rows scored "
                  "on the same resampled samples), \"not significant\" when it contains zero; without, the change of "
                  "the scores (no per-sample scores to resample) and in percent.", ""]
    if report.get("retrieval"):
        lines += retrieval_markdown(report["retrieval"], conf)
    if report.get("side_by_side"):
        lines += [f"Outputs side by side, one line per input with its sentence scores: `{report['side_by_side']}`.",
                  ""]
    if report["notes"]:
        lines += ["## Notes", ""] + [f"- {note}" for note in report["notes"]] + [""]
    if plot:
        lines += [f"![metrics by step]({plot})", ""]
    return "\n".join(lines)


def retrieval_markdown(retrieval: dict[str, Any], conf: int) -> list[str]:
    """The retrieval baseline's section: how it was made, the verdict sentence, and its change from the base model."""
    made = retrieval.get("method", "the target of the most similar training input")
    inputs = retrieval.get("training_inputs")
    lines = ["## Retrieval baseline", "",
             f"For each input, the target of the most similar training input: {made}"
             + (f", {inputs} training inputs" if inputs else "") + f". Outputs with the training input each copied: "
             f"`{retrieval['row']}/predictions.jsonl`.", "",
             retrieval["sentence"][0].upper() + retrieval["sentence"][1:] + ".", ""]
    versus_base = retrieval.get("retrieval_minus_base") or {}
    if versus_base:
        lines += [f"Retrieval − base model (paired, {conf}%): "
                  + "; ".join(f"{m} {interval_text(d)}" for m, d in versus_base.items()) + ".", ""]
    return lines
