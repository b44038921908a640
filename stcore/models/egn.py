"""EGN (Yang et al., WACV 2023): exemplar-guided ViT for expression prediction.

Structure as in ``Yan98/EGN`` (``v1/egn.py``, ``build_exemplar.py``):

* **Exemplars**: each spot's ``n_exemplars`` (6) nearest training spots by Euclidean distance of
  frozen encoder embeddings (``task.embeddings[encoder]``; ImageNet ResNet-50 in the paper),
  taken from *other* sections than the spot's own (as ``build_exemplar.py`` does), with their
  embeddings and training targets.
* **Projector**: the spot's own embedding (1 token) and the exemplar tokens
  (Linear(embedding ⊕ expression)) pass through ``player`` residual pre-norm MLP layers; the
  exemplar expressions are projected to value tokens.
* **Backbone**: a ViT on the patch (patch embedding + learned positions), ``depth`` pre-norm
  layers; after every ``bfre``-th layer an *exemplar bridging* block updates the query and
  exemplar tokens from the exemplar values (sigmoid-gated, ``Update``), derives per-head,
  per-token gates for the image tokens from the query and adds the gated image features to the
  image tokens and (averaged) to the query token.
* **Head**: class-specific residual attention pooling (CSRA) of the image tokens ⊕ the query
  token → LayerNorm → Linear to the genes.
* **Loss**: MSE + ``corr_weight`` · (1 − mean per-gene Pearson over the batch), NaN → −1
  (published weight 0.5).

Differences: step-based with constant lr and early stopping on the validation MSE (the
original: AdamW with cosine warm restarts, 50 epochs); images ImageNet-normalised (the original
(x − 0.5) / 0.5); the original's 8 × 8 token grid in the bridging block is generalised to any
number of tokens; CPU defaults are small (published: ``size=256, patch_size=32, dim=1024,
depth=8, heads=16, mlp_dim=4096, bhead=8, bdim=64, bfre=2, n_exemplars=6``, AdamW lr 5e-4,
weight decay 1e-4; SpaRED's adapter: lr 1e-2, batch 256, 1000 steps).
"""

from __future__ import annotations

import numpy as np

from ..train import seeded
from ._common import batched, dihedral_augment, patch_tensor
from .base import NeuralPredictor, Task


