"""Masked regression metrics, each defined once (SpaRED's ``get_metrics(gt, pred, mask)``).

All metrics are computed only on the *valid* entries (``mask`` True; every entry when ``mask`` is
None) of two spots × genes matrices:

``MSE``, ``MAE``
    Mean squared / absolute error over all valid entries.
``PCC-Gene``, ``PCC-Patch``
    Pearson correlation per gene (column) / per spot (row) over its valid entries, averaged with
    ``nanmean``. A column (row) with fewer than 2 valid entries, or whose truth or prediction is
    constant over its valid entries, has no correlation: it is NaN, left out of the mean, and
    counted in ``n_constant_genes`` (``n_constant_patches``), the number of NaN correlations.
    SpaRED instead sets the whole PCC-Gene to NaN as soon as one predicted column is constant;
    here such genes are counted, never hidden.
``R2-Gene``, ``R2-Patch``
    Coefficient of determination 1 − SS_res / SS_tot per column / row over its valid entries,
    averaged with ``nanmean``. Columns (rows) with fewer than 2 valid entries are dropped; so are
    those whose truth is constant (SS_tot = 0, R² undefined; scikit-learn would report 0 or 1).

Everything is vectorised: no Python loop over genes or spots.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp

__all__ = ["masked_metrics", "pearson_per_column", "r2_per_column"]


def _dense(x, name: str) -> np.ndarray:
    arr = x.toarray() if sp.issparse(x) else np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D spots × genes matrix, got shape {arr.shape}")
    return arr


def _inputs(truth, pred, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    truth = _dense(truth, "truth").astype(np.float64, copy=False)
    pred = _dense(pred, "pred").astype(np.float64, copy=False)
    if truth.shape != pred.shape:
        raise ValueError(f"truth and pred differ in shape: {truth.shape} vs {pred.shape}")
    if mask is None:
        mask = np.ones(truth.shape, dtype=bool)
    else:
        mask = _dense(mask, "mask")
        if mask.dtype != bool:
            raise ValueError(f"mask must be boolean (True = valid entry), got dtype {mask.dtype}")
        if mask.shape != truth.shape:
            raise ValueError(f"mask has shape {mask.shape}, truth and pred have {truth.shape}")
    return truth, pred, mask


def _nanmean(x: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN → NaN
        return float(np.nanmean(x)) if x.size else float("nan")


def _constant(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Columns whose valid entries are all equal (exact test: min == max)."""
    return np.where(mask, x, np.inf).min(axis=0) == np.where(mask, x, -np.inf).max(axis=0)


def _centred(x: np.ndarray, mask: np.ndarray, n: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(mask, x, 0.0).sum(axis=0) / n
    return np.where(mask, x - mean, 0.0)


def pearson_per_column(truth, pred, mask=None) -> np.ndarray:
    """Pearson correlation of each column of ``truth`` and ``pred`` over its valid rows.

    Parameters
    ----------
    truth, pred : array-like (n_spots, n_genes)
        Ground truth and prediction (dense or scipy sparse).
    mask : bool array-like (n_spots, n_genes), optional
        True where an entry is valid; all entries when None.

    Returns
    -------
    np.ndarray (n_genes,)
        The correlations; NaN for a column with fewer than 2 valid entries or whose truth or
        prediction is constant over them. Transpose the inputs for per-spot (row) correlations.
    """
    truth, pred, mask = _inputs(truth, pred, mask)
    return _pearson(truth, pred, mask)


def _pearson(truth, pred, mask) -> np.ndarray:
    n = mask.sum(axis=0)
    tc, pc = _centred(truth, mask, n), _centred(pred, mask, n)
    cov = (tc * pc).sum(axis=0)
    norm = np.sqrt((tc ** 2).sum(axis=0) * (pc ** 2).sum(axis=0))
    undefined = (n < 2) | _constant(truth, mask) | _constant(pred, mask) | (norm == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.clip(cov / norm, -1.0, 1.0)
    return np.where(undefined, np.nan, r)


def r2_per_column(truth, pred, mask=None) -> np.ndarray:
    """R² = 1 − SS_res / SS_tot of each column over its valid rows.

    Same parameters as :func:`pearson_per_column`. NaN for a column with fewer than 2 valid
    entries or a constant truth (SS_tot = 0).
    """
    truth, pred, mask = _inputs(truth, pred, mask)
    return _r2(truth, pred, mask)


def _r2(truth, pred, mask) -> np.ndarray:
    n = mask.sum(axis=0)
    ss_tot = (_centred(truth, mask, n) ** 2).sum(axis=0)
    ss_res = np.where(mask, (truth - pred) ** 2, 0.0).sum(axis=0)
    undefined = (n < 2) | _constant(truth, mask) | (ss_tot == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = 1.0 - ss_res / ss_tot
    return np.where(undefined, np.nan, r2)


def masked_metrics(truth, pred, mask=None) -> dict:
    """SpaRED's metrics of ``pred`` against ``truth`` on the valid entries (see the module doc).

    Parameters
    ----------
    truth, pred : array-like (n_spots, n_genes)
        Ground truth and prediction (dense or scipy sparse), same shape.
    mask : bool array-like (n_spots, n_genes), optional
        True where an entry is valid (observed, or hidden and to be scored); all when None.

    Returns
    -------
    dict
        ``MSE``, ``MAE``, ``PCC-Gene``, ``PCC-Patch``, ``R2-Gene``, ``R2-Patch`` (floats),
        ``n_constant_genes`` / ``n_constant_patches`` (ints: genes / spots whose correlation is
        NaN and left out of the PCC means — constant truth or prediction, or fewer than 2 valid
        entries).

    Raises
    ------
    ValueError
        Shapes differ, an input is not 2-D, the mask is not boolean, or it selects no entry.
    """
    truth, pred, mask = _inputs(truth, pred, mask)
    n_valid = int(mask.sum())
    if n_valid == 0:
        raise ValueError("the mask selects no entry: nothing to score")
    err = np.where(mask, truth - pred, 0.0)
    pcc_gene = _pearson(truth, pred, mask)
    pcc_patch = _pearson(truth.T, pred.T, mask.T)
    return {
        "MSE": float((err ** 2).sum() / n_valid),
        "MAE": float(np.abs(err).sum() / n_valid),
        "PCC-Gene": _nanmean(pcc_gene),
        "PCC-Patch": _nanmean(pcc_patch),
        "R2-Gene": _nanmean(_r2(truth, pred, mask)),
        "R2-Patch": _nanmean(_r2(truth.T, pred.T, mask.T)),
        "n_constant_genes": int(np.isnan(pcc_gene).sum()),
        "n_constant_patches": int(np.isnan(pcc_patch).sum()),
    }
