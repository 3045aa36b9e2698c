"""PNG plots for the data report: length histograms and a word cloud (matplotlib's Agg renderer, no display)."""

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # a bare Figure renders with Agg and keeps no global pyplot state
from wordcloud import STOPWORDS, WordCloud

__all__ = ["STOPWORDS", "length_histogram", "word_cloud"]


def length_histogram(lengths: Mapping[str, np.ndarray], title: str, path: Path, bins: int = 50) -> Path:
    """One panel per unit (chars, words); the x axis stops at the 99.5th percentile so a few huge
    records do not squash the rest into one bar (the title gives the true max)."""
    fig = Figure(figsize=(5 * len(lengths), 3.8), layout="constrained")
    for ax, (unit, values) in zip(fig.subplots(1, len(lengths), squeeze=False)[0], lengths.items()):
        upper = max(1, int(np.percentile(values, 99.5)))
        ax.hist(np.minimum(values, upper), bins=min(bins, upper), range=(0, upper), color="#4c72b0")
        ax.set_xlabel(f"{unit} (values above {upper} in the last bar)")
        ax.set_ylabel("records")
        ax.set_title(f"{title}: {unit}, max {int(values.max())}")
    fig.savefig(path, dpi=100)
    return path


def word_cloud(frequencies: Mapping[str, int], path: Path, max_words: int = 200) -> Path:
    cloud = WordCloud(width=1200, height=600, background_color="white", max_words=max_words, random_state=0)
    cloud.generate_from_frequencies(dict(frequencies)).to_file(str(path))
    return path
