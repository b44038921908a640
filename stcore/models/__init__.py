"""Expression predictors from histology: the interface, the registry, the models.

:class:`~stcore.models.base.Task` (one dataset × target × fold),
:class:`~stcore.models.base.Predictor` (fit / predict / save / load), ``MODELS`` (name → class,
imported lazily) and :func:`~stcore.models.base.create`. Training of the neural models:
:mod:`stcore.train`. Encoders and cached embeddings: :mod:`stcore.models.encoders`,
:mod:`stcore.models.embeddings`.
"""

from .base import MODELS, Predictor, Task, UnknownModelError, create

__all__ = ["MODELS", "Predictor", "Task", "UnknownModelError", "create"]
