"""Every predictor on a small synthetic Task: fit, predict, determinism, save/load, errors.

Models are kept tiny (16 px patches, a few steps; the 'tiny' test CNN as image encoder where a
model takes one) so that the whole file runs in well under a minute on two busy cores.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from stcore.models import MODELS, Predictor, Task, UnknownModelError, create
from stcore.models._common import grid_neighbours, knn_adjacency, n_hop_subgraphs
from stcore.models.base import NeuralPredictor

FAST = {
    "train_mean": {},
    "ridge": dict(encoder="toy"),
    "stnet": dict(encoder="tiny", size=16, max_steps=6, val_every=3, lr=3e-3),
    "shufflenet": dict(size=16, max_steps=3, val_every=3, batch_size=16),
    "vit": dict(size=16, max_steps=3, val_every=3, batch_size=16, delta=True),
    "histogene": dict(size=16, dim=32, depth=1, heads=2, mlp_dim=64, max_steps=4, val_every=2),
    "hist2st": dict(size=16, patch_size=4, channel=8, depth1=1, depth2=1, depth3=2, heads=2,
                    dim_head=8, max_steps=2, val_every=2, zinb_weight=0.25,
                    distill_weight=0.5, distill_views=2),
    "bleep": dict(encoder="tiny", size=16, max_steps=4, val_every=2, batch_size=32, top_k=5),
    "egn": dict(encoder="toy", size=16, patch_size=8, dim=32, depth=2, heads=2, dim_head=8,
                mlp_dim=64, bhead=2, bdim=8, max_steps=4, val_every=2),
    "sepal": dict(encoder="toy", pre_dim=32, graph_dims=(32, 16), max_steps=4, val_every=2,
                  batch_size=32),
}


def fit(name: str, task: Task, seed: int = 0, **extra) -> Predictor:
    return create(name, **{**FAST[name], **extra}).fit(task, seed=seed, progress=False)


@pytest.fixture(scope="module")
def fitted(task) -> dict[str, Predictor]:
    return {name: fit(name, task) for name in FAST}


def test_registry_lists_every_model():
    assert set(MODELS) == set(FAST)
    for name in MODELS:
        assert MODELS[name].name == name


@pytest.mark.parametrize("name", list(FAST))
def test_fit_predict_shape_and_same_seed_same_predictions(name, task, fitted):
    model = fitted[name]
    pred = model.predict(task, task.test)
    assert pred.shape == (task.test.sum(), task.n_genes) and pred.dtype == np.float32
    assert np.isfinite(pred).all()
    again = fit(name, task, seed=0).predict(task, task.test)
    np.testing.assert_array_equal(pred, again)
    idx = np.flatnonzero(task.test)[::-1]  # integer rows, any order
    np.testing.assert_array_equal(model.predict(task, idx), pred[::-1])
    assert model.predict(task, np.zeros(task.n_obs, bool)).shape == (0, task.n_genes)
    if isinstance(model, NeuralPredictor):
        assert model.history and model.best_step is not None and model.train_seconds > 0


@pytest.mark.parametrize("name", list(FAST))
def test_save_load_round_trip(name, task, fitted, tmp_path):
    model = fitted[name]
    model.save(tmp_path / name)
    config = json.loads((tmp_path / name / "predictor.json").read_text())
    assert config["name"] == name and config["genes"] == task.genes
    loaded = Predictor.load(tmp_path / name)
    assert type(loaded) is type(model) and loaded.get_params() == model.get_params()
    np.testing.assert_array_equal(loaded.predict(task, task.test), model.predict(task, task.test))
    assert loaded.history == json.loads(json.dumps(model.history))


def test_neural_seeds_differ(task, fitted):
    other = fit("stnet", task, seed=1).predict(task, task.test)
    assert not np.array_equal(other, fitted["stnet"].predict(task, task.test))


@pytest.mark.parametrize("name, params", [
    ("ridge", dict(encoder="toy")),
    ("stnet", dict(encoder="tiny", size=16, max_steps=60, val_every=10, lr=3e-3)),
    ("shufflenet", dict(size=16, max_steps=80, val_every=10, lr=3e-3, batch_size=32)),
])
def test_beats_train_mean(name, params, task, mean_mse, test_score):
    model = create(name, **params).fit(task, progress=False)
    assert test_score(task, model.predict(task, task.test)) < 0.6 * mean_mse


def test_train_mean_and_masked_loss(task):
    plain = create("train_mean").fit(task, progress=False)
    masked = create("train_mean", masked_loss=True).fit(task, progress=False)
    t, v = task.targets[task.train], task.valid[task.train]
    np.testing.assert_allclose(plain.mean_, t.mean(0), rtol=1e-5)
    np.testing.assert_allclose(masked.mean_, (t * v).sum(0) / v.sum(0), rtol=1e-5)
    ridge = create("ridge", encoder="toy", masked_loss=True, alphas=[1.0]).fit(task)
    assert ridge.alpha_ == 1.0 and np.isfinite(ridge.predict(task, task.test)).all()


def test_ridge_chooses_alpha_on_validation(task, fitted):
    ridge = fitted["ridge"]
    assert ridge.alpha_scores_ and ridge.alpha_scores_[str(ridge.alpha_)] == min(
        ridge.alpha_scores_.values())
    assert ridge.components_.shape[0] == min(256, task.train.sum(), 16)


def test_checkpointed_predictor_resumes(task, tmp_path):
    params = dict(FAST["stnet"], checkpoint_dir=str(tmp_path))
    first = create("stnet", **params).fit(task, progress=False)
    second = create("stnet", **params).fit(task, progress=False)  # finished: nothing to train
    np.testing.assert_array_equal(first.predict(task, task.test), second.predict(task, task.test))
    assert (tmp_path / "last.pt").exists()


# ---------------------------------------------------------------------------------- errors
def test_unknown_model_and_parameter():
    with pytest.raises(UnknownModelError, match="unknown model 'stnett'.*stnet"):
        create("stnett")
    with pytest.raises(TypeError, match="no parameter.*'encodr'.*encoder"):
        create("stnet", encodr="tiny")
    with pytest.raises(TypeError, match="'lrate'"):
        create("shufflenet", lrate=1.0)  # parameters inherited through **params are known
    assert create("shufflenet", lr=1e-3).lr == 1e-3
    with pytest.raises(ValueError, match="optimizer"):
        create("stnet", optimizer="rmsprop")
    with pytest.raises(ValueError, match="method"):
        create("bleep", method="weighted")
    with pytest.raises(ValueError, match="depth"):
        create("hist2st", depth3=0)


def test_predict_errors(task, fitted, synthetic_task):
    with pytest.raises(RuntimeError, match="not fitted"):
        create("ridge").predict(task, task.test)
    other = synthetic_task(n_genes=5)
    with pytest.raises(ValueError, match="8 genes"):
        fitted["train_mean"].predict(other, other.test)
    with pytest.raises(ValueError, match="rows mask"):
        fitted["train_mean"].predict(task, np.ones(3, bool))
    with pytest.raises(KeyError, match="available: \\['toy'\\]"):
        create("ridge", encoder="uni").fit(task)
    with pytest.raises(ValueError, match="unknown image encoder"):
        create("stnet", encoder="no_such_net", size=16).fit(task, progress=False)


def test_task_validation(task):
    good = dict(targets=task.targets, truth=task.truth, valid=task.valid, patches=task.patches,
                coords=task.coords, pixels=task.pixels, slide=task.slide, train=task.train,
                val=task.val, test=task.test, genes=task.genes)
    with pytest.raises(ValueError, match="genes"):
        Task(**{**good, "genes": task.genes[:3]})
    with pytest.raises(ValueError, match="valid must be a bool"):
        Task(**{**good, "valid": task.valid.astype(int)})
    with pytest.raises(ValueError, match="uint8"):
        Task(**{**good, "patches": task.patches.astype(np.float32)})
    with pytest.raises(ValueError, match="train must be a bool"):
        Task(**{**good, "train": task.train[:-1]})
    with pytest.raises(ValueError, match="embeddings"):
        Task(**good, embeddings={"x": np.zeros((3, 2))})


# ------------------------------------------------------------------------- model internals
def test_spatial_graphs(synthetic_task):
    sq = synthetic_task(n_slides=1, cols=5, rows=5, n_genes=2)
    nb = grid_neighbours(sq.coords, sq.slide, hex_geometry=False)
    assert max(len(n) for n in nb) == 8 and min(len(n) for n in nb) == 3  # centre, corner
    hx = synthetic_task(n_slides=1, cols=5, rows=5, n_genes=2, hexagonal=True)
    nb = grid_neighbours(hx.coords, hx.slide, hex_geometry=True)
    assert max(len(n) for n in nb) == 6
    two_hops = n_hop_subgraphs(nb, 2)
    assert all(s[0] == i for i, s in enumerate(two_hops)) and max(map(len, two_hops)) == 19
    adj = knn_adjacency(np.array([[0, 0], [1, 0], [2, 0], [9, 9]], float), k=2, max_dist=2)
    assert adj[3].sum() == 0 and adj[0, 1] == 1 and adj[0, 2] == 1 and adj[1].sum() == 2


@pytest.mark.parametrize("hexagonal, nodes", [(False, 9), (True, 7)])
def test_sepal_local_graphs_follow_the_array_geometry(hexagonal, nodes, synthetic_task):
    t = synthetic_task(hexagonal=hexagonal)
    model = create("sepal", **FAST["sepal"]).fit(t, progress=False)
    graph_nodes, adj = model._graphs(t)
    assert graph_nodes.shape[1] == nodes and (graph_nodes[:, 0] == np.arange(t.n_obs)).all()
    assert (adj == adj.transpose(0, 2, 1)).all()
    assert np.isfinite(model.predict(t, t.test)).all()


def test_egn_exemplars_come_from_other_sections(task, fitted):
    egn = fitted["egn"]
    idx = np.flatnonzero(task.train)
    ex = egn._exemplars(task, idx)
    assert ex.shape == (len(idx), 6)
    assert (egn.bank_slide_[ex] != task.slide[idx][:, None]).all()


def test_zinb_and_clip_losses():
    import torch

    from stcore.models.bleep import clip_loss
    from stcore.models.hist2st import zinb_nll

    x = torch.tensor([[0.0, 3.0, 10.0]])
    ones = torch.ones(1)
    good = zinb_nll(x, torch.tensor([[0.5, 3.0, 10.0]]), torch.full((1, 3), 5.0),
                    torch.full((1, 3), 0.1), ones)
    bad = zinb_nll(x, torch.tensor([[20.0, 0.1, 0.1]]), torch.full((1, 3), 5.0),
                   torch.full((1, 3), 0.1), ones)
    assert torch.isfinite(good) and good < bad
    e = torch.nn.functional.normalize(torch.randn(6, 4, generator=torch.Generator()
                                                  .manual_seed(0)), dim=1)
    assert clip_loss(e, e, 1.0) < clip_loss(e, e.flip(0), 1.0)


@pytest.mark.parametrize("name", ["stnet", "bleep"])
def test_frozen_variants_read_the_cached_embeddings(name, task, tmp_path):
    params = dict(encoder="toy", frozen=True, max_steps=4, val_every=2)
    model = create(name, **params).fit(task, progress=False)
    assert model.dim_ == task.embeddings["toy"].shape[1]
    pred = model.predict(task, task.test)
    assert pred.shape == (task.test.sum(), task.n_genes) and np.isfinite(pred).all()
    # no image is read: the patches can go
    no_images = Task(**{**vars(task), "patches": None})
    np.testing.assert_allclose(model.predict(no_images, task.test), pred, rtol=1e-5)
    again = Predictor.load(model.save(tmp_path / name))
    np.testing.assert_allclose(again.predict(task, task.test), pred, rtol=1e-5)
    with pytest.raises(KeyError, match="nope"):
        create(name, **{**params, "encoder": "nope"}).fit(task, progress=False)


def test_frozen_stnet_is_a_linear_probe_that_learns(task, mean_mse, test_score):
    model = create("stnet", encoder="toy", frozen=True, lr=1e-2, max_steps=200,
                   val_every=20).fit(task, progress=False)
    assert test_score(task, model.predict(task, task.test)) < 0.6 * mean_mse


@pytest.mark.parametrize("name", ["histogene", "hist2st"])
def test_section_models_can_start_at_the_train_mean(name, task):
    from stcore.models.base import train_mean

    params = {**FAST[name], "max_steps": 1, "val_every": 1, "lr": 1e-12, "zinb_weight": 0.0,
              "distill_weight": 0.0} if name == "hist2st" else \
        {**FAST[name], "max_steps": 1, "val_every": 1, "lr": 1e-12}
    model = create(name, init_bias_mean=True, **params).fit(task, progress=False)
    bias = model.net_.gene_head[-1].bias.detach().numpy()
    np.testing.assert_allclose(bias, train_mean(task), rtol=1e-4, atol=1e-4)
    plain = create(name, **params).fit(task, progress=False)
    assert not np.allclose(plain.net_.gene_head[-1].bias.detach().numpy(), train_mean(task),
                           atol=0.1)


def test_ridge_without_validation_and_clipped_predictions(task):
    no_val = Task(**{**vars(task), "train": task.train | task.val,
                     "val": np.zeros_like(task.val)})
    ridge = create("ridge", encoder="toy", alphas=[1e-3, 1.0, 1e3]).fit(no_val, progress=False)
    assert ridge.alpha_ in (1e-3, 1.0, 1e3) and not ridge.alpha_scores_
    # far outside the training embeddings, the linear model is clipped to the target range
    wild = Task(**{**vars(task), "embeddings": {"toy": task.embeddings["toy"] * 1e3}})
    pred = ridge.predict(wild, wild.test)
    targets = no_val.targets[no_val.train]
    assert (pred >= targets.min(0) - 1e-6).all() and (pred <= targets.max(0) + 1e-6).all()
