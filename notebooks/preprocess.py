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
# # SpaRED preprocessing
#
# One dataset through SpaRED's standard pipeline (`stcore.preprocess.preprocess`): spot and gene
# filters, TPM with GENCODE merged exon lengths, log2(TPM + 1), the adaptive median filter,
# Moran's I gene selection, ComBat and train-mean deltas. Parameters: `dataset`, `profile`,
# `sections` (`None` = all); the pipeline's parameters come from the registry.

# %% tags=["parameters"]
dataset = "mob"
profile = "cpu"
sections = None
overrides = {}
seed = 0
out_dir = "."

# %% tags=["hide-input"]
# %matplotlib inline
import json
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display

import stcore.data as sd
from stcore import plotting
from stcore import preprocess as pp
from stcore.plotting import show

plotting.setup_notebook()
out = Path(out_dir)
entry = sd.get(dataset)
adata = pp.preprocess(dataset, sections=sections, **overrides)
info = adata.uns["stcore"]["preprocess"]
params = json.loads(info["params"])
display(Markdown(f"**{entry.title}**, profile `{profile}`: {adata.n_obs:,} spots × "
                 f"{adata.n_vars} genes after preprocessing, from "
                 f"{adata.obs['slide_id'].nunique()} sections. Cache key `{info['key']}`."))
display(pd.Series(params, name="value").to_frame())

# %% [markdown]
# ## Spots and genes after each step
# Seconds are wall time of this run's first computation of the step (the pipeline result is
# cached; a cached run shows the times of the run that built it).

# %% tags=["hide-input"]
steps = info["steps"].copy()
steps.to_csv(out / "steps.csv", index=False)
display(steps.style.format({"seconds": "{:.2f}"}).hide(axis="index"))
missing = pd.DataFrame({"missing entries": [info["missing_raw"], info["missing_processed"]]},
                       index=["raw counts (all genes)", "processed (selected genes)"])
missing.to_csv(out / "missing.csv")
display(missing.style.format("{:.1%}"))

# %% [markdown]
# ## Missing values per section
# Fraction of dropout entries (`mask` False) among the selected genes, which the median filter
# fills in `d_log1p` and SpaCKLE later completes in `c_t_log1p`.

# %% tags=["hide-input"]
per_slide = pd.DataFrame({"slide_id": adata.obs["slide_id"].to_numpy(),
                          "missing": 1 - adata.layers["mask"].mean(axis=1)})
table = per_slide.groupby("slide_id", observed=True)["missing"].agg(["mean", "count"])
table = table.rename(columns={"mean": "missing fraction", "count": "spots"})
table["split"] = adata.obs.groupby("slide_id", observed=True)["split"].first()
table.to_csv(out / "missing_per_section.csv")
fig = plotting.missing_by_section(table)
plotting.save(fig, out / "figures" / "missing_per_section.png")
show(fig)

# %% [markdown]
# ## Moran's I
# Mean over sections of each gene's Moran's I on `d_log1p` (legacy ST: 8 grid neighbours). The
# selected genes are those above the line, or the fixed panel when one is configured.

# %% tags=["hide-input"]
moran = info["moran"]
moran.to_csv(out / "moran.csv")
fig = plotting.moran_distribution(moran)
plotting.save(fig, out / "figures" / "moran.png")
show(fig)
display(Markdown(f"{int(moran['selected'].sum())} of {len(moran)} genes selected; top 10:"))
display(moran.sort_values("d_log1p_moran", ascending=False).head(10).style.format(precision=3))

# %% [markdown]
# ## ComBat
# UMAP of the spots before (`log1p`) and after ComBat (`c_log1p`), coloured by the batch key and
# by section. The silhouette of the batch labels on 10 principal components measures how
# strongly spots group by batch (lower = weaker batch effect).

# %% tags=["hide-input"]
embeddings, silhouettes = pp.batch_embeddings(adata, layers=("log1p", "c_log1p"),
                                              key=params["combat_key"], seed=seed)
silhouettes.to_csv(out / "combat_silhouette.csv")
display(silhouettes.style.format("{:.3f}"))
fig = plotting.embedding_grid(embeddings, adata.obs, [params["combat_key"], "slide_id"])
plotting.save(fig, out / "figures" / "combat_umap.png")
show(fig)
