"""The evaluation loss as a metric: a weighted mean of per-batch losses, synced across processes."""

from torchmetrics import MeanMetric


class EvalLoss(MeanMetric):
    """The teacher-forced loss over an evaluation round (lower is better)."""

    higher_is_better = False
