"""The retrieval baseline: the target of the most similar training input (BM25+), scored alone with
``evaluate.py ckpt=retrieval config_from=<run>``, as a row of the comparison report (verdict, never recommended,
the notes' sentence) and as the sweep leaderboard's reference line. Its row in a trained run's ``compare=all``
report is checked end to end in tests/test_compare.py."""

import json
from pathlib import Path

import numpy as np
import pytest
import sacrebleu
import yaml
from omegaconf import OmegaConf, open_dict

from src.comparison.report import BootstrapSettings, Evaluated, build_report, to_markdown
from src.comparison.retrieval import NearestTrainingTarget, tokenize
from src.cli import evaluate_command as evaluate
from src.metrics.bootstrap import mean_statistic
from src.metrics.text import sentence_rouge_l, unicode_normalizer
from src.runtime import run_task
from tests.conftest import compose_config, read_json, run_cli

TRAIN = [  # uid, title, description
    ("u0", "Red running shoe", "a light red shoe for running"),
    ("u1", "Blue leather boot", "a sturdy blue boot made of leather"),
    ("u2", "red RUNNING shoe!", "another red shoe, for the track"),  # the same words as u0: a tie, u0 wins
    ("u3", "Green wool scarf", "a warm green scarf knitted from wool"),
]
VAL = [  # uid, title, reference, the training uid whose description retrieval must copy
    ("v0", "blue leather boot", "a sturdy blue boot made of leather", "u1"),
    ("v1", "Red running shoe", "a light red shoe for running", "u0"),
    ("v2", "green wool scarf", "a green scarf", "u3"),
]


# -- the index -----------------------------------------------------------------------------------------
def test_words_are_the_rouge_tokenizers():
    text = "Coração, AÇÃO! red-shoe_2"
    assert tokenize(text) == unicode_normalizer(text).split() == ["coração", "ação", "red", "shoe", "2"]


def test_the_nearest_training_input_gives_its_target_and_ties_go_to_the_lowest_index():
    sources = [f"Title: {title}\nDescription:" for _, title, _ in TRAIN]
    index = NearestTrainingTarget(sources, [d for *_, d in TRAIN], [u for u, *_ in TRAIN])
    assert [index.nearest(f"Title: {title}\nDescription:") for _, title, *_ in VAL] == [1, 0, 3]
    assert index.nearest("Title: RED, running shoe\nDescription:") == 0  # u0 and u2 score the same
    assert index.nearest("Title: a pot of tea\nDescription:") == 0  # nothing shared but the template: all tie
    assert index.nearest("Title: wool\nDescription:") == 3  # one rare word outweighs the template's words
    rows = index.retrieve([{"uid": "q", "source": "Title: leather boot\nDescription:", "target": "a boot"}])
    assert rows == [{"uid": "q", "input": "Title: leather boot\nDescription:", "reference": "a boot",
                     "prediction": TRAIN[1][2], "rougeL": sentence_rouge_l([TRAIN[1][2]], ["a boot"])[0],
                     "retrieved_index": 1, "retrieved_uid": "u1", "retrieved_input": sources[1]}]


def test_a_word_shared_with_most_training_inputs_never_lowers_a_score():
    # BM25-Okapi's idf turns negative for a word in over half of a small corpus; BM25+ ranks the match first
    index = NearestTrainingTarget(["red shoe", "red boot", "blue sandal"], ["s", "b", "x"])
    assert index.nearest("red shoe") == 0 and index.nearest("red boot") == 1 and index.nearest("red") == 0


# -- a run's data, scored alone ------------------------------------------------------------------------
def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def fake_text_run(directory: Path, data_dir: Path, **data_overrides) -> Path:
    """A run directory whose config trains tiny_t5 on the hand-made split (no training: retrieval needs none)."""
    train = write_jsonl(data_dir / "train.jsonl", [{"uid": u, "title": t, "description": d} for u, t, d in TRAIN])
    val = write_jsonl(data_dir / "val.jsonl", [{"uid": u, "title": t, "description": d} for u, t, d, _ in VAL])
    cfg = compose_config("train", ["model=tiny_t5", "data=pairs"], directory)
    with open_dict(cfg):
        cfg.data.update(data_file=None, train_file=str(train), val_file=str(val), prompt_template="Title: {source}",
                        columns={"source": "title", "target": "description", "id": "uid", "group": None},
                        **data_overrides)
    (directory / ".hydra").mkdir(parents=True)
    run_cfg = OmegaConf.create({"model": cfg.model, "data": cfg.data, "seed": cfg.seed})
    (directory / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(run_cfg))
    (directory / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["experiment=quickstart"]))
    return directory


