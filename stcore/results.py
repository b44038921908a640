"""Runs: execute a parameterised notebook with papermill into ``results/<profile>/<dataset>/<method>/<setting>/``.

A run folder holds the executed ``notebook.ipynb``, what the notebook wrote (tables, figures) and
``provenance.json``. It appears in one rename when the run succeeds; a failed run leaves nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pandas as pd

from . import _settings
from ._io import atomic_dir, write_json

PACKAGES = ["stcore", "numpy", "pandas", "scipy", "anndata", "scanpy", "squidpy", "matplotlib",
            "papermill", "jupytext", "torch", "torchvision", "timm", "snakemake", "jupyter-book"]


def run_notebook(notebook: str | Path, out_dir: str | Path, parameters: dict, *,
                 timeout: int = 1800) -> Path:
    """Execute a jupytext notebook with papermill; write the run folder atomically.

    The notebook runs in the (temporary) run folder and receives ``parameters`` plus
    ``out_dir="."``, so re-executing the stored notebook (nbval) writes beside it again.
    Returns ``out_dir``. Writes ``notebook.ipynb`` and ``provenance.json`` (git commit,
    parameters, data checksums, package versions, device, wall time, seed).
    """
    import jupytext
    import papermill

    notebook, out_dir = Path(notebook), Path(out_dir)
    start = time.perf_counter()
    with atomic_dir(out_dir) as tmp:
        papermill.execute_notebook(jupytext.read(notebook), str(tmp / "notebook.ipynb"),
                                   parameters={**parameters, "out_dir": "."},
                                   kernel_name="python3", language="python", cwd=str(tmp),
                                   execution_timeout=timeout, progress_bar=False)
        write_json(tmp / "provenance.json",
                   provenance(notebook, parameters, wall_s=time.perf_counter() - start))
    return out_dir


def provenance(notebook: str | Path, parameters: dict, *, wall_s: float) -> dict:
    """What made a run: code version, inputs (with checksums), environment, machine and time."""
    from .data import registry

    dataset = parameters.get("dataset")
    checksums = registry.get(dataset).checksums() if dataset in registry.datasets() else {}
    return {
        "notebook": str(notebook), "parameters": parameters, "seed": parameters.get("seed", 0),
        "git": git_state(), "data": {"mirror": str(_settings.mirror_dir()), "sha256": checksums},
        "packages": package_versions(), "device": device(), "wall_s": round(wall_s, 2),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def git_state() -> dict:
    """Commit of the working tree and whether it had uncommitted changes."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=_settings.REPO_ROOT, capture_output=True,
                              text=True, check=False).stdout.strip()
    return {"commit": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def package_versions() -> dict:
    """Installed versions of the packages that shape results."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def device() -> dict:
    """The machine: CPU, cores, and GPU names from ``nvidia-smi`` when there is one."""
    import os

    gpus = []
    try:
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20, check=True).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        pass
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "gpus": [g for g in gpus if g.strip()]}


def collect(root: str | Path) -> pd.DataFrame:
    """One row per finished run under ``root`` (e.g. ``results/cpu``), read from provenance files."""
    rows = []
    for prov in sorted(Path(root).glob("*/*/*/provenance.json")):
        info = json.loads(prov.read_text())
        dataset, method, setting = prov.parent.relative_to(root).parts
        rows.append({"dataset": dataset, "method": method, "setting": setting,
                     "commit": (info["git"]["commit"] or "")[:10] + ("+dirty" if info["git"]["dirty"] else ""),
                     "wall time (s)": info["wall_s"], "device": ", ".join(info["device"]["gpus"])
                     or f"CPU × {info['device']['cpus']}", "finished": info["finished"],
                     "data files": len(info["data"]["sha256"])})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    """``python -m stcore.results NOTEBOOK OUT_DIR --params JSON``: one run (used by Snakemake)."""
    parser = argparse.ArgumentParser(prog="python -m stcore.results", description=main.__doc__)
    parser.add_argument("notebook")
    parser.add_argument("out_dir")
    parser.add_argument("--params", default="{}", help="JSON object of notebook parameters")
    parser.add_argument("--timeout", type=int, default=1800, help="per-cell timeout in seconds")
    args = parser.parse_args(argv)
    params = json.loads(args.params)
    if not isinstance(params, dict):
        parser.error("--params must be a JSON object")
    run_notebook(args.notebook, args.out_dir, params, timeout=args.timeout)


if __name__ == "__main__":
    main(sys.argv[1:])
