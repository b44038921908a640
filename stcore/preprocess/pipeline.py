"""The SpaRED pipeline end to end, with parameters from the registry, cached by content."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from .._io import atomic_dir, content_key
from ..data import load as load_dataset
from ..data import processed_dir, registry
from ..errors import DataError
from .batch import check_batches, combat, deltas, observed_mask
from .filters import _check_slides, expression_fractions, filter_genes, filter_spots
from .median import adaptive_median
from .moran import morans_i, top_genes
from .normalize import log1p, tpm

log = logging.getLogger("stcore")

PIPELINE_VERSION = 2  # bump when a step's output changes


@dataclasses.dataclass(frozen=True)
class Params:
    """Parameters of the SpaRED pipeline (per dataset in ``datasets.yaml`` under ``preprocess``).

    Defaults are those of SpaRED's reader for legacy ST (Andersson) data, with 128 Moran genes.
    ``gene_panel`` (a registry path of a gene list) replaces the expression-fraction filter and
    the Moran selection by a fixed panel. ``moran_perms`` only adds p-values (SpaRED: 1000).
    """

    cell_min_counts: float = 500
    cell_max_counts: float = 1e5
    gene_min_counts: float = 1e3
    gene_max_counts: float = 1e6
    real_data_percentage: float = 0.7
    top_moran_genes: int = 128
    gene_panel: str | None = None
    combat_key: str = "patient"
    geometry: str = "grid"
    n_hops: int = 4
    moran_perms: int | None = None

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), f.type
            ok = {"float": isinstance(value, (int, float)) and not isinstance(value, bool),
                  "int": isinstance(value, int) and not isinstance(value, bool),
                  "str": isinstance(value, str),
                  "str | None": value is None or isinstance(value, str),
                  "int | None": value is None or (isinstance(value, int) and not isinstance(value, bool))}
            if not ok[kind]:
                raise TypeError(f"preprocess parameter {f.name} must be {kind}, got {value!r}")
        if self.geometry not in ("grid", "hex"):
            raise ValueError(f"geometry must be 'grid' or 'hex', got {self.geometry!r}")

    @classmethod
    def for_dataset(cls, name: str, **overrides) -> "Params":
        """The registry's parameters of ``name`` with ``overrides`` (unknown names are errors)."""
        merged = {**registry.get(name).preprocess, **overrides}
        unknown = set(merged) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown preprocess parameters {sorted(unknown)}")
        return cls(**merged)


def spared(adata: ad.AnnData, params: Params, *, annotation: str | None = None) -> ad.AnnData:
    """Run every SpaRED step on raw counts (``layers['counts']``); returns a new AnnData.

    Writes layers ``counts``, ``tpm``, ``log1p``, ``d_log1p`` (adaptive median), ``c_log1p`` and
    ``c_d_log1p`` (ComBat), ``deltas``, ``d_deltas``, ``c_deltas``, ``c_d_deltas`` and ``mask``
    (True = observed); ``var['gene_ids', 'gene_length', 'exp_frac', 'glob_exp_frac',
    'd_log1p_moran', '*_avg_exp']``, ``varm['moran_per_slide']``; ``uns['stcore']['preprocess']``
    with the parameters (JSON), ``moran`` (every filtered gene's mean Moran's I and
    whether it was selected), a table of the spots and genes left after each step, each step's seconds and the
    fraction of missing entries before and after.
    """
    check_batches(adata, params.combat_key)  # fail before any work
    steps, clock = [], [time.perf_counter()]
    raw_missing = _missing_fraction(adata.layers["counts"])

    def done(name, data):
        now = time.perf_counter()
        steps.append({"step": name, "spots": data.n_obs, "genes": data.n_vars,
                      "seconds": round(now - clock[0], 3)})
        clock[0] = now
        return data

    bar = tqdm(total=9, desc="SpaRED preprocessing", unit="step")

    def step(name, fn, data):
        bar.set_postfix_str(name)
        out = fn(data)
        bar.update()
        return done(name, data if out is None else out)

    adata = done("raw", adata)
    adata = step("spot filter", lambda a: filter_spots(a, min_counts=params.cell_min_counts,
                                                       max_counts=params.cell_max_counts), adata)
    if params.gene_panel:
        adata = step("gene panel", lambda a: _select_panel(a, params.gene_panel), adata)
    else:
        adata = step("gene filter", lambda a: filter_genes(
            a, min_counts=params.gene_min_counts, max_counts=params.gene_max_counts,
            real_data_percentage=params.real_data_percentage), adata)
    adata = step("TPM", lambda a: tpm(a, annotation=annotation), adata)
    adata = step("log1p", log1p, adata)
    adata = step("adaptive median", lambda a: adaptive_median(
        a, layer="log1p", key_added="d_log1p", n_hops=params.n_hops, geometry=params.geometry), adata)
    adata = step("Moran's I", lambda a: morans_i(a, layer="d_log1p", geometry=params.geometry,
                                                 n_perms=params.moran_perms), adata)
    moran = adata.var[["d_log1p_moran"]].copy()
    if not params.gene_panel:
        adata = top_genes(adata, params.top_moran_genes, key="d_log1p_moran")
    moran["selected"] = moran.index.isin(adata.var_names)
    adata = step("top genes, mask", observed_mask, adata)
    adata = step("ComBat", lambda a: _combat_both(a, params.combat_key), adata)
    for layer in ("log1p", "d_log1p", "c_log1p", "c_d_log1p"):
        deltas(adata, layer=layer)
    bar.update()
    bar.close()
    done("deltas", adata)
    adata.uns["stcore"]["preprocess"] = {
        "params": json.dumps(dataclasses.asdict(params)), "version": PIPELINE_VERSION,
        "steps": pd.DataFrame(steps), "moran": moran,
        "missing_raw": raw_missing, "missing_processed": float(1 - adata.layers["mask"].mean()),
    }
    return adata


