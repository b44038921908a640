"""Frozen-encoder embeddings of a patch store, computed once per (dataset, encoder, patch size).

Light heads (ridge, MLP) train on these in seconds on a CPU; the encoder runs once.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .._io import atomic_file, content_key, write_json
from ..data.patches import PatchStore
from . import encoders

log = logging.getLogger("stcore")

EMBED_VERSION = 1  # bump when preprocessing or the forward pass changes what is cached
SEED = 0           # torch seed before a randomly initialised encoder is created


def cache_path(store: PatchStore, encoder: str, *, weights=None, size: int | None = None) -> Path:
    """Where :func:`embed` caches the embeddings: ``store.path/embeddings/{encoder}-{size}-{key}.npy``.

    ``key`` is a content hash of :func:`stcore.models.encoders.encoder_info` (model id, dim,
    normalisation, weights sha256; library versions for random init), the patch size and
    ``EMBED_VERSION``; the weights file's path does not enter it, only its content.
    """
    size = _size(encoder, size)
    info = {k: v for k, v in encoders.encoder_info(encoder, weights).items() if k != "weights_path"}
    key = content_key(info, size, SEED, EMBED_VERSION)
    return Path(store.path) / "embeddings" / f"{encoder}-{size}-{key}.npy"


def embed(store: PatchStore, encoder: str, *, weights=None, size: int | None = None,
          batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """Embeddings (n_patches × dim, float32) of every patch, in ``store.obs_names`` order.

    Parameters
    ----------
    store
        A :class:`stcore.data.PatchStore` (uint8 patches, any side; resized to ``size``).
    encoder
        A key of :data:`stcore.models.encoders.ENCODERS`.
    weights
        Local weights file (see :func:`~stcore.models.encoders.create_encoder`); ``None``: packaged
        weights where they exist, else a random initialisation seeded with ``torch.manual_seed(0)``
        (reproducible random features; a warning says so).
    size
        Input side in pixels; default the encoder's native size (224).
    batch_size, device
        Forward-pass batching and torch device.

    The result is cached at :func:`cache_path` (written atomically, with a ``.json`` beside it
    holding the encoder provenance); a second call with the same store, encoder, weights and size
    reads it back without building the encoder.
    """
    if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise TypeError(f"batch_size must be a positive int, got {batch_size!r}")
    spec = encoders.get_spec(encoder)
    size = _size(encoder, size)
    path = cache_path(store, encoder, weights=weights, size=size)
    if path.exists():
        cached = np.load(path, mmap_mode=None, allow_pickle=False)
        if cached.shape == (len(store), spec.dim):
            log.info("embeddings: %s read from cache %s", encoder, path)
            return cached
        log.warning("embeddings: cached %s has shape %s, expected %s; recomputing",
                    path, cached.shape, (len(store), spec.dim))
    torch.manual_seed(SEED)
    model = encoders.create_encoder(encoder, weights=weights).to(device)
    out = np.empty((len(store), spec.dim), np.float32)
    bar = tqdm(total=len(store), desc=f"embedding ({encoder}, {size} px)", unit="patch")
    with torch.inference_mode():
        for start in range(0, len(store), batch_size):
            batch = np.asarray(store.images[start:start + batch_size])
            x = encoders.preprocess_patches(batch, size, mean=spec.mean, std=spec.std).to(device)
            out[start:start + len(batch)] = model(x).float().cpu().numpy()
            bar.update(len(batch))
    bar.close()
    with atomic_file(path, "wb") as fh:
        np.save(fh, out)
    write_json(path.with_suffix(".json"),
               {"encoder": encoders.encoder_info(encoder, weights), "size": size, "seed": SEED,
                "shape": list(out.shape), "store": str(store.path), "version": EMBED_VERSION})
    return out


def load_info(path: str | Path) -> dict:
    """The provenance JSON written beside a cached embedding file."""
    return json.loads(Path(path).with_suffix(".json").read_text())


def encode_throughput(encoder: str, n: int = 64, size: int = 224, batch_size: int = 32,
                      device: str = "cpu", *, weights=None) -> float:
    """Patches per second of preprocessing (uint8 → normalised tensor) plus the forward pass.

    Random uint8 patches of ``size`` px; one warm-up batch is not timed. For benchmarks.
    """
    spec = encoders.get_spec(encoder)
    torch.manual_seed(SEED)
    model = encoders.create_encoder(encoder, weights=weights).to(device)
    images = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)

    def run(chunk):
        x = encoders.preprocess_patches(chunk, size, mean=spec.mean, std=spec.std).to(device)
        y = model(x)
        if device != "cpu" and torch.cuda.is_available():
            torch.cuda.synchronize()
        return y

    with torch.inference_mode():
        run(images[:batch_size])
        start = time.perf_counter()
        for i in range(0, n, batch_size):
            run(images[i:i + batch_size])
        elapsed = time.perf_counter() - start
    return n / elapsed


def _size(encoder: str, size: int | None) -> int:
    if size is None:
        return encoders.get_spec(encoder).input_size
    if not isinstance(size, (int, np.integer)) or size <= 0:
        raise TypeError(f"size must be a positive int, got {size!r}")
    return int(size)
