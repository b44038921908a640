"""stcore.predict: processed AnnData + patch store + fold → Task → one fold's run → scores."""

from __future__ import annotations

import json
import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from stcore.data import PatchStore
from stcore.data.splits import Fold, folds
from stcore.metrics import bootstrap_ci, group_pcc, her2st_target, masked_metrics, mean_ci
from stcore.models import Task
from stcore.predict import (build_task, cross_validate, per_gene_table, run_fold, score,
                            section_scores, summarize_sections)

# sections S0..S4 have patches, S5 has none; 5 × 4 spots each, 8 genes
SECTIONS, COLS, ROWS, GENES, PX = ["S0", "S1", "S2", "S3", "S4", "S5"], 5, 4, 8, 8
FOLD = Fold("f", "fixed", train=("S0", "S1", "S5"), val=("S2",), test=("S3", "S4"))


pytestmark = pytest.mark.usefixtures("one_thread")


def make_adata(seed: int = 0) -> ad.AnnData:
    """Spots whose expression is linear in 3 latent factors; 20% of the entries are missing."""
    rng = np.random.default_rng(seed)
    cc, rr = np.meshgrid(np.arange(COLS), np.arange(ROWS))
    n_per = COLS * ROWS
    slide = np.repeat(SECTIONS, n_per)
    n = len(slide)
    obs = pd.DataFrame({"slide_id": pd.Categorical(slide, categories=SECTIONS),
                        "patient": np.repeat(list("AABCDE"), n_per),
                        "array_col": np.tile(cc.ravel(), len(SECTIONS)),
                        "array_row": np.tile(rr.ravel(), len(SECTIONS)),
                        "has_image": slide != "S5"},
                       index=[f"{s}_{i}" for s in SECTIONS for i in range(n_per)])
    z = rng.normal(size=(n, 3))
    log_expr = np.clip(2.0 + z @ rng.normal(size=(3, GENES)) + 0.1 * rng.normal(size=(n, GENES)),
                       0, None)
    mask = rng.random((n, GENES)) > 0.2
    counts = rng.poisson(np.expm1(log_expr) * 3).astype(np.float32)
    c_d = log_expr + 0.5 * (~mask)  # missing entries hold some filled-in value
    var = pd.DataFrame(index=[f"g{j}" for j in range(GENES)])
    a = ad.AnnData(X=counts.copy(), obs=obs, var=var)
    a.layers["counts"] = sp.csr_matrix(counts)
    a.layers["c_d_log1p"] = c_d
    a.layers["mask"] = mask
    a.obsm["spatial"] = np.stack([a.obs["array_col"] * 100.0 + 7, a.obs["array_row"] * 100.0 + 3],
                                 axis=1)
    a.obsm["latent"] = z  # for the fake embedding
    return a


@pytest.fixture
def adata() -> ad.AnnData:
    return make_adata()


def make_store(path, adata, names) -> PatchStore:
    """A store of ``names`` (in that order) laid out like ``extract_patches`` writes it.

    Pixel (0, 0) of each patch holds the spot's row in ``adata`` (< 256): alignment is visible.
    """
    path.mkdir()
    rows = adata.obs_names.get_indexer(names)
    images = np.full((len(names), PX, PX, 3), 200, np.uint8)
    images[:, 0, 0, 0] = rows
    np.save(path / "patches.npy", images)
    np.save(path / "obs_names.npy", np.asarray(names, dtype=str))
    (path / "meta.json").write_text(json.dumps({"out_px": PX, "n": len(names)}))
    return PatchStore.open(path)


@pytest.fixture
def store(tmp_path, adata) -> PatchStore:
    """Patches of S0..S4 in a shuffled order, minus one spot of S4."""
    names = [n for n in adata.obs_names if not n.startswith("S5") and n != "S4_7"]
    order = np.random.default_rng(1).permutation(len(names))
    return make_store(tmp_path / "patches-synthetic", adata, [names[i] for i in order])


def fake_embedding(adata, store) -> np.ndarray:
    """Latent factors + noise, in store order (as ``embed`` returns them)."""
    rows = adata.obs_names.get_indexer(store.obs_names)
    noise = np.random.default_rng(2).normal(scale=0.1, size=(len(rows), 3))
    return np.concatenate([adata.obsm["latent"][rows] + noise, rows[:, None] * 1.0], axis=1)


