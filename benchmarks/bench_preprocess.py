"""Preprocessing and completion benchmarks, medians over repeats; each measurement in a fresh process.

Measures: the full SpaRED pipeline on her2st (36 sections) and MOB (4 sections) from the cached raw
AnnData, wall time, peak memory and each step's share (Moran's I without permutations and with
``--perms`` of them, default 100; SpaRED runs 1000, which only add p-values); SpaCKLE training on
CPU (her2st, 128 genes, both attention variants): seconds per 100 steps.

    .venv/bin/python benchmarks/bench_preprocess.py [--repeats 3] [--steps 200] [--perms 100]

Writes ``benchmarks/out/preprocess.json`` (with provenance) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

from _common import child, markdown, median, write_results

PIPELINE = """
import json, resource, sys, time, logging
import stcore.data as sd
from stcore import preprocess as pp
name, perms = sys.argv[1], None if sys.argv[2] == "none" else int(sys.argv[2])
raw = sd.load(name)  # cached raw AnnData: the pipeline alone is timed
params = pp.Params.for_dataset(name, moran_perms=perms)
t = time.perf_counter(); a = pp.spared(raw, params); dt = time.perf_counter() - t
steps = a.uns["stcore"]["preprocess"]["steps"]
print(json.dumps({"seconds": dt, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "steps": dict(zip(steps["step"], steps["seconds"])), "shape": list(a.shape)}))
"""
SPACKLE = """
import json, resource, sys, time
from stcore import preprocess as pp
from stcore.completion import SpaCKLE
attention, steps = sys.argv[1], int(sys.argv[2])
a = pp.preprocess("her2st")
m = SpaCKLE(attention=attention, max_steps=steps)
t = time.perf_counter(); m.fit(a, seed=0); dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "steps": steps, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200, help="SpaCKLE steps timed per run")
    parser.add_argument("--cache", default=None, help="stcore cache to reuse (default: a fresh one)")
    parser.add_argument("--perms", default="100", help="Moran permutations timed besides none "
                        "(SpaRED uses 1000; the cost is linear in it)")
    args = parser.parse_args()
    table, shares = {}, {}
    with tempfile.TemporaryDirectory() as fresh:
        cache = args.cache or fresh
        for name in ("her2st", "mob"):
            child(PIPELINE, name, "none", cache=cache)  # warm: raw AnnData and GTF table cached
            for perms in ("none", args.perms):
                print(f"{name}: pipeline, Moran permutations {perms} ...", flush=True)
                runs = [child(PIPELINE, name, perms, cache=cache) for _ in range(args.repeats)]
                label = f"{name} ({runs[0]['shape'][0]:,} spots → {runs[0]['shape'][1]} genes), " \
                        f"Moran perms {perms}"
                table[f"{label}: wall time (s)"] = median(r["seconds"] for r in runs)
                table[f"{label}: peak memory (MiB)"] = median(r["peak_mib"] for r in runs)
                total = statistics.median(r["seconds"] for r in runs)
                shares[label] = {step: f"{median(r['steps'][step] for r in runs)} s "
                                       f"({100 * statistics.median(r['steps'][step] for r in runs) / total:.0f}%)"
                                 for step in runs[0]["steps"]}
        child(PIPELINE, "her2st", "none", cache=cache)
        subprocess.run([sys.executable, "-c", "from stcore import preprocess as pp; pp.preprocess('her2st')"],
                       env={**os.environ, "STCORE_CACHE_DIR": cache}, check=True, capture_output=True)
        for attention in ("neighbours", "batch"):
            print(f"SpaCKLE ({attention}) ...", flush=True)
            runs = [child(SPACKLE, attention, str(args.steps), cache=cache) for _ in range(args.repeats)]
            table[f"SpaCKLE {attention}, her2st 128 genes: s per 100 steps (batch 256)"] = \
                median(100 * r["seconds"] / r["steps"] for r in runs)
            table[f"SpaCKLE {attention}: peak memory (MiB)"] = median(r["peak_mib"] for r in runs)
    write_results("preprocess", table, args.repeats, step_shares=shares)
    print(markdown(["measurement", "median"], table.items()))
    steps = list(next(iter(shares.values())))
    print("\n" + markdown(["run", *steps], ([k, *(v[s] for s in steps)] for k, v in shares.items())))


if __name__ == "__main__":
    main()
