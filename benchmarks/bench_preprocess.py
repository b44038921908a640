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
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stcore._io import write_json
from stcore.results import device, git_state, package_versions

ROOT = Path(__file__).resolve().parent.parent
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


def child(code: str, *args: str, cache: str) -> dict:
    env = {**os.environ, "STCORE_CACHE_DIR": cache}
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def med(values) -> float:
    return round(statistics.median(values), 2)


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
                table[f"{label}: wall time (s)"] = med(r["seconds"] for r in runs)
                table[f"{label}: peak memory (MiB)"] = med(r["peak_mib"] for r in runs)
                total = statistics.median(r["seconds"] for r in runs)
                shares[label] = {step: f"{med(r['steps'][step] for r in runs)} s "
                                       f"({100 * statistics.median(r['steps'][step] for r in runs) / total:.0f}%)"
                                 for step in runs[0]["steps"]}
        child(PIPELINE, "her2st", "none", cache=cache)
        subprocess.run([sys.executable, "-c", "from stcore import preprocess as pp; pp.preprocess('her2st')"],
                       env={**os.environ, "STCORE_CACHE_DIR": cache}, check=True, capture_output=True)
        for attention in ("neighbours", "batch"):
            print(f"SpaCKLE ({attention}) ...", flush=True)
            runs = [child(SPACKLE, attention, str(args.steps), cache=cache) for _ in range(args.repeats)]
            per100 = statistics.median(100 * r["seconds"] / r["steps"] for r in runs)
            table[f"SpaCKLE {attention}, her2st 128 genes: s per 100 steps (batch 256)"] = round(per100, 2)
            table[f"SpaCKLE {attention}: peak memory (MiB)"] = med(r["peak_mib"] for r in runs)
    out = {"date": time.strftime("%Y-%m-%d"), "repeats": args.repeats, "results": table,
           "step_shares": shares, "git": git_state(), "device": device(),
           "packages": package_versions()}
    write_json(ROOT / "benchmarks" / "out" / "preprocess.json", out)
    print("| measurement | median |\n|---|---|")
    print("\n".join(f"| {k} | {v} |" for k, v in table.items()))
    steps = list(next(iter(shares.values())))
    print("\n| run | " + " | ".join(steps) + " |\n|---|" + "---|" * len(steps))
    print("\n".join(f"| {k} | " + " | ".join(v[s] for s in steps) + " |" for k, v in shares.items()))


if __name__ == "__main__":
    main()
