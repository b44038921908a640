"""Readers for legacy Spatial Transcriptomics (ST) releases: her2st and the mouse olfactory bulb.

Both produce one AnnData per section with raw counts in ``X`` and the keys of
:func:`section_anndata`; :func:`stcore.data.load` concatenates and caches them.
"""

from __future__ import annotations

import logging
import re

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import DataError
from . import registry
from .images import image_size, spatial_entry
from .validate import check_inside, match_spots, read_count_table

log = logging.getLogger("stcore")

ST_PITCH_UM = 200.0  # centre-to-centre distance of neighbouring legacy ST spots
ST_SPOT_UM = 100.0


def section_anndata(counts: pd.DataFrame, positions: pd.DataFrame, *, slide_id: str, patient: str,
                    spot_diameter_px: float, image_file=None, image_source=None,
                    positions_file=None) -> ad.AnnData:
    """One section as AnnData.

    ``positions`` is indexed like ``counts`` and has ``array_row``, ``array_col``, ``pixel_x``,
    ``pixel_y``. Writes ``X`` (raw counts, CSR float32), ``obs['slide_id', 'patient', 'array_row',
    'array_col', 'in_tissue', 'has_image']``, ``obsm['spatial']`` (x, y full-resolution pixels) and
    ``uns['spatial'][slide_id]``.
    """
    xy = positions[["pixel_x", "pixel_y"]].to_numpy(float)
    if image_file is not None:
        check_inside(xy, image_size(image_file), path=positions_file or image_file,
                     names=list(positions.index))
    obs = pd.DataFrame({
        "slide_id": slide_id, "patient": patient,
        "array_row": positions["array_row"].to_numpy(int),
        "array_col": positions["array_col"].to_numpy(int),
        "in_tissue": 1, "has_image": image_file is not None,
        "spot": counts.index.astype(str),
    }, index=[f"{slide_id}_{s}" for s in counts.index])
    adata = ad.AnnData(X=sp.csr_matrix(counts.to_numpy(np.float32)), obs=obs,
                       var=pd.DataFrame(index=counts.columns.astype(str)))
    adata.obsm["spatial"] = xy
    adata.uns["spatial"] = {slide_id: spatial_entry(image_file, spot_diameter_px, source=image_source)}
    return adata


# ---------------------------------------------------------------------------------------- her2st
HER2ST_SECTIONS = [f"{p}{i}" for p in "ABCD" for i in range(1, 7)] + \
                  [f"{p}{i}" for p in "EFGH" for i in range(1, 4)]


def read_her2st_section(section: str, *, strict: bool = False) -> ad.AnnData:
    """One her2st section: counts, selected spots (pixel centres), H&E if present, pathologist labels.

    Adds ``obs['label']`` (pathologist region; NaN where the section has no annotation).
    """
    counts_path = registry.fetch(f"her2st/ST-cnts/{section}.tsv.gz")
    spots_path = registry.fetch(f"her2st/ST-spotfiles/{section}_selection.tsv")
    counts = read_count_table(counts_path)
    spots = _read_table(spots_path, ["x", "y", "new_x", "new_y", "pixel_x", "pixel_y"])
    spots.index = spots["x"].astype(int).astype(str) + "x" + spots["y"].astype(int).astype(str)
    keep = match_spots(counts.index, spots.index, counts_file=counts_path,
                       positions_file=spots_path, strict=strict)
    positions = spots.loc[keep].rename(columns={"x": "array_col", "y": "array_row"})
    image = _her2st_image(section)
    adata = section_anndata(counts.loc[keep], positions, slide_id=section, patient=section[0],
                            spot_diameter_px=_spot_diameter_px(spots), positions_file=spots_path,
                            image_file=registry.fetch(image) if image else None, image_source=image)
    adata.obs["label"] = _her2st_labels(section, positions)
    return adata


def _her2st_image(section: str) -> str | None:
    prefix = f"her2st/ST-imgs/{section[0]}/{section}/"
    found = [p for p in registry.file_registry() if p.startswith(prefix)]
    available = [p for p in found if registry.has_file(p) or registry.file_registry()[p][1]]
    return available[0] if available else None


