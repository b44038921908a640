"""The interface every completion method implements: fit, predict from available entries, complete.

A :class:`Completer` learns from the ``obs['split'] == "train"`` spots (:meth:`Completer.fit`)
and predicts a full spots × genes matrix from the entries it is allowed to see
(:meth:`Completer.predict`). :meth:`Completer.complete` keeps every observed entry and replaces
only the missing ones. Subclasses implement ``_fit`` and ``_predict``; the base class validates
the inputs and zeroes every unavailable entry before a subclass sees the values, so a method
cannot read them.
"""

from __future__ import annotations

import inspect
import logging

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

log = logging.getLogger("stcore.completion")

SPLIT_KEY = "split"


def layer_values(adata: ad.AnnData, layer: str) -> np.ndarray:
    """``adata.layers[layer]`` as a dense float64 array (KeyError naming the existing layers)."""
    if layer not in adata.layers:
        existing = ", ".join(map(repr, adata.layers)) or "none"
        raise KeyError(f"layer {layer!r} not in adata.layers (existing: {existing})")
    x = adata.layers[layer]
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)


def check_mask(mask, shape: tuple[int, int], name: str = "mask") -> np.ndarray:
    """A boolean matrix of ``shape`` as a dense array (TypeError / ValueError otherwise)."""
    mask = np.asarray(mask.toarray() if sp.issparse(mask) else mask)
    if mask.dtype != bool:
        raise TypeError(f"{name} must be boolean (True = observed/available), "
                        f"got dtype {mask.dtype}")
    if mask.shape != tuple(shape):
        raise ValueError(f"{name} has shape {mask.shape}, the layer has {tuple(shape)}")
    return mask


def mask_values(adata: ad.AnnData, mask_key: str, shape: tuple[int, int]) -> np.ndarray:
    """``adata.layers[mask_key]`` checked by :func:`check_mask`."""
    if mask_key not in adata.layers:
        existing = ", ".join(map(repr, adata.layers)) or "none"
        raise KeyError(f"mask layer {mask_key!r} not in adata.layers (existing: {existing})")
    return check_mask(adata.layers[mask_key], shape, name=f"layers[{mask_key!r}]")


def split_rows(adata: ad.AnnData) -> tuple[np.ndarray, np.ndarray]:
    """Boolean vectors of the ``obs['split']`` "train" and "val" spots (train must exist)."""
    if SPLIT_KEY not in adata.obs:
        raise KeyError(f"obs[{SPLIT_KEY!r}] is missing: completers fit on the 'train' spots")
    split = adata.obs[SPLIT_KEY].astype(str).to_numpy()
    train, val = split == "train", split == "val"
    if not train.any():
        raise ValueError(f"no spot has obs[{SPLIT_KEY!r}] == 'train' "
                         f"(values: {sorted(set(split))})")
    return train, val


def slide_ids(adata: ad.AnnData) -> np.ndarray:
    """``obs['slide_id']`` as strings (KeyError when missing)."""
    if "slide_id" not in adata.obs:
        raise KeyError("obs['slide_id'] is missing: completers work slide by slide")
    return adata.obs["slide_id"].astype(str).to_numpy()


def carve_validation(adata: ad.AnnData, train: np.ndarray, val: np.ndarray, *,
                     seed: int = 0, fraction: float = 0.15) -> tuple[np.ndarray, np.ndarray, str]:
    """Validation spots for early stopping, carved from train when there are no "val" spots.

    With "val" spots they are returned unchanged. Otherwise the last train slide (in obs order)
    becomes validation when there are at least two train slides, else a random ``fraction`` of
    the train spots (``numpy.random.default_rng(seed)``). Returns ``(train, val, note)``; the note
    says what was done and is logged.
    """
    if val.any():
        note = f"validation: {int(val.sum())} 'val' spots"
    else:
        slides = slide_ids(adata)
        train_slides = pd.unique(slides[train])
        train = train.copy()
        if len(train_slides) >= 2:
            val = train & (slides == train_slides[-1])
            note = (f"no 'val' spots: train slide {train_slides[-1]!r} ({int(val.sum())} spots) "
                    "used for validation")
        else:
            idx = np.flatnonzero(train)
            n_val = int(round(fraction * len(idx)))
            chosen = np.random.default_rng(seed).choice(idx, size=n_val, replace=False)
            val = np.zeros_like(train)
            val[chosen] = True
            note = (f"no 'val' spots and one train slide: {n_val} random train spots "
                    f"({fraction:.0%}) used for validation")
        train &= ~val
    log.info(note)
    return train, val, note


