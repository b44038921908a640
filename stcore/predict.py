"""From a processed dataset to a :class:`~stcore.models.Task`, one fold's run, and its scores.

>>> from stcore import preprocess as pp, predict
>>> from stcore.data import extract_patches
>>> from stcore.data.splits import folds
>>> adata = pp.preprocess("her2st")                                    # doctest: +SKIP
>>> store = extract_patches(adata, size_um=100, out_px=224)            # doctest: +SKIP
>>> fold = folds(adata, "patient_out")[0]                              # doctest: +SKIP
>>> task = predict.build_task(adata, store, fold, target="raw")        # doctest: +SKIP
>>> model, pred = predict.run_fold("train_mean", task)                 # doctest: +SKIP
>>> scores = predict.score(task, pred)                                 # doctest: +SKIP

Targets (``shared/reference/spared.md`` §4, ``predictors.md`` §0.3):

``raw``
    SpaRED's "noisy" training: ``layers['c_d_log1p']`` with its missing entries
    (``layers['mask']`` False) set to 0. Scored against ``c_d_log1p`` on the observed entries.
``completed``
    SpaRED's completed training: ``layers['c_t_log1p']`` (run
    ``stcore.completion.complete(adata, "spackle", key_added="c_t_log1p")`` first). Scored like
    ``raw``: the ground truth on observed entries is the same, so the numbers compare.
``her2st``
    The Hist2ST family's log10(1 + 1e4 · count / Σ counts over the genes of ``adata``)
    (:func:`stcore.metrics.her2st_target` of ``layers['counts']``); truth = target, every entry
    scored. For the 785-gene panel preprocess with
    ``gene_panel="genesets/her2st_785_genes.txt"``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .data.patches import PatchStore
from .data.splits import PARTS, Fold
from .metrics import (bootstrap_ci, gene_groups, group_pcc, her2st_target, masked_metrics,
                      mean_ci, pearson_per_column, r2_per_column)
from .models.base import Predictor, Task, create

log = logging.getLogger("stcore")

__all__ = ["TARGETS", "CVResult", "build_task", "cross_validate", "per_gene_table", "run_fold",
           "score", "section_scores", "summarize_sections"]

TARGETS = ("raw", "completed", "her2st")
COMPLETED_LAYER = "c_t_log1p"
CI_METRICS = ("PCC-Gene", "MSE")


# ------------------------------------------------------------------------------------------- task
def build_task(adata: ad.AnnData, store: PatchStore, fold: Fold, *, target: str = "raw",
               embeddings: dict[str, np.ndarray] | None = None, strict: bool = False) -> Task:
    """The :class:`~stcore.models.Task` of one fold: the fold's spots that have a patch, obs order.

    Parameters
    ----------
    adata : AnnData
        A processed dataset (:func:`stcore.preprocess.preprocess`). Reads ``obs['slide_id',
        'array_col', 'array_row']``, ``obsm['spatial']``, ``var_names`` and, by target, layers
        ``c_d_log1p`` + ``mask`` (raw), ``c_t_log1p`` + ``c_d_log1p`` + ``mask`` (completed),
        ``counts`` (her2st). Nothing is written.
    store : PatchStore
        Patches keyed by obs name (:func:`stcore.data.extract_patches`); may hold more spots
        than the fold (they are ignored).
    fold : Fold
        Sections of train / val / test (:func:`stcore.data.splits.folds`).
    target : {"raw", "completed", "her2st"}
        Training targets and ground truth (see the module docstring).
    embeddings : dict encoder -> array (len(store), d), optional
        Frozen-encoder features **in store order** (one row per ``store.obs_names``, as
        :func:`stcore.models.embeddings.embed` returns them); they are reordered to the task rows.
    strict : bool
        Make a fold section without any patch an error instead of a warning.

    Returns
    -------
    Task
        Rows = spots of the fold's sections that have a patch, in obs order. ``targets``,
        ``truth``, ``valid`` (raw / completed: ``mask``; her2st: all True); ``patches``
        (a memory-mapped view when the rows are contiguous in the store, else a copy);
        ``coords`` = ``obs[['array_col', 'array_row']]``; ``pixels`` = ``obsm['spatial']``;
        ``slide`` = ``obs['slide_id']``; ``obs_names``; ``train`` / ``val`` / ``test`` from the fold;
        ``genes`` = ``var_names``; ``embeddings`` aligned to the rows.

    Raises
    ------
    ValueError
        Unknown target, a missing layer or obs column, fold sections absent from ``adata``, a
        section in two parts of the fold, no train or no test spot with a patch, fold sections
        without patches when ``strict``, non-finite targets, embeddings of the wrong length.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")
    if not isinstance(fold, Fold):
        raise TypeError(f"fold must be a stcore.data.splits.Fold, got {type(fold).__name__}")
    _check_adata(adata, target)
    slide = adata.obs["slide_id"].astype(str).to_numpy()
    part_of = _fold_parts(fold, set(slide))

    in_fold = np.isin(slide, list(part_of))
    index = {str(n): i for i, n in enumerate(store.obs_names)}
    names = adata.obs_names.to_numpy().astype(str)
    has_patch = np.fromiter((n in index for n in names), bool, len(names))
    _report_missing_patches(fold, part_of, slide, in_fold, has_patch, strict)

    rows = np.flatnonzero(in_fold & has_patch)
    positions = np.array([index[n] for n in names[rows]], dtype=np.int64)
    for part in ("train", "test"):
        if not np.isin(slide[rows], getattr(fold, part)).any():
            raise ValueError(f"fold {fold.name!r}: no {part} spot has a patch (sections "
                             f"{', '.join(getattr(fold, part))}); check that the patch store was "
                             "made from this dataset")
    targets, truth, valid = _targets(adata, rows, target)
    if len(positions) and np.array_equal(positions, np.arange(positions[0],
                                                               positions[0] + len(positions))):
        patches = store.images[positions[0]:positions[0] + len(positions)]  # a view, no copy
    else:
        patches = np.asarray(store.images[positions])
    aligned = {}
    for name, emb in (embeddings or {}).items():
        emb = np.asarray(emb)
        if emb.ndim != 2 or len(emb) != len(store):
            raise ValueError(f"embeddings[{name!r}] has shape {emb.shape}; expected "
                             f"({len(store)}, d): one row per patch of the store, in store order "
                             "(as stcore.models.embeddings.embed returns them)")
        aligned[name] = emb[positions]
    split = {p: np.isin(slide[rows], getattr(fold, p)) for p in PARTS}
    task = Task(targets=targets, truth=truth, valid=valid, patches=patches,
                coords=adata.obs[["array_col", "array_row"]].to_numpy(np.float64)[rows],
                pixels=np.asarray(adata.obsm["spatial"], dtype=np.float64)[rows, :2],
                slide=slide[rows], **split, genes=list(adata.var_names), embeddings=aligned,
                obs_names=names[rows])
    log.info("task %s (%s): %d spots (train %d, val %d, test %d) × %d genes", fold.name, target,
             task.n_obs, task.train.sum(), task.val.sum(), task.test.sum(), task.n_genes)
    return task


