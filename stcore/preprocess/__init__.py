"""The SpaRED preprocessing pipeline, one small function per step on an AnnData.

:func:`preprocess` runs them all on a registered dataset (cached); :func:`spared` on any AnnData
with raw counts. Steps: :func:`filter_spots`, :func:`filter_genes` (expression fractions and the
running-mean rule), :func:`tpm` (GENCODE merged exon lengths), :func:`log1p`,
:func:`adaptive_median`, :func:`morans_i` / :func:`top_genes`, :func:`observed_mask`,
:func:`combat`, :func:`deltas`.
"""

from .batch import batch_embeddings, combat, deltas, observed_mask
from .filters import expression_fractions, filter_genes, filter_spots
from .genes import gene_table, read_gtf_genes, symbol_lengths
from .median import adaptive_median, neighbour_graph
from .moran import morans_i, slide_morans_i, top_genes
from .normalize import log1p, tpm
from .pipeline import PIPELINE_VERSION, Params, preprocess, spared

__all__ = ["PIPELINE_VERSION", "Params", "adaptive_median", "batch_embeddings", "combat", "deltas",
           "expression_fractions", "filter_genes", "filter_spots", "gene_table", "log1p",
           "morans_i", "neighbour_graph", "observed_mask", "preprocess", "read_gtf_genes",
           "slide_morans_i", "spared", "symbol_lengths", "top_genes", "tpm"]
