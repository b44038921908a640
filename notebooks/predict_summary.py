# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Prediction models compared
#
# Reads the finished prediction runs of one dataset (`results_dir/predict/*/summary.csv`,
# `sections.csv`, `per_gene.csv`): every model's scores by target (raw, completed) and protocol
# (patient_out, section_out), the leak of section_out measured on the same test sections,
# which models beat the train mean, per-gene PCCs, and maps of predicted against measured
# expression on H&E. Nothing is trained here. Scores: mean over test sections [95% bootstrap
# interval over sections]; "—" marks an undefined value (the PCCs of a constant prediction).

# %% tags=["parameters"]
dataset = "her2st"
profile = "cpu"
setting = "summary"
sections = None
preprocess_params = {}
results_dir = "results/cpu/her2st"
genes_shown = ["ERBB2", "FASN", "CD74"]
out_dir = "."

# %% tags=["hide-input"]
# %matplotlib inline
from pathlib import Path

import anndata as ad
import pandas as pd
from IPython.display import Markdown, display

from stcore import plotting
from stcore import preprocess as pp
from stcore.metrics import mean_ci
from stcore.models import MODELS
from stcore.plotting import show

plotting.setup_notebook()
out = Path(out_dir)
runs = sorted(p.parent for p in Path(results_dir, "predict").glob("*/summary.csv")
              if p.parent.name != setting and not p.parent.name.startswith("."))
if not runs:
    raise FileNotFoundError(f"no prediction run under {Path(results_dir, 'predict')}")
summaries = pd.concat([pd.read_csv(r / "summary.csv").assign(run=r.name) for r in runs],
                      ignore_index=True)
order = [m for m in MODELS if m in set(summaries["model"])] + \
    sorted(set(summaries["model"]) - set(MODELS))
RANK = {**{m: i for i, m in enumerate(order)}, "raw": 0, "completed": 1, "patient_out": 0,
        "section_out": 1}
summaries = summaries.sort_values(["model", "protocol", "target"],
                                  key=lambda s: s.map(lambda v: RANK.get(v, len(RANK))))
summaries.to_csv(out / "all_summaries.csv", index=False)
KEYS = ["model", "target", "protocol"]


def read_all(name):
    """``name`` of every run, tagged with its run folder, model, target and protocol."""
    meta = summaries.set_index("run", drop=False)[["run", *KEYS]]
    return pd.concat([pd.read_csv(r / name).assign(**meta.loc[r.name]) for r in runs
                      if (r / name).exists()] or [pd.DataFrame(columns=KEYS)], ignore_index=True)


by_section, by_gene = read_all("sections.csv"), read_all("per_gene.csv")
display(Markdown(f"{len(runs)} prediction runs of `{dataset}` (profile `{profile}`): "
                 f"{', '.join(f'`{r.name}`' for r in runs)}."))

# %% [markdown]
# ## Raw and completed targets (patient_out)
# PCC-Gene (higher is better) and MSE (lower is better), both on the measured entries of each
# test section whatever the training target.

# %% tags=["hide-input"]
patient = summaries[(summaries["protocol"] == "patient_out")
                    & summaries["target"].isin(["raw", "completed"])]
table = plotting.ci_table(patient.sort_values("target", key=lambda s: s.map(RANK), kind="stable"),
                          ["PCC-Gene", "MSE"], columns=["target"], order=order)
table.to_csv(out / "table_targets.csv")
display(table)
if len(patient):
    fig = plotting.metric_ci(patient, ["PCC-Gene", "MSE"], hue="target", order=order)
    plotting.save(fig, out / "figures" / "raw_vs_completed.png")
    show(fig)

# %% [markdown]
# ## section_out against patient_out (raw target)
# section_out keeps the serial sections of the test patient in training; patient_out does not.
# Every section is tested once under each protocol, so the gap is computed section by section
# (section_out − patient_out), then averaged with a bootstrap interval over sections.

# %% tags=["hide-input"]
raw = summaries[summaries["target"] == "raw"]
if raw["protocol"].nunique() > 1:
    fig = plotting.metric_ci(raw, ["PCC-Gene", "MSE"], hue="protocol", order=order)
    plotting.save(fig, out / "figures" / "protocols.png")
    show(fig)
raw_sections = by_section[by_section["target"] == "raw"]
pairs = raw_sections[raw_sections["protocol"] == "section_out"].merge(
    raw_sections[raw_sections["protocol"] == "patient_out"], on=["model", "section"],
    suffixes=("_section", "_patient"))