def _check_adata(adata: ad.AnnData, target: str) -> None:
    missing = [c for c in ("slide_id", "array_col", "array_row") if c not in adata.obs]
    if missing:
        raise ValueError(f"adata.obs lacks {', '.join(missing)}")
    if "spatial" not in adata.obsm:
        raise ValueError("adata.obsm has no 'spatial' (pixel centres of the spots)")
    if not adata.obs_names.is_unique:
        raise ValueError("adata.obs_names are not unique: spots cannot be matched to patches")
    needs = {"raw": ["c_d_log1p", "mask"], "completed": [COMPLETED_LAYER, "c_d_log1p", "mask"],
             "her2st": ["counts"]}[target]
    absent = [layer for layer in needs if layer not in adata.layers]
    if target == "completed" and COMPLETED_LAYER in absent:
        raise ValueError(f"target 'completed' needs layers[{COMPLETED_LAYER!r}]; run completion "
                         f"first: stcore.completion.complete(adata, 'spackle', "
                         f"key_added={COMPLETED_LAYER!r})")
    if absent:
        raise ValueError(f"target {target!r} needs layers {', '.join(absent)}, absent from adata "
                         "(is it processed with stcore.preprocess.preprocess?)")


def _fold_parts(fold: Fold, present: set[str]) -> dict[str, str]:
    """``{section: part}``; errors for sections in two parts or absent from the data."""
    part_of: dict[str, str] = {}
    for part in PARTS:
        for s in getattr(fold, part):
            if s in part_of:
                raise ValueError(f"fold {fold.name!r}: section {s} is in both {part_of[s]} and "
                                 f"{part}")
            part_of[str(s)] = part
    absent = [s for s in part_of if s not in present]
    if absent:
        raise ValueError(f"fold {fold.name!r}: sections {', '.join(absent)} are not in adata "
                         "(a fold of another dataset or subset?)")
    return part_of


