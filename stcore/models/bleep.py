"""BLEEP (Xie et al., NeurIPS 2023): contrastive image–expression embedding, then retrieval.

Structure as in ``bowang-lab/BLEEP``: an image encoder (timm ResNet-50 there, fine-tuned) and
the expression vector are each mapped by a projection head (Linear → GELU → Linear → dropout,
residual, LayerNorm) into a shared ``projection_dim`` = 256 space. Training loss: CLIP
cross-entropy with soft targets, ``softmax((image·imageᵀ + spot·spotᵀ) / 2 / temperature)``,
averaged over both directions (temperature 1.0). Prediction: the query patch's image embedding
is compared (dot product of L2-normalised embeddings) with the expression embeddings of the
training spots; the prediction is the plain mean of the training targets of the ``top_k`` = 50
nearest ("average"; "simple" = the single nearest).

Differences: the reference bank is the training spots of the Task (the paper: the training
slices); AdamW lr 1e-3, weight decay 1e-3 as published, but step-based with early stopping on
the validation MSE of the retrieval prediction; ResNet-18 at 112 px by default on CPU
(``encoder="resnet50", size=224`` is the published size; random initialisation unless weights are
given); flips / 90° rotations as published. The paper's Harmony correction of the expression
matrices is not part of the model.
"""

from __future__ import annotations

import numpy as np

from ..train import seeded
from ._common import batched, build_backbone, frozen_dim, image_inputs
from .base import NeuralPredictor, Task

METHODS = ("average", "simple")


def _build_net(encoder, weights, size, n_genes, projection_dim, dropout, frozen_dim=None):
    import torch.nn as nn

    class ProjectionHead(nn.Module):
        def __init__(self, in_dim):
            super().__init__()
            self.projection = nn.Linear(in_dim, projection_dim)
            self.gelu = nn.GELU()
            self.fc = nn.Linear(projection_dim, projection_dim)
            self.dropout = nn.Dropout(dropout)
            self.layer_norm = nn.LayerNorm(projection_dim)

        def forward(self, x):
            projected = self.projection(x)
            x = self.dropout(self.fc(self.gelu(projected)))
            return self.layer_norm(x + projected)

    class BLEEPNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.image_encoder, dim = build_backbone(encoder, weights, size, frozen_dim)
            self.image_projection = ProjectionHead(dim)
            self.spot_projection = ProjectionHead(n_genes)

        def image_embedding(self, x):
            return self.image_projection(self.image_encoder(x))

        def spot_embedding(self, expression):
            return self.spot_projection(expression)

    return BLEEPNet()


def clip_loss(image_emb, spot_emb, temperature: float):
    """BLEEP's CLIP loss with soft targets (mean over both directions and the batch)."""
    import torch
    import torch.nn.functional as F

    logits = spot_emb @ image_emb.T / temperature
    similarity = (image_emb @ image_emb.T + spot_emb @ spot_emb.T) / 2
    targets = F.softmax(similarity / temperature, dim=-1)
    spots_loss = (-targets * F.log_softmax(logits, dim=-1)).sum(1)
    images_loss = (-targets.T * F.log_softmax(logits.T, dim=-1)).sum(1)
    return torch.mean((images_loss + spots_loss) / 2)


