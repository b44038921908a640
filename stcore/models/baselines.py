"""Baselines: the training mean, and ridge regression on frozen encoder embeddings (HEST).

:class:`TrainMean` predicts each gene's mean over the training spots, for every spot.

:class:`Ridge` follows the HEST-Benchmark protocol (Jaume et al. 2024, ``mahmoodlab/HEST``):
frozen-encoder embeddings (``task.embeddings[encoder]``) → ``StandardScaler`` → PCA to 256
components (both fitted on the train rows) → ``sklearn.linear_model.Ridge``. HEST fixes
alpha = 100 / (n_features · n_genes) and fits no intercept; here alpha is chosen on the
validation rows (MSE of the ground truth on observed entries) from a grid that contains the HEST
value, and the model is refitted on the train rows with the chosen alpha. ``fit_intercept``
defaults to True: HEST's ``fit_intercept=False`` on centred PCA features predicts zero-mean
expression, harmless for Pearson but not for MSE (set it to False to reproduce HEST).
"""

from __future__ import annotations

import numpy as np

from .base import Predictor, Task, log, train_mean, validation_mse

DEFAULT_ALPHAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)


class TrainMean(Predictor):
    """Each gene's mean over the training targets (``masked_loss``: over valid entries only)."""

    name = "train_mean"

    def __init__(self, *, masked_loss: bool = False):
        self.masked_loss = bool(masked_loss)

    def _fit(self, task: Task, seed: int, progress: bool) -> None:
        self.mean_ = train_mean(task, masked=self.masked_loss)

    def _predict(self, task: Task, idx: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.mean_, (len(idx), len(self.mean_)))

    def _state(self):
        return {}, {"mean": self.mean_}

    def _restore(self, meta, arrays):
        self.mean_ = arrays["mean"].numpy()


class Ridge(Predictor):
    """HEST ridge: StandardScaler → PCA(``n_components``) → Ridge, alpha chosen on validation.

    Parameters
    ----------
    encoder : str or None
        Key of ``task.embeddings`` (None: the only one there).
    n_components : int
        PCA components (HEST: 256; capped at the number of train rows and features).
    alphas : sequence of float or None
        Candidate alphas; None = ``DEFAULT_ALPHAS`` plus HEST's 100 / (n_features · n_genes).
        Without validation rows the alpha is chosen by efficient leave-one-out on the train
        rows (scikit-learn RidgeCV).
    fit_intercept : bool
        HEST: False (see the module docstring).
    masked_loss : bool
        Fit only on valid entries: per gene, train rows whose entry is invalid are dropped
        (one ridge per gene then; the default fits all genes at once on all entries).

    Predictions are clipped per gene to the range of the training targets: patches unlike any
    training patch (out-of-distribution embeddings) otherwise get linear extrapolations far
    outside the range of expression (not in HEST).
    """

    name = "ridge"

    def __init__(self, *, encoder: str | None = None, n_components: int = 256,
                 alphas=None, fit_intercept: bool = True, masked_loss: bool = False):
        if n_components < 1:
            raise ValueError(f"n_components must be positive, got {n_components!r}")
        self.encoder, self.n_components = encoder, int(n_components)
        self.alphas = None if alphas is None else [float(a) for a in alphas]
        self.fit_intercept, self.masked_loss = bool(fit_intercept), bool(masked_loss)

    def _features(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.scale_mean_) / self.scale_std_
        return (z - self.pca_mean_) @ self.components_.T

    def _fit_ridge(self, z, y, keep, alpha):
        from sklearn.linear_model import Ridge as SkRidge

        kw = dict(alpha=alpha, fit_intercept=self.fit_intercept, solver="auto")
        if not self.masked_loss:
            m = SkRidge(**kw).fit(z, y)
            return np.atleast_2d(m.coef_), np.broadcast_to(m.intercept_, (y.shape[1],)).copy()
        coef = np.zeros((y.shape[1], z.shape[1]))
        intercept = np.zeros(y.shape[1])
        for j in range(y.shape[1]):
            rows = keep[:, j]
            if rows.sum() >= 2:
                m = SkRidge(**kw).fit(z[rows], y[rows, j])
                coef[j], intercept[j] = m.coef_, m.intercept_
            elif rows.any():
                intercept[j] = y[rows, j].mean()
        return coef, intercept

    def _fit(self, task: Task, seed: int, progress: bool) -> None:
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler

        self.encoder_, emb = task.embedding(self.encoder)
        x = emb[task.train].astype(np.float64)
        y = task.targets[task.train].astype(np.float64)
        keep = task.valid[task.train]
        scaler = StandardScaler().fit(x)
        self.scale_mean_ = scaler.mean_
        self.scale_std_ = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
        k = min(self.n_components, x.shape[0], x.shape[1])
        pca = PCA(n_components=k, random_state=seed).fit((x - self.scale_mean_) / self.scale_std_)
        self.pca_mean_, self.components_ = pca.mean_, pca.components_
        z = self._features(x)
        hest_alpha = 100.0 / (x.shape[1] * y.shape[1])
        alphas = sorted(set(self.alphas if self.alphas is not None
                            else list(DEFAULT_ALPHAS) + [hest_alpha]))
        val_idx = np.flatnonzero(task.val)
        scores = {}
        if len(val_idx) and task.valid[val_idx].any() and len(alphas) > 1:
            zv = self._features(emb[val_idx].astype(np.float64))
            for a in alphas:
                coef, icpt = self._fit_ridge(z, y, keep, a)
                scores[a] = validation_mse(zv @ coef.T + icpt, task, val_idx)
            self.alpha_ = min(scores, key=scores.get)
        elif len(alphas) > 1:  # no validation section: efficient leave-one-out on train
            from sklearn.linear_model import RidgeCV

            self.alpha_ = float(RidgeCV(alphas=alphas, fit_intercept=self.fit_intercept)
                                .fit(z, y).alpha_)
            log.info("ridge: no validation rows; alpha %.3g by leave-one-out on train", self.alpha_)
        else:
            self.alpha_ = alphas[0]
        self.alpha_scores_ = {str(a): s for a, s in scores.items()}
        self.coef_, self.intercept_ = self._fit_ridge(z, y, keep, self.alpha_)
        self.low_, self.high_ = y.min(axis=0), y.max(axis=0)
        log.info("ridge on %r: %d PCs, alpha %.3g%s", self.encoder_, k, self.alpha_,
                 f" (val MSE {scores[self.alpha_]:.4f})" if scores else "")

    def _predict(self, task: Task, idx: np.ndarray) -> np.ndarray:
        _, emb = task.embedding(self.encoder_)
        pred = self._features(emb[idx].astype(np.float64)) @ self.coef_.T + self.intercept_
        return np.clip(pred, self.low_, self.high_)

    _ARRAYS = ("scale_mean_", "scale_std_", "pca_mean_", "components_", "coef_", "intercept_",
               "low_", "high_")

    def _state(self):
        meta = {"encoder": self.encoder_, "alpha": self.alpha_, "alpha_scores": self.alpha_scores_}
        return meta, {k: np.asarray(getattr(self, k)) for k in self._ARRAYS}

    def _restore(self, meta, arrays):
        self.encoder_, self.alpha_ = meta["encoder"], meta["alpha"]
        self.alpha_scores_ = meta["alpha_scores"]
        for k in self._ARRAYS:
            setattr(self, k, arrays[k].numpy())