def _report_missing_patches(fold, part_of, slide, in_fold, has_patch, strict) -> None:
    counts = pd.DataFrame({"slide": slide[in_fold], "patch": has_patch[in_fold]}).groupby(
        "slide", sort=False)["patch"].agg(["size", "sum"])
    dropped = [s for s in part_of if counts.loc[s, "sum"] == 0]
    if dropped:
        message = (f"fold {fold.name!r}: {len(dropped)} sections without patches dropped: "
                   + ", ".join(f"{s} ({part_of[s]})" for s in dropped))
        if strict:
            raise ValueError(message + " (strict=True)")
        log.warning("%s", message)
    partial = [(s, int(counts.loc[s, "size"] - counts.loc[s, "sum"]), int(counts.loc[s, "size"]))
               for s in part_of if 0 < counts.loc[s, "sum"] < counts.loc[s, "size"]]
    if partial:
        log.warning("fold %r: spots without a patch dropped: %s", fold.name,
                    ", ".join(f"{s} {k} of {n}" for s, k, n in partial))


def _layer(adata: ad.AnnData, name: str, rows: np.ndarray) -> np.ndarray:
    x = adata.layers[name][rows]
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _targets(adata, rows, target) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if target == "her2st":
        targets = her2st_target(_layer(adata, "counts", rows))
        return targets, targets, np.ones(targets.shape, dtype=bool)
    truth = _layer(adata, "c_d_log1p", rows).astype(np.float64)
    valid = _layer(adata, "mask", rows)
    if valid.dtype != bool:
        if not np.isin(valid, (0, 1)).all():
            raise ValueError(f"layers['mask'] must be boolean (True = observed), got {valid.dtype}")
        valid = valid.astype(bool)
    if target == "raw":
        targets = np.where(valid, truth, 0.0)
    else:
        targets = _layer(adata, COMPLETED_LAYER, rows).astype(np.float64)
    if not np.isfinite(targets).all():
        raise ValueError(f"target {target!r} has non-finite values in the fold's rows")
    if not np.isfinite(truth[valid]).all():
        raise ValueError("layers['c_d_log1p'] has non-finite observed values in the fold's rows")
    return targets, truth, valid


# ------------------------------------------------------------------------------------------- run
def run_fold(model_name: str, task: Task, *, params: dict | None = None, seed: int = 0,
             progress: bool = True) -> tuple[Predictor, np.ndarray]:
    """Create ``model_name`` (:func:`stcore.models.create` with ``params``), fit, predict test.

    Reads ``task`` (the model reads what it needs: targets, patches, embeddings...; ``train``
    to learn, ``val`` for model selection). Returns the fitted predictor and its predictions of
    the test rows, float32 (``task.test.sum()``, ``task.n_genes``), in task order.
    """
    if not isinstance(task, Task):
        raise TypeError(f"run_fold expects a Task, got {type(task).__name__}")
    if params is not None and not isinstance(params, dict):
        raise TypeError(f"params must be a dict of model parameters, got {type(params).__name__}")
    if not task.test.any():
        raise ValueError("the task has no test rows: nothing to predict")
    model = create(model_name, **(params or {}))
    model.fit(task, seed=seed, progress=progress)
    return model, model.predict(task, task.test)


# ----------------------------------------------------------------------------------------- score
def _test_arrays(task: Task, pred) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    want = (int(task.test.sum()), task.n_genes)
    if pred.shape != want:
        raise ValueError(f"pred has shape {pred.shape}; expected {want} (the test rows of the "
                         "task, in task order, as run_fold returns them)")
    return task.truth[task.test], pred, task.valid[task.test]


def _per_gene(truth, pred, valid, genes, n) -> pd.DataFrame:
    groups = gene_groups(truth, n, valid)
    n_valid = valid.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(valid, truth, 0.0).sum(axis=0) / n_valid
    return pd.DataFrame({"gene": list(genes), "pcc": pearson_per_column(truth, pred, valid),
                         "r2": r2_per_column(truth, pred, valid), "mean_truth": mean,
                         "n_valid": n_valid.astype(int),
                         "HEG": np.isin(np.arange(len(genes)), groups["HEG"]),
                         "HVG": np.isin(np.arange(len(genes)), groups["HVG"])})


