"""Benchmark completers by hiding observed entries and scoring their prediction.

For each seed every method is built from its factory and fitted once on the train spots; then,
for each fraction and split, a seeded random ``fraction`` of the observed entries of that split's
spots is hidden (the same hidden entries for every method: the comparison is paired), the method
predicts from the remaining observed entries, and MSE, MAE and PCC-Gene are computed on the
hidden entries only (:func:`stcore.metrics.masked_metrics`). Hidden entries of the "train" or
"val" splits were seen by the fit, so those scores are in-sample; "test" is the honest split.
"""

from __future__ import annotations

import time
import zlib
from typing import Callable, Mapping, Sequence

import anndata as ad
import numpy as np
import pandas as pd

from ..metrics import masked_metrics
from .base import SPLIT_KEY, Completer, layer_values, mask_values

COLUMNS = ["method", "split", "fraction", "seed", "mse", "mae", "pcc_gene", "n_constant_genes",
           "n_hidden", "fit_seconds", "predict_seconds"]
GROUP = ["method", "split", "fraction"]


def hide(mask: np.ndarray, rows: np.ndarray, fraction: float, seed) -> np.ndarray:
    """Hide a uniformly random ``fraction`` of the observed entries of the chosen rows.

    Parameters
    ----------
    mask : bool array (n_obs, n_vars)
        True = observed. Only observed entries can be hidden.
    rows : bool array (n_obs,)
        The spots whose entries may be hidden.
    fraction : float in (0, 1]
        Share of the candidate entries (observed, in ``rows``) to hide, rounded to an integer
        count.
    seed : int or sequence of ints
        Seed of :func:`numpy.random.default_rng`.

    Returns
    -------
    bool array (n_obs, n_vars): True for the hidden entries.
    """
    mask, rows = np.asarray(mask), np.asarray(rows)
    if mask.dtype != bool or mask.ndim != 2:
        raise TypeError(f"mask must be a 2-D boolean array, got {mask.dtype} {mask.shape}")
    if rows.dtype != bool or rows.shape != (mask.shape[0],):
        raise TypeError(f"rows must be a boolean vector of length {mask.shape[0]}, "
                        f"got {rows.dtype} {rows.shape}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    candidates = np.flatnonzero(mask & rows[:, None])
    n_hide = int(round(fraction * len(candidates)))
    chosen = np.random.default_rng(seed).choice(candidates, size=n_hide, replace=False)
    hidden = np.zeros(mask.size, dtype=bool)
    hidden[chosen] = True
    return hidden.reshape(mask.shape)


def _hide_seed(seed: int, split: str, fraction: float) -> list[int]:
    """Seed of the hidden entries: depends on the seed, the split name and the fraction only."""
    return [int(seed), zlib.crc32(split.encode()), int(round(fraction * 1_000_000))]


def evaluate(adata: ad.AnnData, methods: Mapping[str, Callable[[], Completer]], *,
             layer: str = "c_d_log1p", mask_key: str = "mask",
             fractions: Sequence[float] = (0.1, 0.3, 0.5), seeds: Sequence[int] = (0, 1, 2),
             splits: Sequence[str] = ("test",), progress: bool = True,
             models: dict | None = None) -> pd.DataFrame:
    """Score completers on hidden observed entries, for every method, split, fraction and seed.

    Parameters
    ----------
    adata : AnnData
        Reads ``layers[layer]``, ``layers[mask_key]``, ``obs['split']`` and whatever the methods
        read; writes nothing.
    methods : mapping name → factory
        A factory builds an unfitted :class:`Completer` (a class, or e.g.
        ``lambda: SpaCKLE(max_steps=500)``); it is called once per seed.
    layer, mask_key : str
        Expression layer and observation mask (True = observed).
    fractions, seeds, splits
        Shares of the observed entries to hide, seeds (of the fit and of the hidden entries),
        the ``obs['split']`` values whose spots are scored.
    progress : bool
        Show a tqdm progress bar.
    models : dict, optional
        When given, receives the fitted models: ``models[seed][name]``.

    Returns
    -------
    pd.DataFrame
        One row per (method, split, fraction, seed): ``method, split, fraction, seed, mse, mae,
        pcc_gene, n_constant_genes, n_hidden, fit_seconds, predict_seconds``. ``fit_seconds``
        is the method's single fit for that seed, repeated on its rows.
    """
    from tqdm.auto import tqdm

    if not methods:
        raise ValueError("no method to evaluate")
    values = layer_values(adata, layer)
    observed = mask_values(adata, mask_key, values.shape)
    if SPLIT_KEY not in adata.obs:
        raise KeyError(f"obs[{SPLIT_KEY!r}] is missing")
    split = adata.obs[SPLIT_KEY].astype(str).to_numpy()
    for name in splits:
        if not (split == name).any():
            raise ValueError(f"no spot has obs[{SPLIT_KEY!r}] == {name!r} "
                             f"(values: {sorted(set(split))})")
    records = []
    bar = tqdm(total=len(seeds) * len(methods) * len(fractions) * len(splits),
               desc="evaluate", disable=not progress)
    for seed in seeds:
        hidden = {(s, f): hide(observed, split == s, f, _hide_seed(seed, s, f))
                  for f in fractions for s in splits}
        for name, factory in methods.items():
            model = factory()
            t0 = time.perf_counter()
            model.fit(adata, layer=layer, mask_key=mask_key, seed=seed)
            fit_seconds = time.perf_counter() - t0
            if models is not None:
                models.setdefault(seed, {})[name] = model
            for fraction in fractions:
                for s in splits:
                    h = hidden[(s, fraction)]
                    t0 = time.perf_counter()
                    pred = model.predict(adata, layer=layer, available=observed & ~h)
                    predict_seconds = time.perf_counter() - t0
                    m = masked_metrics(values, pred, h)
                    records.append({"method": name, "split": s, "fraction": fraction,
                                    "seed": seed, "mse": m["MSE"], "mae": m["MAE"],
                                    "pcc_gene": m["PCC-Gene"],
                                    "n_constant_genes": m["n_constant_genes"],
                                    "n_hidden": int(h.sum()), "fit_seconds": fit_seconds,
                                    "predict_seconds": predict_seconds})
                    bar.update(1)
    bar.close()
    return pd.DataFrame.from_records(records, columns=COLUMNS)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation (ddof 1) over seeds per (method, split, fraction).

    Returns columns ``method, split, fraction, n_seeds, mse_mean, mse_sd, mae_mean, mae_sd,
    pcc_gene_mean, pcc_gene_sd, fit_seconds, predict_seconds`` (the last two: means).
    """
    g = df.groupby(GROUP, sort=False)
    out = g["seed"].nunique().rename("n_seeds").to_frame()
    for col in ("mse", "mae", "pcc_gene"):
        out[f"{col}_mean"] = g[col].mean()
        out[f"{col}_sd"] = g[col].std(ddof=1)
    out["fit_seconds"] = g["fit_seconds"].mean()
    out["predict_seconds"] = g["predict_seconds"].mean()
    return out.reset_index()


def mse_reduction(df: pd.DataFrame, reference: str = "spackle") -> pd.DataFrame:
    """Relative MSE reduction of ``reference`` against every other method, in percent.

    Per split, fraction and seed: 100 · (1 − mse_reference / mse_other), paired by seed (the
    hidden entries are the same); then mean and sd (ddof 1) over seeds. Positive = the
    reference has the lower error.

    Returns columns ``reference, method, split, fraction, n_seeds, reduction_mean,
    reduction_sd``.
    """
    methods = list(pd.unique(df["method"]))
    if reference not in methods:
        raise ValueError(f"reference method {reference!r} not in the results ({methods})")
    if len(methods) < 2:
        raise ValueError(f"only {reference!r} in the results: nothing to compare with")
    keys = ["split", "fraction", "seed"]
    ref = df.loc[df["method"] == reference, keys + ["mse"]].rename(columns={"mse": "mse_ref"})
    pairs = df.loc[df["method"] != reference, ["method"] + keys + ["mse"]].merge(ref, on=keys)
    pairs["reduction"] = 100.0 * (1.0 - pairs["mse_ref"] / pairs["mse"])
    g = pairs.groupby(GROUP, sort=False)["reduction"]
    out = pd.DataFrame({"n_seeds": g.size(), "reduction_mean": g.mean(),
                        "reduction_sd": g.std(ddof=1)}).reset_index()
    out.insert(0, "reference", reference)
    return out
