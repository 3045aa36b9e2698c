"""A retrieval baseline: for each evaluated input, the target of the most similar training input.

What a fine-tuned model must beat to be worth its training: copying the description of the nearest training
title. The index is rank-bm25's BM25+ over the training split's inputs *as the datamodule formats them* (each
sample's prompt as one text, ``src.conversation.prompt_text``: what the model is asked, e.g. "Given a product
title ... Title: <title> Description:"), built once. Every text dataset has one (tarot's input is a card and a
question, not a title), and the evaluated rows carry the same text as their ``input``, so the query and the index
are formatted alike. The
template's words are in every training input: BM25+'s idf, log((N + 1) / n), gives them almost no weight
(BM25-Okapi in rank-bm25 floors such idfs at a fraction of the mean idf, which turns negative on small training
splits, where sharing a word then lowers a score).

Words are the ROUGE tokenizer's (:func:`src.metrics.text.unicode_normalizer`, split on spaces), so "Coração!" and
"coração" are one word here as in the scores. Equal scores go to the lowest training index.

Cost: rank-bm25 scores every training input for each query word in Python (about 0.2 µs per training input and
query word here): nothing on the bundled samples, about 10 minutes for 200 queries of 20 words over a million
training inputs (``retrieval=false`` leaves the baseline out).

>>> index = NearestTrainingTarget(["red running shoe", "blue leather boot", "red running shoe"],
...                               ["a shoe", "a boot", "another shoe"])
>>> index.nearest("Red running SHOE!"), index.nearest("boot"), index.nearest("nothing alike")
(0, 1, 0)
"""

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from rank_bm25 import BM25Plus

from src.building import data_with_tokenizer
from src.comparison.report import Evaluated, fmt
from src.comparison.samples import text_samples
from src.conversation import prompt_text, reference
from src.errors import UserError
from src.evaluation import check_split
from src.families.registry import FAMILIES
from src.metrics.text import TextGenerationMetrics, sentence_rouge_l, unicode_normalizer
from src.outputs import to_builtin, write_json, write_jsonl
from src.targets import run_dir_of, with_run_config
from src.trust import read_run_config

log = logging.getLogger(__name__)

RETRIEVAL = "retrieval"  # the row's name, and ckpt=retrieval
METHOD = "BM25+ (rank-bm25) over the training split's inputs as the model sees them, in ROUGE-L's words"
IMAGE_NOTE = ("no retrieval row: the retrieval baseline copies the text target of the most similar training input, "
              "and an image run's targets are images")


def tokenize(text: str) -> list[str]:
    """The words ROUGE-L compares: :func:`unicode_normalizer`'s output split on spaces.

    >>> tokenize("Coração, ação! Red-SHOE")
    ['coração', 'ação', 'red', 'shoe']
    """
    return unicode_normalizer(text).split()


class NearestTrainingTarget:
    """A BM25+ index over training inputs that answers each query with the nearest one's target."""

    def __init__(self, sources: Sequence[str], targets: Sequence[str], uids: Sequence[str] | None = None):
        if len(sources) != len(targets) or not len(sources):
            raise ValueError(f"need as many training targets as inputs, at least one: {len(sources)}, {len(targets)}")
        started = time.perf_counter()
        self.index = BM25Plus([tokenize(s) for s in sources])
        self.sources, self.targets, self.uids = sources, targets, uids
        self.build_seconds = time.perf_counter() - started

    def __len__(self) -> int:
        return len(self.targets)

    def nearest(self, query: str) -> int:
        """The training index with the highest BM25+ score; ``argmax`` keeps the first (lowest) of equal scores."""
        return int(np.argmax(self.index.get_scores(tokenize(query))))

    def retrieve(self, rows: Sequence[dict]) -> list[dict]:
        """Prediction rows in the evaluation layout (``uid``, ``input``, ``reference``, ``prediction``, ``rougeL``)
        for rows with ``uid``, ``source`` and ``target``, plus which training input was copied."""
        started = time.perf_counter()
        found = [self.nearest(row["source"]) for row in rows]
        predictions = [str(self.targets[i]) for i in found]
        references = [row["target"] for row in rows]
        rouge = sentence_rouge_l(predictions, references)
        out = [{"uid": row["uid"], "input": row["source"], "reference": reference, "prediction": prediction,
                "rougeL": score, "retrieved_index": i, "retrieved_uid": self.uids[i] if self.uids is not None else None,
                "retrieved_input": str(self.sources[i])}
               for row, reference, prediction, score, i in zip(rows, references, predictions, rouge, found)]
        log.info("retrieval: BM25+ over %d training inputs (index built in %.1f s), %d inputs looked up in %.1f s",
                 len(self), self.build_seconds, len(rows), time.perf_counter() - started)
        return out

    def describe(self) -> dict[str, Any]:
        return {"method": METHOD, "training_inputs": len(self)}


