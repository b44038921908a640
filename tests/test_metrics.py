"""stcore.metrics against hand computations (scipy, scikit-learn) on small random matrices."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.stats import pearsonr
from sklearn.metrics import r2_score

from stcore.metrics import (bootstrap_ci, gene_groups, group_pcc, her2st_target, masked_metrics,
                            pearson_per_column, r2_per_column)

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


# ------------------------------------------------------------------------------- her2st family


def test_her2st_target_is_log10_of_counts_per_10k_of_the_selected_genes():
    counts = np.array([[1, 3, 0, 6], [0, 0, 0, 5], [2, 2, 2, 2]], dtype=float)
    got = her2st_target(counts)
    want = np.log10(1 + 1e4 * counts / counts.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[0, 0] == pytest.approx(np.log10(1 + 1e4 / 10))
    # the library size is the sum over the selected genes only (scprep on counts[gene_list])
    sub = her2st_target(counts, [0, 1, 3])
    assert sub[0, 1] == pytest.approx(np.log10(1 + 1e4 * 3 / 10))
    assert sub[1, 2] == pytest.approx(np.log10(1 + 1e4))
    np.testing.assert_array_equal(her2st_target(counts, np.array([1, 1, 0, 1], bool)), sub)
    np.testing.assert_allclose(her2st_target(sp.csr_matrix(counts), [0, 1, 3]), sub)
    # a spot without counts on the selected genes is 0, not NaN
    np.testing.assert_array_equal(her2st_target(counts, [0, 1, 2])[1], 0.0)


def test_her2st_target_bad_inputs():
    counts = np.ones((3, 4))
    with pytest.raises(ValueError, match="non-negative"):
        her2st_target(-counts)
    with pytest.raises(ValueError, match="mask has shape"):
        her2st_target(counts, np.ones(3, bool))
    with pytest.raises(ValueError, match="no gene selected"):
        her2st_target(counts, np.zeros(4, bool))
    with pytest.raises(ValueError, match="integer indices or a bool mask"):
        her2st_target(counts, [0.5])


def test_gene_groups_by_hand():
    #                 means: 1, 5, 3, 5 (tie) ; variances: 0, 4, 1, 0.25
    truth = np.array([[1.0, 3.0, 2.0, 4.5], [1.0, 7.0, 4.0, 5.5]])
    groups = gene_groups(truth, n=2)
    np.testing.assert_array_equal(groups["ACG"], [0, 1, 2, 3])
    np.testing.assert_array_equal(groups["HEG"], [1, 3])  # tie 5 = 5 keeps gene order
    np.testing.assert_array_equal(groups["HVG"], [1, 2])
    assert len(gene_groups(truth, n=50)["HEG"]) == 4  # n above the number of genes: all
    # with a mask: gene 0 becomes the most expressed (its valid entry is 9), gene 3 has none
    truth2 = truth.copy()
    truth2[1, 0] = 9.0
    mask = np.array([[False, True, True, False], [True, True, True, False]])
    groups = gene_groups(truth2, n=4, mask=mask)
    np.testing.assert_array_equal(groups["HEG"], [0, 1, 2, 3])
    np.testing.assert_array_equal(groups["HVG"], [1, 2, 0, 3])  # 4, 1, 0 (one entry), none last
    with pytest.raises(ValueError, match="positive int"):
        gene_groups(truth, n=0)


def test_group_pcc_against_scipy():
    rng = np.random.default_rng(3)
    truth = rng.gamma(2.0, size=(40, 60)) * rng.uniform(0.1, 3, size=60)
    pred = truth + rng.normal(scale=1.0, size=truth.shape)
    pred[:, 5] = 1.0  # a constant prediction: NaN, counted
    got = group_pcc(truth, pred, n=10)
    r = np.array([pearsonr(truth[:, j], pred[:, j])[0] if j != 5 else np.nan for j in range(60)])
    heg = np.argsort(-truth.mean(axis=0))[:10]
    hvg = np.argsort(-truth.var(axis=0))[:10]
    assert got["PCC-ACG"] == pytest.approx(np.nanmean(r), rel=1e-10)
    assert got["PCC-ACG"] == pytest.approx(masked_metrics(truth, pred)["PCC-Gene"])
    assert got["PCC-HEG"] == pytest.approx(np.nanmean(r[heg]), rel=1e-10)
    assert got["PCC-HVG"] == pytest.approx(np.nanmean(r[hvg]), rel=1e-10)
    assert got["n_nan_ACG"] == 1
    assert got["n_nan_HEG"] == int(5 in heg) and got["n_nan_HVG"] == int(5 in hvg)
    mask = rng.random(truth.shape) > 0.2
    masked = group_pcc(truth, pred, mask, n=10)
    assert masked["PCC-ACG"] == pytest.approx(masked_metrics(truth, pred, mask)["PCC-Gene"])


@pytest.fixture
def sections():
    rng = np.random.default_rng(1)
    groups = np.repeat(["s0", "s1", "s2", "s3"], [10, 14, 8, 12])
    offset = np.repeat(rng.normal(size=4), [10, 14, 8, 12])[:, None]
    truth = rng.normal(size=(len(groups), 6)) + offset
    pred = truth + rng.normal(scale=0.8, size=truth.shape) * np.repeat([0.5, 1, 1.5, 2],
                                                                       [10, 14, 8, 12])[:, None]
    mask = rng.random(truth.shape) > 0.25
    return truth, pred, mask, groups


def test_bootstrap_ci_by_hand(sections):
    truth, pred, mask, groups = sections
    est, low, high = bootstrap_ci("MSE", truth, pred, mask, groups, n_boot=200, seed=7)
    assert est == pytest.approx(masked_metrics(truth, pred, mask)["MSE"])
    # the same resampling written out: draw 4 of the 4 sections with replacement, pool the rows
    names = np.unique(groups)
    draws = np.random.default_rng(7).integers(0, 4, size=(200, 4))
    values = []
    for drawn in draws:
        rows = np.concatenate([np.flatnonzero(groups == names[k]) for k in drawn])
        values.append(masked_metrics(truth[rows], pred[rows], mask[rows])["MSE"])
    assert (low, high) == pytest.approx(tuple(np.percentile(values, [2.5, 97.5])), rel=1e-12)
    assert low <= est <= high


def test_bootstrap_ci_metrics_and_determinism(sections):
    truth, pred, mask, groups = sections
    for name in ("MSE", "MAE", "PCC-Gene", "PCC-Patch", "R2-Gene", "R2-Patch"):
        est, low, high = bootstrap_ci(name, truth, pred, mask, groups, n_boot=100)
        assert est == pytest.approx(masked_metrics(truth, pred, mask)[name]), name
        assert low <= high
        assert bootstrap_ci(name, truth, pred, mask, groups, n_boot=100) == (est, low, high)
    est, low, high = bootstrap_ci("PCC-HEG", truth, pred, None, groups, n_boot=50)
    assert est == pytest.approx(group_pcc(truth, pred)["PCC-HEG"])
    other = bootstrap_ci("MSE", truth, pred, mask, groups, n_boot=100, seed=1)
    assert other != bootstrap_ci("MSE", truth, pred, mask, groups, n_boot=100, seed=0)
    narrow = bootstrap_ci("MSE", truth, pred, mask, groups, n_boot=100, level=0.5)
    wide = bootstrap_ci("MSE", truth, pred, mask, groups, n_boot=100, level=0.99)
    assert wide[1] <= narrow[1] <= narrow[2] <= wide[2]
    # a function of (truth, pred, mask)
    fn = bootstrap_ci(lambda t, p, m: float(np.abs(t - p)[m].max()), truth, pred, mask, groups,
                      n_boot=20)
    assert fn[0] == pytest.approx(np.abs(truth - pred)[mask].max())


def test_bootstrap_ci_single_section_has_no_interval(sections, caplog):
    truth, pred, mask, _ = sections
    with caplog.at_level("WARNING", logger="stcore"):
        est, low, high = bootstrap_ci("PCC-Gene", truth, pred, mask, ["only"] * len(truth))
    assert est == pytest.approx(masked_metrics(truth, pred, mask)["PCC-Gene"])
    assert np.isnan(low) and np.isnan(high)
    assert "a single section (only)" in caplog.text


def test_bootstrap_ci_bad_arguments(sections):
    truth, pred, mask, groups = sections
    with pytest.raises(ValueError, match="unknown metric 'PCC'"):
        bootstrap_ci("PCC", truth, pred, mask, groups)
    with pytest.raises(TypeError, match="name or a function"):
        bootstrap_ci(3, truth, pred, mask, groups)
    with pytest.raises(ValueError, match="one section id per row"):
        bootstrap_ci("MSE", truth, pred, mask, groups[:-1])
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci("MSE", truth, pred, mask, groups, n_boot=0)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci("MSE", truth, pred, mask, groups, level=95)


def test_mean_ci_bootstraps_the_mean_over_sections():
    from stcore.metrics import mean_ci

    values = [0.1, 0.2, 0.3, 0.6]
    mean, low, high = mean_ci(values, n_boot=500, seed=1)
    assert mean == pytest.approx(0.3) and 0.1 <= low < mean < high <= 0.6
    assert mean_ci(values, n_boot=500, seed=1) == (mean, low, high)  # same seed, same interval
    # NaN sections are left out; one value has no interval; none gives NaN
    assert mean_ci([0.2, float("nan"), 0.4], n_boot=50)[0] == pytest.approx(0.3)
    single = mean_ci([0.5, float("nan")])
    assert single[0] == 0.5 and np.isnan(single[1:]).all()
    assert np.isnan(mean_ci([float("nan")])).all()
    with pytest.raises(ValueError, match="n_boot"):
        mean_ci(values, n_boot=0)
    with pytest.raises(ValueError, match="level"):
        mean_ci(values, level=1.5)
