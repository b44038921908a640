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

The her2st family (HisToGene, Hist2ST, THItoGene, mclSTExp, BLEEP; ``shared/reference/
predictors.md`` §0.3, §1) adds:

:func:`her2st_target`
    Their training / scoring target log10(1 + 1e4 · count / Σ panel counts).
:func:`gene_groups`, :func:`group_pcc`
    Mean per-gene PCC over all genes (ACG), the 50 highest-expressed (HEG) and the 50 most
    variable (HVG) genes, the groups chosen on the *test* ground truth as those papers do.
:func:`bootstrap_ci`
    A percentile bootstrap over test sections of any of these metrics.
:func:`mean_ci`
    The mean of per-section scores with a percentile-bootstrap interval over sections.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

log = logging.getLogger("stcore")

__all__ = ["GROUPS", "bootstrap_ci", "gene_groups", "group_pcc", "her2st_target", "mean_ci",
           "masked_metrics", "pearson_per_column", "r2_per_column"]


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


# ------------------------------------------------------------------------------- her2st family
GROUPS = ("ACG", "HEG", "HVG")


def her2st_target(counts, gene_idx=None) -> np.ndarray:
    """The target of the her2st family: log10(1 + 1e4 · count / Σ counts of the selected genes).

    HisToGene, Hist2ST, THItoGene, HGGEP and mclSTExp train and score on
    ``scprep.transform.log(scprep.normalize.library_size_normalize(counts[:, genes]))``: the
    library size is the sum over the **selected genes only** (e.g. the 785-gene her2st panel),
    rescaled to 10,000 (scprep ≥ 1.0), then log10(x + 1) (base 10, pseudocount 1).

    Parameters
    ----------
    counts : array-like (n_spots, n_genes)
        Raw counts (dense or scipy sparse), non-negative and finite.
    gene_idx : int indices or bool mask over the genes, optional
        The genes to keep (and to sum for the library size); all genes when None.

    Returns
    -------
    np.ndarray (n_spots, n_selected) float64. A spot without any count on the selected genes
    gets 0 everywhere (scprep would divide by zero and give NaN).

    Raises
    ------
    ValueError
        Negative or non-finite counts, a bool mask of the wrong length, or no gene selected.
    """
    if gene_idx is not None:
        gene_idx = np.asarray(gene_idx)
        if gene_idx.dtype == bool and gene_idx.shape != (counts.shape[1],):
            raise ValueError(f"gene_idx mask has shape {gene_idx.shape}, counts have "
                             f"{counts.shape[1]} genes")
        if gene_idx.dtype != bool and not np.issubdtype(gene_idx.dtype, np.integer):
            raise ValueError(f"gene_idx must be integer indices or a bool mask, got "
                             f"{gene_idx.dtype}")
        counts = counts[:, gene_idx]  # before densifying: a sparse full transcriptome stays small
    counts = _dense(counts, "counts").astype(np.float64)
    if counts.shape[1] == 0:
        raise ValueError("no gene selected: nothing to normalise")
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise ValueError("counts must be finite and non-negative")
    library = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.where(library > 0, 1e4 * counts / library, 0.0)
    return np.log10(1.0 + scaled)


def _gene_groups(truth: np.ndarray, mask: np.ndarray, n: int) -> dict[str, np.ndarray]:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    count = mask.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(mask, truth, 0.0).sum(axis=0) / count
        var = (_centred(truth, mask, count) ** 2).sum(axis=0) / count

    def top(values):  # highest first, ties by gene order, genes without valid entry last
        return np.argsort(-np.where(np.isnan(values), -np.inf, values), kind="stable")[:n]

    return {"ACG": np.arange(truth.shape[1]), "HEG": top(mean), "HVG": top(var)}


