"""Baseline completers: known answers, no leakage, observed entries kept, spatial beats the mean."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from stcore.completion import AdaptiveMedian, GeneMedian, SpatialKNN, TrainMean
from stcore.completion.evaluate import hide
from stcore.metrics import masked_metrics

BASELINES = [TrainMean, GeneMedian, AdaptiveMedian, SpatialKNN]


@pytest.mark.parametrize("cls", BASELINES)
def test_observed_entries_never_change(cls, synth):
    adata = synth.copy()
    layer, mask = adata.layers["c_d_log1p"], adata.layers["mask"]
    out = cls().fit(adata).complete(adata)
    np.testing.assert_array_equal(out[mask], layer[mask])
    assert np.isfinite(out).all()


@pytest.mark.parametrize("cls", BASELINES)
def test_unavailable_values_are_never_read(cls, synth):
    adata = synth.copy()
    test = (adata.obs["split"] == "test").to_numpy()
    available = adata.layers["mask"] & ~hide(adata.layers["mask"], test, 0.3, seed=0)
    model = cls().fit(adata)
    before = model.predict(adata, available=available)
    poisoned = adata.layers["c_d_log1p"].copy()
    rng = np.random.default_rng(1)
    poisoned[~available] = rng.normal(50, 10, size=(~available).sum())
    poisoned[~available & (rng.random(available.shape) < 0.2)] = np.nan
    adata.layers["c_d_log1p"] = poisoned
    np.testing.assert_array_equal(model.predict(adata, available=available), before)


def _mse(cls, adata, fraction, seed):
    test = (adata.obs["split"] == "test").to_numpy()
    mask = adata.layers["mask"]
    hidden = hide(mask, test, fraction, seed)
    pred = cls().fit(adata).predict(adata, available=mask & ~hidden)
    return masked_metrics(adata.layers["c_d_log1p"], pred, hidden)["MSE"]


@pytest.mark.parametrize("seed", [0, 1])
def test_spatial_completers_beat_the_train_mean(seed, synth, make_synthetic):
    assert _mse(SpatialKNN, synth, 0.3, seed) < 0.5 * _mse(TrainMean, synth, 0.3, seed)
    # the adaptive median counts unavailable entries as 0 in its medians (SpaRED): it needs
    # few of them, i.e. low dropout and few hidden entries
    sparse_dropout = make_synthetic(dropout=(0.0, 0.2))
    assert (_mse(AdaptiveMedian, sparse_dropout, 0.1, seed)
            < 0.7 * _mse(TrainMean, sparse_dropout, 0.1, seed))


def _tiny(values, mask, splits, coords=None):
    n = len(values)
    side = int(np.ceil(np.sqrt(n)))
    row, col = np.divmod(np.arange(n), side)
    obs = pd.DataFrame({"slide_id": ["a"] * n, "split": splits, "array_row": row,
                        "array_col": col}, index=[f"c{i}" for i in range(n)])
    adata = ad.AnnData(np.zeros_like(values), obs=obs)
    adata.layers["x"], adata.layers["mask"] = np.asarray(values, float), np.asarray(mask)
    adata.obsm["spatial"] = (np.column_stack([col, row]) if coords is None else coords) * 1.0
    return adata


def test_train_mean_and_gene_median_known_answers():
    values = np.array([[1.0, 10], [3, 20], [100, 30], [5, 0], [7, 50]])
    mask = np.array([[1, 1], [1, 1], [0, 1], [1, 0], [1, 1]], dtype=bool)
    adata = _tiny(values, mask, ["train", "train", "train", "test", "test"])
    tm = TrainMean().fit(adata, layer="x")
    np.testing.assert_allclose(tm.mean_, [2.0, 20.0])  # the 100 is not observed
    gm = GeneMedian().fit(adata, layer="x")
    np.testing.assert_allclose(gm.median_, [2.0, 20.0])
    available = mask.copy()
    available[:, 1] = False  # gene 1 unavailable everywhere: train-median fallback
    pred = gm.predict(adata, layer="x", available=available)
    np.testing.assert_allclose(pred[:, 0], np.median([1, 3, 5, 7]))
    np.testing.assert_allclose(pred[:, 1], 20.0)


def test_knn_known_answer():
    # 5 spots on a line; spot 2 hidden for gene 0. Its 2 nearest are spots 1 and 3.
    coords = np.array([[0, 0], [1, 0], [2, 0], [3, 0], [10, 0]])
    values = np.array([[1.0], [2], [99], [4], [8]])
    mask = np.ones_like(values, dtype=bool)
    adata = _tiny(values, mask, ["train"] * 5, coords=coords)
    model = SpatialKNN(n_neighbors=2).fit(adata, layer="x")
    available = mask.copy()
    available[2] = False
    pred = model.predict(adata, layer="x", available=available)
    assert pred[2, 0] == pytest.approx(3.0)  # (2 + 4) / 2, the 99 never read
    assert pred[0, 0] == pytest.approx(2.0)  # spot 2 unavailable: only spot 1 counts
    available[:] = False
    available[4] = True  # only spot 4 available; spot 0's neighbours 1, 2 are not: slide mean
    assert model.predict(adata, layer="x", available=available)[0, 0] == pytest.approx(8.0)


def test_knn_stays_within_the_slide(synth):
    adata = synth.copy()
    mask = adata.layers["mask"]
    slides = adata.obs["slide_id"].astype(str).to_numpy()
    model = SpatialKNN().fit(adata)
    before = model.predict(adata, available=mask)
    # all slides share the same coordinates; changing slide s2 must not move s0's predictions
    adata.layers["c_d_log1p"] = np.where((slides == "s2")[:, None], 100.0,
                                         adata.layers["c_d_log1p"])
    after = model.predict(adata, available=mask)
    np.testing.assert_array_equal(after[slides != "s2"], before[slides != "s2"])


def test_adaptive_median_known_answer_with_mask():
    # 3×3 grid, one gene, centre unavailable. Observed ring: 5 values, 3 unobserved (count as 0).
    values = np.array([1.0, 2, 3, 4, 77, 5, 6, 7, 8])[:, None]
    mask = np.array([1, 1, 1, 1, 0, 1, 0, 0, 0], dtype=bool)[:, None]
    adata = _tiny(values, np.ones_like(mask), ["train"] * 9)
    pred = AdaptiveMedian(n_hops=1).fit(adata, layer="x").predict(adata, layer="x",
                                                                  available=mask)
    # 1-hop of the centre = the whole 3×3: [1, 2, 3, 4, 0, 5, 0, 0, 0] → median 1
    assert pred[4, 0] == np.median([1, 2, 3, 4, 0, 5, 0, 0, 0]) == 1.0
    np.testing.assert_array_equal(pred[mask[:, 0], 0], values[mask[:, 0], 0])
    # corner (2, 2) (index 8): 1-hop {4, 5, 7, 8} → [0(77 hidden), 5, 0, 0] → median 0 → the
    # fallback: median of the observed values of the slide, [1, 2, 3, 4, 5] → 3
    assert pred[8, 0] == 3.0


def test_bad_parameters():
    with pytest.raises(ValueError, match="geometry"):
        AdaptiveMedian(geometry="hexagon")
    with pytest.raises(ValueError, match="n_neighbors"):
        SpatialKNN(n_neighbors=0)
