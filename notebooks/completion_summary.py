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
# # Completion methods compared
#
# Reads the finished completion runs of one dataset (`results_dir/completion/*/metrics.csv`):
# every method's error on hidden entries by masking rate, SpaCKLE's relative MSE reduction against
# each alternative (paired by seed), and maps of a few genes as measured (raw), after SpaRED's
# adaptive median filter and after SpaCKLE. Nothing is trained here.

# %% tags=["parameters"]
dataset = "mob"
profile = "cpu"
setting = "summary"
sections = None
results_dir = "results/cpu/mob"
reference = "spackle-neighbours"
n_genes_shown = 3
seed = 0
out_dir = "."

# %% tags=["hide-input"]
# %matplotlib inline
from pathlib import Path

import anndata as ad
import pandas as pd
from IPython.display import Markdown, display

from stcore import completion, plotting
from stcore import preprocess as pp
from stcore.plotting import show

plotting.setup_notebook()
out = Path(out_dir)
runs = sorted(p for p in Path(results_dir, "completion").glob("*/metrics.csv")
              if p.parent.name != setting and not p.parent.name.startswith("."))
scores = pd.concat([pd.read_csv(p).assign(method=p.parent.name) for p in runs], ignore_index=True)
scores.to_csv(out / "all_metrics.csv", index=False)
display(Markdown(f"{len(runs)} completion runs of `{dataset}` (profile `{profile}`): "
                 f"{', '.join(f'`{p.parent.name}`' for p in runs)}."))

# %% [markdown]
# ## Error on hidden entries
# Mean ± sd over seeds; lower MSE/MAE and higher PCC-Gene are better.

# %% tags=["hide-input"]
summary = completion.summarize(scores)
summary.to_csv(out / "summary.csv")
display(summary)
fig = plotting.metric_by_rate(scores, metrics=["mse", "mae", "pcc_gene"])
plotting.save(fig, out / "figures" / "mse_by_rate.png")
show(fig)

# %% [markdown]
# ## SpaCKLE's MSE reduction
# 100 · (1 − MSE(SpaCKLE) / MSE(other)), per seed, then mean ± sd. Positive: SpaCKLE is better.
# Both attention variants are shown: `spackle-neighbours` (attention across a spot's 18
# neighbours, as intended) and `spackle-batch` (across the mini-batch, as the original code runs).

# %% tags=["hide-input"]
if reference in set(scores["method"]):
    reduction = completion.mse_reduction(scores, reference=reference)
    reduction.to_csv(out / "mse_reduction.csv")
    display(reduction)
else:
    display(Markdown(f"No `{reference}` run for this dataset."))

# %% [markdown]
# ## Maps: raw, median-filtered and SpaCKLE-completed
# One evaluation section, the genes with the highest Moran's I. *Raw*: measured values
# (`c_log1p`), grey crosses where the entry is missing; *median*: SpaRED's adaptive median filter
# (`c_d_log1p`); *SpaCKLE*: `c_t_log1p`, the missing entries completed by the SpaCKLE model of
# the first seed. Legacy ST spots on their array grid (no image needed).

# %% tags=["hide-input"]
adata = pp.preprocess(dataset, sections=sections)
spackle_file = Path(results_dir, "completion", reference, "completed.h5ad")
if spackle_file.exists():
    adata.layers["c_t_log1p"] = ad.read_h5ad(spackle_file)[adata.obs_names, adata.var_names].X
    evaluation = adata.obs.loc[adata.obs["split"] != "train", "slide_id"]
    section = evaluation.value_counts().index[0]
    genes = list(adata.var["d_log1p_moran"].sort_values(ascending=False).index[:n_genes_shown])
    layers = {"raw": "c_log1p", "median": "c_d_log1p", "SpaCKLE": "c_t_log1p"}
    fig = plotting.expression_maps(adata, section, genes,
                                   {k: adata.layers[v] for k, v in layers.items()},
                                   missing={"raw": ~adata.layers["mask"]})
    plotting.save(fig, out / "figures" / "completion_maps.png")
    show(fig)
