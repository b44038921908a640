"""Synthetic spatial data for the completion tests: smooth gene fields on a legacy-ST grid."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest


def synthetic_adata(*, splits=("train", "train", "test"), side: int = 12, n_genes: int = 16,
                    noise: float = 0.3, levels=(0.5, 1.5), dropout=(0.05, 0.6),
                    seed: int = 0) -> ad.AnnData:
    """Synthetic AnnData with the keys of a preprocessed SpaRED dataset.

    One slide per entry of ``splits`` on a ``side`` × ``side`` legacy grid (``obsm['spatial']`` =
    200 · (col, row)). Each gene is a mixture of 4 smooth latent fields (low-frequency waves,
    new phases per slide) around a level drawn from ``levels``, plus Gaussian noise; genes
    co-vary, as in tissue. Dropout rates rise linearly over the genes from ``dropout[0]`` to
    ``dropout[1]``. ``layers['c_d_log1p']`` = truth with the missing entries pre-filled by the
    slide median of the gene's observed values (as the median filter would), ``layers['mask']``,
    ``layers['truth']``, ``var['glob_exp_frac']`` from the mask.

    Levels are low on purpose: SpaCKLE (inputs masked to 0, post-norm transformer) learns
    slowly when every gene has a large offset, and the tests run ~150 steps.
    """
    rng = np.random.default_rng(seed)
    row, col = np.divmod(np.arange(side * side), side)
    n_fields = 4  # genes are mixtures of a few smooth latent fields (genes co-vary, as in tissue)
    freq = rng.uniform(0.5, 1.5, size=(n_fields, 2)) * 2 * np.pi / side
    loadings = rng.normal(0, 1, size=(n_fields, n_genes)) / np.sqrt(n_fields)
    level = rng.uniform(*levels, size=n_genes)
    obs, values = [], []
    for s, split in enumerate(splits):
        phase = rng.uniform(0, 2 * np.pi, size=(n_fields, 2))
        latent = (np.sin(np.outer(row, freq[:, 0]) + phase[:, 0])
                  + np.cos(np.outer(col, freq[:, 1]) + phase[:, 1]))  # (spots, fields)
        field = level + rng.uniform(-0.3, 0.3, size=n_genes) + latent @ loadings
        values.append(field + rng.normal(0, noise, size=field.shape))
        obs.append(pd.DataFrame({"slide_id": f"s{s}", "split": split, "array_row": row,
                                 "array_col": col}, index=[f"s{s}_{i}" for i in range(len(row))]))
    obs = pd.concat(obs)
    obs["slide_id"] = obs["slide_id"].astype("category")
    truth = np.vstack(values)
    rate = np.linspace(*dropout, n_genes)
    mask = rng.random(truth.shape) >= rate
    filled = truth.copy()
    for s in obs["slide_id"].cat.categories:
        rows = (obs["slide_id"] == s).to_numpy()
        block = np.where(mask[rows], truth[rows], np.nan)
        med = np.nanmedian(block, axis=0)
        filled[rows] = np.where(mask[rows], truth[rows], med)
    adata = ad.AnnData(np.zeros_like(truth), obs=obs,
                       var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))
    adata.obsm["spatial"] = 200.0 * obs[["array_col", "array_row"]].to_numpy(dtype=float)
    adata.layers["c_d_log1p"] = filled
    adata.layers["mask"] = mask
    adata.layers["truth"] = truth
    adata.var["glob_exp_frac"] = mask.mean(axis=0)
    return adata


@pytest.fixture(scope="session")
def synth() -> ad.AnnData:
    """3 slides (train, train, test), 12 × 12 grid, 16 genes. Do not modify: copy first."""
    return synthetic_adata()


@pytest.fixture
def synth_copy(synth) -> ad.AnnData:
    return synth.copy()


@pytest.fixture(scope="session")
def make_synthetic():
    """``make_synthetic(**kwargs)``: :func:`synthetic_adata` with other settings."""
    return synthetic_adata
