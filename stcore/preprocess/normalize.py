"""TPM with merged exon lengths and log2(TPM + 1), as SpaRED computes them."""

from __future__ import annotations

import anndata as ad
import numpy as np
import scipy.sparse as sp

from ..data import registry
from ..errors import DataError
from .genes import gene_table, symbol_lengths


def tpm(adata: ad.AnnData, *, annotation: str | None = None, layer: str = "counts") -> ad.AnnData:
    """Transcripts per million: counts / merged exon length, each spot rescaled to sum 1e6.

    Genes without a length in the annotation are removed, and their number is recorded.
    ``annotation`` defaults to the dataset's registered GTF.

    Returns
    -------
    A new AnnData (genes with a length) with ``var['gene_ids', 'gene_length']``,
    ``layers['tpm']`` and ``uns['stcore']['genes_without_length']``.
    """
    annotation = annotation or registry.get(adata.uns["stcore"]["dataset"]).annotation
    lengths = symbol_lengths(adata.var_names, gene_table(annotation))
    known = lengths["gene_length"].notna().to_numpy()
    if not known.any():
        raise DataError(annotation, "none of the genes is in the annotation")
    out = adata[:, known].copy()
    out.var["gene_ids"] = lengths.loc[known, "gene_ids"].to_numpy()
    out.var["gene_length"] = lengths.loc[known, "gene_length"].to_numpy()
    counts = _dense(_layer(out, layer))
    rate = counts / out.var["gene_length"].to_numpy()[None, :]
    total = rate.sum(axis=1, keepdims=True)
    out.layers["tpm"] = np.divide(rate * 1e6, total, out=np.zeros_like(rate), where=total > 0)
    out.uns.setdefault("stcore", {})["genes_without_length"] = int((~known).sum())
    return out


def log1p(adata: ad.AnnData, *, layer: str = "tpm", key_added: str = "log1p") -> None:
    """``layers[key_added] = log2(layers[layer] + 1)`` (SpaRED's base-2 log1p)."""
    adata.layers[key_added] = np.log2(_dense(_layer(adata, layer)) + 1.0)


def _layer(adata: ad.AnnData, layer: str):
    if layer not in adata.layers:
        raise KeyError(f"layer {layer!r} not in adata.layers ({', '.join(adata.layers) or 'none'})")
    return adata.layers[layer]


def _dense(matrix) -> np.ndarray:
    return np.asarray(matrix.toarray() if sp.issparse(matrix) else matrix, dtype=np.float64)