def _texts(part) -> list[dict]:
    """``uid``, ``source`` (the prompt as one text) and ``target`` (the reference) of each sample of a split."""
    part = part.select_columns(["uid", "messages"])
    return [{"uid": uid, "source": prompt_text(messages), "target": reference(messages)}
            for uid, messages in zip(part["uid"], part["messages"])]


def training_index(datamodule) -> NearestTrainingTarget:
    """The index over a set-up text datamodule's training split."""
    train = _texts(datamodule.splits["train"])
    return NearestTrainingTarget([r["source"] for r in train], [r["target"] for r in train], [r["uid"] for r in train])


def evaluated_rows(datamodule, split: str) -> list[dict]:
    """The evaluated split's ``uid``, ``source``, ``target`` in the order its evaluation loader yields them on one
    process (so the row pairs with the checkpoints' rows sample by sample)."""
    return _texts(datamodule.splits[split])


def score(predictions: list[dict], split: str) -> dict[str, float]:
    """``<split>/rougeL`` and ``<split>/bleu`` through the metrics every text model is scored with (no loss: there
    is no model to score the references with)."""
    metrics = TextGenerationMetrics()
    metrics.update([p["prediction"] for p in predictions], [p["reference"] for p in predictions])
    return {f"{split}/{k}": to_builtin(v) for k, v in metrics.compute().items()}


def write_retrieval(directory: Path, metrics: dict[str, float], predictions: list[dict],
                    evaluated: dict[str, Any]) -> None:
    """``metrics.json`` and ``predictions.jsonl`` in a checkpoint evaluation's layout."""
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / "metrics.json", {"metrics": metrics, "evaluated": {
        "kind": RETRIEVAL, "path": None, **evaluated, "samples": len(predictions), "model": None}})
    write_jsonl(directory / "predictions.jsonl", predictions)


def retrieval_row(datamodule, split: str, out: Path, index: NearestTrainingTarget | None = None) -> Evaluated:
    """The retrieval baseline as a comparison row; its metrics and predictions go to ``out/retrieval``."""
    index = index or training_index(datamodule)
    predictions = index.retrieve(evaluated_rows(datamodule, split))
    metrics = score(predictions, split)
    write_retrieval(out / RETRIEVAL, metrics, predictions, {"split": split, "retrieval": index.describe()})
    samples = text_samples(predictions)
    scores = {k.removeprefix(f"{split}/"): v for k, v in metrics.items()}
    log.info("%s: %s", RETRIEVAL, " | ".join(f"{k} {fmt(v)}" for k, v in scores.items()))
    return Evaluated(RETRIEVAL, None, scores, samples.statistics, samples.sample_ids, None, outputs=RETRIEVAL,
                     texts=samples.texts, retrieval=True)


# -- a text datamodule without the model --------------------------------------------------------------------
def has_text_targets(cfg: DictConfig) -> bool:
    """Whether the run's model family produces texts (the baseline copies text targets)."""
    return FAMILIES.of_config(cfg.model).kind == "text"


def text_datamodule(cfg: DictConfig):
    """The run's datamodule, set up with the model's tokenizer but without loading the model's weights: the
    tokenizer decides the evaluation order (length-sorted), so the samples come in the checkpoints' order."""
    datamodule = data_with_tokenizer(cfg)
    datamodule.prepare_data()
    datamodule.setup("validate")
    return datamodule