def _her2st_labels(section: str, positions: pd.DataFrame) -> pd.Series:
    path = f"her2st/ST-pat/lbl/{section}_labeled_coordinates.tsv"
    if path not in registry.file_registry():
        return np.full(len(positions), np.nan, dtype=object)
    table = _read_table(registry.fetch(path), ["x", "y", "label"])
    table = table.dropna(subset=["x", "y"])
    key = table["x"].round().astype(int).astype(str) + "x" + table["y"].round().astype(int).astype(str)
    labels = pd.Series(table["label"].to_numpy(), index=key)
    labels = labels[~labels.index.duplicated()]
    return labels.reindex(positions.index).to_numpy()


def _spot_diameter_px(spots: pd.DataFrame) -> float:
    """Spot diameter in pixels from the array-to-pixel scale fitted on the spot file."""
    slope = np.polyfit(spots["new_x"].to_numpy(float), spots["pixel_x"].to_numpy(float), 1)[0]
    return abs(slope) * ST_SPOT_UM / ST_PITCH_UM


# ------------------------------------------------------------------------------------------- MOB
MOB_SECTIONS = ["Rep1", "Rep2", "Rep11", "Rep12"]
MOB_LAYERS = ["Olfactory nerve layer", "Glomerular layer", "Outer Plexiform Layer",
              "Mitral Cell Layer", "Granular Cell Layer"]


def read_mob_section(section: str, *, strict: bool = False) -> ad.AnnData:
    """One MOB replicate: counts with decimal array coordinates, H&E, layer labels (``obs['layer']``).

    Pixel centres follow the data README: ``px = (x - 1) * 194 * W / 6200`` (same for y).
    """
    number = int(section.removeprefix("Rep"))
    counts_path = registry.fetch(f"mob/counts/{section}.tsv.gz")
    counts = read_count_table(counts_path)
    image = f"mob/images/{number:02d}.jpg"
    image_path = registry.fetch(image)
    xy = _decimal_coordinates(counts.index, counts_path)
    scale = 194 * image_size(image_path)[1] / 6200  # pixels per array unit (200 µm)
    positions = pd.DataFrame({"array_col": np.round(xy[:, 0]), "array_row": np.round(xy[:, 1]),
                              "pixel_x": (xy[:, 0] - 1) * scale, "pixel_y": (xy[:, 1] - 1) * scale},
                             index=counts.index)
    meta = _read_table(registry.fetch("mob/splotch_metadata.tsv"), ["sample_number", "level_1"])
    animal = meta.set_index("sample_number").loc[number, "level_1"]
    adata = section_anndata(counts, positions, slide_id=section, patient=str(animal),
                            spot_diameter_px=scale * ST_SPOT_UM / ST_PITCH_UM, image_file=image_path,
                            image_source=image, positions_file=counts_path)
    adata.obs["layer"] = _mob_layers(number, positions, strict=strict)
    return adata


def _decimal_coordinates(names: pd.Index, path) -> np.ndarray:
    pattern = re.compile(r"^(\d+(?:\.\d+)?)x(\d+(?:\.\d+)?)$")
    matches = [pattern.match(str(n)) for n in names]
    bad = [n for n, m in zip(names, matches) if m is None]
    if bad:
        raise DataError(path, f"{len(bad)} spot names are not '<x>x<y>' coordinates, e.g. {bad[:3]}")
    return np.array([[float(m.group(1)), float(m.group(2))] for m in matches])


def _mob_layers(number: int, positions: pd.DataFrame, *, strict: bool) -> np.ndarray:
    path = registry.fetch(f"mob/annotations/{number:02d}.tsv")
    onehot = _read_table(path, [], index_col=0).T
    onehot.index = onehot.index.astype(str)
    key = (positions["array_col"].astype(int).astype(str) + "_"
           + positions["array_row"].astype(int).astype(str))
    labels = onehot.idxmax(axis=1).where(onehot.sum(axis=1) > 0)
    out = labels.reindex(key.to_numpy())
    if out.isna().any():
        message = f"{int(out.isna().sum())} spots have no layer label"
        if strict:
            raise DataError(path, message)
        log.info("%s: %s", path, message)
    return out.to_numpy()


def _read_table(path, required: list[str], index_col: int | None = None) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, sep="\t", index_col=index_col)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise DataError(path, f"unreadable table ({err})") from err
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(path, f"missing columns {missing}; found {list(table.columns)[:8]}")
    if table.empty:
        raise DataError(path, "empty table")
    return table
