"""Assemble the book's generated pages from the finished runs of one profile.

Writes ``book/generated/``: ``data/<dataset>.ipynb`` (the executed overview notebooks, titled per
dataset), ``preprocess/<dataset>.ipynb``, ``completion/<dataset>.ipynb`` and
``predict/<dataset>.ipynb`` (the executed preprocessing, completion-summary and
prediction-summary notebooks), ``completion_table.md`` (methods × datasets × masking rate, from
the runs' ``metrics.csv``), ``predict_table.md`` (models × target · protocol per dataset, from the
runs' ``summary.csv``), ``runs.md`` (the table of runs with provenance) and ``profile.md``.
The book only renders these; it never executes anything.
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
COMPLETION_DATASETS = ["her2st", "mob"]  # the preprocessing and completion chapters' pages
PREDICT_DATASETS = ["her2st", "mob"]  # the prediction chapter's pages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--results", default="results")
    parser.add_argument("--out", default="book/generated")
    args = parser.parse_args()
    root = Path(args.results) / args.profile
    with atomic_dir(args.out) as tmp:
        for folder in ("data", "preprocess", "completion", "predict"):
            (tmp / folder).mkdir()
        for name in BOOK_DATASETS:
            write_dataset_page(name, root / name / "overview" / "default" / "notebook.ipynb",
                               tmp / "data" / f"{name}.ipynb", args.profile)
        for name in COMPLETION_DATASETS:
            write_dataset_page(name, root / name / "preprocess" / "default" / "notebook.ipynb",
                               tmp / "preprocess" / f"{name}.ipynb", args.profile,
                               title=f"Preprocessing {name}")
            write_dataset_page(name, root / name / "completion" / "summary" / "notebook.ipynb",
                               tmp / "completion" / f"{name}.ipynb", args.profile,
                               title=f"Completion on {name}")
        for name in PREDICT_DATASETS:
            write_dataset_page(name, root / name / "predict" / "summary" / "notebook.ipynb",
                               tmp / "predict" / f"{name}.ipynb", args.profile,
                               title=f"Prediction on {name}")
        (tmp / "completion_table.md").write_text(completion_tables(root))
        (tmp / "predict_table.md").write_text(predict_tables(root, args.profile))
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


def completion_tables(root: Path) -> str:
    """Markdown: MSE (mean ± sd over seeds) of every completion method on hidden test entries,
    methods × (dataset, masking rate), and SpaCKLE's MSE reduction against each method."""
    import pandas as pd

    from stcore.completion import mse_reduction, summarize

    files = run_files(root, "completion", "metrics.csv", datasets=COMPLETION_DATASETS)
    if not files:
        return "_No completion runs in this profile._\n"
    scores = pd.concat([pd.read_csv(p).assign(dataset=p.parts[-4], method=p.parent.name)
                        for p in files], ignore_index=True)
    scores = scores[scores["split"] == "test"]
    mse = pd.concat([summarize(d).assign(dataset=k) for k, d in scores.groupby("dataset")])
    parts = [("MSE on hidden test entries (mean ± sd over seeds; lower is better)",
              _pivot(mse, "mse_mean", "mse_sd", 3))]
    for reference in ("spackle-neighbours", "spackle-batch"):
        red = [mse_reduction(d, reference=reference).assign(dataset=k)
               for k, d in scores.groupby("dataset") if reference in set(d["method"])]
        if red:
            parts.append((f"`{reference}`: MSE reduction in % against each method (mean ± sd "
                          "over seeds, paired; positive = SpaCKLE better)",
                          _pivot(pd.concat(red), "reduction_mean", "reduction_sd", 1)))
    n_seeds = scores.groupby(["dataset", "method"])["seed"].nunique()
    text = "\n".join(f"**{label}**\n\n{table.to_markdown()}\n" for label, table in parts)
    return text + f"\nSeeds per cell: {n_seeds.min()}–{n_seeds.max()}.\n"


def predict_tables(root: Path, profile: str) -> str:
    """Markdown: per dataset, PCC-Gene and MSE of every prediction model (mean over test sections
    [95% bootstrap interval over sections]), models × (target · protocol)."""
    import pandas as pd

    from stcore.models import MODELS
    from stcore.plotting import ci_table

    files = run_files(root, "predict", "summary.csv")
    if not files:
        return "_No prediction runs in this profile._\n"
    runs = pd.concat([pd.read_csv(p) for p in files], ignore_index=True)
    rank = {**{m: i for i, m in enumerate(MODELS)}, "patient_out": 0, "section_out": 1,
            "raw": 0, "completed": 1}
    runs = runs.sort_values(["dataset", "protocol", "target", "model"],
                            key=lambda s: s.map(lambda v: rank.get(v, len(rank))))
    order = list(MODELS) + sorted(set(runs["model"]) - set(MODELS))
    text = [f"Prediction runs of profile `{profile}`: mean over test sections [95% bootstrap "
            "interval over sections]; columns: target · protocol; — = undefined (the PCC of a "
            "constant prediction such as the train mean); empty = no run.\n"]
    for dataset, d in runs.groupby("dataset", sort=False):
        for metric, better in (("PCC-Gene", "higher"), ("MSE", "lower")):
            table = ci_table(d, [metric], columns=["target", "protocol"], order=order)
            text.append(f"**{dataset}: {metric} ({better} is better)**\n\n{table.to_markdown()}\n")
    return "\n".join(text)


def run_files(root: Path, method: str, name: str, *,
              datasets: list[str] | None = None) -> list[Path]:
    """``root/<dataset>/<method>/<setting>/<name>`` of the runs (every dataset unless
    ``datasets``), leaving out the summary run and hidden folders."""
    return [p for dataset in (datasets or ["*"])
            for p in sorted(root.glob(f"{dataset}/{method}/*/{name}"))
            if p.parent.name != "summary" and not p.parent.name.startswith(".")]


def _pivot(table, mean: str, sd: str, digits: int):
    """methods × (dataset · % hidden) with "mean ± sd" cells."""
    cells = table.assign(
        value=[f"{m:.{digits}f} ± {s:.{digits}f}" for m, s in zip(table[mean], table[sd])],
        column=[f"{d} · {round(f * 100)}%" for d, f in zip(table["dataset"], table["fraction"])])
    wide = cells.pivot_table(index="method", columns="column", values="value", aggfunc="first")
    order = sorted(wide.columns, key=lambda c: (c.split(" · ")[0], int(c.split(" · ")[1][:-1])))
    return wide[order]


def write_dataset_page(name: str, executed: Path, target: Path, profile: str, *,
                       title: str | None = None) -> None:
    """Copy an executed notebook, retitled for the book; a short page when the run is missing."""
    title = title or f"{name}: {registry.get(name).title}"
    if executed.exists():
        nb = nbformat.read(executed, as_version=4)
        first = nb.cells[0]
        first.source = "\n".join([f"# {title}"] + first.source.splitlines()[1:])
    else:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
            f"# {title}\n\nProfile `{profile}` has no such run of this dataset.")])
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3",
                                          "language": "python"})
    target.write_text(json.dumps(nb, indent=1))


if __name__ == "__main__":
    main()