def _build_net(n_genes, emb_dim, size, patch_size, dim, depth, heads, dim_head, mlp_dim,
               bhead, bdim, bfre, player, dropout):
    import torch
    import torch.nn as nn

    n_tokens = (size // patch_size) ** 2

    def feed_forward(d, hidden):
        return nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden), nn.GELU(),
                             nn.Dropout(dropout), nn.Linear(hidden, d), nn.Dropout(dropout))

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            inner = heads * dim_head
            self.norm = nn.LayerNorm(dim)
            self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
            self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

        def forward(self, x):  # (B, T, dim)
            b, t, _ = x.shape
            q, k, v = (z.view(b, t, heads, dim_head).transpose(1, 2)
                       for z in self.to_qkv(self.norm(x)).chunk(3, dim=-1))
            attn = torch.softmax(q @ k.transpose(-1, -2) * dim_head ** -0.5, dim=-1)
            return self.to_out((attn @ v).transpose(1, 2).reshape(b, t, heads * dim_head))

    class Projector(nn.Module):
        def __init__(self):
            super().__init__()
            self.proq = nn.Linear(emb_dim, dim)
            self.proe = nn.Linear(emb_dim + n_genes, dim)
            self.layers = nn.ModuleList([feed_forward(dim, dim) for _ in range(player)])
            self.to_v = nn.Linear(n_genes, dim)

        def forward(self, q, oq, oq_v):  # (B,1,e), (B,k,e), (B,k,G)
            x = torch.cat((self.proq(q), self.proe(torch.cat((oq, oq_v), -1))), 1)
            for ff in self.layers:
                x = ff(x) + x
            q, oq = x.split([1, oq.shape[1]], 1)
            return q, oq, self.to_v(oq_v)

    class Update(nn.Module):
        def __init__(self):
            super().__init__()
            self.query = nn.Sequential(nn.Linear(dim * 2, bhead * bdim), nn.SiLU(),
                                       nn.Linear(bhead * bdim, dim * 2))
            self.value = nn.Linear(dim, dim)
            self.norm = nn.LayerNorm(dim)

        def forward(self, q, k, v):  # q (B,1,d), k (B,k,d), v (B,k,d)
            value = self.value(v)
            query, key = self.query(torch.cat((q - k, k), 2)).chunk(2, 2)
            return ((query.sigmoid() * value).mean(1, keepdim=True) + q,
                    self.norm(key.sigmoid() * value + k))

    class Bridge(nn.Module):
        """Exemplar bridging: gates image tokens per head and token from the updated query."""

        def __init__(self):
            super().__init__()
            self.update = Update()
            self.to_x = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, bhead * bdim))
            self.to_k = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, n_tokens * bhead))
            self.to_v = nn.Linear(bhead * bdim, dim, bias=False)
            self.to_n = nn.Linear(bhead * bdim, dim, bias=False)

        def forward(self, x, q, oq, oq_v):
            b, t, _ = x.shape
            new_q, new_k = self.update(q, oq, oq_v)
            gate = self.to_k(new_q).view(b, t, bhead, 1).sigmoid()
            value = (self.to_x(x).view(b, t, bhead, bdim) * gate).reshape(b, t, bhead * bdim)
            return self.to_v(value) + x, self.to_n(value.mean(1, keepdim=True)) + q, new_k

    class CSRA(nn.Module):
        def __init__(self, temperature=0.1, lam=0.5):
            super().__init__()
            self.t, self.lam = temperature, lam
            self.head = nn.Linear(dim, dim)

        def forward(self, x):
            score = self.head(x)
            att = torch.sum(score * torch.softmax(score * self.t, dim=1), dim=1)
            return score.mean(1) + self.lam * att

    class EGNNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch_embedding = nn.Conv2d(3, dim, patch_size, patch_size)
            self.pos_embedding = nn.Parameter(torch.randn(1, n_tokens, dim))
            self.dropout = nn.Dropout(dropout)
            self.projector = Projector()
            self.layers = nn.ModuleList()
            for i in range(depth):
                self.layers.append(nn.ModuleList([
                    Attention(), Bridge() if (i + 1) % bfre == 0 else nn.Identity(),
                    feed_forward(dim, mlp_dim)]))
            self.pool = CSRA()
            self.head = nn.Sequential(nn.LayerNorm(2 * dim), nn.Linear(2 * dim, n_genes))

        def forward(self, img, q, oq, oq_v):
            x = self.patch_embedding(img).flatten(2).transpose(1, 2)
            pos = self.pos_embedding
            x = self.dropout(x + pos)
            q, oq, oq_v = self.projector(q, oq, oq_v)
            for attn, bridge, ff in self.layers:
                x = attn(x + pos) + x
                if isinstance(bridge, Bridge):
                    x, q, oq = bridge(x, q, oq, oq_v)
                x = ff(x) + x
            return self.head(torch.cat((self.pool(x), q.squeeze(1)), 1))

    return EGNNet()


def correlation_loss(pred, target, eps: float = 1e-8):
    """1 − mean over genes of the Pearson correlation across the batch (NaN → −1), as EGN."""
    import torch

    pm, tm = pred - pred.mean(0), target - target.mean(0)
    r = (pm * tm).sum(0) / (pm.norm(dim=0) * tm.norm(dim=0) + eps)
    return 1 - torch.nan_to_num(r, nan=-1.0).mean()


