"""SpaCKLE: neighbourhoods, learning, determinism, the two attention variants, save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from stcore.completion import SpaCKLE, TrainMean  # noqa: E402
from stcore.completion.evaluate import hide  # noqa: E402
from stcore.completion.spackle import build_network, neighbourhoods  # noqa: E402
from stcore.metrics import masked_metrics  # noqa: E402

# small and fast: 150 steps take about a second on 2 CPU cores
FAST = dict(n_neighbors=8, dim_feedforward=64, batch_size=64, lr=1e-2, max_steps=150,
            progress=False)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_thread):
    """These models are tiny: one torch thread (``one_thread`` in tests/conftest.py)."""


@pytest.fixture(scope="module")
def fitted(synth):
    """SpaCKLE (attention across neighbours), fitted with seed 0."""
    return SpaCKLE(attention="neighbours", **FAST).fit(synth, seed=0)


@pytest.fixture(scope="module")
def fitted_batch(synth):
    """The original code's variant (attention across the mini-batch), a short fit."""
    return SpaCKLE(attention="batch", **{**FAST, "max_steps": 30}).fit(synth, seed=0)


@pytest.fixture(scope="module")
def hidden(synth):
    test = (synth.obs["split"] == "test").to_numpy()
    return hide(synth.layers["mask"], test, 0.3, seed=0)


def test_neighbourhoods_are_nearest_spots_of_the_same_slide(synth):
    slides = synth.obs["slide_id"].astype(str).to_numpy()
    coords = synth.obsm["spatial"]
    everyone = np.ones(synth.n_obs, dtype=bool)
    nb = neighbourhoods(slides, coords, everyone, everyone, 18)
    assert nb.shape == (synth.n_obs, 19)
    np.testing.assert_array_equal(nb[:, 0], np.arange(synth.n_obs))
    assert (slides[nb] == slides[:, None]).all()  # slides share coordinates: a real test
    assert (nb[:, 1:] != nb[:, :1]).all()
    dist = np.linalg.norm(coords[nb] - coords[:, None], axis=-1)
    assert (np.diff(dist, axis=1) >= 0).all()
    # a corner spot of the 12 × 12 grid (spacing 200): 3 at 200, 282.8, then 400 ...
    assert dist[0, 1:4].tolist() == pytest.approx([200, 200, 282.84], rel=1e-4)
    # the pool restricts the neighbours; centres come out in obs order
    train = (synth.obs["split"] == "train").to_numpy()
    nb_train = neighbourhoods(slides, coords, train, train, 18)
    np.testing.assert_array_equal(nb_train[:, 0], np.flatnonzero(train))
    assert train[nb_train].all()


def test_small_slides_repeat_neighbours():
    slides = np.array(["a", "a", "a", "b"])
    coords = np.array([[0, 0], [1, 0], [3, 0], [0, 0]], dtype=float)
    everyone = np.ones(4, dtype=bool)
    nb = neighbourhoods(slides, coords, everyone, everyone, 4)
    np.testing.assert_array_equal(nb[0], [0, 1, 2, 1, 2])
    np.testing.assert_array_equal(nb[3], [3, 3, 3, 3, 3])


def test_architecture_matches_spared():
    net = build_network(32)
    lin_in, encoder, lin_out = net
    assert (lin_in.in_features, lin_in.out_features) == (32, 32) == (lin_out.in_features,
                                                                    lin_out.out_features)
    assert len(encoder.layers) == 2
    layer = encoder.layers[0]
    assert layer.self_attn.num_heads == 1 and layer.linear1.out_features == 2048
    assert layer.dropout.p == 0.1 and not layer.norm_first
    assert layer.self_attn.batch_first is False  # the original code's default
    assert build_network(32, attention="neighbours")[1].layers[0].self_attn.batch_first is True
    with pytest.raises(ValueError, match="attention"):
        build_network(32, attention="genes")


def test_what_the_centre_prediction_depends_on():
    torch.manual_seed(0)
    x = torch.rand(8, 19, 16)
    other_neighbours = x.clone()
    other_neighbours[:, 1:] = torch.rand(8, 18, 16)
    other_sample = x.clone()
    other_sample[3, 0] += 1.0
    for attention, neighbours_matter in (("neighbours", True), ("batch", False)):
        net = build_network(16, attention=attention, dim_feedforward=32).eval()
        with torch.no_grad():
            centre = net(x)[:, 0]
            assert (not torch.allclose(net(other_neighbours)[:, 0], centre)) is neighbours_matter
            # another sample of the batch matters only when attention runs across the batch
            assert (not torch.allclose(net(other_sample)[0, 0], centre[0])) is not neighbours_matter


def test_beats_the_train_mean(fitted, synth, hidden):
    available = synth.layers["mask"] & ~hidden
    truth = synth.layers["c_d_log1p"]
    mse = masked_metrics(truth, fitted.predict(synth, available=available), hidden)["MSE"]
    baseline = TrainMean().fit(synth).predict(synth, available=available)
    assert mse < 0.8 * masked_metrics(truth, baseline, hidden)["MSE"]


