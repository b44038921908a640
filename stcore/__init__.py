"""stcore: the library behind the reproducible paper on predicting spatial gene expression from histology.

Subpackages: :mod:`stcore.data` (registry, readers, patches), :mod:`stcore.plotting`,
:mod:`stcore.results` (runs, provenance, atomic writes).
"""

import logging

__version__ = "0.1.0"

logging.getLogger("stcore").addHandler(logging.NullHandler())
