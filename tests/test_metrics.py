"""stcore.metrics against hand computations (scipy, scikit-learn) on small random matrices."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.stats import pearsonr
from sklearn.metrics import r2_score

from stcore.metrics import masked_metrics, pearson_per_column, r2_per_column

KEYS = {"MSE", "MAE", "PCC-Gene", "PCC-Patch", "R2-Gene", "R2-Patch", "n_constant_genes",
        "n_constant_patches"}


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(30, 7))
    pred = truth + rng.normal(scale=0.7, size=truth.shape)
    mask = rng.random(truth.shape) > 0.3
    return truth, pred, mask


def _by_hand(truth, pred, mask):
    """Loops over columns and rows with scipy / scikit-learn: the definition, slowly."""
    def per(t, p, m):
        pcc, r2 = [], []
        for j in range(t.shape[1]):
            tj, pj = t[m[:, j], j], p[m[:, j], j]
            pcc.append(pearsonr(tj, pj)[0] if len(tj) >= 2 and np.ptp(tj) > 0 and np.ptp(pj) > 0
                       else np.nan)
            r2.append(r2_score(tj, pj) if len(tj) >= 2 and np.ptp(tj) > 0 else np.nan)
        return np.array(pcc), np.array(r2)

    pcc_g, r2_g = per(truth, pred, mask)
    pcc_p, r2_p = per(truth.T, pred.T, mask.T)
    err = (truth - pred)[mask]
    return {"MSE": np.mean(err ** 2), "MAE": np.mean(np.abs(err)), "PCC-Gene": np.nanmean(pcc_g),
            "PCC-Patch": np.nanmean(pcc_p), "R2-Gene": np.nanmean(r2_g),
            "R2-Patch": np.nanmean(r2_p)}, pcc_g


def test_metrics_match_hand_computation(data):
    truth, pred, mask = data
    got = masked_metrics(truth, pred, mask)
    want, pcc_g = _by_hand(truth, pred, mask)
    assert set(got) == KEYS
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-10, abs=1e-12), key
    np.testing.assert_allclose(pearson_per_column(truth, pred, mask), pcc_g, rtol=1e-10)
    assert got["n_constant_genes"] == 0


def test_no_mask_means_all_entries(data):
    truth, pred, _ = data
    full = np.ones(truth.shape, dtype=bool)
    assert masked_metrics(truth, pred) == masked_metrics(truth, pred, full)
    assert masked_metrics(truth, pred)["MSE"] == pytest.approx(np.mean((truth - pred) ** 2))
    r2 = r2_per_column(truth, pred)
    np.testing.assert_allclose(r2, [r2_score(truth[:, j], pred[:, j]) for j in range(7)])


def test_masked_entries_are_ignored(data):
    truth, pred, mask = data
    before = masked_metrics(truth, pred, mask)
    garbage = pred.copy()
    garbage[~mask] = 1e6  # anything at invalid entries
    truth2 = truth.copy()
    truth2[~mask] = np.nan
    assert masked_metrics(truth2, garbage, mask) == before


def test_constant_genes_are_counted_not_hidden(data):
    truth, pred, mask = data
    pred = pred.copy()
    pred[:, 2] = 3.0  # constant prediction
    truth = truth.copy()
    truth[mask[:, 5], 5] = -1.0  # constant truth over the valid entries of gene 5
    pcc = pearson_per_column(truth, pred, mask)
    assert np.isnan(pcc[[2, 5]]).all() and np.isfinite(np.delete(pcc, [2, 5])).all()
    got = masked_metrics(truth, pred, mask)
    assert got["n_constant_genes"] == 2
    assert got["PCC-Gene"] == pytest.approx(np.mean(np.delete(pcc, [2, 5])))
    # R² is still defined for a constant prediction, not for a constant truth
    assert np.isfinite(r2_per_column(truth, pred, mask)[2])
    assert np.isnan(r2_per_column(truth, pred, mask)[5])


def test_columns_with_fewer_than_two_valid_entries_are_dropped(data):
    truth, pred, mask = data
    mask = mask.copy()
    mask[:, 0] = False
    mask[3, 0] = True  # one valid entry
    pcc, r2 = pearson_per_column(truth, pred, mask), r2_per_column(truth, pred, mask)
    assert np.isnan(pcc[0]) and np.isnan(r2[0])
    got = masked_metrics(truth, pred, mask)
    assert got["R2-Gene"] == pytest.approx(np.mean(r2[1:]))
    assert got["n_constant_genes"] == 1


def test_perfect_and_anticorrelated_predictions():
    truth = np.arange(12, dtype=float).reshape(4, 3) ** 1.5
    got = masked_metrics(truth, truth)
    assert got["MSE"] == 0 and got["MAE"] == 0
    assert got["PCC-Gene"] == pytest.approx(1) and got["R2-Gene"] == pytest.approx(1)
    assert masked_metrics(truth, -truth)["PCC-Gene"] == pytest.approx(-1)


def test_sparse_inputs(data):
    truth, pred, mask = data
    dense = masked_metrics(truth, pred, mask)
    sparse = masked_metrics(sp.csr_matrix(truth), sp.csr_matrix(pred), sp.csr_matrix(mask))
    assert sparse == pytest.approx(dense)


def test_bad_inputs(data):
    truth, pred, mask = data
    with pytest.raises(ValueError, match="differ in shape"):
        masked_metrics(truth, pred[:, :5])
    with pytest.raises(ValueError, match="mask has shape"):
        masked_metrics(truth, pred, mask[:10])
    with pytest.raises(ValueError, match="boolean"):
        masked_metrics(truth, pred, mask.astype(int))
    with pytest.raises(ValueError, match="2-D"):
        masked_metrics(truth[:, 0], pred[:, 0])
    with pytest.raises(ValueError, match="no entry"):
        masked_metrics(truth, pred, np.zeros_like(mask))
    with pytest.raises(ValueError, match="differ in shape"):
        pearson_per_column(truth, pred.T)
