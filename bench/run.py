"""The bench suite: the framework's speed, memory and checkpoint size, each measured side by side with
the usual alternative in the same run, on CPU.

    python bench/run.py                      # every row (a-f about 12 minutes on 2 quiet cores, g-j ~17 more)
    python bench/run.py --only a,c --quick   # some rows, fewer steps/samples/records (development)
    python bench/run.py --out /tmp/bench.json

Rows: a training overhead, b padding, c evaluation, d data preparation (d.mem, d.time), e checkpoint
size, f image evaluation; against the tools users would pick instead: g training vs Hugging Face's
Seq2SeqTrainer + peft (group_by_length off and on, peak RSS; tiny T5 and flan-t5-base shape), h evaluation
with generation vs Seq2SeqTrainer.predict, i diffusion LoRA training vs the step of diffusers'
train_text_to_image_lora.py (time and peak RSS), j training overhead at the flan-t5-base shape (row a's
comparison), k chat SFT tokens/s vs TRL's SFTTrainer + peft, packing off and on (pip install -e ".[bench]"). Prints a table and writes the figures (with details) to bench/results.json.
Models, data and runs go to $LORAFIT_BENCH_DIR (default /tmp/lorafit_bench), never into the repo;
the synthetic 2M-record file is written once (about 1.4 GB) and reused.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, THREADS, WORK, quiet  # noqa: E402

ROWS = ("a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l")
MET = {True: "yes", False: "NO", None: "-"}  # None: reported beside the row's target


def run_row(name: str, quick: bool, records: int | None) -> list[dict]:
    if name == "a":
        from bench.training import bench_training_overhead
        return [bench_training_overhead(quick)]
    if name == "b":
        from bench.training import bench_padding
        return [bench_padding(quick)]
    if name == "c":
        from bench.generation import bench_evaluation
        return [bench_evaluation(quick)]
    if name == "d":
        from bench.data_prep import bench_data_preparation
        return bench_data_preparation(quick, records)
    if name == "e":
        from bench.checkpoint_size import bench_checkpoint_size
        return [bench_checkpoint_size(quick)]
    if name == "f":
        from bench.image_eval import bench_image_evaluation
        return [bench_image_evaluation(quick)]
    if name == "g":
        from bench.hf_trainer import bench_training_vs_hf
        return bench_training_vs_hf(quick)
    if name == "h":
        from bench.hf_trainer import bench_evaluation_vs_hf
        return bench_evaluation_vs_hf(quick)
    if name == "i":
        from bench.diffusion_training import bench_diffusion_training
        return bench_diffusion_training(quick)
    if name == "k":
        from bench.sft import bench_sft_vs_trl
        return bench_sft_vs_trl(quick)
    if name == "l":
        from bench.adapters import bench_adapters
        return bench_adapters(quick)
    from bench.training import bench_training_overhead_base
    return [bench_training_overhead_base(quick)]


def table(rows: list[dict]) -> str:
    lines = ["| row | measured | framework | alternative | ratio | target | met |", "|---|---|---:|---:|---:|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['row']} | failed: {r['error'][:80]} | | | | | no |")
            continue
        lines.append(f"| {r['row']} | {r['what']} | {r['framework']} {r['unit']} | {r['alternative']} {r['unit']} | "
                     f"{r['ratio']} | {r['target']} | {MET[r['met']]} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(ROWS), help="comma-separated rows, e.g. a,c")
    parser.add_argument("--quick", action="store_true", help="fewer steps, samples and records (not the figures)")
    parser.add_argument("--records", type=int, default=None, help="row d's record count (default 2,000,000)")
    parser.add_argument("--out", default=str(ROOT / "bench/results.json"))
    args = parser.parse_args()
    rows_wanted = [r.strip() for r in args.only.split(",") if r.strip()]
    unknown = set(rows_wanted) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}: choose from {','.join(ROWS)}")

    import torch

    quiet()
    torch.set_num_threads(THREADS)
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results, seconds = [], {}
    # d first: its subprocesses (pandas takes ~17 GB at 2M records) should not share the RAM with a
    # bench process that has grown through the other rows
    for name in sorted(rows_wanted, key=lambda r: (r != "d", r)):
        print(f"row {name} ...", flush=True)
        start = time.perf_counter()
        try:
            results += run_row(name, args.quick, args.records)
        except Exception as err:  # one failed row must not lose the others' figures
            results.append({"row": name, "error": f"{type(err).__name__}: {err}"})
        seconds[name] = round(time.perf_counter() - start, 1)
        print(f"row {name}: {seconds[name]} s", flush=True)
    load = os.getloadavg()
    report = {"command": "python bench/run.py " + " ".join(sys.argv[1:]), "quick": args.quick,
              "seconds": round(time.perf_counter() - started, 1), "row_seconds": seconds,
              "machine": {"cpus": os.cpu_count(), "torch_threads": THREADS, "python": platform.python_version(),
                          "torch": torch.__version__, "load_average_1_5_15_min_at_end": [round(x, 2) for x in load]},
              "rows": results}
    Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print("\n" + table(results))
    print(f"\n{report['seconds']} s in all; load average at the end {report['machine']['load_average_1_5_15_min_at_end']}"
          f" on {os.cpu_count()} CPUs; figures: {args.out}")


if __name__ == "__main__":
    main()
