"""ViT regressor: a vision transformer (ViT-Tiny by default) → linear to genes, end to end.

SpaRED's "ViT-B" image-only baseline (ViT-B/16 there) scaled to ViT-Tiny/16 for CPU: the
``"vit_tiny"`` encoder of :func:`stcore.models.encoders.create_encoder` (pooled features) and one
linear layer, flips/rotations, MSE. ``delta=True`` is SpaRED's "ViT-B+Δ": the network predicts
the difference from the training mean, which is added back as a fixed offset (so weight decay
pulls towards the mean, not towards 0). The published size is a timm name such as
``encoder="vit_base_patch16_224"`` (random initialisation unless the encoders module provides
weights).
"""

from __future__ import annotations

import numpy as np

from .base import Task, train_mean
from .stnet import ImageRegressor, _ImageNet


def _with_offset(net, offset):
    import torch
    import torch.nn as nn

    class WithOffset(nn.Module):
        """``net(x) + offset`` (offset: a fixed buffer)."""

        def __init__(self):
            super().__init__()
            self.net = net
            self.register_buffer("offset", torch.as_tensor(np.asarray(offset, np.float32)))

        def forward(self, x):
            return self.net(x) + self.offset

    return WithOffset()


class ViTRegressor(ImageRegressor):
    """ViT → genes (see :class:`~stcore.models.stnet.ImageRegressor`).

    ``delta``: predict the difference from the training mean (SpaRED's ViT-B+Δ).
    """

    name = "vit"

    def __init__(self, *, encoder: str = "vit_tiny", size: int = 224, delta: bool = False,
                 init_bias_mean: bool = False, **params):
        self.delta = bool(delta)
        super().__init__(encoder=encoder, size=size, init_bias_mean=init_bias_mean, **params)

    def _bias(self, task: Task):
        if self.delta or self.init_bias_mean:
            return train_mean(task, self.masked_loss)
        return None

    def _build(self, n_genes: int, bias=None):
        if not self.delta:
            return _ImageNet.build(self.encoder, self.weights, self.size, n_genes, bias)
        net = _ImageNet.build(self.encoder, self.weights, self.size, n_genes, None)
        return _with_offset(net, np.zeros(n_genes, np.float32) if bias is None else bias)
