"""Baseline completers: train mean, slide median, SpaRED's adaptive median, spatial kNN.

None of them imports torch. Every ``predict`` reads only the available entries (the base class
zeroes the others), and none writes to the AnnData (only :meth:`Completer.complete` does, when
given ``key_added``).
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from .base import (Completer, log, masked_mean, masked_median, nearest_spots, slide_ids,
                   spatial_coords)


def _fallback(stat: np.ndarray, what: str) -> np.ndarray:
    missing = np.isnan(stat)
    if missing.any():
        log.warning("%d genes have no observed train value: their %s is set to 0",
                    int(missing.sum()), what)
    return np.where(missing, 0.0, stat)


class TrainMean(Completer):
    """Per-gene mean of the observed entries of the train spots, the same for every spot.

    Reads ``layers[layer]``, ``layers[mask_key]`` and ``obs['split']`` in :meth:`fit`; its
    prediction uses nothing of the AnnData but its shape. Attribute ``mean_`` (n_vars,).
    """

    name = "train_mean"

    def __init__(self):
        pass

    def _fit(self, adata, values, observed, train, val, seed):
        mean, _ = masked_mean(values[train], observed[train])
        self.mean_ = _fallback(mean, "train mean")

    def _predict(self, adata, visible, available):
        return np.broadcast_to(self.mean_, visible.shape).copy()


class GeneMedian(Completer):
    """Per-slide, per-gene median of the available values.

    Genes with no available value in a slide get the median of the observed train values
    (``median_``). Reads ``obs['slide_id']`` besides the layer.
    """

    name = "gene_median"

    def __init__(self):
        pass

    def _fit(self, adata, values, observed, train, val, seed):
        self.median_ = _fallback(masked_median(values[train], observed[train]), "train median")

    def _predict(self, adata, visible, available):
        out = np.empty_like(visible)
        slides = slide_ids(adata)
        for slide in pd.unique(slides):
            rows = slides == slide
            med = masked_median(visible[rows], available[rows])
            out[rows] = np.where(np.isnan(med), self.median_, med)
        return out


class AdaptiveMedian(Completer):
    """SpaRED's adaptive median filter (:func:`stcore.preprocess.adaptive_median`) with a mask.

    Each unavailable entry gets the first non-zero median of its gene over the 1…``n_hops``-ring
    neighbourhoods of its spot on the array (unavailable entries count as 0 there), else the
    median of the gene's available values in the slide (0 if none). Needs no fitting.
    Reads ``obs['slide_id', 'array_row', 'array_col']``.

    Parameters
    ----------
    geometry : {"grid", "hex"}
        Spot lattice: "grid" (8 neighbours) for legacy ST, "hex" (6) for Visium.
    n_hops : int
        Largest neighbourhood ring.
    """

    name = "adaptive_median"

    def __init__(self, geometry: str = "grid", n_hops: int = 4):
        if geometry not in ("grid", "hex"):
            raise ValueError(f"geometry must be 'grid' or 'hex', got {geometry!r}")
        self.geometry, self.n_hops = geometry, n_hops

    def _fit(self, adata, values, observed, train, val, seed):
        pass

    def _predict(self, adata, visible, available):
        from ..preprocess.median import adaptive_median

        missing = [k for k in ("slide_id", "array_row", "array_col") if k not in adata.obs]
        if missing:
            raise KeyError(f"AdaptiveMedian needs obs columns {missing}")
        tmp = ad.AnnData(obs=adata.obs[["slide_id", "array_row", "array_col"]].copy(),
                         var=pd.DataFrame(index=adata.var_names.copy()))
        tmp.layers["visible"] = visible
        adaptive_median(tmp, layer="visible", key_added="filled", n_hops=self.n_hops,
                        geometry=self.geometry, mask=available)
        return np.asarray(tmp.layers["filled"])


class SpatialKNN(Completer):
    """Mean of a gene's available values over the spot's ``n_neighbors`` nearest spots.

    Neighbours are the nearest other spots of the same slide by ``obsm['spatial']`` (cKDTree),
    the spot itself excluded; only neighbours where the gene is available count. With none of
    them available: the gene's mean over the available values of the slide, then the train mean
    of the observed values (``mean_``). Reads ``obs['slide_id']`` and ``obsm['spatial']``.

    Parameters
    ----------
    n_neighbors : int
        Number of neighbours.
    """

    name = "knn"

    def __init__(self, n_neighbors: int = 8):
        if not isinstance(n_neighbors, (int, np.integer)) or n_neighbors < 1:
            raise ValueError(f"n_neighbors must be a positive int, got {n_neighbors!r}")
        self.n_neighbors = int(n_neighbors)

    def _fit(self, adata, values, observed, train, val, seed):
        mean, _ = masked_mean(values[train], observed[train])
        self.mean_ = _fallback(mean, "train mean")

    def _predict(self, adata, visible, available):
        out = np.empty_like(visible)
        slides, coords = slide_ids(adata), spatial_coords(adata)
        for slide in pd.unique(slides):
            rows = np.flatnonzero(slides == slide)
            x, a = visible[rows], available[rows]
            slide_mean, _ = masked_mean(x, a)
            slide_mean = np.where(np.isnan(slide_mean), self.mean_, slide_mean)
            nbrs = nearest_spots(coords[rows], self.n_neighbors)  # (m, k)
            total = np.zeros_like(x)
            count = np.zeros(x.shape, dtype=np.int64)
            for j in range(nbrs.shape[1]):  # k slots, vectorised over spots and genes
                total += x[nbrs[:, j]]  # unavailable entries are 0 already
                count += a[nbrs[:, j]]
            with np.errstate(invalid="ignore", divide="ignore"):
                local = total / count
            out[rows] = np.where(count > 0, local, slide_mean)
        return out
