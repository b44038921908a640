"""ST-Net (He et al., Nat. Biomed. Eng. 2020): a CNN fine-tuned end to end from patch to genes.

Structure as in ``bryanhe/ST-Net``: an image encoder (DenseNet-121 there, ImageNet-pretrained)
whose pooled features go through one linear layer to the genes, the bias initialised to the
training mean expression; MSE loss; random flips and 90° rotations during training; optional
test-time averaging over the 8 dihedral transforms (``tta``; ``--average`` in the original).

:class:`ImageRegressor` is that model for any encoder; :class:`~stcore.models.cnn.ShuffleNet`
and :class:`~stcore.models.vit.ViTRegressor` reuse it with other encoders (SpaRED's image-only
backbones).

Differences from the paper (all parameters): defaults are Adam lr 1e-4 for ``max_steps`` steps
with early stopping on the validation MSE (the paper: SGD lr 1e-6, momentum 0.9, batch 32, best
epoch ≤ 50 by cross-validation; ``optimizer="sgd", lr=1e-6`` reproduces the optimizer); images
are normalised with the encoder's statistics (ImageNet for the CNNs; the paper uses the training
pixel mean/std); pretrained
weights only when ``weights`` names a local file/package known to
:func:`stcore.models.encoders.create_encoder` (otherwise random initialisation). The cpu profile
can use ``encoder="resnet18", size=112``.
"""

from __future__ import annotations

import numpy as np

from ..train import seeded
from ._common import batched, build_backbone, dihedral_views, frozen_dim, image_inputs
from .base import NeuralPredictor, Task, train_mean


class _ImageNet:  # namespace for the torch module, built lazily (torch imported on use)
    @staticmethod
    def build(encoder, weights, size, n_genes, bias, frozen_dim=None):
        import torch
        import torch.nn as nn

        backbone, dim = build_backbone(encoder, weights, size, frozen_dim)
        head = nn.Linear(dim, n_genes)
        if bias is not None:
            with torch.no_grad():
                head.bias.copy_(torch.as_tensor(bias))
        return nn.Sequential(backbone, head)


class ImageRegressor(NeuralPredictor):
    """Image encoder → linear layer to the genes, trained end to end on patches.

    Parameters
    ----------
    encoder : str
        Name for :func:`stcore.models.encoders.create_encoder` ("densenet121", "resnet18", ...),
        "tiny" (a 3-layer test CNN) or a timm model name (random init).
    weights : str or None
        Pretrained weights, passed to ``create_encoder``.
    size : int
        Input size in pixels (patches are resized).
    augment : bool
        Random horizontal / vertical flips and 90° rotation (p = 0.5 each) in training.
    tta : bool
        Average predictions over the 8 dihedral transforms.
    frozen : bool
        Train only the linear head on the cached frozen embeddings ``task.embeddings[encoder]``
        (:func:`stcore.models.embeddings.embed`); no augmentation or TTA then. The cpu profile's
        variant for encoders too large to fine-tune on a CPU.
    init_bias_mean : bool
        Initialise the output bias to the training mean (ST-Net).
    lr, weight_decay, optimizer, batch_size, max_steps, val_every, patience, masked_loss,
    device, amp, checkpoint_dir, checkpoint_every, eval_batch_size
        Training, see :class:`~stcore.models.base.NeuralPredictor`.
    """

    name = "image_regressor"

    def __init__(self, *, encoder: str = "densenet121", weights: str | None = None,
                 size: int = 224, augment: bool = True, tta: bool = False,
                 frozen: bool = False, init_bias_mean: bool = True, lr: float = 1e-4,
                 weight_decay: float = 0.0,
                 optimizer: str = "adam", batch_size: int = 32, max_steps: int = 1000,
                 val_every: int = 50, patience: int | None = 10, masked_loss: bool = False,
                 device: str | None = None, amp: str | None = "bf16",
                 checkpoint_dir: str | None = None, checkpoint_every: int | None = None,
                 eval_batch_size: int = 128):
        self.encoder, self.weights, self.size = encoder, weights, int(size)
        self.augment, self.tta, self.init_bias_mean = bool(augment), bool(tta), bool(init_bias_mean)
        self.frozen = bool(frozen)
        self._init_training(lr=lr, weight_decay=weight_decay, optimizer=optimizer,
                            batch_size=batch_size, max_steps=max_steps, val_every=val_every,
                            patience=patience, masked_loss=masked_loss, device=device, amp=amp,
                            checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                            eval_batch_size=eval_batch_size)

    def _build(self, n_genes: int, bias=None):
        return _ImageNet.build(self.encoder, self.weights, self.size, n_genes, bias, self.dim_)

    def _bias(self, task: Task):
        return train_mean(task, self.masked_loss) if self.init_bias_mean else None

    def _fit(self, task: Task, seed: int, progress: bool) -> None:
        dev = self._device()
        bias = self._bias(task)
        self.dim_ = frozen_dim(task, self.encoder, self.frozen)
        with seeded(seed, dev):
            self.net_ = self._build(task.n_genes, bias).to(dev)
        self.n_genes_ = task.n_genes
        train_idx = np.flatnonzero(task.train)

        def loss_fn(net, idx, gen):
            rows = train_idx[idx.numpy()]
            x = image_inputs(task, rows, self.size, self.encoder, self.frozen,
                             gen if self.augment else None)
            return self._loss(net(x.to(dev)), task, rows)

        self._train(task, loss_fn, len(train_idx), seed=seed, progress=progress)

    def _predict(self, task: Task, idx: np.ndarray) -> np.ndarray:
        import torch

        dev = next(self.net_.parameters()).device
        self.net_.eval()
        out = []
        with torch.no_grad():
            for chunk in batched(idx, self.eval_batch_size):
                x = image_inputs(task, chunk, self.size, self.encoder, self.frozen).to(dev)
                if self.tta and not self.frozen:
                    y = torch.stack([self.net_(v).float() for v in dihedral_views(x)]).mean(0)
                else:
                    y = self.net_(x).float()
                out.append(y.cpu().numpy())
        return np.concatenate(out)

    def _state(self):
        return {"n_genes": self.n_genes_, "dim": self.dim_}, self._net_state()

    def _restore(self, meta, arrays):
        self.n_genes_, self.dim_ = meta["n_genes"], meta.get("dim")
        self.net_ = self._build(self.n_genes_)
        self._load_net(arrays)


class STNet(ImageRegressor):
    """ST-Net: DenseNet-121 → linear to genes (bias = training mean), flips/rotations.

    Published settings: ``encoder="densenet121", weights=<ImageNet>, size=224, tta=True,
    optimizer="sgd", lr=1e-6, batch_size=32``. See :class:`ImageRegressor` for the parameters.
    """

    name = "stnet"
