"""One PNG: every metric of a comparison report against the training step."""

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

# horizontal lines for the rows that are no checkpoint: nothing to put on the step axis
REFERENCE_LINES = {"base": dict(linestyle="--", color="grey", label="base model"),
                   "retrieval": dict(linestyle=":", color="tab:green", linewidth=2, label="retrieval")}


def plot_metrics_by_step(report: dict[str, Any], path: Path) -> Path:
    """A panel per metric: checkpoints by step with their intervals, the recommended one starred,
    the base model as a dashed line and the retrieval baseline as a dotted one."""
    metrics = report["metrics"]
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    conf = int(round(100 * report["bootstrap"]["confidence"]))
    for ax, metric in zip(axes.flat, metrics):
        points = sorted((r for r in report["rows"] if r["step"] is not None
                         and isinstance(r["metrics"].get(metric), (int, float))), key=lambda r: r["step"])
        steps = [r["step"] for r in points]
        values = [r["metrics"][metric] for r in points]
        ax.plot(steps, values, marker="o", color="tab:blue")
        spans = [(r["step"], r["metrics"][metric], r["intervals"].get(metric)) for r in points]
        for step, value, ci in spans:
            if ci and math.isfinite(ci["low"]) and math.isfinite(ci["high"]):
                ax.vlines(step, ci["low"], ci["high"], color="tab:blue", alpha=0.4, linewidth=3)
        for r in points:
            if r["recommended"]:
                ax.plot([r["step"]], [r["metrics"][metric]], marker="*", markersize=16, color="tab:orange",
                        linestyle="none", label="recommended")
        for reference in (r for r in report["rows"] if r["baseline"] or r.get("retrieval")):
            value = reference["metrics"].get(metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                style = REFERENCE_LINES["retrieval" if reference.get("retrieval") else "base"]
                ax.axhline(value, **style)
        ax.set_title(f"{report['split']}/{metric}")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle(f"{Path(str(report['source'])).name} — bars: {conf}% bootstrap intervals", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
