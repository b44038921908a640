"""``load(name)``: a registered dataset as one AnnData, built once and cached by content."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import anndata as ad
import pandas as pd
from tqdm.auto import tqdm

from .. import _settings
from .._io import atomic_dir, content_key
from ..errors import DataError
from . import legacy_st, registry, visium

log = logging.getLogger("stcore")

FORMAT_VERSION = 1  # bump when the AnnData layout written here changes

READERS = {
    "her2st": (legacy_st.read_her2st_section, legacy_st.HER2ST_SECTIONS),
    "mob": (legacy_st.read_mob_section, legacy_st.MOB_SECTIONS),
    "visium": (visium.read_visium_format_sample, ["visium_format_sample"]),
}


def sections(name: str) -> list[str]:
    """Section (slide) ids of a registered dataset."""
    return list(READERS[registry.get(name).reader][1])


def load(name: str, *, sections: list[str] | None = None, strict: bool = False,
         cache: bool = True) -> ad.AnnData:
    """Load a registered dataset (all or some sections) as one AnnData.

    Parameters
    ----------
    name
        Registry name (``stcore.data.registry.datasets()``).
    sections
        Subset of section ids; default all.
    strict
        Turn tolerated inconsistencies of the release (spots with a position but no counts,
        spots without a label) into errors.
    cache
        Read/write ``<cache>/processed/<name>/<key>/adata.h5ad``, keyed by the raw files' sha256,
        the sections and the reader version.

    Returns
    -------
    AnnData with raw counts in ``X`` and ``layers['counts']``; ``obs['slide_id', 'patient',
    'split', 'array_row', 'array_col', 'in_tissue', 'has_image']`` plus the label column named by the
    registry (``label`` for her2st, ``layer`` for MOB); ``obsm['spatial']``;
    ``uns['spatial'][slide_id]`` (``images``: hires/lowres where an H&E exists, ``scalefactors``);
    ``uns['stcore']`` (dataset, cache key, sections, genes before the inner join).
    """
    entry = registry.get(name)
    reader, known = READERS[entry.reader]
    chosen = list(known if sections is None else sections)
    unknown = [s for s in chosen if s not in known]
    if unknown or not chosen:
        raise DataError(name, f"unknown sections {unknown or chosen}; known: {', '.join(known)}")
    key = content_key(name, chosen, strict, entry.checksums(), FORMAT_VERSION)
    path = processed_dir(name, key) / "adata.h5ad"
    if cache and path.exists():
        return ad.read_h5ad(path)
    start = time.perf_counter()
    parts = [reader(s, strict=strict) for s in tqdm(chosen, desc=f"reading {name}", unit="section")]
    adata = _combine(parts, entry)
    adata.uns["stcore"].update(key=key, read_seconds=round(time.perf_counter() - start, 2))
    if cache:
        with atomic_dir(path.parent) as tmp:
            adata.write_h5ad(Path(tmp) / "adata.h5ad")
    return adata


def processed_dir(name: str, key: str) -> Path:
    """Cache folder of one processed version of a dataset (h5ad and patch stores)."""
    return _settings.cache_dir() / "processed" / name / key


def _combine(parts: list[ad.AnnData], entry: registry.Dataset) -> ad.AnnData:
    n_union = len(set().union(*(p.var_names for p in parts)))
    adata = ad.concat(parts, join="inner", merge="same")
    adata.uns["spatial"] = {k: v for p in parts for k, v in p.uns["spatial"].items()}
    adata.layers["counts"] = adata.X.copy()
    adata.obs["split"] = _split(adata.obs, entry)
    for column in ("slide_id", "patient", "split"):
        adata.obs[column] = pd.Categorical(adata.obs[column],
                                           categories=list(dict.fromkeys(adata.obs[column])))
    if entry.label_key and entry.label_key in adata.obs:
        adata.obs[entry.label_key] = pd.Categorical(adata.obs[entry.label_key].astype("object"))
    no_image = sorted(adata.obs.loc[~adata.obs["has_image"], "slide_id"].unique())
    if no_image:
        log.warning("%s: %d sections have no H&E image (%s); they are usable for expression-only "
                    "work and excluded from image tasks", entry.name, len(no_image), ", ".join(no_image))
    adata.uns["stcore"] = {"dataset": entry.name, "sections": [p.obs["slide_id"].iloc[0] for p in parts],
                           "n_genes_union": n_union, "sections_without_image": no_image}
    return adata


def _split(obs: pd.DataFrame, entry: registry.Dataset) -> pd.Series:
    groups = obs[entry.split_by].astype(str)
    lookup = {g: split for split, members in entry.split.items() for g in members}
    return groups.map(lookup).fillna("unassigned")
