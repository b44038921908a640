"""One training harness for every neural predictor: seeded, deterministic on CPU, resumable.

:class:`Trainer` runs step-based mini-batch training of any ``torch.nn.Module``. The model code
supplies two functions:

* ``loss_fn(module, idx, generator) -> scalar tensor``: the training loss of the items ``idx``
  (a CPU ``LongTensor`` of item indices, e.g. spots or sections); ``generator`` is the run's
  ``torch.Generator``, to be used for every random draw of the step (augmentation), so that a
  resumed run draws the same numbers.
* ``val_fn(module) -> float`` (optional): the validation loss, called every ``val_every`` steps
  (and after the last step) with the module in eval mode and gradients off.

Items are drawn in epochs of random permutations of ``range(n_items)`` (a permutation's tail
shorter than the batch is skipped when ``n_items >= batch_size``, so there is never a batch of
one for batch norm). The state with the lowest validation loss is kept and loaded back at the
end; ``patience`` validations without improvement stop training early. Without a validation
function (or when it returns NaN) the last state is kept.

Reproducibility: :meth:`Trainer.fit` seeds torch's global RNG with ``seed`` (forked, so the
caller's RNG state is restored afterwards), draws the batches from a ``torch.Generator`` seeded
with ``seed`` and turns on ``torch.use_deterministic_algorithms`` during the fit (restored after).
The same seed and inputs give bitwise identical weights on CPU for a given number of torch
threads (``torch.get_num_threads()``: reductions are split differently across threads). Build
the module inside :func:`seeded` so that its initialisation is seeded too. On a shared machine
with few cores, ``torch.set_num_threads(1)`` avoids spinning OpenMP threads (10–100× slower).

Checkpoints: with ``checkpoint_dir``, ``last.pt`` is written atomically every
``checkpoint_every`` steps and at the end (module, optimizer, grad scaler, step, batch order,
every RNG state, best state, history, early-stopping counters). A new fit with the same
``checkpoint_dir`` resumes from it (``torch.load(weights_only=True)``: RNG states are stored as
tensors) and ends with the same weights as an uninterrupted run. A finished run is not trained
again; a larger ``max_steps`` continues it (the same as one longer run when the old
``max_steps`` is a multiple of ``val_every``, since the last step is always validated). A
checkpoint whose settings (seed, batch size, optimizer, lr, ...) differ is refused.

Mixed precision (``amp="bf16"`` or ``"fp16"``) is used only on CUDA; CPU runs are float32.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger("stcore.train")

CHECKPOINT_FORMAT = 1
OPTIMIZERS = ("adam", "adamw", "sgd")
AMP_DTYPES = ("bf16", "fp16")
# parameters a checkpoint must agree on to be resumed (max_steps may grow, patience may change)
_RESUME_KEYS = ("seed", "batch_size", "lr", "weight_decay", "optimizer", "momentum", "n_items",
                "val_every", "grad_clip")


def resolve_device(device=None):
    """``torch.device``: ``device`` when given, else CUDA when available, else CPU."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextlib.contextmanager
def seeded(seed: int, device=None):
    """Run the block with torch's global RNG seeded by ``seed``; the previous state is restored."""
    import torch

    dev = resolve_device(device)
    devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


@contextlib.contextmanager
def deterministic(device=None):
    """Deterministic algorithms on for the block (warn-only on CUDA); the setting is restored."""
    import torch

    dev = resolve_device(device)
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    # cuBLAS needs CUBLAS_WORKSPACE_CONFIG to be deterministic: only warn there
    torch.use_deterministic_algorithms(True, warn_only=dev.type != "cpu")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