def _score(truth, pred, valid, sections, genes, *, n, n_boot, seed, level) -> dict:
    out = masked_metrics(truth, pred, valid)
    out.update(group_pcc(truth, pred, valid, n))
    for name in CI_METRICS:
        _, low, high = bootstrap_ci(name, truth, pred, valid, sections, n_boot=n_boot, seed=seed,
                                    level=level)
        out[f"{name}_low"], out[f"{name}_high"] = low, high
    out["n_test_spots"] = int(len(truth))
    out["n_test_sections"] = int(len(np.unique(sections)))
    out["per_gene"] = _per_gene(truth, pred, valid, genes, n)
    return out


def per_gene_table(task: Task, pred, *, n: int = 50) -> pd.DataFrame:
    """Per-gene scores of the test predictions on the valid entries of the test rows.

    Reads ``task.truth``, ``task.valid``, ``task.test``, ``task.genes``; ``pred`` as from
    :func:`run_fold`. Returns one row per gene (task order): ``gene``, ``pcc`` (NaN when
    undefined), ``r2``, ``mean_truth`` (mean of the valid truth), ``n_valid`` and the flags
    ``HEG`` / ``HVG`` (member of the ``n`` highest-mean / highest-variance test genes).
    """
    truth, pred, valid = _test_arrays(task, pred)
    return _per_gene(truth, pred, valid, task.genes, n)


def score(task: Task, pred, *, n: int = 50, n_boot: int = 1000, seed: int = 0,
          level: float = 0.95) -> dict:
    """Scores of the test predictions, on the valid entries of the test rows pooled.

    Reads ``task.truth``, ``task.valid``, ``task.test``, ``task.slide``, ``task.genes``;
    ``pred`` (test rows × genes, as :func:`run_fold` returns it).

    Returns
    -------
    dict
        * :func:`stcore.metrics.masked_metrics`: ``MSE``, ``MAE``, ``PCC-Gene``, ``PCC-Patch``,
          ``R2-Gene``, ``R2-Patch``, ``n_constant_genes``, ``n_constant_patches``;
        * :func:`stcore.metrics.group_pcc` with ``n``: ``PCC-ACG``, ``PCC-HEG``, ``PCC-HVG``,
          ``n_nan_ACG``, ``n_nan_HEG``, ``n_nan_HVG`` (groups chosen on the pooled test truth);
        * ``PCC-Gene_low`` / ``PCC-Gene_high``, ``MSE_low`` / ``MSE_high``:
          :func:`stcore.metrics.bootstrap_ci` over test sections (``n_boot``, ``seed``,
          ``level``); NaN with a single test section;
        * ``n_test_spots``, ``n_test_sections``;
        * ``per_gene``: the :func:`per_gene_table` (a DataFrame; the other values are scalars).
    """
    truth, pred, valid = _test_arrays(task, pred)
    return _score(truth, pred, valid, task.slide[task.test], task.genes, n=n, n_boot=n_boot,
                  seed=seed, level=level)


SECTION_METRICS = ("MSE", "MAE", "PCC-Gene", "PCC-Patch", "R2-Gene", "R2-Patch", "PCC-HEG",
                   "PCC-HVG")


