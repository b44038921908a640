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
                    n_hops: int = 4, geometry: str = "grid", mask: np.ndarray | None = None) -> None:
    """Fill each missing entry with the first non-zero median of its gene over 1…``n_hops`` rings.

    ``mask`` (bool, n_obs × n_vars, True = observed) says which entries are missing (False);
    by default ``mask = values != 0``, i.e. the zeros are filled. Unobserved entries count as 0
    in the neighbourhood medians (SpaRED's semantics) and their values are never read.
    Per slide (``obs['slide_id']``), the k-hop neighbourhood of a spot includes the spot itself.
    If all medians are zero, the median of the gene's observed values in the slide is used
    (0 if it has none). Observed entries are never changed. Writes ``layers[key_added]``.
    """
    if not isinstance(n_hops, int) or n_hops < 1:
        raise TypeError(f"n_hops must be a positive int, got {n_hops!r}")
    values = _dense(_layer(adata, layer))
    if mask is not None:
        mask = np.asarray(mask.toarray() if sp.issparse(mask) else mask)
        if mask.dtype != bool:
            raise TypeError(f"mask must be boolean (True = observed), got dtype {mask.dtype}")
        if mask.shape != values.shape:
            raise ValueError(f"mask has shape {mask.shape}, layer {layer!r} has {values.shape}")
    out = values.copy()
    for slide in adata.obs["slide_id"].unique():
        rows = np.flatnonzero((adata.obs["slide_id"] == slide).to_numpy())
        coords = adata.obs.iloc[rows][["array_col", "array_row"]].to_numpy()
        todo = None if mask is None else ~mask[rows]
        out[rows] = _fill_slide(values[rows], neighbour_graph(coords, geometry=geometry), n_hops,
                                todo=todo)
    adata.layers[key_added] = out


def _fill_slide(x: np.ndarray, graph: sp.csr_matrix, n_hops: int,
                todo: np.ndarray | None = None) -> np.ndarray:
    """Fill the ``todo`` entries of one slide (default: the zeros); other entries are kept."""
    todo = (x == 0) if todo is None else np.array(todo, dtype=bool)
    observed = ~todo
    x = np.where(todo, 0.0, x)  # missing entries count as 0 and are never read
    filled = x.copy()
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
        kept = np.where(observed, x, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # genes with no observed value
            fallback = np.nan_to_num(np.nanmedian(kept, axis=0), nan=0.0)
        filled[todo] = np.broadcast_to(fallback, x.shape)[todo]
    return filled
