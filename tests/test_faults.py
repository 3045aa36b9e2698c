"""Faults lose nothing: a kill mid-save, a crash while writing the report, a damaged or foreign checkpoint
passed to ckpt_path, a checkpoint of another LoRA config, and Ctrl+C / SIGTERM under ddp_spawn."""

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from src.atomic import atomic_write_bytes, atomic_write_text
from src.callbacks.checkpointing import AtomicCheckpointIO
from src.outputs import write_json
from src.errors import UserError
from src.resume_check import check_resume_checkpoint
from tests.conftest import QUICK, ROOT, compose_config, read_json, run_cli

# tiny runs: a validation (and so a checkpoint) after every step, two validation samples, short generations
TINY = [*QUICK, "data.limit_val_samples=2", "model.generation.max_new_tokens=4", "test=false"]


def start_training(run_dir: Path, *overrides: str) -> subprocess.Popen:
    """``python train.py`` in its own process group (so a signal to the group reaches its workers, not pytest)."""
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *TINY, f"hydra.run.dir={run_dir}", *overrides],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def finish(proc: subprocess.Popen) -> str:
    """All output, once the process and every worker holding its output open have ended."""
    try:
        return proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def still_running(proc: subprocess.Popen) -> bool:
    """Wait for the process for a moment: a poll interval that keeps the checkpoint watch from spinning a core."""
    try:
        proc.wait(timeout=0.002)
        return False
    except subprocess.TimeoutExpired:
        return True


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob(".*.tmp"))


def global_step(checkpoint: Path) -> int:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"]


# -- atomic writes -----------------------------------------------------------------------------------------------
def record_fsyncs(monkeypatch, target: Path) -> list[tuple[str, bytes | None]]:
    """Every fsync as (what was synced, the target's content at that moment)."""
    calls, real_fsync = [], os.fsync

    def fsync(fd):
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        calls.append((kind, target.read_bytes() if target.is_file() else None))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


@pytest.mark.parametrize("writer", ["checkpoint", "metrics.json"])
def test_a_write_is_on_disk_before_it_replaces_the_old_file_and_the_rename_is_synced(tmp_path, monkeypatch, writer):
    target = tmp_path / ("last.ckpt" if writer == "checkpoint" else "metrics.json")
    save = {"checkpoint": lambda value: AtomicCheckpointIO().save_checkpoint({"step": value}, target),
            "metrics.json": lambda value: write_json(target, {"step": value})}[writer]
    save(1)
    old = target.read_bytes()
    calls = record_fsyncs(monkeypatch, target)
    save(2)
    new = target.read_bytes()
    assert new != old and ("file", old) in calls  # the new bytes were flushed while the old file was in place
    assert ("dir", new) in calls  # and the directory entry pointing at them was flushed after the rename
    assert temp_files(tmp_path) == []


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # fails after the temporary file was opened
    assert target.read_text() == "old" and temp_files(tmp_path) == []


def test_the_first_save_removes_temporary_files_of_dead_processes_only(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid runs nothing now
    names = {"dead": f".last.ckpt.{dead.pid}.tmp", "ours": f".checkpoint-2.ckpt.{os.getpid()}.tmp",
             "running": f".checkpoint-4.ckpt.{os.getppid()}.tmp"}
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "last.ckpt")
    assert temp_files(tmp_path) == sorted([names["ours"], names["running"]])


@pytest.mark.slow
def test_sigkill_while_saving_keeps_a_checkpoint_that_resumes(cache_dir, tmp_path):
    """Kill -9 a real run while it writes last.ckpt, then a resumed run right after a rename: each time the
    last.ckpt on disk loads and the run resumes from it in the same directory, and the next start clears the
    temporary files the killed process left."""
    run_dir, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"
    last = checkpoints / "last.ckpt"

    # 1. while last.ckpt is being rewritten (stopped mid-write, so the kill lands there for sure)
    proc = start_training(run_dir, "trainer.max_steps=200", "val_every_n_steps=1")
    while still_running(proc):
        writing = [p for p in temp_files(checkpoints) if p.startswith(".last.ckpt.")] if last.is_file() else []
        if writing:
            proc.send_signal(signal.SIGSTOP)
            os.waitpid(proc.pid, os.WUNTRACED)  # returns once it is stopped
            if (checkpoints / writing[0]).exists():
                proc.kill()
                break
            proc.send_signal(signal.SIGCONT)  # the rename came first: wait for the next save
    finish(proc)
    orphans = temp_files(checkpoints)
    assert any(name.startswith(".last.ckpt.") for name in orphans)
    first = global_step(last)  # the previous last.ckpt is whole
    assert first >= 1

    # 2. resumed in the same run directory, killed right after it replaced last.ckpt
    inode = last.stat().st_ino
    proc = start_training(run_dir, "trainer.max_steps=200", "val_every_n_steps=1", f"ckpt_path={last}")
    while still_running(proc) and last.stat().st_ino == inode:
        pass
    proc.kill()
    finish(proc)
    assert not set(orphans) & set(temp_files(checkpoints))  # the start removed the killed process's leftovers
    second = global_step(last)
    assert second > first  # it resumed from step `first` and saved a later step

    # 3. a resume that runs to its end
    run_cli("train.py", *TINY, f"trainer.max_steps={second + 2}", "val_every_n_steps=1", f"ckpt_path={last}",
            f"hydra.run.dir={run_dir}")
    assert read_json(run_dir / "metrics.json")["training"]["global_step"] == second + 2
    assert global_step(last) == second + 2 and temp_files(checkpoints) == []


