"""Completion of missing (dropout) entries of an expression layer, with a common interface.

Every method is a :class:`Completer`: ``fit(adata)`` on the ``obs['split'] == "train"`` spots,
``predict(adata, available=...)`` a full spots × genes matrix from the available entries only,
``complete(adata)`` the layer with its missing entries (``layers['mask']`` False) replaced and its
observed entries unchanged. Methods (:data:`METHODS`): ``train_mean`` (:class:`TrainMean`),
``gene_median`` (:class:`GeneMedian`), ``adaptive_median`` (:class:`AdaptiveMedian`, SpaRED's
filter), ``knn`` (:class:`SpatialKNN`) and ``spackle`` (:class:`SpaCKLE`, Ruiz et al. 2025; torch
is imported only when it is fitted or used); :func:`factory` makes a zero-argument factory of
one, :func:`complete` fits one and completes. :func:`evaluate` benchmarks them on hidden observed
entries (:func:`hide`); :func:`summarize` and :func:`mse_reduction` tabulate the results.

>>> from stcore import completion
>>> completion.complete(adata, "knn", key_added="c_t_log1p")     # doctest: +SKIP
"""

from __future__ import annotations

import functools
from typing import Callable

import anndata as ad
import numpy as np

from .base import Completer
from .baselines import AdaptiveMedian, GeneMedian, SpatialKNN, TrainMean
from .evaluate import evaluate, hide, mse_reduction, summarize
from .spackle import SpaCKLE

METHODS = {"train_mean": TrainMean, "gene_median": GeneMedian,
           "adaptive_median": AdaptiveMedian, "knn": SpatialKNN, "spackle": SpaCKLE}

__all__ = ["METHODS", "AdaptiveMedian", "Completer", "GeneMedian", "SpaCKLE", "SpatialKNN",
           "TrainMean", "complete", "evaluate", "factory", "hide", "mse_reduction", "summarize"]


def factory(method: str, **params) -> Callable[[], Completer]:
    """A zero-argument factory of an unfitted ``method`` (for :func:`evaluate`).

    ``factory("spackle", max_steps=500)()`` is ``SpaCKLE(max_steps=500)``. The parameters are
    checked now (one instance is built). Unknown method → ValueError listing the known ones.
    """
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"unknown completion method {method!r}; known: {', '.join(METHODS)}")
    METHODS[method](**params)  # fail early on bad parameters
    return functools.partial(METHODS[method], **params)


def complete(adata: ad.AnnData, method: str | Completer = "spackle", *,
             layer: str = "c_d_log1p", mask_key: str = "mask", key_added: str | None = None,
             seed: int = 0, **params) -> np.ndarray:
    """Fit a completion method on ``adata`` and return the layer with its missing entries filled.

    Parameters
    ----------
    adata : AnnData
        Reads what the method reads (see its class); writes ``layers[key_added]`` when given.
    method : str or Completer
        A name of :data:`METHODS`, or an unfitted completer instance.
    layer, mask_key : str
        Expression layer and observation mask (True = observed).
    key_added : str, optional
        Layer to write the completed matrix to (SpaRED calls it ``c_t_log1p``).
    seed : int
        Seed of the fit.
    **params
        Constructor arguments of the method (e.g. ``max_steps=500``).

    Returns
    -------
    np.ndarray (n_obs, n_vars): observed entries unchanged, missing entries predicted.
    """
    if isinstance(method, Completer):
        if params:
            raise TypeError("parameters are given to the constructor; pass them to the instance")
        model = method
    else:
        model = factory(method, **params)()
    model.fit(adata, layer=layer, mask_key=mask_key, seed=seed)
    return model.complete(adata, layer=layer, mask_key=mask_key, key_added=key_added)
