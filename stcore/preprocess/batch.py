"""Batch correction (scanpy's ComBat), train-mean deltas and the observation mask."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd

from .normalize import _dense, _layer


def combat(adata: ad.AnnData, *, layer: str, batch_key: str = "patient",
           key_added: str | None = None) -> None:
    """ComBat (``scanpy.pp.combat``, parametric priors) of one layer, batch = ``obs[batch_key]``.

    Writes ``layers[key_added]`` (default ``'c_' + layer``). A batch key with a single level is
    an error: there is nothing to correct.
    """
    import scanpy as sc

    values = _dense(_layer(adata, layer))
    check_batches(adata, batch_key)
    part = ad.AnnData(values, obs=adata.obs[[batch_key]].astype(str).astype("category"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        corrected = sc.pp.combat(part, key=batch_key, inplace=False)
    if not np.isfinite(corrected).all():
        raise ValueError(f"ComBat of layer {layer!r} produced non-finite values (a gene constant "
                         f"within a batch of {batch_key!r}?)")
    adata.layers[key_added or f"c_{layer}"] = np.asarray(corrected)


def check_batches(adata: ad.AnnData, batch_key: str) -> None:
    """Raise unless ``obs[batch_key]`` exists and has at least two levels."""
    if batch_key not in adata.obs:
        raise KeyError(f"batch key {batch_key!r} not in obs ({', '.join(adata.obs.columns)})")
    levels = adata.obs[batch_key].astype(str)
    if levels.nunique() < 2:
        raise ValueError(f"ComBat needs at least two batches; obs[{batch_key!r}] has one "
                         f"level ({levels.iloc[0]!r})")


def deltas(adata: ad.AnnData, *, layer: str, key_added: str | None = None,
           train_key: str = "split", train_value: str = "train") -> None:
    """Expression minus its per-gene mean over the train spots (SpaRED's ``deltas`` family).

    ``log1p`` → ``deltas``, ``d_log1p`` → ``d_deltas``, ``c_d_log1p`` → ``c_d_deltas`` etc.
    Writes ``layers[key_added]`` and ``var['{layer}_avg_exp']``.
    """
    name = key_added or delta_name(layer)
    values = _dense(_layer(adata, layer))
    train = (adata.obs[train_key] == train_value).to_numpy()
    if not train.any():
        raise ValueError(f"no spot has obs[{train_key!r}] == {train_value!r}: no train mean")
    mean = values[train].mean(axis=0)
    adata.var[f"{layer}_avg_exp"] = mean
    adata.layers[name] = values - mean


def delta_name(layer: str) -> str:
    """SpaRED's name of the deltas of a log layer: ``c_d_log1p`` → ``c_d_deltas``."""
    if not layer.endswith("log1p"):
        raise ValueError(f"deltas are defined for *log1p layers, got {layer!r}")
    return layer.removesuffix("log1p") + "deltas"


def observed_mask(adata: ad.AnnData, *, layer: str = "tpm") -> None:
    """``layers['mask']``: True where the entry was measured (non-zero), False for dropouts."""
    adata.layers["mask"] = _dense(_layer(adata, layer)) != 0


def batch_embeddings(adata: ad.AnnData, *, layers: tuple[str, ...] = ("log1p", "c_log1p"),
                     key: str = "patient", n_pcs: int = 10, seed: int = 0):
    """UMAP of each layer and the silhouette of batch labels before/after correction.

    Returns ``(embeddings, silhouettes)``: ``{layer: n_obs × 2 UMAP}`` and a frame (layers ×
    ``[key, 'slide_id']``) of silhouette scores on ``n_pcs`` principal components (scikit-learn).
    Nothing is written to ``adata``.
    """
    import scanpy as sc
    from sklearn.metrics import silhouette_score

    labels = {k: adata.obs[k].astype(str).to_numpy() for k in dict.fromkeys([key, "slide_id"])}
    embeddings, rows = {}, {}
    for layer in layers:
        part = ad.AnnData(_dense(_layer(adata, layer)).astype(np.float32))
        sc.pp.pca(part, n_comps=min(n_pcs, min(part.shape) - 1), random_state=seed)
        sc.pp.neighbors(part, random_state=seed, transformer="sklearn")  # exact kNN
        sc.tl.umap(part, random_state=seed)
        embeddings[layer] = part.obsm["X_umap"]
        rows[layer] = {k: silhouette_score(part.obsm["X_pca"], v) if len(set(v)) > 1 else np.nan
                       for k, v in labels.items()}
    return embeddings, pd.DataFrame(rows).T
