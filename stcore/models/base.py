"""The interface of the expression predictors: a :class:`Task`, :class:`Predictor`, the registry.

A :class:`Task` is one dataset × target × fold in obs order: training targets, ground truth and
its mask, patches, coordinates, sections and the train / val / test rows. A :class:`Predictor`
is fitted on a task (``fit(task, seed=...)``: the ``train`` rows for learning, the ``val`` rows
for model selection) and predicts any rows (``predict(task, rows)``); it saves to and loads from
a folder (``predictor.json`` + ``state.pt``).

Losses are computed on all entries of ``task.targets`` (SpaRED's default: for "raw" targets the
missing entries are 0 and are fitted as 0) unless ``masked_loss=True`` (only ``task.valid``
entries). Model selection (early stopping, ridge alpha) always scores the **ground truth on its
observed entries** of the validation rows (``truth[val][valid[val]]``, MSE), the quantity that is
reported, whatever the training targets are.

``MODELS`` maps a name to its class (modules are imported on first use) and
:func:`create` builds one by name with a clear error for unknown names or parameters.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._io import atomic_file

log = logging.getLogger("stcore.models")

FORMAT = 1
SPLITS = ("train", "val", "test")


# ------------------------------------------------------------------------------------------ task
@dataclass
class Task:
    """One dataset × target × fold, every array in obs order (n spots, G genes).

    Attributes
    ----------
    targets : (n, G) float32
        Training targets (raw: ``c_d_log1p`` with missing entries set to 0; completed:
        ``c_t_log1p``).
    truth : (n, G) float32
        Ground truth for scoring.
    valid : (n, G) bool
        Entries that are scored (observed).
    patches : (n, H, W, 3) uint8
        H&E patches centred on the spots (may be a memmap; read by row).
    coords : (n, 2) float
        Array coordinates (col, row) of the spots.
    pixels : (n, 2) float
        Pixel centres of the spots.
    slide : (n,) str
        Section id.
    train, val, test : (n,) bool
        The rows of each split.
    genes : list of str
    embeddings : dict str -> (n, d) float
        Frozen encoder features, keyed by encoder name.
    obs_names : (n,) str, optional
        The spots' ``adata.obs_names`` (set by :func:`stcore.predict.build_task`).
    """

    targets: np.ndarray
    truth: np.ndarray
    valid: np.ndarray
    patches: np.ndarray
    coords: np.ndarray
    pixels: np.ndarray
    slide: np.ndarray
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    genes: list[str]
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    obs_names: np.ndarray | None = None

    def __post_init__(self):
        self.targets = np.asarray(self.targets, dtype=np.float32)
        self.truth = np.asarray(self.truth, dtype=np.float32)
        self.valid = np.asarray(self.valid)
        if self.targets.ndim != 2:
            raise ValueError(f"Task.targets must be 2-d (spots × genes), got shape "
                             f"{self.targets.shape}")
        n, g = self.targets.shape
        self.genes = [str(x) for x in self.genes]
        if len(self.genes) != g:
            raise ValueError(f"Task has {g} target columns but {len(self.genes)} genes")
        if self.truth.shape != (n, g):
            raise ValueError(f"Task.truth has shape {self.truth.shape}, targets {(n, g)}")
        if self.valid.dtype != bool or self.valid.shape != (n, g):
            raise ValueError(f"Task.valid must be a bool array of shape {(n, g)}, got "
                             f"{self.valid.dtype} {self.valid.shape}")
        if self.patches is not None and (self.patches.ndim != 4 or len(self.patches) != n
                                         or self.patches.shape[-1] != 3):
            raise ValueError(f"Task.patches must be (n={n}, H, W, 3), got {self.patches.shape}")
        if self.patches is not None and self.patches.dtype != np.uint8:
            raise ValueError(f"Task.patches must be uint8, got {self.patches.dtype}")
        for name in ("coords", "pixels"):
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            if arr.shape != (n, 2):
                raise ValueError(f"Task.{name} must have shape {(n, 2)}, got {arr.shape}")
            setattr(self, name, arr)
        self.slide = np.asarray(self.slide).astype(str)
        if self.slide.shape != (n,):
            raise ValueError(f"Task.slide must have shape {(n,)}, got {self.slide.shape}")
        for name in SPLITS:
            arr = np.asarray(getattr(self, name))
            if arr.dtype != bool or arr.shape != (n,):
                raise ValueError(f"Task.{name} must be a bool array of shape {(n,)}, got "
                                 f"{arr.dtype} {arr.shape}")
            setattr(self, name, arr)
        for key, emb in list(self.embeddings.items()):
            emb = np.asarray(emb, dtype=np.float32)
            if emb.ndim != 2 or len(emb) != n:
                raise ValueError(f"Task.embeddings[{key!r}] must be (n={n}, d), got {emb.shape}")
            self.embeddings[key] = emb

    @property
    def n_obs(self) -> int:
        return self.targets.shape[0]

    @property
    def n_genes(self) -> int:
        return self.targets.shape[1]

    def embedding(self, encoder: str | None) -> tuple[str, np.ndarray]:
        """``(name, task.embeddings[name])``; ``None`` picks the only one (KeyError otherwise)."""
        if encoder is None:
            if len(self.embeddings) != 1:
                raise KeyError("encoder=None needs exactly one entry in task.embeddings, found "
                               f"{sorted(self.embeddings) or 'none'}: name the encoder")
            encoder = next(iter(self.embeddings))
        if encoder not in self.embeddings:
            raise KeyError(f"task.embeddings has no {encoder!r} (available: "
                           f"{sorted(self.embeddings) or 'none'}); compute the frozen-encoder "
                           "embeddings first")
        return encoder, self.embeddings[encoder]


def as_indices(rows, n: int) -> np.ndarray:
    """Row indices from a bool mask of length ``n`` or an integer index array."""
    rows = np.asarray(rows)
    if rows.dtype == bool:
        if rows.shape != (n,):
            raise ValueError(f"rows mask has shape {rows.shape}, the task has {n} spots")
        return np.flatnonzero(rows)
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
        raise TypeError(f"rows must be a bool mask of length {n} or integer indices, got "
                        f"{rows.dtype} {rows.shape}")
    if len(rows) and (rows.min() < 0 or rows.max() >= n):
        raise IndexError(f"row indices must be in [0, {n}), got [{rows.min()}, {rows.max()}]")
    return rows.astype(np.int64)


def validation_mse(pred: np.ndarray, task: Task, idx: np.ndarray) -> float:
    """MSE of ``pred`` (rows ``idx``) against ``task.truth`` on the valid entries (NaN if none)."""
    valid = task.valid[idx]
    if not valid.any():
        return float("nan")
    diff = np.asarray(pred, dtype=np.float64) - task.truth[idx]
    return float(np.mean(diff[valid] ** 2))


def train_mean(task: Task, masked: bool = False) -> np.ndarray:
    """Per-gene mean of the training targets (over valid entries only when ``masked``)."""
    t = task.targets[task.train].astype(np.float64)
    if not masked:
        return t.mean(axis=0).astype(np.float32)
    keep = task.valid[task.train]
    n = keep.sum(axis=0)
    total = np.where(keep, t, 0.0).sum(axis=0)
    overall = t[keep].mean() if keep.any() else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), overall).astype(np.float32)


# ------------------------------------------------------------------------------------ predictor
class Predictor:
    """Base class: ``fit`` / ``predict`` / ``save`` / ``load``.

    Subclasses define keyword-only constructor parameters (stored as attributes of the same
    name), and implement ``_fit(task, seed, progress)``, ``_predict(task, idx)`` (an array of
    shape (len(idx), G)), ``_state() -> (meta: dict, arrays: dict)`` and
    ``_restore(meta, arrays)`` (arrays: name -> torch tensor or numpy array).

    Fitted attributes: ``genes_``, ``seed_``, ``history`` (list of dicts ``step``,
    ``train_loss``, ``val_loss``; empty for closed-form models), ``best_step``,
    ``train_seconds``.
    """

    name = "predictor"

    # --------------------------------------------------------------------------------- public
    def get_params(self) -> dict:
        """The constructor arguments (for provenance and :meth:`save`)."""
        return {k: getattr(self, k) for k in param_names(type(self)) if hasattr(self, k)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def fit(self, task: Task, *, seed: int = 0, progress: bool = True) -> "Predictor":
        """Learn from ``task.train`` (``task.val`` for model selection); returns self."""
        if not isinstance(task, Task):
            raise TypeError(f"fit expects a Task, got {type(task).__name__}")
        if not task.train.any():
            raise ValueError(f"{type(self).__name__}: the task has no train rows")
        self.history, self.best_step, self.train_seconds = [], None, 0.0
        self._task_cache = None  # graphs / exemplars of a previous fit are stale
        self._fit(task, int(seed), progress)
        self.genes_, self.seed_, self.is_fitted_ = list(task.genes), int(seed), True
        return self

    def predict(self, task: Task, rows) -> np.ndarray:
        """Predictions of ``rows`` (bool mask or indices): float32 (number of rows, G)."""
        self._check_fitted(task)
        idx = as_indices(rows, task.n_obs)
        if len(idx) == 0:
            return np.empty((0, task.n_genes), dtype=np.float32)
        pred = np.asarray(self._predict(task, idx), dtype=np.float32)
        if pred.shape != (len(idx), task.n_genes):  # a bug in a subclass, not a user error
            raise RuntimeError(f"{type(self).__name__} predicted shape {pred.shape}, expected "
                               f"{(len(idx), task.n_genes)}")
        return pred

    def save(self, path) -> Path:
        """Write ``path/predictor.json`` (name, parameters, genes, history...) and ``state.pt``."""
        import torch

        if not getattr(self, "is_fitted_", False):
            raise RuntimeError(f"{type(self).__name__} is not fitted: nothing to save")
        path = Path(path)
        meta, arrays = self._state()
        tensors = {k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray)
                       else v.detach().cpu().contiguous()) for k, v in arrays.items()}
        with atomic_file(path / "state.pt", "wb") as fh:
            torch.save(tensors, fh)
        config = {"format": FORMAT, "name": self.name, "class": type(self).__name__,
                  "params": _jsonable(self.get_params()), "genes": self.genes_,
                  "seed": self.seed_, "history": self.history, "best_step": self.best_step,
                  "train_seconds": self.train_seconds, "meta": meta,
                  "torch": torch.__version__}
        with atomic_file(path / "predictor.json") as fh:
            json.dump(config, fh, indent=2)
        return path

    @classmethod
    def load(cls, path, *, device: str | None = None) -> "Predictor":
        """A fitted predictor from a folder written by :meth:`save` (``device`` overrides)."""
        import torch

        path = Path(path)
        config_path = path / "predictor.json"
        if not config_path.exists():
            raise FileNotFoundError(f"{config_path}: no saved predictor here")
        config = json.loads(config_path.read_text())
        if config.get("format") != FORMAT:
            raise ValueError(f"{config_path}: format {config.get('format')!r}, expected {FORMAT}")
        klass = MODELS[config["name"]]
        if not issubclass(klass, cls):
            raise TypeError(f"{config_path} holds a {klass.__name__}, not a {cls.__name__}")
        params = dict(config["params"])
        if device is not None and "device" in params:
            params["device"] = device
        obj = klass(**params)
        arrays = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        obj._restore(config["meta"], arrays)
        obj.genes_, obj.seed_ = list(config["genes"]), config["seed"]
        obj.history, obj.best_step = config["history"], config["best_step"]
        obj.train_seconds, obj.is_fitted_ = config["train_seconds"], True
        return obj

    # ---------------------------------------------------------------------------- subclasses
    def _fit(self, task: Task, seed: int, progress: bool) -> None:
        raise NotImplementedError

    def _predict(self, task: Task, idx: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _state(self) -> tuple[dict, dict]:
        raise NotImplementedError

    def _restore(self, meta: dict, arrays: dict) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------------------- helpers
    def _cached(self, task: Task, key: str, compute):
        """``compute()`` once per (task, key): graphs, positions, neighbours of a task."""
        cache = getattr(self, "_task_cache", None)
        if cache is None or cache["task"]() is not task:
            cache = self._task_cache = {"task": weakref.ref(task)}
        if key not in cache:
            cache[key] = compute()
        return cache[key]

    def _check_fitted(self, task: Task) -> None:
        if not getattr(self, "is_fitted_", False):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(task) first")
        if list(task.genes) != self.genes_:
            raise ValueError(f"{type(self).__name__} was fitted on {len(self.genes_)} genes; "
                             f"this task has {task.n_genes} genes"
                             + (" in another order or with other names"
                                if task.n_genes == len(self.genes_) else ""))


def param_names(cls) -> list[str]:
    """Constructor parameter names of ``cls``, following ``**params`` up the class hierarchy."""
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.name not in names
                  and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


class NeuralPredictor(Predictor):
    """A predictor trained with :class:`stcore.train.Trainer`; holds the shared training knobs.

    Parameters shared by all neural predictors (keyword-only):
    ``lr``, ``weight_decay``, ``optimizer`` ("adam" / "adamw" / "sgd"), ``batch_size``,
    ``max_steps``, ``val_every``, ``patience`` (validations without improvement before stopping;
    None: never), ``masked_loss`` (loss only on ``task.valid`` entries), ``device`` (None: CUDA
    when available), ``amp`` (autocast dtype on CUDA), ``checkpoint_dir`` /
    ``checkpoint_every`` (resumable training, see :mod:`stcore.train`), ``eval_batch_size``.

    Subclasses build ``self.net_`` in ``_fit`` inside :func:`stcore.train.seeded` and call
    :meth:`_train`; validation scores :func:`validation_mse` of ``_predict`` on the val rows.
    """

    _TRAIN_KEYS = ("lr", "weight_decay", "optimizer", "batch_size", "max_steps", "val_every",
                   "patience", "device", "amp", "checkpoint_every")

    def _init_training(self, *, lr, weight_decay, optimizer, batch_size, max_steps, val_every,
                       patience, masked_loss, device, amp, checkpoint_dir, checkpoint_every,
                       eval_batch_size):
        self.lr, self.weight_decay, self.optimizer = lr, weight_decay, optimizer
        self.batch_size, self.max_steps, self.val_every = batch_size, max_steps, val_every
        self.patience, self.masked_loss, self.device, self.amp = patience, masked_loss, device, amp
        self.checkpoint_dir = None if checkpoint_dir is None else str(checkpoint_dir)
        self.checkpoint_every, self.eval_batch_size = checkpoint_every, eval_batch_size
        from ..train import OPTIMIZERS

        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        for name in ("batch_size", "max_steps", "val_every", "eval_batch_size", "patience",
                     "checkpoint_every"):
            value = getattr(self, name)
            if value is None and name in ("patience", "checkpoint_every"):
                continue
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
            setattr(self, name, int(value))

    def _device(self):
        from ..train import resolve_device

        return resolve_device(self.device)

    def _train(self, task: Task, loss_fn, n_items: int, *, seed: int, progress: bool,
               batch_size: int | None = None, desc: str | None = None, subdir: str = "",
               val: bool = True):
        """Train ``self.net_`` with the harness; validation = ``validation_mse`` on ``task.val``."""
        from ..train import Trainer

        val_idx = np.flatnonzero(task.val)
        has_val = val and len(val_idx) > 0 and task.valid[val_idx].any()
        if not has_val:
            log.warning("%s: no validation entries; the last state is kept", self.name)

        def val_fn(net):
            return validation_mse(self._predict(task, val_idx), task, val_idx)

        params = {k: getattr(self, k) for k in self._TRAIN_KEYS}
        if batch_size is not None:
            params["batch_size"] = batch_size
        ckpt = None if self.checkpoint_dir is None else str(Path(self.checkpoint_dir) / subdir)
        trainer = Trainer(**params, seed=seed, checkpoint_dir=ckpt, progress=progress,
                          desc=desc or self.name)
        trainer.fit(self.net_, loss_fn, int(n_items), val_fn=val_fn if has_val else None)
        self.history = self.history + [dict(h, stage=subdir) if subdir else h
                                       for h in trainer.history]
        self.best_step = trainer.best_step
        self.train_seconds += trainer.train_seconds
        return trainer

    def _loss(self, pred, task: Task, idx, target=None):
        """MSE on all target entries, or on the valid ones with ``masked_loss``."""
        import torch

        dev = pred.device
        y = torch.as_tensor(task.targets[idx] if target is None else target, device=dev)
        if not self.masked_loss:
            return torch.nn.functional.mse_loss(pred.float(), y)
        m = torch.as_tensor(task.valid[idx], device=dev)
        sq = (pred.float() - y) ** 2
        return (sq * m).sum() / m.sum().clamp(min=1)

    def _net_state(self) -> dict:
        return {f"net.{k}": v for k, v in self.net_.state_dict().items()}

    def _load_net(self, arrays: dict) -> None:
        state = {k[4:]: v for k, v in arrays.items() if k.startswith("net.")}
        self.net_.load_state_dict(state)
        self.net_.to(self._device()).eval()


# ------------------------------------------------------------------------------------- registry
class UnknownModelError(KeyError):
    """A model name that is not in :data:`MODELS`."""

    def __str__(self) -> str:
        return str(self.args[0])


_REGISTRY = {
    "train_mean": ("baselines", "TrainMean"),
    "ridge": ("baselines", "Ridge"),
    "stnet": ("stnet", "STNet"),
    "shufflenet": ("cnn", "ShuffleNet"),
    "vit": ("vit", "ViTRegressor"),
    "histogene": ("histogene", "HisToGene"),
    "hist2st": ("hist2st", "Hist2ST"),
    "bleep": ("bleep", "BLEEP"),
    "egn": ("egn", "EGN"),
    "sepal": ("sepal", "SEPAL"),
}


class _Models(Mapping):
    """Model name -> class; each module is imported on first access."""

    def __getitem__(self, name: str):
        if name not in _REGISTRY:
            raise UnknownModelError(f"unknown model {name!r}; known models: "
                                    f"{', '.join(_REGISTRY)}")
        module, cls = _REGISTRY[name]
        return getattr(importlib.import_module(f"{__package__}.{module}"), cls)

    def __iter__(self):
        return iter(_REGISTRY)

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __repr__(self) -> str:
        return f"MODELS({', '.join(_REGISTRY)})"


MODELS = _Models()


def create(name: str, **params) -> Predictor:
    """The predictor ``name`` built with ``params`` (UnknownModelError / TypeError otherwise)."""
    cls = MODELS[name]
    allowed = param_names(cls)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise TypeError(f"model {name!r} ({cls.__name__}) has no parameter(s) "
                        f"{', '.join(map(repr, unknown))}; its parameters: {', '.join(allowed)}")
    return cls(**params)
