"""hide, evaluate, summarize and mse_reduction on a tiny case."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stcore.completion import SpatialKNN, TrainMean, evaluate, hide, mse_reduction, summarize
from stcore.completion.evaluate import COLUMNS, _hide_seed
from stcore.metrics import masked_metrics


def test_hide_hides_the_fraction_of_observed_entries_of_the_rows(synth):
    mask = synth.layers["mask"]
    rows = (synth.obs["split"] == "test").to_numpy()
    candidates = mask & rows[:, None]
    for fraction in (0.1, 0.3, 0.5, 1.0):
        hidden = hide(mask, rows, fraction, seed=0)
        assert hidden.dtype == bool and hidden.shape == mask.shape
        assert not (hidden & ~candidates).any()  # only observed entries of the rows
        assert hidden.sum() == round(fraction * candidates.sum())
    hidden = hide(mask, rows, 0.3, seed=0)
    np.testing.assert_array_equal(hide(mask, rows, 0.3, seed=0), hidden)
    assert not np.array_equal(hide(mask, rows, 0.3, seed=1), hidden)
    # uniform over genes: each gene loses about 30 % of its candidate entries
    share = hidden.sum(axis=0) / candidates.sum(axis=0)
    assert np.all(np.abs(share - 0.3) < 0.12)


def test_hide_bad_inputs(synth):
    mask = synth.layers["mask"]
    rows = np.ones(synth.n_obs, dtype=bool)
    with pytest.raises(ValueError, match="fraction"):
        hide(mask, rows, 0.0, seed=0)
    with pytest.raises(ValueError, match="fraction"):
        hide(mask, rows, 1.5, seed=0)
    with pytest.raises(TypeError, match="rows"):
        hide(mask, rows[:5], 0.1, seed=0)
    with pytest.raises(TypeError, match="mask"):
        hide(mask.astype(int), rows, 0.1, seed=0)


@pytest.fixture(scope="module")
def results(synth):
    return evaluate(synth, {"train_mean": TrainMean, "knn": SpatialKNN},
                    fractions=(0.1, 0.5), seeds=(0, 1), progress=False)


def test_evaluate_rows_and_values(results, synth):
    df = results
    assert list(df.columns) == COLUMNS and len(df) == 2 * 2 * 2
    assert set(df["split"]) == {"test"}
    mask = synth.layers["mask"]
    test = (synth.obs["split"] == "test").to_numpy()
    n_candidates = (mask & test[:, None]).sum()
    for fraction in (0.1, 0.5):
        n = df.loc[df["fraction"] == fraction, "n_hidden"]
        assert (n == round(fraction * n_candidates)).all()
    # recompute one row by hand
    row = df[(df["method"] == "knn") & (df["fraction"] == 0.5) & (df["seed"] == 1)].iloc[0]
    hidden = hide(mask, test, 0.5, _hide_seed(1, "test", 0.5))
    pred = SpatialKNN().fit(synth, seed=1).predict(synth, available=mask & ~hidden)
    m = masked_metrics(synth.layers["c_d_log1p"], pred, hidden)
    assert row["mse"] == pytest.approx(m["MSE"]) and row["mae"] == pytest.approx(m["MAE"])
    assert row["pcc_gene"] == pytest.approx(m["PCC-Gene"])
    # the train mean is constant per gene: every PCC-Gene is undefined, and counted
    tm = df[df["method"] == "train_mean"]
    assert tm["pcc_gene"].isna().all() and (tm["n_constant_genes"] == 16).all()
    assert (df["fit_seconds"] >= 0).all() and (df["predict_seconds"] > 0).all()
    # the seeds hide different entries
    knn = df[(df["method"] == "knn") & (df["fraction"] == 0.5)]
    assert knn["mse"].nunique() == 2


def test_summarize(results):
    s = summarize(results)
    assert len(s) == 4 and (s["n_seeds"] == 2).all()
    for _, row in s.iterrows():
        sel = results[(results["method"] == row["method"])
                      & (results["fraction"] == row["fraction"])]
        assert row["mse_mean"] == pytest.approx(sel["mse"].mean())
        assert row["mse_sd"] == pytest.approx(sel["mse"].std(ddof=1))
        assert row["mae_mean"] == pytest.approx(sel["mae"].mean())
    assert {"pcc_gene_mean", "pcc_gene_sd", "fit_seconds", "predict_seconds"} <= set(s.columns)


def test_mse_reduction(results):
    red = mse_reduction(results, reference="knn")
    assert len(red) == 2 and set(red["method"]) == {"train_mean"}
    assert (red["reference"] == "knn").all()
    for _, row in red.iterrows():
        sel = results[results["fraction"] == row["fraction"]].pivot(index="seed", columns="method",
                                                                    values="mse")
        per_seed = 100 * (1 - sel["knn"] / sel["train_mean"])
        assert row["reduction_mean"] == pytest.approx(per_seed.mean())
        assert row["reduction_sd"] == pytest.approx(per_seed.std(ddof=1))
        assert row["reduction_mean"] > 50  # kNN is far better on smooth fields
    # the other way round, the reduction is negative
    assert (mse_reduction(results, reference="train_mean")["reduction_mean"] < 0).all()
    with pytest.raises(ValueError, match="'spackle' not in the results"):
        mse_reduction(results)
    with pytest.raises(ValueError, match="nothing to compare"):
        mse_reduction(results[results["method"] == "knn"], reference="knn")


def test_evaluate_bad_inputs(synth):
    with pytest.raises(ValueError, match="no spot has obs\\['split'\\] == 'val'"):
        evaluate(synth, {"tm": TrainMean}, splits=("val",), progress=False)
    with pytest.raises(ValueError, match="no method"):
        evaluate(synth, {}, progress=False)
    with pytest.raises(KeyError, match="'raw'"):
        evaluate(synth, {"tm": TrainMean}, layer="raw", progress=False)


def test_evaluate_several_splits_and_returned_models(synth):
    models = {}
    df = evaluate(synth, {"tm": TrainMean}, fractions=(0.2,), seeds=(0, 5),
                  splits=("train", "test"), progress=False, models=models)
    assert list(df["split"]) == ["train", "test"] * 2
    assert set(models) == {0, 5} and isinstance(models[5]["tm"], TrainMean)
    assert models[5]["tm"].seed_ == 5 and models[0]["tm"] is not models[5]["tm"]
    assert isinstance(df, pd.DataFrame) and df["n_hidden"].gt(0).all()
