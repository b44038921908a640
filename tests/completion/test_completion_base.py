"""The Completer interface: complete() keeps observed entries, clear errors, validation carving."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from stcore import completion
from stcore.completion import METHODS, Completer, SpatialKNN, TrainMean
from stcore.completion.base import carve_validation, check_mask, split_rows


def test_methods_registry():
    assert list(METHODS) == ["train_mean", "gene_median", "adaptive_median", "knn", "spackle"]
    assert all(issubclass(cls, Completer) for cls in METHODS.values())


def test_import_is_light():
    code = "import sys, stcore.completion; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_complete_replaces_only_missing_entries(synth_copy):
    adata = synth_copy
    layer, mask = adata.layers["c_d_log1p"].copy(), adata.layers["mask"]
    out = completion.complete(adata, "knn", key_added="c_t_log1p")
    np.testing.assert_array_equal(out[mask], layer[mask])
    assert not np.array_equal(out[~mask], layer[~mask])  # missing entries were replaced
    np.testing.assert_array_equal(adata.layers["c_t_log1p"], out)
    np.testing.assert_array_equal(adata.layers["c_d_log1p"], layer)  # input layer untouched


def test_complete_without_key_added_writes_nothing(synth_copy):
    layers = set(synth_copy.layers)
    TrainMean().fit(synth_copy).complete(synth_copy)
    assert set(synth_copy.layers) == layers


def test_sparse_layers_are_accepted(synth):
    adata = synth.copy()
    dense = TrainMean().fit(adata).complete(adata)
    adata.layers["c_d_log1p"] = sp.csr_matrix(adata.layers["c_d_log1p"])
    adata.layers["mask"] = sp.csr_matrix(adata.layers["mask"])
    np.testing.assert_array_equal(TrainMean().fit(adata).complete(adata), dense)


def test_unknown_method_lists_the_known_ones(synth):
    with pytest.raises(ValueError, match="unknown completion method 'magic'.*train_mean.*spackle"):
        completion.complete(synth, "magic")
    with pytest.raises(ValueError, match="unknown completion method 'magic'"):
        completion.factory("magic")


def test_factory():
    make = completion.factory("knn", n_neighbors=3)
    a, b = make(), make()
    assert isinstance(a, SpatialKNN) and a is not b and a.n_neighbors == 3
    assert completion.factory("spackle", max_steps=5)().max_steps == 5
    with pytest.raises(ValueError, match="n_neighbors"):  # parameters are checked at once
        completion.factory("knn", n_neighbors=0)
    with pytest.raises(TypeError):
        completion.factory("train_mean", n_neighbors=3)


def test_complete_accepts_an_instance_and_params(synth_copy):
    a = completion.complete(synth_copy, SpatialKNN(n_neighbors=4))
    b = completion.complete(synth_copy, "knn", n_neighbors=4)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError):
        completion.complete(synth_copy, SpatialKNN(), n_neighbors=4)


def test_unknown_layer_names_the_existing_ones(synth):
    with pytest.raises(KeyError, match="'counts' not in adata.layers.*'c_d_log1p'.*'mask'"):
        TrainMean().fit(synth, layer="counts")
    model = TrainMean().fit(synth)
    with pytest.raises(KeyError, match="'nope'"):
        model.complete(synth, mask_key="nope")


def test_bad_masks(synth):
    adata = synth.copy()
    adata.layers["int_mask"] = adata.layers["mask"].astype(np.int8)
    with pytest.raises(TypeError, match="boolean"):
        TrainMean().fit(adata, mask_key="int_mask")
    model = TrainMean().fit(synth)
    with pytest.raises(ValueError, match="shape"):
        model.predict(synth, available=synth.layers["mask"][:10])
    with pytest.raises(TypeError, match="boolean"):
        model.predict(synth, available=synth.layers["mask"].astype(float))
    with pytest.raises(ValueError, match="shape"):
        check_mask(np.ones((3, 4), dtype=bool), (4, 3))


def test_unfitted_and_mismatched_genes(synth):
    with pytest.raises(RuntimeError, match="not fitted"):
        TrainMean().predict(synth, available=synth.layers["mask"])
    model = TrainMean().fit(synth)
    sub = synth[:, :10].copy()
    with pytest.raises(ValueError, match="fitted on 16 genes"):
        model.complete(sub)


def test_split_is_required(synth):
    adata = synth.copy()
    adata.obs["split"] = "test"
    with pytest.raises(ValueError, match="no spot has obs\\['split'\\] == 'train'"):
        TrainMean().fit(adata)
    del adata.obs["split"]
    with pytest.raises(KeyError, match="split"):
        TrainMean().fit(adata)


def test_carve_validation(make_synthetic):
    # 'val' spots exist: unchanged
    adata = make_synthetic(splits=("train", "val", "test"))
    train, val = split_rows(adata)
    t2, v2, note = carve_validation(adata, train, val)
    assert (t2 == train).all() and (v2 == val).all() and "144 'val' spots" in note
    # two train slides: the last one becomes validation
    adata = make_synthetic(splits=("train", "train", "test"))
    train, val = split_rows(adata)
    t2, v2, note = carve_validation(adata, train, val)
    slides = adata.obs["slide_id"].astype(str).to_numpy()
    assert set(slides[v2]) == {"s1"} and set(slides[t2]) == {"s0"} and "'s1'" in note
    # one train slide: 15 % of its spots at random, seeded
    adata = make_synthetic(splits=("train", "test"))
    train, val = split_rows(adata)
    t2, v2, note = carve_validation(adata, train, val, seed=3)
    assert v2.sum() == round(0.15 * 144) and not (t2 & v2).any() and ((t2 | v2) == train).all()
    assert (carve_validation(adata, train, val, seed=3)[1] == v2).all()
    assert not (carve_validation(adata, train, val, seed=4)[1] == v2).all()
    assert "random" in note