class BLEEP(NeuralPredictor):
    """BLEEP: CLIP-aligned image and expression embeddings; prediction by retrieval.

    Parameters
    ----------
    encoder, weights, size : str, str or None, int
        Image encoder (see :class:`~stcore.models.stnet.ImageRegressor`; published resnet50,
        ImageNet, 224).
    projection_dim, dropout, temperature : int, float, float
        Projection heads and CLIP loss (published 256, 0.1, 1.0).
    top_k : int
        Number of retrieved training spots (published 50).
    method : {"average", "simple"}
        Mean of the top-k targets, or the nearest one's.
    augment : bool
        Random flips / 90° rotations in training.
    frozen : bool
        Use the cached frozen embeddings ``task.embeddings[encoder]`` as the image features (only
        the projection heads train; the cpu profile's variant).
    lr, weight_decay, optimizer, batch_size, max_steps, val_every, patience, masked_loss,
    device, amp, checkpoint_dir, checkpoint_every, eval_batch_size
        Training, see :class:`~stcore.models.base.NeuralPredictor` (published AdamW, lr 1e-3,
        weight decay 1e-3, batch 256). ``masked_loss`` has no effect on the CLIP loss.
    """

    name = "bleep"

    def __init__(self, *, encoder: str = "resnet18", weights: str | None = None,
                 size: int = 112, projection_dim: int = 256, dropout: float = 0.1,
                 temperature: float = 1.0, top_k: int = 50, method: str = "average",
                 augment: bool = True, frozen: bool = False, lr: float = 1e-3,
                 weight_decay: float = 1e-3,
                 optimizer: str = "adamw", batch_size: int = 64, max_steps: int = 1000,
                 val_every: int = 50, patience: int | None = 10, masked_loss: bool = False,
                 device: str | None = None, amp: str | None = "bf16",
                 checkpoint_dir: str | None = None, checkpoint_every: int | None = None,
                 eval_batch_size: int = 128):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if top_k < 1 or temperature <= 0:
            raise ValueError("top_k must be >= 1 and temperature > 0")
        self.encoder, self.weights, self.size = encoder, weights, int(size)
        self.projection_dim, self.dropout = int(projection_dim), float(dropout)
        self.temperature, self.top_k, self.method = float(temperature), int(top_k), method
        self.augment, self.frozen = bool(augment), bool(frozen)
        self._init_training(lr=lr, weight_decay=weight_decay, optimizer=optimizer,
                            batch_size=batch_size, max_steps=max_steps, val_every=val_every,
                            patience=patience, masked_loss=masked_loss, device=device, amp=amp,
                            checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                            eval_batch_size=eval_batch_size)

    def _build(self, n_genes: int):
        self.n_genes_ = n_genes
        return _build_net(self.encoder, self.weights, self.size, n_genes, self.projection_dim,
                          self.dropout, self.dim_)

    def _fit(self, task: Task, seed: int, progress: bool) -> None:
        import torch

        dev = self._device()
        self.dim_ = frozen_dim(task, self.encoder, self.frozen)
        with seeded(seed, dev):
            self.net_ = self._build(task.n_genes).to(dev)
        train_idx = np.flatnonzero(task.train)
        self.reference_ = task.targets[train_idx].astype(np.float32)

        def loss_fn(net, idx, gen):
            rows = train_idx[idx.numpy()]
            x = image_inputs(task, rows, self.size, self.encoder, self.frozen,
                             gen if self.augment else None)
            image = net.image_embedding(x.to(dev))
            spot = net.spot_embedding(torch.as_tensor(task.targets[rows], device=dev))
            return clip_loss(image, spot, self.temperature)

        self._train(task, loss_fn, len(train_idx), seed=seed, progress=progress)

    def _reference_keys(self):
        """L2-normalised expression embeddings of the reference (training) spots."""
        import torch

        dev = next(self.net_.parameters()).device
        keys = []
        with torch.no_grad():
            for chunk in batched(np.arange(len(self.reference_)), 1024):
                e = self.net_.spot_embedding(torch.as_tensor(self.reference_[chunk], device=dev))
                keys.append(torch.nn.functional.normalize(e.float(), dim=1))
        return torch.cat(keys)

    def _predict(self, task: Task, idx: np.ndarray) -> np.ndarray:
        import torch

        dev = next(self.net_.parameters()).device
        self.net_.eval()
        keys = self._reference_keys()
        ref = torch.as_tensor(self.reference_, device=dev)
        k = 1 if self.method == "simple" else min(self.top_k, len(ref))
        out = []
        with torch.no_grad():
            for chunk in batched(idx, self.eval_batch_size):
                x = image_inputs(task, chunk, self.size, self.encoder, self.frozen).to(dev)
                q = torch.nn.functional.normalize(self.net_.image_embedding(x).float(), dim=1)
                top = torch.topk(q @ keys.T, k, dim=1).indices  # (b, k)
                out.append(ref[top].mean(1).cpu().numpy())
        return np.concatenate(out)

    def _state(self):
        arrays = self._net_state()
        arrays["reference"] = self.reference_
        return {"n_genes": self.n_genes_, "dim": self.dim_}, arrays

    def _restore(self, meta, arrays):
        self.dim_ = meta.get("dim")
        self.net_ = self._build(meta["n_genes"])
        self.reference_ = arrays["reference"].numpy()
        self._load_net(arrays)
