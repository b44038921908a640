"""SpaRED's adaptive median filter: fill dropout zeros from the nearest non-zero k-hop median."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import scipy.sparse as sp

from .normalize import _dense, _layer


def neighbour_graph(coords: np.ndarray, *, geometry: str) -> sp.csr_matrix:
    """Adjacency of spots on their array: ``"grid"`` (8 neighbours, legacy ST) or ``"hex"`` (6, Visium).

    ``coords`` are integer array coordinates (col, row); Visium rows are offset by one column.
    """
    steps = {"grid": [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if (dx, dy) != (0, 0)],
             "hex": [(-2, 0), (2, 0), (-1, -1), (1, -1), (-1, 1), (1, 1)]}
    if geometry not in steps:
        raise ValueError(f"geometry must be 'grid' or 'hex', got {geometry!r}")
    index = {(int(x), int(y)): i for i, (x, y) in enumerate(coords)}
    rows, cols = [], []
    for i, (x, y) in enumerate(coords):
        for dx, dy in steps[geometry]:
            j = index.get((int(x) + dx, int(y) + dy))
            if j is not None:
                rows.append(i)
                cols.append(j)
    n = len(coords)
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))


def adaptive_median(adata: ad.AnnData, *, layer: str = "log1p", key_added: str = "d_log1p",
                    n_hops: int = 4, geometry: str = "grid") -> None:
    """Fill each zero entry with the first non-zero median of its gene over 1…``n_hops`` rings.

    Per slide (``obs['slide_id']``), the k-hop neighbourhood of a spot includes the spot itself.
    If all medians are zero, the gene's median over its non-zero values in the slide is used
    (0 if it has none). Non-zero entries are never changed. Writes ``layers[key_added]``.
    """
    if not isinstance(n_hops, int) or n_hops < 1:
        raise TypeError(f"n_hops must be a positive int, got {n_hops!r}")
    values = _dense(_layer(adata, layer))
    out = values.copy()
    for slide in adata.obs["slide_id"].unique():
        rows = np.flatnonzero((adata.obs["slide_id"] == slide).to_numpy())
        coords = adata.obs.iloc[rows][["array_col", "array_row"]].to_numpy()
        out[rows] = _fill_slide(values[rows], neighbour_graph(coords, geometry=geometry), n_hops)
    adata.layers[key_added] = out


def _fill_slide(x: np.ndarray, graph: sp.csr_matrix, n_hops: int) -> np.ndarray:
    filled = x.copy()
    todo = x == 0
    step = (graph + sp.identity(graph.shape[0], format="csr")).astype(bool).astype(np.int8)
    reach = step.copy()
    for _ in range(n_hops):
        if not todo.any():
            break
        medians = np.vstack([np.median(x[reach[i].indices], axis=0) for i in range(x.shape[0])])
        use = todo & (medians != 0)
        filled[use] = medians[use]
        todo &= ~use
        reach = (reach @ step).astype(bool).astype(np.int8)
    if todo.any():
        nonzero = np.where(x != 0, x, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # genes with no non-zero value
            fallback = np.nan_to_num(np.nanmedian(nonzero, axis=0), nan=0.0)
        filled[todo] = np.broadcast_to(fallback, x.shape)[todo]
    return filled
