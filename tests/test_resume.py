"""A resumed run continues the same run: same order, same random draws, same weights and logged metrics;
resume with early stopping; the same command gives the same numbers whether caches were cold or warm.

The end-to-end runs are forks of a process that imported the libraries once (``tests/preloaded_cli.py``), each
otherwise ``python train.py <overrides>``: the uninterrupted runs fork one such process, the resumed and interrupted
runs another, so that uninterrupted and resumed still run in interpreters with their own hash seeds and unseeded
random states. The cold/warm runs are two fresh processes.
"""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from src.datamodules.sampling import ResumableShuffle, resumable_loader
from tests.conftest import ROOT, cli_env, connect, read_json, run_cli
from tests.preloaded_cli import PreloadedCli

# -- the training order --------------------------------------------------------------------------------


def batches(loader) -> list[list[int]]:
    return [b.tolist() for b in loader]


def test_the_order_comes_from_seed_and_epoch_and_resumes_mid_epoch():
    data = list(range(10))
    loader = resumable_loader(data, batch_size=3, seed=5)
    loader.sampler.set_epoch(2)
    torch.manual_seed(0)
    epoch2 = batches(loader)
    assert sorted(sum(epoch2, [])) == data

    again = resumable_loader(data, batch_size=3, seed=5)
    again.sampler.set_epoch(2)
    torch.manual_seed(1)  # the global RNG plays no part
    it = iter(again)
    assert [next(it).tolist() for _ in range(2)] == epoch2[:2]
    state = again.state_dict()  # as a checkpoint after the second batch holds it
    assert state == {"epoch": 2, "samples": 6, "grouped": False}

    resumed = resumable_loader(data, batch_size=3, seed=5)
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(2)  # what Lightning does before the restarted epoch
    assert batches(resumed) == epoch2[2:]
    resumed.sampler.set_epoch(3)  # the next epoch starts from its beginning
    assert sorted(sum(batches(resumed), [])) == data


def test_shards_cover_the_data_once_per_process_and_resume_per_process():
    shards = [ResumableShuffle(11, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    for s in shards:
        s.set_epoch(4)
    orders = [list(s) for s in shards]
    assert len(orders[0]) == len(orders[1]) == 6 and set(orders[0] + orders[1]) == set(range(11))
    again = ResumableShuffle(11, seed=3, num_replicas=2, rank=1)
    again.set_epoch(4)
    again.start = 2
    assert list(again) == orders[1][2:]


def test_text_training_order_ignores_the_global_rng(tmp_path, cache_dir):
    """Today's loader shuffled with torch's global RNG, which checkpoints do not hold."""
    from hydra.utils import instantiate

    from tests.conftest import compose_config

    cfg = compose_config("train", ["experiment=quickstart", "data.limit_train_samples=40"], tmp_path)
    tokenizer_dir = instantiate(cfg.model.pretrained)
    from transformers import AutoTokenizer

    dm = connect(instantiate(cfg.data), AutoTokenizer.from_pretrained(tokenizer_dir))
    dm.setup("fit")
    orders = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        orders.append([uid for b in dm.train_dataloader() for uid in b["uid"]])
    assert orders[0] == orders[1]


# -- end to end: uninterrupted vs stopped and resumed ------------------------------------------------

STEP_CKPTS = ["+callbacks.every_step._target_=lightning.pytorch.callbacks.ModelCheckpoint",
              "+callbacks.every_step.dirpath=${paths.output_dir}/steps",
              "+callbacks.every_step.filename='step-{step}'", "+callbacks.every_step.save_top_k=-1",
              "+callbacks.every_step.every_n_train_steps=1", "+callbacks.every_step.auto_insert_metric_name=false",
              "+callbacks.every_epoch._target_=lightning.pytorch.callbacks.ModelCheckpoint",
              "+callbacks.every_epoch.dirpath=${paths.output_dir}/epochs",
              "+callbacks.every_epoch.filename='epoch-{epoch}'", "+callbacks.every_epoch.save_top_k=-1",
              "+callbacks.every_epoch.save_on_train_epoch_end=false",
              "+callbacks.every_epoch.auto_insert_metric_name=false"]
COMMON = ["logger=csv", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "test=false", *STEP_CKPTS]
# 3 batches of 16 per epoch, 3 epochs; LoRA dropout so that restoring the RNG matters
TEXT = ["experiment=quickstart", "data.limit_train_samples=48", "data.limit_val_samples=8",
        "model.generation.max_new_tokens=4", "model.lora.lora_dropout=0.2", "trainer.max_epochs=3"]
# 2 batches of 4 per epoch (8 images), 6 steps, validation at every epoch's end (steps 2, 4, 6) on 2 prompts
SHOES = ["experiment=quickstart_shoes", "data.limit_train_samples=8", "data.batch_size=4", "trainer.max_steps=6",
         "val_every_n_steps=2", "data.limit_val_prompts=2", "model.generation.num_inference_steps=2"]
FAMILIES = {"text": (TEXT, 9, 3, 5), "shoes": (SHOES, 6, 2, 3)}  # overrides, last step, epoch length, mid-epoch
# The text family matches to 1e-6. The diffusion family matched exactly when its tests ran alone, but in 2 of 4
# runs of this whole file one LoRA weight differed by up to 2.8e-6 (cause not found: a logic fault moves weights
# by ~1e-3, as the RNG and order faults did), so it is held to 1e-5.
TOLERANCE = {"text": 1e-6, "shoes": 1e-5}


def forking_server(cache_dir, tmp_path_factory):  # cache_dir: LORAFIT_CACHE set before the server starts
    """``python train.py`` forked from a process that imported its libraries once (``run_cli``'s environment)."""
    server = PreloadedCli(cli_env(), tmp_path_factory.mktemp("cli"))
    yield server
    server.close()


cli = pytest.fixture(forking_server, scope="module", name="cli")  # resumed, interrupted and early-stopping runs
reference_cli = pytest.fixture(forking_server, scope="module", name="reference_cli")  # the uninterrupted runs


def train_run(cli: PreloadedCli, run_dir: Path, *overrides: str) -> Path:
    run_cli("train.py", *COMMON, *overrides, f"hydra.run.dir={run_dir}", cli=cli)
    return run_dir


def state(ckpt: Path) -> dict:
    c = torch.load(ckpt, weights_only=False, map_location="cpu")
    return {"weights": c["state_dict"], "optimizer": c["optimizer_states"], "scheduler": c["lr_schedulers"],
            "step": c["global_step"]}


def assert_close(a, b, path="", atol=1e-6) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.allclose(a.float(), b.float(), atol=atol, rtol=0), f"{path}: differs by {(a - b).abs().max()}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_close(a[k], b[k], f"{path}.{k}", atol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{path}[{i}]", atol)
    elif isinstance(a, float):
        assert abs(a - b) <= atol, f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a} != {b}"


