"""Which way each logged score is better, read from its metric's own ``higher_is_better`` (torchmetrics)."""

from src.metrics.image import MONITORABLE as IMAGE_MONITORABLE
from src.metrics.text import MONITORABLE as TEXT_MONITORABLE

MONITORABLE = {**TEXT_MONITORABLE, **IMAGE_MONITORABLE}


def direction(metric: str) -> str | None:
    """"max" or "min" for known metrics, else None (``clip_min``/``clip_max`` are CLIP scores: higher is better).

    >>> direction("rougeL"), direction("fid"), direction("clip_max"), direction("steps")
    ('max', 'min', 'max', None)
    """
    cls = MONITORABLE.get(metric) or (MONITORABLE["clip_mean"] if metric.startswith("clip_") else None)
    if cls is None or cls.higher_is_better is None:
        return None
    return "max" if cls.higher_is_better else "min"