# ------------------------------------------------------------------------------------------- task


def test_rows_follow_obs_order_and_match_the_store(adata, store, caplog):
    with caplog.at_level(logging.WARNING, logger="stcore"):
        task = build_task(adata, store, FOLD, embeddings={"fake": fake_embedding(adata, store)})
    assert "1 sections without patches dropped: S5 (train)" in caplog.text
    assert "spots without a patch dropped: S4 1 of 20" in caplog.text
    keep = ~adata.obs_names.str.startswith("S5") & (adata.obs_names != "S4_7")
    rows = np.flatnonzero(keep)
    assert task.n_obs == len(rows) == 99 and task.n_genes == GENES
    assert task.genes == list(adata.var_names)
    np.testing.assert_array_equal(task.patches[:, 0, 0, 0], rows)  # patches aligned to the rows
    np.testing.assert_array_equal(task.embeddings["fake"][:, 3], rows)  # so are the embeddings
    np.testing.assert_array_equal(task.slide, adata.obs["slide_id"].astype(str).to_numpy()[rows])
    coords = adata.obs[["array_col", "array_row"]].to_numpy()
    np.testing.assert_array_equal(task.coords, coords[rows])
    np.testing.assert_array_equal(task.pixels, adata.obsm["spatial"][rows])
    for part, sections in [("train", ("S0", "S1")), ("val", ("S2",)), ("test", ("S3", "S4"))]:
        np.testing.assert_array_equal(getattr(task, part), np.isin(task.slide, sections), part)
    assert (task.train.sum(), task.val.sum(), task.test.sum()) == (40, 20, 39)


def test_raw_target_zeroes_missing_entries(adata, store):
    task = build_task(adata, store, FOLD, target="raw")
    rows = adata.obs_names.get_indexer([f"S3_{i}" for i in range(20)])
    sub = task.slide == "S3"
    mask, c_d = adata.layers["mask"][rows], adata.layers["c_d_log1p"][rows]
    np.testing.assert_array_equal(task.valid[sub], mask)
    np.testing.assert_allclose(task.truth[sub], c_d, rtol=1e-6)  # float32
    np.testing.assert_allclose(task.targets[sub], np.where(mask, c_d, 0), rtol=1e-6)
    assert (task.targets[~task.valid] == 0).all() and (task.truth[~task.valid] > 0).all()


def test_completed_target_needs_the_completed_layer(adata, store):
    with pytest.raises(ValueError, match=r"needs layers\['c_t_log1p'\]; run completion first"):
        build_task(adata, store, FOLD, target="completed")
    adata.layers["c_t_log1p"] = adata.layers["c_d_log1p"] + 1.0
    task = build_task(adata, store, FOLD, target="completed")
    np.testing.assert_allclose(task.targets, task.truth + 1.0, rtol=1e-6)
    raw = build_task(adata, store, FOLD, target="raw")
    np.testing.assert_array_equal(task.truth, raw.truth)  # same ground truth: comparable scores
    np.testing.assert_array_equal(task.valid, raw.valid)