# -- evaluate.py ckpt=retrieval config_from=<run> -----------------------------------------------------------
def evaluate_retrieval(cfg: DictConfig) -> dict[str, float]:
    """The retrieval baseline alone on a run's data (``split``), written like a checkpoint evaluation."""
    check_split(cfg)
    if cfg.get("compare") is not None:
        raise UserError("compare=all compares a run's checkpoints; ckpt=retrieval is the retrieval baseline alone — "
                        "drop compare=all, or pass ckpt=<run directory> compare=all (its report has a retrieval row)")
    if not cfg.get("config_from"):
        raise UserError("ckpt=retrieval needs the run whose training split it copies targets from — add "
                        "config_from=<run directory> (logs/train/runs/<time>)")
    run_dir = Path(str(cfg.config_from)).expanduser()
    if run_dir_of(run_dir) is None:
        raise UserError(f"config_from={cfg.config_from} is not a run directory (no .hydra/config.yaml) — pass the "
                        "directory train.py wrote")
    cfg = with_run_config(cfg, run_dir)
    if not has_text_targets(cfg):
        raise UserError(f"{run_dir} is an image run: the retrieval baseline copies text targets — use it on a text "
                        "run (model=tiny_t5, flan_t5, ptt5, tiny_gpt2, dialogpt)")
    datamodule = text_datamodule(cfg)
    index = training_index(datamodule)
    predictions = index.retrieve(evaluated_rows(datamodule, cfg.split))
    metrics = score(predictions, cfg.split)
    out = Path(cfg.paths.output_dir)
    write_retrieval(out, metrics, predictions, {"run_dir": str(run_dir), "split": cfg.split,
                                                "retrieval": index.describe()})
    log.info("evaluated the retrieval baseline on %d %s samples: %s\nwritten to %s: metrics.json, predictions.jsonl",
             len(predictions), cfg.split, metrics, out)
    return metrics


# -- the sweep leaderboard's reference line -----------------------------------------------------------------
def data_of(cfg: DictConfig, run_dir: Path) -> dict | None:
    """A run's data config resolved against this command (its seed included: it decides the split); None when
    the run's config has no model and data or does not resolve."""
    try:
        if not {"model", "data"} <= set(read_run_config(run_dir)):
            return None
        return OmegaConf.to_container(with_run_config(cfg, run_dir).data, resolve=True)
    except UserError:
        raise
    except Exception as err:  # an interpolation that no longer resolves
        log.debug("data config of %s: %s", run_dir, err)
        return None


def sweep_reference(cfg: DictConfig, runs: list[dict], monitor: str, out: Path) -> dict[str, Any]:
    """Retrieval's score on the sweep's monitored metric (``val/<metric>``: the split every run's best score is
    from), computed once: ``{"metric", "score", "metrics", "training_inputs", "samples"}``, or ``{"note"}`` saying
    why there is none."""
    split, _, key = monitor.partition("/")
    scored = [r for r in runs if r["rank"] is not None]
    data = [data_of(cfg, Path(r["run_dir"])) for r in scored]
    missing = [r["run"] for r, d in zip(scored, data) if d is None]
    if missing:
        return {"note": f"no retrieval line: the config of run {missing[0]} has no model and data to build it from"}
    differing = sorted({k for d in data[1:] for k in set(d) | set(data[0]) if d.get(k) != data[0].get(k)})
    if differing:
        return {"note": "no retrieval line: the runs of this sweep do not share data (data."
                        f"{', data.'.join(differing)} differ), so no one baseline scores against all of them"}
    run_cfg = with_run_config(cfg, Path(scored[0]["run_dir"]))
    if not has_text_targets(run_cfg):
        return {"note": "no retrieval line: " + IMAGE_NOTE.removeprefix("no retrieval row: ")}
    if key not in ("rougeL", "bleu"):
        return {"note": f"no retrieval line: the runs are ranked by {monitor}, which retrieval has no value for "
                        "(it has no model to score the references with)"}
    index_data = text_datamodule(run_cfg)
    row = retrieval_row(index_data, split, out)
    return {"metric": monitor, "score": row.metrics[key],
            "metrics": {f"{split}/{k}": v for k, v in row.metrics.items()},
            "training_inputs": len(index_data.splits["train"]), "samples": len(row.sample_ids or []),
            "outputs": RETRIEVAL}