# -- what ckpt_path may be --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoint(cache_dir, tmp_path_factory) -> Path:
    """last.ckpt of a 2-step quickstart run (tiny T5, LoRA r=16, alpha=32 on q,k,v,o,wi,wo)."""
    run_dir = tmp_path_factory.mktemp("tiny")
    run_cli("train.py", *TINY, "trainer.max_steps=2", "val_every_n_steps=2", f"hydra.run.dir={run_dir}")
    return run_dir / "checkpoints" / "last.ckpt"


def resume_config(tmp_path, *overrides: str):
    return compose_config("train", [*TINY, *overrides], tmp_path)


def test_a_checkpoint_names_the_adapter_it_holds(tiny_checkpoint):
    record = torch.load(tiny_checkpoint, weights_only=True)["lorafit_adapter"]
    assert record["family"] == "seq2seq" and Path(record["base"]).name.startswith("tiny_t5-")
    assert (record["r"], record["lora_alpha"], record["target_modules"]) == (16, 32, ["k", "o", "q", "v", "wi", "wo"])


@pytest.mark.parametrize("overrides,difference", [
    (["model.lora.lora_alpha=64"], "lora_alpha=32, this run has model.lora.lora_alpha=64"),
    (["model.lora.r=8"], "r=16, this run has model.lora.r=8"),
    (["model.lora.target_modules=[q,v]"], "target_modules=['k', 'o', 'q', 'v', 'wi', 'wo'], this run has "
                                          "model.lora.target_modules=['q', 'v']"),
    (["+model.lora.use_rslora=true"], "use_rslora=False, this run has model.lora.use_rslora=True"),
    (["model=flan_t5"], "base model "),
    (["model=tiny_gpt2"], "the seq2seq model family, this run's model is causal"),
])
def test_resuming_with_another_lora_config_is_refused_in_one_line(tiny_checkpoint, tmp_path, overrides, difference):
    cfg = resume_config(tmp_path, *overrides)
    with pytest.raises(UserError) as err:
        check_resume_checkpoint(str(tiny_checkpoint), cfg)
    message = str(err.value)
    assert message.startswith(f"ckpt_path={tiny_checkpoint} was trained with {difference}") and "\n" not in message
    assert message.endswith("— resume with the settings it was trained with, or start a new run without ckpt_path")


def test_resuming_with_another_schedule_or_dropout_is_allowed(tiny_checkpoint, tmp_path):
    cfg = resume_config(tmp_path, "model.optimizer.lr=1e-4", "trainer.max_steps=50", "model.lora.lora_dropout=0.1",
                        "data.batch_size=8", "val_every_n_steps=5")
    assert check_resume_checkpoint(str(tiny_checkpoint), cfg)["global_step"] == 2


def test_peft_default_targets_are_not_compared_with_the_resolved_ones(tiny_checkpoint, tmp_path):
    """peft resolves target_modules=null into the config it is given, so the record holds a list where a resumed
    run's fresh config holds None; a wrong set of targets still fails on the adapter weights when loading."""
    cfg = resume_config(tmp_path, "model.lora.target_modules=null")
    assert check_resume_checkpoint(str(tiny_checkpoint), cfg)["global_step"] == 2


def foreign_files(directory: Path, checkpoint: Path) -> dict[str, Path]:
    from safetensors.torch import save_file

    good = torch.load(checkpoint, weights_only=True)
    files = {name: directory / name for name in ("truncated.ckpt", "empty.ckpt", "weights.pt", "module.pt",
                                                 "pytorch_lora_weights.safetensors", "weights_only.ckpt",
                                                 "other_framework.ckpt")}
    files["truncated.ckpt"].write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    files["empty.ckpt"].write_bytes(b"")
    torch.save({"weight": torch.zeros(2)}, files["weights.pt"])
    torch.save(torch.nn.Linear(2, 2), files["module.pt"])
    save_file({"unet.lora_A.weight": torch.zeros(2)}, str(files["pytorch_lora_weights.safetensors"]))
    torch.save({k: v for k, v in good.items() if k not in ("optimizer_states", "lr_schedulers")},
               files["weights_only.ckpt"])
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}, "pytorch-lightning_version": "2.6.6",
                "optimizer_states": [], "global_step": 3}, files["other_framework.ckpt"])
    return files