class EGN(NeuralPredictor):
    """EGN: a ViT on the patch guided by exemplars retrieved in frozen-embedding space.

    Parameters
    ----------
    encoder : str or None
        Key of ``task.embeddings`` used for retrieval and as the query / exemplar features
        (None: the only one there).
    n_exemplars : int
        Exemplars per spot (published 6).
    other_sections : bool
        Retrieve exemplars from other sections only (as the original); falls back to all
        training spots but the spot itself when there is no other training section.
    size, patch_size, dim, depth, heads, dim_head, mlp_dim : int
        ViT (published 256, 32, 1024, 8, 16, 64, 4096).
    bhead, bdim, bfre, player : int
        Bridging heads / head width / frequency, projector layers (published 8, 64, 2, 1).
    dropout, corr_weight : float
        Dropout; weight of the correlation loss (published 0, 0.5).
    augment : bool
        Random flips / 90° rotations of the patch in training.
    lr, weight_decay, optimizer, batch_size, max_steps, val_every, patience, masked_loss,
    device, amp, checkpoint_dir, checkpoint_every, eval_batch_size
        Training, see :class:`~stcore.models.base.NeuralPredictor`.
    """

    name = "egn"

    def __init__(self, *, encoder: str | None = None, n_exemplars: int = 6,
                 other_sections: bool = True, size: int = 64, patch_size: int = 16,
                 dim: int = 128, depth: int = 4, heads: int = 4, dim_head: int = 32,
                 mlp_dim: int = 256, bhead: int = 4, bdim: int = 32, bfre: int = 2,
                 player: int = 1, dropout: float = 0.0, corr_weight: float = 0.5,
                 augment: bool = True, lr: float = 5e-4, weight_decay: float = 1e-4,
                 optimizer: str = "adamw", batch_size: int = 32, max_steps: int = 1000,
                 val_every: int = 50, patience: int | None = 10, masked_loss: bool = False,
                 device: str | None = None, amp: str | None = "bf16",
                 checkpoint_dir: str | None = None, checkpoint_every: int | None = None,
                 eval_batch_size: int = 128):
        if size % patch_size:
            raise ValueError(f"size ({size}) must be a multiple of patch_size ({patch_size})")
        self.encoder, self.n_exemplars, self.other_sections = encoder, int(n_exemplars), \
            bool(other_sections)
        self.size, self.patch_size, self.dim, self.depth = int(size), int(patch_size), int(dim), \
            int(depth)
        self.heads, self.dim_head, self.mlp_dim = int(heads), int(dim_head), int(mlp_dim)
        self.bhead, self.bdim, self.bfre, self.player = int(bhead), int(bdim), int(bfre), \
            int(player)
        self.dropout, self.corr_weight, self.augment = float(dropout), float(corr_weight), \
            bool(augment)
        self._init_training(lr=lr, weight_decay=weight_decay, optimizer=optimizer,
                            batch_size=batch_size, max_steps=max_steps, val_every=val_every,
                            patience=patience, masked_loss=masked_loss, device=device, amp=amp,
                            checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                            eval_batch_size=eval_batch_size)

    def _build(self, n_genes: int, emb_dim: int):
        self.n_genes_, self.emb_dim_ = n_genes, emb_dim
        return _build_net(n_genes, emb_dim, self.size, self.patch_size, self.dim, self.depth,
                          self.heads, self.dim_head, self.mlp_dim, self.bhead, self.bdim,
                          self.bfre, self.player, self.dropout)

    # ------------------------------------------------------------------------------ exemplars
    def _exemplars(self, task: Task, idx: np.ndarray) -> np.ndarray:
        """(len(idx), n_exemplars) indices into the bank (training spots), nearest first."""
        import torch

        _, emb = task.embedding(self.encoder_)
        q = torch.as_tensor(emb[idx], dtype=torch.float64)
        bank = torch.as_tensor(self.bank_emb_, dtype=torch.float64)
        k = min(self.n_exemplars, len(bank))
        out = np.empty((len(idx), k), dtype=np.int64)
        for start in range(0, len(idx), 1024):
            sl = slice(start, start + 1024)
            d = torch.cdist(q[sl], bank)
            rows_slide = task.slide[idx[sl]]
            same_spot = np.asarray(idx[sl])[:, None] == self.bank_rows_[None, :]
            exclude = same_spot
            if self.other_sections:
                other = rows_slide[:, None] != self.bank_slide_[None, :]
                # fall back to all (but the spot itself) where too few other-section spots
                enough = other.sum(1, keepdims=True) >= k
                exclude = np.where(enough, ~other, same_spot)
            d = d.masked_fill(torch.as_tensor(exclude), float("inf"))
            out[sl] = torch.topk(d, k, dim=1, largest=False).indices.numpy()
        return out

    def _batch(self, task: Task, rows: np.ndarray, gen=None):
        import torch

        dev = next(self.net_.parameters()).device
        _, emb = task.embedding(self.encoder_)
        ex = self._cached(task, "exemplars", lambda: {})
        missing = [r for r in rows.tolist() if r not in ex]
        if missing:
            for r, e in zip(missing, self._exemplars(task, np.asarray(missing))):
                ex[r] = e
        nb = np.stack([ex[r] for r in rows.tolist()])
        img = patch_tensor(task.patches, rows, self.size)
        if gen is not None and self.augment:
            img = dihedral_augment(img, gen)
        as_t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32), device=dev)  # noqa: E731
        return (img.to(dev), as_t(emb[rows][:, None, :]), as_t(self.bank_emb_[nb]),
                as_t(self.bank_targets_[nb]))

    # ------------------------------------------------------------------------------------ fit
    def _fit(self, task: Task, seed: int, progress: bool) -> None:
        dev = self._device()
        self.encoder_, emb = task.embedding(self.encoder)
        train_idx = np.flatnonzero(task.train)
        self.bank_rows_ = train_idx
        self.bank_emb_ = emb[train_idx].astype(np.float32)
        self.bank_targets_ = task.targets[train_idx].astype(np.float32)
        self.bank_slide_ = task.slide[train_idx]
        with seeded(seed, dev):
            self.net_ = self._build(task.n_genes, emb.shape[1]).to(dev)

        def loss_fn(net, idx, gen):
            rows = train_idx[idx.numpy()]
            pred = net(*self._batch(task, rows, gen))
            loss = self._loss(pred, task, rows)
            if self.corr_weight > 0:
                import torch

                y = torch.as_tensor(task.targets[rows], device=pred.device)
                loss = loss + self.corr_weight * correlation_loss(pred.float(), y)
            return loss

        self._train(task, loss_fn, len(train_idx), seed=seed, progress=progress)

    def _predict(self, task: Task, idx: np.ndarray) -> np.ndarray:
        import torch

        self.net_.eval()
        with torch.no_grad():
            return np.concatenate([self.net_(*self._batch(task, chunk)).float().cpu().numpy()
                                   for chunk in batched(idx, self.eval_batch_size)])

    def _state(self):
        arrays = self._net_state()
        arrays.update(bank_rows=self.bank_rows_, bank_emb=self.bank_emb_,
                      bank_targets=self.bank_targets_)
        meta = {"n_genes": self.n_genes_, "emb_dim": self.emb_dim_, "encoder": self.encoder_,
                "bank_slide": [str(s) for s in self.bank_slide_]}
        return meta, arrays

    def _restore(self, meta, arrays):
        self.encoder_ = meta["encoder"]
        self.bank_rows_ = arrays["bank_rows"].numpy()
        self.bank_emb_ = arrays["bank_emb"].numpy()
        self.bank_targets_ = arrays["bank_targets"].numpy()
        self.bank_slide_ = np.asarray(meta["bank_slide"], dtype=str)
        self.net_ = self._build(meta["n_genes"], meta["emb_dim"])
        self._load_net(arrays)
