"""Reader for 10x Visium Space Ranger output (1.x ``tissue_positions_list.csv``, 2.x ``tissue_positions.csv``)."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np

from ..errors import DataError
from . import registry
from .validate import check_counts, check_inside


def read_visium(path: str | Path, *, library_id: str | None = None,
                counts_file: str = "filtered_feature_bc_matrix.h5") -> ad.AnnData:
    """Read a Space Ranger output folder with :func:`squidpy.read.visium` and check it.

    Writes ``X`` (raw counts), ``obs['slide_id', 'patient', 'array_row', 'array_col', 'in_tissue',
    'has_image']``, ``obsm['spatial']`` (x, y full-resolution pixels), ``var['gene_ids']`` (Ensembl)
    and ``uns['spatial'][library_id]`` (hires/lowres images, scale factors).
    """
    import squidpy as sq

    path = Path(path)
    library_id = library_id or path.name
    counts = path / counts_file
    positions = next((p for p in (path / "spatial/tissue_positions.csv",
                                  path / "spatial/tissue_positions_list.csv") if p.exists()), None)
    for needed, what in [(counts, "count matrix"), (positions, "tissue positions file"),
                         (path / "spatial/scalefactors_json.json", "scale factors")]:
        if needed is None or not needed.exists():
            raise DataError(needed or path / "spatial", f"missing {what} of the Space Ranger output")
    try:
        adata = sq.read.visium(path, counts_file=counts_file, library_id=library_id)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
        raise DataError(path, f"unreadable Space Ranger output ({err})") from err
    missing = adata.obs["in_tissue"].isna().to_numpy()
    if missing.any():
        raise DataError(positions, f"{int(missing.sum())} barcodes of {counts_file} have no position, "
                                   f"e.g. {list(adata.obs_names[missing][:3])}")
    adata.var_names_make_unique()
    check_counts(adata.to_df(), counts)
    if adata.n_obs == 0:
        raise DataError(counts, "empty section: no spots")
    full = _fullres_shape(adata.uns["spatial"][library_id])
    if full is not None:
        check_inside(np.asarray(adata.obsm["spatial"], float), full, path=positions,
                     names=list(adata.obs_names))
    adata.obs_names = [f"{library_id}_{b}" for b in adata.obs_names]
    adata.obs = adata.obs.assign(slide_id=library_id, patient=library_id, has_image=True)
    adata.obs[["array_row", "array_col", "in_tissue"]] = \
        adata.obs[["array_row", "array_col", "in_tissue"]].astype(int)
    adata.obsm["spatial"] = np.asarray(adata.obsm["spatial"], float)
    return adata


def _fullres_shape(entry: dict) -> tuple[int, int] | None:
    """Full-resolution (h, w) implied by the hires image and its scale factor."""
    hires, scale = entry.get("images", {}).get("hires"), entry["scalefactors"].get("tissue_hires_scalef")
    if hires is None or not scale:
        return None
    return int(np.ceil(hires.shape[0] / scale)), int(np.ceil(hires.shape[1] / scale))


def read_visium_format_sample(section: str = "visium_format_sample", **_) -> ad.AnnData:
    """The mirror's Space Ranger 1.0.0 sample, files fetched and verified through the registry."""
    files = [registry.fetch(p) for p in registry.get("visium_format_sample").files]
    root = next(f for f in files if f.name == "filtered_feature_bc_matrix.h5").parent
    return read_visium(root, library_id=section)
