"""Hist2ST (Zeng et al., Brief. Bioinform. 2022): convmixer + transformer + graph network.

Structure as in ``biomed-AI/Hist2ST`` (tag ``5-7-2-8-4-16-32``), one section per step:

1. per spot: the patch (``size`` px) → Conv2d patch embedding (``patch_size`` × ``patch_size``,
   stride ``patch_size``, ``channel`` channels) → embedding dropout → ``depth1`` ConvMixer blocks
   (two depthwise convs of kernel ``kernel_size`` with BatchNorm + GELU and a residual, then a
   pointwise conv + GELU + BatchNorm) → 1×1 conv to ``channel // 8`` channels, flattened:
   ``dim = (size // patch_size)² · channel // 8`` features;
2. learned x / y embeddings of the array coordinates are added and a pre-norm transformer
   (``depth2`` layers, ``heads`` × ``dim_head`` attention, MLP of width ``dim``) runs over all
   spots of the section;
3. ``depth3`` GraphSAGE layers (mean aggregator, "gcn" variant: ``relu(W · mean of
   neighbours)``, L2-normalised) on the spatial graph: each spot's ``n_neighbors`` = 4 nearest
   spots in array coordinates, pruned beyond distance 2 (``calcADJ(..., pruneTag="Grid")``);
   jumping knowledge = a 2-layer LSTM over the layers' outputs, averaged;
4. LayerNorm + Linear to the genes.

Loss = MSE + ``zinb_weight`` · ZINB negative log-likelihood + ``distill_weight`` ·
self-distillation (published 0.25 and 0.5; 0 by default here, to keep CPU runs cheap).

* **ZINB** needs counts. The Task holds log-scale targets, so the counts are approximated as
  ``expm1(max(target, 0))`` (pseudo-counts, not integers) with size factors = spot total /
  median spot total of the section; heads for mean (exp, clamped), dispersion (softplus,
  clamped) and dropout (sigmoid) as in the original. This is a documented approximation: the
  original fits the raw counts; ``expm1`` inverts natural-log ``log1p`` targets (SpaRED's
  layers), not the log10 targets of the Hist2ST family, nor any normalisation or batch
  correction applied before the log.
* **Self-distillation** (``distill_views`` = 5 views): each view is a randomly augmented copy of
  the section's patches (grayscale with p 0.1, a random multiple of 90° rotation, horizontal
  flip with p 0.2; the original rotates by a random angle in [-90°, 90°]); a small head scores
  each view per spot, the softmax-weighted mean of the views' predictions is pulled towards the
  main prediction by MSE.

Differences: isolated spots (no neighbour after pruning) aggregate themselves (the original
divides by zero); array coordinates are shifted to start at 0 per section and clipped at
``n_pos - 1``; patches are ImageNet-normalised; BatchNorm statistics come from the spots of
one section in training, as in the original (so section-level colour shifts are normalised away
in training but not at evaluation, where running statistics are used); CPU defaults are smaller
(published: ``size=112, patch_size=7, channel=32, kernel_size=5, depth1=2, depth2=8,
depth3=4, heads=16, dim_head=64, dropout=0.2, n_pos=64``, Adam lr 1e-5, StepLR, 350 epochs; no
LR schedule here).
"""

from __future__ import annotations

import numpy as np

from ._common import (SectionPredictor, dihedral_augment, grid_positions, knn_adjacency,
                      patch_tensor)
from .base import Task, log


