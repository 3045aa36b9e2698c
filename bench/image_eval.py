"""Row f: evaluating 4 checkpoints of a tiny Stable Diffusion LoRA run through ``evaluate.py compare=all``
(``src.comparison``: one module, each checkpoint's LoRA weights swapped in, the real images' features
computed on the first pass only) against the cost of doing each part once: 4 x one checkpoint's
generation + features, plus one real-feature pass, measured separately on a module of the same config.

The run directory is made here: the ``quickstart_shoes`` config, one training step, and 4 checkpoints
whose LoRA weights are perturbed copies (what is timed does not depend on the weights' values).
"""

import time

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bench.common import WORK, compose, row

CHECKPOINTS = 4


def make_run(run_dir) -> None:
    from src.building import build_model_and_data

    cfg = compose("train", ["experiment=quickstart_shoes", "trainer.enable_progress_bar=false",
                            "+trainer.limit_val_batches=0", "trainer.max_steps=1", "trainer.val_check_interval=1.0",
                            "trainer.check_val_every_n_epoch=1"], run_dir)
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), run_dir / ".hydra" / "config.yaml")
    module, datamodule = build_model_and_data(cfg)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False)
    trainer.fit(module, datamodule=datamodule)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    lora = [p for p in module.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(0)
    for i in range(1, CHECKPOINTS + 1):
        with torch.no_grad():
            for p in lora:
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
        path = run_dir / "checkpoints" / f"checkpoint-{10 * i}.ckpt"
        trainer.save_checkpoint(path)
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        checkpoint["global_step"] = 10 * i  # as if written at steps 10, 20, 30, 40
        torch.save(checkpoint, path)


def bench_image_evaluation(quick: bool) -> dict:
    from src.comparison import runner
    from src.building import build_model_and_data
    from src.targets import state_dict_of, with_run_config

    run_dir = WORK / "runs" / "f_shoes_run"
    make_run(run_dir)
    out = WORK / "runs" / "f_compare"
    cfg = compose("evaluate", [f"ckpt={run_dir}", "compare=all", "bootstrap.n_resamples=100",
                               "bootstrap.fid_n_resamples=20"], out)

    rows: list[float] = []
    evaluate_row = runner.evaluate_row

    def timed_row(*args, **kwargs):
        start = time.perf_counter()
        result = evaluate_row(*args, **kwargs)
        rows.append(time.perf_counter() - start)
        return result

    def one_checkpoint(module, datamodule, name: str) -> float:
        module.load_state_dict(state_dict_of(str(run_dir / "checkpoints" / "checkpoint-10.ckpt")))
        start = time.perf_counter()
        evaluate_row(merged, module, datamodule, out / "reference", name, step=10)
        return time.perf_counter() - start

    # the parts, once each, on their own module: real features, then one checkpoint with them in place
    merged = with_run_config(cfg, run_dir)
    L.seed_everything(merged.seed, verbose=False)
    module, datamodule = build_model_and_data(merged)
    start = time.perf_counter()
    module.image_metrics.set_real_images(datamodule.real_images())
    real_pass = time.perf_counter() - start
    module._real_set = True  # what the module's first evaluation pass leaves behind
    one_checkpoint(module, datamodule, "warm-up")  # builds the pipeline and loads CLIP once, as compare's first pass
    single = [one_checkpoint(module, datamodule, "before")]

    runner.evaluate_row = timed_row
    try:
        start = time.perf_counter()
        runner.compare(cfg)
        compare_seconds = time.perf_counter() - start
    finally:
        runner.evaluate_row = evaluate_row
    single.append(one_checkpoint(module, datamodule, "after"))  # A-B-A: drift in the machine's load cancels

    one = sum(single) / len(single)
    budget = CHECKPOINTS * one + real_pass
    total = sum(rows)
    ratio = total / budget
    return row("f", f"image evaluation of {CHECKPOINTS} checkpoints (tiny SD, evaluate.py compare=all) vs "
               f"{CHECKPOINTS} x one checkpoint + one real-feature pass", round(total, 1), round(budget, 1), "s",
               round(ratio, 3), "<= 1.1", ratio <= 1.1, passes_seconds=[round(r, 2) for r in rows],
               one_checkpoint_seconds=[round(s, 2) for s in single], real_feature_pass_seconds=round(real_pass, 2),
               whole_compare_seconds=round(compare_seconds, 1),
               note="passes = compare=all's per-checkpoint evaluation (generate, features, metrics, write images); "
                    "the whole command also builds the module and writes the bootstrap report")
