"""Filters, Moran's I, ComBat, deltas and the cached pipeline: hand-computed answers and real data."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from stcore import preprocess as pp
from stcore.data import processed_dir


def _adata(counts, slides):
    counts = np.asarray(counts, dtype=float)
    obs = pd.DataFrame({"slide_id": slides}, index=[f"s{i}" for i in range(len(slides))])
    adata = ad.AnnData(sp.csr_matrix(counts), obs=obs,
                       var=pd.DataFrame(index=[f"g{j}" for j in range(counts.shape[1])]))
    adata.layers["counts"] = adata.X.copy()
    return adata


def test_expression_fractions_by_hand():
    # slide a: 2 spots, slide b: 2 spots
    adata = _adata([[1, 0, 5], [1, 0, 0], [1, 2, 0], [0, 3, 0]], ["a", "a", "b", "b"])
    pp.expression_fractions(adata)
    np.testing.assert_allclose(adata.var["exp_frac"], [0.5, 0.0, 0.0])  # min over slides
    np.testing.assert_allclose(adata.var["glob_exp_frac"], [0.75, 0.5, 0.25])


def test_spot_filter_bounds_are_strict_and_empty_slides_named():
    adata = _adata([[5, 5], [1, 1], [50, 50], [3, 4]], ["a", "a", "b", "b"])
    kept = pp.filter_spots(adata, min_counts=2, max_counts=100)
    assert list(kept.obs_names) == ["s0", "s3"]  # 2 (= min) and 100 (= max) are excluded
    with pytest.raises(ValueError, match=r"slide\(s\) a has"):
        pp.filter_spots(adata, min_counts=2, max_counts=8)


def test_gene_filter_running_mean_rule():
    # 10 spots in one slide; genes expressed in 10, 9, 6, 5, 1 spots (exp_frac = glob_exp_frac).
    present = [10, 9, 6, 5, 1]
    counts = np.zeros((10, 6))
    for j, n in enumerate(present):
        counts[:n, j] = 100
    counts[:, 5] = 1  # total 10 counts: below gene_min_counts, removed first
    adata = _adata(counts, ["a"] * 10)
    # running means of (1.0, 0.9, 0.6, 0.5, 0.1): 1.0, .95, .833, .75, .62 → 4 genes for 0.7
    kept = pp.filter_genes(adata, min_counts=50, max_counts=1e6, real_data_percentage=0.7)
    assert list(kept.var_names) == ["g0", "g1", "g2", "g3"]
    kept = pp.filter_genes(adata, min_counts=50, max_counts=1e6, real_data_percentage=0.9)
    assert list(kept.var_names) == ["g0", "g1"]
    assert kept.n_obs == 10
    with pytest.raises(ValueError, match="real_data_percentage"):
        pp.filter_genes(adata, min_counts=50, max_counts=1e6, real_data_percentage=70)


def _grid(n=8, slides=("a", "b")):
    obs = pd.DataFrame([(s, c, r) for s in slides for r in range(n) for c in range(n)],
                       columns=["slide_id", "array_col", "array_row"])
    obs.index = obs.index.astype(str)
    return obs


def _morans_i_by_hand(x, w):
    w = w / w.sum(axis=1, keepdims=True)  # row-standardised, as squidpy does
    z = x - x.mean()
    return len(x) / w.sum() * (z @ w @ z) / (z @ z)


def test_morans_i_matches_hand_formula_per_slide():
    rng = np.random.default_rng(0)
    obs = _grid()
    smooth = obs["array_col"].to_numpy() + 0.5 * obs["array_row"].to_numpy()
    values = np.column_stack([smooth, rng.normal(size=len(obs)), smooth ** 2 + rng.normal(size=len(obs))])
    adata = ad.AnnData(values, obs=obs, var=pd.DataFrame(index=["smooth", "noise", "mixed"]))
    adata.layers["d_log1p"] = values
    per_slide = pp.slide_morans_i(adata, geometry="grid")
    for slide in ("a", "b"):
        rows = (obs["slide_id"] == slide).to_numpy()
        w = pp.neighbour_graph(obs.loc[rows, ["array_col", "array_row"]].to_numpy(), geometry="grid").toarray()
        for j, gene in enumerate(adata.var_names):
            assert per_slide.loc[gene, slide] == pytest.approx(_morans_i_by_hand(values[rows, j], w))
    pp.morans_i(adata, geometry="grid")
    np.testing.assert_allclose(adata.var["d_log1p_moran"], per_slide.mean(axis=1))
    assert adata.var["d_log1p_moran"]["smooth"] > 0.5 > abs(adata.var["d_log1p_moran"]["noise"])
    top = pp.top_genes(adata, 2)
    assert list(top.var_names) == ["smooth", "mixed"]
    with pytest.raises(KeyError, match="morans_i"):
        pp.top_genes(adata, 2, key="nope")


def test_deltas_use_train_means_only():
    obs = pd.DataFrame({"split": ["train", "train", "test"]}, index=["a", "b", "c"])
    adata = ad.AnnData(np.zeros((3, 1)), obs=obs)
    adata.layers["c_d_log1p"] = np.array([[1.0], [3.0], [10.0]])
    pp.deltas(adata, layer="c_d_log1p")
    np.testing.assert_allclose(adata.var["c_d_log1p_avg_exp"], [2.0])
    np.testing.assert_allclose(adata.layers["c_d_deltas"].ravel(), [-1, 1, 8])
    with pytest.raises(ValueError, match="log1p"):
        pp.deltas(adata, layer="tpm")


def test_combat_bad_inputs():
    adata = ad.AnnData(np.random.default_rng(0).normal(size=(6, 3)),
                       obs=pd.DataFrame({"patient": ["A"] * 6}, index=list("abcdef")))
    adata.layers["log1p"] = adata.X.copy()
    with pytest.raises(ValueError, match="two batches.*one level"):
        pp.combat(adata, layer="log1p", batch_key="patient")
    with pytest.raises(KeyError, match="batch key 'slide'"):
        pp.combat(adata, layer="log1p", batch_key="slide")
    with pytest.raises(KeyError, match="layer 'nope'"):
        pp.combat(adata, layer="nope")


def test_params_are_typed():
    with pytest.raises(TypeError, match="top_moran_genes must be int"):
        pp.Params(top_moran_genes="128")
    with pytest.raises(TypeError, match="unknown preprocess parameters"):
        pp.Params.for_dataset("mob", top_genes=10)
    with pytest.raises(ValueError, match="geometry"):
        pp.Params(geometry="square")
    assert pp.Params.for_dataset("her2st", top_moran_genes=32).top_moran_genes == 32


# ------------------------------------------------------------------------------ real data (MOB)


@pytest.fixture(scope="module")
def mob_processed(mirror):
    return pp.preprocess("mob")


def test_mob_pipeline_layers(mob_processed):
    a = mob_processed
    assert a.n_vars == 128
    expected = {"counts", "tpm", "log1p", "d_log1p", "c_log1p", "c_d_log1p", "deltas", "d_deltas",
                "c_deltas", "c_d_deltas", "mask"}
    assert expected <= set(a.layers)
    mask = a.layers["mask"]
    np.testing.assert_array_equal(mask, a.layers["tpm"] != 0)
    # the median filter fills only missing entries, and fills most of them
    np.testing.assert_array_equal(a.layers["d_log1p"][mask], a.layers["log1p"][mask])
    assert (a.layers["d_log1p"][~mask] > 0).mean() > 0.9
    # TPM ∝ counts / merged length within a spot (rescaled before the Moran selection)
    rate = np.asarray(a.layers["counts"].todense()) / a.var["gene_length"].to_numpy()
    ratio = np.where(mask, a.layers["tpm"] / np.where(mask, rate, 1), np.nan)
    np.testing.assert_allclose(np.nanmin(ratio, axis=1), np.nanmax(ratio, axis=1), rtol=1e-9)
    assert (a.layers["tpm"].sum(axis=1) < 1e6).all()
    info = a.uns["stcore"]["preprocess"]
    assert info["missing_raw"] > info["missing_processed"]
    assert list(info["steps"]["step"])[:3] == ["raw", "spot filter", "gene filter"]
    # the chosen genes are the top of the Moran ranking
    assert a.var["d_log1p_moran"].min() > 0


def test_combat_lowers_patient_silhouette(mob_processed):
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_score

    labels = mob_processed.obs["patient"].astype(str).to_numpy()

    def silhouette(layer):
        emb = PCA(10, random_state=0).fit_transform(mob_processed.layers[layer])
        return silhouette_score(emb, labels)

    before, after = silhouette("log1p"), silhouette("c_log1p")
    assert after < before, (before, after)


def test_preprocess_is_cached_and_keyed_by_parameters(mob_processed, monkeypatch):
    from stcore.preprocess import pipeline

    key = mob_processed.uns["stcore"]["preprocess"]["key"]
    calls = []
    monkeypatch.setattr(pipeline, "spared", lambda *a, **k: calls.append(1))
    again = pp.preprocess("mob")
    assert not calls and again.uns["stcore"]["preprocess"]["key"] == key


def test_failed_pipeline_caches_nothing(mirror, isolated_cache, monkeypatch):
    from stcore.preprocess import pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(pipeline, "combat", broken)
    with pytest.raises(RuntimeError, match="interrupted"):
        pp.preprocess("mob", sections=["Rep1", "Rep11"])
    assert not list(isolated_cache.glob("processed/mob/*/spared.h5ad"))
    assert not list(isolated_cache.glob("processed/mob/.*"))  # no temporary folder left


def test_single_patient_subset_cannot_be_combat_corrected(mirror):
    with pytest.raises(ValueError, match="two batches"):
        pp.preprocess("mob", sections=["Rep1", "Rep2"])


def test_gene_panel_alternative(mirror):
    a = pp.preprocess("her2st", sections=["A1", "E1"], gene_panel="genesets/her2st_785_genes.txt")
    panel = set(open(mirror / "genesets" / "her2st_785_genes.txt").read().split())
    assert set(a.var_names) <= panel and a.n_vars > 600
    assert processed_dir("her2st", a.uns["stcore"]["preprocess"]["key"]).exists()
