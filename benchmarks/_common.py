"""Helpers shared by the benchmark scripts: a measurement in a fresh process, medians, output."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from stcore._io import write_json
from stcore.results import device, git_state, package_versions

ROOT = Path(__file__).resolve().parent.parent


def child(code: str, *args: str, cache: str | None = None) -> dict:
    """Run ``python -c code args`` in a fresh process; its last stdout line, parsed as JSON.

    ``cache`` sets ``STCORE_CACHE_DIR`` for the child (default: inherited). A failing child
    raises with the end of its stderr.
    """
    env = {**os.environ, **({"STCORE_CACHE_DIR": cache} if cache else {})}
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                         text=True)
    if out.returncode:
        raise RuntimeError(f"benchmark child {args} failed ({out.returncode}):\n"
                           f"{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def median(values, digits: int = 2) -> float:
    return round(statistics.median(values), digits)


def write_results(name: str, results, repeats: int, **extra) -> Path:
    """``benchmarks/out/{name}.json``: date, repeats, results, ``extra`` and provenance."""
    path = ROOT / "benchmarks" / "out" / f"{name}.json"
    write_json(path, {"date": time.strftime("%Y-%m-%d"), "repeats": repeats, "results": results,
                      **extra, "git": git_state(), "device": device(),
                      "packages": package_versions()})
    return path


def markdown(header, rows) -> str:
    """A Markdown table of ``rows`` (sequences) under ``header``."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|---" * len(header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])