def test_training_record(fitted):
    assert [h["step"] for h in fitted.history] == list(range(10, 151, 10))
    assert all(np.isfinite([h["train_loss"], h["val_mse"]]).all() for h in fitted.history)
    best = min(fitted.history, key=lambda h: h["val_mse"])
    assert fitted.best_step == best["step"]
    assert fitted.history[-1]["train_loss"] < fitted.history[0]["train_loss"]
    assert fitted.train_seconds > 0
    assert "train slide 's1'" in fitted.split_note  # no 'val' spots: s1 became validation
    assert not torch.are_deterministic_algorithms_enabled()  # restored after fit


def test_early_stopping(synth):
    model = SpaCKLE(**{**FAST, "max_steps": 400, "lr": 0.5, "patience": 2}).fit(synth)
    checks = [h["step"] for h in model.history]
    assert checks[-1] < 400 and len(checks) - checks.index(model.best_step) - 1 == 2


def test_same_seed_same_model_other_seed_other_model(fitted, synth):
    available = synth.layers["mask"]
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    again = SpaCKLE(attention="neighbours", **FAST).fit(synth, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    p0 = fitted.predict(synth, available=available)
    np.testing.assert_array_equal(again.predict(synth, available=available), p0)
    assert again.history == fitted.history
    other = SpaCKLE(attention="neighbours", **FAST).fit(synth, seed=1)
    assert not np.allclose(other.predict(synth, available=available), p0)


@pytest.mark.parametrize("variant", ["fitted", "fitted_batch"])
def test_unavailable_values_are_never_read(variant, request, synth, hidden):
    model = request.getfixturevalue(variant)
    adata = synth.copy()
    available = adata.layers["mask"] & ~hidden
    before = model.predict(adata, available=available)
    assert np.isfinite(before).all()
    poisoned = adata.layers["c_d_log1p"].copy()
    poisoned[~available] = np.random.default_rng(0).normal(40, 5, size=(~available).sum())
    adata.layers["c_d_log1p"] = poisoned
    np.testing.assert_array_equal(model.predict(adata, available=available), before)
    out = model.complete(adata)
    mask = adata.layers["mask"]
    np.testing.assert_array_equal(out[mask], poisoned[mask])  # observed entries never change


def test_attention_variants_differ_as_documented(fitted, fitted_batch, synth):
    # Change every value of slide s2. s0 occupies obs 0–143, s1 144–287, s2 288–431; with
    # inference batches of 64, obs 256–319 mix s1 and s2. With attention across the neighbours,
    # the s1 spots of that batch keep their prediction (neighbourhoods stay within a slide);
    # with attention across the batch (the original code), they do not.
    available = synth.layers["mask"]
    slides = synth.obs["slide_id"].astype(str).to_numpy()
    adata = synth.copy()
    adata.layers["c_d_log1p"] = np.where((slides == "s2")[:, None], 5.0,
                                         adata.layers["c_d_log1p"])
    s1_in_mixed_batch = slice(256, 288)
    assert (slides[s1_in_mixed_batch] == "s1").all() and (slides[288:320] == "s2").all()
    for model, same in ((fitted, True), (fitted_batch, False)):
        assert model.batch_size == 64
        changed = model.predict(adata, available=available)[s1_in_mixed_batch]
        original = model.predict(synth, available=available)[s1_in_mixed_batch]
        assert np.array_equal(changed, original) is same, model.attention


def test_save_load_round_trip(fitted, synth, tmp_path, leftovers):
    path = fitted.save(tmp_path / "model")
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "spackle.json"]
    assert leftovers(tmp_path) == []
    config = json.loads((path / "spackle.json").read_text())
    assert config["params"]["attention"] == "neighbours" and config["params"]["n_neighbors"] == 8
    assert config["best_step"] == fitted.best_step and len(config["var_names"]) == 16
    loaded = SpaCKLE.load(path)
    available = synth.layers["mask"]
    np.testing.assert_array_equal(loaded.predict(synth, available=available),
                                  fitted.predict(synth, available=available))
    assert loaded.history == fitted.history and loaded.get_params() == fitted.get_params()
    with pytest.raises(FileNotFoundError, match="no saved SpaCKLE"):
        SpaCKLE.load(tmp_path / "nothing")
    with pytest.raises(RuntimeError, match="not fitted"):
        SpaCKLE().save(tmp_path / "unfitted")


def test_bad_parameters():
    with pytest.raises(ValueError, match="attention"):
        SpaCKLE(attention="genes")
    with pytest.raises(ValueError, match="max_steps"):
        SpaCKLE(max_steps=0)
    with pytest.raises(ValueError, match="mask_prob"):
        SpaCKLE(mask_prob=0)
