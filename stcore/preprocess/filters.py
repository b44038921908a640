"""SpaRED's spot and gene filters: count bounds, expression fractions, the running-mean rule."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import scipy.sparse as sp

from .normalize import _layer

log = logging.getLogger("stcore")


def _counts(adata: ad.AnnData, layer: str):
    counts = _layer(adata, layer)
    return counts.tocsr() if sp.issparse(counts) else np.asarray(counts)


def _sum(matrix, axis: int) -> np.ndarray:
    return np.asarray(matrix.sum(axis=axis)).ravel()


def expression_fractions(adata: ad.AnnData, *, layer: str = "counts") -> None:
    """Fraction of spots expressing each gene (count > 0), per slide and over the collection.

    Writes ``var['exp_frac']`` (minimum over slides of ``obs['slide_id']``) and
    ``var['glob_exp_frac']`` (over all spots).
    """
    expressed = _counts(adata, layer) > 0
    slides = adata.obs["slide_id"].to_numpy()
    per_slide = [_sum(expressed[slides == s], 0) / (slides == s).sum() for s in np.unique(slides)]
    adata.var["exp_frac"] = np.min(per_slide, axis=0)
    adata.var["glob_exp_frac"] = _sum(expressed, 0) / adata.n_obs


def filter_spots(adata: ad.AnnData, *, min_counts: float, max_counts: float,
                 layer: str = "counts") -> ad.AnnData:
    """Spots whose total count lies strictly between ``min_counts`` and ``max_counts``.

    Returns a copy; empty slides are an error (:class:`ValueError` naming them).
    """
    total = _sum(_counts(adata, layer), 1)
    keep = (total > min_counts) & (total < max_counts)
    _check_slides(adata, keep, f"total counts in ({min_counts:g}, {max_counts:g})")
    return adata[keep].copy()


def filter_genes(adata: ad.AnnData, *, min_counts: float, max_counts: float,
                 real_data_percentage: float, layer: str = "counts") -> ad.AnnData:
    """SpaRED's gene filter: count bounds, then the running-mean rule on expression fractions.

    Genes with total counts strictly between the bounds are ranked by ``exp_frac`` (descending);
    the longest prefix whose running mean of ``glob_exp_frac`` is at least
    ``real_data_percentage`` is kept. Spots left without counts on the kept genes are dropped.
    Returns a copy with ``var['exp_frac', 'glob_exp_frac']`` (recomputed on the result).
    """
    if not 0 < real_data_percentage <= 1:
        raise ValueError(f"real_data_percentage must be in (0, 1], got {real_data_percentage!r}")
    total = _sum(_counts(adata, layer), 0)
    adata = adata[:, (total > min_counts) & (total < max_counts)].copy()
    if adata.n_vars == 0:
        raise ValueError(f"no gene has total counts in ({min_counts:g}, {max_counts:g})")
    expression_fractions(adata, layer=layer)
    order = np.argsort(-adata.var["exp_frac"].to_numpy(), kind="stable")
    running = np.cumsum(adata.var["glob_exp_frac"].to_numpy()[order]) / np.arange(1, adata.n_vars + 1)
    passing = np.flatnonzero(running >= real_data_percentage)
    if passing.size == 0:
        raise ValueError(f"no gene set reaches a mean expression fraction of {real_data_percentage}")
    kept = np.sort(order[: passing[-1] + 1])
    adata = adata[:, kept].copy()
    nonempty = _sum(_counts(adata, layer), 1) > 0
    _check_slides(adata, nonempty, "counts on the kept genes")
    adata = adata[nonempty].copy()
    expression_fractions(adata, layer=layer)
    return adata


def _check_slides(adata: ad.AnnData, keep: np.ndarray, rule: str) -> None:
    slides = adata.obs["slide_id"].astype(str).to_numpy()
    emptied = sorted(set(slides) - set(slides[keep]))
    if emptied:
        raise ValueError(f"no spot of slide(s) {', '.join(emptied)} has {rule}")
    log.info("%d of %d spots have %s", int(keep.sum()), len(keep), rule)
