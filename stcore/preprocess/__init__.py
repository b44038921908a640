"""The SpaRED preprocessing pipeline, one small function per step (in progress: issue 3).

Done: gene lengths from GENCODE, TPM, log2(TPM + 1), the adaptive median filter.
"""

from .genes import gene_table, read_gtf_genes, symbol_lengths
from .median import adaptive_median, neighbour_graph
from .normalize import log1p, tpm

__all__ = ["adaptive_median", "gene_table", "log1p", "neighbour_graph", "read_gtf_genes",
           "symbol_lengths", "tpm"]
