"""SpaRED's ShuffleNet baseline: ShuffleNetV2 x0.5 → linear to genes, trained end to end.

SpaRED's image-only backbone (``spared.models.ImageBackbone`` with ShuffleNetV2): ImageNet
normalisation, random horizontal / vertical flips and 90° rotation (p = 0.5 each), MSE on all
entries (or only observed ones, ``masked_loss``), Adam lr 1e-4 in the quickstart, best step on
the validation MSE. Same model code as :class:`~stcore.models.stnet.ImageRegressor` with the
encoder ``"shufflenet"`` of :func:`stcore.models.encoders.create_encoder` and no bias
initialisation. Pretrained weights only when ``weights`` is given (random init otherwise).
"""

from __future__ import annotations

from .stnet import ImageRegressor


class ShuffleNet(ImageRegressor):
    """ShuffleNetV2 x0.5 regressor (see :class:`~stcore.models.stnet.ImageRegressor`)."""

    name = "shufflenet"

    def __init__(self, *, encoder: str = "shufflenet", size: int = 224,
                 init_bias_mean: bool = False, **params):
        super().__init__(encoder=encoder, size=size, init_bias_mean=init_bias_mean, **params)
