"""Row d: preparing a synthetic LF-AmazonTitles file (2M records by default, ~1.4 GB, written by the
bench) — the framework's Arrow loading (the ``data=amazon`` config's datamodule, cold cache, as train.py
and prepare_data.py pay it: parse, clean, filter, dedupe, cache) against ``pandas.read_json(lines=True)``
(parse only), each in its own subprocess; each side's peak RSS is its own (VmHWM).

Time is each side's own work, timed inside its process once its libraries are imported (and, for the
framework, the config composed): instantiation and loading for the framework, ``read_json`` for pandas.
Imports are a fixed cost that does not grow with the file (the framework's torch, Lightning and transformers,
which train.py imports anyway, against pandas alone); each side's import seconds and whole process wall time
are reported beside the row.

The file has the dump's layout and mess: HTML and entities in the descriptions, odd unicode, ~1% exact
duplicates, bad records (null, numeric or missing fields: valid JSON, so pandas reads the same file),
empty, too-short and title-only descriptions. It is kept under the bench's work directory and reused.
"""

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import ROOT, WORK, row

BRANDS = [a + b for a in ("Acme", "North", "Blue", "Sol", "Trail", "Kitch", "Volt", "Ever", "Bright", "Cozy", "Urban",
                          "Aqua", "Terra", "Nova", "Peak") for b in ("", "wind", "line", "ly", "co", "max")]
PRODUCTS = ["running shoes", "coffee maker", "wireless earbuds", "yoga mat", "water bottle", "desk lamp", "backpack",
            "chef knife", "phone case", "throw blanket", "hiking boots", "bluetooth speaker", "office chair",
            "garden hose", "picture frame", "board game", "dog leash", "rain jacket", "travel mug", "usb cable"]
COLORS = ["Black", "White", "Navy", "Red", "Grey", "Green", "Blue", "Pink", "Olive", "Teal"]
FEATURES = ["breathable mesh upper", "programmable timer", "noise cancelling", "non-slip surface",
            "double wall insulation", "dimmable LED", "padded laptop sleeve", "high carbon blade", "slim profile",
            "machine washable", "waterproof leather", "12 hour battery", "lumbar support", "kink resistant",
            "solid wood", "two to six players", "reflective stitching", "sealed seams", "leak-proof lid",
            "braided nylon"]
SENTENCES = ["The {b} {p} is designed for everyday use and built to last through years of heavy use.",
             "It features {f}, {g} &amp; {h}, so it fits right into your routine at home or away.",
             "Meet the {b} {p}: comfortable, durable and easy to clean&nbsp;— great value for the price!!!",
             "This {c} {p} from {b} combines style and function in a compact, lightweight design.",
             "Backed by a 2-year warranty&#8230; customer support answers within one business day.",
             "Customers love the {f} and the {g}\u200b; many say it is the best {p} they have owned.",
             "Package contents: one {p}, a quick start guide and a ﬁtted storage pouch.",
             "Dimensions: 12 x 8 x 4 inches; weight: 1.2 pounds. Imported. Ships in recyclable packaging."]
WRAPS = ["<p>{}</p>", "{}<br/>", "<b>{}</b>", "{}  ", "<li>{}</li>", "{}"]
POOL = 50_000  # distinct descriptions and label lists, drawn per line (json.dumps per line is the slow part)


def _content(rng: random.Random, b: str, p: str, c: str) -> str:
    f, g, h = rng.sample(FEATURES, 3)
    return " ".join(rng.choice(WRAPS).format(s.format(b=b, p=p, c=c.lower(), f=f, g=g, h=h))
                    for s in rng.sample(SENTENCES, rng.randint(4, 6)))


