"""Foundation benchmarks, medians over repeats; each measurement in a fresh process.

Measures: loading all 36 her2st sections (cold from raw files, warm from the cache) with peak
memory; patch extraction throughput for the 6 her2st H&E sections and the 4 MOB sections; cold vs
warm smoke grid through Snakemake; book build after a finished run.

    .venv/bin/python benchmarks/bench_foundation.py [--repeats 3]      (or: make bench)

Writes ``benchmarks/out/foundation.json`` (with provenance) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, child, markdown, median, write_results

CHILD = """
import json, resource, sys, time
import stcore.data as sd
kind, cache = sys.argv[1], sys.argv[2] == "1"
if kind == "load":
    t = time.perf_counter(); a = sd.load("her2st", cache=cache); dt = time.perf_counter() - t; n = a.n_obs
else:
    name, secs = {"patches_her2st": ("her2st", ["B4", "C2", "C3", "C4", "C5", "C6"]),
                  "patches_mob": ("mob", None)}[kind]
    a = sd.load(name, sections=secs)
    import tempfile
    t = time.perf_counter()
    s = sd.extract_patches(a, size_um=100, out_px=224, store_dir=tempfile.mkdtemp())
    dt = time.perf_counter() - t; n = len(s)
print(json.dumps({"seconds": dt, "n": n, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    table = {}
    with tempfile.TemporaryDirectory() as warm_cache:
        print("her2st load (cold, warm)...", flush=True)
        cold = [child(CHILD, "load", "0", cache=warm_cache) for _ in range(args.repeats)]
        child(CHILD, "load", "1", cache=warm_cache)  # writes the cache
        warm = [child(CHILD, "load", "1", cache=warm_cache) for _ in range(args.repeats)]
        table["her2st load, 36 sections, cold (s)"] = median(r["seconds"] for r in cold)
        table["her2st load, cold, peak memory (MiB)"] = median(r["peak_mib"] for r in cold)
        table["her2st load, warm/cached (s)"] = median(r["seconds"] for r in warm)
        table["her2st load, warm, peak memory (MiB)"] = median(r["peak_mib"] for r in warm)
        for kind, label in [("patches_her2st", "her2st 6 H&E sections"), ("patches_mob", "MOB 4 sections")]:
            print(f"patches {label}...", flush=True)
            runs = [child(CHILD, kind, "1", cache=warm_cache) for _ in range(args.repeats)]
            table[f"patches/s, {label} ({runs[0]['n']} patches, 224 px)"] = \
                median([r["n"] / r["seconds"] for r in runs], 1)
            table[f"patch extraction peak memory, {label} (MiB)"] = \
                median(r["peak_mib"] for r in runs)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    snakemake = [f"{bin_dir}/snakemake", "-s", "workflow/Snakefile", "--configfile",
                 "workflow/config/smoke.yaml", "--cores", "2", "--quiet"]
    colds, warms, books, incr = [], [], [], []
    for _ in range(args.repeats):
        print("smoke grid cold/warm, book...", flush=True)
        with tempfile.TemporaryDirectory() as cache:
            env["STCORE_CACHE_DIR"] = cache
            shutil.rmtree(ROOT / "results" / "smoke", ignore_errors=True)
            colds.append(timed(snakemake, env))
            warms.append(timed(snakemake, env))
        shutil.rmtree(ROOT / "_build", ignore_errors=True)
        books.append(timed([f"{bin_dir}/jupyter-book", "build", ".", "-W", "-n", "--keep-going"], env))
        incr.append(timed([f"{bin_dir}/jupyter-book", "build", ".", "-W", "-n", "--keep-going"], env))
    table["smoke grid, cold (s)"] = median(colds, 1)
    table["smoke grid, warm: nothing to do (s)"] = median(warms, 1)
    table["book build after a finished run, full (s)"] = median(books, 1)
    table["book build, incremental (s)"] = median(incr, 1)
    write_results("foundation", table, args.repeats)
    print(markdown(["measurement", "median"], table.items()))


if __name__ == "__main__":
    main()