def section_scores(predictions: ad.AnnData, *, n: int = 50) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scores of out-of-fold predictions (:func:`cross_validate`) section by section.

    Reads ``predictions.X`` (predicted), ``layers['truth']``, ``layers['valid']``,
    ``obs['slide_id']`` and ``obs['fold']``. Each test section is scored on its own valid
    entries, so scores of different folds never mix (pooling folds would correlate the folds'
    different training means with the truth: a constant predictor would get a PCC).

    Returns
    -------
    (sections, genes)
        ``sections``: one row per test section (``section``, ``fold``, ``n_spots``, the keys of
        :func:`stcore.metrics.masked_metrics` and :func:`stcore.metrics.group_pcc`);
        ``genes``: one row per section × gene (``section``, ``gene``, ``pcc``, ``r2``,
        ``mean_truth``, ``n_valid``, ``HEG``, ``HVG``).
    """
    for layer in ("truth", "valid"):
        if layer not in predictions.layers:
            raise ValueError(f"predictions lack layers[{layer!r}] (made by cross_validate?)")
    truth = np.asarray(predictions.layers["truth"], np.float64)
    pred = np.asarray(predictions.X, np.float64)
    valid = np.asarray(predictions.layers["valid"], bool)
    slide = predictions.obs["slide_id"].astype(str).to_numpy()
    rows, genes = [], []
    for section in pd.unique(slide):
        m = slide == section
        result = masked_metrics(truth[m], pred[m], valid[m])
        result.update(group_pcc(truth[m], pred[m], valid[m], n))
        fold = str(predictions.obs["fold"].to_numpy()[m][0])
        rows.append({"section": section, "fold": fold, "n_spots": int(m.sum()), **result})
        genes.append(_per_gene(truth[m], pred[m], valid[m], predictions.var_names, n)
                     .assign(section=section))
    return pd.DataFrame(rows), pd.concat(genes, ignore_index=True)


def summarize_sections(sections: pd.DataFrame, *, metrics=SECTION_METRICS, n_boot: int = 1000,
                       seed: int = 0, level: float = 0.95) -> dict:
    """Mean over test sections of each metric with its bootstrap interval over sections.

    ``sections`` as from :func:`section_scores`. Returns ``{metric: mean, metric_low: …,
    metric_high: …}`` (:func:`stcore.metrics.mean_ci`; NaN sections left out) plus
    ``n_sections`` and ``n_nan_<metric>`` (sections where the metric is undefined, e.g. every
    section of a constant predictor for the PCCs).
    """
    out = {"n_sections": int(len(sections))}
    for name in metrics:
        values = sections[name].to_numpy(np.float64)
        out[name], out[f"{name}_low"], out[f"{name}_high"] = mean_ci(
            values, n_boot=n_boot, seed=seed, level=level)
        out[f"n_nan_{name}"] = int(np.isnan(values).sum())
    return out


# ------------------------------------------------------------------------------ cross-validation
@dataclass
class CVResult:
    """Out-of-fold results of one model: see :func:`cross_validate`."""

    scores: pd.DataFrame
    per_gene: pd.DataFrame
    history: pd.DataFrame
    predictions: ad.AnnData


def cross_validate(model_name: str, adata: ad.AnnData, store: PatchStore, folds, *,
                   target: str = "raw", params: dict | None = None, seed: int = 0,
                   embeddings: dict[str, np.ndarray] | None = None, n_boot: int = 1000,
                   progress: bool = True) -> CVResult:
    """Fit and score ``model_name`` on every fold (:func:`build_task` → :func:`run_fold` → :func:`score`).

    Reads what :func:`build_task` reads; nothing is written to ``adata``.

    Returns
    -------
    CVResult
        ``scores``: one row per fold (``fold``, ``train`` / ``val`` / ``test`` sections joined by
        ``+``, the scalar keys of :func:`score`, ``train_seconds``, ``best_step``);
        ``per_gene``: :func:`per_gene_table` rows with a ``fold`` column; ``history``: the
        training curves with a ``fold`` column (empty for closed-form models);
        ``predictions``: AnnData of every test spot (obs of ``adata`` plus ``fold``; ``X`` the
        prediction, float32; ``layers['truth']``, ``layers['valid']``; ``obsm['spatial']``),
        ready for :func:`section_scores`.
    """
    folds = list(folds)
    if not folds:
        raise ValueError("no folds to run")
    tested = [s for fold in folds for s in fold.test]
    if len(tested) != len(set(tested)):  # checked before any training
        twice = sorted({s for s in tested if tested.count(s) > 1})
        raise ValueError(f"sections {', '.join(twice)} are tested in two folds: the folds' test "
                         "sections must not overlap")
    rows, genes, curves, parts = [], [], [], []
    for fold in folds:
        task = build_task(adata, store, fold, target=target, embeddings=embeddings)
        model, pred = run_fold(model_name, task, params=params, seed=seed, progress=progress)
        result = score(task, pred, n_boot=n_boot, seed=seed)
        rows.append({"fold": fold.name, **{p: "+".join(getattr(fold, p)) for p in PARTS},
                     **{k: v for k, v in result.items() if k != "per_gene"},
                     "train_seconds": model.train_seconds, "best_step": model.best_step})
        genes.append(result["per_gene"].assign(fold=fold.name))
        curves.append(pd.DataFrame(model.history).assign(fold=fold.name))
        test_obs = adata.obs.loc[task.obs_names[task.test]].assign(fold=fold.name)
        part = ad.AnnData(np.asarray(pred, np.float32), obs=test_obs,
                          var=pd.DataFrame(index=task.genes))
        part.layers["truth"] = task.truth[task.test].astype(np.float32)
        part.layers["valid"] = task.valid[task.test]
        part.obsm["spatial"] = task.pixels[task.test]
        parts.append(part)
    predictions = ad.concat(parts, merge="same")
    return CVResult(pd.DataFrame(rows), pd.concat(genes, ignore_index=True),
                    pd.concat(curves, ignore_index=True), predictions)