def _cpu_state(module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _atomic_torch_save(obj, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Trainer:
    """Step-based training with validation, early stopping, checkpoints and seeded RNGs.

    Parameters
    ----------
    max_steps : int
        Optimisation steps (one mini-batch each).
    batch_size : int
        Items per step.
    lr, weight_decay : float
        Learning rate and weight decay of the optimizer.
    optimizer : {"adam", "adamw", "sgd"}
        ``torch.optim.Adam`` / ``AdamW`` / ``SGD`` (with ``momentum``).
    momentum : float
        SGD momentum (ignored by Adam/AdamW).
    val_every : int
        Steps between validations (the last step is always validated).
    patience : int or None
        Stop after this many validations without improvement (None: never stop early).
    seed : int
        Seeds the global torch RNG during the fit and the batch generator.
    device : str or None
        None: CUDA when available, else CPU.
    amp : {"bf16", "fp16"} or None
        Autocast dtype on CUDA (fp16 with a gradient scaler); ignored on CPU.
    grad_clip : float or None
        Clip the gradient norm to this value.
    checkpoint_dir : path or None
        Folder of ``last.pt``; a fit resumes from it when it exists.
    checkpoint_every : int or None
        Steps between checkpoints (default: ``val_every``).
    progress : bool
        tqdm progress bar.
    desc : str
        Label of the progress bar and log lines.

    Attributes after :meth:`fit`
    ----------------------------
    history : list of dict
        One entry per validation: ``step``, ``train_loss`` (mean since the previous entry),
        ``val_loss`` (NaN without validation).
    best_step, best_val : int, float
        Step and validation loss of the state loaded at the end.
    steps_done : int
        Last step trained.
    stopped_early : bool
    resumed_from : int or None
        The checkpoint step the fit resumed from.
    train_seconds : float
        Wall time of training, summed over resumed segments.
    """

    def __init__(self, *, max_steps: int = 1000, batch_size: int = 32, lr: float = 1e-3,
                 weight_decay: float = 0.0, optimizer: str = "adam", momentum: float = 0.9,
                 val_every: int = 10, patience: int | None = None, seed: int = 0,
                 device: str | None = None, amp: str | None = "bf16",
                 grad_clip: float | None = None, checkpoint_dir: str | Path | None = None,
                 checkpoint_every: int | None = None, progress: bool = True,
                 desc: str = "train"):
        for name, value in (("max_steps", max_steps), ("batch_size", batch_size),
                            ("val_every", val_every)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if patience is not None and (not isinstance(patience, int) or patience < 1):
            raise ValueError(f"patience must be a positive int or None, got {patience!r}")
        if checkpoint_every is not None and (not isinstance(checkpoint_every, int)
                                             or checkpoint_every < 1):
            raise ValueError(f"checkpoint_every must be a positive int or None, "
                             f"got {checkpoint_every!r}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if amp is not None and amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {AMP_DTYPES} or None, got {amp!r}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        self.max_steps, self.batch_size, self.lr = max_steps, batch_size, float(lr)
        self.weight_decay, self.optimizer, self.momentum = float(weight_decay), optimizer, momentum
        self.val_every, self.patience, self.seed = val_every, patience, int(seed)
        self.device, self.amp, self.grad_clip = device, amp, grad_clip
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.checkpoint_every = checkpoint_every or val_every
        self.progress, self.desc = progress, desc
        self.history: list[dict] = []
        self.best_step: int | None = None
        self.best_val = math.nan
        self.steps_done = 0
        self.stopped_early = False
        self.resumed_from: int | None = None
        self.train_seconds = 0.0

    # ------------------------------------------------------------------------------- helpers
    def _config(self, n_items: int) -> dict:
        return {"seed": self.seed, "batch_size": self.batch_size, "lr": self.lr,
                "weight_decay": self.weight_decay, "optimizer": self.optimizer,
                "momentum": float(self.momentum), "n_items": int(n_items),
                "val_every": self.val_every,
                "grad_clip": None if self.grad_clip is None else float(self.grad_clip),
                "max_steps": self.max_steps, "patience": self.patience}

    def _make_optimizer(self, module):
        import torch

        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{self.desc}: the module has no trainable parameters")
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum,
                               weight_decay=self.weight_decay)

    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.checkpoint_dir is None else self.checkpoint_dir / "last.pt"

    # ----------------------------------------------------------------------------------- fit
    def fit(self, module, loss_fn: Callable, n_items: int,
            val_fn: Callable | None = None):
        """Train ``module`` in place; returns it with the best state loaded, in eval mode."""
        import torch
        from tqdm.auto import tqdm

        if not isinstance(n_items, int) or n_items < 1:
            raise ValueError(f"{self.desc}: n_items must be a positive int, got {n_items!r}")
        dev = resolve_device(self.device)
        use_amp = dev.type == "cuda" and self.amp is not None
        amp_dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        config = self._config(n_items)

        def autocast():
            if use_amp:
                return torch.autocast(device_type="cuda", dtype=amp_dtype)
            return contextlib.nullcontext()

        self.history, self.best_step, self.best_val = [], None, math.nan
        self.stopped_early, self.resumed_from, self.train_seconds = False, None, 0.0
        module.to(dev)
        optimizer = self._make_optimizer(module)
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and self.amp == "fp16")
        gen = torch.Generator().manual_seed(self.seed)
        cuda_devices = [dev.index or 0] if dev.type == "cuda" else []

        with torch.random.fork_rng(devices=cuda_devices), deterministic(dev):
            torch.manual_seed(self.seed)
            step, order, cursor = 0, None, 0
            best_state, best_val, bad_checks, pending = None, math.inf, 0, []
            finished = False
            ckpt = self.checkpoint_path
            if ckpt is not None and ckpt.exists():
                state = torch.load(ckpt, map_location="cpu", weights_only=True)
                self._check_resumable(state, config, ckpt)
                module.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
                if state.get("scaler"):
                    scaler.load_state_dict(state["scaler"])
                gen.set_state(state["generator"])
                torch.set_rng_state(state["torch_rng"])
                if cuda_devices and state.get("cuda_rng") is not None:
                    torch.cuda.set_rng_state(state["cuda_rng"], cuda_devices[0])
                step, cursor = int(state["step"]), int(state["cursor"])
                order = state["order"]
                best_state, bad_checks = state["best_state"], int(state["bad_checks"])
                best_val = float(state["best_val"])
                self.best_step = state["best_step"]
                self.history = [dict(h) for h in state["history"]]
                pending = list(state["pending"])
                self.train_seconds = float(state["train_seconds"])
                self.stopped_early = bool(state["stopped_early"])
                finished = self.stopped_early or step >= self.max_steps
                self.resumed_from = step
                log.info("%s: resumed from %s at step %d", self.desc, ckpt, step)

            def save_checkpoint():
                if ckpt is None:
                    return
                _atomic_torch_save({
                    "format": CHECKPOINT_FORMAT, "config": config, "step": step,
                    "model": _cpu_state(module), "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                    "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                    "cuda_rng": (torch.cuda.get_rng_state(cuda_devices[0])
                                 if cuda_devices else None),
                    "order": order, "cursor": cursor, "best_state": best_state,
                    "best_val": best_val, "best_step": self.best_step, "bad_checks": bad_checks,
                    "history": self.history, "pending": pending,
                    "train_seconds": self.train_seconds + (time.perf_counter() - t0),
                    "stopped_early": self.stopped_early}, ckpt)

            t0 = time.perf_counter()
            bar = tqdm(total=self.max_steps, initial=step, desc=self.desc,
                       disable=not self.progress, leave=False)
            module.train()
            while not finished and step < self.max_steps:
                if order is None or cursor >= n_items or (
                        n_items >= self.batch_size and n_items - cursor < self.batch_size):
                    order, cursor = torch.randperm(n_items, generator=gen), 0
                idx = order[cursor:cursor + self.batch_size]
                cursor += len(idx)
                step += 1
                with autocast():
                    loss = loss_fn(module, idx, gen)
                if not torch.isfinite(loss.detach()):
                    raise FloatingPointError(f"{self.desc}: loss is {float(loss)} at step {step}")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if self.grad_clip is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(module.parameters(), self.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                pending.append(float(loss.detach()))
                bar.update(1)
                if step % self.val_every == 0 or step == self.max_steps:
                    val = math.nan
                    if val_fn is not None:
                        module.eval()
                        with torch.no_grad(), autocast():
                            val = float(val_fn(module))
                        module.train()
                    self.history.append({"step": step,
                                         "train_loss": float(sum(pending) / len(pending)),
                                         "val_loss": val})
                    pending = []
                    bar.set_postfix(loss=f"{self.history[-1]['train_loss']:.4g}",
                                    val=f"{val:.4g}")
                    if not math.isnan(val):
                        if val < best_val:
                            best_val, self.best_step, bad_checks = val, step, 0
                            best_state = _cpu_state(module)
                        else:
                            bad_checks += 1
                            if self.patience is not None and bad_checks >= self.patience:
                                self.stopped_early = True
                                log.info("%s: early stop at step %d (best step %d, val %.4g)",
                                         self.desc, step, self.best_step, best_val)
                                break
                if step % self.checkpoint_every == 0:
                    save_checkpoint()
            bar.close()
            if ckpt is not None and not finished:
                save_checkpoint()  # the final state: a rerun resumes as finished
            self.train_seconds += time.perf_counter() - t0
            self.steps_done = step
            if best_state is not None:
                module.load_state_dict(best_state)
                self.best_val = best_val
            else:
                self.best_step = step
        module.eval()
        log.info("%s: %d steps in %.1f s, best step %s (val %.4g)%s", self.desc, step,
                 self.train_seconds, self.best_step, self.best_val,
                 " (early stop)" if self.stopped_early else "")
        return module

    def _check_resumable(self, state: dict, config: dict, path: Path) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: checkpoint format {state.get('format')!r}, "
                             f"expected {CHECKPOINT_FORMAT}")
        saved = state["config"]
        diff = {k: (saved.get(k), config[k]) for k in _RESUME_KEYS if saved.get(k) != config[k]}
        if diff:
            detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"{path}: cannot resume, the run's settings differ ({detail}); "
                             "use another checkpoint_dir or delete the checkpoint")


def fit_module(module, loss_fn: Callable, n_items: int, *, val_fn: Callable | None = None,
               **trainer_params) -> Trainer:
    """Train ``module`` with a :class:`Trainer` built from ``trainer_params``; returns the trainer.

    The module ends in eval mode with the best state loaded; the trainer holds ``history``,
    ``best_step``, ``train_seconds`` etc.
    """
    trainer = Trainer(**trainer_params)
    trainer.fit(module, loss_fn, n_items, val_fn=val_fn)
    return trainer
