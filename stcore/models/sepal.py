"""SEPAL (Mejia et al., ICCV CVAMD workshop 2023): image features refined by a local graph.

Structure as in ``BCV-Uniandes/SEPAL`` (``models.py``, ``main.py``, best configs), in two
stages, both predicting **deltas** = target − training mean of each gene:

1. *Image stage*: a per-spot predictor of the deltas from the spot's image feature. SEPAL
   fine-tunes a ViT-B and then freezes it; here the image feature is a frozen encoder embedding
   (``task.embeddings[encoder]``) and this stage is a linear layer trained on it.
2. *Graph stage*: for each spot, its local graph = the spot and every spot within ``n_hops``
   hops on the array grid of its section (hexagonal arrays: 6 neighbours; square grids: 8, as
   ``squidpy.gr.spatial_neighbors`` in SEPAL), edges between nodes within ``n_hops`` hops of each
   other. Node features = frozen embedding ⊕ 2-d sine–cosine encoding of the node's array
   position relative to the centre (``pos_emb_sum=False``) → MLP (``pre_dim``, ELU) → GCN layers
   (``graph_dims``, ELU) → SAGPooling keeping the top-1 node per graph (GraphConv score,
   ``x · tanh(score)``) → linear head. Its output is added to the image stage's delta of the
   centre spot: prediction = train mean + image delta + graph correction.

Differences: the image stage is a linear probe on frozen features, not a fine-tuned ViT-B;
the graph operators are written in plain torch on padded dense subgraphs (no torch_geometric);
the positional encoding uses the relative position directly (SEPAL shifts it by the dataset's
largest offset, a constant phase); the final activation SEPAL's MLP class applies to the
head output (ELU) is left out; step-based training with early stopping on the validation MSE
for both stages (SEPAL: ViT Adam lr 1e-2, 50 epochs; GNN Adam lr 1e-5 / 1e-4, 100–300 epochs,
batch 256). Published graph sizes are the defaults (``pre_dim=512, graph_dims=(256, 128)``,
GCN, ``n_hops=1``).
"""

from __future__ import annotations

import numpy as np

from ..train import seeded
from ._common import batched, grid_neighbours, is_hex_geometry, n_hop_subgraphs
from .base import NeuralPredictor, Task, log, train_mean


def sincos_2d(d_pos: np.ndarray, channels: int) -> np.ndarray:
    """Sine–cosine encoding (``positional_encodings.PositionalEncoding2D``) of (.., 2) positions."""
    half = int(np.ceil(channels / 4) * 2)
    inv_freq = 1.0 / (10000 ** (np.arange(0, half, 2) / half))

    def emb(p):
        a = p[..., None] * inv_freq
        return np.stack((np.sin(a), np.cos(a)), axis=-1).reshape(*p.shape, -1)

    out = np.concatenate((emb(d_pos[..., 0]), emb(d_pos[..., 1])), axis=-1)
    return out[..., :channels].astype(np.float32)


def _build_nets(emb_dim, n_genes, pre_dim, graph_dims, operator):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class DenseGraphConv(nn.Module):
        """GCN (``Â X W``, Â = D^-½ (A + I) D^-½) or GraphConv (``W1 x_i + W2 Σ_j x_j``)."""

        def __init__(self, d_in, d_out, kind):
            super().__init__()
            self.kind = kind
            self.lin = nn.Linear(d_in, d_out)
            if kind == "GraphConv":
                self.lin_nb = nn.Linear(d_in, d_out, bias=False)

        def forward(self, x, adj):  # x (B, M, d), adj (B, M, M) float
            if self.kind == "GraphConv":
                return self.lin(x) + self.lin_nb(adj @ x)
            a = adj + torch.eye(adj.shape[-1], device=adj.device)
            dinv = a.sum(-1).rsqrt()
            return self.lin((dinv[..., :, None] * a * dinv[..., None, :]) @ x)

    class GraphStage(nn.Module):
        def __init__(self):
            super().__init__()
            self.pre = nn.Linear(2 * emb_dim, pre_dim)
            dims = [pre_dim, *graph_dims]
            self.convs = nn.ModuleList([DenseGraphConv(a, b, operator)
                                        for a, b in zip(dims[:-1], dims[1:])])
            self.score = DenseGraphConv(dims[-1], 1, "GraphConv")  # SAGPooling's scorer
            self.head = nn.Linear(dims[-1], n_genes)

        def forward(self, x, adj, mask):  # mask (B, M) bool, True = real node
            x = F.elu(self.pre(x))
            for conv in self.convs:
                x = F.elu(conv(x, adj))
            score = self.score(x, adj).squeeze(-1).masked_fill(~mask, float("-inf"))
            top = score.argmax(1)
            b = torch.arange(x.shape[0], device=x.device)
            return self.head(x[b, top] * torch.tanh(score[b, top])[:, None])

    return nn.Linear(emb_dim, n_genes), GraphStage()