def preprocess(name: str, *, sections: list[str] | None = None, cache: bool = True,
               **overrides) -> ad.AnnData:
    """Load a registered dataset and run :func:`spared` on it, cached by content.

    The cache key combines the raw files' sha256, the sections, the parameters (registry values
    with ``overrides``) and :data:`PIPELINE_VERSION`; a second call with the same inputs reads
    ``<cache>/processed/<name>/<key>/spared.h5ad``. Returns what :func:`spared` writes.
    """
    params = Params.for_dataset(name, **overrides)
    raw = load_dataset(name, sections=sections, cache=cache)
    entry = registry.get(name)
    annotation_sha = registry.file_registry()[entry.annotation][0] if entry.annotation else None
    key = content_key(raw.uns["stcore"]["key"], dataclasses.asdict(params), annotation_sha,
                      PIPELINE_VERSION)
    path = processed_dir(name, key) / "spared.h5ad"
    if cache and path.exists():
        return ad.read_h5ad(path)
    adata = spared(raw, params)
    adata.uns["stcore"]["preprocess"]["key"] = key
    if cache:
        with atomic_dir(path.parent) as tmp:
            adata.write_h5ad(Path(tmp) / "spared.h5ad")
    return adata


def _combat_both(adata: ad.AnnData, batch_key: str) -> None:
    for layer in ("log1p", "d_log1p"):
        combat(adata, layer=layer, batch_key=batch_key)


def _select_panel(adata: ad.AnnData, panel: str) -> ad.AnnData:
    path = registry.fetch(panel)
    genes = [g.strip() for g in Path(path).read_text().split() if g.strip()]
    if not genes:
        raise DataError(path, "empty gene list")
    present = adata.var_names.isin(genes)
    missing = len(set(genes) - set(adata.var_names))
    if missing:
        log.warning("%s: %d of %d panel genes are not in the data", panel, missing, len(genes))
    adata = adata[:, present].copy()
    nonempty = np.asarray(adata.layers["counts"].sum(axis=1)).ravel() > 0
    _check_slides(adata, nonempty, "counts on the panel genes")
    adata = adata[nonempty].copy()
    expression_fractions(adata)
    adata.uns["stcore"]["panel_genes_missing"] = missing
    return adata


def _missing_fraction(counts) -> float:
    n = counts.shape[0] * counts.shape[1]
    nonzero = counts.count_nonzero() if sp.issparse(counts) else np.count_nonzero(counts)
    return float(1 - nonzero / n)
