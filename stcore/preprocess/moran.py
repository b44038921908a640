"""Moran's I per slide with squidpy, averaged over slides, and top-k gene selection."""

from __future__ import annotations

import logging
import warnings

import anndata as ad
import numpy as np
import pandas as pd

from .median import neighbour_graph
from .normalize import _dense, _layer

log = logging.getLogger("stcore")


def slide_morans_i(adata: ad.AnnData, *, layer: str = "d_log1p", geometry: str = "grid",
                   n_perms: int | None = None, seed: int = 42) -> pd.DataFrame:
    """Moran's I of every gene in every slide (genes × slides), from squidpy's ``spatial_autocorr``.

    The graph is :func:`~stcore.preprocess.neighbour_graph` on the array coordinates (8 grid
    neighbours for legacy ST, 6 hexagonal ones for Visium) with row-standardised weights.
    ``n_perms`` permutations only add p-values, which the selection does not use; SpaRED runs 1000.
    Genes constant in a slide get NaN there.
    """
    import squidpy as sq

    values = _dense(_layer(adata, layer))
    out = {}
    for slide in adata.obs["slide_id"].unique():
        rows = np.flatnonzero((adata.obs["slide_id"] == slide).to_numpy())
        coords = adata.obs.iloc[rows][["array_col", "array_row"]].to_numpy()
        part = ad.AnnData(values[rows], var=pd.DataFrame(index=adata.var_names))
        part.obsp["spatial_connectivities"] = neighbour_graph(coords, geometry=geometry)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # constant genes: 0/0
            result = sq.gr.spatial_autocorr(part, mode="moran", n_perms=n_perms, seed=seed,
                                            copy=True, n_jobs=1, show_progress_bar=False)
        out[str(slide)] = result["I"].reindex(adata.var_names)
    return pd.DataFrame(out)


def morans_i(adata: ad.AnnData, *, layer: str = "d_log1p", geometry: str = "grid",
             n_perms: int | None = None, key_added: str | None = None) -> None:
    """Mean over slides of each gene's Moran's I (:func:`slide_morans_i`).

    Writes ``var[key_added]`` (default ``'{layer}_moran'``) and ``varm['moran_per_slide']``.
    """
    per_slide = slide_morans_i(adata, layer=layer, geometry=geometry, n_perms=n_perms)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a gene constant in every slide
        adata.var[key_added or f"{layer}_moran"] = np.nanmean(per_slide.to_numpy(), axis=1)
    adata.varm["moran_per_slide"] = per_slide.to_numpy()


def top_genes(adata: ad.AnnData, n_genes: int, *, key: str = "d_log1p_moran") -> ad.AnnData:
    """The ``n_genes`` genes with the highest ``var[key]`` (ties by name), in their original order."""
    if key not in adata.var:
        raise KeyError(f"var[{key!r}] not found: compute it with morans_i first")
    if not isinstance(n_genes, int) or n_genes < 1:
        raise TypeError(f"n_genes must be a positive int, got {n_genes!r}")
    if n_genes > adata.n_vars:
        log.warning("asked for %d genes, only %d pass the filters: keeping all", n_genes, adata.n_vars)
    score = adata.var[key].fillna(-np.inf)
    chosen = score.sort_values(ascending=False, kind="stable").index[:n_genes]
    return adata[:, adata.var_names.isin(chosen)].copy()