rows = []
for model, d in pairs.groupby("model", sort=False):
    row = {"model": model, "n_sections": len(d)}
    for m in ("PCC-Gene", "MSE"):
        gap = (d[f"{m}_section"] - d[f"{m}_patient"]).dropna()
        row[m], row[f"{m}_low"], row[f"{m}_high"] = mean_ci(gap)
    rows.append(row)
columns = ["model", "n_sections"] + [f"{m}{b}" for m in ("PCC-Gene", "MSE")
                                     for b in ("", "_low", "_high")]
gaps = pd.DataFrame(rows, columns=columns).sort_values("model", key=lambda s: s.map(RANK))
gaps.set_index("model").to_csv(out / "protocol_gap.csv")
display(gaps.set_index("model").round(3) if len(gaps) else
        Markdown("No model has runs under both protocols with the raw target."))

# %% [markdown]
# ## Does a model beat the train mean?
# The train mean predicts a constant, so its PCC is undefined: it counts as 0 here. `beats_pcc`:
# the lower bound of the model's PCC-Gene interval is above 0; `beats_mse`: its MSE is below the
# train mean's MSE for the same target and protocol (empty where that run is missing).

# %% tags=["hide-input"]
baseline = summaries[summaries["model"] == "train_mean"].set_index(["target", "protocol"])["MSE"]
beats = summaries[summaries["model"] != "train_mean"][
    KEYS + ["PCC-Gene", "PCC-Gene_low", "MSE"]].reset_index(drop=True)
beats["train_mean_MSE"] = [baseline.get((t, p)) for t, p in zip(beats["target"], beats["protocol"])]
beats["beats_pcc"] = beats["PCC-Gene_low"].fillna(float("-inf")) > 0
beats["beats_mse"] = (beats["MSE"] < beats["train_mean_MSE"]).where(beats["train_mean_MSE"].notna())
beats.to_csv(out / "beats_train_mean.csv", index=False)
display(beats.round(3))

# %% [markdown]
# ## Per-gene PCC (patient_out)
# Each gene's PCC averaged over the test sections, one box per model and target. The train
# mean's PCCs are undefined and not shown.

# %% tags=["hide-input"]
genes = by_gene[by_gene["protocol"].eq("patient_out")
                & by_gene["target"].isin(["raw", "completed"])]
genes = genes.groupby(["model", "target", "gene"], sort=False)["pcc"].mean().reset_index()
if len(genes):
    fig = plotting.box_by(genes, "pcc", x="model", hue="target", order=order)
    plotting.save(fig, out / "figures" / "per_gene_pcc.png")
    show(fig)

# %% [markdown]
# ## Predicted and measured expression on H&E
# The model with the best PCC-Gene under completed / patient_out (else over all runs), on its
# largest test section: measured expression (missing entries as grey crosses), its out-of-fold
# prediction and ridge's for the same target and protocol. Genes: those of `genes_shown` in the
# panel, filled up to three with the model's best-predicted genes (mean per-gene PCC).

# %% tags=["hide-input"]
chosen = summaries[(summaries["target"] == "completed") & (summaries["protocol"] == "patient_out")]
chosen = chosen if chosen["PCC-Gene"].notna().any() else summaries
best = chosen.loc[chosen["PCC-Gene"].fillna(float("-inf")).idxmax()]
ridge = summaries[summaries["model"].eq("ridge") & summaries["target"].eq(best["target"])
                  & summaries["protocol"].eq(best["protocol"])]
files = {m: Path(results_dir, "predict", r, "predictions.h5ad")
         for m, r in [(best["model"], best["run"]), *zip(ridge["model"], ridge["run"])]}
files = {m: f for m, f in files.items() if f.exists()}
if best["model"] in files:
    pred = ad.read_h5ad(files[best["model"]])
    adata = pp.preprocess(dataset, sections=sections, **preprocess_params)[pred.obs_names]
    section = pred.obs["slide_id"].value_counts().index[0]
    ranked = by_gene[by_gene["run"] == best["run"]].groupby("gene")["pcc"].mean()
    shown = [g for g in genes_shown if g in pred.var_names]
    shown += [g for g in ranked.sort_values(ascending=False).index
              if g not in shown and g in pred.var_names][:max(0, 3 - len(shown))]
    panels = {"measured": pred.layers["truth"]}
    panels.update({f"{m} ({best['target']})": ad.read_h5ad(f)[pred.obs_names, pred.var_names].X
                   for m, f in files.items()})
    fig = plotting.expression_maps(adata, section, shown, panels,
                                   missing={"measured": ~pred.layers["valid"]}, on_he=True)
    plotting.save(fig, out / "figures" / "maps.png")
    show(fig)
else:
    display(Markdown(f"No `predictions.h5ad` in run `{best['run']}`: maps skipped."))
