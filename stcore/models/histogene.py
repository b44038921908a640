"""HisToGene (Pang, Su & Li, bioRxiv 2021): a transformer over all spots of a section.

Structure as in ``maxpmx/HisToGene``: each spot's patch is flattened (3 · size²) and linearly
embedded to ``dim``; learned x and y embeddings (``nn.Embedding(n_pos, dim)``) of the integer
array coordinates are added; embedding dropout; a pre-norm transformer encoder (``depth``
layers, ``heads`` heads, MLP ``mlp_dim``, GELU, dropout) runs over the sequence of all spots of
one section; LayerNorm + Linear to the genes. One section per step, MSE, flips/rotations of the
patches. No pretrained image encoder.

Published sizes: ``size=112, dim=1024, depth=8, heads=16, mlp_dim=2048, dropout=0.1,
n_pos=64``, Adam lr 1e-5 for 100 epochs (one section per step). CPU defaults are smaller.

Differences: array coordinates are shifted to start at 0 in each section (so ``n_pos`` bounds
the section's extent, not the absolute coordinates) and clipped at ``n_pos - 1`` with a warning;
patches are ImageNet-normalised (the original: ``ToTensor`` only); augmentation is dihedral
(flips, 90° rotations; the original also jitters colour); attention heads split ``dim``
(``torch.nn.TransformerEncoderLayer``) instead of lucidrains' ``heads × 64`` inner dimension;
no super-resolution inference. A section's sequence holds its train spots in training and all
its spots at prediction (see :class:`~stcore.models._common.SectionPredictor`).
"""

from __future__ import annotations

from ._common import SectionPredictor, dihedral_augment, grid_positions, patch_tensor
from .base import Task


def _build_net(n_genes, size, dim, depth, heads, mlp_dim, dropout, n_pos):
    import torch.nn as nn

    class HisToGeneNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch_embedding = nn.Linear(3 * size * size, dim)
            self.x_embed = nn.Embedding(n_pos, dim)
            self.y_embed = nn.Embedding(n_pos, dim)
            self.emb_dropout = nn.Dropout(dropout)
            layer = nn.TransformerEncoderLayer(dim, heads, mlp_dim, dropout, activation="gelu",
                                               batch_first=True, norm_first=True)
            self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
            self.gene_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, n_genes))

        def forward(self, patches, pos):
            """patches (B, N, 3, size, size), pos (B, N, 2) long → (B, N, n_genes)."""
            x = self.patch_embedding(patches.flatten(2))
            x = x + self.x_embed(pos[..., 0]) + self.y_embed(pos[..., 1])
            return self.gene_head(self.transformer(self.emb_dropout(x)))

    return HisToGeneNet()


class HisToGene(SectionPredictor):
    """HisToGene: flattened patches + x/y embeddings → transformer over a section → genes.

    Parameters
    ----------
    size : int
        Patch side after resizing (published 112).
    dim, depth, heads, mlp_dim, dropout : int, int, int, int, float
        Transformer (published 1024, 8, 16, 2048, 0.1).
    n_pos : int
        Size of the x / y embedding tables (published 64).
    augment : bool
        Random flips / 90° rotations of each patch in training.
    init_bias_mean : bool
        Start the output bias at the training mean (not in the paper; for short CPU runs).
    lr, weight_decay, optimizer, batch_size (sections per step), max_steps, val_every,
    patience, masked_loss, device, amp, checkpoint_dir, checkpoint_every, eval_batch_size
        Training, see :class:`~stcore.models.base.NeuralPredictor`.
    """

    name = "histogene"

    def __init__(self, *, size: int = 56, dim: int = 256, depth: int = 4, heads: int = 8,
                 mlp_dim: int = 512, dropout: float = 0.1, n_pos: int = 128,
                 augment: bool = True, init_bias_mean: bool = False,
                 lr: float = 1e-4, weight_decay: float = 0.0,
                 optimizer: str = "adam", batch_size: int = 1, max_steps: int = 1000,
                 val_every: int = 20, patience: int | None = 10, masked_loss: bool = False,
                 device: str | None = None, amp: str | None = "bf16",
                 checkpoint_dir: str | None = None, checkpoint_every: int | None = None,
                 eval_batch_size: int = 128):
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.size, self.dim, self.depth, self.heads = int(size), int(dim), int(depth), int(heads)
        self.mlp_dim, self.dropout, self.n_pos = int(mlp_dim), float(dropout), int(n_pos)
        self.augment, self.init_bias_mean = bool(augment), bool(init_bias_mean)
        self._init_training(lr=lr, weight_decay=weight_decay, optimizer=optimizer,
                            batch_size=batch_size, max_steps=max_steps, val_every=val_every,
                            patience=patience, masked_loss=masked_loss, device=device, amp=amp,
                            checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                            eval_batch_size=eval_batch_size)

    def _build(self, task: Task | None = None, n_genes: int | None = None):
        n_genes = task.n_genes if task is not None else n_genes
        self.n_genes_ = n_genes
        return _build_net(n_genes, self.size, self.dim, self.depth, self.heads, self.mlp_dim,
                          self.dropout, self.n_pos)

    def _inputs(self, net, task: Task, rows, gen=None):
        import torch

        dev = next(net.parameters()).device
        x = patch_tensor(task.patches, rows, self.size)
        if gen is not None and self.augment:
            x = dihedral_augment(x, gen)
        pos = self._positions(task)[rows]
        return x.unsqueeze(0).to(dev), torch.as_tensor(pos).unsqueeze(0).to(dev)

    def _positions(self, task: Task):
        """Integer (x, y) positions of every spot (computed once per task)."""
        return self._cached(task, "positions", lambda: grid_positions(
            task.coords, task.slide, self.n_pos, self.name))

    def _section_loss(self, net, task: Task, rows, gen):
        return self._loss(net(*self._inputs(net, task, rows, gen))[0], task, rows)

    def _section_forward(self, net, task: Task, rows):
        return net(*self._inputs(net, task, rows))[0]

    def _state(self):
        return {"n_genes": self.n_genes_}, self._net_state()

    def _restore(self, meta, arrays):
        self.net_ = self._build(n_genes=meta["n_genes"])
        self._load_net(arrays)
