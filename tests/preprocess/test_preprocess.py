"""SpaRED preprocessing steps against hand-computed answers."""

import gzip

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from stcore.errors import DataError
from stcore.preprocess import adaptive_median, log1p, neighbour_graph, read_gtf_genes, symbol_lengths

GTF = """##description: mini annotation
chr1\tTEST\tgene\t1\t40\t.\t+\t.\tgene_id "ENSG01.3"; gene_name "AAA";
chr1\tTEST\texon\t1\t10\t.\t+\t.\tgene_id "ENSG01.3"; transcript_id "T1"; gene_name "AAA";
chr1\tTEST\texon\t5\t20\t.\t+\t.\tgene_id "ENSG01.3"; transcript_id "T2"; gene_name "AAA";
chr1\tTEST\texon\t30\t40\t.\t+\t.\tgene_id "ENSG01.3"; transcript_id "T2"; gene_name "AAA";
chr1\tTEST\texon\t8\t9\t.\t+\t.\tgene_id "ENSG01.3"; transcript_id "T3"; gene_name "AAA";
chr2\tTEST\texon\t100\t199\t.\t-\t.\tgene_id "ENSG02.1"; transcript_id "T4"; gene_name "BBB";
chrY\tTEST\texon\t1\t5\t.\t-\t.\tgene_id "ENSG02.1_PAR_Y"; transcript_id "T5"; gene_name "BBB";
"""


@pytest.fixture
def gtf(tmp_path):
    path = tmp_path / "mini.gtf.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(GTF)
    return path


def test_merged_exon_length_by_hand(gtf):
    genes = read_gtf_genes(gtf)
    # AAA: [1,20] ∪ [30,40] = 20 + 11; BBB: 100 bp; the PAR_Y copy is a separate id
    assert genes.loc["ENSG01", "merged_length"] == 31
    assert genes.loc["ENSG02", "merged_length"] == 100
    assert genes.loc["ENSG02_PAR_Y", "merged_length"] == 5
    mapped = symbol_lengths(["BBB", "AAA", "ZZZ"], genes)
    assert mapped.loc["BBB", "gene_ids"] == "ENSG02"
    assert np.isnan(mapped.loc["ZZZ", "gene_length"])


def test_gtf_without_exons_is_an_error(tmp_path):
    path = tmp_path / "genes_only.gtf"
    path.write_text("\n".join(line for line in GTF.splitlines() if "\texon\t" not in line) + "\n")
    with pytest.raises(DataError, match="genes_only.gtf: no exon lines"):
        read_gtf_genes(path)


def test_tpm_by_hand(gtf, monkeypatch):
    from stcore.preprocess import normalize

    monkeypatch.setattr(normalize, "gene_table", lambda annotation: read_gtf_genes(gtf))
    counts = np.array([[31.0, 100.0, 7.0], [0.0, 50.0, 1.0]])
    adata = ad.AnnData(counts, var=pd.DataFrame(index=["AAA", "BBB", "ZZZ"]))
    adata.layers["counts"] = counts
    adata.uns["stcore"] = {"dataset": "her2st"}
    out = normalize.tpm(adata, annotation="mini")
    assert list(out.var_names) == ["AAA", "BBB"]  # ZZZ has no length: removed and counted
    assert out.uns["stcore"]["genes_without_length"] == 1
    np.testing.assert_allclose(out.layers["tpm"], [[5e5, 5e5], [0.0, 1e6]])
    log1p(out)
    np.testing.assert_allclose(out.layers["log1p"], np.log2(out.layers["tpm"] + 1))
    with pytest.raises(KeyError, match="layer 'nope'"):
        log1p(out, layer="nope")


def test_neighbour_graphs():
    grid = np.array([(x, y) for y in range(3) for x in range(3)])
    degree = np.asarray(neighbour_graph(grid, geometry="grid").sum(axis=1)).ravel()
    assert degree[4] == 8 and degree[0] == 3  # centre and corner of a 3×3 grid
    hexa = np.array([(2, 0), (1, 1), (3, 1), (0, 0), (4, 0), (1, -1), (3, -1)])
    assert neighbour_graph(hexa, geometry="hex")[0].sum() == 6
    with pytest.raises(ValueError, match="geometry"):
        neighbour_graph(grid, geometry="square")


def _grid_adata(values):
    n = int(np.sqrt(values.shape[0]))
    obs = pd.DataFrame({"slide_id": "s", "array_col": np.tile(np.arange(n), n),
                        "array_row": np.repeat(np.arange(n), n)}, index=[f"c{i}" for i in range(n * n)])
    adata = ad.AnnData(values, obs=obs)
    adata.layers["log1p"] = values
    return adata


def test_adaptive_median_known_answer():
    # 5×5 grid, one gene. Centre (index 12) is zero with all 8 neighbours = 2 → median over the
    # 9-spot 1-hop neighbourhood is 2. Corner (0, 0) is zero; its 1-hop (2×2) and 2-hop (3×3)
    # blocks have median 0, its 3-hop block (4×4: six 0s, five 2s, five 4s) has median 2.
    g = np.zeros((5, 5))
    g[1:4, 1:4] = 2.0
    g[2, 2] = 0.0
    g[0, 2] = g[0, 3] = g[0, 4] = g[1, 4] = g[2, 4] = 4.0
    g[1, 1] = g[1, 2] = 4.0
    adata = _grid_adata(g.reshape(-1, 1))
    adaptive_median(adata, geometry="grid", n_hops=4)
    d = adata.layers["d_log1p"].reshape(5, 5)
    assert d[2, 2] == np.median(g[1:4, 1:4])
    assert np.median(g[0:2, 0:2]) == np.median(g[0:3, 0:3]) == 0.0
    assert d[0, 0] == np.median(g[0:4, 0:4]) == 2.0
    observed = g != 0
    np.testing.assert_array_equal(d[observed], g[observed])  # observed entries never change


def test_adaptive_median_falls_back_to_slide_median():
    g = np.zeros((4, 4))
    g[3, 3] = 6.0  # far corner: 1-hop medians elsewhere are 0; with n_hops=1 fall back to 6
    adata = _grid_adata(g.reshape(-1, 1))
    adaptive_median(adata, geometry="grid", n_hops=1)
    d = adata.layers["d_log1p"].reshape(4, 4)
    assert d[0, 0] == 6.0 and d[3, 3] == 6.0
    with pytest.raises(TypeError, match="n_hops"):
        adaptive_median(adata, n_hops=0)