def gene_groups(truth, n: int = 50, mask=None) -> dict[str, np.ndarray]:
    """Index sets of the gene groups of the her2st family, chosen on the ground truth given.

    As HisToGene / Hist2ST / mclSTExp / BLEEP do, pass the **test** ground truth: the groups are
    chosen on the held-out spots themselves (a post hoc choice; it is what those papers report).

    Parameters
    ----------
    truth : array-like (n_spots, n_genes)
        Ground truth (dense or sparse).
    n : int
        Size of HEG and HVG (50 in those papers); all genes when ``n`` ≥ the number of genes.
    mask : bool array-like (n_spots, n_genes), optional
        Valid entries: means and variances are taken over them only.

    Returns
    -------
    dict with ``ACG`` (all genes, in order), ``HEG`` (the ``n`` genes of highest mean) and
    ``HVG`` (the ``n`` genes of highest variance, ddof 0), highest first; ties keep gene order,
    genes without any valid entry come last.
    """
    truth, _, mask = _inputs(truth, truth, mask)
    return _gene_groups(truth, mask, n)


def _group_pcc(truth, pred, mask, n) -> dict:
    r = _pearson(truth, pred, mask)
    out = {}
    for name, idx in _gene_groups(truth, mask, n).items():
        out[f"PCC-{name}"] = _nanmean(r[idx])
        out[f"n_nan_{name}"] = int(np.isnan(r[idx]).sum())
    return out


def group_pcc(truth, pred, mask=None, n: int = 50) -> dict:
    """Mean per-gene Pearson correlation over the gene groups ACG, HEG and HVG.

    Per-gene correlations are :func:`pearson_per_column` (over the valid rows); the groups are
    :func:`gene_groups` of ``truth`` (pass the test rows). Genes whose correlation is NaN
    (constant truth or prediction, fewer than 2 valid entries) are left out of each mean and
    counted — as Hist2ST's ``np.nanmean``; mclSTExp's HEG uses a plain mean instead, which turns
    NaN as soon as one of the 50 genes is constant.

    Returns
    -------
    dict: ``PCC-ACG``, ``PCC-HEG``, ``PCC-HVG`` (floats; ``PCC-ACG`` equals
    ``masked_metrics(...)["PCC-Gene"]``) and ``n_nan_ACG``, ``n_nan_HEG``, ``n_nan_HVG`` (ints).
    """
    truth, pred, mask = _inputs(truth, pred, mask)
    return _group_pcc(truth, pred, mask, n)


# -------------------------------------------------------------------------------------- bootstrap
def _mse(t, p, m):
    n = m.sum()
    return float((np.where(m, t - p, 0.0) ** 2).sum() / n) if n else float("nan")


def _mae(t, p, m):
    n = m.sum()
    return float(np.abs(np.where(m, t - p, 0.0)).sum() / n) if n else float("nan")


_BOOT_METRICS: dict[str, Callable] = {
    "MSE": _mse,
    "MAE": _mae,
    "PCC-Gene": lambda t, p, m: _nanmean(_pearson(t, p, m)),
    "PCC-Patch": lambda t, p, m: _nanmean(_pearson(t.T, p.T, m.T)),
    "R2-Gene": lambda t, p, m: _nanmean(_r2(t, p, m)),
    "R2-Patch": lambda t, p, m: _nanmean(_r2(t.T, p.T, m.T)),
    **{f"PCC-{g}": (lambda g: lambda t, p, m: _group_pcc(t, p, m, 50)[f"PCC-{g}"])(g)
       for g in GROUPS},
}


