"""Completion on real her2st data: the claims the book makes, on a small set of real sections."""

import numpy as np
import pytest
from stcore import completion
from stcore import preprocess as pp

# Train patients A–D, validation E, test G and H (SpaRED's Andersson split), one or two sections each.
SECTIONS = ["A1", "B1", "C1", "D1", "E1", "G1", "G2", "H1"]


@pytest.fixture(scope="module")
def her2st(mirror):
    return pp.preprocess("her2st", sections=SECTIONS)


def test_spackle_beats_the_adaptive_median_on_her2st_test_patients(her2st, one_thread):
    factories = {"adaptive_median": completion.AdaptiveMedian,
                 "spackle": completion.factory("spackle", attention="neighbours", max_steps=40,
                                               progress=False)}
    scores = completion.evaluate(her2st, factories, fractions=[0.3], seeds=[0], splits=["test"],
                                 progress=False)
    mse = scores.set_index("method")["mse"]
    assert mse["spackle"] < mse["adaptive_median"], mse.to_dict()


def test_completion_keeps_every_observed_entry_of_real_data(her2st):
    mask = her2st.layers["mask"]
    for method in ("gene_median", "adaptive_median", "knn"):
        filled = completion.complete(her2st, method)
        np.testing.assert_array_equal(filled[mask], her2st.layers["c_d_log1p"][mask])
        assert np.isfinite(filled).all()
        assert not np.array_equal(filled[~mask], her2st.layers["c_d_log1p"][~mask])


def test_same_seed_same_scores_on_real_data(her2st):
    run = lambda: completion.evaluate(her2st, {"knn": completion.SpatialKNN}, fractions=[0.1, 0.5],  # noqa: E731
                                      seeds=[3], splits=["val", "test"], progress=False)
    first, second = run(), run()
    np.testing.assert_array_equal(first[["mse", "mae", "pcc_gene"]], second[["mse", "mae", "pcc_gene"]])
    other = completion.evaluate(her2st, {"knn": completion.SpatialKNN}, fractions=[0.1, 0.5],
                                seeds=[4], splits=["val", "test"], progress=False)
    assert not np.array_equal(first["mse"], other["mse"])
