"""Long runs: interrupt and resume, atomic checkpoint writes, non-finite loss, stop reasons, epoch lines."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from src.callbacks.checkpointing import AtomicCheckpointIO
from src.callbacks.run_report import exception_reason
from src.errors import NonFiniteLossError
from src.modules.seq2seq_lora import Seq2SeqLoRAModule
from src.training import train
from tests.conftest import QUICK, ROOT, compose_config, read_json, run_cli


def start_training(run_dir, *overrides) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *QUICK, f"hydra.run.dir={run_dir}", *overrides],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})


def signal_after(proc: subprocess.Popen, marker: str, sig: int, timeout: float = 300) -> tuple[str, float]:
    """Send ``sig`` once ``marker`` appears in the output; return all output and when the signal was sent."""
    seen, deadline, sent_at = [], time.monotonic() + timeout, 0.0
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            time.sleep(0.5)  # usually inside the next epoch's training steps (on a loaded machine maybe not yet)
            sent_at = time.time()
            proc.send_signal(sig)
            break
        assert time.monotonic() < deadline, "marker never appeared"
    seen.append(proc.communicate(timeout=120)[0])
    return "".join(seen), sent_at


@pytest.mark.slow
@pytest.mark.parametrize("sig,reason", [(signal.SIGINT, "interrupted: Ctrl+C"), (signal.SIGTERM, "interrupted: SIGTERM")])
def test_interrupt_saves_a_checkpoint_and_the_run_resumes(cache_dir, tmp_path, sig, reason):
    proc = start_training(tmp_path / "run", "trainer.max_epochs=4", "test=false")
    output, sent_at = signal_after(proc, "epoch 1/4 (step 30) |", sig)
    assert proc.returncode != 0, output[-2000:]
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    report = read_json(tmp_path / "run" / "metrics.json")
    assert report["training"]["stop_reason"] == reason
    interrupted_at = torch.load(last, weights_only=False)["global_step"]
    assert interrupted_at == report["training"]["global_step"] and 30 <= interrupted_at < 120  # mid-run state
    if interrupted_at > 30:  # past the epoch-end save (a loaded machine may signal before step 31)
        assert last.stat().st_mtime >= sent_at - 0.05  # so the interrupt handler wrote it

    run_cli("train.py", *QUICK, "trainer.max_epochs=4", "test=false", f"ckpt_path={last}",
            f"hydra.run.dir={tmp_path / 'resumed'}")
    resumed = read_json(tmp_path / "resumed" / "metrics.json")
    assert resumed["training"]["global_step"] == 4 * 30 and resumed["training"]["stop_reason"] == "max_epochs"


def test_atomic_checkpoint_write_keeps_the_old_file_when_a_save_dies(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)
    assert torch.load(path, weights_only=False) == {"global_step": 1}

    def dies_halfway(obj, f, *args, **kwargs):
        f.write(b"partial bytes of a checkpoint")
        raise KeyboardInterrupt  # as if the process were killed mid-write

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False) == {"global_step": 1}  # the previous checkpoint is whole
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(cache_dir, tmp_path, monkeypatch):
    original = Seq2SeqLoRAModule.forward

    def nan_from_step_45(self, batch):
        out = original(self, batch)
        if self.training and self.global_step >= 45:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(Seq2SeqLoRAModule, "forward", nan_from_step_45)
    cfg = compose_config("train", [*QUICK, "trainer.max_epochs=3", "test=false"], tmp_path)
    with pytest.raises(NonFiniteLossError, match="training loss is nan at step 45 .* lower model.optimizer.lr"):
        train(cfg)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 30  # the state after epoch 1, not the failing one
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())
    assert read_json(tmp_path / "metrics.json")["training"]["stop_reason"] == "non_finite_loss"


def test_stop_reasons():
    assert exception_reason(KeyboardInterrupt()) == "interrupted: Ctrl+C"
    assert exception_reason(SIGTERMException()) == "interrupted: SIGTERM"
    assert exception_reason(NonFiniteLossError("x")) == "non_finite_loss"
    assert exception_reason(RuntimeError("boom")) == "error: RuntimeError: boom"


@pytest.mark.slow
def test_early_stopping_from_config_is_recorded(cache_dir, tmp_path):
    # min_delta no validation can reach: stops after `patience` validations without improvement
    run_cli("train.py", *QUICK, "callbacks=[default,early_stopping]", "callbacks.early_stopping.patience=1",
            "callbacks.early_stopping.min_delta=10", "trainer.max_epochs=10", "test=false",
            f"hydra.run.dir={tmp_path}")
    training = read_json(tmp_path / "metrics.json")["training"]
    assert training["stop_reason"].startswith("early_stopping: val/rougeL has not improved on ")
    assert training["stop_reason"].endswith(" for 1 validation (patience 1, min_delta 10)")
    assert training["epochs"] < 10