class Completer:
    """Base class of the completion methods.

    Attributes set by :meth:`fit`: ``layer_`` (the layer fitted on), ``var_names_`` (genes),
    ``seed_``, ``is_fitted_``.
    """

    name = "completer"

    # --------------------------------------------------------------------------------- public
    def get_params(self) -> dict:
        """The constructor arguments (for provenance and :meth:`save`)."""
        sig = inspect.signature(type(self).__init__)
        return {k: getattr(self, k) for k in sig.parameters if k != "self" and hasattr(self, k)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def fit(self, adata: ad.AnnData, *, layer: str = "c_d_log1p", mask_key: str = "mask",
            seed: int = 0) -> "Completer":
        """Learn from the ``obs['split'] == "train"`` spots ("val" spots only for early stopping).

        Parameters
        ----------
        adata : AnnData
            Reads ``layers[layer]``, ``layers[mask_key]`` (bool, True = observed),
            ``obs['split']``, ``obs['slide_id']`` and what the method needs (see the subclass).
            Writes nothing.
        layer, mask_key : str
            The expression layer and the observation mask.
        seed : int
            Seed of everything random in the fit.

        Returns
        -------
        self
        """
        values = layer_values(adata, layer)
        observed = mask_values(adata, mask_key, values.shape)
        train, val = split_rows(adata)
        self._fit(adata, values, observed, train, val, seed)
        self.layer_, self.var_names_, self.seed_ = layer, list(map(str, adata.var_names)), seed
        self.is_fitted_ = True
        return self

    def predict(self, adata: ad.AnnData, *, layer: str = "c_d_log1p",
                available: np.ndarray) -> np.ndarray:
        """A full n_obs × n_vars prediction that uses only the ``available`` entries.

        Parameters
        ----------
        adata : AnnData
            Reads ``layers[layer]`` (only where ``available``), ``obs`` / ``obsm`` keys the method
            needs. Writes nothing.
        layer : str
            The expression layer.
        available : bool array (n_obs, n_vars)
            True for the entries the method may read; the others are set to 0 before the method
            sees the values, so their content never matters.

        Returns
        -------
        np.ndarray (n_obs, n_vars), float64
        """
        self._check_fitted(adata)
        values = layer_values(adata, layer)
        available = check_mask(available, values.shape, name="available")
        visible = np.where(available, values, 0.0)
        pred = np.asarray(self._predict(adata, visible, available), dtype=np.float64)
        if pred.shape != values.shape:  # a bug in a subclass, not a user error
            raise RuntimeError(f"{type(self).__name__} predicted shape {pred.shape}, "
                               f"expected {values.shape}")
        return pred

    def complete(self, adata: ad.AnnData, *, layer: str = "c_d_log1p", mask_key: str = "mask",
                 key_added: str | None = None) -> np.ndarray:
        """The layer with only its missing (mask False) entries replaced by the prediction.

        Calls :meth:`predict` with ``available = layers[mask_key]``.

        Parameters
        ----------
        adata : AnnData
            Reads ``layers[layer]``, ``layers[mask_key]`` and what :meth:`predict` reads.
            Writes ``layers[key_added]`` when ``key_added`` is given, nothing otherwise.
        layer, mask_key : str
            Expression layer and observation mask (bool, True = observed).
        key_added : str, optional
            Layer to store the result in (SpaRED's name: ``c_t_log1p``).

        Returns
        -------
        np.ndarray (n_obs, n_vars), float64
            Observed entries exactly as in the layer, missing entries predicted.
        """
        values = layer_values(adata, layer)
        observed = mask_values(adata, mask_key, values.shape)
        pred = self.predict(adata, layer=layer, available=observed)
        out = np.where(observed, values, pred)
        if key_added is not None:
            adata.layers[key_added] = out
        n_missing = int((~observed).sum())
        log.info("%s completed %d missing entries (%.1f%%) of layer %r", type(self).__name__,
                 n_missing, 100 * n_missing / max(observed.size, 1), layer)
        return out

    # ---------------------------------------------------------------------------- subclasses
    def _fit(self, adata, values: np.ndarray, observed: np.ndarray, train: np.ndarray,
             val: np.ndarray, seed: int) -> None:
        raise NotImplementedError

    def _predict(self, adata, visible: np.ndarray, available: np.ndarray) -> np.ndarray:
        """``visible`` = the layer with unavailable entries set to 0."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------- helpers
    def _check_fitted(self, adata: ad.AnnData) -> None:
        if not getattr(self, "is_fitted_", False):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(adata) first")
        genes = list(map(str, adata.var_names))
        if genes != self.var_names_:
            raise ValueError(f"{type(self).__name__} was fitted on {len(self.var_names_)} genes; "
                             f"this AnnData has {len(genes)} genes"
                             + (" in another order or with other names"
                                if len(genes) == len(self.var_names_) else ""))


def masked_mean(x: np.ndarray, keep: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``x`` over the ``keep`` entries along ``axis`` and the counts (mean NaN where 0)."""
    n = keep.sum(axis=axis)
    total = np.where(keep, x, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / n, np.nan), n


def masked_median(x: np.ndarray, keep: np.ndarray, axis: int = 0) -> np.ndarray:
    """Median of ``x`` over the ``keep`` entries along ``axis`` (NaN where there are none)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        return np.nanmedian(np.where(keep, x, np.nan), axis=axis)


def spatial_coords(adata: ad.AnnData) -> np.ndarray:
    """``obsm['spatial']`` (pixel x, y) as float64 (KeyError when missing)."""
    if "spatial" not in adata.obsm:
        raise KeyError("obsm['spatial'] is missing: spatial completers need spot coordinates")
    return np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2]


def nearest_spots(coords: np.ndarray, k: int) -> np.ndarray:
    """Indices (rows of ``coords``) of each spot's ``k`` nearest other spots, nearest first.

    Uses :class:`scipy.spatial.cKDTree`; the spot itself is excluded (also when another spot has
    the same coordinates: then the farthest of the k + 1 is dropped). With fewer than k + 1 spots
    the result has ``len(coords) - 1`` columns.
    """
    from scipy.spatial import cKDTree

    m = len(coords)
    kq = min(k + 1, m)
    if kq <= 1:
        return np.empty((m, 0), dtype=np.int64)
    _, idx = cKDTree(coords).query(coords, k=kq)
    idx = np.asarray(idx, dtype=np.int64).reshape(m, kq)
    is_self = idx == np.arange(m)[:, None]
    is_self[~is_self.any(axis=1), -1] = True  # self not among them: drop the farthest
    order = np.argsort(is_self, axis=1, kind="stable")  # self (True) moves to the end
    return np.take_along_axis(idx, order, axis=1)[:, :kq - 1]