def check_scores(out: Path, split: str) -> dict:
    """metrics.json against the reference implementations: mean sentence ROUGE-L, sacreBLEU's corpus BLEU."""
    metrics = read_json(out / "metrics.json")
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").open()]
    outputs, refs = [p["prediction"] for p in predictions], [p["reference"] for p in predictions]
    assert [p["rougeL"] for p in predictions] == sentence_rouge_l(outputs, refs)
    assert metrics["metrics"][f"{split}/rougeL"] == pytest.approx(np.mean(sentence_rouge_l(outputs, refs)), abs=1e-6)
    assert metrics["metrics"][f"{split}/bleu"] == pytest.approx(sacrebleu.corpus_bleu(outputs, [refs]).score, abs=1e-4)
    assert set(metrics["metrics"]) == {f"{split}/rougeL", f"{split}/bleu"}  # no loss: no model
    return metrics


def test_ckpt_retrieval_scores_the_runs_split_like_a_checkpoint_evaluation(cache_dir, tmp_path):
    run = fake_text_run(tmp_path / "run", tmp_path)
    out = tmp_path / "eval"
    # evaluate(), as evaluate.py calls it, routes ckpt=retrieval to the baseline
    result = run_task(evaluate, compose_config("evaluate", ["ckpt=retrieval", f"config_from={run}"], out))
    metrics = check_scores(out, "test")  # no test file: test evaluates the validation file
    assert result == metrics["metrics"]
    assert metrics["evaluated"]["kind"] == "retrieval" and metrics["evaluated"]["split"] == "test"
    assert metrics["evaluated"]["samples"] == 3 and metrics["evaluated"]["retrieval"]["training_inputs"] == 4
    predictions = {p["uid"]: p for p in map(json.loads, (out / "predictions.jsonl").open())}
    assert {u: predictions[u]["retrieved_uid"] for u, *_ in VAL} == {u: expected for u, *_, expected in VAL}
    assert predictions["v0"]["rougeL"] == predictions["v1"]["rougeL"] == 1.0
    assert metrics["metrics"]["test/rougeL"] == pytest.approx((1.0 + 1.0 + 0.6) / 3, abs=1e-6)