def _build_net(n_genes, size, patch_size, channel, kernel_size, depth1, depth2, depth3, heads,
               dim_head, dropout, n_pos, zinb, distill):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    grid = size // patch_size
    dim = grid * grid * (channel // 8)

    class ConvMixerBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.dw = nn.Sequential(
                nn.Conv2d(channel, channel, kernel_size, groups=channel, padding="same"),
                nn.BatchNorm2d(channel), nn.GELU(),
                nn.Conv2d(channel, channel, kernel_size, groups=channel, padding="same"),
                nn.BatchNorm2d(channel), nn.GELU())
            self.pw = nn.Sequential(nn.Conv2d(channel, channel, 1), nn.GELU(),
                                    nn.BatchNorm2d(channel))

        def forward(self, x):
            return self.pw(self.dw(x) + x)

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            inner = heads * dim_head
            self.norm = nn.LayerNorm(dim)
            self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
            self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
            self.drop = nn.Dropout(dropout)

        def forward(self, x):  # (N, dim): one sequence
            n = x.shape[0]
            q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=-1)
            q, k, v = (t.view(n, heads, dim_head).transpose(0, 1) for t in (q, k, v))
            attn = self.drop(torch.softmax(q @ k.transpose(-1, -2) * dim_head ** -0.5, dim=-1))
            return self.to_out((attn @ v).transpose(0, 1).reshape(n, heads * dim_head))

    class AttnBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = Attention()
            self.ff = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(),
                                    nn.Dropout(dropout), nn.Linear(dim, dim), nn.Dropout(dropout))

        def forward(self, x):
            x = self.attn(x) + x
            return self.ff(x) + x

    class SAGE(nn.Module):
        """GraphSAGE, mean aggregator, gcn variant (neighbour mean only, no concatenation)."""

        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.empty(dim, dim))
            nn.init.xavier_uniform_(self.weight)

        def forward(self, x, adj):
            neigh = (adj / adj.sum(1, keepdim=True)) @ x
            return F.normalize(F.relu(neigh @ self.weight.T), p=2, dim=1)

    class Hist2STNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch_embedding = nn.Conv2d(3, channel, patch_size, patch_size)
            self.x_embed = nn.Embedding(n_pos, dim)
            self.y_embed = nn.Embedding(n_pos, dim)
            self.emb_dropout = nn.Dropout(dropout)
            self.mixer = nn.Sequential(*[ConvMixerBlock() for _ in range(depth1)])
            self.down = nn.Sequential(nn.Conv2d(channel, channel // 8, 1), nn.Flatten())
            self.transformer = nn.Sequential(*[AttnBlock() for _ in range(depth2)])
            self.gnn = nn.ModuleList([SAGE() for _ in range(depth3)])
            self.jknet = nn.LSTM(dim, dim, 2)
            self.gene_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, n_genes))
            if zinb:
                self.mean = nn.Linear(dim, n_genes)
                self.disp = nn.Linear(dim, n_genes)
                self.pi = nn.Linear(dim, n_genes)
            if distill:
                self.coef = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1))

        def embed(self, patches, pos, adj):
            """patches (N, 3, size, size), pos (N, 2), adj (N, N) → spot features (N, dim)."""
            x = self.emb_dropout(self.patch_embedding(patches))
            x = self.down(self.mixer(x))
            g = self.transformer(x + self.x_embed(pos[:, 0]) + self.y_embed(pos[:, 1]))
            jk = []
            for layer in self.gnn:
                g = layer(g, adj)
                jk.append(g)
            return self.jknet(torch.stack(jk))[0].mean(0)

        def forward(self, patches, pos, adj):
            return self.gene_head(self.embed(patches, pos, adj))

        def zinb_params(self, h):
            mean = torch.clamp(torch.exp(self.mean(h)), 1e-5, 1e6)
            disp = torch.clamp(F.softplus(self.disp(h)), 1e-4, 1e4)
            return mean, disp, torch.sigmoid(self.pi(h))

    return Hist2STNet(), dim


def zinb_nll(x, mean, disp, pi, scale_factor, eps: float = 1e-10):
    """Zero-inflated negative binomial NLL (DCA / Hist2ST ``ZINB_loss``), averaged."""
    import torch

    mean = mean * scale_factor[:, None]
    t1 = torch.lgamma(disp + eps) + torch.lgamma(x + 1.0) - torch.lgamma(x + disp + eps)
    t2 = (disp + x) * torch.log1p(mean / (disp + eps)) + x * (torch.log(disp + eps)
                                                                - torch.log(mean + eps))
    nb_case = t1 + t2 - torch.log(1.0 - pi + eps)
    zero_nb = torch.pow(disp / (disp + mean + eps), disp)
    zero_case = -torch.log(pi + (1.0 - pi) * zero_nb + eps)
    return torch.where(x <= 1e-8, zero_case, nb_case).mean()


