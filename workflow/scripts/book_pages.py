"""Assemble the book's generated pages from the finished runs of one profile.

Writes ``book/generated/``: ``data/<dataset>.ipynb`` (the executed overview notebooks, titled per
dataset), ``runs.md`` (the table of runs with provenance) and ``profile.md``. The book only renders
these; it never executes anything.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import nbformat

from stcore._io import atomic_dir
from stcore.data import registry
from stcore.results import collect

BOOK_DATASETS = ["her2st", "mob", "visium_format_sample"]  # the Data chapter's pages (_toc.yml)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--results", default="results")
    parser.add_argument("--out", default="book/generated")
    args = parser.parse_args()
    root = Path(args.results) / args.profile
    with atomic_dir(args.out) as tmp:
        (tmp / "data").mkdir()
        for name in BOOK_DATASETS:
            write_dataset_page(name, root / name / "overview" / "default" / "notebook.ipynb",
                               tmp / "data" / f"{name}.ipynb", args.profile)
        (tmp / "datasets.md").write_text(dataset_table(root))
        runs = collect(root)
        table = runs.to_markdown(index=False) if len(runs) else "_No finished runs._"
        (tmp / "runs.md").write_text(f"Runs of profile `{args.profile}` ({len(runs)} runs):\n\n{table}\n")
        (tmp / "profile.md").write_text(f"This build shows the results of profile **`{args.profile}`**.\n")
        for prov in root.glob("*/*/*/provenance.json"):
            target = tmp / "provenance" / prov.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(prov, target)


def dataset_table(root: Path) -> str:
    """Markdown table of the datasets as the runs saw them (from each run's ``qc.csv``)."""
    import pandas as pd

    rows = []
    for name in BOOK_DATASETS:
        entry, qc_file = registry.get(name), root / name / "overview" / "default" / "qc.csv"
        qc = pd.read_csv(qc_file) if qc_file.exists() else None
        rows.append({"dataset": name, "organism": entry.organism, "technology": entry.technology,
                     "sections": "—" if qc is None else len(qc),
                     "spots": "—" if qc is None else f"{qc['spots'].sum():,}",
                     "sections with H&E": "—" if qc is None else int(qc["H&E"].sum()),
                     "patients/animals": "—" if qc is None else qc["patient"].nunique()})
    return pd.DataFrame(rows).to_markdown(index=False) + "\n"


def write_dataset_page(name: str, executed: Path, target: Path, profile: str) -> None:
    """Copy an executed notebook, retitled for the book; a short page when the run is missing."""
    title = f"{name}: {registry.get(name).title}"
    if executed.exists():
        nb = nbformat.read(executed, as_version=4)
        first = nb.cells[0]
        first.source = "\n".join([f"# {title}"] + first.source.splitlines()[1:])
    else:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
            f"# {title}\n\nProfile `{profile}` has no overview run of this dataset.")])
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3",
                                          "language": "python"})
    target.write_text(json.dumps(nb, indent=1))


if __name__ == "__main__":
    main()