def test_ckpt_retrieval_without_a_run_is_one_line_and_a_non_zero_exit(tmp_path):
    proc = run_cli("evaluate.py", "ckpt=retrieval", f"hydra.run.dir={tmp_path / 'out'}", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and "config_from=<run directory>" in lines[0], proc.stderr
    proc = run_cli("evaluate.py", "ckpt=retrieval", f"config_from={tmp_path}", f"hydra.run.dir={tmp_path / 'o2'}",
                   check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and "is not a run directory" in lines[0], proc.stderr


# -- the sweep leaderboard's reference line -------------------------------------------------------------
def scored(run: Path, score: float) -> Path:
    """Give a fake run the best checkpoint and score the leaderboard reads."""
    ckpt = run / "checkpoints" / "checkpoint-10.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"")
    (run / "metrics.json").write_text(json.dumps({
        "model": {"mode": "max"}, "best_checkpoint": {"path": str(ckpt), "monitor": "val/rougeL", "score": score},
        "final_metrics": {}, "training": {"stop_reason": "max_epochs"}}))
    return run


def test_the_leaderboard_shows_retrieval_as_a_reference_line(cache_dir, tmp_path):
    sweep = tmp_path / "sweep"
    for job, score in ((0, 0.5), (1, 0.95)):
        scored(fake_text_run(sweep / str(job), tmp_path), score)
    out = tmp_path / "board"
    evaluate(compose_config("evaluate", [f"ckpt={sweep}", "compare=all"], out))
    board = read_json(out / "report.json")
    reference = board["retrieval"]
    assert reference["metric"] == "val/rougeL" and reference["beaten_by"] == ["1"]
    assert reference["score"] == pytest.approx((1.0 + 1.0 + 0.6) / 3, abs=1e-6)  # the known answer, on val
    assert reference["training_inputs"] == 4 and reference["samples"] == 3
    check_scores(out / "retrieval", "val")
    table = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[1] for line in table[1:]] == ["1", "**retrieval** (reference)", "0"]
    assert "| – | **retrieval** (reference) | – | 0.8667 | – |" in table
    assert "1 of 2 runs score above it" in (out / "report.md").read_text()


def test_no_reference_line_when_the_runs_do_not_share_data(cache_dir, tmp_path):
    sweep = tmp_path / "sweep"
    scored(fake_text_run(sweep / "0", tmp_path), 0.5)
    scored(fake_text_run(sweep / "1", tmp_path, limit_val_samples=2), 0.9)
    out = tmp_path / "board"
    evaluate(compose_config("evaluate", [f"ckpt={sweep}", "compare=all"], out))
    board = read_json(out / "report.json")
    assert set(board["retrieval"]) == {"note"} and "data.limit_val_samples differ" in board["retrieval"]["note"]
    text = (out / "report.md").read_text()
    assert "do not share data" in text and "**retrieval**" not in text and not (out / "retrieval").exists()


# -- the comparison report ------------------------------------------------------------------------------
N = 80


def evaluated(name: str, values: np.ndarray, step: int | None = None, **kind) -> Evaluated:
    return Evaluated(name, step, {"rougeL": float(values.mean())}, {"rougeL": mean_statistic(values)}, list(range(N)),
                     **kind)


def report_with_retrieval(retrieval_scores: np.ndarray, best: np.ndarray) -> dict:
    rows = [evaluated("base", best - 0.3, baseline=True), evaluated("retrieval", retrieval_scores, retrieval=True),
            evaluated("checkpoint-10", best - 0.05, step=10), evaluated("checkpoint-20", best, step=20)]
    return build_report(rows, monitor="val/rougeL", mode="max", split="val",
                        settings=BootstrapSettings(n_resamples=300), retrieval={"training_inputs": 400})


@pytest.mark.parametrize("shift, beat, significant, verdict, words", [
    (-0.2, True, True, "worse than the best", "fine-tuning beat retrieval (the target of the most similar training "
                                              "input) on val/rougeL, significantly (recommended − retrieval = +0.2"),
    (None, True, False, "within noise of the best", "on val/rougeL, but not significantly (recommended − retrieval"),
    (0.2, False, True, "better than the best", "did not beat retrieval (the target of the most similar training "
                                               "input) on val/rougeL: retrieval is significantly better"),
])
def test_the_report_says_whether_fine_tuning_beat_retrieval(shift, beat, significant, verdict, words):
    best = np.random.default_rng(0).uniform(0.3, 0.6, N)
    # shift None: the same scores shuffled and a little lower (same mean spread, no pairing): not significant
    retrieval_scores = best + shift if shift is not None else np.random.default_rng(1).permutation(best) - 0.005
    report = report_with_retrieval(retrieval_scores, best)
    row = next(r for r in report["rows"] if r["retrieval"])
    assert report["recommended"]["name"] == "checkpoint-20" and not row["recommended"]  # never the recommendation
    assert row["verdict"] == verdict and {"rougeL"} == set(row["difference"]) == set(row["difference_base"])
    versus = report["retrieval"]
    assert (versus["fine_tuning_beat_retrieval"], versus["significant"]) == (beat, significant)
    assert versus["training_inputs"] == 400 and versus["recommended_minus_retrieval"]["estimate"] == pytest.approx(
        -row["difference"]["rougeL"]["estimate"])
    zero = "excludes zero" if significant else "contains zero"
    assert versus["sentence"].endswith(f"which {zero})") and words in versus["sentence"]
    assert [n for n in report["notes"] if "retrieval" in n] == [versus["sentence"]]
    text = to_markdown(report)
    assert "## Retrieval baseline" in text and f"- {versus['sentence']}" in text
    assert "| retrieval (baseline) | – |" in text and "Retrieval − base model (paired, 95%): rougeL +" in text


def test_a_retrieval_row_better_than_every_checkpoint_is_still_not_recommended():
    best = np.random.default_rng(2).uniform(0.3, 0.6, N)
    report = report_with_retrieval(best + 0.3, best)
    assert report["recommended"]["name"] == "checkpoint-20"
    assert [r["name"] for r in report["rows"] if r["recommended"]] == ["checkpoint-20"]


def test_with_a_loss_monitor_retrieval_is_compared_on_a_metric_it_has():
    best = np.random.default_rng(3).uniform(0.3, 0.6, N)
    rows = [Evaluated("retrieval", None, {"rougeL": float((best - 0.2).mean())},
                      {"rougeL": mean_statistic(best - 0.2)}, list(range(N)), retrieval=True),
            Evaluated("checkpoint-10", 10, {"loss": 1.0, "rougeL": float(best.mean())},
                      {"rougeL": mean_statistic(best)}, list(range(N)))]
    report = build_report(rows, monitor="val/loss", mode="min", split="val", settings=BootstrapSettings(n_resamples=200))
    versus = report["retrieval"]
    assert versus["metric"] == "val/rougeL" and versus["fine_tuning_beat_retrieval"] and versus["significant"]
    assert versus["sentence"].startswith("retrieval has no val/loss (no model to score the references with); "
                                         "fine-tuning beat retrieval")
