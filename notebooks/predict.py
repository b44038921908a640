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
# # Predicting expression from histology
#
# One model × target × protocol on the sections of one dataset that have an H&E image
# (`stcore.predict`). Every fold of the protocol trains the model on its train sections (model
# selection on its validation section), predicts its test sections, and each test section is
# scored on its own observed entries; the headline is the mean over test sections with a
# bootstrap interval over sections. Parameters: `dataset`, `model`, `target` (raw, completed,
# her2st), `protocol` (fixed, section_out, patient_out), `seed`, `model_params` (the profile's
# settings, keyed by model), `sections` / `preprocess_params` (the preprocessing, as the
# completion runs), `completion` (the run whose completed layer is the "completed" target),
# `encoder` / `embed_px` (frozen embeddings), `patch_um` / `patch_px`, `threads`.

# %% tags=["parameters"]
dataset = "mob"
profile = "cpu"
setting = "ridge-raw-patient_out"
model = "ridge"
target = "raw"
protocol = "patient_out"
seed = 0
model_params = {}
sections = None
preprocess_params = {}
completion = "spackle-batch"
results_dir = None
encoder = "efficientnet_lite0"
embed_px = 224
patch_um = 100
patch_px = 112
genes_shown = ["ERBB2", "FASN", "CD74"]
n_boot = 1000
threads = 1
out_dir = "."

# %% tags=["hide-input"]
# %matplotlib inline
import json
from pathlib import Path

import anndata as ad
import pandas as pd
import torch
from IPython.display import Markdown, display

from stcore import plotting, predict
from stcore import preprocess as pp
from stcore.data import extract_patches
from stcore.data.splits import folds, split_table
from stcore.models.embeddings import embed
from stcore.plotting import show

plotting.setup_notebook()
out = Path(out_dir)
torch.set_num_threads(threads)  # Snakemake runs one job per core
adata = pp.preprocess(dataset, sections=sections, **preprocess_params)
adata = adata[adata.obs["has_image"].to_numpy()].copy()
if target == "completed":
    if results_dir is None:
        raise ValueError("target 'completed' reads the completion run's completed.h5ad: give "
                         "results_dir (the workflow does, for runs with `after:`)")
    completed = ad.read_h5ad(Path(results_dir, "completion", completion, "completed.h5ad"))
    absent = adata.obs_names.difference(completed.obs_names)
    if len(absent) or list(completed.var_names) != list(adata.var_names):
        raise ValueError(f"completion run {completion!r} does not match this preprocessing "
                         f"({len(absent)} spots absent, genes equal: "
                         f"{list(completed.var_names) == list(adata.var_names)})")
    adata.layers[predict.COMPLETED_LAYER] = completed[adata.obs_names].X
store = extract_patches(adata, size_um=patch_um, out_px=patch_px)
embeddings = {encoder: embed(store, encoder, size=embed_px)}
params = dict(model_params.get(model, {}))
splits = folds(adata, protocol)
display(Markdown(
    f"Dataset `{dataset}`: {adata.n_obs:,} spots × {adata.n_vars} genes on "
    f"{adata.obs['slide_id'].nunique()} sections with H&E, "
    f"{1 - adata.layers['mask'].mean():.1%} of entries missing. Model `{model}` with "
    f"{params or 'default parameters'}; target `{target}`; protocol `{protocol}` "
    f"({len(splits)} folds); patches {patch_um} µm → {patch_px} px; frozen embeddings "
    f"`{encoder}` at {embed_px} px; seed {seed}."))
fold_table = split_table(splits)
fold_table.to_csv(out / "folds_sections.csv", index=False)
display(fold_table)

# %% [markdown]
# ## Cross-validation
# One fit per fold; training curves, scores per fold and the out-of-fold predictions are saved
# (`folds.csv`, `history.csv`, `predictions.h5ad`).

# %% tags=["hide-input"]
result = predict.cross_validate(model, adata, store, splits, target=target, params=params,
                                seed=seed, embeddings=embeddings, n_boot=n_boot)