def test_her2st_target_formula(adata, store):
    task = build_task(adata, store, FOLD, target="her2st")
    counts = adata.layers["counts"].toarray()[adata.obs_names.get_indexer(["S0_3", "S4_19"])]
    want = np.log10(1 + 1e4 * counts / counts.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(task.targets[[3, 98]], want, rtol=1e-6)
    np.testing.assert_array_equal(task.truth, task.targets)
    assert task.valid.all()
    rows = adata.obs_names.get_indexer(["S2_0", "S2_1"])
    np.testing.assert_allclose(task.targets[task.slide == "S2"][:2],
                               her2st_target(adata.layers["counts"][rows]), rtol=1e-6)


def test_contiguous_rows_are_a_view_of_the_store(adata, tmp_path):
    names = list(adata.obs_names[:100])  # S0..S4 in obs order
    store = make_store(tmp_path / "ordered", adata, names)
    task = build_task(adata, store, FOLD)
    assert np.shares_memory(task.patches, store.images)
    np.testing.assert_array_equal(task.patches[:, 0, 0, 0], np.arange(100))


def test_bad_inputs(adata, store, caplog):
    with pytest.raises(ValueError, match="unknown target 'log'; known: raw, completed, her2st"):
        build_task(adata, store, FOLD, target="log")
    with pytest.raises(ValueError, match=r"sections without patches dropped: S5 \(train\) "
                                         r"\(strict=True\)"):
        build_task(adata, store, FOLD, strict=True)
    with pytest.raises(ValueError, match="sections X9 are not in adata"):
        build_task(adata, store, Fold("g", "fixed", ("S0", "X9"), (), ("S3",)))
    with pytest.raises(ValueError, match="S0 is in both train and test"):
        build_task(adata, store, Fold("g", "fixed", ("S0",), (), ("S0", "S3")))
    with pytest.raises(ValueError, match="no test spot has a patch"):
        build_task(adata, store, Fold("g", "fixed", ("S0",), (), ("S5",)))
    with pytest.raises(ValueError, match=r"one row per patch of the store, in store order"):
        build_task(adata, store, FOLD, embeddings={"e": np.zeros((50, 4))})
    with pytest.raises(TypeError, match="Fold"):
        build_task(adata, store, {"train": ["S0"]})
    no_counts = adata.copy()
    del no_counts.layers["counts"]
    with pytest.raises(ValueError, match="target 'her2st' needs layers counts"):
        build_task(no_counts, store, FOLD, target="her2st")
    broken = adata.copy()
    broken.layers["c_d_log1p"][0, 0] = np.nan
    broken.layers["mask"][0, 0] = True
    with pytest.raises(ValueError, match="non-finite"):
        build_task(broken, store, FOLD)


# ------------------------------------------------------------------------------------- run, score


@pytest.fixture
def task(adata, store) -> Task:
    return build_task(adata, store, FOLD, embeddings={"fake": fake_embedding(adata, store)})


def test_run_fold_train_mean_and_score(task):
    model, pred = run_fold("train_mean", task, progress=False)
    assert model.name == "train_mean" and pred.shape == (39, GENES)
    np.testing.assert_allclose(pred, np.broadcast_to(task.targets[task.train].mean(0), pred.shape),
                               rtol=1e-6)
    s = score(task, pred, n=3, n_boot=50)
    truth, valid = task.truth[task.test], task.valid[task.test]
    direct = masked_metrics(truth, pred, valid)
    for key, value in direct.items():
        if np.isnan(value):  # a constant prediction has no correlation
            assert np.isnan(s[key]), key
        else:
            assert s[key] == pytest.approx(value), key
    assert s["n_constant_genes"] == GENES and s["n_nan_ACG"] == GENES
    assert s["MSE_low"] <= s["MSE"] <= s["MSE_high"]
    assert (s["n_test_spots"], s["n_test_sections"]) == (39, 2)


def test_run_fold_ridge_end_to_end(task):
    baseline = score(task, run_fold("train_mean", task, progress=False)[1], n_boot=20)
    model, pred = run_fold("ridge", task, params={"encoder": "fake", "n_components": 4,
                                                    "masked_loss": True}, seed=0)
    assert model.encoder_ == "fake" and pred.shape == (39, GENES)
    s = score(task, pred, n=3, n_boot=200, seed=5)
    assert s["MSE"] < 0.5 * baseline["MSE"] and s["PCC-Gene"] > 0.8
    truth, valid = task.truth[task.test], task.valid[task.test]
    direct = {**masked_metrics(truth, pred, valid), **group_pcc(truth, pred, valid, n=3)}
    for key, value in direct.items():
        assert s[key] == pytest.approx(value), key
    expected = {"MSE", "MAE", "PCC-Gene", "PCC-Patch", "R2-Gene", "R2-Patch", "n_constant_genes",
                "n_constant_patches", "PCC-ACG", "PCC-HEG", "PCC-HVG", "n_nan_ACG", "n_nan_HEG",
                "n_nan_HVG", "PCC-Gene_low", "PCC-Gene_high", "MSE_low", "MSE_high",
                "n_test_spots", "n_test_sections", "per_gene"}
    assert set(s) == expected
    # the intervals: bootstrap over the 2 test sections, deterministic for a seed
    sections = task.slide[task.test]
    for name in ("PCC-Gene", "MSE"):
        est, low, high = bootstrap_ci(name, truth, pred, valid, sections, n_boot=200, seed=5)
        assert (s[f"{name}_low"], s[f"{name}_high"]) == (low, high)
        assert low <= s[name] <= high and est == pytest.approx(s[name])
    again = score(task, pred, n=3, n_boot=200, seed=5)
    scalars = expected - {"per_gene"}
    assert {k: again[k] for k in scalars} == {k: s[k] for k in scalars}
    pd.testing.assert_frame_equal(again["per_gene"], s["per_gene"])
    # the per-gene table
    table = s["per_gene"]
    assert list(table.columns) == ["gene", "pcc", "r2", "mean_truth", "n_valid", "HEG", "HVG"]
    assert list(table["gene"]) == task.genes
    assert table["pcc"].mean() == pytest.approx(s["PCC-Gene"])
    assert table["r2"].mean() == pytest.approx(s["R2-Gene"])
    np.testing.assert_array_equal(table["n_valid"], valid.sum(0))
    j = 4
    assert table["mean_truth"][j] == pytest.approx(truth[valid[:, j], j].mean())
    assert table["HEG"].sum() == 3 and table["HVG"].sum() == 3
    assert table.loc[table["HEG"], "pcc"].mean() == pytest.approx(s["PCC-HEG"])


def test_single_test_section_has_no_interval(adata, store):
    task = build_task(adata, store, Fold("h", "fixed", ("S0", "S1"), ("S2",), ("S3",)),
                      embeddings={"fake": fake_embedding(adata, store)})
    _, pred = run_fold("ridge", task, params={"encoder": "fake"}, progress=False)
    s = score(task, pred, n_boot=10)
    assert s["n_test_sections"] == 1 and np.isfinite(s["PCC-Gene"])
    assert np.isnan([s["PCC-Gene_low"], s["PCC-Gene_high"], s["MSE_low"], s["MSE_high"]]).all()


def test_run_fold_and_score_errors(task):
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        run_fold("nope", task)
    with pytest.raises(TypeError, match="has no parameter"):
        run_fold("train_mean", task, params={"alpha": 1})
    with pytest.raises(ValueError, match=r"expected \(39, 8\)"):
        score(task, np.zeros((task.n_obs, GENES)))
    with pytest.raises(ValueError, match=r"expected \(39, 8\)"):
        per_gene_table(task, np.zeros((39, 3)))


# ---------------------------------------------------------------------------------------- real data


def test_mob_her2st_target_end_to_end(mirror):
    """MOB Rep1 (train) and Rep11 (test): real store, her2st target on the 40 top genes."""
    from stcore.data import extract_patches, load
    from stcore.data.splits import folds

    raw = load("mob", sections=["Rep1", "Rep11"])
    top = np.argsort(-np.asarray(raw.layers["counts"].sum(axis=0)).ravel(), kind="stable")[:40]
    adata = raw[:, np.sort(top)].copy()
    store = extract_patches(adata, size_um=100, out_px=32)
    (fold,) = folds(adata, "fixed")
    assert (fold.train, fold.test) == (("Rep1",), ("Rep11",))
    images = np.asarray(store.images, dtype=np.float32)
    emb = np.concatenate([images.mean(axis=(1, 2)), images.std(axis=(1, 2))], axis=1)
    task = build_task(adata, store, fold, target="her2st", embeddings={"colour": emb})
    assert task.n_obs == adata.n_obs == len(store)
    np.testing.assert_array_equal(task.patches, store.get(list(adata.obs_names)))
    np.testing.assert_allclose(task.targets, her2st_target(adata.layers["counts"]), rtol=1e-6)
    _, mean_pred = run_fold("train_mean", task, progress=False)
    _, ridge_pred = run_fold("ridge", task, params={"encoder": "colour"}, progress=False)
    base, s = score(task, mean_pred, n_boot=10), score(task, ridge_pred, n_boot=10)
    assert s["n_test_spots"] == (adata.obs["slide_id"] == "Rep11").sum()
    assert np.isfinite([s["MSE"], s["PCC-Gene"], s["PCC-HEG"], s["PCC-HVG"]]).all()
    assert s["PCC-Gene"] > 0  # colour carries some signal on the olfactory bulb layers
    assert np.isfinite(base["MSE"])


# ------------------------------------------------------------------------------ cross-validation
def test_cross_validate_section_out_tests_every_spot_once(adata, store):
    imaged = adata[adata.obs["has_image"].to_numpy()].copy()
    splits = folds(imaged, "section_out")
    emb = {"fake": fake_embedding(adata, store)}
    result = cross_validate("ridge", imaged, store, splits, params={"encoder": "fake"},
                            embeddings=emb, n_boot=20, progress=False)
    pred = result.predictions
    # every spot with a patch is tested exactly once, by the fold that held its section out
    assert sorted(pred.obs_names) == sorted(store.obs_names)
    for fold in splits:
        assert set(pred.obs.loc[pred.obs["fold"] == fold.name, "slide_id"]) == set(fold.test)
    assert list(result.scores["fold"]) == [f.name for f in splits]
    assert set(result.per_gene["fold"]) == {f.name for f in splits}
    # the stored truth / validity are the data's, aligned by spot
    rows = adata.obs_names.get_indexer(pred.obs_names)
    np.testing.assert_array_equal(pred.layers["valid"], adata.layers["mask"][rows])
    np.testing.assert_allclose(pred.layers["truth"], adata.layers["c_d_log1p"][rows], rtol=1e-6)
    np.testing.assert_allclose(pred.obsm["spatial"], adata.obsm["spatial"][rows])
    # section scores are the masked metrics of each section on its own
    by_section, by_gene = section_scores(pred, n=3)
    assert list(by_section["section"]) == list(pd.unique(pred.obs["slide_id"].astype(str)))
    for _, row in by_section.iterrows():
        m = (pred.obs["slide_id"] == row["section"]).to_numpy()
        direct = masked_metrics(pred.layers["truth"][m], pred.X[m], pred.layers["valid"][m])
        assert row["MSE"] == pytest.approx(direct["MSE"])
        assert row["PCC-Gene"] == pytest.approx(direct["PCC-Gene"])
        assert row["n_spots"] == m.sum()
        assert row["fold"] == pred.obs.loc[m, "fold"].iloc[0]
    assert len(by_gene) == len(by_section) * GENES
    first = by_gene[by_gene["section"] == by_section["section"][0]]
    assert first["pcc"].mean() == pytest.approx(by_section["PCC-Gene"][0])
    # the summary: mean over sections with an interval over sections
    summary = summarize_sections(by_section, n_boot=200, seed=3)
    assert summary["n_sections"] == len(splits)
    mean, low, high = mean_ci(by_section["PCC-Gene"], n_boot=200, seed=3)
    assert (summary["PCC-Gene"], summary["PCC-Gene_low"], summary["PCC-Gene_high"]) == (mean, low, high)
    assert low <= mean <= high and mean > 0.5  # the embedding carries the signal


def test_constant_prediction_has_undefined_section_pcc(adata, store):
    imaged = adata[adata.obs["has_image"].to_numpy()].copy()
    result = cross_validate("train_mean", imaged, store, folds(imaged, "patient_out"), n_boot=10,
                            progress=False)
    by_section, _ = section_scores(result.predictions, n=3)
    assert by_section["PCC-Gene"].isna().all()
    assert (by_section["n_constant_genes"] == GENES).all()
    summary = summarize_sections(by_section, n_boot=10)
    assert np.isnan(summary["PCC-Gene"]) and summary["n_nan_PCC-Gene"] == len(by_section)
    assert np.isfinite(summary["MSE"])
    # pooling the folds would have given the constant predictor a correlation: not done here
    assert result.history.empty


def test_cross_validate_errors(adata, store):
    with pytest.raises(ValueError, match="no folds"):
        cross_validate("train_mean", adata, store, [])
    twice = [Fold("a", "fixed", ("S0",), (), ("S3",)), Fold("b", "fixed", ("S1",), (), ("S3",))]
    with pytest.raises(ValueError, match="S3 are tested in two folds"):
        cross_validate("train_mean", adata, store, twice)
    with pytest.raises(ValueError, match="lack layers"):
        section_scores(ad.AnnData(np.zeros((2, 2), np.float32)))
