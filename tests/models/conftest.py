"""A small synthetic Task whose patch colours encode the genes (no data files, no network)."""

from __future__ import annotations

import numpy as np
import pytest

from stcore.models.base import Task


def make_task(n_slides: int = 4, cols: int = 8, rows: int = 6, n_genes: int = 8,
              px: int = 16, seed: int = 0, hexagonal: bool = False) -> Task:
    """``n_slides`` sections of ``cols × rows`` spots; slides 0..n-3 train, n-2 val, n-1 test.

    Three latent factors vary smoothly in space; each sets one colour channel of the spot's
    patch (plus pixel noise) and the genes are linear in them (plus noise). 20% of the entries
    are missing (valid False): their training target is 0, as SpaRED's "raw" targets.
    """
    rng = np.random.default_rng(seed)
    cc, rr = np.meshgrid(np.arange(cols), np.arange(rows))
    cc, rr = cc.ravel().astype(float), rr.ravel().astype(float)
    if hexagonal:  # Visium-like: col + row even
        cc = 2 * cc + (rr % 2)
    coords, slide, z = [], [], []
    for s in range(n_slides):
        phase = rng.uniform(0, 2 * np.pi, 3)
        f = np.stack([np.sin(0.7 * cc + phase[0]), np.cos(0.9 * rr + phase[1]),
                      np.sin(0.5 * (cc + rr) + phase[2])], axis=1)
        z.append(f + 0.3 * rng.standard_normal(f.shape))
        coords.append(np.stack([cc, rr], axis=1))
        slide += [f"S{s}"] * len(cc)
    z, coords, slide = np.concatenate(z), np.concatenate(coords), np.array(slide)
    n = len(z)
    w = rng.standard_normal((3, n_genes))
    truth = (1.5 + z @ w + 0.1 * rng.standard_normal((n, n_genes))).astype(np.float32)
    valid = rng.random((n, n_genes)) > 0.2
    colour = np.clip(128 + 60 * z, 0, 255)
    patches = colour[:, None, None, :] + rng.normal(0, 15, (n, px, px, 3))
    patches = np.clip(patches, 0, 255).astype(np.uint8)
    emb = np.concatenate([patches.reshape(n, -1, 3).mean(1) / 64.0,
                          rng.standard_normal((n, 13))], axis=1).astype(np.float32)
    split = np.repeat(np.arange(n_slides), len(cc))
    return Task(targets=np.where(valid, truth, 0.0), truth=truth, valid=valid, patches=patches,
                coords=coords, pixels=coords * 100.0 + 50.0, slide=slide,
                train=split < n_slides - 2, val=split == n_slides - 2,
                test=split == n_slides - 1, genes=[f"g{i}" for i in range(n_genes)],
                embeddings={"toy": emb})


def score_test(task: Task, pred: np.ndarray) -> float:
    """MSE on the observed entries of the test rows."""
    valid = task.valid[task.test]
    return float(np.mean((pred - task.truth[task.test])[valid] ** 2))


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(one_thread):
    """Every model test module runs with one torch thread (``one_thread`` in tests/conftest.py)."""


@pytest.fixture(scope="session")
def synthetic_task():
    """``synthetic_task(**kw)``: :func:`make_task` (a new Task each call)."""
    return make_task


@pytest.fixture(scope="session")
def test_score():
    """``test_score(task, pred)``: :func:`score_test`."""
    return score_test


@pytest.fixture(scope="session")
def task() -> Task:
    return make_task()


@pytest.fixture(scope="session")
def mean_mse(task) -> float:
    from stcore.models.baselines import TrainMean

    return score_test(task, TrainMean().fit(task).predict(task, task.test))