def logged(run_dir: Path) -> dict[tuple[int, str], float]:
    """(step, name) → value of every number the csv logger wrote (lr and epoch counters aside)."""
    out = {}
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            for name, value in row.items():
                if value not in ("", None) and name not in ("step", "epoch") and not name.startswith("lr-"):
                    out[int(row["step"]), name] = float(value)
    return out


def assert_same_run(uninterrupted: Path, resumed: Path, last_step: int, from_step: int, atol: float = 1e-6) -> None:
    assert_close(state(uninterrupted / "steps" / f"step-{last_step}.ckpt"),
                 state(resumed / "steps" / f"step-{last_step}.ckpt"), atol=atol)
    theirs, ours = logged(uninterrupted), logged(resumed)
    after = {k: v for k, v in theirs.items() if k[0] > from_step}
    assert after, "nothing logged after the resume point"
    for key, value in after.items():
        assert key in ours and abs(ours[key] - value) <= atol, f"{key}: {ours.get(key)} != {value}"


@pytest.fixture(scope="module")
def uninterrupted(reference_cli, tmp_path_factory):
    """One uninterrupted run per family, built on first use."""
    runs = {}

    def get(family: str) -> Path:
        if family not in runs:
            run_dir = tmp_path_factory.mktemp(f"{family}_full")
            runs[family] = train_run(reference_cli, run_dir, *FAMILIES[family][0])
        return runs[family]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("family", ["text", "shoes"])
@pytest.mark.parametrize("where", ["epoch_boundary", "mid_epoch"])
def test_resume_continues_the_same_run(uninterrupted, cli, tmp_path, family, where):
    overrides, last_step, epoch_length, mid = FAMILIES[family]
    full = uninterrupted(family)
    # epoch boundary: the checkpoint written by the validation at the end of the first epoch
    ckpt = full / "epochs" / "epoch-0.ckpt" if where == "epoch_boundary" else full / "steps" / f"step-{mid}.ckpt"
    step = torch.load(ckpt, weights_only=False)["global_step"]
    assert step == (epoch_length if where == "epoch_boundary" else mid)
    resumed = train_run(cli, tmp_path / "resumed", *overrides, f"ckpt_path={ckpt}")
    assert_same_run(full, resumed, last_step, step, TOLERANCE[family])


