"""SpaCKLE (Ruiz et al. 2025): a transformer that completes a spot's genes from its neighbourhood.

Re-implemented in torch from SpaRED's ``spared/spackle`` (model, dataset, training defaults of
``denoising.spackle_cleaner``); torch is imported only when a model is built, trained or used.

Input of one spot: a (1 + ``n_neighbors``) × G matrix, row 0 the spot, then its nearest spots
of the same slide by ``obsm['spatial']``, nearest first. The original code takes the nearest
spots of the whole AnnData (squidpy kNN), across slides; here neighbours never cross a slide.
Model: Linear(G→G) → ``nn.TransformerEncoder`` (``n_layers`` post-norm ReLU layers, d_model = G,
``n_heads`` heads, feed-forward ``dim_feedforward``, dropout) → Linear(G→G), no positional
encoding; the output has the input's shape, and its row 0 is the prediction for the spot.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .._io import atomic_file
from .base import Completer, carve_validation, log, nearest_spots, slide_ids, spatial_coords

FORMAT = "stcore.completion.SpaCKLE/1"
ATTENTION = ("batch", "neighbours")


def neighbourhoods(slides: np.ndarray, coords: np.ndarray, centres: np.ndarray,
                   pool: np.ndarray, k: int) -> np.ndarray:
    """Each centre spot followed by its ``k`` nearest ``pool`` spots of the same slide.

    Parameters
    ----------
    slides, coords : (n_obs,), (n_obs, 2)
        Slide of each spot and its ``obsm['spatial']`` coordinates.
    centres, pool : bool (n_obs,)
        The spots that get a neighbourhood (in obs order), the spots that can be neighbours.
        Centres must be in the pool.
    k : int
        Neighbours per spot. A slide with fewer than k + 1 pool spots repeats its neighbours
        cyclically (the spot itself when it has none), with a warning.

    Returns
    -------
    np.ndarray (centres.sum(), 1 + k) of obs indices; column 0 is the centre.
    """
    if (centres & ~pool).any():
        raise ValueError("every centre spot must be in the neighbour pool")
    out = np.empty((int(centres.sum()), 1 + k), dtype=np.int64)
    position = np.cumsum(centres) - 1  # row of each centre in ``out``
    for slide in pd.unique(slides[centres]):
        members = np.flatnonzero(pool & (slides == slide))
        nbrs = members[nearest_spots(coords[members], k)]
        if nbrs.shape[1] < k:
            log.warning("slide %r has %d spots: fewer than %d neighbours, repeated cyclically",
                        slide, len(members), k)
            nbrs = (members[:, None] if nbrs.shape[1] == 0
                    else nbrs)[:, np.arange(k) % max(nbrs.shape[1], 1)]
        is_centre = centres[members]
        rows = position[members[is_centre]]
        out[rows, 0] = members[is_centre]
        out[rows, 1:] = nbrs[is_centre]
    return out


def build_network(n_genes: int, *, attention: str = "batch", n_layers: int = 2, n_heads: int = 1,
                  dim_feedforward: int = 2048, dropout: float = 0.1):
    """Linear(G→G) → TransformerEncoder → Linear(G→G) as an ``nn.Sequential`` (input B × S × G).

    ``attention="neighbours"`` builds the layers with ``batch_first=True``: self-attention runs
    across the 1 + k spots of a neighbourhood (the intended model). ``attention="batch"`` keeps
    PyTorch's default ``batch_first=False`` while the input is still (batch, spots, genes), as
    the original code does: self-attention then runs across the samples of the mini-batch, for
    each neighbour slot. Consequence: row 0 of the output (the prediction of the centre spot)
    depends on the centre rows of the other samples of the batch and *not at all* on the spot's
    own neighbours, which only enter the loss.
    """
    import torch.nn as nn

    if attention not in ATTENTION:
        raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
    layer = nn.TransformerEncoderLayer(d_model=n_genes, nhead=n_heads,
                                       dim_feedforward=dim_feedforward, dropout=dropout,
                                       activation="relu", norm_first=False,
                                       batch_first=attention == "neighbours")
    encoder = nn.TransformerEncoder(layer, num_layers=n_layers, enable_nested_tensor=False)
    return nn.Sequential(nn.Linear(n_genes, n_genes), encoder, nn.Linear(n_genes, n_genes))


@contextlib.contextmanager
def _deterministic(seed: int, device):
    """Seeded torch (global RNG forked and restored) with deterministic algorithms switched on."""
    import torch

    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        # cuBLAS needs CUBLAS_WORKSPACE_CONFIG to be deterministic: only warn there
        torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


class SpaCKLE(Completer):
    """SpaCKLE gene completion (transformer over a spot's spatial neighbourhood).

    Parameters
    ----------
    n_neighbors : int
        Neighbours per spot (18 in SpaRED).
    attention : {"batch", "neighbours"}
        "batch" reproduces the original code (``batch_first=False`` with a (batch, spots, genes)
        input: attention across the mini-batch, so a spot's prediction ignores its own
        neighbours); "neighbours" attends across the 1 + k spots of each neighbourhood
        (``batch_first=True``), as intended. See :func:`build_network`.
    n_layers, n_heads, dim_feedforward, dropout
        Transformer encoder (SpaRED: 2 layers, 1 head, 2048, 0.1).
    mask_prob : float
        Training masking rate: gene j is masked with probability min(1, mask_prob /
        ``var['glob_exp_frac']``\\ :sub:`j`) among its observed entries.
    lr, batch_size, max_steps : float, int, int
        Adam learning rate, mini-batch size (also the inference batch), training steps.
    val_every : int
        Steps between validation checks; the state with the lowest validation MSE is kept.
    patience : int or None
        Stop after this many validation checks without improvement (None: never).
    init_output_bias : bool
        Initialise the bias of the output layer with the per-gene train mean of the layer (our
        addition; the original starts from PyTorch's default init). Log2 TPM values lie far from
        0, and from the default init the network spends most of a short (CPU-sized) run learning
        that offset. ``False`` reproduces the original initialisation.
    device : str or None
        torch device; None = "cuda" when available, else "cpu". Runs are bitwise
        reproducible on CPU.
    progress : bool
        Show a tqdm progress bar while training.

    Notes
    -----
    :meth:`fit` reads ``layers[layer]`` (ground truth, including the median-prefilled missing
    entries, as SpaRED), ``layers[mask_key]``, ``obs['split', 'slide_id']``, ``obsm['spatial']``
    and ``var['glob_exp_frac']`` (computed from the mask over all spots when missing).
    Training spots are the "train" spots, their neighbours are train spots too; validation spots
    are the "val" spots (or carved from train, see :func:`~stcore.completion.base.carve_validation`)
    with neighbours among the train and validation spots. Validation pre-masks, once, the
    observed entries of the validation spots with the training probabilities (everywhere they
    appear) and scores the MSE of the centre spot on them. Each step draws a batch (epochs of
    random permutations), masks observed entries of the (1 + k) × G matrices at random (set to
    0), and minimises the MSE between the output and the whole ground-truth matrix.
    :meth:`predict` feeds every spot's neighbourhood with the unavailable entries set to 0
    and returns row 0 of the output; batches are consecutive spots in obs order, which matters
    for ``attention="batch"``. Nothing is written to the AnnData.

    With the original recipe (inputs masked to 0, no input scaling, post-norm layers, Adam
    10⁻³) the model first has to learn every gene's offset; on data whose genes all sit far from
    0 (log2(TPM+1)) this takes hundreds of steps before the neighbourhood is used at all.

    Fitted attributes: ``net_`` (the torch module, best state, eval mode), ``history`` (list of
    dicts ``step``, ``train_loss``, ``val_mse``), ``best_step``, ``train_seconds``,
    ``split_note``, ``mask_probabilities_``.
    """

    name = "spackle"

    def __init__(self, *, n_neighbors: int = 18, attention: str = "batch", n_layers: int = 2,
                 n_heads: int = 1, dim_feedforward: int = 2048, dropout: float = 0.1,
                 mask_prob: float = 0.3, lr: float = 1e-3, batch_size: int = 256,
                 max_steps: int = 1000, val_every: int = 10, patience: int | None = None,
                 init_output_bias: bool = True, device: str | None = None,
                 progress: bool = True):
        if attention not in ATTENTION:
            raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
        for name, value in (("n_neighbors", n_neighbors), ("batch_size", batch_size),
                            ("max_steps", max_steps), ("val_every", val_every)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0 < mask_prob <= 1:
            raise ValueError(f"mask_prob must be in (0, 1], got {mask_prob!r}")
        if patience is not None and patience < 1:
            raise ValueError(f"patience must be a positive int or None, got {patience!r}")
        self.n_neighbors, self.attention, self.n_layers, self.n_heads = (
            int(n_neighbors), attention, n_layers, n_heads)
        self.dim_feedforward, self.dropout, self.mask_prob, self.lr = (
            dim_feedforward, dropout, mask_prob, lr)
        self.batch_size, self.max_steps, self.val_every, self.patience = (
            int(batch_size), int(max_steps), int(val_every), patience)
        self.device, self.progress = device, progress
        self.init_output_bias = bool(init_output_bias)

    # -------------------------------------------------------------------------------- helpers
    def _device(self):
        import torch

        if self.device is None:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def _network(self, n_genes: int):
        return build_network(n_genes, attention=self.attention, n_layers=self.n_layers,
                             n_heads=self.n_heads, dim_feedforward=self.dim_feedforward,
                             dropout=self.dropout)

    def _mask_probabilities(self, adata, observed: np.ndarray) -> np.ndarray:
        if "glob_exp_frac" in adata.var:
            frac = adata.var["glob_exp_frac"].to_numpy(dtype=np.float64)
        else:
            log.info("var['glob_exp_frac'] missing: computed from the mask over all spots")
            frac = observed.mean(axis=0)
        with np.errstate(divide="ignore"):
            return np.minimum(1.0, np.where(frac > 0, self.mask_prob / frac, 1.0))

    def _run(self, net, x, device):
        """Output row 0 of ``net`` on neighbourhood tensors ``x`` (N, S, G), batched, no grad."""
        import torch

        rows = []
        with torch.no_grad():
            for start in range(0, len(x), self.batch_size):
                rows.append(net(x[start:start + self.batch_size].to(device))[:, 0].cpu())
        return torch.cat(rows) if rows else torch.empty((0, x.shape[-1]))

    # ------------------------------------------------------------------------------------ fit
    def _fit(self, adata, values, observed, train, val, seed):
        import torch
        from tqdm.auto import tqdm

        device = self._device()
        train, val, self.split_note = carve_validation(adata, train, val, seed=seed)
        slides, coords = slide_ids(adata), spatial_coords(adata)
        k = self.n_neighbors
        nb_train = torch.as_tensor(neighbourhoods(slides, coords, train, train, k))
        p = self._mask_probabilities(adata, observed)
        self.mask_probabilities_ = p
        x_all = torch.as_tensor(values, dtype=torch.float32)
        m_all = torch.as_tensor(observed)
        p_t = torch.as_tensor(p, dtype=torch.float32)

        # validation: pre-mask the observed entries of the validation spots once
        val_gen = torch.Generator().manual_seed(int(seed))
        hidden = torch.zeros_like(m_all)
        val_idx = torch.as_tensor(np.flatnonzero(val))
        if len(val_idx):
            draw = torch.rand((len(val_idx), x_all.shape[1]), generator=val_gen) < p_t
            hidden[val_idx] = draw & m_all[val_idx]
        has_val = bool(hidden[val_idx].any()) if len(val_idx) else False
        if has_val:
            nb_val = torch.as_tensor(neighbourhoods(slides, coords, val, train | val, k))
            val_inputs = x_all.masked_fill(hidden, 0.0)[nb_val]
            val_truth, val_hidden = x_all[val_idx], hidden[val_idx]
        else:
            log.warning("SpaCKLE: no validation entries; the last state is kept")

        gen = torch.Generator().manual_seed(int(seed) + 1)
        n_train = len(nb_train)
        self.history, self.best_step = [], None
        t0 = time.perf_counter()
        with _deterministic(int(seed), device):
            net = self._network(x_all.shape[1]).to(device)
            if self.init_output_bias:  # start from the train mean: log2 TPM values sit far from 0
                with torch.no_grad():
                    net[-1].bias.copy_(x_all[torch.as_tensor(np.flatnonzero(train))].mean(0))
            opt = torch.optim.Adam(net.parameters(), lr=self.lr)
            best_state, best_mse, checks_since_best, losses = None, float("inf"), 0, []
            order, cursor = torch.randperm(n_train, generator=gen), 0
            bar = tqdm(total=self.max_steps, desc="SpaCKLE", disable=not self.progress,
                       leave=False)
            for step in range(1, self.max_steps + 1):
                if cursor >= n_train:
                    order, cursor = torch.randperm(n_train, generator=gen), 0
                batch = nb_train[order[cursor:cursor + self.batch_size]]
                cursor += self.batch_size
                truth = x_all[batch]  # (B, 1 + k, G)
                masked = (torch.rand(truth.shape, generator=gen) < p_t) & m_all[batch]
                net.train()
                out = net(truth.masked_fill(masked, 0.0).to(device))
                loss = torch.nn.functional.mse_loss(out, truth.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                bar.update(1)
                if step % self.val_every and step != self.max_steps:
                    continue
                val_mse = float("nan")
                if has_val:
                    net.eval()
                    pred = self._run(net, val_inputs, device)
                    val_mse = float(((pred - val_truth)[val_hidden] ** 2).mean())
                self.history.append({"step": step, "train_loss": float(np.mean(losses)),
                                     "val_mse": val_mse})
                losses = []
                bar.set_postfix(loss=f"{self.history[-1]['train_loss']:.4f}",
                                val_mse=f"{val_mse:.4f}")
                if has_val and val_mse < best_mse:
                    best_mse, self.best_step, checks_since_best = val_mse, step, 0
                    best_state = copy.deepcopy(net.state_dict())
                elif has_val:
                    checks_since_best += 1
                    if self.patience is not None and checks_since_best >= self.patience:
                        log.info("SpaCKLE: early stop at step %d (best %d, val MSE %.4f)",
                                 step, self.best_step, best_mse)
                        break
            bar.close()
            if best_state is not None:
                net.load_state_dict(best_state)
            else:
                self.best_step = step
        net.eval()
        self.net_ = net
        self.train_seconds = time.perf_counter() - t0
        log.info("SpaCKLE: %d steps in %.1f s, best step %s (val MSE %.4f); %s", step,
                 self.train_seconds, self.best_step, best_mse, self.split_note)

    # -------------------------------------------------------------------------------- predict
    def _predict(self, adata, visible, available):
        import torch

        everyone = np.ones(adata.n_obs, dtype=bool)
        nb = neighbourhoods(slide_ids(adata), spatial_coords(adata), everyone, everyone,
                            self.n_neighbors)
        x = torch.as_tensor(visible, dtype=torch.float32)
        device = next(self.net_.parameters()).device
        self.net_.eval()
        out = np.empty(visible.shape, dtype=np.float64)
        with torch.no_grad():
            for start in range(0, len(nb), self.batch_size):
                b = torch.as_tensor(nb[start:start + self.batch_size])
                out[start:start + len(b)] = self.net_(x[b].to(device))[:, 0].cpu().numpy()
        return out

    # ---------------------------------------------------------------------------- save / load
    def save(self, path) -> Path:
        """Write ``path/model.safetensors`` (weights) and ``path/spackle.json`` (the rest).

        The JSON holds the format, the constructor parameters, genes, layer, seed, mask
        probabilities, training history, best step and time. Each file is written atomically.
        """
        import torch

        self._check_fitted_only()
        path = Path(path)
        state = {k: v.detach().cpu().contiguous() for k, v in self.net_.state_dict().items()}
        try:
            from safetensors.torch import save as st_save

            blob, weights = st_save(state), "model.safetensors"
        except ImportError:  # pragma: no cover - safetensors is a dependency of the environment
            buf = io.BytesIO()
            torch.save(state, buf)
            blob, weights = buf.getvalue(), "model.pt"
        with atomic_file(path / weights, "wb") as fh:
            fh.write(blob)
        config = {"format": FORMAT, "params": self.get_params(), "weights": weights,
                  "var_names": self.var_names_, "layer": self.layer_, "seed": self.seed_,
                  "mask_probabilities": [float(v) for v in self.mask_probabilities_],
                  "history": self.history, "best_step": self.best_step,
                  "train_seconds": self.train_seconds, "split_note": self.split_note,
                  "torch": torch.__version__}
        with atomic_file(path / "spackle.json") as fh:
            json.dump(config, fh, indent=2)
        return path

    @classmethod
    def load(cls, path, *, device: str | None = None) -> "SpaCKLE":
        """A fitted SpaCKLE from a folder written by :meth:`save` (``device`` overrides)."""
        import torch

        path = Path(path)
        config_file = path / "spackle.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file}: no saved SpaCKLE model here")
        config = json.loads(config_file.read_text())
        if config.get("format") != FORMAT:
            raise ValueError(f"{config_file}: format {config.get('format')!r}, expected {FORMAT!r}")
        params = dict(config["params"])
        if device is not None:
            params["device"] = device
        model = cls(**params)
        weights = path / config["weights"]
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(weights))
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        net = model._network(len(config["var_names"]))
        net.load_state_dict(state)
        model.net_ = net.to(model._device()).eval()
        model.var_names_, model.layer_, model.seed_ = (config["var_names"], config["layer"],
                                                       config["seed"])
        model.mask_probabilities_ = np.asarray(config["mask_probabilities"])
        model.history, model.best_step = config["history"], config["best_step"]
        model.train_seconds, model.split_note = config["train_seconds"], config["split_note"]
        model.is_fitted_ = True
        return model

    def _check_fitted_only(self) -> None:
        if not getattr(self, "is_fitted_", False):
            raise RuntimeError("SpaCKLE is not fitted: call fit(adata) first")
