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
# # Dataset overview
#
# One dataset of the registry, read from the raw public files through `stcore.data.load`:
# per-section quality control, H&E images with spots, a marker gene, labels where the release has
# them, and example image patches. Parameters: `dataset`, `profile`, `sections` (`None` = all).

# %% tags=["parameters"]
dataset = "mob"
profile = "cpu"
sections = None
n_patches = 24
patch_um = 150.0
patch_px = 96
seed = 0
out_dir = "."

# %% tags=["hide-input"]
# %matplotlib inline
from pathlib import Path

import numpy as np
import scanpy as sc
from IPython.display import Markdown, display

import stcore.data as sd
from stcore import plotting
from stcore.plotting import show

plotting.setup_notebook()
out = Path(out_dir)
figures = out / "figures"
entry = sd.get(dataset)
adata = sd.load(dataset, sections=sections)
sc.pp.calculate_qc_metrics(adata, inplace=True, percent_top=None, log1p=False)
adata.obs["total counts"] = adata.obs["total_counts"]
display(Markdown(f"**{entry.title}** ({entry.organism}, {entry.technology}). {entry.citation}\n\n"
                 f"Profile `{profile}`: {adata.n_obs:,} spots × {adata.n_vars:,} genes "
                 f"(genes shared by all sections; {adata.uns['stcore']['n_genes_union']:,} in any) "
                 f"in {adata.obs['slide_id'].nunique()} sections from "
                 f"{adata.obs['patient'].nunique()} patients/animals."))

# %% [markdown]
# ## Sections
# Spots under tissue, genes detected, and total counts per spot; `split` is the registry's default
# split (by patient or animal). Sections without an H&E image serve expression-only tasks.

# %% tags=["hide-input"]
qc = sd.section_table(adata, entry.label_key)
qc.to_csv(out / "qc.csv")
display(qc.style.format(precision=0))

# %% [markdown]
# ## H&E with spots coloured by total counts

# %% tags=["hide-input"]
with_image = [s for s in adata.obs["slide_id"].cat.categories if adata.uns["spatial"][s]["images"]]
if with_image:
    fig = plotting.spots_on_he(adata, "total counts", sections=with_image, cmap="magma", alpha=0.8)
    plotting.save(fig, figures / "he_total_counts.png")
    show(fig)
without = [s for s in adata.obs["slide_id"].cat.categories if s not in with_image]
if without:
    display(Markdown(f"{len(without)} sections have no H&E image here; their spots on the array grid:"))
    fig = plotting.spot_layout(adata, "total counts", sections=without)
    plotting.save(fig, figures / "layout_total_counts.png")
    show(fig)

# %% [markdown]
# ## Marker gene
# Counts normalised to 10,000 per spot and log1p-transformed, shown on the H&E.

# %% tags=["hide-input"]
marker = entry.marker_gene if entry.marker_gene in adata.var_names else \
    adata.var_names[np.argmax(np.asarray(adata.X.sum(axis=0)).ravel())]
norm = adata.copy()
sc.pp.normalize_total(norm, target_sum=1e4)
sc.pp.log1p(norm)
adata.obs[f"{marker} (log1p CP10k)"] = norm[:, marker].X.toarray().ravel()
display(Markdown(f"Gene **{marker}**" + ("" if marker == entry.marker_gene else
                                          " (the most expressed gene; no marker registered)")))
if with_image:
    fig = plotting.spots_on_he(adata, f"{marker} (log1p CP10k)", sections=with_image, cmap="viridis")
    plotting.save(fig, figures / "he_marker.png")
    show(fig)

# %% [markdown]
# ## Labels
# Pathologist regions (her2st, one section per patient) or anatomical layers (MOB), from the release.

# %% tags=["hide-input"]
label = entry.label_key
labelled = [] if label is None else \
    [s for s in with_image if adata.obs.loc[adata.obs["slide_id"] == s, label].notna().any()]
if label is None:
    display(Markdown("This dataset has no labels."))
else:
    counts = adata.obs.groupby("slide_id", observed=True)[label].value_counts().unstack(fill_value=0)
    display(counts.loc[counts.sum(axis=1) > 0])
    if labelled:
        fig = plotting.spots_on_he(adata, label, sections=labelled)
        plotting.save(fig, figures / "he_labels.png")
        show(fig)
    unimaged = [s for s in counts.index[counts.sum(axis=1) > 0] if s not in with_image]
    if unimaged:
        display(Markdown(f"Labelled sections without an H&E image here: {', '.join(unimaged)}."))
        fig = plotting.spot_layout(adata, label, sections=unimaged, ncols=min(4, len(unimaged)))
        plotting.save(fig, figures / "layout_labels.png")
        show(fig)

# %% [markdown]
# ## Example patches
# Patches are cropped around spot centres from the full-resolution H&E (side in µm given by
# `patch_um`), resized and stored in a memory-mapped array beside the cached AnnData.

# %% tags=["hide-input"]
if with_image:
    store = sd.extract_patches(adata, size_um=patch_um, out_px=patch_px)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(store), size=min(n_patches, len(store)), replace=False))
    names = store.obs_names[pick]
    titles = [f"{adata.obs.loc[n, 'slide_id']} · {adata.obs.loc[n, 'total counts']:.0f}" for n in names]
    fig = plotting.patch_grid(store.images[pick], titles)
    plotting.save(fig, figures / "patches.png")
    display(Markdown(f"{len(store):,} patches of {store.meta['crop_px']} px (crop) → {patch_px} px; "
                     f"titles: section · total counts."))
    show(fig)
