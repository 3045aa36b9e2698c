"""Peak memory and wall time of ``prepare_data.py`` on a synthetic LF-AmazonTitles-sized file.

Writes ``--records`` JSON lines (default 2M, about 1.3 GB) in the LF-AmazonTitles layout — HTML
and entities in the descriptions, odd unicode, ~1% exact duplicates, bad records (null, numeric or
missing fields: valid JSON, so pandas reads the same file), empty and too-short descriptions — to
a temp dir, then runs, each in its own subprocess:

  1. ``python prepare_data.py data=amazon data.train_file=<file> data.test_file=null`` (cold cache)
  2. the same again (the Arrow cache is reused: the cost train.py pays)
  3. ``pandas.read_json(<file>, lines=True)`` for comparison (``--no-pandas`` skips it)

Peak RSS is the child's ``ru_maxrss`` from ``os.wait4``. Prints a table and writes the figures
to ``bench/prepare_memory.json`` (``--out``).

    python bench/prepare_memory.py [--records 2000000] [--no-pandas] [--keep]
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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


def make_line(rng: random.Random, uid: int) -> str:
    b, p, c = rng.choice(BRANDS), rng.choice(PRODUCTS), rng.choice(COLORS)
    f, g, h = rng.sample(FEATURES, 3)
    title = f"{b} {p.title()} - {c}, Model {rng.randrange(10_000)}"
    content = " ".join(rng.choice(WRAPS).format(s.format(b=b, p=p, c=c.lower(), f=f, g=g, h=h))
                       for s in rng.sample(SENTENCES, rng.randint(4, 6)))
    roll = rng.random()
    if roll < 0.003:
        content = "<p> </p>"  # empty after cleaning
    elif roll < 0.005:
        content = "Great."  # too short
    elif roll < 0.006:
        content = title  # only repeats the title
    record = {"uid": f"B{uid:09d}", "title": title, "content": content,
              "target_ind": [rng.randrange(1_300_000) for _ in range(rng.randint(1, 5))],
              "target_rel": [1.0] * rng.randint(1, 5)}
    if roll > 0.9995:
        record["content"] = None  # bad records
    elif roll > 0.999:
        record["title"] = 12345
    elif roll > 0.9985:
        del record["title"]
    return json.dumps(record, ensure_ascii=False)


def write_file(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    recent: list[str] = []
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            if recent and rng.random() < 0.01:
                line = rng.choice(recent)  # an exact duplicate of a recent line
            else:
                line = make_line(rng, i)
                recent = (recent + [line])[-1000:] if i % 97 == 0 else recent
            f.write(line + "\n")


def run(cmd: list[str], env: dict) -> dict:
    """Wall time, peak RSS (MB) and exit code of one subprocess."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read()  # drained while it runs, so a chatty child never blocks
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    figures = {"seconds": round(time.perf_counter() - start, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024),
               "exit_code": proc.returncode}
    if proc.returncode:
        figures["stderr_tail"] = stderr.decode(errors="replace")[-2000:]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument("--no-pandas", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (file, cache, report)")
    parser.add_argument("--out", default=str(ROOT / "bench/prepare_memory.json"))
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="prepare_memory_"))
    try:
        data = tmp / "trn.json"
        start = time.perf_counter()
        write_file(data, args.records)
        print(f"wrote {args.records:,} records, {data.stat().st_size / 1e9:.2f} GB in "
              f"{time.perf_counter() - start:.0f} s: {data}", flush=True)
        env = {**os.environ, "LORAFIT_CACHE": str(tmp / "cache"), "PYTHONWARNINGS": "ignore"}
        prepare = [sys.executable, str(ROOT / "prepare_data.py"), "data=amazon", f"data.train_file={data}",
                   "data.test_file=null"]
        results = {"records": args.records, "file_gb": round(data.stat().st_size / 1e9, 2), "cpus": os.cpu_count()}
        results["prepare_data (cold cache)"] = run([*prepare, f"hydra.run.dir={tmp / 'run1'}"], env)
        results["prepare_data (cached)"] = run([*prepare, f"hydra.run.dir={tmp / 'run2'}"], env)
        report = tmp / "run1/data_report.json"
        if report.is_file():
            results["report"] = {k: v for k, v in json.loads(report.read_text()).items()
                                 if k in ("records_read", "kept", "skipped", "duplicates")}
        if not args.no_pandas:
            code = f"import pandas; df = pandas.read_json({str(data)!r}, lines=True); print(len(df))"
            results["pandas.read_json(lines=True)"] = run([sys.executable, "-c", code], env)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{'run':32} {'wall s':>8} {'peak RSS MB':>12} {'exit':>5}")
    for name, fig in results.items():
        if isinstance(fig, dict) and "seconds" in fig:
            print(f"{name:32} {fig['seconds']:>8} {fig['peak_rss_mb']:>12} {fig['exit_code']:>5}")
            if fig["exit_code"]:
                print(fig["stderr_tail"])
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nfigures: {args.out}")


if __name__ == "__main__":
    main()
