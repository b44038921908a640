"""Gene annotation from a GENCODE GTF: merged exon length per gene and symbol ↔ Ensembl id."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .._io import atomic_file, content_key
from .. import _settings
from ..data import registry
from ..errors import DataError

log = logging.getLogger("stcore")

_ATTRS = {"gene_id": r'gene_id "([^"]+)"', "gene_name": r'gene_name "([^"]+)"'}


def read_gtf_genes(path: str | Path) -> pd.DataFrame:
    """Genes of a GTF with their merged exon length (union of all exons, GTFtools' "merged").

    Returns a frame indexed by ``gene_id`` (version suffix stripped) with ``gene_name`` and
    ``merged_length``. Raises :class:`DataError` when the file has no exon lines.
    """
    try:
        gtf = pd.read_csv(path, sep="\t", comment="#", header=None, usecols=[2, 3, 4, 8],
                          names=["feature", "start", "end", "attributes"],
                          dtype={"feature": "category", "start": np.int64, "end": np.int64})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OSError, EOFError) as err:
        raise DataError(path, f"not a readable GTF ({err})") from err
    exons = gtf[gtf["feature"] == "exon"]
    if exons.empty:
        raise DataError(path, "no exon lines: cannot compute gene lengths")
    attrs = pd.DataFrame({k: exons["attributes"].str.extract(v, expand=False) for k, v in _ATTRS.items()})
    if attrs["gene_id"].isna().any():
        raise DataError(path, f"{int(attrs['gene_id'].isna().sum())} exon lines without gene_id")
    exons = pd.DataFrame({"gene_id": attrs["gene_id"].str.replace(r"\.\d+(_PAR_Y)?$", r"\1", regex=True),
                          "gene_name": attrs["gene_name"], "start": exons["start"].to_numpy(),
                          "end": exons["end"].to_numpy()})
    exons = exons.sort_values(["gene_id", "start", "end"], kind="stable")
    # Union length of sorted 1-based closed intervals: each exon adds what lies beyond the
    # furthest end seen so far in its gene.
    reach = exons.groupby("gene_id", sort=False)["end"].cummax()
    before = reach.groupby(exons["gene_id"], sort=False).shift(1)
    covered_to = np.maximum(exons["start"].to_numpy() - 1, before.fillna(0).to_numpy())
    exons["new"] = np.maximum(0, exons["end"].to_numpy() - covered_to)
    genes = exons.groupby("gene_id", sort=True).agg(gene_name=("gene_name", "first"),
                                                    merged_length=("new", "sum"))
    genes["merged_length"] = genes["merged_length"].astype(np.int64)
    return genes


def gene_table(annotation: str) -> pd.DataFrame:
    """:func:`read_gtf_genes` of a registered GTF (e.g. ``annotations/gencode.v43...gtf.gz``), cached."""
    path = registry.fetch(annotation)
    digest = registry.file_registry()[annotation][0]
    cached = _settings.cache_dir() / "annotations" / f"{content_key(digest, 'genes-v1')}.parquet"
    if cached.exists():
        return pd.read_parquet(cached)
    genes = read_gtf_genes(path)
    with atomic_file(cached, "wb") as fh:
        genes.to_parquet(fh)
    return genes


def symbol_lengths(symbols, genes: pd.DataFrame) -> pd.DataFrame:
    """Map gene symbols to Ensembl ids and merged lengths.

    Symbols with several ids keep the first (non-PAR) id; symbols absent from the annotation get
    NaN and are reported with their count (never dropped silently). Returns a frame indexed by
    symbol with ``gene_ids`` and ``gene_length``.
    """
    ranked = genes.assign(par=genes.index.str.endswith("_PAR_Y")).sort_values(["par"], kind="stable")
    first = ranked.reset_index().drop_duplicates("gene_name").set_index("gene_name")
    symbols = pd.Index(symbols)
    out = pd.DataFrame({"gene_ids": first["gene_id"].reindex(symbols).to_numpy(),
                        "gene_length": first["merged_length"].reindex(symbols).to_numpy()},
                       index=symbols)
    missing = int(out["gene_ids"].isna().sum())
    if missing:
        log.warning("%d of %d genes are not in the annotation (e.g. %s)", missing, len(symbols),
                    list(symbols[out["gene_ids"].isna().to_numpy()][:3]))
    return out