result.scores.to_csv(out / "folds.csv", index=False)
result.history.to_csv(out / "history.csv", index=False)
result.predictions.obs = result.predictions.obs[["slide_id", "patient", "fold", "array_row",
                                                 "array_col"]].astype({"fold": str})
result.predictions.write_h5ad(out / "predictions.h5ad")
display(result.scores[["fold", "train", "val", "test", "MSE", "PCC-Gene", "PCC-Patch",
                       "train_seconds", "best_step"]].round(3))

# %% [markdown]
# ## Scores per test section
# Each test section is scored on its observed entries (MSE, MAE, PCC-Gene, PCC-Patch, R²,
# PCC of the 50 highest-expressed / most variable genes). The summary is the mean over
# sections with a 95% percentile-bootstrap interval over sections; PCCs of a constant
# prediction are undefined (NaN, counted in `n_nan_*`).

# %% tags=["hide-input"]
by_section, by_gene = predict.section_scores(result.predictions)
by_section.to_csv(out / "sections.csv", index=False)
by_gene.to_csv(out / "per_gene.csv", index=False)
summary = {"dataset": dataset, "model": model, "target": target, "protocol": protocol,
           "seed": seed, "setting": setting, "n_folds": len(splits),
           "train_seconds": float(result.scores["train_seconds"].sum()),
           "params": json.dumps(params, sort_keys=True),
           **predict.summarize_sections(by_section, n_boot=n_boot, seed=seed)}
pd.DataFrame([summary]).to_csv(out / "summary.csv", index=False)
display(by_section[["section", "fold", "n_spots", "MSE", "PCC-Gene", "PCC-Patch", "R2-Gene",
                    "n_constant_genes"]].round(3))
display(Markdown(f"Mean over {summary['n_sections']} test sections: PCC-Gene "
                 f"{summary['PCC-Gene']:.3f} [{summary['PCC-Gene_low']:.3f}, "
                 f"{summary['PCC-Gene_high']:.3f}], MSE {summary['MSE']:.3f} "
                 f"[{summary['MSE_low']:.3f}, {summary['MSE_high']:.3f}]."))

# %% [markdown]
# ## Training
# Train loss and validation MSE of the first fold (the kept weights are those of the best
# validation step). Closed-form models (train mean, ridge) have no curve.

# %% tags=["hide-input"]
first = result.history[result.history["fold"] == splits[0].name] if len(result.history) else []
if len(first):
    best = result.scores.loc[0, "best_step"]
    fig = plotting.training_curve(first, best_step=None if pd.isna(best) else int(best))
    plotting.save(fig, out / "figures" / "training.png")
    show(fig)
else:
    display(Markdown(f"`{model}` has no training loop."))

# %% [markdown]
# ## Predicted and measured expression on H&E
# The largest test section: measured expression (missing entries as grey crosses) and the
# out-of-fold prediction, for the chosen genes present in the panel (else the genes with the
# highest Moran's I).

# %% tags=["hide-input"]
pred = result.predictions
section = pred.obs["slide_id"].value_counts().index[0]
genes = [g for g in genes_shown if g in pred.var_names]
genes += [g for g in adata.var["d_log1p_moran"].sort_values(ascending=False).index
          if g not in genes][:max(0, 3 - len(genes))]
shown = adata[pred.obs_names]
fig = plotting.expression_maps(
    shown, section, genes, {"measured": pred.layers["truth"], f"{model} ({target})": pred.X},
    missing={"measured": ~pred.layers["valid"]}, on_he=True)
plotting.save(fig, out / "figures" / "maps.png")
show(fig)

# %% [markdown]
# ## Per-gene PCC
# Distribution over genes of the PCC on each test section.

# %% tags=["hide-input"]
fig = plotting.per_gene_pcc(by_gene)
plotting.save(fig, out / "figures" / "per_gene_pcc.png")
show(fig)