@pytest.mark.parametrize("name,says", [
    ("truncated.ckpt", "cannot be read: the file is truncated or damaged"),
    ("empty.ckpt", "cannot be read: the file is empty"),
    ("module.pt", "cannot be read: it holds pickled Python objects, not only tensors"),
    ("weights.pt", "is not a Lightning checkpoint (no state_dict)"),
    ("pytorch_lora_weights.safetensors", "is not a Lightning checkpoint (no state_dict)"),
    ("weights_only.ckpt", "holds weights but no optimizer or loop state"),
    ("other_framework.ckpt", "holds no LoRA adapter weights: it was not written by lorafit's train.py"),
    ("missing.ckpt", "is not a file"),
])
def test_a_damaged_or_foreign_checkpoint_is_refused_in_one_line(tiny_checkpoint, tmp_path, name, says):
    path = foreign_files(tmp_path, tiny_checkpoint).get(name, tmp_path / name)
    with pytest.raises(UserError) as err:
        check_resume_checkpoint(str(path), resume_config(tmp_path))
    assert str(err.value).startswith(f"ckpt_path={path} {says}") and "\n" not in str(err.value)


@pytest.mark.slow
def test_train_py_refuses_a_truncated_or_mismatched_checkpoint_in_one_line(tiny_checkpoint, tmp_path):
    truncated = tmp_path / "last.ckpt"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:100_000])
    for overrides, says in [([f"ckpt_path={truncated}"], "cannot be read: the file is truncated"),
                            ([f"ckpt_path={tiny_checkpoint}", "model.lora.lora_alpha=64"],
                             "was trained with lora_alpha=32, this run has model.lora.lora_alpha=64")]:
        proc = run_cli("train.py", *TINY, *overrides, f"hydra.run.dir={tmp_path / 'run'}", check=False)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert says in lines[0]


# -- Ctrl+C / SIGTERM under ddp_spawn -------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sig,to_group", [(signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["ctrl_c", "sigterm_to_the_launcher"])
def test_ddp_sim_saves_a_resumable_checkpoint_when_interrupted(cache_dir, tmp_path, sig, to_group):
    """Ctrl+C reaches the launching process and both workers (one process group); a scheduler's SIGTERM may reach
    the launcher alone. Either way the workers stop after the same step and save it. No validation (and so no
    checkpoint) is due before the signal, so a last.ckpt can only come from the interrupt."""
    run_dir = tmp_path / "run"
    proc = start_training(run_dir, "trainer=ddp_sim", "trainer.max_steps=300", "val_every_n_steps=1000")
    for line in proc.stdout:
        if "epoch 1/" in line:  # rank 0 finished its first epoch (15 steps on 2 processes)
            (os.killpg if to_group else os.kill)(proc.pid, sig)
            break
    output = finish(proc)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_file(), output[-3000:]
    stopped_at = global_step(last)
    report = read_json(run_dir / "metrics.json")["training"]
    assert stopped_at >= 15 and report["global_step"] == stopped_at and report["world_size"] == 2
    assert report["stop_reason"].startswith("interrupted")
    if sig == signal.SIGINT:
        assert report["stop_reason"] == "interrupted: Ctrl+C"
        run_cli("train.py", *TINY, "trainer=ddp_sim", f"trainer.max_steps={stopped_at + 2}", "val_every_n_steps=1000",
                f"ckpt_path={last}", f"hydra.run.dir={tmp_path / 'resumed'}")
        assert read_json(tmp_path / "resumed" / "metrics.json")["training"]["global_step"] == stopped_at + 2


# -- Ctrl+C at a step that validates ---------------------------------------------------------------------------
class InterruptAtStep(L.Callback):
    """Ctrl+C as if pressed during the given optimizer step (sent to itself: nothing races a second process)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.slow
def test_ctrl_c_at_a_validation_step_stops_after_its_validation_and_checkpoint(cache_dir, tmp_path):
    """A resumed run counts that step's validation as done: stopping before it would lose it for good."""
    every_2 = ["val_every_n_steps=2", "trainer.max_steps=4"]
    interrupt = ["+callbacks.interrupt._target_=tests.test_faults.InterruptAtStep", "+callbacks.interrupt.step=2"]
    interrupted = run_cli("train.py", *TINY, *every_2, *interrupt, f"hydra.run.dir={tmp_path / 'run'}", check=False)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert interrupted.returncode != 0 and global_step(checkpoints / "last.ckpt") == 2, interrupted.stdout[-2000:]
    assert (checkpoints / "checkpoint-2.ckpt").is_file()  # step 2 was validated and kept before stopping
    run_cli("train.py", *TINY, *every_2, f"hydra.run.dir={tmp_path / 'resumed'}", f"ckpt_path={checkpoints / 'last.ckpt'}")
    assert (tmp_path / "resumed" / "checkpoints" / "checkpoint-4.ckpt").is_file()