def wait_for(proc, path: Path, timeout: float = 600) -> None:
    """Until ``path`` exists (checkpoints are written atomically), polling the process's liveness."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before writing {path}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)  # a poll interval, not a wait for the event


@pytest.mark.slow
@pytest.mark.parametrize("family", ["text", "shoes"])
def test_ctrl_c_then_resume_continues_the_same_run(uninterrupted, cli, tmp_path, family):
    overrides, last_step, _, mid = FAMILIES[family]
    full = uninterrupted(family)
    run_dir = tmp_path / "interrupted"
    proc = cli.popen("train.py", *COMMON, *overrides, f"hydra.run.dir={run_dir}")
    wait_for(proc, run_dir / "steps" / f"step-{mid - 1}.ckpt")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=300) != 0
    last = run_dir / "checkpoints" / "last.ckpt"
    stopped_at = torch.load(last, weights_only=False)["global_step"]
    assert mid - 1 <= stopped_at < last_step
    resumed = train_run(cli, tmp_path / "resumed", *overrides, f"ckpt_path={last}")
    assert_same_run(full, resumed, last_step, stopped_at, TOLERANCE[family])


# -- early stopping on resume ------------------------------------------------------------------------

@pytest.mark.slow
def test_resume_with_early_stopping_and_max_steps(cli, tmp_path):
    """Today: 'Early stopping conditioned on metric val/rougeL which is not available' when the resumed epoch
    ends by max_steps before any validation (the epoch-end check runs with no metrics logged yet)."""
    tarot = ["experiment=quickstart_tarot", "logger=csv", "trainer.enable_progress_bar=false", "test=false",
             "data.limit_train_samples=64", "data.limit_val_samples=8", "model.generation.max_new_tokens=4",
             "callbacks.early_stopping.check_on_train_epoch_end=true"]
    run_cli("train.py", *tarot, "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'first'}", cli=cli)
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 4
    run_cli("train.py", *tarot, "trainer.max_epochs=3", "trainer.max_steps=6", f"ckpt_path={last}",
            f"hydra.run.dir={tmp_path / 'resumed'}", cli=cli)
    assert read_json(tmp_path / "resumed" / "metrics.json")["training"]["global_step"] == 6


# -- cold or warm caches -----------------------------------------------------------------------------

def test_tiny_tokenizer_is_the_same_in_every_process(tmp_path):
    """Today the Unigram trainer's piece order and scores (and the CLIP BPE's tied merges) vary by process."""
    code = ("import sys; from src.pretrained.tiny import tiny_t5, tiny_sd; "
            "files = [f'data/samples/amazon/{n}.json' for n in ('trn', 'tst')]; "
            "print(tiny_t5(sys.argv[1], files)); print(tiny_sd(sys.argv[1], ['data/samples/shoes/prompts.txt']))")
    dirs = []
    for cache in ("a", "b"):
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / cache)], cwd=ROOT, text=True,
                             capture_output=True, check=True, env={**os.environ, "RAYON_NUM_THREADS": "1"})
        dirs.append([Path(line) for line in out.stdout.split()])
    for a, b in zip(*dirs):
        for name in ("tokenizer.json", "tokenizer/vocab.json", "tokenizer/merges.txt"):
            if (a / name).exists():
                assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.slow
def test_same_metrics_with_cold_or_warm_caches(tmp_path):
    """Today the first run (building the tiny model inside the run re-seeds torch) trains differently."""
    fresh = {**os.environ, "LORAFIT_CACHE": str(tmp_path / "cache"), "PYTHONWARNINGS": "ignore"}
    quick = ["experiment=quickstart", "logger=csv", "trainer.enable_progress_bar=false", "test=false",
             "data.limit_train_samples=32", "data.limit_val_samples=8", "model.generation.max_new_tokens=4",
             "trainer.max_epochs=1"]
    runs = []
    for name in ("cold", "warm"):
        subprocess.run([sys.executable, str(ROOT / "train.py"), *quick, f"hydra.run.dir={tmp_path / name}"],
                       cwd=ROOT, env=fresh, check=True, capture_output=True)
        runs.append(logged(tmp_path / name))
    assert runs[0] and runs[0] == runs[1]