def write_file(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    products = [(b, p, c) for b in BRANDS for p in PRODUCTS for c in COLORS]
    pool = []
    for _ in range(POOL):
        b, p, c = rng.choice(products)
        pool.append((b, p, c, json.dumps(_content(rng, b, p, c), ensure_ascii=False)))
    labels = [json.dumps({"target_ind": [rng.randrange(1_300_000) for _ in range(k)], "target_rel": [1.0] * k})[1:]
              for k in (rng.randint(1, 5) for _ in range(997))]
    recent: list[str] = []
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", encoding="utf-8") as f:
        for i in range(n):
            if recent and rng.random() < 0.01:
                f.write(rng.choice(recent))  # an exact duplicate of a recent line
                continue
            b, p, c, content = pool[rng.randrange(POOL)]
            title = f'"{b} {p.title()} - {c}, Model {rng.randrange(10_000)}"'
            roll = rng.random()
            if roll < 0.003:
                content = '"<p> </p>"'  # empty after cleaning
            elif roll < 0.005:
                content = '"Great."'  # too short
            elif roll < 0.006:
                content = title  # only repeats the title
            elif roll > 0.9995:
                content = "null"  # bad records from here on
            fields = f'"title": {title}, "content": {content}'
            if 0.999 < roll <= 0.9995:
                fields = f'"title": 12345, "content": {content}'
            elif 0.9985 < roll <= 0.999:
                fields = f'"content": {content}'
            line = f'{{"uid": "B{i:09d}", {fields}, {labels[i % len(labels)]}\n'
            if i % 97 == 0:
                recent = (recent + [line])[-1000:]
            f.write(line)
    os.replace(tmp, path)


def synthetic_file(n: int) -> tuple[Path, float]:
    """The file for ``n`` records (written once, then reused) and the seconds writing it took now."""
    path = WORK / "data" / f"lf_amazon_titles_{n}.json"
    if path.is_file():
        return path, 0.0
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    write_file(path, n)
    return path, time.perf_counter() - start


def run(cmd: list[str]) -> dict:
    """Wall time (interpreter start and imports included), exit code and output of one subprocess."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = proc.communicate()  # drained while it runs, so a chatty child never blocks
    seconds = time.perf_counter() - start
    figures = {"seconds": round(seconds, 1), "exit_code": proc.returncode,
               "stdout": stdout.decode(errors="replace").strip()[-500:]}
    if proc.returncode:
        figures["stderr_tail"] = stderr.decode(errors="replace")[-1500:]
    return figures


PEAK_RSS = """
def peak_rss_mb():
    # VmHWM of this process's own memory map: ru_maxrss would report the forking parent's peak
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) // 1024
"""
FRAMEWORK = PEAK_RSS + """
import time
started = time.perf_counter()
import importlib
from pathlib import Path
from hydra.utils import instantiate
from bench.common import compose
cfg = compose("prepare_data", ["data=amazon", "data.train_file={file}", "data.test_file=null",
                               "paths.cache_dir={cache}"], Path("{out}"))
importlib.import_module(cfg.data._target_.rpartition(".")[0])  # the datamodule's module: torch, Lightning...
start = time.perf_counter()
datamodule = instantiate(cfg.data)
records = datamodule.load_records()
print(len(records), datamodule.skipped(), round(start - started, 2), round(time.perf_counter() - start, 2),
      peak_rss_mb())
"""
PANDAS = PEAK_RSS + """
import time
started = time.perf_counter()
import pandas
start = time.perf_counter()
df = pandas.read_json("{file}", lines=True)
print(len(df), round(start - started, 2), round(time.perf_counter() - start, 2), peak_rss_mb())
"""


def measured(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; its last three printed numbers are its imports' seconds, its work's
    seconds and its own peak RSS in MB."""
    figures = run([sys.executable, "-c", code])
    if not figures["exit_code"]:
        imports, work, rss = figures["stdout"].split()[-3:]
        figures.update(import_seconds=float(imports), work_seconds=float(work), peak_rss_mb=int(rss))
    return figures


def bench_data_preparation(quick: bool, records: int | None = None) -> list[dict]:
    n = records or (100_000 if quick else 2_000_000)
    path, wrote = synthetic_file(n)
    cache = WORK / "cache_d"
    shutil.rmtree(cache, ignore_errors=True)  # a cold cache: the first run's cost
    framework = measured(FRAMEWORK.format(file=path, cache=cache, out=WORK / "runs" / "d_prepare"))
    cached = measured(FRAMEWORK.format(file=path, cache=cache, out=WORK / "runs" / "d_prepare"))
    shutil.rmtree(cache, ignore_errors=True)
    pandas = measured(PANDAS.format(file=path))
    failed = [name for name, f in (("framework", framework), ("pandas", pandas)) if f["exit_code"]]
    if failed:
        raise RuntimeError(f"row d: {failed} failed: " + " | ".join(f.get("stderr_tail", "") for f in (framework, pandas)))
    details = dict(records=n, file_gb=round(path.stat().st_size / 1e9, 2), wrote_file_seconds=round(wrote, 1),
                   framework_run=framework, framework_cached_run=cached, pandas_run=pandas)
    memory = framework["peak_rss_mb"] / pandas["peak_rss_mb"]
    speed = framework["work_seconds"] / pandas["work_seconds"]
    what = f"preparing {n:,} LF-AmazonTitles records: framework's Arrow loading vs pandas.read_json(lines=True)"
    return [row("d.mem", what + ", peak RSS", framework["peak_rss_mb"], pandas["peak_rss_mb"], "MB", round(memory, 3),
                "<= 0.25", memory <= 0.25, **details),
            row("d.time", what + ", time after imports", framework["work_seconds"], pandas["work_seconds"], "s",
                round(speed, 2), "<= 0.5", speed <= 0.5, records=n, cached_seconds=cached["work_seconds"],
                import_seconds={"framework": framework["import_seconds"], "pandas": pandas["import_seconds"]},
                process_seconds={"framework": framework["seconds"], "pandas": pandas["seconds"]})]