class Hist2ST(SectionPredictor):
    """Hist2ST: convmixer per spot → transformer over the section → GraphSAGE + JK → genes.

    Parameters
    ----------
    size, patch_size, channel, kernel_size : int
        Patch side, patch-embedding stride, convmixer channels and kernel (published 112, 7,
        32, 5); ``dim = (size // patch_size)² · channel // 8``.
    depth1, depth2, depth3 : int
        ConvMixer blocks, transformer layers, graph layers (published 2, 8, 4).
    heads, dim_head, dropout : int, int, float
        Attention (published 16, 64, 0.2).
    n_neighbors, max_dist : int, float or None
        Spatial graph: k nearest spots in array coordinates, pruned beyond ``max_dist``
        (published 4 and 2 for her2st; None: no pruning as for cSCC).
    n_pos : int
        Size of the x / y embedding tables (published 64).
    zinb_weight, distill_weight, distill_views : float, float, int
        Extra losses (published 0.25, 0.5, 5 views); see the module docstring.
    augment : bool
        Random flips / 90° rotations of each patch for the main training pass.
    init_bias_mean : bool
        Start the output bias at the training mean (not in the paper; for short CPU runs).
    lr, weight_decay, optimizer, batch_size (sections per step), max_steps, val_every,
    patience, masked_loss, device, amp, checkpoint_dir, checkpoint_every, eval_batch_size
        Training, see :class:`~stcore.models.base.NeuralPredictor`.
    """

    name = "hist2st"

    def __init__(self, *, size: int = 56, patch_size: int = 7, channel: int = 32,
                 kernel_size: int = 5, depth1: int = 2, depth2: int = 2, depth3: int = 4,
                 heads: int = 4, dim_head: int = 64, dropout: float = 0.2, n_neighbors: int = 4,
                 max_dist: float | None = 2.0, n_pos: int = 128, zinb_weight: float = 0.0,
                 distill_weight: float = 0.0, distill_views: int = 5, augment: bool = True,
                 init_bias_mean: bool = False, lr: float = 1e-4, weight_decay: float = 0.0, optimizer: str = "adam",
                 batch_size: int = 1, max_steps: int = 1000, val_every: int = 20,
                 patience: int | None = 10, masked_loss: bool = False,
                 device: str | None = None, amp: str | None = "bf16",
                 checkpoint_dir: str | None = None, checkpoint_every: int | None = None,
                 eval_batch_size: int = 128):
        if size // patch_size < 1 or channel // 8 < 1:
            raise ValueError(f"need size >= patch_size and channel >= 8, got size={size}, "
                             f"patch_size={patch_size}, channel={channel}")
        if min(depth1, depth2, depth3) < 1:
            raise ValueError(f"depth1, depth2, depth3 must be >= 1, got {depth1}, {depth2}, "
                             f"{depth3}")
        if zinb_weight < 0 or distill_weight < 0:
            raise ValueError("zinb_weight and distill_weight must be >= 0")
        self.size, self.patch_size, self.channel = int(size), int(patch_size), int(channel)
        self.kernel_size, self.depth1, self.depth2 = int(kernel_size), int(depth1), int(depth2)
        self.depth3, self.heads, self.dim_head = int(depth3), int(heads), int(dim_head)
        self.dropout, self.n_neighbors, self.max_dist = float(dropout), int(n_neighbors), max_dist
        self.n_pos, self.zinb_weight = int(n_pos), float(zinb_weight)
        self.distill_weight, self.distill_views = float(distill_weight), int(distill_views)
        self.augment, self.init_bias_mean = bool(augment), bool(init_bias_mean)
        self._init_training(lr=lr, weight_decay=weight_decay, optimizer=optimizer,
                            batch_size=batch_size, max_steps=max_steps, val_every=val_every,
                            patience=patience, masked_loss=masked_loss, device=device, amp=amp,
                            checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                            eval_batch_size=eval_batch_size)

    def _build(self, task: Task | None = None, n_genes: int | None = None):
        self.n_genes_ = task.n_genes if task is not None else n_genes
        if task is not None and self.zinb_weight > 0:
            log.info("hist2st: ZINB on pseudo-counts expm1(max(target, 0)) (an approximation: "
                     "the Task holds log-scale targets, not counts)")
        net, self.dim_ = _build_net(
            self.n_genes_, self.size, self.patch_size, self.channel, self.kernel_size,
            self.depth1, self.depth2, self.depth3, self.heads, self.dim_head, self.dropout,
            self.n_pos, self.zinb_weight > 0, self.distill_weight > 0)
        return net

    def _inputs(self, net, task: Task, rows, gen=None, augment=None):
        import torch

        dev = next(net.parameters()).device
        x = patch_tensor(task.patches, rows, self.size)
        if gen is not None and (self.augment if augment is None else augment):
            x = dihedral_augment(x, gen)
        pos = self._cached(task, "positions", lambda: grid_positions(
            task.coords, task.slide, self.n_pos, self.name))[rows]
        adj = knn_adjacency(task.coords[rows], self.n_neighbors, self.max_dist)
        adj = adj + np.eye(len(rows), dtype=np.float32) * (adj.sum(1) == 0)[:, None]
        return (x.to(dev), torch.as_tensor(pos, device=dev),
                torch.as_tensor(adj, device=dev))

    def _section_forward(self, net, task: Task, rows):
        return net(*self._inputs(net, task, rows))

    def _view(self, x, gen):
        """A self-distillation view: grayscale (p 0.1), k·90° rotation, horizontal flip (p 0.2)."""
        import torch

        n = x.shape[0]
        gray = (torch.rand(n, generator=gen) < 0.1).to(x.device).view(n, 1, 1, 1)
        x = torch.where(gray, x.mean(1, keepdim=True).expand_as(x), x)
        x = x.rot90(int(torch.randint(4, (1,), generator=gen)), (-2, -1))
        flip = (torch.rand(n, generator=gen) < 0.2).to(x.device).view(n, 1, 1, 1)
        return torch.where(flip, x.flip(-1), x)

    def _section_loss(self, net, task: Task, rows, gen):
        import torch

        x, pos, adj = self._inputs(net, task, rows, gen)
        h = net.embed(x, pos, adj)
        pred = net.gene_head(h)
        loss = self._loss(pred, task, rows)
        if self.zinb_weight > 0:
            counts = torch.as_tensor(np.expm1(np.maximum(task.targets[rows], 0.0)),
                                     device=pred.device)
            total = counts.sum(1)
            sf = total / total.median().clamp(min=1e-8)
            loss = loss + self.zinb_weight * zinb_nll(counts, *net.zinb_params(h),
                                                      sf.clamp(min=1e-8))
        if self.distill_weight > 0:
            x0, _, _ = self._inputs(net, task, rows, gen, augment=False)
            preds, coefs = [], []
            for _ in range(self.distill_views):
                hv = net.embed(self._view(x0, gen), pos, adj)
                preds.append(net.gene_head(hv))
                coefs.append(net.coef(hv))
            w = torch.softmax(torch.stack(coefs), dim=0)  # (views, N, 1)
            distilled = (torch.stack(preds) * w).sum(0)
            loss = loss + self.distill_weight * torch.nn.functional.mse_loss(distilled, pred)
        return loss

    def _state(self):
        return {"n_genes": self.n_genes_}, self._net_state()

    def _restore(self, meta, arrays):
        self.net_ = self._build(n_genes=meta["n_genes"])
        self._load_net(arrays)
