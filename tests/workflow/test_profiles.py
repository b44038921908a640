"""workflow/: every profile's grid resolves (dry run), with the runs and dependencies it names."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ["smoke", "cpu", "paper"]


def dry_run(profile: str) -> str:
    """``snakemake -n --forceall`` of a profile: every job it would run, nothing touched."""
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", "workflow/Snakefile", "--configfile",
         f"workflow/config/{profile}.yaml", "--cores", "1", "-n", "--forceall", "--nolock"],
        cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout


def expected_runs(profile: str) -> int:
    """Runs named by the profile: one per dataset, times the product of the grid's values."""
    config = yaml.safe_load((ROOT / "workflow" / "config" / f"{profile}.yaml").read_text())
    total = 0
    for entry in config["runs"]:
        n = len(entry["datasets"])
        for values in entry.get("grid", {}).values():
            n *= len(values)
        total += n
    return total


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_grid_resolves(profile):
    text = dry_run(profile)
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", text, flags=re.M))
    assert int(counts["run"]) == expected_runs(profile)
    assert int(counts["book_pages"]) == 1
    # every model of the predict grid runs on both targets, with a distinct setting each
    settings = set(re.findall(r"setting=([\w.-]+)", text))
    for model in ("train_mean", "ridge", "hist2st", "bleep"):
        assert f"{model}-raw-patient_out" in settings and f"{model}-completed-patient_out" in settings


def test_completed_target_waits_for_the_completion_run():
    text = dry_run("smoke")
    jobs = text.split("rule run:")
    completed = [j for j in jobs if "setting=ridge-completed-patient_out" in j and "her2st" in j]
    raw = [j for j in jobs if "setting=ridge-raw-patient_out" in j and "dataset=her2st" in j]
    assert completed and raw
    assert "results/smoke/her2st/completion/spackle-batch/provenance.json" in completed[0]
    # `after: [preprocess, completion/spackle-batch]` names one run, not every completion run
    assert "completion/knn/provenance.json" not in completed[0]