class SEPAL(NeuralPredictor):
    """SEPAL: deltas from the train mean, image stage + local-graph correction.

    Parameters
    ----------
    encoder : str or None
        Key of ``task.embeddings`` (None: the only one there).
    n_hops : int
        Radius of each spot's local graph in grid hops (published 1).
    hex_geometry : bool or None
        Hexagonal (Visium) vs square (legacy ST) array; None detects it from the coordinates
        (hexagonal when col + row has one parity everywhere).
    pre_dim, graph_dims, operator : int, tuple of int, {"GCNConv", "GraphConv"}
        Graph stage (published 512, (256, 128), GCNConv).
    lr, weight_decay, optimizer, batch_size, max_steps, val_every, patience, masked_loss,
    device, amp, checkpoint_dir, checkpoint_every, eval_batch_size
        Training of each stage, see :class:`~stcore.models.base.NeuralPredictor`.
    """

    name = "sepal"

    def __init__(self, *, encoder: str | None = None, n_hops: int = 1,
                 hex_geometry: bool | None = None, pre_dim: int = 512,
                 graph_dims=(256, 128), operator: str = "GCNConv", lr: float = 1e-3,
                 weight_decay: float = 0.0, optimizer: str = "adam", batch_size: int = 256,
                 max_steps: int = 1000, val_every: int = 20, patience: int | None = 10,
                 masked_loss: bool = False, device: str | None = None, amp: str | None = "bf16",
                 checkpoint_dir: str | None = None, checkpoint_every: int | None = None,
                 eval_batch_size: int = 1024):
        if operator not in ("GCNConv", "GraphConv"):
            raise ValueError(f"operator must be 'GCNConv' or 'GraphConv', got {operator!r}")
        if n_hops < 1:
            raise ValueError(f"n_hops must be >= 1, got {n_hops!r}")
        self.encoder, self.n_hops, self.hex_geometry = encoder, int(n_hops), hex_geometry
        self.pre_dim, self.graph_dims = int(pre_dim), tuple(int(d) for d in graph_dims)
        self.operator = operator
        self._init_training(lr=lr, weight_decay=weight_decay, optimizer=optimizer,
                            batch_size=batch_size, max_steps=max_steps, val_every=val_every,
                            patience=patience, masked_loss=masked_loss, device=device, amp=amp,
                            checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                            eval_batch_size=eval_batch_size)

    # ---------------------------------------------------------------------------------- graphs
    def _graphs(self, task: Task):
        """Padded local graphs of every spot: nodes (n, M) (−1 = padding), adj (n, M, M)."""

        def compute():
            hexa = self.hex_geometry
            if hexa is None:
                hexa = is_hex_geometry(task.coords)
            nbrs = grid_neighbours(task.coords, task.slide, hexa)
            sub = n_hop_subgraphs(nbrs, self.n_hops)
            within = [set(s.tolist()) for s in sub]
            m = max(len(s) for s in sub)
            nodes = np.full((len(sub), m), -1, dtype=np.int64)
            adj = np.zeros((len(sub), m, m), dtype=np.float32)
            for i, s in enumerate(sub):
                nodes[i, :len(s)] = s
                for a, u in enumerate(s):
                    for b, v in enumerate(s):
                        if a != b and v in within[u]:
                            adj[i, a, b] = 1.0
            log.info("sepal: %s geometry, %d-hop graphs of up to %d nodes",
                     "hexagonal" if hexa else "square", self.n_hops, m)
            return nodes, adj

        return self._cached(task, "graphs", compute)

    def _graph_batch(self, task: Task, rows: np.ndarray):
        import torch

        dev = next(self.gnn_.parameters()).device
        nodes, adj = self._graphs(task)
        nodes, adj = nodes[rows], adj[rows]
        mask = nodes >= 0
        _, emb = task.embedding(self.encoder_)
        feats = emb[np.where(mask, nodes, 0)] * mask[..., None]
        d_pos = task.coords[np.where(mask, nodes, 0)] - task.coords[rows][:, None, :]
        x = np.concatenate((feats, sincos_2d(np.rint(d_pos), feats.shape[-1]) * mask[..., None]),
                           axis=-1)
        return (torch.as_tensor(x, dtype=torch.float32, device=dev),
                torch.as_tensor(adj, device=dev), torch.as_tensor(mask, device=dev))

    # ------------------------------------------------------------------------------------ fit
    def _deltas_image(self, task: Task, rows: np.ndarray):
        import torch

        _, emb = task.embedding(self.encoder_)
        dev = next(self.image_.parameters()).device
        return self.image_(torch.as_tensor(emb[rows], dtype=torch.float32, device=dev))

    def _fit(self, task: Task, seed: int, progress: bool) -> None:
        import torch

        dev = self._device()
        self.encoder_, emb = task.embedding(self.encoder)
        self.mean_ = train_mean(task, self.masked_loss)
        with seeded(seed, dev):
            self.image_, self.gnn_ = (m.to(dev) for m in _build_nets(
                emb.shape[1], task.n_genes, self.pre_dim, self.graph_dims, self.operator))
        self.n_genes_, self.emb_dim_ = task.n_genes, emb.shape[1]
        train_idx = np.flatnonzero(task.train)
        deltas = task.targets - self.mean_

        def loss_image(net, idx, gen):
            rows = train_idx[idx.numpy()]
            return self._loss(self._deltas_image(task, rows), task, rows, deltas[rows])

        self._stage, self.net_ = "image", self.image_
        self._train(task, loss_image, len(train_idx), seed=seed, progress=progress,
                    desc="sepal image", subdir="image")
        self.image_.requires_grad_(False)

        def loss_graph(net, idx, gen):
            rows = train_idx[idx.numpy()]
            with torch.no_grad():
                base = self._deltas_image(task, rows)
            return self._loss(base + net(*self._graph_batch(task, rows)), task, rows,
                              deltas[rows])

        self._stage, self.net_ = "graph", self.gnn_
        self._train(task, loss_graph, len(train_idx), seed=seed, progress=progress,
                    desc="sepal graph", subdir="graph")
        self._stage = None

    def _predict(self, task: Task, idx: np.ndarray) -> np.ndarray:
        import torch

        self.image_.eval()
        self.gnn_.eval()
        out = []
        with torch.no_grad():
            for chunk in batched(idx, self.eval_batch_size):
                d = self._deltas_image(task, chunk)
                if getattr(self, "_stage", None) != "image":
                    d = d + self.gnn_(*self._graph_batch(task, chunk))
                out.append(d.float().cpu().numpy() + self.mean_)
        return np.concatenate(out)

    def _state(self):
        arrays = {f"image.{k}": v for k, v in self.image_.state_dict().items()}
        arrays.update({f"gnn.{k}": v for k, v in self.gnn_.state_dict().items()})
        arrays["mean"] = self.mean_
        return {"n_genes": self.n_genes_, "emb_dim": self.emb_dim_,
                "encoder": self.encoder_}, arrays

    def _restore(self, meta, arrays):
        self.encoder_, self.n_genes_, self.emb_dim_ = meta["encoder"], meta["n_genes"], \
            meta["emb_dim"]
        self.mean_ = arrays["mean"].numpy()
        self.image_, self.gnn_ = _build_nets(self.emb_dim_, self.n_genes_, self.pre_dim,
                                             self.graph_dims, self.operator)
        for prefix, net in (("image.", self.image_), ("gnn.", self.gnn_)):
            net.load_state_dict({k[len(prefix):]: v for k, v in arrays.items()
                                 if k.startswith(prefix)})
            net.to(self._device()).eval()
        self.net_ = self.gnn_
