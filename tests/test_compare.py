"""Checkpoint comparison: bootstrap intervals, the recommendation and its notes, the report files from real
runs (text and diffusion), the sweep leaderboard, and one-line errors for wrong targets."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from src.comparison.report import BootstrapSettings, Evaluated, build_report, recommend, to_markdown
from src.errors import UserError
from src.cli import evaluate_command as evaluate
from src.metrics.bootstrap import bootstrap_interval, mean_statistic, paired_difference_interval
from src.metrics.image import fid_from_features, fid_statistic
from src.metrics.text import corpus_bleu_statistic
from src.runtime import run_task
from tests.conftest import compose_config, read_json, run_cli

FAST = BootstrapSettings(n_resamples=300, fid_n_resamples=100)
N = 80


def scores(seed: int, shift: float = 0.0) -> np.ndarray:
    return np.clip(np.random.default_rng(seed).uniform(0.1, 0.6, N) + shift, 0, 1)


def row(name: str, step: int | None, values: np.ndarray, baseline: bool = False, **extra) -> Evaluated:
    return Evaluated(name, step, {"rougeL": float(values.mean()), **extra}, {"rougeL": mean_statistic(values)},
                     list(range(N)), path=f"/runs/x/checkpoints/{name}.ckpt", baseline=baseline)


# -- the functional core --------------------------------------------------------------------------------
def test_paired_interval_is_zero_for_identical_outputs_and_excludes_zero_for_clearly_different_ones():
    a = scores(0)
    same = paired_difference_interval(mean_statistic(a), mean_statistic(a.copy()), N, n_resamples=500)
    assert (same.low, same.estimate, same.high) == (0.0, 0.0, 0.0) and not same.significant
    better = paired_difference_interval(mean_statistic(a + 0.05), mean_statistic(a), N, n_resamples=500)
    assert better.low > 0 and better.significant
    # unpaired noise of the same size: the interval straddles zero
    noise = paired_difference_interval(mean_statistic(scores(1)), mean_statistic(scores(2)), N, n_resamples=500)
    assert noise.low < noise.estimate < noise.high and not noise.significant


def test_bootstrap_is_seeded_and_narrows_with_more_samples():
    wide = bootstrap_interval(mean_statistic(scores(3)[:20]), 20, n_resamples=500, seed=7)
    assert wide == bootstrap_interval(mean_statistic(scores(3)[:20]), 20, n_resamples=500, seed=7)
    many = np.random.default_rng(3).uniform(0.1, 0.6, 2000)
    narrow = bootstrap_interval(mean_statistic(many), 2000, n_resamples=500, seed=7)
    assert narrow.high - narrow.low < (wide.high - wide.low) / 3


def test_corpus_bleu_is_resampled_as_a_corpus():
    refs = [f"a sturdy {c} leather boot with a rubber sole number {i}" for i, c in
            enumerate(["red", "blue", "green", "black", "brown", "white"] * 5)]
    good = [r.replace("sturdy", "strong") for r in refs]
    poor = [" ".join(r.split()[:4]) + " shoe" for r in refs]
    same = paired_difference_interval(corpus_bleu_statistic(good, refs), corpus_bleu_statistic(list(good), refs),
                                      len(refs), n_resamples=200)
    assert not same.significant and same.low == same.high == 0.0
    diff = paired_difference_interval(corpus_bleu_statistic(good, refs), corpus_bleu_statistic(poor, refs), len(refs),
                                      n_resamples=200)
    assert diff.significant and diff.low > 10


def test_fid_interval_over_generated_features_with_real_statistics_fixed():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 8, generator=g, dtype=torch.float64)
    mean, cov = real.mean(0), real.T.cov()
    close, far = torch.randn(100, 8, generator=g), torch.randn(100, 8, generator=g) + 1.5
    assert fid_from_features(mean, cov, close) < fid_from_features(mean, cov, far)
    diff = paired_difference_interval(fid_statistic(mean, cov, far), fid_statistic(mean, cov, close), 100,
                                      n_resamples=100)
    assert diff.significant and diff.low > 0
    same = paired_difference_interval(fid_statistic(mean, cov, close), fid_statistic(mean, cov, close.clone()), 100,
                                      n_resamples=50)
    assert not same.significant


# -- the report builder ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode, metric, expected", [("max", "rougeL", "checkpoint-200"),
                                                    ("min", "fid", "checkpoint-300")])
def test_recommendation_follows_the_monitor_mode(mode, metric, expected):
    values = {"checkpoint-100": (0.30, 40.0), "checkpoint-200": (0.41, 35.0), "checkpoint-300": (0.35, 20.0)}
    rows = [Evaluated(name, int(name.split("-")[1]), {"rougeL": r, "fid": f}) for name, (r, f) in values.items()]
    rows.append(Evaluated("base", None, {"rougeL": 0.9, "fid": 1.0}, baseline=True))  # never recommended
    assert recommend(rows, metric, mode).name == expected
    report = build_report(rows, monitor=f"val/{metric}", mode=mode, split="val", settings=FAST)
    assert report["recommended"]["name"] == expected and report["recommended"]["step"] == int(expected[-3:])
    assert "the base model scores better than every checkpoint" in " ".join(report["notes"])


def test_a_tie_goes_to_the_earlier_checkpoint():
    rows = [Evaluated("last", 300, {"rougeL": 0.4}), Evaluated("checkpoint-100", 100, {"rougeL": 0.4})]
    assert recommend(rows, "rougeL", "max").name == "checkpoint-100"


def test_identical_outputs_are_reported_not_significant():
    a = scores(4)
    rows = [row("checkpoint-100", 100, a), row("checkpoint-200", 200, a.copy())]
    report = build_report(rows, monitor="val/rougeL", mode="max", split="val", settings=FAST)
    later = report["rows"][1]
    assert report["recommended"]["name"] == "checkpoint-100"
    assert later["difference"]["rougeL"] == pytest.approx({"estimate": 0.0, "low": 0.0, "high": 0.0,
                                                           "confidence": 0.95, "n_resamples": 300,
                                                           "significant": False})
    text = to_markdown(report)
    assert "| checkpoint-200 | 200 | +0 [+0, +0] not significant |" in text
    assert "within the noise" in report["recommended"]["reason"]
    assert not any("overfit" in n for n in report["notes"])  # equal scores: nothing got worse


def test_clearly_worse_later_checkpoint_is_significant_and_flagged_as_overfitting():
    best = scores(5, shift=0.15)
    rows = [row("base", None, np.zeros(N), baseline=True, loss=9.0), row("checkpoint-100", 100, best, loss=2.0),
            row("last", 300, best - 0.1, loss=1.5)]
    report = build_report(rows, monitor="val/rougeL", mode="max", split="test", settings=FAST, source="/runs/x")
    by_name = {r["name"]: r for r in report["rows"]}
    assert report["recommended"]["name"] == "checkpoint-100"
    assert "significantly better than the runner-up last (step 300)" in report["recommended"]["reason"]
    diff = by_name["last"]["difference"]["rougeL"]
    assert diff["significant"] and diff["high"] < 0 and diff["estimate"] == pytest.approx(-0.1)
    assert by_name["last"]["change_pct"]["rougeL"] == pytest.approx(-100 * 0.1 / best.mean())
    assert by_name["last"]["change_pct"]["loss"] == pytest.approx(-25.0)
    assert "loss" not in by_name["last"]["difference"]  # no per-sample loss: no interval, no verdict
    interval = by_name["checkpoint-100"]["intervals"]["rougeL"]
    assert interval["low"] < best.mean() < interval["high"]
    notes = " ".join(report["notes"])
    assert f"test/rougeL got {100 * 0.1 / best.mean():.0f}% worse from step 100 to step 300: the later checkpoints " \
           "overfit" in notes
    assert "fine-tuning gives a significant change of test/rougeL over the base model" in notes
    assert "chosen on the test split" in notes
    text = to_markdown(report, plot="metrics_by_step.png")
    assert "## Recommended: checkpoint-100 (step 100)" in text and "| **checkpoint-100** (recommended) | 100 |" in text
    assert "] significant |" in text and "![metrics by step](metrics_by_step.png)" in text


def test_rows_scored_on_different_samples_are_not_paired():
    a = scores(6)
    other = row("checkpoint-200", 200, a - 0.2)
    other.sample_ids = [i + 1000 for i in range(N)]
    report = build_report([row("checkpoint-100", 100, a), other], monitor="val/rougeL", mode="max", split="val",
                          settings=FAST)
    assert report["rows"][1]["difference"] == {} and "rougeL" in report["rows"][1]["intervals"]


@pytest.mark.parametrize("images, dim, expected", [(8, 64, "rank at most 7 < 64"), (500, 64, "(< 2048)"),
                                                   (4096, 2048, None)])
def test_fid_sample_size_warning(images, dim, expected):
    rows = [Evaluated(f"checkpoint-{s}", s, {"fid": f}, fid_samples=(images, dim)) for s, f in ((10, 3.0), (20, 2.0))]
    warnings = [n for n in build_report(rows, monitor="val/fid", mode="min", split="val")["notes"]
                if n.startswith("warning: FID")]
    assert (expected in warnings[0]) if expected else warnings == []



def test_verdicts_follow_the_paired_intervals_and_changes_are_given_versus_previous_and_best():
    best = scores(7, shift=0.2)
    wobble = np.where(np.arange(N) % 2 == 0, 0.2, -0.24)  # mean -0.02: a larger change, but a wide interval
    rows = [row("base", None, np.zeros(N), baseline=True), row("checkpoint-100", 100, best),
            row("checkpoint-200", 200, best + wobble), row("checkpoint-300", 300, best - 0.01)]
    other_samples = row("checkpoint-400", 400, best - 0.3)
    other_samples.sample_ids = [i + 1000 for i in range(N)]
    report = build_report([*rows, other_samples], monitor="val/rougeL", mode="max", split="val", settings=FAST)
    by_name = {r["name"]: r for r in report["rows"]}
    # the verdict is the paired interval's, not the size of the change: -2% is noise here, -1% a steady loss
    assert by_name["checkpoint-200"]["difference"]["rougeL"]["low"] < 0 < by_name["checkpoint-200"]["difference"][
        "rougeL"]["high"]
    assert by_name["checkpoint-300"]["difference"]["rougeL"]["high"] < 0
    assert {n: r["verdict"] for n, r in by_name.items()} == {
        "base": "worse than the best", "checkpoint-100": "best", "checkpoint-200": "within noise of the best",
        "checkpoint-300": "worse than the best", "checkpoint-400": None}
    assert "no verdict for checkpoint-400" in " ".join(report["notes"])

    # Δ vs previous: the checkpoint saved before it on the same samples, paired; Δ vs best: the recommended one
    assert by_name["base"]["previous"] is None and by_name["checkpoint-100"]["previous"] is None
    assert by_name["checkpoint-200"]["previous"] == "checkpoint-100"
    assert by_name["checkpoint-300"]["previous"] == "checkpoint-200"
    later = by_name["checkpoint-300"]
    assert later["change_previous"]["rougeL"] == pytest.approx((best - 0.01).mean() - (best + wobble).mean())
    assert later["difference_previous"]["rougeL"]["estimate"] == pytest.approx(-0.01 - wobble.mean())  # +0.01
    assert later["change"]["rougeL"] == pytest.approx(-0.01)
    assert later["difference"]["rougeL"]["estimate"] == pytest.approx(-0.01)
    assert by_name["checkpoint-400"]["difference_previous"] == {}  # other samples: no pairing, only the change
    assert by_name["checkpoint-400"]["change_previous"]["rougeL"] == pytest.approx(-0.29)

    text = to_markdown(report)
    assert "| checkpoint | step | verdict | rougeL |" in text
    assert "| checkpoint | step | rougeL Δ vs previous | rougeL Δ vs best |" in text
    assert "| checkpoint-300 | 300 | worse than the best |" in text
    assert "| checkpoint-200 | 200 | within noise of the best |" in text
    assert "| **checkpoint-100** (recommended) | 100 | best |" in text
    assert "| checkpoint-300 | 300 | +0.01 [" in text and "| -0.01 [-0.01, -0.01] significant |" in text
    assert "| checkpoint-400 | 400 | -0.29 (-" in text


def test_verdict_for_a_lower_is_better_monitor():
    best = scores(8, shift=0.2)
    rows = [Evaluated(name, step, {"fid": float(v.mean())}, {"fid": mean_statistic(v)}, list(range(N)))
            for name, step, v in [("checkpoint-1", 1, best + 0.2), ("checkpoint-2", 2, best),
                                  ("checkpoint-3", 3, best[::-1].copy())]]
    report = build_report(rows, monitor="val/fid", mode="min", split="val", settings=FAST)
    assert [r["verdict"] for r in report["rows"]] == ["worse than the best", "best", "within noise of the best"]


def test_side_by_side_pairs_each_input_with_both_outputs_and_their_sentence_scores():
    import sacrebleu

    from src.comparison.samples import side_by_side
    from src.metrics.text import sentence_rouge_l

    refs = ["a red leather boot with laces", "uma carta de tarô sobre o sol", "a blue canvas sneaker"]
    tuned_out = ["a red leather boot", "uma carta sobre o sol", "a blue sneaker"]
    base_out = ["boot", "sol", "a blue canvas sneaker for running"]

    def texts(outputs, order):
        return [{"uid": f"u{i}", "input": f"title {i}", "reference": refs[i], "prediction": outputs[i],
                 "rougeL": sentence_rouge_l([outputs[i]], [refs[i]])[0]} for i in order]

    lines = side_by_side(texts(tuned_out, [0, 1, 2]), texts(base_out, [2, 0, 1]), "checkpoint-100")
    assert [(r["uid"], r["input"], r["reference"], r["base"], r["recommended"]) for r in lines] == [
        (f"u{i}", f"title {i}", refs[i], base_out[i], tuned_out[i]) for i in range(3)]
    for r in lines:
        assert r["rougeL_base"] == sentence_rouge_l([r["base"]], [r["reference"]])[0]
        assert r["rougeL_recommended"] == sentence_rouge_l([r["recommended"]], [r["reference"]])[0]
        assert r["bleu_base"] == pytest.approx(sacrebleu.sentence_bleu(r["base"], [r["reference"]]).score, abs=1e-4)
        assert r["bleu_recommended"] == pytest.approx(sacrebleu.sentence_bleu(r["recommended"], [r["reference"]]).score,
                                                      abs=1e-4)
        assert r["checkpoint"] == "checkpoint-100"
    without_base = side_by_side(texts(tuned_out, [0, 1, 2]), None, "checkpoint-100")
    assert {(r["base"], r["rougeL_base"], r["bleu_base"]) for r in without_base} == {(None, None, None)}
    assert {(r["retrieval"], r["rougeL_retrieval"], r["bleu_retrieval"]) for r in lines} == {(None, None, None)}
    # the retrieval baseline's outputs (here the base outputs again), matched by uid like the base model's
    with_retrieval = side_by_side(texts(tuned_out, [0, 1, 2]), None, "checkpoint-100", texts(base_out, [1, 2, 0]))
    assert [(r["retrieval"], r["rougeL_retrieval"], r["bleu_retrieval"]) for r in with_retrieval] == [
        (r["base"], r["rougeL_base"], r["bleu_base"]) for r in lines]

# -- the sweep leaderboard ------------------------------------------------------------------------------
def fake_run(directory: Path, overrides: list[str], score: float | None, mode: str = "max") -> Path:
    """A run directory as train.py leaves it, as far as the leaderboard reads it."""
    (directory / ".hydra").mkdir(parents=True)
    (directory / ".hydra" / "config.yaml").write_text("seed: 42\n")
    (directory / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if score is None:  # a run that failed before its first validation
        (directory / "metrics.json").write_text(json.dumps({"training": {"stop_reason": "error: OOM"}}))
        return directory
    ckpt = directory / "checkpoints" / "checkpoint-30.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"")
    monitor = "val/rougeL" if mode == "max" else "val/fid"
    (directory / "metrics.json").write_text(json.dumps({
        "model": {"mode": mode}, "best_checkpoint": {"path": str(ckpt), "monitor": monitor, "score": score},
        "final_metrics": {"test/score": score - 0.01, "val/loss": 1.0}, "training": {"stop_reason": "max_epochs"}}))
    return directory


@pytest.mark.parametrize("mode, order", [("max", ["1", "0", "2"]), ("min", ["2", "0", "1"])])
def test_sweep_leaderboard_ranks_runs_by_their_best_score(tmp_path, mode, order):
    sweep = tmp_path / "multiruns" / "2026-01-01_00-00-00"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("{}\n")
    for job, (rank, score) in enumerate([(8, 0.31), (16, 0.40), (32, 0.22)]):
        fake_run(sweep / str(job), ["experiment=quickstart", f"model.lora.r={rank}"], score, mode)
    fake_run(sweep / "3", ["experiment=quickstart", "model.lora.r=64"], None, mode)
    out = tmp_path / "board"
    result = evaluate(compose_config("evaluate", [f"ckpt={sweep}", "compare=all"], out))
    board = read_json(out / "report.json")
    assert [r["run"] for r in board["runs"]] == [*order, "3"] and board["runs"][-1]["rank"] is None
    assert board["axes"] == ["model.lora.r"] and board["runs"][0]["distinguishing"] == {
        "model.lora.r": {"0": "8", "1": "16", "2": "32"}[order[0]]}
    assert result["best_run"] == str(sweep / order[0])
    text = (out / "report.md").read_text()
    assert f"| rank | run | model.lora.r | best {board['monitor']} | test/score | best checkpoint |" in text
    assert "| – | 3 | 64 | – | – | none (error: OOM) |" in text


def test_runs_monitoring_different_metrics_do_not_rank(tmp_path):
    sweep = tmp_path / "sweep"
    fake_run(sweep / "0", ["model=tiny_t5"], 0.3, "max")
    fake_run(sweep / "1", ["model=tiny_sd"], 2.0, "min")
    with pytest.raises(UserError, match="monitor different metrics"):
        evaluate(compose_config("evaluate", [f"ckpt={sweep}", "compare=all"], tmp_path / "out"))


# -- user mistakes ---------------------------------------------------------------------------------------
def test_compare_needs_a_run_or_sweep_directory(tmp_path, capsys):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"")
    empty_run = fake_run(tmp_path / "run", [], None)
    for target, extra, message in [(ckpt, [], "compare=all compares the checkpoints of a run"),
                                   (empty_run, [], "holds no checkpoints/*.ckpt"),
                                   (empty_run, ["compare=best"], "compare=best is not an option")]:
        cfg = compose_config("evaluate", [f"ckpt={target}", "compare=all", *extra], tmp_path / "out")
        with pytest.raises(SystemExit) as exit_info:
            run_task(evaluate, cfg)  # what evaluate.py's main does
        lines = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(lines) == 1 and message in lines[0]


# -- end to end -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_compare_every_checkpoint_of_a_text_run(trained_run, tmp_path):
    out = tmp_path / "compare"
    run_cli("evaluate.py", f"ckpt={trained_run}", "compare=all", "split=val", "bootstrap.n_resamples=200",
            f"hydra.run.dir={out}")
    report = read_json(out / "report.json")
    assert (out / "report.md").is_file() and (out / "metrics_by_step.png").stat().st_size > 10_000
    kept = {p.name for p in (trained_run / "checkpoints").glob("checkpoint-*.ckpt")}
    names = [r["name"] for r in report["rows"]]
    assert names[:2] == ["base", "retrieval"] and {f"{n}.ckpt" for n in names[2:] if n != "last"} == kept
    steps = [r["step"] for r in report["rows"][2:]]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)  # last.ckpt only when it adds a step
    # on the validation split the comparison reproduces the run's own choice and score
    best = read_json(trained_run / "metrics.json")["best_checkpoint"]
    assert report["recommended"]["path"] == best["path"]
    chosen = next(r for r in report["rows"] if r["recommended"])
    assert chosen["metrics"]["rougeL"] == pytest.approx(best["score"], abs=1e-5)
    for r in report["rows"]:
        predictions = [json.loads(line) for line in (out / r["outputs"] / "predictions.jsonl").open()]
        assert len(predictions) == r["samples"] == 60
        assert np.mean([p["rougeL"] for p in predictions]) == pytest.approx(r["metrics"]["rougeL"], abs=1e-5)
        assert read_json(out / r["outputs"] / "metrics.json")["metrics"]["val/rougeL"] == r["metrics"]["rougeL"]
        assert r["intervals"]["rougeL"]["low"] <= r["metrics"]["rougeL"] + 1e-6
        assert set(r["difference"]) == (set() if r["recommended"] else {"rougeL", "bleu"})
    base = report["rows"][0]
    assert base["difference"]["rougeL"]["significant"] and base["difference"]["rougeL"]["high"] < 0
    text = (out / "report.md").read_text()
    assert f"## Recommended: {chosen['name']} (step {chosen['step']})" in text and "| base | – |" in text

    # each checkpoint beside the one saved before it and beside the best, with a verdict from the intervals
    curve = report["rows"][2:]
    assert curve[0]["previous"] is None and base["previous"] is None
    for earlier, later in zip(curve, curve[1:]):
        assert later["previous"] == earlier["name"] and set(later["difference_previous"]) == {"rougeL", "bleu"}
        for metric in ("rougeL", "bleu"):  # no loss: the run monitors val/rougeL (model.eval_loss=null)
            assert later["change_previous"][metric] == pytest.approx(later["metrics"][metric]
                                                                     - earlier["metrics"][metric])
    for r in report["rows"]:
        diff = r["difference"].get("rougeL")
        assert r["verdict"] == ("best" if r["recommended"] else "within noise of the best"
                                if diff["low"] <= 0 <= diff["high"] else "worse than the best" if diff["high"] < 0
                                else "better than the best")
    assert base["verdict"] == "worse than the best"
    assert "rougeL Δ vs previous | rougeL Δ vs best" in text and "side_by_side.jsonl" in text

    # the outputs side by side: base and recommended per input, sentence scores recomputed here
    import sacrebleu

    from src.metrics.text import sentence_rouge_l

    lines = [json.loads(line) for line in (out / "side_by_side.jsonl").open()]
    base_rows = [json.loads(line) for line in (out / "base" / "predictions.jsonl").open()]
    chosen_rows = [json.loads(line) for line in (out / chosen["outputs"] / "predictions.jsonl").open()]
    assert report["side_by_side"] == "side_by_side.jsonl" and len(lines) == 60
    assert [(r["uid"], r["input"], r["reference"], r["base"], r["recommended"]) for r in lines] == [
        (c["uid"], c["input"], c["reference"], b["prediction"], c["prediction"])
        for b, c in zip(base_rows, chosen_rows, strict=True)]
    assert {r["checkpoint"] for r in lines} == {chosen["name"]}
    for who in ("base", "recommended", "retrieval"):
        outputs, refs = [r[who] for r in lines], [r["reference"] for r in lines]
        assert [r[f"rougeL_{who}"] for r in lines] == pytest.approx(sentence_rouge_l(outputs, refs), abs=1e-6)
        assert [r[f"bleu_{who}"] for r in lines] == pytest.approx(
            [sacrebleu.sentence_bleu(o, [ref]).score for o, ref in zip(outputs, refs)], abs=1e-4)
    assert np.mean([r["rougeL_recommended"] for r in lines]) == pytest.approx(chosen["metrics"]["rougeL"], abs=1e-5)
    assert np.mean([r["rougeL_base"] for r in lines]) == pytest.approx(base["metrics"]["rougeL"], abs=1e-5)

    # the retrieval baseline: a row with its own intervals, paired against the recommended checkpoint and the base
    # model, never recommended, scored as the reference implementations score its outputs
    retrieval = report["rows"][1]
    assert retrieval["retrieval"] and not retrieval["recommended"] and retrieval["step"] is None
    assert set(retrieval["metrics"]) == set(retrieval["intervals"]) == {"rougeL", "bleu"}  # no loss: no model
    assert set(retrieval["difference"]) == set(retrieval["difference_base"]) == {"rougeL", "bleu"}
    copied = [json.loads(line) for line in (out / "retrieval" / "predictions.jsonl").open()]
    outputs, refs = [p["prediction"] for p in copied], [p["reference"] for p in copied]
    assert retrieval["metrics"]["rougeL"] == pytest.approx(np.mean(sentence_rouge_l(outputs, refs)), abs=1e-6)
    assert retrieval["metrics"]["bleu"] == pytest.approx(sacrebleu.corpus_bleu(outputs, [refs]).score, abs=1e-4)
    assert [p["uid"] for p in copied] == [p["uid"] for p in chosen_rows]  # the same samples, the same order
    assert [r["retrieval"] for r in lines] == outputs
    assert retrieval["difference_base"]["rougeL"]["estimate"] == pytest.approx(
        retrieval["metrics"]["rougeL"] - base["metrics"]["rougeL"], abs=1e-5)
    versus = report["retrieval"]
    diff = versus["recommended_minus_retrieval"]
    assert versus["metric"] == "val/rougeL" and versus["recommended"] == chosen["name"]
    assert diff["estimate"] == pytest.approx(chosen["metrics"]["rougeL"] - retrieval["metrics"]["rougeL"], abs=1e-5)
    assert versus["significant"] == (not diff["low"] <= 0 <= diff["high"])
    assert versus["fine_tuning_beat_retrieval"] == (diff["estimate"] > 0)
    assert versus["sentence"] in report["notes"] and f"- {versus['sentence']}" in text
    assert "| retrieval (baseline) | – |" in text and "## Retrieval baseline" in text

    # scored alone on the same split, it gives the row's numbers
    alone = tmp_path / "alone"
    run_cli("evaluate.py", "ckpt=retrieval", f"config_from={trained_run}", "split=val", f"hydra.run.dir={alone}")
    assert read_json(alone / "metrics.json")["metrics"] == read_json(out / "retrieval" / "metrics.json")["metrics"]
    assert read_json(alone / "metrics.json")["metrics"]["val/rougeL"] == retrieval["metrics"]["rougeL"]
    assert (alone / "predictions.jsonl").read_text() == (out / "retrieval" / "predictions.jsonl").read_text()


@pytest.mark.slow
def test_sweep_reevaluation_pairs_identical_checkpoints_as_not_significant(trained_run, tmp_path):
    sweep = tmp_path / "sweep"
    for job, score in ((0, 0.2), (1, 0.1)):  # two "runs" that are the same run: identical outputs
        run = sweep / str(job)
        shutil.copytree(trained_run / ".hydra", run / ".hydra")
        shutil.copytree(trained_run / "checkpoints", run / "checkpoints")
        report = read_json(trained_run / "metrics.json")
        report["best_checkpoint"]["score"] = score
        (run / "metrics.json").write_text(json.dumps(report))
    out = tmp_path / "board"
    run_cli("evaluate.py", f"ckpt={sweep}", "compare=all", "reevaluate=true", "data.limit_test_samples=20",
            "bootstrap.n_resamples=100", f"hydra.run.dir={out}")
    board = read_json(out / "report.json")
    assert [r["run"] for r in board["runs"]] == ["0", "1"]
    again = read_json(out / "reevaluated" / "report.json")
    other = next(r for r in again["rows"] if not r["recommended"])
    assert other["samples"] == 20 and other["difference"]["rougeL"]["significant"] is False
    assert "not significant" in (out / "reevaluated" / "report.md").read_text()


@pytest.mark.slow
def test_compare_a_diffusion_run_with_fid_intervals_and_warning(cache_dir, tmp_path):
    run = tmp_path / "shoes"
    run_cli("train.py", "experiment=quickstart_shoes", "logger=csv", "trainer.enable_progress_bar=false",
            "data.batch_size=4", "trainer.max_steps=10", "val_every_n_steps=5", "test=false",
            f"hydra.run.dir={run}")
    out = tmp_path / "compare"
    run_cli("evaluate.py", f"ckpt={run}", "compare=all", "bootstrap.n_resamples=100", "bootstrap.fid_n_resamples=50",
            f"hydra.run.dir={out}")
    report = read_json(out / "report.json")
    assert [r["step"] for r in report["rows"]] == [5, 10] and not any(r["baseline"] for r in report["rows"])
    assert report["monitor"] == "val/fid" and report["mode"] == "min"
    best = min(report["rows"], key=lambda r: r["metrics"]["fid"])
    assert best["recommended"]
    for r in report["rows"]:
        assert {"fid", "clip_mean"} <= set(r["intervals"]) and "kid" in r["metrics"]
        rows = [json.loads(line) for line in (out / r["outputs"] / "predictions.jsonl").open()]
        assert len(rows) == 8 and all("clip" in p for p in rows) and (out / r["outputs"] / "grid.png").is_file()
    other = next(r for r in report["rows"] if not r["recommended"])
    assert {"fid", "clip_mean"} <= set(other["difference"])
    notes = " ".join(report["notes"])
    assert "FID from 8 generated images with 64-dimensional features" in notes and "no base-model row" in notes
    assert (out / "metrics_by_step.png").is_file()


@pytest.mark.slow
def test_a_clip_only_diffusion_run_monitors_clip_and_compares_without_fid(cache_dir, tmp_path):
    run = tmp_path / "shoes"
    # InceptionV3 from a file that does not exist: the run succeeds only if no feature extractor is built
    run_cli("train.py", "experiment=quickstart_shoes", "logger=csv", "trainer.enable_progress_bar=false",
            "data.batch_size=4", "trainer.max_steps=4", "val_every_n_steps=2", "test=false",
            "model.metrics.include=[clip]", "model.monitor=val/clip_mean", "model.mode=max",
            "model.metrics.feature_extractor.kind=inception",
            f"model.metrics.feature_extractor.weights_path={tmp_path / 'no-inception.pth'}", f"hydra.run.dir={run}")
    summary = read_json(run / "metrics.json")
    assert summary["best_checkpoint"]["monitor"] == "val/clip_mean"
    logged = set().union(*(set(row) for row in csv_rows(run)))
    assert "val/clip_mean" in logged and not {"val/fid", "val/kid"} & logged
    assert {p.stem for p in (run / "checkpoints").glob("checkpoint-*.ckpt")} == {"checkpoint-2", "checkpoint-4"}

    out = tmp_path / "compare"
    run_cli("evaluate.py", f"ckpt={run}", "compare=all", "bootstrap.n_resamples=100", f"hydra.run.dir={out}")
    report = read_json(out / "report.json")
    assert report["monitor"] == "val/clip_mean" and report["mode"] == "max"
    assert [r["step"] for r in report["rows"]] == [2, 4]
    for r in report["rows"]:
        assert set(r["metrics"]) == {"clip_mean", "clip_min", "clip_max"} and set(r["intervals"]) == {"clip_mean"}
    best = max(report["rows"], key=lambda r: r["metrics"]["clip_mean"])
    other = next(r for r in report["rows"] if r is not best)
    assert best["recommended"] and best["verdict"] == "best" and other["verdict"] in (
        "within noise of the best", "worse than the best")
    assert report["rows"][1]["previous"] == "checkpoint-2" and "clip_mean" in report["rows"][1]["difference_previous"]
    assert not any("FID" in note for note in report["notes"]) and "side_by_side" not in report


def csv_rows(run: Path) -> list[dict]:
    import csv

    return [row for path in run.rglob("metrics.csv") for row in csv.DictReader(path.open())
            if any(v for k, v in row.items() if k.startswith("val/"))]
