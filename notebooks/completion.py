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
# # Completing missing expression
#
# One completion method on one dataset (`stcore.completion`). The method is fitted on the train
# sections; on the evaluation sections a random fraction of the *observed* entries of `c_d_log1p`
# is hidden, the method completes them from what is left, and MSE, MAE and PCC-Gene are scored on
# the hidden entries only, for every masking rate and seed. Parameters: `dataset`, `method`,
# `method_params`, `fractions`, `seeds`, `splits`, `sections`, `threads` (torch threads).

# %% tags=["parameters"]
dataset = "mob"
profile = "cpu"
setting = "adaptive_median"
method = "adaptive_median"
method_params = {}
sections = None
fractions = [0.1, 0.3, 0.5]
seeds = [0, 1, 2]
splits = ["test"]
n_genes_shown = 3
threads = 1
seed = 0
out_dir = "."

# %% tags=["hide-input"]
# %matplotlib inline
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

from stcore import completion, plotting
from stcore import preprocess as pp
from stcore.plotting import show

plotting.setup_notebook()
out = Path(out_dir)
torch.set_num_threads(threads)  # Snakemake runs one job per core
adata = pp.preprocess(dataset, sections=sections)
factory = completion.factory(method, **method_params)
display(Markdown(f"Dataset `{dataset}` ({adata.n_obs:,} spots × {adata.n_vars} genes, "
                 f"{1 - adata.layers['mask'].mean():.1%} missing), method `{method}` "
                 f"with {method_params or 'default parameters'}; evaluation on "
                 f"{', '.join(splits)} sections, masking rates {fractions}, seeds {seeds}."))

# %% [markdown]
# ## Scores on hidden entries
# Mean ± standard deviation over seeds. Each seed refits the method and draws new hidden entries.

# %% tags=["hide-input"]
models = {}
scores = completion.evaluate(adata, {method: factory}, fractions=fractions, seeds=seeds, splits=splits,
                      models=models)
scores.to_csv(out / "metrics.csv", index=False)
summary = completion.summarize(scores)
summary.to_csv(out / "summary.csv")
display(summary)

# %% [markdown]
# ## The fitted model
# Training curve for learned methods (train loss and validation MSE on pre-masked entries of the
# validation spots); the kept checkpoint is the one with the lowest validation MSE.

# %% tags=["hide-input"]
model = models[seeds[0]][method]
history = pd.DataFrame(getattr(model, "history", []))
if len(history):
    history.to_csv(out / "history.csv", index=False)
    fig = plotting.training_curve(history, best_step=model.best_step)
    plotting.save(fig, out / "figures" / "training.png")
    show(fig)
    display(Markdown(f"Best step {model.best_step}, training took {model.train_seconds:.1f} s."))
else:
    display(Markdown(f"`{method}` has no training loop."))

# %% [markdown]
# ## Completed dataset
# The model of the first seed completes every missing entry of `c_d_log1p` (observed entries are
# kept); the result is saved as `completed.h5ad` for the chapter's maps.

# %% tags=["hide-input"]
completed = model.complete(adata, layer="c_d_log1p")
assert np.array_equal(completed[adata.layers["mask"]], adata.layers["c_d_log1p"][adata.layers["mask"]])
ad.AnnData(completed.astype(np.float32), obs=adata.obs[["slide_id", "split", "array_row", "array_col"]],
           var=adata.var[["d_log1p_moran"]]).write_h5ad(out / "completed.h5ad")

# %% [markdown]
# ## Hidden entries, measured and completed
# One evaluation section, 30% of its observed entries hidden (seed of the first run): measured
# what the method sees (hidden and missing entries as grey crosses), its completion of the hidden
# entries, and the measured values, for the genes with the highest Moran's I (`c_d_log1p`).

# %% tags=["hide-input"]
rows = adata.obs["split"].isin(splits).to_numpy()
section = adata.obs.loc[rows, "slide_id"].value_counts().index[0]
hidden = completion.hide(adata.layers["mask"], rows, 0.3, seeds[0])
prediction = model.predict(adata, layer="c_d_log1p", available=adata.layers["mask"] & ~hidden)
genes = list(adata.var["d_log1p_moran"].sort_values(ascending=False).index[:n_genes_shown])
truth, mask = adata.layers["c_d_log1p"], adata.layers["mask"]
fig = plotting.expression_maps(
    adata, section, genes,
    {"input": truth, f"{method} completed": np.where(hidden, prediction, truth), "measured": truth},
    missing={"input": ~mask | hidden, f"{method} completed": ~mask, "measured": ~mask})
plotting.save(fig, out / "figures" / "hidden_maps.png")
show(fig)