def bootstrap_ci(metric, truth, pred, mask, groups, *, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, float]:
    """Percentile bootstrap over sections of a metric computed on pooled rows.

    Each of ``n_boot`` replicates draws as many sections as there are, with replacement, pools
    the rows of the drawn sections (a section drawn twice contributes its rows twice) and
    recomputes the metric on them; the interval is the ``(1 − level)/2`` and ``(1 + level)/2``
    percentiles of the replicates. Sections, not spots, are resampled: spots of a section are
    not independent, sections (of different patients) are closer to it.

    Parameters
    ----------
    metric : str or callable
        A name — ``MSE``, ``MAE``, ``PCC-Gene``, ``PCC-Patch``, ``R2-Gene``, ``R2-Patch`` (as in
        :func:`masked_metrics`) or ``PCC-ACG``, ``PCC-HEG``, ``PCC-HVG`` (:func:`group_pcc`, n = 50,
        groups re-chosen on each replicate's truth) — or ``fn(truth, pred, mask) -> float`` on
        dense float64 arrays and a bool mask.
    truth, pred : array-like (n_spots, n_genes)
    mask : bool array-like (n_spots, n_genes) or None (all entries valid)
    groups : array-like (n_spots,)
        Section id of each row.
    n_boot : int
        Number of replicates.
    seed : int
        Seed of ``numpy.random.default_rng``: the same seed gives the same interval.
    level : float
        Coverage, in (0, 1).

    A metric must not depend on the order of the rows: each drawn multiset of sections is scored
    once, on its rows in section order (few sections have few distinct multisets: 3 sections
    have 10, 6 have 462, so a 1,000-replicate interval costs at most that many evaluations).

    Returns
    -------
    (estimate, low, high): the metric on all rows and the interval bounds. With a single section
    there is nothing to resample: the bounds are NaN (logged). With few sections the interval is
    coarse (2 sections have only 3 distinct resamples). Replicates whose metric is NaN are left
    out (logged); if all are, the bounds are NaN.
    """
    if isinstance(metric, str):
        if metric not in _BOOT_METRICS:
            raise ValueError(f"unknown metric {metric!r}; known: {', '.join(_BOOT_METRICS)} "
                             "(or pass a function fn(truth, pred, mask) -> float)")
        fn = _BOOT_METRICS[metric]
    elif callable(metric):
        fn = metric
    else:
        raise TypeError(f"metric must be a name or a function, got {type(metric).__name__}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive int, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    truth, pred, mask = _inputs(truth, pred, mask)
    groups = np.asarray(groups)
    if groups.shape != (truth.shape[0],):
        raise ValueError(f"groups must have one section id per row ({truth.shape[0]}), got shape "
                         f"{groups.shape}")
    estimate = float(fn(truth, pred, mask))
    names, codes = np.unique(groups, return_inverse=True)
    if len(names) < 2:
        log.warning("bootstrap_ci: a single section (%s); no interval (NaN bounds)",
                    names[0] if len(names) else "none")
        return estimate, float("nan"), float("nan")
    members = [np.flatnonzero(codes == k) for k in range(len(names))]
    draws = np.random.default_rng(seed).integers(0, len(names), size=(int(n_boot), len(names)))
    values, seen = np.empty(int(n_boot)), {}
    for b, drawn in enumerate(np.sort(draws, axis=1)):  # the metric ignores row order
        key = drawn.tobytes()  # a multiset of sections already scored is not recomputed
        if key not in seen:
            rows = np.concatenate([members[k] for k in drawn])
            seen[key] = fn(truth[rows], pred[rows], mask[rows])
        values[b] = seen[key]
    finite = np.isfinite(values)
    if not finite.all():
        log.warning("bootstrap_ci: %d of %d replicates gave NaN and are left out",
                    int((~finite).sum()), int(n_boot))
    if not finite.any():
        return estimate, float("nan"), float("nan")
    low, high = np.percentile(values[finite], [50 * (1 - level), 50 * (1 + level)])
    return estimate, float(low), float(high)


def mean_ci(values, *, n_boot: int = 1000, seed: int = 0,
            level: float = 0.95) -> tuple[float, float, float]:
    """Mean of per-section scores and its percentile-bootstrap interval over sections.

    ``values`` holds one score per test section (e.g. each section's PCC-Gene); NaN entries
    (a section where the score is undefined) are left out and logged. Returns ``(mean, low,
    high)``; the bounds are NaN with fewer than 2 finite values. Same ``seed`` → same interval.
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive int, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    values = np.asarray(values, dtype=np.float64).ravel()
    finite = values[np.isfinite(values)]
    if len(finite) < len(values):
        log.info("mean_ci: %d of %d values are NaN and left out", len(values) - len(finite),
                 len(values))
    if not len(finite):
        return float("nan"), float("nan"), float("nan")
    if len(finite) < 2:
        return float(finite.mean()), float("nan"), float("nan")
    draws = np.random.default_rng(seed).integers(0, len(finite), size=(int(n_boot), len(finite)))
    means = finite[draws].mean(axis=1)
    low, high = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return float(finite.mean()), float(low), float(high)
